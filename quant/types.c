/* types.c - the type table and half-precision conversions. */
#include <stdio.h>
#include <string.h>

#include "quant/quant.h"

/* Every id ggml ever assigned.  Sizes of the types we cannot run are still
 * listed so a GGUF reader can size (and skip or report) their tensors.
 * Q4_1/Q5_1 dot against Q8_1 because their min term needs the activation
 * block sums, exactly as ggml does; the other legacy types use Q8_0, the
 * K-quants Q8_K, and float weights dot float activations directly. */
#define T(id, nm, be, bb, sup, dt) [id] = {nm, be, bb, sup, dt}
static const cm_type_info type_table[CM_TYPE_COUNT] = {
    T(0, "f32", 1, 4, 1, CM_TYPE_F32),
    T(1, "f16", 1, 2, 1, CM_TYPE_F32),
    T(2, "q4_0", 32, 18, 1, CM_TYPE_Q8_0),
    T(3, "q4_1", 32, 20, 1, CM_TYPE_Q8_1),
    T(6, "q5_0", 32, 22, 1, CM_TYPE_Q8_0),
    T(7, "q5_1", 32, 24, 1, CM_TYPE_Q8_1),
    T(8, "q8_0", 32, 34, 1, CM_TYPE_Q8_0),
    T(9, "q8_1", 32, 36, 1, CM_TYPE_Q8_0),
    T(10, "q2_K", 256, 84, 1, CM_TYPE_Q8_K),
    T(11, "q3_K", 256, 110, 1, CM_TYPE_Q8_K),
    T(12, "q4_K", 256, 144, 1, CM_TYPE_Q8_K),
    T(13, "q5_K", 256, 176, 1, CM_TYPE_Q8_K),
    T(14, "q6_K", 256, 210, 1, CM_TYPE_Q8_K),
    T(15, "q8_K", 256, 292, 1, CM_TYPE_Q8_K),
    T(16, "iq2_xxs", 256, 66, 0, CM_TYPE_Q8_K),
    T(17, "iq2_xs", 256, 74, 0, CM_TYPE_Q8_K),
    T(18, "iq3_xxs", 256, 98, 0, CM_TYPE_Q8_K),
    T(19, "iq1_s", 256, 50, 0, CM_TYPE_Q8_K),
    T(20, "iq4_nl", 32, 18, 0, CM_TYPE_Q8_0),
    T(21, "iq3_s", 256, 110, 0, CM_TYPE_Q8_K),
    T(22, "iq2_s", 256, 82, 0, CM_TYPE_Q8_K),
    T(23, "iq4_xs", 256, 136, 0, CM_TYPE_Q8_K),
    T(24, "i8", 1, 1, 0, CM_TYPE_F32),
    T(25, "i16", 1, 2, 0, CM_TYPE_F32),
    T(26, "i32", 1, 4, 0, CM_TYPE_F32),
    T(27, "i64", 1, 8, 0, CM_TYPE_F32),
    T(28, "f64", 1, 8, 0, CM_TYPE_F32),
    T(29, "iq1_m", 256, 56, 0, CM_TYPE_Q8_K),
    T(30, "bf16", 1, 2, 1, CM_TYPE_F32),
    T(34, "tq1_0", 256, 54, 0, CM_TYPE_Q8_K),
    T(35, "tq2_0", 256, 66, 0, CM_TYPE_Q8_K),
    T(39, "mxfp4", 32, 17, 0, CM_TYPE_Q8_0),
};
#undef T

const cm_type_info *cm_type_get(uint32_t type)
{
    if (type >= CM_TYPE_COUNT || type_table[type].name == NULL)
        return NULL; /* never assigned, or removed (4, 5, 31-33, 36-38) */
    return &type_table[type];
}

const char *cm_type_name(uint32_t type, char buf[32])
{
    const cm_type_info *ti = cm_type_get(type);
    if (ti)
        return ti->name;
    snprintf(buf, 32, "unknown(%u)", (unsigned)type);
    return buf;
}

size_t cm_row_bytes(uint32_t type, int64_t n)
{
    const cm_type_info *ti = cm_type_get(type);
    if (!ti || n < 0 || n % ti->block_elems != 0)
        return 0;
    return (size_t)(n / ti->block_elems) * ti->block_bytes;
}

/* ---- half precision ---------------------------------------------------- */

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float cm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in float */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) /* inf / nan, payload kept */
        return bits_f32(sign | 0x7F800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

/* Round-to-nearest-even of a subnormal-range magnitude (below 2^-14) to a
 * half subnormal; the result may round up into the smallest normal. */
static uint16_t f16_subnormal(uint32_t abs)
{
    if (abs <= 0x33000000u) /* <= 2^-25: ties to 0 */
        return 0;
    uint32_t e = abs >> 23;
    uint32_t m = (abs & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - e; /* value * 2^24 = m >> shift; 14..24 */
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1)))
        r++;
    return (uint16_t)r;
}

uint16_t cm_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t abs = x & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) /* nan: keep top payload bits, force quiet */
        return sign | 0x7E00 | (uint16_t)((abs >> 13) & 0x3FF);
    if (abs >= 0x47800000u) /* >= 65536 (or inf): inf */
        return sign | 0x7C00;
    if (abs < 0x38800000u)
        return sign | f16_subnormal(abs);
    /* normal: rebias the exponent, round the dropped 13 bits to even; a carry
     * out of the mantissa correctly bumps the exponent (up to inf) */
    uint32_t r = (abs - (112u << 23) + 0xFFFu + ((abs >> 13) & 1)) >> 13;
    return sign | (uint16_t)r;
}

float cm_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t cm_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) /* nan: truncate, force quiet */
        return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1)) >> 16);
}
