/* moe.c - token-level mixture-of-experts feed-forward (Mixtral, Qwen-MoE).
 *
 * Each token's router picks its top-k experts; only those are computed.
 * For a batch, tokens are grouped by expert so each chosen expert's weights
 * stream through the cache once per batch, with no capacity limit, padding
 * or dropped tokens.  Qwen2-MoE adds a shared expert behind a sigmoid gate. */
#include <math.h>
#include <string.h>

#include "backends/cpu/cpu.h"
#include "engine/forward_internal.h"
#include "engine/ops.h"

/* Matrix e of a stacked [ne0, ne1, n_expert] tensor, as a 2-D view. */
static cm_tensor expert_view(const cm_tensor *t, int e)
{
    cm_tensor v = *t;
    size_t bytes = cm_row_bytes(t->type, t->ne[0]) * (size_t)t->ne[1];
    v.ne[2] = 1;
    v.data = (const char *)t->data + (size_t)e * bytes;
    v.nbytes = bytes;
    return v;
}

/* Picks the top-k experts of one token from its router probabilities. */
static void route_token(cm_ctx *c, const float *probs, int t, int il)
{
    const cm_hparams *hp = &c->m->hp;
    int chosen[64];
    float w[64], sum = 0.0f;
    int k = hp->n_expert_used < 64 ? hp->n_expert_used : 64;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < hp->n_expert; e++) {
            int taken = 0;
            for (int i = 0; i < j; i++)
                taken |= chosen[i] == e;
            if (!taken && (best < 0 || probs[e] > probs[best]))
                best = e;
        }
        chosen[j] = best;
        sum += w[j] = probs[best];
    }
    for (int j = 0; j < k; j++) {
        int e = chosen[j], slot = c->exp_count[e]++;
        c->exp_rows[(size_t)e * c->n_batch + slot] = t;
        c->exp_wts[(size_t)e * c->n_batch + slot] = hp->expert_norm ? w[j] / sum : w[j];
        c->expert_tokens[(size_t)il * hp->n_expert + e]++;
    }
}

/* SwiGLU of n gathered rows through one expert: ye = down(silu(gate x) * up x). */
static void run_expert(cm_ctx *c, const cm_layer *L, int e, int n)
{
    cm_tensor g = expert_view(&L->gate_exps, e), u = expert_view(&L->up_exps, e);
    cm_tensor d = expert_view(&L->down_exps, e);
    size_t nf = (size_t)n * c->m->hp.n_ff_exp;
    const cm_tensor *w[2] = {&g, &u};
    float *y[2] = {c->ff_a, c->ff_b};
    cm_matmul_n(w, 2, c->xe, n, y, c->scratch); /* one quantization of xe */
    cm_swiglu(c->ff_a, c->ff_b, (int64_t)nf);
    cm_matmul(&d, c->ff_a, n, c->ye, c->scratch);
}

/* out += sigmoid(gate . h) * shared_expert(h), for every token. */
static void shared_expert(cm_ctx *c, const cm_layer *L, int n, float *out)
{
    const cm_hparams *hp = &c->m->hp;
    size_t nf = (size_t)n * hp->n_ff_shexp;
    const cm_tensor *w[2] = {&L->gate_shexp, &L->up_shexp};
    float *y[2] = {c->ff_a, c->ff_b};
    cm_matmul_n(w, 2, c->h, n, y, c->scratch);
    cm_swiglu(c->ff_a, c->ff_b, (int64_t)nf);
    cm_matmul(&L->down_shexp, c->ff_a, n, c->ye, c->scratch);
    /* the gate's logits reuse the router buffer: the routing is done */
    if (L->gate_inp_shexp.data)
        cm_matmul(&L->gate_inp_shexp, c->h, n, c->router, c->scratch);
    for (int t = 0; t < n; t++) {
        float g = L->gate_inp_shexp.data ? 1.0f / (1.0f + expf(-c->router[t])) : 1.0f;
        for (int i = 0; i < hp->n_embd; i++)
            out[(size_t)t * hp->n_embd + i] += g * c->ye[(size_t)t * hp->n_embd + i];
    }
}

void cm_moe_ffn(cm_ctx *c, const cm_layer *L, int il, int n, float *out)
{
    const cm_hparams *hp = &c->m->hp;
    int E = hp->n_embd, X = hp->n_expert;
    cm_matmul(&L->gate_inp, c->h, n, c->router, c->scratch);
    memset(c->exp_count, 0, (size_t)X * sizeof *c->exp_count);
    for (int t = 0; t < n; t++) {
        float *probs = c->router + (size_t)t * X;
        cm_softmax(probs, X);
        route_token(c, probs, t, il);
    }
    memset(out, 0, (size_t)n * E * sizeof(float));
    for (int e = 0; e < X; e++) {
        int cnt = c->exp_count[e];
        const int32_t *rows = c->exp_rows + (size_t)e * c->n_batch;
        const float *wts = c->exp_wts + (size_t)e * c->n_batch;
        if (cnt == 0)
            continue; /* an expert nobody chose is never read */
        if (c->experts)
            cm_expert_cache_use(c->experts, il, e);
        for (int i = 0; i < cnt; i++)
            memcpy(c->xe + (size_t)i * E, c->h + (size_t)rows[i] * E, (size_t)E * sizeof(float));
        run_expert(c, L, e, cnt);
        for (int i = 0; i < cnt; i++)
            for (int j = 0; j < E; j++)
                out[(size_t)rows[i] * E + j] += wts[i] * c->ye[(size_t)i * E + j];
    }
    if (hp->n_ff_shexp > 0)
        shared_expert(c, L, n, out);
}
