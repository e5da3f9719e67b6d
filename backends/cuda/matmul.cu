/* matmul.cu - products of activations with weights in device memory.
 *
 * As on the CPU, a quantized weight is multiplied with the activations
 * quantized to its dot type (q8_0, q8_1 or q8_K, quant/types.c): integer
 * block sums, exact, then the blocks' scales.  So results agree with the
 * reference backend to float rounding, and generation reads each weight
 * byte once: one warp per weight row, its lanes over the row's blocks,
 * several parts of a block per lane group (quant_dev.cuh), up to NT tokens
 * per pass over the row.  F32, F16 and BF16 weights dot with the float
 * activations.
 *
 * Generation (n <= DEC_N tokens) is bound by launches, not bandwidth, so
 * its products take one launch per weight type, not two per weight: the
 * weights sharing an input (q/k/v, gate/up) are one kernel whose blocks
 * cover all their rows, and each block quantizes x into shared memory
 * itself, with the same arithmetic as the separate quantization (so the
 * same bytes, the same results).  Larger batches quantize x once into
 * st->xq and launch a product per weight (tensor cores from
 * MMQ_MIN_TOKENS, mmq.cu). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/quant_dev.cuh"

namespace {

__device__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

bool is_float_type(enum cm_type t)
{
    return t == CM_TYPE_F32 || t == CM_TYPE_F16 || t == CM_TYPE_BF16;
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

/* The same quantizers, a block of the dot type by a group of G threads:
 * q8_0/q8_1 2 threads of 16 values, q8_K 16 threads of 16 (one bsums
 * group each), so 256 threads quantize 4096 values a round.  Each value
 * goes through the expressions of quant_dev.cuh's q8_*_quantize_block;
 * what crosses threads is a maximum (order-free: never a NaN, which the
 * reference skips too), q8_K's first element of largest magnitude (ties
 * go to the lower index, as its scan keeps the first) and integer sums.
 * So the bytes are those of quantize_rows.  Every lane of the warp calls
 * these (full-mask shuffles); !valid lanes hold zeros and store nothing. */
const int G32 = 2;

template <class XB>
__device__ void quant32_group(const float *x, int s, bool valid, XB *out)
{
    constexpr int PER = 32 / G32;
    constexpr bool Q81 = sizeof(XB) == sizeof(block_q8_1);
    float amax = 0.0f;
    for (int k = 0; k < PER; k++)
        if (fabsf(x[k]) > amax)
            amax = fabsf(x[k]);
    for (int o = 1; o < G32; o *= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, amax, o);
        amax = other > amax ? other : amax;
    }
    float d = qd_div(amax, 127.0f);
    const bool zero = qd_f32_to_f16(d) == 0;
    const float id = zero ? 0.0f : qd_div(1.0f, d);
    int sum = 0;
    for (int j = 0; j < PER; j += 4) {
        uint32_t w = 0;
        for (int k = 0; k < 4; k++) {
            const int q = zero ? 0 : (int)(int8_t)qd_rne(qd_mul(x[j + k], id));
            sum += q;
            w |= (uint32_t)(uint8_t)q << (8 * k);
        }
        if (valid)
            qd_st(out->qs + PER * s + j, w, Q81);
    }
    for (int o = 1; o < G32; o *= 2)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (!valid || s != 0)
        return;
    d = zero ? 0.0f : d;
    out->d = qd_f32_to_f16(d);
    if constexpr (Q81)
        out->s = qd_f32_to_f16(qd_mul((float)sum, d));
}

