#version 450
#extension GL_GOOGLE_include_directive : require
// out row t = table row ids[t] dequantized (+ pos row p0 + t, dequantized,
// when has_pos), exactly as the reference's cm_dequantize_row: F32 values
// moved as their bits, F16 exact, Q8_0 q * d and Q4_0 (q - 8) * d in float
// (precise: no multiply-add fused with the position's add).  Types (tt,
// pt): 0 F32, 1 F16, 2 Q8_0, 3 Q4_0; tables are GGUF rows (matmul.comp's
// layouts) from halfwords ot, op of their bindings; row ids (int32) from
// the start of binding 2; out rows of E floats from oo.
// Grid (ceil(E/64), n): x over the columns, y over the tokens.
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { uint d[]; } tab;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { uint d[]; } pos;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } ids;
layout(std430, set = 0, binding = 3) writeonly buffer B_3 { uint d[]; } o;

layout(push_constant) uniform P { uint tt, ot, pt, op, has_pos, E, n, p0, oo; } p;

#include "q8_0.glsl"

// halfword h of the table (which 0) or of the positions (which 1)
uint half_at(uint which, uint h)
{
    const uint v = which == 0u ? tab.d[h >> 1] : pos.d[h >> 1];
    return (v >> ((h & 1u) << 4)) & 0xFFFFu;
}

// The bits of element e of row r of a table of type t from halfword base.
uint value(uint which, uint t, uint base, uint r, uint e)
{
    const uint E = p.E;
    if (t == 0u) {
        const uint h = base + 2u * (r * E + e);
        return half_at(which, h) | (half_at(which, h + 1u) << 16);
    }
    if (t == 1u)
        return floatBitsToUint(f16_val(half_at(which, base + r * E + e)));
    const uint j = e & 31u;
    if (t == 2u) {
        const uint hb = base + (r * (E / 32u) + e / 32u) * 17u;
        const float d = f16_val(half_at(which, hb));
        const int q = bitfieldExtract(int(half_at(which, hb + 1u + j / 2u)), int(8u * (j & 1u)), 8);
        precise float v = float(q) * d;
        return floatBitsToUint(v);
    }
    const uint hb = base + (r * (E / 32u) + e / 32u) * 9u, k = j & 15u;
    const float d = f16_val(half_at(which, hb));
    const uint by = (half_at(which, hb + 1u + k / 2u) >> (8u * (k & 1u))) & 0xFFu;
    precise float v = float(int(j < 16u ? by & 0xFu : by >> 4) - 8) * d;
    return floatBitsToUint(v);
}

void main()
{
    const uint c = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (c >= p.E || t >= p.n)
        return;
    uint v = value(0u, p.tt, p.ot, ids.d[t], c);
    if (p.has_pos != 0u) {
        precise float s = uintBitsToFloat(v) + uintBitsToFloat(value(1u, p.pt, p.op, p.p0 + t, c));
        v = floatBitsToUint(s);
    }
    o.d[p.oo + t * p.E + c] = v;
}
