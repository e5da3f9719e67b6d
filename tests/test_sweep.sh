#!/bin/sh
# test_sweep.sh - `codemoe sweep` on the tiny llama fixture (vocabulary 1000,
# rows of 64 so every K-quant falls back): the rows and their consistency
# with `codemoe perplexity`, resume, JSON on stdout only, a well-formed SVG,
# exit codes for bad usage / bad input / failure, a pack (routed and
# --cross, checked against the plain model) and a token-MoE model.
set -u
. "$(dirname "$0")/lib.sh"
FIX="$SHARED/fixtures/gguf"
CORPUS="$SHARED/corpus"
if [ ! -f "$FIX/llama/llama-f32.gguf" ] || [ ! -f "$CORPUS/python/valid.jsonl.xz" ]; then
    tl_skip "fixtures or corpus not found at $SHARED (set CM_SHARED)"
fi
command -v python3 >/dev/null 2>&1 || tl_skip "python3 (checks the CSV, JSON and SVG) not found"
tl_tmpdir
mkdir "$TMP/t"
TMPDIR="$TMP/t"; export TMPDIR  # the base log-probabilities go here
F32="$FIX/llama/llama-f32.gguf"
F16="$FIX/llama/llama-f16.gguf"
Q8="$FIX/llama/llama-q8_0.gguf"
SMALL="--langs python,c --max-tokens 2048 -c 128"

# expect (lib.sh): errors are one stderr line starting "codemoe: " besides
# the progress lines, which start "sweep: "
TL_PROGRESS='^sweep: '

# py DESCRIPTION SCRIPT ARGS...: a Python check; it prints what is wrong and exits 1
py() {
    what=$1; shift
    python3 - "$@" >"$TMP/py" 2>&1 || fail "$what: $(cat "$TMP/py")"
}

# ---- usage (exit 2) ----
expect 0 "help" -- "$CODEMOE" sweep --help
grep -q "^usage: codemoe sweep" "$TMP/out" || fail "--help has no usage line"
grep -q "exit status" "$TMP/out" || fail "--help does not document the exit status"
expect 2 "no model" -- "$CODEMOE" sweep --out "$TMP/x.csv"
expect 2 "no output" -- "$CODEMOE" sweep -m "$F32"
expect 2 "bad --bits" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/x.csv" --bits 8,7
expect 2 "unknown scheme" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/x.csv" --schemes q4_0,q9_9
expect 2 "--bits and --schemes" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/x.csv" --bits 8 --schemes q8_0
expect 2 "bad language name" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/x.csv" --langs python,../etc
expect 2 "unknown flag" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/x.csv" --bogus
expect 2 "--out -" -- "$CODEMOE" sweep -m "$F32" --out -
[ -e "$TMP/x.csv" ] && fail "a usage error wrote the output"

# ---- bad input (exit 1) ----
expect 1 "quantized model" -- "$CODEMOE" sweep -m "$Q8" --out "$TMP/x.csv" $SMALL --corpus "$CORPUS"
grep -q "already quantized" "$TMP/err" || fail "a q8_0 model is not refused as quantized: $(cat "$TMP/err")"
expect 1 "missing model" -- "$CODEMOE" sweep -m "$TMP/none.gguf" --out "$TMP/x.csv" $SMALL --corpus "$CORPUS"
printf 'not a model' >"$TMP/bad.gguf"
expect 1 "not a GGUF" -- "$CODEMOE" sweep -m "$TMP/bad.gguf" --out "$TMP/x.csv" $SMALL --corpus "$CORPUS"
expect 1 "missing corpus" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/x.csv" $SMALL --corpus "$TMP/nocorpus"
expect 1 "unknown language" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/x.csv" --langs cobol --corpus "$CORPUS" -c 128 --max-tokens 2048
expect 1 "too few tokens" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/x.csv" --langs c --corpus "$CORPUS" -c 128 --max-tokens 200
printf 'a,b,c\r\n1,2,3\r\n' >"$TMP/other.csv"
expect 1 "not a sweep CSV" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/other.csv" $SMALL --corpus "$CORPUS"
grep -q '^a,b,c' "$TMP/other.csv" || fail "a foreign CSV was overwritten"
[ -e "$TMP/x.csv" ] && fail "a bad input wrote the output"

# ---- failure during the run (exit 3): no space for the base log-probabilities ----
expect 3 "unusable --tmpdir" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/x.csv" $SMALL --corpus "$CORPUS" --bits 8 --tmpdir "$TMP/nodir"

