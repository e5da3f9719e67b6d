/* forward.h - running a model: KV cache, batched forward pass, logits. */
#ifndef CM_FORWARD_H
#define CM_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "engine/backend.h"
#include "engine/expert_cache.h"
#include "engine/model.h"
#include "engine/placement.h"
#include "util/status.h"

typedef struct cm_ctx cm_ctx;

/* A context evaluates one sequence of up to n_ctx tokens, n_batch at a time.
 * Every buffer is allocated here: evaluation never allocates. */
cm_status cm_ctx_new(const cm_model *m, int n_ctx, cm_kv_type kv, int n_batch,
                     cm_ctx **out, cm_err *err);
/* The same on a chosen backend (NULL: the CPU). */
cm_status cm_ctx_new_on(const cm_model *m, const cm_backend_ops *backend, int n_ctx,
                        cm_kv_type kv, int n_batch, cm_ctx **out, cm_err *err);
/* The same with the weights a device backend holds chosen by place
 * (engine/placement.h; cm_ctx_new_on places automatically). */
cm_status cm_ctx_new_placed(const cm_model *m, const cm_backend_ops *backend,
                            const cm_place_opts *place, int n_ctx, cm_kv_type kv, int n_batch,
                            cm_ctx **out, cm_err *err);
/* Where the weights are: bytes on the device and in host memory, the
 * expert cache's counts (all zero on a backend that reads host memory). */
void cm_ctx_place_stats(const cm_ctx *c, cm_place_stats *out);
int cm_ctx_expert_on_device(const cm_ctx *c, int il, int e);
void cm_ctx_free(cm_ctx *c);
/* The backend the context runs on (its name, device and fallback counts). */
cm_backend *cm_ctx_backend(const cm_ctx *c);
/* Forgets the sequence (the KV cache is simply overwritten later). */
void cm_ctx_reset(cm_ctx *c);
/* Goes back to the first n tokens (n < n_past), e.g. to reuse a prompt's KV
 * cache for another completion.  The logits are not restored. */
void cm_ctx_truncate(cm_ctx *c, int n);
int cm_ctx_n_past(const cm_ctx *c);
int cm_ctx_n_ctx(const cm_ctx *c);
size_t cm_ctx_kv_bytes(const cm_ctx *c);

/* Appends n tokens to the sequence.  If all_logits is non-NULL it receives
 * n rows of n_vocab floats (one per position); the last row is always
 * available from cm_ctx_logits.  CM_E_RANGE if the context would overflow
 * or an id is outside the vocabulary. */
cm_status cm_eval(cm_ctx *c, const int32_t *ids, int n, float *all_logits, cm_err *err);
/* The same, with logits only for the last n_out positions (n_out <= n):
 * logits receives n_out rows.  Cheaper when only a suffix is scored (the
 * output product is skipped for the other rows). */
cm_status cm_eval_last(cm_ctx *c, const int32_t *ids, int n, int n_out, float *logits,
                       cm_err *err);
const float *cm_ctx_logits(const cm_ctx *c);
/* Tokens routed to each expert so far: [n_layer][n_expert] (MoE models). */
const uint64_t *cm_ctx_expert_tokens(const cm_ctx *c);

/* Bounds the resident bytes of MoE expert weights (LRU; 0 = no bound,
 * but still measure hits, misses and bytes read from disk). */
cm_status cm_ctx_set_expert_budget(cm_ctx *c, uint64_t bytes, cm_err *err);
/* Residency statistics; returns 0 when no budget was set. */
int cm_ctx_expert_stats(const cm_ctx *c, cm_expert_stats *out);

/* Several sequences in one context, evaluated together: each has its own
 * region of the KV cache (n_ctx positions) and its own position.  A batch's
 * products, norms and feed-forward see all its tokens at once; rotation,
 * cache and attention go per run of one sequence's tokens.  (cm_eval and
 * cm_eval_last are for one-sequence contexts.) */
cm_status cm_ctx_new_multi(const cm_model *m, const cm_backend_ops *backend,
                           const cm_place_opts *place, int n_ctx, cm_kv_type kv, int n_batch,
                           int n_seq, cm_ctx **out, cm_err *err);
int cm_ctx_n_seq(const cm_ctx *c);
int cm_ctx_seq_past(const cm_ctx *c, int seq);
/* cm_ctx_truncate for one sequence of the context. */
void cm_ctx_seq_keep(cm_ctx *c, int seq, int n);
/* Sequence dst becomes the first n positions of sequence src (n <= its
 * length): a prompt evaluated once serves several sequences.
 * CM_E_UNSUPPORTED on a backend that cannot copy its cache (then
 * evaluate the tokens in dst). */
cm_status cm_ctx_seq_copy(cm_ctx *c, int src, int dst, int n, cm_err *err);
/* Appends token i to sequence seq[i], at its next position (a sequence's
 * tokens in order; they need not be adjacent).  Each token with want[i]
 * set gives a row of n_vocab logits, in batch order (want NULL: none).
 * CM_E_RANGE for a sequence outside the context, an id outside the
 * vocabulary or a sequence that would overflow (then nothing is done). */
cm_status cm_eval_batch(cm_ctx *c, const int32_t *ids, const int32_t *seq, int n,
                        const uint8_t *want, float *logits, cm_err *err);
/* Language-expert packs: layers[k] (n_layer entries) is member k's view
 * of the model's layers (cm_model_select_expert, then a copy of
 * m->layers; they must outlive the context).  Members may differ only in
 * the feed-forward weights; then one batch may hold sequences of several
 * members (cm_eval_batch_members): attention, norms, embeddings and
 * logits run once for all rows, the feed-forward once per member.
 * CM_E_UNSUPPORTED when other tensors differ, for a mixture of experts,
 * or on a backend that does not read host memory. */
cm_status cm_ctx_set_members(cm_ctx *c, cm_layer *const *layers, int n, cm_err *err);
/* cm_eval_batch with token i going through member[i]'s feed-forward (an
 * index into cm_ctx_set_members's list); rows of one member are best
 * adjacent (each run of them is one product per weight). */
cm_status cm_eval_batch_members(cm_ctx *c, const int32_t *ids, const int32_t *seq,
                                const int32_t *member, int n, const uint8_t *want,
                                float *logits, cm_err *err);
/* Reads the weights again from the model (a language-expert pack switched
 * member: cm_model_select_expert); the caches stay.  CM_E_UNSUPPORTED on a
 * backend that placed the weights in its own memory. */
cm_status cm_ctx_rebind(cm_ctx *c, cm_err *err);

/* Bytes a context needs besides the weights (KV cache and work buffers). */
size_t cm_ctx_bytes_estimate(const cm_model *m, const cm_backend_ops *be, int n_ctx,
                             cm_kv_type kv, int n_batch);

#endif
