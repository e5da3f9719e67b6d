/* gemm_decode.h - weight decoding for the batched kernels (cm_gemm).
 *
 * Included by kernels_avx2_gemm.c and kernels_avx512_gemm.c, which share
 * this decoded-tile layout; needs only AVX2 + F16C, so each includer
 * compiles it with its own target flags (all functions are static).
 *
 * A tile holds TR = 16 weight rows, block-major so one pointer plus
 * constant offsets reaches every field of every row:
 *   legacy (per 32-element block): lev[16 rows][32] s8 | sc[16] f32 |
 *          corr[16] i32 | m[16] f32                               = LB bytes
 *   K-quant (per 256 super-block, NS sub-blocks of 256/NS):
 *          lev[16][256] | sc[NS][16] f32 | corr[NS][16] i32 |
 *          mp[8][16] i32 (two s16 mins per 16-element pair) | dmin[16] f32
 * Levels are signed with the format's offset folded in (q4_0 as q - 8,
 * q6_K as q - 32, ...); sc is the level scale (d, or d * sub-block scale),
 * corr = -128 * (sum of the sub-block's levels), which undoes the +128 that
 * makes activations unsigned for u8 x s8 products; m is q4_1/q5_1's min;
 * mp/dmin give the K-quant min term dmin * sum_p mp_p . bsum_p. */
#ifndef CM_GEMM_DECODE_H
#define CM_GEMM_DECODE_H

#include <immintrin.h>
#include <string.h>

#include "quant/blocks.h"

#define INLINE static inline __attribute__((always_inline))
/* Fixed-count loops over registers must be unrolled, or the "registers"
 * become stack arrays; -O2 alone does not do it. */
#define UNROLL _Pragma("GCC unroll 16")
#define F16(h) _cvtsh_ss(h)
#define TR 16 /* weight rows per decoded tile */
#define LB (512 + 3 * 64)
#define KLEV 4096
#define KB(ns) (KLEV + 2 * 64 * (ns) + 512 + 64)

static __m256i load256(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* Sum of 32 signed bytes (through unsigned SAD on x ^ 0x80). */
static int sum_s8x32(__m256i v)
{
    __m256i s = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(-128)),
                                _mm256_setzero_si256());
    __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    h = _mm_add_epi64(h, _mm_unpackhi_epi64(h, h));
    return _mm_cvtsi128_si32(h) - 32 * 128;
}

/* Sums of each 16-byte half of 32 signed bytes. */
static void sum_s8x16x2(__m256i v, int32_t out[2])
{
    __m256i s = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(-128)),
                                _mm256_setzero_si256());
    __m128i lo = _mm256_castsi256_si128(s), hi = _mm256_extracti128_si256(s, 1);
    out[0] = _mm_cvtsi128_si32(_mm_add_epi64(lo, _mm_unpackhi_epi64(lo, lo))) - 16 * 128;
    out[1] = _mm_cvtsi128_si32(_mm_add_epi64(hi, _mm_unpackhi_epi64(hi, hi))) - 16 * 128;
}


/* ---- legacy weight decoding --------------------------------------------- */

