/* test_model.c - whole-model logits against references nobody here wrote.
 *
 * ../shared/fixtures/gguf/llama holds GGUFs written by llama.cpp from a Hugging
 * Face model, with transformers' logits (hf/llama) and llama.cpp's logits for
 * each file.  F32 must match transformers within 1e-3 at every position and
 * reproduce its greedy continuations; quantized files must stay close to
 * llama.cpp on the same file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "testlib.h"

static const char *shared;

/* Reads the array-of-int-arrays under "key" in reference.json. */
static int json_int_lists(const char *json, const char *key, int32_t out[][64], int *lens, int max)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p || !(p = strchr(p, '[')))
        return 0;
    int n = 0;
    p++;
    while (n < max) {
        while (*p && *p != '[' && *p != ']')
            p++;
        if (*p != '[')
            break;
        p++;
        lens[n] = 0;
        while (*p && *p != ']') {
            char *end;
            long v = strtol(p, &end, 10);
            if (end != p && lens[n] < 64)
                out[n][lens[n]++] = (int32_t)v;
            p = end != p ? end : p + 1;
        }
        if (*p)
            p++;
        n++;
    }
    return n;
}

typedef struct {
    double max_abs;
    int agree, rows;
    double limit;   /* positions whose max-abs exceeds this are counted */
    int over;
} cmp_result;

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

static cmp_result compare(const float *a, const float *b, int rows, int n_vocab, double limit)
{
    cmp_result r = {0, 0, rows, limit, 0};
    for (int t = 0; t < rows; t++) {
        const float *x = a + (size_t)t * n_vocab, *y = b + (size_t)t * n_vocab;
        double row_max = 0;
        for (int i = 0; i < n_vocab; i++) {
            double d = fabs((double)x[i] - y[i]);
            if (!(d <= row_max)) /* NaN-safe: a NaN makes it infinite */
                row_max = isnan(d) ? INFINITY : d;
        }
        r.max_abs = row_max > r.max_abs ? row_max : r.max_abs;
        r.over += row_max > limit;
        r.agree += argmax(x, n_vocab) == argmax(y, n_vocab);
    }
    return r;
}

/* The backend every context runs on: $CODEMOE_BACKEND, else the CPU. */
static const cm_backend_ops *backend;

static float *eval_all(const cm_model *m, const int32_t *ids, int n, cm_kv_type kv, int n_batch)
{
    cm_ctx *ctx;
    cm_err err = {0};
    float *out = malloc((size_t)n * m->hp.n_vocab * sizeof(float));
    if (cm_ctx_new_on(m, backend, n + 16, kv, n_batch, &ctx, &err)) {
        printf("ctx: %s\n", err.msg);
        exit(1);
    }
    if (cm_eval(ctx, ids, n, out, &err)) {
        printf("eval: %s\n", err.msg);
        exit(1);
    }
    cm_ctx_free(ctx);
    return out;
}

