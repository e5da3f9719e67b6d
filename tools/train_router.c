/* train_router.c - trains the language router's classifier (models/router.bin).
 *
 *   tools/train_router [--corpus DIR] [-o FILE] [--seed N] [recipe options]
 *
 * Reads <corpus>/<lang>/train.jsonl.xz for the seven languages of
 * cm_known_langs (never the valid splits), holds out a tenth of the train
 * files by content hash (SHA-1 bytes 4..7 as a big-endian integer, modulo
 * 10, is 0: the corpus's own split uses bytes 0..3) to calibrate and report
 * on, and writes the model described in src/experts/router.h.  The features come
 * from cm_router_features, the classifier's own scanner, so training and
 * serving cannot diverge; before writing, the file is parsed back and
 * cm_router_classify must agree with the trainer on every held-out prompt.
 * One thread, fixed seeds, one order of floating-point operations: the same
 * corpus, options and build give the same file byte for byte.
 *
 * The model: multiclass logistic regression on hashed features scaled by
 * 1/sqrt(feature count), so that 3-line snippets and whole files share one
 * scale.  It starts from naive Bayes log-count ratios (cheap, and already
 * good on long texts) and is refined by AdaGrad on every fitting file, on
 * random snippets of 1-40 lines and on file prefixes: the snippets are what
 * fixes short prompts and languages whose n-grams are spread thin.  Several
 * members with different snippet draws are trained and their weights
 * averaged (an ensemble of linear models is one linear model); last, the
 * per-language biases are calibrated on held-out snippets so that no
 * language lags on 10-line prompts (C and C++ compete for GNU-style code). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "eval/corpus.h"
#include "experts/router.h"
#include "util/status.h"

#ifndef CM_SRCDIR
#define CM_SRCDIR "."
#endif

#define NL CM_N_KNOWN_LANGS
#define N_KINDS 4 /* held-out prompts: whole files, 3, 10, 30 lines (as bench_router) */
static const int KIND_LINES[N_KINDS] = {0, 3, 10, 30};

/* ================================================================ options */

typedef struct {
    const char *corpus, *out;
    long seed;
    long bits, members, epochs, snippets, snip_lo, snip_hi, prefixes, pref_lo, pref_hi;
    long held_snippets;
    double alpha, tau, lr, g0, bias_rate, min_grad, easy_loss, revisit, cal_mean;
} recipe;

/* The shipped recipe (bench/ROUTER.md), chosen on the held-out tenth. */
static const recipe DEFAULTS = {
    .corpus = NULL, .out = CM_SRCDIR "/models/router.bin", .seed = 20240601,
    .bits = 18, .members = 3, .epochs = 4, .snippets = 50000, .snip_lo = 1, .snip_hi = 40,
    .prefixes = 1000, .pref_lo = 20, .pref_hi = 300, .held_snippets = 30,
    .alpha = 0.3, .tau = 0.4, .lr = 0.3, .g0 = 1.0, .bias_rate = 0.001, .min_grad = 0.01,
    .easy_loss = 0.02, .revisit = 0.25, .cal_mean = 1.0,
};

#define MAX_KNOBS 32

typedef struct {
    const char *name;
    long *l;   /* exactly one of l and d is set */
    double *d;
    double lo, hi;
    const char *help;
} knob;

/* The knobs of r, for parsing and for --help. */
static int knobs(recipe *r, knob *k)
{
    const knob all[] = {
        {"--seed", &r->seed, NULL, 0, 2147483647, "random seed"},
        {"--bits", &r->bits, NULL, 10, 22, "hash bits (2^bits buckets)"},
        {"--members", &r->members, NULL, 1, 64, "models averaged (different snippet draws)"},
        {"--epochs", &r->epochs, NULL, 0, 100, "AdaGrad epochs per member"},
        {"--snippets", &r->snippets, NULL, 0, 10000000, "training snippets per language"},
        {"--snip-lo", &r->snip_lo, NULL, 1, 100000, "fewest lines of a snippet"},
        {"--snip-hi", &r->snip_hi, NULL, 1, 100000, "most lines of a snippet"},
        {"--prefixes", &r->prefixes, NULL, 0, 1000000, "file prefixes per language"},
        {"--pref-lo", &r->pref_lo, NULL, 1, 1000000, "fewest lines of a prefix"},
        {"--pref-hi", &r->pref_hi, NULL, 1, 1000000, "most lines of a prefix"},
        {"--held-snippets", &r->held_snippets, NULL, 1, 1000,
         "held-out snippets per file and length"},
        {"--alpha", NULL, &r->alpha, 1e-6, 1e6, "naive Bayes additive smoothing"},
        {"--tau", NULL, &r->tau, 0, 100, "naive Bayes log-ratios -> initial weights"},
        {"--lr", NULL, &r->lr, 0, 100, "AdaGrad step size"},
        {"--g0", NULL, &r->g0, 1e-9, 1e6, "AdaGrad initial squared-gradient sum"},
        {"--bias-rate", NULL, &r->bias_rate, 0, 10, "step size of the biases"},
        {"--min-grad", NULL, &r->min_grad, 0, 1, "skip a language's update below this |p - y|"},
        {"--easy-loss", NULL, &r->easy_loss, 0, 100, "an example under this loss is easy"},
        {"--revisit", NULL, &r->revisit, 0, 1, "chance an easy example is revisited"},
        {"--cal-mean", NULL, &r->cal_mean, 0, 100,
         "calibration: weight of the mean accuracy beside the worst 10-line one"},
    };
    _Static_assert(sizeof all / sizeof *all <= MAX_KNOBS, "MAX_KNOBS");
    memcpy(k, all, sizeof all);
    return (int)(sizeof all / sizeof *all);
}

