/* backend_cpu.c - the CPU backend: host memory, OpenMP threads, and the
 * kernels of the dispatch table (cpu.h) behind the backend interface.
 *
 * Tensors are host memory: weights in the mapped file, activations in
 * 64-byte aligned buffers.  Row-wise ops run on the threads by token once a
 * batch is long enough (CM_PAR_TOKENS). */
#include "backends/cpu/backend_cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu.h"
#include "backends/cpu/ops.h"
#include "util/threads.h"

void *cm_cpu_alloc64(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? (bytes + 63) / 64 * 64 : 64) != 0)
        return NULL;
    return p;
}

/* ------------------------------------------------------------ the state */

static size_t scratch_for(const cm_tensor *w, int n_batch)
{
    return cm_tensor_present(w) ? cm_matmul_scratch_bytes(w, n_batch) : 0;
}

/* The largest quantized-activation scratch any product of the model needs. */
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

static size_t cpu_state_bytes(const cm_backend_shape *s)
{
    const cm_hparams *hp = &s->m->hp;
    size_t rope = (size_t)s->n_ctx * (size_t)(hp->rope_dim / 2 + 1) * 2 * sizeof(float);
    return cm_cpu_attention_bytes(s, cm_max_threads()) + max_scratch(s->m, s->n_batch) +
           rope + (size_t)hp->n_embd * sizeof(float);
}

/* The model's matmul weights in the kernels' repacked layout, where the
 * ISA has one (cm_cpu_repack_acquire; shared by the model's contexts).  A
 * helper for another backend's missing ops (no_kv) repacks nothing: the
 * weights it multiplies (experts left in host memory) are few, and the
 * rest are on the device.  Copies are found by address, so its products
 * use the copies of a CPU context on the same model while that context
 * lives: contexts of one model are freed before it, on the thread that
 * uses them.  Nor does a language-expert pack: which member is resident is
 * the mapping's pages there (cm_model_select_expert releases the previous
 * member's), and copies would outlive a switch while a context holds them. */
static void repack_weights(cm_cpu_state *st, const cm_backend_shape *s)
{
    const cm_model *m = s->m;
    if (s->no_kv || !m->file.mapped || !m->layers || m->is_pack)
        return;
    enum { PER_LAYER = 16 };
    size_t n = 0, cap = (size_t)m->hp.n_layer * PER_LAYER + 1;
    const cm_tensor **ws = malloc(cap * sizeof *ws);
    if (!ws)
        return;
    ws[n++] = &m->output;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const cm_layer *L = &m->layers[il];
        const cm_tensor *lw[PER_LAYER] = {&L->wqkv, &L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate,
                                          &L->w_up, &L->w_down, &L->gate_inp, &L->gate_exps,
                                          &L->up_exps, &L->down_exps, &L->gate_inp_shexp,
                                          &L->gate_shexp, &L->up_shexp, &L->down_shexp};
        for (int i = 0; i < PER_LAYER; i++)
            ws[n++] = lw[i];
    }
    if (cm_cpu_repack_acquire(m, ws, (int)n, m->file.base, m->file.size))
        st->repack_key = m;
    free(ws);
}

/* Weights a context stepping several sequences keeps decoded for the
 * batched kernels (cm_cpu_decode_acquire), within a budget of
 * CODEMOE_DECODE_MB MiB (default 64; 0 turns it off): the output now (a
 * code model's largest product), every other 2-D tensor of the file at its
 * first batched product (a pack's members too, as requests route to
 * them). */
static void decode_weights(cm_cpu_state *st, const cm_backend_shape *s)
{
    const cm_model *m = s->m;
    const char *env = getenv("CODEMOE_DECODE_MB");
    long mb = env ? strtol(env, NULL, 10) : 64;
    if (s->no_kv || s->n_seq < 2 || mb <= 0)
        return;
    cm_tensor *later = calloc(m->file.n_tensors + 1, sizeof *later);
    if (!later)
        return;
    int nl = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++) {
        const gguf_tensor *g = &m->file.tensors[i];
        if (g->n_dims == 2 && g->type < CM_TYPE_COUNT)
            later[nl++] = (cm_tensor){NULL, (enum cm_type)g->type, 2, {g->ne[0], g->ne[1], 1, 1},
                                      g->data, g->nbytes, NULL, 0};
    }
    const cm_tensor *out = &m->output;
    st->decoded = cm_cpu_decode_acquire(st, &out, 1, later, nl, (size_t)mb << 20);
    free(later);
}

