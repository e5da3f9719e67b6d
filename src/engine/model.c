/* model.c - loading GGUF models of the eight architectures (llama, qwen2,
 * qwen3, qwen2moe, qwen3moe, starcoder, phi2, starcoder2), with llama.cpp's
 * metadata keys and tensor names. */
#include "engine/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "experts/pack.h"

/* What distinguishes the architectures we run (llama.cpp's names). */
typedef struct {
    const char *name;
    cm_arch arch;
    int rope_neox, use_rope, layer_norm, gelu_mlp, parallel_block;
    int expert_norm;  /* default for renormalising the top-k expert weights */
    int qk_norm;      /* per-head q/k RMSNorm tensors are required */
    int qkv_bias;     /* q/k/v biases are required */
} arch_desc;

/* llama.cpp rotates adjacent pairs for llama (its converter permutes Q/K
 * so that this matches Hugging Face's rotate_half) but halves elsewhere. */
static const arch_desc ARCHS[] = {
    /* name       arch               neox rope LN  gelu par  norm qkn bias */
    {"llama", CM_ARCH_LLAMA, 0, 1, 0, 0, 0, 1, 0, 0},
    {"qwen2", CM_ARCH_QWEN2, 1, 1, 0, 0, 0, 1, 0, 1},
    {"qwen3", CM_ARCH_QWEN3, 1, 1, 0, 0, 0, 1, 1, 0},
    {"qwen2moe", CM_ARCH_QWEN2MOE, 1, 1, 0, 0, 0, 0, 0, 1},
    {"qwen3moe", CM_ARCH_QWEN3MOE, 1, 1, 0, 0, 0, 1, 1, 0},
    {"starcoder", CM_ARCH_STARCODER, 0, 0, 1, 1, 0, 1, 0, 0},
    {"phi2", CM_ARCH_PHI2, 1, 1, 1, 1, 1, 1, 0, 0},
    {"starcoder2", CM_ARCH_STARCODER2, 1, 1, 1, 1, 0, 1, 0, 0},
};

static const arch_desc *find_arch(gguf_str name)
{
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (gguf_str_eq(name, ARCHS[i].name))
            return &ARCHS[i];
    return NULL;
}

const gguf_tensor *cm_model_find_tensor(const cm_model *m, const char *name)
{
    char full[160];
    if (!m->is_pack)
        return gguf_find_tensor(&m->file, name);
    snprintf(full, sizeof full, "%s/%s", m->expert, name);
    const gguf_tensor *t = gguf_find_tensor(&m->file, full);
    if (t)
        return t;
    snprintf(full, sizeof full, "%s/%s", CM_PACK_SHARED, name);
    return gguf_find_tensor(&m->file, full);
}

/* Reads "<arch>.<suffix>" as an unsigned int; required unless def >= 0. */
static cm_status get_hp(const cm_model *m, const char *suffix, long def, int *out,
                        cm_err *err)
{
    char key[128];
    uint32_t v;
    snprintf(key, sizeof key, "%s.%s", m->hp.arch_name, suffix);
    cm_status s = gguf_get_u32(&m->file, key, &v, err);
    if (s == CM_E_RANGE) {
        if (def < 0)
            return cm_fail(err, CM_E_FORMAT, "%s: missing metadata key %s", m->path, key);
        *out = (int)def;
        return CM_OK;
    }
    if (s != CM_OK)
        return s;
    if (v > (1u << 30))
        return cm_fail(err, CM_E_FORMAT, "%s: %s = %u is out of range", m->path, key, v);
    *out = (int)v;
    return CM_OK;
}

static cm_status get_hp_f32(const cm_model *m, const char *suffix, float def, float *out,
                            cm_err *err)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->hp.arch_name, suffix);
    cm_status s = gguf_get_f32(&m->file, key, out, err);
    if (s == CM_E_RANGE) {
        *out = def;
        return CM_OK;
    }
    return s;
}

