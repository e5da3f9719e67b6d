/* membw.c - memory read bandwidth with 1 thread and with all threads.
 *
 *   membw [MiB [reps]]      defaults: 1024 MiB, best of 5
 *
 * This is the physical limit for generation: tokens/s <= bandwidth / bytes
 * of weights read per token.  OMP_NUM_THREADS sets "all threads". */
#include <stdio.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "util/membw.h"

int main(int argc, char **argv)
{
    long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 1024;
    long reps = argc > 2 ? strtol(argv[2], NULL, 10) : 5;
    if (argc > 3 || mib < 1 || mib > (1L << 20) || reps < 1 || reps > 1000) {
        fprintf(stderr, "usage: membw [MiB [reps]]\n");
        return 2;
    }
    int all = 1;
#ifdef _OPENMP
    all = omp_get_max_threads();
#endif
    size_t bytes = (size_t)mib << 20;
    for (int t = 1; t <= all; t = t == all ? all + 1 : (t * 2 < all ? t * 2 : all)) {
        double gbs = cm_measure_read_bw(bytes, t, (int)reps);
        if (gbs <= 0) {
            fprintf(stderr, "membw: cannot allocate %ld MiB\n", mib);
            return 1;
        }
        printf("read bandwidth: %6.1f GB/s with %d thread%s (%ld MiB array, best of %ld)\n", gbs,
               t, t == 1 ? "" : "s", mib, reps);
    }
    return 0;
}
