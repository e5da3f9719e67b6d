/* merge.c - merging fine-tunes of a common base, in F32.
 *
 *   average           theta = mean_i theta_i
 *   task-arithmetic   theta = base + lambda sum_i (theta_i - base)   (Ilharco et al. 2023)
 *   ties              theta = base + lambda tau_m                     (Yadav et al. 2023)
 *
 * TIES: each task vector tau_i = theta_i - base is trimmed to its
 * density-fraction of largest magnitudes, a sign is elected per element as
 * the sign of the sum of the trimmed values (the larger total mass), and
 * tau_m is the mean of the trimmed values that agree with it (the
 * "disjoint mean"; 0 where none do).  Every input is decoded to F32
 * whatever its type; sums are in double.  A tensor is merged a stretch of
 * rows at a time.  The trimming threshold is each tensor's own (scope
 * tensor: found before the tensor is merged, three tensors of floats at
 * once) or the whole model's, as the paper trims (scope model: two passes
 * over every input before the merge find each model's k-th largest
 * |tau| exactly by a radix select on the bits of the magnitudes, in 512 KB
 * per model; memory does not grow with the model). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "quant/quant.h"
#include "surgery/surgery_internal.h"

/* ------------------------------------------------------------ TIES */

static void swapf(float *a, float *b)
{
    float t = *a;
    *a = *b;
    *b = t;
}

/* Quickselect (Hoare's FIND) for the k-th largest of |x|, with a
 * three-way partition so that runs of equal values (a task vector is
 * mostly zeros where a fine-tune did not move) stay linear. */
float cm_kth_magnitude(const float *x, int64_t n, int64_t k, float *v)
{
    if (n <= 0 || k <= 0)
        return INFINITY;
    if (k > n)
        k = n;
    for (int64_t i = 0; i < n; i++)
        v[i] = fabsf(x[i]);
    int64_t lo = 0, hi = n - 1, want = k - 1; /* an index in descending order */
    while (lo < hi) {
        float a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi];
        float p = a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
        int64_t gt = lo, i = lo, lt = hi; /* [lo,gt) > p, [gt,i) == p, (lt,hi] < p */
        while (i <= lt) {
            if (v[i] > p)
                swapf(&v[i++], &v[gt++]);
            else if (v[i] < p)
                swapf(&v[i], &v[lt--]);
            else
                i++;
        }
        if (want < gt)
            hi = gt - 1;
        else if (want > lt)
            lo = lt + 1;
        else
            return p;
    }
    return v[want];
}

void cm_ties_merge(float *const *tau, const float *thr, int n_models, int64_t n, float *out)
{
    for (int i = 0; i < n_models; i++)
        for (int64_t e = 0; e < n; e++)
            if (!(fabsf(tau[i][e]) >= thr[i]))
                tau[i][e] = 0;
    for (int64_t e = 0; e < n; e++) {
        double mass = 0, sum = 0;
        int cnt = 0;
        for (int i = 0; i < n_models; i++)
            mass += tau[i][e];
        for (int i = 0; i < n_models && mass != 0; i++)
            if ((tau[i][e] > 0 && mass > 0) || (tau[i][e] < 0 && mass < 0)) {
                sum += tau[i][e];
                cnt++;
            }
        out[e] = cnt ? (float)(sum / cnt) : 0.0f;
    }
}

/* Non-negative floats order as their bit patterns do. */
static uint32_t mag_bits(float x)
{
    uint32_t u;
    x = fabsf(x);
    memcpy(&u, &x, sizeof u);
    return u;
}

void cm_kth_stream_init(cm_kth_stream *s, int64_t k)
{
    memset(s->hist, 0, sizeof s->hist);
    s->k = k < 1 ? 1 : k;
    s->high = 0;
    s->pass = 0;
}

void cm_kth_stream_add(cm_kth_stream *s, const float *x, int64_t n)
{
    if (s->pass == 0) {
        for (int64_t e = 0; e < n; e++)
            s->hist[mag_bits(x[e]) >> 16]++;
        return;
    }
    for (int64_t e = 0; e < n; e++) {
        uint32_t u = mag_bits(x[e]);
        if ((u >> 16) == s->high)
            s->hist[u & 0xffff]++;
    }
}

/* The bin holding the k-th largest, counting from the top; k becomes the
 * rank within that bin.  0 if fewer than k were counted. */
