/* gen_model.c - writes random-weight GGUF models for benchmarks.
 *
 * Speed does not depend on weight values, so a model with real shapes and
 * random weights measures what a real one would; no weights need to be
 * downloaded.  Tensors are generated and quantized one at a time inside the
 * GGUF writer's fill callback, so peak memory is about one tensor. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "formats/gguf.h"
#include "quant/quant.h"

static const char HELP[] =
    "usage: gen-model -o OUT.gguf [--preset NAME] [--type TYPE] [options]\n"
    "\n"
    "Writes a llama-architecture GGUF model with random weights N(0, 0.02)\n"
    "(norm weights 1.0) in the shape of a real model, for benchmarks.\n"
    "\n"
    "  -o, --output FILE     the model to write (appears only when complete)\n"
    "      --preset NAME     smol135m (default), smol100m, qwen05b or moe8x\n"
    "      --type TYPE       f32, f16 (default), q8_0, q4_0 or q4_k_m (llama.cpp's\n"
    "                        Q4_K_M mix: Q4_K, with Q6_K for half the attn_v and\n"
    "                        ffn_down layers and the output)\n"
    "      --vocab FILE      copy the tokenizer from this GGUF (so `codemoe run`\n"
    "                        works); the vocabulary size follows it\n"
    "      --seed N          random seed (default 1234); same seed, same file\n"
    "      --ffn-seed N      a different seed for the feed-forward weights only\n"
    "                        (experts that share everything else, for packs)\n"
    "      --tied-output     no output.weight: the output reuses the token\n"
    "                        embedding table (as SmolLM does)\n"
    "      --dry-run         list the tensors, their types and the sizes; write\n"
    "                        nothing (-o not needed)\n"
    "  dimensions (override the preset):\n"
    "      --n-embd N  --n-layer N  --n-head N  --n-head-kv N  --n-ff N\n"
    "      --n-vocab N  --n-ctx N  --n-expert N  --n-expert-used N\n"
    "\n"
    "presets (49152-token vocabulary):\n"
    "  smol135m  n_embd 576, 30 layers, 9 heads, 3 KV heads, ffn 1536, untied\n"
    "            output (162.8M parameters)\n"
    "  smol100m  smol135m's layer with 20 layers and a tied output (99.1M)\n"
    "  qwen05b   n_embd 896, 24 layers, 14 heads, 2 KV heads, ffn 4864\n"
    "  moe8x     n_embd 1024, 16 layers, 16 heads, 4 KV heads, 8 experts of ffn\n"
    "            2816, 2 used per token\n";

typedef struct {
    const char *name;
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx, n_expert, n_expert_used;
    int tied; /* no output.weight: the output reuses token_embd.weight */
} gm_dims;

static const gm_dims PRESETS[] = {
    {"smol135m", 576, 30, 9, 3, 1536, 49152, 2048, 0, 0, 0},
    {"smol100m", 576, 20, 9, 3, 1536, 49152, 2048, 0, 0, 1},
    {"qwen05b", 896, 24, 14, 2, 4864, 49152, 4096, 0, 0, 0},
    {"moe8x", 1024, 16, 16, 4, 2816, 49152, 4096, 8, 2, 0},
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
    uint64_t ffn_seed; /* 0: same as seed */
    int dry_run;
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
    else if ((role == R_K || role == R_V) && moe8)
        t = CM_TYPE_Q8_0; /* llama.cpp's rule for 8-expert models, any quantized mix */
    else if (kq && role == R_V && use_more_bits(il, o->d.n_layer))
        t = CM_TYPE_Q6_K;
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
    /* --ffn-seed varies only the feed-forward weights: models that share
     * everything else, like language experts with frozen attention */
    t->seed = name_seed(o->ffn_seed && strstr(name, ".ffn_") && !strstr(name, "_norm")
                            ? o->ffn_seed
                            : o->seed,
                        name);
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
    if (!d->tied)
        plan_one(&t[n++], o, "output.weight", R_OUTPUT, 0, d->n_embd, d->n_vocab, 1);
    *out = t;
    *n_out = n;
    return CM_OK;
}

/* ------------------------------------------------------------ values */

static float uniform01(uint64_t *s)
{
    *s = mix64(*s);
    return ((uint32_t)(*s >> 40) + 0.5f) * (1.0f / 16777216.0f); /* in (0, 1) */
}

/* n values N(0, 0.02) by Box-Muller in single precision (ample for random
 * weights); the row's own seed makes the result independent of how rows
 * are spread over threads. */
