/* kernels_avx2_gemm.c - AVX2 batched products (prompt processing).
 *
 * Compiled with kernels_avx2.c's flags; without them it builds to a stub.
 * The scheme of kernels_avx512_gemm.c at half width: an int32 lane is a
 * token, 8 tokens' activations are packed once per matmul so one ymm holds
 * the same 4 elements of 8 tokens, and the 4 levels of a weight row are
 * broadcast against it.  Weight tiles are decoded once per matmul in the
 * shared layout of gemm_decode.h and reused by every token group.
 *
 * Products are vpmaddubsw (u8 x s8 -> s16 pairs) + vpmaddwd: the pairs
 * cannot saturate for levels within +-64 against x + 128 <= 255, which
 * covers every format but q8_0.  q8_0 keeps the activations signed and
 * uses the sign trick, |w| * (x with w's sign), |w| <= 128, |x| <= 127. */
#include "backends/cpu/kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include "backends/cpu/gemm_decode.h"

#define G2 8  /* tokens per packed group = int32 lanes of a ymm */
#define MR2 4 /* weight rows per micro-kernel pass (16 ymm registers) */

/* Packed activations, per group of 8 tokens:
 *   legacy (per block):  xq[8][8][4] | dx[8] f32 | s[8] f32  = XB2 bytes
 *   K-quant (per super-block): xq[64][8][4] | dx[8] | bs[8][8] i32 = XK2
 * xq holds x + 128 (x itself for q8_0 weights); bs the Q8_K bsums as s16
 * pairs (2p, 2p+1). */
#define XB2 (256 + 2 * 32)
#define XK2 (2048 + 32 + 256)

static __m256i bcst32_256(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* In-register 8x8 transpose of 32-bit elements. */
static void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    UNROLL
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    UNROLL
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    /* u[4i+j] lane L = element 4L+j of rows 4i..4i+3 */
    UNROLL
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}

/* 8 token rows of 32 quant bytes (NULL = padding) into the 8 groups. */
static void pack32(const int8_t *const src[G2], uint8_t *dst, int shift)
{
    __m256 r[8];
    const __m256i flip = _mm256_set1_epi8(shift ? -128 : 0);
    for (int t = 0; t < G2; t++) {
        __m256i v = src[t] ? load256(src[t]) : _mm256_setzero_si256();
        r[t] = _mm256_castsi256_ps(_mm256_xor_si256(v, flip));
    }
    transpose8(r);
    for (int g = 0; g < 8; g++)
        _mm256_store_ps((float *)(dst + 32 * g), r[g]);
}

static void pack_legacy(int64_t cols, const void *xq, size_t xrow, int nt, void *dst,
                        size_t bsize, size_t qoff, int has_s, int shift)
{
    for (int64_t b = 0; b < cols / 32; b++) {
        uint8_t *p = (uint8_t *)dst + b * XB2;
        const int8_t *src[G2];
        float *dx = (float *)(p + 256), *s = (float *)(p + 288);
        for (int t = 0; t < G2; t++) {
            const uint8_t *blk = (const uint8_t *)xq + t * xrow + b * bsize;
            uint16_t d = 0, sv = 0;
            src[t] = t < nt ? (const int8_t *)(blk + qoff) : NULL;
            if (t < nt) {
                memcpy(&d, blk, 2);
                if (has_s)
                    memcpy(&sv, blk + 2, 2);
            }
            dx[t] = F16(d);
            s[t] = F16(sv);
        }
        pack32(src, p, shift);
    }
}

static void pack_q8_0(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_legacy(cols, xq, xrow, nt, dst, sizeof(block_q8_0), 2, 0, 1);
}

static void pack_q8_0_signed(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_legacy(cols, xq, xrow, nt, dst, sizeof(block_q8_0), 2, 0, 0);
}

static void pack_q8_1(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_legacy(cols, xq, xrow, nt, dst, sizeof(block_q8_1), 4, 1, 1);
}

static void pack_q8_K(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    for (int64_t sb = 0; sb < cols / QK_K; sb++) {
        uint8_t *p = (uint8_t *)dst + sb * XK2;
        float *dx = (float *)(p + 2048);
        int32_t *bs = (int32_t *)(p + 2048 + 32);
        const block_q8_K *blk[G2];
        for (int t = 0; t < G2; t++) {
            blk[t] = t < nt ? (const block_q8_K *)((const uint8_t *)xq + t * xrow) + sb : NULL;
            dx[t] = blk[t] ? blk[t]->d : 0.0f;
            for (int q = 0; q < 8; q++) {
                int32_t v = 0;
                if (blk[t])
                    memcpy(&v, blk[t]->bsums + 2 * q, 4);
                bs[q * G2 + t] = v;
            }
        }
        for (int c = 0; c < 8; c++) {
            const int8_t *src[G2];
            for (int t = 0; t < G2; t++)
                src[t] = blk[t] ? blk[t]->qs + 32 * c : NULL;
            pack32(src, p + 256 * c, 1);
        }
    }
}

