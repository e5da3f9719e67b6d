#!/bin/sh
# test_surgery.sh - `codemoe upcycle`, `grow` and `merge` from the command
# line: the printed check, the exit codes, one-line errors, and no output
# (nor temporary) left behind by a refused, failed or hostile run.
set -u
TL_PROBE="fixtures/gguf/llama/llama-f32.gguf fixtures/gguf/mixtral/mixtral-f32.gguf"
. "$(dirname "$0")/lib.sh"
G="$SHARED/fixtures/gguf"
LLAMA="$G/llama/llama-f32.gguf"
MIXTRAL="$G/mixtral/mixtral-f32.gguf"
[ -f "$LLAMA" ] && [ -f "$MIXTRAL" ] || tl_skip "needs $LLAMA and $MIXTRAL"
tl_tmpdir
OUT="$TMP/o"
mkdir "$OUT"

# nothing but the expected files in $OUT: no output of a refused run, no
# temporary of any run
only() {
    got=$(cd "$OUT" && ls -A | tr '\n' ' ')
    [ "$got" = "$1" ] || fail "$2: files in the output folder: '$got', expected '$1'"
}

# ---- upcycle: the printed check passes at F32
expect 0 "upcycle f32" -- "$CODEMOE" upcycle "$LLAMA" "$OUT/moe.gguf" --experts 4 --top-k 2
grep -Eq '^check: max \|logits\(OUT\) - logits\(IN\)\| = [0-9.e+-]+ .* limit 1e-05 x [0-9.e+-]+: ok$' \
    "$TMP/out" || fail "upcycle printed no passing check: $(cat "$TMP/out")"
"$CODEMOE" info "$OUT/moe.gguf" >"$TMP/info" 2>&1 || fail "info on the upcycled model"
grep -qi "expert" "$TMP/info" || fail "info does not show experts: $(head -c 300 "$TMP/info")"
# the upcycled model runs and matches the dense one token for token
"$CODEMOE" logits -m "$LLAMA" --ids 1,2,3,4 -o "$TMP/l0" >/dev/null 2>&1 &&
    "$CODEMOE" logits -m "$OUT/moe.gguf" --ids 1,2,3,4 -o "$TMP/l1" >/dev/null 2>&1 ||
    fail "logits on the upcycled model"

# f16 and quantized inputs: written, checked, no limit claimed
expect 0 "upcycle q8_0" -- "$CODEMOE" upcycle "$G/llama/llama-q8_0.gguf" "$OUT/moe8.gguf" \
    --experts 2 --top-k 1
grep -q '^check: .*no limit' "$TMP/out" || fail "q8_0 upcycle check line: $(cat "$TMP/out")"
expect 0 "upcycle to f16" -- "$CODEMOE" upcycle "$LLAMA" "$OUT/moe16.gguf" --experts 2 \
    --top-k 2 --type f16 --noise 0.01 --seed 7
only "moe.gguf moe16.gguf moe8.gguf " "upcycle"

# ---- grow: dense and MoE, width and depth, check within 1e-4
expect 0 "grow dense" -- "$CODEMOE" grow "$LLAMA" "$OUT/big.gguf" --width-mult 2 --add-layers 2
grep -Eq 'limit 0.0001 x [0-9.e+-]+: ok$' "$TMP/out" || fail "grow printed no passing check: $(cat "$TMP/out")"
expect 0 "grow moe" -- "$CODEMOE" grow "$MIXTRAL" "$OUT/bigmoe.gguf" --width-mult 1.25 \
    --add-layers 1
grep -Eq 'limit 0.0001 x [0-9.e+-]+: ok$' "$TMP/out" || fail "grow moe check: $(cat "$TMP/out")"
expect 0 "grow upcycled" -- "$CODEMOE" grow "$OUT/moe.gguf" "$OUT/bigup.gguf" --add-layers 1
grep -Eq 'limit 0.0001 x [0-9.e+-]+: ok$' "$TMP/out" || fail "grow upcycled check: $(cat "$TMP/out")"
# the residual width: every unit twice, then some units twice and some once
for m in 2 1.5; do
    expect 0 "grow dense --embd-mult $m" -- "$CODEMOE" grow "$LLAMA" "$OUT/wide.gguf" \
        --embd-mult "$m" --width-mult 2 --add-layers 1
    grep -Eq 'limit 0.0001 x [0-9.e+-]+: ok$' "$TMP/out" || fail "grow --embd-mult $m: $(cat "$TMP/out")"
    expect 0 "grow moe --embd-mult $m" -- "$CODEMOE" grow "$MIXTRAL" "$OUT/widemoe.gguf" \
        --embd-mult "$m"
    grep -Eq 'limit 0.0001 x [0-9.e+-]+: ok$' "$TMP/out" || fail "grow moe --embd-mult $m: $(cat "$TMP/out")"
