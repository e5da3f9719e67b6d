/* forward.c - the transformer forward pass, written to read like the math.
 *
 * For a batch of n tokens at positions p0 .. p0+n-1:
 *   x = embed(ids) (+ learned positions)
 *   per layer:  h = norm(x) ; q,k,v = h Wq, h Wk, h Wv (+ biases)
 *               q,k = rope(qknorm(q), qknorm(k)) ; cache k,v
 *               a = softmax(q k^T / sqrt(d) + causal mask) v Wo
 *               sequential:  x += a ; x += ffn(norm(x))
 *               parallel:    x += a + ffn(h)                 (phi2)
 *   logits = norm(x) Wout (+ bias)
 * where ffn is SwiGLU, a GELU MLP or a mixture of experts (moe.c).  Matrix
 * products go through the CPU backend (backends/cpu/cpu.h). */
#include "engine/forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "backends/cpu/cpu.h"
#include "engine/forward_internal.h"
#include "engine/ops.h"

/* ---------------------------------------------------------------- buffers */

/* The cache stores each position's keys (and values) as one row of
 * kv_row_type: F32, F16, or Q8_0 blocks (heads are whole blocks). */
static enum cm_type kv_elem_type(cm_kv_type kv)
{
    return kv == CM_KV_F32 ? CM_TYPE_F32 : kv == CM_KV_F16 ? CM_TYPE_F16 : CM_TYPE_Q8_0;
}

static size_t kv_bytes(const cm_hparams *hp, int n_ctx, cm_kv_type kv)
{
    enum cm_type t = kv_elem_type(kv);
    return (size_t)hp->n_layer * n_ctx *
           (cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim) +
            cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim_v));
}


static size_t scratch_for(const cm_tensor *w, int n_batch)
{
    return w->data ? cm_matmul_scratch_bytes(w, n_batch) : 0;
}

static size_t max_scratch(const cm_model *m, int n_batch)
{
    size_t best = scratch_for(&m->output, n_batch);
    for (int il = 0; il < m->hp.n_layer; il++) {
        const cm_layer *L = &m->layers[il];
        const cm_tensor *ws[] = {&L->wqkv, &L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate,
                                 &L->w_up, &L->w_down, &L->gate_inp, &L->gate_exps,
                                 &L->up_exps, &L->down_exps, &L->gate_inp_shexp,
                                 &L->gate_shexp, &L->up_shexp, &L->down_shexp};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            size_t b = scratch_for(ws[i], n_batch);
            best = b > best ? b : best;
        }
    }
    return best;
}

static int max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int max_ff(const cm_hparams *hp)
{
    int f = hp->n_ff > hp->n_ff_exp ? hp->n_ff : hp->n_ff_exp;
    return f > hp->n_ff_shexp ? f : hp->n_ff_shexp;
}

/* Floats of work buffers per batch row. */
static size_t row_floats(const cm_hparams *hp)
{
    size_t q = (size_t)hp->n_head * hp->head_dim, k = (size_t)hp->n_head_kv * hp->head_dim;
    size_t v = (size_t)hp->n_head_kv * hp->head_dim_v, a = (size_t)hp->n_head * hp->head_dim_v;
    return (size_t)hp->n_embd * 6 + 2 * (q + k + v) + a + 2 * (size_t)max_ff(hp) +
           3 * (size_t)hp->n_expert;
}

size_t cm_ctx_bytes_estimate(const cm_model *m, int n_ctx, cm_kv_type kv, int n_batch)
{
    const cm_hparams *hp = &m->hp;
    return kv_bytes(hp, n_ctx, kv) + (size_t)n_batch * row_floats(hp) * sizeof(float) +
           (size_t)hp->n_vocab * sizeof(float) +
           (size_t)max_threads() * (n_ctx + 2 * hp->head_dim) * sizeof(float) +
           max_scratch(m, n_batch);
}

static void *alloc64(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? (bytes + 63) / 64 * 64 : 64) != 0)
        return NULL;
    return p;
}

static int alloc_kv(cm_ctx *c)
{
    const cm_hparams *hp = &c->m->hp;
    enum cm_type t = kv_elem_type(c->kv_type);
    size_t kb = cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim);
    size_t vb = cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim_v);
    int ok = 1;
    c->k_cache = calloc((size_t)hp->n_layer, sizeof(void *));
    c->v_cache = calloc((size_t)hp->n_layer, sizeof(void *));
    if (!c->k_cache || !c->v_cache)
        return 0;
    for (int il = 0; il < hp->n_layer; il++) {
        c->k_cache[il] = alloc64((size_t)c->n_ctx * kb);
        c->v_cache[il] = alloc64((size_t)c->n_ctx * vb);
        ok &= c->k_cache[il] && c->v_cache[il];
    }
    return ok;
}

