/* kernels_neon.c - AArch64 Advanced SIMD (NEON) kernels.
 *
 * NEON is part of every AArch64 CPU, so this file needs no target flags: on
 * aarch64 it always builds, elsewhere it is a stub that declines.  The
 * integer dots come in two variants generated from one body: one built on
 * vmull_s8 + vpadalq_s16 (any Armv8.0 core, e.g. Cortex-A53/A72), one on
 * the Armv8.2 SDOT instruction (vdotq_s32; Cortex-A55/A76 and later, Apple,
 * Neoverse).  The SDOT functions carry a target attribute instead of the
 * whole file getting -march=armv8.2-a+dotprod, so the compiler can never
 * slip an 8.2 instruction into code an 8.0 core runs; cm_kernels_neon()
 * installs them only when the caller saw HWCAP_ASIMDDP (cpu_arm.c).
 *
 * Integer sums follow quant/ref_*.c exactly; only float summation order
 * differs.  The activation quantizers are byte-identical to the scalar ones
 * (round half to even via FCVTNS, as lrintf in the default FP mode).
 * Everything is static except the installer, as in kernels_avx2.c. */
#include "backends/cpu/kernels.h"

#if defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "backends/cpu/neon_common.h"
#include "quant/blocks.h"

/* Loops over a few rows, blocks or lanes must unroll for their vectors to
 * stay in registers (-O2 leaves them rolled, arrays on the stack). */
#define UNROLL _Pragma("GCC unroll 16")

/* acc + the 16 products a[j]*b[j], spread over the 4 int32 lanes.  Which
 * lane gets which product differs between the variants; every caller only
 * uses lane totals (or scales whole vectors), so that never shows. */
typedef int32x4_t (*sdot_fn)(int32x4_t acc, int8x16_t a, int8x16_t b);

/* Products of two int8 fit int16 (|-128 * -128| = 16384), and vpadalq
 * widens each adjacent pair into the int32 lanes. */
static inline int32x4_t sdot_mull(int32x4_t acc, int8x16_t a, int8x16_t b)
{
    int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    int16x8_t hi = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
}

#if CM_NEON_DP
DP_ATTR static inline int32x4_t sdot_dp(int32x4_t acc, int8x16_t a, int8x16_t b)
{
    return vdotq_s32(acc, a, b);
}
#endif

/* Dot of 32 int8 weights with 32 int8 activations, as 4 int32 lanes. */
BODY int32x4_t dot32(const int8_t *a, const int8_t *b, sdot_fn dot)
{
    int32x4_t p = dot(vdupq_n_s32(0), vld1q_s8(a), vld1q_s8(b));
    return dot(p, vld1q_s8(a + 16), vld1q_s8(b + 16));
}

/* Same with the weights already in registers (lo: elements 0-15). */
BODY int32x4_t dot32r(int8x16_t lo, int8x16_t hi, const int8_t *b, sdot_fn dot)
{
    int32x4_t p = dot(vdupq_n_s32(0), lo, vld1q_s8(b));
    return dot(p, hi, vld1q_s8(b + 16));
}

/* acc + d * (lane sums as floats) */
static inline float32x4_t fma_i32(float32x4_t acc, int32x4_t p, float d)
{
    return vfmaq_n_f32(acc, vcvtq_f32_s32(p), d);
}

/* ---- float weights ------------------------------------------------------ */

static float dot_f32(int64_t n, const void *w, const void *x)
{
    const float *a = w, *b = x;
    float32x4_t s0 = vdupq_n_f32(0), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) { /* four chains hide the FMA latency */
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4)
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* 8 halves: FCVTL converts from the low and the high half of a register. */
static float dot_f16(int64_t n, const void *w, const void *x)
{
    const uint16_t *a = w;
    const float *b = x;
    float32x4_t s0 = vdupq_n_f32(0), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        float16x8_t h0 = vreinterpretq_f16_u16(vld1q_u16(a + i));
        float16x8_t h1 = vreinterpretq_f16_u16(vld1q_u16(a + i + 8));
        s0 = vfmaq_f32(s0, vcvt_f32_f16(vget_low_f16(h0)), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vcvt_high_f32_f16(h0), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vcvt_f32_f16(vget_low_f16(h1)), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vcvt_high_f32_f16(h1), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) {
        float16x4_t h = vreinterpret_f16_u16(vld1_u16(a + i));
        s0 = vfmaq_f32(s0, vcvt_f32_f16(h), vld1q_f32(b + i));
    }
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++)
        s += f16(a[i]) * b[i];
    return s;
}

/* bfloat16 is the top half of a float: widen with a 16-bit left shift. */
static inline float32x4_t bf16x4(const uint16_t *p)
{
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}

static float dot_bf16(int64_t n, const void *w, const void *x)
{
    const uint16_t *a = w;
    const float *b = x;
    float32x4_t s0 = vdupq_n_f32(0), s1 = s0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vfmaq_f32(s0, bf16x4(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, bf16x4(a + i + 4), vld1q_f32(b + i + 4));
    }
    for (; i + 4 <= n; i += 4)
        s0 = vfmaq_f32(s0, bf16x4(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++)
        s += cm_bf16_to_f32(a[i]) * b[i];
    return s;
}

/* ---- legacy formats against Q8_0 / Q8_1 -------------------------------- */

/* Two blocks per step into two accumulators so the FMAs overlap. */
BODY float q8_0_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    const block_q8_0 *a = w, *b = x;
    const int64_t nb = n / QK8_0;
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = acc0;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = fma_i32(acc0, dot32(a[i].qs, b[i].qs, dot), f16(a[i].d) * f16(b[i].d));
        acc1 = fma_i32(acc1, dot32(a[i + 1].qs, b[i + 1].qs, dot),
                       f16(a[i + 1].d) * f16(b[i + 1].d));
    }
    if (i < nb)
        acc0 = fma_i32(acc0, dot32(a[i].qs, b[i].qs, dot), f16(a[i].d) * f16(b[i].d));
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

/* q4_0 levels minus 8 are -8..7: signed bytes straight into the dot. */
BODY int32x4_t q4_0_block(const block_q4_0 *a, const int8_t *y, sdot_fn dot)
{
    uint8x16_t lo, hi;
    nibbles(a->qs, &lo, &hi);
    const int8x16_t eight = vdupq_n_s8(8);
    return dot32r(vsubq_s8(s8(lo), eight), vsubq_s8(s8(hi), eight), y, dot);
}

BODY float q4_0_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    const block_q4_0 *a = w;
    const block_q8_0 *b = x;
    const int64_t nb = n / QK4_0;
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = acc0;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = fma_i32(acc0, q4_0_block(&a[i], b[i].qs, dot), f16(a[i].d) * f16(b[i].d));
        acc1 = fma_i32(acc1, q4_0_block(&a[i + 1], b[i + 1].qs, dot),
                       f16(a[i + 1].d) * f16(b[i + 1].d));
    }
    if (i < nb)
        acc0 = fma_i32(acc0, q4_0_block(&a[i], b[i].qs, dot), f16(a[i].d) * f16(b[i].d));
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

/* q4_1: levels 0..15 as signed bytes; the min term is m * s per block. */
BODY float q4_1_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    const block_q4_1 *a = w;
    const block_q8_1 *b = x;
    float32x4_t acc = vdupq_n_f32(0);
    float mins = 0;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        uint8x16_t lo, hi;
        nibbles(a[i].qs, &lo, &hi);
        acc = fma_i32(acc, dot32r(s8(lo), s8(hi), b[i].qs, dot), f16(a[i].d) * f16(b[i].d));
        mins += f16(a[i].m) * f16(b[i].s);
    }
    return vaddvq_f32(acc) + mins;
}

