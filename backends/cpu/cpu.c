/* cpu.c - ISA selection and the threaded matrix product.
 *
 * This file is compiled without any target flags: it may only look at CPU
 * features (cpuid) and call through cm_kern, never run SIMD itself. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backends/cpu/cpu.h"
#include "backends/cpu/kernels.h"
#include "util/threads.h"

/* The x86 kernel files are linked when configure found the compiler flags
 * (CM_HAVE_X86_KERNELS), or always in a plain dev build on x86. */
#if defined(CM_HAVE_X86_KERNELS) ||                                           \
    (!defined(HAVE_CONFIG_H) && (defined(__x86_64__) || defined(__i386__)))
#define CM_X86_KERNELS 1
#include <cpuid.h>
#endif

enum { ISA_SCALAR, ISA_AVX2, ISA_AVX512, ISA_NEON, ISA_COUNT };

typedef struct {
    int avx2;   /* AVX2 + FMA + F16C, OS saves ymm */
    int avx512; /* F + BW + VL, OS saves zmm */
    int vnni;   /* AVX512_VNNI */
    int amd;    /* AuthenticAMD */
    int neon, dotprod; /* AArch64 ASIMD, SDOT (cpu_arm.c) */
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
    cpu_features f = {0};
    unsigned a, b, c, d;
    if (__get_cpuid(0, &a, &b, &c, &d)) /* vendor: ebx edx ecx */
        f.amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;
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
    /* F, DQ, BW, VL: the file's target flags (every AVX-512 core since Skylake-SP) */
    int avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1);
    f.avx512 = f.avx2 && zmm_ok && avx512;
    f.vnni = f.avx512 && ((c >> 11) & 1);
    return f;
}
#else
static cpu_features detect(void)
{
    cpu_features f = {0};
    cm_arm_features(&f.neon, &f.dotprod);
    return f;
}
#endif

/* On AMD Zen the 256-bit generation kernels of q8_0 and q4_0 weights beat
 * the 512-bit ones (Zen 5, one thread, qwen05b: q8_0 52.8 against 31.6
 * tok/s, q4_0 59.2 against 49.7; the K-quants' 512-bit ones win), so the
 * AVX-512 table keeps AVX2's there.  Intel keeps its 512-bit kernels.
 * These per-row kernels now serve only q8_0/q4_0 weights that are not
 * repacked (cm_cpu_repack_acquire: rows not a multiple of 16, weights not
 * in a file mapping, CODEMOE_REPACK=0); the repacked tiles' 512-bit
 * kernels run everything else, on both vendors. */
static void keep_ymm_generation(struct cm_kernels *k512, const struct cm_kernels *k2)
{
    static const enum cm_type types[] = {CM_TYPE_Q8_0, CM_TYPE_Q4_0};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        k512->gemv[types[i]] = k2->gemv[types[i]];
        k512->vec_dot[types[i]] = k2->vec_dot[types[i]];
    }
}

/* Whether the repacked generation kernels prefetch ahead (cm_repack's
 * gemv_pf): on AMD Zen 5 it measured 1.10-1.15x faster; on Intel, prefetch
 * ahead measured slower (see matmul_rows), so Intel keeps gemv. */
static int rp_prefetch;

/* tabs[i] = the table for ISA i, ok[i] = whether this CPU and build run
 * it (an ISA file compiled without its flags declines); returns the best. */
static int build_tables(const cpu_features *f, struct cm_kernels tabs[ISA_COUNT],
                        int ok[ISA_COUNT])
{
    int top = ISA_SCALAR;
    cm_kernels_scalar(&tabs[ISA_SCALAR]);
    for (int i = 1; i < ISA_COUNT; i++)
        tabs[i] = tabs[ISA_SCALAR], ok[i] = 0;
    ok[ISA_SCALAR] = 1;
#ifdef CM_X86_KERNELS
    if (f->avx2 && cm_kernels_avx2(&tabs[ISA_AVX2]) == 0) {
        top = ISA_AVX2;
        tabs[ISA_AVX512] = tabs[ISA_AVX2];
        if (f->avx512 && cm_kernels_avx512(&tabs[ISA_AVX512], f->vnni) == 0) {
            top = ISA_AVX512;
            if (f->amd)
                keep_ymm_generation(&tabs[ISA_AVX512], &tabs[ISA_AVX2]);
        }
    }
    ok[ISA_AVX2] = top >= ISA_AVX2, ok[ISA_AVX512] = top == ISA_AVX512;
#endif
    if (f->neon && cm_kernels_neon(&tabs[ISA_NEON], f->dotprod) == 0)
        top = ISA_NEON, ok[ISA_NEON] = 1;
    return top;
}

static const char *const isa_names[] = {"scalar", "avx2", "avx512", "neon"};

static int isa_from_name(const char *s)
{
    for (int i = 0; i < ISA_COUNT; i++)
        if (strcmp(s, isa_names[i]) == 0)
            return i;
    return -1;
}

int cm_cpu_init(char *err_msg, size_t err_len)
{
    cpu_features f = detect();
    struct cm_kernels tabs[ISA_COUNT];
    int ok[ISA_COUNT];
    int best = build_tables(&f, tabs, ok), isa = best;
    const char *env = getenv("CODEMOE_ISA");
    if (env && *env) {
        isa = isa_from_name(env);
        if (isa < 0 || !ok[isa]) {
            const char *why = isa < 0 ? "unknown ISA (scalar|avx2|avx512|neon)"
                                      : "not supported by this CPU or build";
            if (err_msg && err_len)
                snprintf(err_msg, err_len, "CODEMOE_ISA=%s: %s (best here: %s)",
                         env, why, isa_names[best]);
            return -1;
        }
    }
    cm_kern = tabs[isa];
    rp_prefetch = f.amd;
    return 0;
}

const char *cm_cpu_isa(void)
{
    return cm_kern.isa;
}

/* ---- matrix product ----------------------------------------------------- */

#ifdef _OPENMP
#include <omp.h>
#endif

/* Pragmas through macros so builds without OpenMP get no unknown-pragma
 * warnings. */
#ifdef _OPENMP
#define OMP_FOR_INNER _Pragma("omp for schedule(static)")
/* The loop on the team when par; else plainly, without entering libgomp:
 * a region whose if clause is false still costs its closing barrier's
 * wake, a system call (~3 us in a virtual machine), and a generated token
 * runs dozens of products too small for threads. */
