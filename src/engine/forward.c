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
 * where ffn is SwiGLU, a GELU MLP or a mixture of experts (moe.c).  Every
 * step is an op of the context's backend (backend.h): this file knows no
 * ISA, thread or device memory. */
#include "engine/forward.h"

#include <stdlib.h>
#include <string.h>

#include "engine/forward_internal.h"

/* ---------------------------------------------------------------- buffers */

static size_t kv_bytes(const cm_hparams *hp, int n_ctx, cm_kv_type kv)
{
    enum cm_type t = cm_kv_elem_type(kv);
    return (size_t)hp->n_layer * n_ctx *
           (cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim) +
            cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim_v));
}

static int max_ff(const cm_hparams *hp)
{
    int f = hp->n_ff > hp->n_ff_exp ? hp->n_ff : hp->n_ff_exp;
    return f > hp->n_ff_shexp ? f : hp->n_ff_shexp;
}

/* The activation buffers of a context: each `rows` per batch row of `cols`. */
typedef struct {
    size_t off; /* of the tensor in struct cm_ctx */
    int64_t cols;
} act_spec;

static int act_specs(const cm_hparams *hp, act_spec *out)
{
    const int64_t E = hp->n_embd, X = hp->n_expert > 0 ? hp->n_expert : 1;
    const act_spec s[] = {
        {offsetof(cm_ctx, x), E}, {offsetof(cm_ctx, h), E}, {offsetof(cm_ctx, y), E},
        {offsetof(cm_ctx, y2), E}, {offsetof(cm_ctx, q), (int64_t)hp->n_head * hp->head_dim},
        {offsetof(cm_ctx, k), (int64_t)hp->n_head_kv * hp->head_dim},
        {offsetof(cm_ctx, v), (int64_t)hp->n_head_kv * hp->head_dim_v},
        {offsetof(cm_ctx, att), (int64_t)hp->n_head * hp->head_dim_v},
        {offsetof(cm_ctx, ff_a), max_ff(hp)}, {offsetof(cm_ctx, ff_b), max_ff(hp)},
        {offsetof(cm_ctx, router), X}, {offsetof(cm_ctx, xe), E}, {offsetof(cm_ctx, ye), E},
    };
    memcpy(out, s, sizeof s);
    return (int)(sizeof s / sizeof s[0]);
}

#define MAX_ACTS 16

/* Host bytes per batch row besides the activations: routing lists. */
static size_t host_row_bytes(const cm_hparams *hp)
{
    return (size_t)hp->n_expert * (sizeof(int32_t) + sizeof(float)) +
           (size_t)hp->n_expert_used * (sizeof(int32_t) + sizeof(float));
}

size_t cm_ctx_bytes_estimate(const cm_model *m, const cm_backend_ops *be, int n_ctx,
                             cm_kv_type kv, int n_batch)
{
    const cm_hparams *hp = &m->hp;
    act_spec s[MAX_ACTS];
    size_t per_row = 0;
    for (int i = 0, n = act_specs(hp, s); i < n; i++)
        per_row += (size_t)s[i].cols * sizeof(float);
    cm_backend_shape shape = {m, n_ctx, n_batch < n_ctx ? n_batch : n_ctx, kv, 0, -1, 1};
    return (size_t)shape.n_batch * (per_row + host_row_bytes(hp)) +
           (size_t)hp->n_vocab * sizeof(float) + cm_backend_bytes(be, &shape);
}

static cm_tensor *act(cm_ctx *c, size_t off) { return (cm_tensor *)((char *)c + off); }

