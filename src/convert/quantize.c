/* quantize.c - targets, the per-tensor type policy and whole-file
 * quantization (see quantize.h).  The row encoders are in quantize_rows.c.
 *
 * The policy re-implements the rules llama.cpp documents for its quantize
 * types (llama-quantize --help, the k-quants notes), so that a q4_k_m file
 * written here has llama.cpp's type in every tensor. */
#define _GNU_SOURCE
#include "convert/quantize.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "engine/model.h"
#include "experts/pack.h"
#include "quant/quant.h"

/* ------------------------------------------------------------ targets */

/* llama.cpp's llama_ftype values, written as general.file_type. */
enum {
    FT_F32 = 0, FT_F16 = 1, FT_Q4_0 = 2, FT_Q4_1 = 3, FT_Q8_0 = 7, FT_Q5_0 = 8, FT_Q5_1 = 9,
    FT_Q2_K = 10, FT_Q3_K_S = 11, FT_Q3_K_M = 12, FT_Q3_K_L = 13, FT_Q4_K_S = 14,
    FT_Q4_K_M = 15, FT_Q5_K_S = 16, FT_Q5_K_M = 17, FT_Q6_K = 18, FT_Q2_K_S = 21, FT_BF16 = 32
};

static const cm_qmix MIXES[] = {
    {"f32", FT_F32, CM_TYPE_F32, "32-bit floats"},
    {"f16", FT_F16, CM_TYPE_F16, "16-bit floats"},
    {"bf16", FT_BF16, CM_TYPE_BF16, "bfloat16"},
    {"q8_0", FT_Q8_0, CM_TYPE_Q8_0, "8.5 bits per weight"},
    {"q4_0", FT_Q4_0, CM_TYPE_Q4_0, "4.5 bpw"},
    {"q4_1", FT_Q4_1, CM_TYPE_Q4_1, "5 bpw"},
    {"q5_0", FT_Q5_0, CM_TYPE_Q5_0, "5.5 bpw"},
    {"q5_1", FT_Q5_1, CM_TYPE_Q5_1, "6 bpw"},
    {"q2_k", FT_Q2_K, CM_TYPE_Q2_K, "q2_K; attn_v, attn_output, ffn_down q3_K (q4_K attn_v with GQA >= 4)"},
    {"q2_k_s", FT_Q2_K_S, CM_TYPE_Q2_K, "q2_K; first eighth's ffn_down q4_K"},
    {"q3_k_s", FT_Q3_K_S, CM_TYPE_Q3_K, "q3_K"},
    {"q3_k_m", FT_Q3_K_M, CM_TYPE_Q3_K, "q3_K; attn_v q5_K in two layers else q4_K; attn_output, ffn_down q4_K"},
    {"q3_k_l", FT_Q3_K_L, CM_TYPE_Q3_K, "q3_K; attn_v, attn_output, ffn_down q5_K"},
    {"q4_k_s", FT_Q4_K_S, CM_TYPE_Q4_K, "q4_K; attn_v of 4 layers and first eighth's ffn_down q5_K"},
    {"q4_k_m", FT_Q4_K_M, CM_TYPE_Q4_K, "q4_K; attn_v, ffn_down q6_K in the more-bits layers"},
    {"q5_k_s", FT_Q5_K_S, CM_TYPE_Q5_K, "q5_K"},
    {"q5_k_m", FT_Q5_K_M, CM_TYPE_Q5_K, "q5_K; attn_v, ffn_down q6_K in the more-bits layers"},
    {"q6_k", FT_Q6_K, CM_TYPE_Q6_K, "q6_K"},
};
#define N_MIXES (sizeof MIXES / sizeof MIXES[0])

const cm_qmix *cm_qmix_at(size_t i)
{
    return i < N_MIXES ? &MIXES[i] : NULL;
}

const cm_qmix *cm_qmix_find(const char *name)
{
    static const char *const alias[][2] = {{"q3_k", "q3_k_m"}, {"q4_k", "q4_k_m"},
                                           {"q5_k", "q5_k_m"}};
    if (!name)
        return NULL;
    for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++)
        if (!strcasecmp(name, alias[i][0]))
            name = alias[i][1];
    for (size_t i = 0; i < N_MIXES; i++)
        if (!strcasecmp(name, MIXES[i].name))
            return &MIXES[i];
    return NULL;
}

