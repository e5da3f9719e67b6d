/* bench_matmul.c - speed of cm_matmul: generation (matrix-vector, memory
 * bound) and prompt processing (batched, compute bound).
 *
 *   bench_matmul                         the suite below
 *   bench_matmul rows cols [n_tok [types...]]   one shape, hot and cold
 *   bench_matmul --sweep rows cols types...     batch sizes 1..512
 *   bench_matmul --decoded rows cols types...   one token group on tiles
 *                                                kept decoded (a server's step)
 *
 * The suite: "tg" streams 4096 x 4096 matrices cycling through copies
 * totalling >= 512 MiB (so weights come from DRAM, as in a real model) and
 * prints weight GB/s; "pp" runs n_tok = 512 on the shapes of the anchor
 * models' projections (smol135m 576/1536, qwen05b 896/4864) and prints
 * GFLOP/s (2 flops per multiply-add).  --sweep prints GFLOP/s against the
 * batch size and, for f32/f16, the table's own batched kernel against
 * OpenBLAS sgemm on one thread: the crossover that matmul_blas.c's
 * BLAS_MIN_TOK constants encode.  --decoded times the batched kernel's
 * decoded() on one thread for one group of tokens (16 on AVX-512, the
 * slots of a `serve --parallel 16` step) against tiles decoded once, hot
 * (the same tiles again) and cold (128 MiB written in between), and prints
 * the tiles' size and the worst relative error against the reference dot.
 *
 * ISA via CODEMOE_ISA, threads via OMP_NUM_THREADS.  Best of several runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/cpu/cpu.h"
#include "backends/cpu/kernels.h"
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

static float frand(void)
{
    return (float)(rand() / (RAND_MAX + 1.0)) - 0.5f;
}

/* A weight of rows x cols of type t, plus copies up to >= min_bytes. */
typedef struct {
    cm_tensor tw;
    char *data;
    size_t nbytes;
    int ncopy;
} bench_w;

static int make_weight(bench_w *b, enum cm_type t, int64_t rows, int64_t cols, size_t min_bytes)
{
    size_t rb = cm_row_bytes(t, cols);
    if (rb == 0)
        return -1;
    b->nbytes = rb * rows;
    b->ncopy = (int)(min_bytes / b->nbytes + 1);
    b->data = malloc(b->nbytes * b->ncopy);
    float *row = malloc(cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < cols; i++)
            row[i] = frand();
        cm_quantize_row(t, row, b->data + r * rb, cols);
    }
    for (int c = 1; c < b->ncopy; c++)
        memcpy(b->data + (size_t)c * b->nbytes, b->data, b->nbytes);
    cm_tensor tw = {"w", t, 2, {cols, rows, 1, 1}, b->data, b->nbytes};
    b->tw = tw;
    free(row);
    return 0;
}

/* best seconds per cm_matmul over reps runs cycling through ncopy copies */
static double time_matmul(bench_w *b, int ncopy, int reps, const float *x, int64_t n_tok,
                          float *y, void *scratch)
{
    double best = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        b->tw.data = b->data + (size_t)(rep % ncopy) * b->nbytes;
        double t0 = now();
        cm_matmul(&b->tw, x, n_tok, y, scratch);
        double dt = now() - t0;
        best = dt < best ? dt : best;
    }
    b->tw.data = b->data;
    return best;
}

/* hot and cold runs of one shape; returns cold seconds */
static double bench(enum cm_type t, int64_t rows, int64_t cols, int64_t n_tok, int quiet)
{
    bench_w b;
    if (make_weight(&b, t, rows, cols, n_tok > 8 ? 0 : 512u << 20) != 0) {
        fprintf(stderr, "%s: %lld columns are not whole blocks\n", cm_type_get(t)->name,
                (long long)cols);
        return 0;
    }
    float *x = malloc(cols * n_tok * sizeof(float)), *y = malloc(rows * n_tok * sizeof(float));
    for (int64_t i = 0; i < cols * n_tok; i++)
        x[i] = frand();
    void *scratch = aligned_alloc(64, cm_matmul_scratch_bytes(&b.tw, n_tok) + 64);
    int reps = n_tok > 64 ? 5 : 30;
    double best = 0;
    for (int cold = 0; cold < 2; cold++) {
        best = time_matmul(&b, cold ? b.ncopy : 1, reps, x, n_tok, y, scratch);
        if (!quiet || cold == (n_tok == 1))
            printf("%-6s %-5s %5lldx%-5lld n_tok=%-3lld %s %8.3f ms %7.2f GB/s %7.1f GFLOP/s\n",
                   cm_cpu_isa(), cm_type_get(t)->name, (long long)rows, (long long)cols,
                   (long long)n_tok, cold ? "cold" : "hot ", best * 1e3, b.nbytes / best * 1e-9,
                   2.0 * rows * cols * n_tok / best * 1e-9);
    }
    free(b.data), free(x), free(y), free(scratch);
    return best;
}

