#version 450
// dst row rows[i] += wts[i] * src row i (MoE: an expert's outputs back to
// their tokens).  A destination row occurs at most once per call, so no
// two invocations touch the same element and no atomics are needed.
// Grid (ceil(E/64), n).
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) buffer B_0 { float d[]; } dst;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { float d[]; } src;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } rows; // int32 row ids
layout(std430, set = 0, binding = 3) readonly buffer B_3 { float d[]; } wts;

layout(push_constant) uniform P { uint od, os, orows, owts, E, n; } p;

void main()
{
    const uint c = gl_GlobalInvocationID.x, i = gl_WorkGroupID.y;
    if (c >= p.E || i >= p.n)
        return;
    const uint at = p.od + rows.d[p.orows + i] * p.E + c;
    precise float r = dst.d[at] + wts.d[p.owts + i] * src.d[p.os + i * p.E + c]; // no FMA
    dst.d[at] = r;
}
