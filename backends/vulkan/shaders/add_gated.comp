#version 450
// out row t += g * y row t, g = sigmoid(gate[t]) (1 without a gate): the
// shared expert's output added to the MoE sum.  Grid ceil(E * n_rows / 64),
// grid-stride as in add.comp.
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) buffer B_0 { float d[]; } o;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { float d[]; } y;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { float d[]; } gate;

layout(push_constant) uniform P { uint oo, oy, og, E, n_rows, has_gate; } p;

void main()
{
    const uint n = p.E * p.n_rows;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += gl_NumWorkGroups.x * 64u) {
        // g is recomputed per element: the same bits in every thread of a row
        float g = 1.0;
        if (p.has_gate != 0u)
            g = 1.0 / (1.0 + exp(-gate.d[p.og + i / p.E]));
        precise float r = o.d[p.oo + i] + g * y.d[p.oy + i]; // no FMA: the reference's rounding
        o.d[p.oo + i] = r;
    }
}
