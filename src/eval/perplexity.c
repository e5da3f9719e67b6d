/* perplexity.c - chunked perplexity and KL divergence (method in perplexity.h). */
#include "eval/perplexity.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "quant/quant.h"
#include "backends/cpu/cpu.h"
#include "util/atomic_file.h"
#include "util/threads.h"

#define LF_MAGIC "CMLOGITS"
#define LF_VERSION 1u
#define LF_HEADER 48

/* ------------------------------------------------------------ statistics */

typedef struct {
    int64_t n;
    double nll, nll2;          /* sums of NLL and NLL^2 */
    double kld, kld2, kld_max;
    int64_t same;              /* positions whose argmaxes agree */
    double bnll, bnll2;        /* the base model's NLL */
} ppl_acc;

/* Mean and standard error of the mean from running sums: the sample
 * variance over n-1, as llama.cpp computes it. */
static void mean_err(double sum, double sum2, int64_t n, double *mean, double *se)
{
    *mean = n > 0 ? sum / (double)n : 0;
    double var = n > 0 ? sum2 / (double)n - *mean * *mean : 0;
    *se = n > 1 && var > 0 ? sqrt(var / (double)(n - 1)) : 0;
}

static void acc_result(const ppl_acc *a, int has_kld, cm_ppl_result *r)
{
    double m, se;
    r->n_scored = a->n;
    mean_err(a->nll, a->nll2, a->n, &r->nll, &r->nll_err);
    r->ppl = exp(r->nll);
    r->ppl_err = r->ppl * r->nll_err;
    r->has_kld = has_kld;
    if (!has_kld)
        return;
    mean_err(a->kld, a->kld2, a->n, &r->kld, &r->kld_err);
    r->kld_max = a->kld_max;
    double p = a->n ? (double)a->same / (double)a->n : 0;
    r->top1 = 100 * p;
    r->top1_err = a->n > 1 ? 100 * sqrt(p * (1 - p) / (double)(a->n - 1)) : 0;
    mean_err(a->bnll, a->bnll2, a->n, &m, &se);
    r->base_ppl = exp(m);
    r->base_ppl_err = r->base_ppl * se;
}

/* ------------------------------------------------------------ logits file */

/* The records are mapped, not read or written with stdio: each thread
 * scoring a position reads its base row or writes its own row in place, so
 * no thread copies a chunk's 25 MB (n_vocab 49152) while the others wait. */
typedef struct {
    FILE *f;
    const char *path;
    cm_atomic_file af;   /* writer: the temporary, renamed when done (af.tmp NULL: none) */
    int f16;
    size_t rec;          /* bytes per scored position */
    unsigned char *map;  /* the whole file, mapped */
    size_t map_len;
    size_t rec_off;      /* where chunk 0's records start */
} lfile;

/* Chunk c's records in the mapping. */
static unsigned char *lf_chunk(const lfile *l, int c, size_t n_pred)
{
    return l->map + l->rec_off + (size_t)c * n_pred * l->rec;
}

/* Drops a scored chunk's pages from this process (they stay in the page
 * cache, dirty ones included): the resident size stays one chunk. */