__device__ void quant256_group(const float *x, int s, bool valid, block_q8_K *out)
{
    float amax = 0.0f, max = 0.0f;
    for (int e = 0; e < 16; e++)
        if (fabsf(x[e]) > amax) {
            amax = fabsf(x[e]);
            max = x[e];
        }
    for (int o = 1; o < 16; o *= 2) {
        const float oa = __shfl_xor_sync(0xffffffffu, amax, o);
        const float om = __shfl_xor_sync(0xffffffffu, max, o);
        if (oa > amax || (oa == amax && (s & o))) { /* (s & o): the partner's come first */
            amax = oa;
            max = om;
        }
    }
    const float is = amax > 0 ? qd_div(-127.0f, max) : 0.0f;
    const bool zero = !qd_isfinite(is) || is == 0;
    int bs = 0;
    for (int j = 0; j < 16; j += 4) {
        uint32_t w = 0;
        for (int k = 0; k < 4; k++) {
            const float v = qd_mul(is, x[j + k]);
            int q = !(v > -128.0f) ? -128 : v >= 127.0f ? 127 : qd_rne(v);
            q = zero ? 0 : q;
            bs += q;
            w |= (uint32_t)(uint8_t)q << (8 * k);
        }
        if (valid)
            qd_st(out->qs + 16 * s + j, w, true);
    }
    if (!valid)
        return;
    out->bsums[s] = (int16_t)bs;
    if (s == 0)
        out->d = zero ? 0.0f : qd_div(1.0f, is);
}

/* Rows 0..n-1 of x (16-byte aligned, cols floats each) quantized to XB
 * into xs (shared memory for a generation product, st->xq for a batch),
 * xrow bytes apart, by all the threads of the block. */
template <class XB>
__device__ void quantize_by_block(const float *x, int cols, int n, char *xs, size_t xrow)
{
    constexpr bool K = sizeof(XB) == sizeof(block_q8_K);
    constexpr int E = K ? 256 : 32, G = K ? 16 : G32, PER = E / G;
    const int nb = cols / E, tasks = n * nb * G;
    for (int k0 = 0; k0 < tasks; k0 += blockDim.x) { /* the same trips for all */
        const int k = k0 + threadIdx.x, s = k % G, b = k / G % nb, t = k / G / nb;
        const bool valid = k < tasks;
        const float4 *src = (const float4 *)(x + (size_t)t * cols + (size_t)b * E + s * PER);
        float v[PER];
#pragma unroll
        for (int i = 0; i < PER / 4; i++) {
            const float4 f = valid ? src[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
        }
        XB *out = (XB *)(xs + (size_t)t * xrow) + b;
        if constexpr (K)
            quant256_group(v, s, valid, out);
        else
            quant32_group<XB>(v, s, valid, out);
    }
}

/* Rows t0 .. t0 + rpb - 1 of x quantized by one block, its threads in
 * the group quantizers' groups: reads coalesced, the same bytes. */
template <class XB>
__global__ void quantize_rows_grouped(const float *x, char *xq, int cols, int n, int rpb)
{
    const int t0 = blockIdx.x * rpb, m = n - t0 < rpb ? n - t0 : rpb;
    const size_t xrow = (size_t)cols / (sizeof(XB) == sizeof(block_q8_K) ? 256 : 32) * sizeof(XB);
    quantize_by_block<XB>(x + (size_t)t0 * cols, cols, m, xq + (size_t)t0 * xrow, xrow);
}

template <class XB>
void launch_quantize(cuda_state *st, const float *x, int cols, int n)
{
    constexpr bool K = sizeof(XB) == sizeof(block_q8_K);
    constexpr int E = K ? 256 : 32, THREADS = 256;
    if ((uintptr_t)x % 16 == 0) { /* (float4 reads) */
        const int tasks = cols / E * (K ? 16 : G32);
        const int rpb = tasks < THREADS ? THREADS / tasks : 1;
        quantize_rows_grouped<XB><<<blocks_for(n, rpb), THREADS, 0, st->stream>>>(x, st->xq, cols, n,
                                                                                    rpb);
        return;
    }
    dim3 g(blocks_for(cols / E, 64), (unsigned)n);
    quantize_rows<XB, E><<<g, 64, 0, st->stream>>>(x, st->xq, cols, n);
}

/* x quantized to dot type dt into st->xq; returns the bytes of one row. */
size_t quantize_x(cuda_state *st, enum cm_type dt, const float *x, int cols, int n)
{
    switch (dt) {
    case CM_TYPE_Q8_K:
        launch_quantize<block_q8_K>(st, x, cols, n);
        return (size_t)cols / 256 * sizeof(block_q8_K);
    case CM_TYPE_Q8_1:
        launch_quantize<block_q8_1>(st, x, cols, n);
        return (size_t)cols / 32 * sizeof(block_q8_1);
    default:
        launch_quantize<block_q8_0>(st, x, cols, n);
        return (size_t)cols / 32 * sizeof(block_q8_0);
    }
}

/* ------------------------------------------------------------ row dots */

/* acc[t] = this lane's share of weight row wr . x row t (t < nt), the
 * rows of x quantized to T's dot type, xrow bytes apart. */
template <enum cm_type T, int NT>
__device__ void row_quant(const char *wr, const char *x, size_t xrow, int cols, int nt, int lane,
                          float *acc)
{
    using D = qdot<T>;
    const int nb = cols / D::ELEMS;
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    for (int i = lane; i < nb * D::PARTS; i += 32) {
        const int b = i / D::PARTS, part = i % D::PARTS;
        const void *wb = wr + (size_t)b * sizeof(typename D::wblock);
        const char *xb = x + (size_t)b * sizeof(typename D::xblock);
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < nt)
                acc[t] += D::dot_part(wb, xb + (size_t)t * xrow, part);
    }
}