/* q5_0: (nibble | bit 4) - 16 is -16..15, signed bytes again. */
BODY float q5_0_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    const block_q5_0 *a = w;
    const block_q8_0 *b = x;
    const int8x16_t sixteen = vdupq_n_s8(16);
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t i = 0; i < n / QK5_0; i++) {
        uint8x16_t lo, hi, hlo, hhi;
        nibbles(a[i].qs, &lo, &hi);
        fifth_bits(a[i].qh, &hlo, &hhi);
        int8x16_t q0 = vsubq_s8(s8(vorrq_u8(lo, hlo)), sixteen);
        int8x16_t q1 = vsubq_s8(s8(vorrq_u8(hi, hhi)), sixteen);
        acc = fma_i32(acc, dot32r(q0, q1, b[i].qs, dot), f16(a[i].d) * f16(b[i].d));
    }
    return vaddvq_f32(acc);
}

BODY float q5_1_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    const block_q5_1 *a = w;
    const block_q8_1 *b = x;
    float32x4_t acc = vdupq_n_f32(0);
    float mins = 0;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        uint8x16_t lo, hi, hlo, hhi;
        nibbles(a[i].qs, &lo, &hi);
        fifth_bits(a[i].qh, &hlo, &hhi);
        int32x4_t p = dot32r(s8(vorrq_u8(lo, hlo)), s8(vorrq_u8(hi, hhi)), b[i].qs, dot);
        acc = fma_i32(acc, p, f16(a[i].d) * f16(b[i].d));
        mins += f16(a[i].m) * f16(b[i].s);
    }
    return vaddvq_f32(acc) + mins;
}

/* ---- generation: q8_0 / q4_0 / q5_0 rows on a packed activation ---------
 *
 * cm_gemv for the three formats whose blocks keep elements 0-15 and 16-31
 * in two 16-byte halves (q4_0/q5_0 as low and high nibbles): those halves
 * already line up with a q8_0 activation's quants, so the pack reorders
 * nothing.  It groups 4 blocks so their scales load as one float vector
 * (no per-row f16 conversion of the activation) and stores each block's
 * quant sum: the weights' level offset (8, 16) then costs one multiply-
 * subtract on 4 block sums instead of two byte subtractions per block and
 * row, and the sums stay exact integers as in the references.  Per row, 4
 * blocks' lanes fold into one vector by pairwise adds and take one
 * multiply-add; dot4 loads each activation group once for four rows and
 * reduces the rows together. */
typedef struct {
    int8_t q[4][32]; /* the blocks' quants */
    float d[4];      /* their scales */
    int32_t s[4];    /* sums of their quants */
} gv_group;
_Static_assert(sizeof(gv_group) == 160, "gv_group layout");

enum { GV_Q8_0, GV_Q4_0, GV_Q5_0 };

static size_t gv_bytes(int64_t cols)
{
    return (size_t)((cols / QK8_0 + 3) / 4) * sizeof(gv_group);
}

/* Blocks past the row's end stay zero (quants, scale and sum), so a short
 * last group needs no special case on the activation side. */
static void gv_pack(int64_t cols, const void *xq, void *dst)
{
    const block_q8_0 *x = xq;
    gv_group *g = dst;
    memset(g, 0, gv_bytes(cols));
    for (int64_t i = 0; i < cols / QK8_0; i++) {
        gv_group *gi = g + i / 4;
        const int j = (int)(i % 4);
        memcpy(gi->q[j], x[i].qs, QK8_0);
        gi->d[j] = f16(x[i].d);
        gi->s[j] = vaddlvq_s8(vld1q_s8(x[i].qs)) + vaddlvq_s8(vld1q_s8(x[i].qs + 16));
    }
}

static inline size_t gv_block_bytes(int fmt)
{
    return fmt == GV_Q8_0 ? sizeof(block_q8_0)
                          : fmt == GV_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q5_0);
}

/* Block i of a row against 32 activation quants, levels without their
 * offset: q4_0's 0..15 and q5_0's 0..31 are valid signed bytes. */
BODY int32x4_t gv_block(int fmt, const void *row, int64_t i, const int8_t *x, sdot_fn dot)
{
    uint8x16_t lo, hi;
    if (fmt == GV_Q8_0)
        return dot32(((const block_q8_0 *)row)[i].qs, x, dot);
    if (fmt == GV_Q4_0) {
        nibbles(((const block_q4_0 *)row)[i].qs, &lo, &hi);
    } else {
        const block_q5_0 *b = (const block_q5_0 *)row + i;
        uint8x16_t hlo, hhi;
        nibbles(b->qs, &lo, &hi);
        fifth_bits(b->qh, &hlo, &hhi);
        lo = vorrq_u8(lo, hlo), hi = vorrq_u8(hi, hhi);
    }
    return dot32r(s8(lo), s8(hi), x, dot);
}

/* The scales of blocks i..i+k-1 (k <= 4, lanes past k zero), assembled in
 * a general register: four narrow stores and a vector reload would stall
 * store forwarding, on every row.  d leads every block of the three. */
BODY float32x4_t gv_scales(int fmt, const void *row, int64_t i, int k)
{
    const size_t bsz = gv_block_bytes(fmt);
    const uint8_t *p = (const uint8_t *)row + (size_t)i * bsz;
    uint64_t h = 0;
    UNROLL
    for (int j = 0; j < k; j++) {
        uint16_t v;
        memcpy(&v, p + (size_t)j * bsz, 2);
        h |= (uint64_t)v << (16 * j);
    }
    return vcvt_f32_f16(vreinterpret_f16_u16(vcreate_u16(h)));
}

/* acc + blocks i..i+k-1 of one row against activation group g, lane j
 * holding block j.  Blocks past k are zero vectors, never loads: the row
 * may end there. */
BODY float32x4_t gv_row(int fmt, const void *row, int64_t i, int k, const gv_group *g,
                        float32x4_t acc, sdot_fn dot)
{
    const int off = fmt == GV_Q4_0 ? 8 : fmt == GV_Q5_0 ? 16 : 0;
    int32x4_t p[4];
    UNROLL
    for (int j = 0; j < 4; j++)
        p[j] = j < k ? gv_block(fmt, row, i + j, g->q[j], dot) : vdupq_n_s32(0);
    int32x4_t s = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
    if (off)
        s = vmlsq_n_s32(s, vld1q_s32(g->s), off);
    float32x4_t d = vmulq_f32(gv_scales(fmt, row, i, k), vld1q_f32(g->d));
    return vfmaq_f32(acc, vcvtq_f32_s32(s), d);
}

/* out[r] = dot of rows w + r * wrow (r < nr, 1 or 4) with the packed x.
 * Named accumulators, not an array: GCC keeps an array of them on the
 * stack, a load and a store per group and row.  The four rows' loads of
 * the same activation bytes merge once inlined. */
