/* matmul_blas.c - OpenBLAS sgemm for large batches of F32/F16 weights.
 *
 * Plugged into cm_matmul as one more cm_gemm (see kernels.h), so threading,
 * scratch sizing and the row split stay in cpu.c: each OpenMP thread calls
 * sgemm on its own rows.  OpenBLAS is therefore told to stay single-
 * threaded: its own pool would otherwise spin against OpenMP's for the same
 * two cores.  F16 rows are widened to F32 a tile at a time into the
 * thread's work area (a tile small enough to stay in L2 while sgemm reuses
 * it for every token).
 *
 * Compiled without target flags; in builds without OpenBLAS cm_blas_gemm()
 * returns NULL and nothing else here exists. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "backends/cpu/kernels.h"

#ifdef CM_HAVE_OPENBLAS

#include <cblas.h>

/* F16 rows per converted tile: 64 rows of 4096 floats = 1 MiB */
#define F16_TILE 64

/* Batch sizes from which sgemm beats the per-token dots (the AVX2 table,
 * one thread, 1536 x 576, bench_matmul --sweep on the AMD development
 * machine): F32 57.7 vs 41.6 GFLOP/s at 8 tokens, F16 59 vs 59 at 12 and
 * 67 vs 60 at 16 (F16 pays for widening its tiles).  On an Intel Xeon
 * (Sapphire Rapids class) OpenBLAS 0.3.21 reached only 15-20 GFLOP/s, no
 * better than the dots; where the table has its own float gemm (AVX-512)
 * cpu.c never calls sgemm. */
#define BLAS_MIN_TOK_F32 8
#define BLAS_MIN_TOK_F16 16

static void rows_f32(int64_t cols, const void *w, size_t wrow, int64_t r0, int64_t r1,
                     const void *x, int64_t n_tok, float *y, int64_t ldy, void *work)
{
    (void)work;
    (void)wrow;
    /* y[t][r] = sum_k x[t][k] * w[r][k]: X (n_tok x cols) times W^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_tok, (int)(r1 - r0),
                (int)cols, 1.0f, x, (int)cols, (const float *)w + r0 * cols, (int)cols, 0.0f,
                y + r0, (int)ldy);
}

static void rows_f16(int64_t cols, const void *w, size_t wrow, int64_t r0, int64_t r1,
                     const void *x, int64_t n_tok, float *y, int64_t ldy, void *work)
{
    float *tile = work;
    for (int64_t rt = r0; rt < r1; rt += F16_TILE) {
        int64_t nr = r1 - rt < F16_TILE ? r1 - rt : F16_TILE;
        for (int64_t i = 0; i < nr; i++)
            cm_kern.to_float[CM_TYPE_F16]((const char *)w + (size_t)(rt + i) * wrow,
                                          tile + i * cols, cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_tok, (int)nr, (int)cols,
                    1.0f, x, (int)cols, tile, (int)cols, 0.0f, y + rt, (int)ldy);
    }
}

static size_t work_f32(int64_t cols)
{
    (void)cols;
    return 0;
}

static size_t work_f16(int64_t cols)
{
    return (size_t)F16_TILE * (size_t)cols * sizeof(float);
}

static const cm_gemm blas_f32 = {1, NULL, work_f32, NULL, rows_f32, NULL, NULL};
static const cm_gemm blas_f16 = {1, NULL, work_f16, NULL, rows_f16, NULL, NULL};

const cm_gemm *cm_blas_gemm(enum cm_type type, int64_t *min_tok)
{
    static int single; /* first called from serial code, before any sgemm */
    if (type != CM_TYPE_F32 && type != CM_TYPE_F16)
        return NULL;
    if (!single) {
        openblas_set_num_threads(1);
        single = 1;
    }
    *min_tok = type == CM_TYPE_F32 ? BLAS_MIN_TOK_F32 : BLAS_MIN_TOK_F16;
    return type == CM_TYPE_F32 ? &blas_f32 : &blas_f16;
}

#else

const cm_gemm *cm_blas_gemm(enum cm_type type, int64_t *min_tok)
{
    (void)type;
    *min_tok = 0;
    return NULL;
}

#endif