#define OMP_FOR_IF(par, ...)                                              \
    do {                                                                  \
        if (par) {                                                        \
            _Pragma("omp parallel for schedule(static)") __VA_ARGS__      \
        } else {                                                          \
            __VA_ARGS__                                                   \
        }                                                                 \
    } while (0)
#else
#define OMP_FOR_INNER
#define OMP_FOR_IF(par, ...) do { __VA_ARGS__ } while (0)
#endif

#define ALIGN64(n) (((n) + 63) & ~(size_t)63)

/* Batches from this size take the table's batched kernel (cm_gemm): below
 * it a 16-token group is mostly padding and the per-token dots win.
 * Measured with bench_matmul --sweep (896 x 4864, one thread, AVX-512):
 * the dots run ~90-120 GFLOP/s at any batch size; the batched kernel
 * passes them at 4-5 tokens for q8_0/q4_0 and at 6-8 for the K-quants,
 * whose 256-element blocks cost more to decode per use. */
#define GEMM_MIN_TOK 4
#define GEMM_MIN_TOK_K 8

/* Products below this many multiply-adds run on one thread: waking the
 * other threads and the closing barrier cost a few microseconds, more than
 * they save (a 512 x 512 Q8_0 matrix-vector product is ~9 us on one core). */
#define PAR_MIN_MACS ((int64_t)1 << 18)

/* Bytes of one quantized activation row; 0 when activations stay float. */
static size_t act_row_bytes(const cm_tensor *w)
{
    const cm_type_info *ti = cm_type_get(w->type);
    if (!ti || ti->dot_type == CM_TYPE_F32)
        return 0;
    return ALIGN64(cm_row_bytes(ti->dot_type, w->ne[0]));
}

/* Bytes of one packed activation row when a gemv serves w, else 0. */
static size_t gemv_row_bytes(const cm_tensor *w)
{
    const cm_gemv *gv = cm_kern.gemv[w->type];
    return gv && act_row_bytes(w) ? gv->pack_bytes(w->ne[0]) : 0;
}

/* The batched kernel cm_matmul uses for n_tok rows of w, or NULL.  The
 * table's own kernel wins where there is one: on AVX-512 it measured faster
 * than OpenBLAS 0.3.21's sgemm at every batch size (bench_matmul --sweep);
 * sgemm serves F32/F16 on ISAs without a float gemm, from BLAS_MIN_TOK. */
static const cm_gemm *pick_gemm(const cm_tensor *w, int64_t n_tok)
{
    const cm_type_info *ti = cm_type_get(w->type);
    if (!ti || n_tok < (ti->block_elems == 256 ? GEMM_MIN_TOK_K : GEMM_MIN_TOK))
        return NULL;
    if (cm_kern.gemm[w->type])
        return cm_kern.gemm[w->type];
    int64_t blas_min = 0;
    const cm_gemm *blas = cm_blas_gemm(w->type, &blas_min);
    return blas && n_tok >= blas_min ? blas : NULL;
}

/* Scratch layout of a batched product: quantized rows | packed groups |
 * one decode tile per thread. */
static size_t gemm_pack_bytes(const cm_gemm *g, const cm_tensor *w, int64_t n_tok)
{
    if (!g->pack_bytes)
        return 0;
    int64_t groups = (n_tok + g->group - 1) / g->group;
    return ALIGN64(g->pack_bytes(w->ne[0]) * (size_t)groups);
}

static size_t gemm_scratch(const cm_gemm *g, const cm_tensor *w, int64_t n_tok)
{
    if (!g)
        return 0;
    return gemm_pack_bytes(g, w, n_tok) +
           (size_t)cm_max_threads() * ALIGN64(g->work_bytes(w->ne[0]));
}

size_t cm_matmul_scratch_bytes(const cm_tensor *w, int64_t n_tok)
{
    if (n_tok <= 0)
        return 0;
    size_t act = act_row_bytes(w) * (size_t)n_tok;
    /* pick_gemm() for n_tok: the kernel only changes at thresholds it
     * crosses going up, and every kernel's need grows with n_tok; below
     * the batched kernel's threshold a gemv may pack each row */
    size_t gemv = ALIGN64(gemv_row_bytes(w)) * (size_t)n_tok;
    const cm_repack *rp = w->type < CM_TYPE_COUNT ? cm_kern.repack[w->type] : NULL;
    size_t rpx = rp && act ? ALIGN64(rp->x_bytes(w->ne[0])) * (size_t)n_tok : 0;
    gemv = rpx > gemv ? rpx : gemv;
    size_t gemm = gemm_scratch(pick_gemm(w, n_tok), w, n_tok);
    return ALIGN64(act) + (gemv > gemm ? gemv : gemm);
}

/* ---- repacked weights (cm_cpu_repack_acquire) ---------------------------- */

typedef struct {
    const char *src; /* the tensor's bytes in the mapping */
    size_t bytes;
    char *dst;       /* the same bytes repacked, tile t at 16 * t * row bytes */
    int64_t cols;
    enum cm_type type;
    const cm_repack *rp;
    size_t mat_bytes;    /* one matrix (ne[0] x ne[1]) */
    int64_t n_mat;       /* matrices (experts) */
    unsigned char *done; /* [n_mat]: repacked yet (experts: at first use) */
} rp_entry;

typedef struct rp_set {
    const void *key;
    int refs;
    rp_entry *e; /* sorted by src */
    size_t n, bytes;
    void *mem;
    struct rp_set *next;
} rp_set;

static rp_set *rp_sets; /* read without the lock only to test for NULL */
static pthread_mutex_t rp_lock = PTHREAD_MUTEX_INITIALIZER;

#define RP_ALIGN ((size_t)2 << 20) /* transparent huge pages where allowed */

static size_t tensor_bytes(const cm_tensor *w)
{
    return cm_row_bytes(w->type, w->ne[0]) * (size_t)cm_tensor_rows(w);
}

static int rp_candidate(const cm_tensor *w, const char *lo, size_t map_bytes)
{
    if (!w || !w->data || w->buf || w->type >= CM_TYPE_COUNT || !cm_kern.repack[w->type])
        return 0;
    const cm_type_info *ti = cm_type_get(w->type);
    if (!ti || !ti->supported || w->ne[0] <= 0 || w->ne[0] % ti->block_elems ||
        w->ne[1] <= 0 || w->ne[1] % 16)
        return 0;
    const char *d = w->data;
    return d >= lo && tensor_bytes(w) <= map_bytes && (size_t)(d - lo) <= map_bytes - tensor_bytes(w);
}

