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
for cmd in run info logits tokenize perplexity convert pack quantize bench route sweep; do
    expect 0 "$cmd --help" -- "$CODEMOE" $cmd --help
    grep -q "usage: codemoe $cmd" "$TMP/out" || fail "$cmd --help has no usage line"
    # every command parses with getopt_long: one line naming the flag, exit 2
    expect 2 "$cmd --bogus" -- "$CODEMOE" $cmd --bogus
    grep -q "unknown option --bogus" "$TMP/err" || fail "$cmd --bogus: $(cat "$TMP/err")"
    expect 2 "$cmd -Z" -- "$CODEMOE" $cmd -Z
    grep -q "unknown option -Z" "$TMP/err" || fail "$cmd -Z: $(cat "$TMP/err")"
    expect 0 "$cmd -h" -- "$CODEMOE" $cmd -h
done
# a stray argument is named, in every command that takes none
for cmd in run logits tokenize perplexity pack bench route sweep; do
    expect 2 "$cmd stray argument" -- "$CODEMOE" $cmd stray -m "$FIX/llama-f32.gguf"
    grep -q "'stray'" "$TMP/err" || fail "$cmd: the stray argument is not named: $(cat "$TMP/err")"
done
expect 2 "unknown flag" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p x --bogus
expect 2 "non-numeric -n" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p x -n abc
expect 2 "missing value" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -p
expect 2 "no prompt" -- "$CODEMOE" run -m "$FIX/llama-f32.gguf" -n 4 </dev/null
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

# ---- llama-cli's flags (issue 19) ----
M="$FIX/llama-f32.gguf"
gen() { grep -o 'generated [0-9]* tok' "$TMP/err" | grep -o '[0-9]*'; }
expect 0 "-n1 --temp=0" -- "$CODEMOE" run -m "$M" -p "int main(" -n1 --temp=0
[ "$(gen)" = 1 ] || fail "-n1 generated $(gen) tokens, not 1"
case $(cat "$TMP/greedy1") in "$(cat "$TMP/out")"*) ;; *) fail "-n1 is not the first token of -n 12";; esac
expect 0 "--n-predict=3" -- "$CODEMOE" run -m "$M" -p "int main(" --n-predict=3 --temp 0
[ "$(gen)" = 3 ] || fail "--n-predict=3 generated $(gen) tokens"
expect 0 "--predict 3, -t1" -- "$CODEMOE" run -m "$M" -p "int main(" --predict 3 --temp 0 -t1
[ "$(gen)" = 3 ] || fail "--predict 3 generated $(gen) tokens"
expect 2 "-n -2" -- "$CODEMOE" run -m "$M" -p x -n -2
expect 2 "missing value at the end" -- "$CODEMOE" run -m "$M" -p x --temp
grep -q "option --temp needs a value" "$TMP/err" || fail "missing value: $(cat "$TMP/err")"
expect 2 "ambiguous abbreviation" -- "$CODEMOE" run -m "$M" -p x --t 1
grep -q "ambiguous" "$TMP/err" || fail "--t: $(cat "$TMP/err")"
expect 2 "a value for a switch" -- "$CODEMOE" run -m "$M" -p x --no-bos=1
grep -q "takes no value" "$TMP/err" || fail "--no-bos=1: $(cat "$TMP/err")"
expect 0 "an abbreviation" -- "$CODEMOE" run -m "$M" -p "int main(" --n-pred 2 --te 0
[ "$(gen)" = 2 ] || fail "--n-pred 2 generated $(gen) tokens"
# -- ends the options: what follows is an argument, even if it looks like a flag
expect 2 "-- in run" -- "$CODEMOE" run -m "$M" -p x -- -n 3
grep -q "unexpected argument '-n'" "$TMP/err" || fail "run -- -n: $(cat "$TMP/err")"
expect 0 "info -- MODEL" -- "$CODEMOE" info -- "$FIX/llama-q8_0.gguf"
expect 1 "info -- --tensors is a file name" -- "$CODEMOE" info -- --tensors
grep -q "cannot open --tensors" "$TMP/err" || fail "info -- --tensors: $(cat "$TMP/err")"
expect 0 "tokenize -p with a leading dash" -- "$CODEMOE" tokenize -m "$M" -p -ngl
expect 0 "tokenize -p-ngl" -- "$CODEMOE" tokenize -m "$M" -p-ngl
[ "$(cat "$TMP/out")" = "$("$CODEMOE" tokenize -m "$M" -p -ngl)" ] || fail "-p-ngl differs from -p -ngl"
expect 2 "info with two models" -- "$CODEMOE" info "$M" "$M"
expect 2 "quantize with four arguments" -- "$CODEMOE" quantize "$M" "$TMP/q.gguf" q8_0 extra
[ -e "$TMP/q.gguf" ] && fail "a refused quantize wrote its output"

