/* test_quant.c - quant/ references and the CPU backend's kernels.
 *
 *  (a) quantize -> dequantize round trips of every type, error bounds;
 *  (b) every ISA this CPU runs, forced in turn, against the scalar
 *      references: random and adversarial blocks, one block and many;
 *      SIMD activation quantizers byte-identical to the scalar ones;
 *  (c) cm_matmul against dequantize-then-dot for n_tok = 1, 3, 17;
 *  (d) f16/bf16 conversions over all 65536 patterns;
 *  (e) tensors of llama.cpp-written fixture files (shared data, found by
 *      tl_shared: $CM_SHARED or ../shared) against their float twins.
 * Model-level checks against llama.cpp logits live in the model tests.
 * Exit 0 pass, 1 fail. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu.h"
#include "backends/cpu/kernels.h"
#include "quant/blocks.h"
#include "quant/quant.h"
#include "dotref.h"
#include "testlib.h"

/* ---- deterministic randomness ------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rnd_uniform(void) /* [0, 1) */
{
    return (float)(rnd64() >> 40) * 0x1p-24f;
}

static float rnd_normal(void)
{
    float u = rnd_uniform() + 1e-7f, v = rnd_uniform();
    return sqrtf(-2 * logf(u)) * cosf(6.2831853f * v);
}

static void fill_normal(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = scale * rnd_normal();
}

static const enum cm_type all_types[] = {
    CM_TYPE_F32,  CM_TYPE_F16,  CM_TYPE_BF16, CM_TYPE_Q4_0, CM_TYPE_Q4_1,
    CM_TYPE_Q5_0, CM_TYPE_Q5_1, CM_TYPE_Q8_0, CM_TYPE_Q8_1, CM_TYPE_Q2_K,
    CM_TYPE_Q3_K, CM_TYPE_Q4_K, CM_TYPE_Q5_K, CM_TYPE_Q6_K, CM_TYPE_Q8_K,
};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

static const char *tname(enum cm_type t)
{
    return cm_type_get(t)->name;
}

static int64_t blk(enum cm_type t)
{
    return cm_type_get(t)->block_elems;
}

/* ---- (a) round trips --------------------------------------------------- */

/* Bound on rms(dequant(quant(x)) - x) / rms(x) for gaussian x. */
static double rt_bound(enum cm_type t)
{
    switch (t) {
    case CM_TYPE_F32: return 0;
    case CM_TYPE_F16: return 1e-3;
    case CM_TYPE_BF16: return 5e-3;
    case CM_TYPE_Q8_0: case CM_TYPE_Q8_1: case CM_TYPE_Q8_K: return 0.01;
    case CM_TYPE_Q6_K: return 0.03;
    case CM_TYPE_Q5_0: case CM_TYPE_Q5_1: case CM_TYPE_Q5_K: return 0.06;
    case CM_TYPE_Q4_0: case CM_TYPE_Q4_1: case CM_TYPE_Q4_K: return 0.12;
    case CM_TYPE_Q3_K: return 0.25;
    case CM_TYPE_Q2_K: return 0.5;
    default: return 0;
    }
}

static double roundtrip_err(enum cm_type t, const float *x, int64_t n)
{
    void *q = malloc(cm_row_bytes(t, n));
    float *y = malloc(n * sizeof(float));
    CHECK(cm_quantize_row(t, x, q, n) == 0, "%s: quantize refused", tname(t));
    cm_dequantize_row(t, q, y, n);
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        e += (double)(y[i] - x[i]) * (y[i] - x[i]);
        s += (double)x[i] * x[i];
    }
    free(q);
    free(y);
    return s > 0 ? sqrt(e / s) : sqrt(e);
}

static void test_roundtrip(void)
{
    const int64_t n = 4096;
    float *x = malloc(n * sizeof(float));
    for (int k = 0; k < N_TYPES; k++) {
        enum cm_type t = all_types[k];
        fill_normal(x, n, 0.02f);
        double e = roundtrip_err(t, x, n);
        printf("  roundtrip %-5s rel rms err %.5f (bound %.3f)\n", tname(t), e,
               rt_bound(t));
        CHECK(e <= rt_bound(t), "%s roundtrip error %g", tname(t), e);
        memset(x, 0, n * sizeof(float)); /* zeros stay exactly zero */
        CHECK(roundtrip_err(t, x, n) == 0, "%s: zeros not exact", tname(t));
        for (int64_t i = 0; i < n; i++) /* shifted data exercises mins */
            x[i] = 1.0f + 0.1f * rnd_uniform();
        e = roundtrip_err(t, x, n);
        CHECK(e <= rt_bound(t), "%s shifted roundtrip error %g", tname(t), e);
    }
    free(x);
}

/* ---- block construction ------------------------------------------------ */

/* Byte offsets of the half-precision scale fields of a block (-1 ends). */
static const int *scale_fields(enum cm_type t)
{
    static const int d0[] = {0, -1}, dm0[] = {0, 2, -1}, q2[] = {80, 82, -1},
                     q3[] = {108, -1}, q6[] = {208, -1}, none[] = {-1};
    switch (t) {
    case CM_TYPE_Q4_0: case CM_TYPE_Q5_0: case CM_TYPE_Q8_0: return d0;
    case CM_TYPE_Q4_1: case CM_TYPE_Q5_1: case CM_TYPE_Q8_1: return dm0;
    case CM_TYPE_Q4_K: case CM_TYPE_Q5_K: return dm0;
    case CM_TYPE_Q2_K: return q2;
    case CM_TYPE_Q3_K: return q3;
    case CM_TYPE_Q6_K: return q6;
    default: return none;
    }
}

enum wkind { W_RANDOM, W_ZERO, W_BYTES00, W_BYTESFF, W_BYTES80, W_SUBNORM,
             W_NEGSUB, W_NKINDS };
static const char *wkind_name[] = {"random", "zero", "bytes00+max",
                                   "bytesff+max", "bytes80+max",
                                   "subnormal", "neg-subnormal"};

static uint16_t scale_for(enum wkind k)
{
    switch (k) {
    case W_RANDOM: /* 2^-12 .. 2^0, either sign */
        return cm_f32_to_f16((rnd64() & 1 ? -1.0f : 1.0f) *
                             ldexpf(1.0f + rnd_uniform(), -12 + (int)(rnd64() % 12)));
    case W_ZERO: return 0;
    case W_SUBNORM: return (uint16_t)(1 + rnd64() % 0x3FF);
    case W_NEGSUB: return (uint16_t)(0x8000 | (1 + rnd64() % 0x3FF));
    default: return 0x7BFF; /* 65504 */
    }
}

/* Floats for the float types. */
static float float_for(enum wkind k)
{
    switch (k) {
    case W_RANDOM: return rnd_normal();
    case W_ZERO: return 0;
    case W_SUBNORM: return cm_f16_to_f32((uint16_t)(1 + rnd64() % 0x3FF));
    case W_NEGSUB: return -cm_f16_to_f32((uint16_t)(1 + rnd64() % 0x3FF));
    case W_BYTES00: return 65504.0f;
    default: return (rnd64() & 1) ? -65504.0f : 65504.0f;
    }
}

static void fill_float_weights(enum cm_type t, void *w, int64_t n, enum wkind k)
{
    for (int64_t i = 0; i < n; i++) {
        float v = float_for(k);
        if (t == CM_TYPE_F32)
            ((float *)w)[i] = v;
        else if (t == CM_TYPE_F16)
            ((uint16_t *)w)[i] = cm_f32_to_f16(v);
        else
            ((uint16_t *)w)[i] = cm_f32_to_bf16(v);
    }
}

/* Quantized weights: every bit pattern of the levels is valid, so random
 * bytes cover the formats fully; only the scale fields are controlled so
 * they stay finite. */