# ---- the sweep ----
# what a killed run leaves (a partial base file) is removed once its process is
# gone; a live process's directory and other names are left alone
mkdir "$TMP/t/codemoe-sweep.4194300.aaaaaa" "$TMP/t/codemoe-sweep.$$.bbbbbb" "$TMP/t/codemoe-sweep.cccccc"
: >"$TMP/t/codemoe-sweep.4194300.aaaaaa/base-0.lf.tmp.4194300"
expect 0 "sweep" -- "$CODEMOE" sweep -m "$F32" $SMALL --corpus "$CORPUS" --bits 8,4 \
    --out "$TMP/r.csv" --json "$TMP/r.json" --plot "$TMP/r.svg"
cp "$TMP/err" "$TMP/sweep.err"
[ -d "$TMP/t/codemoe-sweep.4194300.aaaaaa" ] && fail "a dead run's temporary directory was not removed"
[ -d "$TMP/t/codemoe-sweep.$$.bbbbbb" ] && [ -d "$TMP/t/codemoe-sweep.cccccc" ] ||
    fail "a live run's (or a foreign) directory was removed"
rmdir "$TMP/t/codemoe-sweep.$$.bbbbbb" "$TMP/t/codemoe-sweep.cccccc"
[ -s "$TMP/out" ] && fail "the sweep wrote to stdout without --json -: $(head -c 200 "$TMP/out")"
for s in "8 bits (q8_0)" "4 bits (q4_0)" "4 bits (q4_k_m)"; do
    grep -q "^sweep: disparity at $s: " "$TMP/sweep.err" || fail "no disparity line for $s"
done
grep -q "q4_k_m: .*fall back to a legacy type.*q4_K -> q5_0" "$TMP/sweep.err" ||
    fail "the K-quant fallback (rows of 64) is not reported"
[ -n "$(ls -A "$TMP/t")" ] && fail "temporary files left in TMPDIR: $(ls "$TMP/t")"
ls "$TMP" | grep -q '\.tmp\.' && fail "temporary output file left behind"

# the base PPL must be what `codemoe perplexity` gives on the same tokens
"$CODEMOE" perplexity -m "$F32" --corpus "$CORPUS" --lang python --max-tokens 2048 -c 128 \
    >"$TMP/ppl.txt" 2>/dev/null || fail "codemoe perplexity failed"
base=$(sed -n 's/^Final estimate: PPL = \([0-9.]*\) .*/\1/p' "$TMP/ppl.txt")

py "the CSV" "$TMP/r.csv" "$base" <<'EOF'
import csv, sys
raw = open(sys.argv[1], 'rb').read()
lines = raw.split(b'\r\n')
assert lines[-1] == b'' and all(b'\n' not in l for l in lines), "records must end in CRLF (RFC 4180)"
rows = list(csv.DictReader(open(sys.argv[1], newline='')))
cols = "scheme,language,bits_per_weight,model_bytes,ppl,ppl_increase_pct,kld,top1_agreement,tokens,seconds"
assert list(rows[0].keys())[:10] == cols.split(','), "columns: %s" % list(rows[0].keys())
got = sorted((r['scheme'], r['language']) for r in rows)
want = sorted((s, l) for s in ('q8_0', 'q4_0', 'q4_k_m') for l in ('python', 'c'))
assert got == want, "rows %s, expected %s" % (got, want)
R = {(r['scheme'], r['language']): r for r in rows}
f = lambda s, l, k: float(R[s, l][k])
for l in ('python', 'c'):
    for s in ('q8_0', 'q4_0', 'q4_k_m'):
        r = R[s, l]
        assert int(r['tokens']) == 2048 and int(r['ctx']) == 128, "tokens/ctx of %s %s" % (s, l)
        assert 0 <= f(s, l, 'kld') < 1 and 0 <= f(s, l, 'top1_agreement') <= 100, r
        inc = 100 * (f(s, l, 'ppl') / f(s, l, 'base_ppl') - 1)
        assert abs(inc - f(s, l, 'ppl_increase_pct')) < 1e-6 * max(1, abs(inc)), "increase %s vs %s" % (inc, r)
        assert float(r['seconds']) > 0 and r['expert'] == '', r
    assert f('q8_0', l, 'kld') < f('q4_0', l, 'kld') / 10, "q8_0 KLD not far below q4_0's for " + l
    assert f('q8_0', l, 'kld') < f('q4_k_m', l, 'kld'), "q8_0 KLD not below q4_k_m's for " + l
    assert f('q8_0', l, 'top1_agreement') > f('q4_0', l, 'top1_agreement'), "top-1 for " + l
    assert f('q8_0', l, 'base_ppl') == f('q4_0', l, 'base_ppl'), "one base per language"
