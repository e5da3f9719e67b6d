/* grow.c - function-preserving growth (Net2Net: Chen, Goodfellow and
 * Shlens 2016), in feed-forward width and in depth.
 *
 * Width: the feed-forward hidden size F becomes F' = round(M F).  Hidden
 * unit j >= F copies unit j mod F (its gate and up rows, its up bias), and
 * every copy of a unit, the original included, gets 1/c of the unit's
 * column of the down projection, c being the number of copies: the hidden
 * activations of the copies are equal, so the sum is unchanged.  The
 * activation is elementwise (SwiGLU or GELU), which is what makes this
 * exact.  For a mixture of experts each routed expert is widened the same
 * way; a shared expert keeps its size.
 *
 * Depth: a new layer is a copy of the layer before it with its output
 * projections (attn_output, ffn_down / ffn_down_exps / ffn_down_shexp and
 * their biases) set to zero, so it adds nothing to the residual stream
 * (LLaMA Pro's block expansion).  The L new layers are spread evenly: new
 * layer k follows old layer (k+1) n / L - 1.
 *
 * The residual width (n_embd) and the heads are not grown. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "quant/quant.h"
#include "surgery/surgery_internal.h"

enum { G_COPY, G_ZERO, G_ROWS, G_ELEMS, G_SPLIT };

typedef struct gjob gjob;

typedef struct {
    const gjob *job;
    const gguf_tensor *src;
    int kind;
    uint32_t type;
    char name[128];
    int64_t ne[4];
} grec;

struct gjob {
    const cm_grow_opts *o;
    int64_t F, F2;    /* feed-forward hidden size before and after */
    int32_t *count;   /* copies of each old unit */
    int n_layer, n_out_layer;
    int *src_layer;   /* [n_out_layer] the old layer each comes from */
    int *is_new;      /* [n_out_layer] */
    grec *rec;
    size_t n, cap;
    int all_f32;
};

static int64_t unit_of(const gjob *j, int64_t u)
{
    return u < j->F ? u : (u - j->F) % j->F;
}

/* Output rows of a [len, F', X] tensor from rows of [len, F, X]. */
static cm_status fill_rows(const grec *g, uint8_t *dst, cm_err *err)
{
    const gjob *j = g->job;
    size_t rb = cm_row_bytes(g->type, g->ne[0]);
    cm_status s = CM_OK;
    for (int64_t x = 0; !s && x < g->ne[2]; x++)
        for (int64_t r = 0; !s && r < j->F2; r++)
            s = surg_convert_rows(g->src, x * j->F + unit_of(j, r), 1, g->type, NULL, NULL,
                                  dst + (size_t)(x * j->F2 + r) * rb, g->name, err);
    return s;
}

/* Rows of F elements become rows of F': copied (biases) or split. */
static cm_status fill_elems(const grec *g, uint8_t *dst, int split, cm_err *err)
{
    const gjob *j = g->job;
    int64_t rows = surg_rows(g->ne);
    size_t rb = cm_row_bytes(g->type, j->F2);
    float *a = malloc((size_t)j->F * sizeof *a), *b = malloc((size_t)j->F2 * sizeof *b);
    cm_status s = a && b ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory for %s", g->name);
    for (int64_t r = 0; !s && r < rows; r++) {
        s = surg_decode_rows(g->src, r, 1, a, err);
        for (int64_t u = 0; !s && u < j->F2; u++) {
            int64_t v = unit_of(j, u);
            b[u] = split ? a[v] / (float)j->count[v] : a[v];
        }
        if (!s)
            s = surg_encode_rows(g->type, b, j->F2, 1, dst + (size_t)r * rb, g->name, err);
    }
    free(a);
    free(b);
    return s;
}

static cm_status fill(void *ctx, void *dst, uint64_t nbytes, cm_err *err)
{
    const grec *g = ctx;
    switch (g->kind) {
    case G_ZERO: /* all-zero bytes decode to 0 in every ggml type */
        memset(dst, 0, (size_t)nbytes);
        return CM_OK;
    case G_ROWS: return fill_rows(g, dst, err);
    case G_ELEMS: return fill_elems(g, dst, 0, err);
    case G_SPLIT: return fill_elems(g, dst, 1, err);
    default:
        return surg_convert_rows(g->src, 0, surg_rows(g->src->ne), g->type, NULL, NULL, dst,
                                 g->name, err);
    }
}

