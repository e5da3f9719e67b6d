#version 450
#extension GL_GOOGLE_include_directive : require
// Row t of x (cols floats) becomes cache row p0 + t, as the reference's
// cm_quantize_row writes it, by kv: 0 F32, 1 F16 (two halves per uint,
// element 2k in the low half), 2 Q8_0 (GGUF block_q8_0: an f16 scale d, then
// 32 int8 quants; 34 bytes a block, so blocks are only 2-byte aligned, and
// a row of cols / 32 blocks follows the last without a gap).  The cache is
// bound as uint for all three: F32 values are moved as their bits.  The
// binding starts at this layer's K (or V) cache.
// Grids: F32 (ceil(cols / 64), n), a thread per element; F16
// (ceil(cols / 128), n), a thread per pair (cols is even); Q8_0
// (ceil(pairs / 64), 1), a thread per pair of blocks 2P, 2P + 1 of the
// whole cache (68 bytes: 17 uints, so no uint is shared between threads),
// P from b0 / 2 on, b0 = p0 * cols / 32 the first block stored, over the
// pairs that hold one of blocks b0 .. (p0 + n) * cols / 32 - 1 (cols is a
// multiple of 32).  A pair half outside those blocks (another row) is kept.
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } x;
layout(std430, set = 0, binding = 1) buffer B_1 { uint d[]; } cache;

layout(push_constant) uniform P { uint ox, cols, n, p0, kv; } p;

#include "q8_0.glsl"
#include "io.glsl"

uint p0;

// Q8_0: blocks 2P and 2P + 1 of the cache, those of them being stored.
void store_q8()
{
    const uint nb = p.cols / 32u, b0 = p0 * nb, b1 = (p0 + p.n) * nb;
    const uint P = b0 / 2u + gl_GlobalInvocationID.x;
    if (2u * P >= b1)
        return;
    uint hw[34]; // the pair's 34 halfwords (68 bytes)
    bool has[2];
    for (uint k = 0u; k < 2u; k++) {
        const uint b = 2u * P + k;
        has[k] = b >= b0 && b < b1;
        if (!has[k])
            continue;
        const uint src = p.ox + (b / nb - p0) * p.cols + (b % nb) * 32u;
        for (uint j = 0u; j < 32u; j++)
            xv[j] = x.d[src + j];
        q8_block();
        for (uint i = 0u; i < 17u; i++)
            hw[17u * k + i] = qb[i];
    }
    const uint base = 17u * P;
    for (uint u = 0u; u < 17u; u++) {
        const bool lo = has[(2u * u) / 17u], hi = has[(2u * u + 1u) / 17u];
        if (lo && hi)
            cache.d[base + u] = hw[2u * u] | (hw[2u * u + 1u] << 16);
        else if (lo) // only uint 8 holds halves of both blocks
            cache.d[base + u] = (cache.d[base + u] & 0xFFFF0000u) | hw[2u * u];
        else if (hi)
            cache.d[base + u] = (cache.d[base + u] & 0xFFFFu) | (hw[2u * u + 1u] << 16);
    }
}

void main()
{
    p0 = batch_pos(p.p0);
    if (p.kv == 2u) {
        store_q8();
        return;
    }
    const uint c = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (t >= p.n)
        return;
    const uint src = p.ox + t * p.cols, row = (p0 + t) * p.cols;
    if (p.kv == 0u) {
        if (c < p.cols)
            cache.d[row + c] = floatBitsToUint(x.d[src + c]);
    } else if (2u * c < p.cols) {
        const uint lo = f16_bits(floatBitsToUint(x.d[src + 2u * c]));
        const uint hi = f16_bits(floatBitsToUint(x.d[src + 2u * c + 1u]));
        cache.d[row / 2u + c] = lo | (hi << 16);
    }
}
