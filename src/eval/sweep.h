/* sweep.h - quantization sweeps: what each quantization scheme costs each
 * programming language, in perplexity and in KL divergence from the
 * unquantized model.
 *
 * The method, for a float (f32, f16, bf16) model:
 *   - each language's corpus text is tokenized once and capped;
 *   - the base model is evaluated once per language with cm_perplexity,
 *     saving its log-probabilities (f16) to an unlinked temporary file:
 *     they are the reference for KLD and top-1 agreement, and its PPL is
 *     the reference for the PPL increase;
 *   - for each scheme the base is quantized into memory (a memfd: nothing
 *     is written to disk), loaded from /proc/self/fd/N, and measured on
 *     every language exactly as `codemoe perplexity --kld-base` would;
 *     one row per (scheme, language) is handed to the caller as soon as it
 *     is measured, so a caller that saves each row can resume.
 * A language-expert pack is quantized whole (every member); each language
 * is measured on the member it routes to (its own expert, else the
 * fallback, else the first expert), and with `cross` on every member: the
 * cross-language matrix.  For a pack the base reference of a row is the
 * unquantized pack with the same member selected.
 *
 * Temporary space: per measured (member, language) pair, chunks x
 * (n_ctx - 1 - n_ctx/2) x (4 + 2 x n_vocab) bytes, in a directory
 * TMPDIR/codemoe-sweep.<pid>.XXXXXX; cm_sweep_measure checks the free space
 * first, and removes what runs killed mid-way left behind.  Nothing here
 * keeps global state. */
#ifndef CM_SWEEP_H
#define CM_SWEEP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/forward.h"
#include "convert/quantize.h"
#include "util/status.h"

#define CM_SWEEP_MAX_LANGS 16
#define CM_SWEEP_MAX_SCHEMES 24

/* One measurement.  Strings are NUL-terminated and never contain a
 * comma, quote or control character (names are checked on input). */
typedef struct {
    char scheme[16];          /* the mix: "q8_0", "q4_k_m", ... */
    char language[32];
    char expert[32];          /* the pack member measured; "" for a plain model */
    double bits_per_weight;   /* 8 x tensor bytes / weights, over the whole file */
    uint64_t model_bytes;     /* the quantized GGUF file */
    double ppl;
    double ppl_increase_pct;  /* 100 (ppl / base_ppl - 1) */
    double kld;               /* mean KLD(base || quantized), nats */
    double top1_agreement;    /* percent of positions whose argmaxes agree */
    int64_t tokens;           /* tokens evaluated: chunks x ctx */
    double seconds;           /* wall time of this row's evaluation */
    double base_ppl;          /* the unquantized model on the same tokens */
    int ctx;
    uint64_t fallback_tensors; /* tensors whose rows did not fit the wanted blocks */
} cm_sweep_row;

/* Language-major: each language's base, then every scheme on it (all the
 * quantized models loaded at once).  Scheme-major: every base first, then
 * one quantized model at a time. */
typedef enum { CM_SWEEP_AUTO, CM_SWEEP_LANGUAGE_MAJOR, CM_SWEEP_SCHEME_MAJOR } cm_sweep_order;

typedef struct {
    const char *model;        /* f32/f16/bf16 GGUF, or a pack of them */
    const char *corpus;       /* DIR: DIR/<lang>/<split>.jsonl.xz */
    const char *split;        /* NULL: "valid" */
    const char *const *langs;
    int n_langs;              /* 1..CM_SWEEP_MAX_LANGS */
    const cm_qmix *const *schemes;
    int n_schemes;            /* 1..CM_SWEEP_MAX_SCHEMES */
    int max_tokens;           /* per language; 0: the whole split */
    int n_ctx, n_batch;       /* n_batch 0: n_ctx */
    cm_kv_type kv;
    int cross;                /* packs: also every (member, language) pair */
    const char *tmpdir;       /* NULL: $TMPDIR, else /tmp */
    cm_sweep_order order;     /* CM_SWEEP_AUTO: by memory (see cm_sweep_measure) */
    const cm_backend_ops *backend; /* measures on it (NULL: the CPU); quantizes on the CPU */
} cm_sweep_config;