/* Linear RoPE scaling, under either the current or the older key. */
static cm_status read_rope_scaling(cm_model *m, cm_err *err)
{
    char key[128];
    gguf_str type = {0};
    float factor = 1.0f;
    cm_status s;

    m->hp.rope_freq_scale = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->hp.arch_name);
    s = gguf_get_str(&m->file, key, &type, err);
    if (s != CM_OK && s != CM_E_RANGE)
        return s;
    if (s == CM_OK && !gguf_str_eq(type, "none") && !gguf_str_eq(type, "linear"))
        return cm_fail(err, CM_E_UNSUPPORTED, "%s: unsupported rope scaling type '%.*s'",
                       m->path, (int)type.len, type.ptr);
    if (s == CM_OK && gguf_str_eq(type, "none"))
        return CM_OK;
    if ((s = get_hp_f32(m, "rope.scaling.factor", 0.0f, &factor, err)) != CM_OK)
        return s;
    if (factor == 0.0f && (s = get_hp_f32(m, "rope.scale_linear", 1.0f, &factor, err)) != CM_OK)
        return s;
    if (!(factor > 0.0f) || factor > 1e6f)
        return cm_fail(err, CM_E_FORMAT, "%s: bad rope scaling factor %g", m->path, factor);
    m->hp.rope_freq_scale = 1.0f / factor;
    return CM_OK;
}

static cm_status read_experts(cm_model *m, cm_err *err)
{
    cm_hparams *hp = &m->hp;
    char key[128];
    int norm = hp->expert_norm;
    cm_status s;
    if ((s = get_hp(m, "expert_count", 0, &hp->n_expert, err)) ||
        (s = get_hp(m, "expert_used_count", 0, &hp->n_expert_used, err)) ||
        (s = get_hp(m, "expert_feed_forward_length", hp->n_ff, &hp->n_ff_exp, err)) ||
        (s = get_hp(m, "expert_shared_feed_forward_length", 0, &hp->n_ff_shexp, err)))
        return s;
    snprintf(key, sizeof key, "%s.expert_weights_norm", hp->arch_name);
    s = gguf_get_bool(&m->file, key, &norm, err);
    if (s != CM_OK && s != CM_E_RANGE)
        return s;
    hp->expert_norm = norm;
    if (hp->n_expert == 0 && hp->n_expert_used == 0)
        return CM_OK;
    if (hp->n_expert < 1 || hp->n_expert > 4096 || hp->n_expert_used < 1 ||
        hp->n_expert_used > hp->n_expert || hp->n_ff_exp <= 0)
        return cm_fail(err, CM_E_FORMAT, "%s: bad expert counts (%d experts, %d used, ffn %d)",
                       m->path, hp->n_expert, hp->n_expert_used, hp->n_ff_exp);
    return CM_OK;
}

/* Norm epsilon under the key that matches the norm kind. */
static cm_status read_norm_eps(cm_model *m, cm_err *err)
{
    const char *key = m->hp.layer_norm ? "attention.layer_norm_epsilon"
                                       : "attention.layer_norm_rms_epsilon";
    return get_hp_f32(m, key, 1e-5f, &m->hp.norm_eps, err);
}

