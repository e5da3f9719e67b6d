/* attention_prompt.cu - attention for a prompt's many query rows.
 *
 * One thread block per (8 query rows, head): keys and values stream through
 * shared memory 32 positions at a time, each loaded once for the 8 rows
 * instead of once per row.  Two passes over the keys, so no score is stored
 * and any context fits: the first finds each row's maximum score and the
 * sum of its exponentials (rescaled as the maximum grows), the second
 * recomputes the scores, turns them into the softmax weights exactly as
 * the reference does (exp(s - max) / sum, rounded to f16 with an F16
 * cache) and sums the values.  Warp w holds query row w, its lane j key j
 * of the tile, and then the value dimensions j, j + 32, ... */
#include <cuda_fp16.h>
#include <math.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kv_cache.cuh"
#include "backends/cuda/quant_dev.cuh"

namespace {

const int QT = 8, KT = 32, THREADS = QT * 32, MAX_DV = 256;

/* Positions kb .. kb + KT - 1 of KV head g into kt (and vt): zero past last. */
template <cm_kv_type KV>
__device__ void load_tile(const attn_prompt_args &a, int g, int kb, int last, float *kt, float *vt)
{
    for (int e = threadIdx.x; e < KT * a.d; e += THREADS) {
        const int j = e / a.d, i = e % a.d;
        kt[j * (a.d + 1) + i] =
            kb + j <= last ? cache_at<KV>(a.k + (size_t)(kb + j) * a.krow, g, a.d, i) : 0.0f;
    }
    for (int e = threadIdx.x; vt && e < KT * a.dv; e += THREADS) {
        const int j = e / a.dv, i = e % a.dv;
        vt[j * a.dv + i] =
            kb + j <= last ? cache_at<KV>(a.v + (size_t)(kb + j) * a.vrow, g, a.dv, i) : 0.0f;
    }
}

__device__ float warp_max(float v)
{
    for (int o = 16; o > 0; o /= 2)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The query row as the reference dots it: rounded to f16 for an F16
 * cache, quantized to q8_0 (and back) for a Q8_0 cache. */
template <cm_kv_type KV>
__device__ void load_query(const attn_prompt_args &a, int t, int h, float *qf)
{
    const float *src = a.q + ((size_t)t * a.n_head + h) * a.d;
    const int lane = threadIdx.x % 32;
    if constexpr (KV == CM_KV_Q8_0) {
        for (int b = lane; b < a.d / 32; b += 32) {
            block_q8_0 blk;
            q8_0_quantize_block(src + b * 32, &blk);
            for (int i = 0; i < 32; i++)
                qf[b * 32 + i] = dequant_elem(CM_TYPE_Q8_0, &blk, i);
        }
    } else {
        for (int i = lane; i < a.d; i += 32)
            qf[i] = KV == CM_KV_F16 ? __half2float(__float2half_rn(src[i])) : src[i];
    }
}

template <cm_kv_type KV>
__global__ void __launch_bounds__(THREADS) attend_prompt(attn_prompt_args a)
{
    extern __shared__ float sh[];
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int h = blockIdx.y, g = h / a.group, t = blockIdx.x * QT + w;
    const int p0 = *a.pos + a.delta + blockIdx.x * QT;
    const int rows = a.n - blockIdx.x * QT < QT ? a.n - blockIdx.x * QT : QT;
    const int last = p0 + rows - 1;        /* the tile's last key */
    const int mine = t < a.n ? p0 + w : -1; /* this warp's row's last key */
    float *qf = sh, *kt = qf + QT * a.d, *vt = kt + KT * (a.d + 1), *pt = vt + KT * a.dv;
    if (t < a.n)
        load_query<KV>(a, t, h, qf + w * a.d);
    /* pass 1: each row's maximum and sum of exponentials */
    float mx = -INFINITY, sum = 0.0f;
    for (int kb = 0; kb <= last; kb += KT) {
        __syncthreads();
        load_tile<KV>(a, g, kb, last, kt, NULL);
        __syncthreads();
        float s = -INFINITY;
        if (kb + lane <= mine) {
            s = 0.0f;
            for (int i = 0; i < a.d; i++)
                s += qf[w * a.d + i] * kt[lane * (a.d + 1) + i];
            s *= a.scale;
        }
        const float m_new = fmaxf(mx, warp_max(s));
        if (m_new == -INFINITY)
            continue;
        sum = sum * expf(mx - m_new) + warp_sum(s == -INFINITY ? 0.0f : expf(s - m_new));
        mx = m_new;
    }
    /* pass 2: the weights, then the values they weigh */
    float acc[MAX_DV / 32] = {};
    for (int kb = 0; kb <= last; kb += KT) {
        __syncthreads();
        load_tile<KV>(a, g, kb, last, kt, vt);
        __syncthreads();
        float p = 0.0f;
        if (kb + lane <= mine) {
            float s = 0.0f;
            for (int i = 0; i < a.d; i++)
                s += qf[w * a.d + i] * kt[lane * (a.d + 1) + i];
            p = expf(s * a.scale - mx) / sum;
            if (KV == CM_KV_F16)
                p = __half2float(__float2half_rn(p));
        }
        pt[w * KT + lane] = p;
        __syncwarp();
#pragma unroll
        for (int c = 0; c < MAX_DV / 32; c++) /* (unrolled: acc stays in registers) */
            for (int j = 0; c < a.dv / 32 && j < KT; j++)
                acc[c] += pt[w * KT + j] * vt[j * a.dv + c * 32 + lane];
    }
#pragma unroll
    for (int c = 0; c < MAX_DV / 32; c++)
        if (t < a.n && c < a.dv / 32)
            a.out[((size_t)t * a.n_head + h) * a.dv + c * 32 + lane] = acc[c];
}

size_t smem_bytes(const cm_hparams *hp)
{
    return ((size_t)QT * hp->head_dim + (size_t)KT * (hp->head_dim + 1) +
            (size_t)KT * hp->head_dim_v + QT * KT) * sizeof(float);
}

template <cm_kv_type KV>
cudaError_t set_smem(size_t smem)
{
    return cudaFuncSetAttribute(attend_prompt<KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)smem);
}

} // namespace

bool cuda_attention_prompt_ok(const cm_hparams *hp, size_t smem_limit)
{
    const size_t smem = smem_bytes(hp);
    return hp->head_dim_v % 32 == 0 && hp->head_dim_v <= MAX_DV && smem <= smem_limit &&
           set_smem<CM_KV_F32>(smem) == cudaSuccess && set_smem<CM_KV_F16>(smem) == cudaSuccess &&
           set_smem<CM_KV_Q8_0>(smem) == cudaSuccess;
}

void cuda_attention_prompt(cuda_state *st, int il, const float *q, int n, int delta, float *out)
{
    const cm_hparams *hp = st->hp;
    const attn_prompt_args a = attn_prompt_args_for(st, il, q, n, delta, out);
    const dim3 grid(blocks_for(n, QT), (unsigned)hp->n_head);
    const size_t smem = smem_bytes(hp);
    if (st->kv == CM_KV_Q8_0)
        attend_prompt<CM_KV_Q8_0><<<grid, THREADS, smem, st->stream>>>(a);
    else if (st->kv == CM_KV_F16)
        attend_prompt<CM_KV_F16><<<grid, THREADS, smem, st->stream>>>(a);
    else
        attend_prompt<CM_KV_F32><<<grid, THREADS, smem, st->stream>>>(a);
    cuda_check(cudaGetLastError(), "attention (prompt)");
}
