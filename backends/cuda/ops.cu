/* ops.cu - the CUDA backend's small ops: embeddings, norms, rotary
 * embeddings, activations, residual adds, and the MoE row moves.
 *
 * Each follows the CPU backend's arithmetic (backends/cpu/ops.c): the
 * rotary angles come from the same table (computed on the host at start),
 * norms sum in float over a tree instead of in double. */
#include <cuda_fp16.h>
#include <string.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/quant_dev.cuh"

namespace {

const int NORM_THREADS = 256;

/* Row lists (token ids, MoE rows and their weights) up to this long go to
 * the kernel in its arguments: no copy to the device before it, one call
 * fewer on the host, which is what a generated token waits for.  Longer
 * ones go through st->rows and st->wts. */
const int ARG_ROWS = 64;

struct row_list {
    int32_t row[ARG_ROWS];
    float wt[ARG_ROWS];
};

/* Entry r of a list: from device memory when dev is set, else from the
 * arguments (__grid_constant__: read in place, not copied per thread). */
__device__ int32_t row_at(const int32_t *dev, const row_list &l, int r)
{
    return dev ? dev[r] : l.row[r];
}

/* A table of rows of one type: where element i of row r is. */
struct table_ref {
    const char *data;
    size_t row;             /* bytes of a row */
    int type, elems, bytes; /* type, elements and bytes of its blocks */
};

table_ref table_of(const cm_tensor *t)
{
    table_ref r = {NULL, 0, 0, 1, 4};
    if (!present(t))
        return r;
    const cm_type_info *ti = cm_type_get(t->type);
    r.data = dev_ptr(t);
    r.row = cm_row_bytes(t->type, t->ne[0]);
    r.type = t->type;
    r.elems = (int)ti->block_elems;
    r.bytes = (int)ti->block_bytes;
    return r;
}

__device__ float table_at(const table_ref &t, long r, int i)
{
    const char *blk = t.data + (size_t)r * t.row + (size_t)(i / t.elems) * t.bytes;
    return dequant_elem((enum cm_type)t.type, blk, i % t.elems);
}

/* Row t = table[ids[t]] (+ pos[p0 + t]), dequantized, p0 = *pos0 + delta. */
__global__ void embed_rows(table_ref table, table_ref pos, const int32_t *ids,
                           const __grid_constant__ row_list id_list, const int32_t *pos0,
                           int delta, int cols, float *out)
{
    wait_prior_grid();
    start_next_grid();
    const int t = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= cols)
        return;
    float v = table_at(table, row_at(ids, id_list, t), i);
    if (pos.data)
        v += table_at(pos, *pos0 + delta + t, i);
    out[(size_t)t * cols + i] = v;
}