/* elements i, i + 1 of a float row */
template <enum cm_type T>
__device__ float2 load2(const void *w, int i)
{
    if constexpr (T == CM_TYPE_F32)
        return ((const float2 *)w)[i / 2];
    else if constexpr (T == CM_TYPE_F16)
        return __half22float2(((const __half2 *)w)[i / 2]);
    else
        return __bfloat1622float2(((const __nv_bfloat162 *)w)[i / 2]);
}

/* The same for float weights and float rows of x. */
template <enum cm_type T, int NT>
__device__ void row_float(const char *wr, const char *x, size_t xrow, int cols, int nt, int lane,
                          float *acc)
{
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    for (int i = 2 * lane; i < cols; i += 64) {
        float2 wv = load2<T>(wr, i);
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < nt) {
                float2 xv = *(const float2 *)((const float *)(x + (size_t)t * xrow) + i);
                acc[t] += wv.x * xv.x + wv.y * xv.y;
            }
    }
}

/* y[t][r] = the warp's sums (+ bias), y rows `rows` apart. */
template <int NT>
__device__ void store_row(float *y, const float *bias, int rows, int r, int nt, int lane,
                          float *acc)
{
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t < nt)
            y[(size_t)t * rows + r] = s + (bias ? bias[r] : 0.0f);
    }
}

/* ------------------------------------------------------------ products */

const int MM_WARPS = 8, MM_THREADS = 32 * MM_WARPS;
const int MM_BLOCKS_PER_SM = 4;  /* a wave: each multiprocessor quantizes x ~4 times */
const int DEC_N = 8;             /* tokens per pass over a row; the most a block quantizes */
const long DEC_QUANT_MAX = 8192; /* n * cols a block quantizes: 2 rounds (a few hundred ns
                                  * each), at most 9.3 KB of q8_K */
const int MAX_PARTS = 3;

/* One weight of a multi-weight product. */
struct mm_part {
    const char *w;
    size_t wrow;
    const float *bias; /* or NULL */
    float *y;          /* n rows of `rows` */
    int rows;
};

/* Weights sharing the input x, the first na of one type, the others of
 * another with the same dot type (or the same): their rows in order make
 * one matrix of `total` rows, rpw of them per warp. */
struct mm_dec_args {
    mm_part p[MAX_PARTS];
    int np, na, total;
    const float *x; /* n rows of cols floats, 16-byte aligned (quantized by each block) */
    bool swiglu;    /* y of part 0 := swiglu(x p0^T, x p1^T): parts 0 and 1 row by row (gate, up) */
    const char *xq; /* or x already quantized (batches); NULL */
    size_t xrow;    /* bytes of a row as dotted: quantized, or floats */
    int cols, n, rpw;
};

/* The weight holding row *r of the whole (its index in *i), *r made its
 * own row number.  (Constant indices: a dynamic one would copy the
 * arguments to local memory.) */
__device__ mm_part part_of(const mm_dec_args &a, int *r, int *i)
{
    *i = 0;
    if (a.np == 1 || *r < a.p[0].rows)
        return a.p[0];
    *r -= a.p[0].rows;
    *i = 1;
    if (a.np == 2 || *r < a.p[1].rows)
        return a.p[1];
    *r -= a.p[1].rows;
    *i = 2;
    return a.p[2];
}

