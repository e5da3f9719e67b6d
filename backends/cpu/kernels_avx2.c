/* kernels_avx2.c - AVX2 + FMA + F16C kernels.
 *
 * Compiled with -mavx2 -mfma -mf16c; without those flags this file builds
 * to a stub that declines, so a build that never passes them still links.
 * Every function here is static except the installer (an inline function
 * shared with generic code could otherwise be emitted with AVX2 inside and
 * picked by the linker for everyone).
 *
 * Integer dots follow the format semantics of quant/ref_*.c exactly; only
 * the float summation order differs.  Activation quants are assumed in
 * -127..127 for Q8_0/Q8_1 (the quantizer guarantees it; the sign trick below
 * negates them) and -128..127 for Q8_K (used only against unsigned weight
 * levels, never negated). */
#include "backends/cpu/kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "quant/blocks.h"

#define F16(h) _cvtsh_ss(h)

static float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static int hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* 8 int32 lanes, each the sum of 4 adjacent products u8 * s8 (no int16
 * saturation for our ranges: |u| <= 128, |s| <= 127 or |u| <= 63). */
static __m256i dot_us(__m256i u, __m256i s)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* Signed * signed via |w| * (a with w's sign): maddubs wants one operand
 * unsigned.  |w| of -128 is 0x80 read as unsigned 128, still right. */
static __m256i dot_ss(__m256i w, __m256i a)
{
    return dot_us(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
}

/* 32 nibbles: bytes 0-15 the low nibbles, 16-31 the high ones, i.e. the
 * element order of the legacy 4/5-bit formats. */
static __m256i nibbles(const uint8_t *qs)
{
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return _mm256_set_m128i(hi, lo);
}

/* Byte j = 0x10 if bit j of the 32-bit qh is set, else 0. */
static __m256i fifth_bits(const uint8_t *qh)
{
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), shuf);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

static __m256i load256(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* ---- float weights ------------------------------------------------------ */

static float dot_f32(int64_t n, const void *w, const void *x)
{
    const float *a = w, *b = x;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static __m256 load_f16x8(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static float dot_f16(int64_t n, const void *w, const void *x)
{
    const uint16_t *a = w;
    const float *b = x;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(load_f16x8(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(load_f16x8(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(load_f16x8(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(load_f16x8(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(load_f16x8(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++)
        s += F16(a[i]) * b[i];
    return s;
}

static __m256 load_bf16x8(const uint16_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static float dot_bf16(int64_t n, const void *w, const void *x)
{
    const uint16_t *a = w;
    const float *b = x;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(load_bf16x8(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(load_bf16x8(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(load_bf16x8(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum_ps(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        s += cm_bf16_to_f32(a[i]) * b[i];
    return s;
}

/* ---- legacy formats against Q8_0 / Q8_1 -------------------------------- */

/* sum (q - 8) * y over a q4_0 block as int32 lanes: q*y and 8*y pairs
 * through maddubs (no saturation: |pair| <= 2*15*128), subtracted in int16
 * (|difference| <= 2*8*128), then widened: one op fewer than the sign
 * trick on q - 8. */
static __m256i q4_0_dot(const block_q4_0 *a, __m256i y)
{
    __m256i p = _mm256_maddubs_epi16(nibbles(a->qs), y);
    p = _mm256_sub_epi16(p, _mm256_maddubs_epi16(_mm256_set1_epi8(8), y));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* acc + d * (int32 lane sums of p) */
static __m256 fma_i32(__m256 acc, float d, __m256i p)
{
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), acc);
}

/* Two blocks per step into two accumulators so consecutive FMAs overlap.
 * (Batching 8 blocks' scale conversions into one vcvtph2ps measured slower:
 * the gathers cost more than the scalar conversions they replace.) */
static float dot_q8_0(int64_t n, const void *w, const void *x)
{
    const block_q8_0 *a = w, *b = x;
    const int64_t nb = n / QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = fma_i32(acc0, F16(a[i].d) * F16(b[i].d),
                       dot_ss(load256(a[i].qs), load256(b[i].qs)));
        acc1 = fma_i32(acc1, F16(a[i + 1].d) * F16(b[i + 1].d),
                       dot_ss(load256(a[i + 1].qs), load256(b[i + 1].qs)));
    }
    if (i < nb)
        acc0 = fma_i32(acc0, F16(a[i].d) * F16(b[i].d),
                       dot_ss(load256(a[i].qs), load256(b[i].qs)));
    return hsum_ps(_mm256_add_ps(acc0, acc1));
}

static float dot_q4_0(int64_t n, const void *w, const void *x)
{
    const block_q4_0 *a = w;
    const block_q8_0 *b = x;
    const int64_t nb = n / QK4_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = fma_i32(acc0, F16(a[i].d) * F16(b[i].d),
                       q4_0_dot(&a[i], load256(b[i].qs)));
        acc1 = fma_i32(acc1, F16(a[i + 1].d) * F16(b[i + 1].d),
                       q4_0_dot(&a[i + 1], load256(b[i + 1].qs)));
    }
    if (i < nb)
        acc0 = fma_i32(acc0, F16(a[i].d) * F16(b[i].d),
                       q4_0_dot(&a[i], load256(b[i].qs)));
    return hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* q4_0 matrix-vector product on an activation packed once per product
 * (cm_gemv): each block's quants with its scale as a float and the term
 * -8 * d * sum(quants), so a row's blocks cost one maddubs instead of two
 * and no activation scale conversions. */
typedef struct {
    int8_t qs[32];
    float d, c;
} q4_0_xblock;
_Static_assert(sizeof(q4_0_xblock) == 40, "q4_0_xblock layout");

static size_t q4_0_gemv_bytes(int64_t cols)
{
    return (size_t)(cols / QK4_0) * sizeof(q4_0_xblock);
}

static void q4_0_gemv_pack(int64_t cols, const void *xq, void *dst)
{
    const block_q8_0 *x = xq;
    q4_0_xblock *p = dst;
    for (int64_t i = 0; i < cols / QK4_0; i++) {
        int sum = 0;
        for (int j = 0; j < QK8_0; j++)
            sum += x[i].qs[j];
        memcpy(p[i].qs, x[i].qs, 32);
        p[i].d = F16(x[i].d);
        p[i].c = -8.0f * p[i].d * (float)sum;
    }
}

static float gemv_q4_0(int64_t n, const void *w, const void *xp)
{
    const block_q4_0 *a = w;
    const q4_0_xblock *x = xp;
    const int64_t nb = n / QK4_0;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    float corr = 0;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        float d0 = F16(a[i].d), d1 = F16(a[i + 1].d);
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles(a[i].qs), load256(x[i].qs)), ones);
        __m256i p1 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(nibbles(a[i + 1].qs), load256(x[i + 1].qs)), ones);
        acc0 = fma_i32(acc0, d0 * x[i].d, p0);
        acc1 = fma_i32(acc1, d1 * x[i + 1].d, p1);
        corr += d0 * x[i].c + d1 * x[i + 1].c;
    }
    if (i < nb) {
        float d0 = F16(a[i].d);
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles(a[i].qs), load256(x[i].qs)), ones);
        acc0 = fma_i32(acc0, d0 * x[i].d, p0);
        corr += d0 * x[i].c;
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1)) + corr;
}

static const cm_gemv gemv_q4_0_tab = {q4_0_gemv_bytes, q4_0_gemv_pack, gemv_q4_0, NULL};

/* q4_1: unsigned levels straight into maddubs; the min term is m * s. */
static float dot_q4_1(int64_t n, const void *w, const void *x)
{
    const block_q4_1 *a = w;
    const block_q8_1 *b = x;
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        __m256i p = dot_us(nibbles(a[i].qs), load256(b[i].qs));
        __m256 d = _mm256_set1_ps(F16(a[i].d) * F16(b[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        mins += F16(a[i].m) * F16(b[i].s);
    }
    return hsum_ps(acc) + mins;
}

static float dot_q5_0(int64_t n, const void *w, const void *x)
{
    const block_q5_0 *a = w;
    const block_q8_0 *b = x;
    const __m256i sixteen = _mm256_set1_epi8(16), ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK5_0; i++) {
        /* sum (q - 16) * y as in q4_0_dot: |q*y pair| <= 2*31*128 */
        __m256i q = _mm256_or_si256(nibbles(a[i].qs), fifth_bits(a[i].qh));
        __m256i y = load256(b[i].qs);
        __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(sixteen, y));
        p = _mm256_madd_epi16(p, ones);
        __m256 d = _mm256_set1_ps(F16(a[i].d) * F16(b[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
}

static float dot_q5_1(int64_t n, const void *w, const void *x)
{
    const block_q5_1 *a = w;
    const block_q8_1 *b = x;
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        __m256i q = _mm256_or_si256(nibbles(a[i].qs), fifth_bits(a[i].qh));
        __m256i p = dot_us(q, load256(b[i].qs));
        __m256 d = _mm256_set1_ps(F16(a[i].d) * F16(b[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        mins += F16(a[i].m) * F16(b[i].s);
    }
    return hsum_ps(acc) + mins;
}

/* Q8_0 activations, byte-identical to cm_quant_q8_0 (same d, same 1/d,
 * round-half-even like lrintf in the default FP mode). */
static void quant_q8_0(const float *x, void *y, int64_t n)
{
    block_q8_0 *b = y;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        __m256 v[4], m;
        for (int k = 0; k < 4; k++)
            v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                          _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float d = _mm_cvtss_f32(h) / 127;
        b[i].d = cm_f32_to_f16(d);
        if (b[i].d == 0) { /* as the reference: a zero block */
            memset(b[i].qs, 0, QK8_0);
            continue;
        }
        float id = 1.0f / d;
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], _mm256_set1_ps(id)),
                                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        /* packs work per 128-bit lane; the permute restores element order */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)b[i].qs, p);
    }
}

/* ---- K-quants against Q8_K ---------------------------------------------- */

/* 16 signed byte scales as int16: even-indexed ones in the low 128-bit
 * lane, odd ones in the high lane, so pick_scales() can pair them up. */
static __m256i scales_eo(__m128i sc8)
{
    const __m128i eo = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, eo));
}

/* int16 lane m of each 128-bit half, broadcast within that half: with
 * scales_eo() input [scale 2m x8 | scale 2m+1 x8], the scales of the two
 * 16-element halves of 32-element run m; one in-lane byte shuffle. */
static __m256i pick_scales(__m256i v, int m)
{
    return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)(((2 * m + 1) << 8) | (2 * m))));
}

/* 32 unsigned levels (<= 63) times 32 activations, each 16-element half
 * weighted by its own sub-block scale from sc (q2_K, q3_K, q6_K). */
static __m256i part16x2(__m256i q, const int8_t *y, __m256i sc)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(y)), sc);
}

/* The 8 6-bit scales (bytes 0-7) and mins (bytes 8-15) of q4_K/q5_K (see
 * cm_k4_scale_min), decoded four at a time from the 12 bytes as 32-bit
 * words and assembled in registers (a vector load of freshly stored bytes
 * would stall on store forwarding). */
static __m128i k4_scales_mins(const uint8_t *s)
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
static int k4_mins_dot(const int16_t *bsums, __m128i sm)
{
    __m128i lo = _mm_loadu_si128((const __m128i *)bsums);
    __m128i hi = _mm_loadu_si128((const __m128i *)(bsums + 8));
    __m128i pairs = _mm_hadd_epi16(lo, hi);
    __m128i p = _mm_madd_epi16(pairs, _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8)));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0x4E));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0xB1));
    return _mm_cvtsi128_si32(p);
}

