#!/bin/sh
# run_vulkan_gpu.sh - the Vulkan backend's tests on a machine with a GPU,
# the cooperative-matrix products (CODEMOE_VULKAN_COOPMAT=1) among them.
#
#   tests/run_vulkan_gpu.sh BUILD_DIR
#
# BUILD_DIR holds a build configured --with-vulkan (tools/device_carry.sh
# says how on the lent GPU machine); this script makes codemoe,
# tools/gen_model and the two test programs there, then runs:
#   - tests/test_backend on the Vulkan ops, with the default products and
#     with CODEMOE_VULKAN_COOPMAT=1 (the same on a device without NVIDIA's
#     int8 cooperative matrices);
#   - tests/test_model on the Vulkan backend with CODEMOE_VULKAN_COOPMAT=1;
#   - the logits of a 100-token prompt of gen_model models of the legacy
#     types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) from the cooperative-matrix
#     products against the dot-product ones and the CPU's: each block's
#     integer sums are the same, so the two Vulkan paths may differ by float
#     rounding only (at most 1e-4 of the largest logit, else it fails);
#   - pp512 of qwen05b Q8_0 and Q4_0 with and without them (printed only).
# Environment: CM_SHARED (../shared: fixtures and the starcoder vocabulary).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${1:?usage: tests/run_vulkan_gpu.sh BUILD_DIR}
export CM_SHARED=${CM_SHARED:-$ROOT/../shared}
VOCAB=$CM_SHARED/vocab/ggml-vocab-starcoder.gguf
make -s -C "$B" -j"$(nproc 2>/dev/null || echo 4)" codemoe tools/gen_model tests/test_backend tests/test_model
"$B/codemoe" info --devices | grep "^vulkan" || { echo "run_vulkan_gpu.sh: no Vulkan device" >&2; exit 1; }
echo "== test_backend (vulkan ops)"
CM_TEST_OPS_OF=vulkan "$B/tests/test_backend"
echo "== test_backend (vulkan ops, CODEMOE_VULKAN_COOPMAT=1)"
CODEMOE_VULKAN_COOPMAT=1 CM_TEST_OPS_OF=vulkan "$B/tests/test_backend"
echo "== test_model (vulkan, CODEMOE_VULKAN_COOPMAT=1)"
CODEMOE_VULKAN_COOPMAT=1 CODEMOE_BACKEND=vulkan "$B/tests/test_model"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
ids=$(seq -s, 1 3 300)
for t in q8_0 q4_0 q4_1 q5_0 q5_1; do
    m=$TMP/smol-$t.gguf
    "$B/tools/gen_model" --preset smol135m --type "$t" --vocab "$VOCAB" -o "$m" >/dev/null
    # which products ran (matmul_coop/N: the cooperative-matrix ones; none on a device
    # without NVIDIA's int8 16x16x32 shape, and then the comparison below is of one path)
    CODEMOE_VULKAN_COOPMAT=1 CODEMOE_VULKAN_PROFILE=1 "$B/codemoe" bench -m "$m" --backend vulkan \
        -p 64 -n 0 -r 1 2>&1 | grep "matmul_" || true
    CODEMOE_VULKAN_COOPMAT=1 "$B/codemoe" logits -m "$m" --backend vulkan --ids "$ids" -o "$TMP/coop.bin"
    CODEMOE_VULKAN_COOPMAT=0 "$B/codemoe" logits -m "$m" --backend vulkan --ids "$ids" -o "$TMP/dots.bin"
    "$B/codemoe" logits -m "$m" --backend cpu --ids "$ids" -o "$TMP/cpu.bin"
    python3 - "$TMP" "$t" <<'EOF'
import sys
from array import array
d, t = sys.argv[1], sys.argv[2]
def load(name):
    a = array("f")
    with open(f"{d}/{name}.bin", "rb") as f:
        a.frombytes(f.read())
    return a
coop, dots, cpu = load("coop"), load("dots"), load("cpu")
scale = max(abs(v) for v in dots)
dc = max(abs(a - b) for a, b in zip(coop, dots))
dd = max(abs(a - b) for a, b in zip(dots, cpu))
print(f"{t}: max |coop - dots| {dc:.3g}, max |dots - cpu| {dd:.3g}, largest logit {scale:.3g}")
sys.exit(0 if len(coop) == len(dots) and dc <= 1e-4 * scale else 1)
EOF
done
for t in q8_0 q4_0; do
    m=$TMP/qwen-$t.gguf
    "$B/tools/gen_model" --preset qwen05b --type "$t" --vocab "$VOCAB" -o "$m" >/dev/null
    for c in 0 1; do
        echo "qwen05b $t CODEMOE_VULKAN_COOPMAT=$c:"
        CODEMOE_VULKAN_COOPMAT=$c "$B/codemoe" bench -m "$m" --backend vulkan -p 512 -n 0 -r 5 | tail -n 2
    done
done
echo "run_vulkan_gpu.sh: passed"
