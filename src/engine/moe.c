/* moe.c - token-level mixture-of-experts feed-forward (Mixtral, Qwen-MoE).
 *
 * Each token's router picks its top-k experts; only those are computed.
 * For a batch, tokens are grouped by expert so each chosen expert's weights
 * stream through the cache once per batch, with no capacity limit, padding
 * or dropped tokens.  Qwen2-MoE adds a shared expert behind a sigmoid gate. */
#include <stdlib.h>
#include <string.h>

#include "engine/forward_internal.h"

/* Sorts the batch's routing into per-expert lists of token rows. */
static void group_by_expert(cm_ctx *c, int il, int n)
{
    const cm_hparams *hp = &c->m->hp;
    const int k = hp->n_expert_used;
    memset(c->exp_count, 0, (size_t)hp->n_expert * sizeof *c->exp_count);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            int e = c->routing.expert[t * k + j], slot = c->exp_count[e]++;
            c->exp_rows[(size_t)e * c->n_batch + slot] = t;
            c->exp_wts[(size_t)e * c->n_batch + slot] = c->routing.weight[t * k + j];
            c->expert_tokens[(size_t)il * hp->n_expert + e]++;
        }
}

static cm_tensor host_f32(float *p, int64_t cols, int64_t rows)
{
    cm_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "expert rows (host)";
    t.type = CM_TYPE_F32;
    t.n_dims = 2;
    t.ne[0] = cols, t.ne[1] = rows, t.ne[2] = t.ne[3] = 1;
    t.data = p;
    t.nbytes = (size_t)cols * (size_t)rows * sizeof(float);
    return t;
}

/* An expert whose weights stayed in host memory while everything else runs
 * on a device: its rows come down once, gate, up, swiglu and down run on
 * the CPU, the result goes up once, instead of a copy each way around each
 * op.  0 if that is not the case (or no memory for the rows: then each op
 * falls back on its own). */
static int run_expert_on_cpu(cm_ctx *c, int il, int e, int n)
{
    cm_backend *be = c->be, *cpu = be->cpu;
    const int64_t E = c->m->hp.n_embd, F = c->m->hp.n_ff_exp, B = c->n_batch;
    const cm_tensor *ew = c->expw + ((size_t)il * c->m->hp.n_expert + e) * 3;
    if (!cpu || be->ops->reads_host || ew[0].buf || ew[1].buf || ew[2].buf)
        return 0;
    if (!c->host_ffn && !(c->host_ffn = malloc((size_t)B * (2 * E + 2 * F) * sizeof(float))))
        return 0;
    cm_tensor x = host_f32(c->host_ffn, E, n), y = host_f32(c->host_ffn + B * E, E, n);
    cm_tensor a = host_f32(c->host_ffn + 2 * B * E, F, n);
    cm_tensor b = host_f32(c->host_ffn + 2 * B * E + B * F, F, n);
    cm_tensor xe = cm_rows(&c->xe, 0, n), ye = cm_rows(&c->ye, 0, n);
    be->ops->download(be, &xe, c->host_ffn, x.nbytes);
    const cm_tensor *w[2] = {&ew[0], &ew[1]}, *wd = &ew[2];
    cm_tensor *ys[2] = {&a, &b}, *yd = &y;
    cm_op_matmul(cpu, 2, w, NULL, &x, ys);
    cm_op_swiglu(cpu, &a, &b);
    cm_op_matmul(cpu, 1, &wd, NULL, &a, &yd);
    be->ops->upload(be, &ye, y.data, y.nbytes);
    be->fallbacks[CM_OP_matmul] += 2, be->fallbacks[CM_OP_swiglu]++;
    return 1;
}

/* ye = down(silu(gate xe) * up xe) for the first n rows of xe. */
static void run_expert(cm_ctx *c, int il, int e, int n)
{
    if (run_expert_on_cpu(c, il, e, n))
        return;
    const cm_tensor *ew = c->expw + ((size_t)il * c->m->hp.n_expert + e) * 3;
    const cm_tensor *g = &ew[0], *u = &ew[1], *d = &ew[2];
    cm_tensor x = cm_rows(&c->xe, 0, n), y = cm_rows(&c->ye, 0, n);
    cm_tensor a = cm_shaped(&c->ff_a, c->m->hp.n_ff_exp, n);
    cm_tensor b = cm_shaped(&c->ff_b, c->m->hp.n_ff_exp, n);
    const cm_tensor *w[2] = {g, u};
    cm_tensor *ys[2] = {&a, &b};
    cm_op_matmul(c->be, 2, w, NULL, &x, ys); /* one quantization of xe */
    cm_op_swiglu(c->be, &a, &b);
    cm_tensor *yd = &y;
    cm_op_matmul(c->be, 1, &d, NULL, &a, &yd);
}

/* out += sigmoid(gate . h) * shared_expert(h), for every token. */
static void shared_expert(cm_ctx *c, const cm_layer *L, cm_tensor *out)
{
    const int n = (int)out->ne[1], F = c->m->hp.n_ff_shexp;
    cm_tensor h = cm_rows(&c->h, 0, n), y = cm_rows(&c->ye, 0, n);
    cm_tensor a = cm_shaped(&c->ff_a, F, n), b = cm_shaped(&c->ff_b, F, n);
    const cm_tensor *w[2] = {&L->gate_shexp, &L->up_shexp}, *wd = &L->down_shexp;
    cm_tensor *ys[2] = {&a, &b}, *yd = &y;
    cm_op_matmul(c->be, 2, w, NULL, &h, ys);
    cm_op_swiglu(c->be, &a, &b);
    cm_op_matmul(c->be, 1, &wd, NULL, &a, &yd);
    if (!cm_tensor_present(&L->gate_inp_shexp)) {
        cm_op_add_gated(c->be, out, &y, NULL);
        return;
    }
    /* the gate's logits reuse the router buffer: the routing is done */
    cm_tensor g = cm_shaped(&c->router, 1, n), *gp = &g;
    const cm_tensor *wg = &L->gate_inp_shexp;
    cm_op_matmul(c->be, 1, &wg, NULL, &h, &gp);
    cm_op_add_gated(c->be, out, &y, &g);
}