/* 32 nibbles in element order: low nibbles then high nibbles */
static __m256i nibbles(const uint8_t *qs)
{
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

/* Byte j = 0x10 if bit j of the 32-bit qh is set. */
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

/* Writes one decoded block: levels, scale, correction, min. */
static void put_legacy(uint8_t *tb, int i, __m256i lev, float d, float m)
{
    _mm256_storeu_si256((__m256i *)(tb + 32 * i), lev);
    ((float *)(tb + 512))[i] = d;
    ((int32_t *)(tb + 576))[i] = -128 * sum_s8x32(lev);
    ((float *)(tb + 640))[i] = m;
}

static void dec_q8_0(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q8_0 *b = row;
    for (int64_t k = 0; k < nb; k++)
        put_legacy(tile + k * LB, i, load256(b[k].qs), F16(b[k].d), 0);
}

static void dec_q4_0(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q4_0 *b = row;
    for (int64_t k = 0; k < nb; k++)
        put_legacy(tile + k * LB, i, _mm256_sub_epi8(nibbles(b[k].qs), _mm256_set1_epi8(8)),
                   F16(b[k].d), 0);
}

static void dec_q5_0(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q5_0 *b = row;
    for (int64_t k = 0; k < nb; k++) {
        __m256i q = _mm256_or_si256(nibbles(b[k].qs), fifth_bits(b[k].qh));
        put_legacy(tile + k * LB, i, _mm256_sub_epi8(q, _mm256_set1_epi8(16)), F16(b[k].d), 0);
    }
}

static void dec_q4_1(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q4_1 *b = row;
    for (int64_t k = 0; k < nb; k++)
        put_legacy(tile + k * LB, i, nibbles(b[k].qs), F16(b[k].d), F16(b[k].m));
}

static void dec_q5_1(const void *row, int64_t nb, uint8_t *tile, int i)
{
    const block_q5_1 *b = row;
    for (int64_t k = 0; k < nb; k++)
        put_legacy(tile + k * LB, i, _mm256_or_si256(nibbles(b[k].qs), fifth_bits(b[k].qh)),
                   F16(b[k].d), F16(b[k].m));
}

/* ---- K-quant weight decoding -------------------------------------------- */

/* Field pointers of row i in a decoded super-block with ns sub-blocks. */
typedef struct {
    int8_t *lev;
    float *sc;      /* sc[j * 16] */
    int32_t *corr;  /* corr[j * 16] */
    int32_t *mp;    /* mp[p * 16] */
    float *dmin;
} kslot;

static kslot kslot_at(uint8_t *tb, int ns, int i)
{
    kslot s;
    s.lev = (int8_t *)tb + 256 * i;
    s.sc = (float *)(tb + KLEV) + i;
    s.corr = (int32_t *)(tb + KLEV + 64 * ns) + i;
    s.mp = (int32_t *)(tb + KLEV + 128 * ns) + i;
    s.dmin = (float *)(tb + KLEV + 128 * ns + 512) + i;
    return s;
}

/* Levels of one 32-element run into the slot, with their corrections
 * (one per 32 when ns == 8, two per 16 otherwise). */
static void put_run(const kslot *s, int run, __m256i lev, int ns)
{
    _mm256_storeu_si256((__m256i *)(s->lev + 32 * run), lev);
    if (ns == 8) {
        s->corr[run * 16] = -128 * sum_s8x32(lev);
    } else {
        int32_t h[2];
        sum_s8x16x2(lev, h);
        s->corr[2 * run * 16] = -128 * h[0];
        s->corr[(2 * run + 1) * 16] = -128 * h[1];
    }
}

/* As kernels_avx512.c: the 8 6-bit scales (bytes 0-7) and mins (8-15). */
static void k4_scales_mins(const uint8_t *s, uint8_t out[16])
{
    uint32_t w[3], t[4];
    memcpy(w, s, 12);
    t[0] = w[0] & 0x3F3F3F3Fu;
    t[1] = (w[2] & 0x0F0F0F0Fu) | (((w[0] >> 6) & 0x03030303u) << 4);
    t[2] = w[1] & 0x3F3F3F3Fu;
    t[3] = ((w[2] >> 4) & 0x0F0F0F0Fu) | (((w[1] >> 6) & 0x03030303u) << 4);
    memcpy(out, t, 16);
}

/* q4_K (qh NULL) / q5_K: 8 sub-blocks of 32; the min of sub-block p pairs
 * with the activation sums of its two 16-element halves. */
static void dec_q45_K(const uint8_t *qs, const uint8_t *qh, const uint8_t *scales,
                      float d, float dmin, uint8_t *tb, int i)
{
    kslot s = kslot_at(tb, 8, i);
    uint8_t sm[16];
    k4_scales_mins(scales, sm);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i hb = qh ? load256(qh) : _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        __m256i q = load256(qs + 32 * c);
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (qh) { /* bits 2c, 2c+1 of each qh byte become bit 4 */
            __m256i one = _mm256_set1_epi8(1);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(
                                         _mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4));
            hb = _mm256_srli_epi16(hb, 2);
        }
        put_run(&s, 2 * c, lo, 8);
        put_run(&s, 2 * c + 1, hi, 8);
    }
    UNROLL
    for (int j = 0; j < 8; j++) {
        s.sc[j * 16] = d * (float)sm[j];
        s.mp[j * 16] = (int32_t)((uint32_t)sm[8 + j] * 0x10001u); /* (m, m) */
    }
    *s.dmin = dmin;
}

