#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#ifdef INT_DOT
#extension GL_EXT_spirv_intrinsics : require
#endif
#ifdef COOP_NV
#extension GL_NV_cooperative_matrix : require
#extension GL_NV_integer_cooperative_matrix : require
#extension GL_EXT_shader_explicit_arithmetic_types_int8 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_vote : require
#endif
// y row t = x row t w^T (+ b) for many tokens (prompts): the products of
// the block types (TYPE: matmul.comp's codes 2 .. 9, 11, 12), with
// matmul.comp's arithmetic (see its header): per 32-element block of the
// legacy types the integer dot of the quants times (d_w * d_x) (+ m_w *
// s_x), summed in float; per 256-element K super-block the reference's
// integer sums (quant/ref_kquants.c: isum = sum of scale * sub-block dot,
// mins = sum of min * bsum) times d_w d_x and dmin_w d_x, summed in float.
// Same bindings, push constants and weight and activation layouts as
// matmul.comp; only the work is split differently.
//
// A workgroup makes a BM x BN tile of y (BM weight rows, BN tokens),
// stepping through the row KC chunks of 32 elements at a time: the chunks'
// weights unpacked to signed int8 (the exact quant values, offsets taken
// off) and their scales go to shared memory with the activation quants and
// scales, then each invocation takes a TM x TN sub-tile (rows tx + RX i,
// tokens ty + RY j) from there: every weight quant read from memory once
// per BN tokens and every activation once per BM rows, where matmul.comp
// reads the weights once per 8 tokens.  Rows and tokens past the end are
// read as the last one (their sums are dropped).
//
// INT_DOT (a second compile, for devices with shaderIntegerDotProduct):
// the four-quant dots are SPIR-V's OpSDot on packed 4x8-bit vectors
// (exact: no saturation), through GL_EXT_spirv_intrinsics (glslang before
// 12 has no GL_EXT_integer_dot_product); otherwise four multiplies.
//
// COOP_NV (a third compile, for the legacy types on devices with NVIDIA's
// cooperative matrices of int8 16 x 32 by 32 x 16 into int32, subgroups
// of 32): each subgroup multiplies a 16-row by 32-token part of the tile
// a chunk at a time with the matrix units, the integer sums per chunk
// exact as the dots', then scales them per element as the dots' path does
// (coop_chunk); the quants are laid out a row's (token's) 32 in a row of
// shared memory for the matrix loads.
layout(local_size_x = 256) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { uint d[]; } x;
layout(std430, set = 0, binding = 1) readonly buffer B_1 { uint d[]; } w;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } bias;
layout(std430, set = 0, binding = 3) writeonly buffer B_3 { float d[]; } y;

layout(push_constant) uniform P { uint type, ox, ow, ob, has_b, oy, cols, rows, n, kc; } p;

// the weight type (p.type), fixed when the pipeline is made: one pipeline
// per type, each with only its own unpacking
layout(constant_id = 0) const uint TYPE = 2u;
// legacy types: each step's weights and activations read into registers
// while the step before is computed (ops_vulkan.c: CODEMOE_VULKAN_TILED_PREFETCH)
layout(constant_id = 1) const uint PREFETCH_ON = 1u;

#include "q8_0.glsl"
#include "wblocks.glsl"

// (ops_vulkan.c's dispatch counts BM x BN tiles: VK_TILE_ROWS, VK_TILE_TOKENS)
#define BM 64u  // weight rows per workgroup
#define BN 64u  // tokens per workgroup
#define TM 4u   // rows per invocation
#define TN 4u   // tokens per invocation
#define RX (BM / TM) // invocation (tx, ty): rows tx + RX i, tokens ty + RY j
#define RY (BN / TN)
#define NT 256u // invocations: RX RY (local_size_x)
// 32-element chunks per step between barriers: 4, or more where shared
// memory allows (the host's choice: tiled_chunks in backend_vulkan.c)
layout(constant_id = 2) const uint KC = 4u;