static int find_bin(cm_kth_stream *s, uint32_t *bin)
{
    uint64_t cum = 0;
    for (int64_t b = 65535; b >= 0; b--) {
        if (cum + s->hist[b] >= (uint64_t)s->k) {
            *bin = (uint32_t)b;
            s->k -= (int64_t)cum;
            return 1;
        }
        cum += s->hist[b];
    }
    return 0;
}

int cm_kth_stream_next(cm_kth_stream *s, float *out)
{
    uint32_t bin = 0;
    int found = find_bin(s, &bin);
    memset(s->hist, 0, sizeof s->hist);
    if (s->pass++ == 0) {
        s->high = found ? bin : UINT32_MAX; /* no bin: pass 1 counts nothing */
        return 0;
    }
    uint32_t u = (s->high << 16) | bin;
    if (found)
        memcpy(out, &u, sizeof *out);
    else
        *out = INFINITY;
    return 1;
}

/* ------------------------------------------------------------ files */

typedef struct mjob mjob;

typedef struct {
    const mjob *job;
    const gguf_tensor *base;     /* NULL without a base */
    const gguf_tensor **in;      /* [n_models] */
    uint32_t type;
    char name[128];
} mrec;

struct mjob {
    const cm_merge_opts *o;
    int n_models;
    mrec *rec;
    size_t n;
    float *model_thr; /* [n_models] TIES over the whole model: the thresholds */
};

/* TIES's trimming thresholds: the k-th largest |theta_i - base| of the
 * whole tensor, for each model (memory: three tensors of floats). */
static cm_status ties_thresholds(const mrec *r, int64_t n, float *thr, cm_err *err)
{
    const mjob *j = r->job;
    int64_t k = (int64_t)ceil((double)j->o->density * (double)n), rows = surg_rows(r->base->ne);
    float *b = malloc((size_t)n * sizeof *b), *t = malloc((size_t)n * sizeof *t);
    float *v = malloc((size_t)n * sizeof *v);
    cm_status s = b && t && v ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory for %s", r->name);
    if (!s && k < n)
        s = surg_decode_rows(r->base, 0, rows, b, err);
    for (int i = 0; !s && i < j->n_models; i++) {
        thr[i] = 0.0f; /* density 1: nothing is trimmed */
        if (k >= n)
            continue;
        s = surg_decode_rows(r->in[i], 0, rows, t, err);
        for (int64_t e = 0; !s && e < n; e++)
            t[e] -= b[e];
        if (!s)
            thr[i] = cm_kth_magnitude(t, n, k < 1 ? 1 : k, v);
    }
    free(b);
    free(t);
    free(v);
    return s;
}

/* Decodes rows [r0, r0 + nr) of every model into x, a stretch of n
 * elements each, then the base's after them. */
static cm_status decode_stretch(const mrec *r, int64_t r0, int64_t nr, float *x, cm_err *err)
{
    const int64_t n = nr * r->in[0]->ne[0];
    float *b = x + (size_t)r->job->n_models * (size_t)n;
    cm_status s = r->base ? surg_decode_rows(r->base, r0, nr, b, err) : CM_OK;
    for (int i = 0; !s && i < r->job->n_models; i++)
        s = surg_decode_rows(r->in[i], r0, nr, x + (size_t)i * (size_t)n, err);
    return s;
}

/* Merges rows [r0, r0 + nr) into acc; x has room for n_models + 1 such
 * stretches (the models', then the base's). */
static cm_status merge_rows(const mrec *r, int64_t r0, int64_t nr, const float *thr, float *acc,
                            float *x, cm_err *err)
{
    const mjob *j = r->job;
    const cm_merge_opts *o = j->o;
    const int64_t n = nr * r->in[0]->ne[0];
    float *b = x + (size_t)j->n_models * (size_t)n;
    cm_status s = decode_stretch(r, r0, nr, x, err);
    if (s)
        return s;
    if (o->method == CM_MERGE_TIES) {
        float **tau = malloc((size_t)j->n_models * sizeof *tau);
        if (!tau)
            return cm_fail(err, CM_E_NOMEM, "out of memory for %s", r->name);
        for (int i = 0; i < j->n_models; i++) {
            tau[i] = x + (size_t)i * (size_t)n;
            for (int64_t e = 0; e < n; e++)
                tau[i][e] -= b[e];
        }
        cm_ties_merge(tau, thr, j->n_models, n, acc);
        for (int64_t e = 0; e < n; e++)
            acc[e] = b[e] + o->lambda * acc[e];
        free(tau);
        return CM_OK;
    }
    for (int64_t e = 0; e < n; e++) {
        double sum = 0;
        for (int i = 0; i < j->n_models; i++)
            sum += o->method == CM_MERGE_AVERAGE ? (double)x[(size_t)i * n + e]
                                                 : (double)x[(size_t)i * n + e] - b[e];
        acc[e] = o->method == CM_MERGE_AVERAGE ? (float)(sum / j->n_models)
                                               : (float)(b[e] + o->lambda * sum);
    }
    return CM_OK;
}

