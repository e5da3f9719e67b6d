#!/bin/sh
# Compiles every compute shader here to SPIR-V (Vulkan 1.1), norm, rope
# and attention a second time with -DUSE_F64 into their _f64 variants (for
# devices with shaderFloat64), and matmul and matmul_tiled with -DINT_DOT
# into matmul_dot and matmul_tiled_dot (for devices with
# shaderIntegerDotProduct), matmul_tiled with -DCOOP_NV into
# matmul_tiled_coop (NVIDIA's int8 cooperative matrices), and
# attention_prompt with -DDMAX=128 (heads up to 128).  Fails on
# the first error.
#   sh backends/vulkan/shaders/check.sh [OUTDIR]
# OUTDIR (created if missing) keeps the .spv files; without it they go to a
# temporary directory removed at the end.  GLSLC overrides the compiler.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
glslc=${GLSLC:-glslc}
if [ $# -ge 1 ]; then
    out=$1
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
n=0
for src in "$here"/*.comp; do
    name=$(basename "$src" .comp)
    "$glslc" --target-env=vulkan1.1 -O "$src" -o "$out/$name.spv"
    n=$((n + 1))
    case $name in
    norm | rope | attention)
        "$glslc" --target-env=vulkan1.1 -O -DUSE_F64 "$src" -o "$out/${name}_f64.spv"
        n=$((n + 1))
        ;;
    matmul | matmul_tiled)
        "$glslc" --target-env=vulkan1.1 -O -DINT_DOT "$src" -o "$out/${name}_dot.spv"
        n=$((n + 1))
        if [ "$name" = matmul_tiled ]; then
            "$glslc" --target-env=vulkan1.1 -O -DCOOP_NV "$src" -o "$out/${name}_coop.spv"
            n=$((n + 1))
        fi
        ;;
    attention_prompt)
        "$glslc" --target-env=vulkan1.1 -O -DDMAX=128 "$src" -o "$out/${name}_128.spv"
        n=$((n + 1))
        ;;
    esac
done
# the SPIR-V validator, where installed, on the results too
if command -v spirv-val >/dev/null 2>&1; then
    for spv in "$out"/*.spv; do
        spirv-val --target-env vulkan1.1 "$spv"
    done
fi
echo "check.sh: $n shaders compiled"