BODY void gv_body(int fmt, int64_t n, const void *w, size_t wrow, int nr, const void *xp,
                  float *out, sdot_fn dot)
{
    const gv_group *g = xp;
    const int64_t nb = n / QK8_0;
    const char *w0 = w, *w1 = w0 + wrow, *w2 = w1 + wrow, *w3 = w2 + wrow;
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < nb; i += 4, g++) {
        const int k = nb - i < 4 ? (int)(nb - i) : 4;
        if (k < 4) { /* the row's last 1-3 blocks */
            a0 = gv_row(fmt, w0, i, k, g, a0, dot);
            if (nr == 4) {
                a1 = gv_row(fmt, w1, i, k, g, a1, dot);
                a2 = gv_row(fmt, w2, i, k, g, a2, dot);
                a3 = gv_row(fmt, w3, i, k, g, a3, dot);
            }
            break;
        }
        a0 = gv_row(fmt, w0, i, 4, g, a0, dot);
        if (nr == 4) {
            a1 = gv_row(fmt, w1, i, 4, g, a1, dot);
            a2 = gv_row(fmt, w2, i, 4, g, a2, dot);
            a3 = gv_row(fmt, w3, i, 4, g, a3, dot);
        }
    }
    if (nr == 1)
        out[0] = vaddvq_f32(a0);
    else /* lane r: row r's total */
        vst1q_f32(out, vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3)));
}

/* ---- activation quantizers ---------------------------------------------- */

/* Largest |x[j]| over n (a multiple of 16).  FMAXNM ignores NaN like the
 * references' strict > comparisons do. */
static float absmax(const float *x, int n)
{
    float32x4_t m0 = vdupq_n_f32(0), m1 = m0;
    for (int j = 0; j < n; j += 8) {
        m0 = vmaxnmq_f32(m0, vabsq_f32(vld1q_f32(x + j)));
        m1 = vmaxnmq_f32(m1, vabsq_f32(vld1q_f32(x + j + 4)));
    }
    return vmaxnmvq_f32(vmaxnmq_f32(m0, m1));
}

/* 16 int8 = round-half-even(x[j] * s), saturated. */
static inline int8x16_t round16(const float *x, float s)
{
    int32x4_t q[4];
    for (int k = 0; k < 4; k++)
        q[k] = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4 * k), s));
    int16x8_t h0 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
    int16x8_t h1 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
    return vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1));
}

/* As q8_quants in ref_legacy.c: d = amax / 127; a block whose d rounds to
 * half zero is all zeros.  Returns the unrounded d (0 for such blocks). */
static float q8_block(const float *x, int8_t *qs, uint16_t *dh)
{
    float d = absmax(x, QK8_0) / 127;
    *dh = cm_f32_to_f16(d);
    if (*dh == 0) {
        memset(qs, 0, QK8_0);
        return 0;
    }
    float id = 1.0f / d;
    vst1q_s8(qs, round16(x, id));
    vst1q_s8(qs + 16, round16(x + 16, id));
    return d;
}

static void quant_q8_0(const float *x, void *y, int64_t n)
{
    block_q8_0 *b = y;
    for (int64_t i = 0; i < n / QK8_0; i++)
        q8_block(x + i * QK8_0, b[i].qs, &b[i].d);
}

static void quant_q8_1(const float *x, void *y, int64_t n)
{
    block_q8_1 *b = y;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        float d = q8_block(x + i * QK8_1, b[i].qs, &b[i].d);
        int sum = vaddlvq_s8(vld1q_s8(b[i].qs)) + vaddlvq_s8(vld1q_s8(b[i].qs + 16));
        b[i].s = cm_f32_to_f16((float)sum * d); /* unrounded d, as the ref */
    }
}

/* As cm_quant_q8_K: the first value of largest magnitude maps to -128. */
static void q8_K_block(const float *x, block_q8_K *b)
{
    float amax = absmax(x, QK_K), max = 0;
    memset(b, 0, sizeof *b);
    for (int e = 0; e < QK_K; e++)
        if (fabsf(x[e]) == amax) {
            max = x[e];
            break;
        }
    float is = amax > 0 ? -127.0f / max : 0; /* llama.cpp: -127, so +-127 */
    if (!isfinite(is) || is == 0) /* zero, or so tiny 1/d overflows */
        return;
    for (int j = 0; j < 16; j++) {
        int8x16_t q = round16(x + 16 * j, is);
        /* qlevel maps nan to the bottom level; FCVTNS would give 0 */
        uint32x4_t ok[4];
        for (int k = 0; k < 4; k++) {
            float32x4_t v = vld1q_f32(x + 16 * j + 4 * k);
            ok[k] = vceqq_f32(v, v);
        }
        uint16x8_t o0 = vcombine_u16(vmovn_u32(ok[0]), vmovn_u32(ok[1]));
        uint16x8_t o1 = vcombine_u16(vmovn_u32(ok[2]), vmovn_u32(ok[3]));
        uint8x16_t okb = vcombine_u8(vmovn_u16(o0), vmovn_u16(o1));
        q = vbslq_s8(okb, q, vdupq_n_s8(-128));
        vst1q_s8(b->qs + 16 * j, q);
        b->bsums[j] = (int16_t)vaddlvq_s8(q);
    }
    b->d = 1 / is;
}

static void quant_q8_K(const float *x, void *y, int64_t n)
{
    block_q8_K *b = y;
    for (int64_t i = 0; i < n / QK_K; i++)
        q8_K_block(x + i * QK_K, &b[i]);
}

/* ---- K-quants against Q8_K ---------------------------------------------- */

/* The 8 6-bit scales (sm[0..7]) and mins (sm[8..15]) of q4_K/q5_K (see
 * cm_k4_scale_min), four at a time from the 12 bytes as 32-bit words. */
static inline void k4_scales_mins(const uint8_t *s, uint8_t sm[16])
{
    uint32_t w[3], t[4];
    memcpy(w, s, 12);
    t[0] = w[0] & 0x3F3F3F3Fu;
    t[1] = (w[2] & 0x0F0F0F0Fu) | (((w[0] >> 6) & 0x03030303u) << 4);
    t[2] = w[1] & 0x3F3F3F3Fu;
    t[3] = ((w[2] >> 4) & 0x0F0F0F0Fu) | (((w[1] >> 6) & 0x03030303u) << 4);
    memcpy(sm, t, 16);
}

/* sum_j m[j] * (bsums[2j] + bsums[2j+1]); pair sums fit int16 (<= 4096). */
static inline int k4_mins_dot(const int16_t *bsums, const uint8_t *m)
{
    int16x8_t pairs = vpaddq_s16(vld1q_s16(bsums), vld1q_s16(bsums + 8));
    int16x8_t m16 = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m)));
    int32x4_t p = vmull_s16(vget_low_s16(pairs), vget_low_s16(m16));
    return vaddvq_s32(vmlal_high_s16(p, pairs, m16));
}

/* sum_j sc[j] * bsums[j] over 16 int8 factors (q2_K mins). */
static inline int scaled_bsums(const int16_t *bsums, int8x16_t sc)
{
    int16x8_t s0 = vmovl_s8(vget_low_s8(sc)), s1 = vmovl_high_s8(sc);
    int16x8_t b0 = vld1q_s16(bsums), b1 = vld1q_s16(bsums + 8);
    int32x4_t p = vmull_s16(vget_low_s16(b0), vget_low_s16(s0));
    p = vmlal_high_s16(p, b0, s0);
    p = vmlal_s16(p, vget_low_s16(b1), vget_low_s16(s1));
    return vaddvq_s32(vmlal_high_s16(p, b1, s1));
}

/* One 64-element chunk of q4_K/q5_K: levels lo0/lo1 (sub-block 2c, 32
 * elements as two halves) and hi0/hi1 (2c+1) against 64 activations, each
 * sub-block weighted by its scale.  Levels <= 31 are valid signed bytes. */
BODY int32x4_t k4_chunk(int32x4_t acc, const uint8x16_t q[4], const int8_t *y,
                        const uint8_t *sc, sdot_fn dot)
{
    acc = vmlaq_n_s32(acc, dot32r(s8(q[0]), s8(q[1]), y, dot), sc[0]);
    return vmlaq_n_s32(acc, dot32r(s8(q[2]), s8(q[3]), y + 32, dot), sc[1]);
}

