/* results.c - see results.h. */
#define _GNU_SOURCE
#include "eval/results.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/atomic_file.h"
#include "util/json.h"

#define MAX_KS 16

cm_status cm_ev_records_add(cm_ev_records *rs, const cm_ev_record *r, cm_err *err)
{
    if (rs->n == rs->cap) {
        size_t cap = rs->cap ? rs->cap * 2 : 256;
        cm_ev_record *p = realloc(rs->r, sizeof *p * cap);
        if (!p)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        rs->r = p, rs->cap = cap;
    }
    cm_ev_record *d = &rs->r[rs->n];
    *d = *r;
    d->lang = strdup(r->lang), d->problem = strdup(r->problem);
    d->completion = strdup(r->completion ? r->completion : "");
    if (!d->lang || !d->problem || !d->completion) {
        free(d->lang), free(d->problem), free(d->completion);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    rs->n++;
    free(rs->order), rs->order = NULL;
    return CM_OK;
}

void cm_ev_records_free(cm_ev_records *rs)
{
    for (size_t i = 0; i < rs->n; i++)
        free(rs->r[i].lang), free(rs->r[i].problem), free(rs->r[i].completion);
    free(rs->r), free(rs->order);
    memset(rs, 0, sizeof *rs);
}

/* One line into a record; NULL on success, else why not. */
static const char *parse_record(const char *s, size_t n, cm_ev_records *rs, cm_err *err)
{
    json_doc d = {0};
    cm_err e;
    if (json_parse(s, n, "line", &d, &e))
        return "not JSON";
    const json_node *o = json_root(&d);
    int64_t sample = -1, tokens = 0;
    double secs = 0;
    const char *lang = json_get_str(&d, o, "lang"), *prob = json_get_str(&d, o, "problem");
    const char *st = json_get_str(&d, o, "status"), *comp = json_get_str(&d, o, "completion");
    const char *why = NULL;
    json_get_int(&d, o, "tokens", &tokens);
    if (!lang || !prob || !st || !comp || !json_get_int(&d, o, "sample", &sample) ||
        !json_get_num(&d, o, "seconds", &secs) || sample < 0 || sample > 1000000 ||
        cm_ev_status_parse(st) < 0)
        why = "needs lang, problem, sample, status, seconds and completion";
    else {
        cm_ev_record r = {(char *)lang, (char *)prob, (char *)comp, (int)sample, (int)tokens,
                          (cm_ev_status)cm_ev_status_parse(st), secs};
        if (cm_ev_records_add(rs, &r, err))
            why = "out of memory";
    }
    json_free(&d);
    return why;
}

cm_status cm_ev_records_parse_line(const char *line, size_t len, cm_ev_records *rs, cm_err *err)
{
    const char *why = parse_record(line, len, rs, err);
    if (why && !strcmp(why, "out of memory"))
        return CM_E_NOMEM;
    return why ? cm_fail(err, CM_E_FORMAT, "results line: %s", why) : CM_OK;
}

cm_status cm_ev_records_load(const char *path, cm_ev_records *rs, int *dropped, cm_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? CM_OK : cm_fail(err, CM_E_IO, "cannot open %s: %s", path,
                                                 strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lineno = 0;
    cm_status s = CM_OK;
    while (!s && (n = getline(&line, &cap, f)) > 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (n == 0)
            continue;
        const char *why = parse_record(line, (size_t)n, rs, err);
        if (why && !strcmp(why, "out of memory"))
            s = CM_E_NOMEM;
        else if (why && dropped)
            (*dropped)++;
        else if (why)
            s = cm_fail(err, CM_E_FORMAT, "%s line %d: %s", path, lineno, why);
    }
    free(line);
    fclose(f);
    return s;
}

static int key_cmp(const cm_ev_record *a, const char *lang, const char *prob, int sample)
{
    int c = strcmp(a->lang, lang);
    if (!c)
        c = strcmp(a->problem, prob);
    return c ? c : (a->sample > sample) - (a->sample < sample);
}

static int order_cmp(const void *x, const void *y, void *base)
{
    size_t i = *(const size_t *)x, j = *(const size_t *)y;
    const cm_ev_record *r = base, *b = &r[j];
    int c = key_cmp(&r[i], b->lang, b->problem, b->sample);
    return c ? c : (i > j) - (i < j);
}

cm_status cm_ev_records_index(cm_ev_records *rs, cm_err *err)
{
    free(rs->order);
    rs->order = malloc(sizeof *rs->order * (rs->n + 1));
    if (!rs->order)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < rs->n; i++)
        rs->order[i] = i;
    qsort_r(rs->order, rs->n, sizeof *rs->order, order_cmp, rs->r);
    size_t k = 0; /* drop duplicates: the first one read wins */
    for (size_t i = 0; i < rs->n; i++) {
        const cm_ev_record *r = &rs->r[rs->order[i]];
        if (k && !key_cmp(&rs->r[rs->order[k - 1]], r->lang, r->problem, r->sample))
            continue;
        rs->order[k++] = rs->order[i];
    }
    rs->n_unique = k;
    return CM_OK;
}

const cm_ev_record *cm_ev_records_find(const cm_ev_records *rs, const char *lang,
                                       const char *problem, int sample)
{
    size_t lo = 0, hi = rs->order ? rs->n_unique : 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = key_cmp(&rs->r[rs->order[mid]], lang, problem, sample);
        if (!c)
            return &rs->r[rs->order[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

void cm_ev_record_write(FILE *f, const cm_ev_record *r)
{
    fputs("{\"lang\": ", f);
    json_write_string(f, r->lang);
    fputs(", \"problem\": ", f);
    json_write_string(f, r->problem);
    fprintf(f, ", \"sample\": %d, \"status\": \"%s\", \"seconds\": %.3f, \"tokens\": %d, "
            "\"completion\": ", r->sample, cm_ev_status_name(r->status), r->seconds, r->tokens);
    json_write_string(f, r->completion);
    fputs("}\n", f);
}

double cm_pass_at_k(int n, int c, int k)
{
    if (n - c < k)
        return 1.0;
    double prod = 1.0;
    for (int i = n - c + 1; i <= n; i++)
        prod *= 1.0 - (double)k / i;
    return 1.0 - prod;
}

/* ---- the summary ---- */

typedef struct {
    const char *lang;
    int problems, completions, min_n, counts[CM_EV_N_STATUS];
    double passk[MAX_KS]; /* sums over problems, then means */
    double seconds;
} lang_sum;

/* Folds one problem's samples [a, b) of the order into s. */
static void add_problem(const cm_ev_records *rs, size_t a, size_t b, const int *ks, int n_ks,
                        lang_sum *s)
{
    int n = (int)(b - a), c = 0;
    for (size_t i = a; i < b; i++) {
        const cm_ev_record *r = &rs->r[rs->order[i]];
        c += r->status == CM_EV_PASS;
        s->counts[r->status]++;
        s->seconds += r->seconds;
    }
    for (int j = 0; j < n_ks; j++)
        s->passk[j] += ks[j] <= n ? cm_pass_at_k(n, c, ks[j]) : 0;
    s->min_n = s->problems == 0 || n < s->min_n ? n : s->min_n;
    s->problems++, s->completions += n;
}

/* Per-language sums over the indexed records; returns how many languages. */
static int summarize(const cm_ev_records *rs, const int *ks, int n_ks, lang_sum *out, int max)
{
    int nl = 0;
    for (size_t i = 0; i < rs->n_unique;) {
        const cm_ev_record *r = &rs->r[rs->order[i]];
        size_t j = i;
        while (j < rs->n_unique && !strcmp(rs->r[rs->order[j]].lang, r->lang) &&
               !strcmp(rs->r[rs->order[j]].problem, r->problem))
            j++;
        if (nl == 0 || strcmp(out[nl - 1].lang, r->lang)) {
            if (nl == max)
                break;
            memset(&out[nl++], 0, sizeof *out);
            out[nl - 1].lang = r->lang;
        }
        add_problem(rs, i, j, ks, n_ks, &out[nl - 1]);
        i = j;
    }
    for (int l = 0; l < nl; l++)
        for (int j = 0; j < n_ks; j++)
            out[l].passk[j] /= out[l].problems;
    return nl;
}

static void write_json(FILE *f, const lang_sum *s, int nl, const int *ks, int n_ks)
{
    fputs("{\"languages\": [", f);
    for (int l = 0; l < nl; l++) {
        fprintf(f, "%s\n  {\"lang\": \"%s\", \"problems\": %d, \"completions\": %d, "
                "\"samples_per_problem\": %d", l ? "," : "", s[l].lang, s[l].problems,
                s[l].completions, s[l].min_n);
        for (int k = 0; k < CM_EV_N_STATUS; k++)
            fprintf(f, ", \"%s\": %d", cm_ev_status_name((cm_ev_status)k), s[l].counts[k]);
        for (int j = 0; j < n_ks; j++)
            if (ks[j] <= s[l].min_n)
                fprintf(f, ", \"pass@%d\": %.6f", ks[j], s[l].passk[j]);
        fputs("}", f);
    }
    fputs("\n]}\n", f);
}

static void write_csv(FILE *f, const lang_sum *s, int nl, const int *ks, int n_ks)
{
    fputs("lang,problems,completions,samples_per_problem", f);
    for (int k = 0; k < CM_EV_N_STATUS; k++)
        fprintf(f, ",%s", cm_ev_status_name((cm_ev_status)k));
    for (int j = 0; j < n_ks; j++)
        fprintf(f, ",pass@%d", ks[j]);
    fputc('\n', f);
    for (int l = 0; l < nl; l++) {
        fprintf(f, "%s,%d,%d,%d", s[l].lang, s[l].problems, s[l].completions, s[l].min_n);
        for (int k = 0; k < CM_EV_N_STATUS; k++)
            fprintf(f, ",%d", s[l].counts[k]);
        for (int j = 0; j < n_ks; j++)
            ks[j] <= s[l].min_n ? fprintf(f, ",%.6f", s[l].passk[j]) : fputs(",", f);
        fputc('\n', f);
    }
}

static void write_md(FILE *f, const lang_sum *s, int nl, const int *ks, int n_ks,
                     const char *title)
{
    fprintf(f, "%s\n\n| language | problems | n | pass | fail | timeout | compile error | "
            "crash |", title);
    for (int j = 0; j < n_ks; j++)
        fprintf(f, " pass@%d |", ks[j]);
    fputs("\n|---|--:|--:|--:|--:|--:|--:|--:|", f);
    for (int j = 0; j < n_ks; j++)
        fputs("--:|", f);
    fputc('\n', f);
    for (int l = 0; l < nl; l++) {
        fprintf(f, "| %s | %d | %d |", s[l].lang, s[l].problems, s[l].min_n);
        for (int k = 0; k < CM_EV_N_STATUS; k++)
            fprintf(f, " %d |", s[l].counts[k]);
        for (int j = 0; j < n_ks; j++)
            ks[j] <= s[l].min_n ? fprintf(f, " %.1f%% |", 100 * s[l].passk[j]) : fputs(" - |", f);
        fputc('\n', f);
    }
}

static cm_status write_one(const char *dir, const char *name, const lang_sum *s, int nl,
                           const int *ks, int n_ks, const char *title, cm_err *err)
{
    char path[1024];
    cm_atomic_file a;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cm_status st = cm_atomic_open(&a, path, 0644, err);
    FILE *f = st ? NULL : cm_atomic_stream(&a);
    if (!st && !f) {
        cm_atomic_abort(&a);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    if (st)
        return st;
    if (strstr(name, ".json"))
        write_json(f, s, nl, ks, n_ks);
    else if (strstr(name, ".csv"))
        write_csv(f, s, nl, ks, n_ks);
    else
        write_md(f, s, nl, ks, n_ks, title);
    return cm_atomic_commit(&a, 0, err);
}

cm_status cm_ev_summarize(const cm_ev_records *rs, const int *ks, int n_ks, const char *dir,
                          const char *title, cm_err *err)
{
    lang_sum s[16];
    if (n_ks > MAX_KS)
        return cm_fail(err, CM_E_USAGE, "at most %d values of k", MAX_KS);
    int nl = summarize(rs, ks, n_ks, s, 16);
    const char *names[] = {"summary.json", "summary.csv", "summary.md"};
    cm_status st = CM_OK;
    for (int i = 0; !st && i < 3; i++)
        st = write_one(dir, names[i], s, nl, ks, n_ks, title, err);
    return st;
}
