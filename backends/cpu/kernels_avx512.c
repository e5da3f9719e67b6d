/* kernels_avx512.c - AVX-512 (F, BW, VL) kernels, with VNNI where present.
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx2 -mfma
 * -mf16c; without them this file builds to a stub that declines.  Installed
 * on top of the AVX2 table, so types without a kernel here keep AVX2's.
 *
 * Each kernel body is an always-inline function taking a constant `vnni`
 * flag and is instantiated twice: with VNNI the u8*s8 products accumulate
 * with vpdpbusd / vpdpwssd; without (Skylake-SP) the same sums come from
 * vpmaddubsw + vpmaddwd, which cannot saturate for the value ranges used
 * here (|u| <= 128 against |s| <= 127, or u <= 63).  Integer semantics as
 * in quant/ref_*.c; Q8_0 activation quants are in -127..127 (the sign trick
 * negates them), Q8_K ones only meet unsigned weight levels. */
#include "backends/cpu/kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__AVX2__) && defined(__FMA__) &&       \
    defined(__F16C__)

#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "backends/cpu/avx512_common.h"
#include "quant/blocks.h"

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")
#define F16(h) _cvtsh_ss(h)

/* acc + sums of 4 adjacent u8*s8 products per int32 lane */
INLINE __m512i dpbusd(__m512i acc, __m512i u, __m512i s, const int vnni)
{
    if (vnni)
        return _mm512_dpbusd_epi32(acc, u, s);
    __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
    return _mm512_add_epi32(acc, p);
}

/* acc + sums of 2 adjacent s16*s16 products per int32 lane */
INLINE __m512i dpwssd(__m512i acc, __m512i a, __m512i b, const int vnni)
{
    if (vnni)
        return _mm512_dpwssd_epi32(acc, a, b);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
}

/* w * a for signed bytes as |w| * (a with w's sign); a never -128. */
INLINE __m512i dot_ss(__m512i w, __m512i a, const int vnni)
{
    __mmask64 neg = _mm512_movepi8_mask(w);
    __m512i sa = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
    return dpbusd(_mm512_setzero_si512(), _mm512_abs_epi8(w), sa, vnni);
}

/* Two 32-byte runs (two blocks' quants) in one register. */
INLINE __m512i load2x256(const void *p0, const void *p1)
{
    __m256i lo = _mm256_loadu_si256((const __m256i *)p0);
    __m256i hi = _mm256_loadu_si256((const __m256i *)p1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* Lanes 0-7 = d0, lanes 8-15 = d1: the per-block scales of a 2-block dot. */
INLINE __m512 scales2(float d0, float d1)
{
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
}

/* The four horizontal sums of a, b, c, d in lanes 0, 4, 8 and 12: one
 * shuffle tree for four keys instead of four reductions. */
INLINE __m512 hsum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    /* 128-bit lanes [a0 a1 b0 b1] + [a2 a3 b2 b3], likewise c, d */
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    /* [a b c d], each lane a quarter's partial sums */
    __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    u = _mm512_add_ps(u, _mm512_permute_ps(u, 0x4E));
    return _mm512_add_ps(u, _mm512_permute_ps(u, 0xB1));
}

/* ---- float weights ------------------------------------------------------ */

/* No F32 kernel: rows are rarely 64-byte aligned, and 512-bit loads that
 * split cache lines measured ~25% slower than AVX2's on this streaming,
 * memory-bound dot, so the AVX2 one stays installed. */

INLINE __m512 load_f16x16(const uint16_t *p, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

static float dot_f16(int64_t n, const void *w, const void *x)
{
    const uint16_t *a = w;
    const float *b = x;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(load_f16x16(a + i, 0xFFFF), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(load_f16x16(a + i + 16, 0xFFFF), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(load_f16x16(a + i + 32, 0xFFFF), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(load_f16x16(a + i + 48, 0xFFFF), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(load_f16x16(a + i, m), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/* ---- q8_0 / q4_0 against Q8_0: two blocks per register ----------------- */

/* The f16 scales of 8 consecutive blocks (`stride` bytes apart, d first)
 * as floats.  The halves are assembled in two general registers and
 * converted with one vcvtph2ps: per block that is a load, a shift and an
 * or on the integer ports, where one scalar conversion each took two
 * vector-port uops and a broadcast (the bulk of the per-block work).  A
 * 16-lane gather measured faster still on an Intel Xeon but 1.6x slower
 * on AMD Zen, whose gathers are slow. */
INLINE __m256 scales8(const void *p, size_t stride)
{
    uint64_t h[2] = {0, 0};
    UNROLL
    for (int k = 0; k < 8; k++) {
        uint16_t v;
        memcpy(&v, (const uint8_t *)p + k * stride, 2);
        h[k >> 2] |= (uint64_t)v << (16 * (k & 3));
    }
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)h[1], (long long)h[0]));
}

/* Lanes 0-7 = s[2p], lanes 8-15 = s[2p+1]: the scales of block pair p. */
INLINE __m512 pair_scales(__m256 s, int p)
{
    __m512i idx = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(2 * p),
                                          _mm512_set1_epi32(2 * p + 1));
    return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(s));
}

INLINE float dot_q8_0_k(int64_t n, const void *w, const void *x, const int vnni)
{
    const block_q8_0 *a = w, *b = x;
    const int64_t nb = n / QK8_0;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) {
        __m256 s = _mm256_mul_ps(scales8(a + i, sizeof *a), scales8(b + i, sizeof *b));
        UNROLL
        for (int p = 0; p < 4; p += 2) {
            const block_q8_0 *u = a + i + 2 * p, *v = b + i + 2 * p;
            __m512i p0 = dot_ss(load2x256(u[0].qs, u[1].qs), load2x256(v[0].qs, v[1].qs), vnni);
            __m512i p1 = dot_ss(load2x256(u[2].qs, u[3].qs), load2x256(v[2].qs, v[3].qs), vnni);
            acc0 = _mm512_fmadd_ps(pair_scales(s, p), _mm512_cvtepi32_ps(p0), acc0);
            acc1 = _mm512_fmadd_ps(pair_scales(s, p + 1), _mm512_cvtepi32_ps(p1), acc1);
        }
    }
    for (; i + 4 <= nb; i += 4) {
        __m512i p0 = dot_ss(load2x256(a[i].qs, a[i + 1].qs), load2x256(b[i].qs, b[i + 1].qs), vnni);
        __m512i p1 = dot_ss(load2x256(a[i + 2].qs, a[i + 3].qs),
                            load2x256(b[i + 2].qs, b[i + 3].qs), vnni);
        __m512 d0 = scales2(F16(a[i].d) * F16(b[i].d), F16(a[i + 1].d) * F16(b[i + 1].d));
        __m512 d1 = scales2(F16(a[i + 2].d) * F16(b[i + 2].d), F16(a[i + 3].d) * F16(b[i + 3].d));
        acc0 = _mm512_fmadd_ps(d0, _mm512_cvtepi32_ps(p0), acc0);
        acc1 = _mm512_fmadd_ps(d1, _mm512_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) { /* tail blocks in the low half, high half zero */
        __m512i wq = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)a[i].qs));
        __m512i xq = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)b[i].qs));
        __m512 d = scales2(F16(a[i].d) * F16(b[i].d), 0);
        acc0 = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_ss(wq, xq, vnni)), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* q8_0 generation, four rows per call (cm_gemv with the activation used
 * as it is): the activation's scales are converted once per group for the
 * four rows, and the rows' sums reduced by one shuffle tree. */
static size_t q8_0_gemv_bytes(int64_t cols)
{
    return (size_t)(cols / QK8_0) * sizeof(block_q8_0);
}

static void q8_0_gemv_pack(int64_t cols, const void *xq, void *dst)
{
    memcpy(dst, xq, q8_0_gemv_bytes(cols));
}

INLINE void gemv4_q8_0_k(int64_t n, const void *w, size_t wrow, const void *xv, float *out,
                         const int vnni)
{
    const block_q8_0 *a[4], *b = xv;
    for (int r = 0; r < 4; r++)
        a[r] = (const block_q8_0 *)((const char *)w + (size_t)r * wrow);
    const int64_t nb = n / QK8_0;
    __m512 acc[4][2];
    for (int r = 0; r < 4; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) {
        const __m256 sx = scales8(b + i, sizeof *b);
        UNROLL
        for (int r = 0; r < 4; r++) {
            __m256 s = _mm256_mul_ps(scales8(a[r] + i, sizeof(block_q8_0)), sx);
            UNROLL
            for (int p = 0; p < 4; p += 2) {
                const block_q8_0 *u = a[r] + i + 2 * p, *v = b + i + 2 * p;
                __m512i p0 = dot_ss(load2x256(u[0].qs, u[1].qs), load2x256(v[0].qs, v[1].qs), vnni);
                __m512i p1 = dot_ss(load2x256(u[2].qs, u[3].qs), load2x256(v[2].qs, v[3].qs), vnni);
                acc[r][0] = _mm512_fmadd_ps(pair_scales(s, p), _mm512_cvtepi32_ps(p0), acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(pair_scales(s, p + 1), _mm512_cvtepi32_ps(p1), acc[r][1]);
            }
        }
    }
    __m512 sum[4];
    for (int r = 0; r < 4; r++) {
        for (int64_t j = i; j < nb; j++) { /* tail blocks in the low half, high half zero */
            __m512i wq = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)a[r][j].qs));
            __m512i xq = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)b[j].qs));
            __m512 d = scales2(F16(a[r][j].d) * F16(b[j].d), 0);
            acc[r][0] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_ss(wq, xq, vnni)), acc[r][0]);
        }
        sum[r] = _mm512_add_ps(acc[r][0], acc[r][1]);
    }
    __m512 h = hsum4(sum[0], sum[1], sum[2], sum[3]);
    _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, h)));
}

