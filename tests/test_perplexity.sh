#!/bin/sh
# test_perplexity.sh - `codemoe perplexity` as scripts meet it: the last line
# llama.cpp's parsers expect, KL divergence against saved logits, the corpus
# reader against Python's json module, and one-line errors on bad input.
# (The numbers themselves are checked against an independent computation in
# test_perplexity.c.)
set -u
. "$(dirname "$0")/lib.sh"
FIX="$SHARED/fixtures/gguf/llama"
CORPUS="$SHARED/corpus"
if [ ! -f "$FIX/llama-f32.gguf" ] || [ ! -f "$CORPUS/python/valid.jsonl.xz" ]; then
    tl_skip "fixtures or corpus not found at $SHARED (set CM_SHARED)"
fi
tl_tmpdir
F32="$FIX/llama-f32.gguf"
Q8="$FIX/llama-q8_0.gguf"
SAMPLE="$CORPUS/python/sample.txt"

# expect (lib.sh): errors are one stderr line starting "codemoe: " besides
# the progress lines, which start "perplexity: "
TL_PROGRESS='^perplexity: '

# json_num FILE KEY: the number after "KEY": in a one-line JSON object
json_num() { sed -n "s/.*\"$2\": \([-0-9.eE+]*\).*/\1/p" "$1"; }
# cmp_num A OP B: floating-point comparison through awk
cmp_num() { awk -v a="$1" -v b="$3" "BEGIN { exit !(a $2 b) }"; }

PPL_RE='^Final estimate: PPL = [0-9]+\.[0-9]{4} \+/- [0-9]+\.[0-9]{5}$'

# ---- usage ----
expect 0 "help" -- "$CODEMOE" perplexity --help
grep -q "usage: codemoe perplexity" "$TMP/out" || fail "--help has no usage line"
expect 2 "no text" -- "$CODEMOE" perplexity -m "$F32"
expect 2 "both -f and --corpus" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" --corpus "$CORPUS" --lang c
expect 2 "--corpus without --lang" -- "$CODEMOE" perplexity -m "$F32" --corpus "$CORPUS"
expect 2 "bad --split" -- "$CODEMOE" perplexity -m "$F32" --corpus "$CORPUS" --lang c --split test
expect 2 "bad -c" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 2
expect 2 "unknown flag" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" --bogus

# ---- the text output: running values, then the final line last ----
expect 0 "sample.txt" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256
tail -n 1 "$TMP/out" | grep -Eq "$PPL_RE" || fail "last line is not a final estimate: $(tail -n 1 "$TMP/out")"
grep -q '^\[1\][0-9]*\.[0-9]\{4\},\[2\]' "$TMP/out" || fail "no running values: $(head -c 200 "$TMP/out")"
final_f32=$(tail -n 1 "$TMP/out")
cp "$TMP/out" "$TMP/f32.txt"

# ---- KL divergence: itself, then q8_0 against f32 ----
expect 0 "save base logits" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --chunks 12 --save-logits "$TMP/base.lg"
[ -s "$TMP/base.lg" ] || fail "no logits file"
grep -q "\[12\]$(sed -n 's/^.*\[12\]\([0-9.]*\),.*/\1/p' "$TMP/f32.txt")," "$TMP/out" || fail "saving logits changed the result"
ls "$TMP" | grep -q '\.tmp\.' && fail "temporary file left behind"
expect 0 "KLD vs itself" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --chunks 12 --kld-base "$TMP/base.lg" --json
kld=$(json_num "$TMP/out" mean); top1=$(json_num "$TMP/out" top1)
echo "f32 vs f32 base: KLD $kld, top-1 $top1 %"
cmp_num "$kld" "<" 1e-5 && cmp_num "$kld" ">=" -1e-9 || fail "KLD of a model against itself is $kld"
cmp_num "$top1" "==" 100 || fail "top-1 agreement with itself is $top1"
expect 0 "KLD q8_0 vs f32" -- "$CODEMOE" perplexity -m "$Q8" -f "$SAMPLE" -c 256 --kld-base "$TMP/base.lg"
tail -n 1 "$TMP/out" | grep -Eq "$PPL_RE" || fail "KLD run: last line is not a final estimate"
kld=$(sed -n 's/^Mean KLD: *\([0-9.]*\) .*/\1/p' "$TMP/out")
top1=$(sed -n 's/^Same top-1: *\([0-9.]*\) .*/\1/p' "$TMP/out")
echo "q8_0 vs f32 base: KLD $kld, top-1 $top1 %"
cmp_num "$kld" ">" 0 && cmp_num "$kld" "<" 0.01 || fail "q8_0 KLD $kld not small and positive"
cmp_num "$top1" ">" 85 || fail "q8_0 top-1 agreement only $top1 %"
expect 0 "KLD vs f32-saved base" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --chunks 4 --save-logits "$TMP/b32.lg" --save-f32
expect 0 "KLD vs itself (f32 file)" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --kld-base "$TMP/b32.lg" --json
cmp_num "$(json_num "$TMP/out" n_chunk)" "==" 4 || fail "run not capped to the base's 4 chunks"
cmp_num "$(json_num "$TMP/out" mean)" "<" 1e-9 || fail "f32 self KLD $(json_num "$TMP/out" mean)"

