/* sched.c - the slots of `codemoe serve` and the lanes' threads that
 * evaluate for them (continuous batching).
 *
 * A request's thread queues its slot's new tokens and waits; its lane's
 * scheduler takes every queued slot of the lane (of one expert, for packs whose members cannot
 * share a step) into a batch (generating slots first: one token each, then
 * prompts up to SRV_BATCH tokens; a member's slots side by side), evaluates
 * it, samples the next token of each slot whose tokens are all in the
 * cache from the logits of its last one and queues it, and starts over:
 * steps run back to back while the requests' threads send the tokens.  A
 * prompt longer than a batch goes on in later steps beside the others'
 * tokens. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/engine.h"
#include "util/threads.h"

/* A generating request is woken for its first token, then once this many
 * are waiting (or at the end): a wake-up per token cost the server ~10 %
 * of its CPU at 16 slots, and 4 steps are a few milliseconds. */
#define SRV_WAKE_TOKENS 4

typedef struct {
    int32_t *ids, *seq, *member;
    int32_t *next; /* per slot in the batch: its sampled token, or NO_TOKEN */
    uint8_t *want;
    float *logits;
    int *slot, *count; /* per slot in the batch: which, how many tokens */
    int n, n_slots;
} batch;

static void batch_free(batch *b)
{
    free(b->ids), free(b->seq), free(b->member), free(b->next), free(b->want), free(b->logits),
        free(b->slot), free(b->count);
}

static int batch_alloc(batch *b, int n_tok, int n_slots, int n_vocab)
{
    memset(b, 0, sizeof *b);
    b->ids = malloc((size_t)n_tok * sizeof *b->ids);
    b->seq = malloc((size_t)n_tok * sizeof *b->seq);
    b->member = malloc((size_t)n_tok * sizeof *b->member);
    b->next = malloc((size_t)n_slots * sizeof *b->next);
    b->want = malloc((size_t)n_tok);
    b->logits = malloc((size_t)n_slots * n_vocab * sizeof *b->logits);
    b->slot = malloc((size_t)n_slots * sizeof *b->slot);
    b->count = malloc((size_t)n_slots * sizeof *b->count);
    return b->ids && b->seq && b->member && b->next && b->want && b->logits && b->slot && b->count;
}

/* Adds up to room of sl's queued tokens; the last one's logits wanted. */
static int take_tokens(batch *b, srv_slot *sl, int room)
{
    int have = sl->n_tokens - sl->n_done, k = have < room ? have : room;
    for (int i = 0; i < k; i++) {
        b->ids[b->n + i] = sl->tokens[sl->n_done + i];
        b->seq[b->n + i] = sl->seq;
        b->member[b->n + i] = sl->member;
        b->want[b->n + i] = i == have - 1;
    }
    b->slot[b->n_slots] = sl->id, b->count[b->n_slots++] = k;
    b->n += k;
    return k;
}

/* Slots whose requests stopped wanting tokens leave the queue (lock
 * held). */
static void drop_cancelled(srv_engine *e, const srv_lane *l)
{
    for (int i = l->first; i < l->first + l->n; i++) {
        srv_slot *sl = &e->slots[i];
        if (sl->queued && sl->cancel) {
            sl->queued = 0;
            pthread_cond_signal(&sl->ready);
        }
    }
}

/* Mixed steps: every queued slot, generation first, each member's slots
 * together (one product per member and weight). */
static void form_mixed(srv_engine *e, const srv_lane *l, batch *b)
{
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < e->n_members; k++)
            for (int i = l->first; i < l->first + l->n && b->n < SRV_BATCH; i++) {
                srv_slot *sl = &e->slots[i];
                int gen = sl->n_tokens - sl->n_done == 1;
                if (sl->queued && gen == !pass && sl->member == k)
                    take_tokens(b, sl, SRV_BATCH - b->n);
            }
}

/* The next step's batch (lock held): the slots of the expert of the first
 * queued slot after *rr (round robin, so no expert waits for ever). */
