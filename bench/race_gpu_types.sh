#!/bin/sh
# race_gpu_types.sh - generation speed per weight type on a GPU: one model
# shape whose every row fills the K blocks (qwen05b's layer at n_embd 1024,
# 16 heads, 16 layers), written by codemoe quantize --pure in each type, so a
# slow kernel of one type shows alone (a q4_k_m mix hides which).  llama-bench
# -ngl 99 -p 0 -n 128 against codemoe bench --backend BACKEND, one after the
# other, medians of REPS; codemoe also with CODEMOE_VULKAN_INT_DOT=0 (Vulkan).
#
#   bench/race_gpu_types.sh [--backend vulkan|cuda] [-r REPS] [--types "q4_0 q8_0 ..."]
#
# CM_BUILDDIR (codemoe and tools/gen_model built with the backend),
# LLAMA_DIR (a llama.cpp build of the same API: bench/race_gpu.sh makes
# one), CM_SHARED (../shared, for the vocabulary), MODELS_DIR (scratch).
# Prints a markdown table on stdout.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${CM_BUILDDIR:-$ROOT/build-gpu}
SHARED=${CM_SHARED:-$ROOT/../shared}
MODELS_DIR=${MODELS_DIR:-/tmp/codemoe-types}
BACKEND=vulkan REPS=3 TYPES="q4_0 q8_0 q5_0 q4_k q5_k q6_k"
usage() { echo "usage: bench/race_gpu_types.sh [--backend vulkan|cuda] [-r N] [--types LIST]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in --backend) BACKEND=$2 ;; -r) REPS=$2 ;; --types) TYPES=$2 ;; *) usage ;; esac
    shift 2
done
LB=${LLAMA_DIR:-/tmp/llama.cpp-$BACKEND}/build/bin/llama-bench
[ -x "$LB" ] || { echo "race_gpu_types.sh: no llama-bench at $LB (bench/race_gpu.sh builds it)" >&2; exit 1; }
[ -x "$BUILD/codemoe" ] || { echo "race_gpu_types.sh: no codemoe in $BUILD" >&2; exit 1; }
mkdir -p "$MODELS_DIR"
F16=$MODELS_DIR/f16.gguf
[ -f "$F16" ] || "$BUILD/tools/gen_model" --preset qwen05b --n-embd 1024 --n-head 16 --n-head-kv 2 \
    --n-layer 16 --type f16 --vocab "$SHARED/vocab/ggml-vocab-starcoder.gguf" -o "$F16" >/dev/null
tg() { python3 -c "import json,sys; d=json.load(sys.stdin); print('%.1f' % (d[0]['avg_ts'] if isinstance(d, list) else d['tg_median']))"; }
echo "| type | llama.cpp tg128 | codemoe tg128 | ratio |$([ "$BACKEND" = vulkan ] && echo ' codemoe, no integer dots |')"
echo "|---|---:|---:|---:|$([ "$BACKEND" = vulkan ] && echo '---:|')"
for t in $TYPES; do
    f=$MODELS_DIR/$t.gguf
    [ -f "$f" ] || "$BUILD/codemoe" quantize "$F16" "$f" "$t" --pure --quiet >/dev/null 2>&1
    l=$("$LB" -m "$f" -ngl 99 -p 0 -n 128 -r "$REPS" -o json | tg)
    c=$("$BUILD/codemoe" bench -m "$f" --backend "$BACKEND" -p 0 -n 128 -r "$REPS" --json 2>/dev/null | tg)
    row="| $t | $l | $c | $(python3 -c "print('%.2f' % ($c / $l))") |"
    if [ "$BACKEND" = vulkan ]; then
        c0=$(CODEMOE_VULKAN_INT_DOT=0 "$BUILD/codemoe" bench -m "$f" --backend vulkan -p 0 -n 128 -r "$REPS" --json 2>/dev/null | tg)
        row="$row $c0 |"
    fi
    echo "$row"
done
