#version 450
// a = silu(a) * b, as the reference writes it: a / (1 + exp(-a)) * b.
// A large negative a gives exp(-a) = inf and a result of -0, as expf does.
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) buffer B_0 { float d[]; } a;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { float d[]; } b;

layout(push_constant) uniform P { uint oa, ob, n; } p;

void main()
{
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += gl_NumWorkGroups.x * 64u) {
        float v = a.d[p.oa + i];
        precise float r = v / (1.0 + exp(-v)) * b.d[p.ob + i];
        a.d[p.oa + i] = r;
    }
}
