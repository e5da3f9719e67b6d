/* matmul.cu - products of activations with weights in device memory.
 *
 * As on the CPU, a quantized weight is multiplied with the activations
 * quantized to its dot type (q8_0, q8_1 or q8_K, quant/types.c): integer
 * block sums, exact, then the blocks' scales.  So results agree with the
 * reference backend to float rounding, and generation reads each weight
 * byte once: one warp per weight row, its lanes over the row's blocks,
 * several parts of a block per lane group (quant_dev.cuh), up to NT tokens
 * per pass over the row.  F32, F16 and BF16 weights dot with the float
 * activations. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/quant_dev.cuh"

namespace {

const int WARPS = 4; /* weight rows per thread block */

__device__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ------------------------------------------------------------ activations */

template <typename XB, int ELEMS>
__global__ void quantize_rows(const float *x, char *xq, int cols, int n)
{
    const int nb = cols / ELEMS, b = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (b >= nb || t >= n)
        return;
    XB *out = (XB *)(xq + (size_t)t * nb * sizeof(XB)) + b;
    const float *in = x + (size_t)t * cols + (size_t)b * ELEMS;
    if constexpr (ELEMS == 256)
        q8_K_quantize_block(in, out);
    else if constexpr (sizeof(XB) == sizeof(block_q8_1))
        q8_1_quantize_block(in, out);
    else
        q8_0_quantize_block(in, out);
}

/* x quantized to dot type dt into st->xq; returns the bytes of one row. */
size_t quantize_x(cuda_state *st, enum cm_type dt, const float *x, int cols, int n)
{
    dim3 g(blocks_for(cols / (dt == CM_TYPE_Q8_K ? 256 : 32), 64), (unsigned)n);
    switch (dt) {
    case CM_TYPE_Q8_K:
        quantize_rows<block_q8_K, 256><<<g, 64, 0, st->stream>>>(x, st->xq, cols, n);
        return (size_t)cols / 256 * sizeof(block_q8_K);
    case CM_TYPE_Q8_1:
        quantize_rows<block_q8_1, 32><<<g, 64, 0, st->stream>>>(x, st->xq, cols, n);
        return (size_t)cols / 32 * sizeof(block_q8_1);
    default:
        quantize_rows<block_q8_0, 32><<<g, 64, 0, st->stream>>>(x, st->xq, cols, n);
        return (size_t)cols / 32 * sizeof(block_q8_0);
    }
}

/* ------------------------------------------------------------ products */

struct mm_args {
    const char *w;      /* weight rows */
    size_t wrow;        /* bytes of one */
    const char *x;      /* activation rows (quantized, or floats) */
    size_t xrow;
    const float *bias;  /* or NULL */
    float *y;
    int rows, cols, n;  /* weight rows, columns, tokens */
};

/* Warp (threadIdx.y) takes weight row r, tokens t0 .. t0 + NT - 1. */
template <enum cm_type T, int NT>
__global__ void __launch_bounds__(32 * WARPS) mm_quant(mm_args a)
{
    using D = qdot<T>;
    const int r = blockIdx.x * WARPS + threadIdx.y, t0 = blockIdx.y * NT;
    if (r >= a.rows)
        return;
    const int nb = a.cols / D::ELEMS, nt = a.n - t0 < NT ? a.n - t0 : NT;
    const char *wr = a.w + (size_t)r * a.wrow;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    for (int i = threadIdx.x; i < nb * D::PARTS; i += 32) {
        const int b = i / D::PARTS, part = i % D::PARTS;
        const void *wb = wr + (size_t)b * sizeof(typename D::wblock);
        const char *xb = a.x + (size_t)t0 * a.xrow + (size_t)b * sizeof(typename D::xblock);
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < nt)
                acc[t] += D::dot_part(wb, xb + (size_t)t * a.xrow, part);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (threadIdx.x == 0 && t < nt)
            a.y[(size_t)(t0 + t) * a.rows + r] = s + (a.bias ? a.bias[r] : 0.0f);
    }
}

template <enum cm_type T>
__device__ float2 load2(const void *w, int i); /* elements i, i + 1 */

template <>
__device__ float2 load2<CM_TYPE_F32>(const void *w, int i)
{
    return ((const float2 *)w)[i / 2];
}

template <>
__device__ float2 load2<CM_TYPE_F16>(const void *w, int i)
{
    return __half22float2(((const __half2 *)w)[i / 2]);
}

template <>
__device__ float2 load2<CM_TYPE_BF16>(const void *w, int i)
{
    return __bfloat1622float2(((const __nv_bfloat162 *)w)[i / 2]);
}

template <enum cm_type T, int NT>
__global__ void __launch_bounds__(32 * WARPS) mm_float(mm_args a)
{
    const int r = blockIdx.x * WARPS + threadIdx.y, t0 = blockIdx.y * NT;
    if (r >= a.rows)
        return;
    const int nt = a.n - t0 < NT ? a.n - t0 : NT;
    const char *wr = a.w + (size_t)r * a.wrow;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    for (int i = 2 * threadIdx.x; i < a.cols; i += 64) {
        float2 wv = load2<T>(wr, i);
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < nt) {
                float2 xv = *(const float2 *)((const float *)(a.x + (size_t)(t0 + t) * a.xrow) + i);
                acc[t] += wv.x * xv.x + wv.y * xv.y;
            }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (threadIdx.x == 0 && t < nt)
            a.y[(size_t)(t0 + t) * a.rows + r] = s + (a.bias ? a.bias[r] : 0.0f);
    }
}

