/* ref_legacy.c - scalar references for the float types and the 32-element
 * "legacy" block formats (q4_0, q4_1, q5_0, q5_1, q8_0, q8_1).
 *
 * Quantizers follow the formats' defining recipes (llama.cpp writes files
 * the same way): symmetric types take d from the signed value of largest
 * magnitude so that value lands exactly on the most negative level; the
 * min/max types spread [min, max] over all levels. */
#include <float.h>
#include <string.h>

#include "quant/blocks.h"
#include "quant/ref.h"

#define F16(x) cm_f16_to_f32(x)
#define TO_F16(x) cm_f32_to_f16(x)

/* ---- float types -------------------------------------------------------- */

void cm_dequant_f32(const void *src, float *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void cm_quant_f32(const float *src, void *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

float cm_dot_f32(int64_t n, const void *w, const void *x)
{
    const float *a = w, *b = x;
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return (float)s;
}

void cm_dequant_f16(const void *src, float *dst, int64_t n)
{
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = F16(h[i]);
}

void cm_quant_f16(const float *src, void *dst, int64_t n)
{
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++)
        h[i] = TO_F16(src[i]);
}

float cm_dot_f16(int64_t n, const void *w, const void *x)
{
    const uint16_t *a = w;
    const float *b = x;
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)F16(a[i]) * b[i];
    return (float)s;
}

void cm_dequant_bf16(const void *src, float *dst, int64_t n)
{
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = cm_bf16_to_f32(h[i]);
}

void cm_quant_bf16(const float *src, void *dst, int64_t n)
{
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++)
        h[i] = cm_f32_to_bf16(src[i]);
}

float cm_dot_bf16(int64_t n, const void *w, const void *x)
{
    const uint16_t *a = w;
    const float *b = x;
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)cm_bf16_to_f32(a[i]) * b[i];
    return (float)s;
}

/* ---- shared helpers ----------------------------------------------------- */

/* Signed value of largest magnitude (first one on ties) and its magnitude. */
static float signed_absmax(const float *x, int n, float *amax_out)
{
    float amax = 0, max = 0;
    for (int j = 0; j < n; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    *amax_out = amax;
    return max;
}

static void min_max(const float *x, int n, float *mn, float *mx)
{
    *mn = FLT_MAX;
    *mx = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < *mn)
            *mn = x[j];
        if (x[j] > *mx)
            *mx = x[j];
    }
}

/* Level for a value already divided by the scale: truncation of v + offset
 * + 0.5 (values are >= -0.5 here, so truncation is rounding), capped. */
static int level(float v, float offset, int top)
{
    float t = v + offset + 0.5f;
    if (!(t >= 0)) /* also catches nan */
        return 0;
    return t >= (float)top ? top : (int)t;
}

static uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ---- q4_0: x = (q - 8) * d --------------------------------------------- */

