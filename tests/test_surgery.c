/* test_surgery.c - upcycle, grow and merge on the fixture models: the
 * written tensors (expert copies, widened and split units, zeroed output
 * projections, merged values against a direct computation) and the
 * engine's check that the function is preserved. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/gguf.h"
#include "quant/quant.h"
#include "surgery/surgery.h"
#include "surgery/surgery_internal.h"
#include "testlib.h"

static char tmpdir[] = "/tmp/test_surgery.XXXXXX";

static const char *tpath(char *buf, size_t n, const char *name)
{
    return tl_path(buf, n, "%s/%s", tmpdir, name);
}

/* The whole tensor as floats (malloc'ed), or NULL. */
static float *tensor_f32(const gguf_file *f, const char *name, int64_t *n)
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t)
        return NULL;
    int64_t len = t->ne[0], rows = t->ne[1] * t->ne[2] * t->ne[3];
    size_t rb = cm_row_bytes(t->type, len);
    float *x = malloc((size_t)(len * rows) * sizeof *x);
    for (int64_t r = 0; x && r < rows; r++)
        cm_dequantize_row((enum cm_type)t->type, (const uint8_t *)t->data + r * rb, x + r * len,
                          len);
    *n = len * rows;
    return x;
}

static uint32_t meta_u32(const gguf_file *f, const char *key)
{
    uint32_t v = 0;
    cm_err err;
    return gguf_get_u32(f, key, &v, &err) ? 0 : v;
}

/* ------------------------------------------------------------ TIES pieces */

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void test_kth(void)
{
    enum { N = 1000 };
    float x[N], v[N], s[N];
    for (int i = 0; i < N; i++) /* repeats and signs on purpose */
        x[i] = (float)((i * 7919) % 97 - 48) * (i % 5 == 0 ? 0.0f : 0.25f);
    for (int i = 0; i < N; i++)
        s[i] = fabsf(x[i]);
    qsort(s, N, sizeof *s, cmp_desc);
    for (int k = 1; k <= N; k += 37)
        CHECK(cm_kth_magnitude(x, N, k, v) == s[k - 1], "k=%d: %g vs %g", k,
              cm_kth_magnitude(x, N, k, v), s[k - 1]);
    float z[N] = {0};
    CHECK(cm_kth_magnitude(z, N, 10, v) == 0.0f);
}

/* The worked example of the TIES paper's figure: trim, elect, disjoint mean. */
static void test_ties_example(void)
{
    float a[5] = {0.5f, -0.1f, 0.3f, -0.8f, 0.05f};
    float b[5] = {-0.4f, 0.2f, 0.6f, 0.1f, -0.02f};
    float c[5] = {0.3f, 0.9f, -0.2f, -0.7f, 0.0f};
    float *tau[3] = {a, b, c}, thr[3], out[5], v[5];
    for (int i = 0; i < 3; i++) /* keep the top 60% (3 of 5) */
        thr[i] = cm_kth_magnitude(tau[i], 5, 3, v);
    cm_ties_merge(tau, thr, 3, 5, out);
    /* trimmed: a {.5,0,.3,-.8,0}, b {-.4,.2,.6,0,0}, c {.3,.9,0,-.7,0}
     * sums .4, 1.1, .9, -1.5, 0 -> signs + + + - none
     * agreeing means: (.5+.3)/2, (.2+.9)/2, (.3+.6)/2, (-.8-.7)/2, 0 */
    const float want[5] = {0.4f, 0.55f, 0.45f, -0.75f, 0.0f};
    for (int e = 0; e < 5; e++)
        CHECK(fabsf(out[e] - want[e]) < 1e-6f, "element %d: %g, want %g", e, out[e], want[e]);
}

/* ------------------------------------------------------------ upcycle */