/* Prompt batches split the row-wise work (norms, residual adds, RoPE,
 * SwiGLU, KV cache rows) over the threads by token; below this many tokens
 * one thread does it, as waking the others would cost more.  (Serial, that
 * work was ~7% of a two-thread perplexity run, spent with the other thread
 * spinning.)  Each row is computed as before, so results do not depend on
 * the threads. */
#define PAR_TOKENS 16

/* Prompt attention works on blocks of this many tokens per KV head: ~96
 * query rows (times the query heads sharing a KV head), enough to amortize
 * decoding each 16-row tile of the cache. */
static int tile_tokens(const cm_hparams *hp)
{
    int group = hp->n_head / hp->n_head_kv;
    return group >= 96 ? 1 : 96 / group;
}

static int alloc_buffers(cm_ctx *c)
{
    const cm_hparams *hp = &c->m->hp;
    size_t nb = (size_t)c->n_batch, E = (size_t)hp->n_embd, X = (size_t)hp->n_expert;
    size_t q = (size_t)hp->n_head * hp->head_dim, k = (size_t)hp->n_head_kv * hp->head_dim;
    size_t v = (size_t)hp->n_head_kv * hp->head_dim_v;
    float **bufs[] = {&c->x, &c->h, &c->y, &c->y2, &c->qkv, &c->q, &c->k, &c->v, &c->att,
                      &c->ff_a, &c->ff_b, &c->logits, &c->router, &c->exp_wts, &c->xe, &c->ye};
    size_t sizes[] = {nb * E, nb * E, nb * E, nb * E, nb * (q + k + v), nb * q, nb * k, nb * v,
                      nb * hp->n_head * hp->head_dim_v, nb * max_ff(hp), nb * max_ff(hp),
                      (size_t)hp->n_vocab, nb * X, nb * X, nb * E, nb * E};
    int ok = alloc_kv(c);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        ok &= (*bufs[i] = alloc64(sizes[i] * sizeof(float))) != NULL;
    c->scores = alloc64((size_t)c->n_threads * (c->n_ctx + 2 * hp->head_dim) * sizeof(float));
    c->scratch = alloc64(max_scratch(c->m, c->n_batch));
    c->rope_cs = alloc64((size_t)c->n_ctx * (size_t)(hp->rope_dim / 2 + 1) * 2 * sizeof(float));
    size_t rows = (size_t)tile_tokens(hp) * (size_t)(hp->n_head / hp->n_head_kv);
    c->tile_floats = rows * ((size_t)hp->head_dim + (size_t)hp->head_dim_v + (size_t)c->n_ctx + 16);
    c->attn_tile = alloc64((size_t)c->n_threads * c->tile_floats * sizeof(float));
    c->exp_rows = alloc64(nb * X * sizeof(int32_t));
    c->exp_count = alloc64(X * sizeof(int32_t));
    c->expert_tokens = calloc((size_t)hp->n_layer * X + 1, sizeof(uint64_t));
    return ok && c->scores && c->scratch && c->rope_cs && c->attn_tile && c->exp_rows && c->exp_count && c->expert_tokens;
}

cm_status cm_ctx_new(const cm_model *m, int n_ctx, cm_kv_type kv, int n_batch, cm_ctx **out,
                     cm_err *err)
{
    *out = NULL;
    if (n_ctx <= 0 || n_ctx > (1 << 24))
        return cm_fail(err, CM_E_RANGE, "context size %d is out of range", n_ctx);
    if (!m->hp.use_rope && n_ctx > m->hp.n_ctx_train)
        return cm_fail(err, CM_E_RANGE, "context size %d exceeds the %d positions this model "
                       "has learned embeddings for", n_ctx, m->hp.n_ctx_train);
    if (n_batch <= 0)
        return cm_fail(err, CM_E_RANGE, "batch size %d is out of range", n_batch);
    if (kv == CM_KV_Q8_0 && (m->hp.head_dim % 32 || m->hp.head_dim_v % 32))
        return cm_fail(err, CM_E_UNSUPPORTED, "a q8_0 KV cache needs head dimensions that are "
                       "multiples of 32 (this model's are %d/%d): use --kv-type f16",
                       m->hp.head_dim, m->hp.head_dim_v);
    cm_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating a context");
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch < n_ctx ? n_batch : n_ctx;
    c->kv_type = kv;
    c->n_threads = max_threads();
    if (!alloc_buffers(c)) {
        cm_ctx_free(c);
        return cm_fail(err, CM_E_NOMEM, "out of memory allocating a %d-token context", n_ctx);
    }
    *out = c;
    return CM_OK;
}

