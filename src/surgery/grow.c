/* grow.c - function-preserving growth (Net2Net: Chen, Goodfellow and
 * Shlens 2016) in feed-forward width, residual width and depth.
 *
 * Every grown axis is a duplication: output index k of an axis of n' >= n
 * units reads unit g(k) = k for k < n, else (k - n) mod n; unit i then has
 * c_i copies (c_i = n'/n for every unit when n divides n').
 *
 * Feed-forward width (F -> F'): the rows of ffn_gate/ffn_up (and the up
 * bias) are copied along g, and every copy of a unit gets 1/c_i of the
 * unit's column of ffn_down: the copies' activations are equal (SwiGLU and
 * GELU act elementwise), so the sum is unchanged.  For a mixture of experts
 * each routed expert is widened the same way; a shared expert keeps its size.
 *
 * Residual width (E -> E', with r = E'/E): the new stream is
 * x'_k = a_k x_g(k), with a_k = sqrt(r / c_g(k)), so that for every unit i
 * sum over its copies of a_k^2 = r.  Then
 *   mean_k x'_k^2 = (1/E') sum_i x_i^2 sum_copies a_k^2 = (1/E) sum_i x_i^2:
 * RMSNorm's mean of squares, and so its divisor, is exactly the old one
 * (eps included) whatever the copy counts.  What writes the stream (the
 * embeddings, attn_output's and ffn_down's rows, their biases) writes a_k
 * times the old row g(k), which keeps x' = a x_g through every residual
 * addition.  What reads it reads through a norm with weight
 * w'_k = w_g(k) a_k / r, so the normed value is y'_k = y_g(k) a_k^2 / r;
 * the matrices after the norm keep their columns (column k = old column
 * g(k)), and sum_k W_g(k) y'_k = sum_i W_i y_i sum_copies a_k^2 / r =
 * sum_i W_i y_i exactly.  A tied output head reads the embedding rows,
 * which carry an extra a_k: its output_norm gets w_g(k) / r instead
 * (y'_k = y_g(k) a_k / r, times a_k e_g(k), summed: the same identity).
 * LayerNorm also subtracts the mean, which x' keeps only when every unit
 * has the same number of copies (a_k = 1): LayerNorm models grow by whole
 * multiples of E, their norm biases scaled like the weights (1/r).
 *
 * Attention heads grow with the stream by whole KV groups: KV head j' of
 * round(r n_kv) copies KV head g(j') together with its G query heads (q
 * head h uses KV head h / G), so each new head computes exactly what its
 * source head computes; the attn_output columns of every copy of a head
 * get 1/c of the head's columns.  The head dimension is kept (RoPE's
 * frequencies depend on it) and written to the metadata.
 *
 * Depth: a new layer is a copy of the layer before it with its output
 * projections (attn_output, ffn_down / ffn_down_exps / ffn_down_shexp and
 * their biases) set to zero, so it adds nothing to the residual stream
 * (LLaMA Pro's block expansion).  The L new layers are spread evenly: new
 * layer k follows old layer (k+1) n / L - 1. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "quant/quant.h"
#include "surgery/surgery_internal.h"

enum { G_COPY, G_ZERO, G_MAP };

/* The axes a tensor dimension can lie on, each with its map (AX_NONE:
 * unchanged). */
enum {
    AX_NONE, AX_E_READ, AX_E_WRITE, AX_E_NORM, AX_E_ONORM, AX_F_READ, AX_F_WRITE, AX_Q, AX_K,
    AX_V, AX_QKV, AX_O, AX_N
};

/* Output index k of the axis reads source index src[k], times scale[k]
 * (NULL: 1).  src NULL: the axis is not grown. */
typedef struct {
    int64_t n;
    int64_t *src;
    float *scale;
} gmap;

typedef struct {
    const cm_grow_opts *o;
    const cm_hparams *hp;
    int64_t E, E2, F, F2;
    int n_kv2;
    int tied;
    gmap map[AX_N];
    int n_layer, n_out_layer;
    int *src_layer;   /* [n_out_layer] the old layer each comes from */
    int *is_new;      /* [n_out_layer] */
    surg_plan plan;
} gjob;

