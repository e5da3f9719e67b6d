/* backend.h - what a device provides so the forward pass can run on it.
 *
 * forward.c and moe.c are written once, against this table of whole
 * operations of a transformer layer.  A backend (backends/cpu, backends/ref,
 * later CUDA and Vulkan) owns everything below it: its memory, its kernels,
 * its threads, its KV cache and its scratch.  No op returns a status: the
 * backend reserves all it needs when the context is created, so evaluation
 * cannot fail half-way.
 *
 * Tensors (engine/tensor.h) are (buffer, offset, type, shape).  Weights
 * live in the host buffer of the mapped model file; activations in buffers
 * the backend allocated.  A row-major F32 activation tensor has ne[0]
 * columns and ne[1] rows; cm_rows() views a range of rows.
 *
 * Placement is per tensor: a tensor lives where its buffer is.  Weights in
 * the mapped file are host memory; a device backend that uploads some of
 * them (the buffer then is its own) can leave others, MoE experts beyond
 * its memory say, in host memory.  An op runs on the context's backend when
 * the backend has it and can read every operand, else on the CPU backend:
 * the engine (backend.c) copies device operands to host memory and back,
 * logs the first fallback of each op and counts them all (`run -v`).  Only
 * the context state, the buffers and the KV cache ops are mandatory.
 *
 * Ops run in the order they are called.  download, route and logits return
 * once their results are in host memory; a backend whose buffers the CPU
 * can address (host set) keeps them current whenever no op is running. */
#ifndef CM_BACKEND_H
#define CM_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/model.h"
#include "engine/tensor.h"
#include "util/status.h"

typedef enum { CM_KV_F32 = 0, CM_KV_F16 = 1, CM_KV_Q8_0 = 2 } cm_kv_type;

/* The element type of a KV cache's rows. */
static inline enum cm_type cm_kv_elem_type(cm_kv_type kv)
{
    return kv == CM_KV_F32 ? CM_TYPE_F32 : kv == CM_KV_F16 ? CM_TYPE_F16 : CM_TYPE_Q8_0;
}

/* What a backend's context state is sized for. */
typedef struct {
    const cm_model *m;
    int n_ctx;          /* positions in the KV cache */
    int n_batch;        /* most tokens one op sees */
    cm_kv_type kv;
    int no_kv;          /* only running ops another backend lacks: no cache */
    int device;         /* which of the backend's devices, -1: its choice */
    int n_seq;          /* sequences stepped together (0 or 1: one) */
} cm_backend_shape;

/* One token's choice of experts: k indices and their gate weights. */
typedef struct {
    int32_t *expert; /* [n][k] */
    float *weight;   /* [n][k] */
} cm_routing;

typedef struct cm_backend cm_backend;

/* A token-level MoE feed-forward with its routing left on the device
 * (moe_ffn): out row t = the sum over row t's chosen experts e of
 * weight * down_e(silu(gate_e x_t) * up_e x_t), chosen and weighted as
 * route does from row t of logits (spent).  Expert e's weights are w[i]
 * (expert 0's gate, up, down) e * stride[i] bytes further on. */
typedef struct {
    const cm_tensor *x, *logits;
    cm_tensor *out;
    const cm_tensor *w[3];
    size_t stride[3];
    int k, norm;
    int layer;       /* which layer's (a backend may keep state per layer) */
    cm_tensor *a, *b; /* scratch: n k rows of the experts' width */
    cm_tensor *y;    /* scratch: n k rows of out's width */
    int32_t *chosen; /* the n x k choices, each token's in increasing order,
                      * in host memory by batch_end */
} cm_moe_args;

