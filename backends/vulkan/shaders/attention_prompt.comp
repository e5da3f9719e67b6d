#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
// Attention for a prompt's many query rows: workgroup (block b of BR
// consecutive rows, query head h) against KV head g = h / group.  Keys and
// values stream through shared memory BK positions at a time, each tile
// loaded (and decoded to floats) once for all of the block's rows instead
// of once per row as attention.comp does.  Causal: row t (position p0 + t)
// sees positions 0 .. p0 + t; rows past n are padding, never written.
// The caches' layouts and element types are attention.comp's (kv 0 F32,
// 1 F16, 2 Q8_0); d must be a multiple of 32, dv of 4, both <= DMAX.
//
// Two passes over the keys, so no score is stored and any context fits:
// the first finds each row's maximum score and the sum of its exponentials
// (each thread over its own keys, its sum rescaled as its maximum grows;
// the row's threads then combined); the second computes the scores again
// (the same code: the same bits), turns them into weights as the reference
// does (exp(s - max) / sum, rounded to f16 with an F16 cache) and sums the
// values in position order, as the reference does.  Unlike attention.comp
// (and the reference) the dots are of floats: an F16 cache's query is
// rounded to f16, a Q8_0 cache's quantized by the reference's quantizer
// and dequantized, and the keys decoded, so a Q8_0 score's rounding
// differs from the reference's integer dots (within the tests' 2e-5).
//
// 128 threads: thread tid holds row r = tid / TPR, and within it the keys
// c, c + TPR, ... of a tile (c = tid % TPR), then the value dimensions
// 4 (c + TPR m) .. + 3.  Queries and keys sit in shared memory as vec4s,
// the vec4 index xor-swizzled by the row (key) so that the rows (keys) a
// subgroup reads at once fall in different banks.  DMAX 64 (the default):
// 32 rows by 32 keys; DMAX 128: 16 by 16 (shared memory within 32 KiB,
// lavapipe's limit).  Grid (ceil(n / BR), n_head), blocks in reverse
// order: the longest (last rows) first.
#ifndef DMAX
#define DMAX 64
#endif
#if DMAX == 64
#define BR 32u
#define BK 32u
#else
#define BR 16u
#define BK 16u
#endif
#define NT 128u
#define TPR (NT / BR)  // threads per row: 4 or 8
#define KPT (BK / TPR) // keys per thread in a tile: 8 or 2
#define D4 (DMAX / 4)  // vec4s per row: 16 or 32
#define VPT (D4 / TPR) // value vec4s per thread: 4
#define PS (BK + 1u)   // row stride of the weights

layout(local_size_x = 128) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } q;
layout(std430, set = 0, binding = 1) buffer B_1 { float d[]; } o;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } kc;
layout(std430, set = 0, binding = 3) readonly buffer B_3 { uint d[]; } vc;

layout(push_constant) uniform P {
    uint oq, oo, p0, n, n_head, group, d, dv, krow, vrow, kv;
    float scale;
} p;

shared vec4 qs[BR * D4];
shared vec4 ks[BK * D4];
shared vec4 vs[BK * D4];
shared float ps[BR * PS]; // the weights (and first the combining of maxima)

#include "q8_0.glsl"
#include "io.glsl"

float round_f16(float v) { return f16_val(f16_bits(floatBitsToUint(v))); }

// Four signed bytes of w times d.
vec4 q8x4(uint w, float d)
{
    const int x = int(w);
    return vec4(float(bitfieldExtract(x, 0, 8)), float(bitfieldExtract(x, 8, 8)),
                float(bitfieldExtract(x, 16, 8)), float(bitfieldExtract(x, 24, 8))) * d;
}

