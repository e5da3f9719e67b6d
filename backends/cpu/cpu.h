/* cpu.h - the CPU backend: matrix products over block-quantized weights.
 *
 * Generic code calls only these functions; which ISA runs underneath
 * (scalar, AVX2, AVX-512/VNNI, NEON) is chosen once by cm_cpu_init() and
 * recorded in the kernel dispatch table, the one piece of global state. */
#ifndef CM_CPU_H
#define CM_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "engine/tensor.h"

/* Picks kernels from the CPU's features, or from CODEMOE_ISA
 * (scalar|avx2|avx512|neon).  Returns 0, or -1 if CODEMOE_ISA names an ISA
 * this CPU or build cannot run (the message goes to err_msg). */
int cm_cpu_init(char *err_msg, size_t err_len);
const char *cm_cpu_isa(void);

/* Scratch bytes cm_matmul needs for up to n_tok activation rows against w.
 * Batched products keep a decode tile per thread, so the size depends on
 * omp_get_max_threads() at the time of the call: size scratch after
 * choosing the thread count (as cm_ctx_new does). */
size_t cm_matmul_scratch_bytes(const cm_tensor *w, int64_t n_tok);

/* y[t*rows + r] = dot(row r of w, x[t*cols ...]) for t < n_tok, where
 * cols = w->ne[0] and rows = w->ne[1] (only the first matrix of w).
 * Threads over rows with OpenMP.  scratch holds at least
 * cm_matmul_scratch_bytes(w, n_tok) bytes, aligned to 64.
 *
 * One token is a matrix-vector product over the per-token dot kernels.  A
 * batch (n_tok >= 4 where the ISA has a batched kernel for the type) decodes
 * each tile of weight rows once and reuses it for every token; the integer
 * block sums are the same as the per-token path's, only float summation
 * order differs.  With OpenBLAS, large batches of F32/F16 weights go to
 * sgemm. */
void cm_matmul(const cm_tensor *w, const float *x, int64_t n_tok, float *y,
               void *scratch);

/* cm_matmul of the same x with each of nw weights (ys[i] for ws[i]), e.g.
 * the query, key and value projections.  Where the weights share a batched
 * kernel, x is quantized and packed once and one parallel region covers
 * all their rows; otherwise it is nw calls of cm_matmul.  scratch: the
 * largest cm_matmul_scratch_bytes of the weights. */
void cm_matmul_n(const cm_tensor *const *ws, int nw, const float *x, int64_t n_tok,
                 float *const *ys, void *scratch);

/* Weights repacked for the ISA's kernels (kernels.h, cm_repack): every
 * tensor of ws that the table repacks (its type, whole 16-row tiles, host
 * bytes inside the read-only file mapping [map, map + map_bytes)) is
 * copied once into the interleaved layout (2-D weights here, each expert
 * matrix of a 3-D one at its first use), and the mapping's pages of it
 * are dropped (MADV_DONTNEED: they re-read from the file if anything
 * touches them again), so the resident size stays that of the weights.
 * cm_matmul and cm_matmul_n then use the copy for those tensors (or any
 * view of whole 16-row tiles of them, e.g. one expert's matrix).  Counted
 * per key (the model): the first acquire repacks, the last release frees.
 * CODEMOE_REPACK=0 turns it off; nothing is repacked when the copies
 * would take more than half the machine's memory. */
int cm_cpu_repack_acquire(const void *key, const cm_tensor *const *ws, int nw,
                          const void *map, size_t map_bytes); /* 0: out of memory, nothing held */
void cm_cpu_repack_release(const void *key);
/* The experts of key's 3-D weights go back to the mapping (their copies
 * freed, none made later): where an expert cache governs which experts
 * are resident through the mapping's pages (engine/expert_cache.c). */
void cm_cpu_repack_drop_experts(const void *key);
/* Bytes of weights repacked now (all keys). */
size_t cm_cpu_repacked_bytes(void);
/* Weights kept decoded for the batched kernels: each 2-D weight of ws and
 * later whose table kernel can (cm_gemm.decode) and which is not repacked
 * gets its tiles decoded once, those of ws now (in that order), those of
 * later at their first batched product, while the decoded copies fit in
 * budget bytes; cm_matmul's batched products then skip decoding them.
 * For contexts that step several sequences a few tokens at a time, where
 * decoding a tile costs as much as its multiplies; decoded tiles take
 * about twice the K-quants' bytes.  Counted per key like the repacked
 * copies; 0: out of memory, nothing held. */
int cm_cpu_decode_acquire(const void *key, const cm_tensor *const *ws, int nw,
                          const cm_tensor *later, int nl, size_t budget);
void cm_cpu_decode_release(const void *key);
size_t cm_cpu_decoded_bytes(void);
/* Whether the 2-D weight w is read from a repacked copy. */
int cm_cpu_is_repacked(const cm_tensor *w);
/* A table read a few rows at a time (token embeddings) out of the file
 * mapping: cm_cpu_table_own_vma gives its whole pages a VMA of their own
 * (so faults on it map no neighbour's pages, nor it theirs), and
 * cm_cpu_table_unmap drops them from this process (they re-read from the
 * page cache on the next lookup). */
