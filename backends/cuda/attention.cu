/* attention.cu - the KV cache and attention over it on the GPU.
 *
 * The cache holds one row per position and layer, F32, F16 or Q8_0 as the
 * CPU backend stores it.  Attention: one thread block per (query row,
 * head): the scores of every cached position in shared memory, their
 * softmax, then the weighted sum of the values.  With an F16 cache the
 * query and the weights are rounded to f16 first and with a Q8_0 cache the
 * query is quantized to q8_0, as the CPU backend and llama.cpp do. */
#include <cuda_fp16.h>
#include <math.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/quant_dev.cuh"

namespace {

const int ATTN_THREADS = 128;

/* cache row p0 + t = row t of x, in the cache's type */
template <cm_kv_type KV>
__global__ void kv_put(const float *x, int n, int cols, char *cache, const int32_t *pos, int delta)
{
    const int t = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x, p0 = *pos + delta;
    if (t >= n)
        return;
    if constexpr (KV == CM_KV_Q8_0) { /* one thread per block of 32 */
        if (c >= cols / 32)
            return;
        block_q8_0 *row = (block_q8_0 *)(cache + (size_t)(p0 + t) * (cols / 32) * sizeof(block_q8_0));
        q8_0_quantize_block(x + (size_t)t * cols + (size_t)c * 32, row + c);
    } else {
        if (c >= cols)
            return;
        const size_t at = (size_t)(p0 + t) * cols + c;
        const float v = x[(size_t)t * cols + c];
        if constexpr (KV == CM_KV_F16)
            ((__half *)cache)[at] = __float2half_rn(v);
        else
            ((float *)cache)[at] = v;
    }
}

__device__ float block_sum(float v, float *red)
{
    for (int o = 16; o > 0; o /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = v;
    __syncthreads();
    float s = 0.0f;
    for (int w = 0; w < (int)(blockDim.x / 32); w++)
        s += red[w];
    __syncthreads();
    return s;
}

__device__ float block_max(float v, float *red)
{
    for (int o = 16; o > 0; o /= 2)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x / 32); w++)
        m = fmaxf(m, red[w]);
    __syncthreads();
    return m;
}

struct attn_args {
    const float *q;
    float *out;
    const char *k, *v;     /* the layer's cache */
    size_t krow, vrow;     /* bytes of a position's row */
    const int32_t *pos;    /* the batch's first position; row t at pos + delta + t */
    int delta, n_head, group, d, dv;
    float scale;
};

/* Element i of KV head g's part of a cache row. */
template <cm_kv_type KV>
__device__ float cache_at(const char *row, int g, int width, int i)
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

/* The query's dot with cached key j (KV head g). */
template <cm_kv_type KV>
__device__ float key_dot(const attn_args &a, const float *q, const block_q8_0 *qq, int j, int g)
{
    const char *row = a.k + (size_t)j * a.krow;
    if constexpr (KV == CM_KV_Q8_0) {
        const block_q8_0 *kb = (const block_q8_0 *)row + (size_t)g * a.d / 32;
        float s = 0.0f;
        for (int b = 0; b < a.d / 32; b++)
            for (int part = 0; part < qdot<CM_TYPE_Q8_0>::PARTS; part++)
                s += qdot<CM_TYPE_Q8_0>::dot_part(kb + b, qq + b, part);
        return s;
    } else {
        float s = 0.0f;
        for (int i = 0; i < a.d; i++)
            s += q[i] * cache_at<KV>(row, g, a.d, i);
        return s;
    }
}