/* Rows merged at a time: about o->chunk (1M) elements. */
static int64_t chunk_rows(const mrec *r)
{
    const int64_t len = r->in[0]->ne[0], rows = surg_rows(r->in[0]->ne);
    const int64_t want = r->job->o->chunk > 0 ? r->job->o->chunk : 1 << 20;
    return len >= want ? 1 : (want / len < rows ? want / len : rows);
}

/* Every task vector of every tensor, a stretch of rows at a time, to the
 * model's radix select. */
static cm_status count_tau(const mjob *j, cm_kth_stream *ks, cm_err *err)
{
    cm_status s = CM_OK;
    for (size_t t = 0; !s && t < j->n; t++) {
        const mrec *r = &j->rec[t];
        const int64_t len = r->in[0]->ne[0], rows = surg_rows(r->in[0]->ne), chunk = chunk_rows(r);
        float *x = malloc((size_t)(j->n_models + 1) * (size_t)(chunk * len) * sizeof *x);
        if (!x)
            return cm_fail(err, CM_E_NOMEM, "out of memory for %s", r->name);
        for (int64_t r0 = 0; !s && r0 < rows; r0 += chunk) {
            const int64_t nr = rows - r0 < chunk ? rows - r0 : chunk, n = nr * len;
            const float *b = x + (size_t)j->n_models * (size_t)n;
            s = decode_stretch(r, r0, nr, x, err);
            for (int i = 0; !s && i < j->n_models; i++) {
                float *tau = x + (size_t)i * (size_t)n;
                for (int64_t e = 0; e < n; e++)
                    tau[e] -= b[e];
                cm_kth_stream_add(&ks[i], tau, n);
            }
        }
        free(x);
    }
    return s;
}

/* TIES over the whole model: each model's k-th largest |tau| of all its
 * elements, in two passes over the inputs. */
static cm_status model_thresholds(mjob *j, cm_err *err)
{
    int64_t total = 0;
    for (size_t t = 0; t < j->n; t++)
        total += j->rec[t].in[0]->ne[0] * surg_rows(j->rec[t].in[0]->ne);
    const int64_t k = (int64_t)ceil((double)j->o->density * (double)total);
    j->model_thr = calloc((size_t)j->n_models, sizeof *j->model_thr);
    if (!j->model_thr)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    if (k >= total) /* density 1: nothing is trimmed */
        return CM_OK;
    cm_kth_stream *ks = malloc((size_t)j->n_models * sizeof *ks);
    cm_status s = ks ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory");
    for (int i = 0; !s && i < j->n_models; i++)
        cm_kth_stream_init(&ks[i], k);
    for (int pass = 0; !s && pass < 2; pass++) {
        s = count_tau(j, ks, err);
        for (int i = 0; !s && i < j->n_models; i++)
            cm_kth_stream_next(&ks[i], &j->model_thr[i]);
    }
    if (!s && j->o->log) {
        fprintf(j->o->log, "ties: keeping |model - base| >= ");
        for (int i = 0; i < j->n_models; i++)
            fprintf(j->o->log, "%s%.6g", i ? ", " : "", j->model_thr[i]);
        fprintf(j->o->log, " (the top %lld of %lld weights of each model)\n", (long long)k,
                (long long)total);
    }
    free(ks);
    return s;
}

