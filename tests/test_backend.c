/* test_backend.c - backend conformance: every op of every compiled backend
 * against the reference backend (backends/ref: the scalar references of
 * quant/), on random inputs and awkward shapes: odd row counts, one token,
 * batches across the thread and tiling thresholds, the last positions of
 * the context, every block type, every KV cache type.
 *
 * Then whole models: the fixtures' logits on each backend against the
 * reference, and the fallback path: a simulated device backend whose
 * memory the CPU cannot address and which implements only what is
 * mandatory must give the CPU's logits bit for bit, with every op counted
 * as a fallback.
 *
 * Its one op, the product, must not run either: its weights are in host
 * memory, which it cannot read (placement).
 *
 * A GPU backend runs this same program on the GPU machine. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/cpu/cpu.h"
#include "convert/convert.h"
#include "engine/backend.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "testlib.h"

/* ------------------------------------------------------------ inputs */

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static float rnd(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / (1 << 23))) - 1.0f;
}

static float *rnd_floats(size_t n, float scale)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = scale * rnd();
    return v;
}

/* A host tensor of `type` (rows x cols), quantized by the reference. */
static cm_tensor weight(enum cm_type type, int64_t cols, int64_t rows)
{
    cm_tensor t = {0};
    size_t rb = cm_row_bytes(type, cols);
    float *f = rnd_floats((size_t)(cols * rows), 0.5f);
    char *d = malloc(rb * (size_t)rows);
    for (int64_t r = 0; r < rows; r++)
        cm_quantize_row(type, f + r * cols, d + (size_t)r * rb, cols);
    free(f);
    t.name = "w", t.type = type, t.n_dims = 2;
    t.ne[0] = cols, t.ne[1] = rows, t.ne[2] = t.ne[3] = 1;
    t.data = d, t.nbytes = rb * (size_t)rows;
    return t;
}

static cm_tensor vec(int64_t n, float scale) /* a 1-D F32 host tensor: a bias, a norm */
{
    cm_tensor t = {0};
    float *f = rnd_floats((size_t)n, scale);
    t.name = "v", t.type = CM_TYPE_F32, t.n_dims = 1;
    t.ne[0] = n, t.ne[1] = t.ne[2] = t.ne[3] = 1;
    t.data = f, t.nbytes = (size_t)n * sizeof(float);
    return t;
}

static void free_host(cm_tensor *t) { free((void *)(uintptr_t)t->data); }

/* ------------------------------------------------------------ a pair */

/* The backend under test and the reference, sized alike. */
typedef struct {
    cm_backend *be, *ref;
    cm_model m;
    cm_layer layers[2];
    cm_buffer wbuf[8]; /* weights copied to a device backend's memory */
    int n_wbuf;
} pair;

/* w where p's backend reads it: itself, or (a device backend) a copy in
 * the backend's memory, freed with the pair. */
static cm_tensor put_w(pair *p, const cm_tensor *w)
{
    cm_err err;
    if (!w || !w->data || p->be->ops->reads_host || p->n_wbuf == 8)
        return w ? *w : (cm_tensor){0};
    cm_buffer *buf = &p->wbuf[p->n_wbuf++];
    if (p->be->ops->buffer_alloc(p->be, w->nbytes, buf, &err)) {
        fprintf(stderr, "test error: %s\n", err.msg);
        exit(99);
    }
    cm_tensor v = *w;
    v.buf = buf;
    v.offs = 0;
    v.data = buf->host;
    p->be->ops->upload(p->be, &v, w->data, w->nbytes);
    return v;
}

static cm_hparams hparams(int n_embd, int n_head, int n_head_kv, int head_dim, int neox,
                          int rope_dim)
{
    cm_hparams hp = {0};
    hp.arch_name = "llama", hp.n_vocab = 300, hp.n_embd = n_embd, hp.n_layer = 2;
    hp.n_head = n_head, hp.n_head_kv = n_head_kv, hp.head_dim = hp.head_dim_v = head_dim;
    hp.n_ff = 2 * n_embd, hp.n_ctx_train = 64, hp.norm_eps = 1e-5f, hp.rope_base = 10000.0f;
    hp.rope_freq_scale = 1.0f, hp.rope_dim = rope_dim, hp.rope_neox = neox, hp.use_rope = 1;
    hp.n_expert = 8, hp.n_expert_used = 2, hp.n_ff_exp = n_embd;
    return hp;
}

/* The backends size their scratch for the model's weights: ws (nw <= 3)
 * stand in for them, so products of exactly these may run. */
static int pair_new_n(pair *p, const cm_backend_ops *ops, const cm_hparams *hp,
                      const cm_tensor *ws, int nw, cm_kv_type kv, int n_ctx)
{
    cm_err err;
    memset(p, 0, sizeof *p);
    p->m.hp = *hp;
    p->m.layers = p->layers;
    cm_tensor *slots[3] = {&p->m.output, &p->layers[0].wq, &p->layers[0].wk};
    for (int i = 0; i < nw && i < 3; i++)
        *slots[i] = ws[i];
    cm_backend_shape s = {&p->m, n_ctx, 80, kv, 0, -1, 1};
    cm_status st = cm_backend_new(ops, &s, &p->be, &err);
    if (st == CM_E_UNSUPPORTED) { /* what the backend says it cannot do is no failure */
        printf("  %s\n", err.msg);
        return 0;
    }
    if (st || cm_backend_new(&cm_backend_ref_ops, &s, &p->ref, &err)) {
        CHECK(0, "%s: %s", ops->name, err.msg);
        cm_backend_free(p->be);
        return 0;
    }
    return 1;
}

static int pair_new(pair *p, const cm_backend_ops *ops, const cm_hparams *hp, const cm_tensor *w,
                    cm_kv_type kv, int n_ctx)
{
    return pair_new_n(p, ops, hp, w, 1, kv, n_ctx);
}

/* Whether the backend implements op itself. */
static int has_op(const cm_backend_ops *o, int op)
{
    const int has[CM_OP_COUNT] = {
#define CM_OP_HAS(name) o->name != NULL,
        CM_OP_LIST(CM_OP_HAS)
#undef CM_OP_HAS
    };
    return op >= 0 && op < CM_OP_COUNT && has[op];
}

