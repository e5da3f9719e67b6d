#version 450
#extension GL_GOOGLE_include_directive : require
// The activation rows of a product quantized to q8_0, the dot type of
// Q8_0 and Q4_0 weights, exactly as the reference's cm_quantize_row
// (CM_TYPE_Q8_0) makes them (q8_0.glsl), but stored for matmul.comp: 9
// uints a block, block b of row t at uint 9 (t nb + b), nb = cols / 32: the
// scale as the float value of its f16 (F16(d), which is all the dots use),
// then the 32 quants four to a uint (element 4k + j in byte j of uint
// 1 + k).  Rows of cols floats (a multiple of 32) from ox; a thread per
// block, over a grid of ceil(n nb / 64) workgroups capped by the host (the
// loop strides over the rest).
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } x;
layout(std430, set = 0, binding = 1) writeonly buffer B_1 { uint d[]; } xq;

layout(push_constant) uniform P { uint ox, cols, n; } p;

#include "q8_0.glsl"

void main()
{
    const uint nb = p.cols / 32u, total = nb * p.n;
    for (uint i = gl_GlobalInvocationID.x; i < total; i += gl_NumWorkGroups.x * 64u) {
        const uint src = p.ox + (i / nb) * p.cols + (i % nb) * 32u;
        for (uint j = 0u; j < 32u; j++)
            xv[j] = x.d[src + j];
        q8_block();
        xq.d[9u * i] = floatBitsToUint(f16_val(qb[0]));
        for (uint k = 0u; k < 8u; k++)
            xq.d[9u * i + 1u + k] = qb[1u + 2u * k] | (qb[2u + 2u * k] << 16);
    }
}
