# lib.sh - what the shell tests share.  Sourced, not run:
#
#     . "$(dirname "$0")/lib.sh"
#
# found beside the script rather than in the working directory, because
# out-of-tree builds and `make distcheck` run the tests from a build directory
# while the scripts stay in the (read-only) source tree.
#
# Variables, from make check's environment (AM_TESTS_ENVIRONMENT in
# Makefile.am) or, for a run by hand from the top build directory, defaults:
#   CODEMOE  the codemoe program
#   BUILD    the top build directory (tools/gen_model, tests/fuzz_*)
#   SHARED   the reference data: the first of $CM_SHARED, ../shared, ../shared
#            beside the source tree and the repository's own tests/data
#            (tests/data/README.md: the same paths) that holds the files the
#            scripts read (TL_PROBE; tl_shared picks again for other files),
#            as the C tests look for it (testlib.h's tl_shared)
#   TL_SRC   the top source directory
#   fails    the number of failed checks so far

TL_SRC=$(cd "$(dirname "$0")/.." && pwd)
CODEMOE=${CODEMOE:-./codemoe}
BUILD=${CM_BUILDDIR:-.}
fails=0

# tl_shared PATH...: sets SHARED to the first of $CM_SHARED, ../shared,
# ../shared beside the source tree and $TL_SRC/tests/data that holds every
# PATH (paths inside it), so a copy lacking a test's files does not hide one
# that has them.  None does: SHARED is $CM_SHARED, else tests/data (what the
# skip message names), and the status is 1.
tl_shared() {
    for tl_d in "${CM_SHARED:-}" ../shared "$TL_SRC/../shared" "$TL_SRC/tests/data"; do
        [ -n "$tl_d" ] || continue
        tl_all=1
        for tl_p in "$@"; do
            [ -e "$tl_d/$tl_p" ] || { tl_all=0; break; }
        done
        if [ "$tl_all" = 1 ]; then
            SHARED=$tl_d
            return 0
        fi
    done
    SHARED=${CM_SHARED:-$TL_SRC/tests/data}
    return 1
}
# What the scripts read (a script may set TL_PROBE before sourcing this).
TL_PROBE=${TL_PROBE:-fixtures/gguf/llama/llama-f32.gguf vocab/ggml-vocab-starcoder.gguf corpus/python/valid.jsonl.xz}
# shellcheck disable=SC2086 # TL_PROBE is a list of paths without spaces
tl_shared $TL_PROBE || :

# fail MESSAGE: counts a failed check and says which.
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# tl_skip REASON: exit 77 (automake's SKIP) with a one-line reason, or 1 if a
# check has already failed (a skip must not hide a failure).
tl_skip() {
    echo "SKIP: $*"
    [ "$fails" -eq 0 ] || exit 1
    exit 77
}

# tl_tmpdir: a fresh directory in $TMP, removed when the script exits, also
# when interrupted.  A failed mktemp is a hard error (99): with TMP empty
# the test would write to /.
tl_tmpdir() {
    TMP=$(mktemp -d) || { echo "ERROR: mktemp -d failed"; exit 99; }
    trap 'rm -rf "$TMP"' EXIT
    trap 'exit 1' INT TERM
}

# expect CODE DESCRIPTION -- COMMAND...: runs COMMAND with stdout in $TMP/out
# and stderr in $TMP/err, and fails unless it exits CODE.  When CODE is not 0,
# stderr less the lines matching TL_PROGRESS (progress reports; empty: none)
# must be exactly one line, matching TL_ERROR: errors are one line naming the
# program.  Both are grep -E patterns, which a script may set.
TL_ERROR='^codemoe: '
TL_PROGRESS=
expect() {
    code=$1; what=$2; shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"
    got=$?
    if [ -n "$TL_PROGRESS" ]; then
        grep -Ev "$TL_PROGRESS" "$TMP/err" >"$TMP/err1"
    else
        cp "$TMP/err" "$TMP/err1"
    fi
    if [ "$got" != "$code" ]; then
        fail "$what: exit $got, expected $code; stderr: $(head -c 300 "$TMP/err1")"
        return
    fi
    if [ "$code" != 0 ]; then
        if [ "$(wc -l <"$TMP/err1")" != 1 ] || ! grep -Eq "$TL_ERROR" "$TMP/err1"; then
            fail "$what: error is not one line matching '$TL_ERROR': $(head -c 300 "$TMP/err")"
        fi
    fi
}

# tl_finish: the summary line, and exit 0 if no check failed, else 1.
tl_finish() {
    if [ "$fails" -ne 0 ]; then
        echo "FAIL: ${0##*/}: $fails check(s) failed"
        exit 1
    fi
    echo "PASS: ${0##*/}"
    exit 0
}