static void pair_free(pair *p)
{
    /* a backend that has an op runs it: ops are tested, not the fallback */
    for (int op = 0; op < CM_OP_COUNT; op++) /* (typed ops: checked per type where used) */
        CHECK(!has_op(p->be->ops, op) || p->be->fallbacks[op] == 0 ||
                  (p->be->ops->has_type && (op == CM_OP_matmul || op == CM_OP_embed ||
                                            op == CM_OP_logits)),
              "%s: %s ran on the CPU instead", p->be->ops->name, cm_op_name(op));
    for (int i = 0; i < p->n_wbuf; i++)
        p->be->ops->buffer_free(p->be, &p->wbuf[i]);
    cm_backend_free(p->be);
    cm_backend_free(p->ref);
}

/* The same activation in both backends' memory. */
typedef struct {
    cm_tensor a, b;
} twin;

static twin twin_new(pair *p, int64_t cols, int64_t rows, const float *init)
{
    twin t;
    cm_err err;
    if (cm_backend_tensor(p->be, cols, rows, &t.a, &err) ||
        cm_backend_tensor(p->ref, cols, rows, &t.b, &err)) {
        fprintf(stderr, "test error: %s\n", err.msg);
        exit(99);
    }
    float *zero = init ? NULL : calloc((size_t)(cols * rows), sizeof(float));
    p->be->ops->upload(p->be, &t.a, init ? init : zero, t.a.nbytes);
    p->ref->ops->upload(p->ref, &t.b, init ? init : zero, t.b.nbytes);
    free(zero);
    return t;
}

static twin twin_rnd(pair *p, int64_t cols, int64_t rows, float scale)
{
    float *f = rnd_floats((size_t)(cols * rows), scale);
    twin t = twin_new(p, cols, rows, f);
    free(f);
    return t;
}

static void twin_free(pair *p, twin *t)
{
    cm_backend_tensor_free(p->be, &t->a);
    cm_backend_tensor_free(p->ref, &t->b);
}

/* max |a - b| and max |b| over n values, into d and mx (which start as
 * given).  A plain loop: aarch64 gcc 12 crashes vectorizing fmax chains. */
static void max_diff(const float *a, const float *b, size_t n, double *d, double *mx)
{
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]), m = fabs((double)b[i]);
        if (e > *d || e != e)
            *d = e;
        if (m > *mx)
            *mx = m;
    }
}

/* max |a - b| over max |b|: both twins read back. */
static double twin_err(pair *p, const twin *t)
{
    size_t n = t->a.nbytes / sizeof(float);
    float *a = malloc(t->a.nbytes), *b = malloc(t->b.nbytes);
    p->be->ops->download(p->be, &t->a, a, t->a.nbytes);
    p->ref->ops->download(p->ref, &t->b, b, t->b.nbytes);
    double d = 0, mx = 1e-6;
    max_diff(a, b, n, &d, &mx);
    free(a), free(b);
    return d / mx;
}

/* The worst error seen per op, printed at the end. */
static double worst[CM_OP_COUNT + 3];
enum { W_KV = CM_OP_COUNT, W_ATTN, W_MOE };

static const char *op_label(int op)
{
    return op == W_ATTN ? "attention" : op == W_MOE ? "moe_ffn" : cm_op_name(op);
}

#define EXPECT_CLOSE(p, t, op, tol, ...)                                                    \
    do {                                                                                    \
        double e_ = twin_err(p, t);                                                         \
        char what_[200];                                                                    \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                         \
        worst[op] = e_ > worst[op] || e_ != e_ ? e_ : worst[op];                            \
        CHECK(e_ <= (tol), "%s %s: error %.3g > %.3g: %s", (p)->be->ops->name, op_label(op), e_,     \
              (double)(tol), what_);                                                        \
    } while (0)

/* ------------------------------------------------------------ the ops */

static const enum cm_type all_types[] = {
    CM_TYPE_F32,  CM_TYPE_F16,  CM_TYPE_BF16, CM_TYPE_Q4_0, CM_TYPE_Q4_1, CM_TYPE_Q5_0, CM_TYPE_Q5_1,
    CM_TYPE_Q8_0, CM_TYPE_Q2_K, CM_TYPE_Q3_K, CM_TYPE_Q4_K, CM_TYPE_Q5_K, CM_TYPE_Q6_K};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

static const int tok_counts[] = {1, 2, 4, 7, 16, 33};

static void test_matmul(const cm_backend_ops *ops, const cm_hparams *hp)
{
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        char tn[32];
        cm_type_name(all_types[ti], tn);
        for (int cols = 256; cols <= 512; cols += 256) {
            cm_tensor w = weight(all_types[ti], cols, 37), b = vec(37, 0.3f);
            pair p;
            if (!pair_new(&p, ops, hp, &w, CM_KV_F16, 64))
                return;
            cm_tensor wdev = put_w(&p, &w), bdev = put_w(&p, &b);
            for (size_t k = 0; k < sizeof tok_counts / sizeof tok_counts[0]; k++) {
                int n = tok_counts[k];
                twin x = twin_rnd(&p, cols, n, 1.0f), y = twin_new(&p, 37, n, NULL);
                const cm_tensor *ws[1] = {&w}, *bs[1] = {&b}, *wd[1] = {&wdev}, *bd[1] = {&bdev};
                cm_tensor *ya[1] = {&y.a}, *yb[1] = {&y.b};
                const uint64_t before = p.be->fallbacks[CM_OP_matmul];
                cm_op_matmul(p.be, 1, wd, k % 2 ? bd : NULL, &x.a, ya);
                CHECK(!ops->matmul || (ops->has_type && !ops->has_type(CM_OP_matmul, all_types[ti])) ||
                          p.be->fallbacks[CM_OP_matmul] == before,
                      "%s: matmul of %s ran on the CPU", ops->name, tn);
                cm_op_matmul(p.ref, 1, ws, k % 2 ? bs : NULL, &x.b, yb);
                EXPECT_CLOSE(&p, &y, CM_OP_matmul, 2e-5, "%s %dx37, %d tokens", tn, cols, n);
                twin_free(&p, &x), twin_free(&p, &y);
            }
            pair_free(&p);
            free_host(&w), free_host(&b);
        }
    }
}

/* Three weights sharing an input, of types that pack alike or not, with
 * biases, as the q/k/v projections. */