/* Element 64c + 32h + l is nibble h of qs[32c + l]; for q5_K bit 4 is bit
 * 2c + h of qh[l].  sumi <= 8 * 63 * 32 * 31 * 128: no int32 overflow.
 * q4_K and q5_K share d, dmin and scales, so one body serves both, reading
 * the blocks as bytes at the fields' offsets; `five` is a constant after
 * inlining. */
BODY float q45_K_body(int64_t n, const void *w, const void *x, int five, sdot_fn dot)
{
    const block_q8_K *y = x;
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const size_t qs_off = five ? offsetof(block_q5_K, qs) : offsetof(block_q4_K, qs);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), one = vdupq_n_u8(1), two = vdupq_n_u8(2);
    float acc = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)i * bsz, *qs = blk + qs_off;
        uint16_t dh[2];
        uint8_t sm[16];
        memcpy(dh, blk, 4);
        k4_scales_mins(blk + offsetof(block_q4_K, scales), sm);
        uint8x16_t h0 = vdupq_n_u8(0), h1 = h0;
        if (five) {
            const uint8_t *qh = blk + offsetof(block_q5_K, qh);
            h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
        }
        int32x4_t sumi = vdupq_n_s32(0);
        for (int c = 0; c < 4; c++) {
            uint8x16_t v0 = vld1q_u8(qs + 32 * c), v1 = vld1q_u8(qs + 32 * c + 16);
            uint8x16_t q[4] = {vandq_u8(v0, m4), vandq_u8(v1, m4), vshrq_n_u8(v0, 4),
                               vshrq_n_u8(v1, 4)};
            if (five) { /* bit 2c -> 0x10 of the low levels, 2c+1 of the high */
                q[0] = vorrq_u8(q[0], vshlq_n_u8(vandq_u8(h0, one), 4));
                q[1] = vorrq_u8(q[1], vshlq_n_u8(vandq_u8(h1, one), 4));
                q[2] = vorrq_u8(q[2], vshlq_n_u8(vandq_u8(h0, two), 3));
                q[3] = vorrq_u8(q[3], vshlq_n_u8(vandq_u8(h1, two), 3));
                h0 = vshrq_n_u8(h0, 2), h1 = vshrq_n_u8(h1, 2);
            }
            sumi = k4_chunk(sumi, q, y[i].qs + 64 * c, sm + 2 * c, dot);
        }
        float d = f16(dh[0]) * y[i].d, dmin = f16(dh[1]) * y[i].d;
        acc += d * (float)vaddvq_s32(sumi) - dmin * (float)k4_mins_dot(y[i].bsums, sm + 8);
    }
    return acc;
}

BODY float q4_K_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    return q45_K_body(n, w, x, 0, dot);
}

BODY float q5_K_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    return q45_K_body(n, w, x, 1, dot);
}

/* Two 16-element sub-blocks (one 32-element run, halves q0 and q1) with
 * their own int8 scales sc[0], sc[1]. */
BODY int32x4_t part16x2(int32x4_t acc, int8x16_t q0, int8x16_t q1, const int8_t *y,
                        const int8_t *sc, sdot_fn dot)
{
    const int32x4_t z = vdupq_n_s32(0);
    acc = vmlaq_n_s32(acc, dot(z, q0, vld1q_s8(y)), sc[0]);
    return vmlaq_n_s32(acc, dot(z, q1, vld1q_s8(y + 16)), sc[1]);
}

/* q6_K level (lo4 | hi2 << 4) - 32, in -32..31. */
static inline int8x16_t q6_level(uint8x16_t lo4, uint8x16_t hi2)
{
    return vsubq_s8(s8(vorrq_u8(lo4, vshlq_n_u8(hi2, 4))), vdupq_n_s8(32));
}

/* Element 128c + 32k + l: nibble k>>1 of ql[64c + 32(k&1) + l], bits 2k of
 * qh[32c + l]; sub-block 8c + 2k + l/16.  |sumi| <= 16*128*32*128. */
BODY float q6_K_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    const block_q6_K *a = w;
    const block_q8_K *y = x;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m2 = vdupq_n_u8(0x03);
    float acc = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32x4_t sumi = vdupq_n_s32(0);
        for (int c = 0; c < 2; c++) {
            const uint8_t *ql = a[i].ql + 64 * c, *qh = a[i].qh + 32 * c;
            const int8_t *q8 = y[i].qs + 128 * c, *sc = a[i].scales + 8 * c;
            uint8x16_t l[4], h[2] = {vld1q_u8(qh), vld1q_u8(qh + 16)};
            for (int k = 0; k < 4; k++)
                l[k] = vld1q_u8(ql + 16 * k);
            for (int k = 0; k < 4; k++) {
                const uint8x16_t *lk = l + 2 * (k & 1);
                uint8x16_t lo0 = k < 2 ? vandq_u8(lk[0], m4) : vshrq_n_u8(lk[0], 4);
                uint8x16_t lo1 = k < 2 ? vandq_u8(lk[1], m4) : vshrq_n_u8(lk[1], 4);
                int8x16_t q0 = q6_level(lo0, vandq_u8(h[0], m2));
                int8x16_t q1 = q6_level(lo1, vandq_u8(h[1], m2));
                h[0] = vshrq_n_u8(h[0], 2), h[1] = vshrq_n_u8(h[1], 2);
                sumi = part16x2(sumi, q0, q1, q8 + 32 * k, sc + 2 * k, dot);
            }
        }
        acc += f16(a[i].d) * y[i].d * (float)vaddvq_s32(sumi);
    }
    return acc;
}

/* q2_K: element 128c + 32j + l is bits 2j of qs[32c + l]; sub-block
 * 8c + 2j + l/16 has scale (low nibble) and min (high nibble). */
BODY float q2_K_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    const block_q2_K *a = w;
    const block_q8_K *y = x;
    const uint8x16_t m2 = vdupq_n_u8(3);
    float acc = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8x16_t s8v = vld1q_u8(a[i].scales);
        int8_t sc[16];
        vst1q_s8(sc, s8(vandq_u8(s8v, vdupq_n_u8(0x0F))));
        int32x4_t sumi = vdupq_n_s32(0);
        for (int c = 0; c < 2; c++) {
            uint8x16_t q0 = vld1q_u8(a[i].qs + 32 * c), q1 = vld1q_u8(a[i].qs + 32 * c + 16);
            for (int j = 0; j < 4; j++) {
                sumi = part16x2(sumi, s8(vandq_u8(q0, m2)), s8(vandq_u8(q1, m2)),
                                y[i].qs + 128 * c + 32 * j, sc + 8 * c + 2 * j, dot);
                q0 = vshrq_n_u8(q0, 2), q1 = vshrq_n_u8(q1, 2);
            }
        }
        int summs = scaled_bsums(y[i].bsums, s8(vshrq_n_u8(s8v, 4)));
        float dall = y[i].d * f16(a[i].d), dmin = y[i].d * f16(a[i].dmin);
        acc += dall * (float)vaddvq_s32(sumi) - dmin * (float)summs;
    }
    return acc;
}

/* The 16 q3_K scales minus 32 (see cm_k3_scales), from the 12 bytes as
 * 32-bit words: low nibbles from bytes 0-7, top bits from bytes 8-11. */