/* The token table where lookups drop its mapped pages after reading their
 * rows: where nothing else reads the table in the mapping (an untied one,
 * or one tied to an output read from its repacked copy).  A lookup reads a
 * row, but the fault maps the pages around it too (fault-around, whole
 * page-cache folios), so a prompt's tokens brought most of the table in
 * beside the weights (smol135m q4_0: 15 of its 16 MiB, 10% of the peak
 * RSS).  The pages stay in the page cache: the next lookup maps its rows
 * back from there. */
static const void *embd_to_unmap(const cm_backend_shape *s)
{
    const cm_model *m = s->m;
    const cm_tensor *t = &m->tok_embd;
    const char *lo = (const char *)m->file.base, *d = t->data;
    if (s->no_kv || !m->file.mapped || t->buf || !d || d < lo ||
        t->nbytes > m->file.size || (size_t)(d - lo) > m->file.size - t->nbytes)
        return NULL;
    if (m->tied_output && !cm_cpu_is_repacked(&m->output))
        return NULL;
    cm_cpu_table_own_vma(t);
    return d;
}

static void cpu_release(cm_backend *be)
{
    cm_cpu_state *st = be->state;
    if (!st)
        return;
    cm_cpu_attention_free(st);
    if (st->repack_key)
        cm_cpu_repack_release(st->repack_key);
    if (st->decoded)
        cm_cpu_decode_release(st);
    free(st->rope_cs), free(st->row), free(st->scratch);
    free(st);
    be->state = NULL;
}

static cm_status cpu_init(cm_backend *be, const cm_backend_shape *s, cm_err *err)
{
    const cm_hparams *hp = &s->m->hp;
    cm_cpu_state *st = calloc(1, sizeof *st);
    be->state = st;
    if (!st)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the CPU backend");
    st->hp = hp;
    st->n_ctx = s->n_ctx;
    st->n_threads = cm_max_threads();
    int ok = cm_cpu_attention_alloc(st, s);
    st->rope_cs = cm_cpu_alloc64((size_t)s->n_ctx * (size_t)(hp->rope_dim / 2 + 1) * 2 *
                                 sizeof(float));
    st->row = cm_cpu_alloc64((size_t)hp->n_embd * sizeof(float));
    st->scratch = cm_cpu_alloc64(max_scratch(s->m, s->n_batch));
    if (!ok || !st->rope_cs || !st->row || !st->scratch) {
        cpu_release(be);
        return cm_fail(err, CM_E_NOMEM, "out of memory allocating a %d-token context",
                       s->n_ctx);
    }
    repack_weights(st, s);
    decode_weights(st, s);
    st->embd_unmap = embd_to_unmap(s);
    return CM_OK;
}

static void cpu_describe(char *out, size_t n)
{
    int t = cm_max_threads();
    snprintf(out, n, "cpu (%s kernels, %d thread%s)", cm_cpu_isa(), t, t == 1 ? "" : "s");
}

/* ------------------------------------------------------------ memory */

static cm_status cpu_buffer_alloc(cm_backend *be, size_t bytes, cm_buffer *buf, cm_err *err)
{
    (void)be;
    buf->host = buf->dev = cm_cpu_alloc64(bytes);
    buf->size = bytes;
    if (!buf->host)
        return cm_fail(err, CM_E_NOMEM, "out of memory allocating %zu bytes", bytes);
    return CM_OK;
}

static void cpu_buffer_free(cm_backend *be, cm_buffer *buf)
{
    (void)be;
    free(buf->host);
    buf->host = buf->dev = NULL;
}

static void cpu_upload(cm_backend *be, const cm_tensor *dst, const void *src, size_t bytes)
{
    (void)be;
    memcpy((void *)(uintptr_t)dst->data, src, bytes);
}

static void cpu_download(cm_backend *be, const cm_tensor *src, void *dst, size_t bytes)
{
    (void)be;
    memcpy(dst, src->data, bytes);
}

static void cpu_synchronize(cm_backend *be) { (void)be; }