static void test_matmul_n(const cm_backend_ops *ops, const cm_hparams *hp)
{
    static const enum cm_type mixes[][3] = {{CM_TYPE_Q5_0, CM_TYPE_Q5_0, CM_TYPE_Q8_0},
                                            {CM_TYPE_Q4_K, CM_TYPE_Q4_K, CM_TYPE_Q6_K},
                                            {CM_TYPE_F16, CM_TYPE_Q8_0, CM_TYPE_F32},
                                            {CM_TYPE_Q4_0, CM_TYPE_Q4_0, CM_TYPE_Q4_0}};
    const int cols = 512; /* (the model's widest: prompt products split by columns too) */
    const int rows[3] = {64, 19, 33};
    for (size_t mi = 0; mi < sizeof mixes / sizeof mixes[0]; mi++) {
        cm_tensor w[3], b[3];
        for (int i = 0; i < 3; i++)
            w[i] = weight(mixes[mi][i], cols, rows[i]), b[i] = vec(rows[i], 0.3f);
        pair p;
        if (!pair_new_n(&p, ops, hp, w, 3, CM_KV_F16, 64))
            return;
        cm_tensor wd[3], bd[3];
        for (int i = 0; i < 3; i++)
            wd[i] = put_w(&p, &w[i]), bd[i] = put_w(&p, &b[i]);
        for (size_t k = 0; k < sizeof tok_counts / sizeof tok_counts[0]; k++) {
            int n = tok_counts[k];
            twin x = twin_rnd(&p, cols, n, 1.0f), y[3];
            for (int i = 0; i < 3; i++)
                y[i] = twin_new(&p, rows[i], n, NULL);
            const cm_tensor *ws[3] = {&w[0], &w[1], &w[2]}, *bs[3] = {&b[0], &b[1], &b[2]};
            cm_tensor *ya[3] = {&y[0].a, &y[1].a, &y[2].a}, *yb[3] = {&y[0].b, &y[1].b, &y[2].b};
            const cm_tensor *wsd[3] = {&wd[0], &wd[1], &wd[2]}, *bsd[3] = {&bd[0], &bd[1], &bd[2]};
            cm_op_matmul(p.be, 3, wsd, bsd, &x.a, ya);
            cm_op_matmul(p.ref, 3, ws, bs, &x.b, yb);
            for (int i = 0; i < 3; i++) {
                EXPECT_CLOSE(&p, &y[i], CM_OP_matmul, 2e-5, "mix %zu weight %d, %d tokens", mi, i, n);
                twin_free(&p, &y[i]);
            }
            twin_free(&p, &x);
        }
        pair_free(&p);
        for (int i = 0; i < 3; i++)
            free_host(&w[i]), free_host(&b[i]);
    }
}

/* Products wider and longer than a GPU's prompt tile (64 rows x 64 tokens
 * in backends/vulkan's matmul_tiled.comp): whole tiles, a partial last one
 * both ways, every type. */
static void test_matmul_tiles(const cm_backend_ops *ops, const cm_hparams *hp)
{
    static const int counts[] = {16, 65, 80};
    const int cols = 512, rows = 150;
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        char tn[32];
        cm_type_name(all_types[ti], tn);
        cm_tensor w = weight(all_types[ti], cols, rows), b = vec(rows, 0.3f);
        pair p;
        if (!pair_new(&p, ops, hp, &w, CM_KV_F16, 64))
            return;
        cm_tensor wdev = put_w(&p, &w), bdev = put_w(&p, &b);
        for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
            const int n = counts[k];
            twin x = twin_rnd(&p, cols, n, 1.0f), y = twin_new(&p, rows, n, NULL);
            const cm_tensor *ws[1] = {&w}, *bs[1] = {&b}, *wd[1] = {&wdev}, *bd[1] = {&bdev};
            cm_tensor *ya[1] = {&y.a}, *yb[1] = {&y.b};
            cm_op_matmul(p.be, 1, wd, k % 2 ? bd : NULL, &x.a, ya);
            cm_op_matmul(p.ref, 1, ws, k % 2 ? bs : NULL, &x.b, yb);
            EXPECT_CLOSE(&p, &y, CM_OP_matmul, 2e-5, "%s %dx%d, %d tokens", tn, cols, rows, n);
            twin_free(&p, &x), twin_free(&p, &y);
        }
        pair_free(&p);
        free_host(&w), free_host(&b);
    }
}

static void test_embed_logits(const cm_backend_ops *ops, const cm_hparams *hp)
{
    const enum cm_type *types = all_types;
    const int E = hp->n_embd;
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        cm_tensor table = weight(types[ti], E, 300), pos = weight(CM_TYPE_F32, E, 64);
        cm_tensor bias = vec(300, 0.2f);
        pair p;
        if (!pair_new(&p, ops, hp, &table, CM_KV_F16, 64))
            return;
        cm_tensor td = put_w(&p, &table), pd = put_w(&p, &pos), bd = put_w(&p, &bias);
        for (int n = 1; n <= 33; n += 16) {
            int32_t ids[33];
            for (int i = 0; i < n; i++)
                ids[i] = (int32_t)((i * 97 + 13) % 300);
            twin x = twin_new(&p, E, n, NULL);
            int p0 = 64 - n; /* the context's last positions */
            cm_op_embed(p.be, &td, n > 1 ? &pd : NULL, ids, n, p0, &x.a);
            cm_op_embed(p.ref, &table, n > 1 ? &pos : NULL, ids, n, p0, &x.b);
            EXPECT_CLOSE(&p, &x, CM_OP_embed, 0, "type %zu, %d tokens", ti, n);
            /* the output product into host memory, with a bias */
            float *la = malloc((size_t)n * 300 * sizeof(float));
            float *lb = malloc((size_t)n * 300 * sizeof(float));
            cm_op_logits(p.be, &x.a, &td, &bd, la);
            cm_op_logits(p.ref, &x.b, &table, &bias, lb);
            double d = 0, mx = 1e-6;
            max_diff(la, lb, (size_t)n * 300, &d, &mx);
            worst[CM_OP_logits] = d / mx > worst[CM_OP_logits] ? d / mx : worst[CM_OP_logits];
            CHECK(d / mx <= 2e-5, "%s logits: error %.3g (type %zu, %d tokens)", ops->name,
                  d / mx, ti, n);
            free(la), free(lb);
            twin_free(&p, &x);
        }
        pair_free(&p);
        free_host(&table), free_host(&pos), free_host(&bias);
    }
}