static cm_status read_hparams(cm_model *m, cm_err *err)
{
    cm_hparams *hp = &m->hp;
    gguf_str arch;
    cm_status s = gguf_get_str(&m->file, "general.architecture", &arch, err);
    if (s == CM_E_RANGE)
        return cm_fail(err, CM_E_FORMAT, "%s: missing general.architecture", m->path);
    if (s != CM_OK)
        return s;
    const arch_desc *d = find_arch(arch);
    if (!d)
        return cm_fail(err, CM_E_UNSUPPORTED,
                       "%s: unsupported architecture '%.*s' (supported: llama, qwen2, qwen3, qwen2moe, "
                       "qwen3moe, starcoder, phi2, starcoder2)",
                       m->path, (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    hp->arch = d->arch;
    hp->arch_name = d->name;
    hp->rope_neox = d->rope_neox;
    hp->use_rope = d->use_rope;
    hp->layer_norm = d->layer_norm;
    hp->gelu_mlp = d->gelu_mlp;
    hp->parallel_block = d->parallel_block;
    hp->expert_norm = d->expert_norm;
    if ((s = get_hp(m, "embedding_length", -1, &hp->n_embd, err)) ||
        (s = get_hp(m, "block_count", -1, &hp->n_layer, err)) ||
        (s = get_hp(m, "attention.head_count", -1, &hp->n_head, err)) ||
        (s = get_hp(m, "attention.head_count_kv", hp->n_head, &hp->n_head_kv, err)) ||
        (s = get_hp(m, "feed_forward_length", -1, &hp->n_ff, err)) ||
        (s = get_hp(m, "context_length", 2048, &hp->n_ctx_train, err)) ||
        (s = read_norm_eps(m, err)) || (s = read_experts(m, err)) ||
        (s = get_hp_f32(m, "rope.freq_base", 10000.0f, &hp->rope_base, err)) ||
        (s = read_rope_scaling(m, err)))
        return s;
    if (hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_head <= 0 || hp->n_head_kv <= 0 ||
        hp->n_ff <= 0 || hp->n_head % hp->n_head_kv != 0 || hp->n_layer > 4096)
        return cm_fail(err, CM_E_FORMAT,
                       "%s: inconsistent hyper-parameters (n_embd %d, layers %d, heads %d/%d, ffn %d)",
                       m->path, hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv, hp->n_ff);
    int def_hd = hp->n_embd / hp->n_head;
    if ((s = get_hp(m, "attention.key_length", def_hd, &hp->head_dim, err)) ||
        (s = get_hp(m, "attention.value_length", hp->head_dim, &hp->head_dim_v, err)) ||
        (s = get_hp(m, "rope.dimension_count", hp->head_dim, &hp->rope_dim, err)))
        return s;
    if (hp->head_dim <= 0 || hp->head_dim_v <= 0 || hp->rope_dim <= 0 ||
        hp->rope_dim > hp->head_dim || hp->rope_dim % 2 || !(hp->norm_eps > 0) ||
        !(hp->rope_base > 0))
        return cm_fail(err, CM_E_FORMAT,
                       "%s: inconsistent attention dims (head %d, value %d, rope %d, eps %g, base %g)",
                       m->path, hp->head_dim, hp->head_dim_v, hp->rope_dim, hp->norm_eps,
                       hp->rope_base);
    return CM_OK;
}

/* Finds name and checks its shape [ne0, ne1, ne2] (trailing ones implied)
 * and that its type is one we can compute with.  optional: absence is OK. */
static cm_status bind(cm_model *m, cm_tensor *t, const char *name, int optional,
                      const int64_t ne[3], cm_err *err)
{
    char tbuf[32];
    const gguf_tensor *g = cm_model_find_tensor(m, name);
    memset(t, 0, sizeof *t);
    if (!g) {
        if (optional)
            return CM_OK;
        return cm_fail(err, CM_E_FORMAT, "%s: missing tensor %s", m->path, name);
    }
    if (g->ne[0] != ne[0] || g->ne[1] != ne[1] || g->ne[2] != ne[2] || g->ne[3] != 1)
        return cm_fail(err, CM_E_FORMAT,
                       "%s: tensor %s has shape [%lld, %lld, %lld], expected [%lld, %lld, %lld]",
                       m->path, name, (long long)g->ne[0], (long long)g->ne[1],
                       (long long)g->ne[2], (long long)ne[0], (long long)ne[1], (long long)ne[2]);
    const cm_type_info *ti = cm_type_get(g->type);
    if (!ti || !ti->supported)
        return cm_fail(err, CM_E_UNSUPPORTED, "%s: tensor %s has unsupported type %s", m->path,
                       name, cm_type_name(g->type, tbuf));
    t->name = g->name.ptr; /* not NUL-terminated */
    t->type = (enum cm_type)g->type;
    t->n_dims = (int)g->n_dims;
    memcpy(t->ne, g->ne, sizeof t->ne);
    t->data = g->data;
    t->nbytes = g->nbytes;
    return CM_OK;
}

/* How the loader wants one tensor: where it goes, its name, its shape. */
typedef struct {
    cm_tensor *t;
    const char *suffix;
    int optional;
    int f32;  /* norms and biases are read as plain floats */
    int64_t ne[3];
} tensor_want;

static cm_status bind_all(cm_model *m, const char *prefix, const tensor_want *w, size_t n,
                          cm_err *err)
{
    for (size_t i = 0; i < n; i++) {
        char name[128];
        cm_status s;
        if (!w[i].t)
            continue;
        snprintf(name, sizeof name, "%s%s", prefix, w[i].suffix);
        if ((s = bind(m, w[i].t, name, w[i].optional, w[i].ne, err)))
            return s;
        if (w[i].f32 && w[i].t->data && w[i].t->type != CM_TYPE_F32)
            return cm_fail(err, CM_E_UNSUPPORTED, "%s: tensor %s must be f32 (norms and biases)",
                           m->path, name);
    }
    return CM_OK;
}

#define NWANT(a) (sizeof(a) / sizeof((a)[0]))

static cm_status bind_attention(cm_model *m, cm_layer *L, const char *pre, cm_err *err)
{
    const cm_hparams *hp = &m->hp;
    int64_t E = hp->n_embd, q = (int64_t)hp->n_head * hp->head_dim;
    int64_t k = (int64_t)hp->n_head_kv * hp->head_dim, v = (int64_t)hp->n_head_kv * hp->head_dim_v;
    int64_t o = (int64_t)hp->n_head * hp->head_dim_v;
    const arch_desc *d = find_arch((gguf_str){hp->arch_name, strlen(hp->arch_name)});
    char name[128];
    snprintf(name, sizeof name, "%sattn_qkv.weight", pre);
    int fused = cm_model_find_tensor(m, name) != NULL;
    tensor_want w[] = {
        {&L->attn_norm, "attn_norm.weight", 0, 1, {E, 1, 1}},
        {&L->attn_norm_b, "attn_norm.bias", !hp->layer_norm, 1, {E, 1, 1}},
        {fused ? &L->wqkv : NULL, "attn_qkv.weight", 0, 0, {E, q + k + v, 1}},
        {fused ? &L->bqkv : NULL, "attn_qkv.bias", 1, 1, {q + k + v, 1, 1}},
        {fused ? NULL : &L->wq, "attn_q.weight", 0, 0, {E, q, 1}},
        {fused ? NULL : &L->wk, "attn_k.weight", 0, 0, {E, k, 1}},
        {fused ? NULL : &L->wv, "attn_v.weight", 0, 0, {E, v, 1}},
        {fused ? NULL : &L->bq, "attn_q.bias", !d->qkv_bias, 1, {q, 1, 1}},
        {fused ? NULL : &L->bk, "attn_k.bias", !d->qkv_bias, 1, {k, 1, 1}},
        {fused ? NULL : &L->bv, "attn_v.bias", !d->qkv_bias, 1, {v, 1, 1}},
        {&L->wo, "attn_output.weight", 0, 0, {o, E, 1}},
        {&L->bo, "attn_output.bias", 1, 1, {E, 1, 1}},
        {&L->q_norm, "attn_q_norm.weight", !d->qk_norm, 1, {hp->head_dim, 1, 1}},
        {&L->k_norm, "attn_k_norm.weight", !d->qk_norm, 1, {hp->head_dim, 1, 1}},
    };
    return bind_all(m, pre, w, NWANT(w), err);
}

static cm_status bind_ffn(cm_model *m, cm_layer *L, const char *pre, cm_err *err)
{
    const cm_hparams *hp = &m->hp;
    int64_t E = hp->n_embd, F = hp->n_ff, X = hp->n_expert, FE = hp->n_ff_exp;
    int64_t FS = hp->n_ff_shexp;
    int dense = hp->n_expert == 0, norm = !hp->parallel_block;
    tensor_want w[] = {
        {norm ? &L->ffn_norm : NULL, "ffn_norm.weight", 0, 1, {E, 1, 1}},
        {norm ? &L->ffn_norm_b : NULL, "ffn_norm.bias", !hp->layer_norm, 1, {E, 1, 1}},
        {dense && !hp->gelu_mlp ? &L->w_gate : NULL, "ffn_gate.weight", 0, 0, {E, F, 1}},
        {dense ? &L->w_up : NULL, "ffn_up.weight", 0, 0, {E, F, 1}},
        {dense ? &L->w_down : NULL, "ffn_down.weight", 0, 0, {F, E, 1}},
        {dense ? &L->b_up : NULL, "ffn_up.bias", 1, 1, {F, 1, 1}},
        {dense ? &L->b_down : NULL, "ffn_down.bias", 1, 1, {E, 1, 1}},
        {dense ? NULL : &L->gate_inp, "ffn_gate_inp.weight", 0, 0, {E, X, 1}},
        {dense ? NULL : &L->gate_exps, "ffn_gate_exps.weight", 0, 0, {E, FE, X}},
        {dense ? NULL : &L->up_exps, "ffn_up_exps.weight", 0, 0, {E, FE, X}},
        {dense ? NULL : &L->down_exps, "ffn_down_exps.weight", 0, 0, {FE, E, X}},
        {FS ? &L->gate_inp_shexp : NULL, "ffn_gate_inp_shexp.weight", 1, 0, {E, 1, 1}},
        {FS ? &L->gate_shexp : NULL, "ffn_gate_shexp.weight", 0, 0, {E, FS, 1}},
        {FS ? &L->up_shexp : NULL, "ffn_up_shexp.weight", 0, 0, {E, FS, 1}},
        {FS ? &L->down_shexp : NULL, "ffn_down_shexp.weight", 0, 0, {FS, E, 1}},
    };
    return bind_all(m, pre, w, NWANT(w), err);
}

/* A shared expert may exist without its size in the metadata: take it
 * from the tensor, as its shape is the authority. */
static void detect_shared_expert(cm_model *m)
{
    const gguf_tensor *t = cm_model_find_tensor(m, "blk.0.ffn_up_shexp.weight");
    if (m->hp.n_expert > 0 && m->hp.n_ff_shexp == 0 && t && t->ne[1] > 0 && t->ne[1] < (1 << 24))
        m->hp.n_ff_shexp = (int)t->ne[1];
}

static cm_status bind_layer(cm_model *m, int il, cm_err *err)
{
    char pre[32];
    cm_status s;
    snprintf(pre, sizeof pre, "blk.%d.", il);
    if ((s = bind_attention(m, &m->layers[il], pre, err)))
        return s;
    return bind_ffn(m, &m->layers[il], pre, err);
}

static cm_status bind_globals(cm_model *m, cm_err *err)
{
    cm_hparams *hp = &m->hp;
    const gguf_tensor *emb = cm_model_find_tensor(m, "token_embd.weight");
    m->tied_output = 0;
    if (!emb)
        return cm_fail(err, CM_E_FORMAT, "%s: missing tensor token_embd.weight", m->path);
    if (emb->ne[1] <= 0 || emb->ne[1] > (1 << 24))
        return cm_fail(err, CM_E_FORMAT, "%s: token_embd.weight has a bad vocabulary size",
                       m->path);
    hp->n_vocab = (int)emb->ne[1];
    int64_t E = hp->n_embd, V = hp->n_vocab;
    tensor_want w[] = {
        {&m->tok_embd, "token_embd.weight", 0, 0, {E, V, 1}},
        {&m->pos_embd, "position_embd.weight", hp->use_rope, 0, {E, hp->n_ctx_train, 1}},
        {&m->out_norm, "output_norm.weight", 0, 1, {E, 1, 1}},
        {&m->out_norm_b, "output_norm.bias", !hp->layer_norm, 1, {E, 1, 1}},
        {&m->output, "output.weight", 1, 0, {E, V, 1}},
        {&m->output_b, "output.bias", 1, 1, {V, 1, 1}},
    };
    cm_status s = bind_all(m, "", w, NWANT(w), err);
    if (s)
        return s;
    if (!m->output.data) {
        m->output = m->tok_embd;
        m->tied_output = 1;
    }
    detect_shared_expert(m);
    return CM_OK;
}

static cm_status load_tokenizer(cm_model *m, cm_err *err)
{
    cm_status s = cm_tokenizer_load(&m->file, &m->tok, err);
    if (s == CM_E_RANGE) { /* no tokenizer: fine for `logits` on ids */
        m->tok = NULL;
        return CM_OK;
    }
    if (s != CM_OK)
        return s;
    if (cm_tok_n_vocab(m->tok) > m->hp.n_vocab)
        return cm_fail(err, CM_E_FORMAT, "%s: tokenizer has %d tokens but the model only %d",
                       m->path, cm_tok_n_vocab(m->tok), m->hp.n_vocab);
    return CM_OK;
}

static cm_status bind_tensors(cm_model *m, cm_err *err)
{
    cm_status s = bind_globals(m, err);
    if (s)
        return s;
    if (!m->layers)
        m->layers = calloc((size_t)m->hp.n_layer, sizeof *m->layers);
    if (!m->layers)
        return cm_fail(err, CM_E_NOMEM, "%s: out of memory", m->path);
    for (int il = 0; il < m->hp.n_layer; il++)
        if ((s = bind_layer(m, il, err)))
            return s;
    return CM_OK;
}

/* Drops the pages of a member's own tensors; shared ones stay.  Only
 * whole pages inside each tensor are released, so neighbours are safe. */
static void release_member(const cm_model *m, const char *member)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), plen = strlen(member);
    for (uint64_t i = 0; i < m->file.n_tensors; i++) {
        const gguf_tensor *t = &m->file.tensors[i];
        if (t->name.len <= plen || memcmp(t->name.ptr, member, plen) || t->name.ptr[plen] != '/')
            continue;
        uintptr_t a = ((uintptr_t)t->data + page - 1) & ~(uintptr_t)(page - 1);
        uintptr_t b = ((uintptr_t)t->data + t->nbytes) & ~(uintptr_t)(page - 1);
        if (b > a)
            madvise((void *)a, b - a, MADV_DONTNEED);
    }
}

