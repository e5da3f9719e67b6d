#!/bin/sh
# test_vulkan.sh - the model tests (tests/test_model: transformers' logits,
# llama.cpp's logits of every quantized fixture, greedy continuations) on
# the Vulkan backend, with the Khronos validation layer on: any error it
# reports ends the run.  On a machine without a GPU, Mesa's lavapipe is the
# device (mesa-vulkan-drivers).  tests/test_backend holds every op of the
# backend to the reference in the same build; here it runs a second time on
# the Vulkan ops alone, with the prompt products' shader variant that a
# device without integer dot products takes.
set -u
. "$(dirname "$0")/lib.sh"
"$CODEMOE" --version | grep -q vulkan || tl_skip "this build has no Vulkan backend"
"$CODEMOE" info --devices | grep -q "^vulkan [0-9]" ||
    tl_skip "no Vulkan device here (install mesa-vulkan-drivers for the software one)"
[ -x "$BUILD/tests/test_model" ] && [ -x "$BUILD/tests/test_backend" ] ||
    tl_skip "$BUILD/tests/test_model or test_backend not built"
CODEMOE_BACKEND=vulkan CODEMOE_VULKAN_VALIDATION=1 "$BUILD/tests/test_model" || exit 1
# The prompt products' shader without integer dot products (lavapipe has
# them, a device without them takes this variant), for every product size,
# and the prompt attention variant for heads up to 128 on the small heads.
CODEMOE_VULKAN_TILED=1 CODEMOE_VULKAN_INT_DOT=0 CODEMOE_VULKAN_PROMPT_ATTN_WIDE=1 \
    CODEMOE_VULKAN_VALIDATION=1 CM_TEST_OPS_OF=vulkan \
    "$BUILD/tests/test_backend" || exit 1
