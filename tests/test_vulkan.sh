#!/bin/sh
# test_vulkan.sh - the model tests (tests/test_model: transformers' logits,
# llama.cpp's logits of every quantized fixture, greedy continuations) on
# the Vulkan backend, with the Khronos validation layer on: any error it
# reports ends the run.  On a machine without a GPU, Mesa's lavapipe is the
# device (mesa-vulkan-drivers).  tests/test_backend holds every op of the
# backend to the reference in the same build; here it runs a second time on
# the Vulkan ops alone, with the prompt products' shader variant that a
# device without integer dot products takes and two rows per generation
# product workgroup, and a third time with every generation shortcut off
# (replayed steps, hazard-tracked barriers, fused ops), so both paths stay
# held to the reference.
# Last, a generation whose steps are replayed must replay (the statistics
# say so) and give the text of the same generation run eagerly, for a dense
# model and for a token-level MoE (its experts chosen on the device), whose
# tokens per expert must also be the CPU's.
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
# and the prompt attention variant for heads up to 128 on the small heads,
# its keys never split (the default run splits them wherever there are
# two tiles of keys or more), nor the products' rows (the default run
# splits every lone product of fewer than 1024 tiles; the last run the
# products that share an input too, with tiles of three chunks a step),
# and the legacy blocks read straight into shared memory (the default
# reads each step's into registers first).
CODEMOE_VULKAN_TILED=1 CODEMOE_VULKAN_INT_DOT=0 CODEMOE_VULKAN_PROMPT_ATTN_WIDE=1 \
    CODEMOE_VULKAN_ATTN_SPLIT=0 CODEMOE_VULKAN_SPLIT_K=0 CODEMOE_VULKAN_TILED_PREFETCH=0 \
    CODEMOE_VULKAN_MM_ROWS=2 \
    CODEMOE_VULKAN_VALIDATION=1 CM_TEST_OPS_OF=vulkan \
    "$BUILD/tests/test_backend" || exit 1
CODEMOE_VULKAN_REPLAY=0 CODEMOE_VULKAN_TRACK=0 CODEMOE_VULKAN_FUSE=0 \
    CODEMOE_VULKAN_SPLIT_GROUPS=1 CODEMOE_VULKAN_TILED_KC=3 \
    CODEMOE_VULKAN_VALIDATION=1 "$BUILD/tests/test_backend" || exit 1
tl_tmpdir
# The default model's prompt products of few tiles (its feed-forward down
# product: 256 rows, 768 columns) split their rows, and none does with
# CODEMOE_VULKAN_SPLIT_K=0 (test_backend checks the sums themselves).
if [ -f "$TL_SRC/models/default.gguf" ]; then
    splits() { env "$@" CODEMOE_VULKAN_PROFILE=1 "$CODEMOE" bench -m "$TL_SRC/models/default.gguf" \
        --backend vulkan -p 32 -n 0 -r 1 2>&1 | grep -c "^  split_sum "; }
    [ "$(splits)" = 1 ] && [ "$(splits CODEMOE_VULKAN_SPLIT_K=0)" = 0 ] ||
        { echo "FAIL: split products: $(splits) profile lines, $(splits CODEMOE_VULKAN_SPLIT_K=0) with none"; exit 1; }
fi
tl_shared fixtures/gguf/llama/llama-q4_0.gguf
M="$SHARED/fixtures/gguf/llama/llama-q4_0.gguf"
[ -f "$M" ] || tl_skip "$M missing"
gen() { env "$@" CODEMOE_VULKAN_STATS=1 CODEMOE_VULKAN_VALIDATION=1 "$CODEMOE" run -m "$M" \
    --backend vulkan -p "def fib(n):" -n 24 --temp 0 2> "$TMP/err" && cat "$TMP/err" >&2; }
eager=$(gen CODEMOE_VULKAN_REPLAY=0) || exit 1
replayed=$(gen CODEMOE_VULKAN_REPLAY=1) || exit 1
grep -q "1 steps recorded to replay, [1-9][0-9]* replayed, 0 recordings ended" "$TMP/err" ||
    { echo "FAIL: the generation's steps were not replayed:"; cat "$TMP/err"; exit 1; }
[ "$eager" = "$replayed" ] || { echo "FAIL: replayed and eager generations differ"; exit 1; }
echo "replayed: $(grep -o '[0-9]* replayed' "$TMP/err")"
tl_shared fixtures/gguf/mixtral/mixtral-q4_0.gguf
M="$SHARED/fixtures/gguf/mixtral/mixtral-q4_0.gguf"
[ -f "$M" ] || tl_skip "$M missing"
eager=$(gen CODEMOE_VULKAN_REPLAY=0) || exit 1
replayed=$(gen CODEMOE_VULKAN_REPLAY=1) || exit 1
grep -q "1 steps recorded to replay, [1-9][0-9]* replayed, 0 recordings ended" "$TMP/err" ||
    { echo "FAIL: the MoE generation's steps were not replayed:"; cat "$TMP/err"; exit 1; }
[ "$eager" = "$replayed" ] || { echo "FAIL: replayed and eager MoE generations differ"; exit 1; }
stats() { "$CODEMOE" run -m "$M" --backend "$1" -p "def fib(n):" -n 24 --temp 0 --moe-stats 2>&1 |
    grep "tokens per expert"; }
[ "$(stats vulkan)" = "$(stats cpu)" ] && [ -n "$(stats cpu)" ] ||
    { echo "FAIL: tokens per expert differ from the CPU's:"; stats vulkan; stats cpu; exit 1; }
echo "MoE replayed: $(grep -o '[0-9]* replayed' "$TMP/err")"