/* ------------------------------------------------------------ the ops */

static int64_t rows_of(const cm_tensor *t) { return t->ne[1]; }

static void cpu_embed(cm_backend *be, const cm_tensor *table, const cm_tensor *pos_table,
                      const int32_t *ids, int n, int p0, cm_tensor *out)
{
    enum { UNMAP_EVERY = 16 }; /* rows: a 64 KiB fault-around each, at most */
    cm_cpu_state *st = be->state;
    const int64_t E = table->ne[0];
    const int unmap = st->embd_unmap && table->data == st->embd_unmap;
    float *x = cm_f32(out);
    for (int t = 0; t < n; t++) {
        if (unmap && t > 0 && t % UNMAP_EVERY == 0)
            cm_cpu_table_unmap(table);
        cm_tensor_row(table, ids[t], x + (size_t)t * E);
        if (pos_table && pos_table->data) {
            cm_tensor_row(pos_table, p0 + t, st->row);
            cm_add(x + (size_t)t * E, st->row, (size_t)E);
        }
    }
    if (unmap)
        cm_cpu_table_unmap(table);
}

static void cpu_norm(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
                     float eps, int layer_norm, cm_tensor *out)
{
    (void)be;
    const int n = (int)rows_of(x), E = (int)x->ne[0];
    const float *xs = x->data;
    float *o = cm_f32(out);
    CM_CPU_FOR(CM_PAR_ROWS(n, E), t, n,
               cm_norm_rows(o + (size_t)t * E, xs + (size_t)t * E, w, b, 1, E, eps, layer_norm););
}

static void cpu_matmul(cm_backend *be, int nw, const cm_tensor *const *ws,
                       const cm_tensor *const *bs, const cm_tensor *x, cm_tensor *const *ys)
{
    cm_cpu_state *st = be->state;
    const int64_t n = rows_of(x);
    float *y[8];
    if (nw == 1 || nw > 8) {
        for (int i = 0; i < nw; i++)
            cm_matmul(ws[i], x->data, n, cm_f32(ys[i]), st->scratch);
    } else { /* one quantization of x for all the weights */
        for (int i = 0; i < nw; i++)
            y[i] = cm_f32(ys[i]);
        cm_matmul_n(ws, nw, x->data, n, y, st->scratch);
    }
    for (int i = 0; bs && i < nw; i++)
        cm_add_bias(cm_f32(ys[i]), bs[i], (int)n, (int)ws[i]->ne[1]);
}

/* Angles by absolute position, each computed once per context: chunks of
 * a perplexity run reuse positions 0 .. n_ctx - 1. */
static void rope_fill(cm_cpu_state *st, int upto)
{
    const cm_hparams *hp = st->hp;
    const int from = st->rope_done;
    CM_CPU_FOR(upto - from >= CM_PAR_TOKENS, i, upto - from,
               cm_rope_table(st->rope_cs + (size_t)(from + i) * hp->rope_dim, from + i, hp););
    st->rope_done = upto > from ? upto : from;
}

static void cpu_rope(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0)
{
    cm_cpu_state *st = be->state;
    const cm_hparams *hp = st->hp;
    const int n_tok = (int)rows_of(x), d = hp->head_dim, n_heads = (int)(x->ne[0] / d);
    if (hp->use_rope)
        rope_fill(st, p0 + n_tok);
    const float *cs = st->rope_cs + (size_t)p0 * hp->rope_dim;
    float *qk = cm_f32(x);
    CM_CPU_FOR(CM_PAR_ROWS(n_tok, n_heads * d), t, n_tok,
        for (int h = 0; h < n_heads; h++) {
            float *v = qk + ((size_t)t * n_heads + h) * d;
            if (norm_w && norm_w->data)
                cm_rmsnorm(v, v, (const float *)norm_w->data, d, hp->norm_eps);
            if (hp->use_rope)
                cm_rope_apply(v, cs + (size_t)t * hp->rope_dim, hp);
        });
}

static void cpu_clear(cm_backend *be, cm_tensor *x)
{
    (void)be;
    memset(cm_f32(x), 0, x->nbytes);
}

