#version 450
// Row t of x (cols floats) becomes cache row p0 + t, as the reference's
// cm_quantize_row writes it, by kv: 0 F32, 1 F16 (two halves per uint,
// element 2k in the low half), 2 Q8_0 (GGUF block_q8_0: an f16 scale d, then
// 32 int8 quants; 34 bytes a block, so blocks are only 2-byte aligned, and
// a row of cols / 32 blocks follows the last without a gap).  The cache is
// bound as uint for all three: F32 values are moved as their bits.  The
// binding starts at this layer's K (or V) cache.
// Grids: F32 (ceil(cols / 64), n), a thread per element; F16
// (ceil(cols / 128), n), a thread per pair (cols is even); Q8_0
// (ceil(pairs / 64), 1), a thread per pair of blocks 2P, 2P + 1 of the
// whole cache (68 bytes: 17 uints, so no uint is shared between threads),
// P from b0 / 2 on, b0 = p0 * cols / 32 the first block stored, over the
// pairs that hold one of blocks b0 .. (p0 + n) * cols / 32 - 1 (cols is a
// multiple of 32).  A pair half outside those blocks (another row) is kept.
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer B_0 { float d[]; } x;
layout(std430, set = 0, binding = 1) buffer B_1 { uint d[]; } cache;

layout(push_constant) uniform P { uint ox, cols, n, p0, kv; } p;