/* ------------------------------------------------------------ maps */

static int64_t dup_of(int64_t k, int64_t n)
{
    return k < n ? k : (k - n) % n;
}

static cm_status map_alloc(gmap *m, int64_t n, int scaled, cm_err *err)
{
    m->n = n;
    m->src = malloc((size_t)n * sizeof *m->src);
    m->scale = scaled ? malloc((size_t)n * sizeof *m->scale) : NULL;
    if (!m->src || (scaled && !m->scale))
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    return CM_OK;
}

/* A duplication of n units into n2; scale (when wanted) f(c) of each
 * copy's count c: kind 0: none, 1: 1/c, 2: sqrt(r/c), 3: sqrt(r/c)/r, 4: 1/r. */
static cm_status map_dup(gmap *m, int64_t n, int64_t n2, int kind, cm_err *err)
{
    double r = (double)n2 / (double)n;
    cm_status s = map_alloc(m, n2, kind != 0, err);
    for (int64_t k = 0; !s && k < n2; k++) {
        m->src[k] = dup_of(k, n);
        if (!kind)
            continue;
        /* copies of unit i: 1 + those k >= n with (k - n) mod n == i */
        int64_t i = m->src[k], c = 1 + (n2 - n) / n + (i < (n2 - n) % n);
        double f = kind == 1 ? 1.0 / c : kind == 2 ? sqrt(r / c) : kind == 3 ? sqrt(r / c) / r
                                                                             : 1.0 / r;
        m->scale[k] = (float)f;
    }
    return s;
}

/* Heads: index e of n2 heads of hd elements reads head hsrc(e / hd); kv:
 * a KV axis (head j' = copy of g(j')), else a query axis (head h' of group
 * h' / G copies head g(h' / G) G + h' mod G); split: 1/copies. */
static cm_status map_heads(const gjob *j, gmap *m, int64_t hd, int kv, int split, cm_err *err)
{
    const int n_kv = j->hp->n_head_kv, G = j->hp->n_head / n_kv;
    const int64_t heads = kv ? j->n_kv2 : (int64_t)j->n_kv2 * G;
    cm_status s = map_alloc(m, heads * hd, split, err);
    for (int64_t e = 0; !s && e < m->n; e++) {
        int64_t h = e / hd, grp = kv ? h : h / G, g = dup_of(grp, n_kv);
        int64_t src_head = kv ? g : g * G + h % G;
        m->src[e] = src_head * hd + e % hd;
        if (split) {
            int64_t c = 1 + (j->n_kv2 - n_kv) / n_kv + (g < (j->n_kv2 - n_kv) % n_kv);
            m->scale[e] = 1.0f / (float)c;
        }
    }
    return s;
}

/* The fused [q; k; v] rows of starcoder's attn_qkv. */
static cm_status map_qkv(gjob *j, cm_err *err)
{
    const gmap *q = &j->map[AX_Q], *k = &j->map[AX_K], *v = &j->map[AX_V];
    const int64_t q0 = (int64_t)j->hp->n_head * j->hp->head_dim;
    const int64_t k0 = (int64_t)j->hp->n_head_kv * j->hp->head_dim;
    cm_status s = map_alloc(&j->map[AX_QKV], q->n + k->n + v->n, 0, err);
    int64_t *d = j->map[AX_QKV].src;
    for (int64_t e = 0; !s && e < q->n; e++)
        *d++ = q->src[e];
    for (int64_t e = 0; !s && e < k->n; e++)
        *d++ = q0 + k->src[e];
    for (int64_t e = 0; !s && e < v->n; e++)
        *d++ = q0 + k0 + v->src[e];
    return s;
}