done
grep -q "embd 64, 4/2 heads, expert ffn 128) -> .*embd 96, 6/3 heads" "$TMP/out" ||
    fail "grow --embd-mult 1.5 does not say what grew: $(cat "$TMP/out")"
"$CODEMOE" info "$OUT/wide.gguf" >"$TMP/info" 2>&1 || fail "info on the widened model"
grep -q "96" "$TMP/info" || fail "info does not show n_embd 96: $(head -c 300 "$TMP/info")"
rm -f "$OUT"/big*.gguf "$OUT"/wide*.gguf "$OUT"/moe16.gguf "$OUT"/moe8.gguf

# the other architectures, converted from the Hugging Face fixtures at f32:
# qwen2 -> qwen2moe, qwen3 -> qwen3moe; every one grows (GELU MLPs with
# biases, phi2's parallel block, qwen MoE with a shared expert)
for a in qwen2 qwen3 gpt_bigcode phi starcoder2 qwen2_moe qwen3_moe; do
    tl_shared "fixtures/hf/$a/config.json" || { echo "(no fixtures/hf/$a: not tested)"; continue; }
    "$CODEMOE" convert "$SHARED/fixtures/hf/$a" -o "$TMP/$a.gguf" --type f32 >/dev/null 2>&1 ||
        { fail "convert $a"; continue; }
    case $a in
    qwen2 | qwen3)
        expect 0 "upcycle $a" -- "$CODEMOE" upcycle "$TMP/$a.gguf" "$TMP/$a-moe.gguf" \
            --experts 4 --top-k 2
        grep -q "(${a}moe, 4 experts" "$TMP/out" || fail "upcycle $a: not ${a}moe: $(cat "$TMP/out")"
        grep -Eq 'limit 1e-05 x [0-9.e+-]+: ok$' "$TMP/out" || fail "upcycle $a check: $(cat "$TMP/out")" ;;
    gpt_bigcode | phi | starcoder2)
        expect 1 "upcycle $a (GELU)" -- "$CODEMOE" upcycle "$TMP/$a.gguf" "$TMP/$a-moe.gguf" \
            --experts 4 --top-k 2 ;;
    esac
    expect 0 "grow $a" -- "$CODEMOE" grow "$TMP/$a.gguf" "$TMP/$a-big.gguf" --width-mult 1.5 \
        --add-layers 2
    grep -Eq 'limit 0.0001 x [0-9.e+-]+: ok$' "$TMP/out" || fail "grow $a check: $(cat "$TMP/out")"
    # the residual width: LayerNorm models by whole multiples only
    case $a in
    gpt_bigcode | phi | starcoder2)
        m=2
        expect 1 "grow $a --embd-mult 1.5 (LayerNorm)" -- "$CODEMOE" grow "$TMP/$a.gguf" \
            "$TMP/$a-wide.gguf" --embd-mult 1.5
        grep -q "LayerNorm" "$TMP/err" || fail "$a: the refusal does not say why: $(cat "$TMP/err")"
        [ ! -e "$TMP/$a-wide.gguf" ] || fail "$a: a refused grow wrote its output" ;;
    *) m=1.5 ;;
    esac
    expect 0 "grow $a --embd-mult $m" -- "$CODEMOE" grow "$TMP/$a.gguf" "$TMP/$a-wide.gguf" \
        --embd-mult "$m" --width-mult 1.5 --add-layers 1
    grep -Eq 'limit 0.0001 x [0-9.e+-]+: ok$' "$TMP/out" || fail "grow $a --embd-mult $m: $(cat "$TMP/out")"
    rm -f "$TMP/$a"*.gguf
done

# ---- merge
expect 0 "merge average" -- "$CODEMOE" merge --method average "$LLAMA" "$G/llama/llama-f16.gguf" \
    -o "$OUT/avg.gguf"