// Chunk c of the step, half h (16 elements, four to a uint as the
// activations' quants: element 4k + b in byte b), at [(2 c + h) WS + row]
// and [(2 c + h) XS + token] (a row of padding between the halves: the
// loads' stores, (c, h) fastest, fall in different banks).  The weights'
// scales at [c BM + row]: d, the second scale (m of Q4_1/Q5_1, dmin of the
// K types), the K types' integer scales and mins of the chunk's two
// 16-element halves (int16 pairs); the activations' at [c BN + token]: d,
// and s (legacy, float bits) or the halves' two bsums (K, int16 pair).
// COOP_NV instead: a row's (token's) chunk as two uvec4 at QROW c + ...,
// and a third of padding, so that the eight rows a matrix load reads at
// once (48 bytes apart) hit every bank once; the chunks two further
// apart, so a store's (chunk, half) neighbours fall in different banks.
#ifdef COOP_NV
#define QROW 3u
#define WQ_AT(c, h, r) ((c) * (BM * QROW + 2u) + (r) * QROW + (h))
#define XQ_AT(c, h, t) ((c) * (BN * QROW + 2u) + (t) * QROW + (h))
shared uvec4 s_wq[KC * (BM * QROW + 2u)];
shared uvec4 s_xq[KC * (BN * QROW + 2u)];
#else
#define WS (BM + 1u)
#define XS (BN + 1u)
#define WQ_AT(c, h, r) ((2u * (c) + (h)) * WS + (r))
#define XQ_AT(c, h, t) ((2u * (c) + (h)) * XS + (t))
shared uvec4 s_wq[KC * 2u * WS];
shared uvec4 s_xq[KC * 2u * XS];
#endif
shared float s_wd[KC * BM], s_wm[KC * BM], s_xd[KC * BN];
shared uint s_wsc[KC * BM], s_wmn[KC * BM], s_xs[KC * BN];

// The weights of chunks k0 .. k0 + kc - 1 of rows r0 ..: an invocation per
// (row, chunk, half), (chunk, half) fastest (neighbours read neighbouring
// bytes of a row); then an invocation per (row, chunk) for the scales.
void load_weights(uint r0, uint k0, uint kc, uint tid)
{
    for (uint i = tid; i < BM * kc * 2u; i += NT) {
        const uint r = i / (2u * kc), ch = i % (2u * kc), h = ch & 1u;
        uint j;
        const uint hb = block_of(r0, r, k0 + (ch >> 1), j);
        s_wq[WQ_AT(ch >> 1, h, r)] = uvec4(wquants(hb, j, 2u * h), wquants(hb, j, 2u * h + 1u));
    }
    for (uint i = tid; i < BM * kc; i += NT) {
        const uint r = i / kc, c = i % kc;
        uint j;
        const uint hb = block_of(r0, r, k0 + c, j);
        const uint at = c * BM + r;
        wscales(hb, j, s_wd[at], s_wm[at], s_wsc[at], s_wmn[at]);
    }
}

// The activations of those chunks, tokens t0 ..: quantize.comp's blocks
// (q8_0/q8_1: 10 uints, d, s, 8 of quants; q8_K: 73 a super-block, d, 64
// of quants, 8 of bsum pairs).
void load_acts(uint t0, uint k0, uint kc, uint tid)
{
    for (uint i = tid; i < BN * kc * 2u; i += NT) {
        const uint t = i / (2u * kc), c = (i % (2u * kc)) >> 1, h = i & 1u;
        const uint tok = min(t0 + t, p.n - 1u), kb = k0 + c;
        uint base, q;
        if (KT) {
            base = p.ox + 73u * (tok * (p.cols / 256u) + (kb >> 3));
            q = base + 1u + 8u * (kb & 7u) + 4u * h;
        } else {
            base = p.ox + 10u * (tok * (p.cols / 32u) + kb);
            q = base + 2u + 4u * h;
        }
        s_xq[XQ_AT(c, h, t)] = uvec4(x.d[q], x.d[q + 1u], x.d[q + 2u], x.d[q + 3u]);
        if (h == 0u) {
            s_xd[c * BN + t] = uintBitsToFloat(x.d[base]);
            s_xs[c * BN + t] = KT ? x.d[base + 65u + (kb & 7u)] : x.d[base + 1u];
        }
    }
}

