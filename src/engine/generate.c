/* generate.c - see generate.h. */
#include "engine/generate.h"

#include <math.h>

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
        int32_t id = cm_sampler_sample(smp, logits);
        if (cm_tok_is_eog(m->tok, id)) {
            res->stop_reason = "end of text";
            break;
        }
        char piece[256];
        size_t pn = cm_token_piece(m->tok, id, 0, piece, sizeof piece);
        res->n_gen++;
        if (o->on_piece(o->user, piece, pn < sizeof piece ? pn : sizeof piece)) {
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