static int rp_cmp(const void *a, const void *b)
{
    const char *x = ((const rp_entry *)a)->src, *y = ((const rp_entry *)b)->src;
    return (x > y) - (x < y);
}

/* Drops the whole pages inside [p, p + n) from this process. */
static void drop_pages(const char *p, size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t b = ((uintptr_t)p + n) & ~(uintptr_t)(page - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

/* Keeps reads of the unpacked tensors from mapping e's dropped pages back.
 * The kernel maps a large page-cache folio (a file read in by readahead)
 * whole on one fault where the folio lies within the faulting mapping
 * (VMA), and a 2 MiB one with one PMD: a norm sitting between two
 * repacked matrices, read every token, kept up to 2 MiB of each resident
 * (qwen05b q4_k_m: 50-80 MiB more peak RSS).  MADV_NOHUGEPAGE over the
 * whole pages inside e makes e a VMA of its own, which no unpacked tensor
 * shares (the pages e shares with a neighbour stay outside it), and the
 * kernel then maps a folio crossing its edges page by page. */
static void no_huge_map(const char *p, size_t n)
{
#ifdef MADV_NOHUGEPAGE
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t b = ((uintptr_t)p + n) & ~(uintptr_t)(page - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_NOHUGEPAGE);
#else
    (void)p, (void)n;
#endif
}

/* Drops [p, p + n) of e's bytes in the mapping, widened to the 2 MiB
 * blocks around it within e: inside e's own VMA (no_huge_map) reading an
 * expert's first bytes still maps the rest of its folio, the tail of the
 * expert packed before it or the head of one not used yet (which is read
 * again only to be packed). */
static void drop_folios(const rp_entry *e, const char *p, size_t n)
{
    const uintptr_t blk = (uintptr_t)2 << 20, lo = (uintptr_t)e->src, hi = lo + e->bytes;
    uintptr_t a = (uintptr_t)p & ~(blk - 1), b = ((uintptr_t)p + n + blk - 1) & ~(blk - 1);
    a = a > lo ? a : lo;
    b = b < hi ? b : hi;
    drop_pages((const char *)a, b - a);
}

/* Repacks matrix mi of e (with the lock held, outside parallel regions)
 * and drops its pages in the mapping, a few MiB at a time: the copy grows
 * as the mapping shrinks, so a large matrix (an embedding table) does not
 * sit in memory twice. */
static void rp_pack_matrix(rp_entry *e, int64_t mi)
{
    enum { STEP_BYTES = 4 << 20 };
    const size_t wrow = cm_row_bytes(e->type, e->cols), tile = 16 * wrow;
    const int64_t tiles = (int64_t)(e->mat_bytes / tile);
    const int64_t step = tile < STEP_BYTES ? (int64_t)(STEP_BYTES / tile) : 1;
    const char *src = e->src + (size_t)mi * e->mat_bytes;
    char *dst = e->dst + (size_t)mi * e->mat_bytes;
    for (int64_t t0 = 0; t0 < tiles; t0 += step) {
        const int64_t t1 = t0 + step < tiles ? t0 + step : tiles;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
        for (int64_t t = t0; t < t1; t++)
            e->rp->pack(e->cols, src + (size_t)t * tile, wrow, dst + (size_t)t * tile);
        drop_folios(e, src + (size_t)t0 * tile, (size_t)(t1 - t0) * tile);
    }
    e->done[mi] = 1;
}

/* Lays the copies out in set->mem, 2-D weights first, and repacks those
 * now (on transparent huge pages where the system allows them on request);
 * the experts of 3-D weights wait for their first use (rp_find), so the
 * experts the router never picks take no memory, as in the mapping (on
 * 4 KiB pages: a huge page would bring in its unused neighbours too). */
static int rp_fill(rp_set *set)
{
    char *at = set->mem;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < set->n; i++) {
            rp_entry *e = &set->e[i];
            if ((e->n_mat > 1) != pass)
                continue;
            e->dst = at;
            at += ALIGN64(e->bytes);
        }
#ifdef MADV_HUGEPAGE
    size_t flat = 0;
    for (size_t i = 0; i < set->n; i++)
        flat += set->e[i].n_mat == 1 ? ALIGN64(set->e[i].bytes) : 0;
    if (flat >= RP_ALIGN)
        madvise(set->mem, flat / RP_ALIGN * RP_ALIGN, MADV_HUGEPAGE);
#endif
    for (size_t i = 0; i < set->n; i++)
        no_huge_map(set->e[i].src, set->e[i].bytes);
    for (size_t i = 0; i < set->n; i++) {
        rp_entry *e = &set->e[i];
        if (!(e->done = calloc((size_t)e->n_mat, 1)))
            return -1;
        if (e->n_mat == 1)
            rp_pack_matrix(e, 0);
    }
    return 0;
}

int cm_cpu_repack_acquire(const void *key, const cm_tensor *const *ws, int nw,
                          const void *map, size_t map_bytes)
{
    pthread_mutex_lock(&rp_lock);
    for (rp_set *s = rp_sets; s; s = s->next)
        if (s->key == key) {
            s->refs++;
            pthread_mutex_unlock(&rp_lock);
            return 1;
        }
    rp_set *set = calloc(1, sizeof *set);
    if (!set) {
        pthread_mutex_unlock(&rp_lock);
        return 0;
    }
    set->key = key, set->refs = 1;
    const char *env = getenv("CODEMOE_REPACK");
    set->e = nw > 0 ? calloc((size_t)nw, sizeof *set->e) : NULL;
    if (set->e && !(env && strcmp(env, "0") == 0)) {
        for (int i = 0; i < nw; i++)
            if (rp_candidate(ws[i], map, map_bytes))
                set->e[set->n++] = (rp_entry){ws[i]->data, tensor_bytes(ws[i]), NULL, ws[i]->ne[0],
                                              ws[i]->type, cm_kern.repack[ws[i]->type],
                                              cm_row_bytes(ws[i]->type, ws[i]->ne[0]) *
                                                  (size_t)ws[i]->ne[1],
                                              cm_tensor_rows(ws[i]) / ws[i]->ne[1], NULL};
        qsort(set->e, set->n, sizeof *set->e, rp_cmp);
        size_t n = 0; /* one copy per tensor (a tied output is the embedding) */
        for (size_t i = 0; i < set->n; i++)
            if (n == 0 || set->e[i].src >= set->e[n - 1].src + set->e[n - 1].bytes)
                set->e[n++] = set->e[i];
        set->n = n;
        for (size_t i = 0; i < n; i++)
            set->bytes += ALIGN64(set->e[i].bytes);
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        int fits = pages <= 0 || psz <= 0 || set->bytes <= (size_t)pages * (size_t)psz / 2;
        if (n && fits && posix_memalign(&set->mem, RP_ALIGN, set->bytes) == 0) {
            if (rp_fill(set) != 0) { /* no memory for the flags: nothing repacked */
                for (size_t i = 0; i < set->n; i++)
                    free(set->e[i].done);
                free(set->mem);
                set->mem = NULL, set->n = set->bytes = 0;
            }
        } else {
            set->n = set->bytes = 0;
        }
    }
    set->next = rp_sets;
    __atomic_store_n(&rp_sets, set, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&rp_lock);
    return 1;
}

void cm_cpu_repack_release(const void *key)
{
    pthread_mutex_lock(&rp_lock);
    for (rp_set **p = &rp_sets; *p; p = &(*p)->next) {
        rp_set *s = *p;
        if (s->key != key || --s->refs > 0)
            continue;
        __atomic_store_n(p, s->next, __ATOMIC_RELEASE);
        for (size_t i = 0; i < s->n; i++)
            free(s->e[i].done);
        free(s->mem), free(s->e), free(s);
        break;
    }
    pthread_mutex_unlock(&rp_lock);
}

void cm_cpu_repack_drop_experts(const void *key)
{
    pthread_mutex_lock(&rp_lock);
    for (rp_set *s = rp_sets; s; s = s->next) {
        if (s->key != key)
            continue;
        size_t n = 0;
        for (size_t i = 0; i < s->n; i++) {
            rp_entry *e = &s->e[i];
            if (e->n_mat == 1) {
                s->e[n++] = *e;
                continue;
            }
            drop_pages(e->dst, e->bytes); /* (anonymous: the copies are gone) */
            s->bytes -= ALIGN64(e->bytes);
            free(e->done);
        }
        s->n = n;
    }
    pthread_mutex_unlock(&rp_lock);
}

size_t cm_cpu_repacked_bytes(void)
{
    size_t n = 0;
    pthread_mutex_lock(&rp_lock);
    for (rp_set *s = rp_sets; s; s = s->next)
        n += s->bytes;
    pthread_mutex_unlock(&rp_lock);
    return n;
}

/* The repacked copy of w (whole 16-row tiles of a repacked tensor): its
 * kernels in *rp and its bytes in *data; 0 when w is used as it is.  Only
 * copies made for the table in use count: after cm_cpu_init picks another
 * (CODEMOE_ISA, tests), older copies are not the layout, nor the scratch,
 * that cm_matmul_scratch_bytes sized for, and w is read as it is. */
static int rp_find(const cm_tensor *w, const cm_repack **rp, const char **data)
{
    if (w->type >= CM_TYPE_COUNT || !cm_kern.repack[w->type] ||
        !__atomic_load_n(&rp_sets, __ATOMIC_ACQUIRE) || !w->data || w->ne[1] % 16)
        return 0;
    const char *d = w->data;
    int found = 0;
    pthread_mutex_lock(&rp_lock);
    for (rp_set *s = rp_sets; s && !found; s = s->next) {
        size_t lo = 0, hi = s->n; /* lo: the entries with src <= d */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (s->e[mid].src <= d)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == 0)
            continue;
        rp_entry *e = &s->e[lo - 1];
        const size_t wrow = cm_row_bytes(e->type, e->cols), off = (size_t)(d - e->src);
        if (d >= e->src && off < e->bytes && e->type == w->type && e->cols == w->ne[0] &&
            e->rp == cm_kern.repack[w->type] &&
            off % (16 * wrow) == 0 && (size_t)w->ne[1] * wrow <= e->bytes - off) {
            const size_t end = off + (size_t)w->ne[1] * wrow;
            for (size_t mi = off / e->mat_bytes; mi * e->mat_bytes < end; mi++)
                if (!e->done[mi])
                    rp_pack_matrix(e, (int64_t)mi);
            *rp = e->rp, *data = e->dst + off;
            found = 1;
        }
    }
    pthread_mutex_unlock(&rp_lock);
    return found;
}

