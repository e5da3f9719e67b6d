/* test_repack.c - weights repacked for the ISA's kernels
 * (cm_cpu_repack_acquire) against the scalar references.
 *
 * Random Q4_0 / Q5_0 / Q8_0 / Q4_K / Q6_K (and Q4_1, which no table repacks) weights, quantized
 * by quant/'s reference quantizers, are written to a temporary file and
 * mapped read-only and private, as gguf_open maps a model; the repack is
 * acquired on the mapping, then cm_matmul and cm_matmul_n (the q/k/v and
 * gate/up groups) run for 1..17 tokens on 2-D weights, each expert of 3-D
 * ones, views of whole 16-row tiles (repacked) and of other rows (the
 * mapping), weights of rows not a multiple of 16 and weights outside the
 * mapping (not repacked), each output within test_quant's batched
 * tolerance of cm_vec_dot_ref on scalar-quantized activations.  The
 * repacked kernels' generation variants (gemv, gemv_pf) are run directly
 * too, since cm_cpu_init picks one of them by CPU vendor.
 *
 * That the copies are really used: cm_cpu_repacked_bytes() counts exactly
 * the candidates, and, at the end, the file's bytes are zeroed under the
 * mapping: the repacked weights must still give the reference, a weight
 * read through the mapping (the control) gives zeros.
 *
 * Lifetimes: two acquires of one key (two contexts), two keys released in
 * either order, and a key reused for another file mapped at the same
 * address after the first was released and unmapped (a model freed and
 * another loaded in its place) must repack the new bytes.  Under ASan,
 * the leak check at exit holds every release to its acquire.
 *
 * Skips (77) where the selected kernels repack nothing: not x86 with AVX2,
 * or CODEMOE_ISA=scalar, or CODEMOE_REPACK=0.  On an AVX-512 VNNI CPU the
 * table without VNNI (q4_0 and q5_0 repacked, q8_0 not) and the AVX2 table
 * (the same types, its own kernels) run as well. */
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backends/cpu/cpu.h"
#include "backends/cpu/kernels.h"
#include "quant/quant.h"
#include "dotref.h"
#include "testlib.h"

/* ---- deterministic randomness (as test_quant) ---------------------------- */

static uint64_t rng_state;

static uint64_t rnd64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rnd_normal(void)
{
    float u = (float)(rnd64() >> 40) * 0x1p-24f + 1e-7f, v = (float)(rnd64() >> 40) * 0x1p-24f;
    return sqrtf(-2 * logf(u)) * cosf(6.2831853f * v);
}

#define ALIGN64(n) (((n) + 63) & ~(size_t)63)
#define CANARY 256
#define MAX_TOK 17
#define MAX_COLS 1024

static void *xalloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 1) != 0) {
        fprintf(stderr, "test error: out of memory (%zu bytes)\n", n);
        exit(99);
    }
    return p;
}

static void canary_set(void *p) { memset(p, 0xA5, CANARY); }
static int canary_ok(const void *p)
{
    const unsigned char *c = p;
    for (int i = 0; i < CANARY; i++)
        if (c[i] != 0xA5)
            return 0;
    return 1;
}

static const char *tname(enum cm_type t)
{
    return cm_type_get(t)->name;
}

/* ---- the "model file" ------------------------------------------------------ */

enum {
    W_Q4_BIG,   /* 2-D, parallel products */
    W_Q8_BIG,
    W_Q4_ODD,   /* 9 blocks a row: the generation kernel's odd block */
    W_Q8_ODD,
    W_Q4_ONE,   /* one block a row, one tile */
    W_Q4_R40,   /* rows not a multiple of 16: never repacked */
    W_Q8_R24,
    W_Q5,       /* 9 blocks a row */
    W_Q5_BIG,
    W_Q41,      /* a type no table repacks */
    W_K4,       /* q4_K: two super-blocks a row */
    W_K4_BIG,
    W_K6,       /* q6_K: two super-blocks a row (large rows: the s16 sums' bound) */
    W_K6_BIG,
    W_Q4_EXP,   /* 3-D: experts (gate_exps, up_exps) */
    W_Q4_EXP2,
    W_Q8_EXP,
    W_Q5_EXP,
    W_K4_EXP,
    W_K6_EXP,
    W_Q,        /* q, k, v */
    W_K,
    W_V,
    W_GATE,     /* gate, up */
    W_UP,
    N_W
};

typedef struct {
    enum cm_type type;
    int64_t cols, rows, nmat;
} wspec;