/* Two q4_0 blocks' 32 nibble bytes as 64 levels 0..15 in element order:
 * [lo(b0) hi(b0) lo(b1) hi(b1)], 16 bytes each. */
INLINE __m512i nibbles2(const uint8_t *q0, const uint8_t *q1)
{
    __m128i a = _mm_loadu_si128((const __m128i *)q0);
    __m128i b = _mm_loadu_si128((const __m128i *)q1);
    __m512i v = _mm512_castsi256_si512(_mm256_set_m128i(b, a));
    v = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), v);
    v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
}

/* sum (q - 8) * a = sum q * a - 8 * sum a: both straight u8 * s8 dots. */
INLINE __m512i dot_q4(__m512i q, __m512i a, const int vnni)
{
    __m512i z = _mm512_setzero_si512();
    return _mm512_sub_epi32(dpbusd(z, q, a, vnni), dpbusd(z, _mm512_set1_epi8(8), a, vnni));
}

INLINE float dot_q4_0_k(int64_t n, const void *w, const void *x, const int vnni)
{
    const block_q4_0 *a = w;
    const block_q8_0 *b = x;
    const int64_t nb = n / QK4_0;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) {
        __m256 s = _mm256_mul_ps(scales8(a + i, sizeof *a), scales8(b + i, sizeof *b));
        UNROLL
        for (int p = 0; p < 4; p += 2) {
            const block_q4_0 *u = a + i + 2 * p;
            const block_q8_0 *v = b + i + 2 * p;
            __m512i p0 = dot_q4(nibbles2(u[0].qs, u[1].qs), load2x256(v[0].qs, v[1].qs), vnni);
            __m512i p1 = dot_q4(nibbles2(u[2].qs, u[3].qs), load2x256(v[2].qs, v[3].qs), vnni);
            acc0 = _mm512_fmadd_ps(pair_scales(s, p), _mm512_cvtepi32_ps(p0), acc0);
            acc1 = _mm512_fmadd_ps(pair_scales(s, p + 1), _mm512_cvtepi32_ps(p1), acc1);
        }
    }
    for (; i + 4 <= nb; i += 4) {
        __m512i p0 = dot_q4(nibbles2(a[i].qs, a[i + 1].qs), load2x256(b[i].qs, b[i + 1].qs), vnni);
        __m512i p1 = dot_q4(nibbles2(a[i + 2].qs, a[i + 3].qs),
                            load2x256(b[i + 2].qs, b[i + 3].qs), vnni);
        __m512 d0 = scales2(F16(a[i].d) * F16(b[i].d), F16(a[i + 1].d) * F16(b[i + 1].d));
        __m512 d1 = scales2(F16(a[i + 2].d) * F16(b[i + 2].d), F16(a[i + 3].d) * F16(b[i + 3].d));
        acc0 = _mm512_fmadd_ps(d0, _mm512_cvtepi32_ps(p0), acc0);
        acc1 = _mm512_fmadd_ps(d1, _mm512_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) { /* tail: the block twice, the copy scaled by 0 */
        __m512i p = dot_q4(nibbles2(a[i].qs, a[i].qs), load2x256(b[i].qs, b[i].qs), vnni);
        acc0 = _mm512_fmadd_ps(scales2(F16(a[i].d) * F16(b[i].d), 0), _mm512_cvtepi32_ps(p), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* ---- q4_0 matrix-vector: the activation arranged like the weights -------
 *
 * A q4_0 block keeps element j in the low nibble of byte j and element j+16
 * in the high one.  Instead of reordering every weight row's nibbles (a
 * permute and a shift per block pair, per row), the activation, which
 * every row shares, is rearranged once: for each group of 8 blocks, per
 * half (4 blocks, one 128-bit lane each) 64 bytes of the blocks' elements
 * 0-15 then 64 bytes of elements 16-31, so `bytes & 15` and `bytes >> 4`
 * line up with them directly.  The weights' offset of 8 becomes one term
 * per block, -8 * d * sum(x quants), precomputed here and folded in with a
 * multiply-add per 8 blocks instead of a second integer dot.  Blocks past
 * the row's end are zero (quants, scale and term). */
typedef struct {
    int8_t q[2][2][64]; /* [half][low/high elements][lane = block] */
    float d[8];         /* the activation blocks' scales */
    float c[8];         /* -8 * d * sum of the block's quants */
} q4_0_xgroup;
_Static_assert(sizeof(q4_0_xgroup) == 320, "q4_0_xgroup layout");

static size_t q4_0_gemv_bytes(int64_t cols)
{
    return (size_t)((cols / QK4_0 + 7) / 8) * sizeof(q4_0_xgroup);
}

static void q4_0_gemv_pack(int64_t cols, const void *xq, void *dst)
{
    const block_q8_0 *x = xq;
    const int64_t nb = cols / QK4_0;
    q4_0_xgroup *g = dst;
    memset(g, 0, q4_0_gemv_bytes(cols));
    for (int64_t i = 0; i < nb; i++) {
        q4_0_xgroup *gi = g + i / 8;
        const int b = (int)(i % 8), h = b / 4, lane = b % 4;
        memcpy(gi->q[h][0] + 16 * lane, x[i].qs, 16);
        memcpy(gi->q[h][1] + 16 * lane, x[i].qs + 16, 16);
        int sum = 0;
        for (int j = 0; j < QK8_0; j++)
            sum += x[i].qs[j];
        gi->d[b] = F16(x[i].d);
        gi->c[b] = -8.0f * gi->d[b] * (float)sum;
    }
}

/* The quants of 4 consecutive q4_0 blocks, one per 128-bit lane. */
INLINE __m512i q4_0_lanes4(const block_q4_0 *u)
{
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)u[0].qs));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)u[1].qs), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)u[2].qs), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)u[3].qs), 3);
}

/* Per int32 lane: sums of level * x over 4 blocks' nibbles (lane group k:
 * block k), levels 0..15 unsigned. */
INLINE __m512i q4_0_half(__m512i v, const int8_t (*x)[64], const int vnni)
{
    const __m512i m = _mm512_set1_epi8(0x0F);
    __m512i p = dpbusd(_mm512_setzero_si512(), _mm512_and_si512(v, m),
                       _mm512_loadu_si512(x[0]), vnni);
    return dpbusd(p, _mm512_and_si512(_mm512_srli_epi16(v, 4), m), _mm512_loadu_si512(x[1]),
                  vnni);
}

/* The last 1-4 blocks of a row (k of them; half h of the last group): the
 * lanes past the row stay zero, so no load reads past it.  Scales are
 * assembled in a general register as in scales8 (a store and a vector
 * reload would stall store forwarding, on every row). */
INLINE __m512 q4_0_tail(const block_q4_0 *u, int k, const q4_0_xgroup *g, int h, __m512 acc,
                        __m128 *corr, const int vnni)
{
    const __m512i lo4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    uint64_t hs = 0;
    for (int j = 0; j < k; j++) {
        uint16_t v;
        memcpy(&v, &u[j].d, 2);
        hs |= (uint64_t)v << (16 * j);
    }
    __m128 dw = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)hs));
    *corr = _mm_fmadd_ps(dw, _mm_loadu_ps(g->c + 4 * h), *corr);
    __m128 s = _mm_mul_ps(dw, _mm_loadu_ps(g->d + 4 * h));
    __m512i v = _mm512_zextsi128_si512(_mm_loadu_si128((const __m128i *)u[0].qs));
    if (k > 1)
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)u[1].qs), 1);
    if (k > 2)
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)u[2].qs), 2);
    if (k > 3)
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)u[3].qs), 3);
    __m512 sc = _mm512_permutexvar_ps(lo4, _mm512_castps128_ps512(s));
    return _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(q4_0_half(v, g->q[h], vnni)), acc);
}

INLINE float gemv_q4_0_k(int64_t n, const void *w, const void *xp, const int vnni)
{
    const block_q4_0 *a = w;
    const q4_0_xgroup *g = xp;
    const int64_t nb = n / QK4_0;
    const __m512i lo4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i hi4 = _mm512_add_epi32(lo4, _mm512_set1_epi32(4));
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    __m256 corr = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8, g++) {
        __m256 sw = scales8(a + i, sizeof *a);
        __m512 s = _mm512_castps256_ps512(_mm256_mul_ps(sw, _mm256_loadu_ps(g->d)));
        corr = _mm256_fmadd_ps(sw, _mm256_loadu_ps(g->c), corr);
        __m512i p0 = q4_0_half(q4_0_lanes4(a + i), g->q[0], vnni);
        __m512i p1 = q4_0_half(q4_0_lanes4(a + i + 4), g->q[1], vnni);
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(lo4, s), _mm512_cvtepi32_ps(p0), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(hi4, s), _mm512_cvtepi32_ps(p1), acc1);
    }
    __m128 tail_corr = _mm_setzero_ps();
    for (int h = 0; i < nb; i += 4, h++) { /* 1-7 blocks left, in halves */
        const int k = nb - i < 4 ? (int)(nb - i) : 4;
        acc0 = q4_0_tail(a + i, k, g, h, acc0, &tail_corr, vnni);
    }
    corr = _mm256_add_ps(corr, _mm256_zextps128_ps256(tail_corr));
    __m256 c = _mm256_add_ps(corr, _mm256_permute2f128_ps(corr, corr, 1));
    c = _mm256_hadd_ps(c, c);
    c = _mm256_hadd_ps(c, c);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + _mm256_cvtss_f32(c);
}

