/* neon_common.h - what the NEON files (kernels_neon.c, kernels_neon_gemm.c)
 * share: whether the SDOT variants can be compiled, the attributes the
 * kernels need, and the bit helpers of the q4/q5 block layouts.  Include
 * only inside their `#if defined(__aarch64__) && defined(__ARM_NEON)`. */
#ifndef CM_NEON_COMMON_H
#define CM_NEON_COMMON_H

#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

/* Whether the SDOT variant can be compiled, and the attribute it needs.
 * GCC >= 8 and clang >= 16 take the attribute (their arm_neon.h defines
 * vdotq_s32 under it); older clang only has vdotq_s32 when the whole build
 * targets dotprod, so there it falls back to the vmull variant.  GCC wants
 * the full "arch=armv8.2-a+dotprod": a bare "+dotprod" on an 8.0 baseline
 * does not satisfy arm_neon.h's own target and inlining fails. */
#if defined(__ARM_FEATURE_DOTPROD)
#define CM_NEON_DP 1
#define DP_ATTR
#elif defined(__clang__)
#if __clang_major__ >= 16
#define CM_NEON_DP 1
#define DP_ATTR __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#elif defined(__GNUC__) && __GNUC__ >= 8
#define CM_NEON_DP 1
#define DP_ATTR __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#ifndef CM_NEON_DP
#define CM_NEON_DP 0
#endif

/* Kernel bodies are templates over the int8 dot step: always inlined into
 * each variant's wrapper, where the step is a known function and inlines
 * too. */
#define BODY static inline __attribute__((always_inline))

/* GCC's scheduler before register allocation interleaves unrolled rows and
 * blocks until the accumulators spill (up to 96 stack accesses per loop
 * pass in the q5_0 gemv, none without it): the multi-row kernels go
 * without that pass. */
#if defined(__GNUC__) && !defined(__clang__)
#define NOSCHED __attribute__((optimize("no-schedule-insns")))
#else
#define NOSCHED
#endif

/* IEEE half to float; exact, and one FCVT on AArch64. */
static inline float f16(uint16_t h)
{
    __fp16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
}

static inline int8x16_t s8(uint8x16_t v)
{
    return vreinterpretq_s8_u8(v);
}

/* The 32 nibbles of a 4/5-bit block: lo = low nibbles (elements 0-15),
 * hi = high nibbles (16-31). */
static inline void nibbles(const uint8_t *qs, uint8x16_t *lo, uint8x16_t *hi)
{
    uint8x16_t v = vld1q_u8(qs);
    *lo = vandq_u8(v, vdupq_n_u8(0x0F));
    *hi = vshrq_n_u8(v, 4);
}

/* Bit 4 of each q5 level: byte j = 0x10 where bit j of the 32-bit qh is
 * set.  TBL spreads qh byte j/8 over 8 lanes, CMTST picks bit j%8. */
static inline void fifth_bits(const uint8_t *qh, uint8x16_t *lo, uint8x16_t *hi)
{
    static const uint8_t idx[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                    2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    uint32_t h;
    memcpy(&h, qh, 4);
    uint8x16_t hv = vreinterpretq_u8_u32(vdupq_n_u32(h));
    uint8x16_t bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ull));
    uint8x16_t b0 = vtstq_u8(vqtbl1q_u8(hv, vld1q_u8(idx)), bit);
    uint8x16_t b1 = vtstq_u8(vqtbl1q_u8(hv, vld1q_u8(idx + 16)), bit);
    *lo = vandq_u8(b0, vdupq_n_u8(0x10));
    *hi = vandq_u8(b1, vdupq_n_u8(0x10));
}

#endif
