/* sched.c - the slots of `codemoe serve` and the one thread that evaluates
 * for all of them (continuous batching).
 *
 * A request's thread queues its slot's new tokens and waits; the scheduler
 * takes every queued slot (of one expert, for packs whose members cannot
 * share a step) into a batch (generating slots first: one token each, then
 * prompts up to SRV_BATCH tokens; a member's slots side by side), evaluates
 * it, hands each slot whose tokens are all in the cache the logits of its
 * last one, and starts over.  A prompt longer than a batch goes on in later
 * steps beside the others' tokens. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/engine.h"
#include "util/threads.h"

#define SRV_TURN_WAIT_MS 20

typedef struct {
    int32_t *ids, *seq, *member;
    uint8_t *want;
    float *logits;
    int *slot, *count; /* per slot in the batch: which, how many tokens */
    int n, n_slots;
} batch;

static void batch_free(batch *b)
{
    free(b->ids), free(b->seq), free(b->member), free(b->want), free(b->logits), free(b->slot), free(b->count);
}

static int batch_alloc(batch *b, int n_tok, int n_slots, int n_vocab)
{
    memset(b, 0, sizeof *b);
    b->ids = malloc((size_t)n_tok * sizeof *b->ids);
    b->seq = malloc((size_t)n_tok * sizeof *b->seq);
    b->member = malloc((size_t)n_tok * sizeof *b->member);
    b->want = malloc((size_t)n_tok);
    b->logits = malloc((size_t)n_slots * n_vocab * sizeof *b->logits);
    b->slot = malloc((size_t)n_slots * sizeof *b->slot);
    b->count = malloc((size_t)n_slots * sizeof *b->count);
    return b->ids && b->seq && b->member && b->want && b->logits && b->slot && b->count;
}

/* Adds up to room of sl's queued tokens; the last one's logits wanted. */
static int take_tokens(batch *b, srv_slot *sl, int room)
{
    int have = sl->n_tokens - sl->n_done, k = have < room ? have : room;
    for (int i = 0; i < k; i++) {
        b->ids[b->n + i] = sl->tokens[sl->n_done + i];
        b->seq[b->n + i] = sl->id;
        b->member[b->n + i] = sl->member;
        b->want[b->n + i] = i == have - 1;
    }
    b->slot[b->n_slots] = sl->id, b->count[b->n_slots++] = k;
    b->n += k;
    return k;
}

/* Mixed steps: every queued slot, generation first, each member's slots
 * together (one product per member and weight). */
static void form_mixed(srv_engine *e, batch *b)
{
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < e->n_members; k++)
            for (int i = 0; i < e->n_slots && b->n < SRV_BATCH; i++) {
                srv_slot *sl = &e->slots[i];
                int gen = sl->n_tokens - sl->n_done == 1;
                if (sl->queued && gen == !pass && sl->member == k)
                    take_tokens(b, sl, SRV_BATCH - b->n);
            }
}

/* The next step's batch (lock held): the slots of the expert of the first
 * queued slot after *rr (round robin, so no expert waits for ever). */
static void form_batch(srv_engine *e, batch *b, int *rr, char *expert)
{
    int first = -1;
    b->n = b->n_slots = 0;
    if (e->mixed) {
        expert[0] = 0;
        form_mixed(e, b);
        return;
    }
    for (int i = 0; i < e->n_slots && first < 0; i++)
        if (e->slots[(*rr + i) % e->n_slots].queued)
            first = (*rr + i) % e->n_slots;
    if (first < 0)
        return;
    *rr = (first + 1) % e->n_slots;
    snprintf(expert, 32, "%s", e->slots[first].expert);
    for (int pass = 0; pass < 2; pass++) /* one-token work first: generation */
        for (int i = 0; i < e->n_slots && b->n < SRV_BATCH; i++) {
            srv_slot *sl = &e->slots[i];
            int gen = sl->n_tokens - sl->n_done == 1;
            if (sl->queued && gen == !pass && !strcmp(sl->expert, expert))
                take_tokens(b, sl, SRV_BATCH - b->n);
        }
}

