/* kernels_neon_gemm.c - NEON batched products (prompt processing).
 *
 * Built like kernels_neon.c: no target flags, on AArch64 only (elsewhere a
 * stub), the SDOT variant behind a function attribute and installed only
 * when the CPU reports it.
 *
 * A tile of TR = 8 weight rows is decoded once per matmul into signed int8
 * levels (the format's offset folded in: q4_0 as q - 8, q6_K as q - 32,
 * ...) plus per-block scales, row-major, and then reused by every group of
 * G = 4 tokens.  An int32 lane is a token: the micro-kernels keep one
 * vector per weight row holding that row's dot with the 4 tokens, so the
 * float scaling is one multiply-add per row and block and the output block
 * needs only a 4x4 transpose.
 *
 * SDOT: the activations are packed so that 16-byte word k of a chunk holds
 * the 4-element group k of each of the 4 tokens; vdotq_laneq_s32 then dots
 * it with group k of a weight row, one 16-byte load of which serves 4
 * groups.  8 rows x 4 tokens: 32 SDOTs per 12 loads.
 * Without SDOT the tokens stay 16 bytes each, and every (row, token) pair
 * gets its own vmull_s8 + vpadalq accumulator (no lane broadcasts), folded
 * into a lane per token by pairwise adds once per block.  4 rows x 4
 * tokens, which is what the registers hold.
 *
 * The integer block and sub-block sums are the per-token kernels' exactly
 * (K-quant sub-block scales multiply them as integers, as there); only the
 * float scaling and summation order differ. */
#include "backends/cpu/kernels.h"

#if defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>
#include <stddef.h>
#include <string.h>

#include "backends/cpu/neon_common.h"
#include "quant/blocks.h"

/* Loops over rows, tokens and chunks must unroll for their vectors to stay
 * in registers.  Clang reads "GCC unroll 16" as a count and leaves loops
 * of 8 rolled; it needs its own spelling. */
#if defined(__clang__)
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

#define TR 8 /* weight rows per decoded tile */
#define G 4  /* tokens per packed group = int32 lanes */

/* ---- layouts -------------------------------------------------------------
 * Decoded tiles, block-major so one pointer walks the blocks:
 *   legacy (per 32-element block): lev[8][32] s8 | d[8] f32 | m[8] f32 = LB
 *   K-quant (per super-block): lev[8][256] | sc[16][8] i32 | d[8] f32 |
 *          dmin[8] f32 | mins[16][8] i16                             = KB
 * sc are the sub-block scales (8 used by q4_K/q5_K), mins the K-quant min
 * factors (8 pair mins for q4_K/q5_K, 16 for q2_K).
 * Packed activations, per group of 4 tokens, in 64-byte chunks of 16
 * elements (SDOT: word k = group k of tokens 0-3; else token t's 16 bytes
 * at 16t):
 *   legacy (per block): xq[2 chunks] | dx[4] f32 | s[4] f32          = XB
 *   K-quant (per super-block): xq[16 chunks] | dx[4] f32 |
 *          bs[16][4] i16 (Q8_K bsums) | bp[8][4] i16 (their pair sums) = XK */
#define LB (256 + 32 + 32)
#define L_D 256
#define L_M 288
#define KB (2048 + 512 + 32 + 32 + 256)
#define K_SC 2048
#define K_D 2560
#define K_DMIN 2592
#define K_MIN 2624
#define XB (128 + 16 + 16)
#define XK (1024 + 16 + 128 + 64)
#define XK_BS 1040
#define XK_BP 1168

/* 4x4 transpose of 32-bit elements: v[i] lane j -> v[j] lane i. */
static inline void transpose4(uint32x4_t v[4])
{
    uint64x2_t a = vreinterpretq_u64_u32(vtrn1q_u32(v[0], v[1]));
    uint64x2_t b = vreinterpretq_u64_u32(vtrn2q_u32(v[0], v[1]));
    uint64x2_t c = vreinterpretq_u64_u32(vtrn1q_u32(v[2], v[3]));
    uint64x2_t d = vreinterpretq_u64_u32(vtrn2q_u32(v[2], v[3]));
    v[0] = vreinterpretq_u32_u64(vtrn1q_u64(a, c));
    v[1] = vreinterpretq_u32_u64(vtrn1q_u64(b, d));
    v[2] = vreinterpretq_u32_u64(vtrn2q_u64(a, c));
    v[3] = vreinterpretq_u32_u64(vtrn2q_u64(b, d));
}