static void dec_q4_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q4_K *b = row;
    for (int64_t k = 0; k < nsb; k++)
        dec_q45_K(b[k].qs, NULL, b[k].scales, F16(b[k].d), F16(b[k].dmin), tile + k * KB(8), i);
}

static void dec_q5_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q5_K *b = row;
    for (int64_t k = 0; k < nsb; k++)
        dec_q45_K(b[k].qs, b[k].qh, b[k].scales, F16(b[k].d), F16(b[k].dmin),
                  tile + k * KB(8), i);
}

/* q6_K: levels q - 32 (see kernels_avx2.c for the bit layout). */
static void dec_q6_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q6_K *b = row;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3),
                  off = _mm256_set1_epi8(32);
    for (int64_t k = 0; k < nsb; k++) {
        kslot s = kslot_at(tile + k * KB(16), 16, i);
        float d = F16(b[k].d);
        for (int c = 0; c < 2; c++) {
            __m256i l0 = load256(b[k].ql + 64 * c), l1 = load256(b[k].ql + 64 * c + 32);
            __m256i h = load256(b[k].qh + 32 * c);
            __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                             _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
            UNROLL
            for (int r = 0; r < 4; r++) {
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(h, 2 * r), m2);
                __m256i q = _mm256_or_si256(lo[r], _mm256_slli_epi16(hi, 4));
                put_run(&s, 4 * c + r, _mm256_sub_epi8(q, off), 16);
            }
        }
        UNROLL
        for (int j = 0; j < 16; j++)
            s.sc[j * 16] = d * (float)b[k].scales[j];
    }
}

/* q3_K: levels (low2 | hbit << 2) - 4; element 128c + 32j + l takes bits
 * 2j of qs[32c + l] and bit 4c + j of hmask[l]. */
static void dec_q3_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q3_K *b = row;
    const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1),
                  four = _mm256_set1_epi8(4);
    for (int64_t k = 0; k < nsb; k++) {
        kslot s = kslot_at(tile + k * KB(16), 16, i);
        __m256i hm = load256(b[k].hmask);
        for (int c = 0; c < 2; c++) {
            __m256i q = load256(b[k].qs + 32 * c);
            UNROLL
            for (int j = 0; j < 4; j++) {
                __m256i h = _mm256_slli_epi16(_mm256_and_si256(hm, one), 2);
                __m256i l = _mm256_or_si256(_mm256_and_si256(q, m2), h);
                q = _mm256_srli_epi16(q, 2);
                hm = _mm256_srli_epi16(hm, 1);
                put_run(&s, 4 * c + j, _mm256_sub_epi8(l, four), 16);
            }
        }
        int8_t sc[16];
        cm_k3_scales(b[k].scales, sc);
        float d = F16(b[k].d);
        UNROLL
        for (int j = 0; j < 16; j++)
            s.sc[j * 16] = d * (float)sc[j];
    }
}

