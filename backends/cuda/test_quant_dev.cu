/* test_quant_dev.cu - backends/cuda/quant_dev.cuh against the scalar
 * references of quant/.
 *
 *  (a) half/bfloat16 conversions: every half and bf16 pattern, and random
 *      plus edge floats to half, bit for bit;
 *  (b) q8_0/q8_1/q8_K block quantizers byte-identical to cm_quantize_row
 *      (extreme scales, zero and -0 blocks, rounding ties, inf/nan), but
 *      for the bits of q8_1's s where it is a nan (see q8_nan_s_only); the
 *      first mismatch prints both blocks' d, s and first qs in hex;
 *  (c) dequant_elem bit-identical to cm_dequantize_row for every supported
 *      type, on quantized rows and on random bytes (a nan compares equal to
 *      any nan: payloads through float arithmetic are not portable);
 *  (d) the sum of qdot<T>::dot_part over parts and blocks against
 *      cm_vec_dot_ref, within 8 float ulps of the sum of the absolute values
 *      of every term either side computes (see dot_bound).
 *
 * The host build checks the header's host compilation.  Built with nvcc and
 * run where a CUDA device exists, the same checks run again on the device
 * code (kernels calling the same functions), so the __CUDA_ARCH__ branches
 * are held to the references too.  Exit 0 pass, 1 fail. */
#include "backends/cuda/quant_dev.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <vector>

#ifdef __CUDACC__
#include <cuda_runtime.h>
#endif