void cm_ctx_free(cm_ctx *c)
{
    if (!c)
        return;
    for (int il = 0; c->k_cache && il < c->m->hp.n_layer; il++)
        free(c->k_cache[il]);
    for (int il = 0; c->v_cache && il < c->m->hp.n_layer; il++)
        free(c->v_cache[il]);
    free(c->k_cache), free(c->v_cache);
    float *bufs[] = {c->x, c->h, c->y, c->y2, c->qkv, c->q, c->k, c->v, c->att, c->ff_a,
                     c->ff_b, c->logits, c->router, c->exp_wts, c->xe, c->ye, c->scores, c->rope_cs, c->attn_tile};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(c->scratch), free(c->exp_rows), free(c->exp_count), free(c->expert_tokens);
    cm_expert_cache_free(c->experts);
    free(c);
}

void cm_ctx_reset(cm_ctx *c) { c->n_past = 0; }
int cm_ctx_n_past(const cm_ctx *c) { return c->n_past; }
int cm_ctx_n_ctx(const cm_ctx *c) { return c->n_ctx; }
const float *cm_ctx_logits(const cm_ctx *c) { return c->logits; }
const uint64_t *cm_ctx_expert_tokens(const cm_ctx *c) { return c->expert_tokens; }

cm_status cm_ctx_set_expert_budget(cm_ctx *c, uint64_t bytes, cm_err *err)
{
    cm_expert_cache *ec;
    cm_status s = cm_expert_cache_new(c->m, bytes, &ec, err);
    if (s)
        return s;
    cm_expert_cache_free(c->experts);
    c->experts = ec;
    return CM_OK;
}

int cm_ctx_expert_stats(const cm_ctx *c, cm_expert_stats *out)
{
    if (!c->experts)
        return 0;
    cm_expert_cache_stats(c->experts, out);
    return 1;
}

size_t cm_ctx_kv_bytes(const cm_ctx *c) { return kv_bytes(&c->m->hp, c->n_ctx, c->kv_type); }

/* -------------------------------------------------------------- attention */

static void kv_put(enum cm_type t, const float *src, void *dst, size_t n)
{
    if (t == CM_TYPE_F32)
        memcpy(dst, src, n * sizeof(float));
    else if (t == CM_TYPE_Q8_0)
        cm_quantize_row_q8_0(src, dst, (int64_t)n);
    else
        cm_row_to_f16(src, dst, (int64_t)n);
}

static void kv_store(cm_ctx *c, int il, int n_tok)
{
    const cm_hparams *hp = &c->m->hp;
    enum cm_type t = kv_elem_type(c->kv_type);
    size_t kn = (size_t)hp->n_head_kv * hp->head_dim, vn = (size_t)hp->n_head_kv * hp->head_dim_v;
    size_t kb = cm_row_bytes(t, (int64_t)kn), vb = cm_row_bytes(t, (int64_t)vn);
#pragma omp parallel for schedule(static) if (n_tok >= PAR_TOKENS)
    for (int t_ = 0; t_ < n_tok; t_++) {
        size_t pos = (size_t)c->n_past + t_;
        kv_put(t, c->k + t_ * kn, (char *)c->k_cache[il] + pos * kb, kn);
        kv_put(t, c->v + t_ * vn, (char *)c->v_cache[il] + pos * vb, vn);
    }
}

/* One query head against the cached keys/values of positions 0..pos.
 * qq: scratch for the query quantized to Q8_0 (Q8_0 cache only). */