static void usage(FILE *f)
{
    recipe r = DEFAULTS;
    knob k[MAX_KNOBS];
    int n = knobs(&r, k);
    fprintf(f, "usage: train_router [--corpus DIR] [-o FILE] [options]\n\n"
               "Trains the language router's classifier from <DIR>/<lang>/train.jsonl.xz.\n\n"
               "  --corpus DIR          the corpus (default $CM_SHARED/corpus, else\n"
               "                        %s/../shared/corpus)\n"
               "  -o, --output FILE     where to write (default %s);\n"
               "                        written to a temporary file, renamed when complete\n",
            CM_SRCDIR, DEFAULTS.out);
    for (int i = 0; i < n; i++) {
        char dflt[32];
        if (k[i].l)
            snprintf(dflt, sizeof dflt, "%ld", *k[i].l);
        else
            snprintf(dflt, sizeof dflt, "%g", *k[i].d);
        fprintf(f, "  %-15s %s   %s (default %s)\n", k[i].name, k[i].l ? "N" : "X", k[i].help,
                dflt);
    }
}

static cm_status parse_number(const knob *k, const char *v, cm_err *err)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !(x >= k->lo && x <= k->hi) || (k->l && x != floor(x)))
        return cm_fail(err, CM_E_USAGE, "%s: '%s' is not %s in %g..%g", k->name, v,
                       k->l ? "an integer" : "a number", k->lo, k->hi);
    if (k->l)
        *k->l = (long)x;
    else
        *k->d = x;
    return CM_OK;
}

/* Fills r from argv; *help is set for -h. */
static cm_status parse_args(int argc, char **argv, recipe *r, int *help, cm_err *err)
{
    knob k[MAX_KNOBS];
    int nk = knobs(r, k);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            *help = 1;
            return CM_OK;
        }
        if (i + 1 >= argc)
            return cm_fail(err, CM_E_USAGE, "%s: unknown option or missing value (see --help)", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--corpus")) {
            r->corpus = v;
            continue;
        }
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            r->out = v;
            continue;
        }
        int j = 0;
        while (j < nk && strcmp(a, k[j].name))
            j++;
        if (j == nk)
            return cm_fail(err, CM_E_USAGE, "unknown option %s (see --help)", a);
        cm_status st = parse_number(&k[j], v, err);
        if (st)
            return st;
    }
    if (r->snip_lo > r->snip_hi || r->pref_lo > r->pref_hi)
        return cm_fail(err, CM_E_USAGE, "--snip-lo/--pref-lo above --snip-hi/--pref-hi");
    return CM_OK;
}

