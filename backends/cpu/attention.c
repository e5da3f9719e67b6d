/* attention.c - the CPU backend's KV cache and attention.
 *
 * The cache stores each position's keys (and values) as one row of the
 * cache type: F32, F16, or Q8_0 blocks (heads are whole blocks).  One
 * generated token attends head by head (attend_head); a prompt with a
 * float cache works on tiles (attend_block) so each cached row is decoded
 * once for all the queries of a block. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/backend_cpu.h"
#include "backends/cpu/cpu.h"
#include "util/threads.h"

/* Prompt attention works on blocks of this many tokens per KV head: ~96
 * query rows (times the query heads sharing a KV head), enough to amortize
 * decoding each 16-row tile of the cache. */
static int tile_tokens(const cm_hparams *hp)
{
    int group = hp->n_head / hp->n_head_kv;
    return group >= 96 ? 1 : 96 / group;
}

static size_t tile_floats(const cm_hparams *hp, int n_ctx)
{
    size_t rows = (size_t)tile_tokens(hp) * (size_t)(hp->n_head / hp->n_head_kv);
    return rows * ((size_t)hp->head_dim + (size_t)hp->head_dim_v + (size_t)n_ctx + 16);
}

static size_t kv_row_bytes(const cm_hparams *hp, enum cm_type t, int values)
{
    return cm_row_bytes(t, (int64_t)hp->n_head_kv * (values ? hp->head_dim_v : hp->head_dim));
}

size_t cm_cpu_attention_bytes(const cm_backend_shape *s, int n_threads)
{
    const cm_hparams *hp = &s->m->hp;
    enum cm_type t = cm_kv_elem_type(s->kv);
    size_t kv = s->no_kv ? 0 : (size_t)hp->n_layer * s->n_ctx *
                                   (kv_row_bytes(hp, t, 0) + kv_row_bytes(hp, t, 1));
    if (s->no_kv) /* no cache, so never any attention */
        return 0;
    return kv + (size_t)n_threads * (s->n_ctx + 2 * hp->head_dim) * sizeof(float) +
           (size_t)n_threads * tile_floats(hp, s->n_ctx) * sizeof(float);
}

int cm_cpu_attention_alloc(cm_cpu_state *st, const cm_backend_shape *s)
{
    const cm_hparams *hp = st->hp;
    st->kv_type = cm_kv_elem_type(s->kv);
    if (s->no_kv) /* no cache, so never any attention */
        return 1;
    st->scores = cm_cpu_alloc64((size_t)st->n_threads * (st->n_ctx + 2 * hp->head_dim) *
                                sizeof(float));
    st->tile_floats = tile_floats(hp, st->n_ctx);
    st->attn_tile = cm_cpu_alloc64((size_t)st->n_threads * st->tile_floats * sizeof(float));
    if (!st->scores || !st->attn_tile)
        return 0;
    st->k_cache = calloc((size_t)hp->n_layer, sizeof(void *));
    st->v_cache = calloc((size_t)hp->n_layer, sizeof(void *));
    if (!st->k_cache || !st->v_cache)
        return 0;
    int ok = 1;
    for (int il = 0; il < hp->n_layer; il++) {
        st->k_cache[il] = cm_cpu_alloc64((size_t)st->n_ctx * kv_row_bytes(hp, st->kv_type, 0));
        st->v_cache[il] = cm_cpu_alloc64((size_t)st->n_ctx * kv_row_bytes(hp, st->kv_type, 1));
        ok &= st->k_cache[il] && st->v_cache[il];
    }
    return ok;
}

void cm_cpu_attention_free(cm_cpu_state *st)
{
    for (int il = 0; st->k_cache && il < st->hp->n_layer; il++)
        free(st->k_cache[il]);
    for (int il = 0; st->v_cache && il < st->hp->n_layer; il++)
        free(st->v_cache[il]);
    free(st->k_cache), free(st->v_cache);
    free(st->scores), free(st->attn_tile);
}

static void kv_put(enum cm_type t, const float *src, void *dst, size_t n)
{
    if (t == CM_TYPE_F32)
        memcpy(dst, src, n * sizeof(float));
    else if (t == CM_TYPE_Q8_0)
        cm_quantize_row_q8_0(src, dst, (int64_t)n);
    else
        cm_row_to_f16(src, dst, (int64_t)n);
}