static void test_rowwise(const cm_backend_ops *ops, const cm_hparams *hp)
{
    const int E = hp->n_embd;
    cm_tensor w = weight(CM_TYPE_F32, E, 4), nw = vec(E, 1.0f), nb = vec(E, 0.5f);
    pair p;
    if (!pair_new(&p, ops, hp, &w, CM_KV_F16, 64))
        return;
    cm_tensor nwd = put_w(&p, &nw), nbd = put_w(&p, &nb);
    for (int n = 1; n <= 40; n += 13) { /* 1, 14, 27, 40: both sides of the threads' threshold */
        for (int ln = 0; ln < 2; ln++) {
            twin x = twin_rnd(&p, E, n, 3.0f), o = twin_new(&p, E, n, NULL);
            cm_op_norm(p.be, &x.a, &nwd, ln ? &nbd : NULL, 1e-5f, ln, &o.a);
            cm_op_norm(p.ref, &x.b, &nw, ln ? &nb : NULL, 1e-5f, ln, &o.b);
            EXPECT_CLOSE(&p, &o, CM_OP_norm, 1e-6, "%s, %d rows", ln ? "layer" : "rms", n);
            twin_free(&p, &x), twin_free(&p, &o);
        }
        twin a = twin_rnd(&p, 3 * E + 5, n, 6.0f), b = twin_rnd(&p, 3 * E + 5, n, 2.0f);
        cm_op_swiglu(p.be, &a.a, &b.a);
        cm_op_swiglu(p.ref, &a.b, &b.b);
        EXPECT_CLOSE(&p, &a, CM_OP_swiglu, 1e-6, "%d rows of %d", n, 3 * E + 5);
        twin g = twin_new(&p, 3 * E + 5, n, NULL);
        cm_op_gelu(p.be, &b.a, &g.a);
        cm_op_gelu(p.ref, &b.b, &g.b);
        EXPECT_CLOSE(&p, &g, CM_OP_gelu, 1e-6, "%d rows", n);
        cm_op_add(p.be, &a.a, &b.a);
        cm_op_add(p.ref, &a.b, &b.b);
        EXPECT_CLOSE(&p, &a, CM_OP_add, 1e-6, "%d rows", n);
        twin gate = twin_rnd(&p, 1, n, 4.0f);
        cm_op_add_gated(p.be, &g.a, &b.a, n % 2 ? &gate.a : NULL);
        cm_op_add_gated(p.ref, &g.b, &b.b, n % 2 ? &gate.b : NULL);
        EXPECT_CLOSE(&p, &g, CM_OP_add_gated, 1e-6, "%d rows", n);
        cm_op_clear(p.be, &g.a);
        cm_op_clear(p.ref, &g.b);
        EXPECT_CLOSE(&p, &g, CM_OP_clear, 0, "%d rows", n);
        twin_free(&p, &a), twin_free(&p, &b), twin_free(&p, &g), twin_free(&p, &gate);
    }
    pair_free(&p);
    free_host(&w), free_host(&nw), free_host(&nb);
}

static void test_rope(const cm_backend_ops *ops, const cm_hparams *hp)
{
    const int d = hp->head_dim;
    cm_tensor w = weight(CM_TYPE_F32, hp->n_embd, 4), qn = vec(d, 1.0f);
    pair p;
    if (!pair_new(&p, ops, hp, &w, CM_KV_F16, 64))
        return;
    cm_tensor qnd = put_w(&p, &qn);
    static const int cases[][2] = {{1, 0}, {1, 63}, {5, 3}, {20, 44}, {17, 0}}; /* n, p0 */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = cases[i][0], p0 = cases[i][1];
        twin x = twin_rnd(&p, (int64_t)hp->n_head * d, n, 2.0f);
        cm_op_rope(p.be, &x.a, i % 2 ? &qnd : NULL, p0);
        cm_op_rope(p.ref, &x.b, i % 2 ? &qn : NULL, p0);
        EXPECT_CLOSE(&p, &x, CM_OP_rope, 1e-6, "%d rows at %d", n, p0);
        twin_free(&p, &x);
    }
    pair_free(&p);
    free_host(&w), free_host(&qn);
}

static void test_moe_ops(const cm_backend_ops *ops, const cm_hparams *hp)
{
    const int E = hp->n_embd, X = hp->n_expert, k = hp->n_expert_used;
    cm_tensor w = weight(CM_TYPE_F32, E, 4);
    pair p;
    if (!pair_new(&p, ops, hp, &w, CM_KV_F16, 64))
        return;
    for (int n = 1; n <= 33; n += 16) {
        for (int norm = 0; norm < 2; norm++) {
            twin lg = twin_rnd(&p, X, n, 3.0f);
            int32_t ea[128], eb[128];
            float wa[128], wb[128];
            cm_routing ra = {ea, wa}, rb = {eb, wb};
            cm_op_route(p.be, &lg.a, k, norm, &ra);
            cm_op_route(p.ref, &lg.b, k, norm, &rb);
            double d = 0;
            for (int i = 0; i < n * k; i++) {
                CHECK(ea[i] == eb[i], "%s route: token %d choice %d: expert %d, reference %d",
                      ops->name, i / k, i % k, ea[i], eb[i]);
                double e = fabs((double)wa[i] - wb[i]);
                d = e > d || e != e ? e : d;
            }
            worst[CM_OP_route] = d > worst[CM_OP_route] ? d : worst[CM_OP_route];
            CHECK(d <= 1e-6, "%s route: weights differ by %.3g", ops->name, d);
            twin_free(&p, &lg);
        }
        int32_t rows[33];
        float wts[33];
        for (int i = 0; i < n; i++)
            rows[i] = (i * 7) % n, wts[i] = rnd();
        twin src = twin_rnd(&p, E, n, 1.0f), dst = twin_new(&p, E, n, NULL);
        twin out = twin_rnd(&p, E, n, 1.0f);
        cm_op_gather(p.be, &src.a, rows, n, &dst.a);
        cm_op_gather(p.ref, &src.b, rows, n, &dst.b);
        EXPECT_CLOSE(&p, &dst, CM_OP_gather, 0, "%d rows", n);
        cm_op_scatter_add(p.be, &out.a, &dst.a, rows, wts, n);
        cm_op_scatter_add(p.ref, &out.b, &dst.b, rows, wts, n);
        EXPECT_CLOSE(&p, &out, CM_OP_scatter_add, 1e-6, "%d rows", n);
        twin_free(&p, &src), twin_free(&p, &dst), twin_free(&p, &out);
    }
    pair_free(&p);
    free_host(&w);
}

/* An expert view of a stack of n_expert matrices (rows each). */
static cm_tensor expert0(const cm_tensor *stack, int64_t rows)
{
    cm_tensor v = *stack;
    v.ne[1] = rows;
    v.nbytes = cm_row_bytes(v.type, v.ne[0]) * (size_t)rows;
    return v;
}

