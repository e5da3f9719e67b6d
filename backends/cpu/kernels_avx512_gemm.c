/* kernels_avx512_gemm.c - AVX-512 batched products (prompt processing).
 *
 * Compiled with kernels_avx512.c's flags; without them it builds to a stub.
 *
 * Orientation: an int32 lane is a token.  Sixteen tokens' activations are
 * packed once per matmul so that one zmm holds the same 4 elements of 16
 * tokens (as unsigned bytes x + 128); a weight row's 4 levels are broadcast
 * from memory (vpdpbusd's m32bcst operand) against it.  So every vpdpbusd
 * does 64 useful MACs, the weights need no transposition, and a tile of
 * weight rows is decoded once per matmul into signed levels plus scales and
 * then reused by every token group.  Only the 16x16 output block is
 * transposed, once per (16 rows, 16 tokens).
 *
 * The +128 shift makes the activations unsigned for vpdpbusd: a sub-block's
 * sum of w * (x + 128) = sum w*x + 128 * sum w, and the decoder stores
 * -128 * sum w as the accumulator's start value.  The integer sub-block sums
 * are therefore exactly the per-token kernels' (the levels are decoded with
 * their offsets folded in: q4_0 as q - 8, q6_K as q - 32, ...), and only the
 * float scaling and summation order differ.
 *
 * Without VNNI, vpdpbusd becomes vpmaddubsw + vpmaddwd, whose int16 pair
 * sums cannot saturate when |level| <= 64 (2 * 255 * 64 < 32768): true of
 * every format here but q8_0, which is therefore only installed with VNNI. */
#include "backends/cpu/kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__AVX2__) && defined(__FMA__) &&       \
    defined(__F16C__)

#include "backends/cpu/avx512_common.h"
#include "backends/cpu/gemm_decode.h"

#define G 16   /* tokens per packed group = int32 lanes of a zmm */
#define MR 8   /* weight rows per micro-kernel pass (registers: 2*MR + 8 + 2) */

/* ---- layouts -------------------------------------------------------------
 * Decoded weight tiles: gemm_decode.h.  Packed activations, per group of 16
 * tokens:
 *   legacy (per block):  xq[8][16][4] u8 | dx[16] f32 | s[16] f32 = XB
 *   K-quant (per super-block): xq[64][16][4] | dx[16] | bs[8][16] i32 = XK
 * where xq holds x + 128 and bs each token's Q8_K bsums as s16 pairs
 * (2p, 2p+1). */
#define XB (512 + 2 * 64)
#define XK (4096 + 64 + 512)

/* ---- helpers ------------------------------------------------------------ */

/* acc + sums of 4 adjacent u8*s8 products per int32 lane */
INLINE __m512i dpbusd(__m512i acc, __m512i u, __m512i s, const int vnni)
{
    if (vnni)
        return _mm512_dpbusd_epi32(acc, u, s);
    __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
    return _mm512_add_epi32(acc, p);
}

INLINE __m512i dpwssd(__m512i acc, __m512i a, __m512i b, const int vnni)
{
    if (vnni)
        return _mm512_dpwssd_epi32(acc, a, b);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
}

/* 4 bytes broadcast to every lane */
INLINE __m512i bcst32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* dpbusd with the signed operand 4 bytes at p, broadcast.  As one
 * instruction with an m32bcst operand: GCC 12 emits a separate
 * vpbroadcastd for every product instead (clang folds it), and that extra
 * micro-op per product costs the micro-kernels a quarter of their speed
 * (bench_matmul q4_0 441 -> 585 GFLOP/s on Zen 5). */
INLINE __m512i dpbusd_bcst(__m512i acc, __m512i u, const void *p, const int vnni)
{
#if defined(__GNUC__) && !defined(__clang__)
    if (vnni) {
        __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*(const int32_t *)p));
        return acc;
    }
#endif
    return dpbusd(acc, u, bcst32(p), vnni);
}

/* The 16x16 block acc[row][token] into y[token * ldy + row] for the nr
 * rows and nt tokens that exist.  stream: the output is far larger than
 * the caches (the logits of a batch: 50 MB for 256 tokens of a 49k
 * vocabulary), so whole 64-byte lines bypass them instead of being read in
 * first and evicted later. */
static void store_block(__m512 acc[16], float *y, int64_t ldy, int nr, int nt, int stream)
{
    transpose16(acc);
    const __mmask16 m = tail16(nr);
    if (stream && nr == 16 && ((uintptr_t)y & 63) == 0 && (ldy & 15) == 0) {
        for (int t = 0; t < nt; t++)
            _mm512_stream_ps(y + t * ldy, acc[t]);
        return;
    }
    for (int t = 0; t < nt; t++)
        _mm512_mask_storeu_ps(y + t * ldy, m, acc[t]);
}

/* Outputs from this size are streamed (store_block). */
#define STREAM_BYTES ((size_t)16 << 20)

/* ---- activation packing ------------------------------------------------- */

/* 16 token rows of 64 quant bytes each (row t at src[t], NULL = padding)
 * into 16 group registers, shifted to unsigned; stores the first ng. */
static void pack64(const int8_t *const src[G], uint8_t *dst, int ng, int half)
{
    __m512 r[16];
    const __m512i flip = _mm512_set1_epi8(-128);
    for (int t = 0; t < G; t++) {
        __m512i v = _mm512_setzero_si512();
        if (src[t] && half) /* one 32-byte block (the last of an odd count) */
            v = _mm512_zextsi256_si512(load256(src[t]));
        else if (src[t])
            v = _mm512_loadu_si512(src[t]);
        r[t] = _mm512_castsi512_ps(_mm512_xor_si512(v, flip));
    }
    transpose16(r);
    UNROLL
    for (int g = 0; g < ng; g++)
        _mm512_store_ps((float *)(dst + 64 * g), r[g]);
}

/* Two adjacent 32-byte block quants are not contiguous in Q8_0/Q8_1 rows,
 * so legacy packing goes one block at a time into the low half. */
static void pack_legacy(int64_t cols, const void *xq, size_t xrow, int nt, void *dst,
                        size_t bsize, size_t qoff, int has_s)
{
    const int64_t nb = cols / 32;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *p = (uint8_t *)dst + b * XB;
        const int8_t *src[G];
        float *dx = (float *)(p + 512), *s = (float *)(p + 576);
        for (int t = 0; t < G; t++) {
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
        pack64(src, p, 8, 1);
    }
}

static void pack_q8_0(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_legacy(cols, xq, xrow, nt, dst, sizeof(block_q8_0), 2, 0);
}

static void pack_q8_1(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    pack_legacy(cols, xq, xrow, nt, dst, sizeof(block_q8_1), 4, 1);
}