static void fill_weights(enum cm_type t, void *w, int64_t n, enum wkind k)
{
    const cm_type_info *ti = cm_type_get(t);
    if (ti->block_elems == 1) {
        fill_float_weights(t, w, n, k);
        return;
    }
    uint8_t *p = w;
    size_t bytes = cm_row_bytes(t, n);
    int fill = k == W_ZERO ? 0 : k == W_BYTES00 ? 0 : k == W_BYTESFF ? 0xFF : 0x80;
    for (size_t i = 0; i < bytes; i++)
        p[i] = (k == W_RANDOM || k == W_SUBNORM || k == W_NEGSUB)
                   ? (uint8_t)rnd64() : (uint8_t)fill;
    for (int64_t b = 0; b < n / ti->block_elems; b++) {
        uint8_t *blk0 = p + b * ti->block_bytes;
        if (t == CM_TYPE_Q8_K) { /* float d */
            float d = k == W_ZERO ? 0 : cm_f16_to_f32(scale_for(k));
            memcpy(blk0, &d, 4);
            continue;
        }
        for (const int *f = scale_fields(t); *f >= 0; f++) {
            uint16_t h = scale_for(k);
            memcpy(blk0 + *f, &h, 2);
        }
    }
}

enum xkind { X_RANDOM, X_ZERO, X_MAX, X_TINY, X_SMALL, X_NKINDS };
static const char *xkind_name[] = {"random", "zero", "max", "tiny", "small"};

static void fill_acts(float *x, int64_t n, enum xkind k)
{
    for (int64_t i = 0; i < n; i++) {
        switch (k) {
        case X_RANDOM: x[i] = rnd_normal(); break;
        case X_ZERO: x[i] = 0; break;
        case X_MAX: /* large, yet q8_1's s = d*sum(q) stays below half max */
            x[i] = (rnd64() & 1) ? 2000.0f : -2000.0f;
            break;
        case X_TINY: x[i] = 1e-7f * rnd_normal(); break;
        default: x[i] = 1e-3f * rnd_normal(); break; /* subnormal f16 d */
        }
    }
}

/* sum |w_i x_i| + |offset_i x_i| in double: the size of the terms a dot
 * adds up, against which float summation error is measured. */
static double dot_magnitude(enum cm_type t, const void *w, const float *xd,
                            int64_t n)
{
    size_t wb = cm_row_bytes(t, n);
    void *w0 = malloc(wb);
    float *wd = malloc(n * sizeof(float)), *wo = malloc(n * sizeof(float));
    memcpy(w0, w, wb);
    zero_levels(t, w0, n);
    cm_dequantize_row(t, w, wd, n);
    cm_dequantize_row(t, w0, wo, n);
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (fabs(wd[i]) + fabs(wo[i])) * fabs(xd[i]);
    free(w0);
    free(wd);
    free(wo);
    return s;
}

/* ---- (b) kernels against references ------------------------------------ */

static enum cm_type dot_type(enum cm_type t)
{
    return cm_type_get(t)->dot_type;
}

/* Activation row in t's dot type, quantized by the scalar reference; also
 * checks the active ISA's quantizer produces the same bytes. */
static void *make_acts(enum cm_type t, const float *x, int64_t n)
{
    enum cm_type dt = dot_type(t);
    size_t bytes = cm_row_bytes(dt, n);
    void *xq = malloc(bytes), *xk = malloc(bytes);
    cm_quantize_row(dt, x, xq, n);
    cm_kern.quantize[dt](x, xk, n);
    CHECK(memcmp(xq, xk, bytes) == 0, "%s: %s quantizer differs from scalar",
          cm_kern.isa, tname(dt));
    free(xk);
    return xq;
}

static void check_dot(enum cm_type t, int64_t n, enum wkind wk, enum xkind xk)
{
    float *x = malloc(n * sizeof(float)), *xd = malloc(n * sizeof(float));
    void *w = malloc(cm_row_bytes(t, n));
    fill_weights(t, w, n, wk);
    fill_acts(x, n, xk);
    void *xq = make_acts(t, x, n);
    cm_dequantize_row(dot_type(t), xq, xd, n);
    float ref = cm_vec_dot_ref(t, n, w, xq);
    float got = cm_kern.vec_dot[t](n, w, xq);
    double terms = blk(t) == 1 ? n / 8.0 : (double)(n / blk(t));
    double mag = dot_magnitude(t, w, xd, n);
    double tol = 3e-7 * (8 + terms) * mag + 1e-37;
    CHECK(fabs((double)got - ref) <= tol && isfinite(got) == isfinite(ref),
          "%s %s n=%lld w=%s x=%s: got %.9g ref %.9g (tol %.3g)", cm_kern.isa,
          tname(t), (long long)n, wkind_name[wk], xkind_name[xk], got, ref, tol);
    free(x);
    free(xd);
    free(w);
    free(xq);
}

static void test_kernels_once(void)
{
    for (int k = 0; k < N_TYPES; k++) {
        enum cm_type t = all_types[k];
        int64_t b = blk(t);
        int64_t sizes[] = {b == 1 ? 1 : b, b == 1 ? 37 : 3 * b, b == 1 ? 4099 : 4096 / b * b + b};
        for (int s = 0; s < 3; s++)
            for (int wk = 0; wk < W_NKINDS; wk++)
                for (int xk = 0; xk < X_NKINDS; xk++)
                    check_dot(t, sizes[s], (enum wkind)wk, (enum xkind)xk);
    }
}

/* ---- (c) matmul ---------------------------------------------------------- */

static void check_matmul(enum cm_type t, int64_t cols, int64_t rows, int64_t n_tok)
{
    size_t rb = cm_row_bytes(t, cols);
    void *w = malloc(rb * rows);
    float *x = malloc(cols * n_tok * sizeof(float));
    float *y = malloc(rows * n_tok * sizeof(float));
    float *xd = malloc(cols * sizeof(float)), *wd = malloc(cols * sizeof(float));
    fill_weights(t, w, cols * rows, W_RANDOM);
    fill_normal(x, cols * n_tok, 1.0f);
    cm_tensor tw = {"w", t, 2, {cols, rows, 1, 1}, w, rb * rows, NULL, 0};
    void *scratch = aligned_alloc(64, cm_matmul_scratch_bytes(&tw, n_tok) + 64);
    cm_matmul(&tw, x, n_tok, y, scratch);
    enum cm_type dt = dot_type(t);
    void *xq = malloc(cm_row_bytes(dt, cols));
    int bad = 0;
    for (int64_t tk = 0; tk < n_tok; tk++) {
        cm_quantize_row(dt, x + tk * cols, xq, cols);
        cm_dequantize_row(dt, xq, xd, cols);
        for (int64_t r = 0; r < rows; r++) {
            const char *wr = (const char *)w + r * rb;
            cm_tensor_row(&tw, r, wd);
            double want = 0;
            for (int64_t i = 0; i < cols; i++)
                want += (double)wd[i] * xd[i];
            double mag = dot_magnitude(t, wr, xd, cols);
            /* q8_1's s is d*sum rounded to half: the min term drifts */
            double tol = 1e-5 * mag + (dt == CM_TYPE_Q8_1 ? 2e-3 * mag : 0);
            bad += !(fabs(y[tk * rows + r] - want) <= tol);
        }
    }
    CHECK(bad == 0, "%s matmul %s %lldx%lld n_tok=%lld: %d wrong outputs",
          cm_kern.isa, tname(t), (long long)rows, (long long)cols,
          (long long)n_tok, bad);
    free(w), free(x), free(y), free(xd), free(wd), free(xq), free(scratch);
}

static void test_matmul_once(void)
{
    static const int64_t toks[] = {1, 3, 17};
    for (int k = 0; k < N_TYPES; k++)
        for (int j = 0; j < 3; j++)
            check_matmul(all_types[k], 512, 37, toks[j]);
    check_matmul(CM_TYPE_Q4_0, 4096, 67, 17); /* several row tiles */
    /* rows whose block count leaves every tail of an 8-block group (the
     * q4_0 gemv's), and the anchor models' widths */
    for (int64_t nb = 1; nb <= 9; nb++) {
        check_matmul(CM_TYPE_Q4_0, 32 * nb, 5, 1 + nb % 3);
        check_matmul(CM_TYPE_Q8_0, 32 * nb, 9, 1 + nb % 3);
        check_matmul(CM_TYPE_Q5_0, 32 * nb, 7, 1 + nb % 3);
    }
    check_matmul(CM_TYPE_Q5_0, 576, 35, 1);
    check_matmul(CM_TYPE_Q4_0, 576, 33, 1);
    check_matmul(CM_TYPE_Q4_0, 896, 33, 2);
    check_matmul(CM_TYPE_Q8_0, 576, 35, 1);
}

