/* common.c - what the surgery commands share: decoding and encoding rows,
 * the choice of output types, the seeded noise, and writing the output
 * through a temporary that is checked with the engine before it is renamed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "convert/quantize.h"
#include "engine/forward.h"
#include "quant/quant.h"
#include "surgery/surgery_internal.h"
#include "util/atomic_file.h"

/* ------------------------------------------------------------ numbers */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void surg_rng_seed(surg_rng *r, uint64_t seed, const char *name, uint64_t salt)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a of the name */
    for (const char *p = name; p && *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    r->s = seed ^ h ^ (salt * 0xD1B54A32D192ED03ull);
    r->have = 0;
    splitmix(&r->s);
}

/* Box-Muller: two deviates per pair of uniforms in (0, 1]. */
double surg_rng_normal(surg_rng *r)
{
    if (r->have) {
        r->have = 0;
        return r->next;
    }
    double u1 = ((double)(splitmix(&r->s) >> 11) + 1.0) / 9007199254740992.0;
    double u2 = (double)(splitmix(&r->s) >> 11) / 9007199254740992.0;
    double m = sqrt(-2.0 * log(u1)), a = 6.283185307179586 * u2;
    r->next = m * sin(a);
    r->have = 1;
    return m * cos(a);
}

/* ------------------------------------------------------------ tensors */

int surg_name(const gguf_tensor *t, char *buf, size_t cap)
{
    if (t->name.len + 1 > cap)
        return -1;
    memcpy(buf, t->name.ptr, (size_t)t->name.len);
    buf[t->name.len] = 0;
    return 0;
}

uint32_t surg_dims(const int64_t ne[4])
{
    uint32_t d = 4;
    while (d > 1 && ne[d - 1] == 1)
        d--;
    return d;
}

int64_t surg_rows(const int64_t ne[4])
{
    return ne[1] * ne[2] * ne[3];
}

int surg_type_ok(uint32_t type)
{
    const cm_type_info *ti = cm_type_get(type);
    return ti && ti->supported;
}

cm_status surg_decode_rows(const gguf_tensor *t, int64_t r0, int64_t n, float *dst, cm_err *err)
{
    char tb[32];
    int64_t len = t->ne[0];
    size_t rb = cm_row_bytes(t->type, len);
    if (!surg_type_ok(t->type) || !rb)
        return cm_fail(err, CM_E_UNSUPPORTED, "tensor %.*s has type %s, which codemoe cannot "
                       "decode", (int)t->name.len, t->name.ptr, cm_type_name(t->type, tb));
    if ((uint64_t)(r0 + n) * rb > t->nbytes)
        return cm_fail(err, CM_E_FORMAT, "tensor %.*s: rows out of range", (int)t->name.len,
                       t->name.ptr);
    const uint8_t *src = (const uint8_t *)t->data + (size_t)r0 * rb;
#pragma omp parallel for schedule(static) if (n * len > (1 << 16))
    for (int64_t r = 0; r < n; r++)
        cm_dequantize_row((enum cm_type)t->type, src + (size_t)r * rb, dst + r * len, len);
    return CM_OK;
}

cm_status surg_encode_rows(uint32_t type, const float *src, int64_t len, int64_t n, void *dst,
                           const char *name, cm_err *err)
{
    char tb[32];
    size_t rb = cm_row_bytes(type, len);
    int bad = 0;
    if (!rb)
        return cm_fail(err, CM_E_UNSUPPORTED, "tensor %s: rows of %lld do not fill %s blocks",
                       name, (long long)len, cm_type_name(type, tb));
#pragma omp parallel for schedule(static) reduction(| : bad) if (n * len > (1 << 16))
    for (int64_t r = 0; r < n; r++)
        bad |= cm_quantize_weights(type, src + r * len, (uint8_t *)dst + (size_t)r * rb, len) != 0;
    if (bad)
        return cm_fail(err, CM_E_UNSUPPORTED, "tensor %s: codemoe cannot encode %s", name,
                       cm_type_name(type, tb));
    return CM_OK;
}

cm_status surg_convert_rows(const gguf_tensor *t, int64_t r0, int64_t n, uint32_t type,
                            surg_edit_fn edit, void *ctx, void *dst, const char *name, cm_err *err)
{
    int64_t len = t->ne[0];
    size_t sb = cm_row_bytes(t->type, len), db = cm_row_bytes(type, len);
    if (type == t->type && !edit && sb && (uint64_t)(r0 + n) * sb <= t->nbytes) {
        memcpy(dst, (const uint8_t *)t->data + (size_t)r0 * sb, (size_t)n * sb);
        return CM_OK;
    }
    int64_t chunk = len >= (1 << 20) ? 1 : (1 << 20) / len;
    float *buf = malloc((size_t)(chunk < n ? chunk : n) * (size_t)len * sizeof *buf + 1);
    cm_status s = buf ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory for tensor %s", name);
    for (int64_t r = 0; !s && r < n; r += chunk) {
        int64_t k = n - r < chunk ? n - r : chunk;
        s = surg_decode_rows(t, r0 + r, k, buf, err);
        if (!s && edit)
            edit(ctx, buf, r, k, len);
        if (!s)
            s = surg_encode_rows(type, buf, len, k, (uint8_t *)dst + (size_t)r * db, name, err);
    }
    free(buf);
    return s;
}

