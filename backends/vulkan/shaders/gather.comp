#version 450
// dst row i = src row rows[i] (MoE: the tokens routed to one expert).
// Grid (ceil(E/64), n): x over columns, y over the rows gathered.
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } src;
layout(std430, set = 0, binding = 1) buffer B_1 { float d[]; } dst;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } rows; // int32 row ids

layout(push_constant) uniform P { uint os, od, orows, E, n; } p;

void main()
{
    const uint c = gl_GlobalInvocationID.x, i = gl_WorkGroupID.y;
    if (c >= p.E || i >= p.n)
        return;
    const uint r = rows.d[p.orows + i]; // ids are >= 0: the int32 reads as the same uint
    dst.d[p.od + i * p.E + c] = src.d[p.os + r * p.E + c];
}
