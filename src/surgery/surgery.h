/* surgery.h - model surgery on GGUF files: upcycling a dense model into a
 * token-level mixture of experts, function-preserving growth, and merging
 * fine-tunes of a common base.
 *
 * Every operation reads its inputs through the mapping (gguf_open) and
 * produces the output one tensor at a time through gguf_writer's fill
 * callbacks, so memory holds about one output tensor (merge: one tensor of
 * each input) besides the mappings.  The output is written to a temporary
 * beside OUT; upcycle and grow then load it with the engine and compare its
 * logits with IN's (cm_surgery_check) before it is renamed over OUT, so OUT
 * appears only when complete and, for F32 weights, verified. */
#ifndef CM_SURGERY_H
#define CM_SURGERY_H

#include <stdint.h>
#include <stdio.h>

#include "formats/gguf.h"
#include "util/status.h"

/* What an output tensor's type is: the input's (CM_SURG_SAME) or a ggml
 * type id (F32, F16, BF16, Q8_0, ...).  1-D tensors (norms, biases) stay
 * F32 whatever is asked, as the engine requires. */
#define CM_SURG_SAME UINT32_MAX

typedef struct {
    FILE *log;          /* progress and the check; NULL: silent */
    uint32_t type;      /* CM_SURG_SAME or a type id */
    uint64_t seed;      /* noise and router initialisation */
    int n_check_tokens; /* tokens of the self-check (0: 16) */
} cm_surg_common;

typedef struct {
    cm_surg_common c;
    int n_expert, n_expert_used;
    float noise;       /* each expert copy += noise * rms(W) * N(0, 1) */
    float router_std;  /* router weights ~ N(0, router_std^2) */
} cm_upcycle_opts;

typedef struct {
    cm_surg_common c;
    float width_mult;  /* feed-forward hidden size * this (>= 1) */
    float embd_mult;   /* residual width * this, heads by whole KV groups (0 or 1: kept) */
    int add_layers;    /* new layers, spread between the existing ones */
} cm_grow_opts;

typedef enum { CM_MERGE_AVERAGE, CM_MERGE_TASK_ARITHMETIC, CM_MERGE_TIES } cm_merge_method;
/* What TIES trims over: each tensor's own top fraction, or the whole model's. */
typedef enum { CM_TIES_TENSOR, CM_TIES_MODEL } cm_ties_scope;

typedef struct {
    FILE *log;
    uint32_t type;     /* output type (CM_SURG_SAME is refused: F32 by default) */
    cm_merge_method method;
    float density;     /* TIES: the fraction of each task vector kept */
    cm_ties_scope scope; /* TIES: per tensor (default) or over the whole model */
    float lambda;      /* task arithmetic, TIES: the scale of the merged task vector */
    int64_t chunk;     /* elements merged at a time (0: about 1M; the result is the same) */
} cm_merge_opts;

/* The result of a self-check: logits of OUT against IN on sample tokens. */
typedef struct {
    double max_abs;    /* max |difference| over every position and token */
    double max_ref;    /* max |logit| of IN, for scale */
    int n_tokens, n_vocab, argmax_same;
} cm_surg_check;

cm_status cm_upcycle(const char *in, const char *out, const cm_upcycle_opts *o,
                     cm_surg_check *chk, cm_err *err);
cm_status cm_grow(const char *in, const char *out, const cm_grow_opts *o, cm_surg_check *chk,
                  cm_err *err);
/* base may be NULL for CM_MERGE_AVERAGE. */
cm_status cm_merge(const char *base, const char *const *models, int n_models, const char *out,
                   const cm_merge_opts *o, cm_err *err);

/* Loads a and b with the engine, evaluates the same n_tokens sample ids
 * (an F32 KV cache) and compares every logit. */
cm_status cm_surgery_check(const char *a, const char *b, int n_tokens, cm_surg_check *out,
                           cm_err *err);

/* TIES-merging of one stretch of n elements (Yadav et al. 2023): tau[i] is
 * task vector i (modified: trimmed), out receives the merged task vector.
 * thr[i] is the magnitude below which task vector i is trimmed. */
void cm_ties_merge(float *const *tau, const float *thr, int n_models, int64_t n, float *out);
/* The magnitude of the k-th largest |x| (k >= 1) of x[0..n-1]; scratch holds n floats. */
float cm_kth_magnitude(const float *x, int64_t n, int64_t k, float *scratch);

/* The k-th largest magnitude of a stream too large to hold, exactly, by a
 * radix select over the bits of |x| (their order is the order of the
 * non-negative floats): pass 0 counts the high 16 bits of every value,
 * pass 1 the low 16 bits of those in the high bin that holds the k-th. */
typedef struct {
    uint64_t hist[65536];
    int64_t k;       /* the rank wanted (>= 1), then its rank within the high bin */
    uint32_t high;   /* the high bin, after pass 0 */
    int pass;
} cm_kth_stream;

void cm_kth_stream_init(cm_kth_stream *s, int64_t k);
void cm_kth_stream_add(cm_kth_stream *s, const float *x, int64_t n);
/* Ends a pass; after pass 1 returns 1 and sets *out (INFINITY when fewer
 * than k values were seen), after pass 0 returns 0. */
int cm_kth_stream_next(cm_kth_stream *s, float *out);

#endif
