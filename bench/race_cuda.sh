#!/bin/sh
# race_cuda.sh - codemoe's CUDA backend against llama.cpp's CUDA build, on the
# same GPU, the same files, in one run; writes bench/CUDA.md.
#
#   bench/race_cuda.sh [-r REPS] [-o OUT.md] [--models "smol135m qwen05b moe8x"]
#                      [--types "q8_0 q4_0 q4_k_m"]
#
# Needs a CUDA build of codemoe (CM_BUILDDIR, default build-gpu beside the
# sources: tests/run_gpu.sh makes one; CM_COMMIT names its commit where the
# tree has no git history) and builds llama.cpp from the source
# tarball of ../shared/anchors (LLAMA_TARBALL) into LLAMA_DIR (default
# /tmp/llama.cpp-cuda) unless its llama-bench is there already.  Models come
# from tools/gen_model (random weights in the shapes of real models, the
# starcoder vocabulary) into MODELS_DIR (default /tmp/codemoe-models).
# Each row: llama-bench -ngl 99 and codemoe bench --backend cuda, one after
# the other, -p 512 -n 128, medians of REPS runs; peak device memory of each
# engine from nvidia-smi, sampled while it runs.  Then moe8x with a device
# budget of 40 % of its file: codemoe --vram-budget against llama.cpp with
# the -ngl whose layers fit the same budget.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${CM_BUILDDIR:-$ROOT/build-gpu}
SHARED=${CM_SHARED:-$ROOT/../shared}
LLAMA_TARBALL=${LLAMA_TARBALL:-$SHARED/anchors/llama.cpp/llama.cpp-c392e50.tar.xz}
LLAMA_DIR=${LLAMA_DIR:-/tmp/llama.cpp-cuda}
MODELS_DIR=${MODELS_DIR:-/tmp/codemoe-models}
REPS=3 OUT=$ROOT/bench/CUDA.md
MODELS="smol135m qwen05b moe8x" TYPES="q8_0 q4_0 q4_k_m"

usage() { echo "usage: bench/race_cuda.sh [-r N] [-o OUT.md] [--models LIST] [--types LIST]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in
    -r) REPS=$2 ;; -o) OUT=$2 ;; --models) MODELS=$2 ;; --types) TYPES=$2 ;;
    *) usage ;;
    esac
    shift 2
done

CODEMOE=$BUILD/codemoe GEN=$BUILD/tools/gen_model
[ -x "$CODEMOE" ] && [ -x "$GEN" ] || { echo "race_cuda.sh: build codemoe and tools/gen_model in $BUILD first" >&2; exit 1; }
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d .)
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)
LB=$LLAMA_DIR/build/bin/llama-bench
if [ ! -x "$LB" ]; then
    echo "building llama.cpp (CUDA, sm_$CAP)..." >&2
    mkdir -p "$LLAMA_DIR"
    tar xJf "$LLAMA_TARBALL" -C "$LLAMA_DIR" --strip-components=1
    cmake -S "$LLAMA_DIR" -B "$LLAMA_DIR/build" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CAP" \
        -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$LLAMA_DIR/build" -j"$(nproc)" --target llama-bench >/dev/null
fi
VOCAB=$SHARED/vocab/ggml-vocab-starcoder.gguf
mkdir -p "$MODELS_DIR"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

gen() { # gen PRESET TYPE -> the model's path, generated if missing
    f=$MODELS_DIR/$1-$2.gguf
    [ -f "$f" ] || "$GEN" --preset "$1" --type "$2" --vocab "$VOCAB" -o "$f" >&2
    echo "$f"
}

# peak MiB of device memory in use while a command runs, less what was in
# use before: peak CMD... (its output goes to $TMP/out)
peak() {
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1)
    ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1; sleep 0.05; done ) >"$TMP/mem" &
    mon=$!
    "$@" >"$TMP/out" 2>"$TMP/err" || { kill $mon; cat "$TMP/err" >&2; return 1; }
    kill $mon; wait $mon 2>/dev/null || true
    awk -v b="$base" 'BEGIN { m = 0 } $1 + 0 > m { m = $1 + 0 } END { print m - b }' "$TMP/mem"
}

