/* backend_cuda.cu - the CUDA backend: its state, memory and op table.
 *
 * Weights the engine placed in device memory (engine/placement.h) are
 * read there by every op; an op whose weights stayed in host memory (MoE
 * experts beyond the card's memory, layers past --gpu-layers) runs on the
 * CPU through the engine's fallback.  All work is queued in order on one
 * stream; download, route and logits wait for it.
 *
 * The kernels: matmul.cu (products on quantized weights), attention.cu
 * (the KV cache and attention), ops.cu (the rest). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/common.cuh"

extern "C" {
#include "backends/cpu/ops.h"
}

namespace {

cm_status cuda_fail(cm_err *err, cudaError_t e, const char *what)
{
    return cm_fail(err, e == cudaErrorMemoryAllocation ? CM_E_NOMEM : CM_E_UNSUPPORTED,
                   "cuda: %s: %s", what, cudaGetErrorString(e));
}

size_t kv_row(cm_kv_type kv, int cols)
{
    return cm_row_bytes(cm_kv_elem_type(kv), cols);
}

size_t kv_bytes(const cm_backend_shape *s)
{
    const cm_hparams *hp = &s->m->hp;
    return s->no_kv ? 0 : (size_t)hp->n_layer * s->n_ctx *
                              (kv_row(s->kv, hp->n_head_kv * hp->head_dim) +
                               kv_row(s->kv, hp->n_head_kv * hp->head_dim_v));
}

/* Rows of logits computed per download. */
const int LOGIT_ROWS = 32;

/* Partial sums of split products: four times a batch of n_embd rows
 * (mmq.cu splits where they fit). */
size_t split_floats(const cm_backend_shape *s)
{
    const int nb = s->n_batch > 0 ? s->n_batch : 1;
    return (size_t)4 * nb * s->m->hp.n_embd;
}

size_t scratch_bytes(const cm_backend_shape *s)
{
    const cm_hparams *hp = &s->m->hp;
    int nb = s->n_batch > 0 ? s->n_batch : 1;
    return (size_t)s->n_ctx * hp->rope_dim * sizeof(float) + cuda_xq_bytes(hp, nb) +
           split_floats(s) * sizeof(float) +
           (size_t)nb * 2 * sizeof(float) * (hp->n_expert + 1) +
           (size_t)LOGIT_ROWS * hp->n_vocab * sizeof(float);
}

size_t cuda_state_bytes(const cm_backend_shape *s) { return kv_bytes(s) + scratch_bytes(s); }

void note_vram(cuda_state *st)
{
    size_t fr = 0, total = 0;
    if (cudaMemGetInfo(&fr, &total) == cudaSuccess && total - fr > st->vram_peak)
        st->vram_peak = total - fr;
}

void cuda_release(cm_backend *be)
{
    cuda_state *st = cuda_st(be);
    if (!st)
        return;
    cuda_profile_free(st);
    for (int il = 0; st->k_cache && il < st->hp->n_layer; il++)
        cudaFree(st->k_cache[il]);
    for (int il = 0; st->v_cache && il < st->hp->n_layer; il++)
        cudaFree(st->v_cache[il]);
    cudaFree(st->rope_cs), cudaFree(st->xq), cudaFree(st->split_scratch), cudaFree(st->rows), cudaFree(st->wts);
    cudaFree(st->logits), cudaFree(st->io_dev);
    cudaFreeHost(st->io_host), cudaFreeHost(st->logits_host);
    if (st->graph)
        cudaGraphExecDestroy(st->graph);
    free(st->host_route);
    if (st->stream)
        cudaStreamDestroy(st->stream);
    free(st->k_cache);
    free(st->v_cache);
    free(st);
    be->state = NULL;
}