/* Four rows of q4_0 against one packed activation: the group's scales and
 * terms are loaded once, and the four rows' sums reduced by one shuffle
 * tree (hsum4).  For rows of a few hundred columns the per-row setup and
 * reduction cost as much as the blocks. */
INLINE void gemv4_q4_0_k(int64_t n, const void *w, size_t wrow, const void *xp, float *out,
                         const int vnni)
{
    const block_q4_0 *a[4];
    for (int r = 0; r < 4; r++)
        a[r] = (const block_q4_0 *)((const char *)w + (size_t)r * wrow);
    const q4_0_xgroup *g = xp;
    const int64_t nb = n / QK4_0;
    const __m512i lo4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i hi4 = _mm512_add_epi32(lo4, _mm512_set1_epi32(4));
    __m512 acc[4][2];
    __m256 corr[4];
    for (int r = 0; r < 4; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps(), corr[r] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8, g++) {
        const __m256 dx = _mm256_loadu_ps(g->d), cx = _mm256_loadu_ps(g->c);
        UNROLL
        for (int r = 0; r < 4; r++) {
            __m256 sw = scales8(a[r] + i, sizeof(block_q4_0));
            __m512 sc = _mm512_castps256_ps512(_mm256_mul_ps(sw, dx));
            corr[r] = _mm256_fmadd_ps(sw, cx, corr[r]);
            __m512i p0 = q4_0_half(q4_0_lanes4(a[r] + i), g->q[0], vnni);
            __m512i p1 = q4_0_half(q4_0_lanes4(a[r] + i + 4), g->q[1], vnni);
            acc[r][0] = _mm512_fmadd_ps(_mm512_permutexvar_ps(lo4, sc), _mm512_cvtepi32_ps(p0),
                                        acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(_mm512_permutexvar_ps(hi4, sc), _mm512_cvtepi32_ps(p1),
                                        acc[r][1]);
        }
    }
    __m512 sum[4];
    for (int r = 0; r < 4; r++) {
        __m128 tail_corr = _mm_setzero_ps();
        int64_t j = i;
        for (int h = 0; j < nb; j += 4, h++) {
            const int k = nb - j < 4 ? (int)(nb - j) : 4;
            acc[r][0] = q4_0_tail(a[r] + j, k, g, h, acc[r][0], &tail_corr, vnni);
        }
        __m256 c = _mm256_add_ps(corr[r], _mm256_zextps128_ps256(tail_corr));
        sum[r] = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_zextps256_ps512(c));
    }
    __m512 h = hsum4(sum[0], sum[1], sum[2], sum[3]);
    _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, h)));
}

/* q5_0: the q4_0 kernel with bit 4 of each level from qh (two blocks' 32
 * bits make the 64-bit byte mask, in the order nibbles2() produces) and
 * the offset 16: sum (q - 16) * a = sum q * a - 16 * sum a, |q| <= 31. */
INLINE __m512i levels2_q5(const block_q5_0 *u)
{
    uint32_t h0, h1;
    memcpy(&h0, u[0].qh, 4);
    memcpy(&h1, u[1].qh, 4);
    __m512i hb = _mm512_maskz_mov_epi8(((__mmask64)h1 << 32) | h0, _mm512_set1_epi8(0x10));
    return _mm512_or_si512(nibbles2(u[0].qs, u[1].qs), hb);
}

INLINE __m512i dot_q5(__m512i q, __m512i a, const int vnni)
{
    __m512i z = _mm512_setzero_si512();
    return _mm512_sub_epi32(dpbusd(z, q, a, vnni), dpbusd(z, _mm512_set1_epi8(16), a, vnni));
}

INLINE float dot_q5_0_k(int64_t n, const void *w, const void *x, const int vnni)
{
    const block_q5_0 *a = w;
    const block_q8_0 *b = x;
    const int64_t nb = n / QK5_0;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) {
        __m256 s = _mm256_mul_ps(scales8(a + i, sizeof *a), scales8(b + i, sizeof *b));
        UNROLL
        for (int p = 0; p < 4; p += 2) {
            const block_q5_0 *u = a + i + 2 * p;
            const block_q8_0 *v = b + i + 2 * p;
            __m512i p0 = dot_q5(levels2_q5(u), load2x256(v[0].qs, v[1].qs), vnni);
            __m512i p1 = dot_q5(levels2_q5(u + 2), load2x256(v[2].qs, v[3].qs), vnni);
            acc0 = _mm512_fmadd_ps(pair_scales(s, p), _mm512_cvtepi32_ps(p0), acc0);
            acc1 = _mm512_fmadd_ps(pair_scales(s, p + 1), _mm512_cvtepi32_ps(p1), acc1);
        }
    }
    float tail = 0; /* < 8 blocks: scalar reference arithmetic, exact ints */
    for (; i < nb; i++) {
        uint32_t qh;
        memcpy(&qh, a[i].qh, 4);
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int lo = (a[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            int hi = (a[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            sum += (lo - 16) * b[i].qs[j] + (hi - 16) * b[i].qs[j + 16];
        }
        tail += (float)sum * (F16(a[i].d) * F16(b[i].d));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail;
}

/* ---- q5_0 generation on the q4_0 gemv's packed activation --------------
 * Same layout as q4_0 (levels j and j+16 share a byte), so the same packed
 * activation serves, with the fifth bits from qh and an offset of 16: the
 * per-block term is twice q4_0's -8 * d * sum. */

/* Levels of k <= 4 consecutive q5_0 blocks, one block per 128-bit lane
 * (missing lanes zero): elements 0-15 in *lo, 16-31 in *hi. */
INLINE void q5_0_levels(const block_q5_0 *u, int k, __m512i *lo, __m512i *hi)
{
    __m512i v = _mm512_zextsi128_si512(_mm_loadu_si128((const __m128i *)u[0].qs));
    if (k > 1)
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)u[1].qs), 1);
    if (k > 2)
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)u[2].qs), 2);
    if (k > 3)
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)u[3].qs), 3);
    uint64_t ml = 0, mh = 0;
    for (int j = 0; j < k; j++) {
        uint32_t qh;
        memcpy(&qh, u[j].qh, 4);
        ml |= (uint64_t)(qh & 0xFFFF) << (16 * j);
        mh |= (uint64_t)(qh >> 16) << (16 * j);
    }
    const __m512i m = _mm512_set1_epi8(0x0F), b4 = _mm512_set1_epi8(0x10);
    *lo = _mm512_or_si512(_mm512_and_si512(v, m), _mm512_maskz_mov_epi8(ml, b4));
    *hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 4), m), _mm512_maskz_mov_epi8(mh, b4));
}

/* acc + one half group (k blocks, half h of group g) of a q5_0 row; the
 * blocks' offset term goes to *corr.  Scales assembled in a general
 * register (see scales8). */
INLINE __m512 q5_0_part(const block_q5_0 *u, int k, const q4_0_xgroup *g, int h, __m512 acc,
                        __m128 *corr, const int vnni)
{
    const __m512i lo4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    uint64_t hs = 0;
    for (int j = 0; j < k; j++) {
        uint16_t v;
        memcpy(&v, &u[j].d, 2);
        hs |= (uint64_t)v << (16 * j);
    }
    __m128 dw = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)hs));
    __m128 c = _mm_loadu_ps(g->c + 4 * h);
    *corr = _mm_fmadd_ps(dw, _mm_add_ps(c, c), *corr);
    __m512 sc = _mm512_permutexvar_ps(lo4, _mm512_castps128_ps512(_mm_mul_ps(dw, _mm_loadu_ps(g->d + 4 * h))));
    __m512i lo, hi;
    q5_0_levels(u, k, &lo, &hi);
    __m512i p = dpbusd(dpbusd(_mm512_setzero_si512(), lo, _mm512_loadu_si512(g->q[h][0]), vnni), hi,
                       _mm512_loadu_si512(g->q[h][1]), vnni);
    return _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p), acc);
}

/* The sum of one q5_0 row (rows at w + r * wrow, r < nr <= 4) per lane
 * group, into out[r]. */
INLINE void gemv_q5_0_rows(int64_t n, const void *w, size_t wrow, int nr, const void *xp,
                           float *out, const int vnni)
{
    const int64_t nb = n / QK5_0;
    __m512 sum[4];
    for (int r = 0; r < nr; r++) {
        const block_q5_0 *a = (const block_q5_0 *)((const char *)w + (size_t)r * wrow);
        const q4_0_xgroup *g = xp;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
        __m128 corr = _mm_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= nb; i += 8, g++) {
            acc0 = q5_0_part(a + i, 4, g, 0, acc0, &corr, vnni);
            acc1 = q5_0_part(a + i + 4, 4, g, 1, acc1, &corr, vnni);
        }
        for (int h = 0; i < nb; i += 4, h++)
            acc0 = q5_0_part(a + i, nb - i < 4 ? (int)(nb - i) : 4, g, h, acc0, &corr, vnni);
        sum[r] = _mm512_add_ps(_mm512_add_ps(acc0, acc1),
                               _mm512_zextps128_ps512(corr));
    }
    if (nr == 4) {
        __m512 h = hsum4(sum[0], sum[1], sum[2], sum[3]);
        _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, h)));
    } else
        for (int r = 0; r < nr; r++)
            out[r] = _mm512_reduce_add_ps(sum[r]);
}

INLINE float gemv_q5_0_k(int64_t n, const void *w, const void *xp, const int vnni)
{
    float out;
    gemv_q5_0_rows(n, w, 0, 1, xp, &out, vnni);
    return out;
}

INLINE void gemv4_q5_0_k(int64_t n, const void *w, size_t wrow, const void *xp, float *out,
                         const int vnni)
{
    gemv_q5_0_rows(n, w, wrow, 4, xp, out, vnni);
}

