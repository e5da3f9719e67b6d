/* ref_kquants.c - scalar references for the K-quants (q2_K..q6_K, q8_K).
 *
 * Each format gets an unpack (block -> integer levels + sub-block scales) and
 * a pack (the inverse); dequantize, dot and quantize are written on top of
 * them so the bit layout lives in exactly one place per format.
 *
 * The quantizers are plain round-to-nearest with a small per-sub-block scale
 * search (no importance matrix): fit each sub-block's scale (and min) by
 * least squares over a few candidate level assignments, quantize those
 * sub-block scales against the super-block scale, then re-derive the levels
 * from the scales actually stored. */
#include <float.h>
#include <string.h>

#include "quant/blocks.h"
#include "quant/ref.h"

#define F16(x) cm_f16_to_f32(x)
#define TO_F16(x) cm_f32_to_f16(x)
#define F16_ROUND(x) F16(TO_F16(x))

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Rounded, clamped level; nan and inf land in range too. */
static int qlevel(float v, int lo, int hi)
{
    if (!(v > (float)lo))
        return lo;
    if (v >= (float)hi)
        return hi;
    return clampi(cm_round_int(v), lo, hi);
}

/* ---- sub-block scale fitting ------------------------------------------- */

/* x ~ s*L + m with L in 0..nmax, s >= 0, m <= 0 (the formats subtract a
 * non-negative min).  Tries level assignments from a few stretched scales and
 * keeps the least-squares (s, m) with the lowest squared error. */
static void fit_asym(const float *x, int n, int nmax, float *s_out,
                     float *m_out)
{
    float mn = 0, mx = -FLT_MAX;
    for (int i = 0; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    *s_out = mx > mn ? (mx - mn) / nmax : 0;
    *m_out = mn;
    if (!(mx > mn))
        return;
    float best = FLT_MAX;
    for (int k = -4; k <= 8; k++) {
        float is = (nmax + 0.1f * k) / (mx - mn);
        double sl = 0, sx = 0, sll = 0, slx = 0, err = 0;
        int L[32];
        for (int i = 0; i < n; i++) {
            L[i] = qlevel((x[i] - mn) * is, 0, nmax);
            sl += L[i], sx += x[i], sll += L[i] * L[i], slx += L[i] * x[i];
        }
        double det = n * sll - sl * sl;
        if (det <= 0)
            continue;
        double s = (n * slx - sl * sx) / det, m = (sx - s * sl) / n;
        if (m > 0) /* min must not be positive: refit through zero */
            m = 0, s = sll > 0 ? slx / sll : 0;
        if (s < 0)
            continue;
        for (int i = 0; i < n; i++) {
            double e = x[i] - s * L[i] - m;
            err += e * e;
        }
        if (err < best)
            best = (float)err, *s_out = (float)s, *m_out = (float)m;
    }
}

/* x ~ s*L with L in -nneg..nneg-1 (s may be negative, so the largest
 * magnitude can use the extra negative level). */
static float fit_sym(const float *x, int n, int nneg)
{
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax)
            amax = fabsf(x[i]), max = x[i];
    if (amax == 0)
        return 0;
    float best_s = -max / nneg;
    double best = -1;
    for (int k = -4; k <= 8; k++) {
        float is = -(nneg + 0.1f * k) / max;
        double sll = 0, slx = 0;
        for (int i = 0; i < n; i++) {
            int L = qlevel(x[i] * is, -nneg, nneg - 1);
            sll += L * L, slx += L * x[i];
        }
        /* least-squares error is sum(x^2) - slx^2/sll: maximize the ratio */
        if (sll > 0 && slx * slx / sll > best)
            best = slx * slx / sll, best_s = (float)(slx / sll);
    }
    return best_s;
}

/* Scales (or mins) v[0..n) >= 0 as v ~ d*q, q in 0..qmax; returns d. */
static float quant_scales_u(const float *v, int n, int qmax, uint8_t *q)
{
    float mx = 0;
    for (int i = 0; i < n; i++)
        mx = v[i] > mx ? v[i] : mx;
    float d = F16_ROUND(mx / qmax), id = d > 0 ? 1 / d : 0;
    for (int i = 0; i < n; i++)
        q[i] = (uint8_t)qlevel(v[i] * id, 0, qmax);
    return d;
}