int cm_cpu_is_repacked(const cm_tensor *w)
{
    const cm_repack *rp;
    const char *data;
    return w && w->data && rp_find(w, &rp, &data);
}

void cm_cpu_table_own_vma(const cm_tensor *t)
{
    no_huge_map(t->data, tensor_bytes(t));
}

void cm_cpu_table_unmap(const cm_tensor *t)
{
    drop_pages(t->data, tensor_bytes(t));
}

/* ---- weights kept decoded (cm_cpu_decode_acquire) ------------------------ */

typedef struct {
    const char *src; /* the weight's bytes, as cm_matmul receives them */
    int64_t cols, rows;
    enum cm_type type;
    const cm_gemm *g; /* the kernels whose tile layout dst holds */
    char *dst; /* NULL: not decoded (yet: at its first batched use) */
} dc_entry;

typedef struct dc_set {
    const void *key;
    int refs;
    dc_entry *e;
    size_t n, bytes, budget;
    struct dc_set *next;
} dc_set;

static dc_set *dc_sets; /* read without the lock only to test for NULL */

static size_t dc_bytes(const cm_gemm *g, int64_t cols, int64_t rows)
{
    return ALIGN64(g->work_bytes(cols) * (size_t)((rows + 15) / 16));
}

/* Decodes e's tiles, the threads sharing them. */
static void dc_fill(const dc_entry *e)
{
    const size_t wrow = cm_row_bytes(e->type, e->cols), tb = e->g->work_bytes(e->cols);
    const int64_t tiles = (e->rows + 15) / 16;
    OMP_FOR_IF(tiles > 1, for (int64_t t = 0; t < tiles; t++) {
        int64_t r1 = 16 * (t + 1) < e->rows ? 16 * (t + 1) : e->rows;
        e->g->decode(e->cols, e->src, wrow, 16 * t, r1, e->dst + (size_t)t * tb);
    });
}