static const wspec specs[N_W] = {
    [W_Q4_BIG] = {CM_TYPE_Q4_0, 1024, 256, 1}, [W_Q8_BIG] = {CM_TYPE_Q8_0, 1024, 256, 1},
    [W_Q4_ODD] = {CM_TYPE_Q4_0, 288, 64, 1},   [W_Q8_ODD] = {CM_TYPE_Q8_0, 288, 48, 1},
    [W_Q4_ONE] = {CM_TYPE_Q4_0, 32, 16, 1},    [W_Q4_R40] = {CM_TYPE_Q4_0, 320, 40, 1},
    [W_Q8_R24] = {CM_TYPE_Q8_0, 288, 24, 1},   [W_Q5] = {CM_TYPE_Q5_0, 288, 32, 1},
    [W_Q5_BIG] = {CM_TYPE_Q5_0, 1024, 64, 1},  [W_Q41] = {CM_TYPE_Q4_1, 288, 32, 1},
    [W_Q5_EXP] = {CM_TYPE_Q5_0, 256, 16, 3},   [W_K4] = {CM_TYPE_Q4_K, 512, 32, 1},
    [W_K4_BIG] = {CM_TYPE_Q4_K, 1024, 48, 1},  [W_K4_EXP] = {CM_TYPE_Q4_K, 256, 16, 3},
    [W_K6] = {CM_TYPE_Q6_K, 512, 32, 1},       [W_K6_BIG] = {CM_TYPE_Q6_K, 1024, 48, 1},
    [W_K6_EXP] = {CM_TYPE_Q6_K, 256, 16, 3},
    [W_Q4_EXP] = {CM_TYPE_Q4_0, 256, 32, 4},   [W_Q4_EXP2] = {CM_TYPE_Q4_0, 256, 32, 4},
    [W_Q8_EXP] = {CM_TYPE_Q8_0, 256, 48, 3},   [W_Q] = {CM_TYPE_Q4_0, 320, 64, 1},
    [W_K] = {CM_TYPE_Q4_0, 320, 32, 1},        [W_V] = {CM_TYPE_Q4_0, 320, 32, 1},
    [W_GATE] = {CM_TYPE_Q8_0, 320, 96, 1},     [W_UP] = {CM_TYPE_Q8_0, 320, 96, 1},
};

typedef struct {
    int fd;
    size_t size;
    char *img;        /* the file's bytes as written: the references' weights */
    const char *map;  /* the read-only private mapping */
    cm_tensor t[N_W]; /* views into the mapping, as the loader makes them */
} tfile;

/* Rows of random floats through the reference quantizer; every 7th row
 * zero (a zero scale), a few rows large. */
static void fill_rows(enum cm_type type, int64_t cols, int64_t rows, char *dst)
{
    float *f = malloc((size_t)cols * sizeof *f);
    size_t rb = cm_row_bytes(type, cols);
    for (int64_t r = 0; r < rows; r++) {
        float scale = r % 7 == 3 ? 0.0f : r % 11 == 5 ? 40.0f : 0.05f;
        for (int64_t i = 0; i < cols; i++)
            f[i] = scale * rnd_normal();
        if (cm_quantize_row(type, f, dst + (size_t)r * rb, cols) != 0) {
            fprintf(stderr, "test error: no reference quantizer for %s\n", tname(type));
            exit(99);
        }
    }
    free(f);
}

/* A temporary file of the tensors (GGUF's 32-byte alignment, after a
 * header's worth of other bytes), mapped as gguf_open maps; at `at` when
 * not NULL, replacing the caller's own mapping of the same size there (a
 * freed model's file, unmapped, and another mapped at its address). */
static void tfile_make(tfile *f, uint64_t seed, void *at)
{
    memset(f, 0, sizeof *f);
    rng_state = seed;
    size_t off = 1000, offs[N_W];
    for (int i = 0; i < N_W; i++) {
        off = (off + 31) & ~(size_t)31;
        offs[i] = off;
        off += cm_row_bytes(specs[i].type, specs[i].cols) * (size_t)(specs[i].rows * specs[i].nmat);
    }
    f->size = off + 77;
    f->img = calloc(1, f->size);
    for (size_t i = 0; i < 1000; i++)
        f->img[i] = (char)rnd64();
    for (int i = 0; i < N_W; i++)
        fill_rows(specs[i].type, specs[i].cols, specs[i].rows * specs[i].nmat, f->img + offs[i]);
    const char *dir = getenv("TMPDIR");
    char path[1024];
    tl_path(path, sizeof path, "%s/cm-test-repack-XXXXXX", dir && *dir ? dir : "/tmp");
    f->fd = mkstemp(path);
    if (f->fd < 0) {
        fprintf(stderr, "test error: cannot create %s\n", path);
        exit(99);
    }
    unlink(path); /* the descriptor and the mapping keep it */
    if (write(f->fd, f->img, f->size) != (ssize_t)f->size) {
        fprintf(stderr, "test error: cannot write %s\n", path);
        exit(99);
    }
    void *m = mmap(at, f->size, PROT_READ, MAP_PRIVATE | (at ? MAP_FIXED : 0), f->fd, 0);
    if (m == MAP_FAILED || (at && m != at)) {
        fprintf(stderr, "test error: cannot map %s\n", path);
        exit(99);
    }
    f->map = m;
    for (int i = 0; i < N_W; i++) {
        const wspec *s = &specs[i];
        size_t bytes = cm_row_bytes(s->type, s->cols) * (size_t)(s->rows * s->nmat);
        f->t[i] = (cm_tensor){"w", s->type, s->nmat > 1 ? 3 : 2, {s->cols, s->rows, s->nmat, 1},
                              f->map + offs[i], bytes, NULL, 0};
    }
}