static cm_status plan_embd(gjob *j, cm_err *err)
{
    const cm_hparams *hp = j->hp;
    const float mult = j->o->embd_mult > 0 ? j->o->embd_mult : 1.0f;
    double e2 = floor((double)j->E * mult + 0.5);
    if (!(mult >= 1.0f) || e2 > (double)(1 << 24))
        return cm_fail(err, CM_E_USAGE, "--embd-mult must be at least 1 (and the result below "
                       "2^24)");
    j->E2 = (int64_t)e2;
    j->n_kv2 = hp->n_head_kv;
    if (j->E2 == j->E)
        return CM_OK;
    if (hp->layer_norm && j->E2 % j->E)
        return cm_fail(err, CM_E_UNSUPPORTED, "%s uses LayerNorm, which subtracts the mean: "
                       "its residual width grows only by whole multiples (--embd-mult 2, 3, "
                       "...), not %lld -> %lld", hp->arch_name, (long long)j->E,
                       (long long)j->E2);
    j->n_kv2 = (int)floor(hp->n_head_kv * (double)j->E2 / (double)j->E + 0.5);
    cm_status s;
    if ((s = map_dup(&j->map[AX_E_READ], j->E, j->E2, 0, err)) ||
        (s = map_dup(&j->map[AX_E_WRITE], j->E, j->E2, 2, err)) ||
        (s = map_dup(&j->map[AX_E_NORM], j->E, j->E2, 3, err)) ||
        (s = map_dup(&j->map[AX_E_ONORM], j->E, j->E2, 4, err)) ||
        (s = map_heads(j, &j->map[AX_Q], hp->head_dim, 0, 0, err)) ||
        (s = map_heads(j, &j->map[AX_K], hp->head_dim, 1, 0, err)) ||
        (s = map_heads(j, &j->map[AX_V], hp->head_dim_v, 1, 0, err)) ||
        (s = map_heads(j, &j->map[AX_O], hp->head_dim_v, 0, 1, err)))
        return s;
    return map_qkv(j, err);
}

static cm_status plan_width(gjob *j, const cm_model *m, cm_err *err)
{
    j->F = m->hp.n_expert > 0 ? m->hp.n_ff_exp : m->hp.n_ff;
    double f2 = floor((double)j->F * j->o->width_mult + 0.5);
    if (!(j->o->width_mult >= 1.0) || f2 > (double)(1 << 28))
        return cm_fail(err, CM_E_USAGE, "--width-mult must be at least 1 (and the result below "
                       "2^28 units)");
    j->F2 = (int64_t)f2;
    cm_status s = CM_OK;
    if (j->F2 != j->F && !(s = map_dup(&j->map[AX_F_READ], j->F, j->F2, 0, err)))
        s = map_dup(&j->map[AX_F_WRITE], j->F, j->F2, 1, err);
    return s;
}

/* ------------------------------------------------------------ filling */

static const gmap *axis_map(const surg_rec *g, int d)
{
    const gjob *j = g->job;
    const gmap *m = &j->map[g->axis[d]];
    return g->axis[d] != AX_NONE && m->src ? m : NULL;
}

/* Rows of the source copied along the row map, runs of consecutive rows
 * at a time (bytes copied when the type is unchanged). */
static cm_status fill_rows(const surg_rec *g, const gmap *m1, uint8_t *dst, cm_err *err)
{
    const int64_t n1 = g->src->ne[1], o1 = g->ne[1], X = g->ne[2] * g->ne[3];
    const size_t rb = cm_row_bytes(g->type, g->ne[0]);
    cm_status s = CM_OK;
    for (int64_t x = 0; !s && x < X; x++)
        for (int64_t r = 0, run; !s && r < o1; r += run) {
            int64_t sr = m1 ? m1->src[r] : r;
            for (run = 1; r + run < o1 && (m1 ? m1->src[r + run] : r + run) == sr + run; run++)
                ;
            s = surg_convert_rows(g->src, x * n1 + sr, run, g->type, NULL, NULL,
                                  dst + (size_t)(x * o1 + r) * rb, g->name, err);
        }
    return s;
}