/* Whether w can be kept decoded: a 2-D weight of a kernel that can, not
 * repacked, not in the set yet. */
static int dc_candidate(const cm_tensor *w, const dc_set *set)
{
    if (!w || !w->data || w->type >= CM_TYPE_COUNT || cm_tensor_rows(w) != w->ne[1])
        return 0;
    const cm_gemm *g = cm_kern.gemm[w->type];
    const cm_type_info *ti = cm_type_get(w->type);
    const cm_repack *rp;
    const char *rd;
    if (!g || !g->decode || !g->decoded || !ti || !ti->supported ||
        w->ne[0] % ti->block_elems || rp_find(w, &rp, &rd))
        return 0;
    for (size_t i = 0; i < set->n; i++)
        if (set->e[i].src == (const char *)w->data)
            return 0;
    return 1;
}

/* Decodes e if the budget has room for it (with the lock held). */
static void dc_decode(dc_set *set, dc_entry *e)
{
    size_t b = dc_bytes(e->g, e->cols, e->rows);
    if (set->bytes + b > set->budget || posix_memalign((void **)&e->dst, 64, b) != 0)
        return;
    dc_fill(e);
    set->bytes += b;
}

int cm_cpu_decode_acquire(const void *key, const cm_tensor *const *ws, int nw,
                          const cm_tensor *later, int nl, size_t budget)
{
    pthread_mutex_lock(&rp_lock);
    for (dc_set *s = dc_sets; s; s = s->next)
        if (s->key == key) {
            s->refs++;
            pthread_mutex_unlock(&rp_lock);
            return 1;
        }
    pthread_mutex_unlock(&rp_lock);
    dc_set *set = calloc(1, sizeof *set);
    if (!set || (nw + nl > 0 && !(set->e = calloc((size_t)(nw + nl), sizeof *set->e)))) {
        free(set);
        return 0;
    }
    set->key = key, set->refs = 1, set->budget = budget;
    for (int i = 0; i < nw + nl; i++) {
        const cm_tensor *w = i < nw ? ws[i] : &later[i - nw];
        if (!dc_candidate(w, set))
            continue;
        dc_entry *e = &set->e[set->n++];
        *e = (dc_entry){w->data, w->ne[0], w->ne[1], w->type, cm_kern.gemm[w->type], NULL};
        if (i < nw)
            dc_decode(set, e);
    }
    pthread_mutex_lock(&rp_lock);
    set->next = dc_sets;
    __atomic_store_n(&dc_sets, set, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&rp_lock);
    return 1;
}

void cm_cpu_decode_release(const void *key)
{
    pthread_mutex_lock(&rp_lock);
    for (dc_set **p = &dc_sets; *p; p = &(*p)->next) {
        dc_set *s = *p;
        if (s->key != key || --s->refs > 0)
            continue;
        __atomic_store_n(p, s->next, __ATOMIC_RELEASE);
        for (size_t i = 0; i < s->n; i++)
            free(s->e[i].dst);
        free(s->e), free(s);
        break;
    }
    pthread_mutex_unlock(&rp_lock);
}

size_t cm_cpu_decoded_bytes(void)
{
    size_t n = 0;
    pthread_mutex_lock(&rp_lock);
    for (dc_set *s = dc_sets; s; s = s->next)
        n += s->bytes;
    pthread_mutex_unlock(&rp_lock);
    return n;
}

/* w's decoded tiles for kernel g, or NULL: only a whole matrix decoded by
 * the same kernels (the table in use) counts; one registered but not yet
 * decoded is decoded now, if the budget has room. */
static const char *dc_find(const cm_tensor *w, const cm_gemm *g)
{
    if (!__atomic_load_n(&dc_sets, __ATOMIC_ACQUIRE) || !g->decoded)
        return NULL;
    const char *found = NULL;
    pthread_mutex_lock(&rp_lock);
    for (dc_set *s = dc_sets; s && !found; s = s->next)
        for (size_t i = 0; i < s->n; i++) {
            dc_entry *e = &s->e[i];
            if (e->src == (const char *)w->data && e->g == g && e->cols == w->ne[0] &&
                e->rows == w->ne[1] && e->type == w->type) {
                if (!e->dst)
                    dc_decode(s, e);
                found = e->dst;
                break;
            }
        }
    pthread_mutex_unlock(&rp_lock);
    return found;
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
                        size_t xrow, int64_t n_tok, float *y, const cm_gemv *gv)
{
    const int par = rows * cols * n_tok >= PAR_MIN_MACS;
    if (n_tok == 1 && gv && gv->dot4) { /* four rows per call, the rest one by one */
        const int64_t quads = (rows + 3) / 4;
        OMP_FOR_IF(par, for (int64_t q = 0; q < quads; q++) {
            int64_t r0 = 4 * q;
            if (r0 + 4 <= rows)
                gv->dot4(cols, wd + (size_t)r0 * wrow, wrow, xq, y + r0);
            else
                for (int64_t r = r0; r < rows; r++)
                    y[r] = dot(cols, wd + (size_t)r * wrow, xq);
        });
        return;
    }
    if (n_tok == 1) {
        /* each thread streams one contiguous range of rows.  (Software
         * prefetch a few KiB ahead measured 2-3x slower on an Intel Xeon:
         * the hardware streamers already keep up.) */
        OMP_FOR_IF(par, for (int64_t r = 0; r < rows; r++)
                            y[r] = dot(cols, wd + (size_t)r * wrow, xq););
        return;
    }
    const int64_t rt = row_tile(wrow), ntiles = (rows + rt - 1) / rt;
    OMP_FOR_IF(par, for (int64_t tile = 0; tile < ntiles; tile++) {
        int64_t r0 = tile * rt, r1 = r0 + rt < rows ? r0 + rt : rows;
        for (int64_t t = 0; t < n_tok; t++) {
            const char *xt = xq + (size_t)t * xrow;
            for (int64_t r = r0; r < r1; r++)
                y[t * rows + r] = dot(cols, wd + (size_t)r * wrow, xt);
        }
    });
}

/* Quantizes and packs token group i (each thread its own groups, so the
 * quantized rows are still in L1 when packed). */
