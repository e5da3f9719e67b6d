/* bench_matmul.c - matrix-vector (and small-batch) speed of cm_matmul.
 *
 *   bench_matmul [rows cols [n_tok [types...]]]
 *
 * Defaults: a 4096 x 4096 weight, n_tok = 1, types q8_0 q4_0 f16 q4_K q6_K.
 * ISA via CODEMOE_ISA, threads via OMP_NUM_THREADS.  Prints the best of
 * several runs as weight bytes streamed per second, twice: "hot" reuses one
 * matrix (it may sit in the last-level cache), "cold" cycles through copies
 * totalling >= 512 MiB so weights come from DRAM, as in a real model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/cpu/cpu.h"
#include "quant/quant.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int type_by_name(const char *s)
{
    for (uint32_t t = 0; t < CM_TYPE_COUNT; t++) {
        const cm_type_info *ti = cm_type_get(t);
        if (ti && ti->supported && strcmp(ti->name, s) == 0)
            return (int)t;
    }
    return -1;
}

/* best seconds per cm_matmul over 30 runs cycling through ncopy matrices */
static double time_matmul(cm_tensor *tw, char *w, size_t nbytes, int ncopy,
                          const float *x, int64_t n_tok, float *y, void *scratch)
{
    double best = 1e30;
    for (int rep = 0; rep < 30; rep++) {
        tw->data = w + (size_t)(rep % ncopy) * nbytes;
        double t0 = now();
        cm_matmul(tw, x, n_tok, y, scratch);
        double dt = now() - t0;
        best = dt < best ? dt : best;
    }
    return best;
}

static void bench(enum cm_type t, int64_t rows, int64_t cols, int64_t n_tok)
{
    size_t rb = cm_row_bytes(t, cols), nbytes = rb * rows;
    int ncopy = (int)((512u << 20) / nbytes + 1);
    float *row = malloc(cols * sizeof(float));
    char *w = malloc(nbytes * ncopy);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < cols; i++)
            row[i] = (float)rand() / RAND_MAX - 0.5f;
        cm_quantize_row(t, row, w + r * rb, cols);
    }
    for (int c = 1; c < ncopy; c++)
        memcpy(w + (size_t)c * nbytes, w, nbytes);
    float *x = malloc(cols * n_tok * sizeof(float)), *y = malloc(rows * n_tok * sizeof(float));
    for (int64_t i = 0; i < cols * n_tok; i++)
        x[i] = (float)rand() / RAND_MAX - 0.5f;
    cm_tensor tw = {"w", t, 2, {cols, rows, 1, 1}, w, nbytes};
    void *scratch = aligned_alloc(64, cm_matmul_scratch_bytes(&tw, n_tok) + 64);
    for (int cold = 0; cold < 2; cold++) {
        double best = time_matmul(&tw, w, nbytes, cold ? ncopy : 1, x, n_tok, y, scratch);
        printf("%-6s %-5s %5lldx%-5lld n_tok=%-3lld %s %8.3f ms %7.2f GB/s %7.1f GMAC/s\n",
               cm_cpu_isa(), cm_type_get(t)->name, (long long)rows, (long long)cols,
               (long long)n_tok, cold ? "cold" : "hot ", best * 1e3, nbytes / best * 1e-9,
               (double)rows * cols * n_tok / best * 1e-9);
    }
    free(row), free(w), free(x), free(y), free(scratch);
}

int main(int argc, char **argv)
{
    char err[256];
    if (cm_cpu_init(err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    int64_t rows = argc > 2 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096;
    int64_t n_tok = argc > 3 ? atoll(argv[3]) : 1;
    static const char *defaults[] = {"q8_0", "q4_0", "f16", "q4_K", "q6_K"};
    int ntypes = argc > 4 ? argc - 4 : 5;
    for (int i = 0; i < ntypes; i++) {
        const char *name = argc > 4 ? argv[4 + i] : defaults[i];
        int t = type_by_name(name);
        if (t < 0) {
            fprintf(stderr, "unknown or unsupported type %s\n", name);
            return 2;
        }
        bench((enum cm_type)t, rows, cols, n_tok);
    }
    return 0;
}
