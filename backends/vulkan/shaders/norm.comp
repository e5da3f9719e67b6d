#version 450
// One row per workgroup of 256: RMSNorm  out = x * scale * w,
// scale = 1 / sqrt(sum(x^2) / n + eps), or LayerNorm (layer_norm == 1)
// out = (x - mean) * scale * w (+ b), scale from the variance about the mean.
// Built twice: with -DUSE_F64 (needs shaderFloat64) the sums are in double
// and the scale is (float)(1.0 / sqrt(ss / n + eps)), as the reference
// computes it, so the scale (and hence the row) is almost always the
// reference's to the bit; without it everything is float.
// has_y: x += y first (the residual add held back for this norm, one
// dispatch for both), each element written back by the thread that reads
// it after, as the float sum the reference's add stores.
// Sums: each thread a strided partial, then a fixed shared-memory tree, so
// the result does not depend on scheduling.  Grid (n_rows).
// q != 0: the normalised rows also quantized for the product that reads
// them next (quantize.comp's blocks and layouts, kind 1 q8_0/q8_1 or 2
// q8_K, into binding 2, row r's from block r cols / per), so that product
// needs no quantize.comp dispatch; never with a bias (binding 2's other
// use), for rows of at most ROW_MAX (the row is kept in shared memory for
// it: a block is quantized from values other threads made).
#extension GL_GOOGLE_include_directive : require
#ifdef USE_F64
#define acc_t double
#else
#define acc_t float
#endif

layout(local_size_x = 256) in;

layout(std430, set = 0, binding = 0) buffer B_0 { float d[]; } x;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { float d[]; } w;
layout(std430, set = 0, binding = 2) buffer B_2 { uint d[]; } b; // the bias's floats, or xq
layout(std430, set = 0, binding = 3) buffer B_3 { float d[]; } outp;
layout(std430, set = 0, binding = 4) readonly buffer B_4 { float d[]; } y;

layout(push_constant) uniform P {
    uint ox, ow, ob, oo, n, layer_norm, has_b;
    float eps;
    uint has_y, oy, q;
} p;

#define ROW_MAX 3072u // 12 KiB: with red, within the 16 KiB every device has
shared float row[ROW_MAX];

#include "q8_0.glsl"
#define ACT(i) row[i]
#define XQ_STORE(i, v) b.d[i] = (v)
#define Q8K_GROUPS 2u // (1.5 KiB of shared words: row and red stay within 16 KiB)
#include "quantize.glsl"

// This workgroup's row, in row[], quantized: 8 threads per q8_0/q8_1
// block, 64 per q8_K block (Q8K_GROUPS q8_K blocks, 8 Q8K_GROUPS q8_0
// blocks at a time).
void quantize_row()
{
    barrier();
    const uint per = p.q == 2u ? 256u : 32u, nb = p.n / per, r = gl_WorkGroupID.x;
    const uint tid = gl_LocalInvocationID.x;
    if (p.q == 2u) {
        for (uint i0 = 0u; i0 < nb; i0 += Q8K_GROUPS) {
            const uint i = i0 + tid / 64u;
            quantize_q8k(i * per, 73u * (r * nb + i), i < nb);
        }
        return;
    }
    for (uint i0 = 0u; i0 < nb; i0 += 8u * Q8K_GROUPS) {
        const uint i = i0 + tid / 8u;
        quantize_q8_lanes(i * per, 10u * (r * nb + i), i < nb);
    }
}

shared acc_t red[256];

// The sum of every thread's v, returned to all; red is free again after.
acc_t block_sum(acc_t v)
{
    const uint tid = gl_LocalInvocationID.x;
    red[tid] = v;
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1) {
        if (tid < s)
            red[tid] += red[tid + s];
        barrier();
    }
    acc_t r = red[0];
    barrier();
    return r;
}

void main()
{
    const uint tid = gl_LocalInvocationID.x, n = p.n;
    const uint xr = p.ox + gl_WorkGroupID.x * n, orow = p.oo + gl_WorkGroupID.x * n;
    if (p.has_y != 0u) {
        const uint yr = p.oy + gl_WorkGroupID.x * n;
        for (uint i = tid; i < n; i += 256u) {
            precise float s = x.d[xr + i] + y.d[yr + i];
            x.d[xr + i] = s;
        }
    }
    if (p.layer_norm == 0u) {
        precise acc_t ss = acc_t(0);
        for (uint i = tid; i < n; i += 256u)
            ss += acc_t(x.d[xr + i]) * acc_t(x.d[xr + i]); // precise: no FMA in float
        const float scale = float(acc_t(1) / sqrt(block_sum(ss) / acc_t(n) + acc_t(p.eps)));
        for (uint i = tid; i < n; i += 256u) {
            precise float r = x.d[xr + i] * scale * w.d[p.ow + i];
            outp.d[orow + i] = r;
            if (p.q != 0u)
                row[i] = r;
        }
        if (p.q != 0u)
            quantize_row();
        return;
    }
    precise acc_t s = acc_t(0);
    for (uint i = tid; i < n; i += 256u)
        s += acc_t(x.d[xr + i]);
    const acc_t mean = block_sum(s) / acc_t(n);
    precise acc_t var = acc_t(0);
    for (uint i = tid; i < n; i += 256u) {
        precise acc_t dx = acc_t(x.d[xr + i]) - mean;
        var += dx * dx;
    }
    const float scale = float(acc_t(1) / sqrt(block_sum(var) / acc_t(n) + acc_t(p.eps)));
    for (uint i = tid; i < n; i += 256u) {
        // x - mean rounded to float first, and + 0.0 without a bias, as the reference
        precise float r = float(acc_t(x.d[xr + i]) - mean) * scale * w.d[p.ow + i] +
                          (p.has_b != 0u ? uintBitsToFloat(b.d[p.ob + i]) : 0.0);
        outp.d[orow + i] = r;
        if (p.q != 0u)
            row[i] = r;
    }
    if (p.q != 0u)
        quantize_row();
}
