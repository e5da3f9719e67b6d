/* attention.cu - the KV cache and attention over it on the GPU.
 *
 * The cache holds one row per position and layer, F32, F16 or Q8_0 as the
 * CPU backend stores it.  Attention: one thread block per (query row,
 * head): the scores of every cached position in shared memory (a thread
 * per key, its row read in 16-byte pieces), their softmax, then the
 * weighted sum of the values, lane groups over the value dimensions (rows
 * read whole by neighbouring lanes) and the key groups' sums added up at
 * the end.  With an F16 cache the query and the weights are rounded to
 * f16 first and with a Q8_0 cache the query is quantized to q8_0, as the
 * CPU backend and llama.cpp do.
 *
 * A generated token over a long context is split over several blocks per
 * head (flash-decoding): each chunk's maximum score and sum of
 * exponentials, then each chunk's weights (the whole row's softmax, so
 * the f16 rounding is the same) times its values, then the chunks' sums.
 * CODEMOE_CUDA_ATTN_CHUNK=N splits every token into chunks of N positions
 * (so tests with small contexts reach that path). */
#include <cuda_fp16.h>
#include <math.h>
#include <stdlib.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kv_cache.cuh"
#include "backends/cuda/quant_dev.cuh"

namespace {

const int ATTN_THREADS = 256, ATTN_WARPS = ATTN_THREADS / 32;
const int SPLIT_MIN = 4096;     /* positions beyond which a token's attention is split */
const int SPLIT_CHUNK = 1024;   /* the fewest positions per block when split */
const int MAX_SPLIT = 32;       /* the most blocks per head */
const int MAX_VEC = 8;          /* cache elements per vector load (F16) */
int forced_chunk;               /* CODEMOE_CUDA_ATTN_CHUNK: split every token (tests) */

/* cache rows p0 + t = rows t of k and v (blockIdx.z), in the cache's type */
struct kv_put_args {
    const float *x[2];
    char *cache[2];
    int cols[2], n;
    const int32_t *pos; /* rows from *pos + delta */
    int delta;
};

template <cm_kv_type KV>
__global__ void kv_put(kv_put_args a)
{
    const int z = blockIdx.z, t = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    /* (selects: an index into the arguments would copy them to the stack) */
    const int cols = z ? a.cols[1] : a.cols[0], p0 = *a.pos + a.delta;
    const float *x = z ? a.x[1] : a.x[0];
    char *cache = z ? a.cache[1] : a.cache[0];
    if (t >= a.n)
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
    float *out;            /* [n][n_head][dv]; split: chunk sums [n_head][n_split][dv] */
    float *stats;          /* split: [n_head][n_split] (max, sum of exponentials) */
    const char *k, *v;     /* the layer's cache */
    size_t krow, vrow;     /* bytes of a position's row */
    const int32_t *pos;    /* the batch's first position; row t at pos + delta + t */
    int delta, n_head, group, d, dv, dpad;
    int chunk, n_split;    /* split: positions per block, blocks per head */
    float scale;
};

/* Shared memory: red[ATTN_WARPS], the query (dpad floats), then the
 * scores (later the key groups' sums) of `span` positions. */
size_t smem_for(int dpad, int span)
{
    const int s = span > ATTN_THREADS * MAX_VEC ? span : ATTN_THREADS * MAX_VEC;
    return ((size_t)ATTN_WARPS + dpad + s) * sizeof(float);
}

/* Elements i .. i + VEC - 1 of the same, in one load where VEC > 1: F32
 * 4 (16 bytes), F16 8 (16 bytes), Q8_0 4 (two 16-bit loads, as its
 * blocks are only 2-aligned); the values cache_at gives. */
template <cm_kv_type KV, int VEC>
__device__ void cache_vec(const char *row, int g, int width, int i, float *out)
{
    if constexpr (VEC == 1) {
        out[0] = cache_at<KV>(row, g, width, i);
    } else if constexpr (KV == CM_KV_F32) {
        static_assert(VEC == 4, "F32 loads 4");
        const float4 f = *(const float4 *)((const float *)row + (size_t)g * width + i);
        out[0] = f.x, out[1] = f.y, out[2] = f.z, out[3] = f.w;
    } else if constexpr (KV == CM_KV_F16) {
        static_assert(VEC == 8, "F16 loads 8");
        const uint4 u = *(const uint4 *)((const __half *)row + (size_t)g * width + i);
        const __half2 *h = (const __half2 *)&u;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float2 f = __half22float2(h[k]);
            out[2 * k] = f.x, out[2 * k + 1] = f.y;
        }
    } else {
        static_assert(VEC == 4, "Q8_0 loads 4");
        const block_q8_0 *b = (const block_q8_0 *)row + ((size_t)g * width + i) / 32;
        const uint32_t w = qd_ld2(b->qs + i % 32);
        const float d = qd_f16(b->d);
#pragma unroll
        for (int k = 0; k < 4; k++) /* dequant_q8_0 */
            out[k] = qd_mul((float)(int8_t)(uint8_t)(w >> (8 * k)), d);
    }
}

