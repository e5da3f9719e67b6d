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
 * (128 columns) are unpacked into shared memory at a time.  One launch
 * covers up to three weights of a type sharing the input (q, k, v), and
 * where that is too few blocks to fill the GPU, the columns are split
 * between blocks whose partial sums a second kernel adds, in a fixed
 * order (so results do not depend on timing). */
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
 * scale and min term.  Each reads all it needs into registers before it
 * stores anything: q is shared memory the compiler cannot tell from the
 * weights, so a store between two loads would make the second wait for
 * the first (hundreds of cycles each). */
template <enum cm_type T>
__device__ void load_w(const char *row, int s, int8_t *q, float wd[2], float wm[2]);

/* Word k of bytes at a 2-aligned address (most blocks are 2-aligned only). */
__device__ __forceinline__ uint32_t word2(const uint8_t *p, int k)
{
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[2 * k] | ((uint32_t)h[2 * k + 1] << 16);
}

__device__ __forceinline__ uint32_t word4(const uint8_t *p, int k) { return ((const uint32_t *)p)[k]; }

/* Bit 4 of each byte from the 4 bits of h (q5 formats' high bits). */
__device__ __forceinline__ uint32_t spread4(uint32_t h)
{
    return ((h & 1u) << 4) | ((h & 2u) << 11) | ((h & 4u) << 18) | ((h & 8u) << 25);
}

__device__ __forceinline__ void store8(int8_t *q, const uint32_t (&v)[8])
{
    uint32_t *qw = (uint32_t *)q;
#pragma unroll
    for (int k = 0; k < 8; k++)
        qw[k] = v[k];
}

/* Bytes j of the 16 nibble bytes: elements j (low nibble), j + 16 (high). */
__device__ __forceinline__ void nibbles(const uint32_t (&w)[4], uint32_t (&v)[8])
{
#pragma unroll
    for (int k = 0; k < 4; k++) {
        v[k] = w[k] & 0x0F0F0F0Fu;
        v[4 + k] = (w[k] >> 4) & 0x0F0F0F0Fu;
    }
}

template <>
__device__ void load_w<CM_TYPE_Q4_0>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q4_0 *b = (const block_q4_0 *)row + s;
    uint32_t w[4], v[8];
#pragma unroll
    for (int k = 0; k < 4; k++)
        w[k] = word2(b->qs, k);
    const float d = qd_f16(b->d);
    nibbles(w, v);
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = __vsub4(v[k], 0x08080808u);
    store8(q, v);
    wd[0] = wd[1] = d;
    wm[0] = wm[1] = 0.0f;
}

template <>
__device__ void load_w<CM_TYPE_Q4_1>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q4_1 *b = (const block_q4_1 *)row + s; /* (4-aligned) */
    uint32_t w[4], v[8];
#pragma unroll
    for (int k = 0; k < 4; k++)
        w[k] = word4(b->qs, k);
    const float d = qd_f16(b->d), m = qd_f16(b->m);
    nibbles(w, v);
    store8(q, v);
    wd[0] = wd[1] = d;
    wm[0] = m, wm[1] = 0.0f; /* times q8_1's s: the whole block */
}

/* q5_0 / q5_1 levels 0..31 from the nibbles and the 32 high bits */
__device__ __forceinline__ void q5_levels(const uint32_t (&w)[4], uint32_t qh, uint32_t (&v)[8])
{
    nibbles(w, v);
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] |= spread4((qh >> (4 * k)) & 0xFu);
}

template <>
__device__ void load_w<CM_TYPE_Q5_0>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q5_0 *b = (const block_q5_0 *)row + s;
    uint32_t w[4], v[8];
#pragma unroll
    for (int k = 0; k < 4; k++)
        w[k] = word2(b->qs, k);
    const uint32_t qh = word2(b->qh, 0);
    const float d = qd_f16(b->d);
    q5_levels(w, qh, v);
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = __vsub4(v[k], 0x10101010u);
    store8(q, v);
    wd[0] = wd[1] = d;
    wm[0] = wm[1] = 0.0f;
}

template <>
__device__ void load_w<CM_TYPE_Q5_1>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q5_1 *b = (const block_q5_1 *)row + s; /* (4-aligned) */
    uint32_t w[4], v[8];
#pragma unroll
    for (int k = 0; k < 4; k++)
        w[k] = word4(b->qs, k);
    const uint32_t qh = word4(b->qh, 0);
    const float d = qd_f16(b->d), m = qd_f16(b->m);
    q5_levels(w, qh, v);
    store8(q, v);
    wd[0] = wd[1] = d;
    wm[0] = m, wm[1] = 0.0f;
}