/* ---- (c') batched products against the references ---------------------- */

/* Fills a canary region and checks it later: scratch must fit in
 * cm_matmul_scratch_bytes() and y in n_tok * rows floats. */
#define CANARY 256
static void canary_set(void *p) { memset(p, 0xA5, CANARY); }
static int canary_ok(const void *p)
{
    const unsigned char *c = p;
    for (int i = 0; i < CANARY; i++)
        if (c[i] != 0xA5)
            return 0;
    return 1;
}

/* cm_matmul of the first n_tok rows of x, every output within tolerance of
 * the per-token reference; scratch and y checked for overruns. */
static int batched_run(const cm_tensor *tw, const float *x, int64_t n_tok,
                       const double *ref, const double *tol)
{
    int64_t rows = tw->ne[1];
    size_t sb = cm_matmul_scratch_bytes(tw, n_tok);
    char *scratch = NULL, *y = NULL; /* y aligned like perplexity's logits */
    if (posix_memalign((void **)&scratch, 64, sb + CANARY) != 0 ||
        posix_memalign((void **)&y, 64, rows * n_tok * sizeof(float) + CANARY) != 0)
        abort();
    canary_set(scratch + sb);
    canary_set(y + rows * n_tok * sizeof(float));
    cm_matmul(tw, x, n_tok, (float *)y, scratch);
    int bad = !canary_ok(scratch + sb) || !canary_ok(y + rows * n_tok * sizeof(float));
    for (int64_t i = 0; i < rows * n_tok; i++) {
        float got = ((float *)y)[i];
        bad += !(fabs(got - ref[i]) <= tol[i]) || isfinite(got) != isfinite(ref[i]);
    }
    free(scratch), free(y);
    return bad;
}

/* n_tok = 1..max_tok (random data), then every weight/activation kind at
 * one batch size, for one type and shape. */
static void check_batched(enum cm_type t, int64_t cols, int64_t rows, int64_t max_tok)
{
    size_t rb = cm_row_bytes(t, cols);
    void *w = malloc(rb * rows);
    float *x = malloc(cols * max_tok * sizeof(float));
    double *ref = malloc(rows * max_tok * sizeof(double)), *tol = malloc(rows * max_tok * sizeof(double));
    cm_tensor tw = {"w", t, 2, {cols, rows, 1, 1}, w, rb * rows, NULL, 0};
    for (int wk = 0; wk < W_NKINDS; wk++) {
        for (int xk = 0; xk < X_NKINDS; xk++) {
            if ((wk != W_RANDOM || xk != X_RANDOM) && (wk == W_RANDOM) == (xk == X_RANDOM))
                continue; /* random x random, and each adversarial kind against random */
            fill_weights(t, w, cols * rows, (enum wkind)wk);
            fill_acts(x, cols * max_tok, (enum xkind)xk);
            batched_refs(t, w, cols, rows, x, max_tok, ref, tol);
            int64_t lo = wk == W_RANDOM && xk == X_RANDOM ? 1 : max_tok;
            for (int64_t n = lo; n <= max_tok; n++) {
                int bad = batched_run(&tw, x, n, ref, tol);
                CHECK(bad == 0, "%s batched %s %lldx%lld n_tok=%lld w=%s x=%s: %d wrong",
                      cm_kern.isa, tname(t), (long long)rows, (long long)cols, (long long)n,
                      wkind_name[wk], xkind_name[xk], bad);
            }
        }
    }
    free(w), free(x), free(ref), free(tol);
}

/* An output of >= 16 MB, which the kernels write with streaming stores
 * (whole 16-row tiles, and a partial last one written normally). */
static void check_streamed(enum cm_type t, int64_t cols)
{
    const int64_t rows = 16400, n_tok = 257;
    size_t rb = cm_row_bytes(t, cols);
    void *w = malloc(rb * rows);
    float *x = malloc(cols * n_tok * sizeof(float));
    double *ref = malloc(rows * n_tok * sizeof(double)), *tol = malloc(rows * n_tok * sizeof(double));
    cm_tensor tw = {"w", t, 2, {cols, rows, 1, 1}, w, rb * rows, NULL, 0};
    fill_weights(t, w, cols * rows, W_RANDOM);
    fill_acts(x, cols * n_tok, X_RANDOM);
    batched_refs(t, w, cols, rows, x, n_tok, ref, tol);
    int bad = batched_run(&tw, x, n_tok, ref, tol);
    CHECK(bad == 0, "%s streamed %s %lldx%lld n_tok=%lld: %d wrong", cm_kern.isa, tname(t),
          (long long)rows, (long long)cols, (long long)n_tok, bad);
    free(w), free(x), free(ref), free(tol);
}

/* cm_matmul_n (one packing of x shared by several weights, also of
 * different types) gives each weight exactly cm_matmul's output. */
static void check_matmul_n(const enum cm_type *types, int nw, int64_t cols, int64_t n_tok)
{
    enum { MAXW = 4 };
    cm_tensor tw[MAXW];
    const cm_tensor *ws[MAXW];
    float *ys[MAXW], *one[MAXW];
    size_t sb = 0;
    float *x = malloc(cols * n_tok * sizeof(float));
    fill_acts(x, cols * n_tok, X_RANDOM);
    for (int i = 0; i < nw; i++) {
        int64_t rows = 24 + 40 * i; /* different sizes: partial tiles, uneven shares */
        size_t rb = cm_row_bytes(types[i], cols);
        void *w = malloc(rb * rows);
        fill_weights(types[i], w, cols * rows, W_RANDOM);
        tw[i] = (cm_tensor){"w", types[i], 2, {cols, rows, 1, 1}, w, rb * rows, NULL, 0};
        ws[i] = &tw[i];
        ys[i] = malloc(rows * n_tok * sizeof(float));
        one[i] = malloc(rows * n_tok * sizeof(float));
        size_t b = cm_matmul_scratch_bytes(&tw[i], n_tok);
        sb = b > sb ? b : sb;
    }
    void *scratch = aligned_alloc(64, (sb + 63) / 64 * 64);
    cm_matmul_n(ws, nw, x, n_tok, ys, scratch);
    for (int i = 0; i < nw; i++) {
        cm_matmul(ws[i], x, n_tok, one[i], scratch);
        CHECK(memcmp(ys[i], one[i], (size_t)tw[i].ne[1] * n_tok * sizeof(float)) == 0,
              "%s matmul_n weight %d (%s of %d) n_tok=%lld differs from matmul", cm_kern.isa, i,
              tname(types[i]), nw, (long long)n_tok);
        free((void *)tw[i].data), free(ys[i]), free(one[i]);
    }
    free(x), free(scratch);
}

static void test_batched_once(void)
{
    static const enum cm_type qkv[] = {CM_TYPE_Q5_0, CM_TYPE_Q5_0, CM_TYPE_Q8_0},
                              mixed[] = {CM_TYPE_Q4_0, CM_TYPE_Q5_1, CM_TYPE_Q4_K, CM_TYPE_F16};
    for (int64_t n = 1; n <= 70; n += 23) {
        check_matmul_n(qkv, 3, 576, n);
        check_matmul_n(mixed, 4, 512, n);
    }
    for (int k = 0; k < N_TYPES; k++) {
        enum cm_type t = all_types[k];
        if (t == CM_TYPE_Q8_K)
            continue; /* not a weight type models use; its dot is tested above */
        int64_t cols = blk(t) == 1 ? 37 : blk(t) == 32 ? 96 : 512;
        check_batched(t, cols, 37, 40); /* odd rows: a partial 16-row tile */
        check_batched(t, cols, 1, 20);
    }
    check_batched(CM_TYPE_F16, 100, 33, 70);  /* past the BLAS threshold */
    check_batched(CM_TYPE_F32, 129, 17, 70);
    check_batched(CM_TYPE_Q4_K, 1024, 50, 34); /* several tiles and groups */
    check_batched(CM_TYPE_Q8_0, 1024, 50, 34);
    if (!strncmp(cm_kern.isa, "avx512", 6)) { /* the ISA with streaming stores */
        check_streamed(CM_TYPE_Q4_0, 32);
        check_streamed(CM_TYPE_Q4_K, 256);
        check_streamed(CM_TYPE_F16, 32);
    }
}

