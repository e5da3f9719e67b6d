/* placement.c - copying weights to a device backend's memory (the order
 * and the expert cache are explained in placement.h). */
#include "engine/placement.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN 256
#define MARGIN (512ull << 20) /* left free for the driver and other work */

struct cm_placement {
    const cm_model *m;
    cm_buffer dense, slots;     /* device memory: non-expert weights, expert slots */
    uint64_t slot_bytes;
    int n_slots;
    int *slot_owner;            /* [n_slots]: il * n_expert + e, or -1 */
    int *slot_of;               /* [n_layer * n_expert]: slot, or -1 */
    uint32_t *score;            /* [n_layer * n_expert]: recent uses */
    uint64_t uses_since_decay;
    uint64_t exp_total;         /* bytes of all experts */
    cm_place_stats st;
};

static uint64_t aligned(uint64_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

/* ------------------------------------------------------------ tensor lists */

/* The non-expert tensors of a layer. */
static const size_t layer_fields[] = {
    offsetof(cm_layer, attn_norm), offsetof(cm_layer, attn_norm_b), offsetof(cm_layer, wqkv),
    offsetof(cm_layer, bqkv), offsetof(cm_layer, wq), offsetof(cm_layer, wk),
    offsetof(cm_layer, wv), offsetof(cm_layer, wo), offsetof(cm_layer, bq),
    offsetof(cm_layer, bk), offsetof(cm_layer, bv), offsetof(cm_layer, bo),
    offsetof(cm_layer, q_norm), offsetof(cm_layer, k_norm), offsetof(cm_layer, ffn_norm),
    offsetof(cm_layer, ffn_norm_b), offsetof(cm_layer, w_gate), offsetof(cm_layer, w_up),
    offsetof(cm_layer, w_down), offsetof(cm_layer, b_up), offsetof(cm_layer, b_down),
    offsetof(cm_layer, gate_inp), offsetof(cm_layer, gate_inp_shexp),
    offsetof(cm_layer, gate_shexp), offsetof(cm_layer, up_shexp), offsetof(cm_layer, down_shexp),
};
#define N_LAYER_FIELDS (sizeof layer_fields / sizeof layer_fields[0])

static cm_tensor *field(cm_layer *L, size_t off) { return (cm_tensor *)((char *)L + off); }

static uint64_t layer_dense_bytes(const cm_layer *L)
{
    uint64_t n = 0;
    for (size_t i = 0; i < N_LAYER_FIELDS; i++) {
        const cm_tensor *t = field((cm_layer *)L, layer_fields[i]);
        n += t->data ? aligned(t->nbytes) : 0;
    }
    return n;
}

void cm_expert_views(const cm_layer *L, int e, cm_tensor out[3])
{
    const cm_tensor *s[3] = {&L->gate_exps, &L->up_exps, &L->down_exps};
    for (int j = 0; j < 3; j++) {
        cm_tensor v = *s[j];
        size_t bytes = cm_row_bytes(v.type, v.ne[0]) * (size_t)v.ne[1];
        v.ne[2] = 1;
        v.offs += (size_t)e * bytes;
        if (v.data)
            v.data = (const char *)v.data + (size_t)e * bytes;
        v.nbytes = bytes;
        out[j] = v;
    }
}

static uint64_t expert_bytes(const cm_layer *L)
{
    cm_tensor v[3];
    cm_expert_views(L, 0, v);
    return aligned(v[0].nbytes) + aligned(v[1].nbytes) + aligned(v[2].nbytes);
}

/* ------------------------------------------------------------ the plan */

typedef struct {
    int layer_dev_from;  /* layers >= this have their dense weights placed */
    int head, embd;      /* output head (with out_norm), token embeddings */
    int all_experts;     /* -ngl: every expert of the placed layers */
    int n_slots;
    uint64_t dense, slot_bytes;
} plan;

static uint64_t head_bytes(const cm_model *m)
{
    uint64_t n = aligned(m->out_norm.nbytes) + aligned(m->out_norm_b.nbytes) +
                 aligned(m->output_b.nbytes);
    return n + (m->output.data ? aligned(m->output.nbytes) : 0);
}

static uint64_t embd_bytes(const cm_model *m)
{
    return (m->tied_output ? 0 : aligned(m->tok_embd.nbytes)) + aligned(m->pos_embd.nbytes);
}

static uint64_t max_expert_bytes(const cm_model *m)
{
    uint64_t b = 0;
    for (int il = 0; m->hp.n_expert > 0 && il < m->hp.n_layer; il++) {
        uint64_t e = expert_bytes(&m->layers[il]);
        b = e > b ? e : b;
    }
    return b;
}

static void plan_layers(const cm_model *m, int gpu_layers, plan *p)
{
    const int L = m->hp.n_layer, X = m->hp.n_expert;
    int n = gpu_layers > L ? L : gpu_layers;
    p->layer_dev_from = L - n;
    p->head = gpu_layers > L;
    p->embd = p->head; /* all of it: nothing left for the CPU */
    p->all_experts = 1;
    for (int il = p->layer_dev_from; il < L; il++)
        p->dense += layer_dense_bytes(&m->layers[il]);
    p->dense += p->head ? head_bytes(m) + embd_bytes(m) : 0;
    p->slot_bytes = max_expert_bytes(m);
    p->n_slots = X > 0 ? n * X : 0;
}

static void plan_budget(const cm_model *m, uint64_t budget, plan *p)
{
    const int L = m->hp.n_layer, X = m->hp.n_expert;
    uint64_t used = 0, head = head_bytes(m);
    p->layer_dev_from = L;
    p->head = head <= budget;
    used += p->head ? head : 0;
    while (p->layer_dev_from > 0) {
        uint64_t b = layer_dense_bytes(&m->layers[p->layer_dev_from - 1]);
        if (used + b > budget)
            break;
        used += b;
        p->layer_dev_from--;
    }
    p->slot_bytes = max_expert_bytes(m);
    if (X > 0 && p->layer_dev_from == 0 && p->slot_bytes > 0) {
        uint64_t fit = (budget - used) / p->slot_bytes, all = (uint64_t)L * X;
        p->n_slots = (int)(fit < all ? fit : all);
        used += (uint64_t)p->n_slots * p->slot_bytes;
    }
    p->all_experts = 0;
    p->embd = p->layer_dev_from == 0 && (X == 0 || p->n_slots == L * X) &&
              used + embd_bytes(m) <= budget;
    p->dense = used - (uint64_t)p->n_slots * p->slot_bytes + (p->embd ? embd_bytes(m) : 0);
}

/* ------------------------------------------------------------ copying */

typedef struct {
    cm_backend *be;
    cm_buffer *buf;
    uint64_t at;
    cm_placement *pl;
} copier;

/* t's bytes to the next free place of the buffer; t then views them. */
static void put(copier *c, cm_tensor *t)
{
    if (!t->data || t->buf)
        return;
    const void *host = t->data;
    cm_tensor v = *t;
    v.buf = c->buf;
    v.offs = c->at;
    v.data = c->buf->host ? (const char *)c->buf->host + c->at : NULL;
    c->be->ops->upload(c->be, &v, host, t->nbytes);
    c->at += aligned(t->nbytes);
    *t = v;
}

static void put_layer(copier *c, cm_layer *L)
{
    for (size_t i = 0; i < N_LAYER_FIELDS; i++)
        put(c, field(L, layer_fields[i]));
}

/* Expert (il, e) into slot s: its three views then point there. */
static void load_slot(cm_placement *p, cm_backend *be, int s, int il, int e, cm_tensor *expw)
{
    const int X = p->m->hp.n_expert;
    cm_tensor host[3];
    cm_expert_views(&p->m->layers[il], e, host);
    uint64_t at = (uint64_t)s * p->slot_bytes;
    int old = p->slot_owner[s];
    if (old >= 0) { /* the evicted expert is computed from host memory again */
        p->slot_of[old] = -1;
        cm_expert_views(&p->m->layers[old / X], old % X, expw + (size_t)old * 3);
        p->st.exp_dev -= expert_bytes(&p->m->layers[old / X]);
    }
    for (int j = 0; j < 3; j++) {
        cm_tensor v = host[j];
        v.buf = &p->slots;
        v.offs = at;
        v.data = p->slots.host ? (const char *)p->slots.host + at : NULL;
        be->ops->upload(be, &v, host[j].data, host[j].nbytes);
        at += aligned(host[j].nbytes);
        expw[((size_t)il * X + e) * 3 + j] = v;
        p->st.bytes_uploaded += host[j].nbytes;
    }
    p->slot_owner[s] = il * X + e;
    p->slot_of[il * X + e] = s;
    p->st.exp_dev += expert_bytes(&p->m->layers[il]);
}

static cm_status alloc_state(cm_placement *p, const plan *pl, cm_err *err)
{
    const size_t n = (size_t)p->m->hp.n_layer * (p->m->hp.n_expert + 1);
    p->slot_owner = malloc(((size_t)pl->n_slots + 1) * sizeof(int));
    p->slot_of = malloc(n * sizeof(int));
    p->score = calloc(n, sizeof(uint32_t));
    if (!p->slot_owner || !p->slot_of || !p->score)
        return cm_fail(err, CM_E_NOMEM, "out of memory placing the weights");
    for (int i = 0; i < pl->n_slots; i++)
        p->slot_owner[i] = -1;
    for (size_t i = 0; i < n; i++)
        p->slot_of[i] = -1;
    return CM_OK;
}

static cm_status alloc_device(cm_backend *be, cm_placement *p, const plan *pl, cm_err *err)
{
    cm_status s = CM_OK;
    if (pl->dense)
        s = be->ops->buffer_alloc(be, pl->dense, &p->dense, err);
    if (!s && pl->n_slots)
        s = be->ops->buffer_alloc(be, (size_t)pl->n_slots * pl->slot_bytes, &p->slots, err);
    if (s)
        return cm_fail(err, s, "%s (placing %.1f MiB of weights on the device: try a smaller "
                       "--vram-budget or --gpu-layers)", err->msg,
                       (pl->dense + (double)pl->n_slots * pl->slot_bytes) / 1048576.0);
    return CM_OK;
}

static void copy_weights(cm_backend *be, cm_placement *p, const plan *pl, cm_model *w,
                         cm_tensor *expw)
{
    const cm_hparams *hp = &p->m->hp;
    copier c = {be, &p->dense, 0, p};
    for (int il = pl->layer_dev_from; il < hp->n_layer; il++)
        put_layer(&c, &w->layers[il]);
    if (pl->head) {
        put(&c, &w->out_norm), put(&c, &w->out_norm_b), put(&c, &w->output_b);
        put(&c, &w->output);
        if (w->tied_output)
            w->tok_embd = w->output; /* one copy serves both */
    }
    if (pl->embd)
        put(&c, &w->tok_embd), put(&c, &w->pos_embd);
    /* experts: round robin over the layers, so each gets its share */
    int s = 0;
    for (int e = 0; e < hp->n_expert && s < pl->n_slots; e++)
        for (int il = pl->all_experts ? pl->layer_dev_from : 0; il < hp->n_layer && s < pl->n_slots;
             il++)
            load_slot(p, be, s++, il, e, expw);
    p->st.bytes_uploaded = 0; /* counts what generation moves, not the start */
}

static void init_stats(cm_placement *p, const plan *pl)
{
    const cm_model *m = p->m;
    cm_place_stats *st = &p->st;
    uint64_t dense = head_bytes(m) + embd_bytes(m), exps = 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        dense += layer_dense_bytes(&m->layers[il]);
        exps += m->hp.n_expert > 0 ? (uint64_t)m->hp.n_expert * expert_bytes(&m->layers[il]) : 0;
    }
    st->dense_dev = pl->dense;
    st->dense_host = dense - pl->dense;
    p->exp_total = exps;
    st->slots = pl->n_slots;
    st->experts = m->hp.n_layer * m->hp.n_expert;
    st->layers_dev = m->hp.n_layer - pl->layer_dev_from;
    st->head_dev = pl->head;
    st->embd_dev = pl->embd || (pl->head && m->tied_output);
}