typedef struct {
    int64_t done, total;      /* tokens evaluated so far / in the whole run */
    int rows_done, rows_total;
    double elapsed;           /* seconds since cm_sweep_measure began */
    const char *what;         /* "base python", "q4_0 python", "quantizing q4_0" */
    int chunk, n_chunk;       /* within `what`; 0 and 0 while quantizing */
} cm_sweep_progress;

/* How cm_sweep_measure reports.  Every member may be NULL. */
typedef struct {
    void (*log)(void *user, const char *line);  /* one line, no newline */
    void (*progress)(void *user, const cm_sweep_progress *p);
    /* A new row; a failure here (saving it) stops the run with that error. */
    cm_status (*row)(void *user, const cm_sweep_row *r, cm_err *err);
    /* Every row of this scheme exists now (measured or resumed). */
    void (*scheme_done)(void *user, const cm_qmix *mix);
    void *user;
} cm_sweep_hooks;

typedef struct cm_sweep cm_sweep;

/* Loads the model and plans the run.  An already-quantized model is
 * refused (CM_E_UNSUPPORTED): quantizing it again would compound two
 * errors and measure neither.  cfg and what it points to must outlive sw. */
cm_status cm_sweep_open(const cm_sweep_config *cfg, cm_sweep **out, cm_err *err);
void cm_sweep_free(cm_sweep *sw);

/* The member a language is measured on ("" for a plain model). */
const char *cm_sweep_route(const cm_sweep *sw, const char *lang);
int cm_sweep_is_pack(const cm_sweep *sw);

/* Marks the rows in done[] (the key is scheme, language, expert) as
 * measured, then reads and tokenizes the corpus of every language that
 * still has work.  A done row measured with another ctx, or (for a
 * language read again) over another number of tokens, is CM_E_FORMAT; a
 * missing corpus or one too short for two chunks is an error naming it. */
cm_status cm_sweep_prepare(cm_sweep *sw, const cm_sweep_row *done, size_t n_done, cm_err *err);
/* Rows still to measure (after cm_sweep_prepare). */
int cm_sweep_rows_todo(const cm_sweep *sw);

/* Measures every row still to do, in scheme order.  Errors: CM_E_IO or
 * CM_E_NOMEM when the run fails (disk, memory), CM_E_FORMAT for weights
 * that cannot be quantized (NaN), or what the row hook returned. */
cm_status cm_sweep_measure(cm_sweep *sw, const cm_sweep_hooks *h, cm_err *err);

/* ------------------------------------------------------------ results */

/* The CSV header line (without its CRLF). */
extern const char CM_SWEEP_CSV_HEADER[];

/* Reads a results CSV (RFC 4180; CRLF or LF).  A missing file gives no
 * rows and CM_OK; another header or a malformed row is CM_E_FORMAT naming
 * the line.  *rows is malloc'ed (caller frees). */
cm_status cm_sweep_csv_read(const char *path, cm_sweep_row **rows, size_t *n, cm_err *err);
/* Writes every row to a new temporary file beside path (util/atomic_file.h),
 * syncs and renames it over path, so path always holds a complete CSV. */
cm_status cm_sweep_csv_write(const char *path, const cm_sweep_row *rows, size_t n, cm_err *err);
/* A JSON array of row objects (keys as the CSV columns).  Returns 0, or -1
 * on a write error. */
int cm_sweep_json_write(FILE *f, const cm_sweep_row *rows, size_t n);

/* The nominal width of a scheme: 8 for q8_0, 4 for q4_0 and q4_k_m, ... */
int cm_sweep_nominal_bits(const cm_qmix *mix);
/* "disparity at 4 bits (q4_0): rust suffers most (+12.3% PPL), python least
 * (+4.1%)" over the rows of scheme whose expert is the routed one (the
 * caller passes only those).  Returns 0, or -1 when no row matches. */
int cm_sweep_disparity(const cm_sweep_row *rows, size_t n, const cm_qmix *mix, char *line,
                       size_t cap);

#endif