/* Signed scales as v ~ d*q, q in -qneg..qneg-1; returns d. */
static float quant_scales_s(const float *v, int n, int qneg, int *q)
{
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(v[i]) > amax)
            amax = fabsf(v[i]), max = v[i];
    float d = amax > 0 ? F16_ROUND(-max / qneg) : 0, id = d != 0 ? 1 / d : 0;
    for (int i = 0; i < n; i++)
        q[i] = qlevel(v[i] * id, -qneg, qneg - 1);
    return d;
}

/* Levels for x given a stored effective scale and min: x ~ s*L - m. */
static void levels_asym(const float *x, int n, float s, float m, int nmax,
                        uint8_t *L)
{
    float is = s > 0 ? 1 / s : 0;
    for (int i = 0; i < n; i++)
        L[i] = (uint8_t)qlevel((x[i] + m) * is, 0, nmax);
}

/* ---- q2_K --------------------------------------------------------------
 * Element e = 128c + 32j + l (c < 2, j < 4, l < 32) is bits 2j..2j+1 of
 * qs[32c + l]; sub-block e/16 has scale nibble (low) and min nibble (high)
 * in scales[e/16]. */

static void q2k_unpack(const block_q2_K *b, uint8_t L[QK_K])
{
    for (int e = 0; e < QK_K; e++)
        L[e] = (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
}

void cm_dequant_q2_K(const void *src, float *dst, int64_t n)
{
    const block_q2_K *b = src;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K) {
        float d = F16(b[i].d), dmin = F16(b[i].dmin);
        q2k_unpack(&b[i], L);
        for (int e = 0; e < QK_K; e++) {
            uint8_t sc = b[i].scales[e / 16];
            float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
            dst[e] = dl * L[e] - ml;
        }
    }
}

static void q2k_block(const float *x, block_q2_K *b)
{
    float s[16], m[16];
    uint8_t qs[16], qm[16], L[QK_K];
    for (int j = 0; j < 16; j++) {
        fit_asym(x + 16 * j, 16, 3, &s[j], &m[j]);
        m[j] = -m[j];
    }
    float d = quant_scales_u(s, 16, 15, qs);
    float dmin = quant_scales_u(m, 16, 15, qm);
    b->d = TO_F16(d);
    b->dmin = TO_F16(dmin);
    for (int j = 0; j < 16; j++) {
        b->scales[j] = (uint8_t)(qs[j] | (qm[j] << 4));
        levels_asym(x + 16 * j, 16, d * qs[j], dmin * qm[j], 3, L + 16 * j);
    }
    memset(b->qs, 0, sizeof b->qs);
    for (int e = 0; e < QK_K; e++)
        b->qs[32 * (e / 128) + e % 32] |= (uint8_t)(L[e] << (2 * ((e / 32) % 4)));
}

void cm_quant_q2_K(const float *src, void *dst, int64_t n)
{
    for (int64_t i = 0; i < n / QK_K; i++)
        q2k_block(src + i * QK_K, (block_q2_K *)dst + i);
}

float cm_dot_q2_K(int64_t n, const void *w, const void *x)
{
    const block_q2_K *a = w;
    const block_q8_K *y = x;
    uint8_t L[QK_K];
    double s = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        q2k_unpack(&a[i], L);
        int isum = 0, summs = 0;
        for (int j = 0; j < 16; j++) {
            int t = 0;
            for (int l = 0; l < 16; l++)
                t += L[16 * j + l] * y[i].qs[16 * j + l];
            isum += (a[i].scales[j] & 0xF) * t;
            summs += (a[i].scales[j] >> 4) * y[i].bsums[j];
        }
        float dall = y[i].d * F16(a[i].d), dmin = y[i].d * F16(a[i].dmin);
        s += (double)dall * isum - (double)dmin * summs;
    }
    return (float)s;
}

/* ---- q3_K --------------------------------------------------------------
 * Low two bits as q2_K; bit 2 of element e is bit e/32 of hmask[e%32]; the
 * level is (low2 | bit2 << 2) - 4.  Scales: cm_k3_scales (blocks.h). */