static cm_status alloc_buffers(cm_ctx *c, cm_err *err)
{
    const cm_hparams *hp = &c->m->hp;
    const size_t nb = (size_t)c->n_batch, X = (size_t)hp->n_expert;
    act_spec s[MAX_ACTS];
    for (int i = 0, n = act_specs(hp, s); i < n; i++) {
        cm_status st = cm_backend_tensor(c->be, s[i].cols, c->n_batch, act(c, s[i].off), err);
        if (st)
            return st;
    }
    c->logits = malloc((size_t)hp->n_vocab * sizeof(float));
    c->routing.expert = malloc(nb * (size_t)(hp->n_expert_used + 1) * sizeof(int32_t));
    c->routing.weight = malloc(nb * (size_t)(hp->n_expert_used + 1) * sizeof(float));
    c->exp_rows = malloc((nb * X + 1) * sizeof(int32_t));
    c->exp_wts = malloc((nb * X + 1) * sizeof(float));
    c->exp_count = malloc((X + 1) * sizeof(int32_t));
    c->expert_tokens = calloc((size_t)hp->n_layer * X + 1, sizeof(uint64_t));
    c->dev_chosen = calloc((size_t)hp->n_layer * (size_t)hp->n_expert_used + 1, sizeof(int32_t));
    c->dev_routed = calloc((size_t)hp->n_layer + 1, 1);
    if (!c->dev_chosen || !c->dev_routed || !c->logits || !c->routing.expert || !c->routing.weight || !c->exp_rows ||
        !c->exp_wts || !c->exp_count || !c->expert_tokens)
        return cm_fail(err, CM_E_NOMEM, "out of memory allocating a %d-token context",
                       c->n_ctx);
    return CM_OK;
}

/* The context's view of the weights: a copy of m's tensors, and of each
 * expert's matrices, that placement may point at device memory. */
static cm_status copy_weights(cm_ctx *c, cm_err *err)
{
    const cm_model *m = c->m;
    const size_t L = (size_t)m->hp.n_layer, X = (size_t)m->hp.n_expert;
    c->w = *m;
    c->w.layers = malloc((L ? L : 1) * sizeof *c->w.layers);
    c->expw = malloc((L * X * 3 + 1) * sizeof *c->expw);
    if (!c->w.layers || !c->expw)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating a context");
    memcpy(c->w.layers, m->layers, L * sizeof *c->w.layers);
    for (size_t il = 0; il < L; il++)
        for (size_t e = 0; e < X; e++)
            cm_expert_views(&m->layers[il], (int)e, c->expw + (il * X + e) * 3);
    return CM_OK;
}

/* The model the backend is shaped with: m itself for one sequence; for
 * n_seq, a copy with n_seq times the layers (the extra ones empty: the
 * backend sizes its cache by n_layer and its scratch by the present
 * weights), so cache layer s * n_layer + il is layer il of sequence s. */
static cm_status kv_model(cm_ctx *c, const cm_model *m, int n_seq, cm_err *err)
{
    const size_t L = (size_t)m->hp.n_layer;
    c->n_seq = n_seq;
    c->seq_past = calloc((size_t)n_seq, sizeof *c->seq_past);
    c->runs = malloc((size_t)c->n_batch * sizeof *c->runs);
    c->out_rows = malloc((size_t)c->n_batch * sizeof *c->out_rows);
    if (!c->seq_past || !c->runs || !c->out_rows)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating a context");
    if (n_seq == 1)
        return CM_OK;
    if ((int64_t)L * n_seq > (1 << 20))
        return cm_fail(err, CM_E_RANGE, "%d sequences are too many", n_seq);
    c->kvm = *m;
    c->kvm.hp.n_layer = (int)L * n_seq;
    c->kvm.layers = calloc(L * (size_t)n_seq + 1, sizeof *c->kvm.layers);
    if (!c->kvm.layers)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating a context");
    memcpy(c->kvm.layers, m->layers, L * sizeof *m->layers);
    return CM_OK;
}