static int failures;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond) && ++failures <= 40) {                                 \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

typedef std::vector<uint8_t> bytes;

/* ---- randomness --------------------------------------------------------- */

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t rnd64()
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static int rndi(int n) { return (int)(rnd64() % (uint64_t)n); }
static float rndu() { return (float)(rnd64() >> 40) * 0x1p-24f; }
static float rndn()
{
    float u = rndu() + 1e-7f, v = rndu();
    return sqrtf(-2 * logf(u)) * cosf(6.2831853f * v);
}
static float bits_f(uint32_t u) { return qd_u2f(u); }
static uint32_t f_bits(float f) { return qd_f2u(f); }
static float pow10f_(float e) { return (float)pow(10.0, (double)e); }

/* Block-wise test floats.  ext: allow extreme magnitudes and inf/nan;
 * lo/hi: log10 range of block scales otherwise. */
static void gen_floats(float *x, int64_t n, int blk, bool ext, float lo, float hi)
{
    for (int64_t b = 0; b < n; b += blk) {
        float *y = x + b;
        float s = pow10f_(lo + (hi - lo) * rndu());
        int kind = rndi(ext ? 12 : 7);
        for (int j = 0; j < blk; j++)
            y[j] = s * rndn();
        switch (kind) {
        case 0: case 1: break; /* gaussian */
        case 2: /* uniform, one outlier */
            for (int j = 0; j < blk; j++)
                y[j] = s * (2 * rndu() - 1);
            y[rndi(blk)] = (rndi(2) ? 20 : -20) * s;
            break;
        case 3: /* ties: the largest magnitude 127, the rest k + 1/2 */
            for (int j = 0; j < blk; j++)
                y[j] = (float)(rndi(254) - 127) + 0.5f;
            y[rndi(blk)] = rndi(2) ? 127.0f : -127.0f;
            break;
        case 4: /* mostly zero */
            for (int j = 0; j < blk; j++)
                y[j] = rndi(8) ? 0.0f : y[j];
            break;
        case 5: /* equal magnitudes, both signs: first-max tie breaking */
            for (int j = 0; j < blk; j++)
                y[j] = rndi(2) ? s : -s;
            break;
        case 6: /* small integers */
            for (int j = 0; j < blk; j++)
                y[j] = (float)(rndi(9) - 4);
            break;
        case 7: /* all zero, either sign */
            for (int j = 0; j < blk; j++)
                y[j] = rndi(2) ? 0.0f : -0.0f;
            break;
        case 8: /* extreme scales: subnormal .. FLT_MAX */
        {
            static const float ex[] = {1e-45f, 1e-40f, 1e-38f, 3.6e-37f, 3.8e-37f, 1e-30f,
                                       3e-6f, 4e-6f, 1e-5f, 6e4f, 8e6f, 1e20f, 1e30f, 3e38f};
            float e = ex[rndi(sizeof ex / sizeof ex[0])];
            for (int j = 0; j < blk; j++)
                y[j] = e * (2 * rndu() - 1);
            break;
        }
        case 9: /* random bit patterns, finite */
            for (int j = 0; j < blk; j++) {
                uint32_t u = (uint32_t)rnd64();
                y[j] = (u & 0x7F800000u) == 0x7F800000u ? 1.0f : bits_f(u);
            }
            break;
        case 10: /* an inf */
            y[rndi(blk)] = rndi(2) ? INFINITY : -INFINITY;
            break;
        case 11: /* a nan */
            y[rndi(blk)] = bits_f(0x7FC00000u | (uint32_t)rndi(1 << 22));
            break;
        }
    }
}

static int64_t blk(enum cm_type t) { return cm_type_get(t)->block_elems; }
static size_t bsz(enum cm_type t) { return cm_type_get(t)->block_bytes; }
static const char *tname(enum cm_type t) { return cm_type_get(t)->name; }

static bool same_float(float a, float b)
{
    return f_bits(a) == f_bits(b) || (a != a && b != b);
}

/* ---- where the code under test runs ------------------------------------ */

template <enum cm_type T> static void parts_host(const uint8_t *w, const uint8_t *x, int nb,
                                                 float *out)
{
    typedef qdot<T> Q;
    for (int b = 0; b < nb; b++)
        for (int p = 0; p < Q::PARTS; p++)
            out[b * Q::PARTS + p] = Q::dot_part(w + b * sizeof(typename Q::wblock),
                                                x + b * sizeof(typename Q::xblock), p);
}

__host__ __device__ static void quant_block(enum cm_type t, const float *x, uint8_t *out)
{
    switch (t) {
    case CM_TYPE_Q8_0: q8_0_quantize_block(x, (block_q8_0 *)out); break;
    case CM_TYPE_Q8_1: q8_1_quantize_block(x, (block_q8_1 *)out); break;
    default: q8_K_quantize_block(x, (block_q8_K *)out); break;
    }
}

#ifdef __CUDACC__
static bool on_device; /* the run_* below use the GPU */

static void cu_check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "cuda: %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

template <class E> static E *to_dev(const E *h, size_t n)
{
    void *d;
    cu_check(cudaMalloc(&d, n * sizeof(E) + 4), "malloc");
    if (h)
        cu_check(cudaMemcpy(d, h, n * sizeof(E), cudaMemcpyHostToDevice), "copy in");
    return (E *)d;
}

template <class E> static void from_dev(E *h, E *d, size_t n)
{
    cu_check(cudaDeviceSynchronize(), "kernel");
    cu_check(cudaMemcpy(h, d, n * sizeof(E), cudaMemcpyDeviceToHost), "copy out");
    cudaFree(d);
}

#define GRID(n) (unsigned)(((n) + 127) / 128), 128

__global__ void k_quant(enum cm_type t, const float *x, int nb, uint8_t *out, size_t bb,
                        int be)
{
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < nb)
        quant_block(t, x + (size_t)b * be, out + b * bb);
}

__global__ void k_dequant(enum cm_type t, const uint8_t *src, size_t bb, int be, int64_t n,
                          float *out)
{
    int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e < n)
        out[e] = dequant_elem(t, src + (e / be) * bb, (int)(e % be));
}