/* ================================================================ small tools */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double T0;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("[%5.0fs] ", now() - T0);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* splitmix64: tiny, good enough, and the same on every platform. */
typedef struct {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *g)
{
    uint64_t z = (g->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static rng rng_make(long seed, uint64_t stream)
{
    rng g = {(uint64_t)seed * 0x2545F4914F6CDD1Dull ^ stream * 0xD1B54A32D192ED03ull};
    rng_next(&g);
    return g;
}

/* Uniform in lo..hi (the modulo bias is far below anything measured). */
static long rng_int(rng *g, long lo, long hi)
{
    return lo + (long)(rng_next(g) % (uint64_t)(hi - lo + 1));
}

static double rng_unit(rng *g)
{
    return (double)(rng_next(g) >> 11) * (1.0 / 9007199254740992.0);
}

/* Grows *p (of *cap elements of size sz) to hold at least need. */
static cm_status grow(void *p, size_t *cap, size_t need, size_t sz, cm_err *err)
{
    if (need <= *cap)
        return CM_OK;
    size_t c = *cap ? *cap : 1024;
    while (c < need)
        c *= 2;
    void *q = realloc(*(void **)p, c * sz);
    if (!q)
        return cm_fail(err, CM_E_NOMEM, "out of memory (%zu MB)", (c * sz) >> 20);
    *(void **)p = q;
    *cap = c;
    return CM_OK;
}

/* ================================================================ SHA-1 */

/* The held-out tenth is chosen by content hash, as the corpus chose its
 * splits, so it does not depend on file order and is stable across runs.
 * SHA-1 (FIPS 180-4) is written here because nothing else needs it. */
static uint32_t rol32(uint32_t x, int k)
{
    return x << k | x >> (32 - k);
}

static void sha1_block(uint32_t h[5], const unsigned char *p)
{
    uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20)
            f = (b & c) | (~b & d), k = 0x5A827999u;
        else if (i < 40)
            f = b ^ c ^ d, k = 0x6ED9EBA1u;
        else if (i < 60)
            f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDCu;
        else
            f = b ^ c ^ d, k = 0xCA62C1D6u;
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d, d = c, c = rol32(b, 30), b = a, a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

static void sha1(const void *data, size_t n, unsigned char out[20])
{
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    const unsigned char *p = data;
    size_t full = n / 64 * 64, rest = n - full;
    for (size_t i = 0; i < full; i += 64)
        sha1_block(h, p + i);
    unsigned char tail[128] = {0};
    memcpy(tail, p + full, rest);
    tail[rest] = 0x80;
    size_t tl = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        tail[tl - 1 - i] = (unsigned char)(bits >> 8 * i);
    for (size_t i = 0; i < tl; i += 64)
        sha1_block(h, tail + i);
    for (int i = 0; i < 20; i++)
        out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

/* ================================================================ corpus */

typedef struct {
    char *text; /* owned */
    size_t len;
    unsigned char sha[20];
} doc;

typedef struct {
    doc *d;
    size_t n, cap;
} doc_list;

typedef struct {
    doc_list fit, held; /* the nine tenths trained on, the tenth held out */
} lang_docs;

static void free_docs(doc_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->d[i].text);
    free(l->d);
    memset(l, 0, sizeof *l);
}

/* cm_corpus_each_doc's callback: a copy of the document, with its hash. */
static cm_status push_doc(void *ctx, const char *text, size_t len, cm_err *err)
{
    doc_list *l = ctx;
    cm_status st = grow(&l->d, &l->cap, l->n + 1, sizeof *l->d, err);
    if (st)
        return st;
    char *copy = malloc(len + 1);
    if (!copy)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    memcpy(copy, text, len);
    copy[len] = 0;
    doc *d = &l->d[l->n++];
    d->text = copy;
    d->len = len;
    sha1(d->text, d->len, d->sha);
    return CM_OK;
}

static int cmp_sha(const void *a, const void *b)
{
    return memcmp(((const doc *)a)->sha, ((const doc *)b)->sha, 20);
}

static int is_held_out(const unsigned char *sha)
{
    uint32_t x = (uint32_t)sha[4] << 24 | (uint32_t)sha[5] << 16 | (uint32_t)sha[6] << 8 | sha[7];
    return x % 10 == 0;
}

/* Reads the documents of path (the corpus reader's JSONL decoding), then
 * splits them into fit and held-out, sorted by hash so that the random
 * draws do not depend on the corpus's line order. */
static cm_status split_docs(const char *path, lang_docs *out, cm_err *err)
{
    doc_list all = {0};
    cm_corpus_info info;
    cm_status st = cm_corpus_each_doc(path, push_doc, &all, &info, err);
    if (!st && all.n < 20)
        st = cm_fail(err, CM_E_FORMAT, "%s: %zu documents, too few to train on", path, all.n);
    if (!st) {
        qsort(all.d, all.n, sizeof *all.d, cmp_sha);
        for (size_t i = 0; i < all.n && !st; i++) {
            doc_list *to = is_held_out(all.d[i].sha) ? &out->held : &out->fit;
            st = grow(&to->d, &to->cap, to->n + 1, sizeof *to->d, err);
            if (!st)
                to->d[to->n++] = all.d[i];
            else
                free(all.d[i].text);
        }
        all.n = 0;
    }
    free_docs(&all);
    return st;
}

static cm_status load_lang(const char *corpus, const char *lang, lang_docs *out, cm_err *err)
{
    char path[4096];
    struct stat sb;
    if (stat(corpus, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return cm_fail(err, CM_E_IO, "corpus directory %s not found", corpus);
    snprintf(path, sizeof path, "%s/%s/train.jsonl.xz", corpus, lang);
    cm_status st = split_docs(path, out, err);
    if (!st && (out->fit.n == 0 || out->held.n == 0))
        st = cm_fail(err, CM_E_FORMAT, "%s: nothing held out or nothing left to fit", path);
    return st;
}

/* ================================================================ lines */

/* Offsets where lines start, as Python's text.split('\n') sees them: a
 * final newline starts one more (empty) line.  Returns the line count. */
static cm_status line_index(const char *p, size_t len, size_t **st, size_t *cap, size_t *n,
                            cm_err *err)
{
    size_t k = 0;
    cm_status s = grow(st, cap, 2, sizeof **st, err);
    if (s)
        return s;
    (*st)[k++] = 0;
    for (const char *q = p, *end = p + len; (q = memchr(q, '\n', (size_t)(end - q))); q++) {
        if ((s = grow(st, cap, k + 2, sizeof **st, err)))
            return s;
        (*st)[k++] = (size_t)(q - p) + 1;
    }
    (*st)[k] = len + 1; /* one past a virtual final newline */
    *n = k;
    return CM_OK;
}

static int blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
            return 0;
    return 1;
}

/* ================================================================ examples */

/* Sparse examples, all in two arrays: example i is entries
 * start[i]..start[i+1] of (bucket, count / sqrt(feature count)). */
typedef struct {
    uint32_t *bucket;
    float *val;
    size_t n, cap, vcap;
    size_t *start;   /* n_ex + 1 entries */
    uint8_t *label;
    size_t n_ex, scap, lcap;
} examples;

/* Turns texts into distinct buckets and counts, reusing its buffers. */
typedef struct {
    unsigned bits;
    uint32_t *feat;  /* cm_router_features output */
    size_t fcap;
    uint32_t *count; /* per bucket; all zero between texts */
    uint32_t *seen;  /* distinct buckets of the text, first-seen order */
    size_t n_seen;
    size_t n_feat;
} featurizer;

static void free_examples(examples *e)
{
    free(e->bucket);
    free(e->val);
    free(e->start);
    free(e->label);
    memset(e, 0, sizeof *e);
}

static void free_featurizer(featurizer *f)
{
    free(f->feat);
    free(f->count);
    free(f->seen);
}

static cm_status featurizer_init(featurizer *f, unsigned bits, cm_err *err)
{
    memset(f, 0, sizeof *f);
    f->bits = bits;
    f->count = calloc((size_t)1 << bits, sizeof *f->count);
    f->seen = malloc(((size_t)1 << bits) * sizeof *f->seen);
    if (!f->count || !f->seen)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    return CM_OK;
}

/* The features of a text into f->seen / f->count (the caller resets the
 * counts of f->seen with featurizer_clear). */
static cm_status featurize(featurizer *f, const char *text, size_t len, cm_err *err)
{
    size_t n = cm_router_features(text, len, f->bits, f->feat, f->fcap);
    if (n > f->fcap) {
        cm_status st = grow(&f->feat, &f->fcap, n, sizeof *f->feat, err);
        if (st)
            return st;
        cm_router_features(text, len, f->bits, f->feat, f->fcap);
    }
    f->n_seen = 0;
    f->n_feat = n;
    for (size_t i = 0; i < n; i++)
        if (f->count[f->feat[i]]++ == 0)
            f->seen[f->n_seen++] = f->feat[i];
    return CM_OK;
}

static void featurizer_clear(featurizer *f)
{
    for (size_t i = 0; i < f->n_seen; i++)
        f->count[f->seen[i]] = 0;
    f->n_seen = 0;
}

/* Appends the text as a training example of language y; with nb set, also
 * adds its counts to the naive Bayes table (bucket-major, NL per bucket). */
static cm_status add_example(examples *e, featurizer *f, const char *text, size_t len, int y,
                             double *nb, cm_err *err)
{
    cm_status st = featurize(f, text, len, err);
    if (!st)
        st = grow(&e->bucket, &e->cap, e->n + f->n_seen, sizeof *e->bucket, err);
    if (!st)
        st = grow(&e->val, &e->vcap, e->n + f->n_seen, sizeof *e->val, err);
    if (!st)
        st = grow(&e->start, &e->scap, e->n_ex + 2, sizeof *e->start, err);
    if (!st)
        st = grow(&e->label, &e->lcap, e->n_ex + 1, sizeof *e->label, err);
    if (st)
        return st;
    float s = f->n_feat ? (float)(1.0 / sqrt((double)f->n_feat)) : 0.0f;
    for (size_t i = 0; i < f->n_seen; i++) {
        uint32_t b = f->seen[i];
        e->bucket[e->n] = b;
        e->val[e->n++] = (float)f->count[b] * s;
        if (nb)
            nb[(size_t)b * NL + (size_t)y] += f->count[b];
    }
    featurizer_clear(f);
    e->start[0] = 0;
    e->label[e->n_ex] = (uint8_t)y;
    e->start[++e->n_ex] = e->n;
    return CM_OK;
}

/* Every fitting file of every language, whole (and counted for naive Bayes). */
static cm_status whole_files(const lang_docs *langs, featurizer *f, examples *e, double *nb,
                             cm_err *err)
{
    cm_status st = CM_OK;
    for (int l = 0; l < NL && !st; l++)
        for (size_t i = 0; i < langs[l].fit.n && !st; i++)
            st = add_example(e, f, langs[l].fit.d[i].text, langs[l].fit.d[i].len, l, nb, err);
    return st;
}

/* A random run of lo..hi lines of a random fitting file (fewer when the
 * file is shorter), or a prefix of lo..hi lines; never blank. */
static cm_status draw_text(const doc_list *docs, rng *g, long lo, long hi, int prefix,
                           size_t **st, size_t *cap, const char **p, size_t *len, cm_err *err)
{
    for (int tries = 0; tries < 100000; tries++) {
        const doc *d = &docs->d[rng_int(g, 0, (long)docs->n - 1)];
        size_t n_lines;
        cm_status s = line_index(d->text, d->len, st, cap, &n_lines, err);
        if (s)
            return s;
        size_t want = (size_t)rng_int(g, lo, hi);
        if (want > n_lines)
            want = n_lines;
        size_t first = prefix ? 0 : (size_t)rng_int(g, 0, (long)(n_lines - want));
        size_t a = (*st)[first], b = (*st)[first + want] - 1;
        if (b > d->len)
            b = d->len;
        if (!blank(d->text + a, b - a)) {
            *p = d->text + a;
            *len = b - a;
            return CM_OK;
        }
    }
    return cm_fail(err, CM_E_FORMAT, "no text that is not blank among %zu files", docs->n);
}

/* A training text that is not a whole file: featurized each time it is
 * visited rather than stored, which keeps memory to the corpus plus the
 * whole-file examples (storing 357,000 snippets' features took 3 GB). */
typedef struct {
    const char *p;
    size_t len;
    int y;
} span;

typedef struct {
    span *s;
    size_t n, cap;
} span_list;

/* One member's random snippets and prefixes, drawn from its own stream. */
static cm_status random_texts(const recipe *r, const lang_docs *langs, int member,
                              span_list *out, cm_err *err)
{
    size_t *st = NULL, cap = 0;
    cm_status s = CM_OK;
    for (int l = 0; l < NL && !s; l++) {
        rng g = rng_make(r->seed, 1000u * (uint64_t)member + (uint64_t)l + 1);
        for (long i = 0; i < r->snippets + r->prefixes && !s; i++) {
            int prefix = i >= r->snippets;
            span x = {NULL, 0, l};
            s = draw_text(&langs[l].fit, &g, prefix ? r->pref_lo : r->snip_lo,
                          prefix ? r->pref_hi : r->snip_hi, prefix, &st, &cap, &x.p, &x.len, err);
            if (!s)
                s = grow(&out->s, &out->cap, out->n + 1, sizeof *out->s, err);
            if (!s)
                out->s[out->n++] = x;
        }
    }
    free(st);
    return s;
}

/* ================================================================ model */

typedef struct {
    unsigned bits;
    float *w;         /* 2^bits rows of NL weights */
    double bias[NL];
} model;

static cm_status model_init(model *m, unsigned bits, cm_err *err)
{
    memset(m, 0, sizeof *m);
    m->bits = bits;
    m->w = calloc(((size_t)1 << bits) * NL, sizeof *m->w);
    return m->w ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory for the weights");
}

/* Naive Bayes start: tau * log p(bucket | language), centred over the
 * languages per bucket (a shift common to all languages changes nothing). */
static void naive_bayes(const recipe *r, const double *nb, model *m)
{
    size_t rows = (size_t)1 << m->bits;
    double tot[NL] = {0};
    for (size_t b = 0; b < rows; b++)
        for (int l = 0; l < NL; l++)
            tot[l] += nb[b * NL + (size_t)l];
    for (size_t b = 0; b < rows; b++) {
        double col[NL], mean = 0;
        for (int l = 0; l < NL; l++) {
            col[l] = log((nb[b * NL + (size_t)l] + r->alpha) / (tot[l] + r->alpha * (double)rows));
            mean += col[l];
        }
        mean /= NL;
        for (int l = 0; l < NL; l++)
            m->w[b * NL + (size_t)l] = (float)(r->tau * (col[l] - mean));
    }
}

static void softmax(const double *z, double *p)
{
    double mx = z[0], s = 0;
    for (int l = 1; l < NL; l++)
        mx = z[l] > mx ? z[l] : mx;
    for (int l = 0; l < NL; l++)
        s += p[l] = exp(z[l] - mx);
    for (int l = 0; l < NL; l++)
        p[l] /= s;
}

/* One training example, however it is stored. */
typedef struct {
    const uint32_t *bucket;
    const float *val;
    size_t n;
    int y;
} ex_view;

/* What AdaGrad trains on: the stored whole files, then the member's texts
 * (featurized into f and val on each visit). */
typedef struct {
    const examples *whole;
    const span_list *texts;
    featurizer *f;
    float *val; /* 2^bits scratch values */
} train_set;

/* Example i of the set; the caller runs featurizer_clear(ts->f) after. */
static cm_status view(train_set *ts, size_t i, ex_view *x, cm_err *err)
{
    const examples *e = ts->whole;
    if (i < e->n_ex) {
        size_t s = e->start[i];
        *x = (ex_view){e->bucket + s, e->val + s, e->start[i + 1] - s, e->label[i]};
        return CM_OK;
    }
    const span *t = &ts->texts->s[i - e->n_ex];
    featurizer *f = ts->f;
    cm_status st = featurize(f, t->p, t->len, err);
    if (st)
        return st;
    float scale = f->n_feat ? (float)(1.0 / sqrt((double)f->n_feat)) : 0.0f;
    for (size_t k = 0; k < f->n_seen; k++)
        ts->val[k] = (float)f->count[f->seen[k]] * scale;
    *x = (ex_view){f->seen, ts->val, f->n_seen, t->y};
    return CM_OK;
}

/* One AdaGrad step on the softmax cross-entropy; returns the loss.  Rare
 * features (a project's identifiers) get larger steps than common ones. */
static double adagrad_step(const recipe *r, model *m, float *g2, ex_view x)
{
    double acc[NL] = {0}, z[NL], p[NL];
    for (size_t q = 0; q < x.n; q++) {
        const float *row = m->w + (size_t)x.bucket[q] * NL;
        for (int l = 0; l < NL; l++)
            acc[l] += row[l] * x.val[q];
    }
    for (int l = 0; l < NL; l++)
        z[l] = acc[l] + m->bias[l];
    softmax(z, p);
    for (int l = 0; l < NL; l++) {
        double g = p[l] - (l == x.y);
        if (g > -r->min_grad && g < r->min_grad)
            continue; /* nothing to learn here; saves most of the updates */
        m->bias[l] -= r->bias_rate * g;
        for (size_t q = 0; q < x.n; q++) {
            size_t o = (size_t)x.bucket[q] * NL + (size_t)l;
            float gk = (float)(g * x.val[q]);
            float a = g2[o] + gk * gk;
            g2[o] = a;
            m->w[o] -= (float)(r->lr * gk / sqrtf(a));
        }
    }
    return -log(p[x.y] > 1e-300 ? p[x.y] : 1e-300);
}

/* Epochs over both example sets in a fresh shuffled order each time.
 * After the first, examples learnt well last time (loss under easy_loss)
 * are revisited only sometimes: the hard ones are where weights move. */
static cm_status adagrad(const recipe *r, model *m, train_set *ts, int member, cm_err *err)
{
    size_t n = ts->whole->n_ex + ts->texts->n, rows = (size_t)1 << m->bits;
    float *g2 = malloc(rows * NL * sizeof *g2), *loss = malloc(n * sizeof *loss);
    size_t *order = malloc(n * sizeof *order);
    if (!g2 || !loss || !order) {
        free(g2), free(loss), free(order);
        return cm_fail(err, CM_E_NOMEM, "out of memory for AdaGrad");
    }
    for (size_t i = 0; i < rows * NL; i++)
        g2[i] = (float)r->g0;
    for (size_t i = 0; i < n; i++)
        loss[i] = 1, order[i] = i;
    rng g = rng_make(r->seed, 0x5EED0000u + (uint64_t)member);
    cm_status st = CM_OK;
    for (long ep = 0; ep < r->epochs && !st; ep++) {
        double total = 0;
        size_t seen = 0;
        for (size_t i = n; i > 1; i--) {
            size_t j = (size_t)rng_int(&g, 0, (long)i - 1), t = order[i - 1];
            order[i - 1] = order[j], order[j] = t;
        }
        for (size_t k = 0; k < n && !st; k++) {
            size_t i = order[k];
            ex_view x;
            if (ep && loss[i] < r->easy_loss && rng_unit(&g) >= r->revisit)
                continue;
            if ((st = view(ts, i, &x, err)) != CM_OK)
                break;
            loss[i] = (float)adagrad_step(r, m, g2, x);
            featurizer_clear(ts->f);
            total += loss[i];
            seen++;
        }
        say("member %d epoch %ld: %zu examples, mean loss %.4f", member + 1, ep + 1, seen,
            total / (double)(seen ? seen : 1));
    }
    free(g2), free(loss), free(order);
    return st;
}

/* ================================================================ quantized model */

/* The model as router.bin stores it: int16 weights times one scale, f32
 * biases.  Held-out scores are computed from this, exactly as router.c
 * does, so calibration sees what the shipped file will do. */
typedef struct {
    unsigned bits;
    int16_t *q;       /* 2^bits rows of NL */
    float scale;
    float bias[NL];
} qmodel;

static cm_status quantize(const model *m, qmodel *qm, cm_err *err)
{
    size_t n = ((size_t)1 << m->bits) * NL;
    float top = 0;
    for (size_t i = 0; i < n; i++)
        top = fabsf(m->w[i]) > top ? fabsf(m->w[i]) : top;
    qm->bits = m->bits;
    qm->scale = top > 0 ? top / 32767.0f : 1.0f;
    qm->q = malloc(n * sizeof *qm->q);
    if (!qm->q)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        long v = lrintf(m->w[i] / qm->scale);
        qm->q[i] = (int16_t)(v > 32767 ? 32767 : v < -32767 ? -32767 : v);
    }
    for (int l = 0; l < NL; l++)
        qm->bias[l] = (float)m->bias[l];
    return CM_OK;
}

static void free_qmodel(qmodel *qm)
{
    free(qm->q);
    qm->q = NULL;
}

/* ================================================================ held-out prompts */

/* Prompts cut from the held-out files as bench/bench_router cuts the valid
 * ones: whole files, and snippets of 3, 10 and 30 lines.  Two independent
 * draws of snippets: 'fit' calibrates the biases, 'check' is reported. */
enum { PART_FIT, PART_CHECK };

typedef struct {
    const char *p;
    size_t len;
    uint8_t lang, kind, part;
} prompt;

typedef struct {
    prompt *p;
    size_t n, cap;
    double *z; /* n * NL logits without the bias, from the quantized model */
} prompt_set;

static cm_status add_prompt(prompt_set *s, const char *p, size_t len, int lang, int kind,
                            int part, cm_err *err)
{
    cm_status st = grow(&s->p, &s->cap, s->n + 1, sizeof *s->p, err);
    if (!st)
        s->p[s->n++] = (prompt){p, len, (uint8_t)lang, (uint8_t)kind, (uint8_t)part};
    return st;
}

/* Up to count snippets of exactly `lines` lines of one file (none when it
 * is shorter); like bench_router, a final newline does not start a line,
 * the last line of the file keeps it, and a blank draw is redrawn up to 20
 * times. */
static cm_status file_snippets(prompt_set *s, const doc *d, int lang, int kind, int part,
                               long count, rng *g, size_t **st, size_t *cap, cm_err *err)
{
    size_t n;
    cm_status e = line_index(d->text, d->len, st, cap, &n, err);
    if (e)
        return e;
    if (d->len && d->text[d->len - 1] == '\n') {
        n--;
        (*st)[n] = d->len + 1;
    }
    size_t lines = (size_t)KIND_LINES[kind];
    for (long k = 0; n >= lines && k < count && !e; k++)
        for (int tries = 0; tries < 20; tries++) {
            size_t first = (size_t)rng_int(g, 0, (long)(n - lines));
            size_t a = (*st)[first], b = (*st)[first + lines] - 1;
            if (!blank(d->text + a, b - a)) {
                e = add_prompt(s, d->text + a, b - a, lang, kind, part, err);
                break;
            }
        }
    return e;
}

static cm_status held_out_prompts(const recipe *r, const lang_docs *langs, prompt_set *s,
                                  cm_err *err)
{
    size_t *st = NULL, cap = 0;
    cm_status e = CM_OK;
    for (int l = 0; l < NL && !e; l++) {
        const doc_list *h = &langs[l].held;
        for (size_t i = 0; i < h->n && !e; i++)
            if (h->d[i].len)
                e = add_prompt(s, h->d[i].text, h->d[i].len, l, 0, PART_CHECK, err);
        for (int part = PART_FIT; part <= PART_CHECK && !e; part++) {
            rng g = rng_make(r->seed, 0xBE4C0000u + 16u * (uint64_t)l + (uint64_t)part);
            for (size_t i = 0; i < h->n && !e; i++)
                for (int kind = 1; kind < N_KINDS && !e; kind++)
                    e = file_snippets(s, &h->d[i], l, kind, part, r->held_snippets, &g, &st,
                                      &cap, err);
        }
    }
    free(st);
    return e;
}

/* The logits without the bias, computed as cm_router_classify computes
 * them (integer sums of the int16 weights, then scale / sqrt(n)). */
static cm_status score_prompts(const qmodel *qm, featurizer *f, prompt_set *s, cm_err *err)
{
    free(s->z);
    s->z = malloc(s->n * NL * sizeof *s->z);
    if (!s->z)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < s->n; i++) {
        cm_status st = featurize(f, s->p[i].p, s->p[i].len, err);
        if (st)
            return st;
        int64_t total[NL] = {0};
        for (size_t k = 0; k < f->n_seen; k++) {
            const int16_t *row = qm->q + (size_t)f->seen[k] * NL;
            for (int l = 0; l < NL; l++)
                total[l] += (int64_t)f->count[f->seen[k]] * row[l];
        }
        double scale = f->n_feat ? (double)qm->scale / sqrt((double)f->n_feat) : 0.0;
        for (int l = 0; l < NL; l++)
            s->z[i * NL + (size_t)l] = scale * (double)total[l];
        featurizer_clear(f);
    }
    return CM_OK;
}

/* The language cm_router_classify would pick with these biases. */
static int predict(const prompt_set *s, size_t i, const float *bias)
{
    double best = -INFINITY;
    int arg = 0;
    for (int l = 0; l < NL; l++) {
        double z = bias[l] + s->z[i * NL + (size_t)l];
        if (z > best)
            best = z, arg = l;
    }
    return arg;
}

/* Percent right per language and kind among the prompts of one part. */
static void accuracy(const prompt_set *s, const float *bias, int part, double acc[NL][N_KINDS])
{
    int right[NL][N_KINDS] = {{0}}, n[NL][N_KINDS] = {{0}};
    for (size_t i = 0; i < s->n; i++) {
        const prompt *p = &s->p[i];
        if (p->part != part)
            continue;
        n[p->lang][p->kind]++;
        right[p->lang][p->kind] += predict(s, i, bias) == p->lang;
    }
    for (int l = 0; l < NL; l++)
        for (int k = 0; k < N_KINDS; k++)
            acc[l][k] = n[l][k] ? 100.0 * right[l][k] / n[l][k] : 100.0;
}

static void report(const prompt_set *s, const float *bias, const char *title)
{
    double acc[NL][N_KINDS];
    accuracy(s, bias, PART_CHECK, acc);
    say("held-out accuracy (%%), %s:", title);
    printf("        %-10s %7s %7s %7s %7s\n", "language", "files", "3", "10", "30");
    for (int l = 0; l < NL; l++)
        printf("        %-10s %7.2f %7.2f %7.2f %7.2f\n", cm_known_langs[l], acc[l][0], acc[l][1],
               acc[l][2], acc[l][3]);
    fflush(stdout);
}

/* What calibration maximizes on the 'fit' snippets: the worst language's
 * 10-line accuracy (the weakest target) plus cal_mean times the
 * mean over languages and 3/10/30 lines (so that no other length pays). */
static double objective(const recipe *r, const prompt_set *s, const float *bias)
{
    double acc[NL][N_KINDS], worst = 100, mean = 0;
    accuracy(s, bias, PART_FIT, acc);
    for (int l = 0; l < NL; l++) {
        worst = acc[l][2] < worst ? acc[l][2] : worst;
        for (int k = 1; k < N_KINDS; k++)
            mean += acc[l][k];
    }
    return worst + r->cal_mean * mean / (NL * (N_KINDS - 1));
}

/* Greedy coordinate search over the biases in shrinking steps: SGD's
 * biases drift with the mix of training prompts, not the lengths we are
 * measured on. */
static void calibrate(const recipe *r, const prompt_set *s, float *bias)
{
    static const float steps[] = {0.4f, 0.2f, 0.1f, 0.05f};
    double best = objective(r, s, bias);
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++)
        for (int improved = 1; improved;) {
            improved = 0;
            for (int l = 0; l < NL; l++)
                for (int sign = 1; sign >= -1; sign -= 2) {
                    float keep = bias[l];
                    bias[l] = keep + (float)sign * steps[i];
                    double o = objective(r, s, bias);
                    if (o > best + 1e-9)
                        best = o, improved = 1;
                    else
                        bias[l] = keep;
                }
        }
    char line[256];
    int k = 0;
    for (int l = 0; l < NL; l++)
        k += snprintf(line + k, sizeof line - (size_t)k, " %+.2f", (double)bias[l]);
    say("calibrated biases:%s (objective %.3f)", line, best);
}