typedef struct {
    const char *name;
    int reads_host; /* its ops read host memory (the mapped weights) in place */
    /* ---- context state: KV cache, scratch, threads (mandatory) ---- */
    cm_status (*init)(cm_backend *be, const cm_backend_shape *s, cm_err *err);
    void (*release)(cm_backend *be);
    /* bytes init would reserve besides activation buffers */
    size_t (*state_bytes)(const cm_backend_shape *s);
    /* a one-line description of the device it would run on, for info
     * and bench */
    void (*describe)(char *out, size_t n);
    /* optional: one line per device it could run on, for info --devices */
    void (*list_devices)(FILE *f);

    /* ---- memory (mandatory) ---- */
    /* buf->host is set when the CPU can address the bytes directly */
    cm_status (*buffer_alloc)(cm_backend *be, size_t bytes, cm_buffer *buf, cm_err *err);
    void (*buffer_free)(cm_backend *be, cm_buffer *buf);
    void (*upload)(cm_backend *be, const cm_tensor *dst, const void *src, size_t bytes);
    void (*download)(cm_backend *be, const cm_tensor *src, void *dst, size_t bytes);
    void (*synchronize)(cm_backend *be);
    /* device memory free and in all, NULL for host memory (then no
     * weights are copied to it) */
    void (*mem_info)(cm_backend *be, size_t *free_bytes, size_t *total_bytes);

    /* ---- the KV cache (mandatory: it lives in the backend) ---- */
    /* rows of k and v become cache positions p0, p0 + 1, ... of layer il */
    void (*kv_store)(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0);
    /* out row t = softmax(q_t K^T / sqrt(d)) V over positions 0 .. p0 + t,
     * for each query head (grouped onto the KV heads) of q's rows */
    void (*attention)(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out);
    /* optional: positions 0 .. n-1 of cache layer il_src copied into
     * layer il_dst (a prompt several sequences share); NULL: contexts on
     * this backend cannot copy a sequence (cm_ctx_seq_copy says so) */
    void (*kv_copy)(cm_backend *be, int il_dst, int il_src, int n);

    /* ---- optional: whole batches ---- */
    /* A batch of n tokens (ids, from position p0) giving n_out rows of
     * logits is about to be issued, then ends.  replayable: every op will
     * run on this backend with nothing decided on the host in between, so
     * the backend may record the batch's ops once and replay the record
     * for later batches of the same shape (ops then only update inputs). */
    void (*batch_begin)(cm_backend *be, const int32_t *ids, int n, int p0, int n_out,
                        int replayable);
    void (*batch_end)(cm_backend *be);

    /* optional: whether embed, matmul or logits (op) can read weights of
     * this type; NULL: every type (else the op runs on the CPU for it) */
    int (*has_type)(int op, enum cm_type type);

    /* ---- the rest may be NULL (then the CPU runs it) ---- */
    /* out row t = table[ids[t]] (+ pos_table[p0 + t] when given) */
    void (*embed)(cm_backend *be, const cm_tensor *table, const cm_tensor *pos_table,
                  const int32_t *ids, int n, int p0, cm_tensor *out);
    /* out = RMSNorm(x) * w, or LayerNorm(x) * w + b when layer_norm */
    void (*norm)(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
                 float eps, int layer_norm, cm_tensor *out);
    /* ys[i] = x ws[i]^T (+ bs[i]) for each of nw weights sharing the input x
     * (biases may be absent: NULL or data-less) */
    void (*matmul)(cm_backend *be, int nw, const cm_tensor *const *ws,
                   const cm_tensor *const *bs, const cm_tensor *x, cm_tensor *const *ys);
    /* every head (head_dim columns) of x's rows: RMSNorm by norm_w when it
     * has data (qwen3), then the rotary embedding of position p0 + row */
    void (*rope)(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0);
    /* x = 0 */
    void (*clear)(cm_backend *be, cm_tensor *x);
    /* a = silu(a) * b */
    void (*swiglu)(cm_backend *be, cm_tensor *a, const cm_tensor *b);
    /* out = gelu(x), the tanh approximation */
    void (*gelu)(cm_backend *be, const cm_tensor *x, cm_tensor *out);
    /* x += y */
    void (*add)(cm_backend *be, cm_tensor *x, const cm_tensor *y);
    /* out row t += sigmoid(gate[t]) * y row t; weight 1 when gate is NULL */
    void (*add_gated)(cm_backend *be, cm_tensor *out, const cm_tensor *y,
                      const cm_tensor *gate);
    /* per row of logits (one per token): softmax, the k largest, their
     * weights renormalised to sum 1 when norm; written to host memory.
     * The logits are spent: a backend may overwrite them. */
    void (*route)(cm_backend *be, const cm_tensor *logits, int k, int norm, cm_routing *r);
    /* Optional.  The MoE feed-forward of cm_moe_args, routing included,
     * without a host round trip (a generation step then replays whole);
     * 0 when this backend cannot for these shapes (nothing done: the
     * engine routes on the host). */
    int (*moe_ffn)(cm_backend *be, const cm_moe_args *a);
    /* dst row i = src row rows[i], i < n */
    void (*gather)(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n,
                   cm_tensor *dst);
    /* dst row rows[i] += wts[i] * src row i, i < n */
    void (*scatter_add)(cm_backend *be, cm_tensor *dst, const cm_tensor *src,
                        const int32_t *rows, const float *wts, int n);
    /* logits = x w^T (+ b), delivered to host memory (n rows of w->ne[1]) */
    void (*logits)(cm_backend *be, const cm_tensor *x, const cm_tensor *w,
                   const cm_tensor *b, float *host);
} cm_backend_ops;

#define CM_OP_LIST(X) \
    X(embed) X(norm) X(matmul) X(rope) X(clear) X(swiglu) X(gelu) X(add) X(add_gated) X(route) \
    X(gather) X(scatter_add) X(logits)

enum {
#define CM_OP_ENUM(name) CM_OP_##name,
    CM_OP_LIST(CM_OP_ENUM)
#undef CM_OP_ENUM
    CM_OP_COUNT
};

