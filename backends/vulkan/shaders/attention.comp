#version 450
#extension GL_GOOGLE_include_directive : require
// Workgroup (row t, query head h): out = softmax(q K^T * scale) V over cache
// positions 0 .. p0 + t, K and V from KV head g = h / group.  Cache row j
// holds n_kv heads: keys of head g at elements j * krow + g * d + i, values
// at j * vrow + g * dv + i (elements: floats for F32 (kv 0), halves for F16
// (kv 1), two per uint, the even one low; for Q8_0 (kv 2) element e is
// quant e % 32 of block e / 32, GGUF block_q8_0s of 34 bytes one after the
// other, so 2-byte aligned: read from uints by shifts.  d, dv are then
// multiples of 32.  The bindings start at this layer's caches).
//
// Three passes over the keys (the maximum; the sum of exponentials; then
// WG positions at a time the weights through shared memory, the threads in
// four streams of positions (thread tid takes positions tid / 64 + 4 k of
// each WG, value dimensions tid % 64 + 64 i), the streams' sums added at
// the end).  The first pass keeps the scores of the first SC positions in
// shared memory (position j by thread j % WG, which alone reads it back: no
// barrier needed), so the others read them instead of computing them again;
// past SC they are recomputed by the same code, so any context fits and
// every pass sees the same bits.  WG threads a head: one workgroup per
// generated token's head is all the device gets, so it had better be wide.
//
// The reference's arithmetic (backends/ref attend(), softmax_ref):
// - F16 cache: the query rounded to f16, and each weight too;
// - Q8_0 cache: the query quantized to q8_0 by the reference's quantizer
//   (the same bits), a score the sum over blocks of the integer dot times
//   (f16 d of the key * f16 d of the query), that product in float; values
//   quant * d in float; the weights not rounded;
// - a score is one position's dot in order, times scale, in float;
// - weight = exp(s - max) / sum; out[i] += weight * v[i]: the reference
//   adds in position order, here four interleaved streams of positions are
//   summed apart and then added (a few ulps apart).
// With -DUSE_F64 (optional, needs shaderFloat64) the dots and the sum of
// exponentials are in double as the reference's are, so the scores are its
// to the bit; without it they are in float.  d, dv <= 256.  Grid (n_rows, n_head).
// q8 != 0: the head's output also quantized to quantize.comp's q8_0/q8_1
// blocks (dv a multiple of 32) into binding 4, for the output product that
// reads it next, which then needs no quantize.comp dispatch.
#ifdef USE_F64
#define acc_t double
#else
#define acc_t float
#endif

#define WG 256u
layout(local_size_x = 256) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } q;
layout(std430, set = 0, binding = 1) buffer B_1 { float d[]; } outp;
layout(std430, set = 0, binding = 2) readonly buffer B_2 { uint d[]; } kc;
layout(std430, set = 0, binding = 3) readonly buffer B_3 { uint d[]; } vc;
layout(std430, set = 0, binding = 4) writeonly buffer B_4 { uint d[]; } xq;

layout(push_constant) uniform P {
    uint oq, oo, p0, n_head, group, d, dv, krow, vrow, kv;
    float scale;
    uint q8;
} p;

shared float qs[256];
shared acc_t red[WG];
shared float wts[WG];
shared uint qq[64]; // Q8_0: the query's quants, four to a uint (byte 0 low)
shared float qd[8]; // and its blocks' scales (the f16 values)
#define SC 1024u
shared float scores[SC];

#include "q8_0.glsl"
#include "io.glsl"

shared float ov[256]; // the head's output, for its quantization (q8)
shared float part[3u * 256u]; // the streams 1..3's sums
#define ACT(i) ov[i]
#define XQ_STORE(i, v) xq.d[i] = (v)
#include "quantize.glsl"

float round_f16(float v) { return f16_val(f16_bits(floatBitsToUint(v))); }

