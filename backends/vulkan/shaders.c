/* shaders.c - the embedded SPIR-V (the .spvinc files are glslc's C output,
 * made by the build from backends/vulkan/shaders/NAME.comp). */
#include "backends/vulkan/shaders.h"

#define SPV(name) static const uint32_t name##_spv[] =
SPV(add)
#include "backends/vulkan/shaders/add.spvinc"
;
SPV(swiglu)
#include "backends/vulkan/shaders/swiglu.spvinc"
;
SPV(gelu)
#include "backends/vulkan/shaders/gelu.spvinc"
;
SPV(add_gated)
#include "backends/vulkan/shaders/add_gated.spvinc"
;
SPV(gather)
#include "backends/vulkan/shaders/gather.spvinc"
;
SPV(scatter_add)
#include "backends/vulkan/shaders/scatter_add.spvinc"
;
SPV(norm)
#include "backends/vulkan/shaders/norm.spvinc"
;
SPV(norm_f64)
#include "backends/vulkan/shaders/norm_f64.spvinc"
;
SPV(rope)
#include "backends/vulkan/shaders/rope.spvinc"
;
SPV(rope_f64)
#include "backends/vulkan/shaders/rope_f64.spvinc"
;
SPV(kv_store)
#include "backends/vulkan/shaders/kv_store.spvinc"
;
SPV(attention)
#include "backends/vulkan/shaders/attention.spvinc"
;
SPV(quantize)
#include "backends/vulkan/shaders/quantize.spvinc"
;
SPV(matmul)
#include "backends/vulkan/shaders/matmul.spvinc"
;
SPV(embed)
#include "backends/vulkan/shaders/embed.spvinc"
;
SPV(matmul_tiled)
#include "backends/vulkan/shaders/matmul_tiled.spvinc"
;
SPV(matmul_tiled_dot)
#include "backends/vulkan/shaders/matmul_tiled_dot.spvinc"
;
SPV(matmul_tiled_coop)
#include "backends/vulkan/shaders/matmul_tiled_coop.spvinc"
;
SPV(matmul_dot)
#include "backends/vulkan/shaders/matmul_dot.spvinc"
;
SPV(attention_prompt)
#include "backends/vulkan/shaders/attention_prompt.spvinc"
;
SPV(attention_prompt_128)
#include "backends/vulkan/shaders/attention_prompt_128.spvinc"
;
SPV(route)
#include "backends/vulkan/shaders/route.spvinc"
;
SPV(split_sum)
#include "backends/vulkan/shaders/split_sum.spvinc"
;
SPV(moe_sum)
#include "backends/vulkan/shaders/moe_sum.spvinc"
;

#define ENTRY(name) {name##_spv, sizeof name##_spv}
static const vk_shader shaders[VK_SHADER_COUNT] = {
    [VK_SH_ADD] = ENTRY(add),           [VK_SH_SWIGLU] = ENTRY(swiglu),
    [VK_SH_GELU] = ENTRY(gelu),         [VK_SH_ADD_GATED] = ENTRY(add_gated),
    [VK_SH_GATHER] = ENTRY(gather),     [VK_SH_SCATTER_ADD] = ENTRY(scatter_add),
    [VK_SH_NORM] = ENTRY(norm),         [VK_SH_ROPE] = ENTRY(rope),
    [VK_SH_KV_STORE] = ENTRY(kv_store), [VK_SH_ATTENTION] = ENTRY(attention),
    [VK_SH_QUANTIZE] = ENTRY(quantize), [VK_SH_MATMUL] = ENTRY(matmul),
    [VK_SH_EMBED] = ENTRY(embed),       [VK_SH_MATMUL_TILED] = ENTRY(matmul_tiled),
    [VK_SH_ATTENTION_PROMPT] = ENTRY(attention_prompt),
    [VK_SH_ATTENTION_PROMPT_128] = ENTRY(attention_prompt_128),
    [VK_SH_ROUTE] = ENTRY(route),       [VK_SH_MOE_SUM] = ENTRY(moe_sum),
    [VK_SH_SPLIT_SUM] = ENTRY(split_sum),
};
static const vk_shader norm64 = ENTRY(norm_f64), rope64 = ENTRY(rope_f64);
static const vk_shader tiled_dot = ENTRY(matmul_tiled_dot), mm_dot = ENTRY(matmul_dot);
static const vk_shader tiled_coop = ENTRY(matmul_tiled_coop);

const vk_shader *vk_shader_coop(void) { return &tiled_coop; }

const vk_shader *vk_shader_for(int id, int f64, int int_dot)
{
    if (int_dot && id == VK_SH_MATMUL_TILED)
        return &tiled_dot;
    if (int_dot && id == VK_SH_MATMUL)
        return &mm_dot;
    if (f64 && id == VK_SH_NORM)
        return &norm64;
    if (f64 && id == VK_SH_ROPE)
        return &rope64;
    return &shaders[id];
}