static int in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(s, *list))
            return 1;
    return 0;
}

/* How a layer tensor called suffix is widened (G_COPY: not at all). */
static int width_kind(const gjob *j, const char *suffix)
{
    static const char *const rows[] = {"ffn_gate.weight", "ffn_up.weight",
                                       "ffn_gate_exps.weight", "ffn_up_exps.weight", NULL};
    static const char *const split[] = {"ffn_down.weight", "ffn_down_exps.weight", NULL};
    if (j->F2 == j->F)
        return G_COPY;
    if (in_list(suffix, rows))
        return G_ROWS;
    if (in_list(suffix, split))
        return G_SPLIT;
    return !strcmp(suffix, "ffn_up.bias") ? G_ELEMS : G_COPY;
}

static int is_output_proj(const char *suffix)
{
    static const char *const out[] = {"attn_output.weight", "attn_output.bias", "ffn_down.weight",
                                      "ffn_down.bias", "ffn_down_exps.weight",
                                      "ffn_down_shexp.weight", NULL};
    return in_list(suffix, out);
}

static cm_status add_rec(gjob *j, const gguf_tensor *t, const char *name, int kind)
{
    grec *g = &j->rec[j->n++];
    *g = (grec){.job = j, .src = t, .kind = kind};
    snprintf(g->name, sizeof g->name, "%s", name);
    memcpy(g->ne, t->ne, sizeof g->ne);
    if (kind == G_ROWS)
        g->ne[1] = j->F2;
    if (kind == G_ELEMS || kind == G_SPLIT)
        g->ne[0] = j->F2;
    g->type = surg_out_type(j->o->c.type, t->type, g->name, g->ne);
    j->all_f32 &= t->type == CM_TYPE_F32 && g->type == CM_TYPE_F32;
    return CM_OK;
}

static cm_status plan_tensor(gjob *j, const gguf_tensor *t, cm_err *err)
{
    char name[128], out[160];
    const char *suf;
    if (surg_name(t, name, sizeof name))
        return cm_fail(err, CM_E_FORMAT, "tensor name longer than 127 bytes: %.60s...",
                       t->name.ptr);
    if (!surg_type_ok(t->type))
        return cm_fail(err, CM_E_UNSUPPORTED, "tensor %s: type %u cannot be decoded", name,
                       t->type);
    int il = surg_layer_of(name, &suf);
    if (il < 0)
        return add_rec(j, t, name, G_COPY);
    if (il >= j->n_layer)
        return cm_fail(err, CM_E_FORMAT, "tensor %s is outside the model's %d layers", name,
                       j->n_layer);
    int wk = width_kind(j, suf);
    for (int o = 0; o < j->n_out_layer; o++) {
        if (j->src_layer[o] != il)
            continue;
        snprintf(out, sizeof out, "blk.%d.%s", o, suf);
        if (strlen(out) > 127)
            return cm_fail(err, CM_E_FORMAT, "tensor name %s is too long", out);
        add_rec(j, t, out, j->is_new[o] && is_output_proj(suf) ? G_ZERO : wk);
        if (j->rec[j->n - 1].kind == G_ZERO && wk != G_COPY) { /* zero, but widened */
            grec *g = &j->rec[j->n - 1];
            g->ne[wk == G_ROWS ? 1 : 0] = j->F2;
            g->type = surg_out_type(j->o->c.type, t->type, g->name, g->ne);
        }
    }
    return CM_OK;
}

static cm_status plan_layers(gjob *j, int n, int L, cm_err *err)
{
    j->n_layer = n;
    j->n_out_layer = n + L;
    j->src_layer = calloc((size_t)(n + L), sizeof *j->src_layer);
    j->is_new = calloc((size_t)(n + L), sizeof *j->is_new);
    if (!j->src_layer || !j->is_new)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    int o = 0, k = 0;
    for (int i = 0; i < n; i++) {
        j->src_layer[o++] = i;
        for (; k < L && ((int64_t)(k + 1) * n / L - 1 <= i); k++) {
            j->src_layer[o] = i;
            j->is_new[o++] = 1;
        }
    }
    return CM_OK;
}

