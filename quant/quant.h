/* quant.h - tensor element types and the block-quantized formats.
 *
 * Type ids are GGUF's (ggml_type) so files load unchanged.  Every format is a
 * sequence of fixed-size blocks (block layouts: quant/blocks.h).  This header
 * is ISA-neutral: the functions here are the scalar references; fast kernels
 * live in backends/cpu behind a dispatch table and are tested against them. */
#ifndef CM_QUANT_H
#define CM_QUANT_H

#include <stddef.h>
#include <stdint.h>

enum cm_type {
    CM_TYPE_F32 = 0,
    CM_TYPE_F16 = 1,
    CM_TYPE_Q4_0 = 2,
    CM_TYPE_Q4_1 = 3,
    CM_TYPE_Q5_0 = 6,
    CM_TYPE_Q5_1 = 7,
    CM_TYPE_Q8_0 = 8,
    CM_TYPE_Q8_1 = 9,
    CM_TYPE_Q2_K = 10,
    CM_TYPE_Q3_K = 11,
    CM_TYPE_Q4_K = 12,
    CM_TYPE_Q5_K = 13,
    CM_TYPE_Q6_K = 14,
    CM_TYPE_Q8_K = 15,
    CM_TYPE_BF16 = 30,
    CM_TYPE_COUNT = 40 /* ids >= this are unknown */
};

typedef struct {
    const char *name;       /* GGUF's lower-case name: "q4_0", "iq2_xs", ... */
    int64_t block_elems;    /* elements per block (1 for F32/F16/BF16) */
    size_t block_bytes;     /* bytes per block */
    int supported;          /* 1 if codemoe can dequantize and dot it */
    enum cm_type dot_type;  /* type activations are quantized to for dots */
} cm_type_info;

/* Traits of a type id, or NULL when the id names no type ggml ever had.
 * Known-but-unsupported types (IQ*, TQ*, ...) return info with
 * supported == 0 so errors can name them. */
const cm_type_info *cm_type_get(uint32_t type);

/* Name for messages: "q4_0", or "unknown(57)" for an unknown id.
 * buf must hold 32 bytes; the result is buf or a static string. */
const char *cm_type_name(uint32_t type, char buf[32]);

/* Bytes of a row of n elements, or 0 if n is not a whole number of blocks
 * or the type is unknown. */
size_t cm_row_bytes(uint32_t type, int64_t n);

/* Half-precision conversions (IEEE binary16 and bfloat16). */
float cm_f16_to_f32(uint16_t h);
uint16_t cm_f32_to_f16(float f);
float cm_bf16_to_f32(uint16_t h);
uint16_t cm_f32_to_bf16(float f);

/* Scalar references.  n is a multiple of the type's block size. */
void cm_dequantize_row(enum cm_type type, const void *src, float *dst, int64_t n);
/* Supported for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q8_K and
 * the K-quants Q2_K..Q6_K.  Returns 0 on success, -1 if not implemented. */
int cm_quantize_row(enum cm_type type, const float *src, void *dst, int64_t n);
/* Dot product of a row of `type` with a row already quantized to
 * cm_type_get(type)->dot_type (F32 rows dot with F32, F16 with F32, ...). */
float cm_vec_dot_ref(enum cm_type type, int64_t n, const void *w, const void *x);

#endif