template <>
__device__ void load_w<CM_TYPE_Q8_0>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q8_0 *b = (const block_q8_0 *)row + s;
    uint32_t v[8];
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = word2((const uint8_t *)b->qs, k);
    const float d = qd_f16(b->d);
    store8(q, v);
    wd[0] = wd[1] = d;
    wm[0] = wm[1] = 0.0f;
}

/* K-quants: step s is 32 columns (j = s % 8) of a 256-column super-block */
template <>
__device__ void load_w<CM_TYPE_Q2_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q2_K *b = (const block_q2_K *)row + s / 8; /* (4-aligned) */
    const int j = s % 8;
    uint32_t v[8]; /* element 32j + i: bits 2 (j % 4) of qs[32 (j / 4) + i] */
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = word4(b->qs + 32 * (j >> 2), k);
    const int sc0 = b->scales[2 * j], sc1 = b->scales[2 * j + 1];
    const float d = qd_f16(b->d), dmin = qd_f16(b->dmin);
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = (v[k] >> (2 * (j & 3))) & 0x03030303u;
    store8(q, v);
    wd[0] = d * (float)(sc0 & 0xF), wd[1] = d * (float)(sc1 & 0xF);
    wm[0] = -(dmin * (float)(sc0 >> 4)), wm[1] = -(dmin * (float)(sc1 >> 4));
}

template <>
__device__ void load_w<CM_TYPE_Q3_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q3_K *b = (const block_q3_K *)row + s / 8;
    const int j = s % 8;
    uint32_t v[8], hm[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
        v[k] = word2(b->qs + 32 * (j >> 2), k);
        hm[k] = word2(b->hmask, k); /* element 32j + i: bit j of hmask[i] */
    }
    int sc[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int jj = 2 * j + h;
        const int lo = (b->scales[jj & 7] >> (4 * (jj >> 3))) & 0xF;
        const int hi = (b->scales[8 + (jj & 3)] >> (2 * (jj >> 2))) & 3;
        sc[h] = (lo | (hi << 4)) - 32;
    }
    const float d = qd_f16(b->d);
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = __vsub4(((v[k] >> (2 * (j & 3))) & 0x03030303u) | (((hm[k] >> j) & 0x01010101u) << 2),
                       0x04040404u);
    store8(q, v);
    wd[0] = d * (float)sc[0], wd[1] = d * (float)sc[1];
    wm[0] = wm[1] = 0.0f;
}

template <>
__device__ void load_w<CM_TYPE_Q4_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q4_K *b = (const block_q4_K *)row + s / 8; /* (4-aligned) */
    const int j = s % 8;
    uint32_t v[8];
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = word4(b->qs + 32 * (j >> 1), k);
    int sc, m;
    qd_k4_scale_min(b->scales, j, &sc, &m);
    const float d = qd_f16(b->d), dmin = qd_f16(b->dmin);
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = (v[k] >> (4 * (j & 1))) & 0x0F0F0F0Fu;
    store8(q, v);
    wd[0] = wd[1] = d * (float)sc;
    wm[0] = wm[1] = -(dmin * (float)m);
}

template <>
__device__ void load_w<CM_TYPE_Q5_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q5_K *b = (const block_q5_K *)row + s / 8; /* (4-aligned) */
    const int j = s % 8;
    uint32_t v[8], hb[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
        v[k] = word4(b->qs + 32 * (j >> 1), k);
        hb[k] = word4(b->qh, k); /* element 32j + i: bit j of qh[i] */
    }
    int sc, m;
    qd_k4_scale_min(b->scales, j, &sc, &m);
    const float d = qd_f16(b->d), dmin = qd_f16(b->dmin);
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = ((v[k] >> (4 * (j & 1))) & 0x0F0F0F0Fu) | (((hb[k] >> j) & 0x01010101u) << 4);
    store8(q, v);
    wd[0] = wd[1] = d * (float)sc;
    wm[0] = wm[1] = -(dmin * (float)m);
}

template <>
__device__ void load_w<CM_TYPE_Q6_K>(const char *row, int s, int8_t *q, float wd[2], float wm[2])
{
    const block_q6_K *b = (const block_q6_K *)row + s / 8;
    const int e0 = (s % 8) * 32, c = e0 >> 7, k = (e0 >> 5) & 3;
    uint32_t lo[8], hi[8];
#pragma unroll
    for (int w = 0; w < 8; w++) {
        lo[w] = word2(b->ql + 64 * c + 32 * (k & 1), w);
        hi[w] = word2(b->qh + 32 * c, w);
    }
    const int sc0 = b->scales[e0 / 16], sc1 = b->scales[e0 / 16 + 1];
    const float d = qd_f16(b->d);
#pragma unroll
    for (int w = 0; w < 8; w++)
        lo[w] = __vsub4(((lo[w] >> (4 * (k >> 1))) & 0x0F0F0F0Fu) |
                            (((hi[w] >> (2 * k)) & 0x03030303u) << 4),
                        0x20202020u);
    store8(q, lo);
    wd[0] = d * (float)sc0, wd[1] = d * (float)sc1;
    wm[0] = wm[1] = 0.0f;
}