/* ---- (c'') attention helpers ------------------------------------------------ */

static void check_helpers_type(enum cm_type t, int64_t n, const struct cm_kernels *ref)
{
    size_t rb = cm_row_bytes(t, n);
    void *row = malloc(rb);
    float *x = malloc(n * sizeof(float)), *o1 = malloc(n * sizeof(float)),
          *o2 = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
    fill_weights(t, row, n, W_RANDOM);
    fill_normal(x, n, 1.0f);
    fill_normal(o1, n, 1.0f);
    memcpy(o2, o1, n * sizeof(float));
    cm_dequantize_row(t, row, v, n);
    float a = rnd_normal();
    ref->axpy[t](n, a, row, o1);
    cm_axpy_f(t, n, a, row, o2);
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += !(fabsf(o1[i] - o2[i]) <= 1e-6f * (fabsf(o1[i]) + fabsf(a * v[i])) + 1e-30f);
    CHECK(bad == 0, "%s axpy %s n=%lld: %d wrong", cm_kern.isa, tname(t), (long long)n, bad);
    if (t != CM_TYPE_Q8_0) {
        double mag = 0;
        for (int64_t i = 0; i < n; i++)
            mag += fabs((double)v[i] * x[i]);
        float got = cm_dot_f(t, n, row, x), want = cm_vec_dot_ref(t, n, row, x);
        CHECK(fabs(got - want) <= 3e-7 * (8 + n / 8.0) * mag + 1e-30,
              "%s dot_f %s n=%lld: got %.9g want %.9g", cm_kern.isa, tname(t), (long long)n,
              got, want);
        float *f = malloc(n * sizeof(float));
        cm_kern.to_float[t](row, f, n);
        CHECK(memcmp(f, v, n * sizeof(float)) == 0, "%s to_float %s n=%lld", cm_kern.isa,
              tname(t), (long long)n);
        free(f);
    }
    free(row), free(x), free(o1), free(o2), free(v);
}

/* Q8_0 KV rows: quantizer byte-identical to the reference, dot as vec_dot */
static void check_q8_0_kv(int64_t n)
{
    float *x = malloc(n * sizeof(float)), *k = malloc(n * sizeof(float));
    size_t rb = cm_row_bytes(CM_TYPE_Q8_0, n);
    void *q1 = malloc(rb), *q2 = malloc(rb), *kq = malloc(rb);
    fill_normal(x, n, 3.0f);
    fill_normal(k, n, 1.0f);
    cm_quantize_row(CM_TYPE_Q8_0, x, q1, n);
    cm_quantize_row_q8_0(x, q2, n);
    CHECK(memcmp(q1, q2, rb) == 0, "%s cm_quantize_row_q8_0 n=%lld", cm_kern.isa, (long long)n);
    cm_quantize_row(CM_TYPE_Q8_0, k, kq, n);
    float got = cm_vec_dot(CM_TYPE_Q8_0, n, kq, q2), want = cm_vec_dot_ref(CM_TYPE_Q8_0, n, kq, q1);
    CHECK(fabsf(got - want) <= 1e-5f * (fabsf(want) + n), "%s cm_vec_dot q8_0 n=%lld: %g vs %g",
          cm_kern.isa, (long long)n, got, want);
    free(x), free(k), free(q1), free(q2), free(kq);
}

/* cm_dot_rows_pair / cm_sum_rows_pair (two heads of one KV head, each row
 * read once) give each query exactly what the one-query functions give. */
static void check_rows_pair(enum cm_type t, int64_t n, int64_t m, const char *rows,
                            size_t stride, const float *x, const float *p)
{
    const int64_t big = m > n ? m : n;
    float *x2 = malloc(n * sizeof(float)), *p2 = malloc(m * sizeof(float));
    float *one = malloc(2 * big * sizeof(float)), *two = malloc(2 * big * sizeof(float));
    fill_normal(x2, n, 2.0f);
    fill_normal(p2, m, 1.0f);
    cm_dot_rows(t, n, rows, stride, m, x, one);
    cm_dot_rows(t, n, rows, stride, m, x2, one + big);
    cm_dot_rows_pair(t, n, rows, stride, m, x, x2, two, two + big);
    CHECK(!memcmp(one, two, m * sizeof(float)) && !memcmp(one + big, two + big, m * sizeof(float)),
          "%s dot_rows_pair %s n=%lld m=%lld differs from dot_rows", cm_kern.isa, tname(t),
          (long long)n, (long long)m);
    cm_sum_rows(t, n, rows, stride, m, p, one);
    cm_sum_rows(t, n, rows, stride, m, p2, one + big);
    cm_sum_rows_pair(t, n, rows, stride, m, p, p2, two, two + big);
    CHECK(!memcmp(one, two, n * sizeof(float)) && !memcmp(one + big, two + big, n * sizeof(float)),
          "%s sum_rows_pair %s n=%lld m=%lld differs from sum_rows", cm_kern.isa, tname(t),
          (long long)n, (long long)m);
    free(x2), free(p2), free(one), free(two);
}

/* cm_dot_rows / cm_sum_rows over m rows stride bytes apart (a KV cache's
 * positions of one head) against per-row references. */
static void check_rows_type(enum cm_type t, int64_t n, int64_t m)
{
    size_t rb = cm_row_bytes(t, n), stride = 2 * rb + 64;
    char *rows = calloc((size_t)m, stride);
    float *x = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
    float *p = malloc(m * sizeof(float)), *got = malloc((m > n ? m : n) * sizeof(float));
    double *want = calloc((size_t)(m > n ? m : n), sizeof(double));
    double *mag = calloc((size_t)(m > n ? m : n), sizeof(double));
    void *xq = malloc(cm_row_bytes(CM_TYPE_Q8_0, n) + sizeof(float) * n);
    fill_normal(x, n, 1.0f);
    fill_normal(p, m, 1.0f);
    for (int64_t j = 0; j < m; j++)
        fill_weights(t, rows + (size_t)j * stride, n, W_RANDOM);
    const void *xin = x;
    if (t == CM_TYPE_Q8_0) {
        cm_quantize_row_q8_0(x, xq, n);
        xin = xq;
    }
    cm_dot_rows(t, n, rows, stride, m, xin, got);
    int bad = 0;
    for (int64_t j = 0; j < m; j++) {
        const char *r = rows + (size_t)j * stride;
        double w = cm_vec_dot_ref(t, n, r, xin);
        cm_dequantize_row(t, r, v, n);
        double g = 0;
        for (int64_t i = 0; i < n; i++)
            g += fabs((double)v[i] * x[i]);
        bad += !(fabs(got[j] - w) <= 1e-5 * g + 1e-30);
    }
    CHECK(bad == 0, "%s dot_rows %s n=%lld m=%lld: %d wrong", cm_kern.isa, tname(t),
          (long long)n, (long long)m, bad);
    if (t == CM_TYPE_Q8_0 || t == CM_TYPE_F16 || t == CM_TYPE_F32 || t == CM_TYPE_BF16) {
        for (int64_t j = 0; j < m; j++) {
            cm_dequantize_row(t, rows + (size_t)j * stride, v, n);
            for (int64_t i = 0; i < n; i++) {
                want[i] += (double)p[j] * v[i];
                mag[i] += fabs((double)p[j] * v[i]);
            }
        }
        fill_normal(got, n, 1.0f); /* overwritten, not added to */
        cm_sum_rows(t, n, rows, stride, m, p, got);
        bad = 0;
        for (int64_t i = 0; i < n; i++)
            bad += !(fabs(got[i] - want[i]) <= 1e-6 * mag[i] + 1e-30);
        CHECK(bad == 0, "%s sum_rows %s n=%lld m=%lld: %d wrong", cm_kern.isa, tname(t),
              (long long)n, (long long)m, bad);
    }
    if (cm_rows_pair_fast(t)) /* (otherwise the pair functions are these two calls) */
        check_rows_pair(t, n, m, rows, stride, x, p);
    free(rows), free(x), free(v), free(p), free(got), free(want), free(mag), free(xq);
}

