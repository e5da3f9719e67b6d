#!/bin/sh
# test_cli.sh - the codemoe command as a user meets it: exit codes, one-line
# errors on bad input, no partial output files, and real runs on fixtures.
set -u
. "$(dirname "$0")/lib.sh"
FIX="$SHARED/fixtures/gguf/llama"
[ -f "$FIX/llama-f32.gguf" ] || tl_skip "fixtures not found at $SHARED (set CM_SHARED)"
tl_tmpdir
# expect (lib.sh): errors are one stderr line starting "codemoe: "

# ---- usage errors exit 2 ----
expect 0 "top-level help" -- "$CODEMOE" --help
expect 2 "unknown command" -- "$CODEMOE" frobnicate
for cmd in run info logits tokenize perplexity convert pack quantize bench; do
    expect 0 "$cmd --help" -- "$CODEMOE" $cmd --help
    grep -q "usage: codemoe $cmd" "$TMP/out" || fail "$cmd --help has no usage line"
done
expect 2 "unknown flag" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p x --bogus
expect 2 "non-numeric -n" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p x -n abc
expect 2 "missing value" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p
expect 2 "no prompt" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -n 4
expect 2 "bad --top-p" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p x --top-p 2
expect 2 "bad --kv-type" -- "$CODEMOE" logits -m "$FIX/llama-f32.gguf" --ids 1 -o "$TMP/x" --kv-type q3
expect 2 "bad --ids" -- "$CODEMOE" logits -m "$FIX/llama-f32.gguf" --ids 1,x -o "$TMP/x"
expect 2 "zero --vram-budget" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p x --vram-budget 0
expect 2 "bad --vram-budget" -- "$CODEMOE" bench -m "$FIX/llama-f32.gguf" --vram-budget 3X
expect 2 "negative -ngl" -- "$CODEMOE" logits -m "$FIX/llama-f32.gguf" --ids 1 -o "$TMP/x" -ngl -1
expect 2 "bad --gpu-layers" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p x --gpu-layers many
# placement options mean nothing to a backend that reads host memory: accepted, no effect
expect 0 "-ngl on the cpu" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p x -n 2 --temp 0 -ngl 1 --vram-budget 1M

# ---- bad input exits 1 with one line naming the problem ----
expect 1 "missing model" -- "$CODEMOE" run -m "$TMP/nope.gguf" -p x
grep -q "nope.gguf" "$TMP/err" || fail "missing-model message does not name the file"
expect 1 "missing prompt file" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -f "$TMP/nope.txt"
head -c 5000 "$FIX/llama-f32.gguf" >"$TMP/trunc.gguf"
expect 1 "truncated model" -- "$CODEMOE" info "$TMP/trunc.gguf"
printf 'not a model at all' >"$TMP/junk.gguf"
expect 1 "not a GGUF file" -- "$CODEMOE" run -m "$TMP/junk.gguf" -p x
expect 1 "vocab-only file has no weights" -- "$CODEMOE" run -m "$SHARED/vocab/ggml-vocab-gpt-2.gguf" -p x
long=$(awk 'BEGIN { for (i = 0; i < 300; i++) printf "int x%d = %d; ", i, i }')
expect 1 "prompt longer than context" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -c 64 -p "$long"
grep -q "context" "$TMP/err" || fail "long-prompt message does not mention the context"
expect 1 "id outside vocabulary" -- "$CODEMOE" logits -m "$FIX/llama-f32.gguf" --ids 1,99999 -o "$TMP/bad.f32"
[ -e "$TMP/bad.f32" ] && fail "logits left an output file after failing"
expect 1 "unwritable output" -- "$CODEMOE" logits -m "$FIX/llama-f32.gguf" --ids 1,2 -o "$TMP/no/such/dir/x.f32"

# Corrupted copies of a real file: whatever happens, no crash (exit 0 or 1).
size=$(wc -c <"$FIX/llama-q8_0.gguf")
i=0
while [ $i -lt 40 ]; do
    off=$(( (i * 7919 + 13) % 6000 ))
    cp "$FIX/llama-q8_0.gguf" "$TMP/c.gguf"
    printf '\377\377\377\377\377\377\377\177' | dd of="$TMP/c.gguf" bs=1 seek=$off conv=notrunc 2>/dev/null
    "$CODEMOE" info "$TMP/c.gguf" >/dev/null 2>&1
    rc=$?
    [ $rc -le 1 ] || fail "info on a file corrupted at offset $off exited $rc (size $size)"
    i=$((i + 1))
done