/* ---- K-quants against Q8_K ---------------------------------------------- */

/* As kernels_avx2.c: the q4_K/q5_K 6-bit scales (bytes 0-7) and mins
 * (bytes 8-15), assembled in registers. */
INLINE __m128i k4_scales_mins(const uint8_t *s)
{
    uint32_t w[3];
    memcpy(w, s, 12);
    uint32_t t0 = w[0] & 0x3F3F3F3Fu;
    uint32_t t1 = (w[2] & 0x0F0F0F0Fu) | (((w[0] >> 6) & 0x03030303u) << 4);
    uint32_t t2 = w[1] & 0x3F3F3F3Fu;
    uint32_t t3 = ((w[2] >> 4) & 0x0F0F0F0Fu) | (((w[1] >> 6) & 0x03030303u) << 4);
    return _mm_setr_epi32((int)t0, (int)t1, (int)t2, (int)t3);
}

/* sum_j m[j] * (bsums[2j] + bsums[2j+1]) */
INLINE int k4_mins_dot(const int16_t *bsums, __m128i sm)
{
    __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bsums),
                                   _mm_loadu_si128((const __m128i *)(bsums + 8)));
    __m128i p = _mm_madd_epi16(pairs, _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8)));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0x4E));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0xB1));
    return _mm_cvtsi128_si32(p);
}

/* int16 lanes 0-15 = s16[2c], 16-31 = s16[2c+1] */
INLINE __m512i scales16x2(__m512i s16, int c)
{
    __m512i idx = _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16((short)(2 * c)),
                                          _mm512_set1_epi16((short)(2 * c + 1)));
    return _mm512_permutexvar_epi16(idx, s16);
}

/* One super-block of q4_K (qh == NULL) or q5_K: each 64-element chunk is
 * one register [low nibbles | high nibbles] = sub-blocks 2c and 2c+1. */
/* Chunk c of a q4_K/q5_K super-block: [low nibbles | high nibbles] (sub-
 * blocks 2c and 2c+1), bit 4 from *hb when qh is present, against 64
 * activation bytes, into acc. */
INLINE __m512i q45k_chunk(__m512i acc, const uint8_t *qs, int has_qh, __m512i *hb,
                          __m512i s16, const int8_t *y, int c, const int vnni)
{
    __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
    v = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
    if (has_qh) { /* 16-bit shifts: bits crossing bytes are masked off */
        __m512i h = _mm512_and_si512(*hb, _mm512_set1_epi8(1));
        v = _mm512_or_si512(v, _mm512_slli_epi16(h, 4));
        *hb = _mm512_srli_epi16(*hb, 2);
    }
    __m512i p = _mm512_maddubs_epi16(v, _mm512_loadu_si512(y + 64 * c));
    return dpwssd(acc, p, scales16x2(s16, c), vnni);
}

/* One super-block of q4_K (qh == NULL) or q5_K; two accumulators so the
 * dpwssd latency chains overlap. */
INLINE __m512i q45k_sumi(const uint8_t *qs, const uint8_t *qh, __m128i sm,
                         const int8_t *y, const int vnni)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, hb = a0;
    __m512i s16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm)); /* lanes >= 8 unused */
    if (qh) { /* [qh | qh >> 1]: bit 4 of the low/high halves, shifted per chunk */
        __m256i h = _mm256_loadu_si256((const __m256i *)qh);
        hb = _mm512_inserti64x4(_mm512_castsi256_si512(h), _mm256_srli_epi16(h, 1), 1);
    }
    a0 = q45k_chunk(a0, qs, qh != NULL, &hb, s16, y, 0, vnni);
    a1 = q45k_chunk(a1, qs, qh != NULL, &hb, s16, y, 1, vnni);
    a0 = q45k_chunk(a0, qs, qh != NULL, &hb, s16, y, 2, vnni);
    a1 = q45k_chunk(a1, qs, qh != NULL, &hb, s16, y, 3, vnni);
    return _mm512_add_epi32(a0, a1);
}

INLINE float dot_q4_K_k(int64_t n, const void *w, const void *x, const int vnni)
{
    const block_q4_K *a = w;
    const block_q8_K *y = x;
    __m512 acc = _mm512_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m128i sm = k4_scales_mins(a[i].scales);
        __m512i sumi = q45k_sumi(a[i].qs, NULL, sm, y[i].qs, vnni);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(F16(a[i].d) * y[i].d), _mm512_cvtepi32_ps(sumi), acc);
        mins += F16(a[i].dmin) * y[i].d * (float)k4_mins_dot(y[i].bsums, sm);
    }
    return _mm512_reduce_add_ps(acc) - mins;
}

INLINE float dot_q5_K_k(int64_t n, const void *w, const void *x, const int vnni)
{
    const block_q5_K *a = w;
    const block_q8_K *y = x;
    __m512 acc = _mm512_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m128i sm = k4_scales_mins(a[i].scales);
        __m512i sumi = q45k_sumi(a[i].qs, a[i].qh, sm, y[i].qs, vnni);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(F16(a[i].d) * y[i].d), _mm512_cvtepi32_ps(sumi), acc);
        mins += F16(a[i].dmin) * y[i].d * (float)k4_mins_dot(y[i].bsums, sm);
    }
    return _mm512_reduce_add_ps(acc) - mins;
}

/* sum_j scales[j] * bsums[j], for q6_K's -32 level offset */
INLINE int q6_offset(const int16_t *bsums, const int8_t *scales)
{
    __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)scales));
    __m256i p = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums), s16);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* q6_K chunk c (128 elements) as two registers of unsigned 6-bit levels:
 * ql[64c..64c+63] holds the low nibbles of elements 0-63 (low halves) and
 * 64-127 (high halves); qh[32c..] the top bits, 2 per 32-element run. */
INLINE __m512i q6k_chunk(const block_q6_K *b, int c, const int8_t *y, __m512i sc16,
                         const int vnni)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x03);
    __m512i l = _mm512_loadu_si512(b->ql + 64 * c);
    __m256i h256 = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * c));
    __m512i h = _mm512_inserti64x4(_mm512_castsi256_si512(h256), _mm256_srli_epi16(h256, 2), 1);
    __m512i qa = _mm512_or_si512(_mm512_and_si512(l, m4),
                                 _mm512_slli_epi16(_mm512_and_si512(h, m2), 4));
    __m512i qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                 _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(h, 4), m2), 4));
    /* each 128-bit lane (16 elements) has its own scale */
    const __m512i ia = _mm512_setr_epi64(0x0000000000000000LL, 0x0000000000000000LL,
                                         0x0001000100010001LL, 0x0001000100010001LL,
                                         0x0002000200020002LL, 0x0002000200020002LL,
                                         0x0003000300030003LL, 0x0003000300030003LL);
    const __m512i ib = _mm512_add_epi16(ia, _mm512_set1_epi16(4));
    const __m512i off = _mm512_set1_epi16((short)(8 * c));
    __m512i sa = _mm512_permutexvar_epi16(_mm512_add_epi16(ia, off), sc16);
    __m512i sb = _mm512_permutexvar_epi16(_mm512_add_epi16(ib, off), sc16);
    __m512i s = dpwssd(_mm512_setzero_si512(), _mm512_maddubs_epi16(qa, _mm512_loadu_si512(y)), sa, vnni);
    return dpwssd(s, _mm512_maddubs_epi16(qb, _mm512_loadu_si512(y + 64)), sb, vnni);
}

INLINE float dot_q6_K_k(int64_t n, const void *w, const void *x, const int vnni)
{
    const block_q6_K *a = w;
    const block_q8_K *y = x;
    __m512 acc = _mm512_setzero_ps();
    float off = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i s = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a[i].scales));
        __m512i sc16 = _mm512_castsi256_si512(s);
        __m512i sumi = _mm512_add_epi32(q6k_chunk(&a[i], 0, y[i].qs, sc16, vnni),
                                        q6k_chunk(&a[i], 1, y[i].qs + 128, sc16, vnni));
        float d = F16(a[i].d) * y[i].d;
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        off += d * (float)(32 * q6_offset(y[i].bsums, a[i].scales));
    }
    return _mm512_reduce_add_ps(acc) - off;
}

/* ---- attention helpers and conversions ---------------------------------- */

static void axpy_f32(int64_t n, float a, const void *row, float *out)
{
    const float *v = row;
    const __m512 va = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(v + i), _mm512_loadu_ps(out + i)));
    if (i < n) {
        __mmask16 m = tail16(n - i);
        __m512 r = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, v + i), _mm512_maskz_loadu_ps(m, out + i));
        _mm512_mask_storeu_ps(out + i, m, r);
    }
}

static void axpy_f16(int64_t n, float a, const void *row, float *out)
{
    const uint16_t *v = row;
    const __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : tail16(n - i);
        __m512 r = _mm512_fmadd_ps(va, load_f16x16(v + i, m), _mm512_maskz_loadu_ps(m, out + i));
        _mm512_mask_storeu_ps(out + i, m, r);
    }
}

/* out += a * (q * d), the product q * d rounded first as the reference */
static void axpy_q8_0(int64_t n, float a, const void *row, float *out)
{
    const block_q8_0 *b = row;
    const __m512 va = _mm512_set1_ps(a);
    for (int64_t k = 0; k < n / QK8_0; k++, out += QK8_0) {
        __m512 d = _mm512_set1_ps(F16(b[k].d));
        __m128i q0 = _mm_loadu_si128((const __m128i *)b[k].qs);
        __m128i q1 = _mm_loadu_si128((const __m128i *)(b[k].qs + 16));
        __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d);
        __m512 v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d);
        _mm512_storeu_ps(out, _mm512_fmadd_ps(va, v0, _mm512_loadu_ps(out)));
        _mm512_storeu_ps(out + 16, _mm512_fmadd_ps(va, v1, _mm512_loadu_ps(out + 16)));
    }
}