static size_t xbytes_legacy(int64_t cols) { return (size_t)(cols / 32) * XB2; }
static size_t xbytes_k(int64_t cols) { return (size_t)(cols / QK_K) * XK2; }

/* ---- micro-kernels -------------------------------------------------------- */

/* acc + 4-product sums of x (u8) and the broadcast levels w (s8); q8:
 * x signed and w's sign moved onto it. */
INLINE __m256i dot4(__m256i acc, __m256i x, __m256i w, const int q8)
{
    __m256i p = q8 ? _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
                   : _mm256_maddubs_epi16(x, w);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* Rows r0..r0+3 of a legacy tile against one group of 8 tokens. */
INLINE void mk_legacy(int64_t nb, const uint8_t *tile, const uint8_t *xp, __m256 *acc,
                      const int r0, const int has_m, const int q8)
{
    UNROLL
    for (int r = 0; r < MR2; r++)
        acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, tile += LB, xp += XB2) {
        const int32_t *corr = (const int32_t *)(tile + 576) + r0;
        const float *sc = (const float *)(tile + 512) + r0, *mn = (const float *)(tile + 640) + r0;
        __m256i ai[MR2];
        UNROLL
        for (int r = 0; r < MR2; r++) /* signed q8 activations need no correction */
            ai[r] = q8 ? _mm256_setzero_si256() : _mm256_set1_epi32(corr[r]);
        UNROLL
        for (int g = 0; g < 8; g++) {
            __m256i x = _mm256_load_si256((const __m256i *)(xp + 32 * g));
            UNROLL
            for (int r = 0; r < MR2; r++)
                ai[r] = dot4(ai[r], x, bcst32_256(tile + 32 * (r0 + r) + 4 * g), q8);
        }
        __m256 dx = _mm256_load_ps((const float *)(xp + 256));
        UNROLL
        for (int r = 0; r < MR2; r++) {
            __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(ai[r]), _mm256_set1_ps(sc[r]));
            acc[r] = _mm256_fmadd_ps(f, dx, acc[r]);
            if (has_m)
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(mn[r]),
                                         _mm256_load_ps((const float *)(xp + 288)), acc[r]);
        }
    }
}

/* Sub-block j of a super-block for rows r0..r0+3, into sacc. */
INLINE void mk_k_sub(const uint8_t *tb, const uint8_t *xp, __m256 *sacc, int j,
                     const int r0, const int ns)
{
    const int sub = 256 / ns, ng = sub / 4;
    const float *sc = (const float *)(tb + KLEV) + 16 * j + r0;
    const int32_t *corr = (const int32_t *)(tb + KLEV + 64 * ns) + 16 * j + r0;
    __m256i ai[MR2];
    UNROLL
    for (int r = 0; r < MR2; r++)
        ai[r] = _mm256_set1_epi32(corr[r]);
    UNROLL
    for (int g = 0; g < ng; g++) {
        __m256i x = _mm256_load_si256((const __m256i *)(xp + 32 * (j * ng + g)));
        UNROLL
        for (int r = 0; r < MR2; r++)
            ai[r] = dot4(ai[r], x, bcst32_256(tb + 256 * (r0 + r) + sub * j + 4 * g), 0);
    }
    UNROLL
    for (int r = 0; r < MR2; r++)
        sacc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ai[r]), _mm256_set1_ps(sc[r]), sacc[r]);
}

/* The K-quant min term for rows r0..r0+3: sacc -= dmin * sum_p mp_p.bs_p */
INLINE void mk_k_mins(const uint8_t *tb, const uint8_t *xp, __m256 *sacc, const int r0,
                      const int ns)
{
    const int32_t *mp = (const int32_t *)(tb + KLEV + 128 * ns) + r0;
    const float *dmin = (const float *)(tb + KLEV + 128 * ns + 512) + r0;
    UNROLL
    for (int r = 0; r < MR2; r++) {
        __m256i mi = _mm256_setzero_si256();
        UNROLL
        for (int p = 0; p < 8; p++)
            mi = _mm256_add_epi32(mi, _mm256_madd_epi16(
                                          _mm256_load_si256((const __m256i *)(xp + 2080 + 32 * p)),
                                          _mm256_set1_epi32(mp[16 * p + r])));
        sacc[r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mi), _mm256_set1_ps(dmin[r]), sacc[r]);
    }
}

INLINE void mk_k(int64_t nsb, const uint8_t *tile, const uint8_t *xp, __m256 *acc,
                 const int r0, const int ns, const int mins)
{
    UNROLL
    for (int r = 0; r < MR2; r++)
        acc[r] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++, tile += KB(ns), xp += XK2) {
        __m256 sacc[MR2];
        UNROLL
        for (int r = 0; r < MR2; r++)
            sacc[r] = _mm256_setzero_ps();
        for (int j = 0; j < ns; j++)
            mk_k_sub(tile, xp, sacc, j, r0, ns);
        if (mins)
            mk_k_mins(tile, xp, sacc, r0, ns);
        __m256 dx = _mm256_load_ps((const float *)(xp + 2048));
        UNROLL
        for (int r = 0; r < MR2; r++)
            acc[r] = _mm256_fmadd_ps(sacc[r], dx, acc[r]);
    }
}