/* Starts the bytes of a row towards L1, a 128-byte line a lane. */
__device__ void prefetch_bytes(const char *row, size_t bytes, int lane)
{
    const uintptr_t beg = (uintptr_t)row, end = beg + bytes;
    for (uintptr_t at = (beg & ~(uintptr_t)127) + 128 * (uintptr_t)lane; at < end; at += 32 * 128)
        asm volatile("prefetch.global.L1 [%0];" ::"l"(at));
}

/* Starts row g's bytes towards L1, so they come while the warp does
 * something else (quantizes x, sums the rows before); with swiglu the up
 * row too, which the warp reads right after the gate row. */
__device__ void prefetch_row(const mm_dec_args &a, int g, int lane)
{
    if (g >= a.total)
        return;
    int r = g, i;
    const mm_part p = part_of(a, &r, &i);
    prefetch_bytes(p.w + (size_t)r * p.wrow, p.wrow, lane);
    if (a.swiglu)
        prefetch_bytes(a.p[1].w + (size_t)r * a.p[1].wrow, a.p[1].wrow, lane);
}

/* Block (b, c): tokens c * NT .. c * NT + NT - 1 times rows b * MM_WARPS *
 * rpw + warp + k * MM_WARPS (k < rpw) of the whole, neighbouring warps on
 * neighbouring rows; weights of type T, those past the first na of type
 * T2 (the same dot type). */
template <enum cm_type T, enum cm_type T2, int NT>
__global__ void __launch_bounds__(MM_THREADS) mm_rows(mm_dec_args a)
{
    constexpr bool QUANT = !(T == CM_TYPE_F32 || T == CM_TYPE_F16 || T == CM_TYPE_BF16);
    extern __shared__ __align__(16) char xs[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t0 = blockIdx.y * NT;
    const int nt = a.n - t0 < NT ? a.n - t0 : NT;
    int g = blockIdx.x * MM_WARPS * a.rpw + warp;
    prefetch_row(a, g, lane); /* (weights: before the wait) */
    if (a.rpw > 1)
        prefetch_row(a, g + MM_WARPS, lane);
    wait_prior_grid();
    start_next_grid();
    const char *x = a.xq ? a.xq + (size_t)t0 * a.xrow
                         : QUANT ? xs : (const char *)a.x + (size_t)t0 * a.xrow;
    if constexpr (QUANT)
        if (!a.xq) { /* (then n <= NT: one chunk of tokens) */
            quantize_by_block<typename qdot<T>::xblock>(a.x, a.cols, a.n, xs, a.xrow);
            __syncthreads();
        }
    for (int k = 0; k < a.rpw && g < a.total; k++, g += MM_WARPS) {
        if (k + 2 < a.rpw) /* two rows ahead: enough bytes in flight for HBM */
            prefetch_row(a, g + 2 * MM_WARPS, lane);
        int r = g, i;
        const mm_part p = part_of(a, &r, &i);
        const char *wr = p.w + (size_t)r * p.wrow;
        float acc[NT];
        if constexpr (T == T2 && QUANT)
            if (a.swiglu) { /* gate row r, then up row r: one output */
                float up[NT];
                row_quant<T, NT>(wr, x, a.xrow, a.cols, nt, lane, acc);
                row_quant<T, NT>(a.p[1].w + (size_t)r * a.p[1].wrow, x, a.xrow, a.cols, nt, lane, up);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float gs = warp_sum(acc[t]), us = warp_sum(up[t]);
                    if (lane == 0 && t < nt)
                        p.y[(size_t)(t0 + t) * p.rows + r] = swiglu_value(gs, us);
                }
                continue;
            }
        if constexpr (T != T2) { /* (a pair: both quantized, one dot type) */
            static_assert(sizeof(typename qdot<T>::xblock) == sizeof(typename qdot<T2>::xblock),
                          "a pair shares its dot type");
            if (i < a.na)
                row_quant<T, NT>(wr, x, a.xrow, a.cols, nt, lane, acc);
            else
                row_quant<T2, NT>(wr, x, a.xrow, a.cols, nt, lane, acc);
        } else if constexpr (QUANT)
            row_quant<T, NT>(wr, x, a.xrow, a.cols, nt, lane, acc);
        else
            row_float<T, NT>(wr, x, a.xrow, a.cols, nt, lane, acc);
        store_row<NT>(p.y + (size_t)t0 * p.rows, p.bias, p.rows, r, nt, lane, acc);
    }
}