/* ================================================================ output */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> 8 * i);
}

static void put_f32(unsigned char *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(p, u);
}

/* router.bin as src/experts/router.h lays it out; the caller frees *out. */
static cm_status encode(const qmodel *qm, unsigned char **out, size_t *len, cm_err *err)
{
    size_t rows = (size_t)1 << qm->bits, n = 32 + NL * 20 + rows * NL * 2 + 4;
    unsigned char *p = calloc(1, n);
    if (!p)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    memcpy(p, "CMROUTER", 8);
    put_u32(p + 8, 1);
    put_u32(p + 12, NL);
    put_u32(p + 16, qm->bits);
    put_u32(p + 20, 1);
    put_f32(p + 24, qm->scale);
    for (int l = 0; l < NL; l++) {
        memcpy(p + 32 + 16 * l, cm_known_langs[l], strlen(cm_known_langs[l]));
        put_f32(p + 32 + 16 * NL + 4 * l, qm->bias[l]);
    }
    unsigned char *w = p + 32 + 20 * NL;
    for (size_t i = 0; i < rows * NL; i++) {
        w[2 * i] = (unsigned char)((uint16_t)qm->q[i] & 0xff);
        w[2 * i + 1] = (unsigned char)((uint16_t)qm->q[i] >> 8);
    }
    uint32_t h = 0x811C9DC5u; /* FNV-1a of everything before it */
    for (size_t i = 0; i < n - 4; i++)
        h = (h ^ p[i]) * 0x01000193u;
    put_u32(p + n - 4, h);
    *out = p;
    *len = n;
    return CM_OK;
}

