#version 450
#extension GL_GOOGLE_include_directive : require
// out row t = table row ids[t] dequantized (+ pos row p0 + t, dequantized,
// when has_pos), exactly as the reference's cm_dequantize_row: F32 values
// moved as their bits, F16 exact, Q8_0 q * d, Q4_0 (q - 8) * d, Q5_0
// (q - 16) * d, Q4_1 and Q5_1 q * d + m in float (precise: no multiply-add
// fused).  Types (tt, pt): 0 F32, 1 F16, 2 Q8_0, 3 Q4_0, 4 Q5_0, 5 Q4_1,
// 6 Q5_1, 7 Q4_K, 8 Q6_K, 9 Q5_K, 10 BF16, 11 Q2_K, 12 Q3_K
// (quant/ref_kquants.c's arithmetic); tables are GGUF rows (matmul.comp's
// layouts) from halfwords ot, op of their bindings; row ids (int32) from
// uint oi of binding 2; out rows of E floats from oo.
// Grid (ceil(E/64), n): x over the columns, y over the tokens.
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { uint d[]; } tab;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { uint d[]; } pos;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } ids;
layout(std430, set = 0, binding = 3) writeonly buffer B_3 { uint d[]; } o;

layout(push_constant) uniform P { uint tt, ot, pt, op, has_pos, E, n, p0, oo, oi; } p;

#include "q8_0.glsl"
#include "io.glsl"

// halfword h of the table (which 0) or of the positions (which 1)
uint half_at(uint which, uint h)
{
    const uint v = which == 0u ? tab.d[h >> 1] : pos.d[h >> 1];
    return (v >> ((h & 1u) << 4)) & 0xFFFFu;
}

