#!/bin/sh
# run_sweep.sh - times `codemoe sweep` on a random-weight model: the full
# sweep of the issue (5 schemes x 7 languages x 64k tokens, --full, about a
# quarter of an hour), or a subset extrapolated to it; prints a markdown
# report for bench/SWEEP.md.
#
#   bench/run_sweep.sh [--full] [-t THREADS] [--preset smol100m] [--langs python]
#                      [--max-tokens 4096] [-c 512] [--bits 8,4,3,2]
#                      [--full-langs 7] [--full-tokens 65536]
#
# A subset misses what only the full run does (e.g. seven languages' base
# log-probabilities at once, 22 GB, spilling out of the page cache before
# the sweep ran language by language): quote --full runs.
#
# The model (F16, starcoder vocabulary) is generated once into bench/models/
# (git-ignored; the same file run_bench.sh uses).  A measured subset is
# extrapolated linearly: evaluation time is proportional to the tokens
# evaluated (every chunk is the same size; the text does not matter), and
# each scheme is quantized once whatever the number of languages.
# Environment: CM_BUILDDIR (default: the source tree), CM_SHARED (default:
# ../shared next to the tree).  Run it on a quiet machine: the load average
# at start and end is recorded, since other busy processes slow OpenMP.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${CM_BUILDDIR:-$ROOT}
SHARED=${CM_SHARED:-$ROOT/../shared}
MODELS_DIR=$ROOT/bench/models
THREADS=2 PRESET=smol100m LANGS=python MAXTOK=4096 CTX=512 BITS=8,4,3,2
FULL_LANGS=7 FULL_TOKENS=65536

usage() {
    echo "usage: bench/run_sweep.sh [--full] [-t N] [--preset P] [--langs L] [--max-tokens N]" \
         "[-c N] [--bits LIST] [--full-langs N] [--full-tokens N]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    if [ "$1" = --full ]; then
        LANGS=c,cpp,python,java,javascript,go,rust MAXTOK=65536
        shift
        continue
    fi
    [ $# -ge 2 ] || usage
    case $1 in
    -t) THREADS=$2 ;; --preset) PRESET=$2 ;; --langs) LANGS=$2 ;; --max-tokens) MAXTOK=$2 ;;
    -c) CTX=$2 ;; --bits) BITS=$2 ;; --full-langs) FULL_LANGS=$2 ;; --full-tokens) FULL_TOKENS=$2 ;;
    *) usage ;;
    esac
    shift 2
done

make -C "$BUILD" -s codemoe tools/gen_model >&2
CODEMOE=$BUILD/codemoe GEN=$BUILD/tools/gen_model
MODEL=$MODELS_DIR/$PRESET-f16.gguf
mkdir -p "$MODELS_DIR"
if [ ! -f "$MODEL" ]; then
    "$GEN" -o "$MODEL" --preset "$PRESET" --type f16 \
        --vocab "$SHARED/vocab/ggml-vocab-starcoder.gguf" >&2
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

load0=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date -u '+%Y-%m-%d %H:%M UTC')
t0=$(date +%s.%N)
"$CODEMOE" sweep -m "$MODEL" -t "$THREADS" --langs "$LANGS" --max-tokens "$MAXTOK" -c "$CTX" \
    --bits "$BITS" --corpus "$SHARED/corpus" --out "$TMP/sweep.csv" 2>"$TMP/log"
t1=$(date +%s.%N)
load1=$(cut -d' ' -f1-3 /proc/loadavg)

params=$("$CODEMOE" info "$MODEL" 2>/dev/null | sed -n 's/^parameters: *//p')
echo "### $PRESET F16 ($params), $LANGS, $MAXTOK tokens, -c $CTX, -t $THREADS"
echo
echo "$start, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')," \
     "load average $load0 at start, $load1 at end; wall time $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s."
echo
# per step: seconds and tokens, from the log (base, quantizing) and the CSV (rows)
awk -v full_langs="$FULL_LANGS" -v full_tok="$FULL_TOKENS" -v langs="$LANGS" '
    FILENAME ~ /log$/ && /^sweep: base [^ ]+: PPL / {
        n = split($0, w, " "); tok = w[n - 3]; s = w[n - 1]; sub(/\(/, "", s)
        bt += tok; bs += s }
    FILENAME ~ /log$/ && /^sweep: quantized to / {
        q = $4; sub(/:$/, "", q); s = $(NF - 1); sub(/^\(/, "", s); qs[q] = s; order[++nq] = q }
    FILENAME ~ /csv$/ && FNR > 1 {
        split($0, f, ","); rs[f[1]] += f[10]; rt[f[1]] += f[9]; bpw[f[1]] = f[3] }
    END {
        nl = split(langs, L, ",")
        printf "| step | bits/weight | tokens | seconds | tokens/s | full sweep: seconds |\n"
        printf "|---|---|---|---|---|---|\n"
        fb = full_langs * full_tok * bs / bt; total = fb
        printf "| base (f16) evaluation | 16 | %d | %.1f | %.0f | %.0f |\n", bt, bs, bt / bs, fb
        for (i = 1; i <= nq; i++) {
            q = order[i]; fr = full_langs * full_tok * rs[q] / rt[q]
            printf "| quantize %s (memfd) | %.2f | | %.1f | | %.0f |\n", q, bpw[q], qs[q], qs[q]
            printf "| %s evaluation + KLD | | %d | %.1f | %.0f | %.0f |\n", q, rt[q], rs[q], rt[q] / rs[q], fr
            total += fr + qs[q]
        }
        printf "| **total** | | | | | **%.0f (%.1f min)** |\n", total, total / 60
    }' "$TMP/log" "$TMP/sweep.csv"
echo
echo "Extrapolated to $FULL_LANGS languages x $FULL_TOKENS tokens: every evaluation scales with its tokens,"
echo "quantization is done once per scheme."
