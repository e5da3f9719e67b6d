#!/bin/sh
# test_eval.sh - `codemoe eval` end to end on small subsets (--limit): the
# canonical HumanEval solutions pass and the deliberately wrong MultiPL-E
# completions fail in every language installed; the default model's
# completions are scored, the same decoded together (--batch) or one at a
# time and with programs run in parallel (-j) or not, deterministic with --seed, resumed after an
# interruption (a cut-off line), and three shards merged give the unsharded
# run's results and summary; bad usage and bad files are one-line errors.
TL_PROBE="evalsets/HumanEval.jsonl.gz"
. "$(dirname "$0")/lib.sh"
# The sandboxed programs of both eval tests run as one user (nobody, when
# root runs the tests), whose process limit they share: the hostile fork
# bombs would starve the other test's programs under make -j, so the two
# take turns.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$BUILD/tests/eval-sandbox.lock"
    flock 9
fi
[ -f "$SHARED/evalsets/HumanEval.jsonl.gz" ] || tl_skip "no evalsets under $SHARED"
tl_tmpdir
chmod 755 "$TMP"
export TMPDIR="$TMP" # scratch directories: the test checks none is left
MODEL="$TL_SRC/models/default.gguf"
EV="--evalsets $SHARED/evalsets"
TL_PROGRESS='^\[eval\] '
# what a run writes, less its timings
strip() { sed 's/"seconds": [0-9.]*, //' "$1" | sort; }
unsorted() { sed 's/"seconds": [0-9.]*, //' "$1"; }
"$CODEMOE" eval --check >"$TMP/check" || fail "eval --check"
langs=$(awk '$2 == "ready" { printf "%s%s", sep, $1; sep = "," }' "$TMP/check")
echo "toolchains ready: ${langs:-none}"

# canonical solutions: all pass; wrong completions: all fail
if grep -q '^py *ready' "$TMP/check"; then
    expect 0 "HumanEval canonical" -- "$CODEMOE" eval --canonical --bench humaneval $EV \
        --limit 8 --out "$TMP/canon"
    grep -q "canonical check: 8/8 canonical solutions pass" "$TMP/out" || fail "canonical: $(cat "$TMP/out")"
    # programs 4 at a time: the same results, in the same order (a long
    # --timeout: a loaded machine must not turn a slow program into a timeout)
    expect 0 "HumanEval canonical -j 1" -- "$CODEMOE" eval --canonical --bench humaneval $EV \
        --limit 8 -j 1 --timeout 120 --out "$TMP/canon1"
    expect 0 "HumanEval canonical -j 4" -- "$CODEMOE" eval --canonical --bench humaneval $EV \
        --limit 8 -j 4 --timeout 120 --out "$TMP/canon4"
    cmp -s "$TMP/canon1/summary.json" "$TMP/canon4/summary.json" ||
        fail "HumanEval: -j 4 summary differs from -j 1: $(cat "$TMP/canon1/summary.md" "$TMP/canon4/summary.md")"
    unsorted "$TMP/canon1/results.jsonl" >"$TMP/c1" && unsorted "$TMP/canon4/results.jsonl" >"$TMP/c4"
    cmp -s "$TMP/c1" "$TMP/c4" || fail "-j 4 results differ from -j 1: $(diff "$TMP/c1" "$TMP/c4" | head -4)"
fi
if [ -n "$langs" ]; then
    expect 0 "MultiPL-E wrong completions" -- "$CODEMOE" eval --canonical --bench multipl-e \
        $EV --langs "$langs" --limit 2 --out "$TMP/wrong"
    n=$(echo "$langs" | tr ',' '\n' | wc -l)
    grep -q "canonical check: $((2 * n))/$((2 * n)) wrong completions fail" "$TMP/out" ||
        fail "wrong completions: $(cat "$TMP/out")"
    for j in 1 4; do
        expect 0 "MultiPL-E wrong completions -j $j" -- "$CODEMOE" eval --canonical \
            --bench multipl-e $EV --langs "$langs" --limit 2 -j $j --timeout 120 --out "$TMP/wrong$j"
        unsorted "$TMP/wrong$j/results.jsonl" | sed 's/"status": "[a-z-]*", //' >"$TMP/w$j"
    done
    cmp -s "$TMP/wrong1/summary.json" "$TMP/wrong4/summary.json" ||
        fail "MultiPL-E: -j 4 summary differs from -j 1: $(cat "$TMP/wrong1/summary.md" "$TMP/wrong4/summary.md")"
    cmp -s "$TMP/w1" "$TMP/w4" || fail "-j 4 results (order) differ from -j 1: $(diff "$TMP/w1" "$TMP/w4" | head -4)"