// Element e of a cache (an element index, not a uint one): F32 or F16
// keys, any values.  A Q8_0 block b is halfwords 17 b .. 17 b + 16: d, then
// the quants; quant i at byte 34 b + 2 + i.
float kval(uint e)
{
    return p.kv == 1u ? f16_val((kc.d[e >> 1] >> ((e & 1u) * 16u)) & 0xFFFFu)
                      : uintBitsToFloat(kc.d[e]);
}
float vval(uint e)
{
    if (p.kv == 0u)
        return uintBitsToFloat(vc.d[e]);
    if (p.kv == 1u)
        return f16_val((vc.d[e >> 1] >> ((e & 1u) * 16u)) & 0xFFFFu);
    const uint h = 17u * (e >> 5), by = 2u * h + 2u + (e & 31u);
    const float d = f16_val((vc.d[h >> 1] >> ((h & 1u) * 16u)) & 0xFFFFu);
    precise float v = float(bitfieldExtract(int(vc.d[by >> 2]), int((by & 3u) * 8u), 8)) * d;
    return v;
}

// The dot of four int8s packed in a and four in b.
int dot4(uint a, uint b)
{
    const int x = int(a), y = int(b);
    return bitfieldExtract(x, 0, 8) * bitfieldExtract(y, 0, 8) +
           bitfieldExtract(x, 8, 8) * bitfieldExtract(y, 8, 8) +
           bitfieldExtract(x, 16, 8) * bitfieldExtract(y, 16, 8) +
           bitfieldExtract(x, 24, 8) * bitfieldExtract(y, 24, 8);
}

uint kbase;

// The scaled score of position j (precise: one rounding per step, the
// same at each of the three calls).
float score(uint j)
{
    precise acc_t s = acc_t(0);
    const uint at = j * p.krow + kbase;
    if (p.kv == 2u) {
        // cm_dot_q8_0: per block the integer dot, times the scales' product
        for (uint k = 0u; k < p.d / 32u; k++) {
            const uint h = 17u * ((at >> 5) + k), w = h >> 1;
            // h odd: d the high half of uint w, the quants uints w + 1 ..
            // w + 8; h even: d the low half, quant uint i straddling two
            const bool odd = (h & 1u) != 0u;
            const float d = f16_val(odd ? kc.d[w] >> 16 : kc.d[w] & 0xFFFFu);
            int sum = 0;
            for (uint i = 0u; i < 8u; i++) {
                const uint kw = odd ? kc.d[w + 1u + i]
                                    : (kc.d[w + i] >> 16) | (kc.d[w + i + 1u] << 16);
                sum += dot4(kw, qq[8u * k + i]);
            }
            precise float sc = d * qd[k];
            precise float t = float(sum) * sc;
            s += acc_t(t);
        }
    } else {
        // eight keys' elements loaded before they are summed in order: the
        // loads of a position go out together instead of one at a time
        for (uint i = 0u; i < p.d; i += 8u) {
            float kv[8];
            const uint n8 = min(8u, p.d - i);
            if (p.kv == 1u && n8 == 8u && ((at + i) & 1u) == 0u) {
                const uint w = (at + i) >> 1;
                for (uint u = 0u; u < 4u; u++) {
                    const uint two = kc.d[w + u];
                    kv[2u * u] = f16_val(two & 0xFFFFu);
                    kv[2u * u + 1u] = f16_val(two >> 16);
                }
            } else
                for (uint u = 0u; u < 8u; u++)
                    kv[u] = u < n8 ? kval(at + i + u) : 0.0;
            for (uint u = 0u; u < 8u; u++)
                if (u < n8)
                    s += acc_t(kv[u]) * acc_t(qs[i + u]);
        }
    }
    precise float r = float(s) * p.scale;
    return r;
}

// The score of position j once more: kept by the first pass, or computed.
float score_again(uint j) { return j < SC ? scores[j] : score(j); }