/* ---- weight decoding ------------------------------------------------------ */

static void put_legacy(uint8_t *tb, int i, int8x16_t lo, int8x16_t hi, float d, float m)
{
    vst1q_s8((int8_t *)tb + 32 * i, lo);
    vst1q_s8((int8_t *)tb + 32 * i + 16, hi);
    ((float *)(tb + L_D))[i] = d;
    ((float *)(tb + L_M))[i] = m;
}

static void dec_q8_0(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q8_0 *b = row;
    for (int64_t k = 0; k < nb; k++)
        put_legacy(tile + k * LB, i, vld1q_s8(b[k].qs), vld1q_s8(b[k].qs + 16), f16(b[k].d),
                   0);
}

static void dec_q4_0(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q4_0 *b = row;
    const int8x16_t eight = vdupq_n_s8(8);
    for (int64_t k = 0; k < nb; k++) {
        uint8x16_t lo, hi;
        nibbles(b[k].qs, &lo, &hi);
        put_legacy(tile + k * LB, i, vsubq_s8(s8(lo), eight), vsubq_s8(s8(hi), eight),
                   f16(b[k].d), 0);
    }
}

static void dec_q4_1(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q4_1 *b = row;
    for (int64_t k = 0; k < nb; k++) {
        uint8x16_t lo, hi;
        nibbles(b[k].qs, &lo, &hi);
        put_legacy(tile + k * LB, i, s8(lo), s8(hi), f16(b[k].d), f16(b[k].m));
    }
}

/* q5_0 and q5_1 differ in the offset (16 or none) and the min. */
static void dec_q5(const uint8_t *qs, const uint8_t *qh, int off, float d, float m,
                   uint8_t *tb, int i)
{
    uint8x16_t lo, hi, hlo, hhi;
    nibbles(qs, &lo, &hi);
    fifth_bits(qh, &hlo, &hhi);
    const int8x16_t o = vdupq_n_s8((int8_t)off);
    put_legacy(tb, i, vsubq_s8(s8(vorrq_u8(lo, hlo)), o), vsubq_s8(s8(vorrq_u8(hi, hhi)), o),
               d, m);
}

static void dec_q5_0(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q5_0 *b = row;
    for (int64_t k = 0; k < nb; k++)
        dec_q5(b[k].qs, b[k].qh, 16, f16(b[k].d), 0, tile + k * LB, i);
}

static void dec_q5_1(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q5_1 *b = row;
    for (int64_t k = 0; k < nb; k++)
        dec_q5(b[k].qs, b[k].qh, 0, f16(b[k].d), f16(b[k].m), tile + k * LB, i);
}

/* Field pointers of row i in a decoded super-block. */
typedef struct {
    int8_t *lev;
    int32_t *sc;  /* sc[j * TR] */
    int16_t *min; /* min[p * TR] */
    float *d, *dmin;
} kslot;

static kslot kslot_at(uint8_t *tb, int i)
{
    kslot s = {(int8_t *)tb + 256 * i, (int32_t *)(tb + K_SC) + i, (int16_t *)(tb + K_MIN) + i,
               (float *)(tb + K_D) + i, (float *)(tb + K_DMIN) + i};
    return s;
}

/* q4_K (qh NULL) / q5_K: element 64c + 32h + l is nibble h of qs[32c + l],
 * for q5_K with bit 4 from bit 2c + h of qh[l]; sub-block p's min pairs
 * with the activation sums of its two 16-element halves. */
