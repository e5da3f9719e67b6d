/* avx512_common.h - helpers shared by the AVX-512 kernel files (included
 * only where the AVX-512 flags are on). */
#ifndef CM_AVX512_COMMON_H
#define CM_AVX512_COMMON_H

#include <immintrin.h>
#include <stdint.h>

/* Mask of the first n lanes (n <= 16). */
static inline __attribute__((always_inline)) __mmask16 tail16(int64_t n)
{
    return (__mmask16)((1u << n) - 1);
}

/* Mask of the lanes of elements i..i+15 that lie below n. */
static inline __attribute__((always_inline)) __mmask16 cols16(int64_t n, int64_t i)
{
    return n - i >= 16 ? (__mmask16)0xFFFF : n - i > 0 ? tail16(n - i) : 0;
}

/* In-register 16x16 transpose of 32-bit elements: r[i] lane j -> r[j]
 * lane i.  Pairs, then quads within 128-bit lanes, then 128-bit lanes. */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16])
{
    __m512 t[16];
    _Pragma("GCC unroll 16")
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    /* now r[4i+j], 128-bit lane L = element 4L+j of rows 4i..4i+3 */
    _Pragma("GCC unroll 16")
    for (int j = 0; j < 4; j++) {
        __m512 a = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
        __m512 b = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
        __m512 c = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        __m512 d = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
        t[j] = _mm512_shuffle_f32x4(a, c, 0x88);
        t[8 + j] = _mm512_shuffle_f32x4(a, c, 0xDD);
        t[4 + j] = _mm512_shuffle_f32x4(b, d, 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(b, d, 0xDD);
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}

#endif