template <enum cm_type T>
__global__ void k_parts(const uint8_t *w, const uint8_t *x, int nb, float *out)
{
    typedef qdot<T> Q;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < nb * Q::PARTS)
        out[i] = Q::dot_part(w + (i / Q::PARTS) * sizeof(typename Q::wblock),
                             x + (i / Q::PARTS) * sizeof(typename Q::xblock), i % Q::PARTS);
}

__global__ void k_conv(const float *f, int n, float *h2f, float *b2f, uint16_t *f2h)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < 65536) {
        h2f[i] = qd_f16((uint16_t)i);
        b2f[i] = qd_bf16((uint16_t)i);
    }
    if (i < n)
        f2h[i] = qd_f32_to_f16(f[i]);
}
#endif

static void run_quant(enum cm_type t, const float *x, int64_t n, uint8_t *out)
{
    int64_t be = blk(t), nb = n / be;
#ifdef __CUDACC__
    if (on_device) {
        float *dx = to_dev(x, n);
        uint8_t *dout = to_dev<uint8_t>(NULL, nb * bsz(t));
        k_quant<<<GRID(nb)>>>(t, dx, (int)nb, dout, bsz(t), (int)be);
        from_dev(out, dout, nb * bsz(t));
        cudaFree(dx);
        return;
    }
#endif
    for (int64_t b = 0; b < nb; b++)
        quant_block(t, x + b * be, out + b * bsz(t));
}

static void run_dequant(enum cm_type t, const uint8_t *src, int64_t n, float *out)
{
#ifdef __CUDACC__
    if (on_device) {
        uint8_t *ds = to_dev(src, cm_row_bytes(t, n));
        float *dout = to_dev<float>(NULL, n);
        k_dequant<<<GRID(n)>>>(t, ds, bsz(t), (int)blk(t), n, dout);
        from_dev(out, dout, n);
        cudaFree(ds);
        return;
    }
#endif
    for (int64_t e = 0; e < n; e++)
        out[e] = dequant_elem(t, src + (e / blk(t)) * bsz(t), (int)(e % blk(t)));
}

template <enum cm_type T> static void run_parts(const uint8_t *w, const uint8_t *x, int nb,
                                                float *out)
{
#ifdef __CUDACC__
    if (on_device) {
        typedef qdot<T> Q;
        uint8_t *dw = to_dev(w, nb * sizeof(typename Q::wblock));
        uint8_t *dx = to_dev(x, nb * sizeof(typename Q::xblock));
        float *dout = to_dev<float>(NULL, (size_t)nb * Q::PARTS);
        k_parts<T><<<GRID(nb * Q::PARTS)>>>(dw, dx, nb, dout);
        from_dev(out, dout, (size_t)nb * Q::PARTS);
        cudaFree(dw);
        cudaFree(dx);
        return;
    }
#endif
    parts_host<T>(w, x, nb, out);
}

/* ---- (a) conversions ---------------------------------------------------- */