/* The attention softmax against the scalar table's (libm expf): values
 * spread like real scores, some far below the max (exp underflow). */
static void check_softmax(int64_t n, int round_f16, const struct cm_kernels *ref)
{
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    fill_normal(a, n, 8.0f);
    if (n > 3)
        a[n / 2] = -1000.0f;
    memcpy(b, a, n * sizeof(float));
    ref->softmax(a, n, 0.125f, round_f16);
    cm_attn_softmax(b, n, 0.125f, round_f16);
    int bad = 0;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        /* within 1e-6 relative, or one f16 step when rounding */
        double tol = round_f16 ? 1.0 / 1024 * fabs(a[i]) + 1e-7 : 1e-6 * fabs(a[i]) + 1e-12;
        bad += !(fabs(a[i] - b[i]) <= tol);
        /* the tolerance cannot tell an unrounded value: it must be an f16 */
        bad += round_f16 && cm_f16_to_f32(cm_f32_to_f16(b[i])) != b[i];
        sum += b[i];
    }
    CHECK(bad == 0, "%s softmax n=%lld round=%d: %d values off", cm_kern.isa, (long long)n,
          round_f16, bad);
    CHECK(fabs(sum - 1) < (round_f16 ? 1e-3 : 1e-5), "%s softmax n=%lld sums to %.9g",
          cm_kern.isa, (long long)n, sum);
    free(a), free(b);
}

/* The first index of the largest value, or -1 if one is not finite. */
static int64_t argmax_simple(const float *x, int64_t n)
{
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return -1;
        if (best < 0 || x[i] > x[best])
            best = i;
    }
    return best;
}

/* The arg-max (the ISA's and the scalar table's) against the plain loop
 * above: random rows, rows whose maximum repeats (the first wins), the
 * maximum at either end, and rows with a NaN or an infinity (-1: the
 * sampler's slow path). */
static void check_argmax(int64_t n, const struct cm_kernels *ref)
{
    float *a = malloc(n * sizeof(float));
    for (int c = 0; c < 7; c++) {
        fill_normal(a, n, 4.0f);
        if (c == 1 && n > 2) /* ties: the later copies must lose */
            a[n - 1] = a[n / 2] = a[1] = 50.0f;
        if (c == 2)
            a[n - 1] = 60.0f;
        if (c == 3)
            a[0] = 60.0f;
        if (c == 4)
            a[n / 3] = NAN;
        if (c == 5)
            a[n - 1] = INFINITY;
        if (c == 6)
            a[n / 2] = -INFINITY;
        int64_t want = argmax_simple(a, n), got = cm_argmax_finite(a, n), tab = ref->argmax(a, n);
        CHECK(got == want && tab == want, "%s argmax n=%lld case %d: %lld (scalar table %lld), "
              "want %lld", cm_kern.isa, (long long)n, c, (long long)got, (long long)tab,
              (long long)want);
    }
    free(a);
}

/* SwiGLU's silu(a) * b against the scalar table's, over the whole range
 * (large |a|: e^-a overflows or vanishes). */
static void check_swiglu(int64_t n, const struct cm_kernels *ref)
{
    float *a = malloc(n * sizeof(float)), *a2 = malloc(n * sizeof(float));
    float *b = malloc(n * sizeof(float));
    fill_normal(a, n, 4.0f);
    fill_normal(b, n, 1.0f);
    if (n > 4)
        a[0] = -200.0f, a[1] = 200.0f, a[2] = -87.5f, a[3] = 0.0f;
    memcpy(a2, a, n * sizeof(float));
    ref->swiglu(a, b, n);
    cm_swiglu(a2, b, n);
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += !(fabsf(a[i] - a2[i]) <= 1e-6f * fabsf(a[i]) + 1e-30f);
    CHECK(bad == 0, "%s swiglu n=%lld: %d values off", cm_kern.isa, (long long)n, bad);
    free(a), free(a2), free(b);
}

/* RMSNorm and the residual add against the scalar table's; large values
 * (whose squares need double) and a row of zeros included */
static void check_rmsnorm_add(int64_t n, const struct cm_kernels *ref)
{
    float *x = malloc(n * sizeof(float)), *w = malloc(n * sizeof(float));
    float *o1 = malloc(n * sizeof(float)), *o2 = malloc(n * sizeof(float));
    for (int pass = 0; pass < 3; pass++) {
        fill_normal(x, n, pass == 1 ? 3e4f : 1.0f);
        if (pass == 2)
            memset(x, 0, n * sizeof(float));
        fill_normal(w, n, 1.0f);
        ref->rmsnorm(o1, x, w, n, 1e-5f);
        cm_rmsnorm(o2, x, w, (int)n, 1e-5f);
        int bad = 0;
        for (int64_t i = 0; i < n; i++)
            bad += !(fabsf(o1[i] - o2[i]) <= 2e-6f * fabsf(o1[i]) + 1e-30f);
        CHECK(bad == 0, "%s rmsnorm n=%lld pass %d: %d values off", cm_kern.isa, (long long)n,
              pass, bad);
        memcpy(o2, x, n * sizeof(float));
        cm_rmsnorm(o2, o2, w, (int)n, 1e-5f); /* in place */
        bad = 0;
        for (int64_t i = 0; i < n; i++)
            bad += !(fabsf(o1[i] - o2[i]) <= 2e-6f * fabsf(o1[i]) + 1e-30f);
        CHECK(bad == 0, "%s rmsnorm in place n=%lld: %d values off", cm_kern.isa, (long long)n,
              bad);
    }
    fill_normal(x, n, 1.0f);
    fill_normal(w, n, 1.0f);
    memcpy(o1, x, n * sizeof(float));
    memcpy(o2, x, n * sizeof(float));
    ref->add(o1, w, n);
    cm_add(o2, w, (size_t)n);
    CHECK(memcmp(o1, o2, n * sizeof(float)) == 0, "%s add n=%lld differs", cm_kern.isa,
          (long long)n);
    free(x), free(w), free(o1), free(o2);
}

/* The divergence the kernels' sums give (kernels.h) */
static double kld_from(const double s[4])
{
    return s[2] / s[1] + log(s[0]) - log(s[1]);
}

/* KL(base || model) in double throughout, exponentials included */
static double kld_exact(const float *x, const float *b, int64_t n)
{
    double mx = -INFINITY, mb = -INFINITY, sx = 0, sb = 0, d = 0;
    for (int64_t i = 0; i < n; i++)
        mx = fmax(mx, x[i]), mb = fmax(mb, b[i]);
    for (int64_t i = 0; i < n; i++)
        sx += exp(x[i] - mx), sb += exp(b[i] - mb);
    double lx = mx + log(sx), lb = mb + log(sb);
    for (int64_t i = 0; i < n; i++)
        d += exp(b[i] - lb) * ((b[i] - lb) - (x[i] - lx));
    return d;
}

/* Perplexity's sums against the scalar table's, and the divergence they
 * give against one computed in double: a base's log-probabilities (f32,
 * then rounded to f16 as saved) and a model's logits that differ from
 * them by noise of size `noise` plus an offset (raw logits). */
