/* mmq.cu - prompt products on the tensor cores' int8 units.
 *
 * A prompt batch multiplies each weight row with many tokens, so the
 * products are compute-bound: integer matrix multiply-accumulate
 * (mma.sync m16n8k16, s8 x s8 -> s32, sm_80 and newer) does the block sums
 * that the generation kernels do with dp4a.  The arithmetic stays each
 * format's own: weights and activations (quantized to the dot type as
 * always) are unpacked to int8 per 16-element half of a 32-element step,
 * the integer sums are exact, and each half's sum is scaled by its weight
 * and activation scales, plus the formats' min terms:
 *
 *   y += xd * (wd0 * c0 + wd1 * c1) + wm0 * xm0 + wm1 * xm1
 *
 * where c0, c1 are the halves' integer sums, wd the weight scales of the
 * halves, xd the activation block's scale, wm the weight min terms and xm
 * the activation sums they multiply (q8_1's s, q8_K's bsums).
 *
 * A thread block computes 64 weight rows x 64 tokens: each of its 4 warps
 * 16 rows, in 8 tiles of 8 tokens.  Weights and activations of 4 steps
 * (128 columns) are unpacked into shared memory at a time. */
#include "backends/cuda/common.cuh"
#include "backends/cuda/quant_dev.cuh"

namespace {

const int BM = 64, BN = 64, KS = 4; /* rows, tokens, 32-column steps per stage */
const int ROW = KS * 32 + 16;       /* bytes per unpacked row: padded off bank conflicts */
const int THREADS = 128;

struct tile {
    int8_t a[BM][ROW], b[BN][ROW];
    float wd[KS][2][BM], wm[KS][2][BM]; /* per step, half, row */
    float xd[KS][BN], xm[KS][2][BN];    /* per step, (half,) token */
};

/* ------------------------------------------------------------ weights */

/* Step s (32 columns) of a weight row: its int8 values and, per half,
 * scale and min term. */
template <enum cm_type T>
__device__ void load_w(const char *row, int s, int8_t *q, float wd[2], float wm[2]);

__device__ int nib(const uint8_t *qs, int i) { return (qs[i & 15] >> (4 * (i >> 4))) & 0xF; }

/* Word k of bytes at a 2-aligned address (most blocks are 2-aligned only). */
__device__ uint32_t word2(const uint8_t *p, int k)
{
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[2 * k] | ((uint32_t)h[2 * k + 1] << 16);
}

template <>
__device__ void load_w<CM_TYPE_Q4_0>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q4_0 *b = (const block_q4_0 *)row + s;
    uint32_t *qw = (uint32_t *)q; /* bytes j: elements j (low nibble), j + 16 (high) */
    for (int k = 0; k < 4; k++) {
        const uint32_t w = word2(b->qs, k);
        qw[k] = __vsub4(w & 0x0F0F0F0Fu, 0x08080808u);
        qw[4 + k] = __vsub4((w >> 4) & 0x0F0F0F0Fu, 0x08080808u);
    }
    wd[0] = wd[1] = qd_f16(b->d);
    wm[0] = wm[1] = 0.0f;
}

template <>
__device__ void load_w<CM_TYPE_Q4_1>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q4_1 *b = (const block_q4_1 *)row + s;
    for (int i = 0; i < 32; i++)
        q[i] = (int8_t)nib(b->qs, i);
    wd[0] = wd[1] = qd_f16(b->d);
    wm[0] = qd_f16(b->m), wm[1] = 0.0f; /* times q8_1's s: the whole block */
}

template <>
__device__ void load_w<CM_TYPE_Q5_0>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q5_0 *b = (const block_q5_0 *)row + s;
    for (int i = 0; i < 32; i++)
        q[i] = (int8_t)(qd_q5_level(b->qs, b->qh, i) - 16);
    wd[0] = wd[1] = qd_f16(b->d);
    wm[0] = wm[1] = 0.0f;
}

template <>
__device__ void load_w<CM_TYPE_Q5_1>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q5_1 *b = (const block_q5_1 *)row + s;
    for (int i = 0; i < 32; i++)
        q[i] = (int8_t)qd_q5_level(b->qs, b->qh, i);
    wd[0] = wd[1] = qd_f16(b->d);
    wm[0] = qd_f16(b->m), wm[1] = 0.0f;
}