static void tfile_free(tfile *f, int unmap)
{
    if (unmap)
        munmap((void *)f->map, f->size);
    close(f->fd);
    free(f->img);
}

/* The bytes the file holds at a view's data (the truth, whatever the
 * mapping reads now); weights outside the mapping are their own. */
static const char *truth(const tfile *f, const cm_tensor *w)
{
    const char *d = w->data;
    if (d < f->map || d >= f->map + f->size)
        return d;
    return f->img + (d - f->map);
}

/* Rows [r0, r0 + n) of matrix mi of tensor i, as a 2-D view. */
static cm_tensor view(const tfile *f, int i, int64_t mi, int64_t r0, int64_t n)
{
    cm_tensor v = f->t[i];
    size_t rb = cm_row_bytes(v.type, v.ne[0]);
    v.data = (const char *)v.data + ((size_t)mi * (size_t)v.ne[1] + (size_t)r0) * rb;
    v.ne[1] = n, v.ne[2] = 1, v.n_dims = 2, v.nbytes = rb * (size_t)n;
    return v;
}

/* Whether cm_cpu_repack_acquire repacks tensor i of a file (what the
 * table repacks, whole 16-row tiles). */
static int repacks(int i)
{
    return cm_kern.repack[specs[i].type] && specs[i].rows % 16 == 0;
}

/* Bytes the copies take: of every weight, or of the 2-D ones alone
 * (after cm_cpu_repack_drop_experts). */
static size_t repacked_bytes_of(int experts_too)
{
    size_t n = 0;
    for (int i = 0; i < N_W; i++)
        if (repacks(i) && (experts_too || specs[i].nmat == 1))
            n += ALIGN64(cm_row_bytes(specs[i].type, specs[i].cols) *
                         (size_t)(specs[i].rows * specs[i].nmat));
    return n;
}

static size_t expected_bytes(void) { return repacked_bytes_of(1); }

/* ---- references ------------------------------------------------------------ */

static float xs[MAX_TOK * MAX_COLS]; /* the activations, token t at t * cols */

/* ref[t * rows + r] and tol[] for every token of xs: dotref.h's batched
 * references (test_quant's bound). */
static void refs(enum cm_type type, int64_t cols, int64_t rows, const char *w, double *ref,
                 double *tol)
{
    batched_refs(type, w, cols, rows, xs, MAX_TOK, ref, tol);
}

typedef struct {
    double *ref, *tol;
} wref;

static wref wref_new(const tfile *f, const cm_tensor *w)
{
    wref r = {malloc(sizeof(double) * (size_t)(MAX_TOK * w->ne[1])),
              malloc(sizeof(double) * (size_t)(MAX_TOK * w->ne[1]))};
    refs(w->type, w->ne[0], w->ne[1], truth(f, w), r.ref, r.tol);
    return r;
}

static void wref_free(wref *r) { free(r->ref), free(r->tol); }

static int count_bad(const float *y, const wref *r, int64_t n)
{
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += !(fabs((double)y[i] - r->ref[i]) <= r->tol[i]) ||
               isfinite(y[i]) != isfinite(r->ref[i]);
    return bad;
}

/* ---- cm_matmul ------------------------------------------------------------- */

/* cm_matmul of w for n_tok tokens into a fresh y (canaries after y and the
 * scratch checked); returns y (free it), *bad the outputs off the reference
 * (r may be NULL: not compared). */
static float *matmul(const cm_tensor *w, int64_t n_tok, const wref *r, int *bad)
{
    size_t sb = cm_matmul_scratch_bytes(w, n_tok), yb = sizeof(float) * (size_t)(n_tok * w->ne[1]);
    char *scratch = xalloc(sb + CANARY), *y = xalloc(yb + CANARY);
    canary_set(scratch + sb), canary_set(y + yb);
    cm_matmul(w, xs, n_tok, (float *)y, scratch);
    *bad = !canary_ok(scratch + sb) || !canary_ok(y + yb);
    CHECK(*bad == 0, "%s matmul %s n_tok=%lld: scratch or output overrun", cm_kern.isa,
          tname(w->type), (long long)n_tok);
    if (r)
        *bad += count_bad((const float *)y, r, n_tok * w->ne[1]);
    free(scratch);
    return (float *)y;
}