static void test_conv()
{
    std::vector<float> f;
    static const uint32_t edge[] = {
        0, 0x80000000u, 0x33000000u, 0x33000001u, 0x337FFFFFu, 0x33800000u, 0x33C00000u,
        0x38800000u, 0x387FFFFFu, 0x387FE000u, 0x387FF000u, 0x387FF001u, 0x477FE000u,
        0x477FEFFFu, 0x477FF000u, 0x477FFFFFu, 0x47800000u, 0x7F800000u, 0xFF800000u,
        0x7FC00000u, 0x7F800001u, 0xFFFFFFFFu, 0x7FBFE000u, 0x00000001u, 0x3F800000u};
    for (uint32_t u : edge)
        f.push_back(bits_f(u)), f.push_back(-bits_f(u));
    for (int i = 0; i < 1 << 22; i++)
        f.push_back(bits_f((uint32_t)rnd64()));
    for (int i = 0; i < 1 << 20; i++) /* the half range, densely */
        f.push_back(bits_f(0x33000000u + (uint32_t)rndi(0x47800000 - 0x33000000)));
    int n = (int)f.size();
    std::vector<float> h2f(65536), b2f(65536);
    std::vector<uint16_t> f2h(n);
#ifdef __CUDACC__
    if (on_device) {
        float *df = to_dev(f.data(), n), *dh = to_dev<float>(NULL, 65536),
              *db = to_dev<float>(NULL, 65536);
        uint16_t *dr = to_dev<uint16_t>(NULL, n);
        k_conv<<<GRID(n)>>>(df, n, dh, db, dr);
        from_dev(h2f.data(), dh, 65536);
        from_dev(b2f.data(), db, 65536);
        from_dev(f2h.data(), dr, n);
        cudaFree(df);
    } else
#endif
    {
        for (int i = 0; i < 65536; i++)
            h2f[i] = qd_f16((uint16_t)i), b2f[i] = qd_bf16((uint16_t)i);
        for (int i = 0; i < n; i++)
            f2h[i] = qd_f32_to_f16(f[i]);
    }
    int bad = 0, nanbits = 0;
    for (int i = 0; i < 65536; i++) {
        float r = cm_f16_to_f32((uint16_t)i);
        bad += !same_float(h2f[i], r);
        nanbits += f_bits(h2f[i]) != f_bits(r);
        bad += f_bits(b2f[i]) != f_bits(cm_bf16_to_f32((uint16_t)i));
    }
    CHECK(bad == 0, "half/bf16 -> float: %d mismatches", bad);
    for (int i = 0; i < n; i++)
        if (f2h[i] != cm_f32_to_f16(f[i]))
            CHECK(0, "f32_to_f16(%a = 0x%08x) = 0x%04x, ref 0x%04x", f[i], f_bits(f[i]),
                  f2h[i], cm_f32_to_f16(f[i]));
    printf("  conversions: 65536 halves, 65536 bf16, %d floats to half%s\n", n,
           nanbits ? " (half nans: payload bits differ, still nan)" : "");
}

/* ---- (b) activation quantizers ------------------------------------------ */

static bool half_nan(uint16_t h) { return (h & 0x7FFFu) > 0x7C00u; }

/* q8_1's s = d * sum(q) is a NaN for a block holding an inf (d = inf, every
 * quant 0, 0 * inf), and a NaN's bits are the platform's: the x86 reference
 * gives 0xFE00 (0xFFC00000 to half), the device 0x7FFF (0x7FFFFFFF),
 * AArch64 0x7E00.  Such a block matches when every other byte does. */
static bool q8_nan_s_only(enum cm_type t, const uint8_t *ref, const uint8_t *got)
{
    const block_q8_1 *r = (const block_q8_1 *)ref, *g = (const block_q8_1 *)got;
    return t == CM_TYPE_Q8_1 && half_nan(r->s) && half_nan(g->s) && r->d == g->d &&
           !memcmp(r->qs, g->qs, sizeof r->qs);
}

/* The fields of one q8 block in hex, for the first mismatch: d, s (q8_1),
 * the first 8 qs and, for q8_K, the first 2 bsums. */
static void dump_q8(enum cm_type t, const char *who, const uint8_t *b)
{
    size_t dsz = t == CM_TYPE_Q8_K ? 4 : 2, qoff = t == CM_TYPE_Q8_1 ? 4 : dsz;
    fprintf(stderr, "    %-6s d=", who);
    for (size_t k = dsz; k-- > 0;) /* little-endian, printed as the value */
        fprintf(stderr, "%02x", b[k]);
    if (t == CM_TYPE_Q8_1)
        fprintf(stderr, " s=%02x%02x", b[3], b[2]);
    fprintf(stderr, " qs[0..7]=");
    for (int k = 0; k < 8; k++)
        fprintf(stderr, "%02x%s", b[qoff + k], k < 7 ? " " : "");
    if (t == CM_TYPE_Q8_K) {
        const block_q8_K *y = (const block_q8_K *)b;
        fprintf(stderr, " bsums[0..1]=%04x %04x", (uint16_t)y->bsums[0], (uint16_t)y->bsums[1]);
    }
    fputc('\n', stderr);
}

