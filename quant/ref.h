/* ref.h - per-type scalar reference kernels (internal to quant/ and the CPU
 * backend's scalar table).
 *
 * cm_dequant_T: n elements of T -> floats.
 * cm_quant_T:   n floats -> T blocks (n a multiple of the block size).
 * cm_dot_T:     dot of n elements of weight type T with activations already
 *               in T's dot type (see cm_type_get()->dot_type).
 *
 * The integer arithmetic of each dot is the format's own (per block: an
 * exact integer sum times the product of the two block scales), so fast
 * kernels can reproduce it up to float summation order.  The references
 * sum blocks in double so they serve as ground truth in tests. */
#ifndef CM_QUANT_REF_H
#define CM_QUANT_REF_H

#include <math.h>
#include <stdint.h>

#include "quant/quant.h"

#define CM_REF_TYPES(X) \
    X(f32) X(f16) X(bf16) X(q4_0) X(q4_1) X(q5_0) X(q5_1) X(q8_0) X(q8_1) \
    X(q2_K) X(q3_K) X(q4_K) X(q5_K) X(q6_K) X(q8_K)

#define CM_REF_DECL(t)                                                        \
    void cm_dequant_##t(const void *src, float *dst, int64_t n);              \
    void cm_quant_##t(const float *src, void *dst, int64_t n);                \
    float cm_dot_##t(int64_t n, const void *w, const void *x);
CM_REF_TYPES(CM_REF_DECL)
#undef CM_REF_DECL

/* Round to nearest, ties to even (the default FP mode), as the SIMD
 * activation quantizers do, so every ISA produces identical activations. */
static inline int cm_round_int(float f)
{
    return (int)lrintf(f);
}

#endif
