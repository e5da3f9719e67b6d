#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#ifdef INT_DOT
#extension GL_EXT_spirv_intrinsics : require
#endif
// y row t = x row t w^T (+ b): the products (matmul, logits) with the
// reference's arithmetic (backends/ref ref_matmul1, quant/ref_legacy.c,
// quant/ref_kquants.c):
// - type 0 F32, 1 F16, 10 BF16: the float activation times each weight
//   (its exact value), summed in float;
// - type 2 Q8_0, 3 Q4_0, 4 Q5_0, 5 Q4_1, 6 Q5_1: the activation row
//   quantized to q8_0/q8_1 first (quantize.comp's blocks, bound as x), then
//   per block the integer dot of the 32 quant pairs times (f16 d of the
//   weight * d of the activation) (+ m of the weight * s of the activation
//   for Q4_1/Q5_1), in float, summed over blocks in float (the reference
//   sums in double: within the tests' 2e-5 of the largest output);
// - type 7 Q4_K, 9 Q5_K, 8 Q6_K, 11 Q2_K, 12 Q3_K: the activation row quantized to
//   q8_K (quantize.comp, k mode), then per sub-block the integer dot times
//   the scales (minus the min term from the activation's bsums), as the
//   reference's dots, in float.
// Weights are GGUF rows of cols elements, one after the other from
// halfword ow of binding 1 (2-byte aligned, so read from uints by shifts):
// F32 (a float per two halfwords), F16, BF16, block_q8_0 (17 halfwords: f16
// d, then 32 int8 quants, element j in byte j), the 4/5-bit legacy blocks
// (quant/blocks.h; element j in the low nibble of byte j of qs, j + 16 in
// its high one, the fifth bit bit j of qh), the K blocks (quant/blocks.h,
// unpacked as quant/ref_kquants.c does).
// A workgroup per RW weight rows (linear over the grid: (x, y) with x
// capped by the host), a subgroup per row at a time: its lanes over the
// row, each keeping TT tokens' sums (the weights read once per TT tokens),
// then summed through the subgroup's part of shared memory in lane order
// (subgroup barriers only: no workgroup barrier, which a CPU device pays
// dearly for, and a fixed order of the sums whatever the device).
// Legacy blocks: a lane takes a quarter block (8 elements) at a time; K
// blocks: a sub-block (16 or 32 elements); F16/BF16 two elements.
// The K blocks' quants (and Q8_0's) go four to a uint as signed bytes, and
// their dots with four activation bytes are dot4: SPIR-V's OpSDot where
// the device has shaderIntegerDotProduct (INT_DOT, a second compile:
// matmul_dot), else four multiplies; both exact.  Offsets (Q6_K's 32) come
// off afterwards through the activation block's sums.
// x is F32 rows of cols from ox (float types) or quantize.comp's blocks
// from ox; y rows of `rows` floats from oy; the bias (has_b) floats from
// halfword ob of binding 2.
layout(local_size_x = 64) in;

#define TT 8u
#define XB 10u // uints per activation block (quantize.comp)

layout(std430, set = 0, binding = 0) readonly buffer B_0 { uint d[]; } x;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { uint d[]; } w;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } bias;
layout(std430, set = 0, binding = 3) writeonly buffer B_3 { float d[]; } y;

// tpc: tokens per workgroup along z (0: all n), so that a product of few
// rows over many tokens (a router's) still spreads over the device.
// Expert products (es != 0, one token, MoE on the device): workgroup z is
// a slot of the token's chosen experts, whose expert route.comp left at
// uint oe + z of binding 2 (no bias then); the expert's matrix is es
// halfwords after expert 0's (ow), the slot's activations xstep uints
// after the last slot's, its output row `rows` floats after the last's.
layout(push_constant) uniform P {
    uint type, ox, ow, ob, has_b, oy, cols, rows, n, tpc, es, oe, xstep;
} p;

// where this workgroup's weights, activations and outputs start
uint OW, OX, OY;

// The weight type (p.type's value) and the rows per workgroup, fixed when
// the pipeline is made: a pipeline per type, each with only its own code
// (one shader holding every type's arrays ran several times slower on
// lavapipe, even where they were not used).
layout(constant_id = 0) const uint TYPE = 0u;
layout(constant_id = 1) const uint RW = 8u;

#include "q8_0.glsl"

// the activation's uint i
uint xin(uint i) { return x.d[i]; }

shared float red[TT * 64u];

