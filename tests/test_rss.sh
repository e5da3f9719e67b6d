#!/bin/sh
# test_rss.sh - memory of a dense model's run, measured: weights are mmapped
# and read in place, so the peak RSS of `codemoe run` is at most the file
# size plus the KV cache plus 64 MiB (issue: "no copies of weights").
set -u
. "$(dirname "$0")/lib.sh"
GEN="$BUILD/tools/gen_model"
VOCAB="$SHARED/vocab/ggml-vocab-starcoder.gguf"
if [ ! -x "$GEN" ] || [ ! -f "$VOCAB" ]; then
    tl_skip "needs tools/gen_model and $VOCAB"
fi
tl_tmpdir

# SmolLM-135M's shape (30 layers, 3 KV heads of 64) at q8_0: 165 MiB.
"$GEN" --preset smol135m --type q8_0 --vocab "$VOCAB" -o "$TMP/m.gguf" >/dev/null 2>&1 ||
    { echo "FAIL: gen_model"; exit 1; }
file_mib=$(ls -l "$TMP/m.gguf" | awk '{ printf "%.1f", $5 / 1048576 }')

for kv in f16 f32; do
    ctx=1024
    bytes=2
    [ $kv = f32 ] && bytes=4
    # K and V, every layer, every position
    kv_mib=$(awk -v c=$ctx -v b=$bytes 'BEGIN { printf "%.1f", 30 * 2 * c * 3 * 64 * b / 1048576 }')
    "$CODEMOE" run -m "$TMP/m.gguf" -p "int main(void) {" -n 16 -c $ctx --kv-type $kv -t 2 \
        >/dev/null 2>"$TMP/err" || fail "run --kv-type $kv: $(cat "$TMP/err")"
    rss=$(sed -n 's/.*peak RSS \([0-9.]*\) MiB.*/\1/p' "$TMP/err" | tail -1)
    [ -n "$rss" ] || { fail "no peak RSS in run's report: $(cat "$TMP/err")"; continue; }
    echo "dense run, kv $kv: peak RSS $rss MiB; file $file_mib MiB + KV $kv_mib MiB + 64 MiB allowed"
    awk -v r="$rss" -v f="$file_mib" -v k="$kv_mib" 'BEGIN { exit !(r <= f + k + 64) }' ||
        fail "kv $kv: peak RSS $rss MiB exceeds file $file_mib + KV $kv_mib + 64 MiB"
    # and the weights really were read from the file: all of it resident
    awk -v r="$rss" -v f="$file_mib" 'BEGIN { exit !(r >= f * 0.9) }' ||
        fail "kv $kv: peak RSS $rss MiB is below the file's $file_mib MiB: did the run read the weights?"
done

tl_finish