template <>
__device__ void load_w<CM_TYPE_Q8_0>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q8_0 *b = (const block_q8_0 *)row + s;
    for (int k = 0; k < 8; k++)
        ((uint32_t *)q)[k] = word2((const uint8_t *)b->qs, k);
    wd[0] = wd[1] = qd_f16(b->d);
    wm[0] = wm[1] = 0.0f;
}

/* K-quants: step s is 32 columns of a 256-column super-block */
template <>
__device__ void load_w<CM_TYPE_Q2_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q2_K *b = (const block_q2_K *)row + s / 8;
    const int e0 = (s % 8) * 32;
    for (int i = 0; i < 32; i++)
        q[i] = (int8_t)qd_k2_bits(b->qs, e0 + i);
    for (int h = 0; h < 2; h++) {
        const int sc = b->scales[e0 / 16 + h];
        wd[h] = qd_f16(b->d) * (float)(sc & 0xF);
        wm[h] = -(qd_f16(b->dmin) * (float)(sc >> 4));
    }
}

template <>
__device__ void load_w<CM_TYPE_Q3_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q3_K *b = (const block_q3_K *)row + s / 8;
    const int e0 = (s % 8) * 32;
    for (int i = 0; i < 32; i++) {
        const int e = e0 + i;
        q[i] = (int8_t)((qd_k2_bits(b->qs, e) | (((b->hmask[e & 31] >> (e >> 5)) & 1) << 2)) - 4);
    }
    for (int h = 0; h < 2; h++) {
        const int j = e0 / 16 + h;
        const int lo = (b->scales[j & 7] >> (4 * (j >> 3))) & 0xF;
        const int hi = (b->scales[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        wd[h] = qd_f16(b->d) * (float)((lo | (hi << 4)) - 32);
        wm[h] = 0.0f;
    }
}

template <>
__device__ void load_w<CM_TYPE_Q4_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q4_K *b = (const block_q4_K *)row + s / 8;
    const int j = s % 8;
    const uint32_t *qs = (const uint32_t *)(b->qs + 32 * (j >> 1)); /* (block_q4_K: 4-aligned) */
    for (int k = 0; k < 8; k++)
        ((uint32_t *)q)[k] = (qs[k] >> (4 * (j & 1))) & 0x0F0F0F0Fu;
    int sc, m;
    qd_k4_scale_min(b->scales, j, &sc, &m);
    wd[0] = wd[1] = qd_f16(b->d) * (float)sc;
    wm[0] = wm[1] = -(qd_f16(b->dmin) * (float)m);
}

template <>
__device__ void load_w<CM_TYPE_Q5_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q5_K *b = (const block_q5_K *)row + s / 8;
    const int j = s % 8;
    for (int i = 0; i < 32; i++)
        q[i] = (int8_t)(((b->qs[32 * (j >> 1) + i] >> (4 * (j & 1))) & 0xF) |
                        (((b->qh[i] >> j) & 1) << 4));
    int sc, m;
    qd_k4_scale_min(b->scales, j, &sc, &m);
    wd[0] = wd[1] = qd_f16(b->d) * (float)sc;
    wm[0] = wm[1] = -(qd_f16(b->dmin) * (float)m);
}

template <>
__device__ void load_w<CM_TYPE_Q6_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q6_K *b = (const block_q6_K *)row + s / 8;
    const int e0 = (s % 8) * 32, c = e0 >> 7, k = (e0 >> 5) & 3;
    for (int w = 0; w < 8; w++) {
        const uint32_t lo = (word2(b->ql + 64 * c + 32 * (k & 1), w) >> (4 * (k >> 1))) & 0x0F0F0F0Fu;
        const uint32_t hi = (word2(b->qh + 32 * c, w) >> (2 * k)) & 0x03030303u;
        ((uint32_t *)q)[w] = __vsub4(lo | (hi << 4), 0x20202020u);
    }
    for (int h = 0; h < 2; h++) {
        wd[h] = qd_f16(b->d) * (float)b->scales[e0 / 16 + h];
        wm[h] = 0.0f;
    }
}

/* ------------------------------------------------------------ activations */

/* Step s of an activation row in dot type D: int8 values, scale, the sums
 * the weight min terms multiply. */