static cm_status ctx_new(const cm_model *m, const cm_backend_ops *backend,
                         const cm_place_opts *place, int n_ctx, cm_kv_type kv, int n_batch,
                         int n_seq, cm_ctx **out, cm_err *err)
{
    *out = NULL;
    if (n_ctx <= 0 || n_ctx > (1 << 24))
        return cm_fail(err, CM_E_RANGE, "context size %d is out of range", n_ctx);
    if (!m->hp.use_rope && n_ctx > m->hp.n_ctx_train)
        return cm_fail(err, CM_E_RANGE, "context size %d exceeds the %d positions this model "
                       "has learned embeddings for", n_ctx, m->hp.n_ctx_train);
    if (n_batch <= 0)
        return cm_fail(err, CM_E_RANGE, "batch size %d is out of range", n_batch);
    if (n_seq <= 0 || n_seq > 4096)
        return cm_fail(err, CM_E_RANGE, "%d sequences is out of range", n_seq);
    if (kv == CM_KV_Q8_0 && (m->hp.head_dim % 32 || m->hp.head_dim_v % 32))
        return cm_fail(err, CM_E_UNSUPPORTED, "a q8_0 KV cache needs head dimensions that are "
                       "multiples of 32 (this model's are %d/%d): use --kv-type f16",
                       m->hp.head_dim, m->hp.head_dim_v);
    cm_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating a context");
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch < n_ctx * n_seq ? n_batch : n_ctx * n_seq;
    c->kv_type = kv;
    cm_status s = kv_model(c, m, n_seq, err);
    cm_backend_shape shape = {n_seq > 1 ? &c->kvm : m, n_ctx, c->n_batch, kv, 0,
                              place ? place->device : -1, n_seq};
    if (!s)
        s = cm_backend_new(backend ? backend : &cm_backend_cpu_ops, &shape, &c->be, err);
    if (!s)
        s = alloc_buffers(c, err);
    if (!s)
        s = copy_weights(c, err);
    if (!s) /* after the buffers: an automatic budget is what they leave */
        s = cm_place_weights(c->be, m, place ? place : &CM_PLACE_AUTO, &c->w, c->expw,
                             &c->place, err);
    if (s) {
        cm_ctx_free(c);
        return s;
    }
    *out = c;
    return CM_OK;
}

cm_status cm_ctx_new_placed(const cm_model *m, const cm_backend_ops *backend,
                            const cm_place_opts *place, int n_ctx, cm_kv_type kv, int n_batch,
                            cm_ctx **out, cm_err *err)
{
    return ctx_new(m, backend, place, n_ctx, kv, n_batch, 1, out, err);
}

cm_status cm_ctx_new_multi(const cm_model *m, const cm_backend_ops *backend,
                           const cm_place_opts *place, int n_ctx, cm_kv_type kv, int n_batch,
                           int n_seq, cm_ctx **out, cm_err *err)
{
    return ctx_new(m, backend, place, n_ctx, kv, n_batch, n_seq, out, err);
}

cm_status cm_ctx_new_on(const cm_model *m, const cm_backend_ops *backend, int n_ctx,
                        cm_kv_type kv, int n_batch, cm_ctx **out, cm_err *err)
{
    return cm_ctx_new_placed(m, backend, NULL, n_ctx, kv, n_batch, out, err);
}

void cm_ctx_place_stats(const cm_ctx *c, cm_place_stats *out) { cm_place_get_stats(c->place, out); }

int cm_ctx_expert_on_device(const cm_ctx *c, int il, int e)
{
    return cm_place_expert_resident(c->place, il, e);
}

cm_status cm_ctx_new(const cm_model *m, int n_ctx, cm_kv_type kv, int n_batch, cm_ctx **out,
                     cm_err *err)
{
    return cm_ctx_new_on(m, NULL, n_ctx, kv, n_batch, out, err);
}

void cm_ctx_free(cm_ctx *c)
{
    if (!c)
        return;
    act_spec s[MAX_ACTS];
    for (int i = 0, n = act_specs(&c->m->hp, s); c->be && i < n; i++)
        cm_backend_tensor_free(c->be, act(c, s[i].off));
    if (c->be)
        cm_place_free(c->be, c->place);
    cm_backend_free(c->be);
    free(c->w.layers), free(c->expw);
    free(c->logits), free(c->routing.expert), free(c->routing.weight), free(c->host_ffn);
    free(c->exp_rows), free(c->exp_wts), free(c->exp_count), free(c->expert_tokens);
    free(c->dev_chosen), free(c->dev_routed);
    cm_expert_cache_free(c->experts);
    free(c->seq_past), free(c->runs), free(c->out_rows), free(c->kvm.layers);
    free(c->mem_layers), free(c->mem_runs);
    free(c);
}

void cm_ctx_reset(cm_ctx *c)
{
    c->n_past = 0;
    for (int s = 0; s < c->n_seq; s++)
        c->seq_past[s] = 0;
}

/* Keeps the first n positions: what follows is overwritten by later cm_eval
 * calls (attention only reads positions < n_past). */