/* The query's dot with cached key j (KV head g). */
template <cm_kv_type KV, int VEC>
__device__ float key_dot(const attn_args &a, const float *q, const block_q8_0 *qq, int j, int g)
{
    const char *row = a.k + (size_t)j * a.krow;
    float s = 0.0f;
    if constexpr (KV == CM_KV_Q8_0) {
        const block_q8_0 *kb = (const block_q8_0 *)row + (size_t)g * a.d / 32;
        for (int b = 0; b < a.d / 32; b++)
            for (int part = 0; part < qdot<CM_TYPE_Q8_0>::PARTS; part++)
                s += qdot<CM_TYPE_Q8_0>::dot_part(kb + b, qq + b, part);
    } else {
#pragma unroll 4
        for (int i = 0; i < a.d; i += VEC) {
            float k[VEC];
            cache_vec<KV, VEC>(row, g, a.d, i, k);
#pragma unroll
            for (int e = 0; e < VEC; e++)
                s += q[i + e] * k[e];
        }
    }
    return s;
}

/* Query row t of head h into q (rounded to f16 for an F16 cache) and, for
 * a Q8_0 cache, qq. */
template <cm_kv_type KV>
__device__ void load_query(const attn_args &a, int t, int h, float *q, block_q8_0 *qq)
{
    for (int i = threadIdx.x; i < a.d; i += blockDim.x) {
        const float x = a.q[((size_t)t * a.n_head + h) * a.d + i];
        q[i] = KV == CM_KV_F16 ? __half2float(__float2half_rn(x)) : x;
    }
    __syncthreads();
    if (KV == CM_KV_Q8_0 && (int)threadIdx.x < a.d / 32)
        q8_0_quantize_block(q + threadIdx.x * 32, qq + threadIdx.x);
    __syncthreads();
}

/* s[j - j0] = the scaled score of key j, j0 <= j < j1, a thread per key;
 * returns this thread's largest. */
template <cm_kv_type KV, int VEC>
__device__ float scores(const attn_args &a, const float *q, const block_q8_0 *qq, int g, int j0,
                        int j1, float *s)
{
    float mx = -INFINITY;
    for (int j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        const float v = key_dot<KV, VEC>(a, q, qq, j, g) * a.scale;
        s[j - j0] = v;
        mx = fmaxf(mx, v);
    }
    return mx;
}

/* The weights s[j - j0] as the reference has them: e / sum, rounded to
 * f16 for an F16 cache. */
template <cm_kv_type KV>
__device__ void to_weights(float *s, int count, float sum)
{
    for (int j = threadIdx.x; j < count; j += blockDim.x) {
        const float p = s[j] / sum;
        s[j] = KV == CM_KV_F16 ? __half2float(__float2half_rn(p)) : p;
    }
    __syncthreads();
}

/* Each of the block's sums (nparts rows of dv in buf) added up into dst,
 * in a fixed order. */
__device__ void sum_parts(const float *buf, int nparts, int dv, float *dst)
{
    __syncthreads();
    for (int i = threadIdx.x; i < dv; i += blockDim.x) {
        float o = 0.0f;
        for (int p = 0; p < nparts; p++)
            o += buf[p * dv + i];
        dst[i] = o;
    }
}

/* dst = sum of s[j - j0] * value j over j0 <= j < j1 (KV head g).  Lane
 * groups of lpk = dv / VEC threads take every key in turn (a group per
 * key at a time, each lane VEC dimensions); the groups' sums meet in s,
 * which is free by then (it holds ATTN_THREADS * MAX_VEC floats). */
