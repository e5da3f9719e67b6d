#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_NV_cooperative_matrix : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
// matmul_tiled.comp's products (same bindings, push constants, weight and
// activation layouts, tiles of BM rows by BN tokens) on a device's matrix
// units through VK_NV_cooperative_matrix: per step of KS elements the
// tile's weights are dequantized to f16 (d q (+ m), d sc q - dmin mn) and
// its activation blocks to f16 (d_x q_x) in shared memory, then each
// subgroup multiplies 16 x 16 x 16 f16 matrices into f32 sums for its
// quarter of the tile.  Not the reference's arithmetic: the weights and
// activations are rounded to f16 (relative error 2^-11 each) and summed in
// another order, so the host takes this shader only where asked for speed
// over exactness (ops_vulkan.c, CODEMOE_VULKAN_COOPMAT).
//
// The host makes it only for 32-wide subgroups with 16 x 16 x 16 f16 x f16
// -> f32 shapes: four subgroups, each 32 tokens by 32 rows (2 x 2 matrices).
layout(local_size_x = 128) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { uint d[]; } x;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { uint d[]; } w;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } bias;
layout(std430, set = 0, binding = 3) writeonly buffer B_3 { float d[]; } y;

layout(push_constant) uniform P { uint type, ox, ow, ob, has_b, oy, cols, rows, n; } p;

layout(constant_id = 0) const uint TYPE = 2u;

#include "q8_0.glsl"
#include "wblocks.glsl"

// (ops_vulkan.c's dispatch counts BM x BN tiles: VK_TILE_ROWS, VK_TILE_TOKENS)
#define BM 64u   // weight rows per workgroup
#define BN 64u   // tokens per workgroup
#define KS 64u   // elements per step between barriers (a multiple of 32)
#define NT 128u  // invocations: four subgroups of 32
#define SP (KS / 8u + 1u) // a row's uvec4s (8 halves each) in shared memory, one of padding
const uint SCOPE = 3u;    // gl_ScopeSubgroup

// row r's halves k .. k + 7 of the step at s_w[r SP + k / 8], token t's at
// s_x[t SP + k / 8]: packed f16 pairs
shared uvec4 s_w[BM * SP];
shared uvec4 s_x[BN * SP];
shared float s_out[4u * 256u]; // a 16 x 16 result per subgroup on its way out

// f16 can hold 65504 at most: a larger sum of terms is lost anyway, but an
// infinity would poison the whole row
uint pack2(float a, float b) { return packHalf2x16(clamp(vec2(a, b), -65504.0, 65504.0)); }
uvec2 pack4(vec4 v) { return uvec2(pack2(v.x, v.y), pack2(v.z, v.w)); }
vec4 bytes4(uint v) { return vec4(ivec4(bitfieldExtract(int(v), 0, 8), bitfieldExtract(int(v), 8, 8),
                                        bitfieldExtract(int(v), 16, 8), bitfieldExtract(int(v), 24, 8))); }

// Elements 8 q .. 8 q + 7 of chunk kb of row r0 + r as f16: scale s q + o
// with the chunk's scales (of the 16-element half for the SC16 types).
uvec4 dequant8(uint r0, uint r, uint kb, uint q)
{
    uint j;
    const uint hb = block_of(r0, r, kb, j);
    const uvec2 v = wquants(hb, j, q);
    float d, m;
    uint sc, mn;
    wscales(hb, j, d, m, sc, mn);
    const uint sh = 16u * (q >> 1); // the half's int16 of sc, mn
    float s = d, o = LMIN ? m : 0.0;
    if (TYPE == 7u || TYPE == 9u)
        s = d * float(sc), o = -m * float(mn);
    else if (TYPE == 8u || TYPE == 12u)
        s = d * float(bitfieldExtract(int(sc), int(sh), 16));
    else if (TYPE == 11u)
        s = d * float((sc >> sh) & 0xFFFFu), o = -m * float((mn >> sh) & 0xFFFFu);
    return uvec4(pack4(bytes4(v.x) * s + o), pack4(bytes4(v.y) * s + o));
}