/* Evaluates a formed batch (lock not held). */
static cm_status run_batch(srv_engine *e, batch *b, const char *expert, const int *keep,
                           cm_err *err)
{
    for (int i = 0; i < b->n_slots; i++)
        if (keep[i] >= 0)
            cm_ctx_seq_keep(e->ctx, b->slot[i], keep[i]);
    if (e->mixed)
        return cm_eval_batch_members(e->ctx, b->ids, b->seq, b->member, b->n, b->want,
                                     b->logits, err);
    cm_status s = srv_engine_bind(e, expert, err);
    return s ? s : cm_eval_batch(e->ctx, b->ids, b->seq, b->n, b->want, b->logits, err);
}

/* After a step (lock held): slots whose tokens are all in get their logits. */
static void finish_batch(srv_engine *e, batch *b, cm_status s, const cm_err *err)
{
    const size_t V = (size_t)e->m.hp.n_vocab;
    int row = 0;
    e->steps++, e->step_seqs += b->n_slots, e->step_tokens += b->n;
    for (int i = 0; i < b->n_slots; i++) {
        srv_slot *sl = &e->slots[b->slot[i]];
        sl->n_done += b->count[i];
        if (s) {
            sl->st = s, sl->err = *err, sl->queued = 0;
            sl->n_tokens = sl->n_done = 0; /* its cache is not to be trusted */
        } else if (sl->n_done == sl->n_tokens) {
            memcpy(sl->logits, b->logits + row++ * V, V * sizeof(float));
            sl->st = CM_OK, sl->queued = 0, sl->turn = 1;
        }
    }
    pthread_cond_broadcast(&e->done);
}

/* Waits (lock held) until the requests handed logits by the last step have
 * sampled and queued their next token, or left, so that the next batch
 * holds them all; a request busy elsewhere (a client slow to read its
 * stream) is waited for only a few milliseconds. */
static void wait_turns(srv_engine *e)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += SRV_TURN_WAIT_MS * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L, until.tv_nsec %= 1000000000L;
    for (;;) {
        int pending = 0;
        for (int i = 0; i < e->n_slots; i++)
            pending |= e->slots[i].turn;
        if (!pending || e->quit || pthread_cond_timedwait(&e->work, &e->lock, &until))
            break;
    }
    for (int i = 0; i < e->n_slots; i++)
        e->slots[i].turn = 0;
}

static void *sched_main(void *arg)
{
    srv_engine *e = arg;
    batch b;
    int rr = 0, *keep = malloc((size_t)e->n_slots * sizeof *keep);
    char expert[32];
#ifdef _OPENMP
    omp_set_num_threads(e->o.n_threads); /* the team the context's scratch was sized for */
#endif
    int ok = keep && batch_alloc(&b, SRV_BATCH, e->n_slots, e->m.hp.n_vocab);
    pthread_mutex_lock(&e->lock);
    while (!e->quit) {
        wait_turns(e);
        form_batch(e, &b, &rr, expert);
        if (!ok || b.n == 0) {
            if (!ok) /* no memory for a batch: every request fails */
                for (int i = 0; i < e->n_slots; i++)
                    if (e->slots[i].queued)
                        e->slots[i].queued = 0,
                        e->slots[i].st = cm_fail(&e->slots[i].err, CM_E_NOMEM, "out of memory");
            pthread_cond_broadcast(&e->done);
            if (!e->quit) /* (wait_turns may have seen it set) */
                pthread_cond_wait(&e->work, &e->lock);
            continue;
        }
        for (int i = 0; i < b.n_slots; i++)
            keep[i] = e->slots[b.slot[i]].keep, e->slots[b.slot[i]].keep = -1;
        pthread_mutex_unlock(&e->lock);
        cm_err err = {0};
        cm_status s = run_batch(e, &b, expert, keep, &err);
        pthread_mutex_lock(&e->lock);
        finish_batch(e, &b, s, &err);
    }
    pthread_mutex_unlock(&e->lock);
    if (ok)
        batch_free(&b);
    free(keep);
    return NULL;
}

