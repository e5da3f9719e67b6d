/* forward_internal.h - the context struct, shared by forward.c and moe.c. */
#ifndef CM_FORWARD_INTERNAL_H
#define CM_FORWARD_INTERNAL_H

#include <stdint.h>

#include "engine/expert_cache.h"
#include "engine/forward.h"

struct cm_ctx {
    const cm_model *m;
    int n_ctx, n_batch, n_past, n_threads;
    cm_kv_type kv_type;
    void **k_cache;     /* [n_layer] -> [n_ctx][n_head_kv * head_dim] */
    void **v_cache;     /* [n_layer] -> [n_ctx][n_head_kv * head_dim_v] */
    /* work buffers, n_batch rows each */
    float *x;           /* the residual stream */
    float *h;           /* normalised input of a block */
    float *y, *y2;      /* block outputs */
    float *qkv, *q, *k, *v, *att;
    float *ff_a, *ff_b; /* feed-forward hidden */
    float *scores;      /* [n_threads][n_ctx] attention weights */
    float *attn_tile;   /* [n_threads][tile_floats] prompt attention tiles */
    size_t tile_floats;
    float *rope_cs;     /* [n_ctx][rope_dim/2] (cos, sin) of each position */
    int rope_done;      /* positions 0..rope_done-1 of rope_cs are filled */
    float *logits;
    void *scratch;      /* activations quantized for the matmul kernels */
    /* mixture of experts */
    float *router;      /* [n_batch][n_expert] */
    int32_t *exp_rows;  /* [n_expert][n_batch] token rows routed to each expert */
    float *exp_wts;     /* [n_expert][n_batch] their gate weights */
    int32_t *exp_count; /* [n_expert] */
    float *xe, *ye;     /* gathered rows for one expert, its output */
    uint64_t *expert_tokens; /* [n_layer][n_expert] tokens per expert, for stats */
    cm_expert_cache *experts; /* residency under a RAM budget, or NULL */
};

/* out = mixture-of-experts feed-forward of c->h (n rows) */
void cm_moe_ffn(cm_ctx *c, const cm_layer *L, int il, int n, float *out);

#endif