static void dec_q45_K(const uint8_t *qs, const uint8_t *qh, const uint8_t *scales,
                      uint16_t d, uint16_t dmin, uint8_t *tb, int i)
{
    kslot s = kslot_at(tb, i);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), one = vdupq_n_u8(1), two = vdupq_n_u8(2);
    uint8x16_t h0 = vdupq_n_u8(0), h1 = h0;
    if (qh)
        h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
    for (int c = 0; c < 4; c++) {
        uint8x16_t v0 = vld1q_u8(qs + 32 * c), v1 = vld1q_u8(qs + 32 * c + 16);
        uint8x16_t q[4] = {vandq_u8(v0, m4), vandq_u8(v1, m4), vshrq_n_u8(v0, 4),
                           vshrq_n_u8(v1, 4)};
        if (qh) {
            q[0] = vorrq_u8(q[0], vshlq_n_u8(vandq_u8(h0, one), 4));
            q[1] = vorrq_u8(q[1], vshlq_n_u8(vandq_u8(h1, one), 4));
            q[2] = vorrq_u8(q[2], vshlq_n_u8(vandq_u8(h0, two), 3));
            q[3] = vorrq_u8(q[3], vshlq_n_u8(vandq_u8(h1, two), 3));
            h0 = vshrq_n_u8(h0, 2), h1 = vshrq_n_u8(h1, 2);
        }
        UNROLL
        for (int k = 0; k < 4; k++)
            vst1q_s8(s.lev + 64 * c + 16 * k, s8(q[k]));
    }
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        cm_k4_scale_min(j, scales, &sc, &m);
        s.sc[j * TR] = sc;
        s.min[j * TR] = m;
    }
    *s.d = f16(d), *s.dmin = f16(dmin);
}

static void dec_q4_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q4_K *b = row;
    for (int64_t k = 0; k < nsb; k++)
        dec_q45_K(b[k].qs, NULL, b[k].scales, b[k].d, b[k].dmin, tile + k * KB, i);
}

static void dec_q5_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q5_K *b = row;
    for (int64_t k = 0; k < nsb; k++)
        dec_q45_K(b[k].qs, b[k].qh, b[k].scales, b[k].d, b[k].dmin, tile + k * KB, i);
}

/* q6_K: element 128c + 32k + l is nibble k>>1 of ql[64c + 32(k&1) + l]
 * with bits 2k of qh[32c + l] on top; level q - 32. */
static void dec_q6_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q6_K *b = row;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m2 = vdupq_n_u8(3);
    for (int64_t k = 0; k < nsb; k++) {
        kslot s = kslot_at(tile + k * KB, i);
        for (int c = 0; c < 2; c++) {
            const uint8_t *ql = b[k].ql + 64 * c, *qh = b[k].qh + 32 * c;
            for (int h = 0; h < 2; h++) { /* elements l = 16h .. 16h + 15 */
                uint8x16_t l0 = vld1q_u8(ql + 16 * h), l1 = vld1q_u8(ql + 32 + 16 * h);
                uint8x16_t hb = vld1q_u8(qh + 16 * h);
                uint8x16_t lo[4] = {vandq_u8(l0, m4), vandq_u8(l1, m4), vshrq_n_u8(l0, 4),
                                    vshrq_n_u8(l1, 4)};
                UNROLL
                for (int r = 0; r < 4; r++) {
                    uint8x16_t q = vorrq_u8(lo[r], vshlq_n_u8(vandq_u8(hb, m2), 4));
                    hb = vshrq_n_u8(hb, 2);
                    vst1q_s8(s.lev + 128 * c + 32 * r + 16 * h, vsubq_s8(s8(q), vdupq_n_s8(32)));
                }
            }
        }
        for (int j = 0; j < 16; j++)
            s.sc[j * TR] = b[k].scales[j];
        *s.d = f16(b[k].d);
    }
}

/* q3_K: element 128c + 32j + l takes bits 2j of qs[32c + l] and, as bit 2,
 * bit 4c + j of hmask[l]; level minus 4.  q2_K: the same low bits, levels
 * 0..3, a scale (low nibble) and a min (high) per 16 elements. */
static void dec_q23_K(const uint8_t *qs, const uint8_t *hmask, kslot s)
{
    const uint8x16_t m2 = vdupq_n_u8(3), one = vdupq_n_u8(1);
    for (int h = 0; h < 2; h++) {
        uint8x16_t hm = hmask ? vld1q_u8(hmask + 16 * h) : vdupq_n_u8(0);
        for (int c = 0; c < 2; c++) {
            uint8x16_t q = vld1q_u8(qs + 32 * c + 16 * h);
            UNROLL
            for (int j = 0; j < 4; j++) {
                uint8x16_t l = vandq_u8(q, m2);
                if (hmask)
                    l = vsubq_u8(vorrq_u8(l, vshlq_n_u8(vandq_u8(hm, one), 2)), vdupq_n_u8(4));
                vst1q_s8(s.lev + 128 * c + 32 * j + 16 * h, s8(l));
                q = vshrq_n_u8(q, 2), hm = vshrq_n_u8(hm, 1);
            }
        }
    }
}