static void lf_release(const lfile *l, int c, size_t n_pred)
{
    uintptr_t a = (uintptr_t)lf_chunk(l, c, n_pred), b = a + n_pred * l->rec;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    a = (a + pg - 1) / pg * pg, b = b / pg * pg;
    if (a < b)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

static cm_status lf_map(lfile *l, size_t len, int writable, cm_err *err)
{
    int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
    void *m = mmap(NULL, len, prot, MAP_SHARED, fileno(l->f), 0);
    if (m == MAP_FAILED)
        return cm_fail(err, CM_E_IO, "cannot map %s: %s", l->path, strerror(errno));
    madvise(m, len, MADV_SEQUENTIAL);
    l->map = m;
    l->map_len = len;
    return CM_OK;
}

static size_t rec_bytes(int f16, int n_vocab)
{
    return sizeof(int32_t) + (size_t)(f16 ? 2 : 4) * (size_t)n_vocab;
}

static void put_u32(unsigned char *h, size_t off, uint32_t v) { memcpy(h + off, &v, 4); }
static void put_u64(unsigned char *h, size_t off, uint64_t v) { memcpy(h + off, &v, 8); }
static uint32_t get_u32(const unsigned char *h, size_t off) { uint32_t v; memcpy(&v, h + off, 4); return v; }
static uint64_t get_u64(const unsigned char *h, size_t off) { uint64_t v; memcpy(&v, h + off, 8); return v; }

/* fd >= 0: write into that empty file (opened for reading and writing)
 * instead, as it is: no temporary name, no rename. */
static cm_status lf_create(lfile *w, const char *path, int fd, int f16, int n_vocab, int n_ctx,
                           int n_chunk, const int32_t *ids, cm_err *err)
{
    unsigned char h[LF_HEADER] = {0};
    size_t n_tok = (size_t)n_chunk * (size_t)n_ctx;
    w->path = path;
    w->f16 = f16;
    w->rec = rec_bytes(f16, n_vocab);
    if (fd >= 0) {
        int d = dup(fd);
        if (d < 0 || !(w->f = fdopen(d, "w+b"))) {
            if (d >= 0)
                close(d);
            return cm_fail(err, CM_E_IO, "cannot write %s: %s", path, strerror(errno));
        }
    } else {
        cm_status s = cm_atomic_open(&w->af, path, 0666, err);
        if (s)
            return s;
        if (!(w->f = cm_atomic_stream(&w->af))) /* read too: mapped shared */
            return cm_fail(err, CM_E_NOMEM, "cannot write %s: out of memory", path);
    }
    memcpy(h, LF_MAGIC, 8);
    put_u32(h, 8, LF_VERSION);
    put_u32(h, 12, f16 ? 1 : 0);
    put_u32(h, 16, (uint32_t)n_vocab);
    put_u32(h, 20, (uint32_t)n_ctx);
    put_u32(h, 24, (uint32_t)n_chunk);
    put_u32(h, 28, (uint32_t)(n_ctx / 2));
    put_u64(h, 32, n_tok);
    if (fwrite(h, 1, sizeof h, w->f) != sizeof h || fwrite(ids, 4, n_tok, w->f) != n_tok ||
        fflush(w->f) != 0)
        return cm_fail(err, CM_E_IO, "cannot write %s: %s", path, strerror(errno));
    /* the blocks are reserved now, so a full disk is this error and never
     * a fault while writing through the mapping */
    w->rec_off = LF_HEADER + n_tok * 4;
    size_t n_pred = (size_t)(n_ctx - 1 - n_ctx / 2);
    size_t len = w->rec_off + (size_t)n_chunk * n_pred * w->rec;
    int e = posix_fallocate(fileno(w->f), 0, (off_t)len);
    if (e)
        return cm_fail(err, CM_E_IO, "cannot write %s: %s", path, strerror(e));
    return lf_map(w, len, 1, err);
}

/* sync: make the file durable first (not for a caller's temporary file) */
static cm_status lf_commit(lfile *w, int sync, cm_err *err)
{
    int e = munmap(w->map, w->map_len) != 0 ? errno : 0;
    w->map = NULL;
    if (w->af.tmp) { /* the stream is the temporary's: commit or abort closes it */
        w->f = NULL;
        if (!e)
            return cm_atomic_commit(&w->af, sync ? CM_ATOMIC_FSYNC : 0, err);
        cm_atomic_abort(&w->af);
    } else {
        if (!e && (fflush(w->f) != 0 || (sync && fsync(fileno(w->f)) != 0)))
            e = errno;
        if (fclose(w->f) != 0 && !e)
            e = errno;
        w->f = NULL;
    }
    return e ? cm_fail(err, CM_E_IO, "cannot write %s: %s", w->path, strerror(e)) : CM_OK;
}

/* Closes a file; a writer's unfinished file is removed. */
static void lf_close(lfile *l)
{
    if (l->map)
        munmap(l->map, l->map_len);
    l->map = NULL;
    if (l->af.tmp)
        cm_atomic_abort(&l->af); /* closes l->f too */
    else if (l->f)
        fclose(l->f);
    l->f = NULL;
}

/* Checks the header against this run; returns the base's chunk count. */
static cm_status lf_check_header(const unsigned char *h, const char *path, int n_vocab,
                                 int n_ctx, uint64_t fsize, uint32_t *n_chunk, cm_err *err)
{
    uint32_t ver = get_u32(h, 8), ty = get_u32(h, 12), nv = get_u32(h, 16);
    uint32_t nc = get_u32(h, 20), nch = get_u32(h, 24), first = get_u32(h, 28);
    if (memcmp(h, LF_MAGIC, 8))
        return cm_fail(err, CM_E_FORMAT, "%s is not a codemoe logits file (made with "
                       "perplexity --save-logits)", path);
    if (ver != LF_VERSION || ty > 1)
        return cm_fail(err, CM_E_FORMAT, "%s: unsupported logits file version %u type %u",
                       path, ver, ty);
    if (nv != (uint32_t)n_vocab)
        return cm_fail(err, CM_E_FORMAT, "%s was made with a vocabulary of %u tokens, this "
                       "model has %d", path, nv, n_vocab);
    if (nc != (uint32_t)n_ctx)
        return cm_fail(err, CM_E_FORMAT, "%s was made with -c %u, this run uses -c %d", path, nc,
                       n_ctx);
    uint64_t rec = rec_bytes(ty == 1, n_vocab), per_chunk, body, want;
    int ovf = first != nc / 2 || nch == 0 || get_u64(h, 32) != (uint64_t)nch * nc ||
              __builtin_mul_overflow(rec, (uint64_t)(nc - 1 - first), &per_chunk) ||
              __builtin_add_overflow(per_chunk, (uint64_t)nc * 4, &per_chunk) ||
              __builtin_mul_overflow(per_chunk, (uint64_t)nch, &body) ||
              __builtin_add_overflow(body, (uint64_t)LF_HEADER, &want);
    if (ovf || want != fsize)
        return cm_fail(err, CM_E_FORMAT, "%s is truncated or inconsistent (%llu bytes)", path,
                       (unsigned long long)fsize);
    *n_chunk = nch;
    return CM_OK;
}

/* Opens a base file and checks it against the model, n_ctx and the ids;
 * caps *n_chunk to the chunks it holds. */
static cm_status lf_open(lfile *rd, const char *path, int n_vocab, int n_ctx,
                         const int32_t *ids, int *n_chunk, cm_err *err)
{
    unsigned char h[LF_HEADER];
    struct stat st;
    uint32_t nch = 0;
    rd->path = path;
    cm_status s = cm_fopen_regular(path, &rd->f, err);
    if (s)
        return s;
    if (fstat(fileno(rd->f), &st) != 0)
        return cm_fail(err, CM_E_IO, "cannot read %s: %s", path, strerror(errno));
    if (fread(h, 1, sizeof h, rd->f) != sizeof h)
        return cm_fail(err, CM_E_FORMAT, "%s is not a codemoe logits file (too short)", path);
    s = lf_check_header(h, path, n_vocab, n_ctx, (uint64_t)st.st_size, &nch, err);
    if (s)
        return s;
    rd->f16 = get_u32(h, 12) == 1;
    rd->rec = rec_bytes(rd->f16, n_vocab);
    if ((uint32_t)*n_chunk > nch)
        *n_chunk = (int)nch;
    int32_t t;
    for (size_t i = 0; i < (size_t)*n_chunk * (size_t)n_ctx; i++) {
        if (fread(&t, 4, 1, rd->f) != 1)
            return cm_fail(err, CM_E_IO, "cannot read %s", path);
        if (t != ids[i])
            return cm_fail(err, CM_E_FORMAT, "%s holds other tokens (token %zu is %d there, %d "
                           "here): it was made from another text or tokenizer", path, i, t, ids[i]);
    }
    /* records start after all of the base's tokens */
    rd->rec_off = LF_HEADER + (size_t)nch * (size_t)n_ctx * 4;
    return lf_map(rd, (size_t)st.st_size, 0, err);
}

/* ------------------------------------------------------------ scoring */

typedef struct {
    int n_vocab, n_pred;         /* n_pred = n_ctx - 1 - first */
    int32_t bos;                 /* replaces each chunk's first token, or -1 */
    int32_t *buf;                /* [n_ctx] the chunk as evaluated */
    float *logits;               /* [n_ctx - first][n_vocab] */
    double *nll, *kld, *bnll;    /* [n_pred] */
    unsigned char *same;
    const unsigned char *base;   /* [n_pred][rec] this chunk's records in the */
    unsigned char *save;         /* base file / the file being written */
    float *tmp;                  /* [threads][n_vocab] a base row as floats */
    size_t base_rec, save_rec;
    int base_f16, save_f16;
} work;

/* The row's maximum and (argmax non-NULL) the first index holding it.  Blocks of 256 with
 * 16 running lanes, a shape the compiler turns into packed max
 * instructions; then only the first block that reached the maximum is
 * searched.  NaNs never win a comparison (as in a plain scan from x[0]). */
static float row_max(const float *x, int n, int *argmax)
{
    enum { B = 256, L = 16 };
    float m = -INFINITY;
    int mb = 0;
    for (int b0 = 0; b0 < n; b0 += B) {
        int end = n - b0 < B ? n : b0 + B;
        float lane[L];
        for (int k = 0; k < L; k++)
            lane[k] = -INFINITY;
        int i = b0;
        for (; i + L <= end; i += L)
            for (int k = 0; k < L; k++)
                lane[k] = x[i + k] > lane[k] ? x[i + k] : lane[k];
        for (; i < end; i++)
            lane[0] = x[i] > lane[0] ? x[i] : lane[0];
        float bm = lane[0];
        for (int k = 1; k < L; k++)
            bm = lane[k] > bm ? lane[k] : bm;
        if (bm > m)
            m = bm, mb = b0;
    }
    if (argmax) {
        int j = mb;
        while (j < n && !(x[j] == m))
            j++;
        *argmax = j < n ? j : 0;
    }
    return m;
}

/* One value of a saved base row */
static float base_value(const unsigned char *row, int f16, int i)
{
    float v;
    cm_row_to_float(f16 ? CM_TYPE_F16 : CM_TYPE_F32, row + (size_t)i * (f16 ? 2 : 4), &v, 1);
    return v;
}

/* KLD(base || model) at one position, from the model's logits x (maximum
 * mx) and the base's saved record (its argmax bmax, read by the caller,
 * then its log-probabilities), renormalised here (they carry rounding).  With u = b - max b and
 * v = x - mx, KLD = E_pb[u - v] + log sum e^v - log sum e^u (kernels.h).
 * Also the model's log-sum-exp and the base's NLL. */
static double kld_row(const unsigned char *rec, int32_t bmax, int f16, const float *x, float mx,
                      int n, int32_t target, double *lse_m, double *bnll)
{
    const unsigned char *b = rec + 4;
    float mb = bmax >= 0 && bmax < n ? base_value(b, f16, bmax) : 0;
    double s[4];
    cm_kld_sums(x, b, f16, n, mx, mb, s);
    if (!(s[3] <= 0 && s[3] > -64)) { /* the saved argmax is not the row's maximum */
        mb += (float)s[3];
        cm_kld_sums(x, b, f16, n, mx, mb, s);
    }
    *lse_m = mx + log(s[0]);
    *bnll = mb + log(s[1]) - base_value(b, f16, target);
    return s[2] / s[1] + log(s[0]) - log(s[1]);
}

/* tmp: n floats */
static void save_row(unsigned char *rec, int f16, const float *x, double lse, int n, int32_t amax,
                     float *tmp)
{
    memcpy(rec, &amax, 4);
    for (int i = 0; i < n; i++)
        tmp[i] = (float)((double)x[i] - lse);
    if (f16)
        cm_row_to_f16(tmp, (uint16_t *)(void *)(rec + 4), n);
    else
        memcpy(rec + 4, tmp, (size_t)n * sizeof(float));
}

/* Scores every prediction of the chunk in w->buf (logits already there).
 * Per-position values go to arrays and are summed in order later, so the
 * result does not depend on the thread count. */
static void score_chunk(work *w, int first)
{
    int nv = w->n_vocab;
#pragma omp parallel for schedule(static)
    for (int j = 0; j < w->n_pred; j++) {
        const float *x = w->logits + (size_t)j * nv;
        int32_t target = w->buf[first + j + 1];
        int amax = 0;
        float mx = row_max(x, nv, w->base || w->save ? &amax : NULL);
        double lse;
        if (w->base) {
            const unsigned char *rec = w->base + (size_t)j * w->base_rec;
            int32_t bmax;
            memcpy(&bmax, rec, 4);
            w->kld[j] = kld_row(rec, bmax, w->base_f16, x, mx, nv, target, &lse, &w->bnll[j]);
            w->same[j] = bmax == amax;
        } else
            lse = mx + log(cm_exp_sum(x, nv, mx));
        w->nll[j] = lse - x[target];
        float *tmp = w->tmp ? w->tmp + (size_t)cm_thread_num() * nv : NULL; /* for save_row */
        if (w->save)
            save_row(w->save + (size_t)j * w->save_rec, w->save_f16, x, lse, nv, amax, tmp);
    }
}

static double chunk_accumulate(const work *w, ppl_acc *a)
{
    double sum = 0;
    for (int j = 0; j < w->n_pred; j++) {
        sum += w->nll[j];
        a->nll += w->nll[j];
        a->nll2 += w->nll[j] * w->nll[j];
        if (w->base) {
            a->kld += w->kld[j];
            a->kld2 += w->kld[j] * w->kld[j];
            a->kld_max = fmax(a->kld_max, w->kld[j]);
            a->same += w->same[j];
            a->bnll += w->bnll[j];
            a->bnll2 += w->bnll[j] * w->bnll[j];
        }
    }
    a->n += w->n_pred;
    return sum;
}

/* Evaluates one chunk in one pass (each weight tile decoded once per
 * batch): logits only for the second half; the first half is there for
 * the KV cache. */
static cm_status eval_chunk(cm_ctx *ctx, work *w, const int32_t *ids, int n_ctx, cm_err *err)
{
    int first = n_ctx / 2;
    memcpy(w->buf, ids, (size_t)n_ctx * sizeof *ids);
    if (w->bos >= 0)
        w->buf[0] = w->bos;
    cm_ctx_reset(ctx);
    return cm_eval_last(ctx, w->buf, n_ctx, n_ctx - first, w->logits, err);
}

/* ------------------------------------------------------------ the run */

static void work_free(work *w)
{
    free(w->buf), free(w->logits), free(w->nll), free(w->kld), free(w->bnll);
    free(w->same), free(w->tmp);
}

static cm_status work_alloc(work *w, int n_ctx, const lfile *base, const lfile *save, cm_err *err)
{
    size_t np = (size_t)w->n_pred;
    w->buf = malloc((size_t)n_ctx * sizeof *w->buf);
    size_t lb = (size_t)(n_ctx - n_ctx / 2) * (size_t)w->n_vocab * sizeof(float);
    w->logits = aligned_alloc(64, (lb + 63) / 64 * 64); /* whole lines: streamed stores */
    w->nll = malloc(np * sizeof(double));
    int ok = w->buf && w->logits && w->nll;
    if (base->f) {
        w->kld = malloc(np * sizeof(double));
        w->bnll = malloc(np * sizeof(double));
        w->same = malloc(np);
        w->base_rec = base->rec;
        w->base_f16 = base->f16;
        ok = ok && w->kld && w->bnll && w->same;
    }
    if (save->f) {
        w->save_rec = save->rec;
        w->save_f16 = save->f16;
    }
    if (save->f) {
        w->tmp = malloc((size_t)cm_max_threads() * (size_t)w->n_vocab * sizeof(float));
        ok = ok && w->tmp;
    }
    return ok ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory for %d-token chunks", n_ctx);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static cm_status run_chunks(cm_ctx *ctx, work *w, const int32_t *ids, int n_chunk,
                            const cm_ppl_params *p, lfile *base, lfile *save,
                            cm_ppl_result *r, cm_err *err)
{
    ppl_acc acc = {0};
    size_t rec_all = (size_t)w->n_pred;
    double t0 = now_s();
    for (int c = 0; c < n_chunk; c++) {
        cm_status s = eval_chunk(ctx, w, ids + (size_t)c * p->n_ctx, p->n_ctx, err);
        if (s)
            return s;
        w->base = base->f ? lf_chunk(base, c, rec_all) : NULL;
        w->save = save->f ? lf_chunk(save, c, rec_all) : NULL;
        score_chunk(w, p->n_ctx / 2);
        if (base->f)
            lf_release(base, c, rec_all);
        for (int j = 0; base->f && j < w->n_pred; j++)
            if (!isfinite(w->bnll[j])) /* only the base row enters it */
                return cm_fail(err, CM_E_FORMAT, "%s: the saved row of position %d of chunk %d "
                               "is not a distribution (corrupt file?)", base->path, j, c);
        if (save->f)
            lf_release(save, c, rec_all);
        double sum = chunk_accumulate(w, &acc);
        if (p->chunk_nll)
            p->chunk_nll[c] = sum;
        acc_result(&acc, base->f != NULL, r);
        r->n_chunk = c + 1;
        r->seconds = now_s() - t0;
        if (p->progress)
            p->progress(p->user, c, r);
    }
    return CM_OK;
}

int cm_ppl_n_chunks(size_t n_ids, int n_ctx, int max_chunks)
{
    size_t n = n_ctx > 0 ? n_ids / (size_t)n_ctx : 0;
    if (n > INT32_MAX)
        n = INT32_MAX;
    return max_chunks > 0 && (size_t)max_chunks < n ? max_chunks : (int)n;
}

static cm_status check_args(const cm_model *m, size_t n_ids, const cm_ppl_params *p, cm_err *err)
{
    if (p->n_ctx < 4 || p->n_ctx > (1 << 24))
        return cm_fail(err, CM_E_RANGE, "context size %d is out of range (at least 4)", p->n_ctx);
    if (n_ids < 2 * (size_t)p->n_ctx)
        return cm_fail(err, CM_E_RANGE, "the text has %zu tokens; perplexity with -c %d needs at "
                       "least %d (two chunks)", n_ids, p->n_ctx, 2 * p->n_ctx);
    if (m->hp.n_vocab <= 0)
        return cm_fail(err, CM_E_FORMAT, "the model has no vocabulary");
    return CM_OK;
}

cm_status cm_perplexity(const cm_model *m, const int32_t *ids, size_t n_ids,
                        const cm_ppl_params *p, cm_ppl_result *r, cm_err *err)
{
    lfile base = {0}, save = {0};
    work w = {.n_vocab = m->hp.n_vocab, .n_pred = p->n_ctx - 1 - p->n_ctx / 2, .bos = -1};
    cm_ctx *ctx = NULL;
    memset(r, 0, sizeof *r);
    cm_status s = check_args(m, n_ids, p, err);
    if (s)
        return s;
    int n_chunk = cm_ppl_n_chunks(n_ids, p->n_ctx, p->max_chunks);
    if (m->tok && cm_tok_add_bos(m->tok))
        w.bos = cm_tok_bos(m->tok);
    r->n_ctx = p->n_ctx;
    r->n_vocab = w.n_vocab;
    if (p->kld_base)
        s = lf_open(&base, p->kld_base, w.n_vocab, p->n_ctx, ids, &n_chunk, err);
    if (!s && p->save_logits)
        s = lf_create(&save, p->save_logits, p->save_to_fd ? p->save_fd : -1, !p->save_f32, w.n_vocab, p->n_ctx,
                      n_chunk, ids, err);
    if (!s)
        s = work_alloc(&w, p->n_ctx, &base, &save, err);
    if (!s)
        s = cm_ctx_new_on(m, p->backend, p->n_ctx, p->kv, p->n_batch > 0 ? p->n_batch : p->n_ctx, &ctx, err);
    if (!s)
        s = run_chunks(ctx, &w, ids, n_chunk, p, &base, &save, r, err);
    if (!s && save.f)
        s = lf_commit(&save, !p->save_temporary, err);
    lf_close(&save);
    lf_close(&base);
    cm_ctx_free(ctx);
    work_free(&w);
    return s;
}
