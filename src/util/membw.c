/* membw.c - read bandwidth of main memory (see membw.h). */
#include "util/membw.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* 64-byte vectors through GCC/Clang vector extensions: one AVX-512 load
 * in the variant compiled for it, two AVX2 or four SSE2 loads otherwise. */
typedef uint64_t cm_v8u64 __attribute__((vector_size(64), aligned(64)));

/* Sums n vectors with four independent accumulators so the loop is bound
 * by memory, not by the latency of one add chain.  Integer adds keep the
 * compiler free to vectorize without -ffast-math. */
static inline __attribute__((always_inline)) uint64_t sum_body(const cm_v8u64 *p, size_t n)
{
    cm_v8u64 a = {0}, b = {0}, c = {0}, d = {0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    for (; i < n; i++)
        a += p[i];
    a += b + c + d;
    uint64_t s = 0;
    for (int k = 0; k < 8; k++)
        s += a[k];
    return s;
}

typedef uint64_t (*sum_fn)(const cm_v8u64 *p, size_t n);

static uint64_t sum_generic(const cm_v8u64 *p, size_t n)
{
    return sum_body(p, n);
}

/* The widest loads this CPU has, chosen at run time rather than through
 * ifunc (target_clones), which sanitizer builds handle poorly. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) static uint64_t sum_avx512(const cm_v8u64 *p, size_t n)
{
    return sum_body(p, n);
}

__attribute__((target("avx2"))) static uint64_t sum_avx2(const cm_v8u64 *p, size_t n)
{
    return sum_body(p, n);
}

static sum_fn pick_sum(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return sum_avx512;
    if (__builtin_cpu_supports("avx2"))
        return sum_avx2;
    return sum_generic;
}
#else
static sum_fn pick_sum(void)
{
    return sum_generic;
}
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One timed pass: every thread sums its own contiguous slice. */
static double timed_pass(sum_fn sum, const cm_v8u64 *v, size_t n, int threads, uint64_t *sink)
{
    uint64_t total = 0;
    double t0 = now_s();
    (void)threads; /* read only by the OpenMP pragma */
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        int nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        size_t lo = n * (size_t)id / (size_t)nt, hi = n * (size_t)(id + 1) / (size_t)nt;
        total += sum(v + lo, hi - lo);
    }
    double dt = now_s() - t0;
    *sink += total;
    return dt;
}

double cm_measure_read_bw(size_t bytes, int threads, int reps)
{
    if (bytes == 0)
        bytes = CM_MEMBW_DEFAULT_BYTES;
    bytes &= ~(size_t)4095;
    if (bytes == 0)
        return 0.0;
#ifdef _OPENMP
    if (threads <= 0)
        threads = omp_get_max_threads();
#else
    threads = 1;
#endif
    size_t n = bytes / sizeof(cm_v8u64);
    cm_v8u64 *v = aligned_alloc(4096, bytes);
    if (!v)
        return 0.0;
    /* Touch the pages from the threads that will read them (first touch
     * places them on those threads' NUMA nodes) and with non-zero data so
     * no shared zero page is read. */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        memset(&v[i], (int)(i & 0x7f) | 1, sizeof v[i]);
    sum_fn sum = pick_sum();
    uint64_t sink = 0;
    double best = 1e30;
    for (int r = 0; r < (reps < 1 ? 1 : reps); r++) {
        double dt = timed_pass(sum, v, n, threads, &sink);
        best = dt < best ? dt : best;
    }
    /* The checksum escapes through a volatile store, so the sums are live. */
    volatile uint64_t keep = sink;
    (void)keep;
    free(v);
    return best > 0 ? (double)bytes / best / 1e9 : 0.0;
}

/* Size of sysfs cache index i of cpu0 ("32768K", "1M"), 0 if none, with
 * its level in *level. */
static size_t sysfs_cache(int i, int *level)
{
    char path[96], buf[32];
    size_t v = 0;
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    *level = fscanf(f, "%d", level) == 1 ? *level : 0;
    fclose(f);
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
    if (!(f = fopen(path, "r")))
        return 0;
    if (fgets(buf, sizeof buf, f)) {
        char *end;
        v = (size_t)strtoull(buf, &end, 10);
        v *= *end == 'K' ? 1024 : *end == 'M' ? 1048576 : 1;
    }
    fclose(f);
    return v;
}

size_t cm_llc_bytes(void)
{
    size_t best = 0;
    int best_level = 0;
    for (int i = 0; i < 8; i++) {
        int level = 0;
        const size_t v = sysfs_cache(i, &level);
        if (v && level >= best_level)
            best = v, best_level = level;
    }
    if (best)
        return best;
#if defined(_SC_LEVEL3_CACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
    long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (v <= 0)
        v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? (size_t)v : 0;
#else
    return 0;
#endif
}