cm_status cm_model_select_expert(cm_model *m, const char *expert, cm_err *err)
{
    char old[sizeof m->expert];
    if (!m->is_pack)
        return cm_fail(err, CM_E_RANGE, "%s is not a language-expert pack", m->path);
    if (!strcmp(expert, m->expert))
        return CM_OK;
    if (!cm_pack_has_member(&m->file, expert))
        return cm_fail(err, CM_E_RANGE, "%s has no expert '%s'", m->path, expert);
    snprintf(old, sizeof old, "%s", m->expert);
    snprintf(m->expert, sizeof m->expert, "%s", expert);
    cm_status s = bind_tensors(m, err);
    if (s == CM_OK && !m->keep_members)
        release_member(m, old);
    return s;
}

cm_status cm_model_load(const char *path, cm_model *m, cm_err *err)
{
    cm_status s;
    memset(m, 0, sizeof *m);
    snprintf(m->path, sizeof m->path, "%s", path);
    if ((s = gguf_open(path, &m->file, err)) || (s = read_hparams(m, err)) ||
        (s = cm_pack_default_member(&m->file, path, &m->is_pack, m->expert, sizeof m->expert,
                                    err)) ||
        (s = bind_tensors(m, err)) || (s = load_tokenizer(m, err)))
        goto fail;
    return CM_OK;
fail:
    cm_model_free(m);
    return s;
}