/* The MoE feed-forward routed on the device (an optional op): one token,
 * the experts' weights of each kind stacked in one buffer, gate and up of
 * one type and down of another as in the K-quant mixes; choices and
 * output against the reference's. */
static void test_moe_ffn(const cm_backend_ops *ops, const cm_hparams *hp)
{
    static const enum cm_type types[][2] = {{CM_TYPE_Q8_0, CM_TYPE_Q8_0}, {CM_TYPE_Q4_0, CM_TYPE_Q4_0},
                                            {CM_TYPE_Q4_K, CM_TYPE_Q6_K}, {CM_TYPE_F16, CM_TYPE_F16},
                                            {CM_TYPE_Q5_1, CM_TYPE_Q4_1}, {CM_TYPE_Q2_K, CM_TYPE_Q5_K}};
    const int E = hp->n_embd, F = hp->n_ff_exp, X = hp->n_expert, k = hp->n_expert_used;
    if (!ops->moe_ffn)
        return;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        cm_tensor st[3] = {weight(types[ti][0], E, (int64_t)X * F),
                           weight(types[ti][0], E, (int64_t)X * F),
                           weight(types[ti][1], F, (int64_t)X * E)};
        pair p;
        if (!pair_new_n(&p, ops, hp, st, 3, CM_KV_F16, 64))
            break;
        cm_tensor dev[3], w0[3], r0[3];
        size_t stride[3];
        for (int i = 0; i < 3; i++) {
            dev[i] = put_w(&p, &st[i]);
            const int64_t rows = i == 2 ? E : F;
            w0[i] = expert0(&dev[i], rows), r0[i] = expert0(&st[i], rows);
            stride[i] = w0[i].nbytes;
        }
        for (int norm = 0; norm < 2; norm++) {
            twin x = twin_rnd(&p, E, 1, 1.0f), lg = twin_rnd(&p, X, 1, 3.0f);
            twin out = twin_rnd(&p, E, 1, 1.0f), a = twin_new(&p, F, k, NULL);
            twin b = twin_new(&p, F, k, NULL), y = twin_new(&p, E, k, NULL);
            int32_t ca[16] = {0}, cb[16] = {0};
            cm_moe_args ma = {&x.a, &lg.a, &out.a, {&w0[0], &w0[1], &w0[2]},
                              {stride[0], stride[1], stride[2]}, k, norm, 1, &a.a, &b.a, &y.a, ca};
            cm_moe_args mb = {&x.b, &lg.b, &out.b, {&r0[0], &r0[1], &r0[2]},
                              {stride[0], stride[1], stride[2]}, k, norm, 1, &a.b, &b.b, &y.b, cb};
            const int32_t id = 0;
            cm_op_batch_begin(p.be, &id, 1, 0, 0, 0);
            const int ran = cm_op_moe_ffn(p.be, &ma);
            cm_op_batch_end(p.be);
            CHECK(ran, "%s moe_ffn: declined %s/%s experts", ops->name,
                  cm_type_get(types[ti][0])->name, cm_type_get(types[ti][1])->name);
            cm_op_moe_ffn(p.ref, &mb);
            for (int j = 0; ran && j < k; j++)
                CHECK(ca[j] == cb[j], "%s moe_ffn: choice %d: expert %d, reference %d", ops->name,
                      j, ca[j], cb[j]);
            if (ran)
                EXPECT_CLOSE(&p, &out, W_MOE, 2e-5, "%s/%s experts, norm %d",
                             cm_type_get(types[ti][0])->name, cm_type_get(types[ti][1])->name,
                             norm);
            twin_free(&p, &x), twin_free(&p, &lg), twin_free(&p, &out);
            twin_free(&p, &a), twin_free(&p, &b), twin_free(&p, &y);
        }
        pair_free(&p);
        for (int i = 0; i < 3; i++)
            free_host(&st[i]);
    }
}

/* Keys and values of positions 0 .. p0 + n - 1 cached (in two stores, the
 * way a prompt and then a token arrive), then attention for the n rows at
 * p0: the prompt path (n >= 8, tiles) and the per-head path, at the start
 * and at the end of the context. */
static void test_attention(const cm_backend_ops *ops, const cm_hparams *hp)
{
    static const cm_kv_type kvs[] = {CM_KV_F32, CM_KV_F16, CM_KV_Q8_0};
    /* (the last two: more than one tile of 64 keys and of 64 query rows) */
    static const int cases[][2] = {{1, 0}, {3, 5}, {8, 0}, {20, 11}, {1, 63}, {9, 55}, {40, 24},
                                   {70, 0}, {67, 53}};
    const int nq = hp->n_head * hp->head_dim, nk = hp->n_head_kv * hp->head_dim;
    const int nv = hp->n_head_kv * hp->head_dim_v;
    cm_tensor w = weight(CM_TYPE_F32, hp->n_embd, 4);
    for (size_t ki = 0; ki < sizeof kvs / sizeof kvs[0]; ki++) {
        if (kvs[ki] == CM_KV_Q8_0 && hp->head_dim % 32)
            continue;
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const int n = cases[ci][0], p0 = cases[ci][1], il = (int)(ci % 2);
            pair p;
            if (!pair_new(&p, ops, hp, &w, kvs[ki], 128))
                break;
            twin k = twin_rnd(&p, nk, p0 + n, 1.0f), v = twin_rnd(&p, nv, p0 + n, 1.0f);
            int split = p0 > 0 ? p0 : n; /* first store, then the rest */
            cm_tensor ka = cm_rows(&k.a, 0, split), kb = cm_rows(&k.b, 0, split);
            cm_tensor va = cm_rows(&v.a, 0, split), vb = cm_rows(&v.b, 0, split);
            cm_op_kv_store(p.be, il, &ka, &va, 0);
            cm_op_kv_store(p.ref, il, &kb, &vb, 0);
            if (split < p0 + n) {
                ka = cm_rows(&k.a, split, p0 + n - split), kb = cm_rows(&k.b, split, p0 + n - split);
                va = cm_rows(&v.a, split, p0 + n - split), vb = cm_rows(&v.b, split, p0 + n - split);
                cm_op_kv_store(p.be, il, &ka, &va, split);
                cm_op_kv_store(p.ref, il, &kb, &vb, split);
            }
            twin q = twin_rnd(&p, nq, n, 1.0f);
            twin o = twin_new(&p, (int64_t)hp->n_head * hp->head_dim_v, n, NULL);
            cm_op_attention(p.be, il, &q.a, p0, &o.a);
            cm_op_attention(p.ref, il, &q.b, p0, &o.b);
            /* an f16 cache rounds the weights to f16: where a weight sits on
             * a rounding boundary the kernels' exponentials may round it the
             * other way, one f16 step (1e-3 relative) */
            double tol = kvs[ki] == CM_KV_F16 ? 2e-3 : 2e-5;
            EXPECT_CLOSE(&p, &o, W_ATTN, tol, "kv %d, %d rows at %d", (int)kvs[ki], n, p0);
            twin_free(&p, &k), twin_free(&p, &v), twin_free(&p, &q), twin_free(&p, &o);
            pair_free(&p);
        }
    }
    free_host(&w);
}

