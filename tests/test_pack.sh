#!/bin/sh
# test_pack.sh - language-expert packs and MoE expert residency, measured:
# a routed run keeps only the shared tensors and its own expert resident,
# and --moe-ram-budget bounds the resident experts.
set -u
. "$(dirname "$0")/lib.sh"
# Under AddressSanitizer freed memory waits in a quarantine (256 MiB by
# default) that peak RSS would count: a small one leaves codemoe's own.
ASAN_OPTIONS="quarantine_size_mb=8${ASAN_OPTIONS:+:$ASAN_OPTIONS}"; export ASAN_OPTIONS
GEN="$BUILD/tools/gen_model"
VOCAB="$SHARED/vocab/ggml-vocab-starcoder.gguf"
if [ ! -x "$GEN" ] || [ ! -f "$VOCAB" ]; then
    tl_skip "needs tools/gen_model and $VOCAB"
fi
tl_tmpdir

# Four experts that differ only in their feed-forward weights (as experts
# fine-tuned with frozen embeddings and attention do): 51 MiB each of own
# weights, 57 MiB shared.
dims="--n-embd 512 --n-layer 8 --n-head 8 --n-head-kv 4 --n-ff 4096 --type q8_0 --vocab $VOCAB"
seed=1
for l in c python java javascript; do
    "$GEN" -o "$TMP/$l.gguf" $dims --ffn-seed $seed >/dev/null 2>&1 || fail "gen_model $l"
    seed=$((seed + 1))
done
"$CODEMOE" pack -o "$TMP/pack.gguf" --expert c="$TMP/c.gguf" --expert python="$TMP/python.gguf" \
    --expert java="$TMP/java.gguf" --expert javascript="$TMP/javascript.gguf" 2>"$TMP/err" ||
    fail "pack: $(cat "$TMP/err")"
grep -q "51 tensors shared" "$TMP/err" || fail "pack did not share the frozen tensors: $(cat "$TMP/err")"
members=$(ls -l "$TMP"/c.gguf | awk '{ print $5 }')
packsize=$(ls -l "$TMP"/pack.gguf | awk '{ print $5 }')
[ "$packsize" -lt $((members * 3)) ] || fail "pack of 4 is $packsize bytes, not much less than 4 members"

"$CODEMOE" info "$TMP/pack.gguf" >"$TMP/info" || fail "info on the pack"
for l in c python java javascript; do
    grep -q "^  $l " "$TMP/info" || fail "info does not list expert $l"
done
grep -q "all experts resident" "$TMP/info" || fail "info lacks the resident totals"
shared=$(awk '$1 == "shared" { print $2 }' "$TMP/info")
own=$(awk '$1 == "python" { print $2 }' "$TMP/info")

# Peak RSS of a routed run: shared + one expert + KV cache (256 tokens,
# under 2 MiB here) + buffers, within 64 MiB; all four experts resident
# would be 153 MiB more than one.
"$CODEMOE" run -m "$TMP/pack.gguf" --lang python -p "def add(a, b):" -n 8 -c 256 -t 1 \
    >/dev/null 2>"$TMP/err" || fail "routed run: $(cat "$TMP/err")"
grep -q "expert python" "$TMP/err" || fail "run did not report the expert"
rss=$(sed -n 's/.*peak RSS \([0-9.]*\) MiB.*/\1/p' "$TMP/err")
ok=$(awk -v r="$rss" -v s="$shared" -v o="$own" 'BEGIN { print (r <= s + o + 2 + 64) ? 1 : 0 }')
echo "routed run: peak RSS $rss MiB; shared $shared MiB + expert $own MiB + 64 MiB allowed"
[ "$ok" = 1 ] || fail "peak RSS $rss MiB exceeds shared $shared + expert $own + KV + 64 MiB"

# Several prompts in one process: the router sends each to its expert, and
# switching releases the previous expert, so RSS stays at one expert's.
printf '#!/usr/bin/env python3\nimport sys\n' >"$TMP/script"
"$CODEMOE" run -m "$TMP/pack.gguf" -p 'public class Main { public static void main(String[] args) {' \
    -p '#include <stdio.h>
