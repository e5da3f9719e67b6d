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
// 2 + k).  Rows of cols floats (a multiple of 32) from ox; a thread per
// block, over a grid of ceil(n nb / 64) workgroups capped by the host (the
// loop strides over the rest).
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } x;
layout(std430, set = 0, binding = 1) writeonly buffer B_1 { uint d[]; } xq;

layout(push_constant) uniform P { uint ox, cols, n, k; } p;

// k != 0: q8_K instead (the dot type of Q4_K, Q6_K), as the reference's
// cm_quant_q8_K: 73 uints per 256 values, block b of row t at uint
// 73 (t nbk + b), nbk = cols / 256: the float d, the 256 quants four to a
// uint (uints 1 .. 64), the 16 int16 bsums two to a uint (uints 65 .. 72,
// the even one low).  is = -127 / max and d = 1 / is correctly rounded
// (div_rn); a block whose amax is 0, inf or below 2^-100 (where the CPU's is
// may overflow) all zero.  A thread per block.

#include "q8_0.glsl"

int qlevel8(float v)
{
    if (!(v > -128.0))
        return -128;
    if (v >= 127.0)
        return 127;
    return clamp(int(roundEven(v)), -128, 127);
}

void main_k()
{
    const uint nb = p.cols / 256u, total = nb * p.n;
    for (uint i = gl_GlobalInvocationID.x; i < total; i += gl_NumWorkGroups.x * 64u) {
        const uint src = p.ox + (i / nb) * p.cols + (i % nb) * 256u, o = 73u * i;
        uint amax = 0u, mx = 0u;
        for (uint e = 0u; e < 256u; e++) {
            const uint b = floatBitsToUint(x.d[src + e]), a = b & 0x7FFFFFFFu;
            if (a <= 0x7F800000u && a > amax) {
                amax = a;
                mx = b;
            }
        }
        if (amax >= 0x7F800000u || amax < 0x0D800000u) {
            for (uint k = 0u; k < 73u; k++)
                xq.d[o + k] = 0u;
            continue;
        }
        const float ia = div_rn(127.0, uintBitsToFloat(amax)); // |is|
        const float is = (mx & 0x80000000u) != 0u ? ia : -ia;
        const float d = div_rn(1.0, ia);
        xq.d[o] = floatBitsToUint(is < 0.0 ? -d : d);
        int bs[16];
        for (uint j = 0u; j < 16u; j++)
            bs[j] = 0;
        for (uint k = 0u; k < 64u; k++) {
            uint w = 0u;
            for (uint j = 0u; j < 4u; j++) {
                precise float v = is * x.d[src + 4u * k + j];
                const int q = qlevel8(v);
                bs[k / 4u] += q;
                w |= (uint(q) & 0xFFu) << (8u * j);
            }
            xq.d[o + 1u + k] = w;
        }
        for (uint j = 0u; j < 8u; j++)
            xq.d[o + 65u + j] = (uint(bs[2u * j]) & 0xFFFFu) | (uint(bs[2u * j + 1u]) << 16);
    }
}

void main()
{
    if (p.k != 0u) {
        main_k();
        return;
    }
    const uint nb = p.cols / 32u, total = nb * p.n;
    for (uint i = gl_GlobalInvocationID.x; i < total; i += gl_NumWorkGroups.x * 64u) {
        const uint src = p.ox + (i / nb) * p.cols + (i % nb) * 32u;
        for (uint j = 0u; j < 32u; j++)
            xv[j] = x.d[src + j];
        q8_block();
        int sum = 0;
        for (uint k = 0u; k < 16u; k++)
            sum += bitfieldExtract(int(qb[1u + k]), 0, 8) + bitfieldExtract(int(qb[1u + k]), 8, 8);
        // s = f16((float)sum * d); 0 * inf is the CPU's default nan (-nan)
        precise float sv = float(sum) * q8_d;
        const uint sh = floatBitsToUint(q8_d) == 0x7F800000u && sum == 0 ? 0xFE00u : f16_bits(floatBitsToUint(sv));
        xq.d[10u * i] = floatBitsToUint(f16_val(qb[0]));
        xq.d[10u * i + 1u] = floatBitsToUint(f16_val(sh));
        for (uint k = 0u; k < 8u; k++)
            xq.d[10u * i + 2u + k] = qb[1u + 2u * k] | (qb[2u + 2u * k] << 16);
    }
}