static void test_upcycle(const char *in)
{
    char out[512], name[64];
    cm_err err = {0};
    cm_surg_check chk;
    cm_upcycle_opts o = {.c = {.type = CM_SURG_SAME, .seed = 1}, .n_expert = 4,
                         .n_expert_used = 2, .router_std = 0.02f};
    tpath(out, sizeof out, "up.gguf");
    CHECK(cm_upcycle(in, out, &o, &chk, &err) == CM_OK, "upcycle: %s", err.msg);
    CHECK(chk.max_abs <= 1e-5 && chk.argmax_same == chk.n_tokens, "upcycle check %g",
          chk.max_abs);
    gguf_file f, d;
    if (gguf_open(out, &f, &err) || gguf_open(in, &d, &err)) {
        CHECK(0, "open: %s", err.msg);
        return;
    }
    CHECK(meta_u32(&f, "llama.expert_count") == 4 && meta_u32(&f, "llama.expert_used_count") == 2);
    int norm = 0;
    CHECK(gguf_get_bool(&f, "llama.expert_weights_norm", &norm, &err) == CM_OK && norm == 1);
    for (int il = 0; il < 2; il++) {
        static const char *const w[] = {"gate", "up", "down"};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "blk.%d.ffn_%s.weight", il, w[k]);
            const gguf_tensor *t = gguf_find_tensor(&d, name);
            snprintf(name, sizeof name, "blk.%d.ffn_%s_exps.weight", il, w[k]);
            const gguf_tensor *e = gguf_find_tensor(&f, name);
            CHECK(t && e && e->ne[2] == 4 && e->ne[0] == t->ne[0] && e->ne[1] == t->ne[1],
                  "%s shape", name);
            for (int x = 0; t && e && x < 4; x++) /* each expert: the dense bytes */
                CHECK(!memcmp((const uint8_t *)e->data + x * t->nbytes, t->data, t->nbytes),
                      "%s expert %d differs from the dense tensor", name, x);
        }
        snprintf(name, sizeof name, "blk.%d.ffn_gate.weight", il);
        CHECK(!gguf_find_tensor(&f, name), "dense %s left in the MoE", name);
        snprintf(name, sizeof name, "blk.%d.ffn_gate_inp.weight", il);
        const gguf_tensor *r = gguf_find_tensor(&f, name);
        CHECK(r && r->type == CM_TYPE_F32 && r->ne[0] == 64 && r->ne[1] == 4, "router shape");
    }
    gguf_close(&f);
    gguf_close(&d);

    /* noise: the experts differ, the check reports a difference, no limit */
    o.noise = 0.01f;
    CHECK(cm_upcycle(in, out, &o, &chk, &err) == CM_OK, "upcycle --noise: %s", err.msg);
    CHECK(chk.max_abs > 1e-6 && chk.max_abs < 1.0, "noisy upcycle: difference %g", chk.max_abs);
    if (gguf_open(out, &f, &err) == CM_OK) {
        const gguf_tensor *e = gguf_find_tensor(&f, "blk.0.ffn_up_exps.weight");
        CHECK(e && memcmp(e->data, (const uint8_t *)e->data + e->nbytes / 4, e->nbytes / 4),
              "noisy experts are identical");
        gguf_close(&f);
    }
}

/* ------------------------------------------------------------ grow */