static int fits(uint32_t type, int64_t len)
{
    return cm_row_bytes(type, len) != 0;
}

uint32_t surg_out_type(uint32_t want, uint32_t src, const char *name, const int64_t ne[4])
{
    if (want == CM_SURG_SAME)
        return fits(src, ne[0]) ? src : CM_TYPE_F16;
    if (surg_dims(ne) < 2 || strstr(name, "ffn_gate_inp"))
        return CM_TYPE_F32;
    if (fits(want, ne[0]))
        return want;
    return fits(CM_TYPE_F16, ne[0]) ? CM_TYPE_F16 : CM_TYPE_F32;
}

int surg_file_type(uint32_t type)
{
    for (size_t i = 0; type != CM_SURG_SAME && cm_qmix_at(i); i++)
        if (cm_qmix_at(i)->base == type)
            return (int)cm_qmix_at(i)->ftype;
    return -1;
}

int surg_layer_of(const char *name, const char **suffix)
{
    char *end;
    if (strncmp(name, "blk.", 4) || name[4] < '0' || name[4] > '9')
        return -1;
    long v = strtol(name + 4, &end, 10);
    if (*end != '.' || v < 0 || v > 1 << 20)
        return -1;
    if (suffix)
        *suffix = end + 1;
    return (int)v;
}

cm_status surg_distinct(const char *in, const char *out, cm_err *err)
{
    struct stat a, b;
    if (!strcmp(in, out) || (stat(in, &a) == 0 && stat(out, &b) == 0 && a.st_dev == b.st_dev &&
                             a.st_ino == b.st_ino))
        return cm_fail(err, CM_E_USAGE, "input and output are the same file (%s); write to a "
                       "new file", out);
    return CM_OK;
}

/* ------------------------------------------------------------ plans */

cm_status surg_plan_init(surg_plan *p, size_t cap, uint32_t want, cm_err *err)
{
    *p = (surg_plan){.cap = cap, .want = want, .all_f32 = 1};
    p->rec = calloc(cap ? cap : 1, sizeof *p->rec);
    return p->rec ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory");
}

void surg_plan_free(surg_plan *p)
{
    free(p->rec);
    p->rec = NULL;
}

surg_rec *surg_plan_add(surg_plan *p, const void *job, const gguf_tensor *src, const char *name,
                        int kind, const int64_t ne[4])
{
    if (p->n == p->cap)
        return NULL;
    surg_rec *r = &p->rec[p->n++];
    uint32_t st = src ? src->type : CM_TYPE_F32;
    *r = (surg_rec){.job = job, .src = src, .kind = kind};
    snprintf(r->name, sizeof r->name, "%s", name);
    memcpy(r->ne, ne ? ne : src->ne, sizeof r->ne);
    r->type = surg_out_type(p->want, st, r->name, r->ne);
    p->all_f32 &= st == CM_TYPE_F32 && r->type == CM_TYPE_F32;
    return r;
}

/* A failed add is kept in the writer and reported by its finish. */
cm_status surg_plan_write(surg_plan *p, gguf_writer *w, gguf_fill_fn fill)
{
    cm_status s = CM_OK;
    for (size_t i = 0; !s && i < p->n; i++)
        s = gguf_writer_add_tensor(w, p->rec[i].name, p->rec[i].type, surg_dims(p->rec[i].ne),
                                   p->rec[i].ne, NULL, fill, &p->rec[i]);
    return s;
}

cm_status surg_src_name(const gguf_tensor *t, char *name, cm_err *err)
{
    if (surg_name(t, name, 128))
        return cm_fail(err, CM_E_FORMAT, "tensor name longer than 127 bytes: %.60s...",
                       t->name.ptr);
    if (!surg_type_ok(t->type))
        return cm_fail(err, CM_E_UNSUPPORTED, "tensor %s: type %u cannot be decoded", name,
                       t->type);
    return CM_OK;
}

/* ------------------------------------------------------------ checking */

/* Evaluates n ids with path's model; make_ids: first fills ids, spread
 * over the model's vocabulary with no pattern a layer could exploit. */
