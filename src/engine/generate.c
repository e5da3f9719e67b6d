/* generate.c - see generate.h. */
#include "engine/generate.h"

#include <math.h>
#include <stdlib.h>

#include "tokenizer/tokenizer.h"

cm_status cm_generate(const cm_model *m, cm_ctx *ctx, cm_sampler *smp, const cm_gen_opts *o,
                      cm_gen_result *res, cm_err *err)
{
    cm_status s = CM_OK;
    res->n_gen = 0;
    res->stop_reason = "token limit";
    for (int i = 0; !s && (o->n_predict < 0 || i < o->n_predict); i++) {
        float *logits = (float *)cm_ctx_logits(ctx);
        for (int k = 0; k < o->n_mask; k++)
            logits[o->mask[k]] = -INFINITY;
        const size_t skip = i == 0 && o->heal ? o->heal->len : 0;
        if (skip)
            cm_heal_logits(o->heal, logits, m->hp.n_vocab);
        int32_t id = cm_sampler_sample(smp, logits);
        if (cm_tok_is_eog(m->tok, id)) {
            res->stop_reason = "end of text";
            break;
        }
        char piece[256];
        size_t pn = cm_token_piece(m->tok, id, 0, piece, sizeof piece);
        pn = pn < sizeof piece ? pn : sizeof piece;
        res->n_gen++;
        if (o->on_piece(o->user, piece + (skip < pn ? skip : pn), skip < pn ? pn - skip : 0)) {
            res->stop_reason = "stop string";
            break;
        }
        if (cm_ctx_n_past(ctx) >= cm_ctx_n_ctx(ctx)) {
            res->stop_reason = "context full";
            break;
        }
        cm_sampler_accept(smp, id);
        s = cm_eval(ctx, &id, 1, NULL, err);
    }
    return s;
}

/* The prompt less its last token in sequence 0, then in every sequence of
 * the batch: copied, or evaluated where the backend cannot copy. */
static cm_status shared_prompt(cm_ctx *ctx, const int32_t *prompt, int n, int slots,
                               int32_t *seq, cm_err *err)
{
    cm_status s = CM_OK;
    for (int q = 0; q < slots; q++)
        cm_ctx_seq_keep(ctx, q, 0);
    for (int i = 0; i < n; i++)
        seq[i] = 0;
    if (n > 0)
        s = cm_eval_batch(ctx, prompt, seq, n, NULL, NULL, err);
    for (int q = 1; !s && q < slots; q++) {
        s = cm_ctx_seq_copy(ctx, 0, q, n, err);
        if (s == CM_E_UNSUPPORTED && n > 0) {
            for (int i = 0; i < n; i++)
                seq[i] = q;
            s = cm_eval_batch(ctx, prompt, seq, n, NULL, NULL, err);
        }
    }
    return s;
}

/* Samples completion c's next token from its logits row; 1 when it has
 * ended (res set), else *id is the token to evaluate. */
static int shared_step(const cm_model *m, cm_ctx *ctx, int q, cm_gen_seq *c, float *logits,
                       const cm_gen_opts *o, int32_t *id)
{
    if (o->n_predict >= 0 && c->res.n_gen >= o->n_predict)
        return c->res.stop_reason = "token limit", 1;
    for (int k = 0; k < o->n_mask; k++)
        logits[o->mask[k]] = -INFINITY;
    *id = cm_sampler_sample(c->smp, logits);
    if (cm_tok_is_eog(m->tok, *id))
        return c->res.stop_reason = "end of text", 1;
    char piece[256];
    size_t pn = cm_token_piece(m->tok, *id, 0, piece, sizeof piece);
    c->res.n_gen++;
    if (c->on_piece(c->user, piece, pn < sizeof piece ? pn : sizeof piece))
        return c->res.stop_reason = "stop string", 1;
    if (cm_ctx_seq_past(ctx, q) >= cm_ctx_n_ctx(ctx))
        return c->res.stop_reason = "context full", 1;
    cm_sampler_accept(c->smp, *id);
    return 0;
}

cm_status cm_generate_shared(const cm_model *m, cm_ctx *ctx, const int32_t *prompt, int n_prompt,
                             cm_gen_seq *seqs, int n, const cm_gen_opts *o, cm_err *err)
{
    const int slots = n < cm_ctx_n_seq(ctx) ? n : cm_ctx_n_seq(ctx), P = n_prompt - 1;
    const size_t V = (size_t)m->hp.n_vocab, cap = (size_t)(slots > P ? slots : P);
    if (n_prompt < 1 || n < 1)
        return cm_fail(err, CM_E_RANGE, "nothing to decode (%d prompt tokens, %d completions)",
                       n_prompt, n);
    int32_t *ids = malloc(cap * sizeof *ids), *seq = malloc(cap * sizeof *seq);
    int32_t *tok = malloc((size_t)slots * sizeof *tok); /* each sequence's next token */
    int *busy = malloc((size_t)slots * sizeof *busy), next = 0, live = 0; /* completion, or -1 */
    float *logits = malloc((size_t)slots * V * sizeof *logits);
    uint8_t *want = malloc((size_t)slots);
    cm_status s = ids && seq && tok && busy && logits && want
                      ? shared_prompt(ctx, prompt, P, slots, seq, err)
                      : cm_fail(err, CM_E_NOMEM, "out of memory decoding %d completions", n);
    for (int i = 0; i < n; i++)
        seqs[i].res = (cm_gen_result){0, "token limit"};
    for (int q = 0; !s && q < slots; q++) /* a new completion starts with the prompt's last */
        busy[q] = next++, live++, tok[q] = prompt[P];
    while (!s && live > 0) {
        int nb = 0;
        for (int q = 0; q < slots; q++)
            if (busy[q] >= 0)
                ids[nb] = tok[q], seq[nb] = q, want[nb] = 1, nb++;
        s = cm_eval_batch(ctx, ids, seq, nb, want, logits, err);
        for (int i = 0; !s && i < nb; i++) {
            int q = seq[i];
            if (!shared_step(m, ctx, q, &seqs[busy[q]], logits + (size_t)i * V, o, &tok[q]))
                continue;
            busy[q] = next < n ? next++ : -1; /* the sequence takes the next completion */
            live -= busy[q] < 0;
            cm_ctx_seq_keep(ctx, q, P);
            tok[q] = prompt[P];
        }
    }
    free(ids), free(seq), free(tok), free(busy), free(logits), free(want);
    return s;
}
