/* attention_tensor.cu - prompt attention on the tensor cores (F16 cache).
 *
 * With an F16 cache the reference's arithmetic is already that of f16
 * matrix products with f32 sums: the query is rounded to f16 and dotted
 * with f16 keys, each softmax weight is rounded to f16 and multiplies f16
 * values.  So mma.sync m16n8k16 (f16 x f16 -> f32, sm_80 and newer) does
 * both products, and only the order of the f32 sums differs.
 *
 * A thread block takes 64 query rows of one head, each of its 4 warps 16
 * rows; keys and values stream through shared memory 64 positions at a
 * time (values transposed, so that both products read their operands as
 * 32-bit pairs).  As in attention_prompt.cu, two passes keep the weights
 * those of the reference, exp(s - max) / sum with the row's final max and
 * sum, before their rounding: the first finds max and sum, the second
 * recomputes the scores, forms the weights and sums the values.  The
 * score tile's accumulator layout is the next product's operand layout,
 * so weights never leave the registers. */
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kv_cache.cuh"

namespace {

const int WARPS = 4, BQ = 16 * WARPS, BK = 64, PAD = 8; /* PAD: halves, off bank conflicts */

template <int D, int DV>
struct tiles {
    __half k[BK][D + PAD];   /* key j, dimension i */
    __half vt[DV][BK + PAD]; /* dimension i, key j */
};

__device__ __forceinline__ void mma_f16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)c, (void)a, (void)b0, (void)b1;
    __trap(); /* never launched there: the caller checks for tensor cores */
#endif
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi)
{
    const __half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *)&h;
}

__device__ __forceinline__ uint32_t lds32(const __half *p) { return *(const uint32_t *)p; }

/* Keys kb .. kb + BK - 1 of KV head g (and their values, transposed);
 * zeros past last, where the cache holds nothing of this batch. */
template <int D, int DV>
__device__ void load_tiles(tiles<D, DV> &sm, const attn_prompt_args &a, int g, int kb, int last, bool values)
{
    for (int c = threadIdx.x; c < BK * D / 8; c += WARPS * 32) {
        const int j = c / (D / 8), i = c % (D / 8) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (kb + j <= last)
            v = *(const uint4 *)(a.k + (size_t)(kb + j) * a.krow + ((size_t)g * D + i) * 2);
        *(uint4 *)&sm.k[j][i] = v;
    }
    if (!values)
        return;
    for (int c = threadIdx.x; c < BK * DV / 8; c += WARPS * 32) {
        const int j = c % BK, i = c / BK * 8; /* lanes on consecutive keys: no store conflicts */
        uint4 v = make_uint4(0, 0, 0, 0);
        if (kb + j <= last)
            v = *(const uint4 *)(a.v + (size_t)(kb + j) * a.vrow + ((size_t)g * DV + i) * 2);
        const __half *h = (const __half *)&v;
#pragma unroll
        for (int e = 0; e < 8; e++)
            sm.vt[i + e][j] = h[e];
    }
}

/* The warp's 16 x BK scores of the tile, scaled; masked ones -inf.  Row
 * g of the fragment is query position qp[0], row g + 8 qp[1] (-1: none). */
template <int D, int DV>
__device__ void scores(const tiles<D, DV> &sm, const uint32_t (&qa)[D / 16][4], int kb,
                       const int qp[2], float scale, float (&s)[BK / 8][4])
{
    const int lane = threadIdx.x % 32, g = lane / 4, tg = lane % 4;
#pragma unroll
    for (int nt = 0; nt < BK / 8; nt++) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++)
            mma_f16(s[nt], qa[ks], lds32(&sm.k[nt * 8 + g][ks * 16 + 2 * tg]),
                    lds32(&sm.k[nt * 8 + g][ks * 16 + 8 + 2 * tg]));
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int key = kb + nt * 8 + 2 * tg + (i & 1);
            s[nt][i] = key <= qp[i / 2] ? s[nt][i] * scale : -INFINITY;
        }
    }
}

__device__ __forceinline__ float quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