static void attend_head(const cm_ctx *c, int il, const float *q, int kvh, int pos,
                        float *scores, void *qq, float *out)
{
    const cm_hparams *hp = &c->m->hp;
    enum cm_type t = kv_elem_type(c->kv_type);
    size_t kstride = cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim);
    size_t vstride = cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim_v);
    const char *kbase = (const char *)c->k_cache[il] + cm_row_bytes(t, (int64_t)kvh * hp->head_dim);
    const char *vbase = (const char *)c->v_cache[il] + cm_row_bytes(t, (int64_t)kvh * hp->head_dim_v);
    float inv_sqrt = 1.0f / sqrtf((float)hp->head_dim);

    if (t == CM_TYPE_Q8_0)
        cm_quantize_row_q8_0(q, qq, hp->head_dim);
    if (t == CM_TYPE_F16) { /* llama.cpp rounds q to f16 for an f16 cache: do the same */
        float *qr = qq;
        uint16_t *qh = (uint16_t *)(qr + hp->head_dim);
        cm_row_to_f16(q, qh, hp->head_dim);
        cm_row_to_float(CM_TYPE_F16, qh, qr, hp->head_dim);
        q = qr;
    }
    const int m = pos + 1;
    cm_dot_rows(t, hp->head_dim, kbase, kstride, m, t == CM_TYPE_Q8_0 ? (const void *)qq
                                                                      : (const void *)q, scores);
    cm_attn_softmax(scores, m, inv_sqrt, t == CM_TYPE_F16); /* f16 cache: weights in f16 too */
    cm_sum_rows(t, hp->head_dim_v, vbase, vstride, m, scores, out);
}

/* Prompt attention for KV head g and the tokens t0 <= t < t1: every query
 * head of the group against 16-row tiles of the cache, so each tile is
 * decoded once for all of the block's queries (attend_head decodes every
 * cached row once per query).  Same arithmetic as attend_head, other
 * summation order.  w: the thread's tile buffer. */