/* ---- drivers ---------------------------------------------------------------- */

/* out[r][t] (16 rows x 8 tokens) into y for the rows and tokens that exist */
static void store_block(const float out[TR][G2], float *y, int64_t ldy, int nr, int nt)
{
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++)
            y[t * ldy + r] = out[r][t];
}

/* A decoded legacy tile (nr rows, at y's column 0) against every token
 * group of x. */
INLINE void legacy_groups(int64_t nb, const uint8_t *work, const void *x, int64_t n_tok,
                          float *y, int64_t ldy, int nr, const int has_m, const int q8)
{
    for (int64_t t0 = 0; t0 < n_tok; t0 += G2) {
        const uint8_t *xp = (const uint8_t *)x + (t0 / G2) * nb * XB2;
        float out[TR][G2];
        for (int q = 0; q < TR; q += MR2) {
            __m256 acc[MR2];
            mk_legacy(nb, work, xp, acc, q, has_m, q8);
            for (int r = 0; r < MR2; r++)
                _mm256_storeu_ps(out[q + r], acc[r]);
        }
        int nt = n_tok - t0 < G2 ? (int)(n_tok - t0) : G2;
        store_block(out, y + t0 * ldy, ldy, nr, nt);
    }
}

/* A decoded K-quant tile (nr rows, at y's column 0) against every token
 * group of x. */
INLINE void k_groups(int64_t nsb, const uint8_t *work, const void *x, int64_t n_tok, float *y,
                     int64_t ldy, int nr, const int ns, const int mins)
{
    for (int64_t t0 = 0; t0 < n_tok; t0 += G2) {
        const uint8_t *xp = (const uint8_t *)x + (t0 / G2) * nsb * XK2;
        float out[TR][G2];
        for (int q = 0; q < TR; q += MR2) {
            __m256 acc[MR2];
            mk_k(nsb, work, xp, acc, q, ns, mins);
            for (int r = 0; r < MR2; r++)
                _mm256_storeu_ps(out[q + r], acc[r]);
        }
        int nt = n_tok - t0 < G2 ? (int)(n_tok - t0) : G2;
        store_block(out, y + t0 * ldy, ldy, nr, nt);
    }
}

/* rows() of one format (GROUPS: legacy_groups or k_groups with the
 * format's arguments; blk elements and bbytes decoded bytes a block), and
 * its split for weights kept decoded (cm_gemm.decode): name##_decode and
 * name##_decoded. */
#define ROWS(name, dec, blk, bbytes, GROUPS)                                    \
    static void name(int64_t cols, const void *w, size_t wrow, int64_t r0,      \
                     int64_t r1, const void *x, int64_t n_tok, float *y,        \
                     int64_t ldy, void *work)                                   \
    {                                                                           \
        const int64_t nb = cols / (blk);                                        \
        for (int64_t rt = r0; rt < r1; rt += TR) {                              \
            int nr = r1 - rt < TR ? (int)(r1 - rt) : TR;                        \
            decode_tile(dec, (const uint8_t *)w + rt * wrow, wrow, nr, nb,      \
                        bbytes, work);                                          \
            GROUPS(nb, work, x, n_tok, y + rt, ldy, nr);                        \
        }                                                                       \
    }                                                                           \
    __attribute__((unused)) static void name##_decode(int64_t cols, const void *w, size_t wrow, \
                              int64_t r0, int64_t r1, void *dst)                \
    {                                                                           \
        decode_tiles(dec, w, wrow, r0, r1, cols / (blk), bbytes, dst);          \
    }                                                                           \
    __attribute__((unused)) static void name##_decoded(int64_t cols, const void *tiles, int64_t r0, \
                               int64_t r1, int64_t rows, const void *x,         \
                               int64_t n_tok, float *y, int64_t ldy)            \
    {                                                                           \
        const int64_t nb = cols / (blk);                                        \
        for (int64_t rt = r0; rt < r1; rt += TR) {                              \
            int nr = rows - rt < TR ? (int)(rows - rt) : TR;                    \
            nr = r1 - rt < nr ? (int)(r1 - rt) : nr;                            \
            const uint8_t *tl = (const uint8_t *)tiles + (size_t)(rt / TR) * nb * (bbytes); \
            if (rt + TR < r1)                                                   \
                prefetch_tile(tl + nb * (bbytes), (size_t)nb * (bbytes));       \
            GROUPS(nb, tl, x, n_tok, y + rt, ldy, nr);                          \
        }                                                                       \
    }

