#version 450
// Workgroup (head h, row t) of x (rows of n_heads * head_dim floats): the
// head's RMSNorm by norm_w when has_norm (qwen3's q/k norm; the scale as in
// norm.comp, in double with -DUSE_F64), then, when use_rope, the rotation
// of pairs i < rope_dim / 2, (i, i + rope_dim / 2) for neox else (2i, 2i + 1),
// by the host's table cs[(p0 + t) * rope_dim + 2i] = cos, [.. + 2i + 1] = sin
// (the CPU's values: angles in double, so none are computed here).
// Columns from rope_dim on are only normalised.  Every element is read and
// written by one thread, so after the norm's reduction no further barrier
// is needed.  Grid (n_heads, n_rows).
#ifdef USE_F64
#define acc_t double
#else
#define acc_t float
#endif

layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) buffer B_0 { float d[]; } x;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { float d[]; } nw;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { float d[]; } cs;

layout(push_constant) uniform P {
    uint ox, onw, n_heads, head_dim, rope_dim, neox, use_rope, has_norm, p0;
    float eps;
} p;

#extension GL_GOOGLE_include_directive : require
#include "io.glsl"

shared acc_t red[64];

acc_t block_sum(acc_t v)
{
    const uint tid = gl_LocalInvocationID.x;
    red[tid] = v;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (tid < s)
            red[tid] += red[tid + s];
        barrier();
    }
    acc_t r = red[0];
    barrier(); // also: every thread has read its part of x before any writes
    return r;
}

uint base;
float scale;

// Element i of the head as the rotation sees it: normalised when asked,
// rounded to float as the reference stores it between the two steps.
float val(uint i)
{
    if (p.has_norm == 0u)
        return x.d[base + i];
    precise float r = x.d[base + i] * scale * nw.d[p.onw + i];
    return r;
}

void main()
{
    const uint tid = gl_LocalInvocationID.x, hd = p.head_dim;
    const uint t = gl_WorkGroupID.y;
    base = p.ox + (t * p.n_heads + gl_WorkGroupID.x) * hd;
    if (p.has_norm != 0u) {
        precise acc_t ss = acc_t(0);
        for (uint i = tid; i < hd; i += 64u)
            ss += acc_t(x.d[base + i]) * acc_t(x.d[base + i]);
        scale = float(acc_t(1) / sqrt(block_sum(ss) / acc_t(hd) + acc_t(p.eps)));
    }
    const uint half_ = p.use_rope != 0u ? p.rope_dim / 2u : 0u;
    const uint row = (batch_pos(p.p0) + t) * p.rope_dim;
    for (uint i = tid; i < half_; i += 64u) {
        const uint a = p.neox != 0u ? i : 2u * i, b = p.neox != 0u ? i + half_ : 2u * i + 1u;
        const float c = cs.d[row + 2u * i], s = cs.d[row + 2u * i + 1u];
        const float x0 = val(a), x1 = val(b);
        precise float y0 = x0 * c - x1 * s; // no FMA: the CPU's bits
        precise float y1 = x0 * s + x1 * c;
        x.d[base + a] = y0;
        x.d[base + b] = y1;
    }
    if (p.has_norm != 0u)
        for (uint i = 2u * half_ + tid; i < hd; i += 64u)
            x.d[base + i] = val(i);
}
