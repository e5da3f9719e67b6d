#version 450
// out row t = the sum over its k chosen experts, in the order route.comp
// left them (increasing expert), of weight * that expert's output row
// (moe_ffn's last step; the host path's clear then scatter_adds, the same
// arithmetic in the same order).  Grid (ceil(E/64), n).
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } y;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } route;
layout(std430, set = 0, binding = 3) writeonly buffer B_3 { float d[]; } outp;

layout(push_constant) uniform P { uint oy, oo, oout, E, k; } p;

void main()
{
    const uint c = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (c >= p.E)
        return;
    precise float s = 0.0;
    for (uint j = 0u; j < p.k; j++) {
        const float w = uintBitsToFloat(route.d[p.oo + 2u * p.k * t + p.k + j]);
        precise float term = w * y.d[p.oy + (t * p.k + j) * p.E + c]; // no FMA
        s = s + term;
    }
    outp.d[p.oout + t * p.E + c] = s;
}