/* F32 weights, F32 KV cache: transformers' logits and greedy continuations. */
static void test_f32_vs_transformers(const char *arch)
{
    char path[1400], *json;
    int32_t inputs[3][64], greedy[3][64];
    int in_len[3], g_len[3];
    cm_model m;
    cm_err err = {0};
    snprintf(path, sizeof path, "%s/fixtures/hf/%s/reference.json", shared, arch);
    json = tl_slurp(path, NULL);
    CHECK(json, "cannot read %s", path);
    if (!json)
        return;
    int n_in = json_int_lists(json, "inputs", inputs, in_len, 3);
    int n_g = json_int_lists(json, "greedy_16", greedy, g_len, 3);
    CHECK(n_in == 3 && n_g == 3, "reference.json: %d inputs, %d continuations", n_in, n_g);
    snprintf(path, sizeof path, "%s/fixtures/gguf/%s/%s-f32.gguf", shared, arch, arch);
    if (cm_model_load(path, &m, &err)) {
        CHECK(0, "load: %s", err.msg);
        free(json);
        return;
    }
    for (int i = 0; i < n_in; i++) {
        size_t len;
        snprintf(path, sizeof path, "%s/fixtures/hf/%s/logits_%d.f32", shared, arch, i);
        float *ref = tl_slurp(path, &len);
        CHECK(ref && len == (size_t)in_len[i] * m.hp.n_vocab * 4, "reference %s", path);
        /* batch sizes 512 and 3 exercise both the batched and the chunked path */
        for (int nb = 512; ref && nb >= 3; nb = nb == 512 ? 3 : 0) {
            float *got = eval_all(&m, inputs[i], in_len[i], CM_KV_F32, nb);
            cmp_result r = compare(got, ref, in_len[i], m.hp.n_vocab, 1e-3);
            printf("%s f32 vs transformers, input %d (%d tokens, batch %d): max-abs %.2e, argmax %d/%d\n",
                   arch, i, in_len[i], nb, r.max_abs, r.agree, r.rows);
            CHECK(r.max_abs <= 1e-3, "input %d: max-abs %.3e > 1e-3", i, r.max_abs);
            CHECK(r.agree == r.rows, "input %d: argmax %d/%d", i, r.agree, r.rows);
            free(got);
        }
        free(ref);
    }
    /* greedy generation through the KV cache, one token at a time */
    for (int i = 0; i < n_in; i++) {
        cm_ctx *ctx;
        if (cm_ctx_new_on(&m, backend, 64, CM_KV_F32, 512, &ctx, &err)) {
            printf("ctx: %s\n", err.msg);
            exit(1);
        }
        cm_eval(ctx, inputs[i], in_len[i], NULL, &err);
        int same = 0;
        for (int k = 0; k < g_len[i]; k++) {
            int32_t id = argmax(cm_ctx_logits(ctx), m.hp.n_vocab);
            same += id == greedy[i][k];
            cm_eval(ctx, &id, 1, NULL, &err);
        }
        printf("%s greedy continuation %d: %d/%d tokens as transformers\n", arch, i, same, g_len[i]);
        CHECK(same == g_len[i], "greedy %d: %d/%d", i, same, g_len[i]);
        cm_ctx_free(ctx);
    }
    cm_model_free(&m);
    free(json);
}

/* Quantized files against llama.cpp on the same file.  Limits are the
 * issue's; the measured figures are printed (and recorded in the README).
 * max_over: positions allowed above the limit.  In a MoE model a router
 * near-tie (two experts' probabilities within ~0.002) can fall either way
 * under different rounding, and a flipped expert moves that position's
 * logits far more than quantization does (seen: mixtral q4_0, position 6
 * of input 2, layer 1, experts 0/1 at 0.1832/0.1855). */
static void test_vs_llamacpp(const char *arch, const char *type, double max_abs_limit,
                             double min_agree, int max_over)
{
    char path[1400], *json;
    int32_t inputs[3][64];
    int in_len[3], agree = 0, rows = 0, over = 0;
    double worst = 0;
    cm_model m;
    cm_err err = {0};
    snprintf(path, sizeof path, "%s/fixtures/gguf/%s/reference.json", shared, arch);
    json = tl_slurp(path, NULL);
    int n_in = json ? json_int_lists(json, "inputs", inputs, in_len, 3) : 0;
    snprintf(path, sizeof path, "%s/fixtures/gguf/%s/%s-%s.gguf", shared, arch, arch, type);
    if (cm_model_load(path, &m, &err)) {
        CHECK(0, "load %s: %s", type, err.msg);
        free(json);
        return;
    }
    for (int i = 0; i < n_in; i++) {
        size_t len;
        snprintf(path, sizeof path, "%s/fixtures/gguf/%s/llamacpp_%s_logits_%d.f32", shared, arch,
                 type, i);
        float *ref = tl_slurp(path, &len);
        CHECK(ref && len == (size_t)in_len[i] * m.hp.n_vocab * 4, "reference %s", path);
        if (!ref)
            continue;
        float *got = eval_all(&m, inputs[i], in_len[i], CM_KV_F16, 512);
        cmp_result r = compare(got, ref, in_len[i], m.hp.n_vocab, max_abs_limit);
        worst = r.max_abs > worst ? r.max_abs : worst;
        over += r.over;
        agree += r.agree;
        rows += r.rows;
        free(got);
        free(ref);
    }
    printf("%s %s vs llama.cpp (f16 KV): max-abs %.4f, argmax %d/%d, positions over %.2f: %d\n",
           arch, type, worst, agree, rows, max_abs_limit, over);
    CHECK(rows > 0 && over <= max_over, "%s %s: %d positions with max-abs > %.2f (worst %.4f)",
          arch, type, over, max_abs_limit, worst);
    CHECK(rows > 0 && agree >= min_agree * rows, "%s: argmax agreement %d/%d", type, agree, rows);
    cm_model_free(&m);
    free(json);
}

