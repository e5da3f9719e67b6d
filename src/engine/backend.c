/* backend.c - choosing a backend, its tensors, and the ops with their CPU
 * fallback. */
#include "engine/backend.h"

#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cm_backend_ops *const compiled[] = {
    &cm_backend_cpu_ops, &cm_backend_ref_ops,
#ifdef CM_HAVE_CUDA
    &cm_backend_cuda_ops,
#endif
#ifdef CM_HAVE_VULKAN
    &cm_backend_vulkan_ops,
#endif
};
#define N_COMPILED (sizeof compiled / sizeof compiled[0])

/* Backends the project knows of but this build lacks, and why. */
static const char *const known_absent[][2] = {
#ifndef CM_HAVE_CUDA
    {"cuda", "this build has no CUDA backend (configure --with-cuda)"},
#endif
#ifndef CM_HAVE_VULKAN
    {"vulkan", "this build has no Vulkan backend (configure --with-vulkan)"},
#endif
    {NULL, NULL},
};

const cm_backend_ops *cm_backend_find(const char *name)
{
    for (size_t i = 0; i < N_COMPILED; i++)
        if (strcmp(compiled[i]->name, name) == 0)
            return compiled[i];
    return NULL;
}

const cm_backend_ops *cm_backend_at(size_t i)
{
    return i < N_COMPILED ? compiled[i] : NULL;
}

const char *cm_backend_names(void)
{
    static const char *const names =
        "cpu ref"
#ifdef CM_HAVE_CUDA
        " cuda"
#endif
#ifdef CM_HAVE_VULKAN
        " vulkan"
#endif
        ;
    return names;
}

cm_status cm_backend_choose(const char *name, const cm_backend_ops **out, cm_err *err)
{
    const char *from = "--backend";
    if (!name || !*name) {
        name = getenv("CODEMOE_BACKEND");
        from = "CODEMOE_BACKEND";
    }
    if (!name || !*name)
        name = "cpu";
    *out = cm_backend_find(name);
    if (*out)
        return CM_OK;
    for (size_t i = 0; known_absent[i][0]; i++)
        if (strcmp(known_absent[i][0], name) == 0)
            return cm_fail(err, CM_E_UNSUPPORTED, "%s %s: %s (compiled in: %s)", from, name,
                           known_absent[i][1], cm_backend_names());
    return cm_fail(err, CM_E_USAGE, "%s: unknown backend '%.40s' (compiled in: %s)", from, name,
                   cm_backend_names());
}

/* Whether a backend may hand ops to the CPU: it lacks one, or cannot read
 * the weights in host memory. */
static int needs_cpu(const cm_backend_ops *ops)
{
    return !ops->reads_host || !ops->embed || !ops->norm || !ops->matmul || !ops->rope ||
           !ops->clear || !ops->swiglu || !ops->gelu || !ops->add || !ops->add_gated ||
           !ops->route || !ops->gather || !ops->scatter_add || !ops->logits;
}

cm_status cm_backend_new(const cm_backend_ops *ops, const cm_backend_shape *s,
                         cm_backend **out, cm_err *err)
{
    cm_backend *be = calloc(1, sizeof *be);
    *out = NULL;
    if (!be)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the %s backend", ops->name);
    be->ops = ops;
    be->shape = *s;
    cm_status st = ops->init(be, s, err);
    if (st) {
        ops->release(be);
        free(be);
        return st;
    }
    if (needs_cpu(ops)) { /* made now, so that no op has to fail for want of it */
        cm_backend_shape cs = *s;
        cs.no_kv = 1;
        if ((st = cm_backend_new(&cm_backend_cpu_ops, &cs, &be->cpu, err))) {
            cm_backend_free(be);
            return st;
        }
    }
    *out = be;
    return CM_OK;
}

size_t cm_backend_bytes(const cm_backend_ops *ops, const cm_backend_shape *s)
{
    cm_backend_shape cs = *s;
    cs.no_kv = 1;
    return ops->state_bytes(s) + (needs_cpu(ops) ? cm_backend_cpu_ops.state_bytes(&cs) : 0);
}

void cm_backend_free(cm_backend *be)
{
    if (!be)
        return;
    cm_backend_free(be->cpu);
    be->ops->release(be);
    free(be);
}

