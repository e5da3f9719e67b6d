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

#define LEGACY_ROWS(name, dec, has_m, q8)                                       \
    static void name(int64_t cols, const void *w, size_t wrow, int64_t r0,      \
                     int64_t r1, const void *x, int64_t n_tok, float *y,        \
                     int64_t ldy, void *work)                                   \
    {                                                                           \
        const int64_t nb = cols / 32;                                           \
        for (int64_t rt = r0; rt < r1; rt += TR) {                              \
            int nr = r1 - rt < TR ? (int)(r1 - rt) : TR;                        \
            decode_tile(dec, (const uint8_t *)w + rt * wrow, wrow, nr, nb, LB,  \
                        work);                                                  \
            for (int64_t t0 = 0; t0 < n_tok; t0 += G2) {                        \
                const uint8_t *xp = (const uint8_t *)x + (t0 / G2) * nb * XB2;  \
                float out[TR][G2];                                              \
                for (int q = 0; q < TR; q += MR2) {                             \
                    __m256 acc[MR2];                                            \
                    mk_legacy(nb, work, xp, acc, q, has_m, q8);                 \
                    for (int r = 0; r < MR2; r++)                               \
                        _mm256_storeu_ps(out[q + r], acc[r]);                   \
                }                                                               \
                int nt = n_tok - t0 < G2 ? (int)(n_tok - t0) : G2;              \
                store_block(out, y + t0 * ldy + rt, ldy, nr, nt);              \
            }                                                                   \
        }                                                                       \
    }

#define K_ROWS(name, dec, ns, mins)                                             \
    static void name(int64_t cols, const void *w, size_t wrow, int64_t r0,      \
                     int64_t r1, const void *x, int64_t n_tok, float *y,        \
                     int64_t ldy, void *work)                                   \
    {                                                                           \
        const int64_t nsb = cols / QK_K;                                        \
        for (int64_t rt = r0; rt < r1; rt += TR) {                              \
            int nr = r1 - rt < TR ? (int)(r1 - rt) : TR;                        \
            decode_tile(dec, (const uint8_t *)w + rt * wrow, wrow, nr, nsb,     \
                        KB(ns), work);                                          \
            for (int64_t t0 = 0; t0 < n_tok; t0 += G2) {                        \
                const uint8_t *xp = (const uint8_t *)x + (t0 / G2) * nsb * XK2; \
                float out[TR][G2];                                              \
                for (int q = 0; q < TR; q += MR2) {                             \
                    __m256 acc[MR2];                                            \
                    mk_k(nsb, work, xp, acc, q, ns, mins);                      \
                    for (int r = 0; r < MR2; r++)                               \
                        _mm256_storeu_ps(out[q + r], acc[r]);                   \
                }                                                               \
                int nt = n_tok - t0 < G2 ? (int)(n_tok - t0) : G2;              \
                store_block(out, y + t0 * ldy + rt, ldy, nr, nt);              \
            }                                                                   \
        }                                                                       \
    }

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

static const cm_gemm g_q8_0 = {G2, xbytes_legacy, work_legacy, pack_q8_0_signed, rows_q8_0};
static const cm_gemm g_q4_0 = {G2, xbytes_legacy, work_legacy, pack_q8_0, rows_q4_0};
static const cm_gemm g_q5_0 = {G2, xbytes_legacy, work_legacy, pack_q8_0, rows_q5_0};
static const cm_gemm g_q4_1 = {G2, xbytes_legacy, work_legacy, pack_q8_1, rows_q4_1};
static const cm_gemm g_q5_1 = {G2, xbytes_legacy, work_legacy, pack_q8_1, rows_q5_1};
static const cm_gemm g_q4_K = {G2, xbytes_k, work_k8, pack_q8_K, rows_q4_K};
static const cm_gemm g_q5_K = {G2, xbytes_k, work_k8, pack_q8_K, rows_q5_K};
static const cm_gemm g_q6_K = {G2, xbytes_k, work_k16, pack_q8_K, rows_q6_K};
static const cm_gemm g_q3_K = {G2, xbytes_k, work_k16, pack_q8_K, rows_q3_K};
static const cm_gemm g_q2_K = {G2, xbytes_k, work_k16, pack_q8_K, rows_q2_K};

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
}

#else /* built without -mavx2 -mfma -mf16c */

void cm_gemm_avx2_install(struct cm_kernels *k)
{
    (void)k;
}

#endif
