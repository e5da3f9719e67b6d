/* quant_dev.cuh - GGUF block formats for CUDA kernels: activation
 * quantizers, per-element dequantization and the per-part integer dot
 * products the mat-vec kernels are built from.
 *
 * Every function is __host__ __device__ so backends/cuda/test_quant_dev.cu
 * can hold it to the scalar references in quant/ on a machine without a GPU.
 * The two compilations differ only in a few primitives chosen by
 * __CUDA_ARCH__ (loads, dp4a, rounding, half conversion), each exact on both
 * sides, so what the host test proves holds for the device arithmetic too.
 *
 * Bit-identity with the references (quantizers, dequant_elem) assumes the
 * references are built without FMA contraction (the project's x86 flags);
 * device code here uses the _rn intrinsics wherever a fused multiply-add
 * would change a result, so --fmad=true cannot break it.  One exception:
 * NaNs that arithmetic creates (q8_1's s of a block holding an inf) carry
 * the processor's default NaN bits, which differ between x86, AArch64 and
 * the GPU; they are still NaNs everywhere.  dot_part is free
 * to fuse: it only has to match cm_vec_dot_ref up to float rounding.
 *
 * Alignment: blocks whose size is a multiple of 4 bytes (q4_1, q5_1, q8_1,
 * q2_K, q4_K, q5_K, q8_K) must be 4-byte aligned, as every block of a row is
 * when the row starts 4-aligned; those are read as 32-bit words.  The
 * others (18, 22, 34, 110, 210 bytes) are only 2-aligned in a row and are
 * read as pairs of 16-bit loads. */
#ifndef CM_QUANT_DEV_CUH
#define CM_QUANT_DEV_CUH

#ifdef __CUDACC__
#include <cuda_fp16.h>
#else
/* plain C++ (g++) build of the host test */
#define __host__
#define __device__
#define __forceinline__ inline
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

/* blocks.h is C11; its _Static_assert is no C++ keyword. */
#ifndef _Static_assert
#define _Static_assert static_assert
#define CM_QD_SA_DEFINED
#endif
extern "C" {
#include "quant/blocks.h"
#include "quant/quant.h"
}
#ifdef CM_QD_SA_DEFINED
#undef _Static_assert
#undef CM_QD_SA_DEFINED
#endif

#define CM_HD __host__ __device__ __forceinline__

#ifdef __CUDA_ARCH__
#define QD_UNROLL _Pragma("unroll")
#else
#define QD_UNROLL
#endif

/* ---- primitives ------------------------------------------------------- */

/* QD_SIDE(device expression, host expression) */
#ifdef __CUDA_ARCH__
#define QD_SIDE(dev, host) dev
#else
#define QD_SIDE(dev, host) host
#endif