/* Loads the image with the engine's own parser and checks that
 * cm_router_classify picks what the trainer computed for every held-out
 * prompt: the guard against the two ever drifting apart. */
static cm_status check_parity(const unsigned char *img, size_t len, const qmodel *qm,
                              const prompt_set *s, cm_err *err)
{
    cm_router *r = NULL;
    cm_status st = cm_router_parse(img, len, &r, err);
    if (st)
        return cm_fail(err, st, "the model just built does not load: %s", err->msg);
    size_t differ = 0;
    float probs[CM_ROUTER_MAX_LANGS];
    for (size_t i = 0; i < s->n; i++)
        differ += cm_router_classify(r, s->p[i].p, s->p[i].len, probs) != predict(s, i, qm->bias);
    cm_router_free(r);
    if (differ)
        return cm_fail(err, CM_E_FORMAT, "router.c disagrees with the trainer on %zu of %zu "
                       "held-out prompts", differ, s->n);
    say("router.c agrees with the trainer on all %zu held-out prompts", s->n);
    return CM_OK;
}

/* Writes to a temporary file beside path and renames it over path, so
 * that path is either the old file or the complete new one. */
static cm_status write_atomic(const char *path, const void *data, size_t n, cm_err *err)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= (int)sizeof tmp)
        return cm_fail(err, CM_E_IO, "output path too long");
    int fd = mkstemp(tmp);
    if (fd < 0)
        return cm_fail(err, CM_E_IO, "cannot create a file next to %s: %s", path, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    int ok = f && fchmod(fd, 0644) == 0 && fwrite(data, 1, n, f) == n && fflush(f) == 0 &&
             fsync(fd) == 0;
    int saved = errno;
    ok = (f ? fclose(f) == 0 : close(fd) == 0) && ok;
    if (ok && rename(tmp, path) == 0)
        return CM_OK;
    saved = saved ? saved : errno;
    unlink(tmp);
    return cm_fail(err, CM_E_IO, "cannot write %s: %s", path, strerror(saved));
}