void cm_cpu_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0)
{
    const cm_cpu_state *st = be->state;
    const enum cm_type t = st->kv_type;
    const int n_tok = (int)k->ne[1];
    const size_t kn = (size_t)k->ne[0], vn = (size_t)v->ne[0];
    const size_t kb = cm_row_bytes(t, (int64_t)kn), vb = cm_row_bytes(t, (int64_t)vn);
    const float *kx = k->data, *vx = v->data;
    CM_CPU_FOR(CM_PAR_ROWS(n_tok, kn + vn), t_, n_tok,
        size_t pos = (size_t)p0 + t_;
        kv_put(t, kx + t_ * kn, (char *)st->k_cache[il] + pos * kb, kn);
        kv_put(t, vx + t_ * vn, (char *)st->v_cache[il] + pos * vb, vn););
}

void cm_cpu_kv_copy(cm_backend *be, int il_dst, int il_src, int n)
{
    const cm_cpu_state *st = be->state;
    const cm_hparams *hp = st->hp;
    memcpy(st->k_cache[il_dst], st->k_cache[il_src], (size_t)n * kv_row_bytes(hp, st->kv_type, 0));
    memcpy(st->v_cache[il_dst], st->v_cache[il_src], (size_t)n * kv_row_bytes(hp, st->kv_type, 1));
}

/* q as the cache's dot products take it: for an f16 cache rounded to f16,
 * as llama.cpp does (into buf: d floats and d halves), else q itself. */
static const float *query_as_cached(enum cm_type t, const float *q, int d, void *buf)
{
    if (t != CM_TYPE_F16)
        return q;
    float *qr = buf;
    uint16_t *qh = (uint16_t *)(qr + d);
    cm_row_to_f16(q, qh, d);
    cm_row_to_float(CM_TYPE_F16, qh, qr, d);
    return qr;
}

/* One query head against the cached keys/values of positions 0..pos.
 * qq: scratch for the query quantized to Q8_0 (Q8_0 cache only). */
static void attend_head(const cm_cpu_state *st, int il, const float *q, int kvh, int pos,
                        float *scores, void *qq, float *out)
{
    const cm_hparams *hp = st->hp;
    const enum cm_type t = st->kv_type;
    size_t kstride = kv_row_bytes(hp, t, 0), vstride = kv_row_bytes(hp, t, 1);
    const char *kbase = (const char *)st->k_cache[il] + cm_row_bytes(t, (int64_t)kvh * hp->head_dim);
    const char *vbase = (const char *)st->v_cache[il] + cm_row_bytes(t, (int64_t)kvh * hp->head_dim_v);
    float inv_sqrt = 1.0f / sqrtf((float)hp->head_dim);

    if (t == CM_TYPE_Q8_0)
        cm_quantize_row_q8_0(q, qq, hp->head_dim);
    q = query_as_cached(t, q, hp->head_dim, qq);
    const int m = pos + 1;
    cm_dot_rows(t, hp->head_dim, kbase, kstride, m, t == CM_TYPE_Q8_0 ? (const void *)qq
                                                                      : (const void *)q, scores);
    cm_attn_softmax(scores, m, inv_sqrt, t == CM_TYPE_F16); /* f16 cache: weights in f16 too */
    cm_sum_rows(t, hp->head_dim_v, vbase, vstride, m, scores, out);
}

/* The query and output rows of a batch: q's rows at positions p0, p0 + 1, ... */
typedef struct {
    const float *q;
    float *out;
    int p0, n;
} attn_batch;

/* Prompt attention for KV head g and the rows t0 <= t < t1: every query
 * head of the group against 16-row tiles of the cache, so each tile is
 * decoded once for all of the block's queries (attend_head decodes every
 * cached row once per query).  Same arithmetic as attend_head, other
 * summation order.  w: the thread's tile buffer. */