struct cm_backend {
    const cm_backend_ops *ops;
    cm_backend_shape shape;
    void *state;               /* the backend's own */
    cm_backend *cpu;           /* where missing ops run (made with the backend
                                * when it may need one: no op fails later) */
    uint64_t fallbacks[CM_OP_COUNT]; /* ops run on the CPU instead */
};

/* The backends this build has, by name ("cpu", "ref", ...). */
const cm_backend_ops *cm_backend_find(const char *name);
/* The i-th compiled backend, NULL past the last. */
const cm_backend_ops *cm_backend_at(size_t i);
/* Space-separated names of the compiled backends, for --version. */
const char *cm_backend_names(void);
/* The backend named by `name`, or by $CODEMOE_BACKEND when name is NULL,
 * or "cpu": one line naming the choices if unknown or not compiled in. */
cm_status cm_backend_choose(const char *name, const cm_backend_ops **out, cm_err *err);

cm_status cm_backend_new(const cm_backend_ops *ops, const cm_backend_shape *s,
                         cm_backend **out, cm_err *err);
void cm_backend_free(cm_backend *be);
/* Bytes a backend of this shape reserves: its state and, where it may hand
 * ops to the CPU, the CPU backend's. */
size_t cm_backend_bytes(const cm_backend_ops *ops, const cm_backend_shape *s);

/* An F32 activation tensor of rows x cols in be's memory. */
cm_status cm_backend_tensor(cm_backend *be, int64_t cols, int64_t rows, cm_tensor *t,
                            cm_err *err);
void cm_backend_tensor_free(cm_backend *be, cm_tensor *t);

/* Rows r0 .. r0 + n - 1 of a row-major tensor. */
cm_tensor cm_rows(const cm_tensor *t, int64_t r0, int64_t n);
/* The start of an F32 buffer seen as rows x cols (a work buffer sized for
 * the widest use, holding a narrower one). */
cm_tensor cm_shaped(const cm_tensor *t, int64_t cols, int64_t rows);

/* The ops, each on be or, where be lacks it, on the CPU. */
void cm_op_embed(cm_backend *be, const cm_tensor *table, const cm_tensor *pos_table,
                 const int32_t *ids, int n, int p0, cm_tensor *out);
void cm_op_norm(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
                float eps, int layer_norm, cm_tensor *out);
void cm_op_matmul(cm_backend *be, int nw, const cm_tensor *const *ws,
                  const cm_tensor *const *bs, const cm_tensor *x, cm_tensor *const *ys);
void cm_op_rope(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0);
void cm_op_clear(cm_backend *be, cm_tensor *x);
void cm_op_swiglu(cm_backend *be, cm_tensor *a, const cm_tensor *b);
void cm_op_gelu(cm_backend *be, const cm_tensor *x, cm_tensor *out);
void cm_op_add(cm_backend *be, cm_tensor *x, const cm_tensor *y);
void cm_op_add_gated(cm_backend *be, cm_tensor *out, const cm_tensor *y, const cm_tensor *gate);
void cm_op_route(cm_backend *be, const cm_tensor *logits, int k, int norm, cm_routing *r);
void cm_op_gather(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n,
                  cm_tensor *dst);
/* be's moe_ffn; 0 when it has none or cannot (never the CPU's instead:
 * the caller's host routing is the fallback). */
static inline int cm_op_moe_ffn(cm_backend *be, const cm_moe_args *a)
{
    return be->ops->moe_ffn && be->ops->moe_ffn(be, a);
}
void cm_op_scatter_add(cm_backend *be, cm_tensor *dst, const cm_tensor *src,
                       const int32_t *rows, const float *wts, int n);
void cm_op_logits(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
                  float *host);
static inline void cm_op_batch_begin(cm_backend *be, const int32_t *ids, int n, int p0,
                                     int n_out, int replayable)
{
    if (be->ops->batch_begin)
        be->ops->batch_begin(be, ids, n, p0, n_out, replayable);
}
static inline void cm_op_batch_end(cm_backend *be)
{
    if (be->ops->batch_end)
        be->ops->batch_end(be);
}
static inline void cm_op_kv_store(cm_backend *be, int il, const cm_tensor *k,
                                  const cm_tensor *v, int p0)
{
    be->ops->kv_store(be, il, k, v, p0);
}
static inline void cm_op_attention(cm_backend *be, int il, const cm_tensor *q, int p0,
                                   cm_tensor *out)
{
    be->ops->attention(be, il, q, p0, out);
}

/* Names of the ops, and the number of CPU fallbacks of each so far. */
const char *cm_op_name(int op);

/* The backends (backends/<name>/). */
extern const cm_backend_ops cm_backend_cpu_ops;
extern const cm_backend_ops cm_backend_ref_ops;
extern const cm_backend_ops cm_backend_cuda_ops;   /* builds with CM_HAVE_CUDA */
extern const cm_backend_ops cm_backend_vulkan_ops; /* builds with CM_HAVE_VULKAN */

#endif