for l in ('python', 'c'):
    b = {s: f(s, l, 'bits_per_weight') for s in ('q8_0', 'q4_0', 'q4_k_m')}
    m = {s: int(R[s, l]['model_bytes']) for s in b}
    assert 8.4 < b['q8_0'] < 8.7, b
    assert b['q8_0'] > b['q4_k_m'] > b['q4_0'] > 4.4, b  # q4_K falls back to q5_0 here
    assert sorted(b, key=b.get) == sorted(m, key=m.get), "model bytes and bits disagree: %s %s" % (b, m)
assert int(R['q4_k_m', 'c']['fallback_tensors']) > 0 and R['q8_0', 'c']['fallback_tensors'] == '0'
base = float(sys.argv[2])
assert abs(f('q8_0', 'python', 'base_ppl') - base) < 1e-4 * base, "base PPL %s, perplexity says %s" % (f('q8_0', 'python', 'base_ppl'), base)
EOF

py "the JSON file" "$TMP/r.json" "$TMP/r.csv" <<'EOF'
import csv, json, sys
j = json.load(open(sys.argv[1]))
c = list(csv.DictReader(open(sys.argv[2], newline='')))
assert isinstance(j, list) and len(j) == 6, "not an array of 6 rows"
key = lambda r: (r['scheme'], r['language'])
jc = {key(r): r for r in j}
for r in c:
    o = jc[key(r)]
    assert abs(o['ppl'] - float(r['ppl'])) <= 1e-8 * o['ppl'] and o['tokens'] == int(r['tokens']), (o, r)
    assert set(o) >= set(r), "JSON keys %s" % sorted(o)
EOF

py "the SVG" "$TMP/r.svg" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = '{http://www.w3.org/2000/svg}'
assert root.tag == ns + 'svg', root.tag
lines = root.iter(ns + 'polyline')
pts = [l.get('points').split() for l in lines]
assert len(pts) == 2 and all(len(p) == 3 for p in pts), "expected 2 lines of 3 points: %s" % pts
text = ' '.join(t.text or '' for t in root.iter(ns + 'text'))
assert 'python' in text and 'c' in text and 'bits per weight' in text, text
EOF

# ---- resume: nothing to do, same file; --json - is JSON and nothing else ----
cp "$TMP/r.csv" "$TMP/r0.csv"
expect 0 "resume" -- "$CODEMOE" sweep -m "$F32" $SMALL --corpus "$CORPUS" --bits 8,4 \
    --out "$TMP/r.csv" --json -
grep -q "nothing to measure" "$TMP/err" || fail "resume did not say it had nothing to do"
grep -Eq "^sweep: (base |quantized|q[0-9])" "$TMP/err" && fail "resume did work: $(head -c 300 "$TMP/err")"
cmp -s "$TMP/r.csv" "$TMP/r0.csv" || fail "a resume with nothing to do changed the CSV"
py "--json -" "$TMP/out" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
assert len(j) == 6, len(j)
EOF
grep -q "disparity at 4 bits (q4_0)" "$TMP/err" || fail "resume dropped the disparity lines"

# same_rows LABEL A B: two results files hold the same rows with the same PPL and KLD
same_rows() {
    py "$1" "$2" "$3" <<'EOF'
import csv, sys
a = {(r['scheme'], r['language']): r for r in csv.DictReader(open(sys.argv[1], newline=''))}
b = {(r['scheme'], r['language']): r for r in csv.DictReader(open(sys.argv[2], newline=''))}
assert sorted(a) == sorted(b), sorted(a)
for k in a:
    assert a[k]['ppl'] == b[k]['ppl'] and a[k]['kld'] == b[k]['kld'], (a[k], b[k])
EOF
}

# drop the q4_k_m rows: only they are measured again, to the same values
grep -v '^q4_k_m,' "$TMP/r0.csv" >"$TMP/r.csv"
expect 0 "partial resume" -- "$CODEMOE" sweep -m "$F32" $SMALL --corpus "$CORPUS" --bits 8,4 --out "$TMP/r.csv"
grep -q "^sweep: 2 rows measured" "$TMP/err" || fail "partial resume: $(grep 'rows measured' "$TMP/err")"
grep -q "^sweep: quantized to q8_0" "$TMP/err" && fail "partial resume quantized q8_0 again"
same_rows "partial resume" "$TMP/r.csv" "$TMP/r0.csv"
# the two orders of work, and base files in --tmpdir, measure the same values
mkdir -p "$TMP/td"
expect 0 "--order scheme" -- "$CODEMOE" sweep -m "$F32" $SMALL --corpus "$CORPUS" --bits 8,4 \
    --order scheme --out "$TMP/o1.csv"