void cm_ctx_truncate(cm_ctx *c, int n) { c->n_past = n >= 0 && n < c->n_past ? n : c->n_past; }
int cm_ctx_n_past(const cm_ctx *c) { return c->n_past; }
int cm_ctx_n_seq(const cm_ctx *c) { return c->n_seq; }
int cm_ctx_seq_past(const cm_ctx *c, int seq)
{
    return seq >= 0 && seq < c->n_seq ? c->seq_past[seq] : 0;
}

void cm_ctx_seq_keep(cm_ctx *c, int seq, int n)
{
    if (seq >= 0 && seq < c->n_seq && n < c->seq_past[seq])
        c->seq_past[seq] = n < 0 ? 0 : n;
}

cm_status cm_ctx_seq_copy(cm_ctx *c, int src, int dst, int n, cm_err *err)
{
    if (src < 0 || src >= c->n_seq || dst < 0 || dst >= c->n_seq)
        return cm_fail(err, CM_E_RANGE, "sequence %d or %d is not one of the context's %d", src,
                       dst, c->n_seq);
    if (n < 0 || n > c->seq_past[src])
        return cm_fail(err, CM_E_RANGE, "sequence %d holds %d positions, not %d", src,
                       c->seq_past[src], n);
    if (!c->be->ops->kv_copy)
        return cm_fail(err, CM_E_UNSUPPORTED, "the %s backend cannot copy a sequence's cache",
                       c->be->ops->name);
    const int L = c->m->hp.n_layer;
    for (int il = 0; src != dst && n > 0 && il < L; il++)
        c->be->ops->kv_copy(c->be, dst * L + il, src * L + il, n);
    c->seq_past[dst] = n;
    return CM_OK;
}

cm_status cm_ctx_rebind(cm_ctx *c, cm_err *err)
{
    if (c->place && !c->be->ops->reads_host)
        return cm_fail(err, CM_E_UNSUPPORTED, "the %s backend placed this context's weights: "
                       "another expert needs a new context", c->be->ops->name);
    free(c->w.layers), free(c->expw);
    c->w.layers = NULL, c->expw = NULL;
    return copy_weights(c, err);
}
int cm_ctx_n_ctx(const cm_ctx *c) { return c->n_ctx; }
const float *cm_ctx_logits(const cm_ctx *c) { return c->logits; }
const uint64_t *cm_ctx_expert_tokens(const cm_ctx *c) { return c->expert_tokens; }
cm_backend *cm_ctx_backend(const cm_ctx *c) { return c->be; }

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

/* Rows r0 .. r0 + n - 1 of weight w, or values r0 .. r0 + n - 1 of a bias
 * (one row, whatever n_dims its file gave it): a fused projection's part. */
static cm_tensor weight_rows(const cm_tensor *w, int64_t r0, int64_t n)
{
    const int bias = w->ne[1] == 1 && w->ne[2] == 1 && w->ne[3] == 1;
    cm_tensor v = bias ? cm_shaped(w, 1, w->ne[0]) : *w;
    v = cm_rows(&v, r0, n);
    if (bias)
        v.ne[0] = n, v.ne[1] = 1;
    return v;
}

/* q, k, v of h: three products sharing one pass over h.  A fused weight
 * (starcoder) is three blocks of rows: the same products. */
static void project_qkv(cm_ctx *c, const cm_layer *L, const cm_tensor *h, cm_tensor *q,
                        cm_tensor *k, cm_tensor *v)
{
    cm_tensor *ys[3] = {q, k, v};
    if (!cm_tensor_present(&L->wqkv)) {
        const cm_tensor *w[3] = {&L->wq, &L->wk, &L->wv}, *b[3] = {&L->bq, &L->bk, &L->bv};
        cm_op_matmul(c->be, 3, w, b, h, ys);
        return;
    }
    const int64_t qd = q->ne[0], kd = k->ne[0], vd = v->ne[0];
    cm_tensor w[3] = {weight_rows(&L->wqkv, 0, qd), weight_rows(&L->wqkv, qd, kd),
                      weight_rows(&L->wqkv, qd + kd, vd)};
    cm_tensor b[3] = {0};
    if (cm_tensor_present(&L->bqkv))
        b[0] = weight_rows(&L->bqkv, 0, qd), b[1] = weight_rows(&L->bqkv, qd, kd),
        b[2] = weight_rows(&L->bqkv, qd + kd, vd);
    const cm_tensor *wp[3] = {&w[0], &w[1], &w[2]}, *bp[3] = {&b[0], &b[1], &b[2]};
    cm_op_matmul(c->be, 3, wp, bp, h, ys);
}