// Elements e .. e + 3 of a cache (e a multiple of 4) as floats.  Q8_0:
// block b is halfwords 17 b .. 17 b + 16, d then the quants; quant i at
// byte 34 b + 2 + i (four of them one uint, or straddling two).
vec4 kval4(uint e)
{
    if (p.kv == 0u)
        return vec4(uintBitsToFloat(kc.d[e]), uintBitsToFloat(kc.d[e + 1u]),
                    uintBitsToFloat(kc.d[e + 2u]), uintBitsToFloat(kc.d[e + 3u]));
    if (p.kv == 1u) {
        const uint a = kc.d[e >> 1], b = kc.d[(e >> 1) + 1u];
        return vec4(f16_val(a & 0xFFFFu), f16_val(a >> 16), f16_val(b & 0xFFFFu), f16_val(b >> 16));
    }
    const uint h = 17u * (e >> 5), by = 2u * h + 2u + (e & 31u), w = by >> 2;
    const float d = f16_val((kc.d[h >> 1] >> ((h & 1u) * 16u)) & 0xFFFFu);
    return q8x4((by & 3u) == 0u ? kc.d[w] : (kc.d[w] >> 16) | (kc.d[w + 1u] << 16), d);
}
vec4 vval4(uint e)
{
    if (p.kv == 0u)
        return vec4(uintBitsToFloat(vc.d[e]), uintBitsToFloat(vc.d[e + 1u]),
                    uintBitsToFloat(vc.d[e + 2u]), uintBitsToFloat(vc.d[e + 3u]));
    if (p.kv == 1u) {
        const uint a = vc.d[e >> 1], b = vc.d[(e >> 1) + 1u];
        return vec4(f16_val(a & 0xFFFFu), f16_val(a >> 16), f16_val(b & 0xFFFFu), f16_val(b >> 16));
    }
    const uint h = 17u * (e >> 5), by = 2u * h + 2u + (e & 31u), w = by >> 2;
    const float d = f16_val((vc.d[h >> 1] >> ((h & 1u) * 16u)) & 0xFFFFu);
    return q8x4((by & 3u) == 0u ? vc.d[w] : (vc.d[w] >> 16) | (vc.d[w + 1u] << 16), d);
}

// Positions kb .. kb + BK - 1 of KV head g into ks (and vs): zero past last.
void load_tile(uint kb, uint last, uint g, bool values)
{
    const uint d4 = p.d / 4u, dv4 = p.dv / 4u;
    for (uint e = gl_LocalInvocationID.x; e < BK * d4; e += NT) {
        const uint j = e / d4, i4 = e % d4;
        ks[j * D4 + (i4 ^ (j & 7u))] =
            kb + j <= last ? kval4((kb + j) * p.krow + g * p.d + 4u * i4) : vec4(0.0);
    }
    if (values)
        for (uint e = gl_LocalInvocationID.x; e < BK * dv4; e += NT) {
            const uint j = e / dv4, i4 = e % dv4;
            vs[j * D4 + i4] =
                kb + j <= last ? vval4((kb + j) * p.vrow + g * p.dv + 4u * i4) : vec4(0.0);
        }
}

// The scaled scores of row r against the tile's keys c + TPR m.
float sc[KPT];
void scores(uint r, uint c)
{
    [[unroll]] for (uint m = 0u; m < KPT; m++)
        sc[m] = 0.0;
    const uint rx = r & 7u;
    for (uint i4 = 0u; i4 < p.d / 4u; i4++) {
        const vec4 qv = qs[r * D4 + (i4 ^ rx)];
        [[unroll]] for (uint m = 0u; m < KPT; m++) {
            const uint j = c + TPR * m;
            sc[m] += dot(qv, ks[j * D4 + (i4 ^ (j & 7u))]);
        }
    }
    [[unroll]] for (uint m = 0u; m < KPT; m++)
        sc[m] *= p.scale;
}