/* One 64-element chunk c: low nibbles (sub-block 2c) and high nibbles
 * (2c+1) against 64 activation bytes; s16 holds the 8 scales as int16 in
 * both 128-bit lanes. */
static __m256i k4_chunk(__m256i lo, __m256i hi, const int8_t *y, __m256i s16, int c)
{
    __m256i p0 = _mm256_maddubs_epi16(lo, load256(y));
    __m256i p1 = _mm256_maddubs_epi16(hi, load256(y + 32));
    p0 = _mm256_madd_epi16(p0, pick_scales(s16, 2 * c));
    p1 = _mm256_madd_epi16(p1, pick_scales(s16, 2 * c + 1));
    return _mm256_add_epi32(p0, p1);
}

static float dot_q4_K(int64_t n, const void *w, const void *x)
{
    const block_q4_K *a = w;
    const block_q8_K *y = x;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m128i sm = k4_scales_mins(a[i].scales);
        __m256i s16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q = load256(a[i].qs + 32 * c);
            __m256i lo = _mm256_and_si256(q, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            sumi = _mm256_add_epi32(sumi, k4_chunk(lo, hi, y[i].qs + 64 * c, s16, c));
        }
        float d = F16(a[i].d) * y[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        mins += F16(a[i].dmin) * y[i].d * (float)k4_mins_dot(y[i].bsums, sm);
    }
    return hsum_ps(acc) - mins;
}

