/* gen_model.c - writes random-weight GGUF models for benchmarks.
 *
 * Speed does not depend on weight values, so a model with real shapes and
 * random weights measures what a real one would; no weights need to be
 * downloaded.  Tensors are generated and quantized one at a time inside the
 * GGUF writer's fill callback, so peak memory is about one tensor. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "quant/quant.h"

static const char HELP[] =
    "usage: gen-model -o OUT.gguf [--preset NAME] [--type TYPE] [options]\n"
    "\n"
    "Writes a llama-architecture GGUF model with random weights N(0, 0.02)\n"
    "(norm weights 1.0) in the shape of a real model, for benchmarks.\n"
    "\n"
    "  -o, --output FILE     the model to write (appears only when complete)\n"
    "      --preset NAME     smol135m (default), qwen05b or moe8x\n"
    "      --type TYPE       f32, f16 (default), q8_0, q4_0 or q4_k_m (llama.cpp's\n"
    "                        Q4_K_M mix: Q4_K, with Q6_K for half the attn_v and\n"
    "                        ffn_down layers and the output)\n"
    "      --vocab FILE      copy the tokenizer from this GGUF (so `codemoe run`\n"
    "                        works); the vocabulary size follows it\n"
    "      --seed N          random seed (default 1234); same seed, same file\n"
    "  dimensions (override the preset):\n"
    "      --n-embd N  --n-layer N  --n-head N  --n-head-kv N  --n-ff N\n"
    "      --n-vocab N  --n-ctx N  --n-expert N  --n-expert-used N\n"
    "\n"
    "presets (49152-token vocabulary):\n"
    "  smol135m  n_embd 576, 30 layers, 9 heads, 3 KV heads, ffn 1536\n"
    "  qwen05b   n_embd 896, 24 layers, 14 heads, 2 KV heads, ffn 4864\n"
    "  moe8x     n_embd 1024, 16 layers, 16 heads, 4 KV heads, 8 experts of ffn\n"
    "            2816, 2 used per token\n";

typedef struct {
    const char *name;
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx, n_expert, n_expert_used;
} gm_dims;

static const gm_dims PRESETS[] = {
    {"smol135m", 576, 30, 9, 3, 1536, 49152, 2048, 0, 0},
    {"qwen05b", 896, 24, 14, 2, 4864, 49152, 4096, 0, 0},
    {"moe8x", 1024, 16, 16, 4, 2816, 49152, 4096, 8, 2},
};

/* llama.cpp's file types (general.file_type) for the mixes we write. */
typedef struct {
    const char *name;
    uint32_t base;      /* type of most matrices */
    uint32_t file_type; /* llama_ftype */
} gm_ftype;

static const gm_ftype FTYPES[] = {
    {"f32", CM_TYPE_F32, 0},  {"f16", CM_TYPE_F16, 1},   {"q8_0", CM_TYPE_Q8_0, 7},
    {"q4_0", CM_TYPE_Q4_0, 2}, {"q4_k_m", CM_TYPE_Q4_K, 15},
};

/* What a tensor is, which decides its type and its initial values. */
typedef enum { R_EMBD, R_OUTPUT, R_NORM, R_ROUTER, R_Q, R_K, R_V, R_O, R_GATE, R_UP, R_DOWN } gm_role;

typedef struct {
    char name[64];
    uint32_t type;
    uint32_t n_dims;
    int64_t ne[3];
    int ones;      /* norm weights start at 1.0 */
    uint64_t seed; /* per tensor, so a tensor's values do not depend on order */
} gm_tensor;

typedef struct {
    gm_dims d;
    const gm_ftype *ft;
    const char *out, *vocab;
    uint64_t seed;
} gm_opts;

/* ------------------------------------------------------------ types */

/* llama.cpp's Q4_K_M gives these layers more bits: the first and last
 * eighth, and every third in between. */
static int use_more_bits(int il, int n)
{
    return il < n / 8 || il >= 7 * n / 8 || (il - n / 8) % 3 == 2;
}

/* Rows whose length is not a whole number of blocks take the type
 * llama-quantize falls back to; F16 when even that does not fit. */
static uint32_t fit_row(uint32_t type, int64_t ne0)
{
    if (ne0 % cm_type_get(type)->block_elems == 0)
        return type;
    uint32_t fb = type == CM_TYPE_Q4_K ? CM_TYPE_Q5_0
                : type == CM_TYPE_Q5_K ? CM_TYPE_Q5_1
                : type == CM_TYPE_Q6_K ? CM_TYPE_Q8_0
                                       : CM_TYPE_F16;
    if (ne0 % cm_type_get(fb)->block_elems == 0)
        return fb;
    return ne0 % 2 == 0 ? CM_TYPE_F16 : CM_TYPE_F32;
}

/* Mimics llama-quantize's choice for each tensor of a llama model. */
static uint32_t choose_type(const gm_opts *o, gm_role role, int il, int64_t ne0)
{
    uint32_t base = o->ft->base, t = base;
    int kq = base == CM_TYPE_Q4_K, moe8 = o->d.n_expert == 8;
    if (role == R_NORM || role == R_ROUTER)
        return CM_TYPE_F32; /* never quantized: tiny, and precision matters */
    if (base == CM_TYPE_F32 || base == CM_TYPE_F16)
        return fit_row(base, ne0);
    if (role == R_OUTPUT && base != CM_TYPE_Q8_0)
        t = ne0 % 256 ? CM_TYPE_Q8_0 : CM_TYPE_Q6_K;
    else if (kq && role == R_V)
        t = moe8 ? CM_TYPE_Q8_0 : use_more_bits(il, o->d.n_layer) ? CM_TYPE_Q6_K : t;
    else if (kq && role == R_K && moe8)
        t = CM_TYPE_Q8_0;
    else if (kq && role == R_O && moe8)
        t = CM_TYPE_Q5_K;
    else if (kq && role == R_DOWN && use_more_bits(il, o->d.n_layer))
        t = CM_TYPE_Q6_K;
    return fit_row(t, ne0);
}

