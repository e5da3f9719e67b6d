/* kernels_scalar.c - the portable table: the quant/ scalar references.
 * It also defines cm_kern, statically initialized to these entries so that
 * matmuls work (slowly) even if cm_cpu_init() was never called. */
#include "backends/cpu/kernels.h"
#include "quant/ref.h"

#define DOT(T, t) [CM_TYPE_##T] = cm_dot_##t
#define QNT(T, t) [CM_TYPE_##T] = cm_quant_##t

#define SCALAR_TABLE                                                          \
    {                                                                         \
        .isa = "scalar",                                                      \
        .vec_dot = {DOT(F32, f32), DOT(F16, f16), DOT(BF16, bf16),           \
                    DOT(Q4_0, q4_0), DOT(Q4_1, q4_1), DOT(Q5_0, q5_0),       \
                    DOT(Q5_1, q5_1), DOT(Q8_0, q8_0), DOT(Q8_1, q8_1),       \
                    DOT(Q2_K, q2_K), DOT(Q3_K, q3_K), DOT(Q4_K, q4_K),       \
                    DOT(Q5_K, q5_K), DOT(Q6_K, q6_K), DOT(Q8_K, q8_K)},      \
        .quantize = {QNT(F32, f32), QNT(Q8_0, q8_0), QNT(Q8_1, q8_1),        \
                     QNT(Q8_K, q8_K)},                                        \
    }

struct cm_kernels cm_kern = SCALAR_TABLE;

void cm_kernels_scalar(struct cm_kernels *k)
{
    static const struct cm_kernels tab = SCALAR_TABLE;
    *k = tab;
}