static inline void k3_scales(const uint8_t *s, int8_t out[16])
{
    uint32_t w[3], t[4];
    memcpy(w, s, 12);
    t[0] = (w[0] & 0x0F0F0F0Fu) | ((w[2] & 0x03030303u) << 4);
    t[1] = (w[1] & 0x0F0F0F0Fu) | (((w[2] >> 2) & 0x03030303u) << 4);
    t[2] = ((w[0] >> 4) & 0x0F0F0F0Fu) | (((w[2] >> 4) & 0x03030303u) << 4);
    t[3] = ((w[1] >> 4) & 0x0F0F0F0Fu) | (((w[2] >> 6) & 0x03030303u) << 4);
    uint8x16_t v = vreinterpretq_u8_u32(vld1q_u32(t));
    vst1q_s8(out, vsubq_s8(s8(v), vdupq_n_s8(32)));
}

/* q3_K level (low2 | hbit << 2) - 4, in -4..3. */
static inline int8x16_t q3_level(uint8x16_t q, uint8x16_t h)
{
    uint8x16_t v = vorrq_u8(vandq_u8(q, vdupq_n_u8(3)), vshlq_n_u8(vandq_u8(h, vdupq_n_u8(1)), 2));
    return vsubq_s8(s8(v), vdupq_n_s8(4));
}

/* q3_K: low bits as q2_K; the high bit of element 128c + 32j + l is bit
 * 4c + j of hmask[l], so hmask shifts right once per 32-element run. */
BODY float q3_K_body(int64_t n, const void *w, const void *x, sdot_fn dot)
{
    const block_q3_K *a = w;
    const block_q8_K *y = x;
    float acc = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int8_t sc[16];
        k3_scales(a[i].scales, sc);
        uint8x16_t h0 = vld1q_u8(a[i].hmask), h1 = vld1q_u8(a[i].hmask + 16);
        int32x4_t sumi = vdupq_n_s32(0);
        for (int c = 0; c < 2; c++) {
            uint8x16_t q0 = vld1q_u8(a[i].qs + 32 * c), q1 = vld1q_u8(a[i].qs + 32 * c + 16);
            for (int j = 0; j < 4; j++) {
                sumi = part16x2(sumi, q3_level(q0, h0), q3_level(q1, h1),
                                y[i].qs + 128 * c + 32 * j, sc + 8 * c + 2 * j, dot);
                q0 = vshrq_n_u8(q0, 2), q1 = vshrq_n_u8(q1, 2);
                h0 = vshrq_n_u8(h0, 1), h1 = vshrq_n_u8(h1, 1);
            }
        }
        acc += f16(a[i].d) * y[i].d * (float)vaddvq_s32(sumi);
    }
    return acc;
}

/* ---- vector exp: softmax, SwiGLU, perplexity's sums ---------------------
 * e^x = 2^n e^r with n = round(x / ln2) and |r| <= ln2/2 (ln2 in two parts,
 * the high one short enough that n * hi is exact), e^r by its Taylor
 * polynomial to r^7 (truncation < 1e-8 relative), 2^n built in the exponent
 * field.  x is clamped to [-87, 88], where 2^n is a normal float; below -87
 * the result is flushed to 0: expf's is under 2^-125 there, nothing against
 * the terms these kernels add it to.  FMAX/FMIN pass NaN on, as expf does. */
static inline float32x4_t exp4(float32x4_t x)
{
    const uint32x4_t under = vcltq_f32(x, vdupq_n_f32(-87.0f));
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0f)), vdupq_n_f32(88.0f));
    float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693145751953125f));
    r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187e-06f));
    static const float inv_fact[] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6,
                                     0.5f,       1.0f,       1.0f};
    float32x4_t p = vdupq_n_f32(1.0f / 5040);
    UNROLL
    for (int k = 0; k < 7; k++)
        p = vfmaq_f32(vdupq_n_f32(inv_fact[k]), p, r);
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(y), under));
}

/* four f16 values widened */
static inline float32x4_t f16x4(const uint16_t *p)
{
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

/* The k < 4 values at p in a vector, the other lanes `fill`; and back. */
static inline float32x4_t load_tail(const float *p, int64_t k, float fill)
{
    float t[4] = {fill, fill, fill, fill};
    memcpy(t, p, (size_t)k * sizeof *p);
    return vld1q_f32(t);
}

static inline void store_tail(float *p, int64_t k, float32x4_t v)
{
    float t[4];
    vst1q_f32(t, v);
    memcpy(p, t, (size_t)k * sizeof *p);
}

/* Tails go through padded vectors so every value sees the same exp; -inf
 * padding has no effect on the max and an exponential of 0. */
static void softmax_neon(float *x, int64_t n, float scale, int round_f16)
{
    const int64_t nv = n & ~(int64_t)3, k = n - nv;
    float32x4_t vmax = vdupq_n_f32(-INFINITY);
    /* the sum in double: four float lanes over long rows drift past the
     * reference's 1e-6 (seen at n = 771) */
    float64x2_t vsum = vdupq_n_f64(0);
    for (int64_t i = 0; i < nv; i += 4) {
        float32x4_t v = vmulq_n_f32(vld1q_f32(x + i), scale);
        vst1q_f32(x + i, v);
        vmax = vmaxq_f32(vmax, v);
    }
    if (k) {
        float32x4_t v = vmulq_n_f32(load_tail(x + nv, k, -INFINITY), scale);
        store_tail(x + nv, k, v);
        vmax = vmaxq_f32(vmax, v);
    }
    const float32x4_t mx = vdupq_n_f32(vmaxvq_f32(vmax));
    for (int64_t i = 0; i < n; i += 4) {
        float32x4_t v = i < nv ? vld1q_f32(x + i) : load_tail(x + i, k, -INFINITY);
        float32x4_t e = exp4(vsubq_f32(v, mx));
        if (i < nv)
            vst1q_f32(x + i, e);
        else
            store_tail(x + i, k, e);
        vsum = vaddq_f64(vsum, vaddq_f64(vcvt_f64_f32(vget_low_f32(e)), vcvt_high_f64_f32(e)));
    }
    const float inv = (float)(1.0 / vaddvq_f64(vsum));
    for (int64_t i = 0; i < n; i += 4) {
        float32x4_t v = vmulq_n_f32(i < nv ? vld1q_f32(x + i) : load_tail(x + i, k, 0), inv);
        if (round_f16) /* FCVTN rounds to nearest even, as cm_f32_to_f16 */
            v = vcvt_f32_f16(vcvt_f16_f32(v));
        if (i < nv)
            vst1q_f32(x + i, v);
        else
            store_tail(x + i, k, v);
    }
}

/* RMSNorm: squares summed in double, two lanes per half vector */
static void rmsnorm_neon(float *out, const float *x, const float *w, int64_t n, float eps)
{
    float64x2_t s0 = vdupq_n_f64(0), s1 = s0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        float64x2_t lo = vcvt_f64_f32(vget_low_f32(v)), hi = vcvt_high_f64_f32(v);
        s0 = vfmaq_f64(s0, lo, lo);
        s1 = vfmaq_f64(s1, hi, hi);
    }
    double ss = vaddvq_f64(vaddq_f64(s0, s1));
    for (; i < n; i++)
        ss += (double)x[i] * x[i];
    const float sc = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (i = 0; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vmulq_f32(vmulq_n_f32(vld1q_f32(x + i), sc), vld1q_f32(w + i)));
    for (; i < n; i++)
        out[i] = x[i] * sc * w[i];
}

static void add_neon(float *x, const float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(x + i, vaddq_f32(vld1q_f32(x + i), vld1q_f32(y + i)));
    for (; i < n; i++)
        x[i] += y[i];
}

