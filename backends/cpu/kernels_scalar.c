/* kernels_scalar.c - the portable table: the quant/ scalar references.
 * It also defines cm_kern, statically initialized to these entries so that
 * matmuls work (slowly) even if cm_cpu_init() was never called.
 *
 * The axpy references (attention's weighted sum of V rows) live here, as
 * they have no use outside the backend: out[i] += a * value(row[i]), the
 * value rounded to float first, as the dequantizers produce it. */
#include "backends/cpu/kernels.h"

#include <float.h>
#include <math.h>

#include "quant/blocks.h"
#include "quant/ref.h"

static void axpy_f32(int64_t n, float a, const void *row, float *out)
{
    const float *v = row;
    for (int64_t i = 0; i < n; i++)
        out[i] += a * v[i];
}

static void axpy_f16(int64_t n, float a, const void *row, float *out)
{
    const uint16_t *v = row;
    for (int64_t i = 0; i < n; i++)
        out[i] += a * cm_f16_to_f32(v[i]);
}

static void axpy_bf16(int64_t n, float a, const void *row, float *out)
{
    const uint16_t *v = row;
    for (int64_t i = 0; i < n; i++)
        out[i] += a * cm_bf16_to_f32(v[i]);
}

static void axpy_q8_0(int64_t n, float a, const void *row, float *out)
{
    const block_q8_0 *b = row;
    for (int64_t k = 0; k < n / QK8_0; k++, out += QK8_0) {
        float d = cm_f16_to_f32(b[k].d);
        for (int j = 0; j < QK8_0; j++)
            out[j] += a * ((float)b[k].qs[j] * d);
    }
}

/* The reference: expf from libm, the sum in double (as ggml's): a float
 * sum in order drifts by more than the 1e-6 the vector kernels are held to
 * over rows of hundreds of positions. */
static void softmax_ref(float *x, int64_t n, float scale, int round_f16)
{
    float mx = -INFINITY;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] *= scale;
        mx = x[i] > mx ? x[i] : mx;
    }
    for (int64_t i = 0; i < n; i++)
        sum += x[i] = expf(x[i] - mx);
    for (int64_t i = 0; i < n; i++) {
        x[i] = (float)(x[i] / sum);
        if (round_f16)
            x[i] = cm_f16_to_f32(cm_f32_to_f16(x[i]));
    }
}

static void swiglu_ref(float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

static void rmsnorm_ref(float *out, const float *x, const float *w, int64_t n, float eps)
{
    /* double: long rows of large activations lose bits in float; four
     * partial sums so the additions overlap instead of forming one chain */
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++)
        s0 += (double)x[i] * x[i];
    double ss = (s0 + s1) + (s2 + s3);
    float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

static void add_ref(float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* In passes a compiler vectorizes (16 independent lanes; the table of an
 * ISA without its own arg-max runs this): the largest value and whether
 * any is NaN or infinite (x - x is NaN exactly then), then the first block
 * of 16 holding the largest. */
static int64_t argmax_ref(const float *x, int64_t n)
{
    enum { LANES = 16 };
    float lane_max[LANES], lane_bad[LANES];
    for (int j = 0; j < LANES; j++)
        lane_max[j] = -FLT_MAX, lane_bad[j] = 0.0f;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            float v = x[i + j];
            lane_max[j] = v > lane_max[j] ? v : lane_max[j];
            lane_bad[j] += v - v;
        }
    float m = -FLT_MAX, bad = 0.0f;
    for (int j = 0; j < LANES; j++)
        m = lane_max[j] > m ? lane_max[j] : m, bad += lane_bad[j];
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m, bad += x[i] - x[i];
    if (bad != 0.0f || n <= 0)
        return -1;
    for (i = 0; i + LANES <= n; i += LANES) {
        int hit = 0;
        for (int j = 0; j < LANES; j++)
            hit |= x[i + j] == m;
        if (hit)
            break;
    }
    for (; i < n; i++)
        if (x[i] == m)
            return i;
    return -1;
}

static double exp_sum_ref(const float *x, int64_t n, float shift)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += expf(x[i] - shift);
    return s;
}

/* libm's float exponentials (within an ulp) summed in double: the
 * reference the vector kernels' lane sums are held to. */
static void kld_sums_ref(const float *x, const void *b, int b_f16, int64_t n, float mx, float mb,
                         double out[4])
{
    double sm = 0, s0 = 0, s1 = 0;
    float umax = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        float bi = b_f16 ? cm_f16_to_f32(((const uint16_t *)b)[i]) : ((const float *)b)[i];
        float u = bi - mb, v = x[i] - mx, e = expf(u);
        sm += expf(v);
        s0 += e;
        s1 += (double)e * ((double)u - v);
        umax = u > umax ? u : umax;
    }
    out[0] = sm, out[1] = s0, out[2] = s1, out[3] = umax;
}

#define DOT(T, t) [CM_TYPE_##T] = cm_dot_##t
#define QNT(T, t) [CM_TYPE_##T] = cm_quant_##t
#define DEQ(T, t) [CM_TYPE_##T] = cm_dequant_##t

#define SCALAR_TABLE                                                          \
    {                                                                         \
        .isa = "scalar",                                                      \
        .vec_dot = {DOT(F32, f32), DOT(F16, f16), DOT(BF16, bf16),           \
                    DOT(Q4_0, q4_0), DOT(Q4_1, q4_1), DOT(Q5_0, q5_0),       \
                    DOT(Q5_1, q5_1), DOT(Q8_0, q8_0), DOT(Q8_1, q8_1),       \
                    DOT(Q2_K, q2_K), DOT(Q3_K, q3_K), DOT(Q4_K, q4_K),       \
                    DOT(Q5_K, q5_K), DOT(Q6_K, q6_K), DOT(Q8_K, q8_K)},      \
        .quantize = {QNT(F32, f32), QNT(F16, f16), QNT(Q8_0, q8_0),        \
                     QNT(Q8_1, q8_1),                                         \
                     QNT(Q8_K, q8_K)},                                        \
        .axpy = {[CM_TYPE_F32] = axpy_f32, [CM_TYPE_F16] = axpy_f16,         \
                 [CM_TYPE_BF16] = axpy_bf16, [CM_TYPE_Q8_0] = axpy_q8_0},     \
        .to_float = {DEQ(F32, f32), DEQ(F16, f16), DEQ(BF16, bf16),          \
                     DEQ(Q4_0, q4_0), DEQ(Q4_1, q4_1), DEQ(Q5_0, q5_0),      \
                     DEQ(Q5_1, q5_1), DEQ(Q8_0, q8_0), DEQ(Q8_1, q8_1),      \
                     DEQ(Q2_K, q2_K), DEQ(Q3_K, q3_K), DEQ(Q4_K, q4_K),      \
                     DEQ(Q5_K, q5_K), DEQ(Q6_K, q6_K), DEQ(Q8_K, q8_K)},     \
        .gemm = {NULL},                                                       \
        .softmax = softmax_ref,                                               \
        .swiglu = swiglu_ref,                                                 \
        .exp_sum = exp_sum_ref,                                               \
        .kld_sums = kld_sums_ref,                                             \
        .rmsnorm = rmsnorm_ref,                                               \
        .add = add_ref,                                                       \
        .argmax = argmax_ref,                                                 \
    }

struct cm_kernels cm_kern = SCALAR_TABLE;

void cm_kernels_scalar(struct cm_kernels *k)
{
    static const struct cm_kernels tab = SCALAR_TABLE;
    *k = tab;
}