cm_status cm_backend_tensor(cm_backend *be, int64_t cols, int64_t rows, cm_tensor *t,
                            cm_err *err)
{
    memset(t, 0, sizeof *t);
    t->buf = calloc(1, sizeof *t->buf);
    if (!t->buf)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    size_t bytes = (size_t)cols * (size_t)rows * sizeof(float);
    cm_status s = be->ops->buffer_alloc(be, bytes, t->buf, err);
    if (s) {
        free(t->buf);
        t->buf = NULL;
        return s;
    }
    t->type = CM_TYPE_F32;
    t->n_dims = 2;
    t->ne[0] = cols, t->ne[1] = rows, t->ne[2] = t->ne[3] = 1;
    t->data = t->buf->host;
    t->nbytes = bytes;
    return CM_OK;
}

void cm_backend_tensor_free(cm_backend *be, cm_tensor *t)
{
    if (t->buf) {
        be->ops->buffer_free(be, t->buf);
        free(t->buf);
    }
    memset(t, 0, sizeof *t);
}

cm_tensor cm_rows(const cm_tensor *t, int64_t r0, int64_t n)
{
    cm_tensor v = *t;
    size_t row = cm_row_bytes(t->type, t->ne[0]);
    v.ne[1] = n, v.ne[2] = v.ne[3] = 1;
    v.offs += (size_t)r0 * row;
    v.nbytes = (size_t)n * row;
    if (t->data)
        v.data = (const char *)t->data + (size_t)r0 * row;
    return v;
}

cm_tensor cm_shaped(const cm_tensor *t, int64_t cols, int64_t rows)
{
    cm_tensor v = *t;
    v.ne[0] = cols, v.ne[1] = rows, v.ne[2] = v.ne[3] = 1;
    v.nbytes = (size_t)cols * (size_t)rows * sizeof(float);
    return v;
}

/* ---------------------------------------------------------- CPU fallback */

static const char *const op_names[CM_OP_COUNT] = {
#define CM_OP_NAME(name) #name,
    CM_OP_LIST(CM_OP_NAME)
#undef CM_OP_NAME
};

const char *cm_op_name(int op) { return op >= 0 && op < CM_OP_COUNT ? op_names[op] : "?"; }

/* Whether be's ops can read t where it is: its own buffers, or host
 * memory when its kernels read that in place.  Absent tensors pass. */
static int readable(const cm_backend *be, const cm_tensor *t)
{
    return !t || !cm_tensor_present(t) || t->buf || be->ops->reads_host;
}

static int readable2(const cm_backend *be, const cm_tensor *a, const cm_tensor *b)
{
    return readable(be, a) && readable(be, b);
}

/* Whether be's op can read weight w's type (absent weights pass). */
static int typed(const cm_backend *be, int op, const cm_tensor *w)
{
    return !w || !cm_tensor_present(w) || !be->ops->has_type || be->ops->has_type(op, w->type);
}

/* The CPU backend that runs the ops be lacks or cannot run where their
 * weights are (made by cm_backend_new: no KV cache of its own). */
static cm_backend *fallback(cm_backend *be, int op, int has_op)
{
    if (!be->fallbacks[op]++)
        fprintf(stderr, has_op ? "[codemoe] the %s backend cannot run the %s op on weights in "
                                 "host memory or of a type it lacks: it runs on the CPU\n"
                               : "[codemoe] the %s backend has no %s op: it runs on the CPU\n",
                be->ops->name, op_names[op]);
    return be->cpu;
}

/* Operands of a fallback op in host memory: device tensors are copied
 * down (and written ones back up by unstage).  The copies are the one
 * allocation evaluation makes, and only for a backend without host-visible
 * buffers: a step towards its own ops, not a way to run. */
typedef struct {
    cm_tensor host;
    void *mem;
} staged;

static const cm_tensor *stage(cm_backend *be, const cm_tensor *t, staged *s)
{
    s->mem = NULL;
    if (!t || t->data || !t->buf)
        return t;
    s->host = *t;
    s->mem = malloc(t->nbytes ? t->nbytes : 1);
    if (!s->mem) {
        fprintf(stderr, "codemoe: out of memory copying a tensor for the CPU\n");
        exit(1);
    }
    be->ops->download(be, t, s->mem, t->nbytes);
    s->host.data = s->mem;
    s->host.buf = NULL;
    s->host.offs = 0;
    return &s->host;
}

static void unstage(cm_backend *be, const cm_tensor *t, staged *s, int written)
{
    if (s->mem && written)
        be->ops->upload(be, t, s->mem, t->nbytes);
    free(s->mem);
}

