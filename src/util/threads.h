/* threads.h - the OpenMP team as generic code sees it, also in builds
 * without OpenMP (one thread, number 0). */
#ifndef CM_THREADS_H
#define CM_THREADS_H

#ifdef _OPENMP
#include <omp.h>
#endif

/* Threads a parallel region started now would have. */
static inline int cm_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* The calling thread's number in its team. */
static inline int cm_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

#endif