cm_status cm_place_weights(cm_backend *be, const cm_model *m, const cm_place_opts *o,
                           cm_model *w, cm_tensor *expw, cm_placement **out, cm_err *err)
{
    *out = NULL;
    if (be->ops->reads_host || !be->ops->mem_info)
        return CM_OK;
    plan pl = {0};
    if (o->gpu_layers >= 0) {
        plan_layers(m, o->gpu_layers, &pl);
    } else {
        size_t fr = 0, total = 0;
        be->ops->mem_info(be, &fr, &total);
        uint64_t margin = MARGIN < total / 20 ? total / 20 : MARGIN;
        uint64_t budget = o->budget ? o->budget : (fr > margin ? fr - margin : 0);
        plan_budget(m, budget, &pl);
    }
    cm_placement *p = calloc(1, sizeof *p);
    if (!p)
        return cm_fail(err, CM_E_NOMEM, "out of memory placing the weights");
    p->m = m;
    p->n_slots = pl.n_slots;
    p->slot_bytes = pl.slot_bytes;
    cm_status s = alloc_state(p, &pl, err);
    if (!s)
        s = alloc_device(be, p, &pl, err);
    if (s) {
        cm_place_free(be, p);
        return s;
    }
    copy_weights(be, p, &pl, w, expw);
    init_stats(p, &pl);
    *out = p;
    return CM_OK;
}