__device__ double block_sum_d(double v, double *red)
{
    for (int o = 16; o > 0; o /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = v;
    __syncthreads();
    double s = 0.0;
    for (int w = 0; w < (int)(blockDim.x / 32); w++)
        s += red[w];
    __syncthreads();
    return s;
}

/* The scale of a row's RMSNorm: sums in double and the reciprocal square
 * root correctly rounded, as the CPU computes it, so the normalised row
 * is the CPU's to the bit and so are its quantized products (a model
 * whose activations sit near rounding steps would otherwise drift). */
__device__ float rms_scale(const float *v, int n, float eps, double *red)
{
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += (double)v[i] * v[i];
    return (float)(1.0 / sqrt(block_sum_d(ss, red) / (double)n + eps));
}

/* One block per row: RMSNorm, or LayerNorm (mean first) with its bias. */
/* add: the residual add held back before it (x += add, the row written
 * back), or NULL. */
__global__ void norm_rows(float *x, const float *add, const float *w, const float *b, float *out,
                          int n, float eps, int layer_norm)
{
    wait_prior_grid();
    start_next_grid();
    __shared__ double red[NORM_THREADS / 32];
    float *xi = x + (size_t)blockIdx.x * n;
    float *o = out + (size_t)blockIdx.x * n;
    if (add) {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            xi[i] += add[(size_t)blockIdx.x * n + i];
        __syncthreads();
    }
    if (!layer_norm) {
        const float scale = rms_scale(xi, n, eps, red);
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            o[i] = __fmul_rn(__fmul_rn(xi[i], scale), w[i]);
        return;
    }
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += xi[i];
    const double mean = block_sum_d(s, red) / n;
    double var = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        var += (xi[i] - mean) * (xi[i] - mean);
    const float scale = (float)(1.0 / sqrt(block_sum_d(var, red) / n + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        o[i] = __fadd_rn(__fmul_rn(__fmul_rn((float)(xi[i] - mean), scale), w[i]),
                         b ? b[i] : 0.0f);
}

struct rope_args {
    float *x;
    const float *norm_w; /* per-head RMSNorm weights, or NULL */
    const float *cs;     /* the table */
    const int32_t *p0;   /* the batch's first position; rows from p0 + delta */
    int delta;
    int n_heads, d, rope_dim, neox, use_rope;
    float eps;
};

/* Head v of row t: its RMSNorm when asked, then its rotation (64 threads). */
__device__ void rope_head(const rope_args &a, float *v, int t, double *red)
{
    if (a.norm_w) {
        const float scale = rms_scale(v, a.d, a.eps, red);
        for (int i = threadIdx.x; i < a.d; i += blockDim.x)
            v[i] = __fmul_rn(__fmul_rn(v[i], scale), a.norm_w[i]);
        __syncthreads();
    }
    if (!a.use_rope)
        return;
    const int half = a.rope_dim / 2;
    const float *cs = a.cs + (size_t)(*a.p0 + a.delta + t) * a.rope_dim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const int p = a.neox ? i : 2 * i, q = a.neox ? i + half : 2 * i + 1;
        const float c = cs[2 * i], s = cs[2 * i + 1], x0 = v[p], x1 = v[q];
        v[p] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)); /* no FMA: the CPU's bits */
        v[q] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
}

/* Block (head, row). */
__global__ void rope_heads(rope_args a)
{
    wait_prior_grid();
    start_next_grid();
    __shared__ double red[32];
    rope_head(a, a.x + ((size_t)blockIdx.y * a.n_heads + blockIdx.x) * a.d, blockIdx.y, red);
}

/* Head g of a cache row: F32 or F16 values, or Q8_0 blocks (head sizes are
 * whole blocks then). */
template <cm_kv_type KV>
__device__ void put_head(char *row, int g, int d, const float *v)
{
    if constexpr (KV == CM_KV_Q8_0) {
        __syncthreads(); /* every thread's part of v is written */
        for (int b = threadIdx.x; b < d / 32; b += blockDim.x)
            q8_0_quantize_block(v + b * 32, (block_q8_0 *)row + (size_t)g * d / 32 + b);
    } else {
        for (int i = threadIdx.x; i < d; i += blockDim.x)
            if constexpr (KV == CM_KV_F16)
                ((__half *)row)[(size_t)g * d + i] = __float2half_rn(v[i]);
            else
                ((float *)row)[(size_t)g * d + i] = v[i];
    }
}

struct rope_store_args {
    rope_args q, k;        /* k.x is also the keys stored */
    const float *v;
    char *kc, *vc;         /* the layer's cache */
    size_t krow, vrow;
    int dv, n_kv;
};

/* Block (x, row): x < q heads: rotate a query head; then the key heads,
 * rotated and stored; then the value heads, stored. */
template <cm_kv_type KV>
__global__ void rope_store(rope_store_args a)
{
    wait_prior_grid();
    start_next_grid();
    __shared__ double red[32];
    const int x = blockIdx.x, t = blockIdx.y, nq = a.q.n_heads;
    const int pos = *a.k.p0 + a.k.delta + t;
    if (x < nq) {
        rope_head(a.q, a.q.x + ((size_t)t * nq + x) * a.q.d, t, red);
    } else if (x < nq + a.n_kv) {
        float *kh = a.k.x + ((size_t)t * a.n_kv + (x - nq)) * a.k.d;
        rope_head(a.k, kh, t, red);
        __syncthreads();
        put_head<KV>(a.kc + (size_t)pos * a.krow, x - nq, a.k.d, kh);
    } else {
        const int g = x - nq - a.n_kv;
        put_head<KV>(a.vc + (size_t)pos * a.vrow, g, a.dv, a.v + ((size_t)t * a.n_kv + g) * a.dv);
    }
}

__global__ void swiglu_k(float *a, const float *b, long n)
{
    wait_prior_grid();
    start_next_grid();
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        a[i] = swiglu_value(a[i], b[i]);
}

__global__ void gelu_k(const float *x, float *out, long n)
{
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    const float k = 0.7978845608028654f, v = x[i];
    out[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
}

__global__ void add_k(float *x, const float *y, long n)
{
    wait_prior_grid();
    start_next_grid();
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}

__global__ void add_gated_k(float *out, const float *y, const float *gate, int cols, long n)
{
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    const float g = gate ? 1.0f / (1.0f + expf(-gate[i / cols])) : 1.0f;
    out[i] += g * y[i];
}

__global__ void gather_k(const float *src, const int32_t *rows, const __grid_constant__ row_list l,
                         float *dst, int cols)
{
    const int r = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < cols)
        dst[(size_t)r * cols + i] = src[(size_t)row_at(rows, l, r) * cols + i];
}

/* Each destination row appears at most once per call (a token picks an
 * expert once), so no two threads add to one element. */
__global__ void scatter_add_k(float *dst, const float *src, const int32_t *rows,
                              const float *wts, const __grid_constant__ row_list l, int cols)
{
    const int r = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
    const float w = wts ? wts[r] : l.wt[r];
    if (i < cols)
        dst[(size_t)row_at(rows, l, r) * cols + i] += w * src[(size_t)r * cols + i];
}

/* n rows (and weights, if given) into l when they fit, else copied to the
 * device: the device lists the kernels are to read, NULL for l's. */
const int32_t *put_rows(cuda_state *st, const int32_t *rows, const float *wts, int n,
                        row_list *l, const float **wts_dev)
{
    if (n <= ARG_ROWS) {
        memcpy(l->row, rows, (size_t)n * sizeof(int32_t));
        if (wts)
            memcpy(l->wt, wts, (size_t)n * sizeof(float));
        *wts_dev = NULL;
        return NULL;
    }
    cuda_check(cudaMemcpyAsync(st->rows, rows, (size_t)n * sizeof(int32_t),
                               cudaMemcpyHostToDevice, st->stream), "row list");
    if (wts)
        cuda_check(cudaMemcpyAsync(st->wts, wts, (size_t)n * sizeof(float),
                                   cudaMemcpyHostToDevice, st->stream), "row weights");
    *wts_dev = st->wts;
    return st->rows;
}

long elems(const cm_tensor *t) { return (long)t->ne[0] * (long)t->ne[1]; }

} // namespace

