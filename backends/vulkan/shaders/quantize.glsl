// quantize.glsl - the products' activation blocks (quantize.comp's
// layouts, documented there), one block at a time, for quantize.comp and
// for matmul.comp's inline quantization.  The includer defines ACT(i), the
// float activation i, and XQ_STORE(i, v), storing uint v at block word i,
// and includes q8_0.glsl first.

int qlevel8(float v)
{
    if (!(v > -128.0))
        return -128;
    if (v >= 127.0)
        return 127;
    return clamp(int(roundEven(v)), -128, 127);
}

// The q8_K block (73 uints from o) of the 256 activations from src.
void quantize_q8k(uint src, uint o)
{
    uint amax = 0u, mx = 0u;
    for (uint e = 0u; e < 256u; e++) {
        const uint b = floatBitsToUint(ACT(src + e)), a = b & 0x7FFFFFFFu;
        if (a <= 0x7F800000u && a > amax) {
            amax = a;
            mx = b;
        }
    }
    if (amax >= 0x7F800000u || amax < 0x0D800000u) {
        for (uint k = 0u; k < 73u; k++)
            XQ_STORE(o + k, 0u);
        return;
    }
    const float ia = div_rn(127.0, uintBitsToFloat(amax)); // |is|
    const float is = (mx & 0x80000000u) != 0u ? ia : -ia;
    const float d = div_rn(1.0, ia);
    XQ_STORE(o, floatBitsToUint(is < 0.0 ? -d : d));
    int bs[16];
    for (uint j = 0u; j < 16u; j++)
        bs[j] = 0;
    for (uint k = 0u; k < 64u; k++) {
        uint w = 0u;
        for (uint j = 0u; j < 4u; j++) {
            precise float v = is * ACT(src + 4u * k + j);
            const int q = qlevel8(v);
            bs[k / 4u] += q;
            w |= (uint(q) & 0xFFu) << (8u * j);
        }
        XQ_STORE(o + 1u + k, w);
    }
    for (uint j = 0u; j < 8u; j++)
        XQ_STORE(o + 65u + j, (uint(bs[2u * j]) & 0xFFFFu) | (uint(bs[2u * j + 1u]) << 16));
}

// The q8_0/q8_1 block (10 uints from o) of the 32 activations from src.
void quantize_q8(uint src, uint o)
{
    for (uint j = 0u; j < 32u; j++)
        xv[j] = ACT(src + j);
    q8_block();
    int sum = 0;
    for (uint k = 0u; k < 16u; k++)
        sum += bitfieldExtract(int(qb[1u + k]), 0, 8) + bitfieldExtract(int(qb[1u + k]), 8, 8);
    // s = f16((float)sum * d); 0 * inf is the CPU's default nan (-nan)
    precise float sv = float(sum) * q8_d;
    const uint sh = floatBitsToUint(q8_d) == 0x7F800000u && sum == 0 ? 0xFE00u : f16_bits(floatBitsToUint(sv));
    XQ_STORE(o, floatBitsToUint(f16_val(qb[0])));
    XQ_STORE(o + 1u, floatBitsToUint(f16_val(sh)));
    for (uint k = 0u; k < 8u; k++)
        XQ_STORE(o + 2u + k, qb[1u + 2u * k] | (qb[2u + 2u * k] << 16));
}