/* One key row's products with x over 64 columns from c, as 16 lanes. */
INLINE __m512 key_dot64(const uint16_t *r, __m512 x0, __m512 x1, __m512 x2, __m512 x3,
                        __mmask16 k0, __mmask16 k1, __mmask16 k2, __mmask16 k3)
{
    __m512 a = _mm512_mul_ps(load_f16x16(r, k0), x0);
    __m512 b = _mm512_mul_ps(load_f16x16(r + 16, k1), x1);
    a = _mm512_fmadd_ps(load_f16x16(r + 32, k2), x2, a);
    b = _mm512_fmadd_ps(load_f16x16(r + 48, k3), x3, b);
    return _mm512_add_ps(a, b);
}

/* dot_rows_f16 for heads of 32 columns (small code models): two vectors
 * a key, where the 64-column loop would spend half its loads and
 * multiplies on masked-off lanes. */
static void dot_rows_f16_32(const void *rows, size_t stride, int64_t m, const float *x, float *out)
{
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
#define KEY_DOT32(r) _mm512_add_ps(_mm512_mul_ps(load_f16x16((r), 0xFFFF), x0), \
                                  _mm512_mul_ps(load_f16x16((r) + 16, 0xFFFF), x1))
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)j * stride);
        const uint16_t *r1 = (const uint16_t *)((const char *)r + stride);
        const uint16_t *r2 = (const uint16_t *)((const char *)r1 + stride);
        const uint16_t *r3 = (const uint16_t *)((const char *)r2 + stride);
        __m512 h = hsum4(KEY_DOT32(r), KEY_DOT32(r1), KEY_DOT32(r2), KEY_DOT32(r3));
        _mm_storeu_ps(out + j, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, h)));
    }
    for (; j < m; j++) {
        const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)j * stride);
        out[j] = _mm512_reduce_add_ps(KEY_DOT32(r));
    }
#undef KEY_DOT32
}

/* Attention scores against an f16 cache: 64 columns of x stay in registers
 * while the rows stream past (head_dim is 64 or 128 in most models), four
 * keys reduced together. */
static void dot_rows_f16(int64_t n, const void *rows, size_t stride, int64_t m, const void *xv,
                         float *out)
{
    const float *x = xv;
    if (n == 32) {
        dot_rows_f16_32(rows, stride, m, x, out);
        return;
    }
    for (int64_t j = 0; j < m; j++)
        out[j] = 0;
    for (int64_t c = 0; c < n; c += 64) {
        __mmask16 k0 = cols16(n, c), k1 = cols16(n, c + 16), k2 = cols16(n, c + 32),
                  k3 = cols16(n, c + 48);
        __m512 x0 = _mm512_maskz_loadu_ps(k0, x + c), x1 = _mm512_maskz_loadu_ps(k1, x + c + 16),
               x2 = _mm512_maskz_loadu_ps(k2, x + c + 32), x3 = _mm512_maskz_loadu_ps(k3, x + c + 48);
        const char *base = (const char *)rows + 2 * c;
        int64_t j = 0;
        for (; j + 4 <= m; j += 4) {
            const uint16_t *r = (const uint16_t *)(base + (size_t)j * stride);
            const uint16_t *r1 = (const uint16_t *)((const char *)r + stride);
            const uint16_t *r2 = (const uint16_t *)((const char *)r1 + stride);
            const uint16_t *r3 = (const uint16_t *)((const char *)r2 + stride);
            __m512 h = hsum4(key_dot64(r, x0, x1, x2, x3, k0, k1, k2, k3),
                             key_dot64(r1, x0, x1, x2, x3, k0, k1, k2, k3),
                             key_dot64(r2, x0, x1, x2, x3, k0, k1, k2, k3),
                             key_dot64(r3, x0, x1, x2, x3, k0, k1, k2, k3));
            __m128 four = _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, h));
            _mm_storeu_ps(out + j, _mm_add_ps(_mm_loadu_ps(out + j), four));
        }
        for (; j < m; j++) {
            const uint16_t *r = (const uint16_t *)(base + (size_t)j * stride);
            out[j] += _mm512_reduce_add_ps(key_dot64(r, x0, x1, x2, x3, k0, k1, k2, k3));
        }
    }
}

/* dot_rows_f16 for two queries (two heads of one KV head): each key row
 * converted once, then each query's products exactly as dot_rows_f16
 * forms them. */
#ifndef ROWS_AHEAD
#define ROWS_AHEAD 16
#endif
#define PAIR_DOT32(k, x) _mm512_add_ps(_mm512_mul_ps((k)[0], (x)[0]), _mm512_mul_ps((k)[1], (x)[1]))
static void dot_rows_f16_32_pair(const void *rows, size_t stride, int64_t m, const float *xa,
                                 const float *xb, float *outa, float *outb)
{
    const __m512 xa2[2] = {_mm512_loadu_ps(xa), _mm512_loadu_ps(xa + 16)};
    const __m512 xb2[2] = {_mm512_loadu_ps(xb), _mm512_loadu_ps(xb + 16)};
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        __m512 k[4][2];
        UNROLL
        for (int i = 0; i < 4; i++) {
            const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)(j + i) * stride);
            _mm_prefetch((const char *)r + ROWS_AHEAD * stride, _MM_HINT_T0);
            k[i][0] = load_f16x16(r, 0xFFFF);
            k[i][1] = load_f16x16(r + 16, 0xFFFF);
        }
        __m512 ha = hsum4(PAIR_DOT32(k[0], xa2), PAIR_DOT32(k[1], xa2), PAIR_DOT32(k[2], xa2),
                          PAIR_DOT32(k[3], xa2));
        __m512 hb = hsum4(PAIR_DOT32(k[0], xb2), PAIR_DOT32(k[1], xb2), PAIR_DOT32(k[2], xb2),
                          PAIR_DOT32(k[3], xb2));
        _mm_storeu_ps(outa + j, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, ha)));
        _mm_storeu_ps(outb + j, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, hb)));
    }
    for (; j < m; j++) {
        const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)j * stride);
        const __m512 k[2] = {load_f16x16(r, 0xFFFF), load_f16x16(r + 16, 0xFFFF)};
        outa[j] = _mm512_reduce_add_ps(PAIR_DOT32(k, xa2));
        outb[j] = _mm512_reduce_add_ps(PAIR_DOT32(k, xb2));
    }
}
#undef PAIR_DOT32

/* One 64-column chunk of a key row against x, as key_dot64 forms it. */
INLINE __m512 key_dot64_loaded(const __m512 k[4], const __m512 x[4])
{
    __m512 a = _mm512_mul_ps(k[0], x[0]);
    __m512 b = _mm512_mul_ps(k[1], x[1]);
    a = _mm512_fmadd_ps(k[2], x[2], a);
    b = _mm512_fmadd_ps(k[3], x[3], b);
    return _mm512_add_ps(a, b);
}

static void dot_rows_f16_pair(int64_t n, const void *rows, size_t stride, int64_t m,
                              const float *xa, const float *xb, float *outa, float *outb)
{
    if (n == 32) {
        dot_rows_f16_32_pair(rows, stride, m, xa, xb, outa, outb);
        return;
    }
    for (int64_t j = 0; j < m; j++)
        outa[j] = 0, outb[j] = 0;
    for (int64_t c = 0; c < n; c += 64) {
        const __mmask16 km[4] = {cols16(n, c), cols16(n, c + 16), cols16(n, c + 32),
                                 cols16(n, c + 48)};
        __m512 xa4[4], xb4[4];
        UNROLL
        for (int i = 0; i < 4; i++)
            xa4[i] = _mm512_maskz_loadu_ps(km[i], xa + c + 16 * i),
            xb4[i] = _mm512_maskz_loadu_ps(km[i], xb + c + 16 * i);
        const char *base = (const char *)rows + 2 * c;
        int64_t j = 0;
        for (; j + 4 <= m; j += 4) { /* four keys reduced together, as dot_rows_f16 */
            __m512 k[4][4];
            UNROLL
            for (int e = 0; e < 4; e++) {
                const uint16_t *r = (const uint16_t *)(base + (size_t)(j + e) * stride);
                UNROLL
                for (int i = 0; i < 4; i++)
                    k[e][i] = load_f16x16(r + 16 * i, km[i]);
            }
            __m512 ha = hsum4(key_dot64_loaded(k[0], xa4), key_dot64_loaded(k[1], xa4),
                              key_dot64_loaded(k[2], xa4), key_dot64_loaded(k[3], xa4));
            __m512 hb = hsum4(key_dot64_loaded(k[0], xb4), key_dot64_loaded(k[1], xb4),
                              key_dot64_loaded(k[2], xb4), key_dot64_loaded(k[3], xb4));
            __m128 fa = _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, ha));
            __m128 fb = _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, hb));
            _mm_storeu_ps(outa + j, _mm_add_ps(_mm_loadu_ps(outa + j), fa));
            _mm_storeu_ps(outb + j, _mm_add_ps(_mm_loadu_ps(outb + j), fb));
        }
        for (; j < m; j++) {
            const uint16_t *r = (const uint16_t *)(base + (size_t)j * stride);
            __m512 k[4];
            UNROLL
            for (int i = 0; i < 4; i++)
                k[i] = load_f16x16(r + 16 * i, km[i]);
            outa[j] += _mm512_reduce_add_ps(key_dot64_loaded(k, xa4));
            outb[j] += _mm512_reduce_add_ps(key_dot64_loaded(k, xb4));
        }
    }
}