static void test_quant()
{
    static const enum cm_type ts[] = {CM_TYPE_Q8_0, CM_TYPE_Q8_1, CM_TYPE_Q8_K};
    static const int lens[] = {32, 256, 512, 1024, 4096};
    for (enum cm_type t : ts) {
        int64_t rows = 0, blocks = 0, bad = 0, nan_s = 0, nan_s_bits = 0;
        for (int n : lens) {
            if (n % blk(t))
                continue;
            int r = n >= 1024 ? 60 : 300;
            std::vector<float> x((size_t)n * r);
            gen_floats(x.data(), (int64_t)n * r, (int)blk(t), true, -6, 6);
            size_t rb = cm_row_bytes(t, n);
            bytes ref(rb * r), got(rb * r, 0xAA);
            for (int i = 0; i < r; i++)
                cm_quantize_row(t, x.data() + (size_t)i * n, ref.data() + i * rb, n);
            run_quant(t, x.data(), (int64_t)n * r, got.data());
            for (size_t b = 0; b < ref.size() / bsz(t); b++) {
                const uint8_t *rblk = &ref[b * bsz(t)], *gblk = &got[b * bsz(t)];
                if (t == CM_TYPE_Q8_1 && half_nan(((const block_q8_1 *)rblk)->s))
                    nan_s++;
                if (!memcmp(rblk, gblk, bsz(t)))
                    continue;
                if (q8_nan_s_only(t, rblk, gblk)) {
                    nan_s_bits++;
                    continue;
                }
                if (++bad <= 5) {
                    size_t k = 0;
                    while (rblk[k] == gblk[k])
                        k++;
                    CHECK(0, "%s quantize: n=%d block %zu differs (first at byte %zu)", tname(t),
                          n, b, k);
                    if (bad == 1) {
                        dump_q8(t, "ref", rblk);
                        dump_q8(t, "got", gblk);
                    }
                }
            }
            rows += r;
            blocks += (int64_t)ref.size() / bsz(t);
        }
        CHECK(bad == 0, "%s quantize: %lld blocks differ", tname(t), (long long)bad);
        printf("  %s quantize: %lld rows, %lld blocks byte-identical", tname(t),
               (long long)rows, (long long)(blocks - bad - nan_s_bits));
        if (t == CM_TYPE_Q8_1)
            printf(" (%lld with nan s, %lld of them equal but for its nan bits)",
                   (long long)nan_s, (long long)nan_s_bits);
        printf("\n");
    }
}

/* ---- (c) dequantization ------------------------------------------------- */

static const enum cm_type all_types[] = {
    CM_TYPE_F32,  CM_TYPE_F16,  CM_TYPE_BF16, CM_TYPE_Q4_0, CM_TYPE_Q4_1,
    CM_TYPE_Q5_0, CM_TYPE_Q5_1, CM_TYPE_Q8_0, CM_TYPE_Q8_1, CM_TYPE_Q2_K,
    CM_TYPE_Q3_K, CM_TYPE_Q4_K, CM_TYPE_Q5_K, CM_TYPE_Q6_K, CM_TYPE_Q8_K};

