#!/bin/sh
# test_readme.sh - README.md's deterministic examples, run: every fenced
# `$ ./codemoe info|tokenize|convert|quantize|route|logits ...` block is run
# as written and its output compared with what README shows, so the document
# cannot drift from the program (issue 15).  When a command's output changes,
# README.md must change with it.
#
# An example is a line `$ ./codemoe ...` inside a ``` block (continued over
# the next lines while a quote is open), and the lines after it up to the
# next `$ ` line or the block's end are its output: stdout, then stderr.  A
# line `...` stands for any number of lines.  Both sides are masked for what
# varies run to run (times, tok/s, GB/s, peak RSS); `logits` prints nothing,
# and its output file must hold [n_ids, n_vocab] float32 values.  The
# commands run in a scratch folder whose ../shared is the reference data
# (lib.sh's SHARED: ../shared, $CM_SHARED or tests/data) and whose ./codemoe
# is $CODEMOE, so README's own paths work unchanged.  Examples of other
# commands (run, perplexity, bench: timings, kernel-dependent digits; pack:
# files of the reader's own) are not run here.
set -u
. "$(dirname "$0")/lib.sh"
README=$TL_SRC/README.md
[ -f "$README" ] || tl_skip "$README not found"
tl_shared fixtures/gguf/llama/llama-q4_0.gguf fixtures/gguf/llama/llama-f32.gguf \
    fixtures/hf/llama/config.json fixtures/gguf/kquants/kq-f16.gguf \
    vocab/ggml-vocab-starcoder.gguf || tl_skip "reference data not found at $SHARED (set CM_SHARED)"
