/* upcycle.c - a dense model into a token-level mixture of experts.
 *
 * Each layer's SwiGLU feed-forward becomes E identical experts, stacked as
 * llama.cpp stacks them (ffn_{gate,up,down}_exps, experts along the third
 * dimension), with a router ffn_gate_inp.  The metadata asks for the top-k
 * weights to be renormalised (<arch>.expert_weights_norm), so the chosen
 * weights sum to 1 and identical experts give back the dense output
 * whatever the router says: the router starts as small random numbers, to
 * break the symmetry once the experts are trained apart.  llama becomes
 * llama with experts (Mixtral's layout); qwen2 and qwen3 become qwen2moe
 * and qwen3moe. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "quant/quant.h"
#include "surgery/surgery_internal.h"

static const struct {
    const char *from, *to;
} MOE_ARCH[] = {{"llama", "llama"}, {"qwen2", "qwen2moe"}, {"qwen3", "qwen3moe"}};

enum { U_COPY, U_EXPERTS, U_ROUTER };

typedef struct {
    const cm_upcycle_opts *o;
    surg_plan plan;
} ujob;

typedef struct {
    surg_rng rng;
    float scale;
} noise_ctx;

static void add_noise(void *ctx, float *rows, int64_t r, int64_t n, int64_t len)
{
    noise_ctx *c = ctx;
    (void)r;
    for (int64_t i = 0; i < n * len; i++)
        rows[i] += (float)(c->scale * surg_rng_normal(&c->rng));
}

static cm_status tensor_rms(const gguf_tensor *t, const char *name, double *rms, cm_err *err)
{
    int64_t len = t->ne[0], rows = surg_rows(t->ne);
    float *row = malloc((size_t)len * sizeof *row);
    double sum = 0;
    if (!row)
        return cm_fail(err, CM_E_NOMEM, "out of memory for tensor %s", name);
    cm_status s = CM_OK;
    for (int64_t r = 0; !s && r < rows; r++) {
        s = surg_decode_rows(t, r, 1, row, err);
        for (int64_t i = 0; !s && i < len; i++)
            sum += (double)row[i] * row[i];
    }
    free(row);
    *rms = sqrt(sum / (double)(len * rows));
    return s;
}

/* E copies of the dense tensor, each with its own noise. */
static cm_status fill_experts(const surg_rec *u, uint8_t *dst, cm_err *err)
{
    const cm_upcycle_opts *o = ((const ujob *)u->job)->o;
    int64_t rows = surg_rows(u->src->ne);
    size_t per = cm_row_bytes(u->type, u->ne[0]) * (size_t)rows;
    double rms = 0;
    cm_status s = o->noise > 0 ? tensor_rms(u->src, u->name, &rms, err) : CM_OK;
    for (int e = 0; !s && e < o->n_expert; e++) {
        noise_ctx nc = {.scale = (float)(o->noise * rms)};
        surg_rng_seed(&nc.rng, o->c.seed, u->name, (uint64_t)e);
        s = surg_convert_rows(u->src, 0, rows, u->type, o->noise > 0 ? add_noise : NULL, &nc,
                              dst + (size_t)e * per, u->name, err);
    }
    return s;
}

static cm_status fill_router(const surg_rec *u, float *dst)
{
    const cm_upcycle_opts *o = ((const ujob *)u->job)->o;
    surg_rng rng;
    surg_rng_seed(&rng, o->c.seed, u->name, 0);
    for (int64_t i = 0; i < u->ne[0] * u->ne[1]; i++)
        dst[i] = (float)(o->router_std * surg_rng_normal(&rng));
    return CM_OK;
}

static cm_status fill(void *ctx, void *dst, uint64_t nbytes, cm_err *err)
{
    const surg_rec *u = ctx;
    (void)nbytes;
    if (u->kind == U_ROUTER)
        return fill_router(u, dst);
    if (u->kind == U_EXPERTS)
        return fill_experts(u, dst, err);
    return surg_convert_rows(u->src, 0, surg_rows(u->src->ne), u->type, NULL, NULL, dst, u->name,
                             err);
}

