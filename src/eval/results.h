/* results.h - `codemoe eval`'s results: one JSON line per completion, and
 * the per-language summary with the unbiased pass@k estimator.
 *
 * results.jsonl lines: {"lang", "problem", "sample", "status", "seconds",
 * "tokens", "completion"}.  A line cut short (a run killed mid-write) is
 * dropped on reading, so an interrupted run resumes where it stopped.
 *
 * pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on
 * Code"): with n samples of a problem of which c pass,
 *   pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k/i)
 * (the product form avoids the huge binomials), 1 when n - c < k; averaged
 * over the problems.  It is reported only for k <= n of every problem. */
#ifndef CM_RESULTS_H
#define CM_RESULTS_H

#include <stddef.h>
#include <stdio.h>

#include "eval/problems.h"
#include "util/status.h"

typedef struct {
    char *lang, *problem, *completion;
    int sample, tokens;
    cm_ev_status status;
    double seconds;
} cm_ev_record;

typedef struct {
    cm_ev_record *r;
    size_t n, cap;
    size_t *order; /* indices sorted by key, after cm_ev_records_index */
    size_t n_unique; /* entries of order (duplicates dropped) */
} cm_ev_records;

/* Appends the lines of path (missing file: nothing).  *dropped counts the
 * malformed lines skipped (a cut-off last line); NULL to make any malformed
 * line an error. */
cm_status cm_ev_records_load(const char *path, cm_ev_records *rs, int *dropped, cm_err *err);
/* One results.jsonl line (no newline) appended to rs; CM_E_FORMAT when it
 * is not a complete record. */
cm_status cm_ev_records_parse_line(const char *line, size_t len, cm_ev_records *rs, cm_err *err);
cm_status cm_ev_records_add(cm_ev_records *rs, const cm_ev_record *r, cm_err *err); /* copies */
void cm_ev_records_free(cm_ev_records *rs);
/* Sorts by (lang, problem, sample); duplicates keep the first.  Then
 * cm_ev_records_find works. */
cm_status cm_ev_records_index(cm_ev_records *rs, cm_err *err);
const cm_ev_record *cm_ev_records_find(const cm_ev_records *rs, const char *lang,
                                       const char *problem, int sample);

void cm_ev_record_write(FILE *f, const cm_ev_record *r);

double cm_pass_at_k(int n, int c, int k);

/* Writes summary.json, summary.csv and summary.md into dir (each atomically)
 * from the indexed records; ks: the k of pass@k; title heads the markdown. */
cm_status cm_ev_summarize(const cm_ev_records *rs, const int *ks, int n_ks, const char *dir,
                          const char *title, cm_err *err);

#endif