/* Rows first..n-1 of out = attention of c->h (n rows), after the output
 * projection; every row's key and value go to the cache.  The products see
 * the whole batch; rotation, cache and attention go run by run, each at its
 * sequence's positions in its sequence's cache layers. */
static void attention(cm_ctx *c, const cm_layer *L, int il, int first, int n, cm_tensor *out)
{
    cm_tensor h = cm_rows(&c->h, 0, n), q = cm_rows(&c->q, 0, n), k = cm_rows(&c->k, 0, n);
    cm_tensor v = cm_rows(&c->v, 0, n);
    project_qkv(c, L, &h, &q, &k, &v);
    for (int r = 0; r < c->n_runs; r++) {
        const cm_run *u = &c->runs[r];
        const int kl = u->seq * c->m->hp.n_layer + il, f = first > u->r0 ? first - u->r0 : 0;
        cm_tensor qr = cm_rows(&c->q, u->r0, u->n), kr = cm_rows(&c->k, u->r0, u->n);
        cm_tensor vr = cm_rows(&c->v, u->r0, u->n);
        if (c->m->hp.use_rope || cm_tensor_present(&L->q_norm)) { /* (starcoder: neither) */
            cm_op_rope(c->be, &qr, &L->q_norm, u->p0);
            cm_op_rope(c->be, &kr, &L->k_norm, u->p0);
        }
        cm_op_kv_store(c->be, kl, &kr, &vr, u->p0);
        if (f >= u->n)
            continue;
        cm_tensor qw = cm_rows(&c->q, u->r0 + f, u->n - f);
        cm_tensor a = cm_rows(&c->att, u->r0 + f, u->n - f);
        cm_op_attention(c->be, kl, &qw, u->p0 + f, &a);
    }
    cm_tensor a = cm_rows(&c->att, first, n - first);
    cm_tensor o = cm_rows(out, first, n - first), *op = &o;
    const cm_tensor *wo = &L->wo, *bo = &L->bo;
    cm_op_matmul(c->be, 1, &wo, &bo, &a, &op);
}

/* ---------------------------------------------------------- feed-forward */

/* out = ffn(h) for the rows of h (c->h's rows from some r0) */
static void dense_ffn_rows(cm_ctx *c, const cm_layer *L, cm_tensor h, cm_tensor *out)
{
    const int n = (int)out->ne[1], F = c->m->hp.n_ff;
    cm_tensor a = cm_shaped(&c->ff_a, F, n), b = cm_shaped(&c->ff_b, F, n);
    if (c->m->hp.gelu_mlp) { /* a = gelu(h Wup + b) */
        const cm_tensor *w = &L->w_up, *bu = &L->b_up;
        cm_tensor *y = &b;
        cm_op_matmul(c->be, 1, &w, &bu, &h, &y);
        cm_op_gelu(c->be, &b, &a);
    } else { /* a = silu(h Wgate) * (h Wup + b), one pass over h */
        const cm_tensor *w[2] = {&L->w_up, &L->w_gate}, *bs[2] = {&L->b_up, NULL};
        cm_tensor *y[2] = {&b, &a};
        cm_op_matmul(c->be, 2, w, bs, &h, y);
        cm_op_swiglu(c->be, &a, &b);
    }
    const cm_tensor *wd = &L->w_down, *bd = &L->b_down;
    cm_op_matmul(c->be, 1, &wd, &bd, &a, &out);
}

static void dense_ffn(cm_ctx *c, const cm_layer *L, cm_tensor *out)
{
    dense_ffn_rows(c, L, cm_rows(&c->h, 0, (int)out->ne[1]), out);
}