/* Tokens per pass over a weight row: all of them up to 8. */
template <enum cm_type T, enum cm_type T2 = T>
void launch_rows(const cuda_state *st, const mm_dec_args &a, dim3 grid, size_t smem)
{
    if (a.n == 1)
        launch_pdl(st, mm_rows<T, T2, 1>, grid, MM_THREADS, smem, a);
    else if (a.n == 2)
        launch_pdl(st, mm_rows<T, T2, 2>, grid, MM_THREADS, smem, a);
    else if (a.n <= 4)
        launch_pdl(st, mm_rows<T, T2, 4>, grid, MM_THREADS, smem, a);
    else
        launch_pdl(st, mm_rows<T, T2, DEC_N>, grid, MM_THREADS, smem, a);
}

#define CM_MM_TYPES(X)                                                                        \
    X(CM_TYPE_F32) X(CM_TYPE_F16) X(CM_TYPE_BF16) X(CM_TYPE_Q4_0) X(CM_TYPE_Q4_1)             \
    X(CM_TYPE_Q5_0) X(CM_TYPE_Q5_1) X(CM_TYPE_Q8_0) X(CM_TYPE_Q8_1) X(CM_TYPE_Q2_K)           \
    X(CM_TYPE_Q3_K) X(CM_TYPE_Q4_K) X(CM_TYPE_Q5_K) X(CM_TYPE_Q6_K) X(CM_TYPE_Q8_K)

/* The pairs of types one launch takes: those llama.cpp's mixes give
 * weights sharing an input (8-expert models' k and v in Q8_0; Q4_K_M's
 * and Q5_K_M's v in Q6_K). */
#define CM_MM_PAIRS(X)                                                                        \
    X(CM_TYPE_Q4_0, CM_TYPE_Q8_0) X(CM_TYPE_Q5_0, CM_TYPE_Q8_0) X(CM_TYPE_Q4_K, CM_TYPE_Q6_K) \
    X(CM_TYPE_Q5_K, CM_TYPE_Q6_K)

bool pair_supported(enum cm_type t, enum cm_type t2)
{
#define CM_PAIR_IS(A, B) if (t == A && t2 == B) return true;
    CM_MM_PAIRS(CM_PAIR_IS)
#undef CM_PAIR_IS
    return false;
}

void launch_types(const cuda_state *st, enum cm_type t, enum cm_type t2, const mm_dec_args &a,
                  dim3 grid, size_t smem)
{
#define CM_PAIR_CASE(A, B)                      \
    if (t == A && t2 == B) {                    \
        launch_rows<A, B>(st, a, grid, smem);   \
        return;                                 \
    }
    CM_MM_PAIRS(CM_PAIR_CASE)
#undef CM_PAIR_CASE
    switch (t) {
#define CM_MM_CASE(T)                       \
    case T:                                 \
        launch_rows<T>(st, a, grid, smem);  \
        break;
        CM_MM_TYPES(CM_MM_CASE)
#undef CM_MM_CASE
    default:
        fprintf(stderr, "codemoe: cuda: no product for weights of type %d\n", (int)t);
        exit(1);
    }
}

/* One launch for the whole of a: a warp per row while that fills a wave,
 * more rows per warp beyond, so that x is quantized by a wave's blocks,
 * not by thousands (and read from L2 a few times per multiprocessor). */
void launch_mm(cuda_state *st, enum cm_type t, enum cm_type t2, mm_dec_args &a)
{
    const unsigned chunks = blocks_for(a.n, DEC_N);
    const long wave = (long)MM_WARPS * MM_BLOCKS_PER_SM * (st->sm_count > 0 ? st->sm_count : 1);
    a.rpw = (int)(((long)a.total * chunks + wave - 1) / wave);
    const dim3 grid(blocks_for(a.total, MM_WARPS * a.rpw), chunks);
    const size_t smem = a.xq || is_float_type(t) ? 0 : a.xrow * a.n;
    launch_types(st, t, t2, a, grid, smem);
}

/* Batches: x already quantized (st->xq, quantize_x) or floats; one launch
 * per weight, tensor cores for prompts where mmq.cu has them. */
