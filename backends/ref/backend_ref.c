/* backend_ref.c - the reference backend: every op written plainly on the
 * scalar references of quant/ (one row, one dot at a time, one thread).
 *
 * It is what the conformance test (tests/test_backend.c) holds every other
 * backend to, and `--backend ref` runs a whole model on it when a result
 * of a fast backend is in doubt.  Its arithmetic is each format's own: the
 * activations quantized to the weight's dot type by the same reference
 * quantizer, exact integer block sums, blocks summed in double. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/kernels.h"
#include "backends/cpu/ops.h"
#include "engine/backend.h"

typedef struct {
    const cm_hparams *hp;
    int n_ctx;
    enum cm_type kv_type;
    char **k_cache, **v_cache; /* [n_layer] -> [n_ctx] rows */
    size_t krow, vrow;         /* bytes of one position's keys, values */
    float *scores;             /* [n_ctx] */
    float *tmp;                /* a dequantized row */
    void *xq;                  /* an activation row in a dot type */
    int64_t max_cols;
    struct cm_kernels k;       /* the scalar table: softmax, swiglu, rmsnorm */
} ref_state;

static int64_t max_cols(const cm_hparams *hp, int n_ctx)
{
    int64_t c = hp->n_embd;
    int64_t w[] = {hp->n_ff, hp->n_ff_exp, hp->n_ff_shexp, (int64_t)hp->n_head * hp->head_dim,
                   (int64_t)hp->n_head * hp->head_dim_v, hp->n_vocab, n_ctx};
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
        c = w[i] > c ? w[i] : c;
    return c + 256; /* room to round a row up to whole blocks */
}

static size_t ref_state_bytes(const cm_backend_shape *s)
{
    const cm_hparams *hp = &s->m->hp;
    enum cm_type t = cm_kv_elem_type(s->kv);
    size_t kv = (size_t)hp->n_layer * s->n_ctx *
                (cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim) +
                 cm_row_bytes(t, (int64_t)hp->n_head_kv * hp->head_dim_v));
    return (s->no_kv ? 0 : kv) + 3 * (size_t)max_cols(hp, s->n_ctx) * sizeof(float);
}

static void ref_release(cm_backend *be)
{
    ref_state *st = be->state;
    if (!st)
        return;
    for (int il = 0; st->k_cache && il < st->hp->n_layer; il++)
        free(st->k_cache[il]);
    for (int il = 0; st->v_cache && il < st->hp->n_layer; il++)
        free(st->v_cache[il]);
    free(st->k_cache), free(st->v_cache);
    free(st->scores), free(st->tmp), free(st->xq);
    free(st);
    be->state = NULL;
}

static cm_status ref_init(cm_backend *be, const cm_backend_shape *s, cm_err *err)
{
    const cm_hparams *hp = &s->m->hp;
    ref_state *st = calloc(1, sizeof *st);
    be->state = st;
    if (!st)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the reference backend");
    st->hp = hp;
    st->n_ctx = s->n_ctx;
    st->kv_type = cm_kv_elem_type(s->kv);
    st->krow = cm_row_bytes(st->kv_type, (int64_t)hp->n_head_kv * hp->head_dim);
    st->vrow = cm_row_bytes(st->kv_type, (int64_t)hp->n_head_kv * hp->head_dim_v);
    st->max_cols = max_cols(hp, s->n_ctx);
    cm_kernels_scalar(&st->k);
    st->scores = malloc((size_t)st->max_cols * sizeof(float));
    st->tmp = malloc((size_t)st->max_cols * sizeof(float));
    st->xq = malloc((size_t)st->max_cols * sizeof(float));
    int ok = st->scores && st->tmp && st->xq;
    if (!s->no_kv) {
        st->k_cache = calloc((size_t)hp->n_layer, sizeof(char *));
        st->v_cache = calloc((size_t)hp->n_layer, sizeof(char *));
        ok &= st->k_cache && st->v_cache;
        for (int il = 0; ok && il < hp->n_layer; il++) {
            st->k_cache[il] = malloc((size_t)s->n_ctx * st->krow);
            st->v_cache[il] = malloc((size_t)s->n_ctx * st->vrow);
            ok &= st->k_cache[il] && st->v_cache[il];
        }
    }
    if (!ok) {
        ref_release(be);
        return cm_fail(err, CM_E_NOMEM, "out of memory allocating a %d-token context",
                       s->n_ctx);
    }
    return CM_OK;
}

static void ref_describe(char *out, size_t n)
{
    snprintf(out, n, "ref (scalar reference kernels, 1 thread)");
}