/* Fails early, before minutes of training, when path's folder cannot
 * take the new file. */
static cm_status check_writable(const char *path, cm_err *err)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash && slash - path >= (long)sizeof dir)
        return cm_fail(err, CM_E_IO, "output path too long");
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    if (access(dir, W_OK | X_OK) != 0)
        return cm_fail(err, CM_E_IO, "cannot write %s: %s", path, strerror(errno));
    return CM_OK;
}

/* ================================================================ driver */

typedef struct {
    lang_docs langs[NL];
    featurizer fz;
    examples whole;  /* every fitting file, shared by the members */
    model base, avg;
    double *nb;
    prompt_set held;
    qmodel qm;
} trainer;

static void free_trainer(trainer *t)
{
    for (int l = 0; l < NL; l++) {
        free_docs(&t->langs[l].fit);
        free_docs(&t->langs[l].held);
    }
    free_featurizer(&t->fz);
    free_examples(&t->whole);
    free(t->base.w);
    free(t->avg.w);
    free(t->nb);
    free(t->held.p);
    free(t->held.z);
    free_qmodel(&t->qm);
}

static cm_status load_all(const recipe *r, trainer *t, cm_err *err)
{
    for (int l = 0; l < NL; l++) {
        cm_status st = load_lang(r->corpus, cm_known_langs[l], &t->langs[l], err);
        if (st)
            return st;
        say("%-10s %5zu files to fit, %4zu held out", cm_known_langs[l], t->langs[l].fit.n,
            t->langs[l].held.n);
    }
    return CM_OK;
}