/* One gemm implementation on one thread over all rows: seconds, best of 3. */
static double time_gemm(const cm_gemm *g, const bench_w *b, const float *x, int64_t n_tok,
                        float *y)
{
    int64_t rows = b->tw.ne[1], cols = b->tw.ne[0];
    void *work = aligned_alloc(64, g->work_bytes(cols) + 64);
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        g->rows(cols, b->data, cm_row_bytes(b->tw.type, cols), 0, rows, x, n_tok, y, rows, work);
        double dt = now() - t0;
        best = dt < best ? dt : best;
    }
    free(work);
    return best;
}

static void sweep(enum cm_type t, int64_t rows, int64_t cols)
{
    static const int64_t toks[] = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512};
    bench_w b;
    if (make_weight(&b, t, rows, cols, 0) != 0)
        return;
    int64_t blas_min = 0;
    const cm_gemm *own = cm_kern.gemm[t], *blas = cm_blas_gemm(t, &blas_min);
    float *x = malloc(cols * 512 * sizeof(float)), *y = malloc(rows * 512 * sizeof(float));
    for (int64_t i = 0; i < cols * 512; i++)
        x[i] = frand();
    void *scratch = aligned_alloc(64, cm_matmul_scratch_bytes(&b.tw, 512) + 64);
    for (size_t i = 0; i < sizeof toks / sizeof toks[0]; i++) {
        int64_t n = toks[i];
        double flop = 2.0 * rows * cols * n;
        double s = time_matmul(&b, 1, n > 64 ? 5 : 20, x, n, y, scratch);
        printf("%-6s %-5s %5lldx%-5lld n_tok=%-3lld matmul %7.1f GFLOP/s", cm_cpu_isa(),
               cm_type_get(t)->name, (long long)rows, (long long)cols, (long long)n, flop / s * 1e-9);
        if (blas) { /* float weights: the batched kernels alone, one thread */
            printf("  1 thread: own ");
            if (own)
                printf("%7.1f", flop / time_gemm(own, &b, x, n, y) * 1e-9);
            else
                printf("      -");
            printf("  sgemm %7.1f GFLOP/s", flop / time_gemm(blas, &b, x, n, y) * 1e-9);
        }
        printf("\n");
    }
    free(b.data), free(x), free(y), free(scratch);
}