/* q2_K: levels 0..3, scale and min nibbles per 16 elements. */
static void dec_q2_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const block_q2_K *b = row;
    const __m256i m2 = _mm256_set1_epi8(3);
    for (int64_t k = 0; k < nsb; k++) {
        kslot s = kslot_at(tile + k * KB(16), 16, i);
        for (int c = 0; c < 2; c++) {
            __m256i q = load256(b[k].qs + 32 * c);
            UNROLL
            for (int j = 0; j < 4; j++) {
                put_run(&s, 4 * c + j, _mm256_and_si256(q, m2), 16);
                q = _mm256_srli_epi16(q, 2);
            }
        }
        float d = F16(b[k].d);
        const uint8_t *sc = b[k].scales;
        UNROLL
        for (int j = 0; j < 16; j++)
            s.sc[j * 16] = d * (float)(sc[j] & 15);
        UNROLL
        for (int p = 0; p < 8; p++)
            s.mp[p * 16] = (int32_t)((uint32_t)(sc[2 * p] >> 4) | ((uint32_t)(sc[2 * p + 1] >> 4) << 16));
        *s.dmin = F16(b[k].dmin);
    }
}

/* ---- tiles ----------------------------------------------------------------- */

typedef void (*dec_fn)(const void *row, int64_t nblk, uint8_t *tile, int i);

/* Decodes rows [r, r + nr) into a tile; missing rows decode as zeros. */
static void decode_tile(dec_fn dec, const uint8_t *w, size_t wrow, int nr, int64_t nblk,
                        size_t blk_bytes, uint8_t *tile)
{
    if (nr < TR)
        memset(tile, 0, (size_t)nblk * blk_bytes);
    for (int i = 0; i < nr; i++)
        dec(w + (size_t)i * wrow, nblk, tile, i);
}

/* Decodes the tiles of rows [r0, r1) (r0 a multiple of TR) one after the
 * other into dst: weights kept decoded (cm_gemm.decode). */
static inline void decode_tiles(dec_fn dec, const uint8_t *w, size_t wrow, int64_t r0, int64_t r1,
                                int64_t nblk, size_t blk_bytes, uint8_t *dst)
{
    for (int64_t rt = r0; rt < r1; rt += TR)
        decode_tile(dec, w + rt * wrow, wrow, r1 - rt < TR ? (int)(r1 - rt) : TR, nblk,
                    blk_bytes, dst + (size_t)((rt - r0) / TR) * nblk * blk_bytes);
}

/* The next decoded tile of a short row (one or two K super-blocks: at
 * most PF_TILE_MAX bytes), asked for while this one is multiplied: the
 * hardware prefetchers leave such a stream of small tiles, each read once
 * per product, waiting on memory (the output product of a server step: 20
 * MB of Q6_K tiles of 256 columns for 16 tokens).  On Zen 5, medians of
 * ten runs of bench_matmul --decoded 49152 256: q6_K 1.42 -> 0.97 ms cold,
 * 1.06 -> 0.94 hot; q4_K 1.23 -> 1.00 cold, the same hot.  Larger tiles
 * (4864 x 1024: 23 KB) ran slower so, the next tile evicting the current
 * one from L1, so longer tiles are left to the hardware. */
#define PF_TILE_MAX 8192
static inline void prefetch_tile(const uint8_t *t, size_t bytes)
{
    if (bytes > PF_TILE_MAX)
        return;
    for (size_t o = 0; o < bytes; o += 64)
        _mm_prefetch((const char *)t + o, _MM_HINT_T0);
}