static void q3k_unpack(const block_q3_K *b, int8_t L[QK_K])
{
    for (int e = 0; e < QK_K; e++) {
        int lo = (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
        int hi = (b->hmask[e % 32] >> (e / 32)) & 1;
        L[e] = (int8_t)((lo | (hi << 2)) - 4);
    }
}

void cm_dequant_q3_K(const void *src, float *dst, int64_t n)
{
    const block_q3_K *b = src;
    int8_t L[QK_K], sc[16];
    for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K) {
        float d = F16(b[i].d);
        q3k_unpack(&b[i], L);
        cm_k3_scales(b[i].scales, sc);
        for (int e = 0; e < QK_K; e++)
            dst[e] = (d * sc[e / 16]) * L[e];
    }
}

static void q3k_pack_scales(const int q[16], uint8_t out[12])
{
    memset(out, 0, 12);
    for (int j = 0; j < 16; j++) {
        int v = q[j] + 32;
        out[j % 8] |= (uint8_t)((v & 0xF) << (j < 8 ? 0 : 4));
        out[8 + j % 4] |= (uint8_t)((v >> 4) << (2 * (j / 4)));
    }
}

static void q3k_block(const float *x, block_q3_K *b)
{
    float s[16];
    int q[16];
    for (int j = 0; j < 16; j++)
        s[j] = fit_sym(x + 16 * j, 16, 4);
    float d = quant_scales_s(s, 16, 32, q);
    b->d = TO_F16(d);
    q3k_pack_scales(q, b->scales);
    memset(b->qs, 0, sizeof b->qs);
    memset(b->hmask, 0, sizeof b->hmask);
    for (int e = 0; e < QK_K; e++) {
        float eff = d * q[e / 16];
        int L = eff != 0 ? qlevel(x[e] / eff, -4, 3) + 4 : 4;
        b->qs[32 * (e / 128) + e % 32] |= (uint8_t)((L & 3) << (2 * ((e / 32) % 4)));
        b->hmask[e % 32] |= (uint8_t)((L >> 2) << (e / 32));
    }
}

void cm_quant_q3_K(const float *src, void *dst, int64_t n)
{
    for (int64_t i = 0; i < n / QK_K; i++)
        q3k_block(src + i * QK_K, (block_q3_K *)dst + i);
}

float cm_dot_q3_K(int64_t n, const void *w, const void *x)
{
    const block_q3_K *a = w;
    const block_q8_K *y = x;
    int8_t L[QK_K], sc[16];
    double s = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        q3k_unpack(&a[i], L);
        cm_k3_scales(a[i].scales, sc);
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int t = 0;
            for (int l = 0; l < 16; l++)
                t += L[16 * j + l] * y[i].qs[16 * j + l];
            isum += sc[j] * t;
        }
        s += (double)(F16(a[i].d) * y[i].d) * isum;
    }
    return (float)s;
}

/* ---- q4_K / q5_K -------------------------------------------------------
 * Element e = 64c + 32h + l (c < 4, h < 2, l < 32): low nibble (h = 0) or
 * high nibble (h = 1) of qs[32c + l]; for q5_K bit 4 is bit 2c+h of qh[l].
 * Sub-block e/32 takes scale/min from cm_k4_scale_min (blocks.h). */

static void q45k_unpack(const uint8_t *qs, const uint8_t *qh, uint8_t L[QK_K])
{
    for (int e = 0; e < QK_K; e++) {
        int c = e / 64, h = (e / 32) % 2, l = e % 32;
        int v = (qs[32 * c + l] >> (4 * h)) & 0xF;
        if (qh)
            v |= ((qh[l] >> (2 * c + h)) & 1) << 4;
        L[e] = (uint8_t)v;
    }
}

static void q45k_pack(const uint8_t L[QK_K], uint8_t *qs, uint8_t *qh)
{
    memset(qs, 0, QK_K / 2);
    if (qh)
        memset(qh, 0, QK_K / 8);
    for (int e = 0; e < QK_K; e++) {
        int c = e / 64, h = (e / 32) % 2, l = e % 32;
        qs[32 * c + l] |= (uint8_t)((L[e] & 0xF) << (4 * h));
        if (qh)
            qh[l] |= (uint8_t)((L[e] >> 4) << (2 * c + h));
    }
}

