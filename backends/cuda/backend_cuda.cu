/* backend_cuda.cu - the CUDA backend: device memory, the KV cache and
 * attention on the GPU.
 *
 * What it has so far is what a backend must have (buffers, the KV cache,
 * attention); every other op runs on the CPU through the engine's
 * fallback, which copies operands between device and host memory
 * (backend.c) and counts each op it ran there.  Weights stay in the mapped
 * file (reads_host 0: the GPU does not read host memory), so products are
 * computed on the CPU too.  Results are the CPU's arithmetic but for
 * attention, which tests/test_backend holds to the reference.
 *
 * KV cache: F32 or F16 rows per position, as the CPU backend stores them.
 * Attention: one thread block per (query row, head): scores of every
 * cached position in shared memory, softmax, then the weighted sum of the
 * values; with an F16 cache the query and the weights are rounded to f16
 * first, as the CPU backend and llama.cpp do. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "engine/backend.h"
}

namespace {

struct cuda_state {
    const cm_hparams *hp;
    int n_ctx, f16;        /* f16: the cache holds halves, else floats */
    size_t krow, vrow;     /* bytes of one position's keys, values */
    char **k_cache, **v_cache; /* [n_layer] device pointers */
    size_t smem;           /* shared bytes an attention block needs */
};

const int ATTN_THREADS = 128;

/* Device memory for a view: the buffer's device pointer plus the offset. */
char *dev_ptr(const cm_tensor *t)
{
    return (char *)t->buf->dev + t->offs;
}

cm_status cuda_fail(cm_err *err, cudaError_t e, const char *what)
{
    return cm_fail(err, e == cudaErrorMemoryAllocation ? CM_E_NOMEM : CM_E_UNSUPPORTED,
                   "cuda: %s: %s", what, cudaGetErrorString(e));
}

/* An op has no status to return: a failed launch or copy is a broken
 * device, reported and fatal, never a silently wrong answer. */
void check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "codemoe: cuda: %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

/* ------------------------------------------------------------ kernels */

/* cache row p0 + t of layer il = rows t of x, as floats or halves */
__global__ void kv_put(const float *x, int n, int cols, void *cache, int p0, int f16)
{
    int t = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n || c >= cols)
        return;
    size_t at = (size_t)(p0 + t) * cols + c;
    float v = x[(size_t)t * cols + c];
    if (f16)
        ((__half *)cache)[at] = __float2half_rn(v);
    else
        ((float *)cache)[at] = v;
}

__device__ float cache_at(const void *cache, size_t i, int f16)
{
    return f16 ? __half2float(((const __half *)cache)[i]) : ((const float *)cache)[i];
}

/* Sum of v over the block's threads, in every thread. */
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
    const void *k, *v;     /* the layer's cache */
    int p0, n_head, group, d, dv, kcols, vcols, f16;
    float scale;
};

/* Block (t, h): query row t, head h, at position p0 + t. */
__global__ void attend(attn_args a)
{
    extern __shared__ float sh[];
    const int t = blockIdx.x, h = blockIdx.y, g = h / a.group, m = a.p0 + t + 1;
    float *q = sh, *s = q + a.d, *red = s + m;
    for (int i = threadIdx.x; i < a.d; i += blockDim.x) {
        float x = a.q[((size_t)t * a.n_head + h) * a.d + i];
        q[i] = a.f16 ? __half2float(__float2half_rn(x)) : x;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        size_t base = (size_t)j * a.kcols + (size_t)g * a.d;
        float dot = 0.0f;
        for (int i = 0; i < a.d; i++)
            dot += q[i] * cache_at(a.k, base + i, a.f16);
        s[j] = dot * a.scale;
        mx = fmaxf(mx, s[j]);
    }
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < m; j += blockDim.x)
        sum += s[j] = expf(s[j] - mx);
    sum = block_sum(sum, red);
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        float p = s[j] / sum;
        s[j] = a.f16 ? __half2float(__float2half_rn(p)) : p;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < a.dv; i += blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j < m; j++)
            o += s[j] * cache_at(a.v, (size_t)j * a.vcols + (size_t)g * a.dv + i, a.f16);
        a.out[((size_t)t * a.n_head + h) * a.dv + i] = o;
    }
}