/* cm_matmul of w for 1..MAX_TOK tokens against the references. */
static void check_matmul(const tfile *f, const cm_tensor *w, const char *what)
{
    wref r = wref_new(f, w);
    for (int64_t n = 1; n <= MAX_TOK; n++) {
        int bad;
        free(matmul(w, n, &r, &bad));
        CHECK(bad == 0, "%s matmul %s %s %lldx%lld n_tok=%lld: %d wrong", cm_kern.isa,
              tname(w->type), what, (long long)w->ne[1], (long long)w->ne[0], (long long)n, bad);
    }
    wref_free(&r);
}

/* cm_matmul_n of nw weights (a projection group) for 1..MAX_TOK tokens:
 * each output within the reference, and bit for bit cm_matmul's. */
static void check_matmul_n(const tfile *f, const cm_tensor *const *ws, int nw, const char *what)
{
    enum { MAXW = 4 };
    wref r[MAXW];
    for (int i = 0; i < nw; i++)
        r[i] = wref_new(f, ws[i]);
    for (int64_t n = 1; n <= MAX_TOK; n++) {
        size_t sb = 0, yb[MAXW];
        float *ys[MAXW];
        for (int i = 0; i < nw; i++) {
            size_t b = cm_matmul_scratch_bytes(ws[i], n);
            sb = b > sb ? b : sb;
            yb[i] = sizeof(float) * (size_t)(n * ws[i]->ne[1]);
            ys[i] = xalloc(yb[i] + CANARY);
            canary_set((char *)ys[i] + yb[i]);
        }
        char *scratch = xalloc(sb + CANARY);
        canary_set(scratch + sb);
        cm_matmul_n(ws, nw, xs, n, ys, scratch);
        int bad = !canary_ok(scratch + sb);
        for (int i = 0; i < nw; i++) {
            int b1, wb = !canary_ok((char *)ys[i] + yb[i]) + count_bad(ys[i], &r[i], n * ws[i]->ne[1]);
            float *one = matmul(ws[i], n, NULL, &b1);
            CHECK(wb == 0, "%s matmul_n %s weight %d (%s %lldx%lld) n_tok=%lld: %d wrong",
                  cm_kern.isa, what, i, tname(ws[i]->type), (long long)ws[i]->ne[1],
                  (long long)ws[i]->ne[0], (long long)n, wb);
            CHECK(memcmp(one, ys[i], yb[i]) == 0,
                  "%s matmul_n %s weight %d n_tok=%lld differs from matmul", cm_kern.isa, what, i,
                  (long long)n);
            free(one), free(ys[i]);
        }
        CHECK(bad == 0, "%s matmul_n %s n_tok=%lld: scratch overrun", cm_kern.isa, what,
              (long long)n);
        free(scratch);
    }
    for (int i = 0; i < nw; i++)
        wref_free(&r[i]);
}

/* ---- the generation kernels directly ---------------------------------------- */

/* Both generation variants (cm_cpu_init runs one of them, by vendor) on
 * the first 16 rows of w, against the references and each other. */
static void check_gemv(const tfile *f, const cm_tensor *w)
{
    const cm_repack *rp = cm_kern.repack[w->type];
    if (!rp)
        return;
    const int64_t cols = w->ne[0];
    const size_t rb = cm_row_bytes(w->type, cols);
    cm_tensor v = *w;
    v.ne[1] = 16, v.ne[2] = 1;
    wref r = wref_new(f, &v);
    const enum cm_type dt = cm_type_get(w->type)->dot_type;
    char *tile = xalloc(16 * rb), *xq = xalloc(cm_row_bytes(dt, cols));
    char *xp = xalloc(rp->x_bytes(cols) + CANARY);
    rp->pack(cols, truth(f, w), rb, tile);
    int bad = 0, differ = 0;
    for (int64_t t = 0; t < MAX_TOK; t++) {
        float y[16], ypf[16];
        cm_quantize_row(dt, xs + t * cols, xq, cols);
        canary_set(xp + rp->x_bytes(cols));
        rp->x_pack(cols, xq, xp);
        bad += !canary_ok(xp + rp->x_bytes(cols));
        rp->gemv(cols, tile, xp, y);
        (rp->gemv_pf ? rp->gemv_pf : rp->gemv)(cols, tile, xp, ypf);
        for (int i = 0; i < 16; i++) {
            double want = r.ref[t * 16 + i], tol = r.tol[t * 16 + i];
            bad += !(fabs(y[i] - want) <= tol) || !(fabs(ypf[i] - want) <= tol);
        }
        differ += memcmp(y, ypf, sizeof y) != 0;
    }
    CHECK(bad == 0, "%s repacked gemv %s cols %lld: %d wrong", cm_kern.isa, tname(w->type),
          (long long)cols, bad);
    CHECK(differ == 0, "%s repacked gemv_pf %s cols %lld: differs from gemv for %d tokens",
          cm_kern.isa, tname(w->type), (long long)cols, differ);
    free(tile), free(xq), free(xp);
    wref_free(&r);
}