static void pack_q8_K(int64_t cols, const void *xq, size_t xrow, int nt, void *dst)
{
    for (int64_t sb = 0; sb < cols / QK_K; sb++) {
        uint8_t *p = (uint8_t *)dst + sb * XK;
        float *dx = (float *)(p + 4096);
        int32_t *bs = (int32_t *)(p + 4096 + 64);
        const block_q8_K *blk[G];
        for (int t = 0; t < G; t++) {
            blk[t] = t < nt ? (const block_q8_K *)((const uint8_t *)xq + t * xrow) + sb : NULL;
            dx[t] = blk[t] ? blk[t]->d : 0.0f;
            for (int q = 0; q < 8; q++) {
                int32_t v = 0;
                if (blk[t])
                    memcpy(&v, blk[t]->bsums + 2 * q, 4);
                bs[q * G + t] = v;
            }
        }
        for (int c = 0; c < 4; c++) {
            const int8_t *src[G];
            for (int t = 0; t < G; t++)
                src[t] = blk[t] ? blk[t]->qs + 64 * c : NULL;
            pack64(src, p + 1024 * c, 16, 0);
        }
    }
}

static size_t xbytes_legacy(int64_t cols) { return (size_t)(cols / 32) * XB; }
static size_t xbytes_k(int64_t cols) { return (size_t)(cols / QK_K) * XK; }

/* ---- micro-kernels -------------------------------------------------------- */

/* Rows r0..r0+MR-1 of a legacy tile against one token group: acc[r] lane t
 * = dot(row r0 + r, token t). */
INLINE void mk_legacy(int64_t nb, const uint8_t *tile, const uint8_t *xp, __m512 *acc,
                      const int r0, const int has_m, const int vnni)
{
    __m512 a[MR]; /* locals, not acc[]: GCC keeps them in registers */
    UNROLL
    for (int r = 0; r < MR; r++)
        a[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, tile += LB, xp += XB) {
        /* MR independent integer sums interleaved group by group: each
         * activation vector is loaded once and the products of different
         * rows overlap (one row's 8 products in a row form a latency chain) */
        __m512i ai[MR];
        UNROLL
        for (int r = 0; r < MR; r++)
            ai[r] = _mm512_set1_epi32(((const int32_t *)(tile + 576))[r0 + r]);
        UNROLL
        for (int g = 0; g < 8; g++) {
            __m512i x = _mm512_load_si512(xp + 64 * g);
            UNROLL
            for (int r = 0; r < MR; r++)
                ai[r] = dpbusd_bcst(ai[r], x, tile + 32 * (r0 + r) + 4 * g, vnni);
        }
        __m512 dx = _mm512_load_ps(xp + 512);
        UNROLL
        for (int r = 0; r < MR; r++) {
            __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(ai[r]),
                                     _mm512_set1_ps(((const float *)(tile + 512))[r0 + r]));
            a[r] = _mm512_fmadd_ps(f, dx, a[r]);
            if (has_m) /* q4_1/q5_1: + m * s, s = d_x * sum(x quants) */
                a[r] = _mm512_fmadd_ps(_mm512_set1_ps(((const float *)(tile + 640))[r0 + r]),
                                       _mm512_load_ps(xp + 576), a[r]);
        }
    }
    UNROLL
    for (int r = 0; r < MR; r++)
        acc[r] = a[r];
}

/* Sub-block j (elements j*sub .. +sub) of a super-block for MR rows. */
INLINE void mk_k_sub(const uint8_t *tb, const uint8_t *xp, __m512 *sacc, int j,
                     const int r0, const int ns, const int vnni)
{
    const int sub = 256 / ns, ng = sub / 4;
    const float *sc = (const float *)(tb + KLEV) + 16 * j;
    const int32_t *corr = (const int32_t *)(tb + KLEV + 64 * ns) + 16 * j;
    __m512i ai[MR]; /* rows interleaved per activation vector, as mk_legacy */
    UNROLL
    for (int r = 0; r < MR; r++)
        ai[r] = _mm512_set1_epi32(corr[r0 + r]);
    UNROLL
    for (int g = 0; g < ng; g++) {
        __m512i x = _mm512_load_si512(xp + 64 * (j * ng + g));
        UNROLL
        for (int r = 0; r < MR; r++)
            ai[r] = dpbusd_bcst(ai[r], x, tb + 256 * (r0 + r) + sub * j + 4 * g, vnni);
    }
    UNROLL
    for (int r = 0; r < MR; r++)
        sacc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[r]), _mm512_set1_ps(sc[r0 + r]), sacc[r]);
}

/* MR rows of a K-quant tile against one token group.  Per super-block:
 * sum_j (d * sc_j) * isum_j - dmin * sum_p mp_p . bsum_p, times d_x. */
INLINE void mk_k(int64_t nsb, const uint8_t *tile, const uint8_t *xp, __m512 *acc,
                 const int r0, const int ns, const int mins, const int vnni)
{
    __m512 a[MR]; /* locals: see mk_legacy */
    UNROLL
    for (int r = 0; r < MR; r++)
        a[r] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++, tile += KB(ns), xp += XK) {
        __m512 sacc[MR];
        UNROLL
        for (int r = 0; r < MR; r++)
            sacc[r] = _mm512_setzero_ps();
        for (int j = 0; j < ns; j++) /* rolled: x is reloaded per j anyway */
            mk_k_sub(tile, xp, sacc, j, r0, ns, vnni);
        if (mins) {
            const uint8_t *bs = xp + 4096 + 64;
            const int32_t *mp = (const int32_t *)(tile + KLEV + 128 * ns);
            const float *dmin = (const float *)(tile + KLEV + 128 * ns + 512);
            UNROLL
            for (int r = r0; r < r0 + MR; r++) {
                __m512i mi = _mm512_setzero_si512();
                UNROLL
                for (int p = 0; p < 8; p++)
                    mi = dpwssd(mi, _mm512_load_si512(bs + 64 * p),
                                _mm512_set1_epi32(mp[16 * p + r]), vnni);
                sacc[r - r0] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mi),
                                                _mm512_set1_ps(dmin[r]), sacc[r - r0]);
            }
        }
        __m512 dx = _mm512_load_ps(xp + 4096);
        UNROLL
        for (int r = 0; r < MR; r++)
            a[r] = _mm512_fmadd_ps(sacc[r], dx, a[r]);
    }
    UNROLL
    for (int r = 0; r < MR; r++)
        acc[r] = a[r];
}

/* ---- drivers ---------------------------------------------------------------- */