/* sum_rows_f16 for heads of 32 columns: even and odd rows in separate
 * accumulators, so four multiply-add chains run side by side. */
static void sum_rows_f16_32(const void *rows, size_t stride, int64_t m, const float *p, float *out)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    int64_t j = 0;
    for (; j + 2 <= m; j += 2) {
        const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)j * stride);
        const uint16_t *q = (const uint16_t *)((const char *)r + stride);
        __m512 pr = _mm512_set1_ps(p[j]), pq = _mm512_set1_ps(p[j + 1]);
        a0 = _mm512_fmadd_ps(pr, load_f16x16(r, 0xFFFF), a0);
        a1 = _mm512_fmadd_ps(pr, load_f16x16(r + 16, 0xFFFF), a1);
        b0 = _mm512_fmadd_ps(pq, load_f16x16(q, 0xFFFF), b0);
        b1 = _mm512_fmadd_ps(pq, load_f16x16(q + 16, 0xFFFF), b1);
    }
    if (j < m) {
        const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)j * stride);
        __m512 pr = _mm512_set1_ps(p[j]);
        a0 = _mm512_fmadd_ps(pr, load_f16x16(r, 0xFFFF), a0);
        a1 = _mm512_fmadd_ps(pr, load_f16x16(r + 16, 0xFFFF), a1);
    }
    _mm512_storeu_ps(out, _mm512_add_ps(a0, b0));
    _mm512_storeu_ps(out + 16, _mm512_add_ps(a1, b1));
}

/* sum_rows_f16_32 for two weight vectors (two heads of one KV head): each
 * value row converted once, each head's sums as sum_rows_f16_32 forms
 * them. */
static void sum_rows_f16_32_pair(const void *rows, size_t stride, int64_t m, const float *pa,
                                 const float *pb, float *outa, float *outb)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    __m512 c0 = a0, c1 = a0, d0 = a0, d1 = a0;
    int64_t j = 0;
    for (; j + 2 <= m; j += 2) {
        const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)j * stride);
        const uint16_t *q = (const uint16_t *)((const char *)r + stride);
        _mm_prefetch((const char *)r + ROWS_AHEAD * stride, _MM_HINT_T0);
        _mm_prefetch((const char *)q + ROWS_AHEAD * stride, _MM_HINT_T0);
        const __m512 r0 = load_f16x16(r, 0xFFFF), r1 = load_f16x16(r + 16, 0xFFFF);
        const __m512 q0 = load_f16x16(q, 0xFFFF), q1 = load_f16x16(q + 16, 0xFFFF);
        __m512 pr = _mm512_set1_ps(pa[j]), pq = _mm512_set1_ps(pa[j + 1]);
        a0 = _mm512_fmadd_ps(pr, r0, a0);
        a1 = _mm512_fmadd_ps(pr, r1, a1);
        b0 = _mm512_fmadd_ps(pq, q0, b0);
        b1 = _mm512_fmadd_ps(pq, q1, b1);
        pr = _mm512_set1_ps(pb[j]), pq = _mm512_set1_ps(pb[j + 1]);
        c0 = _mm512_fmadd_ps(pr, r0, c0);
        c1 = _mm512_fmadd_ps(pr, r1, c1);
        d0 = _mm512_fmadd_ps(pq, q0, d0);
        d1 = _mm512_fmadd_ps(pq, q1, d1);
    }
    if (j < m) {
        const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)j * stride);
        const __m512 r0 = load_f16x16(r, 0xFFFF), r1 = load_f16x16(r + 16, 0xFFFF);
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(pa[j]), r0, a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(pa[j]), r1, a1);
        c0 = _mm512_fmadd_ps(_mm512_set1_ps(pb[j]), r0, c0);
        c1 = _mm512_fmadd_ps(_mm512_set1_ps(pb[j]), r1, c1);
    }
    _mm512_storeu_ps(outa, _mm512_add_ps(a0, b0));
    _mm512_storeu_ps(outa + 16, _mm512_add_ps(a1, b1));
    _mm512_storeu_ps(outb, _mm512_add_ps(c0, d0));
    _mm512_storeu_ps(outb + 16, _mm512_add_ps(c1, d1));
}

static void sum_rows_f16_pair(int64_t n, const void *rows, size_t stride, int64_t m,
                              const float *pa, const float *pb, float *outa, float *outb)
{
    if (n == 32) {
        sum_rows_f16_32_pair(rows, stride, m, pa, pb, outa, outb);
        return;
    }
    for (int64_t c = 0; c < n; c += 64) {
        const __mmask16 km[4] = {cols16(n, c), cols16(n, c + 16), cols16(n, c + 32),
                                 cols16(n, c + 48)};
        __m512 a[4], b[4];
        UNROLL
        for (int i = 0; i < 4; i++)
            a[i] = _mm512_setzero_ps(), b[i] = _mm512_setzero_ps();
        for (int64_t j = 0; j < m; j++) {
            const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)j * stride) + c;
            const __m512 pj = _mm512_set1_ps(pa[j]), qj = _mm512_set1_ps(pb[j]);
            UNROLL
            for (int i = 0; i < 4; i++) {
                const __m512 v = load_f16x16(r + 16 * i, km[i]);
                a[i] = _mm512_fmadd_ps(pj, v, a[i]);
                b[i] = _mm512_fmadd_ps(qj, v, b[i]);
            }
        }
        UNROLL
        for (int i = 0; i < 4; i++)
            _mm512_mask_storeu_ps(outa + c + 16 * i, km[i], a[i]),
            _mm512_mask_storeu_ps(outb + c + 16 * i, km[i], b[i]);
    }
}

/* The attention-weighted sum of f16 value rows, 64 columns at a time in
 * four accumulators. */
static void sum_rows_f16(int64_t n, const void *rows, size_t stride, int64_t m, const float *p,
                         float *out)
{
    if (n == 32) {
        sum_rows_f16_32(rows, stride, m, p, out);
        return;
    }
    for (int64_t c = 0; c < n; c += 64) {
        __mmask16 k0 = cols16(n, c), k1 = cols16(n, c + 16), k2 = cols16(n, c + 32),
                  k3 = cols16(n, c + 48);
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = 0; j < m; j++) {
            const uint16_t *r = (const uint16_t *)((const char *)rows + (size_t)j * stride) + c;
            __m512 pj = _mm512_set1_ps(p[j]);
            a0 = _mm512_fmadd_ps(pj, load_f16x16(r, k0), a0);
            a1 = _mm512_fmadd_ps(pj, load_f16x16(r + 16, k1), a1);
            a2 = _mm512_fmadd_ps(pj, load_f16x16(r + 32, k2), a2);
            a3 = _mm512_fmadd_ps(pj, load_f16x16(r + 48, k3), a3);
        }
        _mm512_mask_storeu_ps(out + c, k0, a0);
        _mm512_mask_storeu_ps(out + c + 16, k1, a1);
        _mm512_mask_storeu_ps(out + c + 32, k2, a2);
        _mm512_mask_storeu_ps(out + c + 48, k3, a3);
    }
}

/* e^x for x <= 88 (softmax arguments are <= 0): x = n ln2 + r with |r| <= ln2/2,
 * e^r by its Taylor polynomial to r^7 (truncation < 2e-8 relative), then
 * scaled by 2^n.  Below -104 the result is 0, as expf's is. */
INLINE __m512 exp_neg(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static void softmax_avx512(float *x, int64_t n, float scale, int round_f16)
{
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 vmax = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = cols16(n, i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs);
        _mm512_mask_storeu_ps(x + i, m, v);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, v);
    }
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = cols16(n, i);
        __m512 e = exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx));
        _mm512_mask_storeu_ps(x + i, m, e);
        vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = cols16(n, i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv);
        if (round_f16)
            v = _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm512_mask_storeu_ps(x + i, m, v);
    }
}

/* silu through e^-x clamped at 88: where expf's e^-x is infinite (x < -88)
 * the result is x / 1.6e38 instead of -0, both nothing. */
static void swiglu_avx512(float *a, const float *b, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = cols16(n, i);
        __m512 x = _mm512_maskz_loadu_ps(m, a + i);
        __m512 e = exp_neg(_mm512_sub_ps(_mm512_setzero_ps(), x));
        __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(a + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, b + i)));
    }
}

/* Float exponentials, four per lane summed in float (an error under the
 * exponentials' own), then moved to double lanes: the sum of 49k terms is
 * as precise as the scalar reference's, summed in double throughout.
 * kld_sums repeats these steps for its first sum, so the two agree bit
 * for bit. */
#define RUN 64

/* the 16 float lanes of f, as 8 double lanes of pair sums */
INLINE __m512d pd_pairs(__m512 f)
{
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1));
    return _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(f)), _mm512_cvtps_pd(hi));
}

static double exp_sum_avx512(const float *x, int64_t n, float shift)
{
    const __m512 sh = _mm512_set1_ps(shift);
    __m512d s = _mm512_setzero_pd();
    for (int64_t c = 0; c < n; c += RUN) {
        __m512 f = _mm512_setzero_ps();
        int64_t end = n - c < RUN ? n : c + RUN;
        for (int64_t i = c; i < end; i += 16) {
            __mmask16 m = cols16(end, i);
            __m512 v = _mm512_maskz_loadu_ps(m, x + i);
            f = _mm512_add_ps(f, _mm512_maskz_mov_ps(m, exp_neg(_mm512_sub_ps(v, sh))));
        }
        s = _mm512_add_pd(s, pd_pairs(f));
    }
    return _mm512_reduce_add_pd(s);
}

