/* sweep.c - quantization sweeps (method in sweep.h): planning, the base
 * references, in-memory quantization, the measurements, and the results
 * files (CSV, JSON) with the per-scheme disparity line. */
#define _GNU_SOURCE
#include "eval/sweep.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "util/json.h"
#include "eval/corpus.h"
#include "util/atomic_file.h"
#include "engine/model.h"
#include "experts/pack.h"
#include "eval/perplexity.h"
#include "quant/quant.h"
#include "tokenizer/tokenizer.h"

typedef struct {
    const char *name;
    char member[32];   /* the member the language routes to; "" for a plain model */
    int32_t *ids;
    size_t n_ids;
    int n_chunk;
} sw_lang;

/* One (language, member) measured in every scheme, with its base reference. */
typedef struct {
    int lang;
    char member[32];   /* "" for a plain model */
    int fd;            /* the base log-probabilities (an unlinked file), or -1 */
    double base_ppl;
    int need;          /* some scheme still lacks this pair's row */
} sw_pair;

struct cm_sweep {
    const cm_sweep_config *cfg;
    cm_model base;
    int loaded, is_pack, n_members;
    char members[CM_PACK_MAX_MEMBERS][32];
    sw_lang langs[CM_SWEEP_MAX_LANGS];
    sw_pair *pairs;
    int n_pairs;
    unsigned char *todo; /* [scheme * n_pairs + pair]: 1 = row to measure */
    /* while measuring */
    const cm_sweep_hooks *h;
    cm_sweep_progress prog;
    double t0;
    int64_t done_before; /* tokens of the evaluations finished so far */
    char what[96];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void say(const cm_sweep *sw, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const cm_sweep *sw, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    if (!sw->h || !sw->h->log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    sw->h->log(sw->h->user, line);
}

/* ------------------------------------------------------------ planning */

/* Requantizing compounds the first quantization's error with the second's,
 * so the sweep would measure neither: only float weights are accepted. */
static cm_status check_float(const cm_model *m, cm_err *err)
{
    char tn[32];
    for (uint64_t i = 0; i < m->file.n_tensors; i++) {
        const gguf_tensor *t = &m->file.tensors[i];
        const cm_type_info *ti = cm_type_get(t->type);
        if (ti && ti->block_elems > 1)
            return cm_fail(err, CM_E_UNSUPPORTED, "%s is already quantized (tensor %.*s is %s): "
                           "sweep quantizes the f32, f16 or bf16 original, since quantizing a "
                           "quantized model compounds two errors", m->path, (int)t->name.len,
                           t->name.ptr, cm_type_name(t->type, tn));
    }
    return CM_OK;
}

/* As `codemoe run --lang`: the language's expert, else the fallback, else
 * the first expert. */
static void route(const cm_sweep *sw, const char *lang, char *member)
{
    member[0] = 0;
    if (!sw->is_pack)
        return;
    for (int i = 0; i < sw->n_members; i++)
        if (!strcmp(sw->members[i], lang)) {
            snprintf(member, 32, "%s", lang);
            return;
        }
    for (int i = 0; i < sw->n_members; i++)
        if (!strcmp(sw->members[i], CM_PACK_FALLBACK)) {
            snprintf(member, 32, "%s", CM_PACK_FALLBACK);
            return;
        }
    snprintf(member, 32, "%s", sw->members[0]);
}

static cm_status plan_pairs(cm_sweep *sw, cm_err *err)
{
    const cm_sweep_config *c = sw->cfg;
    int per_lang = sw->is_pack && c->cross ? sw->n_members : 1;
    sw->pairs = calloc((size_t)c->n_langs * per_lang, sizeof *sw->pairs);
    if (!sw->pairs)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (int l = 0; l < c->n_langs; l++) {
        sw->langs[l].name = c->langs[l];
        route(sw, c->langs[l], sw->langs[l].member);
        for (int k = 0; k < per_lang; k++) {
            sw_pair *p = &sw->pairs[sw->n_pairs++];
            p->lang = l;
            p->fd = -1;
            snprintf(p->member, sizeof p->member, "%s",
                     per_lang > 1 ? sw->members[k] : sw->langs[l].member);
        }
    }
    return CM_OK;
}

static cm_status check_config(const cm_sweep_config *c, cm_err *err)
{
    if (!c->model || !c->corpus || !c->langs || !c->schemes)
        return cm_fail(err, CM_E_USAGE, "sweep: missing model, corpus, languages or schemes");
    if (c->n_langs < 1 || c->n_langs > CM_SWEEP_MAX_LANGS)
        return cm_fail(err, CM_E_USAGE, "sweep: %d languages (1 to %d)", c->n_langs,
                       CM_SWEEP_MAX_LANGS);
    if (c->n_schemes < 1 || c->n_schemes > CM_SWEEP_MAX_SCHEMES)
        return cm_fail(err, CM_E_USAGE, "sweep: %d schemes (1 to %d)", c->n_schemes,
                       CM_SWEEP_MAX_SCHEMES);
    if (c->n_ctx < 4 || c->max_tokens < 0)
        return cm_fail(err, CM_E_USAGE, "sweep: context %d is too small", c->n_ctx);
    return CM_OK;
}

cm_status cm_sweep_open(const cm_sweep_config *cfg, cm_sweep **out, cm_err *err)
{
    *out = NULL;
    cm_status s = check_config(cfg, err);
    if (s)
        return s;
    cm_sweep *sw = calloc(1, sizeof *sw);
    if (!sw)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    sw->cfg = cfg;
    s = cm_model_load(cfg->model, &sw->base, err);
    sw->loaded = !s;
    if (!s && !sw->base.tok)
        s = cm_fail(err, CM_E_UNSUPPORTED, "%s has no tokenizer; sweep needs one", cfg->model);
    if (!s)
        s = check_float(&sw->base, err);
    if (!s) {
        sw->is_pack = sw->base.is_pack;
        sw->n_members = cm_pack_members(&sw->base.file, sw->members, CM_PACK_MAX_MEMBERS);
        if (sw->is_pack && sw->n_members == 0)
            s = cm_fail(err, CM_E_FORMAT, "%s is a pack without members", cfg->model);
    }
    if (!s)
        s = plan_pairs(sw, err);
    if (s)
        cm_sweep_free(sw);
    else
        *out = sw;
    return s;
}

void cm_sweep_free(cm_sweep *sw)
{
    if (!sw)
        return;
    for (int i = 0; i < sw->n_pairs; i++)
        if (sw->pairs[i].fd >= 0)
            close(sw->pairs[i].fd);
    for (int l = 0; l < CM_SWEEP_MAX_LANGS; l++)
        free(sw->langs[l].ids);
    free(sw->pairs);
    free(sw->todo);
    if (sw->loaded)
        cm_model_free(&sw->base);
    free(sw);
}

const char *cm_sweep_route(const cm_sweep *sw, const char *lang)
{
    for (int l = 0; l < sw->cfg->n_langs; l++)
        if (!strcmp(sw->langs[l].name, lang))
            return sw->langs[l].member;
    return "";
}

int cm_sweep_is_pack(const cm_sweep *sw)
{
    return sw->is_pack;
}

/* ------------------------------------------------------------ the text */

/* The corpus is read only as far as max_tokens needs (as `codemoe
 * perplexity` does, so both see the same tokens): a generous byte budget,
 * more if it gave too few tokens.  The margin keeps the cut far from the
 * end of the text read, where the last tokens could differ from those of
 * the full text. */
static cm_status lang_ids(const cm_sweep *sw, sw_lang *L, cm_err *err)
{
    const cm_sweep_config *c = sw->cfg;
    const size_t margin = 1024, cap = (size_t)c->max_tokens;
    size_t budget = cap ? (cap + margin) * 8 : 0;
    cm_status s;
    for (;;) {
        cm_buf text = {0};
        cm_corpus_info info = {0};
        s = cm_corpus_load(c->corpus, L->name, c->split, budget, &text, &info, err);
        free(L->ids);
        L->ids = NULL;
        if (!s)
            s = cm_tokenize(sw->base.tok, text.p ? text.p : "", text.len,
                            cm_tok_add_bos(sw->base.tok), 0, &L->ids, &L->n_ids, err);
        cm_buf_free(&text);
        if (s || info.complete || !cap || L->n_ids >= cap + margin)
            break;
        budget *= 4;
    }
    if (s)
        return s;
    if (cap && L->n_ids > cap)
        L->n_ids = cap;
    L->n_chunk = cm_ppl_n_chunks(L->n_ids, c->n_ctx, 0);
    if (L->n_chunk < 2)
        return cm_fail(err, CM_E_RANGE, "%s: the corpus gives %zu tokens; -c %d needs at least "
                       "%d (two chunks)", L->name, L->n_ids, c->n_ctx, 2 * c->n_ctx);
    return CM_OK;
}

static int find_scheme(const cm_sweep *sw, const char *name)
{
    for (int i = 0; i < sw->cfg->n_schemes; i++)
        if (!strcmp(sw->cfg->schemes[i]->name, name))
            return i;
    return -1;
}

static int find_pair(const cm_sweep *sw, const char *lang, const char *member)
{
    for (int i = 0; i < sw->n_pairs; i++)
        if (!strcmp(sw->langs[sw->pairs[i].lang].name, lang) &&
            !strcmp(sw->pairs[i].member, member))
            return i;
    return -1;
}

/* Crosses the done rows off; a done row made with another context would
 * mix two measurements in one table. */
static cm_status mark_done(cm_sweep *sw, const cm_sweep_row *done, size_t n_done, cm_err *err)
{
    for (size_t i = 0; i < n_done; i++) {
        const cm_sweep_row *r = &done[i];
        int si = find_scheme(sw, r->scheme), pi = find_pair(sw, r->language, r->expert);
        if (si < 0 || pi < 0)
            continue;
        if (r->ctx != sw->cfg->n_ctx)
            return cm_fail(err, CM_E_FORMAT, "the saved row (%s, %s) was measured with -c %d; "
                           "this run uses -c %d (write to another file)", r->scheme, r->language,
                           r->ctx, sw->cfg->n_ctx);
        sw->todo[si * sw->n_pairs + pi] = 0;
    }
    return CM_OK;
}

/* A saved row of a language being measured again must cover the same
 * tokens (another --max-tokens or corpus would mix two texts in a table). */
static cm_status check_tokens(const cm_sweep *sw, const sw_lang *L, const cm_sweep_row *done,
                              size_t n_done, cm_err *err)
{
    int64_t want = (int64_t)L->n_chunk * sw->cfg->n_ctx;
    for (size_t i = 0; i < n_done; i++)
        if (!strcmp(done[i].language, L->name) && find_scheme(sw, done[i].scheme) >= 0 &&
            done[i].tokens != want)
            return cm_fail(err, CM_E_FORMAT, "the saved row (%s, %s) covers %lld tokens; this run "
                           "measures %lld (another --max-tokens or corpus? write to another file)",
                           done[i].scheme, L->name, (long long)done[i].tokens, (long long)want);
    return CM_OK;
}

cm_status cm_sweep_prepare(cm_sweep *sw, const cm_sweep_row *done, size_t n_done, cm_err *err)
{
    size_t n = (size_t)sw->cfg->n_schemes * sw->n_pairs;
    free(sw->todo);
    if (!(sw->todo = malloc(n ? n : 1)))
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    memset(sw->todo, 1, n);
    cm_status s = mark_done(sw, done, n_done, err);
    for (int p = 0; p < sw->n_pairs && !s; p++) {
        sw->pairs[p].need = 0;
        for (int si = 0; si < sw->cfg->n_schemes; si++)
            sw->pairs[p].need |= sw->todo[si * sw->n_pairs + p];
    }
    /* only languages with work are read: a finished run resumes at once */
    for (int l = 0; l < sw->cfg->n_langs && !s; l++) {
        int need = 0;
        for (int p = 0; p < sw->n_pairs; p++)
            need |= sw->pairs[p].lang == l && sw->pairs[p].need;
        if (need)
            s = lang_ids(sw, &sw->langs[l], err);
        if (need && !s)
            s = check_tokens(sw, &sw->langs[l], done, n_done, err);
    }
    return s;
}

int cm_sweep_rows_todo(const cm_sweep *sw)
{
    int n = 0;
    for (int i = 0; sw->todo && i < sw->cfg->n_schemes * sw->n_pairs; i++)
        n += sw->todo[i];
    return n;
}

/* ------------------------------------------------------------ measuring */

static void on_chunk(void *user, int chunk, const cm_ppl_result *r)
{
    cm_sweep *sw = user;
    sw->prog.chunk = chunk + 1;
    sw->prog.done = sw->done_before + (int64_t)(chunk + 1) * r->n_ctx;
    sw->prog.elapsed = now_s() - sw->t0;
    if (sw->h && sw->h->progress)
        sw->h->progress(sw->h->user, &sw->prog);
}

/* Announces the next step to the progress hook. */
static void step(cm_sweep *sw, int n_chunk, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void step(cm_sweep *sw, int n_chunk, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sw->what, sizeof sw->what, fmt, ap);
    va_end(ap);
    sw->prog.what = sw->what;
    sw->prog.chunk = 0;
    sw->prog.n_chunk = n_chunk;
    sw->prog.done = sw->done_before;
    sw->prog.elapsed = now_s() - sw->t0;
    if (sw->h && sw->h->progress)
        sw->h->progress(sw->h->user, &sw->prog);
}

static cm_ppl_params ppl_params(cm_sweep *sw, const sw_lang *L)
{
    const cm_sweep_config *c = sw->cfg;
    return (cm_ppl_params){.n_ctx = c->n_ctx, .n_batch = c->n_batch, .kv = c->kv,
                           .backend = c->backend,
                           .max_chunks = L->n_chunk, .progress = on_chunk, .user = sw};
}

static int64_t pair_tokens(const cm_sweep *sw, const sw_pair *p)
{
    return (int64_t)sw->langs[p->lang].n_chunk * sw->cfg->n_ctx;
}

/* "python" for a plain model or a routed pair, "python on expert c" else. */
static void pair_label(const cm_sweep *sw, const sw_pair *p, char *buf, size_t cap)
{
    const sw_lang *L = &sw->langs[p->lang];
    if (p->member[0] && (sw->cfg->cross || strcmp(p->member, L->name)))
        snprintf(buf, cap, "%s on expert %s", L->name, p->member);
    else
        snprintf(buf, cap, "%s", L->name);
}

/* The bytes the base files of the pairs in need take at once: all of
 * them, or the largest one when they are made one at a time. */
static uint64_t base_bytes(const cm_sweep *sw, int one_at_a_time)
{
    int n_ctx = sw->cfg->n_ctx, n_pred = n_ctx - 1 - n_ctx / 2;
    uint64_t rec = 4 + 2 * (uint64_t)sw->base.hp.n_vocab, sum = 0, max = 0;
    for (int p = 0; p < sw->n_pairs; p++)
        if (sw->pairs[p].need) {
            uint64_t b = 48 + (uint64_t)sw->langs[sw->pairs[p].lang].n_chunk *
                                  ((uint64_t)n_ctx * 4 + (uint64_t)n_pred * rec);
            sum += b;
            max = b > max ? b : max;
        }
    return one_at_a_time ? max : sum;
}

static void remove_base_dir(const char *root, const char *name)
{
    char dir[1024], f[1400];
    struct dirent *e;
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    DIR *d = opendir(dir);
    if (!d)
        return;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "base-", 5)) {
            snprintf(f, sizeof f, "%s/%s", dir, e->d_name);
            unlink(f);
        }
    closedir(d);
    rmdir(dir);
}

