#version 450
#extension GL_GOOGLE_include_directive : require
// y = a split product's partial results added up (matmul_tiled.comp with
// its rows' chunks split: ns outputs of n rows of `rows` floats, one after
// the other in part from float op), in split order, plus the bias: a
// thread per output.
layout(local_size_x = 256) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } part;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } bias;
layout(std430, set = 0, binding = 3) writeonly buffer B_3 { float d[]; } y;

layout(push_constant) uniform P { uint op, oy, rows, n, ns, has_b, ob; } p;

void main()
{
    const uint e = gl_GlobalInvocationID.x, total = p.n * p.rows;
    if (e >= total)
        return;
    float s = part.d[p.op + e];
    for (uint k = 1u; k < p.ns; k++)
        s += part.d[p.op + k * total + e];
    if (p.has_b != 0u) { // F32 values from halfword ob (2-byte aligned)
        const uint h = p.ob + 2u * (e % p.rows), lo = bias.d[h >> 1];
        s += uintBitsToFloat((h & 1u) == 0u ? lo : (lo >> 16) | (bias.d[(h >> 1) + 1u] << 16));
    }
    y.d[p.oy + e] = s;
}