static cm_status plan_width(gjob *j, const cm_model *m, cm_err *err)
{
    j->F = m->hp.n_expert > 0 ? m->hp.n_ff_exp : m->hp.n_ff;
    double f2 = floor((double)j->F * j->o->width_mult + 0.5);
    if (!(j->o->width_mult >= 1.0) || f2 > (double)(1 << 28))
        return cm_fail(err, CM_E_USAGE, "--width-mult must be at least 1 (and the result below "
                       "2^28 units)");
    j->F2 = (int64_t)f2;
    j->count = malloc((size_t)j->F * sizeof *j->count);
    if (!j->count)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (int64_t u = 0; u < j->F; u++)
        j->count[u] = 0;
    for (int64_t u = 0; u < j->F2; u++)
        j->count[unit_of(j, u)]++;
    return CM_OK;
}

static cm_status add_meta(gguf_writer *w, const cm_model *m, const gjob *j)
{
    char k[128];
    const char *a = m->hp.arch_name;
    cm_status s = gguf_writer_copy_kv(w, &m->file, NULL, NULL);
    snprintf(k, sizeof k, "%s.block_count", a);
    if (!s)
        s = gguf_writer_set_u32(w, k, (uint32_t)j->n_out_layer);
    snprintf(k, sizeof k, "%s.expert_feed_forward_length", a);
    if (m->hp.n_expert == 0 || !gguf_find(&m->file, k))
        snprintf(k, sizeof k, "%s.feed_forward_length", a);
    if (!s && j->F2 != j->F)
        s = gguf_writer_set_u32(w, k, (uint32_t)j->F2);
    if (!s && surg_file_type(j->o->c.type) >= 0)
        s = gguf_writer_set_u32(w, "general.file_type", (uint32_t)surg_file_type(j->o->c.type));
    return s;
}

static cm_status run_job(gjob *j, const cm_model *m, const char *in, const char *out,
                         cm_surg_check *chk, cm_err *err)
{
    const cm_grow_opts *o = j->o;
    gguf_writer *w = gguf_writer_new(3);
    if (!w)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    cm_status s = add_meta(w, m, j);
    for (size_t i = 0; !s && i < j->n; i++)
        s = gguf_writer_add_tensor(w, j->rec[i].name, j->rec[i].type, surg_dims(j->rec[i].ne),
                                   j->rec[i].ne, NULL, fill, &j->rec[i]);
    if (o->c.log)
        fprintf(o->c.log, "grow: %s (%d layers, %s %lld) -> %s (%d layers, %s %lld)\n", in,
                j->n_layer, m->hp.n_expert ? "expert ffn" : "ffn", (long long)j->F, out,
                j->n_out_layer, m->hp.n_expert ? "expert ffn" : "ffn", (long long)j->F2);
    double tol = j->all_f32 ? 1e-4 : 0;
    s = surg_finish(w, out, in, o->c.n_check_tokens, tol, o->c.log, chk, err);
    gguf_writer_free(w);
    return s;
}

cm_status cm_grow(const char *in, const char *out, const cm_grow_opts *o, cm_surg_check *chk,
                  cm_err *err)
{
    cm_model m;
    cm_status s;
    if (o->add_layers < 0 || o->add_layers > 4096)
        return cm_fail(err, CM_E_USAGE, "--add-layers must be between 0 and 4096");
    if ((s = surg_distinct(in, out, err)) || (s = cm_model_load(in, &m, err)))
        return s;
    gjob j = {.o = o, .all_f32 = 1};
    if (m.is_pack)
        s = cm_fail(err, CM_E_UNSUPPORTED, "%s is a language-expert pack; grow one member's "
                    "model", in);
    if (!s)
        s = plan_width(&j, &m, err);
    if (!s)
        s = plan_layers(&j, m.hp.n_layer, o->add_layers, err);
    /* each tensor is written once per layer it lands in: at most twice
     * per new layer */
    j.cap = m.file.n_tensors * (size_t)(2 + o->add_layers);
    if (!s && !(j.rec = calloc(j.cap, sizeof *j.rec)))
        s = cm_fail(err, CM_E_NOMEM, "out of memory");
    for (uint64_t i = 0; !s && i < m.file.n_tensors; i++)
        s = plan_tensor(&j, &m.file.tensors[i], err);
    if (!s)
        s = run_job(&j, &m, in, out, chk, err);
    free(j.rec);
    free(j.count);
    free(j.src_layer);
    free(j.is_new);
    cm_model_free(&m);
    return s;
}