fi

# generation: py and js where installed (fast to run), 2 samples at T=0.8
gl=$(echo "$langs" | tr ',' '\n' | grep -E '^(py|js)$' | paste -sd, -)
[ -n "$gl" ] || tl_skip "neither python3 nor node installed"
[ -f "$MODEL" ] || tl_skip "no default model"
# --timeout: as above, a loaded machine must not turn a slow program into a timeout in one run only
GEN="-m $MODEL --bench multipl-e $EV --langs $gl --limit 3 -n 2 --temp 0.8 --seed 7 --max-tokens 24 -k 1,2 --timeout 120"
expect 0 "generate" -- "$CODEMOE" eval $GEN --out "$TMP/full"
want=$(( $(echo "$gl" | tr ',' '\n' | wc -l) * 6 ))
[ "$(wc -l <"$TMP/full/results.jsonl")" = "$want" ] || fail "results.jsonl: want $want lines"
grep -vqE '"status": "(pass|fail|timeout|compile-error|crash)"' "$TMP/full/results.jsonl" &&
    fail "a result without a known status"
grep -q '^| py\|^| js' "$TMP/full/summary.md" || fail "summary.md has no language rows"
head -1 "$TMP/full/summary.csv" | grep -q '^lang,problems,completions,.*,pass@1,pass@2$' ||
    fail "summary.csv header: $(head -1 "$TMP/full/summary.csv")"
strip "$TMP/full/results.jsonl" >"$TMP/full.sorted"

# the samples decoded together (--batch 2, the default for -n 2) and one at
# a time, programs 3 at a time and one at a time: the same completions and
# statuses, in the same order (each completion has its own seed; this
# asserts equal text, which float rounding between batch shapes could in
# principle break: it does not for this model and these seeds)
expect 0 "generate --batch 1 -j 1" -- "$CODEMOE" eval $GEN --batch 1 -j 1 --out "$TMP/one"
unsorted "$TMP/full/results.jsonl" >"$TMP/u.full" && unsorted "$TMP/one/results.jsonl" >"$TMP/u.one"
cmp -s "$TMP/u.full" "$TMP/u.one" ||
    fail "--batch 1 -j 1 differs from the batched run: $(diff "$TMP/u.full" "$TMP/u.one" | head -6)"
# greedy: 4 samples, 3 decoded together (a finished one's sequence takes
# the fourth), against one at a time
G0="-m $MODEL --bench multipl-e $EV --langs $gl --limit 2 -n 4 --temp 0 --max-tokens 32 -k 1"
expect 0 "greedy --batch 3" -- "$CODEMOE" eval $G0 --batch 3 -j 3 --out "$TMP/g3"
expect 0 "greedy --batch 1" -- "$CODEMOE" eval $G0 --batch 1 -j 1 --out "$TMP/g1"
unsorted "$TMP/g3/results.jsonl" >"$TMP/u.g3" && unsorted "$TMP/g1/results.jsonl" >"$TMP/u.g1"
cmp -s "$TMP/u.g3" "$TMP/u.g1" || fail "greedy --batch 3 differs from --batch 1: $(diff "$TMP/u.g3" "$TMP/u.g1" | head -6)"

# resume: drop the last two lines, cut the one before in half
mkdir "$TMP/resumed"
cp "$TMP/full/config.json" "$TMP/resumed/"
head -n $((want - 3)) "$TMP/full/results.jsonl" >"$TMP/resumed/results.jsonl"
sed -n "$((want - 2))p" "$TMP/full/results.jsonl" | head -c 40 >>"$TMP/resumed/results.jsonl"
expect 0 "resume" -- "$CODEMOE" eval $GEN --out "$TMP/resumed"
grep -q "resuming: $((want - 3)) completions" "$TMP/err" || fail "resume: $(cat "$TMP/err")"
strip "$TMP/resumed/results.jsonl" >"$TMP/resumed.sorted"
cmp -s "$TMP/resumed.sorted" "$TMP/full.sorted" ||
    fail "resumed results differ from the uninterrupted run (determinism): $(diff "$TMP/full.sorted" "$TMP/resumed.sorted" | head -6)"