/* ---- repacked q4_0 / q5_0 / q8_0 tiles (cm_repack) --------------------------
 * Made once per weight (cpu.c's repack registry) for the generation
 * kernels of kernels_avx2_gemm.c and kernels_avx512_gemm.c, which stream a
 * tile of 16 rows with no shuffles and no horizontal sums: per 32-element
 * block, one 64-byte vector holds the same 4 quant bytes of all 16 rows (an
 * int32 lane per row; AVX2 reads it as two ymm of 8 rows), so a product
 * against an activation dword broadcast gives 16 rows' partial sums.
 * Per block (QB quant bytes for 16 rows):
 *   q4_0: 4 vectors, vector j = quant bytes 4j..4j+3 of each row (elements
 *         4j.. in the low nibbles, 16+4j.. in the high ones)     QB = 256
 *   q5_0: those 4, then the rows' 32 fifth bits permuted (below)  QB = 320
 *   q8_0: 8 vectors, vector j = elements 4j..4j+3 as w + 128      QB = 512
 * and the 16 rows' f16 scales (32 bytes).  Blocks go in pairs, the pair's
 * scales after its quants -- [quants 2p][quants 2p+1][scales 2p][scales
 * 2p+1] -- so a tile is one forward stream (the scales used to sit at its
 * end: a second stream, cold at every tile's start) and a pair is whole
 * 64-byte lines; an odd last block is [quants][scales].  A tile takes
 * exactly the bytes of its 16 rows in the file (16 * row bytes), so tile t
 * sits where row 16t was.
 *
 * q5_0's fifth bits: bit 8e + b of a row's 32-bit word is the fifth bit of
 * element 16h + 4j + e for b = 4h + j, so the bits that vector j's low
 * (h = 0) or high (h = 1) nibbles need sit at bit b of every byte: one
 * shift of the word by 4 - b puts them at bit 4 (16) of their bytes.
 *
 * Integer block sums are the scalar reference's: levels stay unsigned
 * (q4_0 0..15, q5_0 0..31, q8_0 w + 128) and the offset is folded into
 * one per-block term of the activation, c = -offset * sum x. */
enum { RP_Q4_0, RP_Q5_0, RP_Q8_0 };

static inline int rp_qb(int kind)
{
    return kind == RP_Q8_0 ? 512 : kind == RP_Q5_0 ? 320 : 256;
}

/* Offsets in a tile of block k's quants and of its 16 scales. */
static inline size_t rp_qoff(int64_t k, int qb)
{
    return (size_t)(k >> 1) * (size_t)(2 * qb + 64) + (size_t)(k & 1) * (size_t)qb;
}

static inline size_t rp_soff(int64_t k, int64_t nb, int qb)
{
    size_t pair = (size_t)(k >> 1) * (size_t)(2 * qb + 64);
    return pair + (k & 1 ? (size_t)(2 * qb + 32) : k + 1 < nb ? (size_t)(2 * qb) : (size_t)qb);
}

/* A row's q5_0 qh (bit i = element i) in the tile's order. */
static inline uint32_t rp_qh_permute(uint32_t qh)
{
    uint32_t p = 0;
    for (int i = 0; i < 32; i++)
        p |= ((qh >> i) & 1u) << (8 * (i & 3) + (i >> 2));
    return p;
}

/* 16 rows of w, wrow bytes apart, into one tile at dst. */
static inline void rp_pack_tile(int kind, int64_t cols, const void *w, size_t wrow, void *dst)
{
    const int64_t nb = cols / 32;
    const int qb = rp_qb(kind), nv = kind == RP_Q8_0 ? 8 : 4;
    const size_t bsz = kind == RP_Q8_0 ? sizeof(block_q8_0)
                       : kind == RP_Q5_0 ? sizeof(block_q5_0) : sizeof(block_q4_0);
    const size_t qs = kind == RP_Q5_0 ? 6 : 2; /* quants' offset in a block */
    uint8_t *t = dst;
    for (int r = 0; r < 16; r++)
        for (int64_t k = 0; k < nb; k++) {
            const uint8_t *b = (const uint8_t *)w + (size_t)r * wrow + (size_t)k * bsz;
            uint8_t *q = t + rp_qoff(k, qb);
            memcpy(t + rp_soff(k, nb, qb) + 2 * r, b, 2); /* d */
            for (int j = 0; j < nv; j++)
                for (int e = 0; e < 4; e++)
                    q[64 * j + 4 * r + e] = kind == RP_Q8_0 ? (uint8_t)(b[qs + 4 * j + e] ^ 0x80)
                                                            : b[qs + 4 * j + e];
            if (kind == RP_Q5_0) {
                uint32_t qh;
                memcpy(&qh, b + 2, 4);
                qh = rp_qh_permute(qh);
                memcpy(q + 256 + 4 * r, &qh, 4);
            }
        }
}