static void random_row(float *x, int64_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i += 2) {
        float r = 0.02f * sqrtf(-2.0f * logf(uniform01(&s))), a = 6.2831853f * uniform01(&s);
        x[i] = r * cosf(a);
        if (i + 1 < n)
            x[i + 1] = r * sinf(a);
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

/* ------------------------------------------------------------ metadata */

static int not_tokenizer(const char *key, void *ctx)
{
    (void)ctx;
    return strncmp(key, "tokenizer.", 10) != 0;
}

static void set_hparams(gguf_writer *w, const gm_opts *o)
{
    const gm_dims *d = &o->d;
    char name[96];
    snprintf(name, sizeof name, "random %s %s", d->name, o->ft->name);
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_str(w, "general.name", name);
    gguf_writer_set_u32(w, "general.file_type", o->ft->file_type);
    if (o->ft->base != CM_TYPE_F32 && o->ft->base != CM_TYPE_F16)
        gguf_writer_set_u32(w, "general.quantization_version", 2);
    gguf_writer_set_u32(w, "llama.context_length", (uint32_t)d->n_ctx);
    gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)d->n_embd);
    gguf_writer_set_u32(w, "llama.block_count", (uint32_t)d->n_layer);
    gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)d->n_ff);
    gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)d->n_head);
    gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)d->n_head_kv);
    gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f);
    gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)(d->n_embd / d->n_head));
    gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)d->n_vocab);
    if (d->n_expert > 0) {
        gguf_writer_set_u32(w, "llama.expert_count", (uint32_t)d->n_expert);
        gguf_writer_set_u32(w, "llama.expert_used_count", (uint32_t)d->n_expert_used);
    }
}

/* Opens the vocabulary file and sizes the model to its token list. */
static cm_status open_vocab(gm_opts *o, int vocab_given, gguf_file *vf, cm_err *err)
{
    cm_status s = gguf_open(o->vocab, vf, err);
    if (s)
        return s;
    const gguf_kv *kv = gguf_find(vf, "tokenizer.ggml.tokens");
    if (!kv || kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING || kv->arr_n == 0)
        return cm_fail(err, CM_E_FORMAT, "%s: no tokenizer.ggml.tokens array", o->vocab);
    if (kv->arr_n > (1u << 24))
        return cm_fail(err, CM_E_FORMAT, "%s: %llu tokens is too many", o->vocab,
                       (unsigned long long)kv->arr_n);
    if (!vocab_given)
        o->d.n_vocab = (int)kv->arr_n;
    else if ((uint64_t)o->d.n_vocab < kv->arr_n)
        return cm_fail(err, CM_E_USAGE, "option --n-vocab: %d is smaller than the %llu tokens of %s",
                       o->d.n_vocab, (unsigned long long)kv->arr_n, o->vocab);
    return CM_OK;
}

/* Sizes of what was (or, with --dry-run, would be) written. */
static void print_summary(const gm_opts *o, const gm_tensor *t, int n)
{
    uint64_t bytes = 0, params = 0;
    char tb[32];
    for (int i = 0; i < n; i++) {
        uint64_t el = (uint64_t)(t[i].ne[0] * t[i].ne[1] * t[i].ne[2]);
        uint64_t nb = cm_row_bytes(t[i].type, t[i].ne[0]) * (el / (uint64_t)t[i].ne[0]);
        params += el;
        bytes += nb;
        if (o->dry_run)
            printf("  %-28s %-5s [%lld, %lld, %lld] %llu bytes\n", t[i].name,
                   cm_type_name(t[i].type, tb), (long long)t[i].ne[0], (long long)t[i].ne[1],
                   (long long)t[i].ne[2], (unsigned long long)nb);
    }
    printf("gen-model: %s %s: %s %s, %d tensors, %.2f M params, %.2f MiB of weights\n",
           o->dry_run ? "would write" : "wrote", o->out ? o->out : "(dry run)", o->d.name,
           o->ft->name, n, params / 1e6, bytes / 1048576.0);
}

static cm_status write_model(gm_opts *o, int vocab_given, cm_err *err)
{
    gguf_file vf = {0};
    gm_tensor *t = NULL;
    int n = 0;
    cm_status s = CM_OK;
    gguf_writer *w = gguf_writer_new(3);
    if (!w)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    if (o->vocab && (s = open_vocab(o, vocab_given, &vf, err)))
        goto out;
    set_hparams(w, o);
    if (o->vocab)
        gguf_writer_copy_kv(w, &vf, not_tokenizer, NULL);
    if ((s = plan_model(o, &t, &n, err)))
        goto out;
    if (o->dry_run) {
        print_summary(o, t, n);
        goto out;
    }
    for (int i = 0; i < n; i++)
        gguf_writer_add_tensor(w, t[i].name, t[i].type, t[i].n_dims, t[i].ne, NULL, fill_tensor,
                               &t[i]);
    /* set/add failures are remembered by the writer and reported here */
    if (!(s = gguf_writer_finish(w, o->out, err)))
        print_summary(o, t, n);
out:
    gguf_writer_free(w);
    free(t);
    gguf_close(&vf);
    return s;
}

/* ------------------------------------------------------------ options */

