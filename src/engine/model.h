/* model.h - a decoder-only transformer loaded from a GGUF file.
 *
 * Weights stay in the read-only mapping of the file (no copies); the model
 * struct only holds views (cm_tensor) into it plus the hyper-parameters. */
#ifndef CM_MODEL_H
#define CM_MODEL_H

#include <stdint.h>

#include "formats/gguf.h"
#include "util/status.h"
#include "engine/tensor.h"
#include "tokenizer/tokenizer.h"

typedef enum {
    CM_ARCH_LLAMA,      /* also Mistral, Mixtral, CodeLlama, DeepSeek-Coder, SmolLM */
    CM_ARCH_QWEN2,
    CM_ARCH_QWEN3,
    CM_ARCH_QWEN2MOE,
    CM_ARCH_QWEN3MOE,
    CM_ARCH_STARCODER,  /* gpt_bigcode: StarCoder, SantaCoder */
    CM_ARCH_PHI2,
    CM_ARCH_STARCODER2
} cm_arch;

typedef struct {
    cm_arch arch;
    const char *arch_name;
    int n_vocab;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;      /* per-head size of queries and keys */
    int head_dim_v;    /* per-head size of values */
    int n_ff;
    int n_ctx_train;
    float norm_eps;
    float rope_base;
    float rope_freq_scale; /* 1 / linear scaling factor */
    int rope_dim;          /* leading dims of each head that rotate */
    int rope_neox;         /* 1: rotate halves (NeoX); 0: adjacent pairs */
    int use_rope;          /* 0: learned absolute positions instead */
    int layer_norm;        /* 1: LayerNorm with bias; 0: RMSNorm */
    int gelu_mlp;          /* 1: down(gelu(up x)); 0: down(silu(gate x) * up x) */
    int parallel_block;    /* 1: attention and MLP both read the same norm (phi2) */
    /* token-level mixture of experts (0 experts: a dense model) */
    int n_expert;
    int n_expert_used;
    int n_ff_exp;          /* hidden size of each routed expert */
    int n_ff_shexp;        /* hidden size of the shared expert, 0 if none */
    int expert_norm;       /* renormalise the chosen experts' weights to sum 1 */
} cm_hparams;

/* Optional tensors have data == NULL when the architecture lacks them. */
typedef struct {
    cm_tensor attn_norm, attn_norm_b;
    cm_tensor wqkv, bqkv;          /* fused projection (starcoder), else: */
    cm_tensor wq, wk, wv, wo;
    cm_tensor bq, bk, bv, bo;
    cm_tensor q_norm, k_norm;      /* qwen3: RMSNorm of each head */
    cm_tensor ffn_norm, ffn_norm_b;
    cm_tensor w_gate, w_up, w_down;
    cm_tensor b_up, b_down;
    /* mixture of experts: router, stacked experts [.., .., n_expert] */
    cm_tensor gate_inp;
    cm_tensor gate_exps, up_exps, down_exps;
    cm_tensor gate_inp_shexp, gate_shexp, up_shexp, down_shexp;
} cm_layer;

typedef struct {
    char path[512];
    gguf_file file;
    cm_hparams hp;
    cm_tensor tok_embd;
    cm_tensor pos_embd;    /* learned positions (starcoder) */
    cm_tensor out_norm, out_norm_b;
    cm_tensor output;      /* == tok_embd when the embeddings are tied */
    cm_tensor output_b;
    int tied_output;
    cm_layer *layers;
    cm_tokenizer *tok;  /* NULL when the file carries no tokenizer */
    /* language-expert pack (src/experts/pack.h): which member the tensors are
     * bound to; "" for an ordinary model file */
    int is_pack;
    char expert[32];
    int keep_members;  /* cm_model_select_expert leaves the previous member's pages
                        * mapped (a server switching back and forth between them) */
} cm_model;

/* Opens, validates and maps path.  Every tensor the architecture needs must
 * be present with the expected shape and a supported type; anything else is
 * an error naming the tensor. */
cm_status cm_model_load(const char *path, cm_model *m, cm_err *err);
void cm_model_free(cm_model *m);

/* For a pack: binds the model to member `expert` (a language or
 * "fallback").  Tensors of the previous member that are not shared are
 * released from memory.  CM_E_RANGE if the pack has no such member. */
cm_status cm_model_select_expert(cm_model *m, const char *expert, cm_err *err);

/* The tensor `name` as the model sees it: in a pack, the bound member's
 * copy, else the shared one.  NULL if absent. */
const gguf_tensor *cm_model_find_tensor(const cm_model *m, const char *name);

/* Bytes of weights read per generated token (all but the embedding table,
 * of which one row is read). */
uint64_t cm_model_bytes_per_token(const cm_model *m);

#endif
