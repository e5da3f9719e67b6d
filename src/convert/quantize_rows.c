/* quantize_rows.c - weight quantizers that write the bytes llama.cpp writes.
 *
 * llama-quantize without an importance matrix encodes every block with
 * ggml's reference quantizers.  Their algorithms are published (ggml's
 * k-quants description and the GGUF format notes): the legacy types take
 * the block's extreme as the scale, the K-quants search for sub-block
 * scales that minimise a weighted squared (or absolute) error, then encode
 * those scales with a super-block scale and re-fit the levels.  This file
 * re-implements them step by step, with the same float operations in the
 * same order, so that our files match llama.cpp's byte for byte.
 *
 * Why not quant/ref*.c: those are the engine's own encoders (used for
 * activations, which round ties to even and fit scales differently); a
 * weight file must look like llama.cpp's so both engines read the same
 * numbers and our logits can be compared with theirs. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "quant/blocks.h"
#include "quant/quant.h"
#include "convert/quantize.h"

/* Byte identity needs each product and sum rounded on its own: a fused
 * multiply-add (allowed by default when the target has one) changes the
 * last bit of the fitted scales now and then. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define GROUP_EPS 1e-15f /* a group whose largest magnitude is below this is zero */

/* Round to nearest, ties to even, for |f| < 2^22: adding 1.5 * 2^23 leaves
 * round(f) in the low mantissa bits (ggml's trick; inline, where lrintf is
 * a library call, and defined for any input). */
static int near_int(float f)
{
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static float f16f(uint16_t h)
{
    return cm_f16_to_f32(h);
}

/* ------------------------------------------------------------ legacy */

/* Signed value of largest magnitude (the first on ties). */
static float signed_max(const float *x, int n)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static void min_max(const float *x, int n, float *mn, float *mx)
{
    *mn = INFINITY;
    *mx = -INFINITY;
    for (int j = 0; j < n; j++) {
        *mn = x[j] < *mn ? x[j] : *mn;
        *mx = x[j] > *mx ? x[j] : *mx;
    }
}

/* Levels of the symmetric types: x / d + offset + 0.5 truncated (x / d is
 * within [-offset, offset], so this rounds half up), capped at top. */
static int sym_level(float v, float off_half, int top)
{
    int q = (int8_t)(v + off_half);
    return q > top ? top : q;
}

static void pack_q5(const int q[32], uint8_t *qs, uint8_t *qh_out)
{
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
        qh |= (uint32_t)((q[j] & 0x10) >> 4) << j;
        qh |= (uint32_t)((q[j + 16] & 0x10) >> 4) << (j + 16);
    }
    memcpy(qh_out, &qh, 4);
}