static void check_ppl_sums(int64_t n, float noise, const struct cm_kernels *ref)
{
    float *x = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    float *b16f = malloc(n * sizeof(float));
    uint16_t *b16 = malloc(n * sizeof(uint16_t));
    fill_normal(b, n, 3.0f);
    double lse = 0;
    for (int64_t i = 0; i < n; i++)
        lse += exp(b[i]);
    float mx = -INFINITY, mb = -INFINITY, m16 = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        b[i] = (float)(b[i] - log(lse));
        b16[i] = cm_f32_to_f16(b[i]);
        b16f[i] = cm_f16_to_f32(b16[i]);
        x[i] = b[i] + 7.5f + noise * rnd_normal();
        mx = fmaxf(mx, x[i]), mb = fmaxf(mb, b[i]), m16 = fmaxf(m16, b16f[i]);
    }
    double want = ref->exp_sum(x, n, mx), got = cm_exp_sum(x, n, mx);
    CHECK(fabs(got - want) <= 1e-6 * want, "%s exp_sum n=%lld: %.12g want %.12g", cm_kern.isa,
          (long long)n, got, want);
    for (int f16 = 0; f16 < 2; f16++) {
        const float *bf = f16 ? b16f : b;
        const void *bp = f16 ? (const void *)b16 : (const void *)b;
        float sb = f16 ? m16 : mb;
        double w[4], g[4], mag = 0;
        ref->kld_sums(x, bp, f16, n, mx, sb, w);
        cm_kld_sums(x, bp, f16, n, mx, sb, g);
        for (int64_t i = 0; i < n; i++)
            mag += exp((double)bf[i] - sb) * fabs(((double)bf[i] - sb) - ((double)x[i] - mx));
        CHECK(g[0] == got && g[3] == w[3] && g[3] == 0 && fabs(g[1] - w[1]) <= 1e-6 * w[1] &&
                  fabs(g[2] - w[2]) <= 1e-6 * mag,
              "%s kld_sums n=%lld f16=%d: %.12g %.12g %.12g %g want %.12g %.12g %.12g %g "
              "(exp_sum %.12g)", cm_kern.isa, (long long)n, f16, g[0], g[1], g[2], g[3], w[0],
              w[1], w[2], w[3], got);
        double k = kld_exact(x, bf, n), kg = kld_from(g);
        /* Float exponentials (AVX-512's within 7.9e-8 relative of exp
         * over [-30, 0], measured) and 4-8 float adds per lane before the
         * double sums move each of the two log-sums by ~1e-7; seen: 6e-8
         * on x86, 1.6e-7 on NEON (this bound was 1e-7 until NEON crossed
         * it); worst case ~5e-7.  Still under what saving the base in f16
         * alone moves the divergence by (noise 0, f16: ~1e-6). */
        CHECK(fabs(kg - k) <= 1e-5 * k + 3e-7, "%s kld n=%lld f16=%d noise %g: %.9g want %.9g",
              cm_kern.isa, (long long)n, f16, noise, kg, k);
        if (n == 49152 && f16)
            printf("    %s kld n=%lld noise %g: %.6g (double: %.6g)\n", cm_kern.isa,
                   (long long)n, noise, kg, k);
    }
    free(x), free(b), free(b16f), free(b16);
}

/* KV cache rows to f16: bit for bit the scalar conversion, overflow,
 * subnormals and ties included. */
static void check_row_to_f16(int64_t n)
{
    float *x = malloc(n * sizeof(float));
    uint16_t *h = malloc(n * sizeof(uint16_t));
    fill_normal(x, n, 100.0f);
    static const float special[] = {65504.0f, 65520.0f, 1e9f, -1e9f, 6e-8f, 3e-8f, 1e-5f,
                                    -0.0f, 0.0f, 1.00048828125f, INFINITY, -INFINITY};
    for (int64_t i = 0; i < n && i < 12; i++)
        x[i] = special[i];
    cm_row_to_f16(x, h, n);
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += h[i] != cm_f32_to_f16(x[i]);
    CHECK(bad == 0, "%s row_to_f16 n=%lld: %d values differ", cm_kern.isa, (long long)n, bad);
    free(x), free(h);
}

/* Prompt attention tiles: nk cached rows against nq queries, against
 * per-pair references (ld > nk: the output rows' stride). */
static void check_attn_tiles(enum cm_type t, int64_t d, int nk, int64_t nq)
{
    size_t rb = cm_row_bytes(t, d), stride = rb + 32, ld = (size_t)nk + 5;
    char *rows = calloc((size_t)nk, stride);
    float *q = malloc(nq * d * sizeof(float)), *v = malloc(d * sizeof(float));
    float *sc = malloc(nq * ld * sizeof(float)), *p = malloc(nq * ld * sizeof(float));
    float *o = malloc(nq * d * sizeof(float));
    double *want = calloc((size_t)(nq * d), sizeof(double)), *mag = calloc((size_t)(nq * d), sizeof(double));
    for (int j = 0; j < nk; j++)
        fill_weights(t, rows + (size_t)j * stride, d, W_RANDOM);
    fill_normal(q, nq * d, 1.0f);
    fill_normal(p, nq * ld, 1.0f);
    fill_normal(o, nq * d, 1.0f);
    for (int64_t i = 0; i < nq * (int64_t)ld; i++)
        sc[i] = -7.0f; /* lanes past nk must keep it */
    cm_attn_qk(t, d, rows, stride, nk, q, nq, sc, ld);
    int bad = 0;
    for (int j = 0; j < nk; j++) {
        cm_dequantize_row(t, rows + (size_t)j * stride, v, d);
        for (int64_t i = 0; i < nq; i++) {
            double w = 0, g = 0;
            for (int64_t c = 0; c < d; c++) {
                w += (double)q[i * d + c] * v[c];
                g += fabs((double)q[i * d + c] * v[c]);
                want[i * d + c] += (double)p[i * ld + j] * v[c];
                mag[i * d + c] += fabs((double)p[i * ld + j] * v[c]);
            }
            bad += !(fabs(sc[i * ld + j] - w) <= 1e-5 * g + 1e-30);
        }
    }
    for (int64_t i = 0; i < nq; i++)
        for (size_t j = (size_t)nk; j < ld; j++)
            bad += sc[i * ld + j] != -7.0f;
    CHECK(bad == 0, "%s attn_qk %s d=%lld nk=%d nq=%lld: %d wrong", cm_kern.isa, tname(t),
          (long long)d, nk, (long long)nq, bad);
    for (int64_t i = 0; i < nq * d; i++) {
        want[i] += o[i];
        mag[i] += fabs(o[i]);
    }
    cm_attn_pv(t, d, rows, stride, nk, p, ld, nq, o);
    bad = 0;
    for (int64_t i = 0; i < nq * d; i++)
        bad += !(fabs(o[i] - want[i]) <= 1e-6 * mag[i] + 1e-30);
    CHECK(bad == 0, "%s attn_pv %s d=%lld nk=%d nq=%lld: %d wrong", cm_kern.isa, tname(t),
          (long long)d, nk, (long long)nq, bad);
    free(rows), free(q), free(v), free(sc), free(p), free(o), free(want), free(mag);
}

static void test_helpers_once(void)
{
    struct cm_kernels ref;
    cm_kernels_scalar(&ref);
    /* 32: small models' heads, which the attention kernels special-case */
    static const int64_t ns[] = {1, 5, 16, 31, 32, 64, 100, 128, 257};
    const int n_ns = (int)(sizeof ns / sizeof ns[0]);
    static const enum cm_type ft[] = {CM_TYPE_F32, CM_TYPE_F16, CM_TYPE_BF16};
    for (int i = 0; i < n_ns; i++)
        for (int k = 0; k < 3; k++)
            check_helpers_type(ft[k], ns[i], &ref);
    for (int64_t n = 32; n <= 256; n += 32) {
        check_helpers_type(CM_TYPE_Q8_0, n, &ref);
        check_q8_0_kv(n);
    }
    static const int64_t ms[] = {1, 3, 6, 64, 129};
    for (int i = 0; i < n_ns; i++)
        for (int j = 0; j < 5; j++)
            for (int k = 0; k < 3; k++)
                check_rows_type(ft[k], ns[i], ms[j]);
    for (int64_t n = 32; n <= 160; n += 32)
        check_rows_type(CM_TYPE_Q8_0, n, 65);
    for (int i = 0; i < n_ns; i++)
        for (int r = 0; r < 2; r++)
            check_softmax(ns[i] * 3, r, &ref);
    for (int i = 0; i < 8; i++)
        check_swiglu(ns[i] * 5, &ref);
    for (int i = 0; i < n_ns; i++)
        check_argmax(ns[i] * 3, &ref);
    check_argmax(49152, &ref);
    for (int i = 0; i < 8; i++)
        check_rmsnorm_add(ns[i] * 3 + 1, &ref);
    static const int64_t vocab[] = {1, 17, 1023, 1024, 1025, 49152, 151936};
    for (int i = 0; i < 7; i++)
        for (int k = 0; k < 3; k++)
            check_ppl_sums(vocab[i], k == 0 ? 0.0f : k == 1 ? 0.003f : 0.1f, &ref);
    for (int i = 0; i < 8; i++)
        check_row_to_f16(ns[i] + 12);
    static const int64_t dims[] = {16, 64, 80, 128, 200, 256};
    static const int nks[] = {1, 7, 16};
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 3; k++)
                check_attn_tiles(ft[k], dims[i], nks[j], 1 + 4 * (j & 1));
}