/* An activation block as the generation kernels read it. */
typedef struct {
    int8_t qs[32];
    float d;   /* the activation block's scale */
    int32_t c; /* -8 (q4_0), -16 (q5_0) or -128 (q8_0) times the sum of its quants */
} rp_xblock;
_Static_assert(sizeof(rp_xblock) == 40, "rp_xblock layout");

static inline size_t rp_x_bytes(int64_t cols)
{
    return (size_t)(cols / 32) * sizeof(rp_xblock);
}

static inline void rp_x_pack(int64_t cols, const void *xq, void *dst, int off)
{
    const block_q8_0 *x = xq;
    rp_xblock *o = dst;
    for (int64_t k = 0; k < cols / 32; k++) {
        memcpy(o[k].qs, x[k].qs, 32);
        o[k].d = F16(x[k].d);
        o[k].c = -off * sum_s8x32(load256(x[k].qs));
    }
}

/* Row i's signed levels of tile block k, in element order (the batched
 * kernels' decoded layout: q4_0 as q - 8, q5_0 as q - 16, q8_0 as w). */
static inline __m256i rp_row_levels(int kind, const uint8_t *q, int i)
{
    int32_t d[8];
    for (int j = 0; j < (kind == RP_Q8_0 ? 8 : 4); j++)
        memcpy(&d[j], q + 64 * j + 4 * i, 4);
    if (kind == RP_Q8_0)
        return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)d), _mm256_set1_epi8(-128));
    __m128i b = _mm_loadu_si128((const __m128i *)d), m = _mm_set1_epi8(0x0F);
    __m256i lev = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
    if (kind == RP_Q4_0)
        return _mm256_sub_epi8(lev, _mm256_set1_epi8(8));
    /* element i's fifth bit: bit i >> 2 of byte i & 3 of the permuted word */
    int32_t p;
    memcpy(&p, q + 256 + 4 * i, 4);
    const __m256i bit = _mm256_setr_epi8(1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 16, 16,
                                         16, 16, 32, 32, 32, 32, 64, 64, 64, 64, -128, -128,
                                         -128, -128);
    const __m256i shuf = _mm256_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1,
                                          2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(p), shuf);
    v = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit),
                         _mm256_set1_epi8(0x10));
    return _mm256_sub_epi8(_mm256_or_si256(lev, v), _mm256_set1_epi8(16));
}

/* A tile into the legacy decoded layout (LB bytes a block). */
static inline void rp_decode_tile(int kind, const uint8_t *tile, int64_t nb, uint8_t *work)
{
    const int qb = rp_qb(kind);
    for (int64_t k = 0; k < nb; k++) {
        const uint8_t *q = tile + rp_qoff(k, qb);
        const uint16_t *sc = (const uint16_t *)(tile + rp_soff(k, nb, qb));
        for (int i = 0; i < 16; i++)
            put_legacy(work + k * LB, i, rp_row_levels(kind, q, i), F16(sc[i]), 0);
    }
}

/* ---- repacked q4_K tiles ------------------------------------------------------
 * 16 rows, per 256-element super-block (16 * 144 bytes, as in the file):
 *   header: d[16] f16 | dmin[16] f16 | w0[16] | w1[16] | w2[16]   256 bytes
 *           (wk: dword k of each row's 12 packed 6-bit scales and mins)
 *   quants: 32 vectors, vector j = quant bytes 4j..4j+3 of each row  2048
 * Quant byte 32c + l holds element 64c + l (sub-block 2c) in its low
 * nibble and 64c + 32 + l (sub-block 2c + 1) in its high one, so vectors
 * 8c..8c+7 are sub-blocks 2c and 2c+1.  The scales stay packed (unpacked
 * they would not fit the file's bytes) and are unpacked per super-block
 * for all 16 rows at once, lanes being rows. */
