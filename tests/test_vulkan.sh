#!/bin/sh
# test_vulkan.sh - the model tests (tests/test_model: transformers' logits,
# llama.cpp's logits of every quantized fixture, greedy continuations) on
# the Vulkan backend, with the Khronos validation layer on: any error it
# reports ends the run.  On a machine without a GPU, Mesa's lavapipe is the
# device (mesa-vulkan-drivers).  tests/test_backend holds every op of the
# backend to the reference in the same build.
set -u
. "$(dirname "$0")/lib.sh"
"$CODEMOE" --version | grep -q vulkan || tl_skip "this build has no Vulkan backend"
"$CODEMOE" info --devices | grep -q "^vulkan [0-9]" ||
    tl_skip "no Vulkan device here (install mesa-vulkan-drivers for the software one)"
[ -x "$BUILD/tests/test_model" ] || tl_skip "$BUILD/tests/test_model not built"
CODEMOE_BACKEND=vulkan CODEMOE_VULKAN_VALIDATION=1 "$BUILD/tests/test_model"
