#version 450
// A token's experts chosen on the device (moe_ffn), as cm_route_row
// (backends/cpu/ops.c) chooses them: softmax of the router's logits, the
// k largest (the lowest index first among equals), their probabilities
// renormalised to sum 1 when norm.  The choices are then put in increasing
// expert order, the order the host path adds the experts' outputs in.
// A thread per token (a few experts: no work worth splitting); grid (n).
// Writes, per token t, k ids then k weights (float bits) from oo + 2 k t
// of route (read by matmul.comp's expert products and moe_sum.comp), and
// the k ids from oh + k t of the host's copy.
layout(local_size_x = 1) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } logits;
layout(std430, set = 0, binding = 3) writeonly buffer B_3 { uint d[]; } route;
layout(std430, set = 0, binding = 4) writeonly buffer B_4 { uint d[]; } host;

layout(push_constant) uniform P { uint ol, X, k, norm, oo, oh; } p;

#define KMAX 16u
#define XMAX 256u

void main()
{
    const uint t = gl_WorkGroupID.x, base = p.ol + t * p.X;
    float prob[XMAX];
    float mx = logits.d[base];
    for (uint e = 1u; e < p.X; e++)
        mx = max(mx, logits.d[base + e]);
    float sum = 0.0;
    for (uint e = 0u; e < p.X; e++) {
        prob[e] = exp(logits.d[base + e] - mx);
        sum += prob[e];
    }
    for (uint e = 0u; e < p.X; e++)
        prob[e] /= sum;
    uint id[KMAX];
    float wt[KMAX];
    float ws = 0.0;
    uint taken[XMAX / 32u];
    for (uint i = 0u; i < XMAX / 32u; i++)
        taken[i] = 0u;
    for (uint j = 0u; j < p.k; j++) {
        int best = -1;
        for (uint e = 0u; e < p.X; e++)
            if ((taken[e >> 5] & (1u << (e & 31u))) == 0u && (best < 0 || prob[e] > prob[best]))
                best = int(e);
        id[j] = uint(best);
        wt[j] = prob[best];
        ws += wt[j];
        taken[uint(best) >> 5] |= 1u << (uint(best) & 31u);
    }
    for (uint j = 0u; j < p.k && p.norm != 0u; j++)
        wt[j] /= ws;
    for (uint j = 1u; j < p.k; j++) // insertion sort by expert
        for (uint i = j; i > 0u && id[i - 1u] > id[i]; i--) {
            const uint a = id[i];
            id[i] = id[i - 1u], id[i - 1u] = a;
            const float b = wt[i];
            wt[i] = wt[i - 1u], wt[i - 1u] = b;
        }
    for (uint j = 0u; j < p.k; j++) {
        route.d[p.oo + 2u * p.k * t + j] = id[j];
        route.d[p.oo + 2u * p.k * t + p.k + j] = floatBitsToUint(wt[j]);
        host.d[p.oh + p.k * t + j] = id[j];
    }
}
