#!/bin/sh
# test_bench.sh - tools/gen_model and `codemoe bench` on tiny random models:
# they run, print the llama-bench style rows and the bandwidth bound, fail
# with one line and the right exit code on bad input, and never crash.
set -u
. "$(dirname "$0")/lib.sh"
GEN=$BUILD/tools/gen_model
[ -x "$GEN" ] || tl_skip "$GEN not built"
tl_tmpdir
# expect (lib.sh): errors are one stderr line naming the program
TL_ERROR='^(codemoe|gen-model): '

has() { grep -q -e "$1" "$TMP/out" || fail "$2: output lacks '$1': $(head -c 400 "$TMP/out")"; }

TINY="--n-embd 64 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 128 --n-vocab 256 --n-ctx 128"

# ---- gen_model ----
expect 0 "gen-model --help" -- "$GEN" --help
has "usage: gen-model" "gen-model --help"
expect 0 "tiny q8_0" -- "$GEN" $TINY --type q8_0 -o "$TMP/tiny.gguf"
expect 0 "tiny q4_k_m (rows too short for K blocks fall back)" -- "$GEN" $TINY --type q4_k_m -o "$TMP/tiny-k.gguf"
expect 0 "tiny moe" -- "$GEN" $TINY --n-expert 4 --n-expert-used 2 --type q4_0 -o "$TMP/tiny-moe.gguf"
expect 0 "same seed" -- "$GEN" $TINY --type q8_0 -o "$TMP/again.gguf"
cmp -s "$TMP/tiny.gguf" "$TMP/again.gguf" || fail "same seed gave different files"
expect 0 "other seed" -- "$GEN" $TINY --type q8_0 --seed 7 -o "$TMP/other.gguf"
cmp -s "$TMP/tiny.gguf" "$TMP/other.gguf" && fail "different seeds gave the same file"
expect 0 "preset dry run" -- "$GEN" --preset moe8x --type q4_k_m --dry-run
has "734.88 MiB" "moe8x q4_k_m size (ANCHORS.md: 735 MiB)"
expect 0 "info on a generated model" -- "$CODEMOE" info "$TMP/tiny-moe.gguf"
has "experts: *4, 2 used" "info on the MoE model"
expect 2 "gen-model bad type" -- "$GEN" $TINY --type q3 -o "$TMP/x.gguf"
expect 2 "gen-model bad preset" -- "$GEN" --preset huge -o "$TMP/x.gguf"
expect 2 "gen-model heads do not divide" -- "$GEN" $TINY --n-head 5 -o "$TMP/x.gguf"
expect 2 "gen-model no output" -- "$GEN" $TINY
expect 2 "gen-model unknown flag" -- "$GEN" --bogus 1 -o "$TMP/x.gguf"
expect 1 "gen-model unwritable output" -- "$GEN" $TINY -o "$TMP/no/such/dir/x.gguf"
expect 1 "gen-model missing vocab" -- "$GEN" $TINY --vocab "$TMP/nope.gguf" -o "$TMP/x.gguf"
[ -e "$TMP/x.gguf" ] && fail "gen-model left an output after failing"

# ---- bench ----
expect 0 "bench --help" -- "$CODEMOE" bench --help
has "usage: codemoe bench" "bench --help"
for f in tiny tiny-k tiny-moe; do
    expect 0 "bench $f" -- "$CODEMOE" bench -m "$TMP/$f.gguf" -p 16 -n 8 -r 2 -t 1 --bw 10
    has "| pp16 | [0-9.]* ± [0-9.]* |" "bench $f"
    has "| tg8 | [0-9.]* ± [0-9.]* |" "bench $f"
    has "tg / bound = [0-9][0-9]*%" "bench $f"
done
# once with the bandwidth measured (1 GiB array), and as JSON
expect 0 "bench measuring bandwidth, json" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" -p 8 -n 4 -r 1 -t 2 --json
has '"tg_over_bound": [0-9]' "bench --json"
has '"bw_measured": true' "bench --json"
has '"threads": 2' "bench --json"
# a CPU that reports its last-level cache: the tiny model's weights fit
# there, so the bound of reading them from the cache is measured too
if grep -q '"llc_bytes": [1-9]' "$TMP/out"; then
    has '"fits_llc": true' "bench --json"
    has '"tg_bound_resident": [0-9]' "bench --json"
else
    has '"llc_bytes": 0' "bench --json"
fi
expect 0 "bench pp only" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" -p 8 -n 0 -r 1 --bw 10
grep -q "| tg" "$TMP/out" && fail "bench -n 0 printed a tg row"

expect 2 "bench unknown flag" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" --bogus
expect 2 "bench non-numeric -p" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" -p abc
expect 2 "bench -r 0" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" -r 0
expect 2 "bench bad -o" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" -o xml
expect 2 "bench bad --bw" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" --bw -3
expect 2 "bench bad --kv-type" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" --kv-type q3
expect 2 "bench missing value" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" -n
expect 2 "bench nothing to do" -- "$CODEMOE" bench -m "$TMP/tiny.gguf" -p 0 -n 0
expect 2 "bench without -m" -- "$CODEMOE" bench -p 4
expect 1 "bench missing model" -- "$CODEMOE" bench -m "$TMP/nope.gguf" --bw 10
grep -q "nope.gguf" "$TMP/err" || fail "missing-model message does not name the file"
printf 'not a model at all' >"$TMP/junk.gguf"
expect 1 "bench on junk" -- "$CODEMOE" bench -m "$TMP/junk.gguf" --bw 10

# ---- a generated model with a real tokenizer runs end to end ----
VOCAB=$SHARED/vocab/ggml-vocab-starcoder.gguf
if [ -f "$VOCAB" ]; then
    expect 0 "gen-model --vocab" -- "$GEN" --n-embd 64 --n-layer 1 --n-head 2 --n-head-kv 1 --n-ff 64 \
        --type q8_0 --vocab "$VOCAB" -o "$TMP/voc.gguf"
    expect 0 "run on a generated model" -- "$CODEMOE" run -m "$TMP/voc.gguf" -p "def f(x):" -n 4 --temp 0
    expect 2 "gen-model --n-vocab below the tokenizer" -- "$GEN" $TINY --vocab "$VOCAB" -o "$TMP/x.gguf"
fi

# ---- corrupted models: bench exits 0 or 1, never crashes ----
# (one thread: on a busy machine OpenMP barriers would make this slow)
size=$(wc -c <"$TMP/tiny.gguf")
i=0
while [ $i -lt 24 ]; do
    off=$(( (i * 7919 + 13) % size ))
    cp "$TMP/tiny.gguf" "$TMP/c.gguf"
    printf '\377\377\377\377\377\377\377\177' | dd of="$TMP/c.gguf" bs=1 seek=$off conv=notrunc 2>/dev/null
    "$CODEMOE" bench -m "$TMP/c.gguf" -p 4 -n 2 -r 1 -t 1 --bw 10 >/dev/null 2>&1
    rc=$?
    [ $rc -le 1 ] || fail "bench on a file corrupted at offset $off exited $rc"
    i=$((i + 1))
done

tl_finish