/* In a recorded step the ids are the ones batch_begin put on the device. */
void cuda_embed(cm_backend *be, const cm_tensor *table, const cm_tensor *pos_table,
                const int32_t *ids, int n, int p0, cm_tensor *out)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st))
        return;
    const int32_t *ids_dev = st->io_dev + 1;
    row_list l = {};
    if (st->mode == EAGER) {
        const float *unused;
        ids_dev = put_rows(st, ids, NULL, n, &l, &unused);
    }
    const int cols = (int)table->ne[0];
    launch_pdl(st, embed_rows, dim3(blocks_for(cols, 256), (unsigned)n), 256, 0, table_of(table),
               table_of(pos_table), ids_dev, l, (const int32_t *)st->io_dev, p0 - st->batch_p0, cols,
               (float *)dev_ptr(out));
    cuda_check(cudaGetLastError(), "embed");
}

void cuda_norm(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
               float eps, int layer_norm, cm_tensor *out)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st, KEEP_HELD))
        return;
    const float *add = NULL; /* x += y then its norm: one launch */
    if (st->pend_add.x == (float *)dev_ptr(x) && st->pend_add.n == (long)x->ne[0] * x->ne[1] &&
        st->n_pend_rope == 0) {
        add = st->pend_add.y;
        st->pend_add.x = NULL;
    }
    cuda_flush(st);
    launch_pdl(st, norm_rows, (unsigned)x->ne[1], NORM_THREADS, 0, (float *)dev_ptr(x), add,
               (const float *)dev_ptr(w),
               layer_norm && present(b) ? (const float *)dev_ptr(b) : (const float *)NULL,
               (float *)dev_ptr(out), (int)x->ne[0], eps, layer_norm);
    cuda_check(cudaGetLastError(), "norm");
}