void main()
{
    const uint tid = gl_LocalInvocationID.x, t = gl_WorkGroupID.x, h = gl_WorkGroupID.y;
    const uint g = h / p.group, last = batch_pos(p.p0) + t;
    const uint qrow = p.oq + (t * p.n_head + h) * p.d, orow = p.oo + (t * p.n_head + h) * p.dv;
    kbase = g * p.d;
    const uint vbase = g * p.dv;

    if (p.kv == 2u) {
        // a thread per block of the query: the reference's q8_0 quantizer
        if (tid < p.d / 32u) {
            for (uint i = 0u; i < 32u; i++)
                xv[i] = q.d[qrow + 32u * tid + i];
            q8_block();
            qd[tid] = f16_val(qb[0]);
            for (uint i = 0u; i < 8u; i++)
                qq[8u * tid + i] = qb[1u + 2u * i] | (qb[2u + 2u * i] << 16);
        }
    } else
        for (uint i = tid; i < p.d; i += WG)
            qs[i] = p.kv == 1u ? round_f16(q.d[qrow + i]) : q.d[qrow + i];
    barrier();

    // pass 1: the maximum score
    float mx = uintBitsToFloat(0xFF800000u); // -inf
    for (uint j = tid; j <= last; j += WG) {
        const float s = score(j);
        if (j < SC)
            scores[j] = s;
        mx = max(mx, s);
    }
    red[tid] = acc_t(mx);
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (tid < s)
            red[tid] = max(red[tid], red[tid + s]);
        barrier();
    }
    mx = float(red[0]);
    barrier();

    // pass 2: the sum of exponentials (a fixed tree: deterministic)
    precise acc_t sum = acc_t(0);
    for (uint j = tid; j <= last; j += WG) {
        precise float e = exp(score_again(j) - mx);
        sum += acc_t(e);
    }
    red[tid] = sum;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (tid < s)
            red[tid] += red[tid + s];
        barrier();
    }
    sum = red[0];

    // pass 3: WG weights at a time, then each thread's value dimensions
    // over its stream of them
    const uint lane = tid & 63u, stream = tid >> 6;
    float acc[4] = float[4](0.0, 0.0, 0.0, 0.0);
    for (uint c = 0u; c <= last; c += WG) {
        const uint j = c + tid;
        float wt = 0.0;
        if (j <= last) {
            precise float e = exp(score_again(j) - mx);
            wt = float(acc_t(e) / sum);
            if (p.kv == 1u)
                wt = round_f16(wt);
        }
        wts[tid] = wt;
        barrier();
        const uint m = min(WG, last + 1u - c);
        for (uint k = 0u; k < 4u; k++) {
            const uint i = lane + 64u * k;
            if (i < p.dv)
                for (uint j0 = stream; j0 < m; j0 += 32u) { // eight loads out, then summed
                    float vv[8];
                    for (uint u = 0u; u < 8u; u++)
                        vv[u] = j0 + 4u * u < m ? vval((c + j0 + 4u * u) * p.vrow + vbase + i) : 0.0;
                    for (uint u = 0u; u < 8u; u++)
                        if (j0 + 4u * u < m) {
                            precise float r = acc[k] + wts[j0 + 4u * u] * vv[u];
                            acc[k] = r;
                        }
                }
        }
        barrier();
    }
    if (stream != 0u)
        for (uint k = 0u; k < 4u; k++)
            if (lane + 64u * k < p.dv)
                part[(stream - 1u) * 256u + lane + 64u * k] = acc[k];
    barrier();
    if (stream == 0u)
        for (uint k = 0u; k < 4u; k++) {
            const uint i = lane + 64u * k;
            if (i < p.dv) {
                precise float r = ((acc[k] + part[i]) + part[256u + i]) + part[512u + i];
                outp.d[orow + i] = r;
                ov[i] = r;
            }
        }
    if (p.q8 != 0u) {
        barrier();
        if (tid < p.dv / 32u)
            quantize_q8(32u * tid, 10u * ((t * p.n_head + h) * p.dv / 32u + tid));
    }
}