/* rows() of one format: each 16-row tile decoded once, then multiplied by
 * every group of 16 tokens (MK: the format's micro-kernel, MR rows at a
 * time; blk elements and bbytes decoded bytes per block, xbytes packed
 * activation bytes per block and group).  name##_decode and name##_decoded
 * split the two for weights kept decoded (cm_gemm.decode). */
#define ROWS(name, dec, blk, bbytes, xbytes, MK)                                \
    INLINE void name##_tile(int64_t nb, const uint8_t *tile, int64_t rt, int nr, \
                            const void *x, int64_t n_tok, float *y, int64_t ldy, \
                            int stream)                                         \
    {                                                                           \
        for (int64_t t0 = 0; t0 < n_tok; t0 += G) {                             \
            const uint8_t *xp = (const uint8_t *)x + (t0 / G) * nb * xbytes;    \
            __m512 acc[16];                                                     \
            MK(nb, tile, xp, acc, 0);                                           \
            MK(nb, tile, xp, acc + MR, MR);                                     \
            int nt = n_tok - t0 < G ? (int)(n_tok - t0) : G;                    \
            store_block(acc, y + t0 * ldy + rt, ldy, nr, nt, stream);          \
        }                                                                       \
    }                                                                           \
    static void name(int64_t cols, const void *w, size_t wrow, int64_t r0,      \
                     int64_t r1, const void *x, int64_t n_tok, float *y,        \
                     int64_t ldy, void *work)                                   \
    {                                                                           \
        const int64_t nb = cols / (blk);                                        \
        const int stream = (size_t)ldy * (size_t)n_tok * 4 >= STREAM_BYTES;     \
        for (int64_t rt = r0; rt < r1; rt += TR) {                              \
            int nr = r1 - rt < TR ? (int)(r1 - rt) : TR;                        \
            decode_tile(dec, (const uint8_t *)w + rt * wrow, wrow, nr, nb,      \
                        bbytes, work);                                          \
            name##_tile(nb, work, rt, nr, x, n_tok, y, ldy, stream);            \
        }                                                                       \
        if (stream) /* order the streamed lines before the caller's barrier */  \
            _mm_sfence();                                                       \
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
        const int stream = (size_t)ldy * (size_t)n_tok * 4 >= STREAM_BYTES;     \
        for (int64_t rt = r0; rt < r1; rt += TR) {                              \
            int nr = rows - rt < TR ? (int)(rows - rt) : TR;                    \
            nr = r1 - rt < nr ? (int)(r1 - rt) : nr;                            \
            const uint8_t *tl = (const uint8_t *)tiles + (size_t)(rt / TR) * nb * bbytes; \
            if (rt + TR < r1)                                                   \
                prefetch_tile(tl + nb * bbytes, (size_t)nb * bbytes);           \
            name##_tile(nb, tl, rt, nr, x, n_tok, y, ldy, stream);              \
        }                                                                       \
        if (stream)                                                             \
            _mm_sfence();                                                       \
    }

#define LEGACY_ROWS(name, dec, has_m, vnni)                                     \
    INLINE void name##_mk(int64_t nb, const uint8_t *tile, const uint8_t *xp,   \
                          __m512 *acc, const int r0)                            \
    {                                                                           \
        mk_legacy(nb, tile, xp, acc, r0, has_m, vnni);                          \
    }                                                                           \
    ROWS(name, dec, 32, LB, XB, name##_mk)

#define K_ROWS(name, dec, ns, mins, vnni)                                       \
    INLINE void name##_mk(int64_t nsb, const uint8_t *tile, const uint8_t *xp,  \
                          __m512 *acc, const int r0)                            \
    {                                                                           \
        mk_k(nsb, tile, xp, acc, r0, ns, mins, vnni);                           \
    }                                                                           \
    ROWS(name, dec, QK_K, KB(ns), XK, name##_mk)

LEGACY_ROWS(rows_q8_0, dec_q8_0, 0, 1)
LEGACY_ROWS(rows_q4_0_vnni, dec_q4_0, 0, 1)
LEGACY_ROWS(rows_q4_0_plain, dec_q4_0, 0, 0)
LEGACY_ROWS(rows_q5_0_vnni, dec_q5_0, 0, 1)
LEGACY_ROWS(rows_q5_0_plain, dec_q5_0, 0, 0)
LEGACY_ROWS(rows_q4_1_vnni, dec_q4_1, 1, 1)
LEGACY_ROWS(rows_q4_1_plain, dec_q4_1, 1, 0)
LEGACY_ROWS(rows_q5_1_vnni, dec_q5_1, 1, 1)
LEGACY_ROWS(rows_q5_1_plain, dec_q5_1, 1, 0)
K_ROWS(rows_q4_K_vnni, dec_q4_K, 8, 1, 1)
K_ROWS(rows_q4_K_plain, dec_q4_K, 8, 1, 0)
K_ROWS(rows_q5_K_vnni, dec_q5_K, 8, 1, 1)
K_ROWS(rows_q5_K_plain, dec_q5_K, 8, 1, 0)
K_ROWS(rows_q6_K_vnni, dec_q6_K, 16, 0, 1)
K_ROWS(rows_q6_K_plain, dec_q6_K, 16, 0, 0)
K_ROWS(rows_q3_K_vnni, dec_q3_K, 16, 0, 1)
K_ROWS(rows_q3_K_plain, dec_q3_K, 16, 0, 0)
K_ROWS(rows_q2_K_vnni, dec_q2_K, 16, 1, 1)
K_ROWS(rows_q2_K_plain, dec_q2_K, 16, 1, 0)

static size_t work_legacy(int64_t cols) { return (size_t)(cols / 32) * LB; }
static size_t work_k8(int64_t cols) { return (size_t)(cols / QK_K) * KB(8); }
static size_t work_k16(int64_t cols) { return (size_t)(cols / QK_K) * KB(16); }

#define GEMM(name, pack, rows, xb, wb) \
    static const cm_gemm name = {G, xb, wb, pack, rows, NULL, NULL};
/* ... whose weights can also be kept decoded */
#define GEMM_D(name, pack, rows, xb, wb) \
    static const cm_gemm name = {G, xb, wb, pack, rows, rows##_decode, rows##_decoded};

GEMM_D(g_q8_0, pack_q8_0, rows_q8_0, xbytes_legacy, work_legacy)
GEMM_D(g_q4_0_vnni, pack_q8_0, rows_q4_0_vnni, xbytes_legacy, work_legacy)
GEMM_D(g_q4_0_plain, pack_q8_0, rows_q4_0_plain, xbytes_legacy, work_legacy)
GEMM_D(g_q5_0_vnni, pack_q8_0, rows_q5_0_vnni, xbytes_legacy, work_legacy)
GEMM_D(g_q5_0_plain, pack_q8_0, rows_q5_0_plain, xbytes_legacy, work_legacy)
GEMM_D(g_q4_1_vnni, pack_q8_1, rows_q4_1_vnni, xbytes_legacy, work_legacy)
GEMM_D(g_q4_1_plain, pack_q8_1, rows_q4_1_plain, xbytes_legacy, work_legacy)
GEMM_D(g_q5_1_vnni, pack_q8_1, rows_q5_1_vnni, xbytes_legacy, work_legacy)
GEMM_D(g_q5_1_plain, pack_q8_1, rows_q5_1_plain, xbytes_legacy, work_legacy)
GEMM_D(g_q4_K_vnni, pack_q8_K, rows_q4_K_vnni, xbytes_k, work_k8)
GEMM_D(g_q4_K_plain, pack_q8_K, rows_q4_K_plain, xbytes_k, work_k8)
GEMM_D(g_q5_K_vnni, pack_q8_K, rows_q5_K_vnni, xbytes_k, work_k8)
GEMM_D(g_q5_K_plain, pack_q8_K, rows_q5_K_plain, xbytes_k, work_k8)
GEMM_D(g_q6_K_vnni, pack_q8_K, rows_q6_K_vnni, xbytes_k, work_k16)
GEMM_D(g_q6_K_plain, pack_q8_K, rows_q6_K_plain, xbytes_k, work_k16)
GEMM_D(g_q3_K_vnni, pack_q8_K, rows_q3_K_vnni, xbytes_k, work_k16)
GEMM_D(g_q3_K_plain, pack_q8_K, rows_q3_K_plain, xbytes_k, work_k16)
GEMM_D(g_q2_K_vnni, pack_q8_K, rows_q2_K_vnni, xbytes_k, work_k16)
GEMM_D(g_q2_K_plain, pack_q8_K, rows_q2_K_plain, xbytes_k, work_k16)

/* ---- float weights ---------------------------------------------------------
 * Outer products.  A tile of FR = 32 weight rows is laid out k-major
 * ([k][32] floats, F16 widened on the way, 16 x 16 squares transposed in
 * registers); each step of k multiplies its two vectors of 16 rows by one
 * broadcast activation for each of FT = 14 tokens.  The 28 accumulators
 * stay in registers over the whole row and are stored once, 16 outputs per
 * store: no horizontal sums and no scalar stores.  The tile (72 KiB for
 * 576 columns) is reused by every token while it sits in L2. */
#define FR 32
#define FT 14

/* nr <= FR rows of w (F16 when f16, else F32) -> tile[k][FR], rows past nr
 * zero */
static void pack_float_tile(int64_t cols, const uint8_t *w, size_t wrow, int nr, int f16,
                            float *tile)
{
    for (int64_t k0 = 0; k0 < cols; k0 += 16) {
        const __mmask16 m = cols16(cols, k0);
        const int nk = cols - k0 < 16 ? (int)(cols - k0) : 16;
        for (int h = 0; h < FR / 16; h++) {
            __m512 r[16];
            for (int j = 0; j < 16; j++) {
                const int row = 16 * h + j;
                const uint8_t *p = w + (size_t)row * wrow;
                r[j] = row >= nr ? _mm512_setzero_ps()
                       : f16     ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + k0))
                                 : _mm512_maskz_loadu_ps(m, (const float *)p + k0);
            }
            transpose16(r);
            for (int i = 0; i < nk; i++)
                _mm512_store_ps(tile + (k0 + i) * FR + 16 * h, r[i]);
        }
    }
}