rope_args rope_of(cuda_state *st, float *x, const float *norm_w, int n_heads, int delta)
{
    const cm_hparams *hp = st->hp;
    rope_args a;
    a.x = x;
    a.norm_w = norm_w;
    a.d = hp->head_dim;
    a.n_heads = n_heads;
    a.rope_dim = hp->rope_dim;
    a.neox = hp->rope_neox;
    a.use_rope = hp->use_rope;
    a.eps = hp->norm_eps;
    a.cs = st->rope_cs;
    a.p0 = st->io_dev;
    a.delta = delta;
    return a;
}

/* Held back: the next op may be the cache store that does it (rope of q,
 * rope of k, store k and v: three launches made one). */
void cuda_rope(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st, KEEP_HELD) || (!present(norm_w) && !st->hp->use_rope))
        return;
    if (st->n_pend_rope == 2 || st->pend_add.x) /* (held-back work runs in op order) */
        cuda_flush(st);
    auto &p = st->pend_rope[st->n_pend_rope++];
    p.x = (float *)dev_ptr(x);
    p.norm_w = present(norm_w) ? (const float *)dev_ptr(norm_w) : NULL;
    p.n_heads = (int)(x->ne[0] / st->hp->head_dim);
    p.rows = (int)x->ne[1];
    p.delta = p0 - st->batch_p0;
}

void cuda_flush(cuda_state *st)
{
    for (int i = 0; i < st->n_pend_rope; i++) {
        const auto &p = st->pend_rope[i];
        launch_pdl(st, rope_heads, dim3((unsigned)p.n_heads, (unsigned)p.rows), 64, 0,
                   rope_of(st, p.x, p.norm_w, p.n_heads, p.delta));
        cuda_check(cudaGetLastError(), "rope");
    }
    st->n_pend_rope = 0;
    if (st->pend_gate_up.held)
        cuda_gate_up_launch(st, false);
    if (st->pend_add.x) {
        const long n = st->pend_add.n;
        launch_pdl(st, add_k, blocks_for(n, 256), 256, 0, st->pend_add.x, st->pend_add.y, n);
        cuda_check(cudaGetLastError(), "add");
        st->pend_add.x = NULL;
    }
}

bool cuda_rope_store(cuda_state *st, int il, const cm_tensor *k, const cm_tensor *v, int delta)
{
    const auto &pq = st->pend_rope[0], &pk = st->pend_rope[1];
    const int n = (int)k->ne[1];
    if (st->n_pend_rope != 2 || pk.x != (float *)dev_ptr(k) || pk.rows != n || pq.rows != n ||
        pq.delta != delta || pk.delta != delta)
        return false;
    rope_store_args a;
    a.q = rope_of(st, pq.x, pq.norm_w, pq.n_heads, delta);
    a.k = rope_of(st, pk.x, pk.norm_w, pk.n_heads, delta);
    a.v = (const float *)dev_ptr(v);
    a.kc = st->k_cache[il];
    a.vc = st->v_cache[il];
    a.krow = st->krow;
    a.vrow = st->vrow;
    a.dv = st->hp->head_dim_v;
    a.n_kv = pk.n_heads;
    const dim3 g((unsigned)(pq.n_heads + 2 * pk.n_heads), (unsigned)n);
    if (st->kv == CM_KV_Q8_0)
        launch_pdl(st, rope_store<CM_KV_Q8_0>, g, 64, 0, a);
    else if (st->kv == CM_KV_F16)
        launch_pdl(st, rope_store<CM_KV_F16>, g, 64, 0, a);
    else
        launch_pdl(st, rope_store<CM_KV_F32>, g, 64, 0, a);
    cuda_check(cudaGetLastError(), "rope and cache store");
    st->n_pend_rope = 0;
    return true;
}