# ---- real work ----
# The shipped default model (a language-expert pack) runs without -m.
expect 0 "default model" -- "$CODEMOE" run -p "def add(a, b):" -n 8 --temp 0 -t 1
[ -s "$TMP/out" ] || fail "the default model printed nothing"
grep -q "expert" "$TMP/err" || fail "the default model did not report its expert"
# ... and is a real code model: its rust expert's perplexity on unseen rust
# (the corpus valid split) is far below a model that knows nothing (~49,000)
MODELS=$(cd "$(dirname "$0")/../models" && pwd)
if [ -d "$SHARED/corpus/rust" ]; then
    expect 0 "default model perplexity" -- "$CODEMOE" perplexity -m "$MODELS/default.gguf" \
        --corpus "$SHARED/corpus" --lang rust -c 512 --max-tokens 4096 -t 1
    grep -q "expert rust" "$TMP/err" || fail "perplexity on the pack did not use the rust expert"
    ppl=$(sed -n 's/^Final estimate: PPL = \([0-9.]*\).*/\1/p' "$TMP/out")
    awk -v p="${ppl:-1e9}" 'BEGIN { exit !(p < 10) }' || fail "default model rust PPL $ppl, not < 10"
fi

expect 0 "info" -- "$CODEMOE" info "$FIX/llama-q8_0.gguf"
grep -q "architecture: *llama" "$TMP/out" || fail "info does not print the architecture"
grep -q "q8_0" "$TMP/out" || fail "info does not list the q8_0 tensors"

expect 0 "greedy run" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p "int main(" -n 12 --temp 0
[ -s "$TMP/out" ] || fail "run printed nothing"
grep -q "tok/s" "$TMP/err" || fail "run does not report tok/s on stderr"
cp "$TMP/out" "$TMP/greedy1"
"$CODEMOE" run -m "$FIX/llama-f32.gguf" -p "int main(" -n 12 --temp 0 >"$TMP/greedy2" 2>/dev/null
cmp -s "$TMP/greedy1" "$TMP/greedy2" || fail "greedy runs differ"
"$CODEMOE" run -m "$FIX/llama-f32.gguf" -p "def f(" -n 20 --seed 7 >"$TMP/s1" 2>/dev/null
"$CODEMOE" run -m "$FIX/llama-f32.gguf" -p "def f(" -n 20 --seed 7 >"$TMP/s2" 2>/dev/null
cmp -s "$TMP/s1" "$TMP/s2" || fail "same seed gave different samples"
printf 'for (int i = 0; i < n; i++) {\n' >"$TMP/prompt.c"
expect 0 "prompt from file" -- "$CODEMOE" run -m "$FIX/llama-q4_0.gguf" -f "$TMP/prompt.c" -n 8 -t 1

# --stop: the stop string never appears in the output.
first=$(head -c 3 "$TMP/greedy1")
if [ -n "$first" ]; then
    "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p "int main(" -n 12 --temp 0 --stop "$first" >"$TMP/stopped" 2>/dev/null
    [ -s "$TMP/stopped" ] && fail "output continued past a stop string at its start"
fi

# tokenize: the ids llama.cpp's own test vectors give (first vector of each file).
for v in gpt-2 starcoder deepseek-coder llama-spm; do
    inp="$SHARED/vocab/ggml-vocab-$v.gguf.inp"
    text=$(awk '/^__ggml_vocab_test__$/ { exit } { print }' "$inp")
    want=$(head -n 1 "$SHARED/vocab/ggml-vocab-$v.gguf.out" | awk '{ $1 = $1; gsub(/ /, ", "); print "[" $0 "]" }')
    got=$("$CODEMOE" tokenize -m "$SHARED/vocab/ggml-vocab-$v.gguf" -p "$text")
    [ "$got" = "$want" ] || fail "tokenize $v: got $got, want $want"
done

# logits: the file format of the fixtures, and the same numbers as transformers.
"$CODEMOE" logits -m "$FIX/llama-f32.gguf" --ids 876,731,349,863,9,624,191 --kv-type f32 \
    -o "$TMP/l.f32" 2>"$TMP/err" || fail "logits failed: $(cat "$TMP/err")"
python3 - "$TMP/l.f32" "$SHARED/fixtures/hf/llama/logits_1.f32" <<'PY' || fail "logits differ from transformers"
import array, sys
a, b = array.array('f'), array.array('f')
a.frombytes(open(sys.argv[1], 'rb').read()); b.frombytes(open(sys.argv[2], 'rb').read())
assert len(a) == len(b) == 7 * 1000, (len(a), len(b))
d = max(abs(x - y) for x, y in zip(a, b))
print("cli logits vs transformers: max-abs %.2e" % d)
sys.exit(0 if d <= 1e-3 else 1)
PY

tl_finish
