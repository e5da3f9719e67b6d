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

/* The k-th largest |x| by the streamed radix select, x fed in pieces. */
static float stream_kth(cm_kth_stream *ks, const float *x, int n, int64_t k)
{
    float got = -1;
    cm_kth_stream_init(ks, k);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i += 777)
            cm_kth_stream_add(ks, x + i, n - i < 777 ? n - i : 777);
        CHECK(cm_kth_stream_next(ks, &got) == pass);
    }
    return got;
}

/* The streamed radix select against quickselect: repeats, values that
 * share their high bits, and a rank past the end. */
static void test_kth_stream(void)
{
    enum { N = 5000 };
    float *x = malloc(N * sizeof *x), *v = malloc(N * sizeof *v);
    cm_kth_stream *ks = malloc(sizeof *ks);
    unsigned s = 7;
    if (!x || !v || !ks)
        return;
    for (int i = 0; i < N; i++) {
        s = s * 1103515245u + 12345u;
        x[i] = (float)((int)(s >> 8) % 20001 - 10000) * (i % 3 ? 1e-4f : 3e-7f);
        if (i % 11 == 0)
            x[i] = x[i / 2];
        if (i % 13 == 0) /* same high 16 bits as 1.0 */
            x[i] = 1.0f + (float)(i % 100) * 1e-6f;
    }
    for (int64_t k = 1; k <= N; k += k < 60 ? 1 : 397) {
        float got = stream_kth(ks, x, N, k), want = cm_kth_magnitude(x, N, k, v);
        CHECK(got == want, "k=%lld: %g, want %g", (long long)k, got, want);
    }
    CHECK(stream_kth(ks, x, N, N) == cm_kth_magnitude(x, N, N, v));
    CHECK(stream_kth(ks, x, N, N + 1) == INFINITY);
    free(x);
    free(v);
    free(ks);
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

/* Residual width: E = 64 grows to E2 (128: every unit twice; 96: units
 * 0..31 twice, 32..63 once), the heads by whole KV groups (2 KV heads of
 * 2 query heads each, head size 16). */
static void test_grow_embd(const char *in, int moe, float mult)
{
    char out[512], name[64];
    cm_err err = {0};
    cm_surg_check chk;
    cm_grow_opts o = {.c = {.type = CM_SURG_SAME, .seed = 1}, .width_mult = 1.5f,
                      .embd_mult = mult, .add_layers = 1};
    tpath(out, sizeof out, "wide_embd.gguf");
    CHECK(cm_grow(in, out, &o, &chk, &err) == CM_OK, "grow --embd-mult %g %s: %s", mult, in,
          err.msg);
    CHECK(chk.max_abs <= 1e-4 && chk.argmax_same == chk.n_tokens, "embd %g check %g", mult,
          chk.max_abs);
    printf("grow %s --embd-mult %g --width-mult 1.5 --add-layers 1: max-abs %.3g\n",
           moe ? "moe" : "dense", mult, chk.max_abs);
    gguf_file f, d;
    if (gguf_open(out, &f, &err) || gguf_open(in, &d, &err)) {
        CHECK(0, "open: %s", err.msg);
        return;
    }
    const int64_t E = 64, E2 = (int64_t)(64 * mult + 0.5f), kv2 = E2 / 32;
    const double r = (double)E2 / E;
    CHECK(meta_u32(&f, "llama.embedding_length") == E2 &&
              meta_u32(&f, "llama.attention.head_count") == 2 * kv2 &&
              meta_u32(&f, "llama.attention.head_count_kv") == kv2 &&
              meta_u32(&f, "llama.attention.key_length") == 16,
          "metadata: embd %u heads %u/%u", meta_u32(&f, "llama.embedding_length"),
          meta_u32(&f, "llama.attention.head_count"),
          meta_u32(&f, "llama.attention.head_count_kv"));
    int64_t n0, n1;
    /* the copies of unit i carry a_k x_i with the sum of a_k^2 over them = r */
    float *e0 = tensor_f32(&d, "token_embd.weight", &n0);
    float *e1 = tensor_f32(&f, "token_embd.weight", &n1);
    float *w0 = tensor_f32(&d, "blk.0.attn_norm.weight", &n0);
    float *w1 = tensor_f32(&f, "blk.0.attn_norm.weight", &n1);
    for (int64_t k = 0; e0 && e1 && w0 && w1 && k < E2; k++) {
        int64_t i = k % E, c = (E2 - E > i) ? 2 : 1;
        double a = sqrt(r / (double)c);
        for (int t = 0; t < 1000; t += 97)
            CHECK(fabs(e1[t * E2 + k] - a * e0[t * E + i]) <= 1e-6 * fabs(e0[t * E + i]) + 1e-12,
                  "token_embd[%d][%lld]", t, (long long)k);
        CHECK(fabs(w1[k] - w0[i] * a / r) <= 1e-6 * fabs(w0[i]), "attn_norm[%lld]", (long long)k);
    }
    free(e0);
    free(e1);
    free(w0);
    free(w1);
    /* query head h' (group h' / 2) copies head (h' / 2 mod 2) 2 + h' mod 2,
     * its rows reading the copied columns; attn_output's columns of a head
     * whose group has c copies are 1/c of the old ones */
    float *q0 = tensor_f32(&d, "blk.1.attn_q.weight", &n0);
    float *q1 = tensor_f32(&f, "blk.2.attn_q.weight", &n1); /* a new layer's */
    CHECK(q0 && q1 && n1 == E2 * 2 * kv2 * 16, "attn_q shape");
    for (int64_t row = 0; q0 && q1 && row < 2 * kv2 * 16; row++) {
        int64_t h = row / 16, src = ((h / 2) % 2 * 2 + h % 2) * 16 + row % 16;
        for (int64_t k = 0; k < E2; k++)
            CHECK(q1[row * E2 + k] == q0[src * E + k % E], "attn_q [%lld, %lld]", (long long)row,
                  (long long)k);
    }
    free(q0);
    free(q1);
    float *o0 = tensor_f32(&d, "blk.1.attn_output.weight", &n0);
    float *o1 = tensor_f32(&f, "blk.1.attn_output.weight", &n1); /* blk.2's is zero */
    for (int64_t k = 0; o0 && o1 && k < E2; k++)
        for (int64_t col = 0; col < 2 * kv2 * 16; col++) {
            int64_t h = col / 16, g = (h / 2) % 2, c = 1 + (kv2 - 2 > g);
            int64_t i = k % E, ce = (E2 - E > i) ? 2 : 1, src = (g * 2 + h % 2) * 16 + col % 16;
            double want = o0[i * 64 + src] / (double)c * sqrt(r / (double)ce);
            CHECK(fabs(o1[k * 2 * kv2 * 16 + col] - want) <= 1e-6 * fabs(want) + 1e-12,
                  "attn_output [%lld, %lld]: %g, want %g", (long long)k, (long long)col,
                  o1[k * 2 * kv2 * 16 + col], want);
        }
    free(o0);
    free(o1);
    /* the router and the experts read the wider stream too */
    snprintf(name, sizeof name, "blk.0.%s", moe ? "ffn_gate_inp.weight" : "ffn_up.weight");
    const gguf_tensor *t = gguf_find_tensor(&f, name);
    CHECK(t && t->ne[0] == E2, "%s: ne[0] %lld", name, t ? (long long)t->ne[0] : -1LL);
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
 * check_tol > 0, with surg_finish checked against in; tensor `loud` (when
 * non-NULL) moves ten times as much as the others. */
static int perturb_loud(const char *in, const char *out, float amp, unsigned seed,
                        double check_tol, const char *loud, cm_err *err)
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
        float a = loud && !strcmp(name, loud) ? 10 * amp : amp;
        p[i] = (pert){t, strstr(name, "norm") ? 0.0f : a, seed + (unsigned)i};
        gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, NULL, fill_pert, &p[i]);
    }
    cm_status s = check_tol > 0 ? surg_finish(w, out, in, 8, check_tol, NULL, NULL, err)
                                : gguf_writer_finish(w, out, err);
    gguf_writer_free(w);
    free(p);
    gguf_close(&f);
    return s ? -1 : 0;
}