void cm_op_embed(cm_backend *be, const cm_tensor *table, const cm_tensor *pos_table,
                 const int32_t *ids, int n, int p0, cm_tensor *out)
{
    if (be->ops->embed && readable2(be, table, pos_table) && typed(be, CM_OP_embed, table) &&
        typed(be, CM_OP_embed, pos_table)) {
        be->ops->embed(be, table, pos_table, ids, n, p0, out);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_embed, be->ops->embed != NULL);
    staged a, b, o;
    const cm_tensor *ta = stage(be, table, &a), *tb = stage(be, pos_table, &b);
    cm_tensor *to = (cm_tensor *)stage(be, out, &o);
    cpu->ops->embed(cpu, ta, tb, ids, n, p0, to);
    unstage(be, table, &a, 0), unstage(be, pos_table, &b, 0), unstage(be, out, &o, 1);
}

void cm_op_norm(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
                float eps, int layer_norm, cm_tensor *out)
{
    if (be->ops->norm && readable2(be, w, b)) {
        be->ops->norm(be, x, w, b, eps, layer_norm, out);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_norm, be->ops->norm != NULL);
    staged sx, sw, sb, so;
    const cm_tensor *tx = stage(be, x, &sx), *tw = stage(be, w, &sw), *tb = stage(be, b, &sb);
    cm_tensor *to = (cm_tensor *)stage(be, out, &so);
    cpu->ops->norm(cpu, tx, tw, tb, eps, layer_norm, to);
    unstage(be, x, &sx, 0), unstage(be, w, &sw, 0), unstage(be, b, &sb, 0);
    unstage(be, out, &so, 1);
}

#define MAX_NW 4

static int matmul_readable(const cm_backend *be, int nw, const cm_tensor *const *ws,
                           const cm_tensor *const *bs)
{
    for (int i = 0; i < nw; i++)
        if (!readable2(be, ws[i], bs ? bs[i] : NULL) || !typed(be, CM_OP_matmul, ws[i]))
            return 0;
    return 1;
}

void cm_op_matmul(cm_backend *be, int nw, const cm_tensor *const *ws,
                  const cm_tensor *const *bs, const cm_tensor *x, cm_tensor *const *ys)
{
    if (be->ops->matmul && matmul_readable(be, nw, ws, bs)) {
        be->ops->matmul(be, nw, ws, bs, x, ys);
        return;
    }
    if (nw > MAX_NW) { /* fall back one weight at a time */
        for (int i = 0; i < nw; i++)
            cm_op_matmul(be, 1, ws + i, bs ? bs + i : NULL, x, ys + i);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_matmul, be->ops->matmul != NULL);
    staged sw[MAX_NW], sb[MAX_NW], sy[MAX_NW], sx;
    const cm_tensor *tw[MAX_NW], *tb[MAX_NW];
    cm_tensor *ty[MAX_NW];
    for (int i = 0; i < nw && i < MAX_NW; i++) {
        tw[i] = stage(be, ws[i], &sw[i]);
        tb[i] = stage(be, bs ? bs[i] : NULL, &sb[i]);
        ty[i] = (cm_tensor *)stage(be, ys[i], &sy[i]);
    }
    const cm_tensor *tx = stage(be, x, &sx);
    cpu->ops->matmul(cpu, nw, tw, tb, tx, ty);
    for (int i = 0; i < nw && i < MAX_NW; i++) {
        unstage(be, ws[i], &sw[i], 0), unstage(be, bs ? bs[i] : NULL, &sb[i], 0);
        unstage(be, ys[i], &sy[i], 1);
    }
    unstage(be, x, &sx, 0);
}

void cm_op_rope(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0)
{
    if (be->ops->rope && readable(be, norm_w)) {
        be->ops->rope(be, x, norm_w, p0);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_rope, be->ops->rope != NULL);
    staged sx, sn;
    cm_tensor *tx = (cm_tensor *)stage(be, x, &sx);
    const cm_tensor *tn = stage(be, norm_w, &sn);
    cpu->ops->rope(cpu, tx, tn, p0);
    unstage(be, x, &sx, 1), unstage(be, norm_w, &sn, 0);
}

void cm_op_clear(cm_backend *be, cm_tensor *x)
{
    if (be->ops->clear) {
        be->ops->clear(be, x);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_clear, be->ops->clear != NULL);
    staged sx;
    cm_tensor *tx = (cm_tensor *)stage(be, x, &sx);
    cpu->ops->clear(cpu, tx);
    unstage(be, x, &sx, 1);
}