static void test_grow(const char *in, int moe)
{
    char out[512];
    cm_err err = {0};
    cm_surg_check chk;
    cm_grow_opts o = {.c = {.type = CM_SURG_SAME, .seed = 1}, .width_mult = 1.5f,
                      .add_layers = 3};
    tpath(out, sizeof out, "grown.gguf");
    CHECK(cm_grow(in, out, &o, &chk, &err) == CM_OK, "grow %s: %s", in, err.msg);
    CHECK(chk.max_abs <= 1e-4 && chk.argmax_same == chk.n_tokens, "grow check %g", chk.max_abs);
    gguf_file f, d;
    if (gguf_open(out, &f, &err) || gguf_open(in, &d, &err)) {
        CHECK(0, "open: %s", err.msg);
        return;
    }
    CHECK(meta_u32(&f, "llama.block_count") == 5, "block_count %u",
          meta_u32(&f, "llama.block_count"));
    CHECK(meta_u32(&f, "llama.feed_forward_length") == 192);
    /* layers: 0, new, new, 1, new (new k after old (k+1)*2/3 - 1) */
    const char *down = moe ? "ffn_down_exps.weight" : "ffn_down.weight";
    const char *up = moe ? "ffn_up_exps.weight" : "ffn_up.weight";
    int64_t n, m;
    char name[64];
    for (int il = 0; il < 5; il++) {
        int is_new = il == 1 || il == 2 || il == 4;
        snprintf(name, sizeof name, "blk.%d.%s", il, down);
        float *x = tensor_f32(&f, name, &n);
        float zmax = 0;
        for (int64_t i = 0; x && i < n; i++)
            zmax = fmaxf(zmax, fabsf(x[i]));
        CHECK(x && (is_new ? zmax == 0 : zmax > 0), "%s: max %g", name, zmax);
        free(x);
        snprintf(name, sizeof name, "blk.%d.attn_output.weight", il);
        x = tensor_f32(&f, name, &n);
        zmax = 0;
        for (int64_t i = 0; x && i < n; i++)
            zmax = fmaxf(zmax, fabsf(x[i]));
        CHECK(x && (is_new ? zmax == 0 : zmax > 0), "%s: max %g", name, zmax);
        free(x);
    }
    /* old layer 1 is output layer 3: unit 128+j copies unit j; the down
     * column of a copied unit is halved, of an uncopied one kept */
    snprintf(name, sizeof name, "blk.1.%s", up);
    float *u0 = tensor_f32(&d, name, &m);
    snprintf(name, sizeof name, "blk.3.%s", up);
    float *u1 = tensor_f32(&f, name, &n);
    CHECK(u0 && u1 && n == m * 3 / 2);
    for (int64_t r = 0; u0 && u1 && r < 192; r++)
        CHECK(!memcmp(u1 + r * 64, u0 + (r % 128) * 64, 64 * sizeof(float)), "up row %lld",
              (long long)r);
    free(u0);
    free(u1);
    snprintf(name, sizeof name, "blk.1.%s", down);
    float *d0 = tensor_f32(&d, name, &m);
    snprintf(name, sizeof name, "blk.3.%s", down);
    float *d1 = tensor_f32(&f, name, &n);
    for (int64_t e = 0; d0 && d1 && e < 64; e++)
        for (int64_t j = 0; j < 192; j++) {
            float want = d0[e * 128 + j % 128] / (j % 128 < 64 ? 2.0f : 1.0f);
            CHECK(d1[e * 192 + j] == want, "down [%lld, %lld]", (long long)e, (long long)j);
        }
    free(d0);
    free(d1);
    gguf_close(&f);
    gguf_close(&d);
}

/* ------------------------------------------------------------ merge */

/* A "fine-tune" of in: every weight + amp * N(0, 1) from seed (written by
 * the same writer the commands use, with in's metadata). */
typedef struct {
    const gguf_tensor *t;
    float amp;
    unsigned seed;
} pert;

static cm_status fill_pert(void *ctx, void *dst, uint64_t nbytes, cm_err *err)
{
    const pert *p = ctx;
    int64_t n = (int64_t)(nbytes / sizeof(float));
    unsigned s = p->seed;
    (void)err;
    memcpy(dst, p->t->data, nbytes);
    for (int64_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        ((float *)dst)[i] += p->amp * ((float)((s >> 8) & 0xffff) / 32768.0f - 1.0f);
    }
    return CM_OK;
}

/* Writes the perturbed model to out with gguf_writer_finish or, when
 * check_tol > 0, with surg_finish checked against in. */
static int perturb_as(const char *in, const char *out, float amp, unsigned seed, double check_tol,
                      cm_err *err)
{
    gguf_file f;
    if (gguf_open(in, &f, err))
        return -1;
    gguf_writer *w = gguf_writer_new(3);
    pert *p = calloc(f.n_tensors, sizeof *p);
    gguf_writer_copy_kv(w, &f, NULL, NULL);
    for (uint64_t i = 0; i < f.n_tensors; i++) {
        char name[128];
        const gguf_tensor *t = &f.tensors[i];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        p[i] = (pert){t, strstr(name, "norm") ? 0.0f : amp, seed + (unsigned)i};
        gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, NULL, fill_pert, &p[i]);
    }
    cm_status s = check_tol > 0 ? surg_finish(w, out, in, 8, check_tol, NULL, NULL, err)
                                : gguf_writer_finish(w, out, err);
    gguf_writer_free(w);
    free(p);
    gguf_close(&f);
    return s ? -1 : 0;
}

static int perturb(const char *in, const char *out, float amp, unsigned seed)
{
    cm_err err;
    return perturb_as(in, out, amp, seed, 0, &err);
}