static int perturb_as(const char *in, const char *out, float amp, unsigned seed, double check_tol,
                      cm_err *err)
{
    return perturb_loud(in, out, amp, seed, check_tol, NULL, err);
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
    for (int m = 0; m < 4; m++) { /* 3: TIES over the whole model */
        cm_merge_opts o = {.type = CM_TYPE_F32, .method = (cm_merge_method)(m < 3 ? m : 2),
                           .density = 0.3f, .lambda = 0.7f,
                           .scope = m == 3 ? CM_TIES_MODEL : CM_TIES_TENSOR};
        CHECK(cm_merge(base, two, 2, o1, &o, &err) == CM_OK, "merge: %s", err.msg);
        o.chunk = 150; /* two rows of 64 */
        CHECK(cm_merge(base, two, 2, o2, &o, &err) == CM_OK, "merge: %s", err.msg);
        CHECK(same_bytes(o1, o2), "method %d: merging in chunks changes the result", m);
    }
}

/* Every |a - base| of the model (float differences, as merge takes them),
 * sorted in descending order; *n receives their count. */
static float *all_tau(const char *base, const char *a, int64_t *n)
{
    gguf_file fb, fa;
    cm_err err;
    float *all = NULL;
    *n = 0;
    if (gguf_open(base, &fb, &err))
        return NULL;
    if (gguf_open(a, &fa, &err) == CM_OK) {
        for (uint64_t i = 0; i < fb.n_tensors; i++) {
            char name[128];
            int64_t nb, na;
            snprintf(name, sizeof name, "%.*s", (int)fb.tensors[i].name.len,
                     fb.tensors[i].name.ptr);
            float *x = tensor_f32(&fb, name, &nb), *y = tensor_f32(&fa, name, &na);
            float *grown = x && y ? realloc(all, (size_t)(*n + nb) * sizeof *all) : NULL;
            if (grown) {
                all = grown;
                for (int64_t e = 0; e < nb; e++)
                    all[(*n)++] = fabsf(y[e] - x[e]);
            }
            free(x);
            free(y);
        }
        gguf_close(&fa);
    }
    gguf_close(&fb);
    if (all)
        qsort(all, (size_t)*n, sizeof *all, cmp_desc);
    return all;
}