/* ------------------------------------------------------------ fallback */

/* A device the CPU cannot address: buffers have no host pointer, so every
 * op it lacks (all but the mandatory ones) must go through the engine's
 * copies to and from the CPU backend. */
static cm_status dev_init(cm_backend *be, const cm_backend_shape *s, cm_err *err)
{
    cm_backend *inner;
    cm_status st = cm_backend_new(&cm_backend_cpu_ops, s, &inner, err);
    be->state = st ? NULL : inner;
    return st;
}

static void dev_release(cm_backend *be) { cm_backend_free(be->state); }

static size_t dev_state_bytes(const cm_backend_shape *s)
{
    return cm_backend_cpu_ops.state_bytes(s);
}

static void dev_describe(char *out, size_t n) { snprintf(out, n, "simulated device"); }

static cm_status dev_alloc(cm_backend *be, size_t bytes, cm_buffer *buf, cm_err *err)
{
    (void)be;
    buf->host = NULL;
    buf->dev = calloc(1, bytes ? bytes : 1);
    buf->size = bytes;
    return buf->dev ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory");
}

static void dev_free(cm_backend *be, cm_buffer *buf)
{
    (void)be;
    free(buf->dev);
}

static void dev_upload(cm_backend *be, const cm_tensor *dst, const void *src, size_t bytes)
{
    (void)be;
    CHECK(dst->data == NULL, "a device tensor has a host address");
    memcpy((char *)dst->buf->dev + dst->offs, src, bytes);
}

static void dev_download(cm_backend *be, const cm_tensor *src, void *dst, size_t bytes)
{
    (void)be;
    memcpy(dst, (const char *)src->buf->dev + src->offs, bytes);
}

static void dev_sync(cm_backend *be) { (void)be; }

static cm_tensor dev_view(const cm_tensor *t) /* how the device itself reads it */
{
    cm_tensor v = *t;
    v.data = (const char *)t->buf->dev + t->offs;
    return v;
}

static void dev_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0)
{
    cm_backend *inner = be->state;
    cm_tensor kh = dev_view(k), vh = dev_view(v);
    inner->ops->kv_store(inner, il, &kh, &vh, p0);
}

static void dev_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out)
{
    cm_backend *inner = be->state;
    cm_tensor qh = dev_view(q), oh = dev_view(out);
    inner->ops->attention(inner, il, &qh, p0, &oh);
}

/* It has a product, but its kernels cannot read host memory: every weight
 * is in the mapped file, so placement sends each product to the CPU. */
static void dev_matmul(cm_backend *be, int nw, const cm_tensor *const *ws,
                       const cm_tensor *const *bs, const cm_tensor *x, cm_tensor *const *ys)
{
    cm_backend *inner = be->state;
    cm_tensor xh = dev_view(x), yh[4], *yp[4];
    for (int i = 0; i < nw; i++) {
        CHECK(ws[i]->buf != NULL, "simdev matmul called on a weight in host memory");
        yh[i] = dev_view(ys[i]), yp[i] = &yh[i];
    }
    inner->ops->matmul(inner, nw, ws, bs, &xh, yp);
}

static const cm_backend_ops dev_ops = {
    .name = "simdev",
    .reads_host = 0,
    .matmul = dev_matmul,
    .init = dev_init,
    .release = dev_release,
    .state_bytes = dev_state_bytes,
    .describe = dev_describe,
    .buffer_alloc = dev_alloc,
    .buffer_free = dev_free,
    .upload = dev_upload,
    .download = dev_download,
    .synchronize = dev_sync,
    .kv_store = dev_kv_store,
    .attention = dev_attention,
};

/* ------------------------------------------------------------ models */

static float *model_logits_placed(const cm_model *m, const cm_backend_ops *ops,
                                  const cm_place_opts *place, const int32_t *ids, int n,
                                  cm_kv_type kv, int n_batch, cm_ctx **keep)
{
    cm_ctx *c;
    cm_err err;
    float *out = malloc((size_t)n * m->hp.n_vocab * sizeof(float));
    if (cm_ctx_new_placed(m, ops, place, n + 8, kv, n_batch, &c, &err) ||
        cm_eval(c, ids, n, out, &err)) {
        CHECK(0, "%s: %s", ops->name, err.msg);
        free(out);
        return NULL;
    }
    if (keep)
        *keep = c;
    else
        cm_ctx_free(c);
    return out;
}

static float *model_logits(const cm_model *m, const cm_backend_ops *ops, const int32_t *ids,
                           int n, cm_kv_type kv, int n_batch, cm_ctx **keep)
{
    return model_logits_placed(m, ops, NULL, ids, n, kv, n_batch, keep);
}

/* On a device backend, weights split between its memory and the host's:
 * the layers below --gpu-layers, or experts beyond a budget, run on the
 * CPU (experts move in as they are used).  Prompt batches, then tokens
 * one at a time; the logits as the reference's. */