/* y[t][0..32) (masks m0, m1) = tile . x[t] for nt tokens x[t] = x + t * cols */
INLINE void mk_outer(int64_t cols, const float *tile, const float *x, float *y, int64_t ldy,
                     __mmask16 m0, __mmask16 m1, int stream, const int nt)
{
    __m512 a[FT], b[FT];
    UNROLL
    for (int t = 0; t < nt; t++)
        a[t] = b[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < cols; k++) {
        const __m512 w0 = _mm512_load_ps(tile + k * FR), w1 = _mm512_load_ps(tile + k * FR + 16);
        UNROLL
        for (int t = 0; t < nt; t++) {
            const __m512 v = _mm512_set1_ps(x[t * cols + k]);
            a[t] = _mm512_fmadd_ps(w0, v, a[t]);
            b[t] = _mm512_fmadd_ps(w1, v, b[t]);
        }
    }
    if (stream && m1 == 0xFFFF && ((uintptr_t)y & 63) == 0 && (ldy & 15) == 0) {
        UNROLL
        for (int t = 0; t < nt; t++) { /* see store_block */
            _mm512_stream_ps(y + t * ldy, a[t]);
            _mm512_stream_ps(y + t * ldy + 16, b[t]);
        }
        return;
    }
    UNROLL
    for (int t = 0; t < nt; t++) {
        _mm512_mask_storeu_ps(y + t * ldy, m0, a[t]);
        _mm512_mask_storeu_ps(y + t * ldy + 16, m1, b[t]);
    }
}

/* The last n_tok % FT tokens: one instance per count keeps them in
 * registers too. */
static void mk_outer_tail(int64_t cols, const float *tile, const float *x, float *y,
                          int64_t ldy, __mmask16 m0, __mmask16 m1, int stream, int nt)
{
    switch (nt) {
#define TAIL(n)                                             \
    case n:                                                 \
        mk_outer(cols, tile, x, y, ldy, m0, m1, stream, n); \
        break;
        TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7)
        TAIL(8) TAIL(9) TAIL(10) TAIL(11) TAIL(12) TAIL(13)
#undef TAIL
    default:
        break;
    }
}

static void float_rows(int64_t cols, const void *w, size_t wrow, int64_t r0, int64_t r1,
                       const float *x, int64_t n_tok, float *y, int64_t ldy, float *tile,
                       int f16)
{
    const int stream = (size_t)ldy * (size_t)n_tok * 4 >= STREAM_BYTES;
    for (int64_t rt = r0; rt < r1; rt += FR) {
        const int nr = r1 - rt < FR ? (int)(r1 - rt) : FR;
        pack_float_tile(cols, (const uint8_t *)w + (size_t)rt * wrow, wrow, nr, f16, tile);
        const __mmask16 m0 = cols16(nr, 0), m1 = cols16(nr, 16);
        int64_t t = 0;
        for (; t + FT <= n_tok; t += FT)
            mk_outer(cols, tile, x + t * cols, y + t * ldy + rt, ldy, m0, m1, stream, FT);
        if (t < n_tok)
            mk_outer_tail(cols, tile, x + t * cols, y + t * ldy + rt, ldy, m0, m1, stream,
                          (int)(n_tok - t));
    }
    if (stream)
        _mm_sfence();
}