/* q5_K: as q4_K plus bit 4 from qh (bits 2c, 2c+1 of each byte). */
static float dot_q5_K(int64_t n, const void *w, const void *x)
{
    const block_q5_K *a = w;
    const block_q8_K *y = x;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m128i sm = k4_scales_mins(a[i].scales);
        __m256i s16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        __m256i hb = load256(a[i].qh), sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q = load256(a[i].qs + 32 * c);
            /* 16-bit shifts leak bits across bytes only above bit 1, which
             * the masks drop */
            __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(hb, one), 4);
            __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4);
            hb = _mm256_srli_epi16(hb, 2);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), h0);
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h1);
            sumi = _mm256_add_epi32(sumi, k4_chunk(lo, hi, y[i].qs + 64 * c, s16, c));
        }
        float d = F16(a[i].d) * y[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        mins += F16(a[i].dmin) * y[i].d * (float)k4_mins_dot(y[i].bsums, sm);
    }
    return hsum_ps(acc) - mins;
}

/* sum_j scales[j] * bsums[j]: a constant level offset applied once. */
static int scaled_bsums(const int16_t *bsums, __m128i scales)
{
    return hsum_epi32(_mm256_madd_epi16(load256(bsums), _mm256_cvtepi8_epi16(scales)));
}

static float dot_q6_K(int64_t n, const void *w, const void *x)
{
    const block_q6_K *a = w;
    const block_q8_K *y = x;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    float acc = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        __m256i eo = scales_eo(_mm_loadu_si128((const __m128i *)a[i].scales));
        for (int c = 0; c < 2; c++) {
            __m256i l0 = load256(a[i].ql + 64 * c), l1 = load256(a[i].ql + 64 * c + 32);
            __m256i h = load256(a[i].qh + 32 * c);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
            for (int k = 0; k < 4; k++)
                sumi = _mm256_add_epi32(sumi, part16x2(q[k], y[i].qs + 128 * c + 32 * k,
                                                       pick_scales(eo, 4 * c + k)));
        }
        int isum = hsum_epi32(sumi) - 32 * scaled_bsums(y[i].bsums, _mm_loadu_si128((const __m128i *)a[i].scales));
        acc += F16(a[i].d) * y[i].d * (float)isum;
    }
    return acc;
}