/* A base file is unlinked once complete, but a run killed while computing
 * one leaves its directory (gigabytes at 64k tokens): the next run removes
 * those of processes that no longer exist ("codemoe-sweep.<pid>.XXXXXX"). */
static void remove_stale(const char *root)
{
    DIR *d = opendir(root);
    struct dirent *e;
    if (!d)
        return;
    while ((e = readdir(d))) {
        char *end;
        long pid;
        if (strncmp(e->d_name, "codemoe-sweep.", 14))
            continue;
        pid = strtol(e->d_name + 14, &end, 10);
        if (end == e->d_name + 14 || *end != '.' || pid <= 0 || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            remove_base_dir(root, e->d_name);
    }
    closedir(d);
}

static const char *tmp_root(const cm_sweep *sw)
{
    const char *root = sw->cfg->tmpdir ? sw->cfg->tmpdir : getenv("TMPDIR");
    return root && *root ? root : "/tmp";
}

static cm_status make_tmpdir(const cm_sweep *sw, int one_at_a_time, char *dir, size_t cap,
                             cm_err *err)
{
    const char *root = tmp_root(sw);
    snprintf(dir, cap, "%s/codemoe-sweep.%ld.XXXXXX", root, (long)getpid());
    if (!mkdtemp(dir))
        return cm_fail(err, CM_E_IO, "cannot create a temporary directory in %s: %s", root,
                       strerror(errno));
    struct statvfs v;
    uint64_t need = base_bytes(sw, one_at_a_time);
    if (statvfs(dir, &v) == 0 && need > (uint64_t)v.f_bavail * v.f_frsize) {
        rmdir(dir);
        return cm_fail(err, CM_E_IO, "the base log-probabilities need %.2f GB in %s but only "
                       "%.2f GB are free (--tmpdir DIR elsewhere, or a smaller --max-tokens)",
                       need / 1e9, root, (double)v.f_bavail * v.f_frsize / 1e9);
    }
    say(sw, "base log-probabilities: %.1f MB in %s%s (deleted as the run ends)", need / 1e6, root,
        one_at_a_time ? ", one language at a time" : "");
    return CM_OK;
}

/* Evaluates the unquantized model on one pair, saving its log-probabilities
 * to a file in dir that is unlinked at once and kept open, or with dir NULL
 * to a memfd: nothing is left behind however the run ends, and the KLD
 * runs read it as /proc/self/fd/N. */
static cm_status base_pair(cm_sweep *sw, sw_pair *p, const char *dir, cm_err *err)
{
    const sw_lang *L = &sw->langs[p->lang];
    char path[600], label[96];
    cm_ppl_result r;
    cm_ppl_params pp = ppl_params(sw, L);
    cm_status s = CM_OK;
    pair_label(sw, p, label, sizeof label);
    if (dir)
        snprintf(path, sizeof path, "%s/base-%d.lf", dir, (int)(p - sw->pairs));
    else
        snprintf(path, sizeof path, "the base log-probabilities of %s (in memory)", label);
    step(sw, L->n_chunk, "base %s", label);
    if (sw->is_pack)
        s = cm_model_select_expert(&sw->base, p->member, err);
    pp.save_logits = path;
    pp.save_temporary = 1; /* read back by this run, deleted at its end */
    if (!s && !dir) {
        if ((p->fd = memfd_create("codemoe-sweep-base", MFD_CLOEXEC)) < 0)
            s = cm_fail(err, CM_E_IO, "memfd_create: %s", strerror(errno));
        pp.save_to_fd = 1, pp.save_fd = p->fd;
    }
    if (!s)
        s = cm_perplexity(&sw->base, L->ids, L->n_ids, &pp, &r, err);
    if (!s && dir && (p->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        s = cm_fail(err, CM_E_IO, "cannot open %s: %s", path, strerror(errno));
    if (dir)
        unlink(path);
    if (s)
        return s;
    p->base_ppl = r.ppl;
    sw->done_before += pair_tokens(sw, p);
    say(sw, "base %s: PPL %.4f over %lld tokens (%.1f s)", label, r.ppl,
          (long long)pair_tokens(sw, p), r.seconds);
    return CM_OK;
}

static cm_status make_bases(cm_sweep *sw, cm_err *err)
{
    char dir[560];
    int any = 0;
    for (int p = 0; p < sw->n_pairs; p++)
        any |= sw->pairs[p].need;
    if (!any)
        return CM_OK;
    cm_status s = make_tmpdir(sw, 0, dir, sizeof dir, err);
    for (int p = 0; p < sw->n_pairs && !s; p++)
        if (sw->pairs[p].need)
            s = base_pair(sw, &sw->pairs[p], dir, err);
    rmdir(dir);
    return s;
}

/* ------------------------------------------------------------ quantizing */

typedef struct {
    int fd;              /* the memfd holding the quantized GGUF */
    char path[64];       /* /proc/self/fd/N */
    uint64_t bytes, fallbacks;
    double bpw;
} sw_quant;

/* llama-quantize says per tensor that rows not filling the wanted type's
 * blocks fall back to a legacy type; one line per scheme says it here:
 * "q4_k_m: 15 tensors fall back ... (rows of 64 elements ...): q4_K -> q5_0 x13". */
typedef struct {
    uint32_t wanted, type;
    int n;
} fb_kind;

static void fallback_kinds(const cm_quantize_job *j, fb_kind *kind, int *nk, int64_t *rows,
                           int *n_rows, int *total)
{
    for (size_t i = 0; i < cm_quantize_job_count(j); i++) {
        const cm_qtensor *t = cm_quantize_job_tensor(j, i, NULL);
        int k = 0, r = 0;
        if (!t->fallback)
            continue;
        ++*total;
        while (r < *n_rows && rows[r] != t->ne[0])
            r++;
        if (r == *n_rows && *n_rows < 4)
            rows[(*n_rows)++] = t->ne[0];
        while (k < *nk && (kind[k].wanted != t->wanted || kind[k].type != t->type))
            k++;
        if (k == *nk && *nk < 8)
            kind[(*nk)++] = (fb_kind){t->wanted, t->type, 0};
        if (k < *nk)
            kind[k].n++;
    }
}

static void log_fallbacks(const cm_sweep *sw, const cm_qmix *mix, const cm_quantize_job *j)
{
    fb_kind kind[8];
    int64_t rows[4];
    int nk = 0, n_rows = 0, total = 0;
    char types[512], lens[96], a[32], b[32];
    size_t o = 0, ol = 0;
    fallback_kinds(j, kind, &nk, rows, &n_rows, &total);
    if (!total)
        return;
    types[0] = lens[0] = 0;
    for (int k = 0; k < nk && o < sizeof types; k++)
        o += (size_t)snprintf(types + o, sizeof types - o, "%s%s -> %s x%d", k ? ", " : "",
                              cm_type_name(kind[k].wanted, a), cm_type_name(kind[k].type, b),
                              kind[k].n);
    for (int r = 0; r < n_rows && ol < sizeof lens; r++)
        ol += (size_t)snprintf(lens + ol, sizeof lens - ol, "%s%lld", r ? ", " : "",
                               (long long)rows[r]);
    say(sw, "%s: %d tensor%s fall%s back to a legacy type, as llama-quantize does (rows of %s "
        "elements do not fill the wanted type's blocks): %s", mix->name, total,
        total == 1 ? "" : "s", total == 1 ? "s" : "", lens, types);
}

/* Quantizes the base into a memfd: the model never touches the disk. */
static cm_status quantize_mem(cm_sweep *sw, const cm_qmix *mix, sw_quant *q, cm_err *err)
{
    cm_quantize_opts qo = {.quiet = 1, .pack = sw->is_pack}; /* log NULL: silent */
    cm_quantize_job *j = NULL;
    gguf_writer *w = NULL;
    cm_quantize_stats st;
    struct stat sb;
    double t = now_s();
    step(sw, 0, "quantizing %s", mix->name);
    cm_status s = cm_quantize_job_new(&sw->base.file, mix, &qo, &j, err);
    if (!s && (q->fd = memfd_create("codemoe-sweep", MFD_CLOEXEC)) < 0)
        s = cm_fail(err, CM_E_IO, "memfd_create: %s", strerror(errno));
    if (!s && !(w = gguf_writer_new(3)))
        s = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!s)
        s = cm_quantize_job_add(j, w, err);
    if (!s)
        s = gguf_writer_finish_fd(w, q->fd, err);
    if (!s && fstat(q->fd, &sb) != 0)
        s = cm_fail(err, CM_E_IO, "fstat: %s", strerror(errno));
    if (!s) {
        cm_quantize_job_stats(j, &st);
        snprintf(q->path, sizeof q->path, "/proc/self/fd/%d", q->fd);
        q->bytes = (uint64_t)sb.st_size;
        q->fallbacks = st.n_fallback;
        q->bpw = st.n_elements ? 8.0 * (double)st.bytes_out / (double)st.n_elements : 0;
        log_fallbacks(sw, mix, j);
        say(sw, "quantized to %s: %.2f MiB, %.3f bits per weight (%.1f s)", mix->name,
              q->bytes / 1048576.0, q->bpw, now_s() - t);
    }
    gguf_writer_free(w);
    cm_quantize_job_free(j);
    return s;
}

/* ------------------------------------------------------------ rows */

static void fill_row(const cm_sweep *sw, const cm_qmix *mix, const sw_pair *p, const sw_quant *q,
                     const cm_ppl_result *r, cm_sweep_row *row)
{
    memset(row, 0, sizeof *row);
    snprintf(row->scheme, sizeof row->scheme, "%s", mix->name);
    snprintf(row->language, sizeof row->language, "%s", sw->langs[p->lang].name);
    snprintf(row->expert, sizeof row->expert, "%s", p->member);
    row->bits_per_weight = q->bpw;
    row->model_bytes = q->bytes;
    row->ppl = r->ppl;
    row->base_ppl = p->base_ppl;
    row->ppl_increase_pct = 100.0 * (r->ppl / p->base_ppl - 1.0);
    row->kld = r->kld;
    row->top1_agreement = r->top1;
    row->tokens = (int64_t)r->n_chunk * r->n_ctx;
    row->seconds = r->seconds;
    row->ctx = r->n_ctx;
    row->fallback_tensors = q->fallbacks;
}

static cm_status measure_row(cm_sweep *sw, int si, int pi, cm_model *m, const sw_quant *q,
                             cm_err *err)
{
    const cm_qmix *mix = sw->cfg->schemes[si];
    sw_pair *p = &sw->pairs[pi];
    const sw_lang *L = &sw->langs[p->lang];
    char base[64], label[96];
    cm_ppl_params pp = ppl_params(sw, L);
    cm_ppl_result r;
    cm_sweep_row row;
    cm_status s = CM_OK;
    pair_label(sw, p, label, sizeof label);
    step(sw, L->n_chunk, "%s %s", mix->name, label);
    if (m->is_pack)
        s = cm_model_select_expert(m, p->member, err);
    snprintf(base, sizeof base, "/proc/self/fd/%d", p->fd);
    pp.kld_base = base;
    if (!s)
        s = cm_perplexity(m, L->ids, L->n_ids, &pp, &r, err);
    if (!s && r.n_chunk != L->n_chunk)
        s = cm_fail(err, CM_E_FORMAT, "%s: the base reference holds %d chunks, not %d", label,
                    r.n_chunk, L->n_chunk);
    if (s)
        return s;
    fill_row(sw, mix, p, q, &r, &row);
    sw->done_before += pair_tokens(sw, p);
    sw->prog.rows_done++;
    if (sw->h && sw->h->row && (s = sw->h->row(sw->h->user, &row, err)))
        return s;
    sw->todo[si * sw->n_pairs + pi] = 0;
    return CM_OK;
}

static int scheme_has_work(const cm_sweep *sw, int si)
{
    for (int p = 0; p < sw->n_pairs; p++)
        if (sw->todo[si * sw->n_pairs + p])
            return 1;
    return 0;
}

static cm_status run_scheme(cm_sweep *sw, int si, cm_err *err)
{
    const cm_qmix *mix = sw->cfg->schemes[si];
    sw_quant q = {.fd = -1};
    cm_model m;
    int any = scheme_has_work(sw, si), loaded = 0;
    cm_status s = any ? quantize_mem(sw, mix, &q, err) : CM_OK;
    if (any && !s)
        loaded = !(s = cm_model_load(q.path, &m, err));
    for (int p = 0; p < sw->n_pairs && any && !s; p++)
        if (sw->todo[si * sw->n_pairs + p])
            s = measure_row(sw, si, p, &m, &q, err);
    if (loaded)
        cm_model_free(&m);
    if (q.fd >= 0)
        close(q.fd);
    if (!s && sw->h && sw->h->scheme_done)
        sw->h->scheme_done(sw->h->user, mix);
    return s;
}

/* The order of the work.  Language-major -- each language's base, then
 * every scheme on it -- keeps one base file at a time, which stays in the
 * page cache while the schemes read it back (at 64k tokens and a 49k
 * vocabulary it is 3.2 GB; seven of them at once do not stay cached and
 * are read back from disk five times), but it keeps every quantized model
 * loaded.  Taken when those fit in a quarter of the RAM (estimated at each
 * scheme's nominal bits + 2 per weight); otherwise scheme-major: all the
 * bases first, then one quantized model at a time. */
static double phys_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (double)pages * (double)page : 0;
}

static int language_major(const cm_sweep *sw)
{
    double weights = 0, bits = 0;
    if (sw->cfg->order != CM_SWEEP_AUTO)
        return sw->cfg->order == CM_SWEEP_LANGUAGE_MAJOR;
    for (uint64_t i = 0; i < sw->base.file.n_tensors; i++) {
        const int64_t *ne = sw->base.file.tensors[i].ne;
        weights += (double)ne[0] * (double)ne[1] * (double)ne[2] * (double)ne[3];
    }
    for (int si = 0; si < sw->cfg->n_schemes; si++)
        bits += cm_sweep_nominal_bits(sw->cfg->schemes[si]) + 2;
    return weights * bits / 8 <= phys_bytes() / 4;
}

/* Quantizes and loads every scheme with rows to measure (loaded[si] = 1). */
static cm_status load_schemes(cm_sweep *sw, sw_quant *q, cm_model *m, char *loaded, cm_err *err)
{
    cm_status s = CM_OK;
    for (int si = 0; si < sw->cfg->n_schemes && !s; si++)
        if (scheme_has_work(sw, si) && !(s = quantize_mem(sw, sw->cfg->schemes[si], &q[si], err)))
            loaded[si] = !(s = cm_model_load(q[si].path, &m[si], err));
    return s;
}

static cm_status measure_language_major(cm_sweep *sw, cm_err *err)
{
    const int ns = sw->cfg->n_schemes;
    sw_quant *q = calloc((size_t)ns, sizeof *q);
    cm_model *m = calloc((size_t)ns, sizeof *m);
    char *loaded = calloc((size_t)ns, 1), dir[560];
    if (!q || !m || !loaded) {
        free(q), free(m), free(loaded);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    for (int si = 0; si < ns; si++)
        q[si].fd = -1;
    cm_status s = load_schemes(sw, q, m, loaded, err);
    /* one language's base at a time: in memory when it fits in a quarter
     * of the RAM and no --tmpdir is asked for (no disk writes and reads at
     * all), else in the temporary directory */
    int any = 0, made = 0;
    int in_memory = !sw->cfg->tmpdir && (double)base_bytes(sw, 1) <= phys_bytes() / 4;
    for (int p = 0; p < sw->n_pairs; p++)
        any |= sw->pairs[p].need;
    if (!s && any && !in_memory)
        made = !(s = make_tmpdir(sw, 1, dir, sizeof dir, err));
    else if (!s && any)
        say(sw, "base log-probabilities: %.1f MB in memory, one language at a time",
            (double)base_bytes(sw, 1) / 1e6);
    for (int p = 0; p < sw->n_pairs && (made || in_memory) && !s; p++) {
        if (!sw->pairs[p].need)
            continue;
        s = base_pair(sw, &sw->pairs[p], made ? dir : NULL, err);
        for (int si = 0; si < ns && !s; si++)
            if (sw->todo[si * sw->n_pairs + p])
                s = measure_row(sw, si, p, &m[si], &q[si], err);
        close(sw->pairs[p].fd); /* its file is gone with it */
        sw->pairs[p].fd = -1;
    }
    if (made)
        rmdir(dir);
    for (int si = 0; si < ns; si++) {
        if (loaded[si])
            cm_model_free(&m[si]);
        if (q[si].fd >= 0)
            close(q[si].fd);
        if (!s && sw->h && sw->h->scheme_done)
            sw->h->scheme_done(sw->h->user, sw->cfg->schemes[si]);
    }
    free(q), free(m), free(loaded);
    return s;
}

cm_status cm_sweep_measure(cm_sweep *sw, const cm_sweep_hooks *h, cm_err *err)
{
    if (!sw->todo)
        return cm_fail(err, CM_E_USAGE, "cm_sweep_measure before cm_sweep_prepare");
    sw->h = h;
    sw->t0 = now_s();
    remove_stale(tmp_root(sw));
    int lm = language_major(sw);
    say(sw, "order: %s", lm ? "language by language (every quantized model loaded)"
                            : "scheme by scheme (one quantized model at a time)");
    sw->done_before = 0;
    memset(&sw->prog, 0, sizeof sw->prog);
    for (int p = 0; p < sw->n_pairs; p++) {
        if (!sw->pairs[p].need)
            continue;
        sw->prog.total += pair_tokens(sw, &sw->pairs[p]);
        for (int si = 0; si < sw->cfg->n_schemes; si++)
            if (sw->todo[si * sw->n_pairs + p]) {
                sw->prog.total += pair_tokens(sw, &sw->pairs[p]);
                sw->prog.rows_total++;
            }
    }
    cm_status s;
    if (lm) {
        s = measure_language_major(sw, err);
    } else {
        s = make_bases(sw, err);
        for (int si = 0; si < sw->cfg->n_schemes && !s; si++)
            s = run_scheme(sw, si, err);
    }
    sw->h = NULL;
    return s;
}

/* ------------------------------------------------------------ CSV */

const char CM_SWEEP_CSV_HEADER[] =
    "scheme,language,bits_per_weight,model_bytes,ppl,ppl_increase_pct,kld,top1_agreement,"
    "tokens,seconds,expert,base_ppl,ctx,fallback_tensors";
#define CSV_FIELDS 14
#define CSV_FIELD_MAX 64

/* A field as RFC 4180 wants it: quoted (quotes doubled) when it holds a
 * comma, quote, CR or LF. */
static void csv_field(FILE *f, const char *s)
{
    if (!s[strcspn(s, ",\"\r\n")]) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void csv_row(FILE *f, const cm_sweep_row *r)
{
    csv_field(f, r->scheme);
    fputc(',', f);
    csv_field(f, r->language);
    fprintf(f, ",%.6f,%llu,%.10g,%.10g,%.10g,%.10g,%lld,%.3f,", r->bits_per_weight,
            (unsigned long long)r->model_bytes, r->ppl, r->ppl_increase_pct, r->kld,
            r->top1_agreement, (long long)r->tokens, r->seconds);
    csv_field(f, r->expert);
    fprintf(f, ",%.10g,%d,%llu\r\n", r->base_ppl, r->ctx, (unsigned long long)r->fallback_tensors);
}

cm_status cm_sweep_csv_write(const char *path, const cm_sweep_row *rows, size_t n, cm_err *err)
{
    cm_atomic_file af;
    cm_status s = cm_atomic_open(&af, path, 0666, err);
    if (s)
        return s;
    FILE *f = cm_atomic_stream(&af);
    if (!f) {
        cm_atomic_abort(&af);
        return cm_fail(err, CM_E_NOMEM, "cannot write %s: out of memory", path);
    }
    fprintf(f, "%s\r\n", CM_SWEEP_CSV_HEADER);
    for (size_t i = 0; i < n; i++)
        csv_row(f, &rows[i]);
    /* synced: an interrupted sweep resumes from this file */
    return cm_atomic_commit(&af, CM_ATOMIC_FSYNC, err);
}

/* The next record of t[*pos..len) split into fields, unquoted.  Returns
 * the field count, or -1 for a malformed record (a stray quote, a field
 * longer than any this table holds, too many fields). */
static int csv_record(const char *t, size_t len, size_t *pos, char f[][CSV_FIELD_MAX], int max)
{
    size_t i = *pos;
    int nf = 0, k = 0, inq = 0, was_quoted = 0;
    while (i < len) {
        char c = t[i++];
        if (inq && c == '"' && i < len && t[i] == '"')
            i++; /* "" inside quotes: one quote */
        else if (inq && c == '"') {
            inq = 0;
            continue;
        } else if (!inq && c == '"') {
            if (k || was_quoted)
                return -1;
            inq = was_quoted = 1;
            continue;
        } else if (!inq && (c == ',' || c == '\n' || c == '\r')) {
            f[nf][k] = 0;
            if (c != ',') {
                i += c == '\r' && i < len && t[i] == '\n';
                break;
            }
            if (++nf >= max)
                return -1;
            k = was_quoted = 0;
            continue;
        } else if (was_quoted && !inq)
            return -1; /* text after a closing quote */
        if (k >= CSV_FIELD_MAX - 1)
            return -1;
        f[nf][k++] = c;
    }
    if (inq)
        return -1;
    f[nf][k] = 0;
    *pos = i;
    return nf + 1;
}

static int parse_num(const char *s, double *out)
{
    char *end;
    if (!*s)
        return -1;
    *out = strtod(s, &end);
    return *end ? -1 : 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!*s || *s == '-')
        return -1;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return *end || errno ? -1 : 0;
}

static int name_ok(const char *s, size_t cap)
{
    return strlen(s) < cap;
}

/* Fields in header order into a row; -1 when one is malformed. */
static int row_from_fields(char f[][CSV_FIELD_MAX], cm_sweep_row *r)
{
    uint64_t tokens, ctx;
    memset(r, 0, sizeof *r);
    if (!name_ok(f[0], sizeof r->scheme) || !name_ok(f[1], sizeof r->language) ||
        !name_ok(f[10], sizeof r->expert) || !f[0][0] || !f[1][0])
        return -1;
    strcpy(r->scheme, f[0]);
    strcpy(r->language, f[1]);
    strcpy(r->expert, f[10]);
    if (parse_num(f[2], &r->bits_per_weight) || parse_u64(f[3], &r->model_bytes) ||
        parse_num(f[4], &r->ppl) || parse_num(f[5], &r->ppl_increase_pct) ||
        parse_num(f[6], &r->kld) || parse_num(f[7], &r->top1_agreement) ||
        parse_u64(f[8], &tokens) || parse_num(f[9], &r->seconds) ||
        parse_num(f[11], &r->base_ppl) || parse_u64(f[12], &ctx) ||
        parse_u64(f[13], &r->fallback_tensors) || tokens > INT64_MAX || ctx > 1 << 24)
        return -1;
    r->tokens = (int64_t)tokens;
    r->ctx = (int)ctx;
    return 0;
}

static cm_status csv_parse(const char *path, const char *t, size_t len, cm_sweep_row **rows,
                           size_t *n, cm_err *err)
{
    char f[CSV_FIELDS + 1][CSV_FIELD_MAX], head[sizeof CM_SWEEP_CSV_HEADER + 4] = "";
    size_t pos = 0, cap = 0;
    for (int line = 1; pos < len; line++) {
        int nf = csv_record(t, len, &pos, f, CSV_FIELDS + 1);
        if (nf == 1 && !f[0][0])
            continue; /* a blank line */
        if (line == 1) {
            for (int i = 0; i < nf; i++)
                snprintf(head + strlen(head), sizeof head - strlen(head), "%s%s", i ? "," : "",
                         f[i]);
            if (nf != CSV_FIELDS || strcmp(head, CM_SWEEP_CSV_HEADER))
                return cm_fail(err, CM_E_FORMAT, "%s is not a sweep results file (its header "
                               "is not \"%s\")", path, CM_SWEEP_CSV_HEADER);
            continue;
        }
        if (*n == cap) {
            cm_sweep_row *g = realloc(*rows, (cap = cap ? 2 * cap : 64) * sizeof *g);
            if (!g)
                return cm_fail(err, CM_E_NOMEM, "out of memory");
            *rows = g;
        }
        if (nf != CSV_FIELDS || row_from_fields(f, &(*rows)[*n]))
            return cm_fail(err, CM_E_FORMAT, "%s: record %d is malformed", path, line);
        ++*n;
    }
    return CM_OK;
}

cm_status cm_sweep_csv_read(const char *path, cm_sweep_row **rows, size_t *n, cm_err *err)
{
    *rows = NULL;
    *n = 0;
    FILE *f;
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT)
        return CM_OK; /* a new sweep */
    cm_status s = cm_fopen_regular(path, &f, err);
    if (s)
        return s;
    cm_buf b = {0};
    char chunk[65536];
    size_t got;
    while (!s && (got = fread(chunk, 1, sizeof chunk, f)) > 0)
        s = cm_buf_append(&b, chunk, got, err);
    if (!s && ferror(f))
        s = cm_fail(err, CM_E_IO, "cannot read %s", path);
    fclose(f);
    if (!s)
        s = csv_parse(path, b.p, b.len, rows, n, err);
    cm_buf_free(&b);
    if (s) {
        free(*rows);
        *rows = NULL;
        *n = 0;
    }
    return s;
}

/* ------------------------------------------------------------ JSON */

/* JSON has no NaN or infinity: a model whose PPL overflowed gets null. */
static void json_num(FILE *f, const char *key, double v)
{
    if (isfinite(v))
        fprintf(f, ", \"%s\": %.10g", key, v);
    else
        fprintf(f, ", \"%s\": null", key);
}

int cm_sweep_json_write(FILE *f, const cm_sweep_row *rows, size_t n)
{
    fputc('[', f);
    for (size_t i = 0; i < n; i++) {
        const cm_sweep_row *r = &rows[i];
        fprintf(f, "%s\n  {\"scheme\": ", i ? "," : "");
        json_write_string(f, r->scheme);
        fprintf(f, ", \"language\": ");
        json_write_string(f, r->language);
        json_num(f, "bits_per_weight", r->bits_per_weight);
        fprintf(f, ", \"model_bytes\": %llu", (unsigned long long)r->model_bytes);
        json_num(f, "ppl", r->ppl);
        json_num(f, "ppl_increase_pct", r->ppl_increase_pct);
        json_num(f, "kld", r->kld);
        json_num(f, "top1_agreement", r->top1_agreement);
        fprintf(f, ", \"tokens\": %lld", (long long)r->tokens);
        json_num(f, "seconds", r->seconds);
        fprintf(f, ", \"expert\": ");
        json_write_string(f, r->expert);
        json_num(f, "base_ppl", r->base_ppl);
        fprintf(f, ", \"ctx\": %d, \"fallback_tensors\": %llu}", r->ctx,
                (unsigned long long)r->fallback_tensors);
    }
    fputs(n ? "\n]\n" : "]\n", f);
    return ferror(f) ? -1 : 0;
}

/* ------------------------------------------------------------ disparity */

int cm_sweep_nominal_bits(const cm_qmix *mix)
{
    switch (mix->base) {
    case CM_TYPE_F32: return 32;
    case CM_TYPE_F16: case CM_TYPE_BF16: return 16;
    case CM_TYPE_Q8_0: return 8;
    case CM_TYPE_Q6_K: return 6;
    case CM_TYPE_Q5_0: case CM_TYPE_Q5_1: case CM_TYPE_Q5_K: return 5;
    case CM_TYPE_Q4_0: case CM_TYPE_Q4_1: case CM_TYPE_Q4_K: return 4;
    case CM_TYPE_Q3_K: return 3;
    case CM_TYPE_Q2_K: return 2;
    default: return 0;
    }
}

int cm_sweep_disparity(const cm_sweep_row *rows, size_t n, const cm_qmix *mix, char *line,
                       size_t cap)
{
    const cm_sweep_row *hi = NULL, *lo = NULL;
    int k = 0, bits = cm_sweep_nominal_bits(mix);
    for (size_t i = 0; i < n; i++) {
        const cm_sweep_row *r = &rows[i];
        if (strcmp(r->scheme, mix->name))
            continue;
        k++;
        if (!hi || r->ppl_increase_pct > hi->ppl_increase_pct)
            hi = r;
        if (!lo || r->ppl_increase_pct < lo->ppl_increase_pct)
            lo = r;
    }
    if (!k)
        return -1;
    if (k == 1)
        snprintf(line, cap, "disparity at %d bits (%s): only %s measured (%+.1f%% PPL)", bits,
                 mix->name, hi->language, hi->ppl_increase_pct);
    else
        snprintf(line, cap, "disparity at %d bits (%s): %s suffers most (%+.1f%% PPL), %s least "
                 "(%+.1f%%)", bits, mix->name, hi->language, hi->ppl_increase_pct, lo->language,
                 lo->ppl_increase_pct);
    return 0;
}