expect 0 "merge ties" -- "$CODEMOE" merge --base "$LLAMA" --method ties --density 0.5 \
    "$G/llama/llama-f16.gguf" "$G/llama/llama-q8_0.gguf" -o "$OUT/ties.gguf"
expect 0 "merge ties model" -- "$CODEMOE" merge --base "$LLAMA" --method ties --density 0.5 \
    --ties-scope model "$G/llama/llama-f16.gguf" "$G/llama/llama-q8_0.gguf" -o "$OUT/tiesm.gguf"
grep -q '^ties: keeping |model - base| >= [0-9.e+-]*, [0-9.e+-]* (the top [0-9]* of [0-9]* ' \
    "$TMP/out" || fail "merge ties model: no threshold line: $(cat "$TMP/out")"
cmp -s "$OUT/ties.gguf" "$OUT/tiesm.gguf" && fail "ties: the model's threshold changed nothing"
rm -f "$OUT/tiesm.gguf"
expect 0 "merge ta f16" -- "$CODEMOE" merge --base "$LLAMA" --method task-arithmetic --lambda 0 \
    "$G/llama/llama-q4_0.gguf" --type f16 -o "$OUT/ta.gguf"
"$CODEMOE" info "$OUT/ta.gguf" >"$TMP/info" 2>&1 || fail "info on the merged f16 model"
only "avg.gguf moe.gguf ta.gguf ties.gguf " "merge"
rm -f "$OUT"/avg.gguf "$OUT"/ties.gguf "$OUT"/ta.gguf

# ---- bad usage: one line, exit 2, nothing written
expect 2 "no args" -- "$CODEMOE" upcycle
expect 2 "no experts" -- "$CODEMOE" upcycle "$LLAMA" "$OUT/x.gguf" --top-k 2
expect 2 "top-k > experts" -- "$CODEMOE" upcycle "$LLAMA" "$OUT/x.gguf" --experts 2 --top-k 3
expect 2 "experts 0" -- "$CODEMOE" upcycle "$LLAMA" "$OUT/x.gguf" --experts 0 --top-k 1
expect 2 "bad noise" -- "$CODEMOE" upcycle "$LLAMA" "$OUT/x.gguf" --experts 2 --top-k 1 --noise -1
expect 2 "bad type" -- "$CODEMOE" upcycle "$LLAMA" "$OUT/x.gguf" --experts 2 --top-k 1 --type q9
expect 2 "unknown flag" -- "$CODEMOE" grow "$LLAMA" "$OUT/x.gguf" --bogus
expect 2 "width < 1" -- "$CODEMOE" grow "$LLAMA" "$OUT/x.gguf" --width-mult 0.5
expect 2 "grow nothing" -- "$CODEMOE" grow "$LLAMA" "$OUT/x.gguf"
expect 2 "extra arg" -- "$CODEMOE" grow "$LLAMA" "$OUT/x.gguf" extra --add-layers 1
expect 2 "same file" -- "$CODEMOE" grow "$OUT/moe.gguf" "$OUT/moe.gguf" --add-layers 1
expect 2 "bad method" -- "$CODEMOE" merge --method median "$LLAMA" -o "$OUT/x.gguf"
expect 2 "ties no base" -- "$CODEMOE" merge --method ties "$LLAMA" -o "$OUT/x.gguf"
expect 2 "no -o" -- "$CODEMOE" merge --method average "$LLAMA"
expect 2 "bad density" -- "$CODEMOE" merge --base "$LLAMA" --method ties --density 0 "$LLAMA" \
    -o "$OUT/x.gguf"
expect 2 "bad ties scope" -- "$CODEMOE" merge --base "$LLAMA" --method ties --ties-scope layer \
    "$LLAMA" -o "$OUT/x.gguf"
expect 2 "ties scope, not ties" -- "$CODEMOE" merge --base "$LLAMA" --method average \
    --ties-scope model "$LLAMA" -o "$OUT/x.gguf"
expect 2 "embd-mult < 1" -- "$CODEMOE" grow "$LLAMA" "$OUT/x.gguf" --embd-mult 0.5
expect 2 "merge type same" -- "$CODEMOE" merge --method average --type same "$LLAMA" \
    -o "$OUT/x.gguf"