void launch_type(cuda_state *st, enum cm_type t, const mm_args &a)
{
    if (a.n >= MMQ_MIN_TOKENS && cuda_mmq(st, t, &a, 1)) /* prompts: tensor cores */
        return;
    mm_dec_args d;
    d.p[0] = {a.w, a.wrow, a.bias, a.y, a.rows};
    d.p[1] = d.p[2] = d.p[0];
    d.np = d.na = 1;
    d.total = a.rows;
    d.x = is_float_type(t) ? (const float *)a.x : NULL;
    d.swiglu = false;
    d.xq = is_float_type(t) ? NULL : a.x;
    d.xrow = a.xrow;
    d.cols = a.cols;
    d.n = a.n;
    launch_mm(st, t, t, d);
}

/* Generation: all np weights (cols columns; the first na of type t, the
 * others of t2, t itself or a supported pair) times x in one launch, each
 * block quantizing x; false (nothing done) where the batch is too large
 * for that. */
bool launch_dec(cuda_state *st, enum cm_type t, enum cm_type t2, const mm_part *parts, int np,
                int na, const float *x, int cols, int n, bool swiglu = false)
{
    const bool quant = !is_float_type(t);
    if ((t != t2 && !pair_supported(t, t2)) || n > DEC_N || np > MAX_PARTS ||
        (quant && (long)n * cols > DEC_QUANT_MAX) || (uintptr_t)x % 16)
        return false;
    mm_dec_args a;
    a.np = np;
    a.na = na;
    a.total = 0;
    for (int i = 0; i < MAX_PARTS; i++) {
        a.p[i] = parts[i < np ? i : 0];
        a.total += i < np ? parts[i].rows : 0;
    }
    if (swiglu)
        a.total = parts[0].rows; /* (each row of the gate with its row of up) */
    a.x = x;
    a.swiglu = swiglu;
    a.xq = NULL;
    a.xrow = quant ? cm_row_bytes(cm_type_get(t)->dot_type, cols) : (size_t)cols * sizeof(float);
    a.cols = cols;
    a.n = n;
    launch_mm(st, t, t2, a);
    return true;
}

mm_part part_for(const cm_tensor *w, const cm_tensor *b, float *y)
{
    mm_part p;
    p.w = dev_ptr(w);
    p.wrow = cm_row_bytes(w->type, w->ne[0]);
    p.bias = present(b) ? (const float *)dev_ptr(b) : NULL;
    p.y = y;
    p.rows = (int)w->ne[1];
    return p;
}

/* Weight p (type t) as a batch product's arguments: x quantized in st->xq
 * (xrow bytes a row), or floats. */
mm_args batch_args(cuda_state *st, enum cm_type t, const mm_part &p, int cols, const float *xd,
                   size_t xrow, int n)
{
    mm_args a;
    a.w = p.w;
    a.wrow = p.wrow;
    a.cols = cols;
    a.rows = p.rows;
    a.n = n;
    a.bias = p.bias;
    a.y = p.y;
    a.x = is_float_type(t) ? (const char *)xd : st->xq;
    a.xrow = is_float_type(t) ? (size_t)cols * sizeof(float) : xrow;
    return a;
}

/* Weights of type t sharing x: one tensor-core launch for prompts where
 * mmq.cu takes them, else a launch each. */
void launch_batch(cuda_state *st, enum cm_type t, const mm_args *parts, int np)
{
    if (st->prof) {
        char name[64];
        int rows = 0;
        for (int i = 0; i < np; i++)
            rows += parts[i].rows;
        snprintf(name, sizeof name, "product %s %dx%d%s, %d tokens", cm_type_get(t)->name, rows,
                 parts[0].cols, np > 1 ? " (fused)" : "", parts[0].n);
        cuda_profile_mark(st, name);
    }
    if (parts[0].n >= MMQ_MIN_TOKENS && cuda_mmq(st, t, parts, np))
        return;
    for (int i = 0; i < np; i++)
        launch_type(st, t, parts[i]);
}

/* The batch path for the weights of ws not done (done NULL: all): x
 * quantized once per dot type, then a launch per weight type. */