/* One member: the naive Bayes start, its own snippets, AdaGrad; its
 * weights are added to t->avg. */
static cm_status train_member(const recipe *r, trainer *t, int k, cm_err *err)
{
    span_list mine = {0};
    model m;
    size_t n = ((size_t)1 << r->bits) * NL;
    float *val = malloc(((size_t)1 << r->bits) * sizeof *val);
    cm_status st = val ? model_init(&m, (unsigned)r->bits, err)
                       : cm_fail(err, CM_E_NOMEM, "out of memory");
    if (st) {
        free(val);
        return st;
    }
    st = random_texts(r, t->langs, k, &mine, err);
    if (!st) {
        train_set ts = {&t->whole, &mine, &t->fz, val};
        say("member %d: %zu examples (%zu whole files)", k + 1, t->whole.n_ex + mine.n,
            t->whole.n_ex);
        memcpy(m.w, t->base.w, n * sizeof *m.w);
        st = adagrad(r, &m, &ts, k, err);
    }
    if (!st) {
        for (size_t i = 0; i < n; i++)
            t->avg.w[i] += m.w[i] / (float)r->members;
        for (int l = 0; l < NL; l++)
            t->avg.bias[l] += m.bias[l] / (double)r->members;
    }
    free(m.w);
    free(mine.s);
    free(val);
    return st;
}

