/* kv_cache.cuh - reading the CUDA backend's KV cache rows (attention.cu,
 * attention_prompt.cu): F32 or F16 values, or Q8_0 blocks. */
#ifndef CM_CUDA_KV_CACHE_CUH
#define CM_CUDA_KV_CACHE_CUH

#include <cuda_fp16.h>

#include "backends/cuda/quant_dev.cuh"
#include "engine/backend.h"

/* Element i of KV head g's part of a cache row (heads of `width` values). */
template <cm_kv_type KV>
__device__ __forceinline__ float cache_at(const char *row, int g, int width, int i)
{
    if constexpr (KV == CM_KV_F32)
        return ((const float *)row)[(size_t)g * width + i];
    else if constexpr (KV == CM_KV_F16)
        return __half2float(((const __half *)row)[(size_t)g * width + i]);
    else {
        const block_q8_0 *b = (const block_q8_0 *)row + ((size_t)g * width + i) / 32;
        return dequant_elem(CM_TYPE_Q8_0, b, i % 32);
    }
}

#endif