/* ------------------------------------------------------------ the backend */

size_t kv_bytes(const cm_backend_shape *s)
{
    const cm_hparams *hp = &s->m->hp;
    size_t el = s->kv == CM_KV_F16 ? 2 : 4;
    return s->no_kv ? 0 : (size_t)hp->n_layer * s->n_ctx * el *
                              ((size_t)hp->n_head_kv * hp->head_dim +
                               (size_t)hp->n_head_kv * hp->head_dim_v);
}

size_t cuda_state_bytes(const cm_backend_shape *s) { return kv_bytes(s); }

void cuda_release(cm_backend *be)
{
    cuda_state *st = (cuda_state *)be->state;
    if (!st)
        return;
    for (int il = 0; st->k_cache && il < st->hp->n_layer; il++)
        cudaFree(st->k_cache[il]);
    for (int il = 0; st->v_cache && il < st->hp->n_layer; il++)
        cudaFree(st->v_cache[il]);
    free(st->k_cache);
    free(st->v_cache);
    free(st);
    be->state = NULL;
}

cm_status cuda_init(cm_backend *be, const cm_backend_shape *s, cm_err *err)
{
    const cm_hparams *hp = &s->m->hp;
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0)
        return cm_fail(err, CM_E_UNSUPPORTED, "cuda: no usable GPU (%s)",
                       e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    if (s->kv == CM_KV_Q8_0)
        return cm_fail(err, CM_E_UNSUPPORTED,
                       "cuda: a q8_0 KV cache is not supported yet: use --kv-type f16");
    cuda_state *st = (cuda_state *)calloc(1, sizeof *st);
    be->state = st;
    if (!st)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the CUDA backend");
    st->hp = hp;
    st->n_ctx = s->n_ctx;
    st->f16 = s->kv == CM_KV_F16;
    size_t el = st->f16 ? 2 : 4;
    st->krow = el * hp->n_head_kv * hp->head_dim;
    st->vrow = el * hp->n_head_kv * hp->head_dim_v;
    st->smem = ((size_t)hp->head_dim + s->n_ctx + ATTN_THREADS / 32) * sizeof(float);
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
        cuda_release(be);
        return cuda_fail(err, e, "reading the device's properties");
    }
    if (st->smem > prop.sharedMemPerBlockOptin) {
        cuda_release(be);
        return cm_fail(err, CM_E_UNSUPPORTED, "cuda: a %d-token context needs %zu bytes of "
                       "shared memory per attention block, the GPU has %zu: use a smaller -c",
                       s->n_ctx, st->smem, (size_t)prop.sharedMemPerBlockOptin);
    }
    check(cudaFuncSetAttribute(attend, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               (int)st->smem), "shared memory for attention");
    if (s->no_kv)
        return CM_OK;
    st->k_cache = (char **)calloc(hp->n_layer, sizeof(char *));
    st->v_cache = (char **)calloc(hp->n_layer, sizeof(char *));
    if (!st->k_cache || !st->v_cache) {
        cuda_release(be);
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the CUDA backend");
    }
    for (int il = 0; il < hp->n_layer; il++) {
        e = cudaMalloc(&st->k_cache[il], (size_t)s->n_ctx * st->krow);
        if (e == cudaSuccess)
            e = cudaMalloc(&st->v_cache[il], (size_t)s->n_ctx * st->vrow);
        if (e != cudaSuccess) {
            cuda_release(be);
            return cuda_fail(err, e, "allocating the KV cache");
        }
    }
    return CM_OK;
}

