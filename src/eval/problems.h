/* problems.h - HumanEval and MultiPL-E problems, and running their programs.
 *
 * The files are those of ../shared/evalsets (README there): gzip-compressed
 * JSONL, one problem per line.  HumanEval.jsonl.gz has task_id, prompt,
 * entry_point, canonical_solution and test; multipl-e-humaneval-<lang>.jsonl.gz
 * has name, language, prompt, tests and stop_tokens.  A program is
 *   HumanEval:  prompt + completion + "\n" + test + "\ncheck(" + entry_point + ")\n"
 *   MultiPL-E:  prompt + completion + tests
 * run with the language's commands (cm_eval_lang); it passes when it exits 0
 * (go: `go test` exits 0 only when the tests pass). */
#ifndef CM_PROBLEMS_H
#define CM_PROBLEMS_H

#include <stddef.h>

#include "eval/sandbox.h"
#include "util/status.h"

#define CM_EV_MAX_STOPS 8

typedef enum { CM_BENCH_HUMANEVAL, CM_BENCH_MULTIPLE } cm_bench;

typedef struct {
    char *name;        /* HumanEval/0, HumanEval_0_has_close_elements */
    char *prompt;
    char *tests;       /* what follows the completion, as the README assembles it */
    char *canonical;   /* HumanEval's canonical solution, else NULL */
    char *stops[CM_EV_MAX_STOPS];
    int n_stops;
} cm_problem;

typedef struct {
    cm_problem *p;
    int n;
} cm_problem_set;

/* A language: file name, commands and limits as MultiPL-E's containers. */
typedef struct {
    const char *name;      /* cpp java js go rs py */
    const char *file;      /* the program's file name */
    const char *compile;   /* NULL when there is no separate compile step */
    const char *run;
    const char *tools[3];  /* programs that must be on PATH (NULL-terminated) */
    const char *need_file; /* a file that must exist (javatuples.jar), or NULL */
    const char *apt;       /* Debian packages */
    const char *wrong;     /* a completion that must make every problem fail */
    unsigned data_mib, as_mib; /* RLIMIT_DATA, RLIMIT_AS (0: none) */
} cm_eval_lang;

/* The language named (cpp, java, js, go, rs, py), or NULL. */
const cm_eval_lang *cm_eval_lang_find(const char *name);
const cm_eval_lang *cm_eval_lang_at(int i); /* NULL past the last */
/* 1 when the language's toolchain is installed (on path, a PATH-like
 * list); else 0 and missing names what is not. */
int cm_eval_lang_ready(const cm_eval_lang *l, const char *path, char *missing, size_t cap);

/* Parses decompressed JSONL (len bytes); what names it in errors (with the
 * line).  Every line must be a problem of the given benchmark. */
cm_status cm_problems_parse(const char *text, size_t len, cm_bench bench, const char *what,
                            cm_problem_set *out, cm_err *err);
/* Reads a .jsonl.gz file (zlib, or `gzip -dc` where codemoe was built
 * without it) and parses it. */
cm_status cm_problems_load(const char *path, cm_bench bench, cm_problem_set *out, cm_err *err);
void cm_problems_free(cm_problem_set *s);
/* How the file is decompressed: "zlib" or "gzip -dc". */
const char *cm_problems_gunzip(void);

/* Cuts a completion at the first stop string (in place); returns its length. */
size_t cm_problem_cut(const cm_problem *p, char *completion, size_t len);
/* prompt + completion + tests (malloc'd, NUL-terminated), or NULL. */
char *cm_problem_program(const cm_problem *p, const char *completion, size_t *len);

typedef enum {
    CM_EV_PASS, CM_EV_FAIL, CM_EV_TIMEOUT, CM_EV_COMPILE_ERROR, CM_EV_CRASH, CM_EV_N_STATUS
} cm_ev_status;
const char *cm_ev_status_name(cm_ev_status s);
int cm_ev_status_parse(const char *name); /* -1 when unknown */

typedef struct {
    cm_ev_status status;
    double seconds;
    char detail[240]; /* the start of the failing step's stderr, one line */
} cm_ev_outcome;

/* Writes the program into a fresh scratch directory, compiles and runs it
 * in the sandbox (wall_s each step, 0: 15 s), removes the directory. */
cm_status cm_eval_program(const cm_sandbox *sb, const cm_eval_lang *l, const char *program,
                          size_t len, double wall_s, cm_ev_outcome *out, cm_err *err);

#endif