void cm_op_swiglu(cm_backend *be, cm_tensor *a, const cm_tensor *b)
{
    if (be->ops->swiglu) {
        be->ops->swiglu(be, a, b);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_swiglu, be->ops->swiglu != NULL);
    staged sa, sb;
    cm_tensor *ta = (cm_tensor *)stage(be, a, &sa);
    const cm_tensor *tb = stage(be, b, &sb);
    cpu->ops->swiglu(cpu, ta, tb);
    unstage(be, a, &sa, 1), unstage(be, b, &sb, 0);
}

void cm_op_gelu(cm_backend *be, const cm_tensor *x, cm_tensor *out)
{
    if (be->ops->gelu) {
        be->ops->gelu(be, x, out);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_gelu, be->ops->gelu != NULL);
    staged sx, so;
    const cm_tensor *tx = stage(be, x, &sx);
    cm_tensor *to = (cm_tensor *)stage(be, out, &so);
    cpu->ops->gelu(cpu, tx, to);
    unstage(be, x, &sx, 0), unstage(be, out, &so, 1);
}

void cm_op_add(cm_backend *be, cm_tensor *x, const cm_tensor *y)
{
    if (be->ops->add) {
        be->ops->add(be, x, y);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_add, be->ops->add != NULL);
    staged sx, sy;
    cm_tensor *tx = (cm_tensor *)stage(be, x, &sx);
    const cm_tensor *ty = stage(be, y, &sy);
    cpu->ops->add(cpu, tx, ty);
    unstage(be, x, &sx, 1), unstage(be, y, &sy, 0);
}

void cm_op_add_gated(cm_backend *be, cm_tensor *out, const cm_tensor *y, const cm_tensor *gate)
{
    if (be->ops->add_gated) {
        be->ops->add_gated(be, out, y, gate);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_add_gated, be->ops->add_gated != NULL);
    staged so, sy, sg;
    cm_tensor *to = (cm_tensor *)stage(be, out, &so);
    const cm_tensor *ty = stage(be, y, &sy), *tg = stage(be, gate, &sg);
    cpu->ops->add_gated(cpu, to, ty, tg);
    unstage(be, out, &so, 1), unstage(be, y, &sy, 0), unstage(be, gate, &sg, 0);
}

void cm_op_route(cm_backend *be, const cm_tensor *logits, int k, int norm, cm_routing *r)
{
    if (be->ops->route) {
        be->ops->route(be, logits, k, norm, r);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_route, be->ops->route != NULL);
    staged sl;
    cpu->ops->route(cpu, stage(be, logits, &sl), k, norm, r);
    unstage(be, logits, &sl, 0);
}

void cm_op_gather(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n,
                  cm_tensor *dst)
{
    if (be->ops->gather) {
        be->ops->gather(be, src, rows, n, dst);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_gather, be->ops->gather != NULL);
    staged ss, sd;
    const cm_tensor *ts = stage(be, src, &ss);
    cm_tensor *td = (cm_tensor *)stage(be, dst, &sd);
    cpu->ops->gather(cpu, ts, rows, n, td);
    unstage(be, src, &ss, 0), unstage(be, dst, &sd, 1);
}

void cm_op_scatter_add(cm_backend *be, cm_tensor *dst, const cm_tensor *src,
                       const int32_t *rows, const float *wts, int n)
{
    if (be->ops->scatter_add) {
        be->ops->scatter_add(be, dst, src, rows, wts, n);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_scatter_add, be->ops->scatter_add != NULL);
    staged sd, ss;
    cm_tensor *td = (cm_tensor *)stage(be, dst, &sd);
    const cm_tensor *ts = stage(be, src, &ss);
    cpu->ops->scatter_add(cpu, td, ts, rows, wts, n);
    unstage(be, dst, &sd, 1), unstage(be, src, &ss, 0);
}

void cm_op_logits(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
                  float *host)
{
    if (be->ops->logits && readable2(be, w, b) && typed(be, CM_OP_logits, w)) {
        be->ops->logits(be, x, w, b, host);
        return;
    }
    cm_backend *cpu = fallback(be, CM_OP_logits, be->ops->logits != NULL);
    staged sx, sw, sb;
    const cm_tensor *tx = stage(be, x, &sx), *tw = stage(be, w, &sw), *tb = stage(be, b, &sb);
    cpu->ops->logits(cpu, tx, tw, tb, host);
    unstage(be, x, &sx, 0), unstage(be, w, &sw, 0), unstage(be, b, &sb, 0);
}
