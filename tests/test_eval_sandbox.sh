#!/bin/sh
# test_eval_sandbox.sh - `codemoe eval`'s sandbox against hostile programs
# (tests/eval_hostile, run with `codemoe eval sandbox`: fork bomb, endless loop, 10 GB allocation, writing
# outside the scratch directory, opening a socket, deleting the home
# directory, printing gigabytes) in each language whose toolchain is here,
# one at a time and several at once (-j 4).
# Each must be contained: reported as a failure (never a pass), within its
# time limit, and leave nothing behind: no scratch directory, no file
# outside it, the (fake) home directory intact, no process still running.
. "$(dirname "$0")/lib.sh"
# The sandboxed programs of both eval tests run as one user (nobody, when
# root runs the tests), whose process limit they share: the hostile fork
# bombs would starve the other test's programs under make -j, so the two
# take turns.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$BUILD/tests/eval-sandbox.lock"
    flock 9
fi
tl_tmpdir
chmod 755 "$TMP" # the sandbox user (nobody, when run as root) must reach it
mkdir -p "$TMP/scratch" "$TMP/home" "$TMP/outside" "$TMP/progs"
chmod 755 "$TMP/scratch" "$TMP/outside"
echo keep >"$TMP/home/keep"
HOSTILE="$TL_SRC/tests/eval_hostile"
"$CODEMOE" eval --check >"$TMP/check" 2>&1 || { cat "$TMP/check"; fail "eval --check"; }
grep '^sandbox:' "$TMP/check"
# the plain fallback (no namespaces here) isolates neither the network nor
# /tmp: it is named as such, and those two attacks are not run against it
PLAIN=$(grep -c '^sandbox: plain' "$TMP/check")

# a listener on the host's loopback: a sandboxed connect must not reach it
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 9)
python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',$PORT)); s.listen(64); time.sleep(300)" 2>/dev/null &
LISTENER=$!
trap 'kill $LISTENER 2>/dev/null; rm -rf "$TMP"' EXIT