/* silu through e^-x clamped at 88: where expf's e^-x is infinite (x < -88)
 * the result is x / 1.7e38 instead of -0, both nothing. */
static void swiglu_neon(float *a, const float *b, int64_t n)
{
    const float32x4_t one = vdupq_n_f32(1.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t x = vld1q_f32(a + i);
        float32x4_t s = vdivq_f32(x, vaddq_f32(one, exp4(vnegq_f32(x))));
        vst1q_f32(a + i, vmulq_f32(s, vld1q_f32(b + i)));
    }
    for (; i < n; i++)
        a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

/* ---- perplexity's sums -------------------------------------------------
 * Float exponentials, eight per lane summed in float (an error under the
 * exponentials' own), then moved to double lanes; the last 1-3 values
 * through -inf padding (an exponential of 0).  kld_sums repeats exp_sum's
 * steps for its first sum, so the two agree bit for bit. */
#define RUN 32

static inline float64x2_t pd_pairs(float32x4_t f)
{
    return vaddq_f64(vcvt_f64_f32(vget_low_f32(f)), vcvt_high_f64_f32(f));
}

static double exp_sum_neon(const float *x, int64_t n, float shift)
{
    const float32x4_t sh = vdupq_n_f32(shift);
    float64x2_t s = vdupq_n_f64(0);
    for (int64_t c = 0; c < n; c += RUN) {
        float32x4_t f = vdupq_n_f32(0);
        const int64_t end = n - c < RUN ? n : c + RUN;
        for (int64_t i = c; i < end; i += 4) {
            float32x4_t v = end - i >= 4 ? vld1q_f32(x + i) : load_tail(x + i, end - i, -INFINITY);
            f = vaddq_f32(f, exp4(vsubq_f32(v, sh)));
        }
        s = vaddq_f64(s, pd_pairs(f));
    }
    return vaddvq_f64(s);
}

/* k <= 4 base values at i (f16 or f32), the other lanes -inf */
static inline float32x4_t base4(const void *b, int f16, int64_t i, int64_t k)
{
    if (f16 && k == 4)
        return f16x4((const uint16_t *)b + i);
    if (!f16)
        return k == 4 ? vld1q_f32((const float *)b + i) : load_tail((const float *)b + i, k, -INFINITY);
    float t[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    for (int64_t j = 0; j < k; j++)
        t[j] = cm_f16_to_f32(((const uint16_t *)b)[i + j]);
    return vld1q_f32(t);
}

static void kld_sums_neon(const float *x, const void *b, int b_f16, int64_t n, float mx,
                          float mb, double out[4])
{
    const float32x4_t sx = vdupq_n_f32(mx), sb = vdupq_n_f32(mb);
    const int32x4_t lane = {0, 1, 2, 3};
    float32x4_t umax = vdupq_n_f32(-INFINITY);
    float64x2_t sm = vdupq_n_f64(0), s0 = sm, s1 = sm;
    for (int64_t c = 0; c < n; c += RUN) {
        float32x4_t fm = vdupq_n_f32(0), f0 = fm, f1 = fm;
        const int64_t end = n - c < RUN ? n : c + RUN;
        for (int64_t i = c; i < end; i += 4) {
            const int64_t k = end - i < 4 ? end - i : 4;
            float32x4_t xv = k == 4 ? vld1q_f32(x + i) : load_tail(x + i, k, -INFINITY);
            float32x4_t v = vsubq_f32(xv, sx), u = vsubq_f32(base4(b, b_f16, i, k), sb);
            float32x4_t e = exp4(u);
            /* padded lanes: -inf - -inf is NaN, and 0 * NaN too */
            uint32x4_t real = vcltq_s32(lane, vdupq_n_s32((int32_t)k));
            float32x4_t d = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(vsubq_f32(u, v)), real));
            fm = vaddq_f32(fm, exp4(v));
            f0 = vaddq_f32(f0, e);
            f1 = vfmaq_f32(f1, e, d);
            umax = vmaxq_f32(umax, u);
        }
        sm = vaddq_f64(sm, pd_pairs(fm));
        s0 = vaddq_f64(s0, pd_pairs(f0));
        s1 = vaddq_f64(s1, pd_pairs(f1));
    }
    out[0] = vaddvq_f64(sm), out[1] = vaddvq_f64(s0), out[2] = vaddvq_f64(s1);
    out[3] = vmaxvq_f32(umax);
}

/* ---- f16 rows: KV cache conversions and attention ----------------------- */


/* FCVTN rounds to nearest even and treats overflow, subnormals and NaN
 * payloads as cm_f32_to_f16 does (FPCR's default: no flush to zero, no
 * default NaN), so the cache holds the same bits as the scalar path's. */
static void f32_to_f16(const float *x, void *y, int64_t n)
{
    uint16_t *h = y;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x8_t v = vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(x + i)), vld1q_f32(x + i + 4));
        vst1q_u16(h + i, vreinterpretq_u16_f16(v));
    }
    for (; i + 4 <= n; i += 4)
        vst1_u16(h + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++)
        h[i] = cm_f32_to_f16(x[i]);
}

static void f16_to_f32(const void *x, float *y, int64_t n)
{
    const uint16_t *h = x;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, f16x4(h + i));
    for (; i < n; i++)
        y[i] = f16(h[i]);
}

static void axpy_f32(int64_t n, float a, const void *row, float *out)
{
    const float *v = row;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vfmaq_n_f32(vld1q_f32(out + i), vld1q_f32(v + i), a));
    for (; i < n; i++)
        out[i] += a * v[i];
}

static void axpy_f16(int64_t n, float a, const void *row, float *out)
{
    const uint16_t *v = row;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vfmaq_n_f32(vld1q_f32(out + i), f16x4(v + i), a));
    for (; i < n; i++)
        out[i] += a * f16(v[i]);
}

/* out += a * (q * d), the product q * d rounded first as the reference */
static void axpy_q8_0(int64_t n, float a, const void *row, float *out)
{
    const block_q8_0 *b = row;
    for (int64_t k = 0; k < n / QK8_0; k++, out += QK8_0) {
        const float d = f16(b[k].d);
        UNROLL
        for (int h = 0; h < 2; h++) {
            int8x16_t q = vld1q_s8(b[k].qs + 16 * h);
            int16x8_t w[2] = {vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q)};
            UNROLL
            for (int j = 0; j < 4; j++) {
                int16x8_t wj = w[j / 2];
                int32x4_t i32 = j % 2 ? vmovl_high_s16(wj) : vmovl_s16(vget_low_s16(wj));
                float32x4_t v = vmulq_n_f32(vcvtq_f32_s32(i32), d);
                float *o = out + 16 * h + 4 * j;
                vst1q_f32(o, vfmaq_n_f32(vld1q_f32(o), v, a));
            }
        }
    }
}

/* Attention scores against an f16 cache: four rows per pass share the
 * loads of x, two accumulators each (eight FMA chains hide the latency),
 * and the four totals come out of one pairwise-add tree. */