static void test_dequant()
{
    static const int lens[] = {256, 512, 1024, 4096};
    for (enum cm_type t : all_types) {
        int64_t elems = 0, bad = 0, nans = 0;
        for (int n : lens)
            for (int src = 0; src < 2; src++) { /* quantized floats, random bytes */
                int r = 24;
                size_t rb = cm_row_bytes(t, n);
                bytes w(rb * r);
                if (src == 0) {
                    std::vector<float> x((size_t)n * r);
                    gen_floats(x.data(), (int64_t)n * r, 256, false, -4, 4);
                    for (int i = 0; i < r; i++)
                        cm_quantize_row(t, x.data() + (size_t)i * n, w.data() + i * rb, n);
                } else {
                    for (auto &c : w)
                        c = (uint8_t)rnd64();
                }
                std::vector<float> ref((size_t)n * r), got((size_t)n * r);
                for (int i = 0; i < r; i++)
                    cm_dequantize_row(t, w.data() + i * rb, ref.data() + (size_t)i * n, n);
                run_dequant(t, w.data(), (int64_t)n * r, got.data());
                for (size_t e = 0; e < ref.size(); e++) {
                    nans += ref[e] != ref[e];
                    if (!same_float(got[e], ref[e]) && ++bad <= 3)
                        CHECK(0, "%s dequant: element %zu: %a, ref %a", tname(t), e, got[e],
                              ref[e]);
                }
                elems += (int64_t)ref.size();
            }
        CHECK(bad == 0, "%s dequant: %lld elements differ", tname(t), (long long)bad);
        printf("  %-5s dequant: %lld elements bit-identical (%lld nan)\n", tname(t),
               (long long)(elems - bad), (long long)nans);
    }
}

/* ---- (d) dot products in parts ------------------------------------------ */

/* Bound on the sum of |term| over every float term either side forms: the
 * integer sums are exact and equal, so the two results differ only by the
 * roundings of those terms (scale products, products with the integer
 * sums, the min terms, the sums of terms), each at most 2^-24 of the
 * magnitudes summed here.  Per element (|w| + |min|) * |xd|, which bounds
 * |d*sc*q| * |xd| (the weight before its min is subtracted: w itself may
 * round to the min and hide that term), plus every min term.  A part computes at
 * most 3 roundings over these, the reference 3 (term, block sum in float
 * for some types, the final float): 8 ulps leaves margin. */
static double dot_bound(enum cm_type t, int64_t n, const uint8_t *w, const uint8_t *x)
{
    enum cm_type xt = cm_type_get(t)->dot_type;
    std::vector<float> wd(n), xd(n);
    cm_dequantize_row(t, w, wd.data(), n);
    cm_dequantize_row(xt, x, xd.data(), n);
    double m = 0;
    for (int64_t b = 0; b < n / blk(t); b++) {
        const uint8_t *wb = w + b * bsz(t), *xb = x + b * bsz(xt);
        for (int e = 0; e < blk(t); e++) {
            double off = 0; /* the min to add back */
            if (t == CM_TYPE_Q4_1 || t == CM_TYPE_Q5_1)
                off = -cm_f16_to_f32(((const block_q4_1 *)wb)->m); /* m at the same place */
            if (t == CM_TYPE_Q2_K) {
                const block_q2_K *q = (const block_q2_K *)wb;
                off = cm_f16_to_f32(q->dmin) * (q->scales[e / 16] >> 4);
            }
            if (t == CM_TYPE_Q4_K || t == CM_TYPE_Q5_K) {
                const block_q4_K *q = (const block_q4_K *)wb; /* same head as q5_K */
                uint8_t sc, mn;
                cm_k4_scale_min(e / 32, q->scales, &sc, &mn);
                off = (double)cm_f16_to_f32(q->dmin) * mn;
            }
            m += (fabs(wd[b * blk(t) + e]) + fabs(off)) * fabs(xd[b * blk(t) + e]);
        }
        if (t == CM_TYPE_Q4_1 || t == CM_TYPE_Q5_1)
            m += fabs((double)cm_f16_to_f32(((const block_q4_1 *)wb)->m) *
                      cm_f16_to_f32(((const block_q8_1 *)xb)->s));
        if (t == CM_TYPE_Q2_K || t == CM_TYPE_Q4_K || t == CM_TYPE_Q5_K) {
            const block_q8_K *y = (const block_q8_K *)xb;
            double dmin = fabs(cm_f16_to_f32(t == CM_TYPE_Q2_K ? ((const block_q2_K *)wb)->dmin
                                                               : ((const block_q4_K *)wb)->dmin));
            for (int g = 0; g < 16; g++) {
                uint8_t sc, mn = ((const block_q2_K *)wb)->scales[g] >> 4;
                if (t != CM_TYPE_Q2_K)
                    cm_k4_scale_min(g / 2, ((const block_q4_K *)wb)->scales, &sc, &mn);
                m += dmin * fabs(y->d) * mn * fabs((double)y->bsums[g]);
            }
        }
    }
    return m;
}