static void rows_f32(int64_t cols, const void *w, size_t wrow, int64_t r0, int64_t r1,
                     const void *x, int64_t n_tok, float *y, int64_t ldy, void *work)
{
    float_rows(cols, w, wrow, r0, r1, x, n_tok, y, ldy, work, 0);
}

static void rows_f16(int64_t cols, const void *w, size_t wrow, int64_t r0, int64_t r1,
                     const void *x, int64_t n_tok, float *y, int64_t ldy, void *work)
{
    float_rows(cols, w, wrow, r0, r1, x, n_tok, y, ldy, work, 1);
}

static size_t work_float(int64_t cols) { return (size_t)FR * (size_t)cols * sizeof(float); }

static const cm_gemm g_f32 = {G, NULL, work_float, NULL, rows_f32, NULL, NULL};
static const cm_gemm g_f16 = {G, NULL, work_float, NULL, rows_f16, NULL, NULL};

/* ---- repacked q4_0 / q5_0 / q8_0 tiles (cm_repack) ------------------------
 * The tile layout and its packing are gemm_decode.h's (rp_pack_tile), shared
 * with the AVX2 table. */

#define RP_FNS(t, kind, off)                                                    \
    static void rp_pack_##t(int64_t cols, const void *w, size_t wrow, void *dst) \
    {                                                                           \
        rp_pack_tile(kind, cols, w, wrow, dst);                                 \
    }                                                                           \
    static void rp_x_pack_##t(int64_t cols, const void *xq, void *dst)          \
    {                                                                           \
        rp_x_pack(cols, xq, dst, off);                                          \
    }
RP_FNS(q4_0, RP_Q4_0, 8)
RP_FNS(q5_0, RP_Q5_0, 16)
RP_FNS(q8_0, RP_Q8_0, 128)

/* q5_0: the fifth bits at bit b of the word's bytes moved to bit 4 (16),
 * the rest cleared (gemm_decode.h). */
INLINE __m512i rp_bit4(__m512i hw, const int b)
{
    __m512i v = b <= 4 ? _mm512_slli_epi32(hw, 4 - b) : _mm512_srli_epi32(hw, b - 4);
    return _mm512_and_si512(v, _mm512_set1_epi8(0x10));
}

/* Vector j's levels, unsigned: the low (h = 0) or high nibbles of q4_0 and
 * q5_0 (with their fifth bits from hw). */
INLINE __m512i rp_levels(__m512i v, __m512i hw, int j, const int h, const int kind)
{
    const __m512i m = _mm512_set1_epi8(0x0F);
    __m512i u = _mm512_and_si512(h ? _mm512_srli_epi16(v, 4) : v, m);
    return kind == RP_Q5_0 ? _mm512_or_si512(u, rp_bit4(hw, 4 * h + j)) : u;
}

/* One block of a tile: the 16 rows' integer sums (with the offset term). */
INLINE __m512i rp_block(const uint8_t *q, const rp_xblock *x, const int kind, const int vnni)
{
    __m512i s0 = _mm512_set1_epi32(x->c), s1 = _mm512_setzero_si512();
    if (kind == RP_Q8_0) {
        UNROLL
        for (int j = 0; j < 8; j += 2) {
            s0 = dpbusd_bcst(s0, _mm512_loadu_si512(q + 64 * j), x->qs + 4 * j, vnni);
            s1 = dpbusd_bcst(s1, _mm512_loadu_si512(q + 64 * j + 64), x->qs + 4 * j + 4, vnni);
        }
    } else {
        const __m512i hw = kind == RP_Q5_0 ? _mm512_loadu_si512(q + 256) : _mm512_setzero_si512();
        UNROLL
        for (int j = 0; j < 4; j++) {
            __m512i v = _mm512_loadu_si512(q + 64 * j);
            s0 = dpbusd_bcst(s0, rp_levels(v, hw, j, 0, kind), x->qs + 4 * j, vnni);
            s1 = dpbusd_bcst(s1, rp_levels(v, hw, j, 1, kind), x->qs + 16 + 4 * j, vnni);
        }
    }
    return _mm512_add_epi32(s0, s1);
}

/* Software prefetch distance of the generation kernels' prefetching
 * variant (bytes ahead in the tiles).  Zen 5, one thread, qwen05b q4_0:
 * 4-6 KiB ahead 1.10-1.15x faster than none (70 -> 78 tok/s), 1-2 KiB no
 * gain, 16 KiB slower, prefetcht1 slower than prefetcht0.  (On an Intel
 * Xeon, prefetch ahead of the old per-row kernels measured 2-3x slower:
 * cpu.c picks the variant by vendor.) */
#define RP_PF 6144

/* y[r] += the float sum of block pairs: acc += d_w * (d_x * isum). */
INLINE __m512 rp_scale(__m512 acc, __m512i isum, const void *sc, float dx)
{
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(dx));
    return _mm512_fmadd_ps(_mm512_cvtph_ps(load256(sc)), f, acc);
}

INLINE void rp_gemv_k(int64_t cols, const void *tile, const void *xp, float *y, const int kind,
                      const int vnni, const int pf)
{
    const int64_t nb = cols / 32;
    const int qb = rp_qb(kind), pb = 2 * qb + 64; /* a pair of blocks */
    const uint8_t *q = tile;
    const rp_xblock *x = xp;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    int64_t k = 0;
    for (; k + 2 <= nb; k += 2, q += pb) {
        if (pf) {
            UNROLL
            for (int l = 0; l < pb; l += 64)
                _mm_prefetch((const char *)q + RP_PF + l, _MM_HINT_T0);
        }
        __m512i i0 = rp_block(q, x + k, kind, vnni);
        __m512i i1 = rp_block(q + qb, x + k + 1, kind, vnni);
        acc0 = rp_scale(acc0, i0, q + 2 * qb, x[k].d);
        acc1 = rp_scale(acc1, i1, q + 2 * qb + 32, x[k + 1].d);
    }
    if (k < nb)
        acc0 = rp_scale(acc0, rp_block(q, x + k, kind, vnni), q + qb, x[k].d);
    _mm512_storeu_ps(y, _mm512_add_ps(acc0, acc1));
}

#define RP_GEMV(name, kind, vnni)                                               \
    static void name(int64_t cols, const void *t, const void *xp, float *y)     \
    {                                                                           \
        rp_gemv_k(cols, t, xp, y, kind, vnni, 0);                               \
    }                                                                           \
    static void name##_pf(int64_t cols, const void *t, const void *xp, float *y) \
    {                                                                           \
        rp_gemv_k(cols, t, xp, y, kind, vnni, 1);                               \
    }