/* q2_K: element 128c + 32j + l is bits 2j..2j+1 of qs[32c + l]; scale and
 * min nibbles per 16; x = d * sc * q - dmin * m. */
static float dot_q2_K(int64_t n, const void *w, const void *x)
{
    const block_q2_K *a = w;
    const block_q8_K *y = x;
    const __m256i m2 = _mm256_set1_epi8(3);
    float acc = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        const uint8_t *sc = a[i].scales;
        __m128i s8 = _mm_loadu_si128((const __m128i *)sc);
        __m256i eo = scales_eo(_mm_and_si128(s8, _mm_set1_epi8(0x0F)));
        for (int c = 0; c < 2; c++) {
            __m256i q = load256(a[i].qs + 32 * c);
            for (int j = 0; j < 4; j++) {
                __m256i l = _mm256_and_si256(q, m2);
                q = _mm256_srli_epi16(q, 2); /* bits crossing bytes get masked */
                sumi = _mm256_add_epi32(sumi, part16x2(l, y[i].qs + 128 * c + 32 * j,
                                                       pick_scales(eo, 4 * c + j)));
            }
        }
        __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), _mm_set1_epi8(0x0F)));
        int summs = hsum_epi32(_mm256_madd_epi16(load256(y[i].bsums), mins));
        float dall = y[i].d * F16(a[i].d), dmin = y[i].d * F16(a[i].dmin);
        acc += dall * (float)hsum_epi32(sumi) - dmin * (float)summs;
    }
    return acc;
}