static void gemm_group(const cm_gemm *g, cm_quantize_fn quant, int64_t cols, const float *x,
                       int64_t n_tok, char *xq, size_t xrow, char *xp, size_t gb, int64_t i)
{
    int64_t t0 = i * g->group, nt = n_tok - t0 < g->group ? n_tok - t0 : g->group;
    for (int64_t t = t0; t < t0 + nt; t++)
        quant(x + t * cols, xq + (size_t)t * xrow, cols);
    g->pack(cols, xq + (size_t)t0 * xrow, xrow, (int)nt, xp + (size_t)i * gb);
}

/* Thread id's part of a weight's rows when the 16-row tiles of several
 * weights are dealt out as one list (tile0: the weight's first tile in
 * it): contiguous weights per thread, and no two threads write one output
 * cache line.  Returns 0 when the thread has none of the weight's rows. */
static int share_rows(int64_t all_tiles, int id, int n, int64_t tile0, int64_t rows,
                      int64_t *r0, int64_t *r1)
{
    int64_t a = all_tiles * id / n, b = all_tiles * (id + 1) / n, end = tile0 + (rows + 15) / 16;
    int64_t lo = a > tile0 ? a : tile0, hi = b < end ? b : end;
    if (lo >= hi)
        return 0;
    *r0 = (lo - tile0) * 16;
    *r1 = (hi - tile0) * 16 < rows ? (hi - tile0) * 16 : rows;
    return 1;
}

/* One parallel region with one barrier: quantize and pack the tokens once,
 * then each thread runs the batched kernels over its share of the rows of
 * every weight (weight i through gs[i]; all nw pack their input alike). */
/* What the threads of one batched product share. */
typedef struct {
    const cm_gemm *const *gs;
    const cm_tensor *const *ws;
    int nw;
    const float *x;
    int64_t n_tok, cols, groups, all_tiles;
    float *const *ys;
    char *xq, *xp, *work;
    size_t xrow, wb, gb;
    cm_quantize_fn quant;
    const void *xin;
    const char *const *dec; /* [nw]: weight i's decoded tiles, or NULL */
} gemm_job;

/* The calling thread's part of a batched product (all of it off a team). */
static void gemm_share(const gemm_job *j)
{
    if (j->gb) {
        OMP_FOR_INNER
        for (int64_t i = 0; i < j->groups; i++)
            gemm_group(j->gs[0], j->quant, j->cols, j->x, j->n_tok, j->xq, j->xrow, j->xp,
                       j->gb, i);
    }
    int id = 0, n = 1;
#ifdef _OPENMP
    id = omp_get_thread_num(), n = omp_get_num_threads();
#endif
    int64_t tile0 = 0, r0, r1;
    for (int i = 0; i < j->nw; i++) {
        const int64_t rows = j->ws[i]->ne[1];
        if (!share_rows(j->all_tiles, id, n, tile0, rows, &r0, &r1))
            ;
        else if (i < 8 && j->dec[i]) /* (matmul_gemm looks up 8 at most) */
            j->gs[i]->decoded(j->cols, j->dec[i], r0, r1, rows, j->xin, j->n_tok, j->ys[i], rows);
        else
            j->gs[i]->rows(j->cols, j->ws[i]->data, cm_row_bytes(j->ws[i]->type, j->cols), r0,
                           r1, j->xin, j->n_tok, j->ys[i], rows, j->work + (size_t)id * j->wb);
        tile0 += (rows + 15) / 16;
    }
}

static void matmul_gemm(const cm_gemm *const *gs, const cm_tensor *const *ws, int nw,
                        const float *x, int64_t n_tok, float *const *ys, char *scratch)
{
    const cm_tensor *w = ws[0];
    const cm_gemm *g = gs[0];
    enum { MAX_N = 8 };
    const char *dec[MAX_N] = {0};
    for (int i = 0; i < nw && i < MAX_N; i++)
        dec[i] = dc_find(ws[i], gs[i]);
    gemm_job j = {gs, ws, nw, x, n_tok, w->ne[0], (n_tok + g->group - 1) / g->group, 0, ys,
                  scratch, NULL, NULL, act_row_bytes(w), 0, 0, NULL, NULL, dec};
    j.wb = ALIGN64(g->work_bytes(j.cols));
    j.gb = g->pack_bytes ? g->pack_bytes(j.cols) : 0;
    j.xp = scratch + ALIGN64(j.xrow * (size_t)n_tok);
    j.work = j.xp + gemm_pack_bytes(g, w, n_tok);
    j.quant = j.xrow ? cm_kern.quantize[cm_type_get(w->type)->dot_type] : NULL;
    if (j.xrow && (!j.quant || !j.gb))
        no_kernel(cm_type_get(w->type)->dot_type);
    j.xin = j.gb ? (const void *)j.xp : (const void *)x;
    int64_t all_rows = 0;
    for (int i = 0; i < nw; i++)
        all_rows += ws[i]->ne[1], j.all_tiles += (ws[i]->ne[1] + 15) / 16;
    int nth = all_rows * j.cols * n_tok >= PAR_MIN_MACS ? cm_max_threads() : 1;
    nth = nth < j.all_tiles ? nth : (int)j.all_tiles;
#ifdef _OPENMP
    if (nth > 1) { /* (one thread: no region at all, see OMP_FOR_IF) */
#pragma omp parallel num_threads(nth)
        gemm_share(&j);
        return;
    }
#endif
    gemm_share(&j);
}

/* Generation on repacked weights: each activation row quantized and
 * packed once, then one parallel loop over the 16-row tiles of all nw
 * weights (the same columns and dot type), so a projection group (query,
 * key, value; gate, up) costs one fork and one barrier. */