RP_GEMV(rp_gemv_q4_0_vnni, RP_Q4_0, 1)
RP_GEMV(rp_gemv_q4_0_plain, RP_Q4_0, 0)
RP_GEMV(rp_gemv_q5_0_vnni, RP_Q5_0, 1)
RP_GEMV(rp_gemv_q5_0_plain, RP_Q5_0, 0)
RP_GEMV(rp_gemv_q8_0_vnni, RP_Q8_0, 1)

/* A repacked tile into gemm_decode.h's legacy layout (levels [16][32] s8,
 * scales, corrections): the block's vectors are the levels' dwords with
 * rows as lanes, so one 16x16 transpose puts each row's 8 dwords together. */
INLINE void rp_decode_k(const uint8_t *tile, int64_t nb, uint8_t *work, const int kind,
                        const int vnni)
{
    const int qb = rp_qb(kind);
    const __m512i off = _mm512_set1_epi8(kind == RP_Q5_0 ? 16 : 8);
    const __m512i flip = _mm512_set1_epi8(-128), one = _mm512_set1_epi8(1);
    for (int64_t k = 0; k < nb; k++) {
        const uint8_t *q = tile + rp_qoff(k, qb);
        uint8_t *tb = work + k * LB;
        __m512i lev[8];
        if (kind == RP_Q8_0) {
            UNROLL
            for (int j = 0; j < 8; j++)
                lev[j] = _mm512_xor_si512(_mm512_loadu_si512(q + 64 * j), flip);
        } else {
            const __m512i hw = kind == RP_Q5_0 ? _mm512_loadu_si512(q + 256)
                                               : _mm512_setzero_si512();
            UNROLL
            for (int j = 0; j < 4; j++) {
                __m512i v = _mm512_loadu_si512(q + 64 * j);
                lev[j] = _mm512_sub_epi8(rp_levels(v, hw, j, 0, kind), off);
                lev[4 + j] = _mm512_sub_epi8(rp_levels(v, hw, j, 1, kind), off);
            }
        }
        __m512i sum = _mm512_setzero_si512();
        __m512 r[16];
        UNROLL
        for (int j = 0; j < 8; j++) {
            sum = dpbusd(sum, one, lev[j], vnni);
            r[j] = _mm512_castsi512_ps(lev[j]);
            r[8 + j] = _mm512_setzero_ps();
        }
        transpose16(r);
        UNROLL
        for (int i = 0; i < 16; i++)
            _mm256_storeu_ps((float *)(tb + 32 * i), _mm512_castps512_ps256(r[i]));
        _mm512_storeu_ps((float *)(tb + 512), _mm512_cvtph_ps(load256(tile + rp_soff(k, nb, qb))));
        _mm512_storeu_si512(tb + 576, _mm512_sub_epi32(_mm512_setzero_si512(),
                                                       _mm512_slli_epi32(sum, 7)));
        _mm512_storeu_ps((float *)(tb + 640), _mm512_setzero_ps());
    }
}

/* rows() on repacked tiles: as ROWS, each tile decoded once for every
 * token group (r0 and r1 are multiples of 16). */
#define RP_ROWS(name, kind, vnni)                                               \
    INLINE void name##_mk(int64_t nb, const uint8_t *tile, const uint8_t *xp,   \
                          __m512 *acc, const int r0)                            \
    {                                                                           \
        mk_legacy(nb, tile, xp, acc, r0, 0, vnni);                              \
    }                                                                           \
    static void name(int64_t cols, const void *w, size_t wrow, int64_t r0,      \
                     int64_t r1, const void *x, int64_t n_tok, float *y,        \
                     int64_t ldy, void *work)                                   \
    {                                                                           \
        const int64_t nb = cols / 32;                                           \
        const int stream = (size_t)ldy * (size_t)n_tok * 4 >= STREAM_BYTES;     \
        for (int64_t rt = r0; rt < r1; rt += TR) {                              \
            rp_decode_k((const uint8_t *)w + rt * wrow, nb, work, kind, vnni);  \
            for (int64_t t0 = 0; t0 < n_tok; t0 += G) {                         \
                const uint8_t *xp = (const uint8_t *)x + (t0 / G) * nb * XB;    \
                __m512 acc[16];                                                 \
                name##_mk(nb, work, xp, acc, 0);                                \
                name##_mk(nb, work, xp, acc + MR, MR);                          \
                int nt = n_tok - t0 < G ? (int)(n_tok - t0) : G;                \
                store_block(acc, y + t0 * ldy + rt, ldy, TR, nt, stream);      \
            }                                                                   \
        }                                                                       \
        if (stream)                                                             \
            _mm_sfence();                                                       \
    }

RP_ROWS(rp_rows_q4_0_vnni, RP_Q4_0, 1)
RP_ROWS(rp_rows_q4_0_plain, RP_Q4_0, 0)
RP_ROWS(rp_rows_q5_0_vnni, RP_Q5_0, 1)
RP_ROWS(rp_rows_q5_0_plain, RP_Q5_0, 0)
RP_ROWS(rp_rows_q8_0_vnni, RP_Q8_0, 1)

GEMM(g_rp_q4_0_vnni, pack_q8_0, rp_rows_q4_0_vnni, xbytes_legacy, work_legacy)
GEMM(g_rp_q4_0_plain, pack_q8_0, rp_rows_q4_0_plain, xbytes_legacy, work_legacy)
GEMM(g_rp_q5_0_vnni, pack_q8_0, rp_rows_q5_0_vnni, xbytes_legacy, work_legacy)
GEMM(g_rp_q5_0_plain, pack_q8_0, rp_rows_q5_0_plain, xbytes_legacy, work_legacy)
GEMM(g_rp_q8_0_vnni, pack_q8_0, rp_rows_q8_0_vnni, xbytes_legacy, work_legacy)

#define REPACK(name, t, gemv, gemm)                                             \
    static const cm_repack name = {rp_pack_##t, rp_x_bytes, rp_x_pack_##t, gemv, gemv##_pf, \
                                   &gemm};
REPACK(rp_q4_0_vnni, q4_0, rp_gemv_q4_0_vnni, g_rp_q4_0_vnni)
REPACK(rp_q4_0_plain, q4_0, rp_gemv_q4_0_plain, g_rp_q4_0_plain)
REPACK(rp_q5_0_vnni, q5_0, rp_gemv_q5_0_vnni, g_rp_q5_0_vnni)
REPACK(rp_q5_0_plain, q5_0, rp_gemv_q5_0_plain, g_rp_q5_0_plain)
REPACK(rp_q8_0_vnni, q8_0, rp_gemv_q8_0_vnni, g_rp_q8_0_vnni)

/* ---- repacked q4_K tiles (gemm_decode.h's layout) ------------------------- */

