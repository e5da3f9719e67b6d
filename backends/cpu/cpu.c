/* cpu.c - ISA selection and the threaded matrix product.
 *
 * This file is compiled without any target flags: it may only look at CPU
 * features (cpuid) and call through cm_kern, never run SIMD itself. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu.h"
#include "backends/cpu/kernels.h"

/* The x86 kernel files are linked when configure found the compiler flags
 * (CM_HAVE_X86_KERNELS), or always in a plain dev build on x86. */
#if defined(CM_HAVE_X86_KERNELS) ||                                           \
    (!defined(HAVE_CONFIG_H) && (defined(__x86_64__) || defined(__i386__)))
#define CM_X86_KERNELS 1
#include <cpuid.h>
#endif

/* NEON: no kernels yet; aarch64 runs the scalar table.  A kernels_neon.c
 * would add cm_kernels_neon() and a "neon" case below. */

enum { ISA_SCALAR, ISA_AVX2, ISA_AVX512 };

typedef struct {
    int avx2;   /* AVX2 + FMA + F16C, OS saves ymm */
    int avx512; /* F + BW + VL, OS saves zmm */
    int vnni;   /* AVX512_VNNI */
} cpu_features;

#ifdef CM_X86_KERNELS
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static cpu_features detect(void)
{
    cpu_features f = {0, 0, 0};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return f;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    int f16c = (c >> 29) & 1;
    if (!osxsave || !avx || __get_cpuid_max(0, NULL) < 7)
        return f;
    uint64_t xcr0 = xgetbv0();
    int ymm_ok = (xcr0 & 0x6) == 0x6;        /* SSE + AVX state */
    int zmm_ok = ymm_ok && (xcr0 & 0xE0) == 0xE0; /* opmask + zmm state */
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ymm_ok && fma && f16c && ((b >> 5) & 1);
    int avx512 = ((b >> 16) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1);
    f.avx512 = f.avx2 && zmm_ok && avx512;
    f.vnni = f.avx512 && ((c >> 11) & 1);
    return f;
}
#else
static cpu_features detect(void)
{
    cpu_features f = {0, 0, 0};
    return f;
}
#endif

/* tabs[i] = the table for ISA i; returns the best ISA both this CPU and
 * this build run (an ISA file compiled without its flags declines). */
static int build_tables(const cpu_features *f, struct cm_kernels tabs[3])
{
    int top = ISA_SCALAR;
    cm_kernels_scalar(&tabs[ISA_SCALAR]);
    tabs[ISA_AVX2] = tabs[ISA_SCALAR];
    tabs[ISA_AVX512] = tabs[ISA_SCALAR];
#ifdef CM_X86_KERNELS
    if (f->avx2 && cm_kernels_avx2(&tabs[ISA_AVX2]) == 0) {
        top = ISA_AVX2;
        tabs[ISA_AVX512] = tabs[ISA_AVX2];
        if (f->avx512 && cm_kernels_avx512(&tabs[ISA_AVX512], f->vnni) == 0)
            top = ISA_AVX512;
    }
#else
    (void)f;
#endif
    return top;
}

static const char *const isa_names[] = {"scalar", "avx2", "avx512"};

static int isa_from_name(const char *s)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(s, isa_names[i]) == 0)
            return i;
    return -1;
}

int cm_cpu_init(char *err_msg, size_t err_len)
{
    cpu_features f = detect();
    struct cm_kernels tabs[3];
    int best = build_tables(&f, tabs), isa = best;
    const char *env = getenv("CODEMOE_ISA");
    if (env && *env) {
        isa = isa_from_name(env);
        if (isa < 0 || isa > best) {
            const char *why = strcmp(env, "neon") == 0 ? "no NEON kernels yet"
                              : isa < 0 ? "unknown ISA (scalar|avx2|avx512|neon)"
                                        : "not supported by this CPU or build";
            if (err_msg && err_len)
                snprintf(err_msg, err_len, "CODEMOE_ISA=%s: %s (best here: %s)",
                         env, why, isa_names[best]);
            return -1;
        }
    }
    cm_kern = tabs[isa];
    return 0;
}

const char *cm_cpu_isa(void)
{
    return cm_kern.isa;
}

/* ---- matrix product ----------------------------------------------------- */