// byte i of the block from halfword hb
uint byte_at(uint which, uint hb, uint i)
{
    return (half_at(which, hb + (i >> 1)) >> (8u * (i & 1u))) & 0xFFu;
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
    if (t == 10u) // BF16
        return half_at(which, base + r * E + e) << 16;
    const uint j = e & 31u;
    if (t == 2u) {
        const uint hb = base + (r * (E / 32u) + e / 32u) * 17u;
        const float d = f16_val(half_at(which, hb));
        const int q = bitfieldExtract(int(half_at(which, hb + 1u + j / 2u)), int(8u * (j & 1u)), 8);
        precise float v = float(q) * d;
        return floatBitsToUint(v);
    }
    if (t == 8u) { // Q6_K: (d * scale) * L (cm_dequant_q6_K)
        const uint hb = base + (r * (E / 256u) + e / 256u) * 105u, f = e & 255u;
        const uint c = f >> 7, k = (f >> 5) & 3u, l = f & 31u;
        const uint lo = (byte_at(which, hb, 64u * c + 32u * (k & 1u) + l) >> (4u * (k >> 1))) & 0xFu;
        const uint hi = (byte_at(which, hb, 128u + 32u * c + l) >> (2u * k)) & 3u;
        const int sc = bitfieldExtract(int(byte_at(which, hb, 192u + f / 16u)), 0, 8);
        precise float ds = f16_val(half_at(which, hb + 104u)) * float(sc);
        precise float v = ds * float(int(lo | (hi << 4)) - 32);
        return floatBitsToUint(v);
    }
    if (t == 12u) { // Q3_K: (d * scale) * L (cm_dequant_q3_K, cm_k3_scales)
        const uint hb = base + (r * (E / 256u) + e / 256u) * 55u, f = e & 255u, j = f / 16u;
        const uint lo = (byte_at(which, hb, 32u + 32u * (f >> 7) + (f & 31u)) >> (2u * ((f >> 5) & 3u))) & 3u;
        const uint hi = (byte_at(which, hb, f & 31u) >> (f >> 5)) & 1u;
        const uint slo = (byte_at(which, hb, 96u + (j & 7u)) >> (4u * (j >> 3))) & 0xFu;
        const uint shi = (byte_at(which, hb, 104u + (j & 3u)) >> (2u * (j >> 2))) & 3u;
        precise float ds = f16_val(half_at(which, hb + 54u)) * float(int(slo | (shi << 4)) - 32);
        precise float v = ds * float(int(lo | (hi << 2)) - 4);
        return floatBitsToUint(v);
    }
    if (t == 11u) { // Q2_K: (d (sc & 15)) L - dmin (sc >> 4) (cm_dequant_q2_K)
        const uint hb = base + (r * (E / 256u) + e / 256u) * 42u, f = e & 255u;
        const uint sc = byte_at(which, hb, f / 16u);
        const uint L = (byte_at(which, hb, 16u + 32u * (f / 128u) + (f & 31u)) >> (2u * ((f / 32u) & 3u))) & 3u;
        precise float dl = f16_val(half_at(which, hb + 40u)) * float(sc & 15u);
        precise float ml = f16_val(half_at(which, hb + 41u)) * float(sc >> 4);
        precise float a = dl * float(L);
        precise float v = a - ml;
        return floatBitsToUint(v);
    }
    if (t == 7u || t == 9u) { // Q4_K, Q5_K: (d sc) L - dmin m (dequant_q45k)
        const uint bh = t == 9u ? 88u : 72u, qo = t == 9u ? 48u : 16u;
        const uint hb = base + (r * (E / 256u) + e / 256u) * bh, f = e & 255u, j = f >> 5;
        uint sc, m;
        if (j < 4u) {
            sc = byte_at(which, hb, 4u + j) & 63u;
            m = byte_at(which, hb, 8u + j) & 63u;
        } else {
            sc = (byte_at(which, hb, 8u + j) & 0xFu) | ((byte_at(which, hb, j) >> 6) << 4);
            m = (byte_at(which, hb, 8u + j) >> 4) | ((byte_at(which, hb, 4u + j) >> 6) << 4);
        }
        uint L = (byte_at(which, hb, qo + 32u * (j >> 1) + (f & 31u)) >> (4u * (j & 1u))) & 0xFu;
        if (t == 9u)
            L |= ((byte_at(which, hb, 16u + (f & 31u)) >> j) & 1u) << 4;
        precise float d1 = f16_val(half_at(which, hb)) * float(sc);
        precise float m1 = f16_val(half_at(which, hb + 1u)) * float(m);
        precise float a = d1 * float(L);
        precise float v = a - m1;
        return floatBitsToUint(v);
    }
    // the 4- and 5-bit legacy blocks (matmul.comp's layouts): (q - off) d
    // or q d + m
    const bool hasm = t == 5u || t == 6u, hash = t == 4u || t == 6u;
    const uint bh = 9u + (hasm ? 1u : 0u) + (hash ? 2u : 0u);
    const uint qo = 1u + (hasm ? 1u : 0u) + (hash ? 2u : 0u);
    const uint hb = base + (r * (E / 32u) + e / 32u) * bh, k = j & 15u;
    const float d = f16_val(half_at(which, hb));
    const uint by = (half_at(which, hb + qo + k / 2u) >> (8u * (k & 1u))) & 0xFFu;
    uint q = j < 16u ? by & 0xFu : by >> 4;
    if (hash)
        q |= ((half_at(which, hb + qo - 2u + j / 16u) >> (j & 15u)) & 1u) << 4;
    if (hasm) {
        precise float v = float(q) * d;
        precise float v2 = v + f16_val(half_at(which, hb + 1u));
        return floatBitsToUint(v2);
    }
    precise float v = float(int(q) - (t == 3u ? 8 : 16)) * d;
    return floatBitsToUint(v);
}

void main()
{
    const uint c = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (c >= p.E || t >= p.n)
        return;
    uint v = value(0u, p.tt, p.ot, ids.d[p.oi + t], c);
    if (p.has_pos != 0u) {
        precise float s = uintBitsToFloat(v) + uintBitsToFloat(value(1u, p.pt, p.op, batch_pos(p.p0) + t, c));
        v = floatBitsToUint(s);
    }
    o.d[p.oo + t * p.E + c] = v;
}
