/* compare.h - `codemoe eval --compare`: models on the same problems and
 * samples, per language, against a baseline.
 *
 * For each model, language and k: pass@k (the mean over problems of the
 * unbiased estimator) and its difference to the baseline with a 95%
 * confidence interval from the paired per-problem differences:
 * mean +/- 1.96 * sd / sqrt(P) over the P problems both have.  A
 * difference whose interval contains 0 is marked "noise": with ~160
 * problems a language, a few problems more or less solved is not a
 * finding. */
#ifndef CM_COMPARE_H
#define CM_COMPARE_H

#include <stdio.h>

#include "eval/results.h"
#include "util/status.h"

/* sets[i] (indexed) are the results of names[i]; base: the baseline's
 * index.  Writes a markdown table to f. */
cm_status cm_ev_compare(const cm_ev_records *sets, const char *const *names, int n_sets, int base,
                        const int *ks, int n_ks, FILE *f, cm_err *err);

#endif