static cm_status fit(const recipe *r, trainer *t, cm_err *err)
{
    unsigned bits = (unsigned)r->bits;
    cm_status st = featurizer_init(&t->fz, bits, err);
    if (!st && !(t->nb = calloc(((size_t)1 << bits) * NL, sizeof *t->nb)))
        st = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!st)
        st = whole_files(t->langs, &t->fz, &t->whole, t->nb, err);
    if (!st)
        st = model_init(&t->base, bits, err);
    if (!st)
        st = model_init(&t->avg, bits, err);
    if (st)
        return st;
    naive_bayes(r, t->nb, &t->base);
    free(t->nb);
    t->nb = NULL;
    say("naive Bayes counts from %zu files", t->whole.n_ex);
    for (int k = 0; k < r->members && !st; k++)
        st = train_member(r, t, k, err);
    return st ? st : quantize(&t->avg, &t->qm, err);
}

static cm_status run(const recipe *r, cm_err *err)
{
    trainer t;
    memset(&t, 0, sizeof t);
    unsigned char *img = NULL;
    size_t len = 0;
    cm_status st = check_writable(r->out, err);
    if (!st)
        st = load_all(r, &t, err);
    if (!st)
        st = fit(r, &t, err);
    if (!st)
        st = held_out_prompts(r, t.langs, &t.held, err);
    if (!st)
        st = score_prompts(&t.qm, &t.fz, &t.held, err);
    if (!st) {
        report(&t.held, t.qm.bias, "before calibration");
        calibrate(r, &t.held, t.qm.bias);
        report(&t.held, t.qm.bias, "calibrated");
        st = encode(&t.qm, &img, &len, err);
    }
    if (!st)
        st = check_parity(img, len, &t.qm, &t.held, err);
    if (!st)
        st = write_atomic(r->out, img, len, err);
    if (!st)
        say("wrote %s (%zu bytes); %.0f s in all", r->out, len, now() - T0);
    free(img);
    free_trainer(&t);
    return st;
}

int main(int argc, char **argv)
{
    recipe r = DEFAULTS;
    cm_err err = {0};
    int help = 0;
    char corpus[4096];
    T0 = now();
    cm_status st = parse_args(argc, argv, &r, &help, &err);
    if (!st && help) {
        usage(stdout);
        return 0;
    }
    if (!st && !r.corpus) {
        const char *shared = getenv("CM_SHARED");
        if (shared && *shared)
            snprintf(corpus, sizeof corpus, "%s/corpus", shared);
        else
            snprintf(corpus, sizeof corpus, "%s/../shared/corpus", CM_SRCDIR);
        r.corpus = corpus;
    }
    if (!st)
        st = run(&r, &err);
    if (st) {
        fprintf(stderr, "train_router: %s\n", err.msg);
        return cm_exit_code(st);
    }
    return 0;
}