/* "blk.3.ffn_up.weight" -> "blk.3.ffn_up_exps.weight"; 0 if not an FFN weight. */
static int expert_name(const char *name, char *out, size_t cap)
{
    static const char *const ffn[] = {"ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
    const char *suf;
    int il = surg_layer_of(name, &suf);
    for (size_t i = 0; il >= 0 && i < 3; i++)
        if (!strcmp(suf, ffn[i])) {
            snprintf(out, cap, "blk.%d.%.*s_exps.weight", il, (int)(strlen(ffn[i]) - 7), ffn[i]);
            return 1;
        }
    return 0;
}

static cm_status plan_one(ujob *j, const gguf_tensor *t, cm_err *err)
{
    char name[128], exps[128];
    cm_status s = surg_src_name(t, name, err);
    if (s)
        return s;
    if (!expert_name(name, exps, sizeof exps)) {
        surg_plan_add(&j->plan, j, t, name, U_COPY, NULL);
        return CM_OK;
    }
    if (strstr(exps, ".ffn_gate_exps.weight")) { /* the router first, as llama.cpp writes it */
        char router[128];
        snprintf(router, sizeof router, "blk.%d.ffn_gate_inp.weight", surg_layer_of(name, NULL));
        surg_plan_add(&j->plan, j, NULL, router, U_ROUTER,
                      (const int64_t[4]){t->ne[0], j->o->n_expert, 1, 1});
    }
    surg_plan_add(&j->plan, j, t, exps, U_EXPERTS,
                  (const int64_t[4]){t->ne[0], t->ne[1], j->o->n_expert, 1});
    return CM_OK;
}

static cm_status check_dense(const cm_model *m, const char **to, cm_err *err)
{
    const cm_hparams *hp = &m->hp;
    if (m->is_pack)
        return cm_fail(err, CM_E_UNSUPPORTED, "%s is a language-expert pack; upcycle one "
                       "member's model", m->path);
    if (hp->n_expert > 0)
        return cm_fail(err, CM_E_UNSUPPORTED, "%s is already a mixture of experts (%d experts)",
                       m->path, hp->n_expert);
    for (size_t i = 0; i < sizeof MOE_ARCH / sizeof MOE_ARCH[0]; i++)
        if (!strcmp(hp->arch_name, MOE_ARCH[i].from) && !hp->gelu_mlp) {
            *to = MOE_ARCH[i].to;
            for (int il = 0; il < hp->n_layer; il++)
                if (m->layers[il].b_up.data || m->layers[il].b_down.data)
                    return cm_fail(err, CM_E_UNSUPPORTED, "%s: blk.%d has feed-forward biases, "
                                   "which the experts cannot carry", m->path, il);
            return CM_OK;
        }
    return cm_fail(err, CM_E_UNSUPPORTED, "%s: upcycle supports llama, qwen2 and qwen3 (SwiGLU "
                   "feed-forward), not %s", m->path, hp->arch_name);
}

/* The input's keys, those of its architecture renamed to the new one. */
static cm_status add_meta(gguf_writer *w, const cm_model *m, const char *to,
                          const cm_upcycle_opts *o)
{
    const char *from = m->hp.arch_name;
    size_t fl = strlen(from);
    char key[256], k[256];
    cm_status s = CM_OK;
    for (uint64_t i = 0; !s && i < m->file.n_kv; i++) {
        const gguf_kv *kv = &m->file.kv[i];
        snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 255 ? kv->key.len : 255),
                 kv->key.ptr);
        if (!strncmp(key, from, fl) && key[fl] == '.')
            snprintf(k, sizeof k, "%s.%s", to, key + fl + 1);
        else
            snprintf(k, sizeof k, "%s", key);
        s = gguf_writer_copy_kv_as(w, kv, k);
    }
    if (!s)
        s = gguf_writer_set_str(w, "general.architecture", to);
    snprintf(k, sizeof k, "%s.expert_count", to);
    if (!s)
        s = gguf_writer_set_u32(w, k, (uint32_t)o->n_expert);
    snprintf(k, sizeof k, "%s.expert_used_count", to);
    if (!s)
        s = gguf_writer_set_u32(w, k, (uint32_t)o->n_expert_used);
    snprintf(k, sizeof k, "%s.expert_weights_norm", to);
    if (!s)
        s = gguf_writer_set_bool(w, k, 1);
    snprintf(k, sizeof k, "%s.expert_feed_forward_length", to);
    if (!s && strcmp(to, "llama"))
        s = gguf_writer_set_u32(w, k, (uint32_t)m->hp.n_ff);
    if (!s && surg_file_type(o->c.type) >= 0)
        s = gguf_writer_set_u32(w, "general.file_type", (uint32_t)surg_file_type(o->c.type));
    return s;
}

static cm_status check_opts(const cm_upcycle_opts *o, cm_err *err)
{
    if (o->n_expert < 1 || o->n_expert > 4096 || o->n_expert_used < 1 ||
        o->n_expert_used > o->n_expert)
        return cm_fail(err, CM_E_USAGE, "upcycle needs 1 <= --top-k <= --experts <= 4096 (got "
                       "%d of %d)", o->n_expert_used, o->n_expert);
    if (!(o->noise >= 0) || !(o->router_std >= 0))
        return cm_fail(err, CM_E_USAGE, "--noise must be >= 0");
    return CM_OK;
}

static cm_status run_job(ujob *j, const cm_model *m, const char *to, const char *in,
                         const char *out, cm_surg_check *chk, cm_err *err)
{
    const cm_upcycle_opts *o = j->o;
    gguf_writer *w = gguf_writer_new(3);
    if (!w)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    cm_status s = add_meta(w, m, to, o);
    if (!s)
        s = surg_plan_write(&j->plan, w, fill);
    if (o->c.log)
        fprintf(o->c.log, "upcycle: %s (%s, %d layers, ffn %d) -> %s (%s, %d experts, top-%d, "
                "noise %g)\n", in, m->hp.arch_name, m->hp.n_layer, m->hp.n_ff, out, to,
                o->n_expert, o->n_expert_used, o->noise);
    /* a failed add is kept in the writer and reported by finish */
    double tol = j->plan.all_f32 && o->noise == 0 ? 1e-5 : 0;
    s = surg_finish(w, out, in, o->c.n_check_tokens, tol, o->c.log, chk, err);
    gguf_writer_free(w);
    return s;
}

cm_status cm_upcycle(const char *in, const char *out, const cm_upcycle_opts *o,
                     cm_surg_check *chk, cm_err *err)
{
    cm_model m;
    const char *to = NULL;
    cm_status s;
    if ((s = check_opts(o, err)) || (s = surg_distinct(in, out, err)) ||
        (s = cm_model_load(in, &m, err)))
        return s;
    ujob j = {.o = o};
    /* a router per gate at most */
    s = surg_plan_init(&j.plan, 2 * m.file.n_tensors + 1, o->c.type, err);
    if (!s)
        s = check_dense(&m, &to, err);
    for (uint64_t i = 0; !s && i < m.file.n_tensors; i++)
        s = plan_one(&j, &m.file.tensors[i], err);
    if (!s)
        s = run_job(&j, &m, to, in, out, chk, err);
    surg_plan_free(&j.plan);
    cm_model_free(&m);
    return s;
}