static void ffn(cm_ctx *c, const cm_layer *L, int il, cm_tensor *out)
{
    if (c->m->hp.n_expert > 0)
        cm_moe_ffn(c, L, il, out);
    else if (c->n_mem_runs == 0)
        dense_ffn(c, L, out);
    else /* a batch of several pack members: each run of rows through its own */
        for (int r = 0; r < c->n_mem_runs; r++) {
            const cm_run *u = &c->mem_runs[r];
            cm_tensor o = cm_rows(out, u->r0, u->n);
            dense_ffn_rows(c, &c->mem_layers[u->seq][il], cm_rows(&c->h, u->r0, u->n), &o);
        }
}

/* One layer over n rows.  Only rows first..n-1 of the output are wanted
 * (the last layer of a batch whose first rows give no logits): the others
 * still put their keys and values in the cache, but skip the rest. */
static void layer(cm_ctx *c, const cm_layer *L, int il, int first, int n)
{
    const cm_hparams *hp = &c->m->hp;
    if (hp->parallel_block || hp->n_expert > 0)
        first = 0; /* (MoE: its per-expert token counts are user-visible) */
    cm_tensor x = cm_rows(&c->x, 0, n), h = cm_rows(&c->h, 0, n), y = cm_rows(&c->y, 0, n);
    cm_op_norm(c->be, &x, &L->attn_norm, &L->attn_norm_b, hp->norm_eps, hp->layer_norm, &h);
    attention(c, L, il, first, n, &y);
    if (hp->parallel_block) { /* both branches read the same normalised x */
        cm_tensor y2 = cm_rows(&c->y2, 0, n);
        ffn(c, L, il, &y2);
        cm_op_add(c->be, &x, &y);
        cm_op_add(c->be, &x, &y2);
        return;
    }
    const int m = n - first;
    cm_tensor xw = cm_rows(&c->x, first, m), yw = cm_rows(&c->y, first, m);
    cm_tensor h0 = cm_rows(&c->h, 0, m), y0 = cm_rows(&c->y, 0, m);
    cm_op_add(c->be, &xw, &yw);
    cm_op_norm(c->be, &xw, &L->ffn_norm, &L->ffn_norm_b, hp->norm_eps, hp->layer_norm, &h0);
    ffn(c, L, il, &y0); /* wanted rows from h[0] */
    cm_op_add(c->be, &xw, &y0);
}

/* ------------------------------------------------------------- evaluation */

/* The layers over a batch of n rows (c->runs set); the last layer only
 * for rows from `first` on. */
static void run_layers(cm_ctx *c, const int32_t *ids, int n, int first)
{
    const cm_model *m = &c->w;
    for (int r = 0; r < c->n_runs; r++) {
        const cm_run *u = &c->runs[r];
        cm_tensor x = cm_rows(&c->x, u->r0, u->n);
        cm_op_embed(c->be, &m->tok_embd, &m->pos_embd, ids + u->r0, u->n, u->p0, &x);
    }
    for (int il = 0; il < m->hp.n_layer; il++)
        layer(c, &m->layers[il], il, il == m->hp.n_layer - 1 ? first : 0, n);
}

/* Runs one batch of one sequence (n <= n_batch); logits of the last n_out
 * rows go to out (the caller's array, or the context's one row). */
static void eval_batch(cm_ctx *c, const int32_t *ids, int n, int n_out, float *out)
{
    const cm_model *m = &c->w;
    const cm_hparams *hp = &m->hp;
    /* a token of generation, all on the device, repeats the same ops */
    cm_op_batch_begin(c->be, ids, n, c->n_past, n_out,
                      (hp->n_expert == 0 || cm_moe_on_device(c)) && cm_place_complete(c->place));
    c->n_runs = 1;
    c->runs[0] = (cm_run){0, 0, n, c->n_past};
    run_layers(c, ids, n, n - n_out);
    c->n_past += n;
    if (n_out > 0) {
        cm_tensor last = cm_rows(&c->x, n - n_out, n_out), h = cm_rows(&c->h, 0, n_out);
        cm_op_norm(c->be, &last, &m->out_norm, &m->out_norm_b, hp->norm_eps, hp->layer_norm,
                   &h);
        cm_op_logits(c->be, &h, &m->output, &m->output_b, out);
    }
    cm_op_batch_end(c->be);
    cm_moe_count_device(c);
}