static void test_isas(void)
{
    static const char *isas[] = {"scalar", "avx2", "avx512", "neon"};
    char err[256];
    for (int i = 0; i < 4; i++) {
        setenv("CODEMOE_ISA", isas[i], 1);
        if (cm_cpu_init(err, sizeof err) != 0) {
            printf("  isa %-6s: skipped (%s)\n", isas[i], err);
            continue;
        }
        CHECK(strcmp(cm_cpu_isa(), isas[i]) == 0, "isa %s reports %s", isas[i],
              cm_cpu_isa());
        int before = tl_failures;
        test_kernels_once();
        test_matmul_once();
        test_batched_once();
        test_helpers_once();
        printf("  isa %-6s: kernels, matmul, batched, helpers %s\n", isas[i],
               tl_failures == before ? "ok" : "FAILED");
    }
    /* the AVX-512 kernels without VNNI (for CPUs like Skylake-SP), built
     * by hand since this CPU may well have VNNI */
    unsetenv("CODEMOE_ISA"); /* the loop's last ISA may not run here */
    struct cm_kernels k;
    cm_kernels_scalar(&k);
    if (cm_cpu_init(err, sizeof err) == 0 && strcmp(cm_cpu_isa(), "avx512") == 0 &&
        cm_kernels_avx2(&k) == 0 && cm_kernels_avx512(&k, 0) == 0) {
        int before = tl_failures;
        k.isa = "avx512-novnni";
        cm_kern = k;
        test_kernels_once();
        test_matmul_once();
        test_batched_once();
        test_helpers_once();
        printf("  isa avx512 without vnni: kernels, matmul, batched, helpers %s\n",
               tl_failures == before ? "ok" : "FAILED");
    }
    /* the NEON kernels without SDOT (Cortex-A53/A72 class), likewise */
    cm_kernels_scalar(&k);
    if (cm_cpu_init(err, sizeof err) == 0 && strcmp(cm_cpu_isa(), "neon") == 0 &&
        cm_kernels_neon(&k, 0) == 0) {
        int before = tl_failures;
        k.isa = "neon-nodotprod";
        cm_kern = k;
        test_kernels_once();
        test_matmul_once();
        test_batched_once();
        test_helpers_once();
        printf("  isa neon without dotprod: kernels, matmul, batched, helpers %s\n",
               tl_failures == before ? "ok" : "FAILED");
    }
    setenv("CODEMOE_ISA", "bogus", 1);
    CHECK(cm_cpu_init(err, sizeof err) == -1, "bogus ISA accepted");
    unsetenv("CODEMOE_ISA");
    CHECK(cm_cpu_init(err, sizeof err) == 0, "default init failed");
    printf("  default isa: %s\n", cm_cpu_isa());
}

/* ---- (d) half conversions ----------------------------------------------- */

static int is_nan16(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x3FF); }

/* binary16 value from first principles */
static double f16_value(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 0x3FF;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? INFINITY : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

static void test_f16(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = cm_f16_to_f32((uint16_t)h);
        if (is_nan16((uint16_t)h)) {
            uint16_t back = cm_f32_to_f16(f);
            CHECK(isnan(f) && is_nan16(back) && (back & 0x8000) == (h & 0x8000),
                  "f16 nan %04x", h);
            continue;
        }
        CHECK((double)f == f16_value((uint16_t)h) && !!signbit(f) == !!(h & 0x8000),
              "f16 %04x -> %g", h, f);
        CHECK(cm_f32_to_f16(f) == h, "f16 %04x round trip", h);
        /* rounding: the midpoint to the next magnitude goes to the even one,
         * anything off the midpoint to the nearer one (65504's neighbour
         * above is inf) */
        if ((h & 0x7FFF) >= 0x7C00)
            continue;
        double lo = fabs(f16_value((uint16_t)h));
        double hi = (h & 0x7FFF) == 0x7BFF ? 65536.0 : fabs(f16_value((uint16_t)(h + 1)));
        float mid = (float)((lo + hi) / 2), sgn = (h & 0x8000) ? -1.0f : 1.0f;
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        CHECK(cm_f32_to_f16(sgn * mid) == even, "f16 midpoint above %04x", h);
        CHECK(cm_f32_to_f16(sgn * nextafterf(mid, 0)) == h, "f16 below mid %04x", h);
        CHECK(cm_f32_to_f16(sgn * nextafterf(mid, INFINITY)) == (uint16_t)(h + 1),
              "f16 above mid %04x", h);
    }
    CHECK(cm_f32_to_f16(1e10f) == 0x7C00 && cm_f32_to_f16(-1e-10f) == 0x8000,
          "f16 overflow/underflow");
}

static void test_bf16(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = cm_bf16_to_f32((uint16_t)h);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        CHECK(bits == h << 16, "bf16 %04x widening", h);
        uint16_t back = cm_f32_to_bf16(f);
        if (isnan(f)) {
            CHECK((back & 0x7F80) == 0x7F80 && (back & 0x7F) && (back & 0x8000) == (h & 0x8000),
                  "bf16 nan %04x", h);
            continue;
        }
        CHECK(back == h, "bf16 %04x round trip", h);
        if ((h & 0x7FFF) >= 0x7F80)
            continue;
        /* midpoint between h and h+1 (the top finite's neighbour is inf) */
        uint32_t mb = (h << 16) | 0x8000;
        float mid;
        memcpy(&mid, &mb, 4);
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        CHECK(cm_f32_to_bf16(mid) == even, "bf16 midpoint above %04x", h);
        CHECK(cm_f32_to_bf16(nextafterf(mid, 0)) == h, "bf16 below mid %04x", h);
        CHECK(cm_f32_to_bf16(nextafterf(mid, (h & 0x8000) ? -INFINITY : INFINITY)) ==
                  (uint16_t)(h + 1), "bf16 above mid %04x", h);
    }
}

/* ---- (e) tensors written by llama.cpp ------------------------------------
 * The fixture models exist in float and in each quantized type; every
 * quantized tensor must dequantize close to its float twin.  A wrong bit
 * layout gives errors near 100%, far above any bound here.  A minimal GGUF
 * walk (the real reader lives in src/formats/gguf.c) finds the tensors. */

typedef struct {
    char name[96];
    uint32_t type;
    int64_t ne[4];
    const uint8_t *data;
} fx_tensor;

typedef struct {
    uint8_t *buf;
    size_t len, pos;
    int bad;
    int n;
    fx_tensor t[64];
} fx_file;

static uint64_t fx_get(fx_file *f, int bytes)
{
    uint64_t v = 0;
    if (f->pos + bytes > f->len) {
        f->bad = 1;
        return 0;
    }
    memcpy(&v, f->buf + f->pos, bytes); /* little-endian host */
    f->pos += bytes;
    return v;
}

static void fx_skip_value(fx_file *f, uint32_t type)
{
    static const int size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == 8) { /* string */
        f->pos += fx_get(f, 8);
    } else if (type == 9) { /* array */
        uint32_t at = (uint32_t)fx_get(f, 4);
        uint64_t n = fx_get(f, 8);
        for (uint64_t i = 0; i < n && !f->bad; i++)
            fx_skip_value(f, at);
    } else if (type < 13) {
        f->pos += size[type];
    } else {
        f->bad = 1;
    }
    if (f->pos > f->len)
        f->bad = 1;
}