void cm_model_free(cm_model *m)
{
    if (m->tok)
        cm_tokenizer_free(m->tok);
    free(m->layers);
    gguf_close(&m->file);
    memset(m, 0, sizeof *m);
}

static uint64_t weight_bytes(const cm_tensor *t, const cm_hparams *hp)
{
    if (!t->data)
        return 0;
    /* stacked experts: only the ones a token is routed to are read */
    if (t->ne[2] > 1 && hp->n_expert > 0 && t->ne[2] == hp->n_expert)
        return t->nbytes / (uint64_t)hp->n_expert * (uint64_t)hp->n_expert_used;
    return t->nbytes;
}

uint64_t cm_model_bytes_per_token(const cm_model *m)
{
    const cm_hparams *hp = &m->hp;
    uint64_t total = m->tok_embd.nbytes / (uint64_t)hp->n_vocab; /* one row */
    const cm_tensor *g[] = {&m->out_norm, &m->out_norm_b, &m->output, &m->output_b};
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
        total += weight_bytes(g[i], hp);
    if (m->pos_embd.data)
        total += m->pos_embd.nbytes / (uint64_t)hp->n_ctx_train;
    for (int il = 0; il < hp->n_layer; il++) {
        const cm_tensor *t = (const cm_tensor *)&m->layers[il];
        for (size_t k = 0; k < sizeof(cm_layer) / sizeof(cm_tensor); k++)
            total += weight_bytes(&t[k], hp);
    }
    return total;
}
