#!/bin/sh
# race_gpu.sh - codemoe's CUDA or Vulkan backend against llama.cpp's build
# for the same API, on the same GPU, the same files, in one run; writes
# bench/CUDA.md or bench/VULKAN.md.
#
#   bench/race_gpu.sh [--backend cuda|vulkan] [-r REPS] [-o OUT.md]
#                     [--models "smol135m qwen05b moe8x"] [--types "q8_0 q4_0 q4_k_m"]
#
# Needs a build of codemoe with that backend (CM_BUILDDIR, default build-gpu
# beside the sources: tests/run_gpu.sh makes a CUDA one; CM_COMMIT names its
# commit where the tree has no git history) and builds llama.cpp from the
# source tarball of ../shared/anchors (LLAMA_TARBALL) into LLAMA_DIR
# (default /tmp/llama.cpp-BACKEND) unless its llama-bench is there already;
# LLAMA_CMAKE_FLAGS adds to its cmake line (a Vulkan build on a machine
# without the SDK: -DVulkan_INCLUDE_DIR=... -DVulkan_GLSLC_EXECUTABLE=...).
# With --backend vulkan, where the codemoe build also has CUDA, each row
# also gives codemoe's CUDA figures and Vulkan's ratio to them.  Models come
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
MODELS_DIR=${MODELS_DIR:-/tmp/codemoe-models}
REPS=3 OUT= BACKEND=cuda
MODELS="smol135m qwen05b moe8x" TYPES="q8_0 q4_0 q4_k_m"

usage() { echo "usage: bench/race_gpu.sh [--backend cuda|vulkan] [-r N] [-o OUT.md] [--models LIST] [--types LIST]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in
    --backend) BACKEND=$2 ;; -r) REPS=$2 ;; -o) OUT=$2 ;; --models) MODELS=$2 ;; --types) TYPES=$2 ;;
    *) usage ;;
    esac
    shift 2
done
case $BACKEND in
cuda) API=CUDA LLAMA_OPT=-DGGML_CUDA=ON ;;
vulkan) API=Vulkan LLAMA_OPT=-DGGML_VULKAN=ON ;;
*) usage ;;
esac
LLAMA_DIR=${LLAMA_DIR:-/tmp/llama.cpp-$BACKEND}
[ -n "$OUT" ] || OUT=$ROOT/bench/$(echo "$BACKEND" | tr a-z A-Z).md

CODEMOE=$BUILD/codemoe GEN=$BUILD/tools/gen_model
[ -x "$CODEMOE" ] && [ -x "$GEN" ] || { echo "race_gpu.sh: build codemoe and tools/gen_model in $BUILD first" >&2; exit 1; }
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d .)
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)
LB=$LLAMA_DIR/build/bin/llama-bench
if [ ! -x "$LB" ]; then
    if [ "$BACKEND" = vulkan ] && ! command -v glslc >/dev/null 2>&1; then
        echo "race_gpu.sh: llama.cpp's Vulkan build needs glslc on PATH (its shader generator looks there)" >&2
        exit 1
    fi
    echo "building llama.cpp ($API, sm_$CAP)..." >&2
    mkdir -p "$LLAMA_DIR"
    tar xJf "$LLAMA_TARBALL" -C "$LLAMA_DIR" --strip-components=1
    cmake -S "$LLAMA_DIR" -B "$LLAMA_DIR/build" $LLAMA_OPT -DCMAKE_CUDA_ARCHITECTURES="$CAP" \
        -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release ${LLAMA_CMAKE_FLAGS:-} >/dev/null
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

# codemoe's CUDA figures beside its Vulkan ones, where the build has both
WITH_CUDA=0
if [ "$BACKEND" = vulkan ] && "$CODEMOE" info --devices 2>/dev/null | grep -q "^cuda [0-9]*:"; then
    WITH_CUDA=1
fi

ROWS=$TMP/rows
: >"$ROWS"
for m in $MODELS; do
    for t in $TYPES; do
        f=$(gen "$m" "$t")
        echo "race $m $t..." >&2
        lmem=$(peak "$LB" -m "$f" -ngl 99 -p 512 -n 128 -r "$REPS" -o json)
        cp "$TMP/out" "$TMP/l.json"
        cmem=$(peak "$CODEMOE" bench -m "$f" --backend "$BACKEND" -p 512 -n 128 -r "$REPS" --json)
        cp "$TMP/out" "$TMP/c.json"
        set -- $(llama_ts "$TMP/l.json") $(codemoe_ts "$TMP/c.json")
        row="| $m | $t | $1 | $3 | $(ratio "$3" "$1") | $2 | $4 | $(ratio "$4" "$2") | $lmem | $cmem |"
        if [ $WITH_CUDA = 1 ]; then
            "$CODEMOE" bench -m "$f" --backend cuda -p 512 -n 128 -r "$REPS" --json >"$TMP/g.json"
            set -- "$3" "$4" $(codemoe_ts "$TMP/g.json")
            row="$row $3 | $(ratio "$1" "$3") | $4 | $(ratio "$2" "$4") |"
        fi
        echo "$row" >>"$ROWS"
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
    cmem=$(peak "$CODEMOE" bench -m "$f" --backend "$BACKEND" --vram-budget "$budget" -p 512 -n 128 -r "$REPS" --json)
    cp "$TMP/out" "$TMP/c.json"
    set -- $(llama_ts "$TMP/l.json") $(codemoe_ts "$TMP/c.json")
    echo "| moe8x | q4_0 | $((budget / 1048576)) MiB (-ngl $ngl) | $1 | $3 | $(ratio "$3" "$1") | $2 | $4 | $(ratio "$4" "$2") | $lmem | $cmem |" >>"$BUDGET_ROWS"
    ;;
esac

COMMIT=${CM_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
HEAD_ROW="| model | type | llama.cpp pp512 | codemoe pp512 | ratio | llama.cpp tg128 | codemoe tg128 | ratio | llama.cpp MiB | codemoe MiB |"
RULE="|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
if [ $WITH_CUDA = 1 ]; then
    HEAD_ROW="$HEAD_ROW codemoe CUDA pp512 | Vulkan/CUDA | codemoe CUDA tg128 | Vulkan/CUDA |"
    RULE="$RULE---:|---:|---:|---:|"
fi
{
    echo "# $API backend: codemoe against llama.cpp, same GPU, same files, one run"
    echo
    echo "Regenerate with \`bench/race_gpu.sh --backend $BACKEND\` on a machine with an NVIDIA GPU"
    echo "(tests/run_gpu.sh builds codemoe there).  $(date -u +%Y-%m-%d), GPU: $GPU; codemoe $COMMIT,"
    echo "llama.cpp c392e50 ($API build${LLAMA_NOTE:+, $LLAMA_NOTE}); random-weight models from tools/gen_model"
    echo "(starcoder vocabulary); \`-p 512 -n 128\`, medians of $REPS runs (llama-bench: means), tok/s;"
    echo "peak device memory (MiB) from nvidia-smi while each ran, less what was in use before."
    echo
    echo "$HEAD_ROW"
    echo "$RULE"
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