static void test_placements(const char *path, const cm_backend_ops *ops, double tol)
{
    cm_model m;
    cm_err err;
    if (!ops->mem_info || ops->reads_host || cm_model_load(path, &m, &err))
        return;
    const cm_hparams *hp = &m.hp;
    uint64_t slot, dense = cm_place_dense_bytes(&m, &slot);
    const cm_place_opts places[] = {{1, 0, -1}, {hp->n_layer + 1, 0, -1}, {-1, 1, -1}, {-1, 0, -1}};
    int32_t ids[30];
    for (int i = 0; i < 30; i++)
        ids[i] = (int32_t)((i * 53 + 11) % hp->n_vocab);
    for (size_t i = 0; i < sizeof places / sizeof places[0]; i++) {
        cm_place_opts po = places[i];
        if (po.gpu_layers < 0 && po.budget == 1) { /* dense weights and three experts */
            if (!slot)
                continue;
            po.budget = dense + 3 * slot;
        }
        float *r = model_logits(&m, &cm_backend_ref_ops, ids, 30, CM_KV_F32, 8, NULL);
        float *a = malloc((size_t)20 * hp->n_vocab * sizeof(float));
        cm_ctx *c = NULL;
        cm_status st = cm_ctx_new_placed(&m, ops, &po, 32, CM_KV_F32, 8, &c, &err);
        if (!st) /* a prompt in batches of 8, then one token at a time */
            st = cm_eval(c, ids, 20, a, &err);
        for (int t = 20; !st && t < 30; t++)
            st = cm_eval(c, ids + t, 1, NULL, &err);
        CHECK(!st, "%s: %s", path, err.msg);
        if (!st && r) {
            double d = 0, mx = 1e-6;
            max_diff(cm_ctx_logits(c), r + (size_t)29 * hp->n_vocab, (size_t)hp->n_vocab, &d, &mx);
            max_diff(a, r, (size_t)20 * hp->n_vocab, &d, &mx);
            cm_place_stats ps;
            cm_ctx_place_stats(c, &ps);
            printf("  %-40s -ngl %d budget %llu: device %.2f MiB, host %.2f MiB, %llu expert "
                   "runs on the CPU, %llu uploads: max error %.2e\n", strrchr(path, '/') + 1,
                   po.gpu_layers, (unsigned long long)po.budget,
                   (ps.dense_dev + ps.exp_dev) / 1048576.0, (ps.dense_host + ps.exp_host) / 1048576.0,
                   (unsigned long long)ps.host_runs, (unsigned long long)ps.uploads, d / mx);
            CHECK(d / mx <= tol, "%s, -ngl %d budget %llu: logits differ from the reference by "
                  "%.3g", path, po.gpu_layers, (unsigned long long)po.budget, d / mx);
            CHECK(i != 0 || ps.dense_host > 0, "-ngl 1 left no layer on the CPU");
            CHECK(i != 2 || ps.host_runs > 0, "a budget of three experts ran none on the CPU");
        }
        cm_ctx_free(c);
        free(a), free(r);
    }
    cm_model_free(&m);
}

/* Logits of a fixture on ops and on the reference.  With an f16 cache the
 * attention weights are rounded to f16, and where one sits on a rounding
 * boundary, summation order decides which way it goes: f16_tol says how
 * far that moves this model (0: not compared; kq-q4_k_m's sharp attention
 * moves logits by 0.1 on one step, as far as llama.cpp is from both). */
/* After the CPU's lookups the token table of an untied model takes none of
 * the process's memory in the mapping (backend_cpu.c drops its pages: a
 * prompt's rows would otherwise bring most of it in beside the weights). */
static void check_table_unmapped(const cm_model *m, const cm_backend_ops *ops, const char *path)
{
    if (strcmp(ops->name, "cpu") != 0 || m->tied_output || !m->file.mapped)
        return;
    long pages = tl_mapped_pages(m->tok_embd.data, m->tok_embd.nbytes);
    CHECK(pages == 0 || pages == -1, "%s: %ld pages of the token table mapped after lookups",
          path, pages);
}

static void test_model(const char *path, const cm_backend_ops *ops, double f32_tol,
                       double f16_tol)
{
    cm_model m;
    cm_err err;
    if (cm_model_load(path, &m, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    int32_t ids[40];
    const int n = 40;
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 131 + 7) % m.hp.n_vocab);
    static const cm_kv_type kvs[] = {CM_KV_F32, CM_KV_F16};
    for (size_t ki = 0; ki < (f16_tol > 0 ? 2 : 1); ki++) {
        /* batches of 16 then 16 then 8: prompt paths over a partly filled cache */
        float *a = model_logits(&m, ops, ids, n, kvs[ki], 16, NULL);
        check_table_unmapped(&m, ops, path);
        float *r = model_logits(&m, &cm_backend_ref_ops, ids, n, kvs[ki], 16, NULL);
        if (a && r) {
            double d = 0, mx = 1e-6;
            max_diff(a, r, (size_t)n * m.hp.n_vocab, &d, &mx);
            printf("  %-40s kv %s: %s vs ref, max error %.2e of max %.2f\n",
                   strrchr(path, '/') + 1, ki ? "f16" : "f32", ops->name, d, mx);
            CHECK(d / mx <= (ki ? f16_tol : f32_tol), "%s on %s, kv %d: logits differ from the "
                  "reference by %.3g (max %.3g)", ops->name, path, (int)kvs[ki], d, mx);
        }
        free(a), free(r);
    }
    cm_model_free(&m);
}

/* Whether the forward pass calls op for model m. */
static int op_used(const cm_model *m, int op)
{
    const cm_hparams *hp = &m->hp;
    const int moe = hp->n_expert > 0;
    switch (op) {
    case CM_OP_rope: return hp->use_rope || cm_tensor_present(&m->layers[0].q_norm);
    case CM_OP_gelu: return hp->gelu_mlp && !moe;
    case CM_OP_swiglu: return !hp->gelu_mlp || moe;
    case CM_OP_add_gated: return hp->n_ff_shexp > 0;
    case CM_OP_route: case CM_OP_gather: case CM_OP_scatter_add: case CM_OP_clear: return moe;
    default: return 1;
    }
}

/* Every op but the mandatory ones falls back: the same bits as the CPU,
 * each fallback counted. */