void cm_place_free(cm_backend *be, cm_placement *p)
{
    if (!p)
        return;
    if (p->dense.dev || p->dense.host)
        be->ops->buffer_free(be, &p->dense);
    if (p->slots.dev || p->slots.host)
        be->ops->buffer_free(be, &p->slots);
    free(p->slot_owner), free(p->slot_of), free(p->score);
    free(p);
}

/* ------------------------------------------------------------ the cache */

/* Halves every score now and then, so the cache follows what the text in
 * progress uses, not what it used long ago. */
static void decay(cm_placement *p)
{
    const size_t n = (size_t)p->m->hp.n_layer * p->m->hp.n_expert;
    if (++p->uses_since_decay < 64 * n)
        return;
    p->uses_since_decay = 0;
    for (size_t i = 0; i < n; i++)
        p->score[i] /= 2;
}

static int coldest_slot(const cm_placement *p)
{
    int best = 0;
    for (int s = 1; s < p->n_slots; s++)
        if (p->slot_owner[s] < 0 ||
            (p->slot_owner[best] >= 0 && p->score[p->slot_owner[s]] < p->score[p->slot_owner[best]]))
            best = s;
    return best;
}

void cm_place_expert_use(cm_placement *p, cm_backend *be, int il, int e, int n, cm_tensor *expw)
{
    if (!p)
        return;
    const int id = il * p->m->hp.n_expert + e;
    p->score[id] += (uint32_t)n;
    decay(p);
    if (p->slot_of[id] >= 0) {
        p->st.hits++;
        return;
    }
    /* Copying costs about what computing it once on the CPU does, so an
     * expert moves in when a batch brings many tokens, or when it has
     * been used clearly more than the coldest resident one. */
    if (p->n_slots > 0) {
        int s = coldest_slot(p), old = p->slot_owner[s];
        uint32_t cold = old >= 0 ? p->score[old] : 0;
        if (n >= 8 || p->score[id] > cold + 4) {
            load_slot(p, be, s, il, e, expw);
            p->st.uploads++;
            return;
        }
    }
    p->st.host_runs++;
}

void cm_place_get_stats(const cm_placement *p, cm_place_stats *out)
{
    if (p) {
        *out = p->st;
        out->exp_host = p->exp_total - p->st.exp_dev;
    } else
        memset(out, 0, sizeof *out);
}

int cm_place_expert_resident(const cm_placement *p, int il, int e)
{
    return p && p->slot_of[il * p->m->hp.n_expert + e] >= 0;
}

int cm_place_complete(const cm_placement *p)
{
    return p && p->st.dense_host == 0 && p->n_slots == p->st.experts;
}

uint64_t cm_place_dense_bytes(const cm_model *m, uint64_t *slot_bytes)
{
    uint64_t n = head_bytes(m);
    for (int il = 0; il < m->hp.n_layer; il++)
        n += layer_dense_bytes(&m->layers[il]);
    *slot_bytes = max_expert_bytes(m);
    return n;
}