/* out[x][r][c] = src[x][m1(r)][m0(c)] * scale0[c] * scale1[r], a row at a time. */
static cm_status fill_map(const surg_rec *g, uint8_t *dst, cm_err *err)
{
    const gmap *m0 = axis_map(g, 0), *m1 = axis_map(g, 1);
    if (!m0 && !(m1 && m1->scale))
        return fill_rows(g, m1, dst, err);
    const int64_t n0 = g->src->ne[0], n1 = g->src->ne[1], o0 = g->ne[0], o1 = g->ne[1];
    const size_t rb = cm_row_bytes(g->type, o0);
    float *a = malloc((size_t)n0 * sizeof *a), *b = malloc((size_t)o0 * sizeof *b);
    cm_status s = a && b ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory for %s", g->name);
    for (int64_t x = 0; !s && x < g->ne[2] * g->ne[3]; x++)
        for (int64_t r = 0; !s && r < o1; r++) {
            s = surg_decode_rows(g->src, x * n1 + (m1 ? m1->src[r] : r), 1, a, err);
            float f = m1 && m1->scale ? m1->scale[r] : 1.0f;
            for (int64_t c = 0; !s && c < o0; c++) {
                float v = m0 ? a[m0->src[c]] : a[c];
                b[c] = (m0 && m0->scale ? v * m0->scale[c] : v) * f;
            }
            if (!s)
                s = surg_encode_rows(g->type, b, o0, 1, dst + (size_t)(x * o1 + r) * rb, g->name,
                                     err);
        }
    free(a);
    free(b);
    return s;
}

static cm_status fill(void *ctx, void *dst, uint64_t nbytes, cm_err *err)
{
    const surg_rec *g = ctx;
    if (g->kind == G_ZERO) { /* all-zero bytes decode to 0 in every ggml type */
        memset(dst, 0, (size_t)nbytes);
        return CM_OK;
    }
    if (g->kind == G_MAP)
        return fill_map(g, dst, err);
    return surg_convert_rows(g->src, 0, surg_rows(g->src->ne), g->type, NULL, NULL, dst, g->name,
                             err);
}

/* ------------------------------------------------------------ planning */

/* Where each dimension of a tensor lies: ne[0], ne[1]. */
static const struct {
    const char *suffix;
    int ax0, ax1;
} AXES[] = {
    {"token_embd.weight", AX_E_WRITE, AX_NONE},
    {"position_embd.weight", AX_E_WRITE, AX_NONE},
    {"output_norm.weight", AX_E_NORM, AX_NONE},
    {"output_norm.bias", AX_E_NORM, AX_NONE},
    {"output.weight", AX_E_READ, AX_NONE},
    {"output.bias", AX_NONE, AX_NONE},
    {"rope_freqs.weight", AX_NONE, AX_NONE},
    {"attn_norm.weight", AX_E_NORM, AX_NONE},
    {"attn_norm.bias", AX_E_NORM, AX_NONE},
    {"attn_qkv.weight", AX_E_READ, AX_QKV},
    {"attn_qkv.bias", AX_QKV, AX_NONE},
    {"attn_q.weight", AX_E_READ, AX_Q},
    {"attn_k.weight", AX_E_READ, AX_K},
    {"attn_v.weight", AX_E_READ, AX_V},
    {"attn_q.bias", AX_Q, AX_NONE},
    {"attn_k.bias", AX_K, AX_NONE},
    {"attn_v.bias", AX_V, AX_NONE},
    {"attn_output.weight", AX_O, AX_E_WRITE},
    {"attn_output.bias", AX_E_WRITE, AX_NONE},
    {"attn_q_norm.weight", AX_NONE, AX_NONE},
    {"attn_k_norm.weight", AX_NONE, AX_NONE},
    {"ffn_norm.weight", AX_E_NORM, AX_NONE},
    {"ffn_norm.bias", AX_E_NORM, AX_NONE},
    {"ffn_gate.weight", AX_E_READ, AX_F_READ},
    {"ffn_up.weight", AX_E_READ, AX_F_READ},
    {"ffn_down.weight", AX_F_WRITE, AX_E_WRITE},
    {"ffn_up.bias", AX_F_READ, AX_NONE},
    {"ffn_down.bias", AX_E_WRITE, AX_NONE},
    {"ffn_gate_inp.weight", AX_E_READ, AX_NONE},
    {"ffn_gate_exps.weight", AX_E_READ, AX_F_READ},
    {"ffn_up_exps.weight", AX_E_READ, AX_F_READ},
    {"ffn_down_exps.weight", AX_F_WRITE, AX_E_WRITE},
    {"ffn_gate_inp_shexp.weight", AX_E_READ, AX_NONE},
    {"ffn_gate_shexp.weight", AX_E_READ, AX_NONE},
    {"ffn_up_shexp.weight", AX_E_READ, AX_NONE},
    {"ffn_down_shexp.weight", AX_NONE, AX_E_WRITE},
};