template <cm_kv_type KV, int VEC>
__device__ void weigh_values(const attn_args &a, float *s, int j0, int j1, int g, float *dst)
{
    const int lpk = a.dv / VEC, T = blockDim.x;
    if (lpk > T) { /* heads too wide for one row per group: a column per thread */
        for (int i = threadIdx.x; i < a.dv; i += T) {
            float o = 0.0f;
            for (int j = j0; j < j1; j++)
                o += s[j - j0] * cache_at<KV>(a.v + (size_t)j * a.vrow, g, a.dv, i);
            dst[i] = o;
        }
        return;
    }
    const int groups = T / lpk, grp = threadIdx.x / lpk, c = threadIdx.x % lpk * VEC;
    float acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; e++)
        acc[e] = 0.0f;
    if (grp < groups) {
#pragma unroll 4
        for (int j = j0 + grp; j < j1; j += groups) {
            float v[VEC];
            cache_vec<KV, VEC>(a.v + (size_t)j * a.vrow, g, a.dv, c, v);
            const float p = s[j - j0];
#pragma unroll
            for (int e = 0; e < VEC; e++)
                acc[e] += p * v[e];
        }
    }
    __syncthreads(); /* every weight read: s takes the sums */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if ((lpk & (lpk - 1)) == 0 && lpk <= 32) { /* whole groups per warp: add them up there */
        for (int o = lpk; o < 32; o *= 2)
#pragma unroll
            for (int e = 0; e < VEC; e++)
                acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], o);
        if (lane < lpk)
#pragma unroll
            for (int e = 0; e < VEC; e++)
                s[warp * a.dv + c + e] = acc[e];
        sum_parts(s, T / 32, a.dv, dst);
        return;
    }
    if (grp < groups)
#pragma unroll
        for (int e = 0; e < VEC; e++)
            s[grp * a.dv + c + e] = acc[e];
    sum_parts(s, groups, a.dv, dst);
}

/* Block (t, h): query row t, head h, at position p0 + t, in one pass.
 * (A minimum of 2 blocks per multiprocessor: with none, ptxas 13.0 holds
 * the F32 instance to 32 registers and spills.) */
template <cm_kv_type KV, int VEC>
__global__ void __launch_bounds__(ATTN_THREADS, 2) attend(attn_args a)
{
    wait_prior_grid();
    start_next_grid();
    extern __shared__ float sh[];
    __shared__ block_q8_0 qq[16]; /* the query as q8_0 (head_dim <= 512) */
    const int t = blockIdx.x, h = blockIdx.y, g = h / a.group, m = *a.pos + a.delta + t + 1;
    float *red = sh, *q = red + ATTN_WARPS, *s = q + a.dpad;
    load_query<KV>(a, t, h, q, qq);
    const float mx = block_max(scores<KV, VEC>(a, q, qq, g, 0, m, s), red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < m; j += blockDim.x)
        sum += s[j] = expf(s[j] - mx);
    to_weights<KV>(s, m, block_sum(sum, red));
    weigh_values<KV, VEC>(a, s, 0, m, g, a.out + ((size_t)t * a.n_head + h) * a.dv);
}

/* Split, block (c, h): chunk c's largest score and sum of exponentials
 * (an empty chunk: -inf, 0). */
template <cm_kv_type KV, int VEC>
__global__ void __launch_bounds__(ATTN_THREADS) attend_stats(attn_args a)
{
    wait_prior_grid();
    start_next_grid();
    extern __shared__ float sh[];
    __shared__ block_q8_0 qq[16];
    const int c = blockIdx.x, h = blockIdx.y, g = h / a.group, m = *a.pos + a.delta + 1;
    const int j0 = c * a.chunk, j1 = j0 + a.chunk < m ? j0 + a.chunk : m;
    float *red = sh, *q = red + ATTN_WARPS, *s = q + a.dpad, *st = a.stats + 2 * ((size_t)h * a.n_split + c);
    if (j0 >= j1) {
        if (threadIdx.x == 0)
            st[0] = -INFINITY, st[1] = 0.0f;
        return;
    }
    load_query<KV>(a, 0, h, q, qq);
    const float mx = block_max(scores<KV, VEC>(a, q, qq, g, j0, j1, s), red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < j1 - j0; j += blockDim.x)
        sum += expf(s[j] - mx);
    sum = block_sum(sum, red);
    if (threadIdx.x == 0)
        st[0] = mx, st[1] = sum;
}

/* Split, block (c, h): chunk c's weights under the whole row's maximum and
 * sum (the chunks' sums rescaled to it), times its values. */