/* Scale fields to random finite values, so random-byte blocks stay in
 * range and the bound means something. */
static uint16_t rnd_half() { return (uint16_t)(rnd64() & 0xFBFF); } /* exp <= 30 */

static void sane_scales(enum cm_type t, uint8_t *b)
{
    switch (t) {
    case CM_TYPE_Q4_0: case CM_TYPE_Q5_0: case CM_TYPE_Q8_0: ((block_q8_0 *)b)->d = rnd_half(); break;
    case CM_TYPE_Q4_1: case CM_TYPE_Q5_1: case CM_TYPE_Q8_1:
        ((block_q8_1 *)b)->d = rnd_half(), ((block_q8_1 *)b)->s = rnd_half();
        break; /* q4_1/q5_1: d, m in the same places as q8_1's d, s */
    case CM_TYPE_Q2_K: ((block_q2_K *)b)->d = rnd_half(), ((block_q2_K *)b)->dmin = rnd_half(); break;
    case CM_TYPE_Q3_K: ((block_q3_K *)b)->d = rnd_half(); break;
    case CM_TYPE_Q4_K: case CM_TYPE_Q5_K:
        ((block_q4_K *)b)->d = rnd_half(), ((block_q4_K *)b)->dmin = rnd_half();
        break;
    case CM_TYPE_Q6_K: ((block_q6_K *)b)->d = rnd_half(); break;
    case CM_TYPE_Q8_K: {
        block_q8_K *y = (block_q8_K *)b;
        y->d = (rndi(2) ? 1 : -1) * pow10f_(-10 + 20 * rndu());
        for (int g = 0; g < 16; g++) { /* bsums consistent with qs */
            int s = 0;
            for (int l = 0; l < 16; l++)
                s += y->qs[16 * g + l];
            y->bsums[g] = (int16_t)s;
        }
        break;
    }
    default: break;
    }
}