static cm_status eval_model(const char *path, int32_t *ids, int make_ids, int n, float **logits,
                            int *n_vocab, cm_err *err)
{
    cm_model m;
    cm_ctx *c = NULL;
    cm_status s = cm_model_load(path, &m, err);
    if (s)
        return s;
    *n_vocab = m.hp.n_vocab;
    for (int i = 0; make_ids && i < n; i++)
        ids[i] = (int32_t)(((uint64_t)i * 7919u + (uint64_t)i * i * 104729u + 1u) %
                           (uint64_t)m.hp.n_vocab);
    *logits = malloc((size_t)n * (size_t)m.hp.n_vocab * sizeof **logits);
    if (!*logits)
        s = cm_fail(err, CM_E_NOMEM, "out of memory for the check's logits");
    if (!s)
        s = cm_ctx_new(&m, n, CM_KV_F32, n, &c, err);
    if (!s)
        s = cm_eval(c, ids, n, *logits, err);
    if (c)
        cm_ctx_free(c);
    cm_model_free(&m);
    if (s) {
        free(*logits);
        *logits = NULL;
    }
    return s;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

cm_status cm_surgery_check(const char *a, const char *b, int n_tokens, cm_surg_check *out,
                           cm_err *err)
{
    int n = n_tokens > 0 ? n_tokens : 16, va = 0, vb = 0;
    float *la = NULL, *lb = NULL;
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    memset(out, 0, sizeof *out);
    if (!ids)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    cm_status s = eval_model(a, ids, 1, n, &la, &va, err);
    if (!s)
        s = eval_model(b, ids, 0, n, &lb, &vb, err);
    if (!s && va != vb)
        s = cm_fail(err, CM_E_FORMAT, "check: %s has %d tokens, %s %d", a, va, b, vb);
    for (int t = 0; !s && t < n; t++) {
        const float *x = la + (size_t)t * va, *y = lb + (size_t)t * va;
        for (int i = 0; i < va; i++) {
            double d = fabs((double)x[i] - y[i]);
            if (!(d <= out->max_abs)) /* NaN counts as the worst */
                out->max_abs = isnan(d) ? INFINITY : d;
            if (fabs(x[i]) > out->max_ref)
                out->max_ref = fabs(x[i]);
        }
        out->argmax_same += argmax(x, va) == argmax(y, va);
    }
    out->n_tokens = n;
    out->n_vocab = va;
    free(ids);
    free(la);
    free(lb);
    return s;
}

/* The limit scales with the logits: F32 rounding of a sum is relative to its
 * size, and a trained model's logits reach 10-30 where a fixture's stay near
 * 1, so a fixed absolute limit would fail a correct model.  A wrong surgery
 * moves logits by a sizeable fraction of themselves, far above either. */
static double check_limit(const cm_surg_check *c, double tol)
{
    return tol * (c->max_ref > 1 ? c->max_ref : 1);
}

/* "check: max |logits(OUT) - logits(IN)| = 2.4e-07 (logits up to 3.1) over
 * 16 tokens x 1000, argmax equal 16/16; limit 1e-05 x 3.1: ok" */
static void print_check(FILE *log, const cm_surg_check *c, double tol)
{
    if (!log)
        return;
    fprintf(log, "check: max |logits(OUT) - logits(IN)| = %.3g (logits up to %.3g) over %d "
            "tokens x %d, argmax equal %d/%d; ", c->max_abs, c->max_ref, c->n_tokens, c->n_vocab,
            c->argmax_same, c->n_tokens);
    if (tol > 0)
        fprintf(log, "limit %g x %.3g: %s\n", tol, c->max_ref > 1 ? c->max_ref : 1,
                c->max_abs <= check_limit(c, tol) ? "ok" : "FAILED");
    else
        fprintf(log, "no limit (the limit holds for F32 weights without noise)\n");
}

cm_status surg_finish(gguf_writer *w, const char *out, const char *check_in, int n_tokens,
                      double tol, FILE *log, cm_surg_check *chk, cm_err *err)
{
    cm_atomic_file af;
    cm_surg_check local;
    cm_status s = cm_atomic_open(&af, out, 0644, err);
    if (s)
        return s;
    s = gguf_writer_finish_fd(w, af.fd, err);
    if (!s && check_in) {
        chk = chk ? chk : &local;
        s = cm_surgery_check(check_in, af.tmp, n_tokens, chk, err);
        if (s && err) { /* the temporary's name means nothing to the user */
            char why[sizeof err->msg];
            memcpy(why, err->msg, sizeof why);
            cm_fail(err, s, "%s: the written model fails to load or run (%s)", out, why);
        }
        if (!s)
            print_check(log, chk, tol);
        if (!s && tol > 0 && !(chk->max_abs <= check_limit(chk, tol)))
            s = cm_fail(err, CM_E_RANGE, "%s: check failed: max |logits difference| %.3g > %.3g; "
                        "nothing written", out, chk->max_abs, check_limit(chk, tol));
    }
    if (s) {
        cm_atomic_abort(&af);
        return s;
    }
    return cm_atomic_commit(&af, CM_ATOMIC_FSYNC | CM_ATOMIC_SYNC_DIR, err);
}