void cm_cpu_table_own_vma(const cm_tensor *t);
void cm_cpu_table_unmap(const cm_tensor *t);

/* ---- attention helpers (KV cache rows) ---------------------------------- */

/* dot(row, x) for a row of F32, F16 or BF16; any n. */
float cm_dot_f(enum cm_type type, int64_t n, const void *row, const float *x);

/* out[i] += a * row[i] for i < n; row F32, F16, BF16, or Q8_0 (n a multiple
 * of 32). */
void cm_axpy_f(enum cm_type type, int64_t n, float a, const void *row, float *out);

/* The same over m rows `stride` bytes apart (the positions of a KV cache):
 * out[j] = dot(row j, x) for F32/F16/BF16 rows, or, for Q8_0 rows, with x
 * already a Q8_0 row (as cm_vec_dot).  One call per head, so the ISA can
 * keep x in registers across rows. */
void cm_dot_rows(enum cm_type type, int64_t n, const void *rows, size_t stride, int64_t m,
                 const void *x, float *out);

/* out[i] = sum over j < m of p[j] * row_j[i], i < n (out overwritten; rows
 * as for cm_axpy_f): the attention-weighted sum of cached values, summed
 * in registers rather than through out once per row. */
void cm_sum_rows(enum cm_type type, int64_t n, const void *rows, size_t stride, int64_t m,
                 const float *p, float *out);

/* cm_dot_rows and cm_sum_rows for two queries of float rows (two heads
 * sharing a KV head: F32/F16/BF16 rows), each row read once for both where
 * the ISA has a kernel for it; every output exactly the one-query
 * function's.  cm_rows_pair_fast: whether it has (else the pair costs two
 * passes, as two calls). */
void cm_dot_rows_pair(enum cm_type type, int64_t n, const void *rows, size_t stride, int64_t m,
                      const float *xa, const float *xb, float *outa, float *outb);
void cm_sum_rows_pair(enum cm_type type, int64_t n, const void *rows, size_t stride, int64_t m,
                      const float *pa, const float *pb, float *outa, float *outb);
int cm_rows_pair_fast(enum cm_type type);

/* Attention for a prompt, one tile of nk <= 16 cached rows (keys or values
 * of one KV head, `stride` bytes apart, type F32/F16/BF16) against nq
 * queries:
 *   cm_attn_qk: s[i * ld + j] = dot(q_i, k_j), q_i = q + i * d;
 *   cm_attn_pv: o_i += sum over j < nk of p[i * ld + j] * v_j, o_i = o + i * d. */
void cm_attn_qk(enum cm_type type, int64_t d, const void *k, size_t kstride, int nk,
                const float *q, int64_t nq, float *s, size_t ld);
void cm_attn_pv(enum cm_type type, int64_t d, const void *v, size_t vstride, int nk,
                const float *p, size_t ld, int64_t nq, float *o);

/* The first index of the largest of n floats if every one is finite,
 * else -1. */
int64_t cm_argmax_finite(const float *x, int64_t n);

/* x = softmax(scale * x) over n values, rounded to f16 precision when
 * round_f16 (the weights of an f16 value cache). */
void cm_attn_softmax(float *x, int64_t n, float scale, int round_f16);

/* a[i] = silu(a[i]) * b[i] for i < n: the gated feed-forward's middle. */
void cm_swiglu(float *a, const float *b, int64_t n);
/* out = x * w / sqrt(mean(x^2) + eps) (out may be x); x += y */
void cm_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
void cm_add(float *x, const float *y, size_t n);

/* sum of e^(x[i] - shift), i < n, summed in double (kernels.h) */
double cm_exp_sum(const float *x, int64_t n, float shift);
/* the KL divergence's sums of logits x against base log-probabilities b
 * (kernels.h, cm_kld_sums_fn) */
void cm_kld_sums(const float *x, const void *b, int b_f16, int64_t n, float mx, float mb,
                 double out[4]);

/* n floats to f16 (round to nearest even): KV cache rows. */
void cm_row_to_f16(const float *x, uint16_t *y, int64_t n);

/* n values of an F32/F16/BF16 row to floats. */
void cm_row_to_float(enum cm_type type, const void *row, float *out, int64_t n);

/* n floats to n/32 Q8_0 blocks (n a multiple of 32): a Q8_0 KV cache row,
 * or a query quantized to dot with one. */
void cm_quantize_row_q8_0(const float *x, void *y, int64_t n);

/* Dot of a row of `type` with xq already in the type's dot type (Q8_0 for
 * Q8_0 rows, floats for F32/F16): the matmul kernels, one row at a time. */
float cm_vec_dot(enum cm_type type, int64_t n, const void *w, const void *xq);

/* Dequantizes row `row` of w (ne[0] floats) into out: embedding lookups. */
void cm_tensor_row(const cm_tensor *w, int64_t row, float *out);

#endif