static void cpu_swiglu(cm_backend *be, cm_tensor *a, const cm_tensor *b)
{
    (void)be;
    const int n = (int)rows_of(a);
    const int64_t F = a->ne[0];
    float *av = cm_f32(a);
    const float *bv = b->data;
    CM_CPU_FOR(CM_PAR_ROWS(n, F), t, n, cm_swiglu(av + t * F, bv + t * F, F););
}

static void cpu_gelu(cm_backend *be, const cm_tensor *x, cm_tensor *out)
{
    (void)be;
    const size_t total = (size_t)x->ne[0] * (size_t)rows_of(x);
    const float *xv = x->data;
    float *o = cm_f32(out);
    for (size_t i = 0; i < total; i++)
        o[i] = cm_gelu(xv[i]);
}

static void cpu_add(cm_backend *be, cm_tensor *x, const cm_tensor *y)
{
    (void)be;
    const int n = (int)rows_of(x);
    const size_t E = (size_t)x->ne[0];
    float *xv = cm_f32(x);
    const float *yv = y->data;
    CM_CPU_FOR(CM_PAR_ROWS(n, E), t, n, cm_add(xv + (size_t)t * E, yv + (size_t)t * E, E););
}

static void cpu_add_gated(cm_backend *be, cm_tensor *out, const cm_tensor *y,
                          const cm_tensor *gate)
{
    (void)be;
    const int n = (int)rows_of(out);
    const size_t E = (size_t)out->ne[0];
    const float *yv = y->data, *gv = gate ? (const float *)gate->data : NULL;
    float *o = cm_f32(out);
    for (int t = 0; t < n; t++) {
        float g = gv ? 1.0f / (1.0f + expf(-gv[t])) : 1.0f;
        for (size_t i = 0; i < E; i++)
            o[(size_t)t * E + i] += g * yv[(size_t)t * E + i];
    }
}

static void cpu_route(cm_backend *be, const cm_tensor *logits, int k, int norm, cm_routing *r)
{
    (void)be;
    const int n = (int)rows_of(logits), X = (int)logits->ne[0];
    float *lv = (float *)(uintptr_t)logits->data; /* softmax in place: the logits are spent */
    for (int t = 0; t < n; t++)
        cm_route_row(lv + (size_t)t * X, X, k, norm, r->expert + (size_t)t * k,
                  r->weight + (size_t)t * k);
}

static void cpu_gather(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n,
                       cm_tensor *dst)
{
    (void)be;
    const size_t E = (size_t)src->ne[0];
    const float *s = src->data;
    float *d = cm_f32(dst);
    for (int i = 0; i < n; i++)
        memcpy(d + (size_t)i * E, s + (size_t)rows[i] * E, E * sizeof(float));
}

static void cpu_scatter_add(cm_backend *be, cm_tensor *dst, const cm_tensor *src,
                            const int32_t *rows, const float *wts, int n)
{
    (void)be;
    const size_t E = (size_t)dst->ne[0];
    const float *s = src->data;
    float *d = cm_f32(dst);
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < E; j++)
            d[(size_t)rows[i] * E + j] += wts[i] * s[(size_t)i * E + j];
}

static void cpu_logits(cm_backend *be, const cm_tensor *x, const cm_tensor *w,
                       const cm_tensor *b, float *host)
{
    cm_cpu_state *st = be->state;
    const int64_t n = rows_of(x);
    cm_matmul(w, x->data, n, host, st->scratch);
    cm_add_bias(host, b, (int)n, (int)w->ne[1]);
}

const cm_backend_ops cm_backend_cpu_ops = {
    .name = "cpu",
    .reads_host = 1,
    .init = cpu_init,
    .release = cpu_release,
    .state_bytes = cpu_state_bytes,
    .describe = cpu_describe,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .synchronize = cpu_synchronize,
    .kv_store = cm_cpu_kv_store,
    .kv_copy = cm_cpu_kv_copy,
    .attention = cm_cpu_attention,
    .embed = cpu_embed,
    .norm = cpu_norm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .clear = cpu_clear,
    .swiglu = cpu_swiglu,
    .gelu = cpu_gelu,
    .add = cpu_add,
    .add_gated = cpu_add_gated,
    .route = cpu_route,
    .gather = cpu_gather,
    .scatter_add = cpu_scatter_add,
    .logits = cpu_logits,
};
