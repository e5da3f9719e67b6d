/* test_convert.c - `codemoe convert` against references nobody here wrote.
 *
 * ../shared/fixtures/hf/<arch> are tiny Hugging Face checkpoints with
 * transformers' logits; ../shared/fixtures/gguf/{llama,mixtral} hold GGUFs
 * that llama.cpp's converter wrote from the same folders.  We require:
 *   - our f32/f16/q8_0 files of llama and mixtral: the same metadata
 *     (tokenizer included) and byte-identical tensors as llama.cpp's, and
 *     our q4_0 files the same tensors as llama-quantize's;
 *   - every architecture converted to f32 and run by the engine: logits
 *     within 1e-3 of transformers and the same greedy continuations (bf16,
 *     q8_0 and q4_0 drift printed);
 *   - the MoE and GPT-style architectures: llama.cpp's tensor names and
 *     shapes;
 *   - bad input: one clear error and no output file. */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/cpu/cpu.h"
#include "convert/convert.h"
#include "engine/forward.h"
#include "formats/gguf.h"
#include "util/json.h"
#include "engine/model.h"
#include "quant/quant.h"
#include "formats/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "testlib.h"

int cli_convert(int argc, char **argv);

static const char *shared;
static char tmp[512];

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static void spit(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(data, 1, n, f) == n, "cannot write %s", path);
    if (f)
        fclose(f);
}

static const char *hf(const char *arch)
{
    static char buf[4][1200];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/fixtures/hf/%s", shared, arch);
    return buf[k];
}

static const char *tpath(const char *name)
{
    static char buf[8][1024];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp, name);
    return buf[k];
}

static cm_status convert(const char *dir, const char *out, uint32_t type, cm_convert_result *res,
                         cm_err *err)
{
    cm_convert_opts o = {.hf_dir = dir, .out_path = out, .type = type, .log = NULL};
    memset(err, 0, sizeof *err);
    return cm_convert(&o, res, err);
}

/* ------------------------------------------------------------ JSON */

static void test_json(void)
{
    static const char ok[] =
        "\xEF\xBB\xBF{\"a\": [1, -2.5e3, true, false, null], \"s\": \"x\\u00e9\\ud83d\\ude00\\n\\\"\","
        " \"lone\": \"\\ud800z\", \"big\": 12345678901234567890, \"a\": 7, \"inf\": -Infinity}";
    json_doc d;
    cm_err e;
    CHECK(json_parse(ok, sizeof ok - 1, "t", &d, &e) == CM_OK, "json: %s", e.msg);
    const json_node *r = json_root(&d);
    int64_t v = 0;
    double x = 0;
    CHECK(json_get_int(&d, r, "a", &v) && v == 7, "json: last duplicate wins");
    CHECK(!strcmp(json_get_str(&d, r, "s"), "x\xc3\xa9\xf0\x9f\x98\x80\n\""), "json: escapes");
    CHECK(!strcmp(json_get_str(&d, r, "lone"), "\xef\xbf\xbdz"), "json: lone surrogate");
    CHECK(!json_get_int(&d, r, "big", &v) && json_get_num(&d, r, "big", &x) && x > 1e19,
          "json: big integer is a double");
    CHECK(json_get_num(&d, r, "inf", &x) && isinf(x) && x < 0, "json: -Infinity");
    const json_node *a = json_get(&d, r, "a");
    (void)a;
    json_free(&d);
    static const char *bad[] = {
        "", "{", "[1,]", "{\"a\" 1}", "[01]", "[1.]", "\"\\x\"", "\"\x01\"", "\"\xff\"",
        "\"\xc0\x80\"", "[1] 2", "{\"a\":1,}", "nul", "[-]", "\"\\u12\"", "[1e]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(json_parse(bad[i], strlen(bad[i]), "t", &d, &e) == CM_E_FORMAT,
              "json: '%s' accepted", bad[i]);
        json_free(&d);
    }
    char deep[200];
    memset(deep, '[', sizeof deep);
    CHECK(json_parse(deep, sizeof deep, "t", &d, &e) == CM_E_FORMAT && strstr(e.msg, "deeply"),
          "json: depth limit (%s)", e.msg);
    printf("json: ok\n");
}

/* ------------------------------------------------------------ safetensors */

/* A buffer with header text h and n data bytes. */
static uint8_t *st_buf(const char *h, size_t n_data, size_t *size)
{
    size_t hl = strlen(h);
    uint8_t *b = calloc(1, 8 + hl + n_data);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, h, hl);
    *size = 8 + hl + n_data;
    return b;
}

static void st_case(const char *h, size_t n_data, size_t cut, cm_status want, const char *msg)
{
    size_t n;
    uint8_t *b = st_buf(h, n_data, &n);
    st_model m = {0};
    cm_err e = {0};
    cm_status s = st_parse(b, cut ? cut : n, "t.safetensors", 0, &m, &e);
    CHECK(s == want && (!msg || strstr(e.msg, msg)), "safetensors '%s': status %d, '%s'", h, s,
          e.msg);
    st_close(&m);
    free(b);
}

