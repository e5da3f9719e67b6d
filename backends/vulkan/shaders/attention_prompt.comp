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
// One pass over the keys (online softmax) for F32 and Q8_0 caches: a row
// keeps its running maximum m, the sum l of exp(s - m) and the values
// weighed by exp(s - m); when a tile raises m, l and the sums are scaled by
// exp(m_old - m), and the sums are divided by l at the end: the
// reference's softmax up to rounding (within the tests' 2e-5).  With an
// F16 cache the reference rounds each weight exp(s - max) / sum to f16
// before it weighs a value, and on models with sharp attention that
// rounding decides tokens (llama.cpp's CPU rounds too), so there a first
// pass finds each row's maximum and sum (each thread over its own keys, its
// sum rescaled as its maximum grows; the row's threads then combined) and
// the second computes the scores again (the same code: the same bits) and
// the weights as the reference does.  The dots are of floats: an F16
// cache's query is rounded to f16, a Q8_0 cache's quantized by the
// reference's quantizer and dequantized, and the keys decoded.
//
// TPR threads a row: thread tid holds row r = tid / TPR, and within it the
// keys c, c + TPR, ... of a tile (c = tid % TPR) for the scores, then the
// value dimensions 4 (c + TPR m) .. + 3 of every key of the tile, in
// position order.  The row's tile maximum and its weights go through
// shared memory.  The next tile's keys and values are read from memory
// into registers while the current one is worked on.  Queries and keys sit
// in shared memory as vec4s, the vec4 index xor-swizzled by the row (key)
// so that the rows (keys) a subgroup reads at once fall in different banks.
// DMAX 64 (the default): 32 rows of 8 threads, tiles of 32 keys; DMAX 128:
// 16 rows of 8 threads, tiles of 16 keys (shared memory within 32 KiB,
// lavapipe's limit).  Grid (ceil(n / BR), n_head), blocks in reverse
// order: the longest (last rows) first.
//
// Split keys (p.ns > 1 splits of p.sk positions, a multiple of BK): a
// prompt's last rows see all its keys, and one workgroup walking them is
// the dispatch's critical path while a GPU's other cores wait, so the
// keys of each block are split among p.ns workgroups (grid (blocks ns,
// n_head)), each writing partial results to part, then combined (mode 3).
// Mode 1 (F16 cache): each split's row maxima and sums (the first pass);
// mode 2: the values weighed over the split, with the rows' maxima and
// sums combined from mode 1's (F16: the finished weights, so the partial
// sums only add up), or with the split's own running maximum and sum
// (online softmax: rescaled to the largest maximum when combined); mode 3:
// a thread per four values of a row, adding its splits up.  Split s holds
// a row's keys s sk .. s sk + sk - 1, so row t (position p0 + t) has
// (p0 + t) / sk + 1 splits.  Mode 0: the whole row in one workgroup.
#ifndef DMAX
#define DMAX 64
#endif
#if DMAX == 64
#define BR 32u
#define TPR 8u         // threads per row
#define BK 32u
#define NT 256 // BR TPR
#else
#define BR 16u
#define TPR 8u
#define BK 16u
#define NT 128 // BR TPR
#endif
#define KPT (BK / TPR) // keys per thread in a tile: 4 or 2
#define D4 (DMAX / 4)  // vec4s per row: 16 or 32
#define VPT (D4 / TPR) // value vec4s per thread: 2 or 4
#define LPT (BK * D4 / NT) // key (value) vec4s each thread loads a tile: 2 or 4
#define PS (BK + 1u)   // row stride of the weights

layout(local_size_x = NT) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } q;
layout(std430, set = 0, binding = 1) buffer B_1 { float d[]; } o;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } kc;
layout(std430, set = 0, binding = 3) readonly buffer B_3 { uint d[]; } vc;
// partial results of split keys: a (maximum, sum) pair per (head, row,
// split), then dv values per (head, row, split)
layout(std430, set = 0, binding = 4) buffer B_4 { float d[]; } part;

layout(push_constant) uniform P {
    uint oq, oo, p0, n, n_head, group, d, dv, krow, vrow, kv;
    float scale;
    uint mode, sk, ns;
} p;

shared vec4 qs[BR * D4];
shared vec4 ks[BK * D4];
shared vec4 vs[BK * D4];
shared float ps[BR * PS]; // the tile's weights
shared float red[NT];     // the threads' tile maxima (at the end: sums)

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