template <enum cm_type D>
__device__ void load_x(const char *row, int s, int8_t *q, float *xd, float xm[2])
{
    if constexpr (D == CM_TYPE_Q8_K) {
        const block_q8_K *b = (const block_q8_K *)row + s / 8;
        const int j = s % 8;
        for (int k = 0; k < 8; k++) /* (block_q8_K: 4-aligned) */
            ((uint32_t *)q)[k] = ((const uint32_t *)(b->qs + 32 * j))[k];
        *xd = b->d;
        xm[0] = b->d * (float)b->bsums[2 * j];
        xm[1] = b->d * (float)b->bsums[2 * j + 1];
    } else if constexpr (D == CM_TYPE_Q8_1) {
        const block_q8_1 *b = (const block_q8_1 *)row + s;
        for (int i = 0; i < 32; i++)
            q[i] = b->qs[i];
        *xd = qd_f16(b->d);
        xm[0] = qd_f16(b->s), xm[1] = 0.0f;
    } else {
        const block_q8_0 *b = (const block_q8_0 *)row + s;
        for (int k = 0; k < 8; k++)
            ((uint32_t *)q)[k] = word2((const uint8_t *)b->qs, k);
        *xd = qd_f16(b->d);
        xm[0] = xm[1] = 0.0f;
    }
}

/* ------------------------------------------------------------ the kernel */

__device__ void mma_s8(int c[4], int a0, int a1, int b0)
{
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, "
                 "{%6}, {%0,%1,%2,%3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0));
#else
    (void)c, (void)a0, (void)a1, (void)b0;
    __trap(); /* never launched there: cuda_mmq checks the device */
#endif
}

/* Unpacks stage k0 (steps k0 .. k0 + KS - 1) of the block's rows and tokens. */
template <enum cm_type T, enum cm_type D>
__device__ void load_stage(tile &sm, const mm_args &a, int r0, int t0, int k0, int nsteps)
{
    for (int it = threadIdx.x; it < BM * KS; it += THREADS) {
        const int r = it / KS, ks = it % KS, s = k0 + ks;
        int8_t *q = &sm.a[r][ks * 32];
        float wd[2] = {0.0f, 0.0f}, wm[2] = {0.0f, 0.0f};
        if (r0 + r < a.rows && s < nsteps)
            load_w<T>(a.w + (size_t)(r0 + r) * a.wrow, s, q, wd, wm);
        else
            for (int k = 0; k < 8; k++)
                ((uint32_t *)q)[k] = 0;
        for (int h = 0; h < 2; h++)
            sm.wd[ks][h][r] = wd[h], sm.wm[ks][h][r] = wm[h];
    }
    for (int it = threadIdx.x; it < BN * KS; it += THREADS) {
        const int t = it / KS, ks = it % KS, s = k0 + ks;
        int8_t *q = &sm.b[t][ks * 32];
        float xd = 0.0f, xm[2] = {0.0f, 0.0f};
        if (t0 + t < a.n && s < nsteps)
            load_x<D>(a.x + (size_t)(t0 + t) * a.xrow, s, q, &xd, xm);
        else
            for (int k = 0; k < 8; k++)
                ((uint32_t *)q)[k] = 0;
        sm.xd[ks][t] = xd, sm.xm[ks][0][t] = xm[0], sm.xm[ks][1][t] = xm[1];
    }
}

/* SPLIT: the halves have scales of their own (q2_K, q3_K, q6_K); MINS:
 * the format has min terms (q4_1, q5_1, q2_K, q4_K, q5_K). */
template <enum cm_type T>
__host__ __device__ constexpr bool split_halves()
{
    return T == CM_TYPE_Q2_K || T == CM_TYPE_Q3_K || T == CM_TYPE_Q6_K;
}
template <enum cm_type T>
__host__ __device__ constexpr bool has_mins()
{
    return T == CM_TYPE_Q4_1 || T == CM_TYPE_Q5_1 || T == CM_TYPE_Q2_K || T == CM_TYPE_Q4_K ||
           T == CM_TYPE_Q5_K;
}