static void attend_block(cm_ctx *c, int il, int g, int t0, int t1, float *w)
{
    const cm_hparams *hp = &c->m->hp;
    const enum cm_type t = kv_elem_type(c->kv_type);
    const int G = hp->n_head / hp->n_head_kv, d = hp->head_dim, dv = hp->head_dim_v;
    const int nq = (t1 - t0) * G, mmax = c->n_past + t1;
    const size_t ld = (size_t)mmax + 16;
    float *qb = w, *ob = qb + (size_t)nq * d, *sb = ob + (size_t)nq * dv;
    size_t kstride = cm_row_bytes(t, (int64_t)hp->n_head_kv * d);
    size_t vstride = cm_row_bytes(t, (int64_t)hp->n_head_kv * dv);
    const char *kb = (const char *)c->k_cache[il] + cm_row_bytes(t, (int64_t)g * d);
    const char *vb = (const char *)c->v_cache[il] + cm_row_bytes(t, (int64_t)g * dv);
    for (int i = 0; i < nq; i++) { /* query i: token t0 + i / G, head g * G + i % G */
        const float *q = c->q + ((size_t)(t0 + i / G) * hp->n_head + g * G + i % G) * d;
        if (t == CM_TYPE_F16) { /* rounded to f16, as attend_head does */
            cm_row_to_f16(q, (uint16_t *)ob, d);
            cm_row_to_float(CM_TYPE_F16, ob, qb + (size_t)i * d, d);
        } else
            memcpy(qb + (size_t)i * d, q, (size_t)d * sizeof(float));
    }
    /* queries are in token order: those that see position j start at row
     * first(j), so each tile goes to a suffix of the block */
#define FIRST(j) ((j) <= c->n_past + t0 ? 0 : ((j) - c->n_past - t0) * G)
    for (int j = 0; j < mmax; j += 16) {
        int nk = mmax - j < 16 ? mmax - j : 16, f = FIRST(j);
        cm_attn_qk(t, d, kb + (size_t)j * kstride, kstride, nk, qb + (size_t)f * d, nq - f,
                   sb + (size_t)f * ld + j, ld);
    }
    const float inv_sqrt = 1.0f / sqrtf((float)d);
    for (int i = 0; i < nq; i++) {
        int m = c->n_past + t0 + i / G + 1;
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
        memcpy(c->att + ((size_t)(t0 + i / G) * hp->n_head + g * G + i % G) * dv,
               ob + (size_t)i * dv, (size_t)dv * sizeof(float));
}

/* A prompt with a float cache: blocks of tokens per KV head, for the
 * queries of tokens first..n_tok-1. */
static void attend_tiled(cm_ctx *c, int il, int first, int n_tok)
{
    const cm_hparams *hp = &c->m->hp;
    const int tb = tile_tokens(hp), nblk = (n_tok - first + tb - 1) / tb;
    const int n_items = hp->n_head_kv * nblk;
#pragma omp parallel for schedule(dynamic, 1)
    for (int it = 0; it < n_items; it++) {
#ifdef _OPENMP
        int th = omp_get_thread_num();
#else
        int th = 0;
#endif
        /* latest query blocks (the most keys) first, so the last items
         * handed out are the short ones and no thread waits long */
        int g = it % hp->n_head_kv, blk = nblk - 1 - it / hp->n_head_kv;
        int t0 = first + blk * tb, t1 = t0 + tb < n_tok ? t0 + tb : n_tok;
        attend_block(c, il, g, t0, t1, c->attn_tile + (size_t)th * c->tile_floats);
    }
}

/* Attention for the queries of tokens first..n_tok-1 (all keys cached). */
static void attend_all(cm_ctx *c, int il, int first, int n_tok)
{
    if (n_tok - first >= 8 && c->kv_type != CM_KV_Q8_0) {
        attend_tiled(c, il, first, n_tok);
        return;
    }
    const cm_hparams *hp = &c->m->hp;
    int group = hp->n_head / hp->n_head_kv;
    int n_items = (n_tok - first) * hp->n_head;
    /* threads only pay off once there is real work: a short context's heads
     * take less time than waking the team */
    long work = (long)n_items * (c->n_past + n_tok) * hp->head_dim;
    (void)work; /* read only by the OpenMP pragma */
#pragma omp parallel for schedule(dynamic, 1) if (work > 65536)
    for (int it = 0; it < n_items; it++) {
        int t = first + it / hp->n_head, h = it % hp->n_head;
#ifdef _OPENMP
        int th = omp_get_thread_num();
#else
        int th = 0;
#endif
        float *scores = c->scores + (size_t)th * (c->n_ctx + 2 * hp->head_dim);
        void *qq = scores + c->n_ctx; /* Q8_0 query: fewer bytes than head_dim floats */
        const float *q = c->q + ((size_t)t * hp->n_head + h) * hp->head_dim;
        float *out = c->att + ((size_t)t * hp->n_head + h) * hp->head_dim_v;
        attend_head(c, il, q, h / group, c->n_past + t, scores, qq, out);
    }
}

/* q, k, v from h: three products, or one fused product split three ways. */
static void project_qkv(cm_ctx *c, const cm_layer *L, int n)
{
    const cm_hparams *hp = &c->m->hp;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kd = (size_t)hp->n_head_kv * hp->head_dim;
    size_t vd = (size_t)hp->n_head_kv * hp->head_dim_v, all = qd + kd + vd;
    if (!L->wqkv.data) { /* one quantization of h for the three */
        const cm_tensor *w[3] = {&L->wq, &L->wk, &L->wv};
        float *y[3] = {c->q, c->k, c->v};
        cm_matmul_n(w, 3, c->h, n, y, c->scratch);
        cm_add_bias(c->q, &L->bq, n, (int)qd);
        cm_add_bias(c->k, &L->bk, n, (int)kd);
        cm_add_bias(c->v, &L->bv, n, (int)vd);
        return;
    }
    cm_matmul(&L->wqkv, c->h, n, c->qkv, c->scratch);
    cm_add_bias(c->qkv, &L->bqkv, n, (int)all);
    for (int t = 0; t < n; t++) {
        const float *row = c->qkv + t * all;
        memcpy(c->q + t * qd, row, qd * sizeof(float));
        memcpy(c->k + t * kd, row + qd, kd * sizeof(float));
        memcpy(c->v + t * vd, row + qd + kd, vd * sizeof(float));
    }
}

static void norm_rows(float *out, const float *x, const cm_tensor *w, const cm_tensor *b, int n,
                      const cm_hparams *hp)
{
    const int E = hp->n_embd;
#pragma omp parallel for schedule(static) if (n >= PAR_TOKENS)
    for (int t = 0; t < n; t++)
        cm_norm_rows(out + (size_t)t * E, x + (size_t)t * E, w, b, 1, E, hp->norm_eps,
                     hp->layer_norm);
}

static void add_rows(float *x, const float *y, int n, int E)
{
#pragma omp parallel for schedule(static) if (n >= PAR_TOKENS)
    for (int t = 0; t < n; t++)
        cm_add(x + (size_t)t * E, y + (size_t)t * E, (size_t)E);
}

/* Per-head RMSNorm (qwen3) then RoPE, for every head of every token. */
static void qk_prepare(float *qk, int n_tok, int n_heads, const cm_tensor *norm,
                       const float *rope_cs, const cm_hparams *hp)
{
    int d = hp->head_dim;
#pragma omp parallel for schedule(static) if (n_tok >= PAR_TOKENS)
    for (int t = 0; t < n_tok; t++)
        for (int h = 0; h < n_heads; h++) {
            float *v = qk + ((size_t)t * n_heads + h) * d;
            if (norm->data)
                cm_rmsnorm(v, v, (const float *)norm->data, d, hp->norm_eps);
            if (hp->use_rope)
                cm_rope_apply(v, rope_cs + (size_t)t * hp->rope_dim, hp);
        }
}

/* Rows first..n-1 of out = attention of c->h (n rows), after the output
 * projection; every row's key and value go to the cache. */
static void attention(cm_ctx *c, const cm_layer *L, int il, int first, int n, float *out)
{
    const cm_hparams *hp = &c->m->hp;
    const size_t qd = (size_t)hp->n_head * hp->head_dim_v, E = (size_t)hp->n_embd;
    project_qkv(c, L, n);
    const float *cs = c->rope_cs + (size_t)c->n_past * hp->rope_dim;
    qk_prepare(c->q, n, hp->n_head, &L->q_norm, cs, hp);
    qk_prepare(c->k, n, hp->n_head_kv, &L->k_norm, cs, hp);
    kv_store(c, il, n);
    attend_all(c, il, first, n);
    cm_matmul(&L->wo, c->att + first * qd, n - first, out + first * E, c->scratch);
    cm_add_bias(out + first * E, &L->bo, n - first, hp->n_embd);
}

/* ---------------------------------------------------------- feed-forward */

static void dense_ffn(cm_ctx *c, const cm_layer *L, int n, float *out)
{
    const cm_hparams *hp = &c->m->hp;
    size_t total = (size_t)n * hp->n_ff;
    if (hp->gelu_mlp) {
        cm_matmul(&L->w_up, c->h, n, c->ff_b, c->scratch);
        cm_add_bias(c->ff_b, &L->b_up, n, hp->n_ff);
        for (size_t i = 0; i < total; i++)
            c->ff_a[i] = cm_gelu(c->ff_b[i]);
    } else { /* up and gate share one quantization of h */
        const cm_tensor *w[2] = {&L->w_up, &L->w_gate};
        float *y[2] = {c->ff_b, c->ff_a};
        cm_matmul_n(w, 2, c->h, n, y, c->scratch);
        cm_add_bias(c->ff_b, &L->b_up, n, hp->n_ff);
        const int64_t F = hp->n_ff;
#pragma omp parallel for schedule(static) if (n >= PAR_TOKENS)
        for (int t = 0; t < n; t++)
            cm_swiglu(c->ff_a + t * F, c->ff_b + t * F, F);
    }
    cm_matmul(&L->w_down, c->ff_a, n, out, c->scratch);
    cm_add_bias(out, &L->b_down, n, hp->n_embd);
}

static void ffn(cm_ctx *c, const cm_layer *L, int il, int n, float *out)
{
    if (c->m->hp.n_expert > 0)
        cm_moe_ffn(c, L, il, n, out);
    else
        dense_ffn(c, L, n, out);
}

/* One layer over n rows.  Only rows first..n-1 of the output are wanted
 * (the last layer of a batch whose first rows give no logits): the others
 * still put their keys and values in the cache, but skip the rest. */
static void layer(cm_ctx *c, const cm_layer *L, int il, int first, int n)
{
    const cm_hparams *hp = &c->m->hp;
    const int E = hp->n_embd;
    if (hp->parallel_block || hp->n_expert > 0)
        first = 0; /* (MoE: its per-expert token counts are user-visible) */
    norm_rows(c->h, c->x, &L->attn_norm, &L->attn_norm_b, n, hp);
    attention(c, L, il, first, n, c->y);
    if (hp->parallel_block) { /* both branches read the same normalised x */
        ffn(c, L, il, n, c->y2);
        add_rows(c->x, c->y, n, E);
        add_rows(c->x, c->y2, n, E);
        return;
    }
    float *x = c->x + (size_t)first * E;
    const int m = n - first;
    add_rows(x, c->y + (size_t)first * E, m, E);
    norm_rows(c->h, x, &L->ffn_norm, &L->ffn_norm_b, m, hp); /* wanted rows from h[0] */
    ffn(c, L, il, m, c->y);
    add_rows(x, c->y, m, E);
}

/* ------------------------------------------------------------- evaluation */

static void embed(cm_ctx *c, const int32_t *ids, int n)
{
    const cm_model *m = c->m;
    int E = m->hp.n_embd;
    for (int t = 0; t < n; t++) {
        cm_tensor_row(&m->tok_embd, ids[t], c->x + (size_t)t * E);
        if (m->pos_embd.data) {
            cm_tensor_row(&m->pos_embd, c->n_past + t, c->y);
            cm_add(c->x + (size_t)t * E, c->y, (size_t)E);
        }
    }
}

/* Runs one batch (n <= n_batch); logits of the last n_out rows go to out
 * (the caller's array, or the context's one row). */
static void eval_batch(cm_ctx *c, const int32_t *ids, int n, int n_out, float *out)
{
    const cm_model *m = c->m;
    const cm_hparams *hp = &m->hp;
    embed(c, ids, n);
    /* angles by absolute position, each computed once per context: chunks
     * of a perplexity run reuse positions 0..n_ctx-1 */
    const int upto = c->n_past + n;
#pragma omp parallel for schedule(static) if (upto - c->rope_done >= PAR_TOKENS)
    for (int p = c->rope_done; p < upto; p++)
        if (hp->use_rope)
            cm_rope_table(c->rope_cs + (size_t)p * hp->rope_dim, p, hp);
    c->rope_done = upto > c->rope_done ? upto : c->rope_done;
    for (int il = 0; il < hp->n_layer; il++) /* the last layer: only rows giving logits */
        layer(c, &m->layers[il], il, il == hp->n_layer - 1 ? n - n_out : 0, n);
    c->n_past += n;
    if (n_out == 0)
        return;
    const float *last = c->x + (size_t)(n - n_out) * hp->n_embd;
    cm_norm_rows(c->h, last, &m->out_norm, &m->out_norm_b, n_out, hp->n_embd, hp->norm_eps,
                 hp->layer_norm);
    cm_matmul(&m->output, c->h, n_out, out, c->scratch);
    cm_add_bias(out, &m->output_b, n_out, hp->n_vocab);
}

cm_status cm_eval_last(cm_ctx *c, const int32_t *ids, int n, int n_out, float *logits,
                       cm_err *err)
{
    int n_vocab = c->m->hp.n_vocab;
    if (n <= 0)
        return cm_fail(err, CM_E_RANGE, "nothing to evaluate (0 tokens)");
    if (n_out < 0 || n_out > n || (n_out > 0 && !logits))
        return cm_fail(err, CM_E_RANGE, "%d rows of logits asked of %d tokens", n_out, n);
    if (n > c->n_ctx - c->n_past)
        return cm_fail(err, CM_E_RANGE,
                       "%d tokens do not fit in the context (%d of %d positions used); "
                       "use a larger -c", n, c->n_past, c->n_ctx);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= n_vocab)
            return cm_fail(err, CM_E_RANGE,
                           "token id %d at position %d is outside the vocabulary (0..%d)", ids[i],
                           i, n_vocab - 1);
    const int tail = n - n_out; /* rows from here on give logits */
    for (int done = 0; done < n;) {
        int nb = n - done < c->n_batch ? n - done : c->n_batch;
        /* the wanted rows are a suffix of the batch; the last row of the
         * sequence always goes to the context's own row */
        int want = done + nb > tail ? done + nb - (done > tail ? done : tail) : 0;
        int n_row = want ? want : (done + nb == n ? 1 : 0);
        eval_batch(c, ids + done, nb, n_row,
                   want ? logits + (size_t)(done + nb - want - tail) * n_vocab : c->logits);
        done += nb;
    }
    if (n_out > 0) /* keep the last row where cm_ctx_logits finds it */
        memmove(c->logits, logits + (size_t)(n_out - 1) * n_vocab, (size_t)n_vocab * sizeof(float));
    return CM_OK;
}

cm_status cm_eval(cm_ctx *c, const int32_t *ids, int n, float *all_logits, cm_err *err)
{
    return cm_eval_last(c, ids, n, all_logits ? n : 0, all_logits, err);
}