INLINE void kld_sums_body(const float *x, const void *b, const int f16, int64_t n, float mx,
                          float mb, double out[4])
{
    const __m512 sx = _mm512_set1_ps(mx), sb = _mm512_set1_ps(mb);
    __m512 umax = _mm512_set1_ps(-INFINITY);
    __m512d sm = _mm512_setzero_pd(), s0 = sm, s1 = sm;
    for (int64_t c = 0; c < n; c += RUN) {
        __m512 fm = _mm512_setzero_ps(), f0 = fm, f1 = fm;
        int64_t end = n - c < RUN ? n : c + RUN;
        for (int64_t i = c; i < end; i += 16) {
            __mmask16 m = cols16(end, i);
            __m512 bv = f16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)b + i))
                            : _mm512_maskz_loadu_ps(m, (const float *)b + i);
            __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), sx);
            __m512 u = _mm512_sub_ps(bv, sb);
            __m512 e = _mm512_maskz_mov_ps(m, exp_neg(u));
            fm = _mm512_add_ps(fm, _mm512_maskz_mov_ps(m, exp_neg(v)));
            f0 = _mm512_add_ps(f0, e);
            f1 = _mm512_fmadd_ps(e, _mm512_sub_ps(u, v), f1);
            umax = _mm512_mask_max_ps(umax, m, umax, u);
        }
        sm = _mm512_add_pd(sm, pd_pairs(fm));
        s0 = _mm512_add_pd(s0, pd_pairs(f0));
        s1 = _mm512_add_pd(s1, pd_pairs(f1));
    }
    out[0] = _mm512_reduce_add_pd(sm), out[1] = _mm512_reduce_add_pd(s0);
    out[2] = _mm512_reduce_add_pd(s1), out[3] = _mm512_reduce_max_ps(umax);
}

static void kld_sums_avx512(const float *x, const void *b, int b_f16, int64_t n, float mx,
                            float mb, double out[4])
{
    if (b_f16)
        kld_sums_body(x, b, 1, n, mx, mb, out);
    else
        kld_sums_body(x, b, 0, n, mx, mb, out);
}

/* RMSNorm: squares summed in double, eight lanes per half vector */
static void rmsnorm_avx512(float *out, const float *x, const float *w, int64_t n, float eps)
{
    __m512d s0 = _mm512_setzero_pd(), s1 = s0;
    for (int64_t i = 0; i < n; i += 16) {
        __m512 v = _mm512_maskz_loadu_ps(cols16(n, i), x + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    const __m512 scale = _mm512_set1_ps((float)(1.0 / sqrt(ss / (double)n + eps)));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = cols16(n, i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), scale);
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i)));
    }
}

static void add_avx512(float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = cols16(n, i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i),
                                                      _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* argmax_ref in two passes of 64 values a step: the largest value and
 * whether any is not finite (x - x is NaN exactly then), four chains;
 * then the first position holding it. */
static int64_t argmax_avx512(const float *x, int64_t n)
{
    __m512 mx[4], bad[4];
    UNROLL
    for (int k = 0; k < 4; k++)
        mx[k] = _mm512_set1_ps(-FLT_MAX), bad[k] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        UNROLL
        for (int k = 0; k < 4; k++) {
            const __m512 v = _mm512_loadu_ps(x + i + 16 * k);
            mx[k] = _mm512_max_ps(mx[k], v);
            bad[k] = _mm512_add_ps(bad[k], _mm512_sub_ps(v, v));
        }
    for (; i < n; i += 16) {
        const __mmask16 m = cols16(n, i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        mx[0] = _mm512_mask_max_ps(mx[0], m, mx[0], v);
        bad[0] = _mm512_add_ps(bad[0], _mm512_sub_ps(v, v));
    }
    const __m512 b = _mm512_add_ps(_mm512_add_ps(bad[0], bad[1]), _mm512_add_ps(bad[2], bad[3]));
    if (n <= 0 || _mm512_cmpneq_ps_mask(b, _mm512_setzero_ps()))
        return -1;
    const float best = _mm512_reduce_max_ps(
        _mm512_max_ps(_mm512_max_ps(mx[0], mx[1]), _mm512_max_ps(mx[2], mx[3])));
    const __m512 vb = _mm512_set1_ps(best);
    for (i = 0; i < n; i += 16) {
        const __mmask16 hit = _mm512_mask_cmpeq_ps_mask(cols16(n, i), _mm512_maskz_loadu_ps(cols16(n, i), x + i), vb);
        if (hit)
            return i + __builtin_ctz(hit);
    }
    return -1;
}

/* floats to f16, round to nearest even (as cm_f32_to_f16): KV cache rows */
static void f32_to_f16(const float *x, void *y, int64_t n)
{
    uint16_t *h = y;
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = cols16(n, i);
        __m256i v = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(h + i, m, v);
    }
}


/* ---- prompt attention on f16 tiles ---------------------------------------
 * A tile is 16 cached rows.  For the scores the tile is transposed once to
 * columns of 16 floats (one per key), so each query's 16 dots are d
 * broadcast multiply-adds with no horizontal sums; for the weighted sum the
 * tile is decoded once to floats and every query accumulates from it.
 * Columns are taken 128 at a time so the tile stays 8 KiB (in L1). */
#define TILE_COLS 128

static void attn_qk_f16(int64_t d, const void *k, size_t kstride, int nk, const float *q,
                        int64_t nq, float *s, size_t ld)
{
    float kt[TILE_COLS][16] __attribute__((aligned(64)));
    const __mmask16 keys = tail16(nk);
    for (int64_t c = 0; c < d; c += TILE_COLS) {
        const int w = d - c < TILE_COLS ? (int)(d - c) : TILE_COLS;
        for (int i = 0; i < w; i += 16) { /* 16 x 16 squares, transposed in registers */
            __m512 r[16];
            UNROLL
            for (int j = 0; j < 16; j++)
                r[j] = j < nk ? load_f16x16((const uint16_t *)((const char *)k + (size_t)j * kstride) +
                                                c + i, cols16(w, i))
                              : _mm512_setzero_ps();
            transpose16(r);
            const int n = w - i < 16 ? w - i : 16;
            for (int t = 0; t < n; t++)
                _mm512_store_ps(kt[i + t], r[t]);
        }
        int64_t qi = 0;
        for (; qi + 4 <= nq; qi += 4) { /* four queries: 8 independent sums per tile row pair */
            const float *x0 = q + qi * d + c, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
            __m512 a0 = _mm512_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0,
                   a3 = a0, b3 = a0;
            int i = 0;
            for (; i + 2 <= w; i += 2) {
                __m512 k0 = _mm512_load_ps(kt[i]), k1 = _mm512_load_ps(kt[i + 1]);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(x0[i]), k0, a0);
                b0 = _mm512_fmadd_ps(_mm512_set1_ps(x0[i + 1]), k1, b0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(x1[i]), k0, a1);
                b1 = _mm512_fmadd_ps(_mm512_set1_ps(x1[i + 1]), k1, b1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(x2[i]), k0, a2);
                b2 = _mm512_fmadd_ps(_mm512_set1_ps(x2[i + 1]), k1, b2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(x3[i]), k0, a3);
                b3 = _mm512_fmadd_ps(_mm512_set1_ps(x3[i + 1]), k1, b3);
            }
            if (i < w) {
                __m512 k0 = _mm512_load_ps(kt[i]);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(x0[i]), k0, a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(x1[i]), k0, a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(x2[i]), k0, a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(x3[i]), k0, a3);
            }
            __m512 sum[4] = {_mm512_add_ps(a0, b0), _mm512_add_ps(a1, b1), _mm512_add_ps(a2, b2),
                             _mm512_add_ps(a3, b3)};
            for (int r = 0; r < 4; r++) {
                float *out = s + (qi + r) * ld;
                if (c)
                    sum[r] = _mm512_add_ps(sum[r], _mm512_maskz_loadu_ps(keys, out));
                _mm512_mask_storeu_ps(out, keys, sum[r]);
            }
        }
        for (; qi < nq; qi++) {
            const float *x = q + qi * d + c;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int i = 0;
            for (; i + 4 <= w; i += 4) {
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(x[i]), _mm512_load_ps(kt[i]), a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(x[i + 1]), _mm512_load_ps(kt[i + 1]), a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(x[i + 2]), _mm512_load_ps(kt[i + 2]), a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(x[i + 3]), _mm512_load_ps(kt[i + 3]), a3);
            }
            for (; i < w; i++)
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(x[i]), _mm512_load_ps(kt[i]), a0);
            __m512 sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            float *out = s + qi * ld;
            if (c)
                sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(keys, out));
            _mm512_mask_storeu_ps(out, keys, sum);
        }
    }
}

/* o[q][i..i+64) += sum_j p[q][j] v[j][i..]: 4 accumulators per query */
#define PV_LOAD(a, o, i)                                                 \
    __m512 a##0 = _mm512_maskz_loadu_ps(k0, (o) + (i)),                  \
           a##1 = _mm512_maskz_loadu_ps(k1, (o) + (i) + 16),             \
           a##2 = _mm512_maskz_loadu_ps(k2, (o) + (i) + 32),             \
           a##3 = _mm512_maskz_loadu_ps(k3, (o) + (i) + 48)
#define PV_STEP(a, pj, vr, i)                                            \
    a##0 = _mm512_fmadd_ps(pj, _mm512_load_ps((vr) + (i)), a##0);        \
    a##1 = _mm512_fmadd_ps(pj, _mm512_load_ps((vr) + (i) + 16), a##1);   \
    a##2 = _mm512_fmadd_ps(pj, _mm512_load_ps((vr) + (i) + 32), a##2);   \
    a##3 = _mm512_fmadd_ps(pj, _mm512_load_ps((vr) + (i) + 48), a##3)