static void form_batch(srv_engine *e, const srv_lane *l, batch *b, int *rr, char *expert)
{
    int first = -1;
    b->n = b->n_slots = 0;
    drop_cancelled(e, l);
    if (e->mixed) {
        expert[0] = 0;
        form_mixed(e, l, b);
        return;
    }
    for (int i = 0; i < l->n && first < 0; i++)
        if (e->slots[l->first + (*rr + i) % l->n].queued)
            first = l->first + (*rr + i) % l->n;
    if (first < 0)
        return;
    *rr = (first - l->first + 1) % l->n;
    snprintf(expert, 32, "%s", e->slots[first].expert);
    for (int pass = 0; pass < 2; pass++) /* one-token work first: generation */
        for (int i = l->first; i < l->first + l->n && b->n < SRV_BATCH; i++) {
            srv_slot *sl = &e->slots[i];
            int gen = sl->n_tokens - sl->n_done == 1;
            if (sl->queued && gen == !pass && !strcmp(sl->expert, expert))
                take_tokens(b, sl, SRV_BATCH - b->n);
        }
}

/* Evaluates a formed batch (lock not held). */
static cm_status run_batch(srv_engine *e, srv_lane *l, batch *b, const char *expert,
                           const int *keep, cm_err *err)
{
    for (int i = 0; i < b->n_slots; i++)
        if (keep[i] >= 0)
            cm_ctx_seq_keep(l->ctx, e->slots[b->slot[i]].seq, keep[i]);
    if (e->mixed)
        return cm_eval_batch_members(l->ctx, b->ids, b->seq, b->member, b->n, b->want,
                                     b->logits, err);
    cm_status s = srv_engine_bind(e, l, expert, err);
    return s ? s : cm_eval_batch(l->ctx, b->ids, b->seq, b->n, b->want, b->logits, err);
}

static int out_push(srv_slot *sl, int32_t id)
{
    if (sl->n_out == sl->out_cap) {
        int c = sl->out_cap * 2 + 64;
        int32_t *p = realloc(sl->out, (size_t)c * sizeof *p);
        if (!p)
            return 0;
        sl->out = p, sl->out_cap = c;
    }
    sl->out[sl->n_out++] = id;
    return 1;
}

#define NO_TOKEN (-1)

/* After a step, the lock not held: the next token of each generating slot
 * whose tokens are all in, from its row of the logits (its sampler is the
 * scheduler's while the slot is queued), so that the lock is not held
 * through 16 passes over the vocabulary. */
static void sample_batch(srv_engine *e, batch *b)
{
    const size_t V = (size_t)e->m.hp.n_vocab;
    int row = 0;
    for (int i = 0; i < b->n_slots; i++) {
        const srv_slot *sl = &e->slots[b->slot[i]];
        b->next[i] = NO_TOKEN;
        if (sl->n_done + b->count[i] != sl->n_tokens)
            continue;
        float *logits = b->logits + row++ * V;
        if (sl->smp && !sl->end && !atomic_load(&e->abort) &&
            (sl->n_predict < 0 || sl->n_out < sl->n_predict)) {
            if (sl->n_out == 0 && sl->heal)
                cm_heal_logits(sl->heal, logits, (int32_t)V);
            b->next[i] = cm_sampler_sample(sl->smp, logits);
        }
    }
}

/* The scheduler's half of a generation (lock held): the slot's next token
 * (sample_batch's), handed to its request and queued for the next step, or
 * the end. */
static void gen_step(srv_engine *e, srv_slot *sl, int32_t id)
{
    if (id == NO_TOKEN) { /* aborted or n_predict reached */
        sl->end = "limit";
        return;
    }
    if (cm_tok_is_eog(e->m.tok, id) || id == sl->end_id) {
        sl->end = "eos";
        return;
    }
    cm_status s = out_push(sl, id) ? CM_OK : cm_fail(&sl->err, CM_E_NOMEM, "out of memory");
    if (!s && sl->n_tokens >= e->o.n_ctx) { /* sent, but there is no room to evaluate it */
        sl->end = "limit";
        return;
    }
    cm_sampler_accept(sl->smp, id);
    if (!s)
        s = srv_slot_push(sl, id, &sl->err);
    if (s)
        sl->st = s;
    else
        sl->queued = 1;
}