/* ---- the suite, for the table in cm_kern --------------------------------- */

/* Zeroes the file's bytes of tensor i under the mapping. */
static int zero_in_file(const tfile *f, int i)
{
    const cm_tensor *w = &f->t[i];
    char *z = calloc(1, w->nbytes);
    off_t at = (off_t)((const char *)w->data - f->map);
    int ok = pwrite(f->fd, z, w->nbytes, at) == (ssize_t)w->nbytes;
    free(z);
    return ok;
}

/* The file's bytes zeroed under the mapping: the repacked weights still
 * give the reference; a weight read through the mapping gives zeros. */
static void probe_copies(const tfile *f, int experts)
{
    int ctl = W_Q4_R40; /* the control: never repacked */
    for (int i = 0; i < N_W; i++)
        if (!zero_in_file(f, i)) {
            printf("  note: cannot write the temporary file: copies not probed\n");
            return;
        }
    const cm_tensor *big = &f->t[W_Q4_BIG], *c = &f->t[ctl];
    int zero = 1;
    for (size_t b = 0; b < big->nbytes && zero; b++)
        zero = ((const char *)big->data)[b] == 0;
    for (size_t b = 0; b < c->nbytes && zero; b++)
        zero = ((const char *)c->data)[b] == 0;
    if (!zero) { /* MAP_PRIVATE pages need not show later writes (POSIX) */
        printf("  note: the mapping does not show writes to the file: copies not probed\n");
        return;
    }
    static const int64_t toks[] = {1, 3, 5, 17};
    int probed = 0, before = tl_failures;
    for (int i = 0; i < N_W; i++) {
        if (!repacks(i) || (!experts && specs[i].nmat > 1))
            continue;
        for (int64_t mi = 0; mi < specs[i].nmat; mi++) {
            cm_tensor v = view(f, i, mi, 0, specs[i].rows);
            wref r = wref_new(f, &v);
            for (int k = 0; k < 4; k++) {
                int bad;
                free(matmul(&v, toks[k], &r, &bad));
                CHECK(bad == 0, "%s %s weight %d matrix %lld n_tok=%lld: %d wrong after the "
                      "file was zeroed: the mapping was read, not the repacked copy",
                      cm_kern.isa, tname(v.type), i, (long long)mi, (long long)toks[k], bad);
                probed++;
            }
            wref_free(&r);
        }
    }
    int nz = 0;
    for (int k = 0; k < 4; k++) {
        int bad;
        float *y = matmul(c, toks[k], NULL, &bad);
        for (int64_t j = 0; j < toks[k] * c->ne[1]; j++)
            nz += y[j] != 0;
        free(y);
    }
    CHECK(nz == 0, "%s control (not repacked): %d nonzero outputs on zeroed weights: the probe "
          "proves nothing", cm_kern.isa, nz);
    printf("  %s: %d products on repacked copies of zeroed weights %s\n", cm_kern.isa, probed,
           tl_failures == before ? "ok" : "FAILED");
}

/* A 2-D weight's copy replaces its pages in the mapping: none of them
 * stays mapped (counted in RSS twice, copy and source) once repacked. */
static void check_not_doubled(const tfile *f, unsigned sum)
{
    for (int i = 0; i < N_W; i++) {
        if (specs[i].nmat != 1 || !repacks(i))
            continue;
        long pages = tl_mapped_pages(f->t[i].data, f->t[i].nbytes);
        CHECK(pages == 0 || pages == -1, "%s: %s %lldx%lld (read sum %u): %ld pages of the "
              "source still mapped beside its copy", cm_kern.isa, tname(specs[i].type),
              (long long)specs[i].cols, (long long)specs[i].rows, sum, pages);
    }
}

