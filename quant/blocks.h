/* blocks.h - byte layouts of the block-quantized formats, as stored in GGUF.
 *
 * Each struct is exactly one on-disk block, so a row of a weight tensor is an
 * array of these and can be used in place inside the mmap.  Half-precision
 * fields are kept as raw uint16 bits (IEEE binary16) and converted with
 * cm_f16_to_f32; nothing here depends on the host having a half type.
 *
 * Legacy formats hold 32 elements per block.  In the 4/5-bit ones byte j of
 * qs carries element j in its low nibble and element j+16 in its high nibble;
 * qh (little-endian 32-bit) carries bit 4 of element j in bit j.
 *
 * K-quants hold QK_K = 256 elements per "super-block" split into sub-blocks
 * of 16 or 32 with small integer scales (and mins) that are themselves scaled
 * by the super-block's d (and dmin).  Exact bit placement is documented at
 * each decoder in quant/ref_kquants.c. */
#ifndef CM_BLOCKS_H
#define CM_BLOCKS_H

#include <stdint.h>

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct {
    uint16_t d;             /* scale: x = (q - 8) * d */
    uint8_t qs[QK4_0 / 2];  /* 4-bit quants */
} block_q4_0;

typedef struct {
    uint16_t d;             /* scale: x = q * d + m */
    uint16_t m;             /* min */
    uint8_t qs[QK4_1 / 2];
} block_q4_1;

typedef struct {
    uint16_t d;             /* x = (q - 16) * d */
    uint8_t qh[4];          /* bit 4 of each quant */
    uint8_t qs[QK5_0 / 2];  /* low 4 bits */
} block_q5_0;

typedef struct {
    uint16_t d;             /* x = q * d + m */
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;

typedef struct {
    uint16_t d;             /* x = q * d */
    int8_t qs[QK8_0];
} block_q8_0;

typedef struct {
    uint16_t d;             /* x = q * d */
    uint16_t s;             /* d * sum(qs), for the min term of q4_1/q5_1 dots */
    int8_t qs[QK8_1];
} block_q8_1;

/* 16 sub-blocks of 16; x = d * (sc & 15) * q - dmin * (sc >> 4), q in 0..3 */
typedef struct {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    uint16_t d;
    uint16_t dmin;
} block_q2_K;

/* 16 sub-blocks of 16; x = d * (s - 32) * (q - 4*!hbit), 6-bit scales s */
typedef struct {
    uint8_t hmask[QK_K / 8];  /* high bit of each 3-bit quant */
    uint8_t qs[QK_K / 4];     /* low 2 bits */
    uint8_t scales[12];       /* 16 scales of 6 bits */
    uint16_t d;
} block_q3_K;

/* 8 sub-blocks of 32; x = d * sc * q - dmin * m, 6-bit sc and m */
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;

/* as q4_K with a fifth bit per quant in qh */
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;

/* 16 sub-blocks of 16; x = d * sc * (q - 32), q 6 bits, sc int8 */
typedef struct {
    uint8_t ql[QK_K / 2];     /* low 4 bits */
    uint8_t qh[QK_K / 4];     /* high 2 bits */
    int8_t scales[QK_K / 16];
    uint16_t d;
} block_q6_K;

/* activation format for K-quant dots; d is a full float */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16]; /* sum of each group of 16 quants */
} block_q8_K;

_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");
_Static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");
_Static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");
_Static_assert(sizeof(block_q8_1) == 36, "block_q8_1 size");
_Static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");
_Static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");

/* Unpacks sub-block j (0..7) of the 12-byte q4_K/q5_K scale field: the first
 * four scales/mins sit in the low 6 bits of bytes 0-3 / 4-7; the last four
 * take their low nibbles from bytes 8-11 and their top two bits from the
 * spare high bits of bytes 0-3 / 4-7. */
static inline void cm_k4_scale_min(int j, const uint8_t *q, uint8_t *sc,
                                   uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Unpacks the 16 6-bit q3_K scales (still biased by 32): scale j has its low
 * nibble in byte j (j < 8) or the high nibble of byte j-8, and its top two
 * bits at bit 2*(j/4) of byte 8 + j%4. */
static inline void cm_k3_scales(const uint8_t *s, int8_t out[16])
{
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
        int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

#endif