// Register prefetch (the legacy types): a thread's items of a step, as
// load_weights and load_acts number them, read from memory into registers
// (fetch_step) before the step ahead of them is computed, and unpacked into
// shared memory (store_step) after it, so that the reads' latency is spent
// computing.  A weight item (row, chunk, half) is the 16 quants of its half
// chunk, read as the 6 words holding halfwords fs .. fs + 9 of its block
// (fs: the quants, or Q5's qh before them); a scale item its block's first
// two halfwords (d, m); an activation item its 4 words of quants (and the
// block's d and s for the first half).
const bool PREFETCH = PREFETCH_ON != 0u && TYPE <= 6u;
const uint WI = (BM * KC * 2u + NT - 1u) / NT; // weight items a thread: 2 (KC 4)
const uint SI = (BM * KC + NT - 1u) / NT;      // scale items: 1
const uint AI = (BN * KC * 2u + NT - 1u) / NT; // activation items: 2
uint pw[WI][6], pwo[WI], ps_[SI][2], pso[SI];
uvec4 pa[AI];
uint pad[AI], pas[AI];

// the first halfword a weight item reads: Q8_0 its half's quants, Q4_0 and
// Q4_1 the 16 bytes of nibbles, Q5_0 and Q5_1 the qh word before them
uint item_start(uint h) { return TYPE == 2u ? 1u + 8u * h : LMIN ? 2u : 1u; }

// word k from word wd on, or the buffer's last (a run may reach past a
// block at the end of the buffer; what is read past the block is unused)
uint weight_word(uint wd, uint k) { return w.d[min(wd + k, uint(w.d.length()) - 1u)]; }

void fetch_step(uint r0, uint t0, uint k0, uint kc, uint tid)
{
    [[unroll]] for (uint u = 0u; u < WI; u++) {
        const uint i = tid + NT * u;
        if (i >= BM * kc * 2u)
            break;
        const uint r = i / (2u * kc), ch = i % (2u * kc);
        uint j;
        const uint hs = block_of(r0, r, k0 + (ch >> 1), j) + item_start(ch & 1u);
        pwo[u] = hs & 1u;
        [[unroll]] for (uint k = 0u; k < 6u; k++)
            pw[u][k] = weight_word(hs >> 1, k);
    }
    [[unroll]] for (uint u = 0u; u < SI; u++) {
        const uint i = tid + NT * u;
        if (i >= BM * kc)
            break;
        uint j;
        const uint hb = block_of(r0, i / kc, k0 + i % kc, j);
        pso[u] = hb & 1u;
        ps_[u][0] = weight_word(hb >> 1, 0u);
        ps_[u][1] = weight_word(hb >> 1, 1u);
    }
    [[unroll]] for (uint u = 0u; u < AI; u++) {
        const uint i = tid + NT * u;
        if (i >= BN * kc * 2u)
            break;
        const uint t = i / (2u * kc), c = (i % (2u * kc)) >> 1, h = i & 1u;
        const uint tok = min(t0 + t, p.n - 1u);
        const uint base = p.ox + 10u * (tok * (p.cols / 32u) + k0 + c), q = base + 2u + 4u * h;
        pa[u] = uvec4(x.d[q], x.d[q + 1u], x.d[q + 2u], x.d[q + 3u]);
        pad[u] = x.d[base];
        pas[u] = x.d[base + 1u];
    }
}

// word k of a run of halfwords read as words from a word boundary, the
// run starting at the high half of the first when odd
uint hword(uint raw[6], uint odd, uint k)
{
    return odd != 0u ? (raw[k] >> 16) | (raw[k + 1u] << 16) : raw[k];
}