/* Block (t, h): query row t, head h, at position p0 + t. */
template <cm_kv_type KV>
__global__ void attend(attn_args a)
{
    extern __shared__ float sh[];
    const int t = blockIdx.x, h = blockIdx.y, g = h / a.group, m = *a.pos + a.delta + t + 1;
    float *q = sh, *s = q + a.d, *red = s + m;
    __shared__ block_q8_0 qq[16]; /* the query as q8_0 (head_dim <= 512) */
    for (int i = threadIdx.x; i < a.d; i += blockDim.x) {
        const float x = a.q[((size_t)t * a.n_head + h) * a.d + i];
        q[i] = KV == CM_KV_F16 ? __half2float(__float2half_rn(x)) : x;
    }
    __syncthreads();
    if (KV == CM_KV_Q8_0 && (int)threadIdx.x < a.d / 32)
        q8_0_quantize_block(q + threadIdx.x * 32, qq + threadIdx.x);
    __syncthreads();
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        s[j] = key_dot<KV>(a, q, qq, j, g) * a.scale;
        mx = fmaxf(mx, s[j]);
    }
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < m; j += blockDim.x)
        sum += s[j] = expf(s[j] - mx);
    sum = block_sum(sum, red);
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        const float p = s[j] / sum;
        s[j] = KV == CM_KV_F16 ? __half2float(__float2half_rn(p)) : p;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < a.dv; i += blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j < m; j++)
            o += s[j] * cache_at<KV>(a.v + (size_t)j * a.vrow, g, a.dv, i);
        a.out[((size_t)t * a.n_head + h) * a.dv + i] = o;
    }
}

template <cm_kv_type KV>
void set_smem(size_t smem)
{
    cuda_check(cudaFuncSetAttribute(attend<KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)smem), "shared memory for attention");
}

} // namespace

size_t cuda_attention_smem(const cm_hparams *hp, int n_ctx)
{
    size_t smem = ((size_t)hp->head_dim + n_ctx + ATTN_THREADS / 32) * sizeof(float);
    set_smem<CM_KV_F32>(smem);
    set_smem<CM_KV_F16>(smem);
    set_smem<CM_KV_Q8_0>(smem);
    return smem;
}

void cuda_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st))
        return;
    const int n = (int)k->ne[1], delta = p0 - st->batch_p0;
    const cm_tensor *src[2] = {k, v};
    char *dst[2] = {st->k_cache[il], st->v_cache[il]};
    for (int i = 0; i < 2; i++) {
        const int cols = (int)src[i]->ne[0];
        const float *x = (const float *)dev_ptr(src[i]);
        dim3 g(blocks_for(cols, 128), (unsigned)n);
        if (st->kv == CM_KV_Q8_0)
            kv_put<CM_KV_Q8_0><<<g, 128, 0, st->stream>>>(x, n, cols, dst[i], st->io_dev, delta);
        else if (st->kv == CM_KV_F16)
            kv_put<CM_KV_F16><<<g, 128, 0, st->stream>>>(x, n, cols, dst[i], st->io_dev, delta);
        else
            kv_put<CM_KV_F32><<<g, 128, 0, st->stream>>>(x, n, cols, dst[i], st->io_dev, delta);
    }
    cuda_check(cudaGetLastError(), "kv_store");
}

void cuda_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st))
        return;
    const cm_hparams *hp = st->hp;
    attn_args a;
    a.q = (const float *)dev_ptr(q);
    a.out = (float *)dev_ptr(out);
    a.k = st->k_cache[il];
    a.v = st->v_cache[il];
    a.krow = st->krow;
    a.vrow = st->vrow;
    a.pos = st->io_dev;
    a.delta = p0 - st->batch_p0;
    a.n_head = hp->n_head;
    a.group = hp->n_head / hp->n_head_kv;
    a.d = hp->head_dim;
    a.dv = hp->head_dim_v;
    a.scale = 1.0f / sqrtf((float)hp->head_dim);
    const int n = (int)q->ne[1];
    /* a recorded step is replayed at later positions: room for them all */
    const int m = st->mode == EAGER ? p0 + n : st->n_ctx;
    const size_t smem = ((size_t)a.d + m + ATTN_THREADS / 32) * sizeof(float);
    dim3 grid((unsigned)n, (unsigned)hp->n_head);
    if (st->kv == CM_KV_Q8_0)
        attend<CM_KV_Q8_0><<<grid, ATTN_THREADS, smem, st->stream>>>(a);
    else if (st->kv == CM_KV_F16)
        attend<CM_KV_F16><<<grid, ATTN_THREADS, smem, st->stream>>>(a);
    else
        attend<CM_KV_F32><<<grid, ATTN_THREADS, smem, st->stream>>>(a);
    cuda_check(cudaGetLastError(), "attention");
}