static void row_q4_0(const float *x, block_q4_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += 32) {
        const float d = signed_max(x, 32) / -8, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = cm_f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            int lo = sym_level(x[j] * id, 8.5f, 15), hi = sym_level(x[j + 16] * id, 8.5f, 15);
            y[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

static void row_q5_0(const float *x, block_q5_0 *y, int64_t nb)
{
    int q[32];
    for (int64_t i = 0; i < nb; i++, x += 32) {
        const float d = signed_max(x, 32) / -16, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = cm_f32_to_f16(d);
        for (int j = 0; j < 32; j++)
            q[j] = sym_level(x[j] * id, 16.5f, 31);
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

/* q4_1 / q5_1: x = q * d + min with d = (max - min) / top. */
static void row_q4_1(const float *x, block_q4_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float mn, mx;
        min_max(x, 32, &mn, &mx);
        const float d = (mx - mn) / 15, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = cm_f32_to_f16(d);
        y[i].m = cm_f32_to_f16(mn);
        for (int j = 0; j < 16; j++) {
            int lo = sym_level((x[j] - mn) * id, 0.5f, 15);
            int hi = sym_level((x[j + 16] - mn) * id, 0.5f, 15);
            y[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

static void row_q5_1(const float *x, block_q5_1 *y, int64_t nb)
{
    int q[32];
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float mn, mx;
        min_max(x, 32, &mn, &mx);
        const float d = (mx - mn) / 31, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = cm_f32_to_f16(d);
        y[i].m = cm_f32_to_f16(mn);
        for (int j = 0; j < 32; j++) /* no cap: llama.cpp masks the bits as they come */
            q[j] = (uint8_t)((x[j] - mn) * id + 0.5f);
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

/* q8_0: d = amax / 127 and q = round(x / d) with ties away from zero (the
 * activation quantizer in quant/ rounds ties to even instead). */
static void row_q8_0(const float *x, block_q8_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 127, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = cm_f32_to_f16(d);
        for (int j = 0; j < 32; j++)
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* ------------------------------------------------------------ K-quant fits */

/* Asymmetric fit x ~ scale * L + min (L in 0..nmax, min <= 0) minimising
 * the w-weighted squared (or, use_mad, absolute) error: start from the
 * min/max grid, then try nstep + 1 stretched grids, each refined by the
 * closed-form least-squares scale and min.  Returns the scale; *neg_min
 * receives -min. */
typedef struct {
    int n, nmax, nstep, use_mad;
    float rmin, rdelta;
} qkx_params;

static float grid_error(const qkx_params *p, const float *x, const float *w, const uint8_t *L,
                        float scale, float min)
{
    float err = 0;
    for (int i = 0; i < p->n; i++) {
        float diff = scale * L[i] + min - x[i];
        diff = p->use_mad ? fabsf(diff) : diff * diff;
        err += w[i] * diff;
    }
    return err;
}

static float fit_qkx(const qkx_params *p, const float *x, const float *w, uint8_t *L,
                     float *neg_min)
{
    int n = p->n, nmax = p->nmax;
    uint8_t aux[32];
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        min = x[i] < min ? x[i] : min;
        max = x[i] > max ? x[i] : max;
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min), scale = 1 / iscale;
    for (int i = 0; i < n; i++)
        L[i] = (uint8_t)clampi(near_int(iscale * (x[i] - min)), 0, nmax);
    float best = grid_error(p, x, w, L, scale, min);
    for (int is = 0; is <= p->nstep; is++) {
        iscale = (p->rmin + p->rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(near_int(iscale * (x[i] - min)), 0, nmax);
            aux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0))
            continue;
        float s = (sum_w * sum_xl - sum_x * sum_l) / D;
        float m = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (m > 0) {
            m = 0;
            s = sum_xl / sum_l2;
        }
        float err = grid_error(p, x, w, aux, s, m);
        if (err < best) {
            memcpy(L, aux, (size_t)n);
            best = err;
            scale = s;
            min = m;
        }
    }
    *neg_min = -min;
    return scale;
}

/* Weighted sums for a symmetric grid: sum w x l and sum w l^2 with w = x^2. */
static void sym_sums(const float *x, int n, int nmax, float iscale, float *sumlx, float *suml2)
{
    *sumlx = *suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clampi(near_int(iscale * x[i]), -nmax, nmax - 1);
        float w = x[i] * x[i];
        *sumlx += w * x[i] * l;
        *suml2 += w * l * l;
    }
}

/* Symmetric fit x ~ scale * (L - nmax), L in 0..2 nmax - 1, weighted by
 * x^2: the grid through the extreme value, then 18 grids around it; the
 * best least-squares scale wins.  (q6_K) */
static float fit_qx(int n, int nmax, const float *x, int8_t *L)
{
    float max = signed_max(x, n);
    if (fabsf(max) < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -nmax / max, sumlx, suml2;
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)(nmax + clampi(near_int(iscale * x[i]), -nmax, nmax - 1));
    sym_sums(x, n, nmax, iscale, &sumlx, &suml2);
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -(nmax + 0.1f * is) / max;
        sym_sums(x, n, nmax, iscale, &sumlx, &suml2);
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + clampi(near_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* One coordinate-descent pass of fit_q3: move each level to its best value
 * given the others when that raises (sum w x l)^2 / sum w l^2. */
static int q3_pass(const float *x, int n, int nmax, int8_t *L, float *sumlx, float *suml2)
{
    int changed = 0;
    for (int i = 0; i < n; i++) {
        float w = x[i] * x[i];
        float slx = *sumlx - w * x[i] * L[i];
        if (!(slx > 0))
            continue;
        float sl2 = *suml2 - w * L[i] * L[i];
        int nl = clampi(near_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (nl == L[i])
            continue;
        slx += w * x[i] * nl;
        sl2 += w * nl * nl;
        if (sl2 > 0 && slx * slx * *suml2 > *sumlx * *sumlx * sl2) {
            L[i] = (int8_t)nl;
            *sumlx = slx;
            *suml2 = sl2;
            changed++;
        }
    }
    return changed;
}

/* Symmetric fit for q3_K: the grid through the extreme value, then up to
 * five passes of per-level refinement.  L comes back offset by nmax. */
static float fit_q3(int n, int nmax, const float *x, int8_t *L)
{
    float max = signed_max(x, n);
    if (fabsf(max) < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clampi(near_int(iscale * x[i]), -nmax, nmax - 1);
        float w = x[i] * x[i];
        L[i] = (int8_t)l;
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int it = 0; it < 5 && q3_pass(x, n, nmax, L, &sumlx, &suml2); it++)
        ;
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)(L[i] + nmax);
    return sumlx / suml2;
}

/* ------------------------------------------------------------ K-quant blocks */

/* Two bits per level, four sub-rows of 32 interleaved per byte (q2_K, q3_K). */
static void pack_2bit(const uint8_t *L, uint8_t *qs)
{
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                      (L[j + l + 96] << 6));
}

static void block_q2_k(const float *x, block_q2_K *y)
{
    static const qkx_params P = {16, 3, 15, 1, -0.5f, 0.1f};
    uint8_t L[QK_K];
    float w[16], mins[16], scales[16], max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
        for (int l = 0; l < 16; l++)
            w[l] = fabsf(x[16 * j + l]);
        scales[j] = fit_qkx(&P, x + 16 * j, w, L + 16 * j, &mins[j]);
        max_scale = scales[j] > max_scale ? scales[j] : max_scale;
        max_min = mins[j] > max_min ? mins[j] : max_min;
    }
    memset(y->scales, 0, sizeof y->scales);
    y->d = y->dmin = cm_f32_to_f16(0.0f);
    if (max_scale > 0) {
        float is = 15.0f / max_scale;
        for (int j = 0; j < 16; j++)
            y->scales[j] = (uint8_t)near_int(is * scales[j]);
        y->d = cm_f32_to_f16(max_scale / 15.0f);
    }
    if (max_min > 0) {
        float is = 15.0f / max_min;
        for (int j = 0; j < 16; j++)
            y->scales[j] |= (uint8_t)(near_int(is * mins[j]) << 4);
        y->dmin = cm_f32_to_f16(max_min / 15.0f);
    }
    for (int j = 0; j < 16; j++) {
        const float d = f16f(y->d) * (y->scales[j] & 0xF);
        if (d == 0.0f)
            continue;
        const float dm = f16f(y->dmin) * (y->scales[j] >> 4);
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (uint8_t)clampi(near_int((x[16 * j + i] + dm) / d), 0, 3);
    }
    pack_2bit(L, y->qs);
}

/* The 16 6-bit q3_K scales, biased by 32: low nibbles in bytes 0-7, top
 * two bits in bytes 8-11. */
static void q3_scales_pack(const int q[16], uint8_t s[12])
{
    memset(s, 0, 12);
    for (int j = 0; j < 16; j++) {
        int l = q[j];
        if (j < 8)
            s[j] = (uint8_t)(l & 0xF);
        else
            s[j - 8] |= (uint8_t)((l & 0xF) << 4);
        s[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
    }
}

static void q3_levels(const float *x, block_q3_K *y, int8_t *L)
{
    int8_t sc[16];
    cm_k3_scales(y->scales, sc);
    for (int j = 0; j < 16; j++) {
        const float d = f16f(y->d) * sc[j];
        if (d == 0.0f)
            continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(clampi(near_int(x[16 * j + i] / d), -4, 3) + 4);
    }
    memset(y->hmask, 0, sizeof y->hmask);
    for (int j = 0; j < QK_K; j++) { /* bit 2 of level j: bit j/32 of hmask[j%32] */
        if (L[j] > 3) {
            y->hmask[j % 32] |= (uint8_t)(1 << (j / 32));
            L[j] = (int8_t)(L[j] - 4);
        }
    }
    pack_2bit((const uint8_t *)L, y->qs);
}

static void block_q3_k(const float *x, block_q3_K *y)
{
    int8_t L[QK_K];
    float scales[16], amax = 0, max_scale = 0;
    int q[16];
    for (int j = 0; j < 16; j++) {
        scales[j] = fit_q3(16, 4, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > amax) {
            amax = fabsf(scales[j]);
            max_scale = scales[j];
        }
    }
    memset(y->scales, 0, sizeof y->scales);
    y->d = cm_f32_to_f16(0.0f);
    if (max_scale != 0.0f) {
        float is = -32.0f / max_scale;
        for (int j = 0; j < 16; j++)
            q[j] = clampi((int8_t)near_int(is * scales[j]), -32, 31) + 32;
        q3_scales_pack(q, y->scales);
        y->d = cm_f32_to_f16(1 / is);
    }
    q3_levels(x, y, L);
}

/* q4_K / q5_K share everything but the level count and search grid. */
static void k45_scales(const float *x, const qkx_params *p, uint8_t *L, uint8_t packed[12],
                       uint16_t *d, uint16_t *dmin)
{
    float w[32], mins[8], scales[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            w[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = fit_qkx(p, x + 32 * j, w, L + 32 * j, &mins[j]);
        max_scale = scales[j] > max_scale ? scales[j] : max_scale;
        max_min = mins[j] > max_min ? mins[j] : max_min;
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)near_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)near_int(inv_min * mins[j]);
        ls = ls > 63 ? 63 : ls;
        lm = lm > 63 ? 63 : lm;
        if (j < 4) {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
            packed[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d = cm_f32_to_f16(max_scale / 63.0f);
    *dmin = cm_f32_to_f16(max_min / 63.0f);
}

/* Re-fits the levels to the encoded scales and mins. */
static void k45_levels(const float *x, const uint8_t packed[12], uint16_t d16, uint16_t dmin16,
                       int nmax, uint8_t *L)
{
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        cm_k4_scale_min(j, packed, &sc, &m);
        const float d = f16f(d16) * sc;
        if (d == 0.0f)
            continue;
        const float dm = f16f(dmin16) * m;
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)clampi(near_int((x[32 * j + i] + dm) / d), 0, nmax);
    }
}

static void block_q4_k(const float *x, block_q4_K *y)
{
    static const qkx_params P = {32, 15, 20, 0, -1.0f, 0.1f};
    uint8_t L[QK_K];
    memset(y->scales, 0, sizeof y->scales);
    k45_scales(x, &P, L, y->scales, &y->d, &y->dmin);
    k45_levels(x, y->scales, y->d, y->dmin, 15, L);
    for (int j = 0; j < QK_K; j += 64)
        for (int l = 0; l < 32; l++)
            y->qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

static void block_q5_k(const float *x, block_q5_K *y)
{
    static const qkx_params P = {32, 31, 15, 0, -0.5f, 0.1f};
    uint8_t L[QK_K];
    memset(y->scales, 0, sizeof y->scales);
    k45_scales(x, &P, L, y->scales, &y->d, &y->dmin);
    k45_levels(x, y->scales, y->d, y->dmin, 31, L);
    memset(y->qh, 0, sizeof y->qh);
    for (int c = 0; c < 4; c++) { /* 64 levels: low nibbles in qs, bit 4 in qh bit 2c / 2c+1 */
        for (int l = 0; l < 32; l++) {
            int l1 = L[64 * c + l], l2 = L[64 * c + l + 32];
            y->qh[l] |= (uint8_t)(((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1)));
            y->qs[32 * c + l] = (uint8_t)((l1 & 0xF) | ((l2 & 0xF) << 4));
        }
    }
}

static void pack_q6(const int8_t *L, block_q6_K *y)
{
    uint8_t *ql = y->ql, *qh = y->qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; l++) {
            int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
            ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
            ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
            qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
}

static void block_q6_k(const float *x, block_q6_K *y)
{
    int8_t L[QK_K];
    float scales[16], max_scale = 0, max_abs = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = fit_qx(16, 32, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > max_abs) {
            max_abs = fabsf(scales[j]);
            max_scale = scales[j];
        }
    }
    if (max_abs < GROUP_EPS) {
        memset(y, 0, sizeof *y);
        return;
    }
    float is = -128.0f / max_scale;
    y->d = cm_f32_to_f16(1 / is);
    for (int j = 0; j < 16; j++) {
        int s = near_int(is * scales[j]);
        y->scales[j] = (int8_t)(s > 127 ? 127 : s);
    }
    for (int j = 0; j < 16; j++) {
        const float d = f16f(y->d) * y->scales[j];
        if (d == 0.0f)
            continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(clampi(near_int(x[16 * j + i] / d), -32, 31) + 32);
    }
    pack_q6(L, y);
}

/* ------------------------------------------------------------ entry */

static void halves(uint32_t type, const float *x, uint16_t *dst, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = type == CM_TYPE_F16 ? cm_f32_to_f16(x[i]) : cm_f32_to_bf16(x[i]);
}

#define EACH_BLOCK(T, fn)                                                   \
    for (int64_t b = 0; b < n / QK_K; b++)                                  \
        fn(src + b * QK_K, (T *)dst + b)

int cm_quantize_weights(uint32_t type, const float *src, void *dst, int64_t n)
{
    const cm_type_info *ti = cm_type_get(type);
    if (!ti || n < 0 || n % ti->block_elems)
        return -1;
    switch (type) {
    case CM_TYPE_F32: memcpy(dst, src, (size_t)n * sizeof *src); break;
    case CM_TYPE_F16:
    case CM_TYPE_BF16: halves(type, src, dst, n); break;
    case CM_TYPE_Q4_0: row_q4_0(src, dst, n / 32); break;
    case CM_TYPE_Q4_1: row_q4_1(src, dst, n / 32); break;
    case CM_TYPE_Q5_0: row_q5_0(src, dst, n / 32); break;
    case CM_TYPE_Q5_1: row_q5_1(src, dst, n / 32); break;
    case CM_TYPE_Q8_0: row_q8_0(src, dst, n / 32); break;
    case CM_TYPE_Q2_K: EACH_BLOCK(block_q2_K, block_q2_k); break;
    case CM_TYPE_Q3_K: EACH_BLOCK(block_q3_K, block_q3_k); break;
    case CM_TYPE_Q4_K: EACH_BLOCK(block_q4_K, block_q4_k); break;
    case CM_TYPE_Q5_K: EACH_BLOCK(block_q5_K, block_q5_k); break;
    case CM_TYPE_Q6_K: EACH_BLOCK(block_q6_K, block_q6_k); break;
    default: return -1;
    }
    return 0;
}
