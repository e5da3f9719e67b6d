/* generate.h - the decoding loop `codemoe run` and `codemoe eval` share:
 * sample, hand the token's text over, evaluate it, until a limit. */
#ifndef CM_GENERATE_H
#define CM_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/forward.h"
#include "engine/model.h"
#include "engine/sampling.h"
#include "tokenizer/tokenizer.h"
#include "util/status.h"

/* Gets each generated token's text (raw bytes: may end inside a UTF-8
 * character); returns nonzero to stop (a stop string appeared). */
typedef int (*cm_gen_piece_fn)(void *user, const char *bytes, size_t n);

typedef struct {
    int n_predict;        /* at most this many tokens; -1: until the context is full */
    const int32_t *mask;  /* ids never sampled (--ignore-eos masks end-of-text) */
    int n_mask;
    cm_gen_piece_fn on_piece;
    void *user;
    const cm_heal *heal;  /* or NULL: the first token starts with these bytes, left out */
} cm_gen_opts;

typedef struct {
    int n_gen;            /* tokens generated (the one that hit a stop included) */
    const char *stop_reason; /* "end of text", "stop string", "context full", "token limit" */
} cm_gen_result;

/* Decodes from the logits the context holds now (those of its last token). */
cm_status cm_generate(const cm_model *m, cm_ctx *ctx, cm_sampler *smp, const cm_gen_opts *o,
                      cm_gen_result *res, cm_err *err);

/* One of the completions cm_generate_shared decodes. */
typedef struct {
    cm_sampler *smp;          /* its own sampler (seed), the prompt accepted */
    cm_gen_piece_fn on_piece; /* as cm_gen_opts' */
    void *user;
    cm_gen_result res;        /* set when it ends */
} cm_gen_seq;

/* Decodes n completions of one prompt (n_prompt >= 1 tokens) in a context
 * of several sequences (cm_ctx_new_multi): the prompt less its last token
 * is evaluated once, in sequence 0, and copied to the sequences used
 * (evaluated in each where the backend cannot copy); then every step
 * evaluates one token of each unfinished completion, up to n_seq of them
 * together, a finished one's sequence taking the next.  Each completion is
 * the one cm_generate gives from the prompt with its sampler (up to float
 * rounding, which may differ between batch shapes).  o: n_predict and the
 * mask (on_piece and user are the completions'). */
cm_status cm_generate_shared(const cm_model *m, cm_ctx *ctx, const int32_t *prompt, int n_prompt,
                             cm_gen_seq *seqs, int n, const cm_gen_opts *o, cm_err *err);

#endif
