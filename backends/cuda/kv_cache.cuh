/* kv_cache.cuh - reading the CUDA backend's KV cache rows (attention.cu,
 * attention_prompt.cu, attention_tensor.cu): F32 or F16 values, or Q8_0
 * blocks; and what a prompt's attention over one layer's cache reads. */
#ifndef CM_CUDA_KV_CACHE_CUH
#define CM_CUDA_KV_CACHE_CUH

#include <cuda_fp16.h>
#include <math.h>

#include "backends/cuda/common.cuh"
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

/* A prompt's attention over layer il's cache: the arguments both prompt
 * kernels take (attention_prompt.cu's float one, attention_tensor.cu's
 * tensor-core one). */
struct attn_prompt_args {
    const float *q;
    float *out;
    const char *k, *v;
    size_t krow, vrow;
    const int32_t *pos; /* first position of the batch; row t at *pos + delta + t */
    int delta, n, n_head, group, d, dv;
    float scale;
};

static inline attn_prompt_args attn_prompt_args_for(const cuda_state *st, int il, const float *q,
                                                    int n, int delta, float *out)
{
    const cm_hparams *hp = st->hp;
    attn_prompt_args a;
    a.q = q;
    a.out = out;
    a.k = st->k_cache[il];
    a.v = st->v_cache[il];
    a.krow = st->krow;
    a.vrow = st->vrow;
    a.pos = st->io_dev;
    a.delta = delta;
    a.n = n;
    a.n_head = hp->n_head;
    a.group = hp->n_head / hp->n_head_kv;
    a.d = hp->head_dim;
    a.dv = hp->head_dim_v;
    a.scale = 1.0f / sqrtf((float)hp->head_dim);
    return a;
}

#endif