void matmul_batch(cuda_state *st, int nw, const cm_tensor *const *ws, const cm_tensor *const *bs,
                  const float *xd, int n, cm_tensor *const *ys, const bool *done)
{
    enum cm_type quantized[4];
    int n_quantized = 0;
    bool launched[16] = {false};
    for (int i = 0; i < nw; i++) {
        if (done && done[i])
            continue;
        enum cm_type dt = cm_type_get(ws[i]->type)->dot_type;
        int seen = 0;
        for (int j = 0; j < n_quantized; j++)
            seen |= quantized[j] == dt;
        if (seen)
            continue;
        size_t xrow = 0;
        if (!is_float_type(ws[i]->type))
            xrow = quantize_x(st, dt, xd, (int)ws[i]->ne[0], n);
        for (int j = i; j < nw; j++) {
            if ((done && done[j]) || cm_type_get(ws[j]->type)->dot_type != dt ||
                (j < 16 && launched[j]))
                continue;
            mm_args parts[MMQ_PARTS];
            int np = 0;
            for (int k = j; k < nw && k < 16 && np < MMQ_PARTS; k++)
                if (!(done && done[k]) && !launched[k] && ws[k]->type == ws[j]->type) {
                    const mm_part p = part_for(ws[k], bs ? bs[k] : NULL, (float *)dev_ptr(ys[k]));
                    parts[np++] = batch_args(st, ws[k]->type, p, (int)ws[k]->ne[0], xd, xrow, n);
                    launched[k] = true;
                }
            if (np == 0) { /* (beyond the first 16: one at a time) */
                const mm_part p = part_for(ws[j], bs ? bs[j] : NULL, (float *)dev_ptr(ys[j]));
                parts[np++] = batch_args(st, ws[j]->type, p, (int)ws[j]->ne[0], xd, xrow, n);
            }
            launch_batch(st, ws[j]->type, parts, np);
        }
        if (n_quantized < 4)
            quantized[n_quantized++] = dt;
    }
}

} // namespace

bool cuda_pdl_available(void)
{
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, mm_rows<CM_TYPE_Q8_0, CM_TYPE_Q8_0, 1>) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return fa.ptxVersion >= 90;
}

size_t cuda_xq_bytes(const cm_hparams *hp, int n_batch)
{
    long c = hp->n_embd;
    long w[] = {hp->n_ff, hp->n_ff_exp, hp->n_ff_shexp, (long)hp->n_head * hp->head_dim_v};
    for (long v : w)
        c = v > c ? v : c;
    /* the largest dot-type row: q8_K's 292 bytes per 256; attention's
     * split sums use the same scratch (ops never overlap) */
    const size_t rows = (size_t)n_batch * ((size_t)(c + 255) / 256 * sizeof(block_q8_K) + 64);
    const size_t attn = cuda_attention_scratch(hp);
    return rows > attn ? rows : attn;
}

void cuda_matmul_into(cuda_state *st, const cm_tensor *w, const cm_tensor *b, const float *x,
                      int n, float *y)
{
    const mm_part p = part_for(w, b, y);
    const int cols = (int)w->ne[0];
    if (!launch_dec(st, w->type, w->type, &p, 1, 1, x, cols, n)) {
        const enum cm_type dt = cm_type_get(w->type)->dot_type;
        const size_t xrow = is_float_type(w->type) ? 0 : quantize_x(st, dt, x, cols, n);
        const mm_args a = batch_args(st, w->type, p, cols, x, xrow, n);
        launch_batch(st, w->type, &a, 1);
    }
    cuda_check(cudaGetLastError(), "matmul");
}

/* Weights of two types (a supported pair, MAX_PARTS at most) in one
 * launch, those of the pair's first type first; false if not such. */
bool matmul_pair(cuda_state *st, int nw, const cm_tensor *const *ws, const cm_tensor *const *bs,
                 const float *xd, int n, cm_tensor *const *ys)
{
    if (nw < 2 || nw > MAX_PARTS)
        return false;
    enum cm_type t = ws[0]->type, t2 = t;
    for (int i = 1; i < nw; i++)
        if (ws[i]->type != t)
            t2 = ws[i]->type;
    if (t2 == t || !pair_supported(t, t2)) {
        enum cm_type u = t;
        t = t2, t2 = u;
    }
    if (t2 == t) /* one type: cuda_matmul's own case */
        return false;
    mm_part parts[MAX_PARTS];
    int np = 0, na = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < nw && np < MAX_PARTS; i++)
            if (ws[i]->type == (pass ? t2 : t)) {
                parts[np++] = part_for(ws[i], bs ? bs[i] : NULL, (float *)dev_ptr(ys[i]));
                na += !pass;
            }
    return np == nw && launch_dec(st, t, t2, parts, np, na, xd, (int)ws[0]->ne[0], n);
}