cmp -s "$TMP/resumed/summary.json" "$TMP/full/summary.json" || fail "resumed summary differs"
# a finished run resumed does nothing more
expect 0 "resume finished" -- "$CODEMOE" eval $GEN --out "$TMP/resumed"
[ "$(wc -l <"$TMP/resumed/results.jsonl")" = "$want" ] || fail "a finished run grew"

# three shards, merged
for i in 1 2 3; do
    expect 0 "shard $i/3" -- "$CODEMOE" eval $GEN --shard $i/3 --out "$TMP/s$i"
done
expect 0 "merge" -- "$CODEMOE" eval merge -k 1,2 --out "$TMP/merged" "$TMP/s1" "$TMP/s2" "$TMP/s3"
strip "$TMP/merged/results.jsonl" >"$TMP/merged.sorted"
cmp -s "$TMP/merged.sorted" "$TMP/full.sorted" ||
    fail "merged results differ: $(diff "$TMP/full.sorted" "$TMP/merged.sorted" | head -6)"
cmp -s "$TMP/merged/summary.json" "$TMP/full/summary.json" || fail "merged summary.json differs"
cmp -s "$TMP/merged/summary.md" "$TMP/full/summary.md" || fail "merged summary.md differs"

# --estimate: the counts follow from the options; the instance table is read
el=${gl%%,*}
expect 0 "estimate" -- "$CODEMOE" eval --estimate -m "$MODEL" --bench multipl-e $EV --langs $el \
    --limit 2 -n 3 --max-tokens 8
grep -q "^total: 2 problems, 6 completions (n = 3), 6 program runs" "$TMP/out" ||
    fail "estimate counts: $(cat "$TMP/out")"
grep -q "at most (--max-tokens 8)" "$TMP/out" && grep -q "^g5.xlarge  *A10G" "$TMP/out" ||
    fail "estimate: $(cat "$TMP/out")"

# --compare: the pack routed, its fallback and a "merged" model (here the
# same pack) on the same problems; the baseline's row and a CI per model
expect 0 "compare" -- "$CODEMOE" eval --compare -m "$MODEL" --merged "$MODEL" --bench multipl-e \
    $EV --langs $el --limit 2 -n 2 --max-tokens 8 --out "$TMP/cmp"
for m in routed merged; do
    grep -q "^| $m | $el | 2 | .*% | [-+][0-9.]* \[" "$TMP/cmp/compare.md" || fail "compare: no $m row"
done
grep -q "^| baseline | $el | 2 | .*(baseline)" "$TMP/cmp/compare.md" || fail "compare: no baseline row"
[ "$(wc -l <"$TMP/cmp/baseline/results.jsonl")" = 4 ] || fail "compare: baseline results"
expect 2 "compare with --expert" -- "$CODEMOE" eval --compare --expert go -m "$MODEL" --out "$TMP/y"

# bad usage and bad input: one line, exit 2 / 1
expect 2 "bad shard" -- "$CODEMOE" eval $GEN --shard 4/3 --out "$TMP/x"
expect 2 "bad bench" -- "$CODEMOE" eval --bench nope --out "$TMP/x"
expect 2 "bad batch" -- "$CODEMOE" eval $GEN --batch 0 --out "$TMP/x"
expect 2 "bad -j" -- "$CODEMOE" eval $GEN -j 0 --out "$TMP/x"
expect 2 "bad lang" -- "$CODEMOE" eval --langs cobol --out "$TMP/x"
expect 2 "other settings" -- "$CODEMOE" eval $GEN --seed 8 --out "$TMP/full"
expect 2 "another batch size" -- "$CODEMOE" eval $GEN --batch 1 --out "$TMP/full"
expect 2 "merge other settings" -- "$CODEMOE" eval merge --out "$TMP/m2" "$TMP/full" "$TMP/canon"
mkdir "$TMP/badsets"
head -c 300 "$SHARED/evalsets/multipl-e-humaneval-py.jsonl.gz" >"$TMP/badsets/multipl-e-humaneval-py.jsonl.gz"
printf '{"name": "x"}\n' | gzip >"$TMP/badsets/multipl-e-humaneval-js.jsonl.gz"
for l in py js; do
    echo "$gl" | grep -q $l || continue
    expect 1 "corrupt $l file" -- "$CODEMOE" eval --canonical --bench multipl-e --langs $l \
        --evalsets "$TMP/badsets" --out "$TMP/bad$l"
done
[ -z "$(ls -d "$TMP"/codemoe-sb-* "$TMP"/codemoe-cache-* 2>/dev/null)" ] ||
    fail "scratch directories left behind: $(ls -d "$TMP"/codemoe-*)"
tl_finish
