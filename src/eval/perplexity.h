/* perplexity.h - perplexity and KL divergence of a model over a token stream.
 *
 * The method is the one llama.cpp's perplexity tool made standard, so numbers
 * compare across engines:
 *   - the caller tokenizes the whole text once (with BOS first when the model
 *     adds one) and passes the ids;
 *   - the ids are cut into n_chunk = n_ids / n_ctx non-overlapping chunks of
 *     n_ctx tokens (the tail is dropped);
 *   - each chunk is evaluated from an empty context, its first token replaced
 *     by BOS when the model's tokenizer adds BOS;
 *   - only the second half is scored: the logits at positions
 *     first = n_ctx/2 .. n_ctx-2 predict the token at the next position, so
 *     each chunk gives n_ctx - 1 - first predictions, each with the full
 *     context of the first half behind it;
 *   - PPL = exp(mean NLL) over all predictions; its standard error is the
 *     standard error of the mean NLL, sqrt(var / (N-1)), propagated as
 *     PPL * stderr(NLL).
 *
 * KL divergence against a base model (e.g. F16 vs a quantization of it):
 * run the base with save_logits, then the other model with kld_base.  Per
 * scored position KLD(base || model) = sum_v p_base(v) log(p_base(v)/p(v))
 * over the whole vocabulary; reported as mean +/- standard error and the
 * maximum, with top-1 agreement (argmax equal) in percent.
 *
 * Logits file format (little-endian; all offsets in bytes):
 *   0  char[8]  magic "CMLOGITS"
 *   8  u32      version (1)
 *  12  u32      element type: 1 = f16, 0 = f32
 *  16  u32      n_vocab
 *  20  u32      n_ctx
 *  24  u32      n_chunk
 *  28  u32      first (scored positions per chunk: n_ctx - 1 - first)
 *  32  u64      n_tokens = n_chunk * n_ctx
 *  40  u64      reserved (0)
 *  48  i32[n_tokens]  the token ids of the chunks (before BOS replacement)
 *  then, for each chunk and each scored position in order, one record:
 *      i32          argmax of the model's logits (exact, from f32)
 *      elem[n_vocab] log-softmax of the logits (log-probabilities)
 * The file size must be exactly what the header implies.  Log-probabilities
 * rather than logits so a reader needs no softmax of its own; f16 halves
 * the size and is precise where it matters (near 0, the likely tokens); the
 * reader renormalises each row so rounding cannot make KLD negative, and the
 * argmax is stored exactly so self-comparison agrees 100%. */
#ifndef CM_PERPLEXITY_H
#define CM_PERPLEXITY_H

#include <stddef.h>
#include <stdint.h>

#include "engine/forward.h"
#include "engine/model.h"
#include "util/status.h"

typedef struct cm_ppl_result cm_ppl_result;

typedef struct {
    int n_ctx;               /* tokens per chunk, >= 4 */
    int n_batch;             /* tokens per forward batch; 0: n_ctx */
    cm_kv_type kv;
    const cm_backend_ops *backend; /* NULL: the CPU */
    int max_chunks;          /* 0: as many as the ids allow */
    const char *save_logits; /* write a logits file here (appears only when complete) */
    int save_f32;            /* store f32 log-probabilities instead of f16 */
    int save_temporary;      /* the caller deletes it soon: no fsync */
    int save_to_fd;          /* write into the open file save_fd instead */
    int save_fd;             /* (empty, read-write; save_logits names it in
                              * messages) */
    const char *kld_base;    /* compare with this logits file */
    /* Optional, caller-allocated [cm_ppl_n_chunks()]: each chunk's NLL sum. */
    double *chunk_nll;
    /* Called after every chunk with the running values (may be NULL). */
    void (*progress)(void *user, int chunk, const cm_ppl_result *so_far);
    void *user;
} cm_ppl_params;

struct cm_ppl_result {
    int n_chunk;             /* chunks evaluated (or being evaluated) */
    int n_ctx, n_vocab;
    int64_t n_scored;        /* predictions scored so far */
    double nll, nll_err;     /* mean negative log-likelihood (nats) +/- stderr */
    double ppl, ppl_err;
    int has_kld;             /* the fields below are set */
    double kld, kld_err, kld_max;
    double top1, top1_err;   /* percent of positions where the argmaxes agree */
    double base_ppl, base_ppl_err; /* the base model's own PPL, from its file */
    double seconds;          /* wall time of the evaluation */
};

/* Chunks the ids allow for n_ctx (n_ids / n_ctx), capped by max_chunks > 0. */
int cm_ppl_n_chunks(size_t n_ids, int n_ctx, int max_chunks);

/* Runs the whole measurement.  Fewer than 2 * n_ctx ids is CM_E_RANGE
 * (one chunk's second half is too little to mean anything).  With kld_base,
 * the run is capped to the chunks the base file holds; a file made from other
 * tokens, another vocabulary or another n_ctx is CM_E_FORMAT naming it. */
cm_status cm_perplexity(const cm_model *m, const int32_t *ids, size_t n_ids,
                        const cm_ppl_params *p, cm_ppl_result *r, cm_err *err);

#endif