static void test_safetensors(void)
{
    const char *ok = "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],"
                     "\"data_offsets\":[0,12]},\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[12,16]}}";
    size_t n;
    uint8_t *b = st_buf(ok, 16, &n);
    st_model m = {0};
    cm_err e;
    CHECK(st_parse(b, n, "t", 0, &m, &e) == CM_OK && m.n_tensors == 2, "safetensors ok: %s", e.msg);
    const st_tensor *w = st_find(&m, "w");
    CHECK(w && w->dtype == ST_BF16 && w->n_dims == 2 && w->shape[1] == 3 && st_numel(w) == 6,
          "safetensors: tensor w");
    CHECK(st_find(&m, "b") && st_find(&m, "b")->n_dims == 0 && !st_find(&m, "x"), "scalar b");
    /* BF16 1.0, -2.0, 0.5 and F16 1.0, -2.0 and F64 3.25 convert exactly */
    static const uint8_t vals[] = {0x80, 0x3f, 0x00, 0xc0, 0x00, 0x3f, 0x00, 0x3c, 0x00, 0xc0,
                                   0, 0, 0, 0, 0, 0, 0x0a, 0x40};
    memcpy(b + n - 16, vals, 6);
    float f[3];
    st_to_f32(w, 0, 3, f);
    CHECK(f[0] == 1.0f && f[1] == -2.0f && f[2] == 0.5f, "bf16 -> f32: %g %g %g", f[0], f[1], f[2]);
    st_close(&m);
    free(b);
    const char *h2 = "{\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                     "\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[4,12]}}";
    b = st_buf(h2, 12, &n);
    memcpy(b + n - 12, vals + 6, 12);
    memset(&m, 0, sizeof m);
    CHECK(st_parse(b, n, "t", 0, &m, &e) == CM_OK, "f16/f64: %s", e.msg);
    if (m.n_tensors == 2) {
        st_to_f32(st_find(&m, "h"), 0, 2, f);
        st_to_f32(st_find(&m, "d"), 0, 1, f + 2);
        CHECK(f[0] == 1.0f && f[1] == -2.0f && f[2] == 3.25f, "f16/f64 -> f32: %g %g %g", f[0],
              f[1], f[2]);
    }
    st_close(&m);
    free(b);
    st_case(ok, 16, 5, CM_E_FORMAT, "truncated");
    st_case(ok, 0, 0, CM_E_FORMAT, "outside the data section");
    st_case(ok, 16, 20, CM_E_FORMAT, "runs past the end");
    st_case("{\"w\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 0, CM_E_FORMAT,
            "unknown dtype 'Q7'");
    st_case("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, 0, CM_E_FORMAT,
            "need 8");
    st_case("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8, 0, CM_E_FORMAT,
            "outside");
    st_case("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 8, 0, CM_E_FORMAT,
            "shape");
    st_case("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"w\":{\"dtype\":"
            "\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, 0, CM_E_FORMAT, "twice");
    st_case("[1]", 0, 0, CM_E_FORMAT, "not a JSON object");
    st_case("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, 0, CM_E_FORMAT,
            "invalid JSON");
    printf("safetensors: ok\n");
}

/* ------------------------------------------------------------ GGUF comparison */

static size_t kv_size(const gguf_kv *kv)
{
    static const size_t sz[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    uint32_t t = kv->type == GGUF_ARRAY ? kv->arr_type : kv->type;
    uint64_t n = kv->type == GGUF_ARRAY ? kv->arr_n : 1;
    if (t != GGUF_STRING)
        return (size_t)n * sz[t];
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t l;
        memcpy(&l, p, 8);
        p += 8 + l;
    }
    return (size_t)(p - kv->data);
}

static int kv_same(const gguf_kv *a, const gguf_kv *b)
{
    return a->type == b->type && a->arr_type == b->arr_type && a->arr_n == b->arr_n &&
           kv_size(a) == kv_size(b) && !memcmp(a->data, b->data, kv_size(a));
}

/* Metadata: every key of theirs equal in ours (general.name aside); our
 * only extra key may be rope.freq_base = 10000, llama.cpp's default. */
static int compare_meta(const gguf_file *a, const gguf_file *b, const char *what)
{
    char key[256];
    int bad = 0;
    for (uint64_t i = 0; i < b->n_kv; i++) {
        snprintf(key, sizeof key, "%.*s", (int)b->kv[i].key.len, b->kv[i].key.ptr);
        const gguf_kv *o = gguf_find(a, key);
        if (!strcmp(key, "general.name"))
            continue;
        if (!o || !kv_same(o, &b->kv[i])) {
            CHECK(0, "%s: key %s %s", what, key, o ? "differs" : "missing");
            bad++;
        }
    }
    for (uint64_t i = 0; i < a->n_kv; i++) {
        snprintf(key, sizeof key, "%.*s", (int)a->kv[i].key.len, a->kv[i].key.ptr);
        float f = 0;
        if (gguf_find(b, key))
            continue;
        if (strstr(key, ".rope.freq_base") && !gguf_get_f32(a, key, &f, NULL) && f == 10000.0f) {
            printf("  %s: we also write %s = 10000 (llama.cpp's default, which its file omits)\n",
                   what, key);
            continue;
        }
        CHECK(0, "%s: extra key %s", what, key);
        bad++;
    }
    return bad;
}

/* Tensors: names (in order when ordered), types, shapes and bytes. */
static int compare_tensors(const gguf_file *a, const gguf_file *b, int ordered, const char *what)
{
    int bad = 0;
    CHECK(a->n_tensors == b->n_tensors, "%s: %llu tensors vs %llu", what,
          (unsigned long long)a->n_tensors, (unsigned long long)b->n_tensors);
    for (uint64_t i = 0; i < a->n_tensors && i < b->n_tensors; i++) {
        const gguf_tensor *x = &a->tensors[i], *y;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)x->name.len, x->name.ptr);
        y = ordered ? &b->tensors[i] : gguf_find_tensor(b, name);
        if (!y || x->name.len != y->name.len || memcmp(x->name.ptr, y->name.ptr, x->name.len)) {
            CHECK(0, "%s: tensor %llu is %s, theirs %.*s", what, (unsigned long long)i, name,
                  y ? (int)y->name.len : 4, y ? y->name.ptr : "none");
            bad++;
            continue;
        }
        int same = x->type == y->type && x->n_dims == y->n_dims &&
                   !memcmp(x->ne, y->ne, sizeof x->ne) && x->nbytes == y->nbytes &&
                   !memcmp(x->data, y->data, x->nbytes);
        CHECK(same, "%s: tensor %s differs (type %u/%u)", what, name, x->type, y->type);
        bad += !same;
    }
    return bad;
}

static void test_vs_llamacpp(const char *arch, const char *type)
{
    char out[1024], theirs[1400], what[64];
    uint32_t t;
    cm_err e;
    gguf_file a = {0}, b = {0};
    snprintf(what, sizeof what, "%s %s", arch, type);
    snprintf(out, sizeof out, "%s/%s-%s.gguf", tmp, arch, type);
    snprintf(theirs, sizeof theirs, "%s/fixtures/gguf/%s/%s-%s.gguf", shared, arch, arch, type);
    cm_convert_type(type, &t, NULL);
    CHECK(convert(hf(arch), out, t, NULL, &e) == CM_OK, "%s: %s", what, e.msg);
    if (gguf_open(out, &a, &e) || gguf_open(theirs, &b, &e)) {
        CHECK(0, "%s: %s", what, e.msg);
        gguf_close(&a);
        return;
    }
    /* llama-quantize (q4_0) writes its tensors sorted; the converter (f32,
     * f16, q8_0) in checkpoint order, as we do */
    int ordered = strcmp(type, "q4_0") != 0;
    int bm = compare_meta(&a, &b, what), bt = compare_tensors(&a, &b, ordered, what);
    printf("%-13s vs llama.cpp: %s metadata (%llu keys, tokenizer included), %llu tensors %s\n",
           what, bm ? "DIFFERENT" : "same", (unsigned long long)b.n_kv,
           (unsigned long long)a.n_tensors, bt ? "DIFFER" : "byte-identical");
    gguf_close(&a);
    gguf_close(&b);
}