void cm_dequant_q4_0(const void *src, float *dst, int64_t n)
{
    const block_q4_0 *b = src;
    for (int64_t i = 0; i < n / QK4_0; i++, dst += QK4_0) {
        float d = F16(b[i].d);
        for (int j = 0; j < 16; j++) {
            dst[j] = ((b[i].qs[j] & 0xF) - 8) * d;
            dst[j + 16] = ((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void cm_quant_q4_0(const float *src, void *dst, int64_t n)
{
    block_q4_0 *b = dst;
    for (int64_t i = 0; i < n / QK4_0; i++, src += QK4_0) {
        float amax, max = signed_absmax(src, QK4_0, &amax);
        float d = max / -8, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = TO_F16(d);
        for (int j = 0; j < 16; j++) {
            int lo = level(src[j] * id, 8, 15);
            int hi = level(src[j + 16] * id, 8, 15);
            b[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

float cm_dot_q4_0(int64_t n, const void *w, const void *x)
{
    const block_q4_0 *a = w;
    const block_q8_0 *b = x;
    double s = 0;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            sum += ((a[i].qs[j] & 0xF) - 8) * b[i].qs[j];
            sum += ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + 16];
        }
        s += sum * (F16(a[i].d) * F16(b[i].d));
    }
    return (float)s;
}

/* ---- q4_1: x = q * d + m ------------------------------------------------ */

void cm_dequant_q4_1(const void *src, float *dst, int64_t n)
{
    const block_q4_1 *b = src;
    for (int64_t i = 0; i < n / QK4_1; i++, dst += QK4_1) {
        float d = F16(b[i].d), m = F16(b[i].m);
        for (int j = 0; j < 16; j++) {
            dst[j] = (b[i].qs[j] & 0xF) * d + m;
            dst[j + 16] = (b[i].qs[j] >> 4) * d + m;
        }
    }
}

void cm_quant_q4_1(const float *src, void *dst, int64_t n)
{
    block_q4_1 *b = dst;
    for (int64_t i = 0; i < n / QK4_1; i++, src += QK4_1) {
        float mn, mx;
        min_max(src, QK4_1, &mn, &mx);
        float d = (mx - mn) / 15, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = TO_F16(d);
        b[i].m = TO_F16(mn);
        for (int j = 0; j < 16; j++) {
            int lo = level((src[j] - mn) * id, 0, 15);
            int hi = level((src[j + 16] - mn) * id, 0, 15);
            b[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

/* The min term uses the activation block's precomputed s = d * sum(q). */
float cm_dot_q4_1(int64_t n, const void *w, const void *x)
{
    const block_q4_1 *a = w;
    const block_q8_1 *b = x;
    double s = 0;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            sum += (a[i].qs[j] & 0xF) * b[i].qs[j];
            sum += (a[i].qs[j] >> 4) * b[i].qs[j + 16];
        }
        s += sum * (F16(a[i].d) * F16(b[i].d)) + F16(a[i].m) * F16(b[i].s);
    }
    return (float)s;
}

/* ---- q5_0 / q5_1: a fifth bit per quant in qh -------------------------- */

static void q5_levels(const uint8_t *qs, const uint8_t *qh, int q[32])
{
    uint32_t h = load_u32(qh);
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 0xF) | (int)(((h >> j) & 1) << 4);
        q[j + 16] = (qs[j] >> 4) | (int)(((h >> (j + 16)) & 1) << 4);
    }
}

static void q5_pack(const int q[32], uint8_t *qs, uint8_t *qh)
{
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
        h |= (uint32_t)(q[j] >> 4) << j;
        h |= (uint32_t)(q[j + 16] >> 4) << (j + 16);
    }
    memcpy(qh, &h, 4);
}

void cm_dequant_q5_0(const void *src, float *dst, int64_t n)
{
    const block_q5_0 *b = src;
    int q[32];
    for (int64_t i = 0; i < n / QK5_0; i++, dst += QK5_0) {
        float d = F16(b[i].d);
        q5_levels(b[i].qs, b[i].qh, q);
        for (int j = 0; j < 32; j++)
            dst[j] = (q[j] - 16) * d;
    }
}

void cm_quant_q5_0(const float *src, void *dst, int64_t n)
{
    block_q5_0 *b = dst;
    int q[32];
    for (int64_t i = 0; i < n / QK5_0; i++, src += QK5_0) {
        float amax, max = signed_absmax(src, QK5_0, &amax);
        float d = max / -16, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = TO_F16(d);
        for (int j = 0; j < 32; j++)
            q[j] = level(src[j] * id, 16, 31);
        q5_pack(q, b[i].qs, b[i].qh);
    }
}

float cm_dot_q5_0(int64_t n, const void *w, const void *x)
{
    const block_q5_0 *a = w;
    const block_q8_0 *b = x;
    int q[32];
    double s = 0;
    for (int64_t i = 0; i < n / QK5_0; i++) {
        q5_levels(a[i].qs, a[i].qh, q);
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += (q[j] - 16) * b[i].qs[j];
        s += sum * (F16(a[i].d) * F16(b[i].d));
    }
    return (float)s;
}

void cm_dequant_q5_1(const void *src, float *dst, int64_t n)
{
    const block_q5_1 *b = src;
    int q[32];
    for (int64_t i = 0; i < n / QK5_1; i++, dst += QK5_1) {
        float d = F16(b[i].d), m = F16(b[i].m);
        q5_levels(b[i].qs, b[i].qh, q);
        for (int j = 0; j < 32; j++)
            dst[j] = q[j] * d + m;
    }
}

void cm_quant_q5_1(const float *src, void *dst, int64_t n)
{
    block_q5_1 *b = dst;
    int q[32];
    for (int64_t i = 0; i < n / QK5_1; i++, src += QK5_1) {
        float mn, mx;
        min_max(src, QK5_1, &mn, &mx);
        float d = (mx - mn) / 31, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = TO_F16(d);
        b[i].m = TO_F16(mn);
        for (int j = 0; j < 32; j++)
            q[j] = level((src[j] - mn) * id, 0, 31);
        q5_pack(q, b[i].qs, b[i].qh);
    }
}

float cm_dot_q5_1(int64_t n, const void *w, const void *x)
{
    const block_q5_1 *a = w;
    const block_q8_1 *b = x;
    int q[32];
    double s = 0;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        q5_levels(a[i].qs, a[i].qh, q);
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += q[j] * b[i].qs[j];
        s += sum * (F16(a[i].d) * F16(b[i].d)) + F16(a[i].m) * F16(b[i].s);
    }
    return (float)s;
}

/* ---- q8_0 / q8_1: x = q * d -------------------------------------------- */

/* d = amax/127 so every quant fits in -127..127 (never -128: the SIMD dots
 * negate activation quants), rounded half-to-even like the SIMD quantizers.
 * A block whose d rounds to half zero (amax below ~3.8e-6) stores all-zero
 * quants: the dot is zero either way, and 1/d would overflow for float
 * subnormal d.  Returns the unrounded d (0 for such blocks). */
static float q8_quants(const float *x, int8_t *qs)
{
    float amax;
    signed_absmax(x, QK8_0, &amax);
    float d = amax / 127;
    if (TO_F16(d) == 0) {
        memset(qs, 0, QK8_0);
        return 0;
    }
    float id = 1.0f / d;
    for (int j = 0; j < QK8_0; j++)
        qs[j] = (int8_t)cm_round_int(x[j] * id);
    return d;
}

static void q8_0_block(const float *x, block_q8_0 *b)
{
    b->d = TO_F16(q8_quants(x, b->qs));
}

void cm_dequant_q8_0(const void *src, float *dst, int64_t n)
{
    const block_q8_0 *b = src;
    for (int64_t i = 0; i < n / QK8_0; i++, dst += QK8_0) {
        float d = F16(b[i].d);
        for (int j = 0; j < QK8_0; j++)
            dst[j] = b[i].qs[j] * d;
    }
}

void cm_quant_q8_0(const float *src, void *dst, int64_t n)
{
    block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK8_0; i++)
        q8_0_block(src + i * QK8_0, &b[i]);
}

float cm_dot_q8_0(int64_t n, const void *w, const void *x)
{
    const block_q8_0 *a = w, *b = x;
    double s = 0;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        int sum = 0;
        for (int j = 0; j < QK8_0; j++)
            sum += a[i].qs[j] * b[i].qs[j];
        s += sum * (F16(a[i].d) * F16(b[i].d));
    }
    return (float)s;
}

void cm_dequant_q8_1(const void *src, float *dst, int64_t n)
{
    const block_q8_1 *b = src;
    for (int64_t i = 0; i < n / QK8_1; i++, dst += QK8_1) {
        float d = F16(b[i].d);
        for (int j = 0; j < QK8_1; j++)
            dst[j] = b[i].qs[j] * d;
    }
}

void cm_quant_q8_1(const float *src, void *dst, int64_t n)
{
    block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        float d = q8_quants(src + i * QK8_1, b[i].qs);
        int sum = 0;
        for (int j = 0; j < QK8_1; j++)
            sum += b[i].qs[j];
        b[i].d = TO_F16(d);
        /* s from the unrounded d, as the quants were made with it */
        b[i].s = TO_F16((float)sum * d);
    }
}

/* q8_1 as a weight type (rare): dots with q8_0 activations, ignoring s. */
float cm_dot_q8_1(int64_t n, const void *w, const void *x)
{
    const block_q8_1 *a = w;
    const block_q8_0 *b = x;
    double s = 0;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        int sum = 0;
        for (int j = 0; j < QK8_1; j++)
            sum += a[i].qs[j] * b[i].qs[j];
        s += sum * (F16(a[i].d) * F16(b[i].d));
    }
    return (float)s;
}