static void dot_rows_f16(int64_t n, const void *rows, size_t stride, int64_t m, const void *xv,
                         float *out)
{
    const float *x = xv;
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        const uint16_t *r[4];
        float32x4_t a[4][2];
        float tail[4] = {0};
        UNROLL
        for (int k = 0; k < 4; k++) {
            r[k] = (const uint16_t *)((const char *)rows + (size_t)(j + k) * stride);
            a[k][0] = a[k][1] = vdupq_n_f32(0);
        }
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            float32x4_t x0 = vld1q_f32(x + i), x1 = vld1q_f32(x + i + 4);
            UNROLL
            for (int k = 0; k < 4; k++) {
                float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(r[k] + i));
                a[k][0] = vfmaq_f32(a[k][0], vcvt_f32_f16(vget_low_f16(h)), x0);
                a[k][1] = vfmaq_f32(a[k][1], vcvt_high_f32_f16(h), x1);
            }
        }
        for (; i + 4 <= n; i += 4)
            UNROLL
            for (int k = 0; k < 4; k++)
                a[k][0] = vfmaq_f32(a[k][0], f16x4(r[k] + i), vld1q_f32(x + i));
        for (; i < n; i++)
            UNROLL
            for (int k = 0; k < 4; k++)
                tail[k] += f16(r[k][i]) * x[i];
        float32x4_t s[4];
        UNROLL
        for (int k = 0; k < 4; k++)
            s[k] = vaddq_f32(a[k][0], a[k][1]);
        float32x4_t t = vpaddq_f32(vpaddq_f32(s[0], s[1]), vpaddq_f32(s[2], s[3]));
        vst1q_f32(out + j, vaddq_f32(t, vld1q_f32(tail)));
    }
    for (; j < m; j++)
        out[j] = dot_f16(n, (const char *)rows + (size_t)j * stride, x);
}

/* The attention-weighted sum of f16 value rows: 32 columns in eight
 * accumulators while the rows stream past, then 4 and 1 at a time. */
static void sum_rows_f16(int64_t n, const void *rows, size_t stride, int64_t m, const float *p,
                         float *out)
{
#define ROW(j) ((const uint16_t *)((const char *)rows + (size_t)(j) * stride))
    int64_t c = 0;
    for (; c + 32 <= n; c += 32) {
        float32x4_t a[8];
        UNROLL
        for (int k = 0; k < 8; k++)
            a[k] = vdupq_n_f32(0);
        for (int64_t j = 0; j < m; j++) {
            const uint16_t *r = ROW(j) + c;
            UNROLL
            for (int k = 0; k < 4; k++) {
                float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(r + 8 * k));
                a[2 * k] = vfmaq_n_f32(a[2 * k], vcvt_f32_f16(vget_low_f16(h)), p[j]);
                a[2 * k + 1] = vfmaq_n_f32(a[2 * k + 1], vcvt_high_f32_f16(h), p[j]);
            }
        }
        UNROLL
        for (int k = 0; k < 8; k++)
            vst1q_f32(out + c + 4 * k, a[k]);
    }
    for (; c + 4 <= n; c += 4) {
        float32x4_t a = vdupq_n_f32(0);
        for (int64_t j = 0; j < m; j++)
            a = vfmaq_n_f32(a, f16x4(ROW(j) + c), p[j]);
        vst1q_f32(out + c, a);
    }
    for (; c < n; c++) {
        float s = 0;
        for (int64_t j = 0; j < m; j++)
            s += p[j] * f16(ROW(j)[c]);
        out[c] = s;
    }
#undef ROW
}

/* ---- prompt attention on f16 tiles ---------------------------------------
 * A tile is nk <= 16 cached rows.  For the scores it is decoded once and
 * transposed to columns of 16 floats (one per key, keys past nk zero), so a
 * query's 16 dots are broadcast multiply-adds with no horizontal sums; for
 * the weighted sum it is decoded once to float rows that every query
 * reads.  Columns go 128 at a time so the tile stays 8 KiB (in L1). */
#define TILE_COLS 128

/* kt[i][j] = column c + i of key j, i < w, j < 16: 4x4 blocks through
 * registers (TRN1/TRN2 on words, then on doublewords). */
static void tile_transpose(const void *k, size_t kstride, int nk, int64_t c, int w,
                           float kt[][16])
{
    for (int j0 = 0; j0 < 16; j0 += 4) {
        const uint16_t *r[4];
        UNROLL
        for (int t = 0; t < 4; t++)
            r[t] = (const uint16_t *)((const char *)k + (size_t)(j0 + t) * kstride) + c;
        int i = 0;
        for (; i + 4 <= w; i += 4) {
            float32x4_t v[4];
            UNROLL
            for (int t = 0; t < 4; t++)
                v[t] = j0 + t < nk ? f16x4(r[t] + i) : vdupq_n_f32(0);
            float64x2_t a = vreinterpretq_f64_f32(vtrn1q_f32(v[0], v[1]));
            float64x2_t b = vreinterpretq_f64_f32(vtrn2q_f32(v[0], v[1]));
            float64x2_t e = vreinterpretq_f64_f32(vtrn1q_f32(v[2], v[3]));
            float64x2_t f = vreinterpretq_f64_f32(vtrn2q_f32(v[2], v[3]));
            vst1q_f32(kt[i] + j0, vreinterpretq_f32_f64(vtrn1q_f64(a, e)));
            vst1q_f32(kt[i + 1] + j0, vreinterpretq_f32_f64(vtrn1q_f64(b, f)));
            vst1q_f32(kt[i + 2] + j0, vreinterpretq_f32_f64(vtrn2q_f64(a, e)));
            vst1q_f32(kt[i + 3] + j0, vreinterpretq_f32_f64(vtrn2q_f64(b, f)));
        }
        for (; i < w; i++)
            UNROLL
            for (int t = 0; t < 4; t++)
                kt[i][j0 + t] = j0 + t < nk ? f16(r[t][i]) : 0;
    }
}

/* Scores of nq (1 or 4) queries x + t * d over w tile columns: acc[t][u]
 * holds keys 4u..4u+3 of query t, sixteen independent FMA chains for four
 * queries. */
BODY void qk_rows(const float (*kt)[16], int w, const float *x, int64_t d, int nq,
                  float32x4_t acc[4][4])
{
    UNROLL
    for (int t = 0; t < nq; t++)
        UNROLL
        for (int u = 0; u < 4; u++)
            acc[t][u] = vdupq_n_f32(0);
    for (int i = 0; i < w; i++) {
        float32x4_t k[4];
        UNROLL
        for (int u = 0; u < 4; u++)
            k[u] = vld1q_f32(kt[i] + 4 * u);
        UNROLL
        for (int t = 0; t < nq; t++)
            UNROLL
            for (int u = 0; u < 4; u++)
                acc[t][u] = vfmaq_n_f32(acc[t][u], k[u], x[t * d + i]);
    }
}

/* out[j] (+)= the 16 lanes' first nk: the row past nk is the caller's. */
static void store_keys(float *out, const float32x4_t a[4], int nk, int add)
{
    float t[16];
    UNROLL
    for (int u = 0; u < 4; u++)
        vst1q_f32(t + 4 * u, a[u]);
    for (int j = 0; j < nk; j++)
        out[j] = add ? out[j] + t[j] : t[j];
}

static void attn_qk_f16(int64_t d, const void *k, size_t kstride, int nk, const float *q,
                        int64_t nq, float *s, size_t ld)
{
    float kt[TILE_COLS][16] __attribute__((aligned(16)));
    float32x4_t acc[4][4];
    for (int64_t c = 0; c < d; c += TILE_COLS) {
        const int w = d - c < TILE_COLS ? (int)(d - c) : TILE_COLS;
        tile_transpose(k, kstride, nk, c, w, kt);
        int64_t qi = 0;
        for (; qi + 4 <= nq; qi += 4) {
            qk_rows((const float (*)[16])kt, w, q + qi * d + c, d, 4, acc);
            UNROLL
            for (int t = 0; t < 4; t++)
                store_keys(s + (qi + t) * ld, acc[t], nk, c > 0);
        }
        for (; qi < nq; qi++) {
            qk_rows((const float (*)[16])kt, w, q + qi * d + c, d, 1, acc);
            store_keys(s + qi * ld, acc[0], nk, c > 0);
        }
    }
}