void store_step(uint kc, uint tid)
{
    [[unroll]] for (uint u = 0u; u < WI; u++) {
        const uint i = tid + NT * u;
        if (i >= BM * kc * 2u)
            break;
        const uint r = i / (2u * kc), ch = i % (2u * kc), h = ch & 1u;
        uint a[5];
        [[unroll]] for (uint k = 0u; k < 5u; k++)
            a[k] = hword(pw[u], pwo[u], k);
        uvec4 v = uvec4(a[0], a[1], a[2], a[3]); // Q8_0: the quants as they are
        if (TYPE != 2u) { // 16 bytes of qs (after Q5's qh)
            const uint o = TYPE == 4u || TYPE == 6u ? 1u : 0u;
            v = uvec4(legacy_quants(uvec2(a[o], a[o + 1u]), a[0], 2u * h),
                      legacy_quants(uvec2(a[o + 2u], a[o + 3u]), a[0], 2u * h + 1u));
        }
        s_wq[WQ_AT(ch >> 1, h, r)] = v;
    }
    [[unroll]] for (uint u = 0u; u < SI; u++) {
        const uint i = tid + NT * u;
        if (i >= BM * kc)
            break;
        const uint r = i / kc, c = i % kc, at = c * BM + r;
        const uint dm = pso[u] != 0u ? (ps_[u][0] >> 16) | (ps_[u][1] << 16) : ps_[u][0];
        s_wd[at] = f16_val(dm & 0xFFFFu);
        s_wm[at] = LMIN ? f16_val(dm >> 16) : 0.0;
    }
    [[unroll]] for (uint u = 0u; u < AI; u++) {
        const uint i = tid + NT * u;
        if (i >= BN * kc * 2u)
            break;
        const uint t = i / (2u * kc), c = (i % (2u * kc)) >> 1, h = i & 1u;
        s_xq[XQ_AT(c, h, t)] = pa[u];
        if (h == 0u) {
            s_xd[c * BN + t] = uintBitsToFloat(pad[u]);
            s_xs[c * BN + t] = pas[u];
        }
    }
}

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
int dot16(uvec4 a, uvec4 b) { return dot4(a.x, b.x) + dot4(a.y, b.y) + dot4(a.z, b.z) + dot4(a.w, b.w); }

// A legacy chunk's integer sum (|sum| <= 32 * 128 * 128 < 2^22) starts
// from the bits of F_BIAS = 1.5 2^23, whose ulp is 1: the sum's bits are
// then the float F_BIAS + sum, and subtracting F_BIAS gives float(sum)
// exactly.  An integer-to-float conversion runs at a quarter of the
// integer rate on some GPUs (NVIDIA's); the add is folded into the dots.
#define F_BIAS_BITS 0x4B400000
#define F_BIAS 12582912.0

float acc[TM * TN];
int isum[TM * TN], mins[TM * TN], t16[TM * TN];

// The K types' sums of a finished super-block into acc, as the reference:
// d_w d_x isum - dmin_w d_x mins.
void flush_k(uint c, uint tx, uint ty)
{
    for (uint i = 0u; i < TM; i++) {
        const uint wi = c * BM + tx + RX * i;
        const float dw = s_wd[wi], dm = s_wm[wi];
        for (uint jj = 0u; jj < TN; jj++) {
            const float dx = s_xd[c * BN + ty + RY * jj];
            const uint o = i * TN + jj;
            acc[o] += KMIN ? (dw * dx) * float(isum[o]) - (dm * dx) * float(mins[o])
                           : (dw * dx) * float(isum[o]);
            isum[o] = 0;
            mins[o] = 0;
        }
    }
}

