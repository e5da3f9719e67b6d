/* forward_internal.h - the context struct, shared by forward.c and moe.c. */
#ifndef CM_FORWARD_INTERNAL_H
#define CM_FORWARD_INTERNAL_H

#include <stdint.h>

#include "engine/backend.h"
#include "engine/expert_cache.h"
#include "engine/forward.h"
#include "engine/placement.h"

/* Rows r0 .. r0 + n - 1 of a batch: tokens of sequence seq at positions
 * p0 .. p0 + n - 1. */
typedef struct {
    int seq, r0, n, p0;
} cm_run;

/* A context: one sequence (or n_seq), its backend, and the activations of
 * a batch (n_batch rows each) in the backend's memory. */
struct cm_ctx {
    const cm_model *m;
    cm_model w;         /* m's tensors where this context's backend reads them */
    cm_tensor *expw;    /* [n_layer][n_expert][3]: each expert's gate, up, down */
    cm_placement *place; /* weights copied to the backend's memory, or NULL */
    int n_ctx, n_batch, n_past;
    /* several sequences (n_seq > 1): sequence s's cache is layers
     * s * n_layer .. of kvm, a copy of m whose n_layer counts them all, so
     * that the backend's cache ops need no notion of sequences */
    int n_seq;
    int *seq_past;      /* [n_seq] tokens in each sequence's cache */
    cm_model kvm;       /* what the backend was shaped with when n_seq > 1 */
    cm_run *runs;       /* [n_batch] the current batch's runs */
    int n_runs;
    int32_t *out_rows;  /* [n_batch] rows whose logits a batch of several sequences wants */
    cm_kv_type kv_type;
    cm_backend *be;     /* runs every op; owns the KV cache */
    cm_tensor x;        /* the residual stream */
    cm_tensor h;        /* normalised input of a block */
    cm_tensor y, y2;    /* block outputs */
    cm_tensor q, k, v, att;
    cm_tensor ff_a, ff_b; /* feed-forward hidden */
    float *logits;      /* host: the last row's logits */
    /* mixture of experts */
    cm_tensor router;   /* [n_batch][n_expert] router logits */
    cm_tensor xe, ye;   /* one expert's gathered rows, its output */
    cm_routing routing; /* host: [n_batch][n_expert_used] choices */
    int32_t *exp_rows;  /* host: [n_expert][n_batch] token rows routed to each expert */
    float *exp_wts;     /* host: [n_expert][n_batch] their gate weights */
    int32_t *exp_count; /* host: [n_expert] */
    uint64_t *expert_tokens; /* [n_layer][n_expert] tokens per expert, for stats */
    int32_t *dev_chosen; /* host: [n_layer][n_expert_used] a device-routed token's choices */
    uint8_t *dev_routed; /* host: [n_layer] whether the batch routed that layer on the device */
    cm_expert_cache *experts; /* residency under a RAM budget, or NULL */
    float *host_ffn;    /* host: rows for experts run on the CPU beside a device (moe.c), or NULL */
    /* language-expert packs (cm_ctx_set_members): each member's layers, and
     * the current batch's runs of rows of one member (seq: the member) */
    cm_layer **mem_layers; /* [n_mem][n_layer] */
    int n_mem;
    cm_run *mem_runs;   /* [n_batch] */
    int n_mem_runs;     /* 0: every row through w's feed-forward */
};

/* out = mixture-of-experts feed-forward of c->h (out's rows) */
void cm_moe_ffn(cm_ctx *c, const cm_layer *L, int il, cm_tensor *out);
/* Whether every layer's experts can be routed on the device (moe_ffn),
 * so a generated token needs no host round trip. */
int cm_moe_on_device(const cm_ctx *c);
/* Counts the choices the device made in the batch just ended. */
void cm_moe_count_device(cm_ctx *c);

#endif
