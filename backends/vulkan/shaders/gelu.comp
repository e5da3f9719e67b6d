#version 450
// out = gelu(x), the tanh approximation, in the reference's order of
// operations: 0.5 x (1 + tanh(k (x + 0.044715 x x x))).
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } x;
layout(std430, set = 0, binding = 1) buffer B_1 { float d[]; } o;

layout(push_constant) uniform P { uint ox, oo, n; } p;

// tanh from one exp of a non-positive argument: no overflow (a naive
// (e^v - e^-v) / (e^v + e^-v) gives inf/inf = NaN for large v on some
// drivers) and no dependence on the driver's own tanh, whose precision
// varies.  Its absolute error (~1e-7) is what matters here: gelu adds
// 1 to it.
float tanh_(float v)
{
    precise float e = exp(-2.0 * abs(v));
    precise float t = (1.0 - e) / (1.0 + e);
    return v < 0.0 ? -t : t;
}

void main()
{
    const float k = 0.7978845608028654; // sqrt(2 / pi)
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += gl_NumWorkGroups.x * 64u) {
        float v = x.d[p.ox + i];
        precise float u = k * (v + 0.044715 * v * v * v);
        precise float r = 0.5 * v * (1.0 + tanh_(u));
        o.d[p.oo + i] = r;
    }
}