cm_status cm_eval_last(cm_ctx *c, const int32_t *ids, int n, int n_out, float *logits,
                       cm_err *err)
{
    int n_vocab = c->m->hp.n_vocab;
    if (c->n_seq > 1)
        return cm_fail(err, CM_E_UNSUPPORTED, "a context of several sequences takes cm_eval_batch");
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

/* ---------------------------------------------------- several sequences */

/* Row i, of key k (a sequence, or a pack member), joins the last run when
 * that run has the same key, else starts one at position pos. */
static void add_to_runs(cm_run *runs, int *n_runs, int k, int i, int pos)
{
    cm_run *u = *n_runs ? &runs[*n_runs - 1] : NULL;
    if (u && u->seq == k)
        u->n++;
    else
        runs[(*n_runs)++] = (cm_run){k, i, 1, pos};
}

/* One batch of several sequences (n <= n_batch): runs of consecutive
 * tokens of one sequence; the wanted rows' logits to out, in order. */
static void eval_multi(cm_ctx *c, const int32_t *ids, const int32_t *seq, int n,
                       const uint8_t *want, float *out)
{
    const cm_model *m = &c->w;
    const cm_hparams *hp = &m->hp;
    int n_out = 0;
    c->n_runs = 0;
    for (int i = 0; i < n; i++) {
        add_to_runs(c->runs, &c->n_runs, seq[i], i, c->seq_past[seq[i]]);
        c->seq_past[seq[i]]++;
        if (want && want[i])
            c->out_rows[n_out++] = i;
    }
    /* positions are each run's own: nothing to replay, none relative to p0 */
    cm_op_batch_begin(c->be, ids, n, 0, n_out, 0);
    run_layers(c, ids, n, 0);
    if (n_out > 0) {
        cm_tensor x = cm_rows(&c->x, 0, n), y = cm_rows(&c->y, 0, n_out);
        cm_tensor h = cm_rows(&c->h, 0, n_out);
        cm_op_gather(c->be, &x, c->out_rows, n_out, &y);
        cm_op_norm(c->be, &y, &m->out_norm, &m->out_norm_b, hp->norm_eps, hp->layer_norm, &h);
        cm_op_logits(c->be, &h, &m->output, &m->output_b, out);
    }
    cm_op_batch_end(c->be);
    cm_moe_count_device(c);
}

static cm_status check_multi(const cm_ctx *c, const int32_t *ids, const int32_t *seq, int n,
                             const uint8_t *want, const float *logits, cm_err *err)
{
    if (n <= 0)
        return cm_fail(err, CM_E_RANGE, "nothing to evaluate (0 tokens)");
    int *add = calloc((size_t)c->n_seq, sizeof *add), wanted = 0;
    if (!add)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    cm_status s = CM_OK;
    for (int i = 0; !s && i < n; i++) {
        wanted |= want && want[i];
        if (seq[i] < 0 || seq[i] >= c->n_seq)
            s = cm_fail(err, CM_E_RANGE, "sequence %d of token %d is not one of the context's %d",
                        seq[i], i, c->n_seq);
        else if (ids[i] < 0 || ids[i] >= c->m->hp.n_vocab)
            s = cm_fail(err, CM_E_RANGE, "token id %d at position %d is outside the vocabulary "
                        "(0..%d)", ids[i], i, c->m->hp.n_vocab - 1);
        else if (c->seq_past[seq[i]] + ++add[seq[i]] > c->n_ctx)
            s = cm_fail(err, CM_E_RANGE, "sequence %d's tokens do not fit in its %d positions",
                        seq[i], c->n_ctx);
    }
    free(add);
    if (!s && wanted && !logits)
        s = cm_fail(err, CM_E_RANGE, "logits asked for with nowhere to put them");
    return s;
}

static void member_runs(cm_ctx *c, const int32_t *member, int n);

/* Checked tokens of several sequences in batches of at most n_batch;
 * member: each row's pack member (cm_ctx_set_members), or NULL. */
static void eval_multi_all(cm_ctx *c, const int32_t *ids, const int32_t *seq,
                           const int32_t *member, int n, const uint8_t *want, float *logits)
{
    const size_t n_vocab = (size_t)c->m->hp.n_vocab;
    for (int done = 0; done < n;) {
        int nb = n - done < c->n_batch ? n - done : c->n_batch, rows = 0;
        if (member)
            member_runs(c, member + done, nb);
        eval_multi(c, ids + done, seq + done, nb, want ? want + done : NULL, logits);
        for (int i = 0; want && i < nb; i++)
            rows += want[done + i] != 0;
        if (rows) /* logits may be NULL when no row is wanted */
            logits += rows * n_vocab;
        done += nb;
    }
    c->n_mem_runs = 0;
}

cm_status cm_eval_batch(cm_ctx *c, const int32_t *ids, const int32_t *seq, int n,
                        const uint8_t *want, float *logits, cm_err *err)
{
    cm_status s = check_multi(c, ids, seq, n, want, logits, err);
    if (s)
        return s;
    int only_last = 1; /* one sequence wanting at most its last row: cm_eval_last's path,
                        * whose generation steps a device backend may replay */
    for (int i = 0; want && i < n - 1; i++)
        only_last &= !want[i];
    if (c->n_seq == 1 && only_last) {
        c->n_past = c->seq_past[0];
        s = cm_eval_last(c, ids, n, want && want[n - 1], logits, err);
        c->seq_past[0] = c->n_past;
        return s;
    }
    eval_multi_all(c, ids, seq, NULL, n, want, logits);
    return CM_OK;
}

/* ------------------------------------------------ language-expert packs */

static int same_tensor(const cm_tensor *a, const cm_tensor *b) { return a->data == b->data; }

/* Whether layer a differs from b in the dense feed-forward only. */
static int ffn_only_differs(const cm_layer *a, const cm_layer *b)
{
    cm_layer x = *a;
    x.w_gate = b->w_gate, x.w_up = b->w_up, x.w_down = b->w_down;
    x.b_up = b->b_up, x.b_down = b->b_down;
    const cm_tensor *p = (const cm_tensor *)&x, *q = (const cm_tensor *)b;
    for (size_t k = 0; k < sizeof(cm_layer) / sizeof(cm_tensor); k++)
        if (!same_tensor(&p[k], &q[k]))
            return 0;
    return 1;
}

cm_status cm_ctx_set_members(cm_ctx *c, cm_layer *const *layers, int n, cm_err *err)
{
    const int L = c->m->hp.n_layer;
    if (c->m->hp.n_expert > 0 || !c->be->ops->reads_host)
        return cm_fail(err, CM_E_UNSUPPORTED, "batches of several members need a dense model "
                       "on a backend that reads the mapped weights");
    for (int k = 0; k < n; k++)
        for (int il = 0; il < L; il++)
            if (!ffn_only_differs(&layers[k][il], &c->w.layers[il]))
                return cm_fail(err, CM_E_UNSUPPORTED, "pack members differ in more than the "
                               "feed-forward weights (layer %d)", il);
    cm_layer **ml = malloc((size_t)(n > 0 ? n : 1) * sizeof *ml);
    cm_run *runs = malloc((size_t)c->n_batch * sizeof *runs);
    if (!ml || !runs) {
        free(ml), free(runs);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    memcpy(ml, layers, (size_t)n * sizeof *ml);
    free(c->mem_layers), free(c->mem_runs);
    c->mem_layers = ml, c->mem_runs = runs, c->n_mem = n;
    return CM_OK;
}

/* The runs of one member in rows [0, n) of the member list. */
static void member_runs(cm_ctx *c, const int32_t *member, int n)
{
    c->n_mem_runs = 0;
    for (int i = 0; i < n; i++)
        add_to_runs(c->mem_runs, &c->n_mem_runs, member[i], i, 0);
}

cm_status cm_eval_batch_members(cm_ctx *c, const int32_t *ids, const int32_t *seq,
                                const int32_t *member, int n, const uint8_t *want,
                                float *logits, cm_err *err)
{
    cm_status s = check_multi(c, ids, seq, n, want, logits, err);
    for (int i = 0; !s && i < n; i++)
        if (member[i] < 0 || member[i] >= c->n_mem)
            s = cm_fail(err, CM_E_RANGE, "member %d of token %d is not one of the context's %d",
                        member[i], i, c->n_mem);
    if (s)
        return s;
    eval_multi_all(c, ids, seq, member, n, want, logits);
    return CM_OK;
}