// halfword h of the weights
uint half_at(uint h) { return (w.d[h >> 1] >> ((h & 1u) << 4)) & 0xFFFFu; }
// the 32 bits at halfword h
uint word_at(uint h) { return (h & 1u) == 0u ? w.d[h >> 1] : half_at(h) | (half_at(h + 1u) << 16); }
// byte i of the block from halfword hb
uint byte_at(uint hb, uint i) { return (half_at(hb + (i >> 1)) >> (8u * (i & 1u))) & 0xFFu; }
int sbyte(uint v, uint k) { return bitfieldExtract(int(v), int(8u * k), 8); }

#ifdef INT_DOT
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018],
                  id = 4450)
int sdot(uint a, uint b, spirv_literal int packed_4x8);
int dot4(uint a, uint b) { return sdot(a, b, 0); }
#else
int dot4(uint a, uint b)
{
    int s = 0;
    for (int k = 0; k < 32; k += 8)
        s += bitfieldExtract(int(a), k, 8) * bitfieldExtract(int(b), k, 8);
    return s;
}
#endif

float acc[TT];

// acc[tt] = this lane's part of row's dot with token t0 + tt, tt < nt: the
// row's blocks (or elements) i = lane, lane + nl, ...
void accumulate(uint row, uint t0, uint nt, uint lane, uint nl)
{
    const uint nb = p.cols / 32u;
    for (uint tt = 0u; tt < TT; tt++)
        acc[tt] = 0.0;
    if (TYPE == 2u) {
        const uint base = OW + row * nb * 17u;
        for (uint i = lane; i < nb * 4u; i += nl) {
            const uint blk = i >> 2, q = i & 3u, hb = base + blk * 17u;
            const float dw = f16_val(half_at(hb));
            const uint w0 = word_at(hb + 1u + 4u * q), w1 = word_at(hb + 3u + 4u * q);
            for (uint tt = 0u; tt < TT; tt++) {
                if (tt >= nt)
                    break;
                const uint xb = OX + XB * ((t0 + tt) * nb + blk);
                const int s = dot4(w0, xin(xb + 2u + 2u * q)) + dot4(w1, xin(xb + 3u + 2u * q));
                acc[tt] += float(s) * (dw * uintBitsToFloat(xin(xb)));
            }
        }
    } else if (TYPE == 8u) {
        // Q6_K (105 halfwords: ql[128], qh[64], int8 scales[16], f16
        // d): a thread per sub-block j of 16 (quant/ref_kquants.c
        // q6k_unpack), the activations q8_K (quantize.comp, k mode)
        const uint nbk = p.cols / 256u, base = OW + row * nbk * 105u;
        for (uint i = lane; i < nbk * 16u; i += nl) {
            const uint blk = i >> 4, j = i & 15u, hb = base + blk * 105u;
            const float dw = f16_val(half_at(hb + 104u));
            const int sc = bitfieldExtract(int(byte_at(hb, 192u + j)), 0, 8);
            const uint c = j >> 3, k = (j >> 1) & 3u, l0 = 16u * (j & 1u);
            // the levels + 32 (0..63), four bytes a uint; the 32 comes off
            // as 32 times the sub-block's activation sum
            uint W[4];
            const uint ql = hb + (64u * c + 32u * (k & 1u) + l0) / 2u, qh = hb + 64u + 16u * c + l0 / 2u;
            for (uint u = 0u; u < 4u; u++)
                W[u] = ((word_at(ql + 2u * u) >> (4u * (k >> 1))) & 0x0F0F0F0Fu) |
                       (((word_at(qh + 2u * u) >> (2u * k)) & 0x03030303u) << 4);
            for (uint tt = 0u; tt < TT; tt++) {
                if (tt >= nt)
                    break;
                const uint xb = OX + 73u * ((t0 + tt) * nbk + blk);
                int t = 0;
                for (uint u = 0u; u < 4u; u++)
                    t += dot4(W[u], xin(xb + 1u + 4u * j + u));
                t -= 32 * bitfieldExtract(int(xin(xb + 65u + (j >> 1))), int(16u * (j & 1u)), 16);
                acc[tt] += float(sc * t) * (dw * uintBitsToFloat(xin(xb)));
            }
        }
    } else if (TYPE == 12u) {
        // Q3_K (55 halfwords: hmask[32], qs[64], scales[12], f16 d): a
        // lane per sub-block j of 16 (q3k_unpack, cm_k3_scales,
        // cm_dot_q3_K), the activations q8_K
        const uint nbk = p.cols / 256u, base = OW + row * nbk * 55u;
        for (uint i = lane; i < nbk * 16u; i += nl) {
            const uint blk = i >> 4, j = i & 15u, hb = base + blk * 55u;
            const float dw = f16_val(half_at(hb + 54u));
            const uint slo = (byte_at(hb, 96u + (j & 7u)) >> (4u * (j >> 3))) & 0xFu;
            const uint shi = (byte_at(hb, 104u + (j & 3u)) >> (2u * (j >> 2))) & 3u;
            const int sc = int(slo | (shi << 4)) - 32;
            // elements 16 j + l: low bits from qs[32 (j / 8) + 16 (j & 1) +
            // l] at bit 2 ((j / 2) & 3), the third bit of hmask[16 (j & 1) +
            // l] at bit j / 2
            const uint q0 = 32u + 32u * (j >> 3) + 16u * (j & 1u), sh = 2u * ((j >> 1) & 3u);
            int L[16];
            for (uint u = 0u; u < 4u; u++) { // four bytes a read
                const uint lo4 = word_at(hb + q0 / 2u + 2u * u);
                const uint hi4 = word_at(hb + 8u * (j & 1u) + 2u * u);
                for (uint b = 0u; b < 4u; b++) {
                    const uint lo = (lo4 >> (8u * b + sh)) & 3u;
                    const uint hi = (hi4 >> (8u * b + (j >> 1))) & 1u;
                    L[4u * u + b] = int(lo | (hi << 2)) - 4;
                }
            }
            for (uint tt = 0u; tt < TT; tt++) {
                if (tt >= nt)
                    break;
                const uint xb = OX + 73u * ((t0 + tt) * nbk + blk);
                int t = 0;
                for (uint u = 0u; u < 4u; u++) {
                    const uint a = xin(xb + 1u + 4u * j + u);
                    for (uint b = 0u; b < 4u; b++)
                        t += L[4u * u + b] * sbyte(a, b);
                }
                acc[tt] += float(sc * t) * (dw * uintBitsToFloat(xin(xb)));
            }
        }
    } else if (TYPE == 11u) {
        // Q2_K (42 halfwords: scales[16], qs[64], f16 d, dmin): a
        // thread per sub-block j of 16 (q2k_unpack, cm_dot_q2_K)
        const uint nbk = p.cols / 256u, base = OW + row * nbk * 42u;
        for (uint i = lane; i < nbk * 16u; i += nl) {
            const uint blk = i >> 4, j = i & 15u, hb = base + blk * 42u;
            const float dw = f16_val(half_at(hb + 40u)), dmw = f16_val(half_at(hb + 41u));
            const uint sc = byte_at(hb, j), sh = 2u * ((j >> 1) & 3u);
            const uint q0 = 16u + 32u * (j >> 3) + 16u * (j & 1u);
            int L[16];
            for (uint u = 0u; u < 4u; u++) { // four bytes a read
                const uint q4 = word_at(hb + q0 / 2u + 2u * u);
                for (uint b = 0u; b < 4u; b++)
                    L[4u * u + b] = int((q4 >> (8u * b + sh)) & 3u);
            }
            for (uint tt = 0u; tt < TT; tt++) {
                if (tt >= nt)
                    break;
                const uint xb = OX + 73u * ((t0 + tt) * nbk + blk);
                int t = 0;
                for (uint u = 0u; u < 4u; u++) {
                    const uint a = xin(xb + 1u + 4u * j + u);
                    for (uint b = 0u; b < 4u; b++)
                        t += L[4u * u + b] * sbyte(a, b);
                }
                const int bsum = bitfieldExtract(int(xin(xb + 65u + (j >> 1))), int(16u * (j & 1u)), 16);
                const float dx = uintBitsToFloat(xin(xb));
                acc[tt] += float(int(sc & 15u) * t) * (dw * dx) - float(int(sc >> 4) * bsum) * (dmw * dx);
            }
        }
    } else if (TYPE == 7u || TYPE == 9u) {
        // Q4_K (72 halfwords: f16 d, dmin, scales[12], qs[128]), Q5_K
        // (88: qh[32] before qs, the fifth bit of element 64c + 32h + l
        // bit 2c + h of qh[l]): a thread per sub-block j of 32
        // (q45k_unpack, cm_k4_scale_min, dot_q45k), the activations q8_K
        const bool q5 = TYPE == 9u;
        const uint bh = q5 ? 88u : 72u, qo = q5 ? 48u : 16u;
        const uint nbk = p.cols / 256u, base = OW + row * nbk * bh;
        for (uint i = lane; i < nbk * 8u; i += nl) {
            const uint blk = i >> 3, j = i & 7u, hb = base + blk * bh;
            const float dw = f16_val(half_at(hb)), dmw = f16_val(half_at(hb + 1u));
            uint sc, m;
            if (j < 4u) {
                sc = byte_at(hb, 4u + j) & 63u;
                m = byte_at(hb, 8u + j) & 63u;
            } else {
                sc = (byte_at(hb, 8u + j) & 0xFu) | ((byte_at(hb, j) >> 6) << 4);
                m = (byte_at(hb, 8u + j) >> 4) | ((byte_at(hb, 4u + j) >> 6) << 4);
            }
            const uint c = j >> 1, h = j & 1u;
            uint W[8]; // the levels (0..31), four bytes a uint
            for (uint u = 0u; u < 8u; u++) {
                W[u] = (word_at(hb + (qo + 32u * c) / 2u + 2u * u) >> (4u * h)) & 0x0F0F0F0Fu;
                if (q5)
                    W[u] |= ((word_at(hb + 8u + 2u * u) >> j) & 0x01010101u) << 4;
            }
            for (uint tt = 0u; tt < TT; tt++) {
                if (tt >= nt)
                    break;
                const uint xb = OX + 73u * ((t0 + tt) * nbk + blk);
                int t = 0;
                for (uint u = 0u; u < 8u; u++)
                    t += dot4(W[u], xin(xb + 1u + 8u * j + u));
                const uint bw = xin(xb + 65u + j);
                const int bsum = bitfieldExtract(int(bw), 0, 16) + bitfieldExtract(int(bw), 16, 16);
                const float dx = uintBitsToFloat(xin(xb));
                acc[tt] += float(int(sc) * t) * (dw * dx) - float(int(m) * bsum) * (dmw * dx);
            }
        }
    } else if (TYPE >= 3u && TYPE <= 6u) {
        // the 4- and 5-bit legacy blocks: f16 d (, f16 m) (, 32 bits
        // qh: the fifth bit of element j in bit j), 16 bytes qs
        // (element j in the low nibble of byte j, j + 16 in its high
        // one), value q - off (Q4_0 8, Q5_0 16) or q d + m
        const bool hasm = TYPE == 5u || TYPE == 6u, hash = TYPE == 4u || TYPE == 6u;
        const uint bh = 9u + (hasm ? 1u : 0u) + (hash ? 2u : 0u);
        const uint qo = 1u + (hasm ? 1u : 0u) + (hash ? 2u : 0u);
        const int off = TYPE == 3u ? 8 : TYPE == 4u ? 16 : 0;
        const uint base = OW + row * nb * bh;
        for (uint i = lane; i < nb * 4u; i += nl) {
            const uint blk = i >> 2, q = i & 3u, hb = base + blk * bh;
            const float dw = f16_val(half_at(hb));
            const float mw = hasm ? f16_val(half_at(hb + 1u)) : 0.0;
            const uint hq = qo - 2u;
            const uint qh = hash ? half_at(hb + hq) | (half_at(hb + hq + 1u) << 16) : 0u;
            // bytes 4q .. 4q + 3: elements 4q + j (low nibbles) and
            // 16 + 4q + j (high nibbles), as four bytes a uint (the fifth
            // bits' four bits spread to bit 4 of each byte by a multiply);
            // the offset comes off through the activations' byte sums
            const uint qs = half_at(hb + qo + 2u * q) | (half_at(hb + qo + 1u + 2u * q) << 16);
            uint lo = qs & 0x0F0F0F0Fu, hi = (qs >> 4) & 0x0F0F0F0Fu;
            if (hash) {
                lo |= ((((qh >> (4u * q)) & 0xFu) * 0x00204081u) & 0x01010101u) << 4;
                hi |= ((((qh >> (16u + 4u * q)) & 0xFu) * 0x00204081u) & 0x01010101u) << 4;
            }
            for (uint tt = 0u; tt < TT; tt++) {
                if (tt >= nt)
                    break;
                const uint xb = OX + XB * ((t0 + tt) * nb + blk);
                const uint a0 = xin(xb + 2u + q), a1 = xin(xb + 6u + q);
                int s = dot4(lo, a0) + dot4(hi, a1);
                if (off != 0)
                    s -= off * (dot4(0x01010101u, a0) + dot4(0x01010101u, a1));
                acc[tt] += float(s) * (dw * uintBitsToFloat(xin(xb)));
                if (hasm && q == 0u) // the min term once a block: m d_x sum(q_x)
                    acc[tt] += mw * uintBitsToFloat(xin(xb + 1u));
            }
        }
    } else if (TYPE == 1u || TYPE == 10u) { // F16, BF16 (the top half of a float)
        // a pair of elements (one uint) at a time where the row starts
        // on a whole uint (cols even: every row then)
        const uint base = OW + row * p.cols;
        const bool pairs = ((base | p.cols) & 1u) == 0u;
        const uint step = pairs ? 2u : 1u;
        for (uint e = lane * step; e < p.cols; e += nl * step) {
            const uint wb = pairs ? w.d[(base + e) >> 1] : half_at(base + e);
            const float w0 = TYPE == 1u ? f16_val(wb & 0xFFFFu) : uintBitsToFloat(wb << 16);
            const float w1 = TYPE == 1u ? f16_val(wb >> 16) : uintBitsToFloat(wb & 0xFFFF0000u);
            for (uint tt = 0u; tt < TT; tt++) {
                if (tt >= nt)
                    break;
                const uint xo = OX + (t0 + tt) * p.cols + e;
                acc[tt] += w0 * uintBitsToFloat(xin(xo));
                if (pairs)
                    acc[tt] += w1 * uintBitsToFloat(xin(xo + 1u));
            }
        }
    } else {
        const uint base = OW + row * p.cols * 2u;
        for (uint e = lane; e < p.cols; e += nl) {
            const float wv = uintBitsToFloat(word_at(base + 2u * e));
            for (uint tt = 0u; tt < TT; tt++) {
                if (tt >= nt)
                    break;
                acc[tt] += wv * uintBitsToFloat(xin(OX + (t0 + tt) * p.cols + e));
            }
        }
    }
}