/* Byte b of every dword, as an int32 (a per-row scale). */
INLINE __m512i k4_byte(__m512i v, const int b)
{
    return _mm512_and_si512(_mm512_srli_epi32(v, 8 * b), _mm512_set1_epi32(0xFF));
}

/* Bytes b, b + 1 (b = 0 or 2) of every dword as two int16 (a row's pair
 * of mins). */
INLINE __m512i k4_pair(__m512i v, const int b)
{
    __m512i hi = b ? _mm512_srli_epi32(v, 8 * b - 8) : _mm512_slli_epi32(v, 8);
    return _mm512_or_si512(k4_byte(v, b), _mm512_and_si512(hi, _mm512_set1_epi32(0xFF0000)));
}

/* One super-block of a tile: the 16 rows' sums d-part (*isum) and
 * min-part (*msum), the scales unpacked as k4_scales_mins does, per lane. */
INLINE void rp_k4_block(const uint8_t *t, const rp_kxblock *x, __m512i *isum, __m512i *msum,
                        const int vnni)
{
    const __m512i w0 = _mm512_loadu_si512(t + 64), w1 = _mm512_loadu_si512(t + 128);
    const __m512i w2 = _mm512_loadu_si512(t + 192), m6 = _mm512_set1_epi8(0x3F);
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512i sc[2], mn[2];
    sc[0] = _mm512_and_si512(w0, m6);
    sc[1] = _mm512_or_si512(_mm512_and_si512(w2, m4),
                            _mm512_and_si512(_mm512_srli_epi32(w0, 2), m30));
    mn[0] = _mm512_and_si512(w1, m6);
    mn[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w2, 4), m4),
                            _mm512_and_si512(_mm512_srli_epi32(w1, 2), m30));
    __m512i is = _mm512_setzero_si512(), ms = _mm512_setzero_si512();
    const uint8_t *q = t + 256;
    UNROLL
    for (int c = 0; c < 4; c++) {
        __m512i lo = _mm512_setzero_si512(), hi = lo;
        UNROLL
        for (int j = 0; j < 8; j++) {
            __m512i v = _mm512_loadu_si512(q + 64 * (8 * c + j));
            lo = dpbusd_bcst(lo, _mm512_and_si512(v, m4), x->qs + 64 * c + 4 * j, vnni);
            hi = dpbusd_bcst(hi, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4),
                             x->qs + 64 * c + 32 + 4 * j, vnni);
        }
        is = _mm512_add_epi32(is, _mm512_mullo_epi32(lo, k4_byte(sc[c >> 1], 2 * (c & 1))));
        is = _mm512_add_epi32(is, _mm512_mullo_epi32(hi, k4_byte(sc[c >> 1], 2 * (c & 1) + 1)));
        ms = dpwssd(ms, k4_pair(mn[c >> 1], 2 * (c & 1)), bcst32(x->bs + 2 * c), vnni);
    }
    *isum = is, *msum = ms;
}

INLINE void rp_gemv_k4(int64_t cols, const void *tile, const void *xp, float *y,
                       const int vnni, const int pf)
{
    const uint8_t *t = tile;
    const rp_kxblock *x = xp;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < cols / QK_K; s++, t += RP_K4_SB) {
        if (pf) {
            UNROLL
            for (int l = 0; l < RP_K4_SB; l += 64)
                _mm_prefetch((const char *)t + RP_PF + l, _MM_HINT_T0);
        }
        __m512i is, ms;
        rp_k4_block(t, x + s, &is, &ms, vnni);
        const __m512 dx = _mm512_set1_ps(x[s].d);
        __m512 d = _mm512_mul_ps(_mm512_cvtph_ps(load256(t)), dx);
        __m512 dm = _mm512_mul_ps(_mm512_cvtph_ps(load256(t + 32)), dx);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), d, acc);
        acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms), dm, acc);
    }
    _mm512_storeu_ps(y, acc);
}

#define RP_GEMV_K4(name, vnni)                                                  \
    static void name(int64_t cols, const void *t, const void *xp, float *y)     \
    {                                                                           \
        rp_gemv_k4(cols, t, xp, y, vnni, 0);                                    \
    }                                                                           \
    static void name##_pf(int64_t cols, const void *t, const void *xp, float *y) \
    {                                                                           \
        rp_gemv_k4(cols, t, xp, y, vnni, 1);                                    \
    }
RP_GEMV_K4(rp_gemv_q4_K_vnni, 1)
RP_GEMV_K4(rp_gemv_q4_K_plain, 0)

K_ROWS(rp_rows_q4_K_vnni, dec_rp_q4_K, 8, 1, 1)
K_ROWS(rp_rows_q4_K_plain, dec_rp_q4_K, 8, 1, 0)
GEMM(g_rp_q4_K_vnni, pack_q8_K, rp_rows_q4_K_vnni, xbytes_k, work_k8)
GEMM(g_rp_q4_K_plain, pack_q8_K, rp_rows_q4_K_plain, xbytes_k, work_k8)
static const cm_repack rp_q4_K_vnni = {rp_pack_q4_K, rp_kx_bytes, rp_kx_pack, rp_gemv_q4_K_vnni,
                                       rp_gemv_q4_K_vnni_pf, &g_rp_q4_K_vnni};
static const cm_repack rp_q4_K_plain = {rp_pack_q4_K, rp_kx_bytes, rp_kx_pack,
                                        rp_gemv_q4_K_plain, rp_gemv_q4_K_plain_pf,
                                        &g_rp_q4_K_plain};

/* ---- repacked q6_K tiles (gemm_decode.h's layout) ------------------------- */

/* Byte b of every dword, sign-extended (a row's s8 sub-block scale). */
INLINE __m512i k6_byte(__m512i v, const int b)
{
    return _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * b), 24);
}

/* One super-block of a q6_K tile: the 16 rows' sums of scale * level . x
 * (levels 0..63, *isum) and of scale * bsum (the -32 offset's term, *msum). */