/* A model that fails the check is not renamed into place, and its
 * temporary is removed. */
static void test_check_fails(const char *in)
{
    char out[512], cmd[700];
    cm_err err = {0};
    tpath(out, sizeof out, "unchecked.gguf");
    CHECK(perturb_as(in, out, 0.05f, 5, 1e-5, &err) != 0 && strstr(err.msg, "check failed"),
          "a perturbed model passed the check: %s", err.msg);
    CHECK(access(out, F_OK) != 0, "%s written although its check failed", out);
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -q unchecked", tmpdir);
    CHECK(system(cmd) != 0, "a temporary of the failed check is left in %s", tmpdir);
    CHECK(perturb_as(in, out, 0.0f, 5, 1e-5, &err) == 0, "an unchanged model fails: %s", err.msg);
    CHECK(access(out, F_OK) == 0);
}

static double max_diff(const char *a, const char *b, const char *tensor)
{
    gguf_file fa, fb;
    cm_err err;
    int64_t na = 0, nb = 0;
    double m = INFINITY;
    if (gguf_open(a, &fa, &err))
        return m;
    if (gguf_open(b, &fb, &err) == CM_OK) {
        float *x = tensor_f32(&fa, tensor, &na), *y = tensor_f32(&fb, tensor, &nb);
        if (x && y && na == nb)
            for (int64_t i = 0, first = 1; i < na; i++, first = 0)
                m = first ? fabs((double)x[i] - y[i]) : fmax(m, fabs((double)x[i] - y[i]));
        free(x);
        free(y);
        gguf_close(&fb);
    }
    gguf_close(&fa);
    return m;
}

static void test_merge(const char *base)
{
    char a[512], b[512], out[512];
    cm_err err = {0};
    const char *T = "blk.1.ffn_down.weight";
    tpath(a, sizeof a, "ft_a.gguf");
    tpath(b, sizeof b, "ft_b.gguf");
    tpath(out, sizeof out, "merged.gguf");
    CHECK(perturb(base, a, 0.01f, 11) == 0 && perturb(base, b, 0.01f, 977) == 0);

    cm_merge_opts o = {.type = CM_TYPE_F32, .method = CM_MERGE_AVERAGE, .density = 0.2f,
                       .lambda = 1.0f};
    const char *same[3] = {a, a, a};
    CHECK(cm_merge(base, same, 3, out, &o, &err) == CM_OK, "merge: %s", err.msg);
    CHECK(max_diff(out, a, T) == 0 && max_diff(out, a, "token_embd.weight") == 0,
          "average of identical models differs from the model");
    o.method = CM_MERGE_TIES; /* at density 1 nothing is trimmed */
    o.density = 1;
    CHECK(cm_merge(base, same, 3, out, &o, &err) == CM_OK, "merge ties: %s", err.msg);
    o.density = 0.2f;
    CHECK(max_diff(out, a, "output.weight") < 1e-6, "ties of identical models: %g",
          max_diff(out, a, "output.weight"));

    /* average of two: the element-wise mean */
    const char *two[2] = {a, b};
    o.method = CM_MERGE_AVERAGE;
    CHECK(cm_merge(base, two, 2, out, &o, &err) == CM_OK, "merge: %s", err.msg);
    gguf_file fo, fa, fb;
    if (!gguf_open(out, &fo, &err) && !gguf_open(a, &fa, &err) && !gguf_open(b, &fb, &err)) {
        int64_t n, n1, n2;
        float *m = tensor_f32(&fo, T, &n), *x = tensor_f32(&fa, T, &n1), *y = tensor_f32(&fb, T, &n2);
        for (int64_t i = 0; m && x && y && i < n; i++)
            CHECK(m[i] == (float)(((double)x[i] + y[i]) / 2), "mean at %lld", (long long)i);
        free(m);
        free(x);
        free(y);
        gguf_close(&fo);
        gguf_close(&fa);
        gguf_close(&fb);
    }
    /* task arithmetic with lambda 0 is the base; with 1, base + both deltas */
    o.method = CM_MERGE_TASK_ARITHMETIC;
    o.lambda = 0;
    CHECK(cm_merge(base, two, 2, out, &o, &err) == CM_OK, "merge: %s", err.msg);
    CHECK(max_diff(out, base, T) == 0 && max_diff(out, base, "output.weight") == 0,
          "task arithmetic, lambda 0, is not the base");
    o.lambda = 1;
    CHECK(cm_merge(base, two, 2, out, &o, &err) == CM_OK, "merge: %s", err.msg);
    double d = max_diff(out, base, T);
    CHECK(d > 0.005 && d < 0.03, "task arithmetic moved the base by %g", d);

    /* TIES with density 1 and one model: base + that model's task vector */
    o.method = CM_MERGE_TIES;
    o.density = 1;
    CHECK(cm_merge(base, two, 1, out, &o, &err) == CM_OK, "merge: %s", err.msg);
    CHECK(max_diff(out, a, T) < 1e-6, "ties of one model at density 1: %g", max_diff(out, a, T));
    /* density 0.2: about 80% of each tensor stays at the base */
    o.density = 0.2f;
    CHECK(cm_merge(base, two, 2, out, &o, &err) == CM_OK, "merge: %s", err.msg);
    if (!gguf_open(out, &fo, &err) && !gguf_open(base, &fa, &err)) {
        int64_t n, n1, same_n = 0;
        float *m = tensor_f32(&fo, T, &n), *x = tensor_f32(&fa, T, &n1);
        for (int64_t i = 0; m && x && i < n; i++)
            same_n += m[i] == x[i];
        double frac = (double)same_n / (double)n;
        /* kept where either model's top 20% is: 1 - 0.8^2 = 36% moved */
        CHECK(frac > 0.58 && frac < 0.70, "ties density 0.2: %.3f of weights unchanged", frac);
        free(m);
        free(x);
        gguf_close(&fo);
        gguf_close(&fa);
    }
}