. "$ROOT/bench/race_lib.sh"

ROWS=$TMP/rows
: >"$ROWS"
for m in $MODELS; do
    for t in $TYPES; do
        f=$(gen "$m" "$t")
        echo "race $m $t..." >&2
        lmem=$(peak "$LB" -m "$f" -ngl 99 -p 512 -n 128 -r "$REPS" -o json)
        cp "$TMP/out" "$TMP/l.json"
        cmem=$(peak "$CODEMOE" bench -m "$f" --backend cuda -p 512 -n 128 -r "$REPS" --json)
        cp "$TMP/out" "$TMP/c.json"
        set -- $(llama_ts "$TMP/l.json") $(codemoe_ts "$TMP/c.json")
        echo "| $m | $t | $1 | $3 | $(ratio "$3" "$1") | $2 | $4 | $(ratio "$4" "$2") | $lmem | $cmem |" >>"$ROWS"
    done
done

# moe8x under a device budget of 40 % of its file
BUDGET_ROWS=$TMP/budget
: >"$BUDGET_ROWS"
case " $MODELS " in *" moe8x "*)
    f=$(gen moe8x q4_0)
    size=$(stat -c %s "$f")
    budget=$((size * 2 / 5))
    ngl=$((16 * 2 / 5)) # its 16 layers are nearly all of the file: 40 % of them
    lmem=$(peak "$LB" -m "$f" -ngl "$ngl" -p 512 -n 128 -r "$REPS" -o json); cp "$TMP/out" "$TMP/l.json"
    cmem=$(peak "$CODEMOE" bench -m "$f" --backend cuda --vram-budget "$budget" -p 512 -n 128 -r "$REPS" --json)
    cp "$TMP/out" "$TMP/c.json"
    set -- $(llama_ts "$TMP/l.json") $(codemoe_ts "$TMP/c.json")
    echo "| moe8x | q4_0 | $((budget / 1048576)) MiB (-ngl $ngl) | $1 | $3 | $(ratio "$3" "$1") | $2 | $4 | $(ratio "$4" "$2") | $lmem | $cmem |" >>"$BUDGET_ROWS"
    ;;
esac

COMMIT=${CM_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
{
    echo "# CUDA backend: codemoe against llama.cpp, same GPU, same files, one run"
    echo
    echo "Regenerate with \`bench/race_cuda.sh\` on a machine with an NVIDIA GPU (tests/run_gpu.sh"
    echo "builds codemoe there).  $(date -u +%Y-%m-%d), GPU: $GPU; codemoe $COMMIT, llama.cpp"
    echo "c392e50 (CUDA build for sm_$CAP); random-weight models from tools/gen_model (starcoder"
    echo "vocabulary); \`-p 512 -n 128\`, medians of $REPS runs (llama-bench: means), tok/s;"
    echo "peak device memory (MiB) from nvidia-smi while each ran, less what was in use before."
    echo
    echo "| model | type | llama.cpp pp512 | codemoe pp512 | ratio | llama.cpp tg128 | codemoe tg128 | ratio | llama.cpp MiB | codemoe MiB |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    cat "$ROWS"
    if [ -s "$BUDGET_ROWS" ]; then
        echo
        echo "Experts split between device and host memory: a budget of 40 % of the file,"
        echo "codemoe \`--vram-budget\` (dense weights first, then as many experts as fit, the"
        echo "rest on the CPU) against llama.cpp with the \`-ngl\` that fits the same budget:"
        echo
        echo "| model | type | budget | llama.cpp pp512 | codemoe pp512 | ratio | llama.cpp tg128 | codemoe tg128 | ratio | llama.cpp MiB | codemoe MiB |"
        echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        cat "$BUDGET_ROWS"
    fi
} >"$OUT"
cat "$OUT"