static void run_suite(void)
{
    int before = tl_failures;
    tfile f;
    tfile_make(&f, 0x1234567ull, NULL);
    for (int i = 0; i < MAX_TOK * MAX_COLS; i++)
        xs[i] = rnd_normal();

    /* what a model hands over: its weights, a tied output (the same
     * tensor twice), a view inside one, absent tensors, weights in device
     * memory (buf) and in the heap */
    enum { EXTRA = 5 };
    const cm_tensor *ws[N_W + EXTRA];
    cm_tensor absent, in_buf = f.t[W_Q8_ODD], inner = view(&f, W_Q4_BIG, 0, 16, 32);
    cm_buffer buf = {0};
    memset(&absent, 0, sizeof absent);
    in_buf.buf = &buf;
    const size_t qrb = cm_row_bytes(CM_TYPE_Q4_0, 320);
    char *heap = xalloc(qrb * 48);
    fill_rows(CM_TYPE_Q4_0, 320, 48, heap);
    cm_tensor on_heap = {"heap", CM_TYPE_Q4_0, 2, {320, 48, 1, 1}, heap, qrb * 48, NULL, 0};
    int nw = 0;
    ws[nw++] = &f.t[W_Q4_BIG];
    ws[nw++] = &absent;
    for (int i = 0; i < N_W; i++)
        ws[nw++] = &f.t[i];
    ws[nw++] = &inner, ws[nw++] = &in_buf, ws[nw++] = &on_heap;

    /* two contexts on one model */
    const size_t want = expected_bytes();
    CHECK(cm_cpu_repacked_bytes() == 0, "%s: %zu bytes repacked before any acquire",
          cm_kern.isa, cm_cpu_repacked_bytes());
    unsigned sum = 0; /* the whole file read through the mapping first, as a loader may */
    for (size_t i = 0; i < f.size; i += 512)
        sum += (unsigned char)((volatile const char *)f.map)[i];
    cm_cpu_repack_acquire(&f, ws, nw, f.map, f.size);
    CHECK(cm_cpu_repacked_bytes() == want, "%s: %zu bytes repacked, want %zu", cm_kern.isa,
          cm_cpu_repacked_bytes(), want);
    check_not_doubled(&f, sum);
    cm_cpu_repack_acquire(&f, ws, nw, f.map, f.size);
    CHECK(cm_cpu_repacked_bytes() == want, "%s: second acquire: %zu bytes repacked, want %zu",
          cm_kern.isa, cm_cpu_repacked_bytes(), want);
    CHECK(memcmp(f.map, f.img, f.size) == 0, "%s: the mapping reads other bytes than the file "
          "after its pages were dropped", cm_kern.isa);

    check_gemv(&f, &f.t[W_Q4_BIG]);
    check_gemv(&f, &f.t[W_Q8_BIG]);
    check_gemv(&f, &f.t[W_Q4_ODD]);
    check_gemv(&f, &f.t[W_Q8_ODD]);
    check_gemv(&f, &f.t[W_Q4_ONE]);
    check_gemv(&f, &f.t[W_Q5]);
    check_gemv(&f, &f.t[W_Q5_BIG]);
    check_gemv(&f, &f.t[W_K4]);
    check_gemv(&f, &f.t[W_K4_BIG]);
    check_gemv(&f, &f.t[W_K6]);
    check_gemv(&f, &f.t[W_K6_BIG]);

    /* single weights: whole, views of whole tiles, views of other rows */
    static const int two_d[] = {W_Q4_BIG, W_Q8_BIG, W_Q4_ODD, W_Q8_ODD, W_Q4_ONE,
                                W_Q4_R40, W_Q8_R24, W_Q5, W_Q5_BIG, W_Q41, W_K4, W_K4_BIG,
                                W_K6, W_K6_BIG,
                                W_Q, W_GATE};
    for (size_t k = 0; k < sizeof two_d / sizeof two_d[0]; k++)
        check_matmul(&f, &f.t[two_d[k]], "2-D");
    check_matmul(&f, &on_heap, "in the heap");
    cm_tensor v;
    v = view(&f, W_Q4_BIG, 0, 16, 48), check_matmul(&f, &v, "rows 16..63");
    v = view(&f, W_Q8_BIG, 0, 240, 16), check_matmul(&f, &v, "rows 240..255");
    v = view(&f, W_Q4_BIG, 0, 8, 16), check_matmul(&f, &v, "rows 8..23 (mapping)");
    v = view(&f, W_Q8_BIG, 0, 0, 24), check_matmul(&f, &v, "rows 0..23 (mapping)");
    static const int three_d[] = {W_Q4_EXP, W_Q4_EXP2, W_Q8_EXP, W_Q5_EXP, W_K4_EXP,
                                  W_K6_EXP};
    for (size_t k = 0; k < sizeof three_d / sizeof three_d[0]; k++) {
        int i = three_d[k];
        /* expert 1 first: experts repack at their first use, in any order */
        for (int64_t mi = specs[i].nmat - 1; mi >= 0; mi--) {
            char what[32];
            snprintf(what, sizeof what, "expert %lld", (long long)mi);
            v = view(&f, i, mi, 0, specs[i].rows), check_matmul(&f, &v, what);
        }
        check_matmul(&f, &f.t[i], "3-D (its first matrix)");
        v = view(&f, i, 0, 16, specs[i].rows), check_matmul(&f, &v, "across experts 0 and 1");
    }

    /* projection groups */
    const cm_tensor *qkv[] = {&f.t[W_Q], &f.t[W_K], &f.t[W_V]};
    check_matmul_n(&f, qkv, 3, "q/k/v");
    const cm_tensor *gu[] = {&f.t[W_GATE], &f.t[W_UP]};
    check_matmul_n(&f, gu, 2, "gate/up");
    for (int64_t e = 0; e < 4; e += 3) {
        cm_tensor g = view(&f, W_Q4_EXP, e, 0, 32), u = view(&f, W_Q4_EXP2, e, 0, 32);
        const cm_tensor *ge[] = {&g, &u};
        check_matmul_n(&f, ge, 2, "expert gate/up");
    }
    const cm_tensor *mixed_rows[] = {&f.t[W_Q], &f.t[W_Q4_R40], &f.t[W_K]};
    check_matmul_n(&f, mixed_rows, 3, "repacked + rows 40");
    const cm_tensor *mixed_types[] = {&f.t[W_Q], &f.t[W_GATE]};
    check_matmul_n(&f, mixed_types, 2, "q4_0 + q8_0");
    const cm_tensor *mixed_q5[] = {&f.t[W_Q5], &f.t[W_Q4_ODD], &f.t[W_Q41]};
    check_matmul_n(&f, mixed_q5, 3, "q5_0 + q4_0 + q4_1");
    const cm_tensor *k4s[] = {&f.t[W_K4], &f.t[W_K4]};
    check_matmul_n(&f, k4s, 2, "q4_K twice");
    const cm_tensor *k6s[] = {&f.t[W_K6], &f.t[W_K6]};
    check_matmul_n(&f, k6s, 2, "q6_K twice");
    const cm_tensor *mixed_heap[] = {&on_heap, &f.t[W_V]};
    check_matmul_n(&f, mixed_heap, 2, "heap + repacked");

    /* one context gone: the other's copies stay */
    cm_cpu_repack_release(&f);
    CHECK(cm_cpu_repacked_bytes() == want, "%s: %zu bytes repacked after one of two releases",
          cm_kern.isa, cm_cpu_repacked_bytes());
    check_matmul(&f, &f.t[W_Q8_BIG], "after one release");
    probe_copies(&f, 1);
    /* an expert cache takes the experts back to the mapping: their copies
     * go, the 2-D ones stay (and still give the reference, the file under
     * them being zeroed now) */
    cm_cpu_repack_drop_experts(&f);
    CHECK(cm_cpu_repacked_bytes() == repacked_bytes_of(0), "%s: %zu bytes repacked after "
          "dropping the experts, want %zu", cm_kern.isa, cm_cpu_repacked_bytes(),
          repacked_bytes_of(0));
    if (repacks(W_Q8_BIG))
        check_matmul(&f, &f.t[W_Q8_BIG], "2-D after the experts were dropped");
    cm_cpu_repack_release(&f);
    CHECK(cm_cpu_repacked_bytes() == 0, "%s: %zu bytes repacked after the last release",
          cm_kern.isa, cm_cpu_repacked_bytes());
    cm_cpu_repack_release(&f); /* one too many: nothing to do */
    tfile_free(&f, 1);
    free(heap);
    printf("  %s: repacked %zu bytes (q4_0 %s, q5_0 %s, q4_K %s, q6_K %s, q8_0 %s): "
           "matmul, matmul_n %s\n",
           cm_kern.isa, want, cm_kern.repack[CM_TYPE_Q4_0] ? "yes" : "no",
           cm_kern.repack[CM_TYPE_Q5_0] ? "yes" : "no",
           cm_kern.repack[CM_TYPE_Q4_K] ? "yes" : "no",
           cm_kern.repack[CM_TYPE_Q6_K] ? "yes" : "no",
           cm_kern.repack[CM_TYPE_Q8_0] ? "yes" : "no", tl_failures == before ? "ok" : "FAILED");
}