#define LEGACY_ROWS(name, dec, has_m, q8)                                       \
    INLINE void name##_groups(int64_t nb, const uint8_t *work, const void *x,   \
                              int64_t n_tok, float *y, int64_t ldy, int nr)     \
    {                                                                           \
        legacy_groups(nb, work, x, n_tok, y, ldy, nr, has_m, q8);               \
    }                                                                           \
    ROWS(name, dec, 32, LB, name##_groups)

#define K_ROWS(name, dec, ns, mins)                                             \
    INLINE void name##_groups(int64_t nsb, const uint8_t *work, const void *x,  \
                              int64_t n_tok, float *y, int64_t ldy, int nr)     \
    {                                                                           \
        k_groups(nsb, work, x, n_tok, y, ldy, nr, ns, mins);                    \
    }                                                                           \
    ROWS(name, dec, QK_K, KB(ns), name##_groups)

LEGACY_ROWS(rows_q8_0, dec_q8_0, 0, 1)
LEGACY_ROWS(rows_q4_0, dec_q4_0, 0, 0)
LEGACY_ROWS(rows_q5_0, dec_q5_0, 0, 0)
LEGACY_ROWS(rows_q4_1, dec_q4_1, 1, 0)
LEGACY_ROWS(rows_q5_1, dec_q5_1, 1, 0)
K_ROWS(rows_q4_K, dec_q4_K, 8, 1)
K_ROWS(rows_q5_K, dec_q5_K, 8, 1)
K_ROWS(rows_q6_K, dec_q6_K, 16, 0)
K_ROWS(rows_q3_K, dec_q3_K, 16, 0)
K_ROWS(rows_q2_K, dec_q2_K, 16, 1)

static size_t work_legacy(int64_t cols) { return (size_t)(cols / 32) * LB; }
static size_t work_k8(int64_t cols) { return (size_t)(cols / QK_K) * KB(8); }
static size_t work_k16(int64_t cols) { return (size_t)(cols / QK_K) * KB(16); }

static const cm_gemm g_q8_0 = {G2, xbytes_legacy, work_legacy, pack_q8_0_signed, rows_q8_0, rows_q8_0_decode, rows_q8_0_decoded};
static const cm_gemm g_q4_0 = {G2, xbytes_legacy, work_legacy, pack_q8_0, rows_q4_0, rows_q4_0_decode, rows_q4_0_decoded};
static const cm_gemm g_q5_0 = {G2, xbytes_legacy, work_legacy, pack_q8_0, rows_q5_0, rows_q5_0_decode, rows_q5_0_decoded};
static const cm_gemm g_q4_1 = {G2, xbytes_legacy, work_legacy, pack_q8_1, rows_q4_1, rows_q4_1_decode, rows_q4_1_decoded};
static const cm_gemm g_q5_1 = {G2, xbytes_legacy, work_legacy, pack_q8_1, rows_q5_1, rows_q5_1_decode, rows_q5_1_decoded};
static const cm_gemm g_q4_K = {G2, xbytes_k, work_k8, pack_q8_K, rows_q4_K, rows_q4_K_decode, rows_q4_K_decoded};
static const cm_gemm g_q5_K = {G2, xbytes_k, work_k8, pack_q8_K, rows_q5_K, rows_q5_K_decode, rows_q5_K_decoded};
static const cm_gemm g_q6_K = {G2, xbytes_k, work_k16, pack_q8_K, rows_q6_K, rows_q6_K_decode, rows_q6_K_decoded};
static const cm_gemm g_q3_K = {G2, xbytes_k, work_k16, pack_q8_K, rows_q3_K, rows_q3_K_decode, rows_q3_K_decoded};
static const cm_gemm g_q2_K = {G2, xbytes_k, work_k16, pack_q8_K, rows_q2_K, rows_q2_K_decode, rows_q2_K_decoded};

/* ---- repacked q4_0 / q5_0 / q8_0 tiles (cm_repack) -------------------------
 * gemm_decode.h's tiles (the AVX-512 table's layout), each 64-byte vector
 * read as two ymm of 8 rows.  Without vpdpbusd: vpmaddubsw (u8 levels x s8
 * activations -> s16 pairs), whose pairs cannot saturate (2 * 31 * 127 <
 * 32767), then one vpmaddwd per block: a q4_0 block's 8 pair vectors add
 * up in s16 (8 * 2 * 15 * 127 = 30480), q5_0's 4 at a time (4 * 7874).
 * q8_0's stored w + 128 would saturate the pairs: its kernel turns them
 * back into w and moves w's sign onto x (|w| <= 128, |x| <= 127: pairs
 * <= 32512), one vpmaddwd per vector. */

/* q5_0's fifth bits for bit b of the word's bytes, at bit 4 (16). */
INLINE __m256i rp2_bit4(__m256i hw, const int b)
{
    __m256i v = b <= 4 ? _mm256_slli_epi32(hw, 4 - b) : _mm256_srli_epi32(hw, b - 4);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

INLINE __m256i rp2_levels(__m256i v, __m256i hw, int j, const int h, const int q5)
{
    const __m256i m = _mm256_set1_epi8(0x0F);
    __m256i u = _mm256_and_si256(h ? _mm256_srli_epi16(v, 4) : v, m);
    return q5 ? _mm256_or_si256(u, rp2_bit4(hw, 4 * h + j)) : u;
}

/* q8_0's block: the 16 rows' sums of w * x (no offset term). */
INLINE void rp2_block_q8(const uint8_t *q, const rp_xblock *x, __m256i out[2])
{
    const __m256i one = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(-128);
    out[0] = out[1] = _mm256_setzero_si256();
    UNROLL
    for (int j = 0; j < 8; j++) {
        const __m256i xb = bcst32_256(x->qs + 4 * j);
        UNROLL
        for (int h = 0; h < 2; h++) {
            __m256i w = _mm256_xor_si256(load256(q + 64 * j + 32 * h), flip);
            __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xb, w));
            out[h] = _mm256_add_epi32(out[h], _mm256_madd_epi16(p, one));
        }
    }
}

