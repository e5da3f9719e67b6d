/* bench_router.c - quality and speed of the language router's classifier.
 *
 * For each corpus language, classifies every file of
 * $CM_SHARED/corpus/<lang>/valid.jsonl.xz (text only: no file name, no
 * shebang or modeline), then snippets of 3, 10 and 30 lines cut from them:
 * SNIPPETS_PER_FILE per length per file long enough, starting at lines
 * drawn by a fixed xorshift generator, redrawn (up to 20 times) while the
 * snippet is blank.  Prints markdown tables: accuracy of the best-scoring
 * language, then what the default threshold does (wrong expert vs
 * fallback), then the median time to classify a 4 KB prompt.
 *
 * Router data: $CODEMOE_ROUTER, else the installed or source-tree
 * router.bin.  Exit 77 when the router data or the corpus is missing. */
#include "experts/router.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eval/corpus.h"

#define SNIPPETS_PER_FILE 10
#define N_KINDS 4 /* whole file, 3, 10, 30 lines */
#define PROMPT_BYTES 4096
#define TIMING_REPS 2000

static const int KIND_LINES[N_KINDS] = {0, 3, 10, 30};

typedef struct {
    int n[N_KINDS], right[N_KINDS];  /* argmax right */
    int wrong_sure[N_KINDS];         /* wrong and above the threshold */
    int fallback[N_KINDS];           /* below the threshold */
} tally;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- corpus */

typedef struct {
    cm_buf *docs;
    int n;
} doc_list;

static cm_status keep_doc(void *ctx, const char *text, size_t len, cm_err *err)
{
    doc_list *out = ctx;
    cm_buf *d = realloc(out->docs, (size_t)(out->n + 1) * sizeof *d);
    if (!d)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    out->docs = d;
    out->docs[out->n] = (cm_buf){0};
    if (cm_buf_append(&out->docs[out->n], text, len, err) != CM_OK)
        return CM_E_NOMEM;
    out->n++;
    return CM_OK;
}

/* The "content" of every line of <dir>/<lang>/valid.jsonl.xz; -1 (with
 * nothing to free) when it cannot be read. */
static int load_docs(const char *dir, const char *lang, doc_list *out)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/%s/valid.jsonl.xz", dir, lang);
    *out = (doc_list){0};
    cm_corpus_info info;
    cm_err err = {0};
    if (cm_corpus_each_doc(path, keep_doc, out, &info, &err) == CM_OK)
        return 0;
    fprintf(stderr, "%s\n", err.msg);
    for (int i = 0; i < out->n; i++)
        cm_buf_free(&out->docs[i]);
    free(out->docs);
    *out = (doc_list){0};
    return -1;
}

static void free_docs(doc_list *d)
{
    for (int i = 0; i < d->n; i++)
        cm_buf_free(&d->docs[i]);
    free(d->docs);
}

/* ---------------------------------------------------------------- snippets */

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Offsets of the starts of lines; returns the number of lines. */
static int line_starts(const char *p, size_t len, size_t **out)
{
    int n = 1;
    for (size_t i = 0; i < len; i++)
        n += p[i] == '\n' && i + 1 < len;
    size_t *s = malloc((size_t)(n + 1) * sizeof *s);
    if (!s)
        return 0;
    int k = 0;
    s[k++] = 0;
    for (size_t i = 0; i < len; i++)
        if (p[i] == '\n' && i + 1 < len)
            s[k++] = i + 1;
    s[k] = len + 1; /* one past the (virtual) final newline */
    *out = s;
    return n;
}

static int blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
            return 0;
    return 1;
}

static void score(const cm_router *r, const char *lang, const char *p, size_t n, int kind,
                  tally *t)
{
    float probs[CM_ROUTER_MAX_LANGS];
    int best = cm_router_classify(r, p, n, probs);
    int right = !strcmp(cm_router_lang(r, best), lang);
    t->n[kind]++;
    t->right[kind] += right;
    if (probs[best] < CM_ROUTER_DEFAULT_THRESHOLD)
        t->fallback[kind]++;
    else if (!right)
        t->wrong_sure[kind]++;
}

/* Snippets of `lines` lines of one document (fewer lines: none). */
static void score_snippets(const cm_router *r, const char *lang, const cm_buf *d, int kind,
                           uint64_t *rng, tally *t)
{
    size_t *st = NULL;
    int lines = KIND_LINES[kind], n = line_starts(d->p, d->len, &st);
    for (int k = 0; n >= lines && k < SNIPPETS_PER_FILE; k++) {
        for (int tries = 0; tries < 20; tries++) {
            int s = (int)(xorshift(rng) % (uint64_t)(n - lines + 1));
            size_t a = st[s], b = st[s + lines] - 1; /* without the last newline */
            if (!blank(d->p + a, b - a)) {
                score(r, lang, d->p + a, b - a, kind, t);
                break;
            }
        }
    }
    free(st);
}

static void run_lang(const cm_router *r, const char *lang, int li, const doc_list *docs, tally *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < docs->n; i++) {
        const cm_buf *d = &docs->docs[i];
        if (!d->len)
            continue;
        score(r, lang, d->p, d->len, 0, t);
        for (int kind = 1; kind < N_KINDS; kind++) {
            uint64_t rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)li << 40) ^ ((uint64_t)i << 8) ^
                           (uint64_t)kind;
            score_snippets(r, lang, d, kind, &rng, t);
        }
    }
}