/* After a step (lock held): slots whose tokens are all in get their next
 * token sampled. */
static void finish_batch(srv_engine *e, batch *b, cm_status s, const cm_err *err)
{
    e->steps++, e->step_seqs += b->n_slots, e->step_tokens += b->n;
    for (int i = 0; i < b->n_slots; i++) {
        srv_slot *sl = &e->slots[b->slot[i]];
        sl->n_done += b->count[i];
        if (s) {
            sl->st = s, sl->err = *err, sl->queued = 0;
            sl->n_tokens = sl->n_done = 0; /* its cache is not to be trusted */
        } else if (sl->n_done == sl->n_tokens) {
            sl->queued = 0;
            if (sl->smp && !sl->cancel && !sl->end)
                gen_step(e, sl, b->next[i]);
            if (sl->queued && sl->n_out > 1 && sl->n_out - sl->n_read < SRV_WAKE_TOKENS)
                continue; /* generating on: its request is woken later */
        } else if (!sl->cancel) {
            continue; /* more of its prompt in the next step */
        } else {
            sl->queued = 0;
        }
        pthread_cond_signal(&sl->ready);
    }
}

static void *sched_main(void *arg)
{
    srv_lane *l = arg;
    srv_engine *e = l->e;
    batch b;
    int rr = 0, *keep = malloc((size_t)l->n * sizeof *keep);
    char expert[32];
#ifdef _OPENMP
    omp_set_num_threads(l->n_threads); /* the team the context's scratch was sized for */
#endif
    int ok = keep && batch_alloc(&b, SRV_BATCH, l->n, e->m.hp.n_vocab);
    pthread_mutex_lock(&e->lock);
    while (!e->quit) {
        form_batch(e, l, &b, &rr, expert);
        if (!ok || b.n == 0) {
            for (int i = l->first; !ok && i < l->first + l->n; i++)
                if (e->slots[i].queued) { /* no memory for a batch: every request fails */
                    e->slots[i].queued = 0;
                    e->slots[i].st = cm_fail(&e->slots[i].err, CM_E_NOMEM, "out of memory");
                    pthread_cond_signal(&e->slots[i].ready);
                }
            pthread_cond_wait(&l->work, &e->lock);
            continue;
        }
        for (int i = 0; i < b.n_slots; i++)
            keep[i] = e->slots[b.slot[i]].keep, e->slots[b.slot[i]].keep = -1;
        pthread_mutex_unlock(&e->lock);
        cm_err err = {0};
        cm_status s = run_batch(e, l, &b, expert, keep, &err);
        if (!s)
            sample_batch(e, &b);
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
    for (int k = 0; k < e->n_lanes; k++)
        for (int i = e->lanes[k].first; i < e->lanes[k].first + e->lanes[k].n; i++) {
            srv_slot *sl = &e->slots[i];
            sl->id = i, sl->lane = k, sl->seq = i - e->lanes[k].first, sl->keep = -1;
            pthread_cond_init(&sl->ready, NULL);
        }
    for (int k = 0; k < e->n_lanes; k++) {
        if (pthread_create(&e->lanes[k].thread, NULL, sched_main, &e->lanes[k]))
            return cm_fail(err, CM_E_IO, "cannot start a scheduler thread");
        e->lanes[k].started = 1;
    }
    return CM_OK;
}

void srv_sched_stop(srv_engine *e)
{
    pthread_mutex_lock(&e->lock);
    e->quit = 1;
    for (int k = 0; k < e->n_lanes; k++)
        pthread_cond_broadcast(&e->lanes[k].work);
    pthread_cond_broadcast(&e->done);
    for (int i = 0; e->slots && i < e->n_slots; i++)
        pthread_cond_broadcast(&e->slots[i].ready);
    pthread_mutex_unlock(&e->lock);
    for (int k = 0; k < e->n_lanes; k++)
        if (e->lanes[k].started) {
            pthread_join(e->lanes[k].thread, NULL);
            e->lanes[k].started = 0;
        }
    for (int i = 0; e->slots && i < e->n_slots; i++) {
        free(e->slots[i].tokens), free(e->slots[i].out);
        pthread_cond_destroy(&e->slots[i].ready);
    }
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

/* The free slot to take (lock held), or NULL: the longest shared prefix,
 * then the lane with the fewest busy slots, then the least recently used. */
static srv_slot *best_slot(srv_engine *e, const char *expert, const int32_t *ids, int n,
                           int reuse, int *shared)
{
    int busy[SRV_MAX_LANES] = {0};
    srv_slot *best = NULL;
    for (int i = 0; i < e->n_slots; i++)
        busy[e->slots[i].lane] += e->slots[i].busy;
    *shared = -1;
    for (int i = 0; i < e->n_slots; i++) {
        srv_slot *sl = &e->slots[i];
        if (sl->busy) /* (its request may be filling its tokens, unlocked) */
            continue;
        int k = reuse ? common_prefix(sl, expert, ids, n) : 0;
        if (k < *shared)
            continue;
        if (k == *shared && (busy[sl->lane] > busy[best->lane] ||
                             (busy[sl->lane] == busy[best->lane] && sl->used >= best->used)))
            continue;
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

cm_status srv_slot_generate(srv_engine *e, srv_slot *sl, cm_sampler *smp, const cm_heal *heal,
                            int n_predict, int32_t end_id, cm_err *err)
{
    pthread_mutex_lock(&e->lock);
    sl->smp = smp, sl->heal = heal, sl->n_predict = n_predict, sl->end_id = end_id;
    sl->n_out = sl->n_read = 0;
    sl->end = NULL, sl->cancel = 0, sl->st = CM_OK;
    sl->queued = 1;
    pthread_cond_signal(&e->lanes[sl->lane].work);
    while (!e->quit && !sl->st && !sl->end && sl->n_out == 0)
        pthread_cond_wait(&sl->ready, &e->lock);
    cm_status s = sl->st;
    if (s)
        *err = sl->err;
    else if (!sl->end && sl->n_out == 0)
        s = cm_fail(err, CM_E_RANGE, "the server is shutting down");
    pthread_mutex_unlock(&e->lock);
    return s;
}

cm_status srv_slot_next(srv_engine *e, srv_slot *sl, int32_t *id, const char **end,
                        cm_err *err)
{
    cm_status s = CM_OK;
    *end = NULL;
    pthread_mutex_lock(&e->lock);
    while (!e->quit && sl->n_read == sl->n_out && !sl->end && !sl->st)
        pthread_cond_wait(&sl->ready, &e->lock);
    if (sl->n_read < sl->n_out)
        *id = sl->out[sl->n_read++];
    else if (sl->st)
        s = sl->st, *err = sl->err;
    else if (sl->end)
        *end = sl->end;
    else
        s = cm_fail(err, CM_E_RANGE, "the server is shutting down");
    pthread_mutex_unlock(&e->lock);
    return s;
}

void srv_slot_cancel(srv_engine *e, srv_slot *sl)
{
    pthread_mutex_lock(&e->lock);
    sl->cancel = 1;
    pthread_cond_signal(&e->lanes[sl->lane].work);
    pthread_mutex_unlock(&e->lock);
}

void srv_slot_give(srv_engine *e, srv_slot *sl)
{
    pthread_mutex_lock(&e->lock);
    sl->cancel = 1;
    pthread_cond_signal(&e->lanes[sl->lane].work); /* (a queued slot leaves at the next step) */
    while (sl->queued && !e->quit)
        pthread_cond_wait(&sl->ready, &e->lock);
    sl->smp = NULL, sl->heal = NULL;
    sl->n_tokens = sl->n_done; /* what its cache holds, for the next prompt */
    sl->busy = 0;
    sl->used = ++e->clock;
    e->n_busy--;
    pthread_cond_broadcast(&e->done);
    pthread_mutex_unlock(&e->lock);
}