# the prompt from standard input, piped, redirected or -f -: the same ids as -p
printf 'int main(' >"$TMP/p.txt"
printf 'int main(' | "$CODEMOE" run -m "$M" -n 12 --temp 0 >"$TMP/piped" 2>"$TMP/err" || fail "piped prompt: $(cat "$TMP/err")"
cmp -s "$TMP/piped" "$TMP/greedy1" || fail "a piped prompt gives another completion than -p"
expect 0 "-f - from a file" -- "$CODEMOE" run -m "$M" -f - -n 12 --temp 0 <"$TMP/p.txt"
cmp -s "$TMP/out" "$TMP/greedy1" || fail "-f - gives another completion than -p"
expect 0 "redirected stdin" -- "$CODEMOE" run -m "$M" -n 12 --temp 0 <"$TMP/p.txt"
cmp -s "$TMP/out" "$TMP/greedy1" || fail "a redirected prompt gives another completion than -p"
expect 1 "empty standard input" -- "$CODEMOE" run -m "$M" -f - -n 2 </dev/null
grep -q "standard input is empty" "$TMP/err" || fail "empty stdin: $(cat "$TMP/err")"
expect 2 "-f - twice" -- "$CODEMOE" run -m "$M" -f - -f - <"$TMP/p.txt"
expect 0 "tokenize -f -" -- "$CODEMOE" tokenize -m "$M" -f - <"$TMP/p.txt"
[ "$(cat "$TMP/out")" = "$("$CODEMOE" tokenize -m "$M" -p 'int main(')" ] || fail "tokenize -f - differs from -p"

# -e: escapes in -p and --stop become the characters
nl='
'
"$CODEMOE" run -m "$M" -p "int${nl}main(" -n 8 --temp 0 >"$TMP/nl1" 2>/dev/null
expect 0 "-e" -- "$CODEMOE" run -m "$M" -e -p 'int\nmain(' -n 8 --temp 0
cmp -s "$TMP/out" "$TMP/nl1" || fail "-e -p 'int\\nmain(' differs from a real newline"
expect 0 "--escape --no-escape" -- "$CODEMOE" run -m "$M" --escape --no-escape -p 'int\nmain(' -n 8 --temp 0
cmp -s "$TMP/out" "$TMP/nl1" && fail "--no-escape did not turn -e off"
expect 2 "-e --stop that unescapes to nothing" -- "$CODEMOE" run -m "$M" -e -p x --stop '\x00'

# -s is --seed; -s -1 a random seed, printed
"$CODEMOE" run -m "$M" -p "def f(" -n 20 -s 7 >"$TMP/s3" 2>/dev/null
cmp -s "$TMP/s1" "$TMP/s3" || fail "-s 7 differs from --seed 7"
expect 0 "-s -1" -- "$CODEMOE" run -m "$M" -p "def f(" -n 2 -s -1
grep -q '^\[codemoe\] seed [0-9]' "$TMP/err" || fail "-s -1 did not print its seed"

# -n -1: until end of text or a full context; -c 0: the trained context (256)
expect 0 "-n -1 -c 40" -- "$CODEMOE" run -m "$M" -p "int" -n -1 --temp 0 --ignore-eos -c 40
grep -q "(context full)" "$TMP/err" || fail "-n -1 -c 40 did not run to a full context: $(cat "$TMP/err")"
g40=$(gen)
expect 0 "-n -1 -c 0" -- "$CODEMOE" run -m "$M" -p "int" -n -1 --temp 0 --ignore-eos -c 0
grep -q "(context full)" "$TMP/err" || fail "-n -1 -c 0 did not run to a full context"
[ "$(gen)" -eq $((g40 + 216)) ] || fail "-c 0 generated $(gen) tokens, -c 40 $g40: not the 256 trained"
grep -q "warning" "$TMP/err" && fail "-c 0 warned: $(cat "$TMP/err")"
expect 0 "-c above the trained context" -- "$CODEMOE" run -m "$M" -p "int" -n 1 -c 300
grep -q "warning: -c 300 is more than the 256 tokens" "$TMP/err" || fail "no warning for -c 300: $(cat "$TMP/err")"
# --ignore-eos: a seed whose sample ends at end of text runs on to a full context
seed=1
while [ $seed -le 30 ]; do
    "$CODEMOE" run -m "$M" -p x -n -1 --temp 1.5 --top-k 0 --min-p 0 -s $seed >/dev/null 2>"$TMP/err"
    grep -q "(end of text)" "$TMP/err" && break
    seed=$((seed + 1))