template <enum cm_type T, int NT>
void launch_nt(cudaStream_t s, const mm_args &a, bool quant)
{
    dim3 grid(blocks_for(a.rows, WARPS), blocks_for(a.n, NT)), block(32, WARPS);
    if constexpr (T == CM_TYPE_F32 || T == CM_TYPE_F16 || T == CM_TYPE_BF16)
        mm_float<T, NT><<<grid, block, 0, s>>>(a);
    else
        mm_quant<T, NT><<<grid, block, 0, s>>>(a);
    (void)quant;
}

/* Tokens per pass over a weight row: all of them up to 8. */
template <enum cm_type T>
void launch(cudaStream_t s, const mm_args &a)
{
    if (a.n == 1)
        launch_nt<T, 1>(s, a, true);
    else if (a.n == 2)
        launch_nt<T, 2>(s, a, true);
    else if (a.n <= 4)
        launch_nt<T, 4>(s, a, true);
    else
        launch_nt<T, 8>(s, a, true);
}

void launch_type(cudaStream_t s, enum cm_type t, const mm_args &a)
{
    switch (t) {
#define CM_MM_CASE(T) \
    case T:           \
        launch<T>(s, a); \
        break;
        CM_MM_CASE(CM_TYPE_F32) CM_MM_CASE(CM_TYPE_F16) CM_MM_CASE(CM_TYPE_BF16)
        CM_MM_CASE(CM_TYPE_Q4_0) CM_MM_CASE(CM_TYPE_Q4_1) CM_MM_CASE(CM_TYPE_Q5_0)
        CM_MM_CASE(CM_TYPE_Q5_1) CM_MM_CASE(CM_TYPE_Q8_0) CM_MM_CASE(CM_TYPE_Q8_1)
        CM_MM_CASE(CM_TYPE_Q2_K) CM_MM_CASE(CM_TYPE_Q3_K) CM_MM_CASE(CM_TYPE_Q4_K)
        CM_MM_CASE(CM_TYPE_Q5_K) CM_MM_CASE(CM_TYPE_Q6_K) CM_MM_CASE(CM_TYPE_Q8_K)
#undef CM_MM_CASE
    default:
        fprintf(stderr, "codemoe: cuda: no product for weights of type %d\n", (int)t);
        exit(1);
    }
}

bool is_float_type(enum cm_type t)
{
    return t == CM_TYPE_F32 || t == CM_TYPE_F16 || t == CM_TYPE_BF16;
}

} // namespace

size_t cuda_xq_bytes(const cm_hparams *hp, int n_batch)
{
    long c = hp->n_embd;
    long w[] = {hp->n_ff, hp->n_ff_exp, hp->n_ff_shexp, (long)hp->n_head * hp->head_dim_v};
    for (long v : w)
        c = v > c ? v : c;
    /* the largest dot-type row: q8_K's 292 bytes per 256 */
    return (size_t)n_batch * ((size_t)(c + 255) / 256 * sizeof(block_q8_K) + 64);
}

void cuda_matmul_into(cuda_state *st, const cm_tensor *w, const cm_tensor *b, const float *x,
                      int n, float *y)
{
    mm_args a;
    a.w = dev_ptr(w);
    a.wrow = cm_row_bytes(w->type, w->ne[0]);
    a.cols = (int)w->ne[0];
    a.rows = (int)w->ne[1];
    a.n = n;
    a.bias = present(b) ? (const float *)dev_ptr(b) : NULL;
    a.y = y;
    if (is_float_type(w->type)) {
        a.x = (const char *)x;
        a.xrow = (size_t)a.cols * sizeof(float);
    } else {
        a.xrow = quantize_x(st, cm_type_get(w->type)->dot_type, x, a.cols, n);
        a.x = st->xq;
    }
    launch_type(st->stream, w->type, a);
    cuda_check(cudaGetLastError(), "matmul");
}

void cuda_matmul(cm_backend *be, int nw, const cm_tensor *const *ws, const cm_tensor *const *bs,
                 const cm_tensor *x, cm_tensor *const *ys)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st))
        return;
    const int n = (int)x->ne[1];
    const float *xd = (const float *)dev_ptr(x);
    /* weights sharing a dot type share one quantization of x */
    enum cm_type done[4];
    int n_done = 0;
    for (int i = 0; i < nw; i++) {
        enum cm_type dt = cm_type_get(ws[i]->type)->dot_type;
        int seen = 0;
        for (int j = 0; j < n_done; j++)
            seen |= done[j] == dt;
        if (seen)
            continue;
        size_t xrow = 0;
        if (!is_float_type(ws[i]->type))
            xrow = quantize_x(st, dt, xd, (int)ws[i]->ne[0], n);
        for (int j = i; j < nw; j++) {
            if (cm_type_get(ws[j]->type)->dot_type != dt)
                continue;
            mm_args a;
            a.w = dev_ptr(ws[j]);
            a.wrow = cm_row_bytes(ws[j]->type, ws[j]->ne[0]);
            a.cols = (int)ws[j]->ne[0];
            a.rows = (int)ws[j]->ne[1];
            a.n = n;
            a.bias = bs && present(bs[j]) ? (const float *)dev_ptr(bs[j]) : NULL;
            a.y = (float *)dev_ptr(ys[j]);
            a.x = is_float_type(ws[j]->type) ? (const char *)xd : st->xq;
            a.xrow = is_float_type(ws[j]->type) ? (size_t)a.cols * sizeof(float) : xrow;
            launch_type(st->stream, ws[j]->type, a);
        }
        if (n_done < 4)
            done[n_done++] = dt;
    }
    cuda_check(cudaGetLastError(), "matmul");
}
