#!/bin/sh
# run_gpu.sh - the CUDA backend's tests, on a machine with an NVIDIA GPU.
#
#   tests/run_gpu.sh [BUILD_DIR]
#
# Builds codemoe with the CUDA backend in BUILD_DIR (default build-gpu,
# beside the sources), then runs on the GPU:
#   - tests/test_backend: every op of the cuda backend against the scalar
#     reference, on every block type, KV type and shape, and whole models
#     of all nine architectures;
#   - tests/test_model with CODEMOE_BACKEND=cuda: transformers' f32 logits,
#     llama.cpp's logits of every quantized fixture, greedy continuations;
#   - the same two from a build holding only compute_75 PTX, which the
#     driver compiles at start: the T4's code path, tested without a T4
#     (skipped with CM_GPU_QUICK=1).
# Environment: CM_SHARED (../shared, for the fixtures), CM_CONFIGURE_FLAGS
# (extra configure arguments, e.g. CPPFLAGS for headers the machine lacks).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build-gpu}
JOBS=$(nproc 2>/dev/null || echo 4)
export CM_SHARED=${CM_SHARED:-$ROOT/../shared}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
    { echo "run_gpu.sh: no NVIDIA GPU here (nvidia-smi failed)" >&2; exit 1; }

# build_and_test DIR ARCHS
build_and_test() {
    mkdir -p "$1"
    (cd "$1" && { [ -f Makefile ] || "$ROOT/configure" -q --with-cuda --with-cuda-arch="$2" \
        ${CM_CONFIGURE_FLAGS:-}; } && make -s -j"$JOBS" codemoe tests/test_backend tests/test_model)
    echo "== $2: conformance (tests/test_backend)"
    "$1/tests/test_backend"
    echo "== $2: references (tests/test_model on cuda)"
    CODEMOE_BACKEND=cuda "$1/tests/test_model"
}

build_and_test "$BUILD" "${CM_CUDA_ARCH:-75,86,89,90,compute_90}"
[ "${CM_GPU_QUICK:-0}" = 1 ] || build_and_test "$BUILD-ptx75" compute_75
echo "run_gpu.sh: all passed"