/* ------------------------------------------------------------ activations */

/* Step s of an activation row in dot type D: int8 values, scale, the sums
 * the weight min terms multiply (loads first, as for the weights). */
template <enum cm_type D>
__device__ void load_x(const char *row, int s, int8_t *q, float *xd, float xm[2])
{
    uint32_t v[8];
    if constexpr (D == CM_TYPE_Q8_K) {
        const block_q8_K *b = (const block_q8_K *)row + s / 8; /* (4-aligned) */
        const int j = s % 8;
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = word4((const uint8_t *)b->qs + 32 * j, k);
        const float d = b->d;
        const int s0 = b->bsums[2 * j], s1 = b->bsums[2 * j + 1];
        store8(q, v);
        *xd = d;
        xm[0] = d * (float)s0;
        xm[1] = d * (float)s1;
    } else if constexpr (D == CM_TYPE_Q8_1) {
        const block_q8_1 *b = (const block_q8_1 *)row + s; /* (4-aligned) */
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = word4((const uint8_t *)b->qs, k);
        const float d = qd_f16(b->d), sum = qd_f16(b->s);
        store8(q, v);
        *xd = d;
        xm[0] = sum, xm[1] = 0.0f;
    } else {
        const block_q8_0 *b = (const block_q8_0 *)row + s;
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = word2((const uint8_t *)b->qs, k);
        const float d = qd_f16(b->d);
        store8(q, v);
        *xd = d;
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

/* One launch's weights (sharing x) and how the columns are split. */
struct mmq_args {
    struct part {
        const char *w;
        size_t wrow;
        const float *bias;
        float *y;
        int rows, blk0; /* blk0: the first row block that is this part's */
        size_t poff;    /* where its partial sums start in a split's share */
    } p[MMQ_PARTS];
    int np;
    const char *x;
    size_t xrow;
    int cols, n;
    int split_steps;    /* steps per split (blockIdx.z) */
    float *partial;     /* [split][sum of n x rows]; NULL: no split */
    size_t split_floats;
};

/* Unpacks stage k0 (steps k0 .. k0 + KS - 1; k_end: the split's end) of
 * the block's rows and tokens. */
template <enum cm_type T, enum cm_type D>
__device__ void load_stage(tile &sm, const mmq_args &a, const mmq_args::part &P, int r0, int t0,
                           int k0, int k_end)
{
    for (int it = threadIdx.x; it < BM * KS; it += THREADS) {
        const int r = it / KS, ks = it % KS, s = k0 + ks;
        int8_t *q = &sm.a[r][ks * 32];
        float wd[2] = {0.0f, 0.0f}, wm[2] = {0.0f, 0.0f};
        if (r0 + r < P.rows && s < k_end)
            load_w<T>(P.w + (size_t)(r0 + r) * P.wrow, s, q, wd, wm);
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
        if (t0 + t < a.n && s < k_end)
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
__global__ void __launch_bounds__(THREADS) mmq(mmq_args a)
{
    constexpr bool SPLIT = split_halves<T>(), MINS = has_mins<T>();
    extern __shared__ char smem_raw[];
    tile &sm = *(tile *)smem_raw;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tg = lane % 4;
    int pi = 0;
    while (pi + 1 < a.np && (int)blockIdx.x >= a.p[pi + 1].blk0)
        pi++;
    const mmq_args::part &P = a.p[pi];
    const int r0 = ((int)blockIdx.x - P.blk0) * BM, t0 = blockIdx.y * BN, wr = warp * 16;
    const int nsteps = a.cols / 32, k_begin = (int)blockIdx.z * a.split_steps;
    const int k_end = k_begin + a.split_steps < nsteps ? k_begin + a.split_steps : nsteps;
    float acc[BN / 8][4] = {};
    for (int k0 = k_begin; k0 < k_end; k0 += KS) {
        load_stage<T, D>(sm, a, P, r0, t0, k0, k_end);
        __syncthreads();
        for (int ks = 0; ks < KS && k0 + ks < k_end; ks++) {
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
    float *partial = a.partial ? a.partial + blockIdx.z * a.split_floats + P.poff : NULL;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = r0 + wr + g + 8 * (i / 2), t = t0 + nt * 8 + 2 * tg + i % 2;
            if (r >= P.rows || t >= a.n)
                continue;
            if (partial)
                partial[(size_t)t * P.rows + r] = acc[nt][i];
            else
                P.y[(size_t)t * P.rows + r] = acc[nt][i] + (P.bias ? P.bias[r] : 0.0f);
        }
}

/* y = bias + the splits' partial sums, added in split order. */
__global__ void add_splits(mmq_args a, int n_split)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int pi = 0;
    while (pi + 1 < a.np && i >= a.p[pi + 1].poff)
        pi++;
    const mmq_args::part &P = a.p[pi];
    const size_t e = i - P.poff;
    if (e >= (size_t)a.n * P.rows)
        return;
    float v = 0.0f;
    for (int z = 0; z < n_split; z++)
        v += a.partial[z * a.split_floats + i];
    P.y[e] = v + (P.bias ? P.bias[e % P.rows] : 0.0f);
}

static_assert(sizeof(tile) <= 48 * 1024, "a tile fits the default shared memory");

template <enum cm_type T, enum cm_type D>
void launch(cudaStream_t s, const mmq_args &a, dim3 grid)
{
    mmq<T, D><<<grid, THREADS, sizeof(tile), s>>>(a);
}

/* Splits of the columns for a grid of `blocks` (1: none): enough blocks
 * for two per multiprocessor, two stages per split at least, partial sums
 * that fit the scratch. */
int choose_splits(const cuda_state *st, long blocks, int nsteps, size_t floats)
{
    const long want = 2L * (st->sm_count > 0 ? st->sm_count : 1);
    if (blocks >= want || !st->split_scratch)
        return 1;
    int n_split = (int)((want + blocks - 1) / blocks);
    const int stages = (nsteps + KS - 1) / KS;
    if (n_split > stages / 2)
        n_split = stages / 2;
    if (n_split > 8)
        n_split = 8;
    while (n_split > 1 && (size_t)n_split * floats > st->split_floats)
        n_split--;
    return n_split > 1 ? n_split : 1;
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

bool cuda_mmq(cuda_state *st, enum cm_type t, const mm_args *parts, int np)
{
    if (!st->mmq || np < 1 || np > MMQ_PARTS)
        return false;
    mmq_args a;
    a.np = np;
    a.x = parts[0].x;
    a.xrow = parts[0].xrow;
    a.cols = parts[0].cols;
    a.n = parts[0].n;
    unsigned blocks = 0;
    size_t floats = 0;
    for (int i = 0; i < np; i++) {
        a.p[i] = {parts[i].w, parts[i].wrow, parts[i].bias, parts[i].y, parts[i].rows,
                  (int)blocks, floats};
        blocks += blocks_for(parts[i].rows, BM);
        floats += (size_t)a.n * parts[i].rows;
    }
    const int nsteps = a.cols / 32;
    const unsigned by = blocks_for(a.n, BN);
    const int n_split = choose_splits(st, (long)blocks * by, nsteps, floats);
    const int per = (nsteps + n_split - 1) / n_split;
    a.split_steps = (per + KS - 1) / KS * KS;
    const int splits = (nsteps + a.split_steps - 1) / a.split_steps;
    a.partial = splits > 1 ? st->split_scratch : NULL;
    a.split_floats = floats;
    const dim3 grid(blocks, by, (unsigned)splits);
    cudaStream_t s = st->stream;
    switch (t) {
    case CM_TYPE_Q4_0: launch<CM_TYPE_Q4_0, CM_TYPE_Q8_0>(s, a, grid); break;
    case CM_TYPE_Q4_1: launch<CM_TYPE_Q4_1, CM_TYPE_Q8_1>(s, a, grid); break;
    case CM_TYPE_Q5_0: launch<CM_TYPE_Q5_0, CM_TYPE_Q8_0>(s, a, grid); break;
    case CM_TYPE_Q5_1: launch<CM_TYPE_Q5_1, CM_TYPE_Q8_1>(s, a, grid); break;
    case CM_TYPE_Q8_0: launch<CM_TYPE_Q8_0, CM_TYPE_Q8_0>(s, a, grid); break;
    case CM_TYPE_Q2_K: launch<CM_TYPE_Q2_K, CM_TYPE_Q8_K>(s, a, grid); break;
    case CM_TYPE_Q3_K: launch<CM_TYPE_Q3_K, CM_TYPE_Q8_K>(s, a, grid); break;
    case CM_TYPE_Q4_K: launch<CM_TYPE_Q4_K, CM_TYPE_Q8_K>(s, a, grid); break;
    case CM_TYPE_Q5_K: launch<CM_TYPE_Q5_K, CM_TYPE_Q8_K>(s, a, grid); break;
    case CM_TYPE_Q6_K: launch<CM_TYPE_Q6_K, CM_TYPE_Q8_K>(s, a, grid); break;
    default: return false;
    }
    cuda_check(cudaGetLastError(), "mmq");
    if (splits > 1) {
        add_splits<<<blocks_for((long)floats, 256), 256, 0, s>>>(a, splits);
        cuda_check(cudaGetLastError(), "mmq (splits)");
    }
    return true;
}