void cuda_describe(char *out, size_t n)
{
    cudaDeviceProp prop;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0 ||
        cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
        snprintf(out, n, "cuda (no usable GPU)");
        return;
    }
    snprintf(out, n, "cuda (%s, sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
             prop.totalGlobalMem / 1073741824.0);
}

cm_status cuda_buffer_alloc(cm_backend *be, size_t bytes, cm_buffer *buf, cm_err *err)
{
    (void)be;
    buf->host = NULL;
    buf->size = bytes;
    cudaError_t e = cudaMalloc(&buf->dev, bytes ? bytes : 1);
    return e == cudaSuccess ? CM_OK : cuda_fail(err, e, "allocating a buffer");
}

void cuda_buffer_free(cm_backend *be, cm_buffer *buf)
{
    (void)be;
    cudaFree(buf->dev);
    buf->dev = NULL;
}

void cuda_upload(cm_backend *be, const cm_tensor *dst, const void *src, size_t bytes)
{
    (void)be;
    check(cudaMemcpy(dev_ptr(dst), src, bytes, cudaMemcpyHostToDevice), "upload");
}

void cuda_download(cm_backend *be, const cm_tensor *src, void *dst, size_t bytes)
{
    (void)be;
    check(cudaMemcpy(dst, dev_ptr(src), bytes, cudaMemcpyDeviceToHost), "download");
}

void cuda_synchronize(cm_backend *be)
{
    (void)be;
    check(cudaDeviceSynchronize(), "synchronize");
}

void cuda_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0)
{
    cuda_state *st = (cuda_state *)be->state;
    const int n = (int)k->ne[1];
    dim3 gk((unsigned)((k->ne[0] + 127) / 128), (unsigned)n), gv((unsigned)((v->ne[0] + 127) / 128), (unsigned)n);
    kv_put<<<gk, 128>>>((const float *)dev_ptr(k), n, (int)k->ne[0], st->k_cache[il], p0, st->f16);
    kv_put<<<gv, 128>>>((const float *)dev_ptr(v), n, (int)v->ne[0], st->v_cache[il], p0, st->f16);
    check(cudaGetLastError(), "kv_store");
}

void cuda_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out)
{
    cuda_state *st = (cuda_state *)be->state;
    const cm_hparams *hp = st->hp;
    attn_args a;
    a.q = (const float *)dev_ptr(q);
    a.out = (float *)dev_ptr(out);
    a.k = st->k_cache[il];
    a.v = st->v_cache[il];
    a.p0 = p0;
    a.n_head = hp->n_head;
    a.group = hp->n_head / hp->n_head_kv;
    a.d = hp->head_dim;
    a.dv = hp->head_dim_v;
    a.kcols = hp->n_head_kv * hp->head_dim;
    a.vcols = hp->n_head_kv * hp->head_dim_v;
    a.f16 = st->f16;
    a.scale = 1.0f / sqrtf((float)hp->head_dim);
    const int n = (int)q->ne[1];
    size_t smem = ((size_t)a.d + p0 + n + ATTN_THREADS / 32) * sizeof(float);
    attend<<<dim3((unsigned)n, (unsigned)hp->n_head), ATTN_THREADS, smem>>>(a);
    check(cudaGetLastError(), "attention");
}

cm_backend_ops make_ops()
{
    cm_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.reads_host = 0;
    o.init = cuda_init;
    o.release = cuda_release;
    o.state_bytes = cuda_state_bytes;
    o.describe = cuda_describe;
    o.buffer_alloc = cuda_buffer_alloc;
    o.buffer_free = cuda_buffer_free;
    o.upload = cuda_upload;
    o.download = cuda_download;
    o.synchronize = cuda_synchronize;
    o.kv_store = cuda_kv_store;
    o.attention = cuda_attention;
    return o;
}

} // namespace

extern "C" const cm_backend_ops cm_backend_cuda_ops = make_ops();
