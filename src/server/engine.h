/* engine.h - the model behind `codemoe serve`: one loaded model, one
 * context (one slot), and generation one token at a time so that a
 * streamed response can send each piece as it comes.
 *
 * One slot: requests that generate take it in turn (srv_engine_acquire
 * waits for it).  Tokenizing needs no slot (the tokenizer is read-only).
 * Everything that reads or changes the model's bound expert or the context
 * happens between acquire and release, on the thread that acquired. */
#ifndef CM_SRV_ENGINE_H
#define CM_SRV_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/forward.h"
#include "engine/sampling.h"
#include "experts/router.h"
#include "server/request.h"
#include "tokenizer/tokenizer.h"

#define SRV_BATCH 512 /* prompt tokens per forward batch, as `codemoe run` */

typedef struct {
    const char *model, *backend;
    cm_place_opts place;
    int n_ctx;             /* < 0: the model's, at most 4096; 0: the model's */
    cm_kv_type kv;
    int n_threads;         /* the OpenMP team of every thread that generates */
} srv_engine_opts;

typedef struct {
    srv_engine_opts o;
    cm_model m;
    int loaded;
    cm_ctx *ctx;
    char ctx_expert[32];   /* the pack member bound when ctx was made */
    cm_router *router;     /* packs: the language classifier, or NULL */
    const cm_backend_ops *be;
    srv_template tmpl;     /* the chat template, when tmpl_ok */
    int tmpl_ok;
    cm_err tmpl_err;       /* why chat is refused otherwise */
    int32_t chat_end_id;   /* <|im_end|> as one token, or -1 */
    char name[128];        /* the model's id in /v1/models: its file name */
    long long created;     /* when it was loaded (Unix seconds) */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int busy;
    atomic_int stopping;   /* no new generation may start */
    atomic_int abort;      /* a running generation ends at its next token */
    atomic_ullong seeds;   /* mixed into the clock for requests without a seed */
} srv_engine;

/* Loads the model, the router (packs) and the context; on failure e is
 * left freed. */
cm_status srv_engine_init(srv_engine *e, const srv_engine_opts *o, cm_err *err);
void srv_engine_free(srv_engine *e);
/* Waits for the slot; 0 (not acquired) once the server is stopping. */
int srv_engine_acquire(srv_engine *e);
void srv_engine_release(srv_engine *e);
/* Stops new generation and wakes every waiter (they get 0 from acquire). */
void srv_engine_stop(srv_engine *e);

/* /tokenize and /detokenize (no slot needed).  *ids / *text are malloc'ed;
 * the caller frees them.  CM_E_RANGE for an id outside the vocabulary. */
cm_status srv_tokenize(srv_engine *e, const srv_request *r, int32_t **ids, size_t *n,
                       cm_err *err);
cm_status srv_detokenize(srv_engine *e, const srv_request *r, char **text, size_t *len,
                         cm_err *err);

/* One generation, driven token by token. */
typedef struct {
    const srv_request *r;
    cm_sampler *smp;
    srv_str stops[SRV_MAX_STOPS + 1];
    int n_stops;
    int32_t end_id;          /* ends the generation besides end-of-text tokens */
    cm_utf8_stream utf8;
    char *pend;              /* decoded, not yet emitted (may start a stop string) */
    size_t pend_len, pend_cap;
    char *emit;              /* what the last srv_gen_next call produced */
    size_t emit_len, emit_cap;
    int n_prompt, n_gen, done;
    const char *finish;      /* llama.cpp's stop_type: "eos" (end of text), "word" (a
                              * stop string) or "limit" (tokens or context) */
    char expert[32];         /* the pack member that ran, or "" */
    double t_prompt, t_gen;
} srv_gen;

/* Routes (packs), tokenizes and checks r's prompt, then evaluates it.  Call
 * with the slot held.  CM_E_RANGE: the prompt does not fit the context or
 * is empty; CM_E_UNSUPPORTED: the model lacks what r needs (FIM tokens, a
 * chat template it can render). */
cm_status srv_gen_start(srv_engine *e, const srv_request *r, srv_gen *g, cm_err *err);
/* Generates one token; g->emit/emit_len hold the text it made safe to send
 * (whole UTF-8 characters, never any part of a stop string; often empty).
 * g->done once finished. */
cm_status srv_gen_next(srv_engine *e, srv_gen *g, cm_err *err);
void srv_gen_free(srv_gen *g);

#endif