# run_all KIND FILTER: the hostile programs whose lang:name:ALL matches the
# case pattern FILTER, in the sandbox KIND (auto: the best here)
run_all() {
for f in "$HOSTILE"/*; do
    name=$(basename "$f")
    case $name in
    *.py) lang=py ;; *.cpp) lang=cpp ;; *.js) lang=js ;; *_test.go) lang=go ;;
    *.rs) lang=rs ;; *.java) lang=java ;; *) continue ;;
    esac
    grep -q "^$lang *ready" "$TMP/check" || { echo "skip $name: $lang not installed"; continue; }
    # by default every attack in py and cpp, the fork bomb elsewhere (time);
    # CM_EVAL_HOSTILE_ALL=1: all of them
    eval "case \$lang:\$name:\${CM_EVAL_HOSTILE_ALL:-0} in $2) ;; *) continue ;; esac"
    case $1:$PLAIN:$name in
    auto:1:socket*|auto:1:outside*) echo "not run: $name (plain sandbox)"; continue ;;
    esac
    sed -e "s|@OUTSIDE@|$TMP/outside|g" -e "s|@HOME@|$TMP/home|g" -e "s|@PORT@|$PORT|g" \
        "$f" >"$TMP/progs/$name"
    start=$(date +%s)
    HOME="$TMP/home" TMPDIR="$TMP/scratch" "$CODEMOE" eval sandbox --sandbox $1 --lang $lang --timeout 2 \
        "$TMP/progs/$name" >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err"; fail "$name: exit $?"; }
    took=$(($(date +%s) - start))
    echo "$1 $name: $(cut -c1-160 "$TMP/out") (${took}s)"
    grep -q '"status": "pass"' "$TMP/out" && fail "$name: reported as a pass"
    grep -q '"status": "' "$TMP/out" || fail "$name: no status"
    [ "$took" -le 30 ] || fail "$name: took ${took}s with a 2 s limit per step"
    [ -z "$(ls -A "$TMP/scratch")" ] || fail "$name: left $(ls "$TMP/scratch") in the scratch base"
    [ -z "$(ls -A "$TMP/outside")" ] || fail "$name: wrote outside: $(ls "$TMP/outside")"
    [ -f "$TMP/home/keep" ] || fail "$name: the home directory was deleted"
    for p in /tmp/codemoe-hostile-escape /var/tmp/codemoe-hostile-escape; do
        [ ! -e "$p" ] || { fail "$name: wrote $p"; rm -f "$p"; }
    done
    # nothing may still run from a scratch directory
    for p in /proc/[0-9]*; do
        case $(readlink "$p/cwd" 2>/dev/null) in
        "$TMP/scratch"/*) fail "$name: process ${p#/proc/} left running"; kill -9 "${p#/proc/}" ;;
        esac
    done
    ran=$((ran + 1))
done
}
ran=0
# by default every attack in py and cpp, the fork bomb elsewhere (time);
# CM_EVAL_HOSTILE_ALL=1: all of them
run_all auto 'py:*|cpp:*|*:*forkbomb*|*:1'
# the fallback without bubblewrap, where it works here
if "$CODEMOE" eval --check --sandbox namespaces >/dev/null 2>&1; then
    run_all namespaces 'py:*'
fi
# several at once (eval -j): the fork bombs and every py attack in one
# `eval sandbox -j 4` run, and, when root runs the tests (programs then run
# as a user per slot), two well-behaved programs among them that start 16
# threads and a child once the bombs are running: none is refused a thread
# or a child, since each program has a process limit of its own (one may
# still run out of time while the bombs hold the CPU).  The timeout is long because the
# bombs take the CPU: beside.py, a second's work alone, once took 8.3 s
# under the sanitizer stage of CI on two cores
lang_of() {
    case $1 in
    *.py) echo py ;; *.cpp) echo cpp ;; *.js) echo js ;; *_test.go) echo go ;;
    *.rs) echo rs ;; *.java) echo java ;;
    esac
}
cat >"$TMP/progs/beside.py" <<'PY'
import subprocess, threading, time
time.sleep(0.3)
ts = [threading.Thread(target=time.sleep, args=(0.2,)) for _ in range(16)]
for t in ts:
    t.start()
for t in ts:
    t.join()
subprocess.run(["true"], check=True)
PY
set --
n_par=0
n_beside=0
for f in forkbomb.py BESIDE forkbomb.js forkbomb_test.go BESIDE forkbomb.cpp forkbomb.rs \
    Problem_forkbomb.java $(cd "$HOSTILE" && ls *.py | grep -v '^forkbomb'); do
    if [ "$f" = BESIDE ]; then
        [ "$(id -u)" = 0 ] && grep -q "^py *ready" "$TMP/check" &&
            set -- "$@" --lang py "$TMP/progs/beside.py" && n_beside=$((n_beside + 1))
        continue
    fi
    lang=$(lang_of "$f")
    grep -q "^$lang *ready" "$TMP/check" || continue
    case $PLAIN:$f in 1:socket*|1:outside*) continue ;; esac
    sed -e "s|@OUTSIDE@|$TMP/outside|g" -e "s|@HOME@|$TMP/home|g" -e "s|@PORT@|$PORT|g" \
        "$HOSTILE/$f" >"$TMP/progs/par_$f"
    set -- "$@" --lang "$lang" "$TMP/progs/par_$f"
    n_par=$((n_par + 1))
done
if [ "$n_par" -gt 1 ]; then
    start=$(date +%s)
    HOME="$TMP/home" TMPDIR="$TMP/scratch" "$CODEMOE" eval sandbox -j 4 --timeout 15 "$@" \
        >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err"; fail "-j 4: exit $?"; }
    took=$(($(date +%s) - start))
    cut -c1-160 "$TMP/out"
    echo "-j 4: $n_par hostile programs and $n_beside well-behaved ones in ${took}s"
    [ "$(wc -l <"$TMP/out")" = $((n_par + n_beside)) ] || fail "-j 4: not one line per program"
    grep '"status": "pass"' "$TMP/out" | grep -v '/beside.py"' && fail "-j 4: a hostile program passed"
    # what this checks is the process limit of each program: a well-behaved
    # one must never fail or crash (no thread or child refused).  Starved of
    # the CPU by the bombs on a loaded two-core machine, one may still run out
    # of time (CI saw 15.7 s for a second's work), so a timeout does not count
    # against it, but at least one must pass.
    [ "$(grep '/beside.py"' "$TMP/out" | grep -c '"status": "\(pass\|timeout\)"')" = "$n_beside" ] ||
        fail "-j 4: a well-behaved program beside the fork bombs failed: $(grep '/beside.py"' "$TMP/out")"
    [ "$n_beside" = 0 ] || grep -q '/beside.py", "status": "pass"' "$TMP/out" ||
        fail "-j 4: no well-behaved program beside the fork bombs passed"
    [ -z "$(ls -A "$TMP/scratch")" ] || fail "-j 4: left $(ls "$TMP/scratch") in the scratch base"
    [ -z "$(ls -A "$TMP/outside")" ] || fail "-j 4: wrote outside: $(ls "$TMP/outside")"
    [ -f "$TMP/home/keep" ] || fail "-j 4: the home directory was deleted"
    for p in /proc/[0-9]*; do
        case $(readlink "$p/cwd" 2>/dev/null) in
        "$TMP/scratch"/*) fail "-j 4: process ${p#/proc/} left running"; kill -9 "${p#/proc/}" ;;
        esac
    done
fi
[ "$ran" -gt 0 ] || tl_skip "no toolchain for any hostile program"
echo "$ran hostile programs run"
tl_finish