/* One block of a tile: rows 0..7 and 8..15's integer sums (with the
 * offset term) in out[0], out[1]. */
INLINE void rp2_block(const uint8_t *q, const rp_xblock *x, const int kind, __m256i out[2])
{
    if (kind == RP_Q8_0) {
        rp2_block_q8(q, x, out);
        return;
    }
    const int q5 = kind == RP_Q5_0;
    __m256i s0[2], s1[2], hw[2];
    UNROLL
    for (int h = 0; h < 2; h++) {
        s0[h] = s1[h] = _mm256_setzero_si256();
        hw[h] = q5 ? load256(q + 256 + 32 * h) : _mm256_setzero_si256();
    }
    UNROLL
    for (int j = 0; j < 4; j++) {
        const __m256i xl = bcst32_256(x->qs + 4 * j), xh = bcst32_256(x->qs + 16 + 4 * j);
        UNROLL
        for (int h = 0; h < 2; h++) {
            __m256i v = load256(q + 64 * j + 32 * h);
            __m256i p0 = _mm256_maddubs_epi16(rp2_levels(v, hw[h], j, 0, q5), xl);
            s0[h] = _mm256_add_epi16(s0[h], p0);
            __m256i p = _mm256_maddubs_epi16(rp2_levels(v, hw[h], j, 1, q5), xh);
            if (q5)
                s1[h] = _mm256_add_epi16(s1[h], p);
            else
                s0[h] = _mm256_add_epi16(s0[h], p);
        }
    }
    const __m256i one = _mm256_set1_epi16(1), c = _mm256_set1_epi32(x->c);
    UNROLL
    for (int h = 0; h < 2; h++) {
        __m256i i = _mm256_add_epi32(c, _mm256_madd_epi16(s0[h], one));
        out[h] = q5 ? _mm256_add_epi32(i, _mm256_madd_epi16(s1[h], one)) : i;
    }
}

/* acc[h] += d_w * (d_x * isum[h]), sc: the block's 16 f16 scales */
INLINE void rp2_scale(__m256 acc[2], const __m256i isum[2], const uint8_t *sc, float dx)
{
    const __m256 d = _mm256_set1_ps(dx);
    UNROLL
    for (int h = 0; h < 2; h++) {
        __m256 w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 16 * h)));
        acc[h] = _mm256_fmadd_ps(w, _mm256_mul_ps(_mm256_cvtepi32_ps(isum[h]), d), acc[h]);
    }
}

/* Prefetch distance of gemv_pf: kernels_avx512_gemm.c's RP_PF. */
#define RP2_PF 6144

INLINE void rp2_gemv_k(int64_t cols, const void *tile, const void *xp, float *y, const int kind,
                       const int pf)
{
    const int64_t nb = cols / 32;
    const int qb = rp_qb(kind), pb = 2 * qb + 64;
    const uint8_t *q = tile;
    const rp_xblock *x = xp;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256i i0[2], i1[2];
    int64_t k = 0;
    for (; k + 2 <= nb; k += 2, q += pb) {
        if (pf) {
            UNROLL
            for (int l = 0; l < pb; l += 64)
                _mm_prefetch((const char *)q + RP2_PF + l, _MM_HINT_T0);
        }
        rp2_block(q, x + k, kind, i0);
        rp2_block(q + qb, x + k + 1, kind, i1);
        rp2_scale(acc, i0, q + 2 * qb, x[k].d);
        rp2_scale(acc, i1, q + 2 * qb + 32, x[k + 1].d);
    }
    if (k < nb) {
        rp2_block(q, x + k, kind, i0);
        rp2_scale(acc, i0, q + qb, x[k].d);
    }
    _mm256_storeu_ps(y, acc[0]);
    _mm256_storeu_ps(y + 8, acc[1]);
}

/* rows() on repacked tiles (r0, r1 multiples of 16): each tile decoded
 * once into the legacy layout for every token group. */
INLINE void rp2_rows(int64_t cols, const void *w, size_t wrow, int64_t r0, int64_t r1,
                     const void *x, int64_t n_tok, float *y, int64_t ldy, void *work,
                     const int kind)
{
    const int64_t nb = cols / 32;
    for (int64_t rt = r0; rt < r1; rt += TR) {
        rp_decode_tile(kind, (const uint8_t *)w + rt * wrow, nb, work);
        legacy_groups(nb, work, x, n_tok, y + rt, ldy, TR, 0, kind == RP_Q8_0);
    }
}

/* (xoff: the activation's offset term; xpack: the batched kernels'
 * packing, signed activations for q8_0 as g_q8_0) */