static cm_status parse_dim(const char *a, const char *v, gm_dims *d, int *vocab_given,
                           cm_err *err)
{
    static const struct {
        const char *flag;
        size_t off;
        long lo, hi;
    } DIMS[] = {
        {"--n-embd", offsetof(gm_dims, n_embd), 2, 1 << 16},
        {"--n-layer", offsetof(gm_dims, n_layer), 1, 1024},
        {"--n-head", offsetof(gm_dims, n_head), 1, 1024},
        {"--n-head-kv", offsetof(gm_dims, n_head_kv), 1, 1024},
        {"--n-ff", offsetof(gm_dims, n_ff), 1, 1 << 18},
        {"--n-vocab", offsetof(gm_dims, n_vocab), 1, 1 << 24},
        {"--n-ctx", offsetof(gm_dims, n_ctx), 1, 1 << 24},
        {"--n-expert", offsetof(gm_dims, n_expert), 0, 256},
        {"--n-expert-used", offsetof(gm_dims, n_expert_used), 0, 256},
    };
    for (size_t k = 0; k < sizeof DIMS / sizeof DIMS[0]; k++)
        if (!strcmp(a, DIMS[k].flag)) {
            *vocab_given |= !strcmp(a, "--n-vocab");
            d->name = "custom";
            return arg_int(a, v, DIMS[k].lo, DIMS[k].hi, (int *)((char *)d + DIMS[k].off), err);
        }
    return cm_fail(err, CM_E_USAGE, "unknown option %s (see gen-model --help)", a);
}

static cm_status parse_named(const char *a, const char *v, gm_opts *o, cm_err *err)
{
    if (!strcmp(a, "--preset")) {
        for (size_t k = 0; k < sizeof PRESETS / sizeof PRESETS[0]; k++)
            if (!strcmp(v, PRESETS[k].name)) {
                o->d = PRESETS[k];
                return CM_OK;
            }
        return cm_fail(err, CM_E_USAGE, "option --preset: '%s' is not smol135m, smol100m, qwen05b or moe8x",
                       v);
    }
    for (size_t k = 0; k < sizeof FTYPES / sizeof FTYPES[0]; k++)
        if (!strcmp(v, FTYPES[k].name)) {
            o->ft = &FTYPES[k];
            return CM_OK;
        }
    return cm_fail(err, CM_E_USAGE, "option --type: '%s' is not f32, f16, q8_0, q4_0 or q4_k_m",
                   v);
}

static cm_status check_dims(const gm_dims *d, cm_err *err)
{
    if (d->n_embd % d->n_head || (d->n_embd / d->n_head) % 2)
        return cm_fail(err, CM_E_USAGE, "--n-embd %d is not an even head size times %d heads",
                       d->n_embd, d->n_head);
    if (d->n_head % d->n_head_kv)
        return cm_fail(err, CM_E_USAGE, "--n-head %d is not a multiple of --n-head-kv %d",
                       d->n_head, d->n_head_kv);
    if ((d->n_expert > 0) != (d->n_expert_used > 0) || d->n_expert_used > d->n_expert)
        return cm_fail(err, CM_E_USAGE, "--n-expert-used %d does not fit --n-expert %d",
                       d->n_expert_used, d->n_expert);
    return CM_OK;
}

/* The preset applies first wherever it appears, so dimension flags on
 * either side of it override it. */
static cm_status parse_args(int argc, char **argv, gm_opts *o, int *vocab_given, int *help,
                            cm_err *err)
{
    cm_status s = CM_OK;
    for (int i = 1; i + 1 < argc && !s; i++)
        if (!strcmp(argv[i], "--preset"))
            s = parse_named(argv[i], argv[i + 1], o, err);
    for (int i = 1; i < argc && !s; i++) {
        const char *a = argv[i], *v;
        if (arg_is(a, "-h", "--help")) {
            *help = 1;
            return CM_OK;
        }
        if (!strcmp(a, "--dry-run")) {
            o->dry_run = 1;
            continue;
        }
        if (!strcmp(a, "--tied-output")) {
            o->d.tied = 1;
            continue;
        }
        if ((s = arg_value(argc, argv, &i, &v, err)) || !strcmp(a, "--preset"))
            continue;
        if (arg_is(a, "-o", "--output"))
            o->out = v;
        else if (!strcmp(a, "--type"))
            s = parse_named(a, v, o, err);
        else if (!strcmp(a, "--vocab"))
            o->vocab = v;
        else if (!strcmp(a, "--seed"))
            s = arg_u64(a, v, &o->seed, err);
        else if (!strcmp(a, "--ffn-seed"))
            s = arg_u64(a, v, &o->ffn_seed, err);
        else
            s = parse_dim(a, v, &o->d, vocab_given, err);
    }
    if (!s && !*help && !o->out && !o->dry_run)
        s = cm_fail(err, CM_E_USAGE, "gen-model needs -o OUT.gguf (see gen-model --help)");
    if (!s && !*help)
        s = check_dims(&o->d, err);
    return s;
}

int main(int argc, char **argv)
{
    gm_opts o = {.d = PRESETS[0], .ft = &FTYPES[1], .seed = 1234};
    int vocab_given = 0, help = 0;
    cm_err err = {0};
    cm_status s = parse_args(argc, argv, &o, &vocab_given, &help, &err);
    if (!s && help) {
        fputs(HELP, stdout);
        return 0;
    }
    if (!s)
        s = write_model(&o, vocab_given, &err);
    if (s) {
        fprintf(stderr, "gen-model: %s\n", err.msg);
        return cm_exit_code(s);
    }
    return 0;
}