/* Pragmas through macros so builds without OpenMP get no unknown-pragma
 * warnings. */
#ifdef _OPENMP
#define OMP_FOR _Pragma("omp parallel for schedule(static)")
#define OMP_FOR_TOKENS _Pragma("omp parallel for schedule(static) if (n_tok > 1)")
#else
#define OMP_FOR
#define OMP_FOR_TOKENS
#endif

#define ALIGN64(n) (((n) + 63) & ~(size_t)63)

/* Bytes of one quantized activation row; 0 when activations stay float. */
static size_t act_row_bytes(const cm_tensor *w)
{
    const cm_type_info *ti = cm_type_get(w->type);
    if (!ti || ti->dot_type == CM_TYPE_F32)
        return 0;
    return ALIGN64(cm_row_bytes(ti->dot_type, w->ne[0]));
}

size_t cm_matmul_scratch_bytes(const cm_tensor *w, int64_t n_tok)
{
    return act_row_bytes(w) * (size_t)(n_tok > 0 ? n_tok : 0);
}

static void no_kernel(enum cm_type type)
{
    char buf[32];
    /* the loader rejects unsupported types, so this is a programming error */
    fprintf(stderr, "codemoe: no %s kernel for type %s\n", cm_kern.isa,
            cm_type_name(type, buf));
    abort();
}

/* Weight rows per tile for n_tok > 1: enough to amortize the loop, few
 * enough that the tile (~16 KiB) stays in L1 while every token passes. */
static int64_t row_tile(size_t wrow)
{
    int64_t t = (int64_t)(16384 / (wrow ? wrow : 1));
    return t < 1 ? 1 : t > 16 ? 16 : t;
}

static void matmul_rows(cm_vec_dot_fn dot, const char *wd, size_t wrow,
                        int64_t cols, int64_t rows, const char *xq,
                        size_t xrow, int64_t n_tok, float *y)
{
    if (n_tok == 1) {
        OMP_FOR
        for (int64_t r = 0; r < rows; r++)
            y[r] = dot(cols, wd + (size_t)r * wrow, xq);
        return;
    }
    const int64_t rt = row_tile(wrow), ntiles = (rows + rt - 1) / rt;
        OMP_FOR
    for (int64_t tile = 0; tile < ntiles; tile++) {
        int64_t r0 = tile * rt, r1 = r0 + rt < rows ? r0 + rt : rows;
        for (int64_t t = 0; t < n_tok; t++) {
            const char *xt = xq + (size_t)t * xrow;
            for (int64_t r = r0; r < r1; r++)
                y[t * rows + r] = dot(cols, wd + (size_t)r * wrow, xt);
        }
    }
}

void cm_matmul(const cm_tensor *w, const float *x, int64_t n_tok, float *y,
               void *scratch)
{
    const int64_t cols = w->ne[0], rows = w->ne[1];
    const cm_type_info *ti = cm_type_get(w->type);
    cm_vec_dot_fn dot = ti && ti->supported ? cm_kern.vec_dot[w->type] : NULL;
    if (!dot)
        no_kernel(w->type);
    if (n_tok <= 0 || rows <= 0)
        return;
    const size_t wrow = cm_row_bytes(w->type, cols);
    size_t xrow = act_row_bytes(w);
    const char *xq = scratch;
    if (xrow == 0) { /* float weights dot the float activations in place */
        xq = (const char *)x;
        xrow = (size_t)cols * sizeof(float);
    } else {
        cm_quantize_fn quant = cm_kern.quantize[ti->dot_type];
        if (!quant)
            no_kernel(ti->dot_type);
        /* each activation row is quantized once, then reused by every
         * weight row */
        OMP_FOR_TOKENS
        for (int64_t t = 0; t < n_tok; t++)
            quant(x + t * cols, (char *)scratch + (size_t)t * xrow, cols);
    }
    matmul_rows(dot, w->data, wrow, cols, rows, xq, xrow, n_tok, y);
}

void cm_tensor_row(const cm_tensor *w, int64_t row, float *out)
{
    size_t rb = cm_row_bytes(w->type, w->ne[0]);
    cm_dequantize_row(w->type, (const char *)w->data + (size_t)row * rb, out,
                      w->ne[0]);
}