static void matmul_repacked(const cm_repack *const *rps, const char *const *wd,
                            const cm_tensor *const *ws, int nw, const float *x, int64_t n_tok,
                            float *const *ys, char *scratch)
{
    enum { MAX_N = 8 };
    const cm_tensor *w = ws[0];
    const int64_t cols = w->ne[0];
    const cm_type_info *ti = cm_type_get(w->type);
    const size_t xrow = act_row_bytes(w), wrow = cm_row_bytes(w->type, cols);
    const size_t prow = ALIGN64(rps[0]->x_bytes(cols));
    cm_quantize_fn quant = cm_kern.quantize[ti->dot_type];
    if (!quant)
        no_kernel(ti->dot_type);
    char *xp = scratch + ALIGN64(xrow * (size_t)n_tok);
    for (int64_t t = 0; t < n_tok; t++) {
        quant(x + t * cols, scratch + (size_t)t * xrow, cols);
        rps[0]->x_pack(cols, scratch + (size_t)t * xrow, xp + (size_t)t * prow);
    }
    int64_t first[MAX_N + 1], all = 0;
    for (int i = 0; i < nw; i++)
        first[i] = all, all += ws[i]->ne[1] / 16;
    first[nw] = all;
    const int par = all * 16 * cols * n_tok >= PAR_MIN_MACS;
    OMP_FOR_IF(par, for (int64_t q = 0; q < all; q++) {
        int i = 0;
        while (q >= first[i + 1])
            i++;
        const int64_t tile = q - first[i], rows = ws[i]->ne[1];
        const char *tw = wd[i] + (size_t)tile * 16 * wrow;
        void (*gemv)(int64_t, const void *, const void *, float *) =
            rp_prefetch && rps[i]->gemv_pf ? rps[i]->gemv_pf : rps[i]->gemv;
        for (int64_t t = 0; t < n_tok; t++)
            gemv(cols, tw, xp + (size_t)t * prow, ys[i] + t * rows + 16 * tile);
    });
}

/* Whether weights i > 0 can share weight 0's repacked generation pass. */
static int same_repack(const cm_repack *const *rps, const cm_tensor *const *ws, int nw)
{
    for (int i = 1; i < nw; i++)
        if (rps[i]->x_pack != rps[0]->x_pack || ws[i]->ne[0] != ws[0]->ne[0] ||
            ws[i]->type != ws[0]->type)
            return 0;
    return 1;
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
    const cm_gemm *g = pick_gemm(w, n_tok);
    const cm_repack *rp;
    const char *rd;
    if (rp_find(w, &rp, &rd)) {
        if (g && rp->gemm) { /* the batched kernel on the tiles */
            cm_tensor v = *w;
            const cm_tensor *pv = &v;
            v.data = rd, g = rp->gemm;
            matmul_gemm(&g, &pv, 1, x, n_tok, &y, scratch);
        } else {
            matmul_repacked(&rp, &rd, &w, 1, x, n_tok, &y, scratch);
        }
        return;
    }
    if (g) {
        matmul_gemm(&g, &w, 1, x, n_tok, &y, scratch);
        return;
    }
    const size_t wrow = cm_row_bytes(w->type, cols);
    size_t xrow = act_row_bytes(w);
    const char *xq = scratch;
    const cm_gemv *gv = NULL;
    if (xrow == 0) { /* float weights dot the float activations in place */
        xq = (const char *)x;
        xrow = (size_t)cols * sizeof(float);
    } else {
        cm_quantize_fn quant = cm_kern.quantize[ti->dot_type];
        if (!quant)
            no_kernel(ti->dot_type);
        /* each activation row is quantized once, then reused by every
         * weight row */
        OMP_FOR_IF(n_tok > 1, for (int64_t t = 0; t < n_tok; t++)
                                  quant(x + t * cols, (char *)scratch + (size_t)t * xrow, cols););
        gv = cm_kern.gemv[w->type];
        if (gv) { /* rearrange each row once for the gemv's dot */
            const size_t prow = ALIGN64(gv->pack_bytes(cols));
            char *xp = (char *)scratch + ALIGN64(xrow * (size_t)n_tok);
            for (int64_t t = 0; t < n_tok; t++)
                gv->pack(cols, xq + (size_t)t * xrow, xp + (size_t)t * prow);
            xq = xp, xrow = prow, dot = gv->dot;
        }
    }
    matmul_rows(dot, w->data, wrow, cols, rows, xq, xrow, n_tok, y, gv);
}

/* Whether two batched kernels can share one packing of their input (and
 * one scratch layout): the same quantization, packing and tile size. */
static int same_packing(const cm_gemm *a, const cm_gemm *b, const cm_tensor *wa,
                        const cm_tensor *wb)
{
    return a && b && a->group == b->group && a->pack == b->pack &&
           a->pack_bytes == b->pack_bytes && a->work_bytes == b->work_bytes &&
           wa->ne[0] == wb->ne[0] &&
           cm_type_get(wa->type)->dot_type == cm_type_get(wb->type)->dot_type;
}

void cm_matmul_n(const cm_tensor *const *ws, int nw, const float *x, int64_t n_tok,
                 float *const *ys, void *scratch)
{
    enum { MAX_N = 8 };
    const cm_gemm *gs[MAX_N];
    const cm_repack *rps[MAX_N];
    const char *rds[MAX_N];
    cm_tensor views[MAX_N];
    const cm_tensor *vs[MAX_N];
    int shared = nw > 0 && nw <= MAX_N && n_tok > 0, all_rp = shared;
    for (int i = 0; i < nw && shared; i++) {
        gs[i] = pick_gemm(ws[i], n_tok);
        vs[i] = ws[i];
        int r = rp_find(ws[i], &rps[i], &rds[i]);
        if (r && gs[i] && rps[i]->gemm) { /* the same packing, on the tiles */
            views[i] = *ws[i], views[i].data = rds[i];
            vs[i] = &views[i], gs[i] = rps[i]->gemm;
        }
        all_rp = all_rp && r;
    }
    for (int i = 0; i < nw && shared; i++)
        shared = same_packing(gs[0], gs[i], vs[0], vs[i]);
    if (shared) {
        for (int i = 0; i < nw; i++)
            if (!cm_type_get(ws[i]->type)->supported || !cm_kern.vec_dot[ws[i]->type])
                no_kernel(ws[i]->type);
        matmul_gemm(gs, vs, nw, x, n_tok, ys, scratch);
        return;
    }
    if (all_rp && nw <= MAX_N && n_tok < GEMM_MIN_TOK && same_repack(rps, ws, nw)) {
        matmul_repacked(rps, rds, ws, nw, x, n_tok, ys, scratch);
        return;
    }
    for (int i = 0; i < nw; i++)
        cm_matmul(ws[i], x, n_tok, ys[i], scratch);
}

/* ---- attention helpers ---------------------------------------------------- */

static cm_vec_dot_fn kernel_or_die(cm_vec_dot_fn f, enum cm_type type)
{
    if (!f)
        no_kernel(type);
    return f;
}

