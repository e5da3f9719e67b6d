/* convert.c - Hugging Face folder -> GGUF (see convert.h).
 *
 * Naming follows llama.cpp's convert_hf_to_gguf.py and gguf-py (metadata
 * keys, tensor names, which tensors stay F32, expert stacking order, the
 * q/k permutation of the "llama" architecture), re-implemented from its
 * public description so that our files and llama.cpp's are interchangeable.
 *
 * The conversion is planned completely first (every source tensor mapped,
 * its shape checked against config.json, every required tensor present)
 * and only then written, streaming one tensor at a time. */
#define _GNU_SOURCE
#include "convert/convert.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "util/json.h"
#include "quant/quant.h"
#include "convert/quantize.h"
#include "formats/safetensors.h"

/* ------------------------------------------------------------ tables */

enum {
    A_LLAMA = 1, A_QWEN2 = 2, A_QWEN3 = 4, A_QWEN2MOE = 8, A_QWEN3MOE = 16,
    A_STARCODER = 32, A_PHI2 = 64, A_STARCODER2 = 128
};
#define A_LQ (A_LLAMA | A_QWEN2 | A_QWEN3 | A_QWEN2MOE | A_QWEN3MOE)
#define A_DEC (A_LQ | A_STARCODER2 | A_PHI2)
#define A_QMOE (A_QWEN2MOE | A_QWEN3MOE)
#define A_SC (A_STARCODER | A_STARCODER2)

typedef enum { S_BASE, S_STARCODER, S_PHI2 } kv_style;

typedef struct {
    const char *hf;          /* config.json architectures[0] */
    const char *model_type;  /* config.json model_type, the fallback */
    const char *gguf;        /* general.architecture */
    unsigned id;
    int permute;             /* q/k rows reordered for llama's rotary layout */
    kv_style style;          /* which of llama.cpp's key sets */
    const char *prefix;      /* of per-layer tensor names */
} arch_info;

static const arch_info ARCHS[] = {
    {"LlamaForCausalLM", "llama", "llama", A_LLAMA, 1, S_BASE, "model.layers."},
    {"MistralForCausalLM", "mistral", "llama", A_LLAMA, 1, S_BASE, "model.layers."},
    {"MixtralForCausalLM", "mixtral", "llama", A_LLAMA, 1, S_BASE, "model.layers."},
    {"Qwen2ForCausalLM", "qwen2", "qwen2", A_QWEN2, 0, S_BASE, "model.layers."},
    {"Qwen3ForCausalLM", "qwen3", "qwen3", A_QWEN3, 0, S_BASE, "model.layers."},
    {"Qwen2MoeForCausalLM", "qwen2_moe", "qwen2moe", A_QWEN2MOE, 0, S_BASE, "model.layers."},
    {"Qwen3MoeForCausalLM", "qwen3_moe", "qwen3moe", A_QWEN3MOE, 0, S_BASE, "model.layers."},
    {"GPTBigCodeForCausalLM", "gpt_bigcode", "starcoder", A_STARCODER, 0, S_STARCODER,
     "transformer.h."},
    {"PhiForCausalLM", "phi", "phi2", A_PHI2, 0, S_PHI2, "model.layers."},
    {"Starcoder2ForCausalLM", "starcoder2", "starcoder2", A_STARCODER2, 0, S_BASE,
     "model.layers."},
};

/* Symbolic sizes that config.json determines. */
enum { D_NONE, D_VOCAB, D_EMBD, D_Q, D_KV, D_KVV, D_QV, D_FF, D_FFE, D_FFS, D_NEXP, D_HD,
       D_ONE, D_QKV, D_CTX };

enum { F_LAYER = 1, F_PERM_Q = 2, F_PERM_K = 4, F_EXPERT = 8, F_REQ = 16 };
#define L F_LAYER

typedef struct {
    const char *hf;     /* full name, or the part after "<prefix>N."; '*' = expert id */
    const char *gguf;   /* full name, or the part after "blk.N." */
    unsigned char d0, d1; /* HF (PyTorch) shape [d0] or [d0, d1] */
    unsigned char flags;
    unsigned archs;
    int slot;           /* experts: emission order of the three stacked tensors */
} map_entry;