/* The 16 q3_K scales (see cm_k3_scales) from the 12 bytes as 32-bit words,
 * still biased by 32. */
static __m128i k3_scales(const uint8_t *s)
{
    uint32_t w[3], t[4];
    memcpy(w, s, 12);
    t[0] = (w[0] & 0x0F0F0F0Fu) | ((w[2] & 0x03030303u) << 4);
    t[1] = (w[1] & 0x0F0F0F0Fu) | (((w[2] >> 2) & 0x03030303u) << 4);
    t[2] = ((w[0] >> 4) & 0x0F0F0F0Fu) | (((w[2] >> 4) & 0x03030303u) << 4);
    t[3] = ((w[1] >> 4) & 0x0F0F0F0Fu) | (((w[2] >> 6) & 0x03030303u) << 4);
    /* built in registers: a 16-byte load of t would stall on forwarding
     * from the four 4-byte stores */
    return _mm_setr_epi32((int)t[0], (int)t[1], (int)t[2], (int)t[3]);
}

/* q3_K: unsigned levels low2 | hbit << 2 (0..7) against the activations,
 * then the -4 offset through the block sums: sum sc * 4 * bsum. */
static float dot_q3_K(int64_t n, const void *w, const void *x)
{
    const block_q3_K *a = w;
    const block_q8_K *y = x;
    const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    float acc = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m128i sc = _mm_sub_epi8(k3_scales(a[i].scales), _mm_set1_epi8(32));
        __m256i eo = scales_eo(sc);
        __m256i hm = load256(a[i].hmask), sumi = _mm256_setzero_si256();
        for (int c = 0; c < 2; c++) {
            __m256i q = load256(a[i].qs + 32 * c);
            for (int j = 0; j < 4; j++) {
                /* 16-bit shifts: at step k only bit 0 is used, and bits
                 * leaking in from the next byte sit at 8-k and above */
                __m256i h = _mm256_slli_epi16(_mm256_and_si256(hm, one), 2);
                __m256i l = _mm256_or_si256(_mm256_and_si256(q, m2), h);
                q = _mm256_srli_epi16(q, 2);
                hm = _mm256_srli_epi16(hm, 1);
                sumi = _mm256_add_epi32(sumi, part16x2(l, y[i].qs + 128 * c + 32 * j,
                                                       pick_scales(eo, 4 * c + j)));
            }
        }
        int isum = hsum_epi32(sumi) - 4 * scaled_bsums(y[i].bsums, sc);
        acc += F16(a[i].d) * y[i].d * (float)isum;
    }
    return acc;
}

/* ---- attention helpers and conversions ---------------------------------- */

static void axpy_f32(int64_t n, float a, const void *row, float *out)
{
    const float *v = row;
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
    for (; i < n; i++)
        out[i] += a * v[i];
}

static void axpy_f16(int64_t n, float a, const void *row, float *out)
{
    const uint16_t *v = row;
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(va, load_f16x8(v + i), _mm256_loadu_ps(out + i)));
    for (; i < n; i++)
        out[i] += a * F16(v[i]);
}

/* out += a * (q * d), the product q * d rounded first as the reference */
static void axpy_q8_0(int64_t n, float a, const void *row, float *out)
{
    const block_q8_0 *b = row;
    const __m256 va = _mm256_set1_ps(a);
    for (int64_t k = 0; k < n / QK8_0; k++, out += QK8_0) {
        __m256 d = _mm256_set1_ps(F16(b[k].d));
        for (int j = 0; j < 4; j++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(b[k].qs + 8 * j));
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
            _mm256_storeu_ps(out + 8 * j, _mm256_fmadd_ps(va, v, _mm256_loadu_ps(out + 8 * j)));
        }
    }
}

/* ---- vector exp: softmax and SwiGLU ----------------------------------------
 * e^x = 2^n e^r, |r| <= ln2/2, e^r by Taylor to r^7; 2^n built in the
 * exponent bits, so x is clamped to [-87, 88] (below, expf's result is
 * under 2^-125 and vanishes against the terms these kernels add it to). */