void cm_qmix_names(char *buf, size_t cap)
{
    size_t k = 0;
    if (cap)
        buf[0] = 0;
    for (size_t i = 0; i < N_MIXES && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%s", i ? ", " : "", MIXES[i].name);
}

/* ------------------------------------------------------------ policy */

static int is_quantized(uint32_t type)
{
    const cm_type_info *ti = cm_type_get(type);
    return ti && ti->block_elems > 1;
}

static int64_t block_of(uint32_t type)
{
    const cm_type_info *ti = cm_type_get(type);
    return ti ? ti->block_elems : 1;
}

/* Dimensions as ggml counts them: trailing 1s do not count. */
static uint32_t eff_dims(const cm_qtensor *t)
{
    uint32_t d = t->n_dims < 4 ? t->n_dims : 4;
    while (d > 1 && t->ne[d - 1] == 1)
        d--;
    return d ? d : 1;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The tensors llama-quantize touches at all: 2-D+ weights, except norms,
 * routers, position tables and a few small per-architecture weights. */
static int is_candidate(const char *n, uint32_t dims)
{
    static const char *const never[] = {
        "_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj",
        "ssm_conv1d.weight", "shortconv.conv.weight", "time_mix_first.weight",
        "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight",
        "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight",
        "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
        "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
        "attn_rel_b.weight", ".position_embd."};
    if (!ends_with(n, "weight") || dims < 2 || !strcmp(n, "position_embd.weight") ||
        !strcmp(n, "token_types.weight"))
        return 0;
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        if (strstr(n, never[i]))
            return 0;
    return 1;
}

/* "blk.12.ffn_down.weight" -> 12; -1 when the name has no layer. */
static int layer_of(const char *name)
{
    char *end;
    if (strncmp(name, "blk.", 4))
        return -1;
    long v = strtol(name + 4, &end, 10);
    return end == name + 4 || v < INT_MIN || v > INT_MAX ? -1 : (int)v;
}

typedef struct {
    int ft; /* the mix's ftype */
    uint32_t base;
    int n_layer, n_expert, gqa, falcon, is_70b, has_output;
    int n_attn_v, i_attn_v, i_ffn_down;
} policy;

/* llama.cpp's "use more bits" layers: the first and last eighth and every
 * third layer in between. */
static int more_bits(int i, int n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* The output projection (or the tied embedding table standing in for it). */
static uint32_t output_type(const policy *p, const cm_qtensor *t, uint32_t ty)
{
    if (p->falcon || t->ne[0] % block_of(ty))
        return CM_TYPE_Q8_0;
    return ty != CM_TYPE_Q8_0 ? CM_TYPE_Q6_K : ty;
}

static uint32_t attn_v_type(policy *p, uint32_t ty)
{
    int ft = p->ft, i = p->i_attn_v++;
    if (ft == FT_Q2_K)
        ty = p->gqa >= 4 ? CM_TYPE_Q4_K : CM_TYPE_Q3_K;
    else if (ft == FT_Q2_K_S && p->gqa >= 4)
        ty = CM_TYPE_Q4_K;
    else if (ft == FT_Q3_K_M)
        ty = i < 2 ? CM_TYPE_Q5_K : CM_TYPE_Q4_K;
    else if (ft == FT_Q3_K_L)
        ty = CM_TYPE_Q5_K;
    else if ((ft == FT_Q4_K_M || ft == FT_Q5_K_M) && more_bits(i, p->n_attn_v))
        ty = CM_TYPE_Q6_K;
    else if (ft == FT_Q4_K_S && i < 4)
        ty = CM_TYPE_Q5_K;
    /* in 70B models 8 heads share attn_v: it is small, more bits are cheap */
    if (p->is_70b && (ty == CM_TYPE_Q3_K || ty == CM_TYPE_Q4_K))
        ty = CM_TYPE_Q5_K;
    if (p->n_expert == 8) /* Mixtral-style: attention is a small share */
        ty = CM_TYPE_Q8_0;
    return ty;
}

static cm_status ffn_down_type(policy *p, const char *name, uint32_t *ty, cm_err *err)
{
    int ft = p->ft, n = p->n_layer, i = p->i_ffn_down++;
    if (p->n_expert > 1) { /* experts are not in layer order: use the name */
        i = layer_of(name);
        if (i < 0 || i >= n)
            return cm_fail(err, CM_E_FORMAT, "cannot tell the layer of tensor %s (the model has "
                           "%d layers)", name, n);
    }
    int mb = more_bits(i, n);
    if (ft == FT_Q2_K)
        *ty = CM_TYPE_Q3_K;
    else if (ft == FT_Q2_K_S && i < n / 8)
        *ty = CM_TYPE_Q4_K;
    else if (ft == FT_Q3_K_M)
        *ty = i < n / 16 ? CM_TYPE_Q5_K : !p->falcon || mb ? CM_TYPE_Q4_K : CM_TYPE_Q3_K;
    else if (ft == FT_Q3_K_L)
        *ty = p->falcon ? CM_TYPE_Q4_K : CM_TYPE_Q5_K;
    else if (ft == FT_Q4_K_M && p->falcon)
        *ty = i < n / 16 ? CM_TYPE_Q6_K : mb ? CM_TYPE_Q5_K : CM_TYPE_Q4_K;
    else if (ft == FT_Q4_K_M && mb)
        *ty = CM_TYPE_Q6_K;
    else if (ft == FT_Q5_K_M && mb)
        *ty = CM_TYPE_Q6_K;
    else if (ft == FT_Q4_K_S && !p->falcon && i < n / 8)
        *ty = CM_TYPE_Q5_K;
    return CM_OK;
}

static uint32_t attn_output_type(const policy *p, uint32_t ty)
{
    int ft = p->ft;
    if (p->falcon)
        return ft == FT_Q3_K_L ? CM_TYPE_Q4_K : ty;
    if (p->n_expert == 8)
        return ft == FT_Q2_K || ft == FT_Q3_K_S || ft == FT_Q3_K_M || ft == FT_Q4_K_S ||
               ft == FT_Q4_K_M ? CM_TYPE_Q5_K : ty;
    return ft == FT_Q2_K ? CM_TYPE_Q3_K : ft == FT_Q3_K_M ? CM_TYPE_Q4_K
         : ft == FT_Q3_K_L ? CM_TYPE_Q5_K : ty;
}

static uint32_t attn_qkv_type(const policy *p, uint32_t ty)
{
    int ft = p->ft;
    return ft == FT_Q3_K_M || ft == FT_Q3_K_L ? CM_TYPE_Q4_K : ft == FT_Q4_K_M ? CM_TYPE_Q5_K
         : ft == FT_Q5_K_M ? CM_TYPE_Q6_K : ty;
}

/* The mix's rules for one weight, by name; first match wins, as in
 * llama.cpp (token_embd and attn_q have no rule for these mixes but stop
 * the search). */
static cm_status mix_rules(policy *p, const cm_qtensor *t, uint32_t *ty, cm_err *err)
{
    const char *n = t->name;
    if (!strcmp(n, "output.weight") || (!p->has_output && !strcmp(n, "token_embd.weight")))
        *ty = output_type(p, t, *ty);
    else if (!strcmp(n, "token_embd.weight") || strstr(n, "attn_q.weight"))
        return CM_OK;
    else if (strstr(n, "attn_v.weight"))
        *ty = attn_v_type(p, *ty);
    else if (strstr(n, "attn_k.weight"))
        *ty = p->n_expert == 8 ? CM_TYPE_Q8_0 : *ty;
    else if (strstr(n, "ffn_down"))
        return ffn_down_type(p, n, ty, err);
    else if (strstr(n, "attn_output.weight"))
        *ty = attn_output_type(p, *ty);
    else if (strstr(n, "attn_qkv.weight"))
        *ty = attn_qkv_type(p, *ty);
    return CM_OK;
}

/* Rows that do not fill whole blocks: llama.cpp's substitutes (its IQ4_NL
 * for q2_K/q3_K is not ours: q4_0 has the same block and bits), then f16. */
static uint32_t fit_rows(uint32_t ty, int64_t row, int *fallback)
{
    *fallback = 0;
    if (row % block_of(ty) == 0)
        return ty;
    *fallback = 1;
    switch (ty) {
    case CM_TYPE_Q2_K:
    case CM_TYPE_Q3_K: ty = CM_TYPE_Q4_0; break;
    case CM_TYPE_Q4_K: ty = CM_TYPE_Q5_0; break;
    case CM_TYPE_Q5_K: ty = CM_TYPE_Q5_1; break;
    case CM_TYPE_Q6_K: ty = CM_TYPE_Q8_0; break;
    default: ty = CM_TYPE_F16;
    }
    return row % block_of(ty) ? CM_TYPE_F16 : ty;
}

static cm_status choose_one(policy *p, int pure, cm_qtensor *t, cm_err *err)
{
    uint32_t ty = p->base;
    t->fallback = 0;
    if (!is_candidate(t->name, eff_dims(t))) {
        t->type = t->wanted = t->src_type;
        t->convert = 0;
        return CM_OK;
    }
    if (is_quantized(ty) && !pure) {
        cm_status s = mix_rules(p, t, &ty, err);
        if (s)
            return s;
    }
    t->wanted = ty;
    if (is_quantized(ty))
        ty = fit_rows(ty, t->ne[0], &t->fallback);
    t->type = ty;
    t->convert = ty != t->src_type;
    return CM_OK;
}

typedef struct {
    int layer;
    const char *name;
    size_t idx;
} order_key;

/* llama.cpp's tensor order: tensors outside the layers first, then layer
 * by layer (numerically), by name within each. */
static int cmp_order(const void *a, const void *b)
{
    const order_key *x = a, *y = b;
    if (x->layer != y->layer)
        return x->layer < y->layer ? -1 : 1;
    return strcmp(x->name, y->name);
}

static void policy_init(policy *p, const cm_qmix *mix, const cm_qmodel *m, const cm_qtensor *t,
                        size_t n)
{
    memset(p, 0, sizeof *p);
    p->ft = (int)mix->ftype;
    p->base = mix->base;
    p->n_layer = m->n_layer;
    p->n_expert = m->n_expert;
    p->gqa = m->n_head_kv > 0 ? m->n_head / m->n_head_kv : 0;
    p->falcon = !strcmp(m->arch, "falcon");
    /* llama.cpp's "70B": 80 layers with grouped-query attention */
    p->is_70b = m->n_layer == 80 && ((!strcmp(m->arch, "llama") && m->n_head != m->n_head_kv) ||
                                     !strcmp(m->arch, "qwen2"));
    for (size_t i = 0; i < n; i++) {
        if (strstr(t[i].name, "attn_v.weight") || strstr(t[i].name, "attn_qkv.weight") ||
            strstr(t[i].name, "attn_kv_b.weight"))
            p->n_attn_v++;
        p->has_output |= !strcmp(t[i].name, "output.weight");
    }
}

cm_status cm_quantize_choose(const cm_qmix *mix, const cm_qmodel *m, int pure, cm_qtensor *t,
                             size_t n, cm_err *err)
{
    policy p;
    if (!mix || !m || (n && !t))
        return cm_fail(err, CM_E_USAGE, "cm_quantize_choose: missing argument");
    policy_init(&p, mix, m, t, n);
    order_key *ord = malloc((n ? n : 1) * sizeof *ord);
    if (!ord)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        ord[i] = (order_key){layer_of(t[i].name), t[i].name, i};
    qsort(ord, n, sizeof *ord, cmp_order);
    cm_status s = CM_OK;
    for (size_t i = 0; i < n && !s; i++)
        s = choose_one(&p, pure, &t[ord[i].idx], err);
    free(ord);
    return s;
}

/* A u32 key, or the first element of an array of them (per-layer values). */
static int meta_int(const gguf_file *f, const char *arch, const char *key, int dflt)
{
    char k[160];
    uint32_t v;
    int32_t *arr = NULL;
    uint64_t n = 0;
    snprintf(k, sizeof k, "%s.%s", arch, key);
    if (gguf_get_u32(f, k, &v, NULL) == CM_OK)
        return v > INT_MAX ? dflt : (int)v;
    if (gguf_get_i32_array(f, k, &arr, &n, NULL) == CM_OK && n) {
        int r = arr[0];
        free(arr);
        return r;
    }
    free(arr);
    return dflt;
}

void cm_qmodel_from_gguf(const gguf_file *f, cm_qmodel *m)
{
    gguf_str a = {0};
    memset(m, 0, sizeof *m);
    if (gguf_get_str(f, "general.architecture", &a, NULL) == CM_OK)
        snprintf(m->arch, sizeof m->arch, "%.*s", (int)(a.len < 31 ? a.len : 31), a.ptr);
    m->n_layer = meta_int(f, m->arch, "block_count", 0);
    m->n_head = meta_int(f, m->arch, "attention.head_count", 0);
    m->n_head_kv = meta_int(f, m->arch, "attention.head_count_kv", m->n_head);
    m->n_expert = meta_int(f, m->arch, "expert_count", 0);
}

/* ------------------------------------------------------------ jobs */

typedef struct {
    cm_quantize_job *job;
    size_t i;
    const gguf_tensor *src;
    double sq_err, sq_ref; /* sums of (quantized - source)^2 and source^2 */
    int done;
} qrec;

struct cm_quantize_job {
    const gguf_file *src;
    const cm_qmix *mix;
    cm_quantize_opts o;
    cm_qtensor *qt; /* output order */
    qrec *rec;      /* parallel to qt */
    char **names;
    size_t n;
};

static void logw(const cm_quantize_job *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void logw(const cm_quantize_job *j, const char *fmt, ...)
{
    FILE *f = j->o.warn ? j->o.warn : j->o.log;
    if (!f)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
}

void cm_quantize_job_free(cm_quantize_job *j)
{
    if (!j)
        return;
    for (size_t i = 0; i < j->n; i++)
        free(j->names[i]);
    free(j->names);
    free(j->qt);
    free(j->rec);
    free(j);
}

/* Copies the tensor list of src into j in llama.cpp's order. */
static cm_status job_tensors(cm_quantize_job *j, cm_err *err)
{
    const gguf_file *f = j->src;
    size_t n = (size_t)f->n_tensors;
    order_key *ord = malloc((n ? n : 1) * sizeof *ord);
    j->names = calloc(n ? n : 1, sizeof *j->names);
    j->qt = calloc(n ? n : 1, sizeof *j->qt);
    j->rec = calloc(n ? n : 1, sizeof *j->rec);
    if (!ord || !j->names || !j->qt || !j->rec) {
        free(ord);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    j->n = n;
    for (size_t i = 0; i < n; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (!(j->names[i] = strndup(t->name.ptr, (size_t)t->name.len))) {
            free(ord);
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        }
        ord[i] = (order_key){layer_of(j->names[i]), j->names[i], i};
    }
    qsort(ord, n, sizeof *ord, cmp_order);
    for (size_t k = 0; k < n; k++) {
        const gguf_tensor *t = &f->tensors[ord[k].idx];
        cm_qtensor *q = &j->qt[k];
        q->name = ord[k].name;
        q->n_dims = t->n_dims;
        memcpy(q->ne, t->ne, sizeof q->ne);
        q->src_type = t->type;
        j->rec[k] = (qrec){.job = j, .i = k, .src = t};
    }
    free(ord);
    return CM_OK;
}

/* Every tensor to convert must be decodable; quantized sources warn once. */
static cm_status job_check(cm_quantize_job *j, cm_err *err)
{
    char a[32], b[32], c[32];
    size_t requant = 0, fallbacks = 0;
    for (size_t i = 0; i < j->n; i++) {
        const cm_qtensor *q = &j->qt[i];
        const cm_type_info *ti = cm_type_get(q->src_type);
        if (!q->convert)
            continue;
        if (!ti || !ti->supported)
            return cm_fail(err, CM_E_UNSUPPORTED, "tensor %s is %s, which codemoe cannot decode",
                           q->name, cm_type_name(q->src_type, a));
        requant += is_quantized(q->src_type);
        if (q->fallback && ++fallbacks <= 4) /* small models have dozens: name a few */
            logw(j, "warning: %s: rows of %lld do not fill %s blocks; using %s (llama.cpp's "
                 "fallback)\n", q->name, (long long)q->ne[0], cm_type_name(q->wanted, b),
                 cm_type_name(q->type, c));
    }
    if (fallbacks > 4)
        logw(j, "warning: ... and %zu more tensors use a fallback type (marked below)\n",
             fallbacks - 4);
    if (requant)
        logw(j, "warning: %zu tensors are already quantized; they are dequantized and quantized "
             "again, which loses more than quantizing the f16/f32 original\n", requant);
    return CM_OK;
}

/* name without its "<prefix>/", or NULL when it has another prefix. */
static const char *strip_member(const char *name, const char *prefix)
{
    size_t k = strlen(prefix);
    return !strncmp(name, prefix, k) && name[k] == '/' ? name + k + 1 : NULL;
}

/* A pack's tensors are "<member>/<name>" and "shared/<name>".  The policy
 * counts tensors by kind and reads layers from llama.cpp names, so it must
 * see one member at a time, as the model file that member came from (its
 * own tensors and the shared ones, names unprefixed): each member then gets
 * exactly the types its own file would, and a shared tensor, which is the
 * same in every member, gets the same type from each. */
static cm_status choose_pack(cm_quantize_job *j, const cm_qmodel *m, cm_err *err)
{
    char names[CM_PACK_MAX_MEMBERS][32];
    int n_mem = cm_pack_members(j->src, names, CM_PACK_MAX_MEMBERS);
    cm_qtensor *view = malloc((j->n ? j->n : 1) * sizeof *view);
    size_t *idx = malloc((j->n ? j->n : 1) * sizeof *idx);
    unsigned char *seen = calloc(j->n ? j->n : 1, 1);
    cm_status s = view && idx && seen ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!s && n_mem == 0)
        s = cm_fail(err, CM_E_FORMAT, "the pack lists no members");
    for (int mb = 0; mb < n_mem && !s; mb++) {
        size_t k = 0;
        for (size_t i = 0; i < j->n; i++) {
            const char *bare = strip_member(j->qt[i].name, names[mb]);
            if (!bare)
                bare = strip_member(j->qt[i].name, CM_PACK_SHARED);
            if (bare) {
                view[k] = j->qt[i];
                view[k].name = bare;
                idx[k++] = i;
            }
        }
        s = cm_quantize_choose(j->mix, m, j->o.pure, view, k, err);
        for (size_t t = 0; t < k && !s; t++) {
            cm_qtensor *q = &j->qt[idx[t]];
            q->type = view[t].type, q->wanted = view[t].wanted;
            q->convert = view[t].convert, q->fallback = view[t].fallback;
            seen[idx[t]] = 1;
        }
    }
    for (size_t i = 0; i < j->n && !s; i++)
        if (!seen[i])
            s = cm_fail(err, CM_E_FORMAT, "pack tensor %s belongs to no member", j->qt[i].name);
    free(view), free(idx), free(seen);
    return s;
}

cm_status cm_quantize_job_new(const gguf_file *src, const cm_qmix *mix,
                              const cm_quantize_opts *o, cm_quantize_job **out, cm_err *err)
{
    cm_qmodel m;
    *out = NULL;
    if (!src || !mix)
        return cm_fail(err, CM_E_USAGE, "cm_quantize_job_new: missing argument");
    int pack = gguf_find(src, "codemoe.pack.version") != NULL;
    if (pack && !(o && o->pack))
        return cm_fail(err, CM_E_UNSUPPORTED, "this is a language-expert pack: quantize its "
                       "member models, then pack them");
    cm_quantize_job *j = calloc(1, sizeof *j);
    if (!j)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    j->src = src;
    j->mix = mix;
    if (o)
        j->o = *o;
    cm_qmodel_from_gguf(src, &m);
    cm_status s = job_tensors(j, err);
    if (!s)
        s = pack ? choose_pack(j, &m, err)
                 : cm_quantize_choose(mix, &m, j->o.pure, j->qt, j->n, err);
    if (!s)
        s = job_check(j, err);
    if (s)
        cm_quantize_job_free(j);
    else
        *out = j;
    return s;
}

/* Quantizes every row, measuring the error against the decoded source.
 * Per-row sums are added in row order afterwards, so the result does not
 * depend on the thread count. */
static cm_status convert_rows(qrec *r, const cm_qtensor *q, uint8_t *dst, cm_err *err)
{
    int64_t len = q->ne[0], rows = q->ne[1] * q->ne[2] * q->ne[3];
    size_t sb = cm_row_bytes(q->src_type, len), db = cm_row_bytes(q->type, len);
    const uint8_t *src = r->src->data;
    double *acc = malloc((size_t)rows * 2 * sizeof *acc);
    int bad = !acc, nonfinite = 0;
#pragma omp parallel if (!bad && rows * len > (1 << 16)) reduction(| : bad, nonfinite)
    {
        float *x = malloc((size_t)len * sizeof *x), *y = malloc((size_t)len * sizeof *y);
        bad |= !x || !y || !acc;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < rows; k++) {
            if (!x || !y || !acc)
                continue;
            uint8_t *out = dst + (size_t)k * db;
            double e = 0, s = 0;
            cm_dequantize_row((enum cm_type)q->src_type, src + (size_t)k * sb, x, len);
            for (int64_t i = 0; i < len; i++)
                s += (double)x[i] * x[i];
            if (!isfinite(s)) { /* NaN or Inf: no scale fits it */
                nonfinite |= 1;
                memset(out, 0, db);
                continue;
            }
            bad |= cm_quantize_weights(q->type, x, out, len) != 0;
            cm_dequantize_row((enum cm_type)q->type, out, y, len);
            for (int64_t i = 0; i < len; i++) {
                double d = (double)y[i] - x[i];
                e += d * d;
            }
            acc[2 * k] = e;
            acc[2 * k + 1] = s;
        }
        free(x);
        free(y);
    }
    for (int64_t k = 0; !bad && !nonfinite && k < rows; k++) {
        r->sq_err += acc[2 * k];
        r->sq_ref += acc[2 * k + 1];
    }
    free(acc);
    if (nonfinite)
        return cm_fail(err, CM_E_FORMAT, "tensor %s holds NaN or infinite values; it cannot be "
                       "quantized", q->name);
    return bad ? cm_fail(err, CM_E_NOMEM, "out of memory quantizing %s", q->name) : CM_OK;
}

static uint64_t n_elements(const cm_qtensor *q)
{
    return (uint64_t)(q->ne[0] * q->ne[1] * q->ne[2] * q->ne[3]);
}

static double rec_rmse(const qrec *r, const cm_qtensor *q)
{
    return q->convert && n_elements(q) ? sqrt(r->sq_err / (double)n_elements(q)) : 0.0;
}

static void fmt_shape(const cm_qtensor *q, char *buf, size_t cap)
{
    size_t k = 0;
    for (uint32_t d = 0; d < eff_dims(q); d++) {
        int w = snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "[", (long long)q->ne[d]);
        if (w < 0 || (size_t)w >= cap - k - 1)
            break;
        k += (size_t)w;
    }
    snprintf(buf + k, cap - k, "]");
}

/* "blk.0.attn_v.weight  [256, 128]  f16 -> q4_K  rmse 1.2e-03 (2.1% of rms)" */
static void report(const qrec *r, const cm_qtensor *q)
{
    const cm_quantize_job *j = r->job;
    char shape[128], a[32], b[32], c[32];
    if (!j->o.log || j->o.quiet)
        return;
    fmt_shape(q, shape, sizeof shape);
    fprintf(j->o.log, "[%4zu/%4zu] %-32s %-16s %-5s -> %-5s", r->i + 1, j->n, q->name, shape,
            cm_type_name(q->src_type, a), cm_type_name(q->type, b));
    if (q->convert) {
        double rms = sqrt(r->sq_ref / (double)(n_elements(q) ? n_elements(q) : 1));
        fprintf(j->o.log, "  rmse %.3e (%.2f%% of rms)", rec_rmse(r, q),
                rms > 0 ? 100.0 * rec_rmse(r, q) / rms : 0.0);
    } else {
        fprintf(j->o.log, "  copied");
    }
    if (q->fallback)
        fprintf(j->o.log, "  [fallback from %s]", cm_type_name(q->wanted, c));
    if (q->convert && is_quantized(q->src_type))
        fprintf(j->o.log, "  [requantized]");
    fputc('\n', j->o.log);
}

/* gguf_writer fill callback: one output tensor. */
static cm_status fill_tensor(void *ctx, void *dst, uint64_t nbytes, cm_err *err)
{
    qrec *r = ctx;
    const cm_qtensor *q = &r->job->qt[r->i];
    uint64_t rows = n_elements(q) / (uint64_t)q->ne[0];
    if ((uint64_t)cm_row_bytes(q->type, q->ne[0]) * rows != nbytes)
        return cm_fail(err, CM_E_FORMAT, "%s: internal size mismatch", q->name);
    r->sq_err = r->sq_ref = 0;
    if (!q->convert) {
        memcpy(dst, r->src->data, (size_t)nbytes);
    } else {
        cm_status s = convert_rows(r, q, dst, err);
        if (s)
            return s;
    }
    r->done = 1;
    report(r, q);
    return CM_OK;
}

/* llama-quantize drops the split keys and re-adds file type and
 * quantization version at the end. */
static int skip_key(const char *key, void *ctx)
{
    (void)ctx;
    return !strcmp(key, "general.file_type") || !strcmp(key, "general.quantization_version") ||
           !strcmp(key, "split.no") || !strcmp(key, "split.count") ||
           !strcmp(key, "split.tensors.count");
}

cm_status cm_quantize_job_add(cm_quantize_job *j, gguf_writer *w, cm_err *err)
{
    if (!j || !w)
        return cm_fail(err, CM_E_USAGE, "cm_quantize_job_add: missing argument");
    cm_status s = gguf_writer_copy_kv(w, j->src, skip_key, NULL);
    if (!s)
        s = gguf_writer_set_u32(w, "general.quantization_version", 2);
    if (!s)
        s = gguf_writer_set_u32(w, "general.file_type", j->mix->ftype);
    for (size_t i = 0; i < j->n && !s; i++) {
        const cm_qtensor *q = &j->qt[i];
        /* ggml writes the dimensions it counts (trailing 1s dropped) */
        s = gguf_writer_add_tensor(w, q->name, q->type, eff_dims(q), q->ne, NULL, fill_tensor,
                                   &j->rec[i]);
    }
    /* a failed set/add is also kept in the writer; finish reports it */
    return s ? cm_fail(err, s, "cannot add the model to the output") : CM_OK;
}

size_t cm_quantize_job_count(const cm_quantize_job *j)
{
    return j ? j->n : 0;
}

const cm_qtensor *cm_quantize_job_tensor(const cm_quantize_job *j, size_t i, double *rmse)
{
    if (!j || i >= j->n)
        return NULL;
    if (rmse)
        *rmse = rec_rmse(&j->rec[i], &j->qt[i]);
    return &j->qt[i];
}

void cm_quantize_job_stats(const cm_quantize_job *j, cm_quantize_stats *s)
{
    memset(s, 0, sizeof *s);
    for (size_t i = 0; j && i < j->n; i++) {
        const cm_qtensor *q = &j->qt[i];
        uint64_t n = n_elements(q);
        s->n_tensors++;
        s->n_converted += q->convert != 0;
        s->n_fallback += q->fallback != 0;
        s->n_requantized += q->convert && is_quantized(q->src_type);
        s->n_elements += n;
        s->bytes_in += j->rec[i].src->nbytes;
        s->bytes_out += cm_row_bytes(q->type, q->ne[0]) * (n / (uint64_t)q->ne[0]);
    }
}

/* ------------------------------------------------------------ files */

static void summary(FILE *log, const char *path, const cm_qmix *mix, const cm_quantize_stats *s)
{
    double n = s->n_elements ? (double)s->n_elements : 1.0;
    if (!log)
        return;
    fprintf(log, "wrote %s (%s): %llu tensors, %llu converted, %llu fallbacks; %.2f MiB -> %.2f "
            "MiB, %.2f -> %.2f bits per weight\n", path, mix->name,
            (unsigned long long)s->n_tensors, (unsigned long long)s->n_converted,
            (unsigned long long)s->n_fallback, s->bytes_in / 1048576.0, s->bytes_out / 1048576.0,
            8.0 * (double)s->bytes_in / n, 8.0 * (double)s->bytes_out / n);
}

cm_status cm_quantize_to_path(const gguf_file *src, const cm_qmix *mix, const char *path,
                              const cm_quantize_opts *o, cm_quantize_stats *stats, cm_err *err)
{
    cm_quantize_job *j = NULL;
    cm_quantize_stats st;
    if (!path)
        return cm_fail(err, CM_E_USAGE, "cm_quantize_to_path: no output path");
    cm_status s = cm_quantize_job_new(src, mix, o, &j, err);
    if (s)
        return s;
    gguf_writer *w = gguf_writer_new(3);
    if (!w)
        s = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!s && o)
        gguf_writer_set_progress(w, o->progress, o->progress_ctx);
    if (!s) {
        cm_quantize_job_add(j, w, NULL); /* an error here is reported by finish */
        s = gguf_writer_finish(w, path, err);
    }
    cm_quantize_job_stats(j, &st);
    if (!s)
        summary(o ? o->log : NULL, path, mix, &st);
    if (stats)
        *stats = st;
    gguf_writer_free(w);
    cm_quantize_job_free(j);
    return s;
}

/* Same file by name or by inode (a link, "./x" for "x"). */
static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (!strcmp(a, b))
        return 1;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

cm_status cm_quantize_file(const char *in, const char *out, const char *type_name,
                           const cm_quantize_opts *o, cm_err *err)
{
    char names[512];
    const cm_qmix *mix = cm_qmix_find(type_name);
    if (!in || !out)
        return cm_fail(err, CM_E_USAGE, "quantize needs an input and an output file");
    if (!mix) {
        cm_qmix_names(names, sizeof names);
        return cm_fail(err, CM_E_USAGE, "unknown type '%s' (valid: %s)", type_name ? type_name : "",
                       names);
    }
    if (same_file(in, out))
        return cm_fail(err, CM_E_USAGE, "input and output are the same file (%s); write to a new "
                       "file", out);
    /* loaded as `run` loads it (hyper-parameters, every tensor's shape and
     * type, the tokenizer) before anything is written: the output keeps all
     * of that, so a model the engine rejects would give a file it rejects */
    cm_model m;
    cm_status s = cm_model_load(in, &m, err);
    if (s)
        return s; /* m is freed already */
    s = cm_quantize_to_path(&m.file, mix, out, o, NULL, err);
    cm_model_free(&m);
    return s;
}