/* Layer il's experts in the backend's own memory, each weight's experts
 * one after the other at a fixed stride in one buffer (all of them
 * placed, no residency budget): what moe_ffn reads.  0 otherwise. */
static int experts_stacked(const cm_ctx *c, int il, size_t stride[3])
{
    const int X = c->m->hp.n_expert;
    const cm_tensor *ew = c->expw + (size_t)il * (size_t)X * 3;
    if (X < 2 || c->experts || !c->be->ops->moe_ffn)
        return 0;
    for (int i = 0; i < 3; i++) {
        if (!ew[i].buf || ew[3 + i].offs <= ew[i].offs)
            return 0;
        stride[i] = ew[3 + i].offs - ew[i].offs;
        for (int e = 2; e < X; e++)
            if (ew[3 * e + i].buf != ew[i].buf ||
                ew[3 * e + i].offs != ew[i].offs + (size_t)e * stride[i])
                return 0;
    }
    return 1;
}

int cm_moe_on_device(const cm_ctx *c)
{
    size_t stride[3];
    if (c->n_batch < c->m->hp.n_expert_used)
        return 0;
    for (int il = 0; il < c->m->hp.n_layer; il++)
        if (!experts_stacked(c, il, stride))
            return 0;
    return 1;
}

void cm_moe_count_device(cm_ctx *c)
{
    const cm_hparams *hp = &c->m->hp;
    const int k = hp->n_expert_used;
    for (int il = 0; il < hp->n_layer && hp->n_expert > 0; il++) {
        if (!c->dev_routed[il])
            continue;
        c->dev_routed[il] = 0;
        for (int j = 0; j < k; j++) {
            const int32_t e = c->dev_chosen[(size_t)il * k + j];
            if (e >= 0 && e < hp->n_expert)
                c->expert_tokens[(size_t)il * hp->n_expert + e]++;
        }
    }
}

/* One token's experts chosen and run on the device (moe_ffn): 0 when the
 * backend cannot, and the host routes. */
static int moe_on_device(cm_ctx *c, int il, cm_tensor *h, cm_tensor *r, cm_tensor *out)
{
    const cm_hparams *hp = &c->m->hp;
    const int k = hp->n_expert_used;
    cm_moe_args a;
    if (out->ne[1] != 1 || c->n_batch < k || !experts_stacked(c, il, a.stride))
        return 0;
    const cm_tensor *ew = c->expw + (size_t)il * hp->n_expert * 3;
    cm_tensor ta = cm_shaped(&c->ff_a, hp->n_ff_exp, k), tb = cm_shaped(&c->ff_b, hp->n_ff_exp, k);
    cm_tensor ty = cm_rows(&c->ye, 0, k);
    a.x = h, a.logits = r, a.out = out;
    a.w[0] = &ew[0], a.w[1] = &ew[1], a.w[2] = &ew[2];
    a.k = k, a.norm = hp->expert_norm, a.layer = il;
    a.a = &ta, a.b = &tb, a.y = &ty;
    a.chosen = c->dev_chosen + (size_t)il * k;
    if (!cm_op_moe_ffn(c->be, &a))
        return 0;
    c->dev_routed[il] = 1;
    return 1;
}

void cm_moe_ffn(cm_ctx *c, const cm_layer *L, int il, cm_tensor *out)
{
    const cm_hparams *hp = &c->m->hp;
    const int n = (int)out->ne[1];
    cm_tensor h = cm_rows(&c->h, 0, n), r = cm_rows(&c->router, 0, n), *rp = &r;
    const cm_tensor *wr = &L->gate_inp;
    cm_op_matmul(c->be, 1, &wr, NULL, &h, &rp);
    if (moe_on_device(c, il, &h, &r, out)) {
        if (hp->n_ff_shexp > 0)
            shared_expert(c, L, out);
        return;
    }
    cm_op_route(c->be, &r, hp->n_expert_used, hp->expert_norm, &c->routing);
    group_by_expert(c, il, n);
    cm_op_clear(c->be, out);
    for (int e = 0; e < hp->n_expert; e++) {
        const int cnt = c->exp_count[e];
        const int32_t *rows = c->exp_rows + (size_t)e * c->n_batch;
        if (cnt == 0)
            continue; /* an expert nobody chose is never read */
        if (c->experts)
            cm_expert_cache_use(c->experts, il, e);
        cm_place_expert_use(c->place, c->be, il, e, cnt, c->expw);
        cm_tensor xe = cm_rows(&c->xe, 0, cnt), ye = cm_rows(&c->ye, 0, cnt);
        cm_op_gather(c->be, &h, rows, cnt, &xe);
        run_expert(c, il, e, cnt);
        cm_op_scatter_add(c->be, out, &ye, rows, c->exp_wts + (size_t)e * c->n_batch, cnt);
    }
    if (hp->n_ff_shexp > 0)
        shared_expert(c, L, out);
}