void main()
{
    const uint tid = gl_LocalInvocationID.x, r = tid / TPR, c = tid % TPR;
    const uint blk = gl_NumWorkGroups.x - 1u - gl_WorkGroupID.x, h = gl_WorkGroupID.y;
    const uint g = h / p.group, t0 = blk * BR, rows = min(BR, p.n - t0);
    const uint p0 = batch_pos(p.p0), last = p0 + t0 + rows - 1u; // the block's last key
    const bool valid = r < rows;
    const uint mine = p0 + t0 + r; // this row's last key (when valid)
    const float ninf = uintBitsToFloat(0xFF800000u);

    // the block's queries, as the reference dots them
    if (p.kv == 2u) {
        const uint nb = p.d / 32u; // a thread per (row, block)
        for (uint e = tid; e < BR * nb; e += NT) {
            const uint rr = e / nb, b = e % nb, qrow = p.oq + ((t0 + rr) * p.n_head + h) * p.d;
            if (rr < rows) {
                for (uint i = 0u; i < 32u; i++)
                    xv[i] = q.d[qrow + 32u * b + i];
                q8_block();
            } else
                qb[0] = 0u;
            const float dq = f16_val(qb[0]);
            for (uint i4 = 0u; i4 < 8u; i4++) {
                const uint w = rr < rows ? qb[1u + 2u * i4] | (qb[2u + 2u * i4] << 16) : 0u;
                qs[rr * D4 + ((8u * b + i4) ^ (rr & 7u))] = q8x4(w, dq);
            }
        }
    } else {
        const uint d4 = p.d / 4u;
        for (uint e = tid; e < BR * d4; e += NT) {
            const uint rr = e / d4, i4 = e % d4, at = p.oq + ((t0 + rr) * p.n_head + h) * p.d + 4u * i4;
            vec4 v = vec4(0.0);
            if (rr < rows) {
                v = vec4(q.d[at], q.d[at + 1u], q.d[at + 2u], q.d[at + 3u]);
                if (p.kv == 1u)
                    v = vec4(round_f16(v.x), round_f16(v.y), round_f16(v.z), round_f16(v.w));
            }
            qs[rr * D4 + (i4 ^ (rr & 7u))] = v;
        }
    }

    // pass 1: each thread's maximum and sum of exponentials over its keys
    float mx = ninf, l = 0.0;
    for (uint kb = 0u; kb <= last; kb += BK) {
        load_tile(kb, last, g, false);
        barrier();
        scores(r, c);
        float tm = ninf;
        [[unroll]] for (uint m = 0u; m < KPT; m++) {
            if (!valid || kb + c + TPR * m > mine)
                sc[m] = ninf;
            tm = max(tm, sc[m]);
        }
        if (tm != ninf) {
            const float mn = max(mx, tm);
            float add = 0.0;
            [[unroll]] for (uint m = 0u; m < KPT; m++)
                add += sc[m] == ninf ? 0.0 : exp(sc[m] - mn);
            l = (mx == ninf ? 0.0 : l * exp(mx - mn)) + add;
            mx = mn;
        }
        barrier();
    }
    // the row's: its TPR threads' combined
    ps[tid] = mx;
    ps[NT + tid] = l;
    barrier();
    float rmx = ninf, sum = 0.0;
    for (uint k = 0u; k < TPR; k++)
        rmx = max(rmx, ps[r * TPR + k]);
    for (uint k = 0u; k < TPR; k++) {
        const float mk = ps[r * TPR + k];
        if (mk != ninf)
            sum += ps[NT + r * TPR + k] * exp(mk - rmx);
    }

    // pass 2: the weights, then the values they weigh, in position order
    vec4 acc[VPT];
    [[unroll]] for (uint m = 0u; m < VPT; m++)
        acc[m] = vec4(0.0);
    const uint dv4 = p.dv / 4u;
    for (uint kb = 0u; kb <= last; kb += BK) {
        load_tile(kb, last, g, true);
        barrier();
        scores(r, c);
        [[unroll]] for (uint m = 0u; m < KPT; m++) {
            const uint j = c + TPR * m;
            float w = 0.0;
            if (valid && kb + j <= mine) {
                w = exp(sc[m] - rmx) / sum;
                if (p.kv == 1u)
                    w = round_f16(w);
            }
            ps[r * PS + j] = w;
        }
        barrier();
        const uint nk = min(BK, last + 1u - kb);
        for (uint j = 0u; j < nk; j++) {
            const float w = ps[r * PS + j];
            [[unroll]] for (uint m = 0u; m < VPT; m++)
                if (c + TPR * m < dv4)
                    acc[m] += w * vs[j * D4 + c + TPR * m];
        }
        barrier();
    }
    if (valid) {
        const uint orow = p.oo + ((t0 + r) * p.n_head + h) * p.dv;
        [[unroll]] for (uint m = 0u; m < VPT; m++) {
            const uint i = 4u * (c + TPR * m);
            if (i < p.dv) {
                o.d[orow + i] = acc[m].x;
                o.d[orow + i + 1u] = acc[m].y;
                o.d[orow + i + 2u] = acc[m].z;
                o.d[orow + i + 3u] = acc[m].w;
            }
        }
    }
}