/* ---- lifetimes ------------------------------------------------------------- */

static void check_file(const tfile *f, const char *what)
{
    static const int some[] = {W_Q4_BIG, W_Q8_ODD, W_Q4_R40};
    for (int k = 0; k < 3; k++) {
        wref r = wref_new(f, &f->t[some[k]]);
        for (int64_t n = 1; n <= 5; n += 4) {
            int bad;
            free(matmul(&f->t[some[k]], n, &r, &bad));
            CHECK(bad == 0, "%s %s: weight %d n_tok=%lld: %d wrong", cm_kern.isa, what, some[k],
                  (long long)n, bad);
        }
        wref_free(&r);
    }
    cm_tensor e = view(f, W_Q4_EXP, 2, 0, 32);
    check_matmul(f, &e, what);
}

static void all_of(const tfile *f, const cm_tensor **ws)
{
    for (int i = 0; i < N_W; i++)
        ws[i] = &f->t[i];
}

static void test_lifetimes(void)
{
    int before = tl_failures;
    const size_t want = expected_bytes();
    const cm_tensor *ws[N_W];
    tfile a, b;
    int key_a, key_b; /* two models */
    tfile_make(&a, 11, NULL);
    tfile_make(&b, 22, NULL);
    all_of(&a, ws);
    cm_cpu_repack_acquire(&key_a, ws, N_W, a.map, a.size);
    all_of(&b, ws);
    cm_cpu_repack_acquire(&key_b, ws, N_W, b.map, b.size);
    CHECK(cm_cpu_repacked_bytes() == 2 * want, "%s: two models: %zu bytes, want %zu",
          cm_kern.isa, cm_cpu_repacked_bytes(), 2 * want);
    check_file(&a, "model a of two");
    check_file(&b, "model b of two");
    cm_cpu_repack_release(&key_a); /* released in the order they came */
    CHECK(cm_cpu_repacked_bytes() == want, "%s: %zu bytes after a's release", cm_kern.isa,
          cm_cpu_repacked_bytes());
    check_file(&b, "model b after a's release");
    tfile_free(&a, 1);
    /* a model freed, another loaded into the same cm_model (the same key)
     * and mapped where the first was */
    void *at = (void *)b.map;
    all_of(&b, ws);
    cm_cpu_repack_acquire(&key_a, ws, N_W, b.map, b.size);
    cm_cpu_repack_release(&key_b); /* the other order */
    cm_cpu_repack_release(&key_a);
    CHECK(cm_cpu_repacked_bytes() == 0, "%s: %zu bytes after all releases", cm_kern.isa,
          cm_cpu_repacked_bytes());
    tfile_make(&a, 33, at); /* replaces b's mapping */
    tfile_free(&b, 0);
    all_of(&a, ws);
    cm_cpu_repack_acquire(&key_b, ws, N_W, a.map, a.size);
    check_file(&a, "a new model where a freed one was");
    cm_cpu_repack_release(&key_b);
    tfile_free(&a, 1);
    /* nothing to repack: still counted, still released */
    cm_cpu_repack_acquire(&key_a, NULL, 0, NULL, 0);
    CHECK(cm_cpu_repacked_bytes() == 0, "%s: an empty acquire repacked %zu bytes", cm_kern.isa,
          cm_cpu_repacked_bytes());
    cm_cpu_repack_release(&key_a);
    printf("  %s: lifetimes (two models, releases in either order, a key and an address "
           "reused) %s\n", cm_kern.isa, tl_failures == before ? "ok" : "FAILED");
}