template <enum cm_type T, enum cm_type D>
__global__ void __launch_bounds__(THREADS) mmq(mm_args a)
{
    constexpr bool SPLIT = split_halves<T>(), MINS = has_mins<T>();
    extern __shared__ char smem_raw[];
    tile &sm = *(tile *)smem_raw;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tg = lane % 4;
    const int r0 = blockIdx.x * BM, t0 = blockIdx.y * BN, wr = warp * 16;
    const int nsteps = a.cols / 32;
    float acc[BN / 8][4] = {};
    for (int k0 = 0; k0 < nsteps; k0 += KS) {
        load_stage<T, D>(sm, a, r0, t0, k0, nsteps);
        __syncthreads();
        for (int ks = 0; ks < KS && k0 + ks < nsteps; ks++) {
            const int kb = ks * 32 + tg * 4;
            const int a00 = *(const int *)&sm.a[wr + g][kb], a01 = *(const int *)&sm.a[wr + g + 8][kb];
            const int a10 = *(const int *)&sm.a[wr + g][kb + 16];
            const int a11 = *(const int *)&sm.a[wr + g + 8][kb + 16];
            const float wd0[2] = {sm.wd[ks][0][wr + g], sm.wd[ks][0][wr + g + 8]};
            const float wd1[2] = {sm.wd[ks][1][wr + g], sm.wd[ks][1][wr + g + 8]};
            const float wm0[2] = {sm.wm[ks][0][wr + g], sm.wm[ks][0][wr + g + 8]};
            const float wm1[2] = {sm.wm[ks][1][wr + g], sm.wm[ks][1][wr + g + 8]};
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
                const int tb = nt * 8;
                int c0[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
                mma_s8(c0, a00, a01, *(const int *)&sm.b[tb + g][kb]);
                /* one scale for both halves: one integer sum over 32 */
                mma_s8(SPLIT ? c1 : c0, a10, a11, *(const int *)&sm.b[tb + g][kb + 16]);
#pragma unroll
                for (int i = 0; i < 4; i++) { /* row g (+8 for i >= 2), token 2 tg + i % 2 */
                    const int ri = i / 2, t = tb + 2 * tg + i % 2;
                    float v = SPLIT ? wd0[ri] * (float)c0[i] + wd1[ri] * (float)c1[i]
                                    : wd0[ri] * (float)c0[i];
                    v *= sm.xd[ks][t];
                    if (MINS)
                        v += wm0[ri] * sm.xm[ks][0][t] + wm1[ri] * sm.xm[ks][1][t];
                    acc[nt][i] += v;
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = r0 + wr + g + 8 * (i / 2), t = t0 + nt * 8 + 2 * tg + i % 2;
            if (r < a.rows && t < a.n)
                a.y[(size_t)t * a.rows + r] = acc[nt][i] + (a.bias ? a.bias[r] : 0.0f);
        }
}

static_assert(sizeof(tile) <= 48 * 1024, "a tile fits the default shared memory");

template <enum cm_type T, enum cm_type D>
void launch(cudaStream_t s, const mm_args &a)
{
    mmq<T, D><<<dim3(blocks_for(a.rows, BM), blocks_for(a.n, BN)), THREADS, sizeof(tile), s>>>(a);
}

} // namespace

/* Whether the kernels were compiled with their tensor-core code: PTX for
 * sm_80 or later (a build holding only compute_75 PTX runs them as JIT on
 * newer cards without it; sm_75 keeps dp4a: its int8 mma has another
 * shape). */
bool cuda_mmq_available(void)
{
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, mmq<CM_TYPE_Q4_0, CM_TYPE_Q8_0>) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return fa.ptxVersion >= 80;
}

bool cuda_mmq(cuda_state *st, enum cm_type t, const mm_args &a)
{
    if (!st->mmq)
        return false;
    cudaStream_t s = st->stream;
    switch (t) {
    case CM_TYPE_Q4_0: launch<CM_TYPE_Q4_0, CM_TYPE_Q8_0>(s, a); break;
    case CM_TYPE_Q4_1: launch<CM_TYPE_Q4_1, CM_TYPE_Q8_1>(s, a); break;
    case CM_TYPE_Q5_0: launch<CM_TYPE_Q5_0, CM_TYPE_Q8_0>(s, a); break;
    case CM_TYPE_Q5_1: launch<CM_TYPE_Q5_1, CM_TYPE_Q8_1>(s, a); break;
    case CM_TYPE_Q8_0: launch<CM_TYPE_Q8_0, CM_TYPE_Q8_0>(s, a); break;
    case CM_TYPE_Q2_K: launch<CM_TYPE_Q2_K, CM_TYPE_Q8_K>(s, a); break;
    case CM_TYPE_Q3_K: launch<CM_TYPE_Q3_K, CM_TYPE_Q8_K>(s, a); break;
    case CM_TYPE_Q4_K: launch<CM_TYPE_Q4_K, CM_TYPE_Q8_K>(s, a); break;
    case CM_TYPE_Q5_K: launch<CM_TYPE_Q5_K, CM_TYPE_Q8_K>(s, a); break;
    case CM_TYPE_Q6_K: launch<CM_TYPE_Q6_K, CM_TYPE_Q8_K>(s, a); break;
    default: return false;
    }
    cuda_check(cudaGetLastError(), "mmq");
    return true;
}