// Chunk c of the step (chunk kb of the row) into this invocation's sums:
// the two halves' integer dots, then per type the block's float term
// (legacy) or the scaled sums of the super-block (K).
void compute_chunk(uint c, uint kb, uint tx, uint ty)
{
    int s0[TM], s1[TM]; // 16-element sub-blocks' scales
    for (uint i = 0u; i < TM; i++) {
        const int sc = int(s_wsc[c * BM + tx + RX * i]);
        s0[i] = bitfieldExtract(sc, 0, 16);
        s1[i] = bitfieldExtract(sc, 16, 16);
    }
    for (uint h = 0u; h < 2u; h++) {
        uvec4 a[TM], b[TN];
        for (uint i = 0u; i < TM; i++)
            a[i] = s_wq[WQ_AT(c, h, tx + RX * i)];
        for (uint jj = 0u; jj < TN; jj++)
            b[jj] = s_xq[XQ_AT(c, h, ty + RY * jj)];
        for (uint i = 0u; i < TM; i++)
            for (uint jj = 0u; jj < TN; jj++) {
                const uint o = i * TN + jj;
                const int d = dot16(a[i], b[jj]);
                if (h == 0u)
                    t16[o] = KT ? d : d + F_BIAS_BITS;
                else if (SC16)
                    isum[o] += s0[i] * t16[o] + s1[i] * d;
                else
                    t16[o] += d;
            }
    }
    if (KT && !SC16) { // one scale for the chunk
        for (uint i = 0u; i < TM; i++)
            for (uint jj = 0u; jj < TN; jj++)
                isum[i * TN + jj] += int(s_wsc[c * BM + tx + RX * i]) * t16[i * TN + jj];
    } else if (!KT) { // legacy: the block's float term
        for (uint i = 0u; i < TM; i++) {
            const float dw = s_wd[c * BM + tx + RX * i], mw = s_wm[c * BM + tx + RX * i];
            for (uint jj = 0u; jj < TN; jj++) {
                const uint xi = c * BN + ty + RY * jj, o = i * TN + jj;
                acc[o] += (uintBitsToFloat(uint(t16[o])) - F_BIAS) * (dw * s_xd[xi]);
                if (LMIN)
                    acc[o] += mw * uintBitsToFloat(s_xs[xi]);
            }
        }
    }
    if (KMIN) { // min * bsum of each half (Q4_K/Q5_K: the chunk's one min)
        for (uint i = 0u; i < TM; i++) {
            const uint mn = s_wmn[c * BM + tx + RX * i];
            const int m0 = int(mn & 0xFFFFu), m1 = TYPE == 11u ? int(mn >> 16) : m0;
            for (uint jj = 0u; jj < TN; jj++) {
                const int bs = int(s_xs[c * BN + ty + RY * jj]);
                mins[i * TN + jj] += m0 * bitfieldExtract(bs, 0, 16) + m1 * bitfieldExtract(bs, 16, 16);
            }
        }
    }
    if (KT && (kb & 7u) == 7u)
        flush_k(c, tx, ty);
}

#ifdef COOP_NV
// A subgroup's part of the tile: rows sr .. sr + 15, tokens st .. st + 31
// as two 16 x 16 fragments of int32 sums.  Element i of a fragment (of
// CL an invocation) is at row rr[i], token cc[i] of it: the
// implementation's layout, read once by loading a matrix of the indices.
// Where that is the layout of NVIDIA's mma instructions (nvl), the rows
// and tokens are spelled out instead, so that the elements sharing a
// row or a token share its scale's load.
#define SCOPE 3 // gl_ScopeSubgroup
#define CM_A icoopmatNV<8, SCOPE, 16, 32>
#define CM_B icoopmatNV<8, SCOPE, 32, 16>
#define CM_C icoopmatNV<32, SCOPE, 16, 16>
#define CL 8u
shared int s_idx[256];
uint rr[CL], cc[CL];
float cacc[2u * CL];

uint nv_row(uint lane, uint i) { return (lane >> 2) + 8u * ((i >> 1) & 1u); }
uint nv_token(uint lane, uint i) { return 2u * (lane & 3u) + (i & 1u) + 8u * (i >> 2); }

// rr and cc (the indices' matrix is in s_idx); whether they are nvl's
bool coop_layout()
{
    CM_C ix;
    coopMatLoadNV(ix, s_idx, 0u, 16u, false);
    const uint lane = gl_SubgroupInvocationID;
    bool nv = ix.length() == int(CL);
    [[unroll]] for (uint i = 0u; i < CL; i++) {
        rr[i] = uint(ix[i]) >> 4;
        cc[i] = uint(ix[i]) & 15u;
        nv = nv && rr[i] == nv_row(lane, i) && cc[i] == nv_token(lane, i);
    }
    return subgroupAll(nv);
}

// a fragment's exact chunk sums (biased as the dots' t16) into cacc, as
// compute_chunk's legacy float term
#define COOP_SCALE(ROW, TOKEN)                                                   \
    [[unroll]] for (uint i = 0u; i < CL; i++) {                                \
        const uint r = wb + (ROW), t = xb + (TOKEN);                           \
        const float sum = uintBitsToFloat(uint(sv[i])) - F_BIAS;               \
        cacc[f * CL + i] += sum * (s_wd[r] * s_xd[t]);                         \
        if (LMIN)                                                              \
            cacc[f * CL + i] += s_wm[r] * uintBitsToFloat(s_xs[t]);            \
    }