// The step's weights (rows r0 ..) and activations (tokens t0 ..) from
// element k0: 8 halves an invocation at a time; chunks past the row's end
// as zeros.
void load_step(uint r0, uint t0, uint k0, uint tid)
{
    const uint nk = p.cols / 32u;
    for (uint i = tid; i < BM * (KS / 8u); i += NT) {
        const uint r = i / (KS / 8u), g = i % (KS / 8u), kb = (k0 >> 5) + (g >> 2);
        s_w[r * SP + g] = kb < nk ? dequant8(r0, r, kb, g & 3u) : uvec4(0u);
    }
    for (uint i = tid; i < BN * (KS / 8u); i += NT) {
        const uint t = i / (KS / 8u), g = i % (KS / 8u), kb = (k0 >> 5) + (g >> 2);
        uvec4 v = uvec4(0u);
        if (kb < nk) {
            const uint tok = min(t0 + t, p.n - 1u), q = 2u * (g & 3u);
            // quantize.comp's blocks: q8_0/q8_1 10 uints (d, s, 8 of
            // quants), q8_K 73 a super-block (d, 64 of quants, 8 of bsums)
            const uint base = KT ? p.ox + 73u * (tok * (p.cols / 256u) + (kb >> 3))
                                 : p.ox + 10u * (tok * nk + kb);
            const uint qa = KT ? base + 1u + 8u * (kb & 7u) + q : base + 2u + q;
            const float d = uintBitsToFloat(x.d[base]);
            v = uvec4(pack4(bytes4(x.d[qa]) * d), pack4(bytes4(x.d[qa + 1u]) * d));
        }
        s_x[t * SP + g] = v;
    }
}

float bias_of(uint row)
{
    if (p.has_b == 0u)
        return 0.0;
    const uint h = p.ob + 2u * row, lo = bias.d[h >> 1];
    return uintBitsToFloat((h & 1u) == 0u ? lo : (lo >> 16) | (bias.d[(h >> 1) + 1u] << 16));
}

void main()
{
    const uint tid = gl_LocalInvocationIndex, sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;
    const uint r0 = gl_WorkGroupID.x * BM, t0 = gl_WorkGroupID.y * BN;
    const uint tq = 32u * (sg & 1u), rq = 32u * (sg >> 1); // the subgroup's quarter
    fcoopmatNV<32, SCOPE, 16, 16> acc[2][2];
    for (uint i = 0u; i < 2u; i++)
        for (uint j = 0u; j < 2u; j++)
            acc[i][j] = fcoopmatNV<32, SCOPE, 16, 16>(0.0);
    for (uint k0 = 0u; k0 < p.cols; k0 += KS) {
        if (k0 > 0u)
            barrier(); // the last step is read
        load_step(r0, t0, k0, tid);
        barrier();
        for (uint kk = 0u; kk < KS / 8u; kk += 2u) { // 16 halves at a time
            fcoopmatNV<16, SCOPE, 16, 16> a[2], b[2];
            for (uint i = 0u; i < 2u; i++)
                coopMatLoadNV(a[i], s_x, (tq + 16u * i) * SP + kk, SP, false);
            for (uint j = 0u; j < 2u; j++) // weights^T: column n is row rq + 16 j + n
                coopMatLoadNV(b[j], s_w, (rq + 16u * j) * SP + kk, SP, true);
            for (uint i = 0u; i < 2u; i++)
                for (uint j = 0u; j < 2u; j++)
                    acc[i][j] = coopMatMulAddNV(a[i], b[j], acc[i][j]);
        }
    }
    // each 16 x 16 result (tokens by rows) through the subgroup's corner of
    // s_out to y, rows and tokens past the end dropped
    for (uint i = 0u; i < 2u; i++)
        for (uint j = 0u; j < 2u; j++) {
            coopMatStoreNV(acc[i][j], s_out, sg * 256u, 16u, false);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            for (uint e = lane; e < 256u; e += gl_SubgroupSize) {
                const uint tok = t0 + tq + 16u * i + (e >> 4), row = r0 + rq + 16u * j + (e & 15u);
                if (tok < p.n && row < p.rows)
                    y.d[p.oy + tok * p.rows + row] = s_out[sg * 256u + e] + bias_of(row);
            }
            subgroupMemoryBarrierShared();
            subgroupBarrier();
        }
}
