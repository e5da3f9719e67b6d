/* kernels.h - the CPU backend's dispatch table.
 *
 * One struct of function pointers indexed by type id: for a weight type T,
 * vec_dot[T] dots a row of T with a row already in T's dot type; for an
 * activation type A (a dot type), quantize[A] converts floats to A.  The
 * table starts out holding the scalar references; cm_cpu_init() overlays the
 * entries an ISA file provides.  cm_kern is the only mutable global in the
 * project and is written only by cm_cpu_init(), before any matmul runs.
 *
 * ISA files (kernels_avx2*.c, kernels_avx512*.c, kernels_neon*.c) are
 * compiled with their own target flags and export only an install function;
 * generic code never includes immintrin.h or tests __AVX2__. */
#ifndef CM_KERNELS_H
#define CM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "quant/quant.h"

typedef float (*cm_vec_dot_fn)(int64_t n, const void *w, const void *x);
typedef void (*cm_quantize_fn)(const float *x, void *y, int64_t n);
typedef void (*cm_dequant_fn)(const void *x, float *y, int64_t n);
/* out[i] += a * row[i], i < n; row of the table index's type */
typedef void (*cm_axpy_fn)(int64_t n, float a, const void *row, float *out);
/* Attention over m rows `stride` bytes apart (see cm_dot_rows and
 * cm_sum_rows in cpu.h) */
typedef void (*cm_dot_rows_fn)(int64_t n, const void *rows, size_t stride, int64_t m,
                               const void *x, float *out);
typedef void (*cm_sum_rows_fn)(int64_t n, const void *rows, size_t stride, int64_t m,
                               const float *p, float *out);
/* The same for two queries (two heads of one KV head), each row read once
 * for both; each output exactly what the one-query kernel gives
 * (cm_dot_rows_pair, cm_sum_rows_pair in cpu.h). */
typedef void (*cm_dot_rows_pair_fn)(int64_t n, const void *rows, size_t stride, int64_t m,
                                    const float *xa, const float *xb, float *outa, float *outb);
typedef void (*cm_sum_rows_pair_fn)(int64_t n, const void *rows, size_t stride, int64_t m,
                                    const float *pa, const float *pb, float *outa, float *outb);

/* A batched product (prompt processing): weight rows r0 <= r < r1 of a
 * matrix against n_tok activation rows, y[t * ldy + r] = dot(row r, x_t).
 * The ISA decodes each tile of weight rows once into `work` (per thread)
 * and reuses it for every token, so the decode cost is amortized and the
 * inner loop is pure multiply-accumulate.
 *
 * Activations reach it in an ISA-private layout: cm_matmul quantizes each
 * row to the weight's dot type (the same quantizer as the per-token path,
 * so the integer block sums are the same), then calls pack() on groups of
 * `group` tokens; rows() reads the packed groups. */
typedef struct {
    int group;                                      /* tokens per pack() */
    size_t (*pack_bytes)(int64_t cols);             /* per group; 0: x used as is */
    size_t (*work_bytes)(int64_t cols);             /* per thread */
    /* xq: nt <= group rows of dot-type activations, xrow bytes apart */
    void (*pack)(int64_t cols, const void *xq, size_t xrow, int nt, void *dst);
    /* x: the packed groups (or, when pack_bytes is 0, the float rows) */
    void (*rows)(int64_t cols, const void *w, size_t wrow, int64_t r0, int64_t r1,
                 const void *x, int64_t n_tok, float *y, int64_t ldy, void *work);
    /* optional, for weights kept decoded (cm_cpu_decode_acquire): decode()
     * writes the tiles of rows [r0, r1) (r0 a multiple of 16) to dst,
     * work_bytes(cols) each, and decoded() is rows() on a matrix of `rows`
     * rows whose every tile is there.  A few tokens a step (a server's
     * slots) spend as long decoding each tile as multiplying it. */
    void (*decode)(int64_t cols, const void *w, size_t wrow, int64_t r0, int64_t r1, void *dst);
    void (*decoded)(int64_t cols, const void *tiles, int64_t r0, int64_t r1, int64_t rows,
                    const void *x, int64_t n_tok, float *y, int64_t ldy);
} cm_gemm;

/* A matrix-vector product (generation) whose activation row is rearranged
 * once into an ISA-private layout that suits the weight format: cm_matmul
 * quantizes x to the weight's dot type, calls pack() once, then dot() per
 * weight row on the packed bytes.  Worth it where a format's natural
 * layout would otherwise be shuffled again for every row (q4_0 keeps
 * elements j and j+16 in one byte). */