static void attend_block(const cm_cpu_state *st, int il, const attn_batch *b, int g, int t0,
                         int t1, float *w)
{
    const cm_hparams *hp = st->hp;
    const enum cm_type t = st->kv_type;
    const int G = hp->n_head / hp->n_head_kv, d = hp->head_dim, dv = hp->head_dim_v;
    const int nq = (t1 - t0) * G, mmax = b->p0 + t1;
    const size_t ld = (size_t)mmax + 16;
    float *qb = w, *ob = qb + (size_t)nq * d, *sb = ob + (size_t)nq * dv;
    size_t kstride = kv_row_bytes(hp, t, 0), vstride = kv_row_bytes(hp, t, 1);
    const char *kb = (const char *)st->k_cache[il] + cm_row_bytes(t, (int64_t)g * d);
    const char *vb = (const char *)st->v_cache[il] + cm_row_bytes(t, (int64_t)g * dv);
    for (int i = 0; i < nq; i++) { /* query i: row t0 + i / G, head g * G + i % G */
        const float *q = b->q + ((size_t)(t0 + i / G) * hp->n_head + g * G + i % G) * d;
        if (t == CM_TYPE_F16) { /* rounded to f16, as attend_head does */
            cm_row_to_f16(q, (uint16_t *)ob, d);
            cm_row_to_float(CM_TYPE_F16, ob, qb + (size_t)i * d, d);
        } else
            memcpy(qb + (size_t)i * d, q, (size_t)d * sizeof(float));
    }
    /* queries are in position order: those that see position j start at
     * row first(j), so each tile goes to a suffix of the block */
#define FIRST(j) ((j) <= b->p0 + t0 ? 0 : ((j) - b->p0 - t0) * G)
    for (int j = 0; j < mmax; j += 16) {
        int nk = mmax - j < 16 ? mmax - j : 16, f = FIRST(j);
        cm_attn_qk(t, d, kb + (size_t)j * kstride, kstride, nk, qb + (size_t)f * d, nq - f,
                   sb + (size_t)f * ld + j, ld);
    }
    const float inv_sqrt = 1.0f / sqrtf((float)d);
    for (int i = 0; i < nq; i++) {
        int m = b->p0 + t0 + i / G + 1;
        float *row = sb + (size_t)i * ld;
        cm_attn_softmax(row, m, inv_sqrt, t == CM_TYPE_F16);
        memset(row + m, 0, (size_t)(ld - (size_t)m) * sizeof(float)); /* the causal mask */
    }
    memset(ob, 0, (size_t)nq * dv * sizeof(float));
    for (int j = 0; j < mmax; j += 16) {
        int nk = mmax - j < 16 ? mmax - j : 16, f = FIRST(j);
        cm_attn_pv(t, dv, vb + (size_t)j * vstride, vstride, nk, sb + (size_t)f * ld + j, ld,
                   nq - f, ob + (size_t)f * dv);
    }
#undef FIRST
    for (int i = 0; i < nq; i++)
        memcpy(b->out + ((size_t)(t0 + i / G) * hp->n_head + g * G + i % G) * dv,
               ob + (size_t)i * dv, (size_t)dv * sizeof(float));
}

/* A prompt with a float cache: blocks of rows per KV head. */
static void attend_tiled(const cm_cpu_state *st, int il, const attn_batch *b)
{
    const cm_hparams *hp = st->hp;
    const int tb = tile_tokens(hp), nblk = (b->n + tb - 1) / tb;
    const int n_items = hp->n_head_kv * nblk;
#pragma omp parallel for schedule(dynamic, 1)
    for (int it = 0; it < n_items; it++) {
        /* latest query blocks (the most keys) first, so the last items
         * handed out are the short ones and no thread waits long */
        int g = it % hp->n_head_kv, blk = nblk - 1 - it / hp->n_head_kv;
        int t0 = blk * tb, t1 = t0 + tb < b->n ? t0 + tb : b->n;
        attend_block(st, il, b, g, t0, t1, st->attn_tile + (size_t)cm_thread_num() * st->tile_floats);
    }
}

/* Two query heads of KV head kvh (qa, qb; outputs oa, ob) against
 * positions 0..pos, each cached row read once for both: attend_head's
 * arithmetic, the same results.  w: the thread's tile buffer. */