float cm_dot_f(enum cm_type type, int64_t n, const void *row, const float *x)
{
    /* F32/F16 rows dot float activations directly (their dot type) */
    if (type != CM_TYPE_F32 && type != CM_TYPE_F16 && type != CM_TYPE_BF16)
        no_kernel(type);
    return kernel_or_die(cm_kern.vec_dot[type], type)(n, row, x);
}

void cm_axpy_f(enum cm_type type, int64_t n, float a, const void *row, float *out)
{
    cm_axpy_fn f = type < CM_TYPE_COUNT ? cm_kern.axpy[type] : NULL;
    if (!f)
        no_kernel(type);
    f(n, a, row, out);
}

void cm_dot_rows(enum cm_type type, int64_t n, const void *rows, size_t stride, int64_t m,
                 const void *x, float *out)
{
    cm_dot_rows_fn f = type < CM_TYPE_COUNT ? cm_kern.dot_rows[type] : NULL;
    if (f) {
        f(n, rows, stride, m, x, out);
        return;
    }
    cm_vec_dot_fn dot = kernel_or_die(type < CM_TYPE_COUNT ? cm_kern.vec_dot[type] : NULL, type);
    for (int64_t j = 0; j < m; j++)
        out[j] = dot(n, (const char *)rows + (size_t)j * stride, x);
}

void cm_sum_rows(enum cm_type type, int64_t n, const void *rows, size_t stride, int64_t m,
                 const float *p, float *out)
{
    cm_sum_rows_fn f = type < CM_TYPE_COUNT ? cm_kern.sum_rows[type] : NULL;
    if (f) {
        f(n, rows, stride, m, p, out);
        return;
    }
    memset(out, 0, (size_t)n * sizeof *out);
    for (int64_t j = 0; j < m; j++)
        cm_axpy_f(type, n, p[j], (const char *)rows + (size_t)j * stride, out);
}

void cm_dot_rows_pair(enum cm_type type, int64_t n, const void *rows, size_t stride, int64_t m,
                      const float *xa, const float *xb, float *outa, float *outb)
{
    cm_dot_rows_pair_fn f = type < CM_TYPE_COUNT ? cm_kern.dot_rows_pair[type] : NULL;
    if (f) {
        f(n, rows, stride, m, xa, xb, outa, outb);
        return;
    }
    cm_dot_rows(type, n, rows, stride, m, xa, outa);
    cm_dot_rows(type, n, rows, stride, m, xb, outb);
}

void cm_sum_rows_pair(enum cm_type type, int64_t n, const void *rows, size_t stride, int64_t m,
                      const float *pa, const float *pb, float *outa, float *outb)
{
    cm_sum_rows_pair_fn f = type < CM_TYPE_COUNT ? cm_kern.sum_rows_pair[type] : NULL;
    if (f) {
        f(n, rows, stride, m, pa, pb, outa, outb);
        return;
    }
    cm_sum_rows(type, n, rows, stride, m, pa, outa);
    cm_sum_rows(type, n, rows, stride, m, pb, outb);
}

int cm_rows_pair_fast(enum cm_type type)
{
    return type < CM_TYPE_COUNT && cm_kern.dot_rows_pair[type] && cm_kern.sum_rows_pair[type];
}

void cm_attn_qk(enum cm_type type, int64_t d, const void *k, size_t kstride, int nk,
                const float *q, int64_t nq, float *s, size_t ld)
{
    cm_attn_qk_fn f = type < CM_TYPE_COUNT ? cm_kern.attn_qk[type] : NULL;
    if (f) {
        f(d, k, kstride, nk, q, nq, s, ld);
        return;
    }
    for (int64_t i = 0; i < nq; i++)
        cm_dot_rows(type, d, k, kstride, nk, q + i * d, s + i * ld);
}

void cm_attn_pv(enum cm_type type, int64_t d, const void *v, size_t vstride, int nk,
                const float *p, size_t ld, int64_t nq, float *o)
{
    cm_attn_pv_fn f = type < CM_TYPE_COUNT ? cm_kern.attn_pv[type] : NULL;
    if (f) {
        f(d, v, vstride, nk, p, ld, nq, o);
        return;
    }
    for (int64_t i = 0; i < nq; i++)
        for (int j = 0; j < nk; j++)
            cm_axpy_f(type, d, p[i * ld + j], (const char *)v + (size_t)j * vstride, o + i * d);
}

int64_t cm_argmax_finite(const float *x, int64_t n) { return cm_kern.argmax(x, n); }

void cm_attn_softmax(float *x, int64_t n, float scale, int round_f16)
{
    cm_kern.softmax(x, n, scale, round_f16);
}

void cm_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    cm_kern.rmsnorm(out, x, w, n, eps);
}

void cm_add(float *x, const float *y, size_t n)
{
    cm_kern.add(x, y, (int64_t)n);
}

void cm_swiglu(float *a, const float *b, int64_t n)
{
    cm_kern.swiglu(a, b, n);
}

double cm_exp_sum(const float *x, int64_t n, float shift)
{
    return cm_kern.exp_sum(x, n, shift);
}

void cm_kld_sums(const float *x, const void *b, int b_f16, int64_t n, float mx, float mb,
                 double out[4])
{
    cm_kern.kld_sums(x, b, b_f16, n, mx, mb, out);
}

void cm_row_to_f16(const float *x, uint16_t *y, int64_t n)
{
    cm_kern.quantize[CM_TYPE_F16](x, y, n);
}

void cm_row_to_float(enum cm_type type, const void *row, float *out, int64_t n)
{
    cm_dequant_fn f = type < CM_TYPE_COUNT ? cm_kern.to_float[type] : NULL;
    if (!f)
        no_kernel(type);
    f(row, out, n);
}

void cm_quantize_row_q8_0(const float *x, void *y, int64_t n)
{
    cm_quantize_fn f = cm_kern.quantize[CM_TYPE_Q8_0];
    if (!f)
        no_kernel(CM_TYPE_Q8_0);
    f(x, y, n);
}

float cm_vec_dot(enum cm_type type, int64_t n, const void *w, const void *xq)
{
    if (type >= CM_TYPE_COUNT)
        no_kernel(type);
    return kernel_or_die(cm_kern.vec_dot[type], type)(n, w, xq);
}

void cm_tensor_row(const cm_tensor *w, int64_t row, float *out)
{
    size_t rb = cm_row_bytes(w->type, w->ne[0]);
    cm_dequantize_row(w->type, (const char *)w->data + (size_t)row * rb, out,
                      w->ne[0]);
}