/* The fraction of tensor T of out that differs from base. */
static double moved(const char *out, const char *base, const char *T)
{
    gguf_file fo, fb;
    cm_err err;
    int64_t n = 0, n1, diff = 0;
    if (gguf_open(out, &fo, &err))
        return -1;
    if (gguf_open(base, &fb, &err) == CM_OK) {
        float *x = tensor_f32(&fo, T, &n), *y = tensor_f32(&fb, T, &n1);
        for (int64_t i = 0; x && y && i < n; i++)
            diff += x[i] != y[i];
        free(x);
        free(y);
        gguf_close(&fb);
    }
    gguf_close(&fo);
    return n ? (double)diff / (double)n : -1;
}

typedef struct {
    int64_t kept, wrong; /* one model: weights kept; moved or not against the threshold */
    double maxd;         /* two models: max |merged - reference| */
} ties_ref;

/* Tensor `name` of f: 0 the base, 1 and 2 the fine-tunes, 3 the merge of 1
 * alone, 4 the merge of both, against the threshold rule and cm_ties_merge. */
static void compare_tensor(const gguf_file *f, const char *name, const float thr[2], ties_ref *r)
{
    int64_t m = 0, m1, m2, m3, m4;
    float *x = tensor_f32(&f[0], name, &m), *y = tensor_f32(&f[1], name, &m1);
    float *y2 = tensor_f32(&f[2], name, &m2), *z = tensor_f32(&f[3], name, &m3);
    float *z2 = tensor_f32(&f[4], name, &m4), *ref = malloc((size_t)m * sizeof *ref + 1);
    if (!x || !y || !y2 || !z || !z2 || !ref) {
        r->maxd = INFINITY;
        m = 0;
    }
    for (int64_t e = 0; e < m; e++) {
        int want = fabsf(y[e] - x[e]) >= thr[0];
        r->kept += want;
        r->wrong += want != (z[e] != x[e]);
        y[e] -= x[e];
        y2[e] -= x[e];
    }
    float *tau[2] = {y, y2};
    if (m)
        cm_ties_merge(tau, thr, 2, m, ref);
    for (int64_t e = 0; e < m; e++)
        r->maxd = fmax(r->maxd, fabs((double)z2[e] - ((double)x[e] + ref[e])));
    free(x);
    free(y);
    free(y2);
    free(z);
    free(z2);
    free(ref);
}

static void compare_ties(const char *const path[5], const float thr[2], ties_ref *r)
{
    gguf_file f[5];
    cm_err err;
    int opened = 0;
    while (opened < 5 && gguf_open(path[opened], &f[opened], &err) == CM_OK)
        opened++;
    r->maxd = opened == 5 ? 0 : INFINITY;
    for (uint64_t i = 0; opened == 5 && i < f[0].n_tensors; i++) {
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)f[0].tensors[i].name.len,
                 f[0].tensors[i].name.ptr);
        compare_tensor(f, name, thr, r);
    }
    while (opened > 0)
        gguf_close(&f[--opened]);
}

/* TIES over the whole model: the weights kept are exactly those with
 * |tau| >= the model's k-th largest |tau| (a sort of all of them), so a
 * tensor that moved ten times as much keeps most of its weights, where
 * per-tensor trimming keeps 20% of each; two models merge as
 * cm_ties_merge with the exact thresholds does. */