typedef struct {
    size_t (*pack_bytes)(int64_t cols);
    void (*pack)(int64_t cols, const void *xq, void *dst);
    cm_vec_dot_fn dot; /* dot(cols, weight row, packed x) */
    /* optional: out[r] = dot of rows w + r * wrow, r < 4, sharing the
     * activation loads and one reduction (narrow rows are mostly per-row
     * overhead) */
    void (*dot4)(int64_t cols, const void *w, size_t wrow, const void *x, float *out);
} cm_gemv;

/* Weights repacked once, when a context is created (cm_cpu_repack_acquire),
 * into tiles of 16 rows that the ISA streams without shuffles: per block,
 * one 64-byte vector holds the same 4 quant bytes of all 16 rows (an int32
 * lane per row), so vpdpbusd (AVX-512) or vpmaddubsw (AVX2, half a vector
 * at a time) against an activation dword broadcast gives 16 rows' partial
 * sums at once, no horizontal sums; the rows' scales sit next to their
 * quants, so a tile is one forward stream.  A tile takes exactly the bytes
 * of its 16 rows in the file (16 * row bytes), so tile t sits where row 16t
 * was.  Layouts (q4_0, q5_0, q8_0, q4_K, q6_K): gemm_decode.h.  Integer block
 * sums are the scalar reference's (offsets folded into one per-block
 * activation term); only float summation order differs. */
typedef struct {
    /* 16 rows of w, wrow bytes apart (cols / 32 blocks) -> 16 * wrow bytes */
    void (*pack)(int64_t cols, const void *w, size_t wrow, void *dst);
    /* the activation (a row of the dot type) rearranged for gemv */
    size_t (*x_bytes)(int64_t cols);
    void (*x_pack)(int64_t cols, const void *xq, void *dst);
    /* y[r], r < 16: the tile's rows against one packed activation */
    void (*gemv)(int64_t cols, const void *tile, const void *xp, float *y);
    /* the same with software prefetch ahead in the tiles (cm_cpu_init
     * picks it where it measured faster: AMD Zen) */
    void (*gemv_pf)(int64_t cols, const void *tile, const void *xp, float *y);
    /* batched products on the tiles (rows r0, r1 multiples of 16, w and
     * wrow as for the unpacked matrix) */
    const cm_gemm *gemm;
} cm_repack;

/* x[i] = exp(scale*x[i] - max) / sum over the n values (attention
 * weights); with round_f16, each result rounded to f16 precision, as
 * llama.cpp rounds the weights that multiply an f16 value cache. */
typedef void (*cm_softmax_fn)(float *x, int64_t n, float scale, int round_f16);

/* a[i] = silu(a[i]) * b[i], silu(x) = x / (1 + e^-x): the SwiGLU gate. */
typedef void (*cm_swiglu_fn)(float *a, const float *b, int64_t n);

/* out[i] = x[i] * s * w[i], s = 1 / sqrt(mean(x^2) + eps), the mean of
 * squares summed in double (out may be x). */
typedef void (*cm_rmsnorm_fn)(float *out, const float *x, const float *w, int64_t n, float eps);

/* The first i < n holding the largest x[i] when every x is finite (a
 * greedy sampler's token), else -1 (the caller sanitizes the row). */
typedef int64_t (*cm_argmax_fn)(const float *x, int64_t n);

/* x[i] += y[i]: the residual additions. */
typedef void (*cm_add_fn)(float *x, const float *y, int64_t n);

/* The sum of e^(x[i] - shift), i < n, in double (the exponentials may be
 * float): a log-sum-exp's sum, for perplexity. */
typedef double (*cm_exp_sum_fn)(const float *x, int64_t n, float shift);

/* The KL divergence's sums over a vocabulary, one pass: a model's logits x
 * (shifted by their maximum mx) against a base's log-probabilities b (f16
 * when b_f16, else f32; shifted by mb, meant to be their maximum):
 *   out[0] = sum e^(x - mx), exactly what exp_sum(x, n, mx) returns,
 *   out[1] = sum e^(b - mb),
 *   out[2] = sum e^(b - mb) * ((b - mb) - (x - mx)),
 *   out[3] = max (b - mb) (> 0: mb was not the maximum).
 * Then KLD = out[2] / out[1] + log out[0] - log out[1], within a few 1e-7
 * of the divergence in double with float exponentials (sums in double):
 * less than rounding a base's log-probabilities to f16 moves it by.
 * The differences of shifted values are small where the probability is,
 * so no large terms cancel. */