static int in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(s, *list))
            return 1;
    return 0;
}

static int is_output_proj(const char *suffix)
{
    static const char *const out[] = {"attn_output.weight", "attn_output.bias", "ffn_down.weight",
                                      "ffn_down.bias", "ffn_down_exps.weight",
                                      "ffn_down_shexp.weight", NULL};
    return in_list(suffix, out);
}

/* The axes of tensor `suffix` (a layer tensor's suffix or a global name);
 * refuses one it does not know while the residual width grows. */
static cm_status axes_of(const gjob *j, const char *suffix, const char *name, int ax[2],
                         cm_err *err)
{
    ax[0] = ax[1] = AX_NONE;
    for (size_t i = 0; i < sizeof AXES / sizeof AXES[0]; i++)
        if (!strcmp(suffix, AXES[i].suffix)) {
            ax[0] = AXES[i].ax0;
            ax[1] = AXES[i].ax1;
            if (j->tied && !strcmp(suffix, "output_norm.weight"))
                ax[0] = AX_E_ONORM;
            return CM_OK;
        }
    if (j->E2 != j->E)
        return cm_fail(err, CM_E_UNSUPPORTED, "grow --embd-mult: tensor %s is not one whose use "
                       "of the residual stream codemoe knows", name);
    return CM_OK;
}

/* Adds tensor t as name (output layer new_layer: 1 if new), shaped by its axes. */
static cm_status add_rec(gjob *j, const gguf_tensor *t, const char *name, const int ax[2],
                         int new_layer, const char *suffix)
{
    int64_t ne[4];
    int mapped = 0;
    memcpy(ne, t->ne, sizeof ne);
    for (int d = 0; d < 2; d++)
        if (ax[d] != AX_NONE && j->map[ax[d]].src) {
            ne[d] = j->map[ax[d]].n;
            mapped = 1;
        }
    int kind = new_layer && is_output_proj(suffix) ? G_ZERO : mapped ? G_MAP : G_COPY;
    surg_rec *g = surg_plan_add(&j->plan, j, t, name, kind, ne);
    if (g) {
        g->axis[0] = ax[0];
        g->axis[1] = ax[1];
    }
    return CM_OK;
}