// The tile at kb of KV head g (positions past last as zeros), read into
// registers: element e = tid + NT u of the tile's key (value) vec4s.
vec4 nk4[LPT], nv4[LPT];
void fetch_tile(uint kb, uint last, uint g, bool values)
{
    const uint d4 = p.d / 4u, dv4 = p.dv / 4u;
    [[unroll]] for (uint u = 0u; u < LPT; u++) {
        const uint e = gl_LocalInvocationID.x + NT * u;
        const uint j = e / d4, jv = e / dv4;
        nk4[u] = e < BK * d4 && kb + j <= last ? kval4((kb + j) * p.krow + g * p.d + 4u * (e % d4))
                                               : vec4(0.0);
        nv4[u] = values && e < BK * dv4 && kb + jv <= last
                     ? vval4((kb + jv) * p.vrow + g * p.dv + 4u * (e % dv4))
                     : vec4(0.0);
    }
}
void store_tile()
{
    const uint d4 = p.d / 4u, dv4 = p.dv / 4u;
    [[unroll]] for (uint u = 0u; u < LPT; u++) {
        const uint e = gl_LocalInvocationID.x + NT * u;
        if (e < BK * d4) {
            const uint j = e / d4;
            ks[j * D4 + ((e % d4) ^ (j & 7u))] = nk4[u];
        }
        if (e < BK * dv4)
            vs[(e / dv4) * D4 + e % dv4] = nv4[u];
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

// Where the partial results of split s of row t of head h are: its
// (maximum, sum) pair, its values.
uint part_slot(uint h, uint t, uint s) { return (h * p.n + t) * p.ns + s; }
uint stat_at(uint h, uint t, uint s) { return 2u * part_slot(h, t, s); }
uint vals_at(uint h, uint t, uint s) { return 2u * p.n_head * p.n * p.ns + part_slot(h, t, s) * p.dv; }

#define ninf uintBitsToFloat(0xFF800000u)

// Mode 3: four values of a row (thread e: row e / (dv / 4)) from its
// splits: their sum (F16: the weights were final), else each split's
// sums rescaled to the row's largest maximum, divided by the sum of the
// splits' rescaled sums of exponentials.
void combine()
{
    const uint dv4 = p.dv / 4u, e = gl_WorkGroupID.x * NT + gl_LocalInvocationID.x;
    const uint t = e / dv4, i = 4u * (e % dv4), h = gl_WorkGroupID.y;
    if (t >= p.n)
        return;
    const uint splits = (batch_pos(p.p0) + t) / p.sk + 1u;
    const bool exact = p.kv == 1u;
    float mx = ninf, l = 0.0;
    for (uint s = 0u; s < splits && !exact; s++)
        mx = max(mx, part.d[stat_at(h, t, s)]);
    vec4 sum = vec4(0.0);
    for (uint s = 0u; s < splits; s++) {
        const uint v = vals_at(h, t, s) + i;
        const vec4 a = vec4(part.d[v], part.d[v + 1u], part.d[v + 2u], part.d[v + 3u]);
        if (exact) {
            sum += a;
            continue;
        }
        const float m = part.d[stat_at(h, t, s)];
        if (m != ninf) {
            const float f = exp(m - mx);
            sum += a * f;
            l += part.d[stat_at(h, t, s) + 1u] * f;
        }
    }
    if (!exact)
        sum /= l;
    const uint at = p.oo + (t * p.n_head + h) * p.dv + i;
    o.d[at] = sum.x;
    o.d[at + 1u] = sum.y;
    o.d[at + 2u] = sum.z;
    o.d[at + 3u] = sum.w;
}

void main()
{
    if (p.mode == 3u) {
        combine();
        return;
    }
    const uint tid = gl_LocalInvocationID.x, r = tid / TPR, c = tid % TPR;
    const uint ns = p.ns, wg = gl_NumWorkGroups.x - 1u - gl_WorkGroupID.x; // (ns 1: mode 0)
    const uint blk = wg / ns, split = wg % ns, h = gl_WorkGroupID.y;
    const uint g = h / p.group, t0 = blk * BR, rows = min(BR, p.n - t0);
    const uint p0 = batch_pos(p.p0), last = p0 + t0 + rows - 1u; // the block's last key
    const uint k_lo = split * p.sk; // this workgroup's keys: k_lo .. k_hi
    if (k_lo > last)
        return; // a split past the block's rows (the whole workgroup)
    const uint k_hi = p.mode == 0u ? last : min(last, k_lo + p.sk - 1u);
    const bool valid = r < rows;
    const uint mine = p0 + t0 + r; // this row's last key (when valid)

    const bool exact = p.kv == 1u; // two passes, the weights as the reference's
    const bool stats = exact && p.mode != 2u; // the first pass here (values later)
    fetch_tile(k_lo, k_hi, g, !stats);
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

    // the first pass (F16 cache): each row's maximum and sum of exponentials
    float rmx = ninf, rsum = 0.0;
    if (stats) {
        float mx = ninf, l = 0.0; // over this thread's keys
        for (uint kb = k_lo; kb <= k_hi; kb += BK) {
            store_tile();
            barrier();
            if (kb + BK <= k_hi)
                fetch_tile(kb + BK, k_hi, g, false);
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
        red[tid] = mx;
        barrier();
        for (uint k = 0u; k < TPR; k++)
            rmx = max(rmx, red[r * TPR + k]);
        barrier();
        red[tid] = mx == ninf ? 0.0 : l * exp(mx - rmx);
        barrier();
        for (uint k = 0u; k < TPR; k++)
            rsum += red[r * TPR + k];
        if (p.mode == 1u) {
            if (valid && c == 0u) {
                part.d[stat_at(h, t0 + r, split)] = rmx;
                part.d[stat_at(h, t0 + r, split) + 1u] = rsum;
            }
            return;
        }
        fetch_tile(k_lo, k_hi, g, true);
    } else if (exact && valid) { // mode 2: the row's maximum and sum from its splits'
        const uint splits = mine / p.sk + 1u;
        for (uint s = 0u; s < splits; s++)
            rmx = max(rmx, part.d[stat_at(h, t0 + r, s)]);
        for (uint s = 0u; s < splits; s++) {
            const float m = part.d[stat_at(h, t0 + r, s)];
            if (m != ninf)
                rsum += part.d[stat_at(h, t0 + r, s) + 1u] * exp(m - rmx);
        }
    }

    // the pass that weighs the values (with an F16 cache, its second)
    float mx = ninf, l = 0.0; // the row's running maximum, this thread's part of its sum
    vec4 acc[VPT];
    [[unroll]] for (uint m = 0u; m < VPT; m++)
        acc[m] = vec4(0.0);
    const uint dv4 = p.dv / 4u;
    for (uint kb = k_lo; kb <= k_hi; kb += BK) {
        store_tile();
        barrier();
        if (kb + BK <= k_hi)
            fetch_tile(kb + BK, k_hi, g, true);
        scores(r, c);
        float tm = ninf;
        [[unroll]] for (uint m = 0u; m < KPT; m++) {
            if (!valid || kb + c + TPR * m > mine)
                sc[m] = ninf;
            tm = max(tm, sc[m]);
        }
        // the row's running maximum, raised by this tile (-inf while the
        // row has seen no key: w stays 0 and alpha is not used)
        red[tid] = tm;
        barrier();
        float mn = rmx, alpha = 1.0;
        if (!exact) {
            mn = mx;
            for (uint k = 0u; k < TPR; k++)
                mn = max(mn, red[r * TPR + k]);
            alpha = mx == ninf ? 0.0 : exp(mx - mn);
        }
        float add = 0.0;
        [[unroll]] for (uint m = 0u; m < KPT; m++) {
            float w = 0.0;
            if (sc[m] != ninf)
                w = exact ? round_f16(exp(sc[m] - rmx) / rsum) : exp(sc[m] - mn);
            ps[r * PS + c + TPR * m] = w;
            add += w;
        }
        l = l * alpha + add;
        mx = mn;
        [[unroll]] for (uint m = 0u; m < VPT; m++)
            acc[m] *= alpha;
        barrier();
        const uint nk = min(BK, k_hi + 1u - kb);
        for (uint j = 0u; j < nk; j++) {
            const float w = ps[r * PS + j];
            [[unroll]] for (uint m = 0u; m < VPT; m++)
                if (c + TPR * m < dv4)
                    acc[m] += w * vs[j * D4 + c + TPR * m];
        }
        barrier();
    }
    red[tid] = l;
    barrier();
    float sum = 0.0;
    for (uint k = 0u; k < TPR; k++)
        sum += red[r * TPR + k];
    if (exact)
        sum = 1.0;
    if (p.mode == 2u) { // the split's partial results
        if (valid) {
            const uint at = vals_at(h, t0 + r, split);
            [[unroll]] for (uint m = 0u; m < VPT; m++) {
                const uint i = 4u * (c + TPR * m);
                if (i < p.dv) {
                    part.d[at + i] = acc[m].x;
                    part.d[at + i + 1u] = acc[m].y;
                    part.d[at + i + 2u] = acc[m].z;
                    part.d[at + i + 3u] = acc[m].w;
                }
            }
            if (c == 0u && !exact) {
                part.d[stat_at(h, t0 + r, split)] = mx;
                part.d[stat_at(h, t0 + r, split) + 1u] = sum;
            }
        }
        return;
    }
    if (valid) {
        const uint orow = p.oo + ((t0 + r) * p.n_head + h) * p.dv;
        [[unroll]] for (uint m = 0u; m < VPT; m++) {
            const uint i = 4u * (c + TPR * m);
            if (i < p.dv) {
                const vec4 v = acc[m] / sum;
                o.d[orow + i] = v.x;
                o.d[orow + i + 1u] = v.y;
                o.d[orow + i + 2u] = v.z;
                o.d[orow + i + 3u] = v.w;
            }
        }
    }
}