/* Inverse of cm_k4_scale_min for 8 6-bit scales and mins. */
static void k4_pack_scales(const uint8_t sc[8], const uint8_t m[8],
                           uint8_t out[12])
{
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        out[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        out[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
}

static void dequant_q45k(float d, float dmin, const uint8_t *scales,
                         const uint8_t L[QK_K], float *dst)
{
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        cm_k4_scale_min(j, scales, &sc, &m);
        float d1 = d * sc, m1 = dmin * m;
        for (int l = 0; l < 32; l++)
            dst[32 * j + l] = d1 * L[32 * j + l] - m1;
    }
}

/* Fits sub-blocks of 32, stores d/dmin/scales, returns levels in L. */
static void q45k_fit(const float *x, int nmax, uint16_t *d16,
                     uint16_t *dmin16, uint8_t scales[12], uint8_t L[QK_K])
{
    float s[8], m[8];
    uint8_t qs[8], qm[8];
    for (int j = 0; j < 8; j++) {
        fit_asym(x + 32 * j, 32, nmax, &s[j], &m[j]);
        m[j] = -m[j];
    }
    float d = quant_scales_u(s, 8, 63, qs);
    float dmin = quant_scales_u(m, 8, 63, qm);
    *d16 = TO_F16(d);
    *dmin16 = TO_F16(dmin);
    k4_pack_scales(qs, qm, scales);
    for (int j = 0; j < 8; j++)
        levels_asym(x + 32 * j, 32, d * qs[j], dmin * qm[j], nmax, L + 32 * j);
}

static float dot_q45k(float wd, float wdmin, const uint8_t *scales,
                      const uint8_t L[QK_K], const block_q8_K *y)
{
    int sumi = 0, mins = 0;
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        cm_k4_scale_min(j, scales, &sc, &m);
        int t = 0;
        for (int l = 0; l < 32; l++)
            t += L[32 * j + l] * y->qs[32 * j + l];
        sumi += sc * t;
        mins += m * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    float d = wd * y->d, dmin = wdmin * y->d;
    return (float)((double)d * sumi - (double)dmin * mins);
}

void cm_dequant_q4_K(const void *src, float *dst, int64_t n)
{
    const block_q4_K *b = src;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K) {
        q45k_unpack(b[i].qs, NULL, L);
        dequant_q45k(F16(b[i].d), F16(b[i].dmin), b[i].scales, L, dst);
    }
}

void cm_quant_q4_K(const float *src, void *dst, int64_t n)
{
    block_q4_K *b = dst;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++) {
        q45k_fit(src + i * QK_K, 15, &b[i].d, &b[i].dmin, b[i].scales, L);
        q45k_pack(L, b[i].qs, NULL);
    }
}

float cm_dot_q4_K(int64_t n, const void *w, const void *x)
{
    const block_q4_K *a = w;
    const block_q8_K *y = x;
    uint8_t L[QK_K];
    double s = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        q45k_unpack(a[i].qs, NULL, L);
        s += dot_q45k(F16(a[i].d), F16(a[i].dmin), a[i].scales, L, &y[i]);
    }
    return (float)s;
}

void cm_dequant_q5_K(const void *src, float *dst, int64_t n)
{
    const block_q5_K *b = src;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K) {
        q45k_unpack(b[i].qs, b[i].qh, L);
        dequant_q45k(F16(b[i].d), F16(b[i].dmin), b[i].scales, L, dst);
    }
}

void cm_quant_q5_K(const float *src, void *dst, int64_t n)
{
    block_q5_K *b = dst;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++) {
        q45k_fit(src + i * QK_K, 31, &b[i].d, &b[i].dmin, b[i].scales, L);
        q45k_pack(L, b[i].qs, b[i].qh);
    }
}

float cm_dot_q5_K(int64_t n, const void *w, const void *x)
{
    const block_q5_K *a = w;
    const block_q8_K *y = x;
    uint8_t L[QK_K];
    double s = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        q45k_unpack(a[i].qs, a[i].qh, L);
        s += dot_q45k(F16(a[i].d), F16(a[i].dmin), a[i].scales, L, &y[i]);
    }
    return (float)s;
}

/* ---- q6_K --------------------------------------------------------------
 * Element e = 128c + 32k + l (c < 2, k < 4, l < 32): low nibble from
 * ql[64c + 32(k&1) + l], low (k < 2) or high half; top two bits are bits
 * 2k..2k+1 of qh[32c + l]; level minus 32; scale scales[e/16]. */