static cm_status ref_buffer_alloc(cm_backend *be, size_t bytes, cm_buffer *buf, cm_err *err)
{
    (void)be;
    buf->host = buf->dev = calloc(1, bytes ? bytes : 1);
    buf->size = bytes;
    if (!buf->host)
        return cm_fail(err, CM_E_NOMEM, "out of memory allocating %zu bytes", bytes);
    return CM_OK;
}

static void ref_buffer_free(cm_backend *be, cm_buffer *buf)
{
    (void)be;
    free(buf->host);
    buf->host = buf->dev = NULL;
}

static void ref_upload(cm_backend *be, const cm_tensor *dst, const void *src, size_t bytes)
{
    (void)be;
    memcpy(cm_f32(dst), src, bytes);
}

static void ref_download(cm_backend *be, const cm_tensor *src, void *dst, size_t bytes)
{
    (void)be;
    memcpy(dst, src->data, bytes);
}

static void ref_synchronize(cm_backend *be) { (void)be; }

/* ------------------------------------------------------------ the cache */

static void ref_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0)
{
    ref_state *st = be->state;
    const float *kx = k->data, *vx = v->data;
    for (int64_t t = 0; t < k->ne[1]; t++) {
        cm_quantize_row(st->kv_type, kx + t * k->ne[0], st->k_cache[il] + (p0 + t) * st->krow,
                        k->ne[0]);
        cm_quantize_row(st->kv_type, vx + t * v->ne[0], st->v_cache[il] + (p0 + t) * st->vrow,
                        v->ne[0]);
    }
}

static void ref_kv_copy(cm_backend *be, int il_dst, int il_src, int n)
{
    ref_state *st = be->state;
    memcpy(st->k_cache[il_dst], st->k_cache[il_src], (size_t)n * st->krow);
    memcpy(st->v_cache[il_dst], st->v_cache[il_src], (size_t)n * st->vrow);
}

/* One query head at position pos against cached KV head g. */
static void attend(ref_state *st, int il, const float *q, int g, int pos, float *out)
{
    const cm_hparams *hp = st->hp;
    const enum cm_type t = st->kv_type;
    const int d = hp->head_dim, dv = hp->head_dim_v;
    const size_t koff = cm_row_bytes(t, (int64_t)g * d), voff = cm_row_bytes(t, (int64_t)g * dv);
    float *qr = st->tmp;
    if (t == CM_TYPE_F16) /* the query rounded to f16, as llama.cpp does for an f16 cache */
        for (int i = 0; i < d; i++)
            qr[i] = cm_f16_to_f32(cm_f32_to_f16(q[i]));
    else
        memcpy(qr, q, (size_t)d * sizeof(float));
    const void *qd = qr;
    if (t == CM_TYPE_Q8_0) {
        cm_quantize_row(CM_TYPE_Q8_0, qr, st->xq, d);
        qd = st->xq;
    }
    for (int j = 0; j <= pos; j++)
        st->scores[j] = cm_vec_dot_ref(t, d, st->k_cache[il] + j * st->krow + koff, qd);
    st->k.softmax(st->scores, pos + 1, 1.0f / sqrtf((float)d), t == CM_TYPE_F16);
    memset(out, 0, (size_t)dv * sizeof(float));
    for (int j = 0; j <= pos; j++) {
        cm_dequantize_row(t, st->v_cache[il] + j * st->vrow + voff, qr, dv);
        for (int i = 0; i < dv; i++)
            out[i] += st->scores[j] * qr[i];
    }
}

static void ref_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out)
{
    ref_state *st = be->state;
    const cm_hparams *hp = st->hp;
    const int group = hp->n_head / hp->n_head_kv;
    for (int64_t t = 0; t < q->ne[1]; t++)
        for (int h = 0; h < hp->n_head; h++)
            attend(st, il, (const float *)q->data + (t * hp->n_head + h) * hp->head_dim,
                   h / group, p0 + (int)t, cm_f32(out) + (t * hp->n_head + h) * hp->head_dim_v);
}

/* ------------------------------------------------------------ the ops */

static void ref_embed(cm_backend *be, const cm_tensor *table, const cm_tensor *pos_table,
                      const int32_t *ids, int n, int p0, cm_tensor *out)
{
    ref_state *st = be->state;
    const int64_t E = table->ne[0];
    const size_t rb = cm_row_bytes(table->type, E);
    for (int t = 0; t < n; t++) {
        float *x = cm_f32(out) + t * E;
        cm_dequantize_row(table->type, (const char *)table->data + (size_t)ids[t] * rb, x, E);
        if (!pos_table || !pos_table->data)
            continue;
        size_t pb = cm_row_bytes(pos_table->type, E);
        cm_dequantize_row(pos_table->type, (const char *)pos_table->data + (size_t)(p0 + t) * pb,
                          st->tmp, E);
        for (int64_t i = 0; i < E; i++)
            x[i] += st->tmp[i];
    }
}