#define RP2_FNS(t, kind, xoff, xpack)                                            \
    static void rp2_pack_##t(int64_t cols, const void *w, size_t wrow, void *dst) \
    {                                                                            \
        rp_pack_tile(kind, cols, w, wrow, dst);                                  \
    }                                                                            \
    static void rp2_x_pack_##t(int64_t cols, const void *xq, void *dst)          \
    {                                                                            \
        rp_x_pack(cols, xq, dst, xoff);                                          \
    }                                                                            \
    static void rp2_gemv_##t(int64_t cols, const void *tl, const void *xp, float *y) \
    {                                                                            \
        rp2_gemv_k(cols, tl, xp, y, kind, 0);                                    \
    }                                                                            \
    static void rp2_gemv_pf_##t(int64_t cols, const void *tl, const void *xp, float *y) \
    {                                                                            \
        rp2_gemv_k(cols, tl, xp, y, kind, 1);                                    \
    }                                                                            \
    static void rp2_rows_##t(int64_t cols, const void *w, size_t wrow, int64_t r0, \
                             int64_t r1, const void *x, int64_t n_tok, float *y,   \
                             int64_t ldy, void *work)                              \
    {                                                                            \
        rp2_rows(cols, w, wrow, r0, r1, x, n_tok, y, ldy, work, kind);           \
    }                                                                            \
    static const cm_gemm g_rp2_##t = {G2, xbytes_legacy, work_legacy, xpack,     \
                                      rp2_rows_##t, NULL, NULL};                 \
    static const cm_repack rp2_##t = {rp2_pack_##t, rp_x_bytes, rp2_x_pack_##t,  \
                                      rp2_gemv_##t, rp2_gemv_pf_##t, &g_rp2_##t};
RP2_FNS(q4_0, RP_Q4_0, 8, pack_q8_0)
RP2_FNS(q5_0, RP_Q5_0, 16, pack_q8_0)
RP2_FNS(q8_0, RP_Q8_0, 0, pack_q8_0_signed)

/* ---- repacked q4_K tiles (gemm_decode.h's layout) -------------------------
 * Per half tile (8 rows), a sub-block's 8 vpmaddubsw pair vectors add up in
 * s16 (8 * 2 * 15 * 127 = 30480), and one vpmaddwd against the rows' scale
 * (in both halves of the dword) both sums the pairs and scales them. */

/* Byte b of every dword in both of its int16 halves (b1 != b: bytes b
 * and b1, a pair of mins). */
INLINE __m256i k4_dup(__m256i v, const int b, const int b1)
{
    const __m128i i = _mm_setr_epi8(b, -1, b1, -1, 4 + b, -1, 4 + b1, -1, 8 + b, -1, 8 + b1, -1,
                                    12 + b, -1, 12 + b1, -1);
    return _mm256_shuffle_epi8(v, _mm256_set_m128i(i, i));
}

/* Half h's scales (sc) or mins (mn) of sub-blocks 4 * (k & 1) .. + 3,
 * k = 0, 1 scales and 2, 3 mins, one byte per row's dword. */
INLINE __m256i k4_six(const uint8_t *t, int h, const int k)
{
    const __m256i w0 = load256(t + 64 + 32 * h), w1 = load256(t + 128 + 32 * h);
    const __m256i w2 = load256(t + 192 + 32 * h), m6 = _mm256_set1_epi8(0x3F);
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    if (k == 0)
        return _mm256_and_si256(w0, m6);
    if (k == 1)
        return _mm256_or_si256(_mm256_and_si256(w2, m4),
                               _mm256_and_si256(_mm256_srli_epi32(w0, 2), m30));
    if (k == 2)
        return _mm256_and_si256(w1, m6);
    return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w2, 4), m4),
                            _mm256_and_si256(_mm256_srli_epi32(w1, 2), m30));
}

/* One super-block, both halves of the tile (rows 8h..8h+7 in ymm h): the
 * d-part and min-part sums.  Each activation broadcast serves both halves,
 * and the few live registers keep the compiler from hoisting the
 * broadcasts into stack spills. */