/* ---------------------------------------------------------------- timing */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median microseconds to classify the first 4 KB of the language's text. */
static double time_prompt(const cm_router *r, const doc_list *docs)
{
    char prompt[PROMPT_BYTES];
    size_t n = 0;
    for (int i = 0; i < docs->n && n < PROMPT_BYTES; i++) {
        size_t k = docs->docs[i].len < PROMPT_BYTES - n ? docs->docs[i].len : PROMPT_BYTES - n;
        memcpy(prompt + n, docs->docs[i].p, k);
        n += k;
    }
    static double t[TIMING_REPS];
    float probs[CM_ROUTER_MAX_LANGS];
    volatile int sink = 0;
    for (int i = 0; i < TIMING_REPS; i++) {
        double t0 = now();
        sink += cm_router_classify(r, prompt, n, probs);
        t[i] = now() - t0;
    }
    (void)sink;
    qsort(t, TIMING_REPS, sizeof *t, cmp_double);
    return t[TIMING_REPS / 2] * 1e6;
}

/* ---------------------------------------------------------------- report */

static double pct(int a, int n)
{
    return n ? 100.0 * a / n : 0.0;
}

static void print_accuracy(const tally *t, int n_files[CM_N_KNOWN_LANGS])
{
    tally all = {0};
    printf("| language | files | whole files | 3 lines | 10 lines | 30 lines |\n");
    printf("|---|---:|---:|---:|---:|---:|\n");
    for (int l = 0; l < CM_N_KNOWN_LANGS; l++) {
        printf("| %s | %d |", cm_known_langs[l], n_files[l]);
        for (int k = 0; k < N_KINDS; k++) {
            printf(" %.1f%% |", pct(t[l].right[k], t[l].n[k]));
            all.n[k] += t[l].n[k];
            all.right[k] += t[l].right[k];
            all.fallback[k] += t[l].fallback[k];
            all.wrong_sure[k] += t[l].wrong_sure[k];
        }
        printf("\n");
    }
    printf("| all | |");
    for (int k = 0; k < N_KINDS; k++)
        printf(" %.1f%% |", pct(all.right[k], all.n[k]));
    printf("\n\nAccuracy: share of prompts whose best-scoring language is right.  Prompts:");
    printf(" %d whole files", all.n[0]);
    for (int k = 1; k < N_KINDS; k++)
        printf(", %d snippets of %d lines", all.n[k], KIND_LINES[k]);
    printf(".\n");
    printf("\nWith the default threshold (%.2f), share of prompts sent to a wrong expert "
           "and to the fallback:\n\n| prompt | wrong expert | fallback |\n|---|---:|---:|\n",
           (double)CM_ROUTER_DEFAULT_THRESHOLD);
    for (int k = 0; k < N_KINDS; k++) {
        if (k == 0)
            printf("| whole files |");
        else
            printf("| %d lines |", KIND_LINES[k]);
        printf(" %.1f%% | %.1f%% |\n", pct(all.wrong_sure[k], all.n[k]),
               pct(all.fallback[k], all.n[k]));
    }
}

/* 1 when every language meets the targets. */
static int targets_met(const tally *t, double worst_us)
{
    int ok = worst_us < 1000.0;
    for (int l = 0; l < CM_N_KNOWN_LANGS; l++) {
        double whole = pct(t[l].right[0], t[l].n[0]), ten = pct(t[l].right[2], t[l].n[2]);
        if (whole < 99.0 || ten < 95.0) {
            printf("below target: %s (whole files %.1f%%, 10-line %.1f%%)\n", cm_known_langs[l],
                   whole, ten);
            ok = 0;
        }
    }
    return ok;
}

int main(void)
{
    char path[4096], dir[1024];
    const char *rp = cm_router_default_path(path, sizeof path);
    const char *shared = getenv("CM_SHARED");
    snprintf(dir, sizeof dir, "%s/corpus", shared && *shared ? shared : "../shared");
    cm_router *r = NULL;
    cm_err err = {0};
    double t_load = now();
    if (!rp || cm_router_load(rp, &r, &err) != CM_OK) {
        fprintf(stderr, "skip: %s\n", rp ? err.msg : "no router.bin (set CODEMOE_ROUTER)");
        return 77;
    }
    t_load = now() - t_load;
    static tally t[CM_N_KNOWN_LANGS];
    int n_files[CM_N_KNOWN_LANGS];
    double us[CM_N_KNOWN_LANGS], worst = 0;
    for (int l = 0; l < CM_N_KNOWN_LANGS; l++) {
        doc_list docs;
        if (load_docs(dir, cm_known_langs[l], &docs) != 0) {
            fprintf(stderr, "skip: cannot read %s/%s/valid.jsonl.xz\n", dir, cm_known_langs[l]);
            cm_router_free(r);
            return 77;
        }
        n_files[l] = docs.n;
        run_lang(r, cm_known_langs[l], l, &docs, &t[l]);
        us[l] = time_prompt(r, &docs);
        worst = us[l] > worst ? us[l] : worst;
        free_docs(&docs);
    }
    printf("router: %s (loaded in %.1f ms)\n\n", rp, t_load * 1e3);
    print_accuracy(t, n_files);
    printf("\nMedian time to classify a 4 KB prompt (first 4 KB of the language's valid "
           "files, %d runs):\n\n| language | microseconds |\n|---|---:|\n", TIMING_REPS);
    for (int l = 0; l < CM_N_KNOWN_LANGS; l++)
        printf("| %s | %.0f |\n", cm_known_langs[l], us[l]);
    printf("\ntargets (whole files >= 99%%, 10-line snippets >= 95%%, 4 KB < 1 ms): %s\n",
           targets_met(t, worst) ? "met" : "NOT met");
    cm_router_free(r);
    return 0;
}
