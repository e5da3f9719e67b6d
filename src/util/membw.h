/* membw.h - measuring the memory read bandwidth that bounds generation.
 *
 * Generating a token streams every weight once, so tokens/s can never
 * exceed read bandwidth / bytes of weights per token.  This measures that
 * bandwidth the way ANCHORS.md does: a large array summed with wide loads. */
#ifndef CM_MEMBW_H
#define CM_MEMBW_H

#include <stddef.h>

#define CM_MEMBW_DEFAULT_BYTES ((size_t)1 << 30) /* 1 GiB: far beyond any cache */

/* Read bandwidth in GB/s (1e9 bytes/s): the best of reps passes summing a
 * freshly allocated array of `bytes` (rounded down to 4 KiB; 0 means
 * CM_MEMBW_DEFAULT_BYTES) split across `threads` OpenMP threads (<= 0: the
 * current OpenMP default).  reps < 1 counts as 1.  Returns 0 if the array
 * cannot be allocated. */
double cm_measure_read_bw(size_t bytes, int threads, int reps);

/* Bytes of the largest cache level this CPU reports (sysfs, else the C
 * library's view of CPUID), or 0 if it reports none.  A model whose
 * weights per token fit there is not bound by main memory's bandwidth. */
size_t cm_llc_bytes(void);

#endif