static void ref_norm(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
                     float eps, int layer_norm, cm_tensor *out)
{
    ref_state *st = be->state;
    const int64_t E = x->ne[0];
    for (int64_t t = 0; t < x->ne[1]; t++) {
        const float *xi = (const float *)x->data + t * E;
        float *o = cm_f32(out) + t * E;
        if (layer_norm)
            cm_norm_rows(o, xi, w, b, 1, (int)E, eps, 1);
        else
            st->k.rmsnorm(o, xi, w->data, E, eps);
    }
}

/* y = x w^T + b, each row of x quantized to the weight's dot type. */
static void ref_matmul1(ref_state *st, const cm_tensor *w, const cm_tensor *b,
                        const cm_tensor *x, float *y)
{
    const int64_t cols = w->ne[0], rows = w->ne[1];
    const enum cm_type dt = cm_type_get(w->type)->dot_type;
    const size_t wrow = cm_row_bytes(w->type, cols);
    for (int64_t t = 0; t < x->ne[1]; t++) {
        const float *xt = (const float *)x->data + t * cols;
        const void *xq = xt;
        if (dt != CM_TYPE_F32) {
            cm_quantize_row(dt, xt, st->xq, cols);
            xq = st->xq;
        }
        for (int64_t r = 0; r < rows; r++) {
            float v = cm_vec_dot_ref(w->type, cols, (const char *)w->data + r * wrow, xq);
            y[t * rows + r] = v + (b && b->data ? ((const float *)b->data)[r] : 0.0f);
        }
    }
}

static void ref_matmul(cm_backend *be, int nw, const cm_tensor *const *ws,
                       const cm_tensor *const *bs, const cm_tensor *x, cm_tensor *const *ys)
{
    for (int i = 0; i < nw; i++)
        ref_matmul1(be->state, ws[i], bs ? bs[i] : NULL, x, cm_f32(ys[i]));
}

static void ref_rope(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0)
{
    ref_state *st = be->state;
    const cm_hparams *hp = st->hp;
    const int d = hp->head_dim, n_heads = (int)(x->ne[0] / d);
    for (int64_t t = 0; t < x->ne[1]; t++)
        for (int h = 0; h < n_heads; h++) {
            float *v = cm_f32(x) + (t * n_heads + h) * d;
            if (norm_w && norm_w->data)
                st->k.rmsnorm(v, v, norm_w->data, d, hp->norm_eps);
            if (hp->use_rope)
                cm_rope_head(v, p0 + (int)t, hp);
        }
}

static void ref_clear(cm_backend *be, cm_tensor *x)
{
    (void)be;
    memset(cm_f32(x), 0, x->nbytes);
}

static void ref_swiglu(cm_backend *be, cm_tensor *a, const cm_tensor *b)
{
    ref_state *st = be->state;
    st->k.swiglu(cm_f32(a), b->data, a->ne[0] * a->ne[1]);
}

static void ref_gelu(cm_backend *be, const cm_tensor *x, cm_tensor *out)
{
    (void)be;
    for (int64_t i = 0; i < x->ne[0] * x->ne[1]; i++)
        cm_f32(out)[i] = cm_gelu(((const float *)x->data)[i]);
}

static void ref_add(cm_backend *be, cm_tensor *x, const cm_tensor *y)
{
    (void)be;
    for (int64_t i = 0; i < x->ne[0] * x->ne[1]; i++)
        cm_f32(x)[i] += ((const float *)y->data)[i];
}

static void ref_add_gated(cm_backend *be, cm_tensor *out, const cm_tensor *y,
                          const cm_tensor *gate)
{
    (void)be;
    const int64_t E = out->ne[0];
    for (int64_t t = 0; t < out->ne[1]; t++) {
        float g = gate ? 1.0f / (1.0f + expf(-((const float *)gate->data)[t])) : 1.0f;
        for (int64_t i = 0; i < E; i++)
            cm_f32(out)[t * E + i] += g * ((const float *)y->data)[t * E + i];
    }
}

