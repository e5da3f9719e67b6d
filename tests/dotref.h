/* dotref.h - what the kernel tests share: references for products of
 * quantized rows (tests/test_quant.c, tests/test_repack.c).  Included
 * once per test program. */
#ifndef CM_TESTS_DOTREF_H
#define CM_TESTS_DOTREF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

/* Zeroes the levels of each block (keeping scales), so dequantizing gives
 * the per-element offset (min) term; used to size tolerances. */
static void zero_levels(enum cm_type t, void *w, int64_t n)
{
    const cm_type_info *ti = cm_type_get(t);
    for (int64_t b = 0; b < n / ti->block_elems; b++) {
        uint8_t *p = (uint8_t *)w + b * ti->block_bytes;
        switch (t) {
        case CM_TYPE_Q4_0: case CM_TYPE_Q8_0: memset(p + 2, 0, ti->block_bytes - 2); break;
        case CM_TYPE_Q5_0: memset(p + 2, 0, 20); break;
        case CM_TYPE_Q4_1: case CM_TYPE_Q5_1: case CM_TYPE_Q8_1: memset(p + 4, 0, ti->block_bytes - 4); break;
        case CM_TYPE_Q2_K: memset(p + 16, 0, 64); break;
        case CM_TYPE_Q3_K: memset(p, 0, 96); break;
        case CM_TYPE_Q4_K: case CM_TYPE_Q5_K: memset(p + 16, 0, ti->block_bytes - 16); break;
        case CM_TYPE_Q6_K: memset(p, 0, 192); break;
        case CM_TYPE_Q8_K: memset(p + 4, 0, 256); break;
        default: memset(p, 0, ti->block_bytes); break;
        }
    }
}

/* Per-token references for up to max_tok activation rows: ref[t*rows+r]
 * from cm_vec_dot_ref on scalar-quantized activations, tol the same
 * summation-error bound as test_quant's check_dot:
 * 4e-7 (8 + blocks) sum(|w| + |offset|) |x|. */
static void batched_refs(enum cm_type t, const void *w, int64_t cols, int64_t rows,
                         const float *x, int64_t max_tok, double *ref, double *tol)
{
    enum cm_type dt = cm_type_get(t)->dot_type;
    size_t rb = cm_row_bytes(t, cols);
    void *xq = malloc(cm_row_bytes(dt, cols)), *w0 = malloc(rb);
    float *xd = malloc(cols * sizeof(float)), *wd = malloc(cols * sizeof(float));
    float *wmag = malloc(rows * cols * sizeof(float)); /* |w| + |offset| per element */
    const int64_t be = cm_type_get(t)->block_elems;
    double terms = be == 1 ? cols / 8.0 : (double)(cols / be);
    for (int64_t r = 0; r < rows; r++) { /* as dot_magnitude, once per row */
        memcpy(w0, (const char *)w + r * rb, rb);
        zero_levels(t, w0, cols);
        cm_dequantize_row(t, (const char *)w + r * rb, wd, cols);
        cm_dequantize_row(t, w0, wmag + r * cols, cols);
        for (int64_t i = 0; i < cols; i++)
            wmag[r * cols + i] = fabsf(wmag[r * cols + i]) + fabsf(wd[i]);
    }
    for (int64_t tk = 0; tk < max_tok; tk++) {
        cm_quantize_row(dt, x + tk * cols, xq, cols);
        cm_dequantize_row(dt, xq, xd, cols);
        for (int64_t r = 0; r < rows; r++) {
            double mag = 0;
            for (int64_t i = 0; i < cols; i++)
                mag += (double)wmag[r * cols + i] * fabsf(xd[i]);
            ref[tk * rows + r] = cm_vec_dot_ref(t, cols, (const char *)w + r * rb, xq);
            tol[tk * rows + r] = 4e-7 * (8 + terms) * mag + 1e-37;
        }
    }
    free(xq), free(w0), free(xd), free(wd), free(wmag);
}

#endif