/* The merged tensor, a stretch of rows (about 1M elements) at a time. */
static cm_status fill(void *ctx, void *dst, uint64_t nbytes, cm_err *err)
{
    const mrec *r = ctx;
    const gguf_tensor *t = r->in[0];
    const int64_t len = t->ne[0], rows = surg_rows(t->ne), chunk = chunk_rows(r);
    const size_t nm = (size_t)r->job->n_models + 1, rb = cm_row_bytes(r->type, len);
    float *acc = malloc((size_t)(chunk * len) * sizeof *acc);
    float *x = malloc(nm * (size_t)(chunk * len) * sizeof *x);
    float *thr = calloc(nm, sizeof *thr);
    cm_status s = acc && x && thr ? CM_OK
                                  : cm_fail(err, CM_E_NOMEM, "out of memory for %s", r->name);
    (void)nbytes;
    if (!s && r->job->model_thr)
        memcpy(thr, r->job->model_thr, (size_t)r->job->n_models * sizeof *thr);
    else if (!s && r->job->o->method == CM_MERGE_TIES)
        s = ties_thresholds(r, len * rows, thr, err);
    for (int64_t r0 = 0; !s && r0 < rows; r0 += chunk) {
        int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
        s = merge_rows(r, r0, nr, thr, acc, x, err);
        if (!s)
            s = surg_encode_rows(r->type, acc, len, nr, (uint8_t *)dst + (size_t)r0 * rb, r->name,
                                 err);
    }
    free(acc);
    free(x);
    free(thr);
    return s;
}

static int same_shape(const gguf_tensor *a, const gguf_tensor *b)
{
    return !memcmp(a->ne, b->ne, sizeof a->ne);
}

static cm_status check_arch(const cm_model *ref, const cm_model *m, cm_err *err)
{
    if (strcmp(ref->hp.arch_name, m->hp.arch_name))
        return cm_fail(err, CM_E_FORMAT, "%s is %s, %s is %s: merge needs one architecture",
                       m->path, m->hp.arch_name, ref->path, ref->hp.arch_name);
    if (m->is_pack || ref->is_pack)
        return cm_fail(err, CM_E_UNSUPPORTED, "merge takes model files, not language-expert "
                       "packs (%s)", m->is_pack ? m->path : ref->path);
    return CM_OK;
}

/* After every tensor of ref was found in m: a tensor of m that ref lacks. */
static cm_status check_extra(const cm_model *ref, const cm_model *m, cm_err *err)
{
    for (uint64_t i = 0; m->file.n_tensors > ref->file.n_tensors && i < m->file.n_tensors; i++) {
        const gguf_str n = m->file.tensors[i].name;
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)(n.len < 127 ? n.len : 127), n.ptr);
        if (!gguf_find_tensor(&ref->file, name))
            return cm_fail(err, CM_E_FORMAT, "%s has tensor %s, which %s lacks", m->path, name,
                           ref->path);
    }
    return m->file.n_tensors == ref->file.n_tensors
               ? CM_OK
               : cm_fail(err, CM_E_FORMAT, "%s and %s hold different tensors", m->path, ref->path);
}

/* Finds tensor `name` of ref in m with the same shape. */
static cm_status match(const cm_model *m, const gguf_tensor *t, const char *name,
                       const gguf_tensor **out, cm_err *err)
{
    char tb[32];
    const gguf_tensor *u = gguf_find_tensor(&m->file, name);
    if (!u)
        return cm_fail(err, CM_E_FORMAT, "%s has no tensor %s", m->path, name);
    if (!same_shape(t, u))
        return cm_fail(err, CM_E_FORMAT, "tensor %s: shape [%lld, %lld, %lld] in %s, [%lld, "
                       "%lld, %lld] in the first model", name, (long long)u->ne[0],
                       (long long)u->ne[1], (long long)u->ne[2], m->path, (long long)t->ne[0],
                       (long long)t->ne[1], (long long)t->ne[2]);
    if (!surg_type_ok(u->type))
        return cm_fail(err, CM_E_UNSUPPORTED, "tensor %s in %s has type %s, which codemoe "
                       "cannot decode", name, m->path, cm_type_name(u->type, tb));
    *out = u;
    return CM_OK;
}

static cm_status plan(mjob *j, const cm_model *base, const cm_model *ms, cm_err *err)
{
    const cm_model *ref = &ms[0];
    cm_status s = CM_OK;
    for (uint64_t i = 0; !s && i < ref->file.n_tensors; i++) {
        const gguf_tensor *t = &ref->file.tensors[i];
        mrec *r = &j->rec[j->n++];
        r->job = j;
        r->in = calloc((size_t)j->n_models, sizeof *r->in);
        if (!r->in)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        if (surg_name(t, r->name, sizeof r->name))
            return cm_fail(err, CM_E_FORMAT, "tensor name longer than 127 bytes: %.60s...",
                           t->name.ptr);
        for (int m = 0; !s && m < j->n_models; m++)
            s = match(&ms[m], t, r->name, &r->in[m], err);
        if (!s && base)
            s = match(base, t, r->name, &r->base, err);
        r->type = surg_out_type(j->o->type, t->type, r->name, t->ne);
    }
    for (int m = 1; !s && m < j->n_models; m++)
        s = check_extra(ref, &ms[m], err);
    if (!s && base)
        s = check_extra(ref, base, err);
    return s;
}