/* o[i] += sum over j < nk of p[j] * vt[j][i], i < w: 16 columns in four
 * accumulators, then 4 and 1. */
static void pv_row(const float (*vt)[TILE_COLS], int nk, int w, const float *p, float *o)
{
    int i = 0;
    for (; i + 16 <= w; i += 16) {
        float32x4_t a[4];
        UNROLL
        for (int u = 0; u < 4; u++)
            a[u] = vld1q_f32(o + i + 4 * u);
        for (int j = 0; j < nk; j++)
            UNROLL
            for (int u = 0; u < 4; u++)
                a[u] = vfmaq_n_f32(a[u], vld1q_f32(vt[j] + i + 4 * u), p[j]);
        UNROLL
        for (int u = 0; u < 4; u++)
            vst1q_f32(o + i + 4 * u, a[u]);
    }
    for (; i + 4 <= w; i += 4) {
        float32x4_t a = vld1q_f32(o + i);
        for (int j = 0; j < nk; j++)
            a = vfmaq_n_f32(a, vld1q_f32(vt[j] + i), p[j]);
        vst1q_f32(o + i, a);
    }
    for (; i < w; i++) {
        float a = o[i];
        for (int j = 0; j < nk; j++)
            a += p[j] * vt[j][i];
        o[i] = a;
    }
}

static void attn_pv_f16(int64_t d, const void *v, size_t vstride, int nk, const float *p,
                        size_t ld, int64_t nq, float *o)
{
    float vt[16][TILE_COLS] __attribute__((aligned(16)));
    for (int64_t c = 0; c < d; c += TILE_COLS) {
        const int w = d - c < TILE_COLS ? (int)(d - c) : TILE_COLS;
        for (int j = 0; j < nk; j++)
            f16_to_f32((const uint16_t *)((const char *)v + (size_t)j * vstride) + c, vt[j], w);
        for (int64_t qi = 0; qi < nq; qi++)
            pv_row((const float (*)[TILE_COLS])vt, nk, w, p + qi * ld, o + qi * d + c);
    }
}

/* ---- the two variants and the installer --------------------------------- */

#define WRAP(name, ATTR, sfx, DOT)                                            \
    ATTR static float dot_##name##_##sfx(int64_t n, const void *w,           \
                                         const void *x)                      \
    {                                                                         \
        return name##_body(n, w, x, DOT);                                     \
    }

#define INT_TYPES(X, ATTR, sfx, DOT)                                          \
    X(q8_0, ATTR, sfx, DOT) X(q4_0, ATTR, sfx, DOT) X(q4_1, ATTR, sfx, DOT)  \
    X(q5_0, ATTR, sfx, DOT) X(q5_1, ATTR, sfx, DOT) X(q2_K, ATTR, sfx, DOT)  \
    X(q3_K, ATTR, sfx, DOT) X(q4_K, ATTR, sfx, DOT) X(q5_K, ATTR, sfx, DOT)  \
    X(q6_K, ATTR, sfx, DOT)

INT_TYPES(WRAP, , mull, sdot_mull)
#if CM_NEON_DP
INT_TYPES(WRAP, DP_ATTR, dp, sdot_dp)
#endif

#define GV_WRAP(t, FMT, ATTR, sfx, DOT)                                       \
    ATTR NOSCHED static float gv_dot_##t##_##sfx(int64_t n, const void *w,   \
                                                 const void *x)              \
    {                                                                         \
        float out;                                                            \
        gv_body(FMT, n, w, 0, 1, x, &out, DOT);                               \
        return out;                                                           \
    }                                                                         \
    ATTR NOSCHED static void gv_dot4_##t##_##sfx(int64_t n, const void *w,   \
                                         size_t wrow, const void *x,         \
                                         float *out)                         \
    {                                                                         \
        gv_body(FMT, n, w, wrow, 4, x, out, DOT);                             \
    }                                                                         \
    static const cm_gemv gv_##t##_##sfx = {gv_bytes, gv_pack,                 \
                                           gv_dot_##t##_##sfx,                \
                                           gv_dot4_##t##_##sfx};

#define GV_TYPES(ATTR, sfx, DOT)                                              \
    GV_WRAP(q8_0, GV_Q8_0, ATTR, sfx, DOT)                                    \
    GV_WRAP(q4_0, GV_Q4_0, ATTR, sfx, DOT)                                    \
    GV_WRAP(q5_0, GV_Q5_0, ATTR, sfx, DOT)

GV_TYPES(, mull, sdot_mull)
#if CM_NEON_DP
GV_TYPES(DP_ATTR, dp, sdot_dp)
#endif

#define SET(T, t, sfx) k->vec_dot[CM_TYPE_##T] = dot_##t##_##sfx;
#define SET_INT(sfx)                                                          \
    SET(Q8_0, q8_0, sfx) SET(Q4_0, q4_0, sfx) SET(Q4_1, q4_1, sfx)           \
    SET(Q5_0, q5_0, sfx) SET(Q5_1, q5_1, sfx) SET(Q2_K, q2_K, sfx)           \
    SET(Q3_K, q3_K, sfx) SET(Q4_K, q4_K, sfx) SET(Q5_K, q5_K, sfx)           \
    SET(Q6_K, q6_K, sfx)                                                      \
    k->gemv[CM_TYPE_Q8_0] = &gv_q8_0_##sfx;                                   \
    k->gemv[CM_TYPE_Q4_0] = &gv_q4_0_##sfx;                                   \
    k->gemv[CM_TYPE_Q5_0] = &gv_q5_0_##sfx;

int cm_kernels_neon(struct cm_kernels *k, int dotprod)
{
    k->isa = "neon";
    k->vec_dot[CM_TYPE_F32] = dot_f32;
    k->vec_dot[CM_TYPE_F16] = dot_f16;
    k->vec_dot[CM_TYPE_BF16] = dot_bf16;
    SET_INT(mull)
#if CM_NEON_DP
    if (dotprod) {
        SET_INT(dp)
    }
#else
    (void)dotprod; /* compiler cannot target SDOT: the vmull kernels serve */
#endif
    cm_gemm_neon_install(k, dotprod);
    k->quantize[CM_TYPE_Q8_0] = quant_q8_0;
    k->quantize[CM_TYPE_Q8_1] = quant_q8_1;
    k->quantize[CM_TYPE_Q8_K] = quant_q8_K;
    k->quantize[CM_TYPE_F16] = f32_to_f16;
    k->to_float[CM_TYPE_F16] = f16_to_f32;
    k->axpy[CM_TYPE_F32] = axpy_f32;
    k->axpy[CM_TYPE_F16] = axpy_f16;
    k->axpy[CM_TYPE_Q8_0] = axpy_q8_0;
    k->dot_rows[CM_TYPE_F16] = dot_rows_f16;
    k->sum_rows[CM_TYPE_F16] = sum_rows_f16;
    k->attn_qk[CM_TYPE_F16] = attn_qk_f16;
    k->attn_pv[CM_TYPE_F16] = attn_pv_f16;
    k->softmax = softmax_neon;
    k->swiglu = swiglu_neon;
    k->rmsnorm = rmsnorm_neon;
    k->add = add_neon;
    k->exp_sum = exp_sum_neon;
    k->kld_sums = kld_sums_neon;
    return 0;
}

#else /* not AArch64 */

int cm_kernels_neon(struct cm_kernels *k, int dotprod)
{
    (void)k;
    (void)dotprod;
    return -1;
}

#endif