/* decoded() of one token group on one thread; see the header */
static void decoded(enum cm_type t, int64_t rows, int64_t cols)
{
    const cm_gemm *g = cm_kern.gemm[t];
    const cm_type_info *ti = cm_type_get(t);
    bench_w b;
    if (!g || !g->decoded || rows % 16 || make_weight(&b, t, rows, cols, 0) != 0) {
        printf("%-6s %-5s: no decoded kernel for %lldx%lld\n", cm_cpu_isa(), ti->name,
               (long long)rows, (long long)cols);
        return;
    }
    const int nt = g->group;
    const size_t wrow = cm_row_bytes(t, cols), tb = g->work_bytes(cols);
    const size_t xrow = cm_row_bytes(ti->dot_type, cols), junk_bytes = (size_t)128 << 20;
    char *tiles = aligned_alloc(64, (size_t)(rows / 16) * tb), *xq = malloc(xrow * nt);
    char *xp = aligned_alloc(64, g->pack_bytes(cols) + 64), *junk = malloc(junk_bytes);
    float *xf = malloc(cols * sizeof(float)), *y = aligned_alloc(64, rows * nt * sizeof(float));
    g->decode(cols, b.data, wrow, 0, rows, tiles);
    for (int k = 0; k < nt; k++) {
        for (int64_t i = 0; i < cols; i++)
            xf[i] = frand();
        cm_quantize_row(ti->dot_type, xf, xq + (size_t)k * xrow, cols);
    }
    g->pack(cols, xq, xrow, nt, xp);
    double best[2] = {1e30, 1e30};
    for (int cold = 0; cold < 2; cold++)
        for (int rep = 0; rep < 20; rep++) {
            if (cold)
                memset(junk, rep, junk_bytes);
            double t0 = now();
            g->decoded(cols, tiles, 0, rows, rows, xp, nt, y, rows);
            double dt = now() - t0;
            best[cold] = dt < best[cold] ? dt : best[cold];
        }
    double worst = 0;
    for (int64_t r = 0; r < rows; r += 97)
        for (int k = 0; k < nt; k++) {
            double ref = cm_vec_dot_ref(t, cols, b.data + r * wrow, xq + (size_t)k * xrow);
            double e = (y[k * rows + r] - ref) / (1e-3 + (ref < 0 ? -ref : ref));
            worst = e < 0 ? (-e > worst ? -e : worst) : (e > worst ? e : worst);
        }
    for (int cold = 0; cold < 2; cold++)
        printf("%-6s %-5s %5lldx%-5lld n_tok=%-3d decoded %s %8.3f ms %7.1f GMAC/s  tiles %.1f MB"
               "  worst rel %.1e\n", cm_cpu_isa(), ti->name, (long long)rows, (long long)cols, nt,
               cold ? "cold" : "hot ", best[cold] * 1e3, (double)rows * cols * nt / best[cold] * 1e-9,
               (double)(rows / 16) * tb / 1e6, worst);
    free(b.data), free(tiles), free(xq), free(xp), free(junk), free(xf), free(y);
}

/* tg and pp for the types of the anchor models */
static void suite(void)
{
    static const char *types[] = {"q8_0", "q4_0", "q4_K", "q6_K", "q5_0", "f16"};
    static const int64_t shapes[][2] = {{1536, 576}, {576, 1536}, {4864, 896}, {896, 4864}};
    printf("== tg: 4096x4096 matrix-vector, weights from DRAM\n");
    for (int i = 0; i < 6; i++)
        bench((enum cm_type)type_by_name(types[i]), 4096, 4096, 1, 1);
    printf("== pp: n_tok = 512 on model shapes (rows x cols)\n");
    for (int i = 0; i < 6; i++)
        for (int s = 0; s < 4; s++) {
            enum cm_type t = (enum cm_type)type_by_name(types[i]);
            if (cm_row_bytes(t, shapes[s][1]) != 0)
                bench(t, shapes[s][0], shapes[s][1], 512, 1);
        }
}

int main(int argc, char **argv)
{
    char err[256];
    if (cm_cpu_init(err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    if (argc == 1) {
        suite();
        return 0;
    }
    int sw = strcmp(argv[1], "--sweep") == 0, dec = strcmp(argv[1], "--decoded") == 0;
    int a = sw || dec ? 2 : 1;
    if (argc < a + 2) {
        fprintf(stderr, "usage: bench_matmul [--sweep | --decoded] rows cols [n_tok] [types...] (n_tok: neither)\n");
        return 2;
    }
    int64_t rows = atoll(argv[a]), cols = atoll(argv[a + 1]);
    int64_t n_tok = !sw && !dec && argc > a + 2 ? atoll(argv[a + 2]) : 1;
    int first = sw || dec ? a + 2 : a + 3;
    static const char *defaults[] = {"q8_0", "q4_0", "f16", "q4_K", "q6_K"};
    int ntypes = argc > first ? argc - first : 5;
    for (int i = 0; i < ntypes; i++) {
        const char *name = argc > first ? argv[first + i] : defaults[i];
        int t = type_by_name(name);
        if (t < 0) {
            fprintf(stderr, "unknown or unsupported type %s\n", name);
            return 2;
        }
        if (sw)
            sweep((enum cm_type)t, rows, cols);
        else if (dec)
            decoded((enum cm_type)t, rows, cols);
        else
            bench((enum cm_type)t, rows, cols, n_tok, 0);
    }
    return 0;
}