int main(void) {' -f "$TMP/script" -n 4 -c 256 -t 1 >/dev/null 2>"$TMP/err" ||
    fail "three prompts: $(cat "$TMP/err")"
grep -q "language java (classifier.*expert java" "$TMP/err" || fail "java prompt: $(grep expert "$TMP/err")"
grep -q "language c (classifier.*expert c" "$TMP/err" || fail "c prompt: $(grep expert "$TMP/err")"
grep -q "language python (shebang.*expert python" "$TMP/err" || fail "python file: $(grep expert "$TMP/err")"
rss=$(sed -n 's/.*peak RSS \([0-9.]*\) MiB.*/\1/p' "$TMP/err" | tail -1)
awk -v r="$rss" -v s="$shared" -v o="$own" 'BEGIN { exit !(r <= s + o + 2 + 64) }' ||
    fail "after switching experts twice peak RSS is $rss MiB, more than one expert's"
"$CODEMOE" route -m "$TMP/pack.gguf" -p 'fn main() { let v: Vec<u8> = Vec::new(); }' >"$TMP/route"
[ "$(sed -n 1p "$TMP/route")" = rust ] || fail "route: rust text detected as $(sed -n 1p "$TMP/route")"
[ "$(sed -n 2p "$TMP/route")" != rust ] || fail "route: the pack has no rust expert"

# perplexity on a pack scores --lang's expert (or --expert's), like run.
printf 'def f(x):\n    return x + 1\n\n' >"$TMP/text"
for i in 1 2 3 4 5 6; do cat "$TMP/text" "$TMP/text" >"$TMP/text2" && mv "$TMP/text2" "$TMP/text"; done
"$CODEMOE" perplexity -m "$TMP/pack.gguf" -f "$TMP/text" --expert java -c 64 --chunks 1 -t 1 \
    >/dev/null 2>"$TMP/err" || fail "perplexity --expert java: $(cat "$TMP/err")"
grep -q "perplexity: expert java" "$TMP/err" || fail "perplexity did not use expert java: $(cat "$TMP/err")"
"$CODEMOE" perplexity -m "$TMP/pack.gguf" -f "$TMP/text" --expert rust -c 64 --chunks 1 -t 1 \
    >/dev/null 2>"$TMP/err" && fail "perplexity --expert rust on a pack without it succeeded"
grep -q "no expert 'rust'" "$TMP/err" || fail "perplexity --expert rust: $(cat "$TMP/err")"
"$CODEMOE" perplexity -m "$TMP/c.gguf" -f "$TMP/text" --expert c -c 64 --chunks 1 -t 1 \
    >/dev/null 2>"$TMP/err"
[ $? = 2 ] || fail "perplexity --expert on a single model should be a usage error"

# Bad packs and routing.
"$GEN" -o "$TMP/odd.gguf" --n-embd 512 --n-layer 8 --n-head 8 --n-head-kv 4 --n-ff 2048 \
    --type q8_0 --vocab "$VOCAB" >/dev/null 2>&1
"$CODEMOE" pack -o "$TMP/bad.gguf" --expert c="$TMP/c.gguf" --expert rust="$TMP/odd.gguf" 2>"$TMP/err"
[ $? = 1 ] && grep -q "experts differ" "$TMP/err" || fail "mismatched shapes: $(cat "$TMP/err")"
[ -e "$TMP/bad.gguf" ] && fail "a failed pack left its output"
"$CODEMOE" pack -o "$TMP/bad.gguf" --expert cobol="$TMP/c.gguf" 2>/dev/null
[ $? = 2 ] || fail "unknown language should be a usage error"
"$CODEMOE" run -m "$TMP/pack.gguf" --lang rust -p "fn main() {" -n 2 2>"$TMP/err" >/dev/null
[ $? = 1 ] && grep -q "no expert for rust" "$TMP/err" || fail "missing expert without fallback: $(cat "$TMP/err")"

# Token-level MoE under a RAM budget: 8 experts of 0.8 MiB per layer, 2 used.
"$GEN" -o "$TMP/moe.gguf" --n-embd 256 --n-layer 4 --n-head 4 --n-head-kv 2 --n-ff 1024 \
    --n-expert 8 --n-expert-used 2 --type q8_0 --vocab "$VOCAB" >/dev/null 2>&1 || fail "gen moe"
"$CODEMOE" run -m "$TMP/moe.gguf" -p "int main(void) {" -n 16 -c 128 -t 1 --moe-stats \
    --moe-ram-budget 2M >/dev/null 2>"$TMP/err" || fail "moe run: $(cat "$TMP/err")"
grep -q "hit rate" "$TMP/err" || fail "no residency report"
grep -q "layer  3 tokens per expert" "$TMP/err" || fail "no per-expert token counts"
ev=$(sed -n 's/.*, \([0-9]*\) evictions.*/\1/p' "$TMP/err")
peak=$(sed -n 's/.*(peak \([0-9.]*\) MiB, budget set).*/\1/p' "$TMP/err")
echo "moe: $(grep 'hit rate' "$TMP/err")"
[ "${ev:-0}" -gt 0 ] || fail "a 2 MiB budget over 25 MiB of experts should evict"
awk -v p="$peak" 'BEGIN { exit !(p <= 2.0) }' || fail "resident experts peaked at $peak MiB > 2 MiB"
"$CODEMOE" run -m "$TMP/c.gguf" -p "x" -n 1 --moe-ram-budget 1M >/dev/null 2>&1
[ $? = 2 ] || fail "--moe-ram-budget on a dense model should be a usage error"

tl_finish