static int same_bytes(const char *a, const char *b)
{
    size_t na, nb;
    char *x = tl_slurp(a, &na), *y = tl_slurp(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

/* Merging a few rows at a time gives the same file as whole tensors. */
static void test_merge_chunks(const char *base)
{
    char a[512], b[512], o1[512], o2[512];
    cm_err err = {0};
    tpath(a, sizeof a, "ft_a.gguf");
    tpath(b, sizeof b, "ft_b.gguf");
    tpath(o1, sizeof o1, "whole.gguf");
    tpath(o2, sizeof o2, "chunked.gguf");
    const char *two[2] = {a, b};
    for (int m = 0; m < 3; m++) {
        cm_merge_opts o = {.type = CM_TYPE_F32, .method = (cm_merge_method)m, .density = 0.3f,
                           .lambda = 0.7f};
        CHECK(cm_merge(base, two, 2, o1, &o, &err) == CM_OK, "merge: %s", err.msg);
        o.chunk = 150; /* two rows of 64 */
        CHECK(cm_merge(base, two, 2, o2, &o, &err) == CM_OK, "merge: %s", err.msg);
        CHECK(same_bytes(o1, o2), "method %d: merging in chunks changes the result", m);
    }
}

static void test_merge_types(const char *dir)
{
    char f16[512], q8[512], f32[512], out[512];
    cm_err err = {0};
    tl_path(f16, sizeof f16, "%s/llama-f16.gguf", dir);
    tl_path(q8, sizeof q8, "%s/llama-q8_0.gguf", dir);
    tl_path(f32, sizeof f32, "%s/llama-f32.gguf", dir);
    tpath(out, sizeof out, "mixed.gguf");
    const char *two[2] = {f16, q8};
    cm_merge_opts o = {.type = CM_TYPE_F32, .method = CM_MERGE_AVERAGE, .density = 0.2f,
                       .lambda = 1};
    CHECK(cm_merge(f32, two, 2, out, &o, &err) == CM_OK, "merge f16 + q8_0: %s", err.msg);
    double d = max_diff(out, f32, "blk.0.attn_q.weight");
    CHECK(d < 0.01, "average of f16 and q8_0 copies is %g from f32", d);
}

static void test_refusals(const char *dir)
{
    char llama[512], mixtral[512], wide[512], out[512];
    cm_err err = {0};
    tl_path(llama, sizeof llama, "%s/llama/llama-f32.gguf", dir);
    tl_path(mixtral, sizeof mixtral, "%s/mixtral/mixtral-f32.gguf", dir);
    tpath(wide, sizeof wide, "wide.gguf");
    tpath(out, sizeof out, "refused.gguf");
    cm_grow_opts g = {.c = {.type = CM_SURG_SAME}, .width_mult = 2};
    CHECK(cm_grow(llama, wide, &g, NULL, &err) == CM_OK, "grow: %s", err.msg);
    cm_merge_opts o = {.type = CM_TYPE_F32, .method = CM_MERGE_AVERAGE, .density = 0.2f,
                       .lambda = 1};
    const char *ms[2] = {llama, wide};
    CHECK(cm_merge(NULL, ms, 2, out, &o, &err) == CM_E_FORMAT &&
              strstr(err.msg, "tensor blk.0.ffn_") && strstr(err.msg, "shape"),
          "shape mismatch: %s", err.msg);
    ms[1] = mixtral;
    CHECK(cm_merge(NULL, ms, 2, out, &o, &err) == CM_E_FORMAT, "MoE with dense: %s", err.msg);
    /* a model with one tensor more than the first */
    char extra[512];
    tpath(extra, sizeof extra, "extra.gguf");
    gguf_file f;
    if (gguf_open(llama, &f, &err) == CM_OK) {
        gguf_writer *w = gguf_writer_new(3);
        static const float z[4];
        gguf_writer_copy_kv(w, &f, NULL, NULL);
        for (uint64_t i = 0; i < f.n_tensors; i++) {
            const gguf_tensor *t = &f.tensors[i];
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
            gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data, NULL, NULL);
        }
        gguf_writer_add_tensor(w, "extra.weight", CM_TYPE_F32, 1, (const int64_t[]){4}, z, NULL,
                               NULL);
        CHECK(gguf_writer_finish(w, extra, &err) == CM_OK, "%s", err.msg);
        gguf_writer_free(w);
        gguf_close(&f);
        ms[1] = extra;
        CHECK(cm_merge(NULL, ms, 2, out, &o, &err) == CM_E_FORMAT &&
                  strstr(err.msg, "tensor extra.weight"), "extra tensor: %s", err.msg);
        CHECK(cm_merge(extra, ms, 1, out, &o, &err) == CM_E_FORMAT &&
                  strstr(err.msg, "tensor extra.weight"), "extra tensor in the base: %s", err.msg);
    }
    cm_upcycle_opts u = {.c = {.type = CM_SURG_SAME}, .n_expert = 4, .n_expert_used = 2};
    CHECK(cm_upcycle(mixtral, out, &u, NULL, &err) == CM_E_UNSUPPORTED, "upcycle of a MoE: %s",
          err.msg);
    CHECK(access(out, F_OK) != 0, "a refused command left %s", out);
}

int main(void)
{
    test_kth();
    test_ties_example();
    const char *sh = tl_shared("fixtures/gguf/mixtral/mixtral-f32.gguf");
    if (!sh)
        tl_skip("no fixtures/gguf (../shared or tests/data)");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 99;
    }
    char llama[512], mixtral[512], dir[512], up[512];
    tl_path(dir, sizeof dir, "%s/fixtures/gguf", sh);
    tl_path(llama, sizeof llama, "%s/llama/llama-f32.gguf", dir);
    tl_path(mixtral, sizeof mixtral, "%s/mixtral/mixtral-f32.gguf", dir);
    test_upcycle(llama);
    test_grow(llama, 0);
    test_grow(mixtral, 1);
    /* the upcycled model grows too (its experts widened) */
    tpath(up, sizeof up, "up.gguf");
    cm_err err = {0};
    cm_upcycle_opts u = {.c = {.type = CM_SURG_SAME, .seed = 3}, .n_expert = 8,
                         .n_expert_used = 2, .router_std = 0.02f};
    CHECK(cm_upcycle(llama, up, &u, NULL, &err) == CM_OK, "upcycle 8: %s", err.msg);
    test_grow(up, 1);
    test_merge(llama);
    test_merge_chunks(llama);
    test_check_fails(llama);
    tl_path(dir, sizeof dir, "%s/fixtures/gguf/llama", sh);
    test_merge_types(dir);
    tl_path(dir, sizeof dir, "%s/fixtures/gguf", sh);
    test_refusals(dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return tl_finish("test_surgery");
}