static cm_status plan_tensor(gjob *j, const gguf_tensor *t, cm_err *err)
{
    char name[128], out[160];
    const char *suf;
    int ax[2];
    cm_status s = surg_src_name(t, name, err);
    if (s)
        return s;
    int il = surg_layer_of(name, &suf);
    if ((s = axes_of(j, il < 0 ? name : suf, name, ax, err)))
        return s;
    if (il < 0)
        return add_rec(j, t, name, ax, 0, name);
    if (il >= j->n_layer)
        return cm_fail(err, CM_E_FORMAT, "tensor %s is outside the model's %d layers", name,
                       j->n_layer);
    for (int o = 0; o < j->n_out_layer; o++) {
        if (j->src_layer[o] != il)
            continue;
        snprintf(out, sizeof out, "blk.%d.%s", o, suf);
        if (strlen(out) > 127)
            return cm_fail(err, CM_E_FORMAT, "tensor name %s is too long", out);
        add_rec(j, t, out, ax, j->is_new[o], suf);
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

/* ------------------------------------------------------------ writing */

static cm_status set_arch_u32(gguf_writer *w, const char *arch, const char *key, int64_t v)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return gguf_writer_set_u32(w, k, (uint32_t)v);
}

static cm_status add_meta(gguf_writer *w, const cm_model *m, const gjob *j)
{
    char k[128];
    const char *a = m->hp.arch_name;
    cm_status s = gguf_writer_copy_kv(w, &m->file, NULL, NULL);
    if (!s)
        s = set_arch_u32(w, a, "block_count", j->n_out_layer);
    snprintf(k, sizeof k, "%s.expert_feed_forward_length", a);
    int exp_key = m->hp.n_expert > 0 && gguf_find(&m->file, k);
    if (!s && j->F2 != j->F)
        s = set_arch_u32(w, a, exp_key ? "expert_feed_forward_length" : "feed_forward_length",
                         j->F2);
    if (!s && j->E2 != j->E) {
        const cm_hparams *hp = &m->hp;
        if (!(s = set_arch_u32(w, a, "embedding_length", j->E2)) &&
            !(s = set_arch_u32(w, a, "attention.head_count",
                               (int64_t)j->n_kv2 * (hp->n_head / hp->n_head_kv))) &&
            !(s = set_arch_u32(w, a, "attention.head_count_kv", j->n_kv2)) &&
            !(s = set_arch_u32(w, a, "attention.key_length", hp->head_dim)))
            s = set_arch_u32(w, a, "attention.value_length", hp->head_dim_v);
    }
    if (!s && surg_file_type(j->o->c.type) >= 0)
        s = gguf_writer_set_u32(w, "general.file_type", (uint32_t)surg_file_type(j->o->c.type));
    return s;
}

static cm_status run_job(gjob *j, const cm_model *m, const char *in, const char *out,
                         cm_surg_check *chk, cm_err *err)
{
    const cm_grow_opts *o = j->o;
    const char *what = m->hp.n_expert ? "expert ffn" : "ffn";
    gguf_writer *w = gguf_writer_new(3);
    if (!w)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    cm_status s = add_meta(w, m, j);
    if (!s)
        s = surg_plan_write(&j->plan, w, fill);
    if (o->c.log)
        fprintf(o->c.log, "grow: %s (%d layers, embd %lld, %d/%d heads, %s %lld) -> %s (%d "
                "layers, embd %lld, %d/%d heads, %s %lld)\n", in, j->n_layer, (long long)j->E,
                m->hp.n_head, m->hp.n_head_kv, what, (long long)j->F, out, j->n_out_layer,
                (long long)j->E2, j->n_kv2 * (m->hp.n_head / m->hp.n_head_kv), j->n_kv2, what,
                (long long)j->F2);
    double tol = j->plan.all_f32 ? 1e-4 : 0;
    s = surg_finish(w, out, in, o->c.n_check_tokens, tol, o->c.log, chk, err);
    gguf_writer_free(w);
    return s;
}

static void free_job(gjob *j)
{
    for (int a = 0; a < AX_N; a++) {
        free(j->map[a].src);
        free(j->map[a].scale);
    }
    free(j->src_layer);
    free(j->is_new);
    surg_plan_free(&j->plan);
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
    gjob j = {.o = o, .hp = &m.hp, .E = m.hp.n_embd, .tied = m.tied_output};
    if (m.is_pack)
        s = cm_fail(err, CM_E_UNSUPPORTED, "%s is a language-expert pack; grow one member's "
                    "model", in);
    if (!s)
        s = plan_width(&j, &m, err);
    if (!s)
        s = plan_embd(&j, err);
    if (!s)
        s = plan_layers(&j, m.hp.n_layer, o->add_layers, err);
    /* each tensor is written once per layer it lands in: at most twice
     * per new layer */
    if (!s)
        s = surg_plan_init(&j.plan, m.file.n_tensors * (size_t)(2 + o->add_layers), o->c.type,
                           err);
    for (uint64_t i = 0; !s && i < m.file.n_tensors; i++)
        s = plan_tensor(&j, &m.file.tensors[i], err);
    if (!s)
        s = run_job(&j, &m, in, out, chk, err);
    free_job(&j);
    cm_model_free(&m);
    return s;
}