grep -q "^sweep: order: scheme by scheme" "$TMP/err" || fail "--order scheme not taken"
expect 0 "--order language --tmpdir" -- "$CODEMOE" sweep -m "$F32" $SMALL --corpus "$CORPUS" \
    --bits 8,4 --order language --tmpdir "$TMP/td" --out "$TMP/o2.csv"
grep -q "^sweep: order: language by language" "$TMP/err" || fail "--order language not taken"
grep -q "in $TMP/td, one language at a time" "$TMP/err" || fail "--tmpdir not used: $(grep base "$TMP/err")"
[ -n "$(ls -A "$TMP/td")" ] && fail "files left in --tmpdir: $(ls "$TMP/td")"
for o in o1 o2; do same_rows "--order ($o)" "$TMP/$o.csv" "$TMP/r0.csv"; done
expect 2 "bad --order" -- "$CODEMOE" sweep -m "$F32" $SMALL --corpus "$CORPUS" --order both \
    --out "$TMP/o3.csv"

expect 1 "resume with another -c" -- "$CODEMOE" sweep -m "$F32" --langs python,c --max-tokens 2048 -c 64 \
    --corpus "$CORPUS" --bits 8,4 --out "$TMP/r.csv"
grep -v '^q4_k_m,' "$TMP/r0.csv" >"$TMP/r3.csv"
expect 1 "resume with another --max-tokens" -- "$CODEMOE" sweep -m "$F32" --langs python,c -c 128 \
    --max-tokens 1024 --corpus "$CORPUS" --bits 8,4 --out "$TMP/r3.csv"
printf '%s\r\nq8_0,python,x\r\n' "$(head -n 1 "$TMP/r0.csv" | tr -d '\r')" >"$TMP/broken.csv"
expect 1 "malformed row" -- "$CODEMOE" sweep -m "$F32" $SMALL --corpus "$CORPUS" --bits 8 --out "$TMP/broken.csv"

# ---- a language-expert pack: quantized whole, each language on its expert ----
"$CODEMOE" pack -o "$TMP/p.gguf" --expert c="$F32" --expert python="$F32" --fallback "$F16" \
    >/dev/null 2>&1 || fail "cannot build the pack"
expect 0 "pack" -- "$CODEMOE" sweep -m "$TMP/p.gguf" --langs python,rust --max-tokens 2048 -c 128 \
    --corpus "$CORPUS" --schemes q4_k_m --out "$TMP/p.csv"
expect 0 "pack --cross" -- "$CODEMOE" sweep -m "$TMP/p.gguf" --langs python,rust --max-tokens 2048 \
    -c 128 --corpus "$CORPUS" --schemes q4_k_m --out "$TMP/p.csv" --cross --json "$TMP/p.json"
grep -q "^sweep: 4 rows measured" "$TMP/err" || fail "--cross after a routed run: $(grep 'rows measured' "$TMP/err")"
py "pack rows" "$TMP/p.csv" "$TMP/r0.csv" "$TMP/p.json" <<'EOF'
import csv, json, sys
p = {(r['language'], r['expert']): r for r in csv.DictReader(open(sys.argv[1], newline=''))}
plain = {(r['scheme'], r['language']): r for r in csv.DictReader(open(sys.argv[2], newline=''))}
want = {(l, e) for l in ('python', 'rust') for e in ('c', 'python', 'fallback')}
assert set(p) == want, sorted(p)
# the python expert is the plain f32 model: quantized in the pack (q4_k_m: the
# policy must see each member's own tensor names), it must score the same
assert p['python', 'python']['ppl'] == plain['q4_k_m', 'python']['ppl'], (p['python', 'python'], plain['q4_k_m', 'python'])
assert p['python', 'c']['ppl'] == p['python', 'python']['ppl']
assert p['python', 'fallback']['ppl'] != p['python', 'python']['ppl'], "the f16 fallback measured as an f32 expert"
assert len(json.load(open(sys.argv[3]))) == 6
EOF

# ---- a token-level MoE model ----
if [ -f "$FIX/mixtral/mixtral-f32.gguf" ]; then
    expect 0 "MoE" -- "$CODEMOE" sweep -m "$FIX/mixtral/mixtral-f32.gguf" --langs python \
        --max-tokens 1024 -c 128 --corpus "$CORPUS" --schemes q8_0,q2_k --out "$TMP/m.csv"
    py "MoE rows" "$TMP/m.csv" <<'EOF'
import csv, sys
r = {x['scheme']: x for x in csv.DictReader(open(sys.argv[1], newline=''))}
assert set(r) == {'q8_0', 'q2_k'}, sorted(r)
assert float(r['q8_0']['kld']) < float(r['q2_k']['kld']), r
EOF
fi

tl_finish