template <enum cm_type T> static void test_dot()
{
    typedef qdot<T> Q;
    const cm_type_info *ti = cm_type_get(T);
    enum cm_type xt = ti->dot_type;
    CHECK(Q::ELEMS == ti->block_elems && sizeof(typename Q::wblock) == ti->block_bytes &&
              sizeof(typename Q::xblock) == bsz(xt) && blk(xt) == Q::ELEMS,
          "%s: qdot traits disagree with types.c", ti->name);
    /* activation scales: q8_0's d and q8_1's s = d * sum(q) must stay in
     * half range (|sum x| < 65504), or the reference itself gives inf */
    float lo = xt == CM_TYPE_Q8_K ? -20 : -4, hi = xt == CM_TYPE_Q8_K ? 20 : 2;
    static const int lens[] = {32, 64, 96, 256, 512, 1024, 2048, 4096};
    int64_t rows = 0, bad = 0;
    double worst = 0;
    for (int n : lens) {
        if (n % Q::ELEMS)
            continue;
        int r = n >= 2048 ? 40 : 120, nb = n / Q::ELEMS;
        size_t wr = cm_row_bytes(T, n), xr = cm_row_bytes(xt, n);
        bytes w(wr * r), x(xr * r);
        std::vector<float> f((size_t)n * r);
        gen_floats(f.data(), (int64_t)n * r, Q::ELEMS, false, -4, 3); /* halves stay finite */
        for (int i = 0; i < r; i++) {
            if (i % 3 == 2) { /* random bytes with sane scales */
                for (size_t k = 0; k < wr; k++)
                    w[i * wr + k] = (uint8_t)rnd64();
                for (int b = 0; b < nb; b++)
                    sane_scales(T, &w[i * wr + b * sizeof(typename Q::wblock)]);
            } else {
                cm_quantize_row(T, f.data() + (size_t)i * n, &w[i * wr], n);
            }
        }
        gen_floats(f.data(), (int64_t)n * r, Q::ELEMS, false, lo, hi);
        for (int i = 0; i < r; i++) {
            cm_quantize_row(xt, f.data() + (size_t)i * n, &x[i * xr], n);
            if (i % 5 == 4) /* random activations, -128 included */
                for (int b = 0; b < nb; b++) {
                    uint8_t *xb = &x[i * xr + b * bsz(xt)];
                    size_t head = xt == CM_TYPE_Q8_K ? 4 : xt == CM_TYPE_Q8_1 ? 4 : 2;
                    for (int k = 0; k < Q::ELEMS; k++)
                        xb[head + k] = (uint8_t)rnd64();
                    sane_scales(xt, xb);
                }
        }
        std::vector<float> parts((size_t)nb * Q::PARTS * r);
        run_parts<T>(w.data(), x.data(), nb * r, parts.data());
        for (int i = 0; i < r; i++) {
            double got = 0;
            for (int k = 0; k < nb * Q::PARTS; k++)
                got += parts[(size_t)i * nb * Q::PARTS + k];
            float ref = cm_vec_dot_ref(T, n, &w[i * wr], &x[i * xr]);
            double m = dot_bound(T, n, &w[i * wr], &x[i * xr]);
            double err = fabs(got - ref), tol = 8 * 0x1p-24 * m;
            if (m > 0 && err / (m * 0x1p-24) > worst)
                worst = err / (m * 0x1p-24);
            if (!(err <= tol) && ++bad <= 3)
                CHECK(0, "%s dot n=%d row %d: %.9g, ref %.9g, |diff| %.3g > %.3g", ti->name, n,
                      i, got, (double)ref, err, tol);
        }
        rows += r;
    }
    CHECK(bad == 0, "%s dot: %lld rows out of bound", ti->name, (long long)bad);
    printf("  %-5s dot: %d parts/block, %lld rows, worst |diff| %.2f ulp of the bound's sum\n",
           ti->name, Q::PARTS, (long long)rows, worst);
}

static void test_dots()
{
    test_dot<CM_TYPE_Q4_0>();
    test_dot<CM_TYPE_Q4_1>();
    test_dot<CM_TYPE_Q5_0>();
    test_dot<CM_TYPE_Q5_1>();
    test_dot<CM_TYPE_Q8_0>();
    test_dot<CM_TYPE_Q8_1>();
    test_dot<CM_TYPE_Q2_K>();
    test_dot<CM_TYPE_Q3_K>();
    test_dot<CM_TYPE_Q4_K>();
    test_dot<CM_TYPE_Q5_K>();
    test_dot<CM_TYPE_Q6_K>();
    test_dot<CM_TYPE_Q8_K>();
}

static void run_all(const char *where)
{
    printf("%s:\n", where);
    test_conv();
    test_quant();
    test_dequant();
    test_dots();
}

int main()
{
    run_all("host");
#ifdef __CUDACC__
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("device: no CUDA device, device checks skipped\n");
    } else {
        cudaDeviceProp p;
        cu_check(cudaGetDeviceProperties(&p, 0), "properties");
        on_device = true;
        rng = 0x2545F4914F6CDD1Dull; /* the same inputs again */
        char where[300];
        snprintf(where, sizeof where, "device (%s, sm_%d%d)", p.name, p.major, p.minor);
        run_all(where);
    }
#endif
    if (failures)
        printf("FAIL: test_quant_dev: %d check(s) failed\n", failures);
    else
        printf("PASS: test_quant_dev\n");
    return failures ? 1 : 0;
}