#define PV_STORE(a, o, i)                                                \
    _mm512_mask_storeu_ps((o) + (i), k0, a##0);                          \
    _mm512_mask_storeu_ps((o) + (i) + 16, k1, a##1);                     \
    _mm512_mask_storeu_ps((o) + (i) + 32, k2, a##2);                     \
    _mm512_mask_storeu_ps((o) + (i) + 48, k3, a##3)

static void attn_pv_f16(int64_t d, const void *v, size_t vstride, int nk, const float *p,
                        size_t ld, int64_t nq, float *o)
{
    float vt[16][TILE_COLS] __attribute__((aligned(64)));
    for (int64_t c = 0; c < d; c += TILE_COLS) {
        const int w = d - c < TILE_COLS ? (int)(d - c) : TILE_COLS;
        for (int j = 0; j < nk; j++) {
            const uint16_t *r = (const uint16_t *)((const char *)v + (size_t)j * vstride) + c;
            for (int i = 0; i < w; i += 16)
                _mm512_store_ps(vt[j] + i, load_f16x16(r + i, cols16(w, i)));
        }
        for (int i = 0; i < w; i += 64) {
            const __mmask16 k0 = cols16(w, i), k1 = cols16(w, i + 16), k2 = cols16(w, i + 32),
                            k3 = cols16(w, i + 48);
            int64_t qi = 0;
            /* two queries at a time: 8 independent multiply-add chains,
             * enough to cover the latency (4 chains run at half rate) */
            for (; qi + 2 <= nq; qi += 2) {
                const float *p0 = p + qi * ld, *p1 = p0 + ld;
                float *o0 = o + qi * d + c, *o1 = o0 + d;
                PV_LOAD(a, o0, i);
                PV_LOAD(b, o1, i);
                for (int j = 0; j < nk; j++) {
                    __m512 pa = _mm512_set1_ps(p0[j]), pb = _mm512_set1_ps(p1[j]);
                    PV_STEP(a, pa, vt[j], i);
                    PV_STEP(b, pb, vt[j], i);
                }
                PV_STORE(a, o0, i);
                PV_STORE(b, o1, i);
            }
            for (; qi < nq; qi++) {
                const float *p0 = p + qi * ld;
                float *o0 = o + qi * d + c;
                PV_LOAD(a, o0, i);
                for (int j = 0; j < nk; j++) {
                    __m512 pa = _mm512_set1_ps(p0[j]);
                    PV_STEP(a, pa, vt[j], i);
                }
                PV_STORE(a, o0, i);
            }
        }
    }
}
#undef PV_LOAD
#undef PV_STEP
#undef PV_STORE

static void f16_to_f32(const void *x, float *y, int64_t n)
{
    const uint16_t *h = x;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, load_f16x16(h + i, 0xFFFF));
    if (i < n)
        _mm512_mask_storeu_ps(y + i, tail16(n - i), load_f16x16(h + i, tail16(n - i)));
}

/* Q8_K activations, byte-identical to cm_quant_q8_K: the scale comes from
 * the first element of largest magnitude (NaNs never win: vmaxps returns
 * its second operand, the running max, when the first is NaN), levels are
 * round-half-even of is * x clamped to -128..127 in float before the
 * conversion, so NaN and +-inf land where the reference's qlevel puts them. */
static void quant_q8_K(const float *x, void *y, int64_t n)
{
    block_q8_K *b = y;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m512 am = _mm512_setzero_ps();
        for (int k = 0; k < 16; k++)
            am = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * k)), am);
        float amax = _mm512_reduce_max_ps(am), max = 0;
        for (int k = 0; k < 16 && amax > 0; k++) {
            __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + 16 * k));
            __mmask16 eq = _mm512_cmp_ps_mask(a, _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (eq) {
                max = x[16 * k + __builtin_ctz(eq)];
                break;
            }
        }
        float is = amax > 0 ? -127.0f / max : 0; /* llama.cpp: -127, so +-127 */
        memset(&b[i], 0, sizeof b[i]);
        if (!(is != 0 && is - is == 0)) /* zero, or 1/d overflowed */
            continue;
        const __m512 vis = _mm512_set1_ps(is), lo = _mm512_set1_ps(-128), hi = _mm512_set1_ps(127);
        for (int k = 0; k < 16; k++) {
            __m512 v = _mm512_max_ps(_mm512_mul_ps(vis, _mm512_loadu_ps(x + 16 * k)), lo);
            __m512i q = _mm512_cvtps_epi32(_mm512_min_ps(v, hi));
            _mm_storeu_si128((__m128i *)(b[i].qs + 16 * k), _mm512_cvtsepi32_epi8(q));
            b[i].bsums[k] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        b[i].d = 1 / is;
    }
}

/* ---- instantiation --------------------------------------------------------- */

#define VARIANTS(name)                                                        \
    static float name##_vnni(int64_t n, const void *w, const void *x)         \
    {                                                                         \
        return name##_k(n, w, x, 1);                                          \
    }                                                                         \
    static float name##_plain(int64_t n, const void *w, const void *x)        \
    {                                                                         \
        return name##_k(n, w, x, 0);                                          \
    }
VARIANTS(dot_q8_0)
VARIANTS(dot_q4_0)
VARIANTS(gemv_q4_0)
VARIANTS(gemv_q5_0)
VARIANTS(dot_q5_0)
VARIANTS(dot_q4_K)
VARIANTS(dot_q5_K)
VARIANTS(dot_q6_K)

/* A generation product's table (cm_gemv) per variant: the one-row dot and
 * the four-row kernel over the activation packed by pack(). */
#define GEMV_TABLE(t, dot, bytes, pack, sfx, vnni)                            \
    static void gemv4_##t##_##sfx(int64_t n, const void *w, size_t wrow,      \
                                  const void *x, float *out)                  \
    {                                                                         \
        gemv4_##t##_k(n, w, wrow, x, out, vnni);                              \
    }                                                                         \
    static const cm_gemv gemv_##t##_##sfx##_tab = {bytes, pack, dot##_##sfx,  \
                                                    gemv4_##t##_##sfx};
#define GEMV_TABLES(t, dot, bytes, pack)          \
    GEMV_TABLE(t, dot, bytes, pack, vnni, 1)      \
    GEMV_TABLE(t, dot, bytes, pack, plain, 0)
GEMV_TABLES(q8_0, dot_q8_0, q8_0_gemv_bytes, q8_0_gemv_pack)
GEMV_TABLES(q4_0, gemv_q4_0, q4_0_gemv_bytes, q4_0_gemv_pack)
GEMV_TABLES(q5_0, gemv_q5_0, q4_0_gemv_bytes, q4_0_gemv_pack) /* q5_0 reuses q4_0's packing */

int cm_kernels_avx512(struct cm_kernels *k, int vnni)
{
    k->isa = "avx512";
    k->gemv[CM_TYPE_Q4_0] = vnni ? &gemv_q4_0_vnni_tab : &gemv_q4_0_plain_tab;
    k->gemv[CM_TYPE_Q8_0] = vnni ? &gemv_q8_0_vnni_tab : &gemv_q8_0_plain_tab;
    k->gemv[CM_TYPE_Q5_0] = vnni ? &gemv_q5_0_vnni_tab : &gemv_q5_0_plain_tab;
    k->vec_dot[CM_TYPE_F16] = dot_f16;
    k->vec_dot[CM_TYPE_Q8_0] = vnni ? dot_q8_0_vnni : dot_q8_0_plain;
    k->vec_dot[CM_TYPE_Q4_0] = vnni ? dot_q4_0_vnni : dot_q4_0_plain;
    k->vec_dot[CM_TYPE_Q5_0] = vnni ? dot_q5_0_vnni : dot_q5_0_plain;
    k->vec_dot[CM_TYPE_Q4_K] = vnni ? dot_q4_K_vnni : dot_q4_K_plain;
    k->vec_dot[CM_TYPE_Q5_K] = vnni ? dot_q5_K_vnni : dot_q5_K_plain;
    k->vec_dot[CM_TYPE_Q6_K] = vnni ? dot_q6_K_vnni : dot_q6_K_plain;
    k->axpy[CM_TYPE_F32] = axpy_f32;
    k->axpy[CM_TYPE_F16] = axpy_f16;
    k->axpy[CM_TYPE_Q8_0] = axpy_q8_0;
    k->to_float[CM_TYPE_F16] = f16_to_f32;
    k->quantize[CM_TYPE_F16] = f32_to_f16;
    k->dot_rows[CM_TYPE_F16] = dot_rows_f16;
    k->sum_rows[CM_TYPE_F16] = sum_rows_f16;
    k->dot_rows_pair[CM_TYPE_F16] = dot_rows_f16_pair;
    k->sum_rows_pair[CM_TYPE_F16] = sum_rows_f16_pair;
    k->softmax = softmax_avx512;
    k->attn_qk[CM_TYPE_F16] = attn_qk_f16;
    k->attn_pv[CM_TYPE_F16] = attn_pv_f16;
    k->swiglu = swiglu_avx512;
    k->exp_sum = exp_sum_avx512;
    k->kld_sums = kld_sums_avx512;
    k->rmsnorm = rmsnorm_avx512;
    k->add = add_avx512;
    k->argmax = argmax_avx512;
    k->quantize[CM_TYPE_Q8_K] = quant_q8_K;
    cm_gemm_avx512_install(k, vnni);
    return 0;
}

#else /* built without the AVX-512 flags */

int cm_kernels_avx512(struct cm_kernels *k, int vnni)
{
    (void)k;
    (void)vnni;
    return -1;
}

#endif