/* ------------------------------------------------------------ plan */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t name_seed(uint64_t seed, const char *name)
{
    uint64_t h = mix64(seed);
    for (const char *p = name; *p; p++)
        h = mix64(h ^ (uint8_t)*p);
    return h;
}

static void plan_one(gm_tensor *t, const gm_opts *o, const char *name, gm_role role, int il,
                     int64_t ne0, int64_t ne1, int64_t ne2)
{
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->n_dims = ne2 > 1 ? 3 : ne1 > 1 ? 2 : 1;
    t->ones = role == R_NORM;
    t->type = choose_type(o, role, il, ne0);
    t->seed = name_seed(o->seed, name);
}

/* One layer's tensors in llama.cpp's order; returns how many. */
static int plan_layer(gm_tensor *t, const gm_opts *o, int il)
{
    const gm_dims *d = &o->d;
    int64_t E = d->n_embd, hd = d->n_embd / d->n_head, KV = hd * d->n_head_kv;
    int64_t F = d->n_ff, X = d->n_expert > 0 ? d->n_expert : 1;
    const char *sfx = d->n_expert > 0 ? "_exps" : "";
    char nm[64];
    int n = 0;
#define ADD(suffix, role, a, b, c)                                  \
    (snprintf(nm, sizeof nm, "blk.%d.%s.weight", il, suffix), \
     plan_one(&t[n++], o, nm, role, il, a, b, c))
    ADD("attn_norm", R_NORM, E, 1, 1);
    ADD("attn_q", R_Q, E, E, 1);
    ADD("attn_k", R_K, E, KV, 1);
    ADD("attn_v", R_V, E, KV, 1);
    ADD("attn_output", R_O, E, E, 1);
    ADD("ffn_norm", R_NORM, E, 1, 1);
    if (d->n_expert > 0)
        ADD("ffn_gate_inp", R_ROUTER, E, X, 1);
    char g[32], u[32], dn[32];
    snprintf(g, sizeof g, "ffn_gate%s", sfx);
    snprintf(u, sizeof u, "ffn_up%s", sfx);
    snprintf(dn, sizeof dn, "ffn_down%s", sfx);
    ADD(g, R_GATE, E, F, X);
    ADD(u, R_UP, E, F, X);
    ADD(dn, R_DOWN, F, E, X);
#undef ADD
    return n;
}

/* Every tensor of the model; *out is malloc'ed, the caller frees. */
static cm_status plan_model(const gm_opts *o, gm_tensor **out, int *n_out, cm_err *err)
{
    const gm_dims *d = &o->d;
    gm_tensor *t = calloc((size_t)d->n_layer * 10 + 3, sizeof *t);
    if (!t)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    int n = 0;
    plan_one(&t[n++], o, "token_embd.weight", R_EMBD, 0, d->n_embd, d->n_vocab, 1);
    for (int il = 0; il < d->n_layer; il++)
        n += plan_layer(&t[n], o, il);
    plan_one(&t[n++], o, "output_norm.weight", R_NORM, 0, d->n_embd, 1, 1);
    plan_one(&t[n++], o, "output.weight", R_OUTPUT, 0, d->n_embd, d->n_vocab, 1);
    *out = t;
    *n_out = n;
    return CM_OK;
}

/* ------------------------------------------------------------ values */

static double uniform01(uint64_t *s)
{
    *s = mix64(*s);
    return ((*s >> 11) + 0.5) * (1.0 / 9007199254740992.0); /* in (0, 1) */
}

/* n values N(0, 0.02) by Box-Muller; the row's own seed makes the result
 * independent of how rows are spread over threads. */
static void random_row(float *x, int64_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i += 2) {
        double r = 0.02 * sqrt(-2.0 * log(uniform01(&s))), a = 6.283185307179586 * uniform01(&s);
        x[i] = (float)(r * cos(a));
        if (i + 1 < n)
            x[i + 1] = (float)(r * sin(a));
    }
}

/* gguf_fill_fn: generates and quantizes the tensor row by row, in parallel. */
static cm_status fill_tensor(void *ctx, void *dst, uint64_t nbytes, cm_err *err)
{
    const gm_tensor *t = ctx;
    int64_t ne0 = t->ne[0], rows = t->ne[1] * t->ne[2];
    size_t rb = cm_row_bytes(t->type, ne0);
    if (rb == 0 || rb * (uint64_t)rows != nbytes)
        return cm_fail(err, CM_E_FORMAT, "%s: size mismatch", t->name);
    int bad = 0;
#pragma omp parallel reduction(| : bad)
    {
        float *x = malloc((size_t)ne0 * sizeof *x);
        bad |= !x;
#pragma omp for schedule(dynamic, 16)
        for (int64_t r = 0; r < rows; r++) {
            if (!x)
                continue;
            if (t->ones)
                for (int64_t i = 0; i < ne0; i++)
                    x[i] = 1.0f;
            else
                random_row(x, ne0, mix64(t->seed ^ (uint64_t)r * 0x9e3779b97f4a7c15ull));
            bad |= cm_quantize_row((enum cm_type)t->type, x, (char *)dst + (size_t)r * rb, ne0);
        }
        free(x);
    }
    if (bad)
        return cm_fail(err, CM_E_NOMEM, "%s: cannot generate the tensor", t->name);
    return CM_OK;
}