/* host side: memcpy, the one type pun C++ defines */
CM_HD uint32_t qd_f2u_h(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
CM_HD float qd_u2f_h(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
CM_HD uint32_t qd_f2u(float f) { return QD_SIDE(__float_as_uint(f), qd_f2u_h(f)); }
CM_HD float qd_u2f(uint32_t u) { return QD_SIDE(__uint_as_float(u), qd_u2f_h(u)); }

/* Correctly rounded, never contracted into an FMA on the device (--fmad,
 * --use_fast_math), so results stay the reference's bits. */
CM_HD float qd_mul(float a, float b) { return QD_SIDE(__fmul_rn(a, b), a * b); }
CM_HD float qd_add(float a, float b) { return QD_SIDE(__fadd_rn(a, b), a + b); }
CM_HD float qd_sub(float a, float b) { return QD_SIDE(__fsub_rn(a, b), a - b); }
CM_HD float qd_div(float a, float b) { return QD_SIDE(__fdiv_rn(a, b), a / b); }

/* cm_round_int: nearest, ties to even.  A NaN gives 0 on both sides
 * (lrintf's LONG_MIN has zero low 32 bits; cvt.rni gives 0). */
CM_HD int qd_rne(float v) { return QD_SIDE(__float2int_rn(v), (int)lrintf(v)); }

CM_HD bool qd_isfinite(float f) { return (qd_f2u(f) & 0x7F800000u) != 0x7F800000u; }

/* IEEE half -> float.  The device's cvt is exact for every non-NaN half
 * (subnormals included); the host decodes the bits as types.c does. */
CM_HD float qd_f16(uint16_t h)
{
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half(h));
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    if (exp == 0) {
        float v = (float)mant * 0x1p-24f; /* exact */
        return sign ? -v : v;
    }
    if (exp == 31)
        return qd_u2f(sign | 0x7F800000u | (mant << 13));
    return qd_u2f(sign | ((exp + 112) << 23) | (mant << 13));
#endif
}

CM_HD float qd_bf16(uint16_t h) { return qd_u2f((uint32_t)h << 16); }

/* float -> half, nearest-even, NaN payload kept and quieted, as types.c.
 * Integer-only so it is the same bits on both sides (the hardware cvt
 * differs on NaNs). */
CM_HD uint16_t qd_f32_to_f16(float f)
{
    uint32_t x = qd_f2u(f), a = x & 0x7FFFFFFFu;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    if (a > 0x7F800000u)
        return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    if (a >= 0x47800000u) /* >= 2^16 */
        return (uint16_t)(sign | 0x7C00u);
    if (a < 0x38800000u) {
        /* below 2^-14: the result is round(|f| * 2^24) half ulps (1024 is
         * the smallest normal, which the encoding gets for free); the
         * scaling is exact and lands below 1024, where float ints are
         * exact, so rounding it as a float is the half's rounding */
        return (uint16_t)(sign | (uint16_t)qd_rne(qd_mul(qd_u2f(a), 0x1p24f)));
    }
    /* rebias, round the 13 dropped bits to even; a mantissa carry bumps
     * the exponent, up to inf */
    return (uint16_t)(sign | ((a - (112u << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13));
}

/* sum of the 4 signed byte products plus c */
CM_HD int qd_dp4a(uint32_t a, uint32_t b, int c)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
    return __dp4a((int)a, (int)b, c);
#else
    for (int k = 0; k < 32; k += 8)
        c += (int)(int8_t)(uint8_t)(a >> k) * (int)(int8_t)(uint8_t)(b >> k);
    return c;
#endif
}

/* 32-bit little-endian word at a 4-aligned (ld4) or only 2-aligned (ld2)
 * address; the host side may use memcpy for both. */
CM_HD uint32_t qd_ld4_h(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
CM_HD uint32_t qd_ld4(const void *p) { return QD_SIDE(*(const uint32_t *)p, qd_ld4_h(p)); }
CM_HD uint32_t qd_ld2(const void *p)
{
#ifdef __CUDA_ARCH__
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
#else
    return qd_ld4_h(p);
#endif
}

/* store, 4-aligned if a4 else 2-aligned */
CM_HD void qd_st(void *p, uint32_t v, bool a4)
{
#ifdef __CUDA_ARCH__
    if (a4) {
        *(uint32_t *)p = v;
        return;
    }
    ((uint16_t *)p)[0] = (uint16_t)v;
    ((uint16_t *)p)[1] = (uint16_t)(v >> 16);
#else
    (void)a4;
    memcpy(p, &v, 4);
#endif
}

#define QD_M4 0x0F0F0F0Fu
#define QD_M2 0x03030303u
#define QD_M1 0x01010101u

/* Bytewise v - b for bytes v < 2b <= 128: adding 0x80 - b cannot carry
 * between bytes, and flipping bit 7 takes the 0x80 back off mod 256.  Two
 * ALU ops where a per-byte subtract would need __vsub4. */
CM_HD uint32_t qd_unbias(uint32_t v, uint32_t b) { return (v + (0x80u - b) * QD_M1) ^ 0x80808080u; }

/* Bits 0..3 of h to bit 4 of bytes 0..3: four shifted copies of the nibble
 * at 0, 7, 14, 21 never overlap, so the product is their or. */
CM_HD uint32_t qd_bit4(uint32_t h) { return ((h & 0xFu) * 0x00204081u << 4) & 0x10101010u; }

/* ---- activation quantizers (quant/ref_legacy.c, ref_kquants.c) -------- */

/* q8_0/q8_1 quants of 32 floats: d = amax/127, all-zero quants when d
 * rounds to half zero.  qs at a 4-aligned (A4) or 2-aligned address.
 * Returns the unrounded d (0 for such blocks); *sum gets sum(qs). */
template <bool A4>
CM_HD float qd_q8_32(const float *x, int8_t *qs, int *sum)
{
    float amax = 0;
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > amax) /* a NaN never wins, as in the reference */
            amax = fabsf(x[j]);
    float d = qd_div(amax, 127.0f);
    bool zero = qd_f32_to_f16(d) == 0;
    float id = zero ? 0.0f : qd_div(1.0f, d);
    int s = 0;
    for (int j = 0; j < 32; j += 4) {
        uint32_t w = 0;
        for (int k = 0; k < 4; k++) {
            int q = zero ? 0 : (int)(int8_t)qd_rne(qd_mul(x[j + k], id));
            s += q;
            w |= (uint32_t)(uint8_t)q << (8 * k);
        }
        qd_st(qs + j, w, A4);
    }
    *sum = s;
    return zero ? 0.0f : d;
}

CM_HD void q8_0_quantize_block(const float *x32, block_q8_0 *out)
{
    int sum;
    out->d = qd_f32_to_f16(qd_q8_32<false>(x32, out->qs, &sum));
}

/* A block holding an inf has d = inf and all-zero quants, so s = 0 * inf is
 * a NaN in the reference too; which NaN is the FPU's default (x86 0xFFC00000
 * -> half 0xFE00, the GPU 0x7FFFFFFF -> 0x7FFF, AArch64 0x7FC00000 ->
 * 0x7E00), the one place these bytes can differ from a reference built on
 * another processor.  Consumers only ever see it as a NaN. */
CM_HD void q8_1_quantize_block(const float *x32, block_q8_1 *out)
{
    int sum;
    float d = qd_q8_32<true>(x32, out->qs, &sum);
    out->d = qd_f32_to_f16(d);
    out->s = qd_f32_to_f16(qd_mul((float)sum, d)); /* unrounded d, as ref */
}

/* The largest magnitude maps to exactly -127 (d may be negative); a block
 * whose 1/d is not finite (zero, or below ~3.7e-37) is stored all zero. */
CM_HD void q8_K_quantize_block(const float *x256, block_q8_K *out)
{
    float amax = 0, max = 0;
    for (int e = 0; e < QK_K; e++)
        if (fabsf(x256[e]) > amax) {
            amax = fabsf(x256[e]);
            max = x256[e];
        }
    float is = amax > 0 ? qd_div(-127.0f, max) : 0.0f;
    bool zero = !qd_isfinite(is) || is == 0;
    for (int g = 0; g < QK_K / 16; g++) {
        int bs = 0;
        for (int j = 16 * g; j < 16 * g + 16; j += 4) {
            uint32_t w = 0;
            for (int k = 0; k < 4; k++) {
                float v = qd_mul(is, x256[j + k]);
                /* qlevel(v, -128, 127): NaN to -128, clamp, round */
                int q = !(v > -128.0f) ? -128 : v >= 127.0f ? 127 : qd_rne(v);
                q = zero ? 0 : q;
                bs += q;
                w |= (uint32_t)(uint8_t)q << (8 * k);
            }
            qd_st(out->qs + j, w, true);
        }
        out->bsums[g] = (int16_t)bs;
    }
    out->d = zero ? 0.0f : qd_div(1.0f, is);
}

/* ---- dequantization: element i of one block ---------------------------
 * Each evaluates the reference's expression in the reference's order, so
 * the float result is the same bits. */

/* legacy: qs[j] holds element j (low nibble) and j + 16 (high) */
CM_HD int qd_nib(const uint8_t *qs, int i) { return (qs[i & 15] >> (4 * (i >> 4))) & 0xF; }

CM_HD float dequant_q4_0(const block_q4_0 *b, int i)
{
    return qd_mul((float)(qd_nib(b->qs, i) - 8), qd_f16(b->d));
}

CM_HD float dequant_q4_1(const block_q4_1 *b, int i)
{
    return qd_add(qd_mul((float)qd_nib(b->qs, i), qd_f16(b->d)), qd_f16(b->m));
}

CM_HD int qd_q5_level(const uint8_t *qs, const uint8_t *qh, int i)
{
    return qd_nib(qs, i) | (((qh[i >> 3] >> (i & 7)) & 1) << 4);
}

CM_HD float dequant_q5_0(const block_q5_0 *b, int i)
{
    return qd_mul((float)(qd_q5_level(b->qs, b->qh, i) - 16), qd_f16(b->d));
}

CM_HD float dequant_q5_1(const block_q5_1 *b, int i)
{
    return qd_add(qd_mul((float)qd_q5_level(b->qs, b->qh, i), qd_f16(b->d)),
                  qd_f16(b->m));
}

CM_HD float dequant_q8_0(const block_q8_0 *b, int i)
{
    return qd_mul((float)b->qs[i], qd_f16(b->d));
}
CM_HD float dequant_q8_1(const block_q8_1 *b, int i)
{
    return qd_mul((float)b->qs[i], qd_f16(b->d));
}
/* 2-bit field of q2_K/q3_K element i: e = 128c + 32j + l lives in bits
 * 2j..2j+1 of qs[32c + l] */
CM_HD int qd_k2_bits(const uint8_t *qs, int i)
{
    return (qs[32 * (i >> 7) + (i & 31)] >> (2 * ((i >> 5) & 3))) & 3;
}

CM_HD float dequant_q2_K(const block_q2_K *b, int i)
{
    int sc = b->scales[i >> 4];
    float dl = qd_mul(qd_f16(b->d), (float)(sc & 0xF));
    float ml = qd_mul(qd_f16(b->dmin), (float)(sc >> 4));
    return qd_sub(qd_mul(dl, (float)qd_k2_bits(b->qs, i)), ml);
}

CM_HD float dequant_q3_K(const block_q3_K *b, int i)
{
    int j = i >> 4; /* cm_k3_scales for one sub-block */
    int lo = (b->scales[j & 7] >> (4 * (j >> 3))) & 0xF;
    int hi = (b->scales[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    int sc = (lo | (hi << 4)) - 32;
    int L = (qd_k2_bits(b->qs, i) | (((b->hmask[i & 31] >> (i >> 5)) & 1) << 2)) - 4;
    return qd_mul(qd_mul(qd_f16(b->d), (float)sc), (float)L);
}

/* cm_k4_scale_min */
CM_HD void qd_k4_scale_min(const uint8_t *q, int j, int *sc, int *m)
{
    *sc = j < 4 ? q[j] & 63 : (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = j < 4 ? q[j + 4] & 63 : (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
}

/* e = 64c + 32h + l: nibble h of qs[32c + l]; q5_K's bit 4 is bit 2c+h of
 * qh[l] */
CM_HD float qd_k45_elem(uint16_t d16, uint16_t dmin16, const uint8_t *scales,
                        int L, int i)
{
    int sc, m;
    qd_k4_scale_min(scales, i >> 5, &sc, &m);
    float d1 = qd_mul(qd_f16(d16), (float)sc), m1 = qd_mul(qd_f16(dmin16), (float)m);
    return qd_sub(qd_mul(d1, (float)L), m1);
}

CM_HD float dequant_q4_K(const block_q4_K *b, int i)
{
    int L = (b->qs[32 * (i >> 6) + (i & 31)] >> (4 * ((i >> 5) & 1))) & 0xF;
    return qd_k45_elem(b->d, b->dmin, b->scales, L, i);
}

CM_HD float dequant_q5_K(const block_q5_K *b, int i)
{
    int L = (b->qs[32 * (i >> 6) + (i & 31)] >> (4 * ((i >> 5) & 1))) & 0xF;
    L |= ((b->qh[i & 31] >> (i >> 5)) & 1) << 4; /* bit 2c+h = i/32 */
    return qd_k45_elem(b->d, b->dmin, b->scales, L, i);
}

/* e = 128c + 32k + l: nibble k>>1 of ql[64c + 32(k&1) + l], top bits
 * 2k..2k+1 of qh[32c + l] */
CM_HD float dequant_q6_K(const block_q6_K *b, int i)
{
    int c = i >> 7, k = (i >> 5) & 3, l = i & 31;
    int lo = (b->ql[64 * c + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xF;
    int hi = (b->qh[32 * c + l] >> (2 * k)) & 3;
    float dsc = qd_mul(qd_f16(b->d), (float)b->scales[i >> 4]);
    return qd_mul(dsc, (float)((lo | (hi << 4)) - 32));
}

CM_HD float dequant_q8_K(const block_q8_K *b, int i)
{
    return qd_mul(b->d, (float)b->qs[i]);
}

/* For F32/F16/BF16 a "block" is one element: i indexes from `block`.
 * Unsupported types give NaN. */
CM_HD float dequant_elem(enum cm_type t, const void *block, int i)
{
    switch (t) {
    case CM_TYPE_F32: return ((const float *)block)[i];
    case CM_TYPE_F16: return qd_f16(((const uint16_t *)block)[i]);
    case CM_TYPE_BF16: return qd_bf16(((const uint16_t *)block)[i]);
    case CM_TYPE_Q4_0: return dequant_q4_0((const block_q4_0 *)block, i);
    case CM_TYPE_Q4_1: return dequant_q4_1((const block_q4_1 *)block, i);
    case CM_TYPE_Q5_0: return dequant_q5_0((const block_q5_0 *)block, i);
    case CM_TYPE_Q5_1: return dequant_q5_1((const block_q5_1 *)block, i);
    case CM_TYPE_Q8_0: return dequant_q8_0((const block_q8_0 *)block, i);
    case CM_TYPE_Q8_1: return dequant_q8_1((const block_q8_1 *)block, i);
    case CM_TYPE_Q2_K: return dequant_q2_K((const block_q2_K *)block, i);
    case CM_TYPE_Q3_K: return dequant_q3_K((const block_q3_K *)block, i);
    case CM_TYPE_Q4_K: return dequant_q4_K((const block_q4_K *)block, i);
    case CM_TYPE_Q5_K: return dequant_q5_K((const block_q5_K *)block, i);
    case CM_TYPE_Q6_K: return dequant_q6_K((const block_q6_K *)block, i);
    case CM_TYPE_Q8_K: return dequant_q8_K((const block_q8_K *)block, i);
    default: return qd_u2f(0x7FC00000u);
    }
}

/* ---- dot products in parts -------------------------------------------
 * qdot<T>::dot_part(w, x, p) is part p of the dot of one weight block with
 * the activation block (T's dot type) over the same elements; the sum over
 * p < PARTS and over blocks is cm_vec_dot_ref up to float rounding.  Each
 * part's integer sum is exact (|sum| < 2^24, so its float is exact too);
 * only the products with the block scales round.  Parts are laid out so
 * that part p reads the p-th run of the weight quants: PARTS consecutive
 * threads read a block's quants once, contiguously. */
template <enum cm_type T> struct qdot;

#define QD_TRAITS(W, X, E, P) \
    using wblock = W;         \
    using xblock = X;         \
    static constexpr int ELEMS = E, PARTS = P

/* A word inside a block of type B: 32-bit loads where B's size lets its
 * blocks be 4-aligned. */
template <class B> CM_HD uint32_t qd_ldb(const void *p)
{
    return sizeof(B) % 4 ? qd_ld2(p) : qd_ld4(p);
}

/* legacy 4/5-bit: part p holds qs bytes 4p..4p+3, i.e. elements 4p..4p+3
 * (low nibbles) and 16+4p..19+4p (high nibbles), and their qh bits.  With
 * a min (q4_1, q5_1), the term m * s (s = the q8_1 block's d * sum(q))
 * belongs to the whole block: part 0 adds it (a select, or a predicated
 * load of m and s), so a dot must sum every part. */
template <class W, class X, bool Q5, bool MIN> struct qd_legacy {
    QD_TRAITS(W, X, 32, 4);
    CM_HD static float dot_part(const void *w, const void *x, int p)
    {
        const W *b = (const W *)w;
        const X *y = (const X *)x;
        uint32_t q = qd_ldb<W>(b->qs + 4 * p), lo = q & QD_M4, hi = (q >> 4) & QD_M4;
        if constexpr (Q5) {
            uint32_t h = qd_ldb<W>(b->qh) >> (4 * p);
            lo |= qd_bit4(h);
            hi |= qd_bit4(h >> 16);
        }
        if constexpr (!MIN) { /* levels centred on 8 / 16 */
            lo = qd_unbias(lo, Q5 ? 16 : 8);
            hi = qd_unbias(hi, Q5 ? 16 : 8);
        }
        int s = qd_dp4a(lo, qd_ldb<X>(y->qs + 4 * p), 0);
        s = qd_dp4a(hi, qd_ldb<X>(y->qs + 16 + 4 * p), s);
        float r = (float)s * (qd_f16(b->d) * qd_f16(y->d));
        if constexpr (MIN)
            r += p == 0 ? qd_f16(b->m) * qd_f16(y->s) : 0.0f;
        return r;
    }
};

template <> struct qdot<CM_TYPE_Q4_0> : qd_legacy<block_q4_0, block_q8_0, false, false> {};
template <> struct qdot<CM_TYPE_Q4_1> : qd_legacy<block_q4_1, block_q8_1, false, true> {};
template <> struct qdot<CM_TYPE_Q5_0> : qd_legacy<block_q5_0, block_q8_0, true, false> {};
template <> struct qdot<CM_TYPE_Q5_1> : qd_legacy<block_q5_1, block_q8_1, true, true> {};

/* 8-bit weights dot q8_0 (q8_1 ignores its own s): part p is elements
 * 8p..8p+7 */
template <class W> struct qd_q8w {
    QD_TRAITS(W, block_q8_0, 32, 4);
    CM_HD static float dot_part(const void *w, const void *x, int p)
    {
        const W *b = (const W *)w;
        const block_q8_0 *y = (const block_q8_0 *)x;
        int s = qd_dp4a(qd_ldb<W>(b->qs + 8 * p), qd_ld2(y->qs + 8 * p), 0);
        s = qd_dp4a(qd_ldb<W>(b->qs + 8 * p + 4), qd_ld2(y->qs + 8 * p + 4), s);
        return (float)s * (qd_f16(b->d) * qd_f16(y->d));
    }
};

template <> struct qdot<CM_TYPE_Q8_0> : qd_q8w<block_q8_0> {};
template <> struct qdot<CM_TYPE_Q8_1> : qd_q8w<block_q8_1> {};

/* q2_K/q3_K: part p holds qs bytes 4p..4p+3 (c = p/8, l = 4(p%8)..+3),
 * i.e. four runs of 4 elements 128c + 32j + l (j < 4), one per 2-bit
 * field; run j is in sub-block 8c + 2j + h with h = l >= 16.  The
 * activations of run j are the word at y->qs + 128c + 32j + 4(p%8). */
CM_HD const int8_t *qd_k2_x(const block_q8_K *y, int p)
{
    return y->qs + 128 * (p >> 3) + 4 * (p & 7);
}

/* The min term of sub-block p (bsums group p): 16 sub-blocks, 16 parts,
 * so each part takes one and the mins sum to the reference's. */
template <> struct qdot<CM_TYPE_Q2_K> {
    QD_TRAITS(block_q2_K, block_q8_K, QK_K, 16);
    CM_HD static float dot_part(const void *w, const void *x, int p)
    {
        const wblock *b = (const wblock *)w;
        const xblock *y = (const xblock *)x;
        int c = p >> 3, sh = 8 * ((p >> 2) & 1);
        uint32_t q = qd_ld4(b->qs + 4 * p);
        /* scale nibbles of runs 0,1 are bytes h, h+2 of scales[8c..]; 2,3
         * the same of scales[8c+4..] */
        uint32_t s01 = qd_ld4(b->scales + 8 * c) >> sh, s23 = qd_ld4(b->scales + 8 * c + 4) >> sh;
        const int8_t *xq = qd_k2_x(y, p);
        int isum = 0;
        QD_UNROLL
        for (int j = 0; j < 4; j++)
            isum += qd_dp4a((q >> 2 * j) & QD_M2, qd_ld4(xq + 32 * j), 0) *
                    (int)(((j < 2 ? s01 : s23) >> (16 * (j & 1))) & 0xF);
        int summs = (b->scales[p] >> 4) * y->bsums[p];
        float dall = y->d * qd_f16(b->d), dmin = y->d * qd_f16(b->dmin);
        return dall * (float)isum - dmin * (float)summs;
    }
};

/* The third bit: bit 4c + j of hmask[l].  Level = low2 + 4*bit - 4 =
 * low2 | (bit ? 0 : 0xFC) as a byte, since low2 < 4. */
template <> struct qdot<CM_TYPE_Q3_K> {
    QD_TRAITS(block_q3_K, block_q8_K, QK_K, 16);
    CM_HD static float dot_part(const void *w, const void *x, int p)
    {
        const wblock *b = (const wblock *)w;
        const xblock *y = (const xblock *)x;
        int c = p >> 3, h = (p >> 2) & 1;
        uint32_t q = qd_ld2(b->qs + 4 * p);
        uint32_t nh = ~qd_ld2(b->hmask + 4 * (p & 7)) >> (4 * c);
        /* cm_k3_scales for sub-blocks 8c + 2j + h: low nibble from byte
         * 2j + h (high nibble when c = 1), top bits from byte
         * 8 + 2(j&1) + h at bit 4c + 2(j>>1).  After one shift by 8h + 4c
         * every field sits at a constant position. */
        int sh = 8 * h + 4 * c;
        uint32_t A = qd_ld2(b->scales) >> sh, B = qd_ld2(b->scales + 4) >> sh,
                 C = qd_ld2(b->scales + 8) >> sh;
        const int8_t *xq = qd_k2_x(y, p);
        int isum = 0;
        QD_UNROLL
        for (int j = 0; j < 4; j++) {
            uint32_t lo = ((j < 2 ? A : B) >> (16 * (j & 1))) & 15;
            uint32_t hi = (C >> (16 * (j & 1) + 2 * (j >> 1))) & 3;
            isum += ((int)(lo | (hi << 4)) - 32) *
                    qd_dp4a(((q >> 2 * j) & QD_M2) | (((nh >> j) & QD_M1) * 0xFCu),
                            qd_ld4(xq + 32 * j), 0);
        }
        return (qd_f16(b->d) * y->d) * (float)isum;
    }
};

/* q4_K/q5_K: part p holds qs bytes 8p..8p+7 (c = p/4, l = 8(p%4)..+7):
 * elements 64c + l (low nibbles, sub-block 2c) and 64c + 32 + l (high,
 * sub-block 2c+1).  The mins go by bsums group: part p takes group p, in
 * sub-block p/2. */
struct qd_k45 {
    /* scale of sub-blocks 2c, 2c+1 in bytes 0, 1 of *sc; the min of
     * sub-block p/2 in *m.  cm_k4_scale_min on both at once: the pair's
     * bytes sit at 2(c&1) of each scale word, and c >= 2 picks the split
     * 4+2-bit encoding (a select, both computed). */
    CM_HD static void scales(const uint8_t *s12, int p, uint32_t *sc, int *m)
    {
        int c = p >> 2, sh = 16 * (c & 1);
        uint32_t a = qd_ld4(s12) >> sh, b = qd_ld4(s12 + 4) >> sh, d = qd_ld4(s12 + 8) >> sh;
        uint32_t scv = c < 2 ? a & 0x3F3Fu : (d & 0x0F0Fu) | ((a >> 2) & 0x3030u);
        uint32_t mv = c < 2 ? b & 0x3F3Fu : ((d >> 4) & 0x0F0Fu) | ((b >> 2) & 0x3030u);
        *sc = scv;
        *m = (int)((mv >> (8 * ((p >> 1) & 1))) & 0xFF);
    }
    /* lo/hi: the part's 8 low-nibble and 8 high-nibble levels as 2 words
     * each */
    CM_HD static float dot(uint16_t d16, uint16_t dmin16, const uint8_t *s12,
                           uint32_t lo0, uint32_t lo1, uint32_t hi0, uint32_t hi1,
                           const block_q8_K *y, int p)
    {
        uint32_t sc;
        int m;
        scales(s12, p, &sc, &m);
        const int8_t *xq = y->qs + 64 * (p >> 2) + 8 * (p & 3);
        int s0 = qd_dp4a(lo0, qd_ld4(xq), qd_dp4a(lo1, qd_ld4(xq + 4), 0));
        int s1 = qd_dp4a(hi0, qd_ld4(xq + 32), qd_dp4a(hi1, qd_ld4(xq + 36), 0));
        int isum = s0 * (int)(sc & 0xFF) + s1 * (int)(sc >> 8);
        int summs = m * y->bsums[p];
        float d = qd_f16(d16) * y->d, dmin = qd_f16(dmin16) * y->d;
        return d * (float)isum - dmin * (float)summs;
    }
};

template <> struct qdot<CM_TYPE_Q4_K> {
    QD_TRAITS(block_q4_K, block_q8_K, QK_K, 16);
    CM_HD static float dot_part(const void *w, const void *x, int p)
    {
        const wblock *b = (const wblock *)w;
        uint32_t q0 = qd_ld4(b->qs + 8 * p), q1 = qd_ld4(b->qs + 8 * p + 4);
        return qd_k45::dot(b->d, b->dmin, b->scales, q0 & QD_M4, q1 & QD_M4,
                           (q0 >> 4) & QD_M4, (q1 >> 4) & QD_M4, (const xblock *)x, p);
    }
};

/* bit 4 of element 64c + 32h + l is bit 2c + h of qh[l] */
template <> struct qdot<CM_TYPE_Q5_K> {
    QD_TRAITS(block_q5_K, block_q8_K, QK_K, 16);
    CM_HD static float dot_part(const void *w, const void *x, int p)
    {
        const wblock *b = (const wblock *)w;
        int c = p >> 2;
        uint32_t q0 = qd_ld4(b->qs + 8 * p), q1 = qd_ld4(b->qs + 8 * p + 4);
        uint32_t h0 = qd_ld4(b->qh + 8 * (p & 3)) >> (2 * c);
        uint32_t h1 = qd_ld4(b->qh + 8 * (p & 3) + 4) >> (2 * c);
        return qd_k45::dot(b->d, b->dmin, b->scales,
                           (q0 & QD_M4) | ((h0 & QD_M1) << 4),
                           (q1 & QD_M4) | ((h1 & QD_M1) << 4),
                           ((q0 >> 4) & QD_M4) | (((h0 >> 1) & QD_M1) << 4),
                           ((q1 >> 4) & QD_M4) | (((h1 >> 1) & QD_M1) << 4),
                           (const xblock *)x, p);
    }
};

/* q6_K: part p holds qh bytes 4p..4p+3 (c = p/8, l = 4(p%8)..+3), i.e.
 * elements 128c + 32k + l for k < 4, whose low nibbles are the two ql
 * words at 64c + l and 64c + 32 + l; run k is in sub-block 8c + 2k + h
 * (h = l >= 16), the same pattern as q2_K. */
template <> struct qdot<CM_TYPE_Q6_K> {
    QD_TRAITS(block_q6_K, block_q8_K, QK_K, 16);
    CM_HD static float dot_part(const void *w, const void *x, int p)
    {
        const wblock *b = (const wblock *)w;
        const xblock *y = (const xblock *)x;
        int c = p >> 3, l = 4 * (p & 7), sh = 8 * ((p >> 2) & 1);
        uint32_t qa = qd_ld2(b->ql + 64 * c + l), qb = qd_ld2(b->ql + 64 * c + 32 + l);
        uint32_t qh = qd_ld2(b->qh + 4 * p);
        uint32_t s01 = qd_ld2(b->scales + 8 * c) >> sh, s23 = qd_ld2(b->scales + 8 * c + 4) >> sh;
        const int8_t *xq = qd_k2_x(y, p);
        int isum = 0;
        QD_UNROLL
        for (int k = 0; k < 4; k++) {
            uint32_t lo = ((k & 1 ? qb : qa) >> (4 * (k >> 1))) & QD_M4;
            int sc = (int8_t)(uint8_t)((k < 2 ? s01 : s23) >> (16 * (k & 1)));
            isum += sc * qd_dp4a(qd_unbias(lo | (((qh >> 2 * k) & QD_M2) << 4), 32),
                                 qd_ld4(xq + 32 * k), 0);
        }
        return (qd_f16(b->d) * y->d) * (float)isum;
    }
};

/* q8_K weights: part p is elements 16p..16p+15 */
template <> struct qdot<CM_TYPE_Q8_K> {
    QD_TRAITS(block_q8_K, block_q8_K, QK_K, 16);
    CM_HD static float dot_part(const void *w, const void *x, int p)
    {
        const wblock *b = (const wblock *)w;
        const xblock *y = (const xblock *)x;
        int s = 0;
        for (int k = 0; k < 16; k += 4)
            s = qd_dp4a(qd_ld4(b->qs + 16 * p + k), qd_ld4(y->qs + 16 * p + k), s);
        return (b->d * y->d) * (float)s;
    }
};

#endif