/* Copies made for one table while cm_kern is another (cm_cpu_init again,
 * e.g. CODEMOE_ISA in a test): the products, with scratch sized for the
 * table in use, read the weights as they are, still right. */
static void test_table_switch(const struct cm_kernels *other)
{
    int before = tl_failures;
    const cm_tensor *ws[N_W];
    tfile f;
    int key;
    tfile_make(&f, 44, NULL);
    all_of(&f, ws);
    cm_cpu_repack_acquire(&key, ws, N_W, f.map, f.size);
    struct cm_kernels saved = cm_kern;
    cm_kern = *other;
    check_file(&f, "copies of another table");
    cm_kern = saved;
    cm_cpu_repack_release(&key);
    tfile_free(&f, 1);
    printf("  %s: copies of the %s table left alone %s\n", other->isa, saved.isa,
           tl_failures == before ? "ok" : "FAILED");
}

int main(void)
{
    char err[256];
    if (cm_cpu_init(err, sizeof err) != 0)
        tl_skip("%s", err);
    const char *env = getenv("CODEMOE_REPACK");
    if (env && strcmp(env, "0") == 0)
        tl_skip("CODEMOE_REPACK=0: nothing is repacked");
    if (!cm_kern.repack[CM_TYPE_Q4_0] && !cm_kern.repack[CM_TYPE_Q8_0])
        tl_skip("the %s kernels repack no weights (AVX2 and AVX-512 repack q4_0 and q5_0, "
                "AVX-512 with VNNI q8_0 too)", cm_cpu_isa());
    run_suite();
    test_lifetimes();
    /* the AVX-512 table without VNNI (q4_0 and q5_0), as test_quant builds
     * it, and the AVX2 table (its own kernels on the same tiles), which a
     * CPU with AVX-512 runs too */
    struct cm_kernels k;
    cm_kernels_scalar(&k);
    if (strcmp(cm_cpu_isa(), "avx512") == 0 && cm_kern.repack[CM_TYPE_Q8_0] &&
        cm_kernels_avx2(&k) == 0 && cm_kernels_avx512(&k, 0) == 0) {
        k.isa = "avx512-novnni";
        test_table_switch(&k);
        cm_kern = k;
        run_suite();
        test_lifetimes();
        CHECK(cm_cpu_init(err, sizeof err) == 0, "cm_cpu_init again: %s", err);
    }
    cm_kernels_scalar(&k);
    if (strcmp(cm_cpu_isa(), "avx512") == 0 && cm_kernels_avx2(&k) == 0) {
        test_table_switch(&k);
        cm_kern = k;
        run_suite();
        test_lifetimes();
        CHECK(cm_cpu_init(err, sizeof err) == 0, "cm_cpu_init again: %s", err);
    }
    return tl_finish("test_repack");
}