done
if [ $seed -le 30 ]; then
    expect 0 "--ignore-eos" -- "$CODEMOE" run -m "$M" -p x -n -1 --temp 1.5 --top-k 0 --min-p 0 -s $seed --ignore-eos
    grep -q "(context full)" "$TMP/err" || fail "--ignore-eos still ended seed $seed: $(cat "$TMP/err")"
else
    fail "no seed of 30 ended at end of text"
fi

# -ngl and friends: llama.cpp's spellings; on the cpu a note, no effect
expect 0 "-ngl 99 on the cpu" -- "$CODEMOE" run -m "$M" -p "int main(" -n 12 --temp 0 -ngl 99
cmp -s "$TMP/out" "$TMP/greedy1" || fail "-ngl 99 changed the cpu's completion"
grep -q -- "-ngl: the cpu backend" "$TMP/err" || fail "-ngl 99 on the cpu says nothing"
expect 0 "--n-gpu-layers=2" -- "$CODEMOE" run -m "$M" -p x -n 1 --n-gpu-layers=2
expect 2 "-ngl without a value" -- "$CODEMOE" run -m "$M" -p x -ngl
expect 2 "-ngl many" -- "$CODEMOE" bench -m "$M" -ngl many
grep -q "option -ngl" "$TMP/err" || fail "-ngl's error does not name it: $(cat "$TMP/err")"
expect 0 "-no-cnv" -- "$CODEMOE" run -m "$M" -p x -n 1 -no-cnv
# -i / -cnv: chat, user turns a line each from standard input (a pipe here),
# the model's template (none in the fixture: ChatML), the KV cache kept:
# a turn evaluates only what the cache lacks; /exit or the end of input ends
printf 'hello there\nand once more\n/exit\nnever read\n' >"$TMP/turns"
turn() { sed -n "s/.*turn $1: prompt \([0-9]*\) tok, \([0-9]*\) evaluated (\([0-9]*\) from the cache).*/\\$2/p" "$TMP/err"; }
for f in -i -cnv --interactive --conversation; do
    expect 0 "$f" -- sh -c "'$CODEMOE' run -m '$M' $f -n 6 --temp 0 <'$TMP/turns'"
    grep -q "chat template chatml" "$TMP/err" || fail "$f: no template named: $(cat "$TMP/err")"
    [ "$(turn 1 3)" = 0 ] && [ "$(turn 1 1)" = "$(turn 1 2)" ] || fail "$f: turn 1: $(cat "$TMP/err")"
    p2=$(turn 2 1) e2=$(turn 2 2) c2=$(turn 2 3)
    [ -n "$p2" ] && [ "$c2" -gt "$(turn 1 1)" ] && [ $((e2 + c2)) = "$p2" ] && [ "$e2" -lt "$p2" ] ||
        fail "$f: turn 2 did not reuse turn 1's cache: $(cat "$TMP/err")"
    grep -q "turn 3" "$TMP/err" && fail "$f: a line after /exit was read"
done
cp "$TMP/err" "$TMP/chat1"
# the same turns give the same answers (greedy), without /exit: end of input
printf 'hello there\nand once more\n' | "$CODEMOE" run -m "$M" -cnv -n 6 --temp 0 >"$TMP/out2" 2>"$TMP/err" ||
    fail "chat to the end of input: $(cat "$TMP/err")"
cmp -s "$TMP/out" "$TMP/out2" || fail "chat answers differ between two runs"
[ "$(grep -c "turn [0-9]" "$TMP/err")" = 2 ] || fail "chat to the end of input: $(cat "$TMP/err")"
# -p is the system message: turn 1 holds it
expect 0 "chat with a system message" -- sh -c "'$CODEMOE' run -m '$M' -i -p 'be brief' -n 2 <'$TMP/turns'"
[ "$(turn 1 1)" -gt "$(sed -n 's/.*turn 1: prompt \([0-9]*\) tok.*/\1/p' "$TMP/chat1")" ] ||
    fail "-p did not add a system message: $(cat "$TMP/err")"