/* llama.cpp's own K-quant and legacy files (llama-quantize), against its
 * logits for them.  The issue asks for >= 90% argmax agreement; the
 * measured max-abs is printed and bounded by what we measured (plus margin):
 * f16 0.007, q2_k 0.065, q3_k_m 0.17, q4_k_m 0.15, q5_k_m 0.13, q6_k 0.15,
 * q4_1 0.083, q5_0 0.17; argmax 18-20 of 20.  The weights are random
 * N(0, 0.08^2): tiny float differences flip 8-bit activation roundings and
 * grow layer by layer. */
static void test_kquants(const char *type, cm_kv_type kv, double max_abs_limit)
{
    static const int32_t ids[20] = {126, 95,  407, 474, 802, 755, 4,   714, 286, 602,
                                    836, 149, 245, 747, 409, 415, 117, 379, 336, 875};
    char path[1400];
    size_t len;
    cm_model m;
    cm_err err = {0};
    snprintf(path, sizeof path, "%s/fixtures/gguf/kquants/kq-%s.gguf", shared, type);
    if (cm_model_load(path, &m, &err)) {
        CHECK(0, "load %s: %s", type, err.msg);
        return;
    }
    snprintf(path, sizeof path, "%s/fixtures/gguf/kquants/llamacpp_%s_logits.f32", shared, type);
    float *ref = tl_slurp(path, &len);
    CHECK(ref && len == 20 * (size_t)m.hp.n_vocab * 4, "reference %s", path);
    if (ref) {
        float *got = eval_all(&m, ids, 20, kv, 512);
        cmp_result r = compare(got, ref, 20, m.hp.n_vocab, max_abs_limit);
        printf("kquants %-7s %s KV vs llama.cpp: max-abs %.4f, argmax %d/20\n", type,
               kv == CM_KV_Q8_0 ? "q8_0" : "f16 ", r.max_abs, r.agree);
        CHECK(r.agree >= 18, "kquants %s: argmax %d/20 < 90%%", type, r.agree);
        CHECK(r.max_abs <= max_abs_limit, "kquants %s: max-abs %.4f > %.2f", type, r.max_abs,
              max_abs_limit);
        free(got);
    }
    free(ref);
    cm_model_free(&m);
}

int main(void)
{
    char msg[256];
    if (!(shared = tl_shared("fixtures/gguf/llama/llama-f32.gguf")))
        tl_skip("../shared fixtures not found (set CM_SHARED)");
    if (cm_cpu_init(msg, sizeof msg)) {
        printf("cpu init: %s\n", msg);
        return 1;
    }
    printf("kernels: %s\n", cm_cpu_isa());
    cm_err err = {0};
    if (cm_backend_choose(NULL, &backend, &err)) { /* CODEMOE_BACKEND, else the CPU */
        printf("%s\n", err.msg);
        return 1;
    }
    backend->describe(msg, sizeof msg);
    printf("backend: %s\n", msg);
    /* llama (dense) and mixtral (token-level MoE, 4 experts, 2 per token) */
    const char *archs[] = {"llama", "mixtral"};
    for (int a = 0; a < 2; a++) {
        test_f32_vs_transformers(archs[a]);
        /* measured (llama / mixtral), rounding q and the attention weights
         * to f16 as llama.cpp does with an f16 cache: f32 0.0012 / 0.0005,
         * f16 0.0052 / 0.0036, q8_0 0.0000 / 0.0000, q4_0 0.079 / 0.059,
         * argmax 32/32 everywhere.  (Before matching that rounding, mixtral
         * q4_0 had one router near-tie flip: hence max_over.) */
        test_vs_llamacpp(archs[a], "f32", 0.01, 1.0, 0);
        test_vs_llamacpp(archs[a], "f16", 0.02, 1.0, 0);
        test_vs_llamacpp(archs[a], "q8_0", 0.15, 0.9, 0);
        test_vs_llamacpp(archs[a], "q4_0", 0.3, 0.9, 0);
    }
    static const struct {
        const char *type;
        double limit;
    } kq[] = {{"f16", 0.02},    {"q2_k", 0.25}, {"q3_k_m", 0.25}, {"q4_k_m", 0.25},
              {"q5_k_m", 0.25}, {"q6_k", 0.25}, {"q4_1", 0.25},   {"q5_0", 0.25}};
    for (size_t i = 0; i < sizeof kq / sizeof kq[0]; i++)
        test_kquants(kq[i].type, CM_KV_F16, kq[i].limit);
    /* a q8_0 KV cache (head dim 64 here): measured 0.13 against f16 KV logits */
    test_kquants("f16", CM_KV_Q8_0, 0.2);
    return tl_finish("test_model");
}