tl_tmpdir
SHARED_ABS=$(cd "$SHARED" && pwd) || { echo "ERROR: cannot enter $SHARED"; exit 99; }
case $CODEMOE in
/*) ;;
*) CODEMOE=$(pwd)/$CODEMOE ;;
esac
[ -x "$CODEMOE" ] || { echo "ERROR: $CODEMOE is not a program"; exit 99; }
CODEMOE_ROUTER=${CODEMOE_ROUTER:-$TL_SRC/models/router.bin}
export CODEMOE_ROUTER
mkdir "$TMP/w" "$TMP/ex" || exit 99
ln -s "$SHARED_ABS" "$TMP/shared" && ln -s "$CODEMOE" "$TMP/w/codemoe" || exit 99

# ---- the examples: ex/N.cmd (the command, without "$ "), ex/N.want, ex/N.line ----
awk -v dir="$TMP/ex" -v cmds=" info tokenize convert quantize route logits " '
# open: whether a quote is still open after adding line s
function scan(s,    i, c) {
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\047" && !dq) sq = !sq
        else if (c == "\"" && !sq) dq = !dq
    }
    return sq || dq
}
function finish_cmd(    w) {
    split(cmd, w, /[ \t\n]+/)
    if (index(cmds, " " w[2] " ")) {
        n++
        cur = n
        printf "%s\n", cmd > (dir "/" n ".cmd"); close(dir "/" n ".cmd")
        printf "%d\n", line > (dir "/" n ".line"); close(dir "/" n ".line")
        printf "" > (dir "/" n ".want")
    } else {
        cur = 0
    }
}
/^```/ { fence = !fence; cur = 0; cont = 0; next }
!fence { next }
cont { cmd = cmd "\n" $0; if (!scan($0)) { cont = 0; finish_cmd() } next }
/^\$ / {
    cur = 0
    if ($0 ~ /^\$ \.\/codemoe /) {
        cmd = substr($0, 3); line = NR; sq = dq = 0
        if (scan(cmd)) cont = 1
        else finish_cmd()
    }
    next
}
cur { print >> (dir "/" cur ".want"); close(dir "/" cur ".want") }
' "$README"

# info's memory figure counts per-thread buffers, whose size depends on
# the thread count and on the kernels this CPU gets (the rows a
# generation kernel packs: AMD keeps AVX2's for q8_0), so only its mapped
# weights are compared.
OMP_NUM_THREADS=2; export OMP_NUM_THREADS
MASK_MEMORY='s/^(memory to run: +)[0-9.]+ MiB \(weights ([0-9.]+) MiB mapped \+ [0-9.]+ MiB/\1# MiB (weights \2 MiB mapped + # MiB/'

# mask FILE: what varies run to run, replaced by #
mask() {
    sed -E -e "${MASK_MEMORY:-s/^\$//}" \
        -e 's/[0-9]+(\.[0-9]+)? (s|ms)([ ,|)]|$)/# \2\3/g' \
        -e 's/[0-9]+(\.[0-9]+)? (tok|tokens)\/s/# \2\/s/g' \
        -e 's/[0-9]+(\.[0-9]+)? GB\/s/# GB\/s/g' \
        -e 's/peak RSS [0-9]+(\.[0-9]+)? [KMG]iB/peak RSS # MiB/g' \
        -e 's/\([a-z0-9]+ kernels, [0-9]+ threads?\)/(# kernels, # threads)/g' \
        -e "s|$TMP/w/||g" "$1"
}

# matches WANT GOT: GOT's lines are WANT's, a `...` line standing for any
# number of lines; else prints where they part and fails
matches() {
    awk '
    NR == FNR { w[++nw] = $0; next }
    { g[++ng] = $0 }
    function seg_at(at, from, len,    k) {
        if (at < 1 || at + len - 1 > ng) return 0
        for (k = 0; k < len; k++)
            if (g[at + k] != w[from + k]) return 0
        return 1
    }
    END {
        pos = 1; anchored = 1; i = 1
        while (i <= nw) {
            if (w[i] == "...") { anchored = 0; i++; continue }
            for (j = i; j <= nw && w[j] != "..."; j++) ;
            len = j - i; found = 0
            if (anchored) {
                start = pos; found = seg_at(start, i, len)
            } else if (j > nw) {
                start = ng - len + 1; found = start >= pos && seg_at(start, i, len)
            } else {
                for (start = pos; !found && start + len - 1 <= ng; start++)
                    if (seg_at(start, i, len)) { found = 1; break }
            }
            if (!found) {
                if (anchored)  # the first line that differs
                    for (k = 0; k < len - 1 && pos + k <= ng && g[pos + k] == w[i + k]; k++) ;
                else
                    k = 0
                printf "README shows \"%s\" (its output line %d), the command printed \"%s\"\n",
                       w[i + k], i + k, anchored && pos + k <= ng ? g[pos + k] : "something else"
                exit 1
            }
            pos = start + len; i = j
        }
        if ((nw == 0 || w[nw] != "...") && pos != ng + 1) {
            printf "the command printed more than README shows, from line %d: \"%s\"\n", pos, g[pos]
            exit 1
        }
    }' "$1" "$2"
}

n=0
seen=" "
while [ -f "$TMP/ex/$((n + 1)).cmd" ]; do
    n=$((n + 1))
    k=$TMP/ex/$n
    f=$k.cmd
    cmd=$(cat "$f")
    at="README.md:$(cat "$k.line")"
    sub=$(printf '%s\n' "$cmd" | awk 'NR == 1 { print $2 }')
    seen="$seen$sub "
    (cd "$TMP/w" && sh -c "$cmd") >"$TMP/out" 2>"$TMP/err"
    rc=$?
    if [ "$rc" != 0 ]; then
        fail "$at: \`$(head -n 1 "$f")\` exited $rc: $(head -c 300 "$TMP/err")"
        continue
    fi
    cat "$TMP/out" "$TMP/err" >"$TMP/got0"
    mask "$TMP/got0" >"$TMP/got"
    mask "$k.want" >"$TMP/want"
    if ! matches "$TMP/want" "$TMP/got" >"$TMP/why"; then
        fail "$at: \`$(head -n 1 "$f")\` does not print what README shows: $(cat "$TMP/why")"
        if command -v diff >/dev/null 2>&1; then
            diff -u "$TMP/want" "$TMP/got" | sed 's/^/    /' | head -n 60
        fi
        continue
    fi
    if [ "$sub" = logits ]; then
        # --ids A,B,C -m MODEL -o FILE: FILE holds n_ids x n_vocab float32 values
        ids=$(printf '%s\n' "$cmd" | sed -n 's/.*--ids \([^ ]*\).*/\1/p')
        model=$(printf '%s\n' "$cmd" | sed -n 's/.* -m \([^ ]*\).*/\1/p')
        out=$(printf '%s\n' "$cmd" | sed -n 's/.* -o \([^ ]*\).*/\1/p')
        n_ids=$(printf '%s\n' "$ids" | awk -F, '{ print NF }')
        n_vocab=$(cd "$TMP/w" && "$CODEMOE" info "$model" | sed -n 's/^vocabulary: *\([0-9]*\).*/\1/p')
        size=$(wc -c <"$TMP/w/$out" 2>/dev/null || echo none)
        want=$((n_ids * ${n_vocab:-0} * 4))
        if [ "$size" != "$want" ] || [ "$want" = 0 ]; then
            fail "$at: logits wrote $size bytes to $out, not $n_ids x ${n_vocab:-?} x 4 = $want"
        else
            echo "$at: logits: $out holds [$n_ids, $n_vocab] float32 ($size bytes)"
        fi
    fi
    echo "$at: $(head -n 1 "$f" | cut -c 1-100): as README shows"
done
for sub in info tokenize convert quantize route logits; do
    case $seen in
    *" $sub "*) ;;
    *) fail "README.md has no \`\$ ./codemoe $sub\` example in a fenced block any more" ;;
    esac
done
echo "$n README examples run"
tl_finish