/* Generation: two weights of one type, as many rows, no bias,
 * x one the generation kernels take: held back (st->pend_gate_up) in case
 * they are a gate and an up whose swiglu comes next (ops.cu), so one
 * launch does both products and the swiglu. */
static bool hold_gate_up(cuda_state *st, int nw, const cm_tensor *const *ws, const cm_tensor *const *bs,
                  const float *xd, int n, cm_tensor *const *ys)
{
    const enum cm_type t = ws[0]->type;
    if (nw != 2 || n > DEC_N || ws[1]->type != t || ws[0]->ne[1] != ws[1]->ne[1] ||
        ws[0]->ne[0] != ws[1]->ne[0] || (bs && (present(bs[0]) || present(bs[1]))) ||
        is_float_type(t) || (long)n * ws[0]->ne[0] > DEC_QUANT_MAX || (uintptr_t)xd % 16)
        return false;
    auto &g = st->pend_gate_up;
    g.type = t;
    g.x = xd;
    g.cols = (int)ws[0]->ne[0];
    g.n = n;
    for (int i = 0; i < 2; i++) {
        const mm_part p = part_for(ws[i], NULL, (float *)dev_ptr(ys[i]));
        g.w[i] = p.w, g.y[i] = p.y;
        g.wrow = p.wrow;
        g.rows = p.rows;
    }
    g.held = true;
    return true;
}

/* The held gate and up: with their swiglu (y of the gate := swiglu of
 * both, the up's y untouched) or as plain products. */
void cuda_gate_up_launch(cuda_state *st, bool with_swiglu)
{
    auto &g = st->pend_gate_up;
    g.held = false;
    mm_part parts[2];
    for (int i = 0; i < 2; i++)
        parts[i] = {g.w[i], g.wrow, NULL, g.y[i], g.rows};
    if (!launch_dec(st, g.type, g.type, parts, 2, 2, g.x, g.cols, g.n, with_swiglu)) {
        fprintf(stderr, "codemoe: cuda: a held product was refused\n");
        exit(1);
    }
    cuda_check(cudaGetLastError(), "matmul");
}

/* Generation: one launch for all the weights where their types allow,
 * else one per type (up to MAX_PARTS weights each); whatever that cannot
 * take goes the batch way. */
void cuda_matmul(cm_backend *be, int nw, const cm_tensor *const *ws, const cm_tensor *const *bs,
                 const cm_tensor *x, cm_tensor *const *ys)
{
    cuda_state *st = cuda_st(be);
    if (skip_op(st))
        return;
    const int n = (int)x->ne[1];
    const float *xd = (const float *)dev_ptr(x);
    if (hold_gate_up(st, nw, ws, bs, xd, n, ys))
        return;
    if (matmul_pair(st, nw, ws, bs, xd, n, ys)) {
        cuda_check(cudaGetLastError(), "matmul");
        return;
    }
    bool done[8] = {false};
    for (int i = 0; i < nw && nw <= 8; i++) {
        if (done[i])
            continue;
        mm_part parts[MAX_PARTS];
        int idx[MAX_PARTS], np = 0;
        for (int j = i; j < nw && np < MAX_PARTS; j++)
            if (!done[j] && ws[j]->type == ws[i]->type) {
                idx[np] = j;
                parts[np++] = part_for(ws[j], bs ? bs[j] : NULL, (float *)dev_ptr(ys[j]));
            }
        if (launch_dec(st, ws[i]->type, ws[i]->type, parts, np, np, xd, (int)ws[i]->ne[0], n))
            for (int k = 0; k < np; k++)
                done[idx[k]] = true;
    }
    matmul_batch(st, nw, ws, bs, xd, n, ys, nw <= 8 ? done : NULL);
    cuda_check(cudaGetLastError(), "matmul");
}
