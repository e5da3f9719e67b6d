#!/bin/sh
# test_pack_gpu.sh - language-expert packs on each GPU backend this build
# has and this machine can run (CUDA on an NVIDIA GPU; Vulkan, on Mesa's
# lavapipe where there is no GPU).  A pack's members share their frozen
# tensors; on a device only the routed member's tensors are uploaded, so
# these check that what runs there is that member: each member's
# perplexity equals the CPU's, the two members differ, and a sweep over
# the pack (every member loaded in turn, in one process) writes the CPU's
# numbers.
set -u
. "$(dirname "$0")/lib.sh"
GEN="$BUILD/tools/gen_model"
VOCAB="$SHARED/vocab/ggml-vocab-starcoder.gguf"
CORPUS="$SHARED/corpus"
if [ ! -x "$GEN" ] || [ ! -f "$VOCAB" ] || [ ! -f "$CORPUS/python/valid.jsonl.xz" ]; then
    tl_skip "needs tools/gen_model, $VOCAB and the corpus"
fi
backends=$("$CODEMOE" info --devices 2>/dev/null | awk '$2 ~ /^[0-9]+:$/ { print $1 }' | sort -u)
[ -n "$backends" ] || tl_skip "no GPU device here"
tl_tmpdir

# Two f16 members with the same attention and embeddings (as experts
# fine-tuned with those frozen), different feed-forward weights.
dims="--n-embd 256 --n-layer 4 --n-head 4 --n-head-kv 2 --n-ff 1024 --type f16 --vocab $VOCAB"
"$GEN" -o "$TMP/c.gguf" $dims --ffn-seed 1 >/dev/null 2>&1 || fail "gen_model c"
"$GEN" -o "$TMP/py.gguf" $dims --ffn-seed 2 >/dev/null 2>&1 || fail "gen_model python"
"$CODEMOE" pack -o "$TMP/pack.gguf" --expert c="$TMP/c.gguf" --expert python="$TMP/py.gguf" \
    2>"$TMP/err" || fail "pack: $(cat "$TMP/err")"

# ppl BACKEND LANG: the perplexity of the member LANG routes to
ppl() {
    "$CODEMOE" perplexity -m "$TMP/pack.gguf" --corpus "$CORPUS" --lang "$2" -c 64 \
        --max-tokens 128 --backend "$1" --json 2>"$TMP/err" |
        sed -n 's/.*"ppl": \([0-9.e+-]*\),.*/\1/p'
}

# close A B: relative difference at most 1e-4 (F16 KV cache on both)
close() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d <= 1e-4 * a) }'; }

for l in c python; do
    eval "cpu_$l=\$(ppl cpu $l)"
done
# shellcheck disable=SC2154 # set by the eval above
{ [ -n "$cpu_c" ] && [ -n "$cpu_python" ]; } || fail "perplexity on the cpu: $(cat "$TMP/err")"
# shellcheck disable=SC2154
close "$cpu_c" "$cpu_python" && fail "the members score alike ($cpu_c): not two experts"

sweep() {
    "$CODEMOE" sweep -m "$TMP/pack.gguf" --schemes q8_0 --langs c,python -c 64 \
        --max-tokens 128 --backend "$1" --out "$TMP/sweep-$1.csv" >/dev/null 2>"$TMP/err" ||
        fail "sweep on $1: $(tail -n 1 "$TMP/err")"
}
sweep cpu

for b in $backends; do
    for l in c python; do
        got=$(ppl "$b" $l)
        eval "want=\$cpu_$l"
        # shellcheck disable=SC2154
        close "${got:-0}" "$want" || fail "$b: expert $l: perplexity ${got:-(none): $(cat "$TMP/err")}, the cpu's $want"
    done
    sweep "$b"
    # rows: scheme,language,...,ppl (5),...,kld (7); the same members, the same numbers
    # within 1e-3 (the q8_0 model's activations are rounded to 8 bits: a
    # device whose float division rounds differently flips a few of them)
    paste -d, "$TMP/sweep-cpu.csv" "$TMP/sweep-$b.csv" | awk -F, -v b="$b" '
        NR == 1 { n = NF / 2; next }
        { if ($1 != $(n + 1) || $2 != $(n + 2) || $11 != $(n + 11)) { print "row " NR " differs"; bad = 1 }
          d = $5 - $(n + 5); if (d < 0) d = -d
          if (d > 1e-3 * $5) { print b ": " $2 " ppl " $(n + 5) ", the cpu " $5; bad = 1 }
          d = $7 - $(n + 7); if (d < 0) d = -d
          if (d > 1e-4 + 0.01 * $7) { print b ": " $2 " kld " $(n + 7) ", the cpu " $7; bad = 1 } }
        END { if (NR != 3) { print "rows: " NR - 1 ", not 2"; bad = 1 } exit bad }' >"$TMP/diff" ||
        fail "sweep of the pack on $b: $(tr '\n' ' ' <"$TMP/diff")"
    [ "$fails" -eq 0 ] && echo "$b: both experts of the pack agree with the cpu (perplexity and a q8_0 sweep)"
done
[ "$fails" -eq 0 ] || exit 1