static void attend_pair(const cm_cpu_state *st, int il, const float *qa, const float *qb,
                        int kvh, int pos, float *w, float *oa, float *ob)
{
    const cm_hparams *hp = st->hp;
    const enum cm_type t = st->kv_type;
    const int d = hp->head_dim, m = pos + 1;
    const size_t kstride = kv_row_bytes(hp, t, 0), vstride = kv_row_bytes(hp, t, 1);
    const char *kbase = (const char *)st->k_cache[il] + cm_row_bytes(t, (int64_t)kvh * d);
    const char *vbase = (const char *)st->v_cache[il] + cm_row_bytes(t, (int64_t)kvh * hp->head_dim_v);
    float *sa = w, *sb = sa + m, *qbuf = sb + m;
    qa = query_as_cached(t, qa, d, qbuf);
    qb = query_as_cached(t, qb, d, qbuf + 2 * d);
    cm_dot_rows_pair(t, d, kbase, kstride, m, qa, qb, sa, sb);
    const float inv_sqrt = 1.0f / sqrtf((float)d);
    cm_attn_softmax(sa, m, inv_sqrt, t == CM_TYPE_F16);
    cm_attn_softmax(sb, m, inv_sqrt, t == CM_TYPE_F16);
    cm_sum_rows_pair(t, hp->head_dim_v, vbase, vstride, m, sa, sb, oa, ob);
}

/* Item it of a generation batch taken in head pairs: token it / (n_head /
 * 2), heads 2p and 2p + 1 (p = it % (n_head / 2)), of one KV head. */
static void attend_pair_item(const cm_cpu_state *st, int il, const attn_batch *b, int it, int group)
{
    const cm_hparams *hp = st->hp;
    const int pairs = hp->n_head / 2, t = it / pairs, h = 2 * (it % pairs);
    const float *q = b->q + ((size_t)t * hp->n_head + h) * hp->head_dim;
    float *o = b->out + ((size_t)t * hp->n_head + h) * hp->head_dim_v;
    attend_pair(st, il, q, q + hp->head_dim, h / group, b->p0 + t,
                st->attn_tile + (size_t)cm_thread_num() * st->tile_floats, o, o + hp->head_dim_v);
}

/* Item it of a generation batch: token it / n_head, head it % n_head. */
static void attend_item(const cm_cpu_state *st, int il, const attn_batch *b, int it, int group)
{
    const cm_hparams *hp = st->hp;
    int t = it / hp->n_head, h = it % hp->n_head;
    float *scores = st->scores + (size_t)cm_thread_num() * (st->n_ctx + 2 * hp->head_dim);
    void *qq = scores + st->n_ctx; /* Q8_0 query: fewer bytes than head_dim floats */
    const float *qh = b->q + ((size_t)t * hp->n_head + h) * hp->head_dim;
    float *o = b->out + ((size_t)t * hp->n_head + h) * hp->head_dim_v;
    attend_head(st, il, qh, h / group, b->p0 + t, scores, qq, o);
}

void cm_cpu_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out)
{
    const cm_cpu_state *st = be->state;
    const attn_batch b = {q->data, cm_f32(out), p0, (int)q->ne[1]};
    if (b.n >= 8 && st->kv_type != CM_TYPE_Q8_0) {
        attend_tiled(st, il, &b);
        return;
    }
    const cm_hparams *hp = st->hp;
    const int group = hp->n_head / hp->n_head_kv;
    /* heads sharing a KV head in pairs where the ISA reads a row once for
     * two queries (the rows' reads are most of a long context's time) */
    const int pairs = group % 2 == 0 && cm_rows_pair_fast(st->kv_type);
    const int n_items = b.n * (pairs ? hp->n_head / 2 : hp->n_head);
    void (*const item)(const cm_cpu_state *, int, const attn_batch *, int, int) =
        pairs ? attend_pair_item : attend_item;
    /* threads only pay off once there is real work: a short context's heads
     * take less time than waking the team */
    long work = (long)b.n * hp->n_head * (p0 + b.n) * hp->head_dim;
    if (work > 65536) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++)
            item(st, il, &b, it, group);
    } else /* (not an if clause: see CM_CPU_FOR) */
        for (int it = 0; it < n_items; it++)
            item(st, il, &b, it, group);
}