template <int D, int DV>
__global__ void __launch_bounds__(WARPS * 32) attend_tc(attn_prompt_args a)
{
    __shared__ tiles<D, DV> sm;
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tg = lane % 4;
    const int h = blockIdx.y, kvh = h / a.group, t0 = blockIdx.x * BQ;
    const int p0 = *a.pos + a.delta + t0; /* position of the block's first row */
    const int rows = a.n - t0 < BQ ? a.n - t0 : BQ;
    const int last = p0 + rows - 1; /* the block's last key */
    const int r0 = 16 * w + g;      /* the fragment's rows r0, r0 + 8 in the block */
    const int qp[2] = {r0 < rows ? p0 + r0 : -1, r0 + 8 < rows ? p0 + r0 + 8 : -1};
    const int warp_last = 16 * w < rows ? p0 + (16 * w + 15 < rows ? 16 * w + 15 : rows - 1) : -1;

    uint32_t qa[D / 16][4]; /* the warp's 16 query rows as f16 operands */
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = r0 + 8 * (i & 1), c = ks * 16 + 2 * tg + 8 * (i >> 1);
            float2 v = make_float2(0.0f, 0.0f);
            if (r < rows)
                v = *(const float2 *)(a.q + ((size_t)(t0 + r) * a.n_head + h) * D + c);
            qa[ks][i] = pack_half2(v.x, v.y);
        }

    /* pass 1: each row's maximum and sum of exponentials */
    float mx[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};
    float s[BK / 8][4];
    for (int kb = 0; kb <= last; kb += BK) {
        __syncthreads();
        load_tiles<D, DV>(sm, a, kvh, kb, last, false);
        __syncthreads();
        if (kb > warp_last)
            continue;
        scores<D, DV>(sm, qa, kb, qp, a.scale, s);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float m = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < BK / 8; nt++)
                m = fmaxf(m, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            const float m_new = fmaxf(mx[r], quad_max(m));
            if (m_new == -INFINITY)
                continue; /* (the same for the quad: its maxima agree) */
            float e = 0.0f;
#pragma unroll
            for (int nt = 0; nt < BK / 8; nt++)
                e += expf(s[nt][2 * r] - m_new) + expf(s[nt][2 * r + 1] - m_new);
            sum[r] = sum[r] * expf(mx[r] - m_new) + e;
            mx[r] = m_new;
        }
    }
    sum[0] = quad_sum(sum[0]), sum[1] = quad_sum(sum[1]);

    /* pass 2: the weights as the reference rounds them, times the values */
    float o[DV / 8][4] = {};
    for (int kb = 0; kb <= last; kb += BK) {
        __syncthreads();
        load_tiles<D, DV>(sm, a, kvh, kb, last, true);
        __syncthreads();
        if (kb > warp_last)
            continue;
        scores<D, DV>(sm, qa, kb, qp, a.scale, s);
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t pa[4];
#pragma unroll
            for (int i = 0; i < 4; i++) { /* tile 2kk + i/2, row g + 8 (i % 2) */
                const float *sv = &s[2 * kk + i / 2][2 * (i % 2)];
                const int r = i % 2;
                const float p0w = qp[r] < 0 ? 0.0f : expf(sv[0] - mx[r]) / sum[r];
                const float p1w = qp[r] < 0 ? 0.0f : expf(sv[1] - mx[r]) / sum[r];
                pa[i] = pack_half2(p0w, p1w);
            }
#pragma unroll
            for (int dt = 0; dt < DV / 8; dt++)
                mma_f16(o[dt], pa, lds32(&sm.vt[dt * 8 + g][kk * 16 + 2 * tg]),
                        lds32(&sm.vt[dt * 8 + g][kk * 16 + 8 + 2 * tg]));
        }
    }
#pragma unroll
    for (int dt = 0; dt < DV / 8; dt++)
#pragma unroll
        for (int r = 0; r < 2; r++)
            if (qp[r] >= 0)
                *(float2 *)(a.out + ((size_t)(t0 + r0 + 8 * r) * a.n_head + h) * DV + dt * 8 +
                            2 * tg) = make_float2(o[dt][2 * r], o[dt][2 * r + 1]);
}

template <int D>
void launch(cudaStream_t s, const attn_prompt_args &a)
{
    attend_tc<D, D><<<dim3(blocks_for(a.n, BQ), (unsigned)a.n_head), WARPS * 32, 0, s>>>(a);
}

} // namespace

bool cuda_attention_tensor(cuda_state *st, int il, const float *q, int n, int delta, float *out)
{
    const cm_hparams *hp = st->hp;
    const int d = hp->head_dim;
    if (!st->mmq || st->kv != CM_KV_F16 || hp->head_dim_v != d ||
        (d != 32 && d != 64 && d != 96 && d != 128))
        return false;
    const attn_prompt_args a = attn_prompt_args_for(st, il, q, n, delta, out);
    switch (d) {
    case 32: launch<32>(st->stream, a); break;
    case 64: launch<64>(st->stream, a); break;
    case 96: launch<96>(st->stream, a); break;
    default: launch<128>(st->stream, a); break;
    }
    cuda_check(cudaGetLastError(), "attention (tensor cores)");
    return true;
}