static void dec_q3_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q3_K *b = row;
    for (int64_t k = 0; k < nsb; k++) {
        kslot s = kslot_at(tile + k * KB, i);
        int8_t sc[16];
        dec_q23_K(b[k].qs, b[k].hmask, s);
        cm_k3_scales(b[k].scales, sc);
        for (int j = 0; j < 16; j++)
            s.sc[j * TR] = sc[j];
        *s.d = f16(b[k].d);
    }
}

static void dec_q2_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q2_K *b = row;
    for (int64_t k = 0; k < nsb; k++) {
        kslot s = kslot_at(tile + k * KB, i);
        dec_q23_K(b[k].qs, NULL, s);
        for (int j = 0; j < 16; j++) {
            s.sc[j * TR] = b[k].scales[j] & 15;
            s.min[j * TR] = b[k].scales[j] >> 4;
        }
        *s.d = f16(b[k].d), *s.dmin = f16(b[k].dmin);
    }
}

typedef void (*dec_fn)(const void *row, int64_t nblk, uint8_t *tile, int i);

/* Decodes rows [0, nr) of w into a tile; missing rows decode as zeros. */
static void decode_tile(dec_fn dec, const uint8_t *w, size_t wrow, int nr, int64_t nblk,
                        size_t blk_bytes, uint8_t *tile)
{
    if (nr < TR)
        memset(tile, 0, (size_t)nblk * blk_bytes);
    for (int i = 0; i < nr; i++)
        dec(w + (size_t)i * wrow, nblk, tile, i);
}

/* ---- activation packing --------------------------------------------------- */

/* One 64-byte chunk from 16 quants of each of 4 tokens (NULL: padding). */
static void put_chunk(const int8_t *const src[G], int off, int il, int8_t *dst)
{
    uint32x4_t v[G];
    for (int t = 0; t < G; t++)
        v[t] = src[t] ? vreinterpretq_u32_s8(vld1q_s8(src[t] + off)) : vdupq_n_u32(0);
    if (il)
        transpose4(v);
    for (int t = 0; t < G; t++)
        vst1q_s8(dst + 16 * t, vreinterpretq_s8_u32(v[t]));
}

/* Q8_0 / Q8_1 rows (block size bsize, quants at qoff; s: Q8_1's sum). */
static void pack_legacy(int64_t cols, const void *xq, size_t xrow, int nt, void *dst,
                        size_t bsize, size_t qoff, int has_s, int il)
{
    for (int64_t b = 0; b < cols / 32; b++) {
        uint8_t *p = (uint8_t *)dst + b * XB;
        const int8_t *src[G];
        float *dx = (float *)(p + 128), *s = (float *)(p + 144);
        for (int t = 0; t < G; t++) {
            const uint8_t *blk = (const uint8_t *)xq + t * xrow + b * bsize;
            uint16_t h[2] = {0, 0};
            src[t] = t < nt ? (const int8_t *)(blk + qoff) : NULL;
            if (t < nt)
                memcpy(h, blk, has_s ? 4 : 2);
            dx[t] = f16(h[0]), s[t] = f16(h[1]);
        }
        put_chunk(src, 0, il, (int8_t *)p);
        put_chunk(src, 16, il, (int8_t *)p + 64);
    }
}

static void pack_q8_K(int64_t cols, const void *xq, size_t xrow, int nt, void *dst, int il)
{
    for (int64_t sb = 0; sb < cols / QK_K; sb++) {
        uint8_t *p = (uint8_t *)dst + sb * XK;
        float *dx = (float *)(p + 1024);
        int16_t *bs = (int16_t *)(p + XK_BS), *bp = (int16_t *)(p + XK_BP);
        const int8_t *src[G];
        for (int t = 0; t < G; t++) {
            const block_q8_K *blk =
                t < nt ? (const block_q8_K *)((const uint8_t *)xq + t * xrow) + sb : NULL;
            src[t] = blk ? blk->qs : NULL;
            dx[t] = blk ? blk->d : 0.0f;
            for (int j = 0; j < 16; j++)
                bs[j * G + t] = blk ? blk->bsums[j] : 0;
            for (int j = 0; j < 8; j++) /* <= 2 * 16 * 128: fits */
                bp[j * G + t] = (int16_t)(bs[2 * j * G + t] + bs[(2 * j + 1) * G + t]);
        }
        for (int c = 0; c < 16; c++)
            put_chunk(src, 16 * c, il, (int8_t *)p + 64 * c);
    }
}

