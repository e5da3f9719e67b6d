/* generate.h - the decoding loop `codemoe run` and `codemoe eval` share:
 * sample, hand the token's text over, evaluate it, until a limit. */
#ifndef CM_GENERATE_H
#define CM_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/forward.h"
#include "engine/model.h"
#include "engine/sampling.h"
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
} cm_gen_opts;

typedef struct {
    int n_gen;            /* tokens generated (the one that hit a stop included) */
    const char *stop_reason; /* "end of text", "stop string", "context full", "token limit" */
} cm_gen_result;

/* Decodes from the logits the context holds now (those of its last token). */
cm_status cm_generate(const cm_model *m, cm_ctx *ctx, cm_sampler *smp, const cm_gen_opts *o,
                      cm_gen_result *res, cm_err *err);

#endif