static cm_status check_opts(const char *base, int n_models, const cm_merge_opts *o,
                            cm_err *err)
{
    if (n_models < 1)
        return cm_fail(err, CM_E_USAGE, "merge needs at least one model to merge");
    if (!base && o->method != CM_MERGE_AVERAGE)
        return cm_fail(err, CM_E_USAGE, "task-arithmetic and ties need --base");
    if (!(o->density > 0 && o->density <= 1))
        return cm_fail(err, CM_E_USAGE, "--density must be in (0, 1]");
    if (o->scope == CM_TIES_MODEL && o->method != CM_MERGE_TIES)
        return cm_fail(err, CM_E_USAGE, "--ties-scope model is for --method ties");
    if (!isfinite(o->lambda) || o->type == CM_SURG_SAME)
        return cm_fail(err, CM_E_USAGE, "--lambda must be finite and --type a type");
    return CM_OK;
}

static cm_status write_out(mjob *j, const cm_model *src, const char *out, cm_err *err)
{
    gguf_writer *w = gguf_writer_new(3);
    if (!w)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    cm_status s = gguf_writer_copy_kv(w, &src->file, NULL, NULL);
    if (!s && surg_file_type(j->o->type) >= 0)
        s = gguf_writer_set_u32(w, "general.file_type", (uint32_t)surg_file_type(j->o->type));
    for (size_t i = 0; !s && i < j->n; i++)
        s = gguf_writer_add_tensor(w, j->rec[i].name, j->rec[i].type,
                                   surg_dims(j->rec[i].in[0]->ne), j->rec[i].in[0]->ne, NULL,
                                   fill, &j->rec[i]);
    s = surg_finish(w, out, NULL, 0, 0, NULL, NULL, err);
    gguf_writer_free(w);
    return s;
}

cm_status cm_merge(const char *base, const char *const *models, int n_models, const char *out,
                   const cm_merge_opts *o, cm_err *err)
{
    cm_status s = check_opts(base, n_models, o, err);
    if (s)
        return s;
    cm_model *ms = calloc((size_t)n_models + 1, sizeof *ms), *b = base ? &ms[n_models] : NULL;
    mjob j = {.o = o, .n_models = n_models};
    int loaded = 0;
    if (!ms)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (int i = 0; !s && i <= n_models; i++) {
        const char *p = i < n_models ? models[i] : base;
        if (!p)
            break;
        if (!(s = surg_distinct(p, out, err)) && !(s = cm_model_load(p, &ms[i], err)))
            loaded = i + 1;
        if (!s)
            s = check_arch(&ms[0], &ms[i], err);
    }
    if (!s && !(j.rec = calloc(ms[0].file.n_tensors + 1, sizeof *j.rec)))
        s = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!s)
        s = plan(&j, b, ms, err);
    if (!s && o->log) {
        static const char *const names[] = {"average", "task arithmetic", "ties"};
        char tb[32];
        fprintf(o->log, "merge: %s", names[o->method]);
        if (o->method == CM_MERGE_TIES)
            fprintf(o->log, " (density %g per %s, lambda %g)", o->density,
                    o->scope == CM_TIES_MODEL ? "model" : "tensor", o->lambda);
        else if (o->method == CM_MERGE_TASK_ARITHMETIC)
            fprintf(o->log, " (lambda %g)", o->lambda);
        fprintf(o->log, " of %d model%s%s%s -> %s: %zu tensors, %s\n", n_models,
                n_models > 1 ? "s" : "", base ? " onto " : "", base ? base : "", out, j.n,
                cm_type_name(o->type, tb));
    }
    if (!s && o->method == CM_MERGE_TIES && o->scope == CM_TIES_MODEL)
        s = model_thresholds(&j, err);
    if (!s)
        s = write_out(&j, b ? b : &ms[0], out, err);
    for (size_t i = 0; i < j.n; i++)
        free(j.rec[i].in);
    free(j.model_thr);
    free(j.rec);
    for (int i = 0; i < loaded; i++)
        cm_model_free(&ms[i]);
    free(ms);
    return s;
}