static void pack_q8_0_mull(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_legacy(cols, xq, xrow, nt, dst, sizeof(block_q8_0), 2, 0, 0);
}

static void pack_q8_1_mull(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_legacy(cols, xq, xrow, nt, dst, sizeof(block_q8_1), 4, 1, 0);
}

static void pack_q8_K_mull(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_q8_K(cols, xq, xrow, nt, dst, 0);
}

#if CM_NEON_DP
static void pack_q8_0_dp(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_legacy(cols, xq, xrow, nt, dst, sizeof(block_q8_0), 2, 0, 1);
}

static void pack_q8_1_dp(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_legacy(cols, xq, xrow, nt, dst, sizeof(block_q8_1), 4, 1, 1);
}

static void pack_q8_K_dp(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_q8_K(cols, xq, xrow, nt, dst, 1);
}
#endif

static size_t xbytes_legacy(int64_t cols) { return (size_t)(cols / 32) * XB; }
static size_t xbytes_k(int64_t cols) { return (size_t)(cols / QK_K) * XK; }
static size_t work_legacy(int64_t cols) { return (size_t)(cols / 32) * LB; }
static size_t work_k(int64_t cols) { return (size_t)(cols / QK_K) * KB; }

/* ---- integer sums ----------------------------------------------------------
 * out[r] lane t = dot of len (16 or 32) levels of row r (rows ls bytes
 * apart) with the same elements of token t, packed in chunks at x; nr rows.
 * Always inlined with constant len and nr, so the loops unroll and out
 * stays in registers. */
typedef void (*isum_fn)(const int8_t *lev, size_t ls, const int8_t *x, int len, int nr,
                        int32x4_t *out);

#if CM_NEON_DP
/* Lanes must be literals (clang checks them before inlining). */
DP_ATTR BODY void isum_dp(const int8_t *lev, size_t ls, const int8_t *x, int len, int nr,
                          int32x4_t *out)
{
    UNROLL
    for (int r = 0; r < nr; r++)
        out[r] = vdupq_n_s32(0);
    UNROLL
    for (int e = 0; e < len; e += 16) {
        const int8_t *c = x + 4 * e;
        int8x16_t x0 = vld1q_s8(c), x1 = vld1q_s8(c + 16), x2 = vld1q_s8(c + 32),
                  x3 = vld1q_s8(c + 48);
        UNROLL
        for (int r = 0; r < nr; r++) {
            int8x16_t w = vld1q_s8(lev + r * ls + e);
            int32x4_t a = vdotq_laneq_s32(out[r], x0, w, 0);
            a = vdotq_laneq_s32(a, x1, w, 1);
            a = vdotq_laneq_s32(a, x2, w, 2);
            out[r] = vdotq_laneq_s32(a, x3, w, 3);
        }
    }
}
#endif

/* Products of two int8 fit int16 and vpadalq widens adjacent pairs, so
 * each accumulator's lanes add up to one row's dot with one token. */
BODY void isum_mull(const int8_t *lev, size_t ls, const int8_t *x, int len, int nr,
                    int32x4_t *out)
{
    int32x4_t a[4][G];
    UNROLL
    for (int r = 0; r < 4; r++)
        UNROLL
        for (int t = 0; t < G; t++)
            a[r][t] = vdupq_n_s32(0);
    UNROLL
    for (int e = 0; e < len; e += 16) {
        int8x16_t xv[G];
        UNROLL
        for (int t = 0; t < G; t++)
            xv[t] = vld1q_s8(x + 4 * e + 16 * t);
        UNROLL
        for (int r = 0; r < 4; r++) {
            int8x16_t w = vld1q_s8(lev + r * ls + e);
            UNROLL
            for (int t = 0; t < G; t++) {
                int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(xv[t]));
                int16x8_t hi = vmull_high_s8(w, xv[t]);
                a[r][t] = vpadalq_s16(vpadalq_s16(a[r][t], lo), hi);
            }
        }
    }
    (void)nr; /* always 4 */
    UNROLL
    for (int r = 0; r < 4; r++)
        out[r] = vpaddq_s32(vpaddq_s32(a[r][0], a[r][1]), vpaddq_s32(a[r][2], a[r][3]));
}

/* ---- micro-kernels ---------------------------------------------------------- */