// f32 -> f16 bits rounded to nearest even, bit for bit the reference's
// cm_f32_to_f16 (quant/types.c): packHalf2x16 leaves the rounding to the
// implementation.  It works on the bits, so f32 subnormals (which a device
// may flush in arithmetic) convert exactly too.
uint f16_bits(uint xb)
{
    const uint sign = (xb >> 16) & 0x8000u, a = xb & 0x7FFFFFFFu;
    if (a > 0x7F800000u) // nan: top payload bits, quiet
        return sign | 0x7E00u | ((a >> 13) & 0x3FFu);
    if (a >= 0x47800000u) // >= 65536 or inf
        return sign | 0x7C00u;
    if (a < 0x38800000u) { // below 2^-14: a half subnormal (or 0)
        if (a <= 0x33000000u)
            return sign;
        const uint sh = 126u - (a >> 23), m = (a & 0x7FFFFFu) | 0x800000u;
        uint r = m >> sh;
        const uint rem = m & ((1u << sh) - 1u), hf = 1u << (sh - 1u);
        if (rem > hf || (rem == hf && (r & 1u) != 0u))
            r++;
        return sign | r;
    }
    return sign | ((a - (112u << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13);
}

// a / b rounded to nearest (even), for positive normal a and b whose
// quotient is normal: the significands divided bit by bit in integers, so
// exactly as IEEE division (GLSL's division may be 2.5 ulp off, and fma()
// may round twice, so neither can give the reference's bits).
float div_rn(float a, float b)
{
    const uint ab = floatBitsToUint(a), bb = floatBitsToUint(b);
    const uint m = (bb & 0x7FFFFFu) | 0x800000u;
    uint r = (ab & 0x7FFFFFu) | 0x800000u, q = 0u;
    int e = int(ab >> 23) - int(bb >> 23) + 127; // the biased exponent
    if (r < m) { // the quotient of the significands in [1, 2)
        r <<= 1;
        e--;
    }
    for (int i = 0; i < 24; i++) {
        q <<= 1;
        if (r >= m) {
            r -= m;
            q |= 1u;
        }
        r <<= 1; // twice the remainder: below 2^25
    }
    if (r > m || (r == m && (q & 1u) != 0u))
        q++;
    if (q == 0x1000000u) { // rounded up to the next power of two
        q = 0x800000u;
        e++;
    }
    return uintBitsToFloat((uint(e) << 23) | (q & 0x7FFFFFu));
}

// One quant: lrintf(x * id) as an int8; a nan (from inf * 0) converts to
// INT_MIN there, whose low byte is 0.
uint q8_quant(float x, float id)
{
    precise float s = x * id;
    if ((floatBitsToUint(s) & 0x7FFFFFFFu) > 0x7F800000u)
        return 0u;
    return uint(int(roundEven(s))) & 0xFFu;
}

// The reference's q8_0 block of xv (quant/ref_legacy.c q8_quants,
// q8_0_block) into qb as halfwords: the f16 bits of d = amax / 127, then
// the quants roundEven(x * id), id = 1 / d, two to a halfword (the even one
// low).  Both divisions correctly rounded as the CPU's; a block whose d is 0
// in f16 (amax below ~3.8e-6) stores d = 0 and zero quants.  amax is the
// largest |x| bits (ordered as the magnitudes; nans skipped as
// fabsf(x) > amax skips them), so no flush of subnormals can touch it.
float xv[32];
uint qb[17];
void q8_block()
{
    uint amax = 0u;
    for (uint j = 0u; j < 32u; j++) {
        const uint a = floatBitsToUint(xv[j]) & 0x7FFFFFFFu;
        if (a <= 0x7F800000u && a > amax)
            amax = a;
    }
    uint dh = 0u;
    float id = 0.0;
    if (amax == 0x7F800000u) // d = inf, id = 0: every quant 0 (or nan: 0)
        dh = 0x7C00u;
    else if (amax >= 0x0D800000u) { // below 2^-100, d is 0 in f16
        const float d = div_rn(uintBitsToFloat(amax), 127.0);
        dh = f16_bits(floatBitsToUint(d));
        if (dh != 0u)
            id = div_rn(1.0, d);
    }
    qb[0] = dh;
    for (uint i = 0u; i < 16u; i++)
        qb[1u + i] = q8_quant(xv[2u * i], id) | (q8_quant(xv[2u * i + 1u], id) << 8);
}

// Q8_0: blocks 2P and 2P + 1 of the cache, those of them being stored.
void store_q8()
{
    const uint nb = p.cols / 32u, b0 = p.p0 * nb, b1 = (p.p0 + p.n) * nb;
    const uint P = b0 / 2u + gl_GlobalInvocationID.x;
    if (2u * P >= b1)
        return;
    uint hw[34]; // the pair's 34 halfwords (68 bytes)
    bool has[2];
    for (uint k = 0u; k < 2u; k++) {
        const uint b = 2u * P + k;
        has[k] = b >= b0 && b < b1;
        if (!has[k])
            continue;
        const uint src = p.ox + (b / nb - p.p0) * p.cols + (b % nb) * 32u;
        for (uint j = 0u; j < 32u; j++)
            xv[j] = x.d[src + j];
        q8_block();
        for (uint i = 0u; i < 17u; i++)
            hw[17u * k + i] = qb[i];
    }
    const uint base = 17u * P;
    for (uint u = 0u; u < 17u; u++) {
        const bool lo = has[(2u * u) / 17u], hi = has[(2u * u + 1u) / 17u];
        if (lo && hi)
            cache.d[base + u] = hw[2u * u] | (hw[2u * u + 1u] << 16);
        else if (lo) // only uint 8 holds halves of both blocks
            cache.d[base + u] = (cache.d[base + u] & 0xFFFF0000u) | hw[2u * u];
        else if (hi)
            cache.d[base + u] = (cache.d[base + u] & 0xFFFFu) | (hw[2u * u + 1u] << 16);
    }
}

void main()
{
    if (p.kv == 2u) {
        store_q8();
        return;
    }
    const uint c = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (t >= p.n)
        return;
    const uint src = p.ox + t * p.cols, row = (p.p0 + t) * p.cols;
    if (p.kv == 0u) {
        if (c < p.cols)
            cache.d[row + c] = floatBitsToUint(x.d[src + c]);
    } else if (2u * c < p.cols) {
        const uint lo = f16_bits(floatBitsToUint(x.d[src + 2u * c]));
        const uint hi = f16_bits(floatBitsToUint(x.d[src + 2u * c + 1u]));
        cache.d[row / 2u + c] = lo | (hi << 16);
    }
}