typedef void (*cm_kld_sums_fn)(const float *x, const void *b, int b_f16, int64_t n, float mx,
                               float mb, double out[4]);

/* Prompt attention on tiles (see cm_attn_qk / cm_attn_pv in cpu.h): nk <= 16
 * cached rows against nq queries, so a tile's rows are decoded once for
 * every query that sees them. */
typedef void (*cm_attn_qk_fn)(int64_t d, const void *k, size_t kstride, int nk, const float *q,
                              int64_t nq, float *s, size_t ld);
typedef void (*cm_attn_pv_fn)(int64_t d, const void *v, size_t vstride, int nk, const float *p,
                              size_t ld, int64_t nq, float *o);

struct cm_kernels {
    const char *isa; /* "scalar", "avx2", "avx512", "neon" */
    cm_vec_dot_fn vec_dot[CM_TYPE_COUNT];
    cm_quantize_fn quantize[CM_TYPE_COUNT];
    /* The scalar table fills axpy for F32/F16/BF16/Q8_0 and to_float with
     * the dequantizers of every type; gemm entries start NULL, meaning "no
     * batched kernel: cm_matmul loops over vec_dot", so an ISA file sets
     * only what it speeds up. */
    cm_axpy_fn axpy[CM_TYPE_COUNT];
    cm_dequant_fn to_float[CM_TYPE_COUNT];
    const cm_gemm *gemm[CM_TYPE_COUNT];
    const cm_gemv *gemv[CM_TYPE_COUNT]; /* NULL: vec_dot on the dot-type row */
    const cm_repack *repack[CM_TYPE_COUNT]; /* NULL: weights used as in the file */
    /* NULL: cm_dot_rows / cm_sum_rows loop over vec_dot / axpy */
    cm_dot_rows_fn dot_rows[CM_TYPE_COUNT];
    cm_sum_rows_fn sum_rows[CM_TYPE_COUNT];
    /* NULL: cm_dot_rows_pair / cm_sum_rows_pair call the above per query */
    cm_dot_rows_pair_fn dot_rows_pair[CM_TYPE_COUNT];
    cm_sum_rows_pair_fn sum_rows_pair[CM_TYPE_COUNT];
    cm_softmax_fn softmax;
    cm_swiglu_fn swiglu;
    cm_exp_sum_fn exp_sum;
    cm_kld_sums_fn kld_sums;
    cm_rmsnorm_fn rmsnorm;
    cm_add_fn add;
    cm_argmax_fn argmax;
    cm_attn_qk_fn attn_qk[CM_TYPE_COUNT]; /* NULL: cm_dot_rows per query */
    cm_attn_pv_fn attn_pv[CM_TYPE_COUNT]; /* NULL: cm_axpy_f per query and row */
};

extern struct cm_kernels cm_kern;

/* Fill k with the scalar references (every supported type). */
void cm_kernels_scalar(struct cm_kernels *k);

/* Overlay the entries this ISA implements.  Return 0, or -1 when the file
 * was built without its target flags (then k is untouched).  The caller
 * must have checked that the CPU runs the ISA. */
int cm_kernels_avx2(struct cm_kernels *k);
/* vnni: the CPU has AVX512_VNNI (else vpdpbusd is emulated) */
int cm_kernels_avx512(struct cm_kernels *k, int vnni);
/* dotprod: the CPU has the Armv8.2 SDOT instructions (HWCAP_ASIMDDP) */
int cm_kernels_neon(struct cm_kernels *k, int dotprod);

/* AArch64 feature detection (cpu_arm.c): 0 with *neon and *dotprod filled
 * in, or -1 (both 0) on other architectures. */
int cm_arm_features(int *neon, int *dotprod);

/* Pieces of the ISA files split out by format family (same target flags as
 * their parent; called by the parent's installer). */
void cm_gemm_avx2_install(struct cm_kernels *k);
void cm_gemm_avx512_install(struct cm_kernels *k, int vnni);
void cm_gemm_neon_install(struct cm_kernels *k, int dotprod);

/* OpenBLAS sgemm as a cm_gemm for F32/F16 weights (matmul_blas.c): NULL
 * for other types or in builds without CM_HAVE_OPENBLAS.  min_tok: the
 * batch size from which it measured faster than the table's own gemm. */
const cm_gemm *cm_blas_gemm(enum cm_type type, int64_t *min_tok);

#endif