// y row `row` of every token (+ b): per TT tokens the lanes' sums through
// this subgroup's slots of red, added up by lane tt in lane order (a fixed
// order: deterministic).  Only subgroup barriers: the workgroup's other
// subgroups go their own way.
void row_product(uint row, uint lane, uint nl, uint slot)
{
    float b = 0.0;
    if (p.has_b != 0u) {
        const uint h = p.ob + 2u * row, lo = bias.d[h >> 1];
        b = uintBitsToFloat((h & 1u) == 0u ? lo : (lo >> 16) | (bias.d[(h >> 1) + 1u] << 16));
    }
    const uint tb = gl_WorkGroupID.z * p.tpc, te = p.tpc == 0u ? p.n : min(p.n, tb + p.tpc);
    for (uint t0 = tb; t0 < te; t0 += TT) {
        const uint nt = min(TT, te - t0);
        accumulate(row, t0, nt, lane, nl);
        for (uint tt = 0u; tt < TT; tt++)
            red[tt * 64u + slot + lane] = acc[tt];
        subgroupBarrier();
        for (uint tt = lane; tt < nt; tt += nl) {
            float s = 0.0;
            for (uint l = 0u; l < nl; l++)
                s += red[tt * 64u + slot + l];
            y.d[OY + (t0 + tt) * p.rows + row] = s + b;
        }
        subgroupBarrier(); // red is read before the next tokens' sums go in
    }
}

void main()
{
    // RW rows per workgroup, each one subgroup's (its lanes along the row);
    // subgroups are taken to be whole but for the workgroup's last (nl
    // lanes), numbered from 0, lane l of subgroup s at slot s SZ + l < 64
    const uint wg = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
    const uint SZ = gl_SubgroupSize, sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;
    const uint nl = min(SZ, 64u - sg * SZ);
    OW = p.ow, OX = p.ox, OY = p.oy;
    if (p.es != 0u) {
        const uint slot = gl_WorkGroupID.z;
        OW += bias.d[p.oe + slot] * p.es;
        OX += slot * p.xstep;
        OY += slot * p.rows;
    }
    for (uint r = sg; r < RW; r += gl_NumSubgroups) {
        const uint row = wg * RW + r;
        if (row >= p.rows) // the whole subgroup: its barriers stay uniform
            break;
        row_product(row, lane, nl, sg * SZ);
    }
}
