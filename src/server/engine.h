/* engine.h - the model behind `codemoe serve`: one loaded model, one
 * context holding --parallel sequences (slots), and generation one token
 * at a time so that a streamed response can send each piece as it comes.
 *
 * A request takes a free slot (waiting for one), preferring the slot whose
 * cache starts with the most of its prompt (those tokens are not evaluated
 * again).  One scheduler thread (sched.c) runs every evaluation: each step
 * it batches the work of all slots waiting on it (a generating slot's one
 * token, a new request's prompt), so requests join the running batch.  The
 * scheduler also samples each generating slot's next token with the
 * request's sampler and queues it at once, so no step waits for the
 * connections' threads; they read the tokens, detokenize, look for stop
 * strings and send, and cancel the slot when they are done.  Language-expert
 * packs: a request's expert is chosen when it starts; a step batches the
 * slots of every expert when the members share all but the feed-forward
 * (each member's rows through its own), else of one expert, the context
 * rebound to it.  Tokenizing needs no slot
 * (the tokenizer is read-only). */
#ifndef CM_SRV_ENGINE_H
#define CM_SRV_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/forward.h"
#include "engine/sampling.h"
#include "experts/pack.h"
#include "experts/router.h"
#include "server/request.h"
#include "tokenizer/tokenizer.h"

#define SRV_BATCH 512 /* prompt tokens per forward batch, as `codemoe run` */
#define SRV_MAX_LANES 16

typedef struct {
    const char *model, *backend;
    cm_place_opts place;
    int n_ctx;             /* < 0: the model's, at most 4096; 0: the model's */
    cm_kv_type kv;
    int n_threads;         /* the OpenMP team of the scheduler thread */
    int n_slots;           /* --parallel: sequences decoded together */
    const char *chat_template; /* a srv_template_by_name name, or NULL: the GGUF's */
    int n_lanes;           /* --lanes: scheduler threads, each with its own context
                            * and share of the slots (0: chosen by srv_engine_init) */
} srv_engine_opts;

/* A sequence of the context.  Its cache holds tokens[0 .. n_done); the
 * tokens after that are queued for the scheduler.  While queued, only the
 * scheduler touches it (under the engine's lock: the counters). */
typedef struct {
    int id;                /* its index in the engine's slots */
    int lane, seq;         /* the lane that runs it and its sequence in the lane's context */
    int busy;              /* a request holds it */
    int queued;            /* tokens[n_done ..] handed to the scheduler */
    int keep;              /* >= 0: the scheduler first cuts the cache to this */
    char expert[32];       /* the pack member its cache was made with ("" none) */
    int member;            /* its index in member_names (mixed steps), else 0 */
    int32_t *tokens;
    int n_tokens, n_done, cap;
    /* generation (srv_slot_generate): the scheduler samples with smp after
     * each step and appends to out; the request reads out[n_read ..] */
    cm_sampler *smp;       /* the request's; only the scheduler uses it meanwhile */
    const cm_heal *heal;   /* the request's: the first token starts with its bytes */
    int n_predict;         /* tokens to generate at most (< 0: no limit) */
    int32_t end_id;        /* ends the generation besides end-of-text tokens */
    int32_t *out;
    int n_out, n_read, out_cap;
    const char *end;       /* once no token will follow: "eos" or "limit" */
    int cancel;            /* the request wants no more tokens */
    pthread_cond_t ready;  /* a token, the end or an error for its request */
    cm_status st;          /* the scheduler's verdict on the last work */
    cm_err err;
    unsigned long long used; /* when it was last released (LRU) */
} srv_slot;

typedef struct srv_engine srv_engine;

/* A scheduler thread with its own context over a share of the slots.  On
 * the CPU a small model's operations are too short for several threads to
 * share each of them without waiting for one another at every one, so the
 * threads run lanes side by side instead, each stepping its own slots. */
typedef struct {
    srv_engine *e;
    cm_ctx *ctx;           /* its slots' sequences; its thread's alone */
    char ctx_expert[32];   /* the pack member the context reads */
    int first, n;          /* its slots: first .. first + n - 1 */
    int n_threads;         /* its thread's OpenMP team */
    pthread_t thread;
    int started;
    pthread_cond_t work;   /* its thread waits for queued slots */
} srv_lane;

