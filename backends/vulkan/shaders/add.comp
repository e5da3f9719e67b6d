#version 450
// x += y (the residual add).  Grid ceil(n/64); the grid-stride loop also
// covers a grid the host capped at maxComputeWorkGroupCount[0] (65535 on
// some devices) when n is larger.
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) buffer B_0 { float d[]; } x;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { float d[]; } y;

layout(push_constant) uniform P { uint ox, oy, n; } p;

void main()
{
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += gl_NumWorkGroups.x * 64u)
        x.d[p.ox + i] += y.d[p.oy + i];
}