#define RP_K4_SB 2304 /* tile bytes per super-block */

static inline void rp_pack_q4_K(int64_t cols, const void *w, size_t wrow, void *dst)
{
    uint8_t *t = dst;
    for (int64_t s = 0; s < cols / QK_K; s++, t += RP_K4_SB)
        for (int r = 0; r < 16; r++) {
            const block_q4_K *b = (const block_q4_K *)((const uint8_t *)w + (size_t)r * wrow) + s;
            memcpy(t + 2 * r, &b->d, 2);
            memcpy(t + 32 + 2 * r, &b->dmin, 2);
            for (int k = 0; k < 3; k++)
                memcpy(t + 64 + 64 * k + 4 * r, b->scales + 4 * k, 4);
            for (int j = 0; j < 32; j++)
                memcpy(t + 256 + 64 * j + 4 * r, b->qs + 4 * j, 4);
        }
}

/* The batched kernels' decoder on a tile (decode_tile's dec: row i of the
 * tile at `row`, so the tile starts i row bytes before it): each super-block
 * of row i back into a block_q4_K, then dec_q4_K. */
static inline void dec_rp_q4_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const uint8_t *t = (const uint8_t *)row - (size_t)i * (size_t)nsb * sizeof(block_q4_K);
    for (int64_t s = 0; s < nsb; s++, t += RP_K4_SB) {
        block_q4_K b;
        memcpy(&b.d, t + 2 * i, 2);
        memcpy(&b.dmin, t + 32 + 2 * i, 2);
        for (int k = 0; k < 3; k++)
            memcpy(b.scales + 4 * k, t + 64 + 64 * k + 4 * i, 4);
        for (int j = 0; j < 32; j++)
            memcpy(b.qs + 4 * j, t + 256 + 64 * j + 4 * i, 4);
        dec_q4_K(&b, 1, tile + s * KB(8), i);
    }
}

/* A Q8_K activation super-block as the q4_K generation kernels read it:
 * bs[p] = the sum of sub-block p's 32 quants (two Q8_K bsums). */
typedef struct {
    int8_t qs[QK_K];
    float d;
    int16_t bs[8];
    int32_t pad[3];
} rp_kxblock;
_Static_assert(sizeof(rp_kxblock) == 288, "rp_kxblock layout");

static inline size_t rp_kx_bytes(int64_t cols)
{
    return (size_t)(cols / QK_K) * sizeof(rp_kxblock);
}

static inline void rp_kx_pack(int64_t cols, const void *xq, void *dst)
{
    const block_q8_K *x = xq;
    rp_kxblock *o = dst;
    for (int64_t s = 0; s < cols / QK_K; s++) {
        memcpy(o[s].qs, x[s].qs, QK_K);
        o[s].d = x[s].d;
        for (int p = 0; p < 8; p++)
            o[s].bs[p] = (int16_t)(x[s].bsums[2 * p] + x[s].bsums[2 * p + 1]);
        memset(o[s].pad, 0, sizeof o[s].pad);
    }
}

/* ---- repacked q6_K tiles ------------------------------------------------------
 * 16 rows, per 256-element super-block (16 * 210 bytes, as in the file):
 *   sc:  4 vectors, vector k = scales 4k..4k+3 (s8) of each row      256
 *   ql: 32 vectors, vector j = ql bytes 4j..4j+3 of each row        2048
 *   qh: 16 vectors, vector j = qh bytes 4j..4j+3 of each row        1024
 *   d[16] f16                                                         32
 * For half c and l = 4g (g < 8), vectors A = ql 16c + g, B = ql 16c + 8 + g
 * and H = qh 8c + g hold elements 128c + 32q + l .. + 3 (q < 4) of every
 * row, in sub-block 8c + 2q + g / 4, as 6-bit levels (0..63):
 *   q = 0: A & 15 | (H & 3) << 4       q = 1: B & 15 | (H >> 2 & 3) << 4
 *   q = 2: A >> 4 | (H >> 4 & 3) << 4  q = 3: B >> 4 | (H >> 6) << 4
 * The -32 offset is one per-row term: 32 * sum_s scale_s * bsum_s. */
