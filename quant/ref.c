/* ref.c - type-dispatched entry points to the scalar references. */
#include "quant/ref.h"

typedef struct {
    void (*dequant)(const void *, float *, int64_t);
    void (*quant)(const float *, void *, int64_t);
    float (*dot)(int64_t, const void *, const void *);
} ref_fns;

static const ref_fns *ref_get(enum cm_type type)
{
#define E(T, t) [CM_TYPE_##T] = {cm_dequant_##t, cm_quant_##t, cm_dot_##t}
    static const ref_fns tab[CM_TYPE_COUNT] = {
        E(F32, f32),   E(F16, f16),   E(BF16, bf16), E(Q4_0, q4_0),
        E(Q4_1, q4_1), E(Q5_0, q5_0), E(Q5_1, q5_1), E(Q8_0, q8_0),
        E(Q8_1, q8_1), E(Q2_K, q2_K), E(Q3_K, q3_K), E(Q4_K, q4_K),
        E(Q5_K, q5_K), E(Q6_K, q6_K), E(Q8_K, q8_K),
    };
#undef E
    if ((unsigned)type >= CM_TYPE_COUNT || !tab[type].dot)
        return NULL;
    return &tab[type];
}

void cm_dequantize_row(enum cm_type type, const void *src, float *dst, int64_t n)
{
    const ref_fns *f = ref_get(type);
    if (f)
        f->dequant(src, dst, n);
}

int cm_quantize_row(enum cm_type type, const float *src, void *dst, int64_t n)
{
    const ref_fns *f = ref_get(type);
    if (!f)
        return -1;
    f->quant(src, dst, n);
    return 0;
}

float cm_vec_dot_ref(enum cm_type type, int64_t n, const void *w, const void *x)
{
    const ref_fns *f = ref_get(type);
    return f ? f->dot(n, w, x) : 0.0f;
}