for c in upcycle grow merge; do
    expect 0 "$c --help" -- "$CODEMOE" "$c" --help
    grep -q "^usage: codemoe $c" "$TMP/out" || fail "$c --help has no usage line"
    expect 0 "$c -h" -- "$CODEMOE" "$c" -h
    expect 2 "$c --bogus" -- "$CODEMOE" "$c" --bogus
    grep -q "unknown option --bogus" "$TMP/err" || fail "$c --bogus: $(cat "$TMP/err")"
    expect 2 "$c -Z" -- "$CODEMOE" "$c" -Z
    grep -q "unknown option -Z" "$TMP/err" || fail "$c -Z: $(cat "$TMP/err")"
done
expect 2 "stray argument" -- "$CODEMOE" upcycle "$LLAMA" "$OUT/x.gguf" stray --experts 2 --top-k 1
grep -q "'stray'" "$TMP/err" || fail "the stray argument is not named: $(cat "$TMP/err")"

# ---- bad input: one line, exit 1, nothing written
expect 1 "missing input" -- "$CODEMOE" upcycle "$TMP/none.gguf" "$OUT/x.gguf" --experts 2 --top-k 1
expect 1 "upcycle a MoE" -- "$CODEMOE" upcycle "$MIXTRAL" "$OUT/x.gguf" --experts 2 --top-k 1
expect 1 "merge dense + MoE" -- "$CODEMOE" merge --method average "$LLAMA" "$MIXTRAL" -o "$OUT/x.gguf"
grep -q "no tensor blk\.0\.ffn_" "$TMP/err" || fail "dense + MoE names no tensor: $(cat "$TMP/err")"
expect 1 "merge MoE + dense" -- "$CODEMOE" merge --method average "$MIXTRAL" "$LLAMA" -o "$OUT/x.gguf"
grep -q "no tensor blk\.0\.ffn_.*_exps" "$TMP/err" || fail "MoE + dense names no tensor: $(cat "$TMP/err")"
expect 1 "merge extra tensor" -- "$CODEMOE" merge --method average "$LLAMA" "$OUT/moe.gguf" \
    -o "$OUT/x.gguf"
"$CODEMOE" grow "$LLAMA" "$TMP/wide.gguf" --width-mult 2 >/dev/null 2>&1 || fail "grow wide"
expect 1 "merge shape mismatch" -- "$CODEMOE" merge --method average "$LLAMA" "$TMP/wide.gguf" \
    -o "$OUT/x.gguf"
grep -q "tensor blk\.[0-9]*\.ffn_.*shape" "$TMP/err" || fail "mismatch names no tensor: $(cat "$TMP/err")"
# hostile files: truncated at several points, and bytes flipped in the header
size=$(wc -c <"$LLAMA")
for cut in 3 24 100 2000 $((size / 2)) $((size - 1)); do
    head -c "$cut" "$LLAMA" >"$TMP/cut.gguf"
    expect 1 "upcycle truncated at $cut" -- "$CODEMOE" upcycle "$TMP/cut.gguf" "$OUT/x.gguf" \
        --experts 2 --top-k 1
    expect 1 "grow truncated at $cut" -- "$CODEMOE" grow "$TMP/cut.gguf" "$OUT/x.gguf" --add-layers 1
    expect 1 "merge truncated at $cut" -- "$CODEMOE" merge --base "$LLAMA" --method ties \
        "$TMP/cut.gguf" -o "$OUT/x.gguf"
done
for off in 8 16 40 200 700; do
    cp "$LLAMA" "$TMP/bad.gguf"
    chmod u+w "$TMP/bad.gguf"
    printf '\377\377\377\377' | dd of="$TMP/bad.gguf" bs=1 seek="$off" conv=notrunc 2>/dev/null
    "$CODEMOE" upcycle "$TMP/bad.gguf" "$OUT/x.gguf" --experts 2 --top-k 1 >/dev/null 2>"$TMP/err"
    rc=$?
    # a flip may land where the file stays valid (a value); then it must pass
    [ "$rc" = 0 ] && rm -f "$OUT/x.gguf"
    [ "$rc" = 0 ] || [ "$rc" = 1 ] || fail "corrupt at $off: exit $rc"
    [ "$rc" = 0 ] || [ "$(wc -l <"$TMP/err")" = 1 ] || fail "corrupt at $off: $(cat "$TMP/err")"
done
only "moe.gguf " "refused runs"

tl_finish