static void ref_route(cm_backend *be, const cm_tensor *logits, int k, int norm, cm_routing *r)
{
    (void)be;
    const int64_t X = logits->ne[0];
    for (int64_t t = 0; t < logits->ne[1]; t++)
        cm_route_row((float *)(uintptr_t)logits->data + t * X, (int)X, k, norm,
                     r->expert + t * k, r->weight + t * k);
}

/* Expert e's matrix of a stack: expert 0's view moved e strides on. */
static cm_tensor expert_view(const cm_tensor *w0, size_t stride, int e)
{
    cm_tensor w = *w0;
    w.data = (const char *)w0->data + (size_t)e * stride;
    return w;
}

/* Routing, then the chosen experts of each token in increasing order
 * (the order moe.c adds them in: the same sums), one token at a time. */
static int ref_moe_ffn(cm_backend *be, const cm_moe_args *a)
{
    const int64_t E = a->out->ne[0], X = a->logits->ne[0], F = a->w[0]->ne[1];
    const int k = a->k;
    if (k > 64)
        return 0;
    for (int64_t t = 0; t < a->x->ne[1]; t++) {
        int32_t *ch = a->chosen + t * k;
        float wt[64];
        cm_route_row(cm_f32(a->logits) + t * X, (int)X, k, a->norm, ch, wt);
        for (int j = 1; j < k; j++) /* (increasing expert order, as promised) */
            for (int i = j; i > 0 && ch[i - 1] > ch[i]; i--) {
                int32_t e = ch[i];
                float v = wt[i];
                ch[i] = ch[i - 1], wt[i] = wt[i - 1];
                ch[i - 1] = e, wt[i - 1] = v;
            }
        const cm_tensor xt = cm_rows(a->x, t, 1);
        float *out = cm_f32(a->out) + t * E;
        memset(out, 0, (size_t)E * sizeof(float));
        for (int j = 0; j < k; j++) {
            const cm_tensor g = expert_view(a->w[0], a->stride[0], ch[j]);
            const cm_tensor u = expert_view(a->w[1], a->stride[1], ch[j]);
            const cm_tensor d = expert_view(a->w[2], a->stride[2], ch[j]);
            cm_tensor ta = cm_shaped(a->a, F, 1), tb = cm_shaped(a->b, F, 1);
            ref_matmul1(be->state, &g, NULL, &xt, cm_f32(&ta));
            ref_matmul1(be->state, &u, NULL, &xt, cm_f32(&tb));
            ref_swiglu(be, &ta, &tb);
            ref_matmul1(be->state, &d, NULL, &ta, cm_f32(a->y));
            for (int64_t i = 0; i < E; i++)
                out[i] += wt[j] * cm_f32(a->y)[i];
        }
    }
    return 1;
}

static void ref_gather(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n,
                       cm_tensor *dst)
{
    (void)be;
    const int64_t E = src->ne[0];
    for (int i = 0; i < n; i++)
        memcpy(cm_f32(dst) + i * E, (const float *)src->data + rows[i] * E,
               (size_t)E * sizeof(float));
}

static void ref_scatter_add(cm_backend *be, cm_tensor *dst, const cm_tensor *src,
                            const int32_t *rows, const float *wts, int n)
{
    (void)be;
    const int64_t E = dst->ne[0];
    for (int i = 0; i < n; i++)
        for (int64_t j = 0; j < E; j++)
            cm_f32(dst)[rows[i] * E + j] += wts[i] * ((const float *)src->data)[i * E + j];
}

static void ref_logits(cm_backend *be, const cm_tensor *x, const cm_tensor *w,
                       const cm_tensor *b, float *host)
{
    ref_matmul1(be->state, w, b, x, host);
}

const cm_backend_ops cm_backend_ref_ops = {
    .name = "ref",
    .reads_host = 1,
    .init = ref_init,
    .release = ref_release,
    .state_bytes = ref_state_bytes,
    .describe = ref_describe,
    .buffer_alloc = ref_buffer_alloc,
    .buffer_free = ref_buffer_free,
    .upload = ref_upload,
    .download = ref_download,
    .synchronize = ref_synchronize,
    .kv_store = ref_kv_store,
    .kv_copy = ref_kv_copy,
    .attention = ref_attention,
    .embed = ref_embed,
    .norm = ref_norm,
    .matmul = ref_matmul,
    .rope = ref_rope,
    .clear = ref_clear,
    .swiglu = ref_swiglu,
    .gelu = ref_gelu,
    .add = ref_add,
    .add_gated = ref_add_gated,
    .route = ref_route,
    .moe_ffn = ref_moe_ffn,
    .gather = ref_gather,
    .scatter_add = ref_scatter_add,
    .logits = ref_logits,
};