/* Per-row factors of a quad of rows, as one vector load and literal lanes
 * (clang wants them literal): scalar operands would cost a load each, and
 * spill once unrolled over the rows and min factors.  Each adds to lane t
 * (token) of the row's accumulator. */

/* a[i] += s[i] * (dx * d[i]): a legacy block's scales */
BODY void scale4(float32x4_t *a, const int32x4_t *s, float32x4_t dx, float32x4_t d)
{
    a[0] = vfmaq_f32(a[0], vcvtq_f32_s32(s[0]), vmulq_laneq_f32(dx, d, 0));
    a[1] = vfmaq_f32(a[1], vcvtq_f32_s32(s[1]), vmulq_laneq_f32(dx, d, 1));
    a[2] = vfmaq_f32(a[2], vcvtq_f32_s32(s[2]), vmulq_laneq_f32(dx, d, 2));
    a[3] = vfmaq_f32(a[3], vcvtq_f32_s32(s[3]), vmulq_laneq_f32(dx, d, 3));
}

/* a[i] += sx * m[i]: q4_1/q5_1's min term */
BODY void min4(float32x4_t *a, float32x4_t sx, float32x4_t m)
{
    a[0] = vfmaq_laneq_f32(a[0], sx, m, 0);
    a[1] = vfmaq_laneq_f32(a[1], sx, m, 1);
    a[2] = vfmaq_laneq_f32(a[2], sx, m, 2);
    a[3] = vfmaq_laneq_f32(a[3], sx, m, 3);
}

/* a[i] += s[i] * sc[i]: K-quant sub-block scales */
BODY void sc4(int32x4_t *a, const int32x4_t *s, int32x4_t sc)
{
    a[0] = vmlaq_laneq_s32(a[0], s[0], sc, 0);
    a[1] = vmlaq_laneq_s32(a[1], s[1], sc, 1);
    a[2] = vmlaq_laneq_s32(a[2], s[2], sc, 2);
    a[3] = vmlaq_laneq_s32(a[3], s[3], sc, 3);
}

/* a[i] += b * m[i]: K-quant mins against one bsum (or pair) of 4 tokens */
BODY void mins4(int32x4_t *a, int16x4_t b, int16x4_t m)
{
    a[0] = vmlal_lane_s16(a[0], b, m, 0);
    a[1] = vmlal_lane_s16(a[1], b, m, 1);
    a[2] = vmlal_lane_s16(a[2], b, m, 2);
    a[3] = vmlal_lane_s16(a[3], b, m, 3);
}

/* Rows r0..r0+nr-1 of a legacy tile against one token group: acc[r] lane t
 * = dot(row r0 + r, token t).  Per block: d_w * d_x * isum (+ m_w * s_x). */
BODY void mk_legacy(int64_t nb, const uint8_t *tb, int r0, int nr, const uint8_t *xp,
                    float32x4_t *acc, const int has_m, isum_fn isum)
{
    UNROLL
    for (int r = 0; r < nr; r++)
        acc[r] = vdupq_n_f32(0);
    for (int64_t b = 0; b < nb; b++, tb += LB, xp += XB) {
        int32x4_t s[TR];
        isum((const int8_t *)tb + 32 * r0, 32, (const int8_t *)xp, 32, nr, s);
        const float32x4_t dx = vld1q_f32((const float *)(xp + 128));
        const float *d = (const float *)(tb + L_D) + r0, *m = (const float *)(tb + L_M) + r0;
        UNROLL
        for (int q = 0; q < nr; q += 4) {
            scale4(acc + q, s + q, dx, vld1q_f32(d + q));
            if (has_m)
                min4(acc + q, vld1q_f32((const float *)(xp + 144)), vld1q_f32(m + q));
        }
    }
}

/* The same for a K-quant tile with ns sub-blocks, np min factors (0: no
 * mins).  Per super-block: (d * sum_j sc_j isum_j - dmin * sum_p min_p
 * bsum_p) * d_x, the two sums exact integers as in the per-token kernels. */