/* ------------------------------------------------------------ logits */

typedef struct {
    int32_t ids[3][64], greedy[3][64];
    int n_in[3], n_g[3], n;
} reference;

static int int_lists(const json_doc *d, const json_node *arr, int32_t out[][64], int *lens)
{
    int k = 0;
    for (const json_node *l = json_first(d, arr); l && k < 3; l = json_next(d, l), k++) {
        lens[k] = 0;
        for (const json_node *c = json_first(d, l); c && lens[k] < 64; c = json_next(d, c))
            out[k][lens[k]++] = (int32_t)c->i;
    }
    return k;
}

static int read_reference(const char *arch, reference *r)
{
    char path[1400];
    json_doc d;
    cm_err e;
    snprintf(path, sizeof path, "%s/reference.json", hf(arch));
    if (json_parse_file(path, NULL, &d, &e)) {
        CHECK(0, "%s", e.msg);
        return 0;
    }
    r->n = int_lists(&d, json_get(&d, json_root(&d), "inputs"), r->ids, r->n_in);
    int ng = int_lists(&d, json_get(&d, json_root(&d), "greedy_16"), r->greedy, r->n_g);
    json_free(&d);
    CHECK(r->n == 3 && ng == 3, "%s: reference.json has %d inputs, %d continuations", arch, r->n, ng);
    return r->n == 3 && ng == 3;
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* Max |ours - transformers| over all inputs and positions; *agree counts
 * positions with the same argmax. */
static double eval_vs_hf(const cm_model *m, const char *arch, const reference *r, int *agree,
                         int *rows)
{
    double worst = 0;
    cm_err e;
    *agree = *rows = 0;
    for (int i = 0; i < r->n; i++) {
        char path[1400];
        size_t len;
        cm_ctx *ctx;
        snprintf(path, sizeof path, "%s/logits_%d.f32", hf(arch), i);
        float *ref = tl_slurp(path, &len), *got = malloc((size_t)r->n_in[i] * m->hp.n_vocab * 4);
        CHECK(ref && len == (size_t)r->n_in[i] * m->hp.n_vocab * 4, "reference %s", path);
        if (ref && got && !cm_ctx_new(m, r->n_in[i] + 16, CM_KV_F32, 512, &ctx, &e)) {
            CHECK(cm_eval(ctx, r->ids[i], r->n_in[i], got, &e) == CM_OK, "eval: %s", e.msg);
            for (int t = 0; t < r->n_in[i]; t++) {
                const float *x = got + (size_t)t * m->hp.n_vocab, *y = ref + (size_t)t * m->hp.n_vocab;
                for (int v = 0; v < m->hp.n_vocab; v++) {
                    double dd = fabs((double)x[v] - y[v]);
                    worst = !(dd <= worst) ? (isnan(dd) ? INFINITY : dd) : worst;
                }
                *agree += argmax(x, m->hp.n_vocab) == argmax(y, m->hp.n_vocab);
                (*rows)++;
            }
            cm_ctx_free(ctx);
        }
        free(ref);
        free(got);
    }
    return worst;
}

static int greedy_same(const cm_model *m, const reference *r)
{
    int same = 0;
    cm_err e;
    for (int i = 0; i < r->n; i++) {
        cm_ctx *ctx;
        if (cm_ctx_new(m, 64, CM_KV_F32, 512, &ctx, &e))
            continue;
        cm_eval(ctx, r->ids[i], r->n_in[i], NULL, &e);
        for (int k = 0; k < r->n_g[i]; k++) {
            int32_t id = argmax(cm_ctx_logits(ctx), m->hp.n_vocab);
            same += id == r->greedy[i][k];
            cm_eval(ctx, &id, 1, NULL, &e);
        }
        cm_ctx_free(ctx);
    }
    return same;
}

static void test_logits(const char *arch)
{
    reference r;
    char out[1024];
    cm_model m;
    cm_err e;
    int agree, rows;
    if (!read_reference(arch, &r))
        return;
    snprintf(out, sizeof out, "%s/%s-run-f32.gguf", tmp, arch);
    CHECK(convert(hf(arch), out, CM_TYPE_F32, NULL, &e) == CM_OK, "%s: %s", arch, e.msg);
    if (cm_model_load(out, &m, &e)) {
        CHECK(0, "%s: load our f32: %s", arch, e.msg);
        return;
    }
    double d = eval_vs_hf(&m, arch, &r, &agree, &rows);
    int same = greedy_same(&m, &r), total = r.n_g[0] + r.n_g[1] + r.n_g[2];
    printf("%-10s our f32 vs transformers: max-abs %.2e, argmax %d/%d, greedy %d/%d tokens\n", arch,
           d, agree, rows, same, total);
    CHECK(d <= 1e-3, "%s f32: max-abs %.3e > 1e-3", arch, d);
    CHECK(same == total, "%s f32: greedy %d/%d", arch, same, total);
    cm_model_free(&m);

    static const char *drift[] = {"bf16", "q8_0", "q4_0"};
    for (int k = 0; k < 3; k++) {
        uint32_t t;
        cm_convert_type(drift[k], &t, NULL);
        snprintf(out, sizeof out, "%s/%s-run-%s.gguf", tmp, arch, drift[k]);
        CHECK(convert(hf(arch), out, t, NULL, &e) == CM_OK, "%s %s: %s", arch, drift[k], e.msg);
        if (cm_model_load(out, &m, &e)) {
            CHECK(0, "%s: load our %s: %s", arch, drift[k], e.msg);
            continue;
        }
        d = eval_vs_hf(&m, arch, &r, &agree, &rows);
        same = greedy_same(&m, &r);
        printf("%-10s our %-4s vs transformers: max-abs %.4f, argmax %d/%d, greedy %d/%d tokens "
               "(drift, informative)\n", arch, drift[k], d, agree, rows, same, total);
        /* tiny random models amplify quantization error; only bf16 is bounded */
        CHECK(k || d < 0.1, "%s bf16 drift %.3f is implausibly large", arch, d);
        cm_model_free(&m);
    }
}

/* ------------------------------------------------------------ other architectures */

typedef struct {
    const char *name;
    int64_t ne0, ne1, ne2;
    uint32_t type;
} want_t;

static void expect_tensors(const gguf_file *f, const char *what, const want_t *w)
{
    for (; w->name; w++) {
        const gguf_tensor *t = gguf_find_tensor(f, w->name);
        CHECK(t && t->ne[0] == w->ne0 && t->ne[1] == w->ne1 && t->ne[2] == w->ne2 &&
                  t->type == w->type,
              "%s: %s is %s[%lld, %lld, %lld] type %u, want [%lld, %lld, %lld] type %u", what,
              w->name, t ? "" : "missing ", t ? (long long)t->ne[0] : 0LL,
              t ? (long long)t->ne[1] : 0LL, t ? (long long)t->ne[2] : 0LL, t ? t->type : 99,
              (long long)w->ne0, (long long)w->ne1, (long long)w->ne2, w->type);
    }
}

static void expect_u32(const gguf_file *f, const char *what, const char *key, uint32_t want)
{
    uint32_t v = 0;
    CHECK(gguf_get_u32(f, key, &v, NULL) == CM_OK && v == want, "%s: %s = %u, want %u", what, key,
          v, want);
}

static void expect_str(const gguf_file *f, const char *what, const char *key, const char *want)
{
    gguf_str s = {0};
    CHECK(gguf_get_str(f, key, &s, NULL) == CM_OK && gguf_str_eq(s, want), "%s: %s is '%.*s', "
          "want '%s'", what, key, (int)s.len, s.ptr ? s.ptr : "", want);
}

static int open_converted(const char *arch, const char *type, gguf_file *f)
{
    char out[1024];
    uint32_t t;
    cm_err e;
    cm_convert_type(type, &t, NULL);
    snprintf(out, sizeof out, "%s/%s-%s.gguf", tmp, arch, type);
    if (convert(hf(arch), out, t, NULL, &e) || gguf_open(out, f, &e)) {
        CHECK(0, "%s %s: %s", arch, type, e.msg);
        return 0;
    }
    return 1;
}

enum { F32 = CM_TYPE_F32, F16 = CM_TYPE_F16 };

static void test_moe_archs(void)
{
    gguf_file f;
    static const want_t q2m[] = {
        {"token_embd.weight", 64, 1000, 1, F16}, {"output.weight", 64, 1000, 1, F16},
        {"blk.0.ffn_gate_exps.weight", 64, 64, 4, F16}, {"blk.1.ffn_down_exps.weight", 64, 64, 4, F16},
        {"blk.0.ffn_up_exps.weight", 64, 64, 4, F16}, {"blk.0.ffn_gate_inp.weight", 64, 4, 1, F32},
        {"blk.0.ffn_gate_shexp.weight", 64, 128, 1, F16}, {"blk.0.ffn_down_shexp.weight", 128, 64, 1, F16},
        {"blk.1.ffn_up_shexp.weight", 64, 128, 1, F16}, {"blk.0.ffn_gate_inp_shexp.weight", 64, 1, 1, F32},
        {"blk.0.attn_q.bias", 64, 1, 1, F32}, {"blk.1.attn_k.bias", 32, 1, 1, F32},
        {"blk.0.attn_norm.weight", 64, 1, 1, F32}, {"output_norm.weight", 64, 1, 1, F32}, {0}};
    if (open_converted("qwen2_moe", "f16", &f)) {
        expect_tensors(&f, "qwen2_moe", q2m);
        CHECK(f.n_tensors == 37, "qwen2_moe: %llu tensors", (unsigned long long)f.n_tensors);
        expect_str(&f, "qwen2_moe", "general.architecture", "qwen2moe");
        expect_u32(&f, "qwen2_moe", "qwen2moe.expert_count", 4);
        expect_u32(&f, "qwen2_moe", "qwen2moe.expert_used_count", 2);
        expect_u32(&f, "qwen2_moe", "qwen2moe.expert_feed_forward_length", 64);
        expect_u32(&f, "qwen2_moe", "qwen2moe.expert_shared_feed_forward_length", 128);
        gguf_close(&f);
    }
    static const want_t q3m[] = {
        {"blk.0.attn_q_norm.weight", 16, 1, 1, F32}, {"blk.1.attn_k_norm.weight", 16, 1, 1, F32},
        {"blk.0.ffn_gate_exps.weight", 64, 64, 4, F16}, {"blk.0.ffn_down_exps.weight", 64, 64, 4, F16},
        {"blk.1.ffn_up_exps.weight", 64, 64, 4, F16}, {"blk.1.ffn_gate_inp.weight", 64, 4, 1, F32},
        {"output.weight", 64, 1000, 1, F16}, {0}};
    if (open_converted("qwen3_moe", "f16", &f)) {
        expect_tensors(&f, "qwen3_moe", q3m);
        CHECK(f.n_tensors == 27, "qwen3_moe: %llu tensors", (unsigned long long)f.n_tensors);
        expect_str(&f, "qwen3_moe", "general.architecture", "qwen3moe");
        expect_u32(&f, "qwen3_moe", "qwen3moe.expert_count", 4);
        expect_u32(&f, "qwen3_moe", "qwen3moe.attention.key_length", 16);
        expect_u32(&f, "qwen3_moe", "qwen3moe.expert_feed_forward_length", 64);
        gguf_close(&f);
    }
    printf("qwen2_moe, qwen3_moe: llama.cpp's tensor names, shapes and types\n");
}

/* A stacked expert slice must equal its source tensor (f32 conversion). */
static void test_expert_data(void)
{
    gguf_file f;
    st_model m;
    cm_err e;
    if (!open_converted("qwen2_moe", "f32", &f))
        return;
    if (st_open_dir(hf("qwen2_moe"), &m, &e) == CM_OK) {
        const gguf_tensor *t = gguf_find_tensor(&f, "blk.1.ffn_down_exps.weight");
        const st_tensor *s = st_find(&m, "model.layers.1.mlp.experts.2.down_proj.weight");
        CHECK(t && s && !memcmp((const uint8_t *)t->data + 2 * s->nbytes, s->data, s->nbytes),
              "qwen2_moe: expert 2 of blk.1.ffn_down_exps differs from its source");
        t = gguf_find_tensor(&f, "blk.0.ffn_gate_inp_shexp.weight");
        s = st_find(&m, "model.layers.0.mlp.shared_expert_gate.weight");
        CHECK(t && s && !memcmp(t->data, s->data, s->nbytes), "qwen2_moe: shared expert gate");
    }
    st_close(&m);
    gguf_close(&f);
}

static void test_gpt_archs(void)
{
    gguf_file f;
    static const want_t sc[] = {
        {"token_embd.weight", 64, 1000, 1, F16}, {"position_embd.weight", 64, 256, 1, F32},
        {"blk.0.attn_qkv.weight", 64, 96, 1, F16}, {"blk.0.attn_qkv.bias", 96, 1, 1, F32},
        {"blk.1.attn_output.weight", 64, 64, 1, F16}, {"blk.0.ffn_up.weight", 64, 256, 1, F16},
        {"blk.0.ffn_down.weight", 256, 64, 1, F16}, {"blk.0.attn_norm.bias", 64, 1, 1, F32},
        {"output_norm.bias", 64, 1, 1, F32}, {0}};
    if (open_converted("gpt_bigcode", "f16", &f)) {
        expect_tensors(&f, "gpt_bigcode", sc);
        CHECK(!gguf_find_tensor(&f, "output.weight"), "gpt_bigcode: tied, so no output.weight");
        expect_str(&f, "gpt_bigcode", "general.architecture", "starcoder");
        expect_u32(&f, "gpt_bigcode", "starcoder.attention.head_count_kv", 1);
        expect_u32(&f, "gpt_bigcode", "starcoder.feed_forward_length", 256);
        gguf_close(&f);
    }
    static const want_t phi[] = {
        {"output.weight", 64, 1000, 1, F16}, {"output.bias", 1000, 1, 1, F32},
        {"blk.0.attn_q.weight", 64, 64, 1, F16}, {"blk.0.attn_k.bias", 64, 1, 1, F32},
        {"blk.1.attn_output.weight", 64, 64, 1, F16}, {"blk.0.ffn_up.weight", 64, 128, 1, F16},
        {"blk.0.ffn_down.bias", 64, 1, 1, F32}, {"blk.0.attn_norm.bias", 64, 1, 1, F32},
        {"output_norm.weight", 64, 1, 1, F32}, {0}};
    if (open_converted("phi", "f16", &f)) {
        expect_tensors(&f, "phi", phi);
        expect_str(&f, "phi", "general.architecture", "phi2");
        expect_u32(&f, "phi", "phi2.rope.dimension_count", 8);
        expect_u32(&f, "phi", "phi2.feed_forward_length", 128);
        gguf_close(&f);
    }
    static const want_t sc2[] = {
        {"blk.0.attn_q.bias", 64, 1, 1, F32}, {"blk.0.attn_output.bias", 64, 1, 1, F32},
        {"blk.0.ffn_up.weight", 64, 128, 1, F16}, {"blk.1.ffn_up.bias", 128, 1, 1, F32},
        {"blk.0.ffn_norm.bias", 64, 1, 1, F32}, {"output_norm.bias", 64, 1, 1, F32}, {0}};
    if (open_converted("starcoder2", "f16", &f)) {
        expect_tensors(&f, "starcoder2", sc2);
        expect_str(&f, "starcoder2", "general.architecture", "starcoder2");
        CHECK(gguf_find(&f, "starcoder2.attention.layer_norm_epsilon") != NULL,
              "starcoder2: layer_norm_epsilon");
        gguf_close(&f);
    }
    printf("gpt_bigcode, phi, starcoder2: llama.cpp's tensor names, shapes and types\n");
}

/* ------------------------------------------------------------ corrupted copies */

static void mkdir_p(const char *p)
{
    CHECK(mkdir(p, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", p, strerror(errno));
}

/* dir gets links to every file of the llama fixture except those named in
 * skip (space-separated). */
static void link_fixture(const char *dir, const char *arch, const char *skip)
{
    static const char *files[] = {"config.json", "model.safetensors", "tokenizer.model",
                                  "tokenizer_config.json"};
    char src[1400], dst[1400];
    mkdir_p(dir);
    for (size_t i = 0; i < 4; i++) {
        if (skip && strstr(skip, files[i]))
            continue;
        snprintf(src, sizeof src, "%s/%s", hf(arch), files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        if (exists(src))
            CHECK(symlink(src, dst) == 0 || errno == EEXIST, "symlink %s", dst);
    }
}

/* Writes dst = src with the first `from` in its header replaced by `to`. */
static void patch_header(const char *src, const char *dst, const char *from, const char *to)
{
    size_t n, hl = 0;
    uint8_t *b = tl_slurp(src, &n);
    for (int i = 7; b && i >= 0; i--)
        hl = hl << 8 | b[i];
    char *hit = b ? memmem(b + 8, hl, from, strlen(from)) : NULL;
    CHECK(hit, "patch_header: '%s' not in %s", from, src);
    if (!hit) {
        free(b);
        return;
    }
    size_t nl = hl - strlen(from) + strlen(to), pre = (size_t)(hit - (char *)b - 8);
    uint8_t *o = malloc(n - hl + nl);
    for (int i = 0; i < 8; i++)
        o[i] = (uint8_t)(nl >> (8 * i));
    memcpy(o + 8, b + 8, pre);
    memcpy(o + 8 + pre, to, strlen(to));
    memcpy(o + 8 + pre + strlen(to), hit + strlen(from), hl - pre - strlen(from));
    memcpy(o + 8 + nl, b + 8 + hl, n - 8 - hl);
    spit(dst, o, n - hl + nl);
    free(o);
    free(b);
}

/* Converting dir must fail with code and a message containing each of the
 * |-separated parts of want, leaving no output (and no temporary) behind. */
static void expect_failure(const char *case_name, const char *dir, cm_status code, const char *want)
{
    char out[1024], tmpf[1100], part[256];
    cm_err e;
    snprintf(out, sizeof out, "%s/bad.gguf", tmp);
    snprintf(tmpf, sizeof tmpf, "%s.tmp", out);
    cm_status s = convert(dir, out, CM_TYPE_F16, NULL, &e);
    int has_all = 1;
    for (const char *p = want; *p;) {
        size_t l = strcspn(p, "|");
        snprintf(part, sizeof part, "%.*s", (int)l, p);
        has_all &= strstr(e.msg, part) != NULL;
        p += l + (p[l] == '|');
    }
    CHECK(s == code && has_all && !strchr(e.msg, '\n'), "%s: status %d (want %d), message '%s'",
          case_name, s, code, e.msg);
    CHECK(!exists(out) && !exists(tmpf), "%s: left an output file", case_name);
    printf("  bad input, %-22s -> %s\n", case_name, e.msg);
}

static void test_bad_inputs(void)
{
    char dir[1100], src[1400], *cfg;
    size_t n;
    printf("bad inputs:\n");
    expect_failure("missing folder", "/nonexistent/model", CM_E_IO, "not a directory");

    snprintf(dir, sizeof dir, "%s/noconfig", tmp);
    link_fixture(dir, "llama", "config.json");
    expect_failure("no config.json", dir, CM_E_IO, "no config.json");

    snprintf(dir, sizeof dir, "%s/foo", tmp);
    link_fixture(dir, "llama", "config.json");
    const char *foo = "{\"architectures\": [\"FooForCausalLM\"], \"model_type\": \"foo\"}";
    spit(tpath("foo/config.json"), foo, strlen(foo));
    expect_failure("unsupported arch", dir, CM_E_UNSUPPORTED, "FooForCausalLM");

    snprintf(dir, sizeof dir, "%s/shape", tmp);
    link_fixture(dir, "llama", "config.json");
    snprintf(src, sizeof src, "%s/config.json", hf("llama"));
    cfg = tl_slurp(src, &n);
    char *at = cfg ? strstr(cfg, "\"intermediate_size\": 128") : NULL;
    CHECK(at, "llama config.json has no intermediate_size 128");
    if (at) {
        memcpy(at, "\"intermediate_size\":  96", 24);
        spit(tpath("shape/config.json"), cfg, n);
        expect_failure("shape vs config", dir, CM_E_FORMAT,
                       "model.layers.0.mlp.down_proj.weight|[64, 128]|[64, 96]");
    }
    free(cfg);

    snprintf(src, sizeof src, "%s/model.safetensors", hf("llama"));
    static const struct {
        const char *name, *from, *to, *want;
        cm_status code;
    } patches[] = {
        {"offsets out of range", "\"data_offsets\":[0,256000]", "\"data_offsets\":[0,2560000]",
         "lm_head.weight|outside the data section", CM_E_FORMAT},
        {"unknown dtype", "\"dtype\":\"F32\"", "\"dtype\":\"F31\"", "unknown dtype 'F31'",
         CM_E_FORMAT},
        {"integer weights", "\"dtype\":\"F32\"", "\"dtype\":\"I32\"", "lm_head.weight|I32",
         CM_E_UNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof patches / sizeof patches[0]; i++) {
        snprintf(dir, sizeof dir, "%s/patch%zu", tmp, i);
        link_fixture(dir, "llama", "model.safetensors");
        char dst[1200];
        snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
        patch_header(src, dst, patches[i].from, patches[i].to);
        expect_failure(patches[i].name, dir, patches[i].code, patches[i].want);
    }

    snprintf(dir, sizeof dir, "%s/trunc", tmp);
    link_fixture(dir, "llama", "model.safetensors");
    spit(tpath("trunc/model.safetensors"), "\x10\x00\x00\x00\x00", 5);
    expect_failure("truncated header", dir, CM_E_FORMAT, "model.safetensors|truncated");

    snprintf(dir, sizeof dir, "%s/pasteof", tmp);
    link_fixture(dir, "llama", "model.safetensors");
    spit(tpath("pasteof/model.safetensors"), "\x00\x00\x10\x00\x00\x00\x00\x00{\"a\":1}", 15);
    expect_failure("header past EOF", dir, CM_E_FORMAT, "runs past the end");
}

/* ------------------------------------------------------------ shards */

/* Writes the llama checkpoint as two shards plus an index. */
static int write_shards(const char *dir)
{
    st_model m;
    cm_err e;
    if (st_open_dir(hf("llama"), &m, &e)) {
        CHECK(0, "%s", e.msg);
        return 0;
    }
    static const char *names[2] = {"model-00001-of-00002.safetensors",
                                   "model-00002-of-00002.safetensors"};
    size_t split = m.n_tensors / 2, idx_len = 0;
    char *idx = malloc(1 << 16);
    idx_len += (size_t)sprintf(idx, "{\"metadata\": {}, \"weight_map\": {");
    for (int s = 0; s < 2; s++) {
        size_t lo = s ? split : 0, hi = s ? m.n_tensors : split, hl = 0, off = 0;
        char *h = malloc(1 << 16);
        hl += (size_t)sprintf(h + hl, "{");
        for (size_t i = lo; i < hi; i++) {
            const st_tensor *t = &m.tensors[i];
            hl += (size_t)sprintf(h + hl, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld", i > lo ? "," : "",
                                  t->name, (long long)t->shape[0]);
            if (t->n_dims == 2)
                hl += (size_t)sprintf(h + hl, ",%lld", (long long)t->shape[1]);
            hl += (size_t)sprintf(h + hl, "],\"data_offsets\":[%zu,%zu]}", off, off + (size_t)t->nbytes);
            off += (size_t)t->nbytes;
            idx_len += (size_t)sprintf(idx + idx_len, "%s\"%s\": \"%s\"", i ? ", " : "", t->name,
                                       names[s]);
        }
        hl += (size_t)sprintf(h + hl, "}");
        uint8_t *b = malloc(8 + hl + off);
        for (int k = 0; k < 8; k++)
            b[k] = (uint8_t)((uint64_t)hl >> (8 * k));
        memcpy(b + 8, h, hl);
        for (size_t i = lo, o = 0; i < hi; o += (size_t)m.tensors[i].nbytes, i++)
            memcpy(b + 8 + hl + o, m.tensors[i].data, (size_t)m.tensors[i].nbytes);
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", dir, names[s]);
        spit(path, b, 8 + hl + off);
        free(b);
        free(h);
    }
    idx_len += (size_t)sprintf(idx + idx_len, "}}");
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    spit(path, idx, idx_len);
    free(idx);
    st_close(&m);
    return 1;
}

static void test_shards(void)
{
    char dir[1100], out[1100], one[1100];
    cm_err e;
    snprintf(dir, sizeof dir, "%s/shards/llama", tmp);
    mkdir_p(tpath("shards"));
    link_fixture(dir, "llama", "model.safetensors");
    if (!write_shards(dir))
        return;
    snprintf(out, sizeof out, "%s/sharded.gguf", tmp);
    snprintf(one, sizeof one, "%s/llama-f32.gguf", tmp);
    CHECK(convert(dir, out, CM_TYPE_F32, NULL, &e) == CM_OK, "shards: %s", e.msg);
    size_t na, nb;
    char *a = tl_slurp(out, &na), *b = tl_slurp(one, &nb);
    CHECK(a && b && na == nb && !memcmp(a, b, na), "shards: the GGUF differs from the one-file "
          "conversion");
    printf("two shards + index: the same GGUF, byte for byte, as one model.safetensors\n");
    free(a);
    free(b);
    char shard[1200];
    snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", dir);
    unlink(shard);
    expect_failure("missing shard", dir, CM_E_IO, "model-00002-of-00002.safetensors|missing");
}

/* A one-layer llama with 40-wide rows (not whole q8_0 blocks) and 64-wide
 * FFN rows: q8_0 must fall back to f16 exactly where blocks do not fit. */
static void test_fallback(void)
{
    static const struct {
        const char *name;
        int64_t d0, d1;
    } ts[] = {{"model.embed_tokens.weight", 50, 40}, {"model.norm.weight", 40, 0},
              {"model.layers.0.input_layernorm.weight", 40, 0},
              {"model.layers.0.self_attn.q_proj.weight", 40, 40},
              {"model.layers.0.self_attn.k_proj.weight", 40, 40},
              {"model.layers.0.self_attn.v_proj.weight", 40, 40},
              {"model.layers.0.self_attn.o_proj.weight", 40, 40},
              {"model.layers.0.post_attention_layernorm.weight", 40, 0},
              {"model.layers.0.mlp.gate_proj.weight", 64, 40},
              {"model.layers.0.mlp.up_proj.weight", 64, 40},
              {"model.layers.0.mlp.down_proj.weight", 40, 64}};
    char h[4096], dir[1100];
    size_t hl = 0, off = 0, n = sizeof ts / sizeof ts[0];
    hl += (size_t)sprintf(h, "{");
    for (size_t i = 0; i < n; i++) {
        size_t bytes = (size_t)(ts[i].d0 * (ts[i].d1 ? ts[i].d1 : 1)) * 4;
        hl += (size_t)sprintf(h + hl, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld%s%.0lld],"
                              "\"data_offsets\":[%zu,%zu]}", i ? "," : "", ts[i].name,
                              (long long)ts[i].d0, ts[i].d1 ? "," : "", (long long)ts[i].d1, off,
                              off + bytes);
        off += bytes;
    }
    hl += (size_t)sprintf(h + hl, "}");
    size_t total;
    uint8_t *b = st_buf(h, off, &total);
    for (size_t i = 0; i < off / 4; i++) {
        float v = (float)((int)(i * 7919 % 200) - 100) / 300.0f;
        memcpy(b + 8 + hl + 4 * i, &v, 4);
    }
    snprintf(dir, sizeof dir, "%s/narrow", tmp);
    mkdir_p(dir);
    spit(tpath("narrow/model.safetensors"), b, total);
    free(b);
    const char *cfg = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":40,"
                      "\"intermediate_size\":64,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
                      "\"vocab_size\":50,\"rms_norm_eps\":1e-5,\"max_position_embeddings\":64}";
    spit(tpath("narrow/config.json"), cfg, strlen(cfg));
    cm_convert_result r;
    cm_err e;
    gguf_file f;
    CHECK(convert(dir, tpath("narrow.gguf"), CM_TYPE_Q8_0, &r, &e) == CM_OK, "narrow: %s", e.msg);
    CHECK(r.n_fallback == 7, "narrow: %d fallbacks, want 7", r.n_fallback);
    if (gguf_open(tpath("narrow.gguf"), &f, &e) == CM_OK) {
        static const want_t w[] = {
            {"token_embd.weight", 40, 50, 1, F16}, {"blk.0.attn_q.weight", 40, 40, 1, F16},
            {"blk.0.ffn_up.weight", 40, 64, 1, F16}, {"blk.0.ffn_down.weight", 64, 40, 1, CM_TYPE_Q8_0},
            {"blk.0.attn_norm.weight", 40, 1, 1, F32}, {0}};
        expect_tensors(&f, "narrow", w);
        gguf_close(&f);
    }
    printf("rows that are not whole q8_0 blocks fall back to f16 (%d tensors)\n", r.n_fallback);
}

/* ------------------------------------------------------------ tokenizers */

static void test_no_tokenizer(void)
{
    gguf_file f;
    cm_tokenizer *tok = NULL;
    cm_err e;
    cm_convert_result r;
    CHECK(convert(hf("qwen2"), tpath("notok.gguf"), CM_TYPE_F32, &r, &e) == CM_OK && !r.has_tokenizer,
          "qwen2 without tokenizer files: %s", e.msg);
    if (gguf_open(tpath("notok.gguf"), &f, &e) == CM_OK) {
        CHECK(cm_tokenizer_load(&f, &tok, &e) == CM_E_RANGE, "no tokenizer: load says %s", e.msg);
        gguf_close(&f);
    }
    printf("folder without tokenizer files: converts, GGUF has no tokenizer\n");
}

static void json_escape(char *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            *o++ = '\\';
        *o++ = *s;
    }
    *o = 0;
}

/* GPT-2's byte -> printable code point map. */
static unsigned byte_cp(unsigned b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
        return b;
    unsigned n = 0;
    for (unsigned k = 0; k < b; k++)
        n += !((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || (k >= 174 && k <= 255));
    return 256 + n;
}

static size_t utf8(char *o, unsigned cp)
{
    if (cp < 0x80)
        return (size_t)(o[0] = (char)cp, 1);
    o[0] = (char)(0xC0 | cp >> 6);
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static char *bpe_tokenizer_json(void)
{
    static const char re[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                             "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    char *j = malloc(1 << 16), esc[256], tokb[8];
    size_t k = (size_t)sprintf(j, "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":999,\"content\":"
                                  "\"<|endoftext|>\",\"special\":true},{\"id\":998,\"content\":"
                                  "\"\\u2581hello\",\"special\":false}],");
    json_escape(esc, re);
    k += (size_t)sprintf(j + k, "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":"
                                "\"Split\",\"pattern\":{\"Regex\":\"%s\"},\"behavior\":\"Isolated\"},"
                                "{\"type\":\"ByteLevel\",\"use_regex\":false}]},", esc);
    k += (size_t)sprintf(j + k, "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                                "\"vocab\":{");
    for (unsigned b = 0; b < 256; b++) {
        tokb[utf8(tokb, byte_cp(b))] = 0;
        json_escape(esc, tokb);
        k += (size_t)sprintf(j + k, "\"%s\":%u,", esc, b);
    }
    k += (size_t)sprintf(j + k, "\"he\":256,\"\xc4\xa0t\":257},\"merges\":[[\"h\",\"e\"],"
                                "[\"\xc4\xa0\",\"t\"]]}}");
    return j;
}

static void test_bpe_tokenizer(void)
{
    char dir[1100];
    gguf_file f;
    cm_err e;
    snprintf(dir, sizeof dir, "%s/bpe", tmp);
    link_fixture(dir, "qwen2", "tokenizer");
    char *tj = bpe_tokenizer_json();
    spit(tpath("bpe/tokenizer.json"), tj, strlen(tj));
    free(tj);
    const char *tc = "{\"eos_token\": \"<|endoftext|>\", \"bos_token\": null, \"add_bos_token\": "
                     "false, \"chat_template\": \"{{ messages }}\"}";
    spit(tpath("bpe/tokenizer_config.json"), tc, strlen(tc));
    CHECK(convert(dir, tpath("bpe.gguf"), CM_TYPE_F32, NULL, &e) == CM_OK, "bpe: %s", e.msg);
    if (gguf_open(tpath("bpe.gguf"), &f, &e)) {
        CHECK(0, "bpe: %s", e.msg);
        return;
    }
    expect_str(&f, "bpe", "tokenizer.ggml.model", "gpt2");
    expect_str(&f, "bpe", "tokenizer.ggml.pre", "qwen2");
    expect_str(&f, "bpe", "tokenizer.chat_template", "{{ messages }}");
    expect_u32(&f, "bpe", "tokenizer.ggml.eos_token_id", 999); /* tokenizer_config beats config */
    expect_u32(&f, "bpe", "tokenizer.ggml.bos_token_id", 1);   /* from config.json */
    gguf_str *toks = NULL, *merges = NULL;
    int32_t *types = NULL;
    uint64_t nt = 0, nm = 0, ny = 0;
    gguf_get_str_array(&f, "tokenizer.ggml.tokens", &toks, &nt, &e);
    gguf_get_str_array(&f, "tokenizer.ggml.merges", &merges, &nm, &e);
    gguf_get_i32_array(&f, "tokenizer.ggml.token_type", &types, &ny, &e);
    CHECK(nt == 1000 && ny == 1000 && nm == 2, "bpe: %llu tokens, %llu types, %llu merges",
          (unsigned long long)nt, (unsigned long long)ny, (unsigned long long)nm);
    if (nt == 1000 && ny == 1000 && nm == 2) {
        CHECK(gguf_str_eq(toks[256], "he") && gguf_str_eq(toks[500], "[PAD500]") && types[500] == 5,
              "bpe: tokens / padding");
        CHECK(gguf_str_eq(toks[999], "<|endoftext|>") && types[999] == 3, "bpe: control token");
        CHECK(gguf_str_eq(toks[998], " hello") && types[998] == 4, "bpe: user-defined token");
        CHECK(types[65] == 1, "bpe: normal token type %d", types[65]);
        CHECK(gguf_str_eq(merges[0], "h e") && gguf_str_eq(merges[1], "\xc4\xa0 t"), "bpe: merges");
    }
    cm_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (cm_tokenizer_load(&f, &tok, &e) == CM_OK &&
        cm_tokenize(tok, "he the", 6, 0, 0, &ids, &n, &e) == CM_OK)
        CHECK(n == 3 && ids[0] == 256 && ids[1] == 257 && ids[2] == 256,
              "bpe: 'he the' -> %zu ids [%d %d ...]", n, n ? ids[0] : -1, n > 1 ? ids[1] : -1);
    else
        CHECK(0, "bpe tokenizer: %s", e.msg);
    printf("tokenizer.json (byte-level BPE): gpt2/qwen2 metadata, merges, specials; tokenizes\n");
    free(ids);
    if (tok)
        cm_tokenizer_free(tok);
    free(toks);
    free(merges);
    free(types);
    gguf_close(&f);
}

/* ------------------------------------------------------------ CLI */

static void test_cli(void)
{
    char out[1100];
    snprintf(out, sizeof out, "%s/cli.gguf", tmp);
    char *a1[] = {"convert", NULL};
    char *a2[] = {"convert", (char *)hf("llama"), "-o", out, "--type", "q7_x", NULL};
    char *a3[] = {"convert", "/nonexistent", "-o", out, NULL};
    char *a4[] = {"convert", (char *)hf("llama"), "-o", out, "--type", "q8_0", NULL};
    printf("CLI (the error lines below are expected):\n");
    fflush(stdout);
    CHECK(cli_convert(1, a1) == 2, "convert without arguments must exit 2");
    CHECK(cli_convert(6, a2) == 2, "unknown --type must exit 2");
    CHECK(cli_convert(4, a3) == 1 && !exists(out), "missing folder must exit 1, no output");
    CHECK(cli_convert(6, a4) == 0 && exists(out), "convert --type q8_0 must succeed");
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

int main(void)
{
    char msg[256];
    if (!(shared = tl_shared("fixtures/hf/llama/config.json")))
        tl_skip("../shared fixtures not found (set CM_SHARED)");
    if (cm_cpu_init(msg, sizeof msg)) {
        printf("cpu init: %s\n", msg);
        return 1;
    }
    const char *td = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%s/cm_convert_XXXXXX", td && *td ? td : "/tmp");
    if (!mkdtemp(tmp)) {
        printf("mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    test_json();
    test_safetensors();
    static const char *types[] = {"f32", "f16", "q8_0", "q4_0"};
    for (int a = 0; a < 2; a++)
        for (int t = 0; t < 4; t++)
            test_vs_llamacpp(a ? "mixtral" : "llama", types[t]);
    static const char *archs[] = {"llama", "qwen2", "qwen3", "mixtral", "qwen2_moe",
                                  "qwen3_moe", "gpt_bigcode", "phi", "starcoder2"};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        test_logits(archs[i]);
    test_moe_archs();
    test_expert_data();
    test_gpt_archs();
    test_shards();
    test_fallback();
    test_no_tokenizer();
    test_bpe_tokenizer();
    test_bad_inputs();
    test_cli();
    nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return tl_finish("test_convert");
}