INLINE void rp2_k4_sb(const uint8_t *t, const rp_kxblock *x, __m256i is[2], __m256i ms[2])
{
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const uint8_t *q = t + 256;
    is[0] = is[1] = ms[0] = ms[1] = _mm256_setzero_si256();
    UNROLL
    for (int c = 0; c < 4; c++) {
        __m256i lo[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, hi[2] = {lo[0], lo[0]};
        _Pragma("GCC unroll 2")
        for (int j = 0; j < 8; j++) {
            const __m256i xl = bcst32_256(x->qs + 64 * c + 4 * j);
            const __m256i xh = bcst32_256(x->qs + 64 * c + 32 + 4 * j);
            UNROLL
            for (int h = 0; h < 2; h++) {
                const __m256i v = load256(q + 64 * (8 * c + j) + 32 * h);
                lo[h] = _mm256_add_epi16(lo[h], _mm256_maddubs_epi16(_mm256_and_si256(v, m4), xl));
                hi[h] = _mm256_add_epi16(hi[h], _mm256_maddubs_epi16(
                                                    _mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                                                    xh));
            }
        }
        const int b = 2 * (c & 1);
        const __m256i bs = bcst32_256(x->bs + 2 * c);
        UNROLL
        for (int h = 0; h < 2; h++) {
            const __m256i sc = k4_six(t, h, c >> 1), mn = k4_six(t, h, 2 + (c >> 1));
            is[h] = _mm256_add_epi32(is[h], _mm256_madd_epi16(lo[h], k4_dup(sc, b, b)));
            is[h] = _mm256_add_epi32(is[h], _mm256_madd_epi16(hi[h], k4_dup(sc, b + 1, b + 1)));
            ms[h] = _mm256_add_epi32(ms[h], _mm256_madd_epi16(k4_dup(mn, b, b + 1), bs));
        }
    }
}

INLINE void rp2_gemv_k4(int64_t cols, const void *tile, const void *xp, float *y, const int pf)
{
    const uint8_t *t = tile;
    const rp_kxblock *x = xp;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t s = 0; s < cols / QK_K; s++, t += RP_K4_SB) {
        if (pf) {
            UNROLL
            for (int l = 0; l < RP_K4_SB; l += 64)
                _mm_prefetch((const char *)t + RP2_PF + l, _MM_HINT_T0);
        }
        const __m256 dx = _mm256_set1_ps(x[s].d);
        __m256i is[2], ms[2];
        rp2_k4_sb(t, x + s, is, ms);
        UNROLL
        for (int h = 0; h < 2; h++) {
            __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(t + 16 * h)));
            __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(t + 32 + 16 * h)));
            acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[h]), _mm256_mul_ps(d, dx), acc[h]);
            acc[h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms[h]), _mm256_mul_ps(dm, dx), acc[h]);
        }
    }
    _mm256_storeu_ps(y, acc[0]);
    _mm256_storeu_ps(y + 8, acc[1]);
}

static void rp2_gemv_q4_K(int64_t cols, const void *t, const void *xp, float *y)
{
    rp2_gemv_k4(cols, t, xp, y, 0);
}

static void rp2_gemv_pf_q4_K(int64_t cols, const void *t, const void *xp, float *y)
{
    rp2_gemv_k4(cols, t, xp, y, 1);
}

K_ROWS(rp2_rows_q4_K, dec_rp_q4_K, 8, 1)
static const cm_gemm g_rp2_q4_K = {G2, xbytes_k, work_k8, pack_q8_K, rp2_rows_q4_K, NULL, NULL};
static const cm_repack rp2_q4_K = {rp_pack_q4_K, rp_kx_bytes, rp_kx_pack, rp2_gemv_q4_K,
                                   rp2_gemv_pf_q4_K, &g_rp2_q4_K};

/* ---- repacked q6_K tiles (gemm_decode.h's layout) -------------------------
 * Per half tile (8 rows), two vpmaddubsw of 6-bit levels add up in s16
 * (2 * 2 * 63 * 128 = 32256), then one vpmaddwd against the rows' scale
 * (in both halves of the dword) sums the pairs and scales them. */

/* Byte b of every dword sign-extended into both of its int16 halves. */
INLINE __m256i k6_dup(__m256i v, const int b)
{
    const __m128i i = _mm_setr_epi8(-1, b, -1, b, -1, 4 + b, -1, 4 + b, -1, 8 + b, -1, 8 + b,
                                    -1, 12 + b, -1, 12 + b);
    return _mm256_srai_epi16(_mm256_shuffle_epi8(v, _mm256_set_m128i(i, i)), 8);
}

/* Levels q of vectors a (ql), b (ql), hb (qh) for element run q (gemm_decode.h). */
INLINE __m256i k6_lev(__m256i a, __m256i b, __m256i hb, const int q)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256i lo = q == 0 ? a : q == 1 ? b : _mm256_srli_epi16(q == 2 ? a : b, 4);
    __m256i hi = q == 0 ? _mm256_slli_epi16(hb, 4) : q == 1 ? _mm256_slli_epi16(hb, 2)
               : q == 2 ? hb : _mm256_srli_epi16(hb, 2);
    return _mm256_or_si256(_mm256_and_si256(lo, m4), _mm256_and_si256(hi, m30));
}

/* One super-block, both halves of the tile (rows 8h..8h+7 in ymm h):
 * the scale * level . x sums (is) and scale * bsum sums (ms).  Element
 * run q outermost, so each activation broadcast serves both halves with
 * few live registers (no spills); the ql and qh vectors are loaded once
 * per run, from L1. */