expect 0 "chat --chat-template llama2" -- sh -c "'$CODEMOE' run -m '$M' -i --chat-template llama2 -n 2 <'$TMP/turns'"
grep -q "chat template llama2" "$TMP/err" || fail "--chat-template llama2: $(cat "$TMP/err")"
expect 2 "chat --chat-template bogus" -- "$CODEMOE" run -m "$M" -i --chat-template bogus
expect 2 "chat with --infill" -- "$CODEMOE" run -m "$M" -cnv --infill --prefix a --suffix b
expect 2 "chat with -f -" -- "$CODEMOE" run -m "$M" -cnv -f -
if [ -f "$TL_SRC/models/default.gguf" ]; then # a pack: the first turn picks the expert
    printf 'Write a Python function that adds two numbers.\nNow make it multiply.\n' >"$TMP/turns"
    expect 0 "chat on the default model" -- sh -c "'$CODEMOE' run -m '$TL_SRC/models/default.gguf' -cnv -n 16 --temp 0 -c 512 <'$TMP/turns'"
    grep -q "expert python" "$TMP/err" && [ "$(turn 2 3)" -gt 16 ] ||
        fail "chat on the default model: $(cat "$TMP/err")"
fi

# ---- fill-in-the-middle ----
# FIM tokens from the vocabulary's texts (StarCoder, Refact: <fim_prefix>;
# DeepSeek-Coder: <｜fim▁begin｜>), and llama.cpp's order PRE prefix SUF suffix MID
V="$SHARED/vocab"
fim() { "$CODEMOE" tokenize -m "$1" --infill --prefix 'def f(x):' --suffix 'return y' 2>"$TMP/err"; }
for v in starcoder:1:3:2 refact:1:3:2 deepseek-coder:32016:32015:32017; do
    f=${v%%:*}; ids=${v#*:}; pre=${ids%%:*}; mid=${ids##*:}; suf=${ids#*:}; suf=${suf%:*}
    got=$(fim "$V/ggml-vocab-$f.gguf") || { fail "tokenize --infill $f: $(cat "$TMP/err")"; continue; }
    p=$("$CODEMOE" tokenize -m "$V/ggml-vocab-$f.gguf" -p 'def f(x):' | tr -d '[]')
    s=$("$CODEMOE" tokenize -m "$V/ggml-vocab-$f.gguf" -p 'return y' | tr -d '[]')
    [ "$got" = "[$pre, $p, $suf, $s, $mid]" ] || fail "infill ids of $f: $got, want [$pre, $p, $suf, $s, $mid]"
done
for f in gpt-2 llama-spm; do
    expect 1 "tokenize --infill, $f has no FIM tokens" -- "$CODEMOE" tokenize -m "$V/ggml-vocab-$f.gguf" --infill --prefix a --suffix b
    grep -q "has no fill-in-the-middle tokens" "$TMP/err" || fail "$f without FIM: $(cat "$TMP/err")"
done
# CodeLlama's texts (▁<PRE> ▁<SUF> ▁<MID>), Qwen2.5-Coder's and CodeGemma's
# (<|fim_prefix|> ...), and tokenizer.ggml.fim_*_token_id, in vocabularies
# rewritten from the real ones
if command -v python3 >/dev/null 2>&1; then
    vocab_edit() { python3 - "$@" <<'PY'
import struct, sys
src, dst, edits = sys.argv[1], sys.argv[2], sys.argv[3:]
b = open(src, 'rb').read()
magic, ver, nt, nkv = struct.unpack_from('<4sIQQ', b, 0)
assert magic == b'GGUF' and nt == 0, "a vocabulary-only GGUF"
SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def rstr(p):
    n, = struct.unpack_from('<Q', b, p)
    return b[p + 8:p + 8 + n], p + 8 + n
def skip(t, p):
    if t == 8:
        return rstr(p)[1]
    if t != 9:
        return p + SIZE[t]
    et, n = struct.unpack_from('<IQ', b, p)
    p += 12
    if et != 8:
        return p + SIZE[et] * n
    for _ in range(n):
        p = rstr(p)[1]
    return p
ren = {int(k): v.encode() for k, v in (e.split('=', 1) for e in edits) if k.isdigit()}
add = [(k.encode(), int(v)) for k, v in (e.split('=', 1) for e in edits) if not k.isdigit()]
out, pos = bytearray(), 24
for _ in range(nkv):
    start = pos
    key, pos = rstr(pos)
    t, = struct.unpack_from('<I', b, pos)
    pos = skip(t, pos + 4)
    if key != b'tokenizer.ggml.tokens' or not ren:
        out += b[start:pos]
        continue
    n, = struct.unpack_from('<Q', b, start + 8 + len(key) + 8)
    p, toks = start + 8 + len(key) + 16, []
    for _ in range(n):
        s, p = rstr(p)
        toks.append(s)
    for i, s in ren.items():
        toks[i] = s
    out += b[start:start + 8 + len(key) + 4] + struct.pack('<IQ', 8, n)
    out += b''.join(struct.pack('<Q', len(s)) + s for s in toks)
for k, v in add:
    out += struct.pack('<Q', len(k)) + k + struct.pack('<II', 4, v)
data = struct.pack('<4sIQQ', b'GGUF', ver, 0, nkv + len(add)) + out
open(dst, 'wb').write(data + b'\0' * (-len(data) % 32))
PY
    }
    vocab_edit "$V/ggml-vocab-llama-spm.gguf" "$TMP/codellama.gguf" \
        "31990=▁<PRE>" "31991=▁<SUF>" "31992=▁<MID>" || fail "cannot write the CodeLlama vocabulary"
    vocab_edit "$V/ggml-vocab-gpt-2.gguf" "$TMP/qwen.gguf" \
        "50250=<|fim_prefix|>" "50251=<|fim_suffix|>" "50252=<|fim_middle|>" || fail "cannot write the Qwen vocabulary"
    vocab_edit "$V/ggml-vocab-gpt-2.gguf" "$TMP/keys.gguf" tokenizer.ggml.fim_pre_token_id=100 \
        tokenizer.ggml.fim_suf_token_id=101 tokenizer.ggml.fim_mid_token_id=102 || fail "cannot write the keyed vocabulary"
    vocab_edit "$V/ggml-vocab-gpt-2.gguf" "$TMP/badkey.gguf" tokenizer.ggml.fim_mid_token_id=99999999
    expect 1 "a FIM token id outside the vocabulary" -- "$CODEMOE" tokenize -m "$TMP/badkey.gguf" --infill --prefix a --suffix b
    grep -q "fim_mid_token_id" "$TMP/err" || fail "bad FIM key: $(cat "$TMP/err")"
    for v in codellama:31990:31991:31992 qwen:50250:50251:50252 keys:100:101:102; do
        f=${v%%:*}; ids=${v#*:}
        got=$(fim "$TMP/$f.gguf") || { fail "tokenize --infill $f: $(cat "$TMP/err")"; continue; }
        echo "$got" | tr -d '[] ' | awk -F, -v want="$ids" '{ split(want, w, ":")
            ok = $1 == w[1] && $NF == w[3]; for (i = 2; i < NF; i++) n += $i == w[2]
            exit !(ok && n == 1) }' || fail "infill ids of $f: $got (want $ids as PRE:SUF:MID)"
    done
fi
# run --infill --no-heal: the prompt a FIM model completes, with the ids of
# the special-token texts, so the same greedy middle; refused without FIM
# tokens.  Healed (the default), the prefix's last token is generated again:
# its text then starts the middle (a random-weight model need not keep it)
GEN="$BUILD/tools/gen_model"
if [ -x "$GEN" ]; then
    "$GEN" --n-embd 64 --n-layer 1 --n-head 2 --n-head-kv 1 --n-ff 64 --type q8_0 \
        --vocab "$V/ggml-vocab-starcoder.gguf" -o "$TMP/fim.gguf" >/dev/null 2>&1 || fail "gen_model --vocab starcoder"
    printf 'def add(a, b):\n    ' >"$TMP/pre.py"
    printf '\n    return c\n' >"$TMP/suf.py"
    printf '<fim_prefix>def add(a, b):\n    <fim_suffix>\n    return c\n<fim_middle>' >"$TMP/fim.txt"
    expect 0 "run --infill" -- "$CODEMOE" run -m "$TMP/fim.gguf" --infill --prefix-file "$TMP/pre.py" \
        --suffix-file "$TMP/suf.py" -n 8 --temp 0 --no-heal
    "$CODEMOE" run -m "$TMP/fim.gguf" -f "$TMP/fim.txt" -n 8 --temp 0 >"$TMP/fim.out" 2>/dev/null
    [ -s "$TMP/out" ] && cmp -s "$TMP/out" "$TMP/fim.out" || fail "run --infill differs from the FIM prompt as text"
    expect 0 "run --infill, texts and -e" -- "$CODEMOE" run -m "$TMP/fim.gguf" --infill -e \
        --prefix 'def add(a, b):\n    ' --suffix '\n    return c\n' -n 8 --temp 0 --no-heal
    cmp -s "$TMP/out" "$TMP/fim.out" || fail "run --infill --prefix -e differs from --prefix-file"
    expect 0 "run --infill, prefix from stdin" -- "$CODEMOE" run -m "$TMP/fim.gguf" --infill \
        --prefix-file - --suffix-file "$TMP/suf.py" -n 8 --temp 0 --no-heal <"$TMP/pre.py"
    cmp -s "$TMP/out" "$TMP/fim.out" || fail "run --infill --prefix-file - differs"
    expect 0 "run --infill, healed" -- "$CODEMOE" run -m "$TMP/fim.gguf" --infill --prefix-file "$TMP/pre.py" \
        --suffix-file "$TMP/suf.py" -n 8 --temp 0
    expect 2 "--no-heal without --infill" -- "$CODEMOE" run -m "$TMP/fim.gguf" -p x --no-heal
    # progress of a long prompt: on a terminal only
    awk 'BEGIN { for (i = 0; i < 100; i++) printf "int x%d = %d;\n", i, i }' >"$TMP/long.c"
    expect 0 "a long prompt, stderr not a terminal" -- "$CODEMOE" run -m "$TMP/fim.gguf" -f "$TMP/long.c" -n 1
    grep -q "prompt 512/" "$TMP/err" && fail "progress printed to a file"
    if command -v script >/dev/null 2>&1; then
        script -qec "'$CODEMOE' run -m '$TMP/fim.gguf' -f '$TMP/long.c' -n 1 >/dev/null" "$TMP/tty" >/dev/null 2>&1
        grep -q "prompt 512/[0-9]* tokens" "$TMP/tty" || fail "no prompt progress on a terminal: $(tr '\r' '\n' <"$TMP/tty" | head -5)"
    fi
fi

# progress of convert and quantize: "tensor i/N, MB/s, ETA" on a terminal only
expect 0 "quantize, stderr not a terminal" -- "$CODEMOE" quantize "$FIX/llama-f32.gguf" "$TMP/pq.gguf" q8_0
grep -q "tensor [0-9]*/" "$TMP/err" && fail "quantize progress printed to a file: $(head -3 "$TMP/err")"
expect 0 "convert, stderr not a terminal" -- "$CODEMOE" convert "$SHARED/fixtures/hf/llama" -o "$TMP/pc.gguf"
grep -q "tensor [0-9]*/" "$TMP/err" && fail "convert progress printed to a file: $(head -3 "$TMP/err")"
if command -v script >/dev/null 2>&1; then
    script -qec "'$CODEMOE' quantize '$FIX/llama-f32.gguf' '$TMP/pq2.gguf' q8_0 >/dev/null" "$TMP/tty" >/dev/null 2>&1
    tr '\r' '\n' <"$TMP/tty" | grep -aq "quantize: tensor 21/21 .* MB/s, ETA [0-9]* s" ||
        fail "no quantize progress on a terminal: $(tr '\r' '\n' <"$TMP/tty" | head -5)"
    cmp -s "$TMP/pq.gguf" "$TMP/pq2.gguf" || fail "quantize with progress wrote another file"
    script -qec "'$CODEMOE' convert '$SHARED/fixtures/hf/llama' -o '$TMP/pc2.gguf'" "$TMP/tty" >/dev/null 2>&1
    tr '\r' '\n' <"$TMP/tty" | grep -aq "convert: tensor [0-9]*/[0-9]* .* MB/s, ETA" ||
        fail "no convert progress on a terminal: $(tr '\r' '\n' <"$TMP/tty" | head -5)"
fi
expect 1 "run --infill without FIM tokens" -- "$CODEMOE" run -m "$M" --infill --prefix a --suffix b
grep -q "has no fill-in-the-middle tokens" "$TMP/err" || fail "infill refusal: $(cat "$TMP/err")"
expect 2 "--infill without a suffix" -- "$CODEMOE" run -m "$M" --infill --prefix a
expect 2 "--infill with -p" -- "$CODEMOE" run -m "$M" --infill --prefix a --suffix b -p c
expect 2 "--prefix without --infill" -- "$CODEMOE" run -m "$M" -p x --prefix a
expect 2 "--prefix twice" -- "$CODEMOE" run -m "$M" --infill --prefix a --prefix-file "$TMP/p.txt" --suffix b
expect 1 "--suffix-file missing" -- "$CODEMOE" run -m "$M" --infill --prefix a --suffix-file "$TMP/nope"

tl_finish
