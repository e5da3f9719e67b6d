// q8_0.glsl - the reference's f16 conversions and q8_0 quantizer
// (quant/types.c cm_f32_to_f16, cm_f16_to_f32; quant/ref_legacy.c
// q8_quants, q8_0_block) bit for bit, for the shaders that include it
// (kv_store, attention, quantize, matmul, embed).

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

// f16 bits -> f32, exact; subnormal halves built as mant * 2^-24 (a normal
// float), so no flush-to-zero mode can touch them.  Every case computed and
// one selected: no branches for a SIMD device to run both sides of.
float f16_val(uint h)
{
    const uint sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    const uint sub = sign | floatBitsToUint(float(m) * 5.9604644775390625e-8);
    const uint inf_nan = sign | 0x7F800000u | (m << 13);
    const uint normal = sign | ((e + 112u) << 23) | (m << 13);
    return uintBitsToFloat(e == 0u ? sub : e == 31u ? inf_nan : normal);
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

// A q8_0 block's scale from the largest magnitude's bits: dh the f16 bits
// of d = amax / 127, id = 1 / d (both divisions correctly rounded as the
// CPU's), dq the unrounded d; a block whose d is 0 in f16 (amax below
// ~3.8e-6) gets d = 0, id = 0 and dq = 0 (zero quants), an inf amax d = inf
// and id = 0 (every quant 0, or nan: 0).
void q8_scale(uint amax, out uint dh, out float id, out float dq)
{
    dh = 0u;
    id = 0.0;
    dq = 0.0;
    if (amax == 0x7F800000u) {
        dh = 0x7C00u;
        dq = uintBitsToFloat(0x7F800000u);
    } else if (amax >= 0x0D800000u) { // below 2^-100, d is 0 in f16
        const float d = div_rn(uintBitsToFloat(amax), 127.0);
        dh = f16_bits(floatBitsToUint(d));
        if (dh != 0u) {
            id = div_rn(1.0, d);
            dq = d;
        }
    }
}

// q8_1's s from the sum of a block's quants and its unrounded d: the f16
// bits of sum * d; 0 * inf is the CPU's default nan (-nan).
uint q8_1_s(int sum, float dq)
{
    precise float sv = float(sum) * dq;
    return floatBitsToUint(dq) == 0x7F800000u && sum == 0 ? 0xFE00u : f16_bits(floatBitsToUint(sv));
}

// The reference's q8_0 block of xv (quant/ref_legacy.c q8_quants,
// q8_0_block) into qb as halfwords: the f16 bits of d = amax / 127, then
// the quants roundEven(x * id), id = 1 / d, two to a halfword (the even one
// low).  Both divisions correctly rounded as the CPU's; a block whose d is 0
// in f16 (amax below ~3.8e-6) stores d = 0 and zero quants.  amax is the
// largest |x| bits (ordered as the magnitudes; nans skipped as
// fabsf(x) > amax skips them), so no flush of subnormals can touch it.
// q8_d is left the unrounded d (0 where the quants are 0 for a small amax),
// for q8_1's s (quantize.comp).
float xv[32];
uint qb[17];
float q8_d;
void q8_block()
{
    uint amax = 0u;
    for (uint j = 0u; j < 32u; j++) {
        const uint a = floatBitsToUint(xv[j]) & 0x7FFFFFFFu;
        if (a <= 0x7F800000u && a > amax)
            amax = a;
    }
    uint dh;
    float id;
    q8_scale(amax, dh, id, q8_d);
    qb[0] = dh;
    for (uint i = 0u; i < 16u; i++)
        qb[1u + i] = q8_quant(xv[2u * i], id) | (q8_quant(xv[2u * i + 1u], id) << 8);
}