static void test_merge_model_scope(const char *base)
{
    char a[512], b[512], out[512];
    cm_err err = {0};
    const char *loud = "output.weight";
    tpath(a, sizeof a, "loud_a.gguf");
    tpath(b, sizeof b, "loud_b.gguf");
    tpath(out, sizeof out, "ties_model.gguf");
    CHECK(perturb_loud(base, a, 0.01f, 21, 0, loud, &err) == 0 &&
          perturb_loud(base, b, 0.01f, 4242, 0, loud, &err) == 0, "%s", err.msg);
    int64_t n = 0, nb = 0;
    float *sa = all_tau(base, a, &n), *sb = all_tau(base, b, &nb);
    if (!sa || !sb || n != nb) {
        CHECK(0, "reference task vectors");
        free(sa);
        free(sb);
        return;
    }
    cm_merge_opts o = {.type = CM_TYPE_F32, .method = CM_MERGE_TIES, .density = 0.2f,
                       .lambda = 1.0f, .scope = CM_TIES_MODEL};
    const int64_t k = (int64_t)ceil((double)o.density * (double)n);
    const float thr[2] = {sa[k - 1], sb[k - 1]};
    const char *two[2] = {a, b};
    char out2[512];
    tpath(out2, sizeof out2, "ties_model2.gguf");
    CHECK(cm_merge(base, two, 1, out, &o, &err) == CM_OK, "merge: %s", err.msg);
    CHECK(cm_merge(base, two, 2, out2, &o, &err) == CM_OK, "merge: %s", err.msg);
    const char *files[5] = {base, a, b, out, out2};
    ties_ref ref = {0};
    compare_ties(files, thr, &ref);
    const int64_t kept = ref.kept, wrong = ref.wrong;
    const double maxd = ref.maxd;
    CHECK(maxd <= 1e-6, "two models, model-scope TIES: %g from the reference", maxd);
    CHECK(wrong == 0 && kept >= k && kept < k + k / 50, "model-scope TIES: %lld weights kept "
          "or trimmed against the exact threshold %g; %lld kept for k = %lld", (long long)wrong,
          thr[0], (long long)kept, (long long)k);
    double loud_model = moved(out, base, loud);
    o.scope = CM_TIES_TENSOR;
    CHECK(cm_merge(base, two, 1, out, &o, &err) == CM_OK, "merge: %s", err.msg);
    double loud_tensor = moved(out, base, loud);
    CHECK(loud_model > 0.5 && loud_tensor > 0.15 && loud_tensor < 0.25,
          "%s moved: %.3f with the model's threshold, %.3f with its own", loud, loud_model,
          loud_tensor);
    printf("ties density 0.2: %s kept %.3f (model scope), %.3f (tensor scope); threshold %g\n",
           loud, loud_model, loud_tensor, thr[0]);
    free(sa);
    free(sb);
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
        /* a tensor whose use of the residual stream is unknown: refused
         * when n_embd grows, copied when only the feed-forward grows */
        cm_grow_opts ge = {.c = {.type = CM_SURG_SAME}, .width_mult = 1, .embd_mult = 2};
        CHECK(cm_grow(extra, out, &ge, NULL, &err) == CM_E_UNSUPPORTED &&
                  strstr(err.msg, "tensor extra.weight"), "grow --embd-mult, extra: %s", err.msg);
        CHECK(access(out, F_OK) != 0, "a refused grow left %s", out);
        ge.embd_mult = 0.5f;
        CHECK(cm_grow(llama, out, &ge, NULL, &err) == CM_E_USAGE, "embd-mult 0.5: %s", err.msg);
    }
    cm_upcycle_opts u = {.c = {.type = CM_SURG_SAME}, .n_expert = 4, .n_expert_used = 2};
    CHECK(cm_upcycle(mixtral, out, &u, NULL, &err) == CM_E_UNSUPPORTED, "upcycle of a MoE: %s",
          err.msg);
    CHECK(access(out, F_OK) != 0, "a refused command left %s", out);
}

int main(void)
{
    test_kth();
    test_kth_stream();
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
    test_grow_embd(llama, 0, 2.0f);
    test_grow_embd(llama, 0, 1.5f);
    test_grow_embd(mixtral, 1, 2.0f);
    test_grow_embd(mixtral, 1, 1.5f);
    test_merge(llama);
    test_merge_chunks(llama);
    test_merge_model_scope(llama);
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