cm_status srv_sched_start(srv_engine *e, cm_err *err)
{
    e->slots = calloc((size_t)e->n_slots, sizeof *e->slots);
    if (!e->slots)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (int i = 0; i < e->n_slots; i++) {
        e->slots[i].id = i, e->slots[i].keep = -1;
        if (!(e->slots[i].logits = malloc((size_t)e->m.hp.n_vocab * sizeof(float))))
            return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    if (pthread_create(&e->sched, NULL, sched_main, e))
        return cm_fail(err, CM_E_IO, "cannot start the scheduler thread");
    e->sched_started = 1;
    return CM_OK;
}

void srv_sched_stop(srv_engine *e)
{
    if (e->sched_started) {
        pthread_mutex_lock(&e->lock);
        e->quit = 1;
        pthread_cond_broadcast(&e->work);
        pthread_cond_broadcast(&e->done);
        pthread_mutex_unlock(&e->lock);
        pthread_join(e->sched, NULL);
        e->sched_started = 0;
    }
    for (int i = 0; e->slots && i < e->n_slots; i++)
        free(e->slots[i].tokens), free(e->slots[i].logits);
    free(e->slots);
    e->slots = NULL;
}

/* ---- slots */

static int common_prefix(const srv_slot *sl, const char *expert, const int32_t *ids, int n)
{
    int k = 0;
    if (strcmp(sl->expert, expert))
        return 0;
    while (k < sl->n_done && k < n && sl->tokens[k] == ids[k])
        k++;
    return k;
}

/* The free slot to take (lock held), or NULL. */
static srv_slot *best_slot(srv_engine *e, const char *expert, const int32_t *ids, int n,
                           int reuse, int *shared)
{
    srv_slot *best = NULL;
    *shared = -1;
    for (int i = 0; i < e->n_slots; i++) {
        srv_slot *sl = &e->slots[i];
        int k = reuse ? common_prefix(sl, expert, ids, n) : 0;
        if (!sl->busy && (k > *shared || (k == *shared && sl->used < best->used)))
            best = sl, *shared = k;
    }
    return best;
}

srv_slot *srv_slot_take(srv_engine *e, const char *expert, const int32_t *ids, int n,
                        int reuse, int *reused, cm_err *err)
{
    srv_slot *sl = NULL;
    int k = 0;
    pthread_mutex_lock(&e->lock);
    while (!atomic_load(&e->stopping) && !(sl = best_slot(e, expert, ids, n, reuse, &k)))
        pthread_cond_wait(&e->done, &e->lock);
    if (sl) {
        sl->busy = 1;
        e->n_busy++;
    }
    pthread_mutex_unlock(&e->lock);
    if (!sl) {
        cm_fail(err, CM_E_RANGE, "the server is shutting down");
        return NULL;
    }
    k = k < n - 1 ? k : n - 1; /* the last token is evaluated again: its logits */
    sl->n_tokens = sl->n_done = k;
    sl->keep = k;
    snprintf(sl->expert, sizeof sl->expert, "%s", expert);
    sl->member = srv_engine_member(e, expert);
    *reused = k;
    pthread_mutex_lock(&e->lock);
    e->reused_tokens += k;
    pthread_mutex_unlock(&e->lock);
    for (int i = k; i < n; i++)
        if (srv_slot_push(sl, ids[i], err)) {
            srv_slot_give(e, sl);
            return NULL;
        }
    return sl;
}

cm_status srv_slot_push(srv_slot *sl, int32_t id, cm_err *err)
{
    if (sl->n_tokens == sl->cap) {
        int c = sl->cap * 2 + 256;
        int32_t *p = realloc(sl->tokens, (size_t)c * sizeof *p);
        if (!p)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        sl->tokens = p, sl->cap = c;
    }
    sl->tokens[sl->n_tokens++] = id;
    return CM_OK;
}

cm_status srv_slot_eval(srv_engine *e, srv_slot *sl, cm_err *err)
{
    pthread_mutex_lock(&e->lock);
    sl->queued = 1;
    sl->turn = 0;
    pthread_cond_signal(&e->work);
    while (sl->queued && !e->quit)
        pthread_cond_wait(&e->done, &e->lock);
    cm_status s = sl->queued ? cm_fail(err, CM_E_RANGE, "the server is shutting down") : sl->st;
    if (s && !sl->queued)
        *err = sl->err;
    pthread_mutex_unlock(&e->lock);
    return s;
}

void srv_slot_give(srv_engine *e, srv_slot *sl)
{
    pthread_mutex_lock(&e->lock);
    while (sl->queued && !e->quit) /* (never: its request waits for its work) */
        pthread_cond_wait(&e->done, &e->lock);
    sl->n_tokens = sl->n_done; /* what its cache holds, for the next prompt */
    sl->busy = 0, sl->turn = 0;
    sl->used = ++e->clock;
    pthread_cond_signal(&e->work);
    e->n_busy--;
    pthread_cond_broadcast(&e->done);
    pthread_mutex_unlock(&e->lock);
}