struct srv_engine {
    srv_engine_opts o;
    cm_model m;            /* its tensors rebound by the scheduler (packs) */
    int n_vocab;
    int loaded;
    srv_lane lanes[SRV_MAX_LANES];
    int n_lanes;
    srv_slot *slots;
    int n_slots;
    cm_router *router;     /* packs: the language classifier, or NULL */
    /* packs whose members differ only in the feed-forward (cm_ctx_set_members):
     * one step runs every member's slots; else a step runs one member's */
    int mixed;
    int n_members;
    char member_names[CM_PACK_MAX_MEMBERS][32];
    cm_layer *member_layers[CM_PACK_MAX_MEMBERS];
    const cm_backend_ops *be;
    srv_template tmpl;     /* the chat template, when tmpl_ok */
    int tmpl_ok;
    cm_err tmpl_err;       /* why chat is refused otherwise */
    int32_t chat_end_id;   /* the template's end of turn as one token, or -1 */
    char name[128];        /* the model's id in /v1/models: its file name */
    long long created;     /* when it was loaded (Unix seconds) */
    pthread_mutex_t lock;
    pthread_cond_t done;   /* requests wait for a free slot */
    int quit;
    int n_busy;            /* slots held by requests */
    unsigned long long clock;
    unsigned long long steps, step_seqs, step_tokens, reused_tokens; /* for /metrics */
    unsigned long long expert_requests[CM_PACK_MAX_MEMBERS]; /* by member index */
    atomic_int stopping;   /* no new generation may start */
    atomic_int abort;      /* a running generation ends at its next token */
    atomic_ullong seeds;   /* mixed into the clock for requests without a seed */
};

/* Loads the model, the router (packs) and the context; on failure e is
 * left freed. */
cm_status srv_engine_init(srv_engine *e, const srv_engine_opts *o, cm_err *err);
void srv_engine_free(srv_engine *e);
/* 0 once the server is stopping (no new generation may start). */
int srv_engine_acquire(srv_engine *e);
void srv_engine_release(srv_engine *e);
/* Stops new generation and wakes every waiter (they get 0 from acquire). */
void srv_engine_stop(srv_engine *e);
int srv_engine_slots_busy(srv_engine *e);
/* Binds the pack member named expert to the model and the lane's context
 * (the lane's thread only; packs that need it have one lane). */
cm_status srv_engine_bind(srv_engine *e, srv_lane *l, const char *expert, cm_err *err);

/* The index of pack member name in e->member_names (0 if absent). */
int srv_engine_member(const srv_engine *e, const char *name);

/* sched.c: the lanes' scheduler threads and the slots (srv_engine_init
 * lays the lanes out first). */
cm_status srv_sched_start(srv_engine *e, cm_err *err);
void srv_sched_stop(srv_engine *e);
/* Takes a free slot for a prompt of n ids run by expert (waits for one;
 * NULL once stopping): the one whose cache shares the longest prefix with
 * ids (reuse) or the least recently used.  Its tokens become ids, the
 * shared prefix (at most n - 1) kept: *reused says how many. */
srv_slot *srv_slot_take(srv_engine *e, const char *expert, const int32_t *ids, int n,
                        int reuse, int *reused, cm_err *err);
/* Appends a token to the slot's sequence (not yet evaluated). */
cm_status srv_slot_push(srv_slot *sl, int32_t id, cm_err *err);
/* Hands the slot's unevaluated tokens (the prompt) to the scheduler, which
 * then generates with smp until end_id or an end-of-text token, n_predict
 * tokens, a full context, srv_engine's abort or the request's
 * srv_slot_give.  Waits until the prompt is in the cache (the first token
 * is out, or the end).  heal (or NULL): the first token's sampling keeps
 * only those that start with its bytes. */
cm_status srv_slot_generate(srv_engine *e, srv_slot *sl, cm_sampler *smp, const cm_heal *heal,
                            int n_predict, int32_t end_id, cm_err *err);
/* The next generated token in *id (waiting for it) with *end NULL, or
 * *end = "eos" or "limit" once none will follow. */
cm_status srv_slot_next(srv_engine *e, srv_slot *sl, int32_t *id, const char **end,
                        cm_err *err);
/* The request wants no more tokens: the scheduler stops generating at its
 * next look (the slot stays the request's). */
void srv_slot_cancel(srv_engine *e, srv_slot *sl);
/* Ends any generation (the scheduler stops at its next look) and frees the
 * slot for the next request; the sampler is the caller's again. */
void srv_slot_give(srv_engine *e, srv_slot *sl);

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
    srv_engine *e;           /* whose slot it holds */
    srv_slot *slot;
    int n_reused;            /* prompt tokens found in the slot's cache */
    double t_start;          /* when generation began (t_max_predict_ms) */
    int new_line;            /* a generated piece held a new line */
    cm_heal heal;            /* /infill: the bytes the first token starts with, left out */
} srv_gen;

/* Routes (packs), tokenizes and checks r's prompt, takes a slot, then
 * evaluates what its cache lacks.  CM_E_RANGE: the prompt does not fit the context or
 * is empty; CM_E_UNSUPPORTED: the model lacks what r needs (FIM tokens, a
 * chat template it can render). */
cm_status srv_gen_start(srv_engine *e, const srv_request *r, srv_gen *g, cm_err *err);
/* Generates one token; g->emit/emit_len hold the text it made safe to send
 * (whole UTF-8 characters, never any part of a stop string; often empty).
 * g->done once finished. */
cm_status srv_gen_next(srv_engine *e, srv_gen *g, cm_err *err);
void srv_gen_free(srv_gen *g);

#endif