void cuda_clear(cm_backend *be, cm_tensor *x)
{
    if (skip_op(cuda_st(be)))
        return;
    cuda_check(cudaMemsetAsync(dev_ptr(x), 0, x->nbytes, cuda_st(be)->stream), "clear");
}

/* The swiglu of two held-back products (a gate and an up, matmul.cu) is
 * part of their launch; any other runs on its own. */
void cuda_swiglu(cm_backend *be, cm_tensor *a, const cm_tensor *b)
{
    cuda_state *st = cuda_st(be);
    const auto &g = st->pend_gate_up;
    const bool take = g.held && g.y[0] == (float *)dev_ptr(a) && g.y[1] == (float *)dev_ptr(b) &&
                      elems(a) == (long)g.rows * g.n && !st->n_pend_rope && !st->pend_add.x;
    if (skip_op(st, take ? KEEP_GATE_UP : KEEP_NONE))
        return;
    if (take) {
        cuda_gate_up_launch(st, true);
        return;
    }
    long n = elems(a);
    launch_pdl(st, swiglu_k, blocks_for(n, 256), 256, 0, (float *)dev_ptr(a),
               (const float *)dev_ptr(b), n);
    cuda_check(cudaGetLastError(), "swiglu");
}

void cuda_gelu(cm_backend *be, const cm_tensor *x, cm_tensor *out)
{
    if (skip_op(cuda_st(be)))
        return;
    long n = elems(x);
    gelu_k<<<blocks_for(n, 256), 256, 0, cuda_st(be)->stream>>>(
        (const float *)dev_ptr(x), (float *)dev_ptr(out), n);
    cuda_check(cudaGetLastError(), "gelu");
}

/* Held back: a norm of x usually follows, and does the add too. */
void cuda_add(cm_backend *be, cm_tensor *x, const cm_tensor *y)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st))
        return;
    st->pend_add.x = (float *)dev_ptr(x);
    st->pend_add.y = (const float *)dev_ptr(y);
    st->pend_add.n = elems(x);
}

void cuda_add_gated(cm_backend *be, cm_tensor *out, const cm_tensor *y, const cm_tensor *gate)
{
    if (skip_op(cuda_st(be)))
        return;
    long n = elems(out);
    add_gated_k<<<blocks_for(n, 256), 256, 0, cuda_st(be)->stream>>>(
        (float *)dev_ptr(out), (const float *)dev_ptr(y),
        present(gate) ? (const float *)dev_ptr(gate) : NULL, (int)out->ne[0], n);
    cuda_check(cudaGetLastError(), "add_gated");
}

void cuda_gather(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n,
                 cm_tensor *dst)
{
    if (skip_op(cuda_st(be)))
        return;
    cuda_state *st = cuda_st(be);
    const int cols = (int)src->ne[0];
    row_list l = {};
    const float *unused;
    const int32_t *rows_dev = put_rows(st, rows, NULL, n, &l, &unused);
    gather_k<<<dim3(blocks_for(cols, 256), (unsigned)n), 256, 0, st->stream>>>(
        (const float *)dev_ptr(src), rows_dev, l, (float *)dev_ptr(dst), cols);
    cuda_check(cudaGetLastError(), "gather");
}

void cuda_scatter_add(cm_backend *be, cm_tensor *dst, const cm_tensor *src, const int32_t *rows,
                      const float *wts, int n)
{
    if (skip_op(cuda_st(be)))
        return;
    cuda_state *st = cuda_st(be);
    const int cols = (int)dst->ne[0];
    row_list l = {};
    const float *wts_dev;
    const int32_t *rows_dev = put_rows(st, rows, wts, n, &l, &wts_dev);
    scatter_add_k<<<dim3(blocks_for(cols, 256), (unsigned)n), 256, 0, st->stream>>>(
        (float *)dev_ptr(dst), (const float *)dev_ptr(src), rows_dev, wts_dev, l, cols);
    cuda_check(cudaGetLastError(), "scatter_add");
}