void coop_chunk(uint c, uint sr, uint st, bool nvl)
{
    CM_A a;
    coopMatLoadNV(a, s_wq, WQ_AT(c, 0u, sr), QROW, false);
    const CM_C bias0 = CM_C(F_BIAS_BITS);
    const uint lane = gl_SubgroupInvocationID, wb = c * BM + sr;
    [[unroll]] for (uint f = 0u; f < 2u; f++) {
        CM_B b;
        coopMatLoadNV(b, s_xq, XQ_AT(c, 0u, st + 16u * f), QROW, true);
        const CM_C s = coopMatMulAddNV(a, b, bias0);
        int sv[CL];
        [[unroll]] for (uint i = 0u; i < CL; i++)
            sv[i] = s[i];
        const uint xb = c * BN + st + 16u * f;
        if (nvl) {
            COOP_SCALE(nv_row(lane, i), nv_token(lane, i))
        } else {
            COOP_SCALE(rr[i], cc[i])
        }
    }
}
#endif

// row's bias, or 0
float bias_of(uint row)
{
    if (p.has_b == 0u)
        return 0.0;
    const uint h = p.ob + 2u * row, lo = bias.d[h >> 1];
    return uintBitsToFloat((h & 1u) == 0u ? lo : (lo >> 16) | (bias.d[(h >> 1) + 1u] << 16));
}

void main()
{
    const uint tid = gl_LocalInvocationIndex, tx = tid % RX, ty = tid / RX;
    const uint r0 = gl_WorkGroupID.x * BM, t0 = gl_WorkGroupID.y * BN;
    // split keys (p.kc > 0): split z takes chunks z kc .. (z + 1) kc - 1
    // and writes its partial sums z n rows floats further on (split_sum.comp
    // adds them up); kc is a whole number of K super-blocks
    const uint z = gl_WorkGroupID.z, kbeg = z * p.kc;
    const uint nk = p.kc == 0u ? p.cols / 32u : min(p.cols / 32u, kbeg + p.kc);
    const uint oy = p.oy + z * p.n * p.rows;
    for (uint o = 0u; o < TM * TN; o++) {
        acc[o] = 0.0;
        isum[o] = 0;
        mins[o] = 0;
    }
#ifdef COOP_NV
    const uint sg = gl_SubgroupID, sr = 16u * (sg & 3u), st = 32u * (sg >> 2);
    for (uint i = tid; i < 256u; i += NT)
        s_idx[i] = int(i);
    for (uint o = 0u; o < 2u * CL; o++)
        cacc[o] = 0.0;
    barrier();
    const bool nvl = coop_layout();
#endif
    if (PREFETCH && kbeg < nk)
        fetch_step(r0, t0, kbeg, min(KC, nk - kbeg), tid);
    for (uint k0 = kbeg; k0 < nk; k0 += KC) {
        const uint kc = min(KC, nk - k0);
        if (k0 > kbeg)
            barrier(); // the last step's chunks are read
        if (PREFETCH) {
            store_step(kc, tid);
        } else {
            load_weights(r0, k0, kc, tid);
            load_acts(t0, k0, kc, tid);
        }
        barrier();
        if (PREFETCH && k0 + KC < nk)
            fetch_step(r0, t0, k0 + KC, min(KC, nk - k0 - KC), tid);
#ifdef COOP_NV
        for (uint c = 0u; c < kc; c++)
            coop_chunk(c, sr, st, nvl);
#else
        for (uint c = 0u; c < kc; c++)
            compute_chunk(c, k0 + c, tx, ty);
#endif
    }
#ifdef COOP_NV
    for (uint f = 0u; f < 2u; f++)
        for (uint i = 0u; i < CL; i++) {
            const uint row = r0 + sr + rr[i], tok = t0 + st + 16u * f + cc[i];
            if (row < p.rows && tok < p.n)
                y.d[oy + tok * p.rows + row] = cacc[f * CL + i] + bias_of(row);
        }
#else
    for (uint i = 0u; i < TM; i++) {
        const uint row = r0 + tx + RX * i;
        if (row >= p.rows)
            break;
        const float b = bias_of(row);
        for (uint jj = 0u; jj < TN; jj++) {
            const uint tok = t0 + ty + RY * jj;
            if (tok < p.n)
                y.d[oy + tok * p.rows + row] = acc[i * TN + jj] + b;
        }
    }
#endif
}
