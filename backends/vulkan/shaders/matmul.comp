#version 450
#extension GL_GOOGLE_include_directive : require
// y row t = x row t w^T (+ b): the products (matmul, logits) with the
// reference's arithmetic (backends/ref ref_matmul1, quant/ref_legacy.c):
// - type 0 F32, 1 F16: the float activation times each weight (an f16
//   weight's exact value), summed in float;
// - type 2 Q8_0, 3 Q4_0: the activation row quantized to q8_0 first
//   (quantize.comp's blocks, bound as x), then per block the integer dot
//   of the 32 quant pairs times (f16 d of the weight * d of the
//   activation), that product in float, summed over blocks in float (the
//   reference sums in double: within the tests' 2e-5 of the largest
//   output).
// Weights are GGUF rows of cols elements, one after the other from
// halfword ow of binding 1 (2-byte aligned, so read from uints by shifts):
// F32 (a float per two halfwords), F16, block_q8_0 (17 halfwords: f16 d,
// then 32 int8 quants, element j in byte j), block_q4_0 (9 halfwords: f16
// d, then 16 bytes, element j in the low nibble of byte j, j + 16 in its
// high one, value q - 8).
// A workgroup per weight row (linear over the grid: (x, y) with x capped
// by the host), its 64 threads over the row, each keeping TT tokens' sums
// (the weights read once per TT tokens), then summed through shared memory.
// Q8_0/Q4_0: a thread takes a quarter block (8 elements) at a time.
// x is F32 rows of cols from ox (F32/F16) or quantize.comp's blocks from
// ox; y rows of `rows` floats from oy; the bias (has_b) floats from
// halfword ob of binding 2.
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { uint d[]; } x;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { uint d[]; } w;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } bias;
layout(std430, set = 0, binding = 3) writeonly buffer B_3 { float d[]; } y;

layout(push_constant) uniform P { uint type, ox, ow, ob, has_b, oy, cols, rows, n; } p;

#include "q8_0.glsl"

#define TT 8u
shared float red[TT * 64u];

// halfword h of the weights
uint half_at(uint h) { return (w.d[h >> 1] >> ((h & 1u) << 4)) & 0xFFFFu; }
// the 32 bits at halfword h
uint word_at(uint h) { return (h & 1u) == 0u ? w.d[h >> 1] : half_at(h) | (half_at(h + 1u) << 16); }
int sbyte(uint v, uint k) { return bitfieldExtract(int(v), int(8u * k), 8); }

void main()
{
    const uint row = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
    if (row >= p.rows) // the whole workgroup: barriers stay uniform
        return;
    const uint tid = gl_LocalInvocationID.x, nb = p.cols / 32u;
    float b = 0.0;
    if (p.has_b != 0u) {
        const uint h = p.ob + 2u * row, lo = bias.d[h >> 1];
        b = uintBitsToFloat((h & 1u) == 0u ? lo : (lo >> 16) | (bias.d[(h >> 1) + 1u] << 16));
    }
    for (uint t0 = 0u; t0 < p.n; t0 += TT) {
        const uint nt = min(TT, p.n - t0);
        float acc[TT];
        for (uint tt = 0u; tt < TT; tt++)
            acc[tt] = 0.0;
        if (p.type == 2u) {
            const uint base = p.ow + row * nb * 17u;
            for (uint i = tid; i < nb * 4u; i += 64u) {
                const uint blk = i >> 2, q = i & 3u, hb = base + blk * 17u;
                const float dw = f16_val(half_at(hb));
                int wq[8];
                for (uint k = 0u; k < 4u; k++) {
                    const uint h = half_at(hb + 1u + 4u * q + k);
                    wq[2u * k] = sbyte(h, 0u);
                    wq[2u * k + 1u] = sbyte(h, 1u);
                }
                for (uint tt = 0u; tt < TT; tt++) {
                    if (tt >= nt)
                        break;
                    const uint xb = p.ox + 9u * ((t0 + tt) * nb + blk);
                    const uint a0 = x.d[xb + 1u + 2u * q], a1 = x.d[xb + 2u + 2u * q];
                    int s = 0;
                    for (uint k = 0u; k < 4u; k++)
                        s += wq[k] * sbyte(a0, k) + wq[4u + k] * sbyte(a1, k);
                    acc[tt] += float(s) * (dw * uintBitsToFloat(x.d[xb]));
                }
            }
        } else if (p.type == 3u) {
            const uint base = p.ow + row * nb * 9u;
            for (uint i = tid; i < nb * 4u; i += 64u) {
                const uint blk = i >> 2, q = i & 3u, hb = base + blk * 9u;
                const float dw = f16_val(half_at(hb));
                // bytes 4q .. 4q + 3: elements 4q + j (low nibbles) and
                // 16 + 4q + j (high nibbles)
                const uint qs = half_at(hb + 1u + 2u * q) | (half_at(hb + 2u + 2u * q) << 16);
                int lo[4], hi[4];
                for (uint k = 0u; k < 4u; k++) {
                    lo[k] = int((qs >> (8u * k)) & 0xFu) - 8;
                    hi[k] = int((qs >> (8u * k + 4u)) & 0xFu) - 8;
                }
                for (uint tt = 0u; tt < TT; tt++) {
                    if (tt >= nt)
                        break;
                    const uint xb = p.ox + 9u * ((t0 + tt) * nb + blk);
                    const uint a0 = x.d[xb + 1u + q], a1 = x.d[xb + 5u + q];
                    int s = 0;
                    for (uint k = 0u; k < 4u; k++)
                        s += lo[k] * sbyte(a0, k) + hi[k] * sbyte(a1, k);
                    acc[tt] += float(s) * (dw * uintBitsToFloat(x.d[xb]));
                }
            }
        } else if (p.type == 1u) {
            const uint base = p.ow + row * p.cols;
            for (uint e = tid; e < p.cols; e += 64u) {
                const float wv = f16_val(half_at(base + e));
                for (uint tt = 0u; tt < TT; tt++) {
                    if (tt >= nt)
                        break;
                    acc[tt] += wv * uintBitsToFloat(x.d[p.ox + (t0 + tt) * p.cols + e]);
                }
            }
        } else {
            const uint base = p.ow + row * p.cols * 2u;
            for (uint e = tid; e < p.cols; e += 64u) {
                const float wv = uintBitsToFloat(word_at(base + 2u * e));
                for (uint tt = 0u; tt < TT; tt++) {
                    if (tt >= nt)
                        break;
                    acc[tt] += wv * uintBitsToFloat(x.d[p.ox + (t0 + tt) * p.cols + e]);
                }
            }
        }
        for (uint tt = 0u; tt < TT; tt++)
            red[tt * 64u + tid] = acc[tt];
        barrier();
        for (uint s = 32u; s > 0u; s >>= 1) {
            if (tid < s)
                for (uint tt = 0u; tt < TT; tt++)
                    red[tt * 64u + tid] += red[tt * 64u + tid + s];
            barrier();
        }
        if (tid < nt)
            y.d[p.oy + (t0 + tid) * p.rows + row] = red[tid * 64u] + b;
        barrier(); // red is read before the next tokens' sums go in
    }
}