INLINE void rp_k6_block(const uint8_t *t, const rp_k6xblock *x, __m512i *isum, __m512i *msum,
                        const int vnni)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const uint8_t *ql = t + RP_K6_QL, *qh = t + RP_K6_QH;
    __m512i sc[4], is = _mm512_setzero_si512(), ms = _mm512_setzero_si512();
    UNROLL
    for (int k = 0; k < 4; k++) {
        sc[k] = _mm512_loadu_si512(t + 64 * k);
        __m512i lo = _mm512_srai_epi16(_mm512_slli_epi16(sc[k], 8), 8); /* bytes 0, 2 */
        ms = dpwssd(ms, lo, bcst32(x->bs + 4 * k), vnni);
        ms = dpwssd(ms, _mm512_srai_epi16(sc[k], 8), bcst32(x->bs + 4 * k + 2), vnni);
    }
    UNROLL
    for (int c = 0; c < 2; c++) {
        UNROLL
        for (int h = 0; h < 2; h++) { /* g = 4h..4h+3: sub-blocks 8c + 2q + h */
            __m512i sq[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(),
                             _mm512_setzero_si512(), _mm512_setzero_si512()};
            UNROLL
            for (int g = 4 * h; g < 4 * h + 4; g++) {
                const __m512i a = _mm512_loadu_si512(ql + 64 * (16 * c + g));
                const __m512i b = _mm512_loadu_si512(ql + 64 * (16 * c + 8 + g));
                const __m512i hb = _mm512_loadu_si512(qh + 64 * (8 * c + g));
                const int8_t *xq = x->qs + 128 * c + 4 * g;
                sq[0] = dpbusd_bcst(sq[0], _mm512_ternarylogic_epi32(_mm512_and_si512(a, m4),
                                    _mm512_slli_epi16(hb, 4), m30, 0xF8), xq, vnni);
                sq[1] = dpbusd_bcst(sq[1], _mm512_ternarylogic_epi32(_mm512_and_si512(b, m4),
                                    _mm512_slli_epi16(hb, 2), m30, 0xF8), xq + 32, vnni);
                sq[2] = dpbusd_bcst(sq[2], _mm512_ternarylogic_epi32(
                                    _mm512_and_si512(_mm512_srli_epi16(a, 4), m4), hb, m30, 0xF8),
                                    xq + 64, vnni);
                sq[3] = dpbusd_bcst(sq[3], _mm512_ternarylogic_epi32(
                                    _mm512_and_si512(_mm512_srli_epi16(b, 4), m4),
                                    _mm512_srli_epi16(hb, 2), m30, 0xF8), xq + 96, vnni);
            }
            UNROLL
            for (int q = 0; q < 4; q++) {
                const int sub = 8 * c + 2 * q + h;
                is = _mm512_add_epi32(is, _mm512_mullo_epi32(sq[q], k6_byte(sc[sub / 4], sub % 4)));
            }
        }
    }
    *isum = is, *msum = ms;
}

INLINE void rp_gemv_k6(int64_t cols, const void *tile, const void *xp, float *y,
                       const int vnni, const int pf)
{
    const uint8_t *t = tile;
    const rp_k6xblock *x = xp;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < cols / QK_K; s++, t += RP_K6_SB) {
        if (pf) {
            UNROLL
            for (int l = 0; l < RP_K6_SB; l += 64)
                _mm_prefetch((const char *)t + RP_PF + l, _MM_HINT_T0);
        }
        __m512i is, ms;
        rp_k6_block(t, x + s, &is, &ms, vnni);
        is = _mm512_sub_epi32(is, _mm512_slli_epi32(ms, 5));
        const __m512 d = _mm512_mul_ps(_mm512_cvtph_ps(load256(t + RP_K6_D)),
                                       _mm512_set1_ps(x[s].d));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), d, acc);
    }
    _mm512_storeu_ps(y, acc);
}

#define RP_GEMV_K6(name, vnni)                                                  \
    static void name(int64_t cols, const void *t, const void *xp, float *y)     \
    {                                                                           \
        rp_gemv_k6(cols, t, xp, y, vnni, 0);                                    \
    }                                                                           \
    static void name##_pf(int64_t cols, const void *t, const void *xp, float *y) \
    {                                                                           \
        rp_gemv_k6(cols, t, xp, y, vnni, 1);                                    \
    }
RP_GEMV_K6(rp_gemv_q6_K_vnni, 1)
RP_GEMV_K6(rp_gemv_q6_K_plain, 0)

K_ROWS(rp_rows_q6_K_vnni, dec_rp_q6_K, 16, 0, 1)
K_ROWS(rp_rows_q6_K_plain, dec_rp_q6_K, 16, 0, 0)
GEMM(g_rp_q6_K_vnni, pack_q8_K, rp_rows_q6_K_vnni, xbytes_k, work_k16)
GEMM(g_rp_q6_K_plain, pack_q8_K, rp_rows_q6_K_plain, xbytes_k, work_k16)
static const cm_repack rp_q6_K_vnni = {rp_pack_q6_K, rp_k6x_bytes, rp_k6x_pack, rp_gemv_q6_K_vnni,
                                       rp_gemv_q6_K_vnni_pf, &g_rp_q6_K_vnni};
static const cm_repack rp_q6_K_plain = {rp_pack_q6_K, rp_k6x_bytes, rp_k6x_pack,
                                        rp_gemv_q6_K_plain, rp_gemv_q6_K_plain_pf,
                                        &g_rp_q6_K_plain};

void cm_gemm_avx512_install(struct cm_kernels *k, int vnni)
{
#define PICK(T, g) k->gemm[CM_TYPE_##T] = vnni ? &g##_vnni : &g##_plain
    if (vnni) /* q8_0 levels reach +-128: maddubs pairs could saturate */
        k->gemm[CM_TYPE_Q8_0] = &g_q8_0;
    PICK(Q4_0, g_q4_0);
    PICK(Q5_0, g_q5_0);
    PICK(Q4_1, g_q4_1);
    PICK(Q5_1, g_q5_1);
    PICK(Q4_K, g_q4_K);
    PICK(Q5_K, g_q5_K);
    PICK(Q6_K, g_q6_K);
    PICK(Q3_K, g_q3_K);
    PICK(Q2_K, g_q2_K);
#undef PICK
    k->gemm[CM_TYPE_F32] = &g_f32;
    k->gemm[CM_TYPE_F16] = &g_f16;
    k->repack[CM_TYPE_Q4_0] = vnni ? &rp_q4_0_vnni : &rp_q4_0_plain;
    k->repack[CM_TYPE_Q5_0] = vnni ? &rp_q5_0_vnni : &rp_q5_0_plain; /* levels <= 31 */
    k->repack[CM_TYPE_Q4_K] = vnni ? &rp_q4_K_vnni : &rp_q4_K_plain;
    k->repack[CM_TYPE_Q6_K] = vnni ? &rp_q6_K_vnni : &rp_q6_K_plain; /* levels <= 63 */
    /* q8_0 stored as w + 128: this file's maddubs pairs would saturate;
     * without VNNI (Skylake-X) q8_0 keeps its per-row kernels, not the
     * AVX2 table's repacked ones, which were measured on Zen 5 only */
    k->repack[CM_TYPE_Q8_0] = vnni ? &rp_q8_0_vnni : NULL;
}

#else /* built without the AVX-512 flags */

void cm_gemm_avx512_install(struct cm_kernels *k, int vnni)
{
    (void)k;
    (void)vnni;
}

#endif
