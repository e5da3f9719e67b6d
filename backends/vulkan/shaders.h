/* shaders.h - the Vulkan backend's compute shaders, SPIR-V compiled by
 * glslc at build time from backends/vulkan/shaders/ and embedded. */
#ifndef CM_VK_SHADERS_H
#define CM_VK_SHADERS_H

#include <stddef.h>
#include <stdint.h>

enum {
    VK_SH_ADD,
    VK_SH_SWIGLU,
    VK_SH_GELU,
    VK_SH_ADD_GATED,
    VK_SH_GATHER,
    VK_SH_SCATTER_ADD,
    VK_SH_NORM,
    VK_SH_ROPE,
    VK_SH_KV_STORE,
    VK_SH_ATTENTION,
    VK_SH_QUANTIZE,
    VK_SH_MATMUL,
    VK_SH_EMBED,
    VK_SH_MATMUL_TILED,
    VK_SH_ATTENTION_PROMPT,     /* heads up to 64 */
    VK_SH_ATTENTION_PROMPT_128, /* heads up to 128 */
    VK_SH_ROUTE,
    VK_SH_MOE_SUM,
    VK_SH_SPLIT_SUM,
    VK_SHADER_COUNT
};

typedef struct {
    const uint32_t *code;
    size_t bytes;
} vk_shader;

/* Shader id; the variant summing in double where the device has 64-bit
 * floats (f64), else in float; the tiled product's variant with integer
 * dot product instructions where the device has them enabled (int_dot). */
const vk_shader *vk_shader_for(int id, int f64, int int_dot);

/* matmul_tiled.comp's compile on NVIDIA's int8 cooperative matrices
 * (COOP_NV), for devices that have them (backend_vulkan.c coop_s8_usable). */
const vk_shader *vk_shader_coop(void);

#endif