static const map_entry MAP[] = {
    {"model.embed_tokens.weight", "token_embd.weight", D_VOCAB, D_EMBD, F_REQ, A_DEC, 0},
    {"lm_head.weight", "output.weight", D_VOCAB, D_EMBD, 0, A_DEC | A_STARCODER, 0},
    {"lm_head.bias", "output.bias", D_VOCAB, D_NONE, 0, A_PHI2, 0},
    {"model.norm.weight", "output_norm.weight", D_EMBD, D_NONE, F_REQ, A_LQ | A_STARCODER2, 0},
    {"model.norm.bias", "output_norm.bias", D_EMBD, D_NONE, 0, A_STARCODER2, 0},
    {"model.final_layernorm.weight", "output_norm.weight", D_EMBD, D_NONE, F_REQ, A_PHI2, 0},
    {"model.final_layernorm.bias", "output_norm.bias", D_EMBD, D_NONE, 0, A_PHI2, 0},
    {"transformer.wte.weight", "token_embd.weight", D_VOCAB, D_EMBD, F_REQ, A_STARCODER, 0},
    {"transformer.wpe.weight", "position_embd.weight", D_CTX, D_EMBD, F_REQ, A_STARCODER, 0},
    {"transformer.ln_f.weight", "output_norm.weight", D_EMBD, D_NONE, F_REQ, A_STARCODER, 0},
    {"transformer.ln_f.bias", "output_norm.bias", D_EMBD, D_NONE, 0, A_STARCODER, 0},

    {"input_layernorm.weight", "attn_norm.weight", D_EMBD, D_NONE, L | F_REQ, A_DEC, 0},
    {"input_layernorm.bias", "attn_norm.bias", D_EMBD, D_NONE, L, A_STARCODER2 | A_PHI2, 0},
    {"self_attn.q_proj.weight", "attn_q.weight", D_Q, D_EMBD, L | F_REQ | F_PERM_Q, A_DEC, 0},
    {"self_attn.q_proj.bias", "attn_q.bias", D_Q, D_NONE, L | F_PERM_Q, A_DEC, 0},
    {"self_attn.k_proj.weight", "attn_k.weight", D_KV, D_EMBD, L | F_REQ | F_PERM_K, A_DEC, 0},
    {"self_attn.k_proj.bias", "attn_k.bias", D_KV, D_NONE, L | F_PERM_K, A_DEC, 0},
    {"self_attn.v_proj.weight", "attn_v.weight", D_KVV, D_EMBD, L | F_REQ, A_DEC, 0},
    {"self_attn.v_proj.bias", "attn_v.bias", D_KVV, D_NONE, L, A_DEC, 0},
    {"self_attn.o_proj.weight", "attn_output.weight", D_EMBD, D_QV, L | F_REQ, A_LQ | A_STARCODER2, 0},
    {"self_attn.o_proj.bias", "attn_output.bias", D_EMBD, D_NONE, L, A_LQ | A_STARCODER2, 0},
    {"self_attn.dense.weight", "attn_output.weight", D_EMBD, D_QV, L | F_REQ, A_PHI2, 0},
    {"self_attn.dense.bias", "attn_output.bias", D_EMBD, D_NONE, L, A_PHI2, 0},
    {"self_attn.q_norm.weight", "attn_q_norm.weight", D_HD, D_NONE, L | F_REQ, A_QWEN3 | A_QWEN3MOE, 0},
    {"self_attn.k_norm.weight", "attn_k_norm.weight", D_HD, D_NONE, L | F_REQ, A_QWEN3 | A_QWEN3MOE, 0},
    {"post_attention_layernorm.weight", "ffn_norm.weight", D_EMBD, D_NONE, L | F_REQ, A_LQ | A_STARCODER2, 0},
    {"post_attention_layernorm.bias", "ffn_norm.bias", D_EMBD, D_NONE, L, A_STARCODER2, 0},
    {"mlp.gate_proj.weight", "ffn_gate.weight", D_FF, D_EMBD, L, A_LQ, 0},
    {"mlp.up_proj.weight", "ffn_up.weight", D_FF, D_EMBD, L, A_LQ, 0},
    {"mlp.down_proj.weight", "ffn_down.weight", D_EMBD, D_FF, L, A_LQ, 0},
    {"mlp.c_fc.weight", "ffn_up.weight", D_FF, D_EMBD, L, A_SC, 0},
    {"mlp.c_fc.bias", "ffn_up.bias", D_FF, D_NONE, L, A_SC, 0},
    {"mlp.c_proj.weight", "ffn_down.weight", D_EMBD, D_FF, L, A_SC, 0},
    {"mlp.c_proj.bias", "ffn_down.bias", D_EMBD, D_NONE, L, A_SC, 0},
    {"mlp.fc1.weight", "ffn_up.weight", D_FF, D_EMBD, L, A_PHI2, 0},
    {"mlp.fc1.bias", "ffn_up.bias", D_FF, D_NONE, L, A_PHI2, 0},
    {"mlp.fc2.weight", "ffn_down.weight", D_EMBD, D_FF, L, A_PHI2, 0},
    {"mlp.fc2.bias", "ffn_down.bias", D_EMBD, D_NONE, L, A_PHI2, 0},
    /* Mixtral: stacked as gate (w1), down (w2), up (w3) */
    {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight", D_NEXP, D_EMBD, L, A_LLAMA, 0},
    {"block_sparse_moe.experts.*.w1.weight", "ffn_gate_exps.weight", D_FFE, D_EMBD, L | F_EXPERT, A_LLAMA, 0},
    {"block_sparse_moe.experts.*.w2.weight", "ffn_down_exps.weight", D_EMBD, D_FFE, L | F_EXPERT, A_LLAMA, 1},
    {"block_sparse_moe.experts.*.w3.weight", "ffn_up_exps.weight", D_FFE, D_EMBD, L | F_EXPERT, A_LLAMA, 2},
    /* Qwen MoE: stacked as down, gate, up */
    {"mlp.gate.weight", "ffn_gate_inp.weight", D_NEXP, D_EMBD, L, A_QMOE, 0},
    {"mlp.experts.*.down_proj.weight", "ffn_down_exps.weight", D_EMBD, D_FFE, L | F_EXPERT, A_QMOE, 0},
    {"mlp.experts.*.gate_proj.weight", "ffn_gate_exps.weight", D_FFE, D_EMBD, L | F_EXPERT, A_QMOE, 1},
    {"mlp.experts.*.up_proj.weight", "ffn_up_exps.weight", D_FFE, D_EMBD, L | F_EXPERT, A_QMOE, 2},
    {"mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight", D_FFS, D_EMBD, L, A_QWEN2MOE, 0},
    {"mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight", D_FFS, D_EMBD, L, A_QWEN2MOE, 0},
    {"mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight", D_EMBD, D_FFS, L, A_QWEN2MOE, 0},
    {"mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight", D_ONE, D_EMBD, L, A_QWEN2MOE, 0},
    /* GPT-BigCode (StarCoder 1) */
    {"ln_1.weight", "attn_norm.weight", D_EMBD, D_NONE, L | F_REQ, A_STARCODER, 0},
    {"ln_1.bias", "attn_norm.bias", D_EMBD, D_NONE, L, A_STARCODER, 0},
    {"attn.c_attn.weight", "attn_qkv.weight", D_QKV, D_EMBD, L | F_REQ, A_STARCODER, 0},
    {"attn.c_attn.bias", "attn_qkv.bias", D_QKV, D_NONE, L, A_STARCODER, 0},
    {"attn.c_proj.weight", "attn_output.weight", D_EMBD, D_QV, L | F_REQ, A_STARCODER, 0},
    {"attn.c_proj.bias", "attn_output.bias", D_EMBD, D_NONE, L, A_STARCODER, 0},
    {"ln_2.weight", "ffn_norm.weight", D_EMBD, D_NONE, L | F_REQ, A_STARCODER, 0},
    {"ln_2.bias", "ffn_norm.bias", D_EMBD, D_NONE, L, A_STARCODER, 0},
};
#undef L

/* Every target of quantize.h: f32, f16, bf16, q8_0 and the llama-quantize
 * types (q4_0 ... q6_k, q4_k_m, ...). */
int cm_convert_type(const char *name, uint32_t *type, uint32_t *file_type)
{
    const cm_qmix *m = cm_qmix_find(name);
    if (!m)
        return -1;
    if (type)
        *type = m->base;
    if (file_type)
        *file_type = m->ftype;
    return 0;
}

/* The target: o->mix by name, else the one a bare type names ("q4_K" is
 * llama.cpp's alias of q4_k_m). */
static const cm_qmix *target_mix(const cm_convert_opts *o)
{
    char tb[32];
    return cm_qmix_find(o->mix ? o->mix : cm_type_name(o->type, tb));
}

/* f32, f16, bf16 and q8_0 are the converter's own types (gguf-py's rules);
 * the others are llama-quantize's, with its per-tensor mix. */
static int uses_policy(const cm_qmix *m)
{
    return m->base != CM_TYPE_F32 && m->base != CM_TYPE_F16 && m->base != CM_TYPE_BF16 &&
           m->base != CM_TYPE_Q8_0;
}

/* ------------------------------------------------------------ state */

typedef struct {
    int64_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_ctx;
    int64_t n_expert, n_expert_used, n_ff_exp, n_ff_shexp;
    int has_head_dim, has_theta, has_rms, has_ln, has_ctx, has_ff_exp;
    double theta, rms_eps, ln_eps, rot_pct;
    const json_node *rope;     /* rope_parameters / rope_scaling object or NULL */
    const char *rope_type;
} hparams;

typedef struct {
    char name[96];
    const char *hf;            /* source name for messages */
    uint32_t type, n_dims;
    int64_t ne[3];
    const st_tensor *one;      /* the source, or */
    const st_tensor **srcs;    /* n_src expert slices (owned) */
    int n_src;
    int perm_heads;            /* > 0: undo HF's rotary row order over this many heads */
    const float *gen;          /* generated F32 data instead (rope_freqs) */
    const st_model *st;        /* to release source pages once written */
    int fallback;
} out_t;

typedef struct {
    const cm_convert_opts *o;
    const cm_qmix *mix;        /* the target */
    const arch_info *arch;
    hparams hp;
    json_doc cfg;
    st_model st;
    out_t *outs;
    size_t n_out, cap_out;
    const st_tensor **experts; /* [layer][slot][expert] while stacking */
    int *exp_count;            /* per layer */
    float *rope_freqs;
} conv;

static void logf_(const conv *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(const conv *c, const char *fmt, ...)
{
    if (!c->o->log)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(c->o->log, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------ config */

static const arch_info *pick_arch(const json_doc *d, cm_err *err)
{
    const json_node *root = json_root(d), *a = json_get(d, root, "architectures");
    const char *hf = a && a->type == JSON_ARRAY && a->n ? json_first(d, a)->str : NULL;
    const char *mt = json_get_str(d, root, "model_type");
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (hf && !strcmp(hf, ARCHS[i].hf))
            return &ARCHS[i];
    for (size_t i = 0; !hf && mt && i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (!strcmp(mt, ARCHS[i].model_type))
            return &ARCHS[i];
    cm_fail(err, CM_E_UNSUPPORTED, "unsupported architecture %s%s%s (supported: llama, mistral, "
            "mixtral, qwen2, qwen3, qwen2_moe, qwen3_moe, gpt_bigcode, phi, starcoder2)",
            hf ? hf : mt ? mt : "(config.json names none)", hf && mt ? " / model_type " : "",
            hf && mt ? mt : "");
    return NULL;
}

/* First of keys present in config.json (null counts as absent). */
static int cfg_int(const conv *c, const char *const *keys, int64_t *out)
{
    for (; *keys; keys++)
        if (json_get_int(&c->cfg, json_root(&c->cfg), *keys, out))
            return 1;
    return 0;
}

static int cfg_num(const conv *c, const char *const *keys, double *out)
{
    for (; *keys; keys++)
        if (json_get_num(&c->cfg, json_root(&c->cfg), *keys, out))
            return 1;
    return 0;
}

#define KEYS(...) ((const char *const[]){__VA_ARGS__, NULL})

static cm_status need_int(const conv *c, const char *const *keys, int64_t *out, cm_err *err)
{
    if (!cfg_int(c, keys, out))
        return cm_fail(err, CM_E_FORMAT, "%s/config.json has no %s", c->o->hf_dir, keys[0]);
    if (*out < 1 || *out > ((int64_t)1 << 31))
        return cm_fail(err, CM_E_FORMAT, "%s/config.json: %s = %lld is out of range",
                       c->o->hf_dir, keys[0], (long long)*out);
    return CM_OK;
}

/* rope_theta and friends: transformers 5 nests them in rope_parameters. */
static void read_rope(conv *c)
{
    hparams *h = &c->hp;
    const json_node *root = json_root(&c->cfg);
    h->rope = json_get_val(&c->cfg, root, "rope_parameters");
    if (!h->rope || h->rope->type != JSON_OBJECT)
        h->rope = json_get_val(&c->cfg, root, "rope_scaling");
    if (h->rope && h->rope->type != JSON_OBJECT)
        h->rope = NULL;
    h->has_theta = json_get_num(&c->cfg, h->rope, "rope_theta", &h->theta) ||
                   cfg_num(c, KEYS("rope_theta", "rotary_emb_base"), &h->theta);
    h->rot_pct = 1.0;
    if (!json_get_num(&c->cfg, h->rope, "partial_rotary_factor", &h->rot_pct))
        cfg_num(c, KEYS("partial_rotary_factor"), &h->rot_pct);
    h->rope_type = json_get_str(&c->cfg, h->rope, "rope_type");
    if (!h->rope_type)
        h->rope_type = json_get_str(&c->cfg, h->rope, "type");
}

static cm_status read_sizes(conv *c, cm_err *err)
{
    hparams *h = &c->hp;
    cm_status s;
    if ((s = need_int(c, KEYS("hidden_size", "n_embd", "dim"), &h->n_embd, err)) ||
        (s = need_int(c, KEYS("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
                      &h->n_layer, err)) ||
        (s = need_int(c, KEYS("num_attention_heads", "n_head", "n_heads"), &h->n_head, err)))
        return s;
    if (!cfg_int(c, KEYS("vocab_size"), &h->n_vocab))
        h->n_vocab = -1; /* taken from the embedding table */
    if (!cfg_int(c, KEYS("num_key_value_heads", "n_kv_heads"), &h->n_head_kv))
        h->n_head_kv = h->n_head;
    if (c->arch->style == S_STARCODER) {
        int mq = 1;
        json_get_bool(&c->cfg, json_root(&c->cfg), "multi_query", &mq);
        h->n_head_kv = mq ? 1 : h->n_head;
    }
    h->has_head_dim = cfg_int(c, KEYS("head_dim"), &h->head_dim);
    if (!h->has_head_dim) {
        if (h->n_embd % h->n_head)
            return cm_fail(err, CM_E_FORMAT, "config.json: hidden_size %lld is not a multiple of "
                           "num_attention_heads %lld", (long long)h->n_embd, (long long)h->n_head);
        h->head_dim = h->n_embd / h->n_head;
    }
    if (h->n_head_kv < 1 || h->n_head % h->n_head_kv || h->head_dim < 1 || h->head_dim > 65536)
        return cm_fail(err, CM_E_FORMAT, "config.json: %lld heads, %lld KV heads of size %lld "
                       "do not fit together", (long long)h->n_head, (long long)h->n_head_kv,
                       (long long)h->head_dim);
    if (!cfg_int(c, KEYS("intermediate_size", "n_inner", "hidden_dim"), &h->n_ff)) {
        if (c->arch->style == S_BASE)
            return cm_fail(err, CM_E_FORMAT, "%s/config.json has no intermediate_size",
                           c->o->hf_dir);
        h->n_ff = 4 * h->n_embd; /* GPT-2 style default */
    }
    h->has_ctx = cfg_int(c, KEYS("max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                 "max_sequence_length", "model_max_length"), &h->n_ctx);
    if (h->n_ff < 1 || h->n_ff > ((int64_t)1 << 31) || (h->has_ctx && h->n_ctx < 1) ||
        h->n_vocab == 0 || h->n_vocab < -1 || h->n_vocab > ((int64_t)1 << 31))
        return cm_fail(err, CM_E_FORMAT, "%s/config.json: vocab_size, intermediate_size or "
                       "max_position_embeddings is out of range", c->o->hf_dir);
    return CM_OK;
}

static cm_status read_hparams(conv *c, cm_err *err)
{
    hparams *h = &c->hp;
    cm_status s = read_sizes(c, err);
    if (s)
        return s;
    read_rope(c);
    h->has_rms = cfg_num(c, KEYS("rms_norm_eps", "norm_eps"), &h->rms_eps);
    h->has_ln = cfg_num(c, KEYS("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"),
                        &h->ln_eps);
    if (!cfg_int(c, KEYS("num_local_experts", "num_experts"), &h->n_expert))
        h->n_expert = 0;
    if (!cfg_int(c, KEYS("num_experts_per_tok", "num_experts_per_token"), &h->n_expert_used))
        h->n_expert_used = 0;
    h->has_ff_exp = cfg_int(c, KEYS("moe_intermediate_size"), &h->n_ff_exp);
    if (!h->has_ff_exp)
        h->n_ff_exp = h->n_ff; /* Mixtral's experts are intermediate_size wide */
    if (!cfg_int(c, KEYS("shared_expert_intermediate_size"), &h->n_ff_shexp))
        h->n_ff_shexp = 0;
    if (h->n_expert < 0 || h->n_expert > 4096 || h->n_expert_used < 0 ||
        h->n_expert_used > h->n_expert)
        return cm_fail(err, CM_E_FORMAT, "config.json: %lld experts with %lld used per token",
                       (long long)h->n_expert, (long long)h->n_expert_used);
    if (c->arch->style != S_BASE && !h->has_ln)
        return cm_fail(err, CM_E_FORMAT, "%s/config.json has no layer_norm_epsilon",
                       c->o->hf_dir);
    if (c->arch->style == S_STARCODER && !h->has_ctx)
        return cm_fail(err, CM_E_FORMAT, "%s/config.json has no n_positions", c->o->hf_dir);
    return CM_OK;
}

/* ------------------------------------------------------------ planning */

static int64_t dim_value(const hparams *h, int d)
{
    switch (d) {
    case D_VOCAB: return h->n_vocab;
    case D_EMBD: return h->n_embd;
    case D_Q: return h->n_head * h->head_dim;
    case D_KV: return h->n_head_kv * h->head_dim;
    case D_KVV: return h->n_head_kv * h->head_dim;
    case D_QV: return h->n_head * h->head_dim;
    case D_FF: return h->n_ff;
    case D_FFE: return h->n_ff_exp;
    case D_FFS: return h->n_ff_shexp;
    case D_NEXP: return h->n_expert;
    case D_HD: return h->head_dim;
    case D_ONE: return 1;
    case D_QKV: return (h->n_head + 2 * h->n_head_kv) * h->head_dim;
    case D_CTX: return h->has_ctx ? h->n_ctx : -1;
    default: return 0;
    }
}

static void fmt_shape(char *buf, size_t cap, const int64_t *dims, int n)
{
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ", %lld" : "%lld", (long long)dims[i]);
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
}

static cm_status check_shape(const conv *c, const map_entry *e, const st_tensor *t, cm_err *err)
{
    int nd = e->d1 ? 2 : 1;
    int64_t want[2] = {dim_value(&c->hp, e->d0), e->d1 ? dim_value(&c->hp, e->d1) : 0};
    char a[200], b[200];
    if (t->n_dims == nd && t->shape[0] == want[0] && (nd == 1 || t->shape[1] == want[1]))
        return st_is_float(t->dtype) ? CM_OK
                                     : cm_fail(err, CM_E_UNSUPPORTED, "tensor %s has dtype %s; "
                                               "only F32, F16, BF16 and F64 weights convert",
                                               t->name, st_dtype_name(t->dtype));
    fmt_shape(a, sizeof a, t->shape, t->n_dims);
    fmt_shape(b, sizeof b, want, nd);
    return cm_fail(err, CM_E_FORMAT, "tensor %s has shape %s but config.json implies %s", t->name,
                   a, b);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The type a tensor is stored in for the converter's own types: llama.cpp
 * keeps norms, biases, 1-D tensors, routers and position embeddings F32
 * whatever was asked, and rows that do not fill whole blocks F16. */
static uint32_t pick_type(const conv *c, const out_t *o, int *fallback)
{
    const char *n = o->name;
    uint32_t t = c->mix->base;
    *fallback = 0;
    if (o->n_dims <= 1 || ends_with(n, "_norm.weight") || !ends_with(n, ".weight") ||
        ends_with(n, "ffn_gate_inp.weight") || ends_with(n, "ffn_gate_inp_shexp.weight") ||
        !strcmp(n, "position_embd.weight"))
        return CM_TYPE_F32;
    if (cm_row_bytes(t, o->ne[0]) == 0) {
        *fallback = 1;
        return CM_TYPE_F16; /* llama.cpp's converter falls back to F16 too */
    }
    return t;
}

/* The llama-quantize types: the F32 file the converter would write, then
 * quantize.h's policy (the output projection q6_K, the mixes' extra bits,
 * llama.cpp's fallbacks). */
static cm_status policy_types(conv *c, cm_err *err)
{
    cm_qmodel m = {.n_layer = (int)c->hp.n_layer, .n_head = (int)c->hp.n_head,
                   .n_head_kv = (int)c->hp.n_head_kv, .n_expert = (int)c->hp.n_expert};
    snprintf(m.arch, sizeof m.arch, "%s", c->arch->gguf);
    cm_qtensor *q = calloc(c->n_out ? c->n_out : 1, sizeof *q);
    if (!q)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < c->n_out; i++) {
        const out_t *o = &c->outs[i];
        q[i] = (cm_qtensor){.name = o->name, .n_dims = o->n_dims, .src_type = CM_TYPE_F32,
                            .ne = {o->ne[0], o->ne[1], o->ne[2], 1}};
    }
    cm_status s = cm_quantize_choose(c->mix, &m, 0, q, c->n_out, err);
    for (size_t i = 0; !s && i < c->n_out; i++) {
        c->outs[i].type = q[i].type;
        c->outs[i].fallback = q[i].fallback;
    }
    free(q);
    return s;
}

static const out_t *find_out(const conv *c, const char *name);

static cm_status push_out(conv *c, out_t *o, cm_err *err)
{
    const out_t *dup = find_out(c, o->name);
    if (dup) {
        free(o->srcs);
        return cm_fail(err, CM_E_FORMAT, "tensors %s and %s both map to %s", dup->hf, o->hf,
                       o->name);
    }
    if (c->n_out == c->cap_out) {
        size_t cap = c->cap_out ? c->cap_out * 2 : 64;
        out_t *n = realloc(c->outs, cap * sizeof *n);
        if (!n) {
            free(o->srcs);
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        }
        c->outs = n;
        c->cap_out = cap;
    }
    c->outs[c->n_out++] = *o;
    return CM_OK;
}

static void set_name(out_t *o, const map_entry *e, int bid)
{
    if (bid >= 0)
        snprintf(o->name, sizeof o->name, "blk.%d.%s", bid, e->gguf);
    else
        snprintf(o->name, sizeof o->name, "%s", e->gguf);
}

/* One source tensor -> one output tensor (with the q/k permutation). */
static cm_status plan_plain(conv *c, const map_entry *e, const st_tensor *t, int bid, cm_err *err)
{
    out_t o = {.hf = t->name, .one = t, .n_src = 1, .st = &c->st};
    set_name(&o, e, bid);
    o.n_dims = (uint32_t)t->n_dims;
    o.ne[0] = t->shape[t->n_dims - 1];
    o.ne[1] = t->n_dims == 2 ? t->shape[0] : 1;
    o.ne[2] = 1;
    if (c->arch->permute && (e->flags & (F_PERM_Q | F_PERM_K))) {
        o.perm_heads = (int)(e->flags & F_PERM_Q ? c->hp.n_head : c->hp.n_head_kv);
        if (c->hp.head_dim % 2)
            return cm_fail(err, CM_E_FORMAT, "tensor %s: head size %lld is odd, cannot reorder "
                           "it for rotary embeddings", t->name, (long long)c->hp.head_dim);
    }
    return push_out(c, &o, err);
}

/* Experts arrive one slice at a time; when a layer has all of them, its
 * three stacked tensors are emitted in the architecture's slot order (the
 * order llama.cpp writes them). */
static cm_status plan_expert(conv *c, const map_entry *e, const st_tensor *t, int bid, int xid,
                             cm_err *err)
{
    const hparams *h = &c->hp;
    int64_t ne = h->n_expert;
    if (!ne)
        return cm_fail(err, CM_E_FORMAT, "tensor %s is an expert but config.json gives no expert "
                       "count (num_local_experts / num_experts)", t->name);
    if (xid >= ne)
        return cm_fail(err, CM_E_FORMAT, "tensor %s: expert %d but config.json has %lld experts",
                       t->name, xid, (long long)ne);
    c->experts[((size_t)bid * 3 + (size_t)e->slot) * (size_t)ne + (size_t)xid] = t;
    if (++c->exp_count[bid] < 3 * ne)
        return CM_OK;
    for (int slot = 0; slot < 3; slot++) {
        const map_entry *m = NULL;
        /* each architecture has exactly three expert entries, one per slot */
        for (size_t i = 0; i < sizeof MAP / sizeof MAP[0] && !m; i++)
            if ((MAP[i].archs & c->arch->id) && (MAP[i].flags & F_EXPERT) && MAP[i].slot == slot)
                m = &MAP[i];
        const st_tensor **s = malloc((size_t)ne * sizeof *s);
        if (!s)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        memcpy(s, &c->experts[((size_t)bid * 3 + (size_t)slot) * (size_t)ne], (size_t)ne * sizeof *s);
        out_t o = {.hf = s[0]->name, .srcs = s, .n_src = (int)ne, .n_dims = 3, .st = &c->st};
        set_name(&o, m, bid);
        o.ne[0] = s[0]->shape[1];
        o.ne[1] = s[0]->shape[0];
        o.ne[2] = ne;
        cm_status st = push_out(c, &o, err);
        if (st)
            return st;
    }
    return CM_OK;
}

/* '*' in pat matches a decimal number, stored in *num. */
static int match(const char *pat, const char *s, int *num)
{
    for (; *pat; pat++, s++) {
        if (*pat == '*') {
            long v = 0;
            if (!isdigit((unsigned char)*s))
                return 0;
            for (; isdigit((unsigned char)*s); s++)
                if ((v = v * 10 + (*s - '0')) > 1000000)
                    return 0;
            *num = (int)v;
            s--;
        } else if (*pat != *s) {
            return 0;
        }
    }
    return *s == 0;
}

/* Buffers that checkpoints sometimes carry and llama.cpp drops. */
static int ignored(const char *n)
{
    return ends_with(n, ".rotary_emb.inv_freq") || ends_with(n, ".attention.masked_bias") ||
           ends_with(n, ".attention.bias") || ends_with(n, ".attn.masked_bias") ||
           ends_with(n, ".attn.bias");
}

/* "model.layers.12.mlp.up_proj.weight" -> 12, "mlp.up_proj.weight" */
static int split_layer(const char *name, const char *prefix, int *bid, const char **rest)
{
    size_t pl = strlen(prefix);
    long v = 0;
    const char *p = name + pl;
    if (strncmp(name, prefix, pl) || !isdigit((unsigned char)*p))
        return 0;
    for (; isdigit((unsigned char)*p); p++)
        if ((v = v * 10 + (*p - '0')) > 1000000)
            return 0;
    if (*p != '.')
        return 0;
    *bid = (int)v;
    *rest = p + 1;
    return 1;
}

static cm_status map_tensor(conv *c, const st_tensor *t, cm_err *err)
{
    int bid = -1, xid = -1;
    const char *rest = t->name;
    if (ignored(t->name))
        return CM_OK;
    int layered = split_layer(t->name, c->arch->prefix, &bid, &rest);
    for (size_t i = 0; i < sizeof MAP / sizeof MAP[0]; i++) {
        const map_entry *e = &MAP[i];
        if (!(e->archs & c->arch->id) || !(e->flags & F_LAYER) != !layered ||
            !match(e->hf, rest, &xid))
            continue;
        if (layered && bid >= c->hp.n_layer)
            return cm_fail(err, CM_E_FORMAT, "tensor %s is in layer %d but config.json has %lld "
                           "layers", t->name, bid, (long long)c->hp.n_layer);
        cm_status s = check_shape(c, e, t, err);
        if (s)
            return s;
        return e->flags & F_EXPERT ? plan_expert(c, e, t, bid, xid, err)
                                   : plan_plain(c, e, t, bid, err);
    }
    return cm_fail(err, CM_E_UNSUPPORTED, "cannot map tensor %s for architecture %s", t->name,
                   c->arch->hf);
}

static const out_t *find_out(const conv *c, const char *name)
{
    for (size_t i = 0; i < c->n_out; i++)
        if (!strcmp(c->outs[i].name, name))
            return &c->outs[i];
    return NULL;
}

/* Every tensor the architecture cannot run without must be there. */
static cm_status check_required(const conv *c, cm_err *err)
{
    char name[160];
    for (size_t i = 0; i < sizeof MAP / sizeof MAP[0]; i++) {
        const map_entry *e = &MAP[i];
        if (!(e->archs & c->arch->id) || !(e->flags & F_REQ))
            continue;
        if (!(e->flags & F_LAYER)) {
            if (!find_out(c, e->gguf))
                return cm_fail(err, CM_E_FORMAT, "the checkpoint has no %s (needed for %s)",
                               e->hf, e->gguf);
            continue;
        }
        for (int b = 0; b < c->hp.n_layer; b++) {
            snprintf(name, sizeof name, "blk.%d.%s", b, e->gguf);
            if (!find_out(c, name))
                return cm_fail(err, CM_E_FORMAT, "the checkpoint has no %s%d.%s (needed for %s)",
                               c->arch->prefix, b, e->hf, name);
        }
    }
    /* the engine ties a missing output to the embeddings: right only when
     * config.json does not say otherwise (transformers' default is tied) */
    int tied = 1;
    json_get_bool(&c->cfg, json_root(&c->cfg), "tie_word_embeddings", &tied);
    if (!tied && !find_out(c, "output.weight"))
        return cm_fail(err, CM_E_FORMAT, "the checkpoint has no lm_head.weight (needed for "
                       "output.weight: config.json says tie_word_embeddings: false)");
    for (int b = 0; b < c->hp.n_layer; b++) {
        char up[64], exps[64];
        snprintf(up, sizeof up, "blk.%d.ffn_up.weight", b);
        snprintf(exps, sizeof exps, "blk.%d.ffn_up_exps.weight", b);
        if (!find_out(c, up) && !find_out(c, exps))
            return cm_fail(err, CM_E_FORMAT, "layer %d of the checkpoint has no feed-forward "
                           "weights", b);
    }
    return CM_OK;
}

/* Llama 3.1-style rope scaling: llama.cpp stores per-frequency factors as
 * a generated tensor rope_freqs.weight, written first. */
static cm_status plan_rope_freqs(conv *c, cm_err *err)
{
    const hparams *h = &c->hp;
    double factor = 8.0, lo = 1.0, hi = 4.0, old = 8192.0, base = h->has_theta ? h->theta : 1e4;
    if (!h->rope_type || strcasecmp(h->rope_type, "llama3"))
        return CM_OK;
    json_get_num(&c->cfg, h->rope, "factor", &factor);
    json_get_num(&c->cfg, h->rope, "low_freq_factor", &lo);
    json_get_num(&c->cfg, h->rope, "high_freq_factor", &hi);
    json_get_num(&c->cfg, h->rope, "original_max_position_embeddings", &old);
    int64_t n = h->head_dim / 2;
    if (lo == hi || n < 1 || !(c->rope_freqs = malloc((size_t)n * sizeof(float))))
        return cm_fail(err, lo == hi ? CM_E_FORMAT : CM_E_NOMEM,
                       "cannot build rope_freqs from rope_parameters");
    for (int64_t i = 0; i < n; i++) {
        float fr = 1.0f / powf((float)base, (float)(2 * i) / (float)h->head_dim);
        double wl = 2 * M_PI / fr, lw = old / lo, hw = old / hi;
        double smooth = (old / wl - lo) / (hi - lo);
        c->rope_freqs[i] = wl < hw ? 1.0f : wl > lw ? (float)factor
                                                    : (float)(1 / ((1 - smooth) / factor + smooth));
    }
    out_t o = {.name = "rope_freqs.weight", .hf = "rope_parameters", .gen = c->rope_freqs,
               .n_dims = 1, .ne = {n, 1, 1}};
    return push_out(c, &o, err);
}

static cm_status plan_all(conv *c, cm_err *err)
{
    hparams *h = &c->hp;
    cm_status s;
    if (h->n_vocab < 0) {
        const st_tensor *e = st_find(&c->st, "model.embed_tokens.weight");
        if (!e)
            e = st_find(&c->st, "transformer.wte.weight");
        if (!e || e->n_dims != 2)
            return cm_fail(err, CM_E_FORMAT, "%s/config.json has no vocab_size", c->o->hf_dir);
        h->n_vocab = e->shape[0];
    }
    if (h->n_expert) {
        size_t n = (size_t)h->n_layer * 3 * (size_t)h->n_expert;
        c->experts = calloc(n, sizeof *c->experts);
        c->exp_count = calloc((size_t)h->n_layer, sizeof *c->exp_count);
        if (!c->experts || !c->exp_count)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    if ((s = plan_rope_freqs(c, err)))
        return s;
    for (size_t i = 0; i < c->st.n_tensors; i++)
        if ((s = map_tensor(c, &c->st.tensors[i], err)))
            return s;
    for (int b = 0; c->exp_count && b < h->n_layer; b++)
        if (c->exp_count[b] && c->exp_count[b] < 3 * h->n_expert)
            return cm_fail(err, CM_E_FORMAT, "layer %d has %d expert tensors; config.json's %lld "
                           "experts need %lld", b, c->exp_count[b], (long long)h->n_expert,
                           (long long)(3 * h->n_expert));
    if ((s = check_required(c, err)))
        return s;
    if (uses_policy(c->mix))
        return policy_types(c, err);
    for (size_t i = 0; i < c->n_out; i++)
        c->outs[i].type = pick_type(c, &c->outs[i], &c->outs[i].fallback);
    return CM_OK;
}

/* ------------------------------------------------------------ data */

/* HF stores each head's rotary pairs as halves (x[i], x[i + d/2]); llama's
 * GGUF layout interleaves them (x[2i], x[2i + 1]).  Output row r of a head
 * takes source row (r % 2) * d/2 + r / 2 of the same head. */
static int64_t perm_row(int64_t r, int64_t rows, int heads)
{
    int64_t rph = rows / heads, w = r % rph;
    return r - w + (w % 2) * (rph / 2) + w / 2;
}

/* gguf_writer fill callback: converts one output tensor row by row. */
static cm_status fill_out(void *ctx, void *dst, uint64_t nbytes, cm_err *err)
{
    const out_t *o = ctx;
    int64_t len = o->ne[0], rows = o->n_dims >= 2 ? o->ne[1] : 1;
    if (o->perm_heads && o->n_dims == 1) { /* a bias: permute elements */
        rows = len;
        len = 1;
    }
    size_t rb = cm_row_bytes(o->type, len);
    int64_t total = rows * o->n_src;
    int bad = 0;
    if (!rb || (uint64_t)total * rb != nbytes)
        return cm_fail(err, CM_E_FORMAT, "%s: internal size mismatch", o->name);
#pragma omp parallel if (total * len > (1 << 18)) reduction(| : bad)
    {
        float *buf = malloc((size_t)len * sizeof *buf);
        bad |= !buf;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < total; k++) {
            if (!buf)
                continue;
            const st_tensor *t = o->n_src > 1 ? o->srcs[k / rows] : o->one;
            int64_t r = k % rows, sr = o->perm_heads ? perm_row(r, rows, o->perm_heads) : r;
            st_to_f32(t, (uint64_t)(sr * len), len, buf);
            /* llama.cpp's encoders (q8_0 rounds ties away from zero) */
            cm_quantize_weights(o->type, buf, (uint8_t *)dst + (size_t)k * rb, len);
        }
        free(buf);
    }
    for (int i = 0; i < o->n_src; i++)
        st_release(o->st, o->n_src > 1 ? o->srcs[i] : o->one);
    return bad ? cm_fail(err, CM_E_NOMEM, "out of memory converting %s", o->name) : CM_OK;
}

/* ------------------------------------------------------------ metadata */

static void kv_u32(gguf_writer *w, const conv *c, const char *key, int64_t v)
{
    char k[160];
    snprintf(k, sizeof k, "%s.%s", c->arch->gguf, key);
    gguf_writer_set_u32(w, k, (uint32_t)v);
}

static void kv_f32(gguf_writer *w, const conv *c, const char *key, double v)
{
    char k[160];
    snprintf(k, sizeof k, "%s.%s", c->arch->gguf, key);
    gguf_writer_set_f32(w, k, (float)v);
}

/* gguf-py's size label: "202K", "4x203K" (experts x per-expert size). */
static void size_label(const conv *c, char *buf, size_t cap)
{
    uint64_t total = 0, shared = 0, expert = 0, exp_sum = 0, n_exp = 0;
    for (size_t i = 0; i < c->n_out; i++) {
        const out_t *o = &c->outs[i];
        uint64_t n = (uint64_t)(o->ne[0] * o->ne[1] * o->ne[2]);
        if (strstr(o->name, "_exps.")) {
            expert += n / (uint64_t)o->ne[2];
            exp_sum += (uint64_t)o->ne[2];
            n_exp++;
        } else {
            shared += n;
        }
        total += n;
    }
    uint64_t count = n_exp ? exp_sum / n_exp : 0, p = count ? shared + expert : total;
    double v = p * 1e-3;
    char suf = 'K', tmp[64], pre[32] = "";
    if (p > 1e12)
        v = p * 1e-12, suf = 'T';
    else if (p > 1e9)
        v = p * 1e-9, suf = 'B';
    else if (p > 1e6)
        v = p * 1e-6, suf = 'M';
    snprintf(tmp, sizeof tmp, "%.0f", nearbyint(v)); /* Python's round(): half to even */
    int len = (int)strlen(tmp + strspn(tmp, "0")), fix = len < 2 ? 2 - len : 0;
    if (count)
        snprintf(pre, sizeof pre, "%llux", (unsigned long long)count);
    snprintf(buf, cap, "%s%.*f%c", pre, fix, v, suf);
}

/* gguf-py names a model after its folder: "llama" -> "Llama". */
static void model_name(const conv *c, char *buf, size_t cap)
{
    const char *src = json_get_str(&c->cfg, json_root(&c->cfg), "_name_or_path");
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", src && *src ? src : c->o->hf_dir);
    for (size_t l = strlen(tmp); l > 1 && tmp[l - 1] == '/'; l--)
        tmp[l - 1] = 0;
    const char *base = strrchr(tmp, '/') ? strrchr(tmp, '/') + 1 : tmp;
    snprintf(buf, cap, "%s", base);
    for (char *w = buf; *w; w += strcspn(w, "-_ "), w += *w != 0) {
        size_t n = strcspn(w, "-_ "), k = 0;
        while (k < n && !isupper((unsigned char)w[k]))
            k++;
        if (k == n && islower((unsigned char)w[0]))
            w[0] = (char)toupper((unsigned char)w[0]);
    }
}

static void rope_scaling_kv(gguf_writer *w, const conv *c)
{
    const hparams *h = &c->hp;
    double f, orig;
    char k[160];
    if (!h->rope_type || !json_get_num(&c->cfg, h->rope, "factor", &f))
        return;
    if (strcmp(h->rope_type, "linear") && strcmp(h->rope_type, "yarn")) {
        if (strcasecmp(h->rope_type, "llama3") && strcmp(h->rope_type, "default"))
            logf_(c, "warning: rope scaling type '%s' is not converted\n", h->rope_type);
        return;
    }
    snprintf(k, sizeof k, "%s.rope.scaling.type", c->arch->gguf);
    gguf_writer_set_str(w, k, h->rope_type);
    kv_f32(w, c, "rope.scaling.factor", f);
    if (!strcmp(h->rope_type, "yarn") &&
        json_get_num(&c->cfg, h->rope, "original_max_position_embeddings", &orig))
        kv_u32(w, c, "rope.scaling.original_context_length", (int64_t)orig);
}

/* The keys of llama.cpp's TextModel.set_gguf_parameters plus the per-
 * architecture extras, in its order. */
static void base_kv(gguf_writer *w, const conv *c, uint32_t file_type)
{
    const hparams *h = &c->hp;
    kv_u32(w, c, "block_count", h->n_layer);
    if (h->has_ctx)
        kv_u32(w, c, "context_length", h->n_ctx);
    kv_u32(w, c, "embedding_length", h->n_embd);
    kv_u32(w, c, "feed_forward_length", h->n_ff);
    kv_u32(w, c, "attention.head_count", h->n_head);
    kv_u32(w, c, "attention.head_count_kv", h->n_head_kv);
    rope_scaling_kv(w, c);
    if (h->has_theta)
        kv_f32(w, c, "rope.freq_base", h->theta);
    if (h->has_rms)
        kv_f32(w, c, "attention.layer_norm_rms_epsilon", h->rms_eps);
    if (h->has_ln)
        kv_f32(w, c, "attention.layer_norm_epsilon", h->ln_eps);
    if (h->n_expert)
        kv_u32(w, c, "expert_count", h->n_expert);
    if (h->n_expert_used)
        kv_u32(w, c, "expert_used_count", h->n_expert_used);
    if (h->has_head_dim) {
        kv_u32(w, c, "attention.key_length", h->head_dim);
        kv_u32(w, c, "attention.value_length", h->head_dim);
    }
    gguf_writer_set_u32(w, "general.file_type", file_type);
    if (c->arch->id == A_LLAMA) {
        kv_u32(w, c, "vocab_size", h->n_vocab);
        kv_u32(w, c, "rope.dimension_count", h->head_dim);
    }
    if (c->arch->id & A_QMOE) {
        if (h->has_ff_exp)
            kv_u32(w, c, "expert_feed_forward_length", h->n_ff_exp);
        if (h->n_ff_shexp)
            kv_u32(w, c, "expert_shared_feed_forward_length", h->n_ff_shexp);
    }
}

/* StarCoder and Phi-2 have their own, shorter key sets in llama.cpp. */
static void gpt_style_kv(gguf_writer *w, const conv *c, uint32_t file_type)
{
    const hparams *h = &c->hp;
    if (h->has_ctx)
        kv_u32(w, c, "context_length", h->n_ctx);
    kv_u32(w, c, "embedding_length", h->n_embd);
    kv_u32(w, c, "feed_forward_length", h->n_ff);
    kv_u32(w, c, "block_count", h->n_layer);
    kv_u32(w, c, "attention.head_count", h->n_head);
    kv_u32(w, c, "attention.head_count_kv", h->n_head_kv);
    kv_f32(w, c, "attention.layer_norm_epsilon", h->ln_eps);
    if (c->arch->style == S_PHI2) {
        kv_u32(w, c, "rope.dimension_count", (int64_t)(h->rot_pct * (double)h->n_embd) / h->n_head);
        if (h->has_theta)
            kv_f32(w, c, "rope.freq_base", h->theta);
    }
    gguf_writer_set_u32(w, "general.file_type", file_type);
    if (c->arch->style == S_PHI2)
        gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 0);
}

static cm_status write_meta(gguf_writer *w, conv *c, int *has_tok, cm_err *err)
{
    char buf[1024];
    uint32_t file_type = c->mix->ftype;
    gguf_writer_set_str(w, "general.architecture", c->arch->gguf);
    gguf_writer_set_str(w, "general.type", "model");
    model_name(c, buf, sizeof buf);
    gguf_writer_set_str(w, "general.name", buf);
    size_label(c, buf, sizeof buf);
    gguf_writer_set_str(w, "general.size_label", buf);
    if (c->arch->style == S_BASE)
        base_kv(w, c, file_type);
    else
        gpt_style_kv(w, c, file_type);
    cm_status s = hf_tokenizer_add(w, c->o->hf_dir, c->hp.n_vocab, c->o->log, has_tok, err);
    if (s)
        return s;
    gguf_writer_set_u32(w, "general.quantization_version", 2);
    return CM_OK;
}

static cm_status add_tensors(gguf_writer *w, conv *c, uint64_t *bytes)
{
    char tb[32], tw[32];
    *bytes = 0;
    for (size_t i = 0; i < c->n_out; i++) {
        out_t *o = &c->outs[i];
        cm_status s = gguf_writer_add_tensor(w, o->name, o->type, o->n_dims, o->ne, o->gen,
                                             o->gen ? NULL : fill_out, o);
        if (s)
            return s;
        *bytes += cm_row_bytes(o->type, o->ne[0]) * (uint64_t)(o->ne[1] * o->ne[2]);
        if (o->fallback)
            logf_(c, "warning: %s: rows of %lld do not fill whole blocks of the requested "
                  "type; stored as %s\n", o->name, (long long)o->ne[0],
                  cm_type_name(o->type, tw));
        if (c->o->verbose)
            logf_(c, "  %-28s %-5s [%lld, %lld, %lld] <- %s%s\n", o->name,
                  cm_type_name(o->type, tb), (long long)o->ne[0], (long long)o->ne[1],
                  (long long)o->ne[2], o->hf, o->n_src > 1 ? " (and the other experts)" : "");
    }
    return CM_OK;
}

/* ------------------------------------------------------------ entry */

static void conv_free(conv *c)
{
    for (size_t i = 0; i < c->n_out; i++)
        free(c->outs[i].srcs);
    free(c->outs);
    free(c->experts);
    free(c->exp_count);
    free(c->rope_freqs);
    st_close(&c->st);
    json_free(&c->cfg);
}

static cm_status open_inputs(conv *c, cm_err *err)
{
    struct stat sb;
    char path[4200];
    const char *dir = c->o->hf_dir;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return cm_fail(err, CM_E_IO, "%s is not a directory", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (stat(path, &sb) != 0)
        return cm_fail(err, CM_E_IO, "%s has no config.json", dir);
    cm_status s = json_parse_file(path, NULL, &c->cfg, err);
    if (s)
        return s;
    if (json_root(&c->cfg)->type != JSON_OBJECT)
        return cm_fail(err, CM_E_FORMAT, "%s is not a JSON object", path);
    if (!(c->arch = pick_arch(&c->cfg, err)))
        return CM_E_UNSUPPORTED;
    if ((s = read_hparams(c, err)))
        return s;
    return st_open_dir(dir, &c->st, err);
}

cm_status cm_convert(const cm_convert_opts *o, cm_convert_result *res, cm_err *err)
{
    conv c = {.o = o};
    int has_tok = 0;
    uint64_t bytes = 0;
    char tb[32];
    if (!o || !o->hf_dir || !o->out_path)
        return cm_fail(err, CM_E_USAGE, "convert needs a folder and an output path");
    if (!(c.mix = target_mix(o))) {
        char names[512];
        cm_qmix_names(names, sizeof names);
        return cm_fail(err, CM_E_USAGE, "cannot convert to %s (use one of %s)",
                       o->mix ? o->mix : cm_type_name(o->type, tb), names);
    }
    gguf_writer *w = NULL;
    cm_status s = open_inputs(&c, err);
    if (!s)
        s = plan_all(&c, err);
    if (!s && !(w = gguf_writer_new(3)))
        s = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!s)
        s = write_meta(w, &c, &has_tok, err);
    if (!s) {
        /* a failed add leaves its message pending in the writer; finish
         * reports it (before creating any file) */
        add_tensors(w, &c, &bytes);
        gguf_writer_set_progress(w, o->progress, o->progress_ctx);
        s = gguf_writer_finish(w, o->out_path, err);
    }
    if (!s) {
        logf_(&c, "wrote %s: %s, %zu tensors, %.2f MiB of %s weights%s\n", o->out_path,
              c.arch->gguf, c.n_out, bytes / 1048576.0, c.mix->name,
              has_tok ? "" : ", no tokenizer");
        if (res) {
            memset(res, 0, sizeof *res);
            snprintf(res->arch, sizeof res->arch, "%s", c.arch->gguf);
            res->n_tensors = c.n_out;
            res->n_bytes = bytes;
            res->has_tokenizer = has_tok;
            for (size_t i = 0; i < c.n_out; i++)
                res->n_fallback += c.outs[i].fallback;
        }
    }
    gguf_writer_free(w);
    conv_free(&c);
    return s;
}
