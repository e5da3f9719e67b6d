#!/bin/sh
# race.sh - codemoe against llama.cpp on this CPU: the same files, the same
# machine, one run; writes a markdown table of both engines' numbers.
#
#   bench/race.sh [-t "2 1"] [-r REPS] [--isa "native avx2"] [-o OUT.md]
#                 [--models "smol135m qwen05b moe8x"] [--types "q8_0 q4_0 q4_k_m"]
#
# llama.cpp is the anchors' CPU build (../shared/anchors/llama.cpp/bin,
# LLAMA_BIN), which loads its best libggml-cpu variant for this CPU; with
# --isa avx2 a copy of that folder keeping only the haswell variant runs
# against codemoe with CODEMOE_ISA=avx2 (a laptop without AVX-512).  Each
# row runs llama-bench and then codemoe bench (-p 512 -n 128 -r REPS), so a
# slow moment of a shared machine hits both; peak RSS of each process from
# GNU time.  Models come from tools/gen_model (random weights in the shapes
# of real models, the starcoder vocabulary) into MODELS_DIR (default
# bench/models, git-ignored).  CM_BUILDDIR: the build with codemoe (default
# the source tree); CM_SHARED: ../shared.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${CM_BUILDDIR:-$ROOT}
SHARED=${CM_SHARED:-$ROOT/../shared}
LLAMA_BIN=${LLAMA_BIN:-$SHARED/anchors/llama.cpp/bin}
MODELS_DIR=${MODELS_DIR:-$ROOT/bench/models}
THREADS="2 1" REPS=3 ISAS=native OUT=$ROOT/bench/RESULTS.md
MODELS="smol135m qwen05b moe8x" TYPES="q8_0 q4_0 q4_k_m"

usage() {
    echo "usage: bench/race.sh [-t LIST] [-r N] [--isa LIST] [-o OUT.md] [--models LIST] [--types LIST]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in
    -t) THREADS=$2 ;; -r) REPS=$2 ;; --isa) ISAS=$2 ;; -o) OUT=$2 ;;
    --models) MODELS=$2 ;; --types) TYPES=$2 ;;
    *) usage ;;
    esac
    shift 2
done

CODEMOE=$BUILD/codemoe GEN=$BUILD/tools/gen_model
VOCAB=$SHARED/vocab/ggml-vocab-starcoder.gguf
for f in "$CODEMOE" "$GEN" "$LLAMA_BIN/llama-bench"; do
    [ -x "$f" ] || { echo "race.sh: $f is missing (build codemoe and tools/gen_model; LLAMA_BIN)" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "race.sh: needs GNU time (apt-get install time)" >&2; exit 1; }
mkdir -p "$MODELS_DIR"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# the AVX2-only llama.cpp: a copy of bin/ with only the haswell variant
llama_dir() {
    if [ "$1" = native ]; then echo "$LLAMA_BIN"; return; fi
    d=$TMP/llama-$1
    if [ ! -d "$d" ]; then
        cp -r "$LLAMA_BIN" "$d"
        for so in "$d"/libggml-cpu-*.so; do
            case $so in *-haswell.so) ;; *) rm -f "$so" ;; esac
        done
    fi
    echo "$d"
}

gen() { # gen PRESET TYPE -> the model's path, generated if missing
    f=$MODELS_DIR/$1-$2.gguf
    [ -f "$f" ] || "$GEN" --preset "$1" --type "$2" --vocab "$VOCAB" -o "$f" >/dev/null
    echo "$f"
}

# rss KB of the command's peak, its stdout in $TMP/out, stderr in $TMP/err
rss() {
    /usr/bin/time -f %M -o "$TMP/rss" "$@" >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/err" >&2; return 1; }
    cat "$TMP/rss"
}

. "$ROOT/bench/race_lib.sh"
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

ROWS=$TMP/rows
: >"$ROWS"
for isa in $ISAS; do
    LD=$(llama_dir "$isa")
    cisa=""
    [ "$isa" = native ] || cisa=$isa
    for t in $THREADS; do
        for m in $MODELS; do
            for ty in $TYPES; do
                f=$(gen "$m" "$ty")
                echo "race $isa -t $t $m $ty..." >&2
                lrss=$(rss "$LD/llama-bench" -m "$f" -t "$t" -p 512 -n 128 -r "$REPS" -o json)
                cp "$TMP/out" "$TMP/l.json"
                variant=$(sed -n 's/.*libggml-cpu-\([a-z0-9_]*\)\.so.*/\1/p' "$TMP/err" | head -n 1)
                # (--bw: no bandwidth measurement, whose buffer would be the peak RSS)
                crss=$(CODEMOE_ISA=$cisa rss "$CODEMOE" bench -m "$f" -t "$t" -p 512 -n 128 -r "$REPS" \
                    --bw 1 --json)
                cp "$TMP/out" "$TMP/c.json"
                set -- $(llama_ts "$TMP/l.json") $(codemoe_ts "$TMP/c.json")
                echo "| $m | $ty | $t | ${cisa:-native} | ${variant:-?} | $1 | $3 | $(ratio "$3" "$1") | $2 | $4 | $(ratio "$4" "$2") | $(mib "$lrss") | $(mib "$crss") |" >>"$ROWS"
            done
        done
    done
done

CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
COMMIT=${CM_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
{
    echo "# CPU race: codemoe against llama.cpp, same machine, same files, one run"
    echo
    echo "Regenerate with \`bench/race.sh\`.  $(date -u +%Y-%m-%d), CPU: $CPU ($(nproc) cores"
    echo "online); codemoe $COMMIT; llama.cpp c392e50 (../shared/anchors CPU build, the variant it"
    echo "loaded in the variant column); random-weight models from tools/gen_model; \`-p 512 -n 128\`,"
    echo "$REPS repetitions (codemoe: median; llama-bench: mean), tok/s; peak RSS in MiB (GNU time)."
    echo "Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "| model | type | threads | codemoe ISA | llama.cpp variant | llama.cpp pp512 | codemoe pp512 | ratio | llama.cpp tg128 | codemoe tg128 | ratio | llama.cpp MiB | codemoe MiB |"
    echo "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    cat "$ROWS"
} >"$OUT"
cat "$OUT"