BODY void mk_k(int64_t nsb, const uint8_t *tb, int r0, int nr, const uint8_t *xp,
               float32x4_t *acc, const int ns, const int np, isum_fn isum)
{
    const int sub = QK_K / ns;
    UNROLL
    for (int r = 0; r < nr; r++)
        acc[r] = vdupq_n_f32(0);
    for (int64_t sb = 0; sb < nsb; sb++, tb += KB, xp += XK) {
        int32x4_t sumi[TR], mi[TR];
        UNROLL
        for (int r = 0; r < nr; r++)
            sumi[r] = mi[r] = vdupq_n_s32(0);
        const int32_t *sc = (const int32_t *)(tb + K_SC) + r0;
        for (int j = 0; j < ns; j++) { /* rolled: each pass loads its own data */
            int32x4_t s[TR];
            isum((const int8_t *)tb + 256 * r0 + sub * j, 256,
                 (const int8_t *)xp + 4 * sub * j, sub, nr, s);
            UNROLL
            for (int q = 0; q < nr; q += 4)
                sc4(sumi + q, s + q, vld1q_s32(sc + j * TR + q));
        }
        const int16_t *mn = (const int16_t *)(tb + K_MIN) + r0;
        const int16_t *bs = (const int16_t *)(xp + (np == 8 ? XK_BP : XK_BS));
        UNROLL
        for (int p = 0; p < np; p++)
            UNROLL
            for (int q = 0; q < nr; q += 4)
                mins4(mi + q, vld1_s16(bs + G * p), vld1_s16(mn + p * TR + q));
        const float32x4_t dx = vld1q_f32((const float *)(xp + 1024));
        const float *d = (const float *)(tb + K_D) + r0, *dmin = (const float *)(tb + K_DMIN) + r0;
        UNROLL
        for (int r = 0; r < nr; r++) {
            float32x4_t f = vmulq_n_f32(vcvtq_f32_s32(sumi[r]), d[r]);
            if (np)
                f = vfmsq_f32(f, vcvtq_f32_s32(mi[r]), vdupq_n_f32(dmin[r]));
            acc[r] = vfmaq_f32(acc[r], f, dx);
        }
    }
}

/* acc[r] lane t (r < n) into y[t * ldy + r] for the nr rows and nt tokens
 * that exist. */
BODY void store_block(const float32x4_t *acc, int n, float *y, int64_t ldy, int nr, int nt)
{
    UNROLL
    for (int q = 0; q < n; q += 4) {
        if (q >= nr)
            break;
        uint32x4_t v[4];
        UNROLL
        for (int i = 0; i < 4; i++)
            v[i] = vreinterpretq_u32_f32(acc[q + i]);
        transpose4(v);
        const int m = nr - q < 4 ? nr - q : 4;
        for (int t = 0; t < nt; t++) {
            float *o = y + t * ldy + q;
            if (m == 4) {
                vst1q_f32(o, vreinterpretq_f32_u32(v[t]));
            } else {
                float tmp[4];
                vst1q_f32(tmp, vreinterpretq_f32_u32(v[t]));
                memcpy(o, tmp, (size_t)m * sizeof *o);
            }
        }
    }
}

/* ---- drivers ---------------------------------------------------------------
 * Per tile of TR rows: decode once, then every token group, `pass` rows per
 * micro-kernel call (8 with SDOT, 4 without).  ns == 0: a legacy format. */
BODY void rows_body(int64_t cols, const void *w, size_t wrow, int64_t r0, int64_t r1,
                    const void *x, int64_t n_tok, float *y, int64_t ldy, void *work,
                    dec_fn dec, const int ns, const int np, const int pass, isum_fn isum)
{
    const int64_t nblk = ns ? cols / QK_K : cols / 32;
    const size_t xb = ns ? XK : XB;
    for (int64_t rt = r0; rt < r1; rt += TR) {
        const int nr = r1 - rt < TR ? (int)(r1 - rt) : TR;
        decode_tile(dec, (const uint8_t *)w + rt * wrow, wrow, nr, nblk, ns ? KB : LB, work);
        for (int64_t t0 = 0; t0 < n_tok; t0 += G) {
            const uint8_t *xp = (const uint8_t *)x + t0 / G * nblk * xb;
            const int nt = n_tok - t0 < G ? (int)(n_tok - t0) : G;
            for (int q = 0; q < nr; q += pass) {
                float32x4_t acc[TR];
                if (ns)
                    mk_k(nblk, work, q, pass, xp, acc, ns, np, isum);
                else
                    mk_legacy(nblk, work, q, pass, xp, acc, np, isum);
                store_block(acc, pass, y + t0 * ldy + rt + q, ldy, nr - q, nt);
            }
        }
    }
}

