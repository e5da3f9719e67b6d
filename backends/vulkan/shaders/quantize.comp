#version 450
#extension GL_GOOGLE_include_directive : require
// The activation rows of a product quantized to q8_0 and q8_1 at once (the
// dot types of Q8_0, Q4_0, Q5_0 and of Q4_1, Q5_1 weights: the same
// quants and d), exactly as the reference's cm_quantize_row (CM_TYPE_Q8_0,
// CM_TYPE_Q8_1) makes them (q8_0.glsl; q8_1's s = f16(sum of the quants *
// the unrounded d)), but stored for matmul.comp: 10 uints a block, block b
// of row t at uint 10 (t nb + b), nb = cols / 32: the scale as the float
// value of its f16 (F16(d), which is all the dots use), F16(s) likewise,
// then the 32 quants four to a uint (element 4k + j in byte j of uint
// 2 + k).  Rows of cols floats (a multiple of 32) from ox; 8 threads per
// block (quantize.glsl's quantize_q8_lanes), 8 blocks a workgroup, over a
// grid of ceil(n nb / 8) workgroups capped by the host (the loop strides
// over the rest).
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } x;
layout(std430, set = 0, binding = 1) writeonly buffer B_1 { uint d[]; } xq;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { float d[]; } g;

// glu != 0: the rows quantized are silu(x) * g (g's rows from og), the
// swiglu held back before the product (swiglu.comp's arithmetic), which
// is then never stored.
layout(push_constant) uniform P { uint ox, cols, n, k, glu, og; } p;

// k != 0: q8_K instead (the dot type of Q4_K, Q6_K), as the reference's
// cm_quant_q8_K: 73 uints per 256 values, block b of row t at uint
// 73 (t nbk + b), nbk = cols / 256: the float d, the 256 quants four to a
// uint (uints 1 .. 64), the 16 int16 bsums two to a uint (uints 65 .. 72,
// the even one low).  is = -127 / max and d = 1 / is correctly rounded
// (div_rn); a block whose amax is 0, inf or below 2^-100 (where the CPU's is
// may overflow) all zero.  A workgroup per q8_K block (quantize.glsl's
// 64 threads), 8 threads per q8_0/q8_1 block.

#include "q8_0.glsl"

float act(uint i)
{
    const float v = x.d[i];
    if (p.glu == 0u)
        return v;
    precise float r = v / (1.0 + exp(-v)) * g.d[p.og + (i - p.ox)];
    return r;
}

#define ACT(i) act(i)
#define XQ_STORE(i, v) xq.d[i] = (v)
#define Q8K_GROUPS 1u
#include "quantize.glsl"

void main()
{
    const uint per = p.k != 0u ? 256u : 32u, nb = p.cols / per, total = nb * p.n;
    if (p.k != 0u) { // (uniform: the barriers inside)
        for (uint i = gl_WorkGroupID.x; i < total; i += gl_NumWorkGroups.x)
            quantize_q8k(p.ox + (i / nb) * p.cols + (i % nb) * 256u, 73u * i, true);
        return;
    }
    for (uint i0 = 8u * gl_WorkGroupID.x; i0 < total; i0 += 8u * gl_NumWorkGroups.x) {
        const uint i = i0 + gl_LocalInvocationID.x / 8u; // (uniform loop: the barriers inside)
        quantize_q8_lanes(p.ox + (i / nb) * p.cols + (i % nb) * 32u, 10u * i, i < total);
    }
}
