/* compare.c - see compare.h. */
#include "eval/compare.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Samples and passes of one problem in rs (n = 0: none). */
static void problem_nc(const cm_ev_records *rs, const char *lang, const char *prob, int *n, int *c)
{
    const cm_ev_record *r;
    *n = *c = 0;
    while ((r = cm_ev_records_find(rs, lang, prob, *n))) {
        *c += r->status == CM_EV_PASS;
        ++*n;
    }
}

typedef struct {
    double sum_m, sum_d, sum_d2;
    int p;
} pair_stats;

/* Model m against the baseline on language lang, for k: over the problems
 * both ran with at least k samples. */
static pair_stats pair(const cm_ev_records *base, const cm_ev_records *m, const char *lang, int k)
{
    pair_stats ps = {0, 0, 0, 0};
    for (size_t i = 0; i < base->n_unique; i++) {
        const cm_ev_record *r = &base->r[base->order[i]];
        int nb, cb, nm, cm;
        if (strcmp(r->lang, lang) || r->sample != 0)
            continue;
        problem_nc(base, lang, r->problem, &nb, &cb);
        problem_nc(m, lang, r->problem, &nm, &cm);
        if (nb < k || nm < k)
            continue;
        double pm = cm_pass_at_k(nm, cm, k), d = pm - cm_pass_at_k(nb, cb, k);
        ps.sum_m += pm, ps.sum_d += d, ps.sum_d2 += d * d, ps.p++;
    }
    return ps;
}

static void cell(FILE *f, pair_stats ps, int is_base)
{
    if (ps.p == 0) {
        fputs(" - | - |", f);
        return;
    }
    double mean = ps.sum_d / ps.p, var = ps.p > 1 ? (ps.sum_d2 - ps.p * mean * mean) / (ps.p - 1) : 0;
    double half = ps.p > 1 ? 1.96 * sqrt(var > 0 ? var : 0) / sqrt(ps.p) : INFINITY;
    fprintf(f, " %.1f%% |", 100 * ps.sum_m / ps.p);
    if (is_base)
        fputs(" (baseline) |", f);
    else if (isinf(half))
        fprintf(f, " %+.1f (one problem) |", 100 * mean);
    else
        fprintf(f, " %+.1f [%+.1f, %+.1f]%s |", 100 * mean, 100 * (mean - half),
                100 * (mean + half), fabs(mean) <= half ? " noise" : "");
}

cm_status cm_ev_compare(const cm_ev_records *sets, const char *const *names, int n_sets, int base,
                        const int *ks, int n_ks, FILE *f, cm_err *err)
{
    const cm_ev_records *b = &sets[base];
    if (!b->order)
        return cm_fail(err, CM_E_RANGE, "the baseline's results are not indexed");
    fputs("| model | language | problems |", f);
    for (int j = 0; j < n_ks; j++)
        fprintf(f, " pass@%d | difference, 95%% CI |", ks[j]);
    fputs("\n|---|---|--:|", f);
    for (int j = 0; j < n_ks; j++)
        fputs("--:|---|", f);
    fputc('\n', f);
    const char *lang = NULL;
    for (size_t i = 0; i < b->n_unique; i++) {
        const char *l = b->r[b->order[i]].lang;
        if (lang && !strcmp(lang, l))
            continue;
        lang = l;
        for (int m = 0; m < n_sets; m++) {
            pair_stats p1 = pair(b, &sets[m], lang, 1);
            fprintf(f, "| %s | %s | %d |", names[m], lang, p1.p);
            for (int j = 0; j < n_ks; j++)
                cell(f, pair(b, &sets[m], lang, ks[j]), m == base);
            fputc('\n', f);
        }
    }
    return CM_OK;
}