/* One rows() per format and variant; legacy formats pass has_m as np. */
#define ROWS(t, dec, ns, np, ATTR, sfx, pass, isum)                           \
    ATTR NOSCHED static void rows_##t##_##sfx(int64_t cols, const void *w,      \
                                              size_t wrow, int64_t r0,        \
                                              int64_t r1, const void *x,      \
                                              int64_t n_tok, float *y,        \
                                              int64_t ldy, void *work)        \
    {                                                                         \
        rows_body(cols, w, wrow, r0, r1, x, n_tok, y, ldy, work, dec, ns, np, \
                  pass, isum);                                                \
    }

#define GEMM(t, dec, ns, np, ATTR, sfx, pass, isum, pk, xb, wb)               \
    ROWS(t, dec, ns, np, ATTR, sfx, pass, isum)                               \
    static const cm_gemm g_##t##_##sfx = {G, xb, wb, pk##_##sfx, rows_##t##_##sfx, NULL, NULL};

#define ALL_TYPES(ATTR, sfx, pass, isum)                                           \
    GEMM(q8_0, dec_q8_0, 0, 0, ATTR, sfx, pass, isum, pack_q8_0, xbytes_legacy,    \
         work_legacy)                                                              \
    GEMM(q4_0, dec_q4_0, 0, 0, ATTR, sfx, pass, isum, pack_q8_0, xbytes_legacy,    \
         work_legacy)                                                              \
    GEMM(q5_0, dec_q5_0, 0, 0, ATTR, sfx, pass, isum, pack_q8_0, xbytes_legacy,    \
         work_legacy)                                                              \
    GEMM(q4_1, dec_q4_1, 0, 1, ATTR, sfx, pass, isum, pack_q8_1, xbytes_legacy,    \
         work_legacy)                                                              \
    GEMM(q5_1, dec_q5_1, 0, 1, ATTR, sfx, pass, isum, pack_q8_1, xbytes_legacy,    \
         work_legacy)                                                              \
    GEMM(q4_K, dec_q4_K, 8, 8, ATTR, sfx, pass, isum, pack_q8_K, xbytes_k, work_k) \
    GEMM(q5_K, dec_q5_K, 8, 8, ATTR, sfx, pass, isum, pack_q8_K, xbytes_k, work_k) \
    GEMM(q6_K, dec_q6_K, 16, 0, ATTR, sfx, pass, isum, pack_q8_K, xbytes_k, work_k) \
    GEMM(q3_K, dec_q3_K, 16, 0, ATTR, sfx, pass, isum, pack_q8_K, xbytes_k, work_k) \
    GEMM(q2_K, dec_q2_K, 16, 16, ATTR, sfx, pass, isum, pack_q8_K, xbytes_k, work_k)

ALL_TYPES(, mull, 4, isum_mull)
#if CM_NEON_DP
ALL_TYPES(DP_ATTR, dp, 8, isum_dp)
#endif

#define SET_GEMM(sfx)                                                         \
    k->gemm[CM_TYPE_Q8_0] = &g_q8_0_##sfx;                                    \
    k->gemm[CM_TYPE_Q4_0] = &g_q4_0_##sfx;                                    \
    k->gemm[CM_TYPE_Q5_0] = &g_q5_0_##sfx;                                    \
    k->gemm[CM_TYPE_Q4_1] = &g_q4_1_##sfx;                                    \
    k->gemm[CM_TYPE_Q5_1] = &g_q5_1_##sfx;                                    \
    k->gemm[CM_TYPE_Q4_K] = &g_q4_K_##sfx;                                    \
    k->gemm[CM_TYPE_Q5_K] = &g_q5_K_##sfx;                                    \
    k->gemm[CM_TYPE_Q6_K] = &g_q6_K_##sfx;                                    \
    k->gemm[CM_TYPE_Q3_K] = &g_q3_K_##sfx;                                    \
    k->gemm[CM_TYPE_Q2_K] = &g_q2_K_##sfx;

void cm_gemm_neon_install(struct cm_kernels *k, int dotprod)
{
    SET_GEMM(mull)
#if CM_NEON_DP
    if (dotprod) {
        SET_GEMM(dp)
    }
#else
    (void)dotprod;
#endif
}

#else /* not AArch64 */

void cm_gemm_neon_install(struct cm_kernels *k, int dotprod)
{
    (void)k;
    (void)dotprod;
}

#endif