/* cos and sin of every position's rotary angles, as the CPU computes them */
cudaError_t upload_rope_table(cuda_state *st, int n_ctx)
{
    const cm_hparams *hp = st->hp;
    size_t n = (size_t)n_ctx * hp->rope_dim;
    cudaError_t e = cudaMalloc(&st->rope_cs, (n ? n : 1) * sizeof(float));
    if (e != cudaSuccess || !hp->use_rope)
        return e;
    float *cs = (float *)malloc(n * sizeof(float));
    if (!cs)
        return cudaErrorMemoryAllocation;
    for (int p = 0; p < n_ctx; p++)
        cm_rope_table(cs + (size_t)p * hp->rope_dim, p, hp);
    e = cudaMemcpy(st->rope_cs, cs, n * sizeof(float), cudaMemcpyHostToDevice);
    free(cs);
    return e;
}

cudaError_t alloc_scratch(cuda_state *st, const cm_backend_shape *s)
{
    const cm_hparams *hp = st->hp;
    int nb = s->n_batch > 0 ? s->n_batch : 1;
    cudaError_t e = upload_rope_table(st, s->n_ctx);
    st->xq_bytes = cuda_xq_bytes(hp, nb);
    if (e == cudaSuccess)
        e = cudaMalloc(&st->xq, st->xq_bytes);
    st->split_floats = split_floats(s);
    if (e == cudaSuccess)
        e = cudaMalloc(&st->split_scratch, st->split_floats * sizeof(float));
    if (e == cudaSuccess)
        e = cudaMalloc(&st->rows, (size_t)nb * sizeof(int32_t));
    if (e == cudaSuccess)
        e = cudaMalloc(&st->wts, (size_t)nb * sizeof(float));
    st->logit_rows = LOGIT_ROWS;
    if (e == cudaSuccess)
        e = cudaMalloc(&st->logits, (size_t)LOGIT_ROWS * hp->n_vocab * sizeof(float));
    if (e == cudaSuccess)
        e = cudaMalloc(&st->io_dev, (size_t)(nb + 1) * sizeof(int32_t));
    if (e == cudaSuccess) /* position 0 until a batch says otherwise */
        e = cudaMemset(st->io_dev, 0, (size_t)(nb + 1) * sizeof(int32_t));
    if (e == cudaSuccess)
        e = cudaMallocHost(&st->io_host, (size_t)(nb + 1) * sizeof(int32_t));
    if (e == cudaSuccess)
        e = cudaMallocHost(&st->logits_host, (size_t)hp->n_vocab * sizeof(float));
    st->host_route = (float *)malloc((size_t)nb * (hp->n_expert + 1) * sizeof(float));
    if (e == cudaSuccess && !st->host_route)
        e = cudaErrorMemoryAllocation;
    return e;
}