static uint64_t fx_header(fx_file *f, uint64_t *align)
{
    if (fx_get(f, 4) != 0x46554747u) /* "GGUF" */
        f->bad = 1;
    fx_get(f, 4);
    uint64_t nt = fx_get(f, 8), nkv = fx_get(f, 8);
    for (uint64_t i = 0; i < nkv && !f->bad; i++) {
        uint64_t kl = fx_get(f, 8);
        int is_align = kl == 17 && f->pos + 17 <= f->len &&
                       memcmp(f->buf + f->pos, "general.alignment", 17) == 0;
        f->pos += kl;
        uint32_t type = (uint32_t)fx_get(f, 4);
        if (is_align && type == 4)
            *align = fx_get(f, 4);
        else
            fx_skip_value(f, type);
    }
    return nt;
}

static int fx_load(const char *path, fx_file *f)
{
    memset(f, 0, sizeof *f);
    if (!(f->buf = tl_slurp(path, &f->len)))
        return -1;
    uint64_t align = 32, offs[64];
    uint64_t nt = fx_header(f, &align);
    for (uint64_t i = 0; i < nt && i < 64 && !f->bad; i++, f->n++) {
        fx_tensor *t = &f->t[i];
        uint64_t nl = fx_get(f, 8);
        memcpy(t->name, f->buf + f->pos, nl < 95 && f->pos + nl <= f->len ? nl : 0);
        f->pos += nl;
        uint32_t nd = (uint32_t)fx_get(f, 4);
        for (int d = 0; d < 4; d++)
            t->ne[d] = d < (int)nd ? (int64_t)fx_get(f, 8) : 1;
        t->type = (uint32_t)fx_get(f, 4);
        offs[i] = fx_get(f, 8);
    }
    size_t data = (f->pos + align - 1) / align * align;
    for (int i = 0; i < f->n; i++) {
        const cm_type_info *ti = cm_type_get(f->t[i].type);
        size_t nbytes = ti ? cm_row_bytes(f->t[i].type, f->t[i].ne[0]) *
                                 (size_t)(f->t[i].ne[1] * f->t[i].ne[2] * f->t[i].ne[3]) : 0;
        if (!ti || data + offs[i] + nbytes > f->len)
            f->bad = 1;
        else
            f->t[i].data = f->buf + data + offs[i];
    }
    return f->bad ? -1 : 0;
}

static const fx_tensor *fx_find(const fx_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return &f->t[i];
    return NULL;
}

/* Error bound vs the float twin: the round-trip bounds with headroom for
 * real (non-gaussian) weight distributions. */
static double fx_bound(uint32_t type)
{
    return type == CM_TYPE_F32 || type == CM_TYPE_F16 ? 1e-3 : 1.5 * rt_bound(type);
}

static double tensor_err(const fx_tensor *q, const fx_tensor *ref)
{
    int64_t cols = q->ne[0], rows = q->ne[1] * q->ne[2] * q->ne[3];
    float *a = malloc(cols * sizeof(float)), *b = malloc(cols * sizeof(float));
    double e = 0, s = 0;
    for (int64_t r = 0; r < rows; r++) {
        cm_dequantize_row(q->type, q->data + r * cm_row_bytes(q->type, cols), a, cols);
        cm_dequantize_row(ref->type, ref->data + r * cm_row_bytes(ref->type, cols), b, cols);
        for (int64_t i = 0; i < cols; i++)
            e += (double)(a[i] - b[i]) * (a[i] - b[i]), s += (double)b[i] * b[i];
    }
    free(a);
    free(b);
    return s > 0 ? sqrt(e / s) : sqrt(e);
}

/* Compares every tensor of qpath with its namesake in refpath; returns the
 * number of tensors checked, -1 if the files are missing. */
static int fixture_pair(const char *dir, const char *qname, const char *refname)
{
    char qp[1024], rp[1024];
    snprintf(qp, sizeof qp, "%s/%s", dir, qname);
    snprintf(rp, sizeof rp, "%s/%s", dir, refname);
    fx_file *q = calloc(1, sizeof *q), *r = calloc(1, sizeof *r);
    int checked = -1;
    if (fx_load(qp, q) == 0 && fx_load(rp, r) == 0) {
        checked = 0;
        double worst[CM_TYPE_COUNT] = {0};
        for (int i = 0; i < q->n; i++) {
            const fx_tensor *t = &q->t[i], *twin = fx_find(r, t->name);
            if (!twin || twin->ne[0] != t->ne[0] || !cm_type_get(t->type)->supported)
                continue;
            double e = tensor_err(t, twin);
            worst[t->type] = e > worst[t->type] ? e : worst[t->type];
            CHECK(e <= fx_bound(t->type), "%s %s (%s): rel err %g", qname, t->name,
                  tname(t->type), e);
            checked++;
        }
        for (int k = 0; k < CM_TYPE_COUNT; k++)
            if (worst[k] > 0)
                printf("  %-16s %-5s worst rel err vs %s: %.4f\n", qname,
                       tname((enum cm_type)k), refname, worst[k]);
    }
    free(q->buf), free(r->buf), free(q), free(r);
    return checked;
}

static void test_fixtures(void)
{
    static const char *kq[] = {"kq-q2_k.gguf", "kq-q3_k_m.gguf", "kq-q4_k_m.gguf",
                               "kq-q5_k_m.gguf", "kq-q6_k.gguf", "kq-q4_1.gguf",
                               "kq-q5_0.gguf"};
    static const char *ll[] = {"llama-f16.gguf", "llama-q8_0.gguf", "llama-q4_0.gguf"};
    const char *shared = tl_shared("fixtures/gguf/llama/llama-f32.gguf");
    char dk[1024], dl[1024];
    if (!shared)
        shared = "../shared"; /* nothing there either: the fixtures are skipped */
    snprintf(dk, sizeof dk, "%s/fixtures/gguf/kquants", shared);
    snprintf(dl, sizeof dl, "%s/fixtures/gguf/llama", shared);
    int total = 0;
    for (int i = 0; i < 7; i++) {
        int c = fixture_pair(dk, kq[i], "kq-f16.gguf");
        total += c > 0 ? c : 0;
    }
    for (int i = 0; i < 3; i++) {
        int c = fixture_pair(dl, ll[i], "llama-f32.gguf");
        total += c > 0 ? c : 0;
    }
    if (total == 0)
        printf("  skipped: no fixtures under %s (set CM_SHARED)\n", shared);
}

/* ---- type table ---------------------------------------------------------- */

static void test_types(void)
{
    char buf[32];
    static const uint32_t removed[] = {4, 5, 31, 32, 33, 36, 37, 38, 40, 1000};
    for (int i = 0; i < 10; i++)
        CHECK(cm_type_get(removed[i]) == NULL, "type %u should be unknown", removed[i]);
    CHECK(strcmp(cm_type_name(57, buf), "unknown(57)") == 0, "unknown name");
    CHECK(strcmp(cm_type_name(16, buf), "iq2_xxs") == 0 && !cm_type_get(16)->supported,
          "iq2_xxs");
    CHECK(strcmp(cm_type_name(39, buf), "mxfp4") == 0, "mxfp4");
    CHECK(cm_row_bytes(CM_TYPE_Q4_K, 4096) == 16 * 144, "q4_K row bytes");
    CHECK(cm_row_bytes(CM_TYPE_Q4_0, 33) == 0, "partial block");
    CHECK(cm_row_bytes(CM_TYPE_F16, 3) == 6, "f16 row bytes");
    for (int k = 0; k < N_TYPES; k++)
        CHECK(cm_type_get(all_types[k])->supported, "%s supported", tname(all_types[k]));
}

int main(void)
{
    printf("types\n");
    test_types();
    printf("f16/bf16 exhaustive\n");
    test_f16();
    test_bf16();
    printf("round trips\n");
    test_roundtrip();
    printf("kernels vs references, matmul\n");
    test_isas();
    printf("llama.cpp-written tensors\n");
    test_fixtures();
    return tl_finish("test_quant");
}