#define RP_K6_SB 3360 /* tile bytes per super-block */
#define RP_K6_QL 256
#define RP_K6_QH 2304
#define RP_K6_D 3328

static inline void rp_pack_q6_K(int64_t cols, const void *w, size_t wrow, void *dst)
{
    uint8_t *t = dst;
    for (int64_t s = 0; s < cols / QK_K; s++, t += RP_K6_SB)
        for (int r = 0; r < 16; r++) {
            const block_q6_K *b = (const block_q6_K *)((const uint8_t *)w + (size_t)r * wrow) + s;
            for (int k = 0; k < 4; k++)
                memcpy(t + 64 * k + 4 * r, b->scales + 4 * k, 4);
            for (int j = 0; j < 32; j++)
                memcpy(t + RP_K6_QL + 64 * j + 4 * r, b->ql + 4 * j, 4);
            for (int j = 0; j < 16; j++)
                memcpy(t + RP_K6_QH + 64 * j + 4 * r, b->qh + 4 * j, 4);
            memcpy(t + RP_K6_D + 2 * r, &b->d, 2);
        }
}

/* dec_rp_q4_K's counterpart: row i of a q6_K tile back into block_q6_K. */
static inline void dec_rp_q6_K(const void *row, int64_t nsb, uint8_t *tile, int i)
{
    const uint8_t *t = (const uint8_t *)row - (size_t)i * (size_t)nsb * sizeof(block_q6_K);
    for (int64_t s = 0; s < nsb; s++, t += RP_K6_SB) {
        block_q6_K b;
        for (int k = 0; k < 4; k++)
            memcpy(b.scales + 4 * k, t + 64 * k + 4 * i, 4);
        for (int j = 0; j < 32; j++)
            memcpy(b.ql + 4 * j, t + RP_K6_QL + 64 * j + 4 * i, 4);
        for (int j = 0; j < 16; j++)
            memcpy(b.qh + 4 * j, t + RP_K6_QH + 64 * j + 4 * i, 4);
        memcpy(&b.d, t + RP_K6_D + 2 * i, 2);
        dec_q6_K(&b, 1, tile + s * KB(16), i);
    }
}

/* A Q8_K activation super-block as the q6_K generation kernels read it:
 * the 16 sums in the order the scales pair up as int16 in a dword (bytes
 * 0, 2 then 1, 3: bs[4k], bs[4k + 2], bs[4k + 1], bs[4k + 3]). */
typedef struct {
    int8_t qs[QK_K];
    int16_t bs[16];
    float d;
    int32_t pad[7];
} rp_k6xblock;
_Static_assert(sizeof(rp_k6xblock) == 320, "rp_k6xblock layout");

static inline size_t rp_k6x_bytes(int64_t cols)
{
    return (size_t)(cols / QK_K) * sizeof(rp_k6xblock);
}

static inline void rp_k6x_pack(int64_t cols, const void *xq, void *dst)
{
    const block_q8_K *x = xq;
    rp_k6xblock *o = dst;
    for (int64_t s = 0; s < cols / QK_K; s++) {
        memcpy(o[s].qs, x[s].qs, QK_K);
        for (int k = 0; k < 4; k++) {
            o[s].bs[4 * k] = x[s].bsums[4 * k], o[s].bs[4 * k + 1] = x[s].bsums[4 * k + 2];
            o[s].bs[4 * k + 2] = x[s].bsums[4 * k + 1], o[s].bs[4 * k + 3] = x[s].bsums[4 * k + 3];
        }
        o[s].d = x[s].d;
        memset(o[s].pad, 0, sizeof o[s].pad);
    }
}

#endif