INLINE void rp2_k6_sb(const uint8_t *t, const rp_k6xblock *x, __m256i is[2], __m256i ms[2])
{
    const uint8_t *ql = t + RP_K6_QL, *qh = t + RP_K6_QH;
    UNROLL
    for (int h = 0; h < 2; h++) {
        is[h] = ms[h] = _mm256_setzero_si256();
        UNROLL
        for (int k = 0; k < 4; k++) {
            const __m256i sc = load256(t + 64 * k + 32 * h);
            const __m256i lo = _mm256_srai_epi16(_mm256_slli_epi16(sc, 8), 8); /* bytes 0, 2 */
            ms[h] = _mm256_add_epi32(ms[h], _mm256_madd_epi16(lo, bcst32_256(x->bs + 4 * k)));
            ms[h] = _mm256_add_epi32(ms[h], _mm256_madd_epi16(_mm256_srai_epi16(sc, 8),
                                                              bcst32_256(x->bs + 4 * k + 2)));
        }
    }
    UNROLL
    for (int c = 0; c < 2; c++) {
        UNROLL
        for (int q = 0; q < 4; q++) {
            UNROLL
            for (int gp = 0; gp < 4; gp++) { /* g = 2gp, 2gp + 1: sub-block 8c + 2q + gp / 2 */
                __m256i sq[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
                UNROLL
                for (int g = 2 * gp; g < 2 * gp + 2; g++) {
                    const __m256i xb = bcst32_256(x->qs + 128 * c + 32 * q + 4 * g);
                    UNROLL
                    for (int h = 0; h < 2; h++) {
                        const __m256i ab = load256(ql + 64 * (16 * c + 8 * (q & 1) + g) + 32 * h);
                        const __m256i hb = load256(qh + 64 * (8 * c + g) + 32 * h);
                        sq[h] = _mm256_add_epi16(sq[h], _mm256_maddubs_epi16(
                                                            k6_lev(ab, ab, hb, q), xb));
                    }
                }
                const int sub = 8 * c + 2 * q + gp / 2;
                UNROLL
                for (int h = 0; h < 2; h++) {
                    const __m256i sc = load256(t + 64 * (sub / 4) + 32 * h);
                    is[h] = _mm256_add_epi32(is[h], _mm256_madd_epi16(sq[h], k6_dup(sc, sub % 4)));
                }
            }
        }
    }
}

INLINE void rp2_gemv_k6(int64_t cols, const void *tile, const void *xp, float *y, const int pf)
{
    const uint8_t *t = tile;
    const rp_k6xblock *x = xp;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t s = 0; s < cols / QK_K; s++, t += RP_K6_SB) {
        if (pf) {
            UNROLL
            for (int l = 0; l < RP_K6_SB; l += 64)
                _mm_prefetch((const char *)t + RP2_PF + l, _MM_HINT_T0);
        }
        const __m256 dx = _mm256_set1_ps(x[s].d);
        __m256i is[2], ms[2];
        rp2_k6_sb(t, x + s, is, ms);
        UNROLL
        for (int h = 0; h < 2; h++) {
            is[h] = _mm256_sub_epi32(is[h], _mm256_slli_epi32(ms[h], 5));
            __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(t + RP_K6_D + 16 * h)));
            acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[h]), _mm256_mul_ps(d, dx), acc[h]);
        }
    }
    _mm256_storeu_ps(y, acc[0]);
    _mm256_storeu_ps(y + 8, acc[1]);
}

static void rp2_gemv_q6_K(int64_t cols, const void *t, const void *xp, float *y)
{
    rp2_gemv_k6(cols, t, xp, y, 0);
}

static void rp2_gemv_pf_q6_K(int64_t cols, const void *t, const void *xp, float *y)
{
    rp2_gemv_k6(cols, t, xp, y, 1);
}

K_ROWS(rp2_rows_q6_K, dec_rp_q6_K, 16, 0)
static const cm_gemm g_rp2_q6_K = {G2, xbytes_k, work_k16, pack_q8_K, rp2_rows_q6_K, NULL, NULL};
static const cm_repack rp2_q6_K = {rp_pack_q6_K, rp_k6x_bytes, rp_k6x_pack, rp2_gemv_q6_K,
                                   rp2_gemv_pf_q6_K, &g_rp2_q6_K};

void cm_gemm_avx2_install(struct cm_kernels *k)
{
    k->gemm[CM_TYPE_Q8_0] = &g_q8_0;
    k->gemm[CM_TYPE_Q4_0] = &g_q4_0;
    k->gemm[CM_TYPE_Q5_0] = &g_q5_0;
    k->gemm[CM_TYPE_Q4_1] = &g_q4_1;
    k->gemm[CM_TYPE_Q5_1] = &g_q5_1;
    k->gemm[CM_TYPE_Q4_K] = &g_q4_K;
    k->gemm[CM_TYPE_Q5_K] = &g_q5_K;
    k->gemm[CM_TYPE_Q6_K] = &g_q6_K;
    k->gemm[CM_TYPE_Q3_K] = &g_q3_K;
    k->gemm[CM_TYPE_Q2_K] = &g_q2_K;
    k->repack[CM_TYPE_Q4_0] = &rp2_q4_0;
    k->repack[CM_TYPE_Q5_0] = &rp2_q5_0;
    k->repack[CM_TYPE_Q8_0] = &rp2_q8_0;
    k->repack[CM_TYPE_Q4_K] = &rp2_q4_K;
    k->repack[CM_TYPE_Q6_K] = &rp2_q6_K;
}

#else /* built without -mavx2 -mfma -mf16c */

void cm_gemm_avx2_install(struct cm_kernels *k)
{
    (void)k;
}

#endif