# mismatched base files
expect 1 "base from another text" -- "$CODEMOE" perplexity -m "$F32" -f "$CORPUS/c/sample.txt" -c 256 --kld-base "$TMP/base.lg"
grep -q "base.lg" "$TMP/err" || fail "mismatch message does not name the file"
expect 1 "base with another -c" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 128 --kld-base "$TMP/base.lg"
head -c 100000 "$TMP/base.lg" >"$TMP/trunc.lg"
expect 1 "truncated base" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --kld-base "$TMP/trunc.lg"
# a run of rows overwritten with 0xFF (f16 NaN, argmax -1): an error naming the file
cp "$TMP/base.lg" "$TMP/nan.lg"
blocks=$(( $(wc -c <"$TMP/base.lg") / 4096 ))
head -c $(( blocks / 8 * 4096 )) /dev/zero | tr '\000' '\377' |
    dd of="$TMP/nan.lg" bs=4096 seek=$(( blocks / 2 )) conv=notrunc 2>/dev/null
expect 1 "base with corrupt rows" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --kld-base "$TMP/nan.lg"
grep -q "nan.lg: .*not a distribution" "$TMP/err" || fail "corrupt rows: $(cat "$TMP/err")"
expect 1 "base not a logits file" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --kld-base "$F32"
expect 1 "missing base" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --kld-base "$TMP/none.lg"
expect 1 "unwritable logits" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --save-logits "$TMP/no/dir/x.lg"

# ---- the corpus ----
expect 0 "corpus" -- "$CODEMOE" perplexity -m "$F32" --corpus "$CORPUS" --lang python --max-tokens 4096 -c 256
tail -n 1 "$TMP/out" | grep -Eq "$PPL_RE" || fail "corpus: last line is not a final estimate"
echo "corpus python, 4096 tokens: $(tail -n 1 "$TMP/out")"
expect 0 "corpus, json" -- "$CODEMOE" perplexity -m "$F32" --corpus "$CORPUS" --lang python --split valid --max-tokens 4096 -c 256 --json
[ "$(wc -l <"$TMP/out")" = 1 ] || fail "--json printed more than one line on stdout"
cmp_num "$(json_num "$TMP/out" n_tokens)" "==" 4096 || fail "--max-tokens 4096 not applied"
if command -v python3 >/dev/null 2>&1 && python3 -c 'import json, lzma' 2>/dev/null; then
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$TMP/out" || fail "--json output is not JSON"
    # the whole split decoded by Python, as a plain file: same tokens, same PPL
    python3 - "$CORPUS/go/valid.jsonl.xz" "$TMP/go.txt" <<'EOF'
import json, lzma, sys
with lzma.open(sys.argv[1], "rt", encoding="utf-8", errors="surrogatepass") as f:
    docs = [json.loads(l)["content"] for l in f if l.strip()]
open(sys.argv[2], "wb").write("\n\n".join(docs).encode("utf-8", "surrogatepass"))
EOF
    "$CODEMOE" perplexity -m "$F32" -f "$TMP/go.txt" -c 64 --chunks 6 --json >"$TMP/a.json" 2>/dev/null
    "$CODEMOE" perplexity -m "$F32" --corpus "$CORPUS" --lang go -c 64 --chunks 6 --json >"$TMP/b.json" 2>/dev/null
    a=$(json_num "$TMP/a.json" n_tokens)$(json_num "$TMP/a.json" ppl)
    b=$(json_num "$TMP/b.json" n_tokens)$(json_num "$TMP/b.json" ppl)
    [ -n "$a" ] && [ "$a" = "$b" ] || fail "corpus reader differs from Python's json: $a vs $b"
else
    echo "note: python3 with lzma missing, corpus-vs-Python check skipped"
fi

# ---- bad input ----
expect 1 "missing corpus dir" -- "$CODEMOE" perplexity -m "$F32" --corpus "$TMP/nocorpus" --lang python
expect 1 "missing language" -- "$CODEMOE" perplexity -m "$F32" --corpus "$CORPUS" --lang cobol
grep -q "python" "$TMP/err" || fail "missing-language message does not list the languages"
mkdir -p "$TMP/cc/python"
size=$(wc -c <"$CORPUS/python/valid.jsonl.xz")
head -c $((size / 2)) "$CORPUS/python/valid.jsonl.xz" >"$TMP/cc/python/valid.jsonl.xz"
expect 1 "truncated .xz" -- "$CODEMOE" perplexity -m "$F32" --corpus "$TMP/cc" --lang python -c 256
grep -q "xz" "$TMP/err" || fail "truncated-xz message does not say so: $(cat "$TMP/err")"
if command -v xz >/dev/null 2>&1; then
    printf '{"content": "ok"}\n{"content": broken}\n' | xz >"$TMP/cc/python/valid.jsonl.xz"
    expect 1 "malformed JSON line" -- "$CODEMOE" perplexity -m "$F32" --corpus "$TMP/cc" --lang python
    grep -q "line 2" "$TMP/err" || fail "malformed-line message does not name the line"
fi
expect 1 "text shorter than 2 x ctx" -- "$CODEMOE" perplexity -m "$F32" -f "$SAMPLE" -c 256 --max-tokens 400
expect 1 "missing text file" -- "$CODEMOE" perplexity -m "$F32" -f "$TMP/none.txt"
expect 1 "missing model" -- "$CODEMOE" perplexity -m "$TMP/none.gguf" -f "$SAMPLE"

tl_finish