static __m256 exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n for n in [-126, 127]: n = 128 (x near 88) is split in two steps */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i half = _mm256_srai_epi32(ni, 1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

static void softmax_avx2(float *x, int64_t n, float scale, int round_f16)
{
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        x[i] *= scale;
        mx = x[i] > mx ? x[i] : mx;
    }
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 vs = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        vs = _mm256_add_ps(vs, e);
    }
    float sum = hsum_ps(vs);
    for (; i < n; i++) { /* the tail through a padded vector, same exp */
        float t[8] = {0};
        t[0] = x[i] - mx;
        float e = _mm_cvtss_f32(_mm256_castps256_ps128(exp8(_mm256_loadu_ps(t))));
        x[i] = e;
        sum += e;
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), inv);
        if (round_f16)
            v = _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm256_storeu_ps(x + i, v);
    }
    for (; i < n; i++) {
        x[i] *= 1.0f / sum;
        if (round_f16)
            x[i] = _cvtsh_ss(_cvtss_sh(x[i], 0));
    }
}

/* ---- perplexity's sums -------------------------------------------------
 * Float exponentials, eight per lane summed in float (an error under the
 * exponentials' own), then moved to double lanes; a last 1-7 values
 * through -inf padding (an exponential of ~1e-38).  kld_sums repeats
 * exp_sum's steps for its first sum, so the two agree bit for bit. */
#define RUN 64

static inline __m256d pd_pairs(__m256 f)
{
    return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(f)),
                         _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
}

static inline double hsum_pd(__m256d s)
{
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

/* k <= 8 floats at p, the other lanes -inf */
static inline __m256 load_pad(const float *p, int64_t k)
{
    if (k == 8)
        return _mm256_loadu_ps(p);
    float t[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                  -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    memcpy(t, p, (size_t)k * sizeof *p);
    return _mm256_loadu_ps(t);
}

static double exp_sum_avx2(const float *x, int64_t n, float shift)
{
    const __m256 sh = _mm256_set1_ps(shift);
    __m256d s = _mm256_setzero_pd();
    for (int64_t c = 0; c < n; c += RUN) {
        __m256 f = _mm256_setzero_ps();
        const int64_t end = n - c < RUN ? n : c + RUN;
        for (int64_t i = c; i < end; i += 8) {
            __m256 v = load_pad(x + i, end - i < 8 ? end - i : 8);
            f = _mm256_add_ps(f, exp8(_mm256_sub_ps(v, sh)));
        }
        s = _mm256_add_pd(s, pd_pairs(f));
    }
    return hsum_pd(s);
}

/* k <= 8 base values at i (f16 or f32), the other lanes -inf */
static inline __m256 base8(const void *b, int f16, int64_t i, int64_t k)
{
    if (!f16)
        return load_pad((const float *)b + i, k);
    if (k == 8)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)b + i)));
    float t[8];
    for (int64_t j = 0; j < 8; j++)
        t[j] = j < k ? _cvtsh_ss(((const uint16_t *)b)[i + j]) : -INFINITY;
    return _mm256_loadu_ps(t);
}

