// quantize.glsl - the products' activation blocks (quantize.comp's
// layouts, documented there), one block at a time, for quantize.comp and
// for matmul.comp's inline quantization.  The includer defines ACT(i), the
// float activation i, and XQ_STORE(i, v), storing uint v at block word i,
// and includes q8_0.glsl first; Q8K_GROUPS (below) for the q8_K blocks.

int qlevel8(float v)
{
    if (!(v > -128.0))
        return -128;
    if (v >= 127.0)
        return 127;
    return clamp(int(roundEven(v)), -128, 127);
}

// The q8_K block (73 uints from o) of the 256 activations from src, by 64
// threads of the workgroup together (one thread's 256 values, each read
// twice, took ~60 us on an H100: a generation step waited for it four times
// a layer).  The includer defines Q8K_GROUPS, how many blocks its workgroup
// makes at once: thread t works for group t / 64 (threads past the last
// group only meet the barriers) on elements 4 (t % 64) .. + 3, which make
// word 1 + t % 64 of the block.  Everything is exact and in a fixed order
// whatever the device: the largest magnitude by a tree in shared memory
// (ties to the lowest element, the reference's first), the bsums in
// integers.  Every thread of the workgroup calls it (barriers), live false
// where its group has no block; the shared words are free again when it
// returns to a thread and that thread meets the next call's first barrier.
#ifdef Q8K_GROUPS
shared uint q8k_a[64u * Q8K_GROUPS], q8k_i[64u * Q8K_GROUPS];
shared int q8k_s[64u * Q8K_GROUPS];

void quantize_q8k(uint src, uint o, bool live)
{
    const uint tid = gl_LocalInvocationID.x, l = tid & 63u, g0 = tid - l;
    const bool mine = tid < 64u * Q8K_GROUPS;
    live = live && mine;
    float v[4];
    uint amax = 0u, at = 0u; // at: the element, its sign in bit 8
    for (uint j = 0u; j < 4u; j++) {
        v[j] = live ? ACT(src + 4u * l + j) : 0.0;
        const uint bits = floatBitsToUint(v[j]), a = bits & 0x7FFFFFFFu;
        if (a <= 0x7F800000u && a > amax) {
            amax = a;
            at = (4u * l + j) | ((bits >> 31) << 8);
        }
    }
    if (mine) {
        q8k_a[tid] = amax;
        q8k_i[tid] = at;
    }
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (mine && l < s) {
            const uint a2 = q8k_a[tid + s], i2 = q8k_i[tid + s], a1 = q8k_a[tid];
            if (a2 > a1 || (a2 == a1 && (i2 & 0xFFu) < (q8k_i[tid] & 0xFFu))) {
                q8k_a[tid] = a2;
                q8k_i[tid] = i2;
            }
        }
        barrier();
    }
    if (mine) {
        amax = q8k_a[g0];
        at = q8k_i[g0];
    }
    const bool zero = amax >= 0x7F800000u || amax < 0x0D800000u;
    const float ia = zero ? 1.0 : div_rn(127.0, uintBitsToFloat(amax)); // |is|
    const float is = (at & 0x100u) != 0u ? ia : -ia;
    uint w = 0u;
    int sum = 0;
    for (uint j = 0u; j < 4u; j++) {
        precise float sv = is * v[j];
        const int q = zero ? 0 : qlevel8(sv);
        sum += q;
        w |= (uint(q) & 0xFFu) << (8u * j);
    }
    if (mine)
        q8k_s[tid] = sum;
    barrier();
    if (!live)
        return;
    XQ_STORE(o + 1u + l, w);
    if (l < 8u) {
        const uint f = g0 + 8u * l; // the first of its 16 elements' threads
        const int s0 = q8k_s[f] + q8k_s[f + 1u] + q8k_s[f + 2u] + q8k_s[f + 3u];
        const int s1 = q8k_s[f + 4u] + q8k_s[f + 5u] + q8k_s[f + 6u] + q8k_s[f + 7u];
        XQ_STORE(o + 65u + l, (uint(s0) & 0xFFFFu) | (uint(s1) << 16));
    }
    if (l == 0u) {
        const float d = div_rn(1.0, ia);
        XQ_STORE(o, zero ? 0u : floatBitsToUint(is < 0.0 ? -d : d));
    }
}

// quantize_q8's block (below) by 8 threads together: thread t works for
// block t / 8 of the 8 Q8K_GROUPS blocks a call makes, on elements
// 4 (t % 8) .. + 3, which make its word 2 + t % 8 (a generated token's norm
// made its row's blocks a thread each, 32 values and two divisions in a
// row: the longest part of the dispatch).  The same bits as quantize_q8:
// the largest magnitude is a maximum (no ties to break), q8_scale's d and
// id are computed by every thread of the block from it, the sum of the
// quants in integers.  Called as quantize_q8k (every thread, live where its block
// exists); the shared words are free again as there.
void quantize_q8_lanes(uint src, uint o, bool live)
{
    const uint tid = gl_LocalInvocationID.x, l = tid & 7u, g0 = tid - l;
    const bool mine = tid < 64u * Q8K_GROUPS;
    live = live && mine;
    float v[4];
    uint amax = 0u;
    for (uint j = 0u; j < 4u; j++) {
        v[j] = live ? ACT(src + 4u * l + j) : 0.0;
        const uint a = floatBitsToUint(v[j]) & 0x7FFFFFFFu;
        if (a <= 0x7F800000u && a > amax)
            amax = a;
    }
    if (mine)
        q8k_a[tid] = amax;
    barrier();
    if (mine)
        for (uint k = 0u; k < 8u; k++)
            amax = max(amax, q8k_a[g0 + k]);
    uint dh;
    float id, dq;
    q8_scale(amax, dh, id, dq);
    uint w = 0u;
    int sum = 0;
    for (uint j = 0u; j < 4u; j++) {
        const uint q = q8_quant(v[j], id);
        w |= q << (8u * j);
        sum += bitfieldExtract(int(q), 0, 8);
    }
    if (mine)
        q8k_s[tid] = sum;
    barrier();
    if (!live)
        return;
    XQ_STORE(o + 2u + l, w);
    if (l == 0u) {
        int total = 0;
        for (uint k = 0u; k < 8u; k++)
            total += q8k_s[g0 + k];
        XQ_STORE(o, floatBitsToUint(f16_val(dh)));
        XQ_STORE(o + 1u, floatBitsToUint(f16_val(q8_1_s(total, dq))));
    }
}
#endif

// The q8_0/q8_1 block (10 uints from o) of the 32 activations from src.
void quantize_q8(uint src, uint o)
{
    for (uint j = 0u; j < 32u; j++)
        xv[j] = ACT(src + j);
    q8_block();
    int sum = 0;
    for (uint k = 0u; k < 16u; k++)
        sum += bitfieldExtract(int(qb[1u + k]), 0, 8) + bitfieldExtract(int(qb[1u + k]), 8, 8);
    XQ_STORE(o, floatBitsToUint(f16_val(qb[0])));
    XQ_STORE(o + 1u, floatBitsToUint(f16_val(q8_1_s(sum, q8_d))));
    for (uint k = 0u; k < 8u; k++)
        XQ_STORE(o + 2u + k, qb[1u + 2u * k] | (qb[2u + 2u * k] << 16));
}
