/* cpu.h - the CPU backend: matrix products over block-quantized weights.
 *
 * Generic code calls only these functions; which ISA runs underneath
 * (scalar, AVX2, AVX-512/VNNI, NEON) is chosen once by cm_cpu_init() and
 * recorded in the kernel dispatch table, the one piece of global state. */
#ifndef CM_CPU_H
#define CM_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "src/tensor.h"

/* Picks kernels from the CPU's features, or from CODEMOE_ISA
 * (scalar|avx2|avx512|neon).  Returns 0, or -1 if CODEMOE_ISA names an ISA
 * this CPU or build cannot run (the message goes to err_msg). */
int cm_cpu_init(char *err_msg, size_t err_len);
const char *cm_cpu_isa(void);

/* Scratch bytes cm_matmul needs for n_tok activation rows against w. */
size_t cm_matmul_scratch_bytes(const cm_tensor *w, int64_t n_tok);

/* y[t*rows + r] = dot(row r of w, x[t*cols ...]) for t < n_tok, where
 * cols = w->ne[0] and rows = w->ne[1] (only the first matrix of w).
 * Threads over rows with OpenMP.  scratch holds at least
 * cm_matmul_scratch_bytes(w, n_tok) bytes, aligned to 64. */
void cm_matmul(const cm_tensor *w, const float *x, int64_t n_tok, float *y,
               void *scratch);

/* Dequantizes row `row` of w (ne[0] floats) into out: embedding lookups. */
void cm_tensor_row(const cm_tensor *w, int64_t row, float *out);

#endif