static void kld_sums_avx2(const float *x, const void *b, int b_f16, int64_t n, float mx,
                          float mb, double out[4])
{
    const __m256 sx = _mm256_set1_ps(mx), sb = _mm256_set1_ps(mb);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 umax = _mm256_set1_ps(-INFINITY);
    __m256d sm = _mm256_setzero_pd(), s0 = sm, s1 = sm;
    for (int64_t c = 0; c < n; c += RUN) {
        __m256 fm = _mm256_setzero_ps(), f0 = fm, f1 = fm;
        const int64_t end = n - c < RUN ? n : c + RUN;
        for (int64_t i = c; i < end; i += 8) {
            const int64_t k = end - i < 8 ? end - i : 8;
            __m256 v = _mm256_sub_ps(load_pad(x + i, k), sx);
            __m256 u = _mm256_sub_ps(base8(b, b_f16, i, k), sb);
            __m256 e = exp8(u);
            /* padded lanes: -inf - -inf is NaN */
            __m256 real = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)k), lane));
            fm = _mm256_add_ps(fm, exp8(v));
            f0 = _mm256_add_ps(f0, e);
            f1 = _mm256_fmadd_ps(e, _mm256_and_ps(_mm256_sub_ps(u, v), real), f1);
            umax = _mm256_max_ps(umax, u);
        }
        sm = _mm256_add_pd(sm, pd_pairs(fm));
        s0 = _mm256_add_pd(s0, pd_pairs(f0));
        s1 = _mm256_add_pd(s1, pd_pairs(f1));
    }
    out[0] = hsum_pd(sm), out[1] = hsum_pd(s0), out[2] = hsum_pd(s1);
    float t[8], m = -INFINITY;
    _mm256_storeu_ps(t, umax);
    for (int j = 0; j < 8; j++)
        m = t[j] > m ? t[j] : m;
    out[3] = m;
}

/* RMSNorm: squares summed in double, four lanes per half vector */
static void rmsnorm_avx2(float *out, const float *x, const float *w, int64_t n, float eps)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = s0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        s0 = _mm256_fmadd_pd(lo, lo, s0);
        s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    double ss = hsum_pd(_mm256_add_pd(s0, s1));
    for (; i < n; i++)
        ss += (double)x[i] * x[i];
    const float sc = (float)(1.0 / sqrt(ss / (double)n + eps));
    const __m256 scale = _mm256_set1_ps(sc);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale),
                                                _mm256_loadu_ps(w + i)));
    for (; i < n; i++)
        out[i] = x[i] * sc * w[i];
}

static void add_avx2(float *x, const float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        x[i] += y[i];
}

static void swiglu_avx2(float *a, const float *b, int64_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(a + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(s, _mm256_loadu_ps(b + i)));
    }
    for (; i < n; i++)
        a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

static void f16_to_f32(const void *x, float *y, int64_t n)
{
    const uint16_t *h = x;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, load_f16x8(h + i));
    for (; i < n; i++)
        y[i] = F16(h[i]);
}

int cm_kernels_avx2(struct cm_kernels *k)
{
    k->isa = "avx2";
    k->vec_dot[CM_TYPE_F32] = dot_f32;
    k->vec_dot[CM_TYPE_F16] = dot_f16;
    k->vec_dot[CM_TYPE_BF16] = dot_bf16;
    k->vec_dot[CM_TYPE_Q8_0] = dot_q8_0;
    k->vec_dot[CM_TYPE_Q4_0] = dot_q4_0;
    k->gemv[CM_TYPE_Q4_0] = &gemv_q4_0_tab;
    k->vec_dot[CM_TYPE_Q4_1] = dot_q4_1;
    k->vec_dot[CM_TYPE_Q5_0] = dot_q5_0;
    k->vec_dot[CM_TYPE_Q5_1] = dot_q5_1;
    k->vec_dot[CM_TYPE_Q4_K] = dot_q4_K;
    k->vec_dot[CM_TYPE_Q5_K] = dot_q5_K;
    k->vec_dot[CM_TYPE_Q6_K] = dot_q6_K;
    k->vec_dot[CM_TYPE_Q2_K] = dot_q2_K;
    k->vec_dot[CM_TYPE_Q3_K] = dot_q3_K;
    k->quantize[CM_TYPE_Q8_0] = quant_q8_0;
    k->axpy[CM_TYPE_F32] = axpy_f32;
    k->axpy[CM_TYPE_F16] = axpy_f16;
    k->axpy[CM_TYPE_Q8_0] = axpy_q8_0;
    k->to_float[CM_TYPE_F16] = f16_to_f32;
    k->softmax = softmax_avx2;
    k->swiglu = swiglu_avx2;
    k->exp_sum = exp_sum_avx2;
    k->kld_sums = kld_sums_avx2;
    k->rmsnorm = rmsnorm_avx2;
    k->add = add_avx2;
    cm_gemm_avx2_install(k);
    return 0;
}

#else /* built without -mavx2 -mfma -mf16c */

int cm_kernels_avx2(struct cm_kernels *k)
{
    (void)k;
    return -1;
}

#endif
