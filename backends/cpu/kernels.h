/* kernels.h - the CPU backend's dispatch table.
 *
 * One struct of function pointers indexed by type id: for a weight type T,
 * vec_dot[T] dots a row of T with a row already in T's dot type; for an
 * activation type A (a dot type), quantize[A] converts floats to A.  The
 * table starts out holding the scalar references; cm_cpu_init() overlays the
 * entries an ISA file provides.  cm_kern is the only mutable global in the
 * project and is written only by cm_cpu_init(), before any matmul runs.
 *
 * ISA files (kernels_avx2.c, kernels_avx512.c, later kernels_neon.c) are
 * compiled with their own target flags and export only an install function;
 * generic code never includes immintrin.h or tests __AVX2__. */
#ifndef CM_KERNELS_H
#define CM_KERNELS_H

#include <stdint.h>

#include "quant/quant.h"

typedef float (*cm_vec_dot_fn)(int64_t n, const void *w, const void *x);
typedef void (*cm_quantize_fn)(const float *x, void *y, int64_t n);

struct cm_kernels {
    const char *isa; /* "scalar", "avx2", "avx512" */
    cm_vec_dot_fn vec_dot[CM_TYPE_COUNT];
    cm_quantize_fn quantize[CM_TYPE_COUNT];
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

#endif