static void test_fallback(const char *path)
{
    cm_model m;
    cm_err err;
    if (cm_model_load(path, &m, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    int32_t ids[24];
    for (int i = 0; i < 24; i++)
        ids[i] = (int32_t)((i * 37 + 3) % m.hp.n_vocab);
    cm_ctx *c = NULL;
    float *cpu = model_logits(&m, &cm_backend_cpu_ops, ids, 24, CM_KV_F32, 16, NULL);
    float *dev = model_logits(&m, &dev_ops, ids, 24, CM_KV_F32, 16, &c);
    if (cpu && dev) {
        CHECK(!memcmp(cpu, dev, 24 * (size_t)m.hp.n_vocab * sizeof(float)),
              "%s: the fallback path changed the logits", path);
        const cm_backend *be = cm_ctx_backend(c);
        for (int op = 0; op < CM_OP_COUNT; op++) {
            CHECK(!op_used(&m, op) || be->fallbacks[op] > 0, "%s: no fallback counted for %s",
                  path, cm_op_name(op));
        }
    }
    cm_ctx_free(c);
    free(cpu), free(dev);
    cm_model_free(&m);
}

/* Every architecture the engine runs, from the fixtures' Hugging Face
 * folders converted to F32 and F16: fused q/k/v with biases (starcoder,
 * phi2), learned positions, LayerNorm, GELU, the parallel block (phi2),
 * q/k norms (qwen3), shared experts behind a gate (qwen2moe), partial
 * rotation... on each backend against the reference, F32 cache; and the
 * simulated device's fallback, bit for bit. */
static void test_architectures(const char *shared, const int *here)
{
    static const char *const archs[] = {"llama", "qwen2", "qwen3", "mixtral", "qwen2_moe",
                                        "qwen3_moe", "gpt_bigcode", "phi", "starcoder2"};
    char dir[1024], out[1024], tmpdir[] = "/tmp/cm-backend.XXXXXX";
    if (!mkdtemp(tmpdir)) {
        CHECK(0, "cannot make a temporary folder");
        return;
    }
    for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++)
        for (int f16 = 0; f16 < 2; f16++) {
            cm_convert_opts o = {0};
            cm_convert_result r;
            cm_err err;
            o.hf_dir = tl_path(dir, sizeof dir, "%s/fixtures/hf/%s", shared, archs[a]);
            o.out_path = tl_path(out, sizeof out, "%s/%s-%s.gguf", tmpdir, archs[a],
                                 f16 ? "f16" : "f32");
            o.type = f16 ? CM_TYPE_F16 : CM_TYPE_F32;
            if (cm_convert(&o, &r, &err)) {
                CHECK(0, "converting %s: %s", archs[a], err.msg);
                continue;
            }
            const cm_backend_ops *ops;
            for (size_t b = 0; (ops = cm_backend_at(b)) && b < 16; b++)
                if (here[b])
                    test_model(out, ops, 1e-5, 0);
            if (!f16)
                test_fallback(out);
            remove(out);
        }
    rmdir(tmpdir);
}

/* ------------------------------------------------------------ main */

/* Whether ops can run here (a GPU backend needs its GPU): said once. */
static int available(const cm_backend_ops *ops)
{
    cm_hparams hp = hparams(256, 8, 2, 32, 1, 32);
    cm_tensor w = weight(CM_TYPE_F32, 256, 4);
    pair p;
    int ok = pair_new(&p, ops, &hp, &w, CM_KV_F16, 64);
    if (ok)
        pair_free(&p);
    free_host(&w);
    return ok;
}

static void test_backend_ops(const cm_backend_ops *ops)
{
    /* grouped queries, NeoX rotation; then one KV head per query head,
     * adjacent pairs, a partial rotation and q8_0-sized heads */
    const cm_hparams hps[] = {hparams(256, 8, 2, 32, 1, 32), hparams(192, 3, 3, 64, 0, 16)};
    for (size_t i = 0; i < sizeof hps / sizeof hps[0]; i++) {
        test_rowwise(ops, &hps[i]);
        test_rope(ops, &hps[i]);
        test_attention(ops, &hps[i]);
        test_moe_ops(ops, &hps[i]);
    }
    /* heads of 128 (grouped by 2): the wide tiles of the GPUs' prompt attention */
    const cm_hparams wide = hparams(512, 4, 2, 128, 1, 128);
    test_attention(ops, &wide);
    test_matmul(ops, &hps[0]);
    test_matmul_tiles(ops, &hps[0]);
    test_matmul_n(ops, &hps[0]);
    test_embed_logits(ops, &hps[0]);
    test_moe_ffn(ops, &hps[0]);
}

int main(void)
{
    char msg[256];
    if (cm_cpu_init(msg, sizeof msg)) {
        fprintf(stderr, "test error: %s\n", msg);
        return 99;
    }
    printf("kernels: %s\n", cm_cpu_isa());
    const cm_backend_ops *ops;
    int here[16] = {0}; /* the compiled backends that can run on this machine */
    /* CM_TEST_OPS_OF=NAME: that backend's ops alone, no models (a second
     * run of one backend's kernels under other settings) */
    const char *only = getenv("CM_TEST_OPS_OF");
    for (size_t b = 0; (ops = cm_backend_at(b)) && b < 16; b++) {
        if (ops == &cm_backend_ref_ops || (only && strcmp(only, ops->name) != 0) ||
            !(here[b] = available(ops)))
            continue;
        memset(worst, 0, sizeof worst);
        test_backend_ops(ops);
        printf("%s against the reference, worst relative error per op:\n", ops->name);
        for (int op = 0; op < CM_OP_COUNT; op++)
            printf("  %-12s %.2e\n", cm_op_name(op), worst[op]);
        printf("  %-12s %.2e\n", "attention", worst[W_ATTN]);
        if (ops->moe_ffn)
            printf("  %-12s %.2e\n", "moe_ffn", worst[W_MOE]);
    }
    if (only)
        return tl_finish("test_backend");
    const char *shared = tl_shared("fixtures/hf/gpt_bigcode/config.json");
    if (!shared)
        tl_skip("fixture models not found (set CM_SHARED): the ops were tested, not whole models");
    /* kq-q4_k_m sits near rounding steps of its quantized activations: a
     * last-bit difference in any sum flips one, and the attention that
     * follows is sharp enough to move later logits by 2 % of their range
     * (the CPU backend against the reference, the whole 24-token prompt in
     * one batch: 0.11 of 5.31 from token 13 on, `codemoe logits`) */
    static const struct {
        const char *file;
        double f32_tol, f16_tol;
    } models[] = {{"llama/llama-q8_0.gguf", 1e-5, 1e-3}, {"llama/llama-f16.gguf", 1e-5, 1e-3},
                  {"llama/llama-q4_0.gguf", 1e-5, 1e-3}, {"mixtral/mixtral-q4_0.gguf", 1e-5, 1e-3},
                  {"mixtral/mixtral-f32.gguf", 1e-5, 1e-3}, {"kquants/kq-q4_k_m.gguf", 0.05, 0}};
    char path[1024];
    test_architectures(shared, here);
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        tl_path(path, sizeof path, "%s/fixtures/gguf/%s", shared, models[i].file);
        for (size_t b = 0; (ops = cm_backend_at(b)) && b < 16; b++)
            if (here[b]) {
                test_model(path, ops, models[i].f32_tol, models[i].f16_tol);
                test_placements(path, ops, models[i].f32_tol);
            }
        test_fallback(path);
    }
    return tl_finish("test_backend");
}