template <cm_kv_type KV, int VEC>
__global__ void __launch_bounds__(ATTN_THREADS) attend_part(attn_args a)
{
    wait_prior_grid();
    start_next_grid();
    extern __shared__ float sh[];
    __shared__ block_q8_0 qq[16];
    const int c = blockIdx.x, h = blockIdx.y, g = h / a.group, m = *a.pos + a.delta + 1;
    const int j0 = c * a.chunk, j1 = j0 + a.chunk < m ? j0 + a.chunk : m;
    float *red = sh, *q = red + ATTN_WARPS, *s = q + a.dpad;
    float *dst = a.out + ((size_t)h * a.n_split + c) * a.dv;
    if (j0 >= j1) {
        for (int i = threadIdx.x; i < a.dv; i += blockDim.x)
            dst[i] = 0.0f;
        return;
    }
    const float *st = a.stats + 2 * (size_t)h * a.n_split;
    float mx = -INFINITY, sum = 0.0f;
    for (int k = 0; k < a.n_split; k++)
        mx = fmaxf(mx, st[2 * k]);
    for (int k = 0; k < a.n_split; k++)
        if (st[2 * k + 1] > 0.0f)
            sum += st[2 * k + 1] * expf(st[2 * k] - mx);
    load_query<KV>(a, 0, h, q, qq);
    scores<KV, VEC>(a, q, qq, g, j0, j1, s);
    for (int j = threadIdx.x; j < j1 - j0; j += blockDim.x)
        s[j] = expf(s[j] - mx);
    to_weights<KV>(s, j1 - j0, sum);
    weigh_values<KV, VEC>(a, s, j0, j1, g, dst);
}

/* Split, block h: out = the chunks' sums, in order. */
__global__ void attend_sum(const float *part, float *out, int n_split, int dv)
{
    wait_prior_grid();
    start_next_grid();
    const float *p = part + (size_t)blockIdx.x * n_split * dv;
    for (int i = threadIdx.x; i < dv; i += blockDim.x) {
        float o = 0.0f;
        for (int k = 0; k < n_split; k++)
            o += p[(size_t)k * dv + i];
        out[(size_t)blockIdx.x * dv + i] = o;
    }
}

template <typename K>
void allow_smem(K kernel, size_t smem)
{
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
               "shared memory for attention");
}

template <cm_kv_type KV, int VEC>
void allow_smem_kv(size_t smem)
{
    allow_smem(attend<KV, VEC>, smem);
    allow_smem(attend_stats<KV, VEC>, smem);
    allow_smem(attend_part<KV, VEC>, smem);
}

/* Elements per cache load: 16 bytes where the heads' widths allow. */
int vec_for(cm_kv_type kv, int d, int dv)
{
    if (kv == CM_KV_Q8_0)
        return 4; /* (widths are multiples of 32) */
    const int v = kv == CM_KV_F16 ? 8 : 4;
    return d % v == 0 && dv % v == 0 ? v : 1;
}

template <cm_kv_type KV, int VEC>
void launch_kv(const cuda_state *st, const attn_args &a, int n, size_t smem)
{
    if (a.n_split <= 1) {
        launch_pdl(st, attend<KV, VEC>, dim3((unsigned)n, (unsigned)a.n_head), ATTN_THREADS, smem, a);
        return;
    }
    const dim3 grid((unsigned)a.n_split, (unsigned)a.n_head);
    launch_pdl(st, attend_stats<KV, VEC>, grid, ATTN_THREADS, smem, a);
    launch_pdl(st, attend_part<KV, VEC>, grid, ATTN_THREADS, smem, a);
}

void launch(const cuda_state *st, cm_kv_type kv, int vec, const attn_args &a, int n, size_t smem)
{
    if (kv == CM_KV_Q8_0)
        launch_kv<CM_KV_Q8_0, 4>(st, a, n, smem);
    else if (kv == CM_KV_F16 && vec == 8)
        launch_kv<CM_KV_F16, 8>(st, a, n, smem);
    else if (kv == CM_KV_F16)
        launch_kv<CM_KV_F16, 1>(st, a, n, smem);
    else if (vec == 4)
        launch_kv<CM_KV_F32, 4>(st, a, n, smem);
    else
        launch_kv<CM_KV_F32, 1>(st, a, n, smem);
}

/* Positions per block for one token that may see m_max positions: 0 for
 * one block per head. */
int split_chunk(int m_max)
{
    int chunk = forced_chunk;
    if (!chunk) {
        if (m_max <= SPLIT_MIN)
            return 0;
        chunk = (m_max + MAX_SPLIT - 1) / MAX_SPLIT;
        chunk = chunk < SPLIT_CHUNK ? SPLIT_CHUNK : (chunk + 255) / 256 * 256;
    }
    if ((m_max + chunk - 1) / chunk > MAX_SPLIT)
        chunk = (m_max + MAX_SPLIT - 1) / MAX_SPLIT;
    return chunk < m_max ? chunk : 0;
}

int dpad_of(int d) { return (d + 3) / 4 * 4; }

} // namespace