cudaError_t alloc_cache(cuda_state *st, const cm_backend_shape *s)
{
    const cm_hparams *hp = st->hp;
    st->k_cache = (char **)calloc(hp->n_layer, sizeof(char *));
    st->v_cache = (char **)calloc(hp->n_layer, sizeof(char *));
    if (!st->k_cache || !st->v_cache)
        return cudaErrorMemoryAllocation;
    for (int il = 0; il < hp->n_layer; il++) {
        cudaError_t e = cudaMalloc(&st->k_cache[il], (size_t)s->n_ctx * st->krow);
        if (e == cudaSuccess)
            e = cudaMalloc(&st->v_cache[il], (size_t)s->n_ctx * st->vrow);
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

cm_status cuda_init(cm_backend *be, const cm_backend_shape *s, cm_err *err)
{
    const cm_hparams *hp = &s->m->hp;
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0)
        return cm_fail(err, CM_E_UNSUPPORTED, "cuda: no usable GPU (%s)",
                       e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    if (s->device >= n_dev)
        return cm_fail(err, CM_E_USAGE, "cuda: --device %d: there are %d devices (0..%d)",
                       s->device, n_dev, n_dev - 1);
    if (s->device >= 0 && (e = cudaSetDevice(s->device)) != cudaSuccess)
        return cuda_fail(err, e, "choosing the device");
    cuda_state *st = (cuda_state *)calloc(1, sizeof *st);
    be->state = st;
    if (!st)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the CUDA backend");
    st->hp = hp;
    st->n_ctx = s->n_ctx;
    st->n_batch = s->n_batch;
    st->kv = s->kv;
    st->krow = kv_row(s->kv, hp->n_head_kv * hp->head_dim);
    st->vrow = kv_row(s->kv, hp->n_head_kv * hp->head_dim_v);
    cudaDeviceProp prop;
    int dev = 0;
    cudaGetDevice(&dev);
    if ((e = cudaGetDeviceProperties(&prop, dev)) != cudaSuccess)
        return cuda_fail(err, e, "reading the device's properties");
    st->sm_count = prop.multiProcessorCount;
    st->cc = prop.major * 10 + prop.minor;
    if ((e = cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return cuda_fail(err, e, "creating a stream");
    st->smem = cuda_attention_smem(hp, s->n_ctx);
    if (st->smem > prop.sharedMemPerBlockOptin)
        return cm_fail(err, CM_E_UNSUPPORTED, "cuda: a %d-token context needs %zu bytes of "
                       "shared memory per attention block, the GPU has %zu: use a smaller -c",
                       s->n_ctx, st->smem, (size_t)prop.sharedMemPerBlockOptin);
    st->prompt_attn = cuda_attention_prompt_ok(hp, prop.sharedMemPerBlockOptin);
    st->mmq = cuda_mmq_available();
    const char *pdl = getenv("CODEMOE_CUDA_PDL"); /* 0: kernels one after the other (to compare) */
    st->pdl = st->cc >= 90 && cuda_pdl_available() && !(pdl && strcmp(pdl, "0") == 0);
    st->prof = cuda_profile_new();
    cudaGetLastError(); /* (a refused attribute is an answer, not an error) */
    if ((e = alloc_scratch(st, s)) != cudaSuccess)
        return cuda_fail(err, e, "allocating scratch memory");
    if (!s->no_kv && (e = alloc_cache(st, s)) != cudaSuccess)
        return cuda_fail(err, e, "allocating the KV cache");
    note_vram(st);
    return CM_OK;
}

void cuda_describe(char *out, size_t n)
{
    cudaDeviceProp prop;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0 ||
        cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
        snprintf(out, n, "cuda (no usable GPU)");
        return;
    }
    snprintf(out, n, "cuda (%s, sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
             prop.totalGlobalMem / 1073741824.0);
}

void cuda_list_devices(FILE *f)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        fprintf(f, "cuda: no usable GPU (%s)\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return;
    }
    for (int i = 0; i < n; i++) {
        cudaDeviceProp p;
        size_t fr = 0, total = 0;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess)
            continue;
        cudaSetDevice(i);
        cudaMemGetInfo(&fr, &total);
        fprintf(f, "cuda %d: %s, sm_%d%d, %d multiprocessors, %.1f GiB (%.1f GiB free)%s\n", i,
                p.name, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0,
                fr / 1073741824.0, p.major * 10 + p.minor >= 80 ? ", int8 tensor cores used" : "");
    }
}

cm_status cuda_buffer_alloc(cm_backend *be, size_t bytes, cm_buffer *buf, cm_err *err)
{
    buf->host = NULL;
    buf->size = bytes;
    cudaError_t e = cudaMalloc(&buf->dev, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        buf->dev = NULL;
        return cm_fail(err, CM_E_NOMEM, "cuda: allocating %.1f MiB of device memory: %s",
                       bytes / 1048576.0, cudaGetErrorString(e));
    }
    note_vram(cuda_st(be));
    return CM_OK;
}

void cuda_buffer_free(cm_backend *be, cm_buffer *buf)
{
    (void)be;
    cudaFree(buf->dev);
    buf->dev = NULL;
}

void cuda_upload(cm_backend *be, const cm_tensor *dst, const void *src, size_t bytes)
{
    cuda_flush(cuda_st(be));
    cuda_check(cudaMemcpyAsync(dev_ptr(dst), src, bytes, cudaMemcpyHostToDevice,
                               cuda_st(be)->stream), "upload");
}

void cuda_download(cm_backend *be, const cm_tensor *src, void *dst, size_t bytes)
{
    cudaStream_t s = cuda_st(be)->stream;
    cuda_flush(cuda_st(be));
    cuda_check(cudaMemcpyAsync(dst, dev_ptr(src), bytes, cudaMemcpyDeviceToHost, s), "download");
    cuda_check(cudaStreamSynchronize(s), "download");
    if (cuda_st(be)->prof)
        cuda_profile_mark(cuda_st(be), "(host)");
}

void cuda_synchronize(cm_backend *be)
{
    cuda_flush(cuda_st(be));
    cuda_check(cudaStreamSynchronize(cuda_st(be)->stream), "synchronize");
    if (cuda_st(be)->prof)
        cuda_profile_mark(cuda_st(be), "(host)");
}

void cuda_mem_info(cm_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
    cuda_check(cudaMemGetInfo(free_bytes, total_bytes), "reading free memory");
    cuda_state *st = cuda_st(be);
    if (*total_bytes - *free_bytes > st->vram_peak)
        st->vram_peak = *total_bytes - *free_bytes;
}

/* Whether generation steps are recorded and replayed: yes unless
 * CODEMOE_CUDA_GRAPHS=0 (to measure what they save) or profiling. */
bool graphs_wanted(const cuda_state *st)
{
    const char *v = getenv("CODEMOE_CUDA_GRAPHS");
    return !st->prof && (!v || strcmp(v, "0") != 0);
}

/* One generated token (one id, its logits) with every op on the GPU is
 * recorded as a CUDA graph the first time and replayed after: one launch
 * instead of hundreds.  Everything that changes between steps (the id,
 * the position) is read by the kernels from io_dev, which the record
 * fills from pinned memory; the ops are still called, and only count. */
void cuda_batch_begin(cm_backend *be, const int32_t *ids, int n, int p0, int n_out,
                      int replayable)
{
    cuda_state *st = cuda_st(be);
    st->batch_p0 = p0;
    st->ops_seen = 0;
    if (!(replayable && n == 1 && n_out == 1 && graphs_wanted(st))) {
        st->mode = EAGER;
        cuda_check(cudaMemcpyAsync(st->io_dev, &p0, sizeof(int32_t), cudaMemcpyHostToDevice,
                                   st->stream), "batch position");
        return;
    }
    cuda_check(cudaStreamSynchronize(st->stream), "batch"); /* io_host is free */
    st->io_host[0] = p0;
    st->io_host[1] = ids[0];
    if (st->graph) {
        st->mode = REPLAY;
        return;
    }
    st->mode = CAPTURE;
    cuda_check(cudaStreamBeginCapture(st->stream, cudaStreamCaptureModeThreadLocal), "capture");
    cuda_check(cudaMemcpyAsync(st->io_dev, st->io_host, 2 * sizeof(int32_t),
                               cudaMemcpyHostToDevice, st->stream), "batch ids");
}

void cuda_batch_end(cm_backend *be)
{
    cuda_state *st = cuda_st(be);
    if (st->mode != REPLAY)
        cuda_flush(st);
    if (st->mode == CAPTURE) {
        cudaGraph_t g;
        cuda_check(cudaStreamEndCapture(st->stream, &g), "capture");
        cuda_check(cudaGraphInstantiate(&st->graph, g, 0), "instantiating the step");
        cudaGraphDestroy(g);
        st->ops_recorded = st->ops_seen;
    } else if (st->mode == REPLAY && st->ops_seen != st->ops_recorded) {
        fprintf(stderr, "codemoe: cuda: a replayed step issued %d ops, the record has %d\n",
                st->ops_seen, st->ops_recorded);
        exit(1);
    }
    if (st->mode != EAGER) {
        cuda_check(cudaGraphLaunch(st->graph, st->stream), "replaying the step");
        cuda_check(cudaStreamSynchronize(st->stream), "replaying the step");
        memcpy(st->logits_dst, st->logits_host, st->logits_bytes);
    }
    st->mode = EAGER;
}

/* Router logits come to the host, where the choice is made as the CPU
 * makes it (a few dozen values per token). */
void cuda_route(cm_backend *be, const cm_tensor *logits, int k, int norm, cm_routing *r)
{
    cuda_state *st = cuda_st(be);
    st->ops_seen++; /* (never in a recorded step: the host decides) */
    const int X = (int)logits->ne[0], n = (int)logits->ne[1];
    cuda_download(be, logits, st->host_route, (size_t)n * X * sizeof(float));
    for (int t = 0; t < n; t++)
        cm_route_row(st->host_route + (size_t)t * X, X, k, norm, r->expert + (size_t)t * k,
                     r->weight + (size_t)t * k);
}

void cuda_logits(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
                 float *host)
{
    cuda_state *st = cuda_st(be);
    const int n = (int)x->ne[1], V = (int)w->ne[1];
    if (st->mode != EAGER) { /* one row, copied out at the batch's end */
        st->logits_dst = host;
        st->logits_bytes = (size_t)V * sizeof(float);
        if (skip_op(st))
            return;
        cuda_matmul_into(st, w, b, (const float *)dev_ptr(x), 1, st->logits);
        cuda_check(cudaMemcpyAsync(st->logits_host, st->logits, st->logits_bytes,
                                   cudaMemcpyDeviceToHost, st->stream), "logits");
        return;
    }
    cuda_flush(st);
    if (st->prof)
        cuda_profile_mark(st, "logits");
    for (int t0 = 0; t0 < n; t0 += st->logit_rows) {
        const int m = n - t0 < st->logit_rows ? n - t0 : st->logit_rows;
        cuda_matmul_into(st, w, b, (const float *)dev_ptr(x) + (size_t)t0 * x->ne[0], m,
                         st->logits);
        cuda_check(cudaMemcpyAsync(host + (size_t)t0 * V, st->logits, (size_t)m * V * sizeof(float),
                                   cudaMemcpyDeviceToHost, st->stream), "logits");
    }
    cuda_check(cudaStreamSynchronize(st->stream), "logits");
    if (st->prof)
        cuda_profile_mark(st, "(host)");
}

cm_backend_ops make_ops()
{
    cm_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.reads_host = 0;
    o.init = cuda_init;
    o.release = cuda_release;
    o.state_bytes = cuda_state_bytes;
    o.describe = cuda_describe;
    o.list_devices = cuda_list_devices;
    o.buffer_alloc = cuda_buffer_alloc;
    o.buffer_free = cuda_buffer_free;
    o.upload = cuda_upload;
    o.download = cuda_download;
    o.synchronize = cuda_synchronize;
    o.mem_info = cuda_mem_info;
    o.batch_begin = cuda_batch_begin;
    o.batch_end = cuda_batch_end;
    o.kv_store = cuda_kv_store;
    o.attention = cuda_attention;
    o.embed = cuda_embed;
    o.norm = cuda_norm;
    o.matmul = cuda_matmul;
    o.rope = cuda_rope;
    o.clear = cuda_clear;
    o.swiglu = cuda_swiglu;
    o.gelu = cuda_gelu;
    o.add = cuda_add;
    o.add_gated = cuda_add_gated;
    o.route = cuda_route;
    o.gather = cuda_gather;
    o.scatter_add = cuda_scatter_add;
    o.logits = cuda_logits;
    return o;
}

} // namespace

extern "C" const cm_backend_ops cm_backend_cuda_ops = make_ops();