static void q6k_unpack(const block_q6_K *b, int8_t L[QK_K])
{
    for (int e = 0; e < QK_K; e++) {
        int c = e / 128, k = (e / 32) % 4, l = e % 32;
        int lo = (b->ql[64 * c + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xF;
        int hi = (b->qh[32 * c + l] >> (2 * k)) & 3;
        L[e] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

void cm_dequant_q6_K(const void *src, float *dst, int64_t n)
{
    const block_q6_K *b = src;
    int8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K) {
        float d = F16(b[i].d);
        q6k_unpack(&b[i], L);
        for (int e = 0; e < QK_K; e++)
            dst[e] = (d * b[i].scales[e / 16]) * L[e];
    }
}

static void q6k_block(const float *x, block_q6_K *b)
{
    float s[16];
    int q[16];
    for (int j = 0; j < 16; j++)
        s[j] = fit_sym(x + 16 * j, 16, 32);
    float d = quant_scales_s(s, 16, 128, q);
    b->d = TO_F16(d);
    memset(b->ql, 0, sizeof b->ql);
    memset(b->qh, 0, sizeof b->qh);
    for (int j = 0; j < 16; j++)
        b->scales[j] = (int8_t)q[j];
    for (int e = 0; e < QK_K; e++) {
        float eff = d * q[e / 16];
        int L = eff != 0 ? qlevel(x[e] / eff, -32, 31) + 32 : 32;
        int c = e / 128, k = (e / 32) % 4, l = e % 32;
        b->ql[64 * c + 32 * (k & 1) + l] |= (uint8_t)((L & 0xF) << (4 * (k >> 1)));
        b->qh[32 * c + l] |= (uint8_t)((L >> 4) << (2 * k));
    }
}

void cm_quant_q6_K(const float *src, void *dst, int64_t n)
{
    for (int64_t i = 0; i < n / QK_K; i++)
        q6k_block(src + i * QK_K, (block_q6_K *)dst + i);
}

float cm_dot_q6_K(int64_t n, const void *w, const void *x)
{
    const block_q6_K *a = w;
    const block_q8_K *y = x;
    int8_t L[QK_K];
    double s = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        q6k_unpack(&a[i], L);
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int t = 0;
            for (int l = 0; l < 16; l++)
                t += L[16 * j + l] * y[i].qs[16 * j + l];
            isum += a[i].scales[j] * t;
        }
        s += (double)(F16(a[i].d) * y[i].d) * isum;
    }
    return (float)s;
}

/* ---- q8_K: the activation format of K-quant dots -----------------------
 * The value of largest magnitude maps to exactly -127 (so d may be negative),
 * as llama.cpp does,
 * and everything else rounds into -128..127; bsums hold the sums of each 16
 * quants for the min terms. */

void cm_dequant_q8_K(const void *src, float *dst, int64_t n)
{
    const block_q8_K *b = src;
    for (int64_t i = 0; i < n / QK_K; i++, dst += QK_K)
        for (int e = 0; e < QK_K; e++)
            dst[e] = b[i].d * b[i].qs[e];
}

void cm_quant_q8_K(const float *src, void *dst, int64_t n)
{
    block_q8_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++, src += QK_K) {
        float amax = 0, max = 0;
        for (int e = 0; e < QK_K; e++)
            if (fabsf(src[e]) > amax)
                amax = fabsf(src[e]), max = src[e];
        memset(&b[i], 0, sizeof b[i]);
        float is = amax > 0 ? -127.0f / max : 0; /* llama.cpp: -127, so +-127 */
        if (!isfinite(is) || is == 0) /* zero, or so tiny 1/d overflows */
            continue;
        for (int e = 0; e < QK_K; e++)
            b[i].qs[e] = (int8_t)qlevel(is * src[e], -128, 127);
        for (int j = 0; j < 16; j++) {
            int t = 0;
            for (int l = 0; l < 16; l++)
                t += b[i].qs[16 * j + l];
            b[i].bsums[j] = (int16_t)t;
        }
        b[i].d = 1 / is;
    }
}

float cm_dot_q8_K(int64_t n, const void *w, const void *x)
{
    const block_q8_K *a = w, *b = x;
    double s = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int t = 0;
        for (int e = 0; e < QK_K; e++)
            t += a[i].qs[e] * b[i].qs[e];
        s += (double)(a[i].d * b[i].d) * t;
    }
    return (float)s;
}