size_t cuda_attention_smem(const cm_hparams *hp, int n_ctx)
{
    const char *env = getenv("CODEMOE_CUDA_ATTN_CHUNK");
    forced_chunk = env && atoi(env) > 0 ? atoi(env) : 0;
    const size_t smem = smem_for(dpad_of(hp->head_dim), n_ctx);
    allow_smem_kv<CM_KV_F32, 1>(smem);
    allow_smem_kv<CM_KV_F32, 4>(smem);
    allow_smem_kv<CM_KV_F16, 1>(smem);
    allow_smem_kv<CM_KV_F16, 8>(smem);
    allow_smem_kv<CM_KV_Q8_0, 4>(smem);
    return smem;
}

size_t cuda_attention_scratch(const cm_hparams *hp)
{
    return (size_t)hp->n_head * MAX_SPLIT * (hp->head_dim_v + 2) * sizeof(float);
}

/* Keys and values in one launch (blockIdx.z). */
void cuda_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st, KEEP_HELD) || cuda_rope_store(st, il, k, v, p0 - st->batch_p0))
        return;
    cuda_flush(st);
    kv_put_args a;
    a.n = (int)k->ne[1];
    a.pos = st->io_dev;
    a.delta = p0 - st->batch_p0;
    const cm_tensor *src[2] = {k, v};
    char *dst[2] = {st->k_cache[il], st->v_cache[il]};
    int widest = 0;
    for (int i = 0; i < 2; i++) {
        a.x[i] = (const float *)dev_ptr(src[i]);
        a.cache[i] = dst[i];
        a.cols[i] = (int)src[i]->ne[0];
        widest = a.cols[i] > widest ? a.cols[i] : widest;
    }
    const int per = st->kv == CM_KV_Q8_0 ? widest / 32 : widest; /* threads per row */
    const dim3 g(blocks_for(per, 128), (unsigned)a.n, 2);
    if (st->kv == CM_KV_Q8_0)
        kv_put<CM_KV_Q8_0><<<g, 128, 0, st->stream>>>(a);
    else if (st->kv == CM_KV_F16)
        kv_put<CM_KV_F16><<<g, 128, 0, st->stream>>>(a);
    else
        kv_put<CM_KV_F32><<<g, 128, 0, st->stream>>>(a);
    cuda_check(cudaGetLastError(), "kv_store");
}

/* Rows of a batch from which attention_prompt.cu's kernel takes over. */
const int PROMPT_ROWS = 8;

void cuda_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st))
        return;
    const int n = (int)q->ne[1];
    if (n >= PROMPT_ROWS && cuda_attention_tensor(st, il, (const float *)dev_ptr(q), n,
                                                  p0 - st->batch_p0, (float *)dev_ptr(out)))
        return;
    if (n >= PROMPT_ROWS && st->prompt_attn) { /* keys shared by 8 rows at a time */
        cuda_attention_prompt(st, il, (const float *)dev_ptr(q), n, p0 - st->batch_p0,
                              (float *)dev_ptr(out));
        return;
    }
    const cm_hparams *hp = st->hp;
    attn_args a;
    a.q = (const float *)dev_ptr(q);
    a.out = (float *)dev_ptr(out);
    a.stats = NULL;
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
    a.dpad = dpad_of(a.d);
    a.scale = 1.0f / sqrtf((float)hp->head_dim);
    a.chunk = 0;
    a.n_split = 1;
    /* a recorded step is replayed at later positions: room for them all */
    const int m_max = st->mode == EAGER ? p0 + n : st->n_ctx;
    const int chunk = n == 1 ? split_chunk(m_max) : 0;
    const int n_split = chunk ? (m_max + chunk - 1) / chunk : 1;
    float *part = (float *)st->xq; /* the products' scratch, idle here */
    if (n_split > 1 && (size_t)a.n_head * n_split * (a.dv + 2) * sizeof(float) <= st->xq_bytes) {
        a.chunk = chunk;
        a.n_split = n_split;
        a.out = part;
        a.stats = part + (size_t)a.n_head * n_split * a.dv;
    }
    const int vec = vec_for(st->kv, a.d, a.dv);
    launch(st, st->kv, vec, a, n, smem_for(a.dpad, a.n_split > 1 ? a.chunk : m_max));
    if (a.n_split > 1)
        launch_pdl(st, attend_sum, (unsigned)a.n_head, 128, 0, (const float *)part,
                   (float *)dev_ptr(out), a.n_split, a.dv);
    cuda_check(cudaGetLastError(), "attention");
}
