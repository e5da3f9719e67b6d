/* cli.h - pieces shared by the codemoe subcommands. */
#ifndef CM_CLI_H
#define CM_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <getopt.h>

#include "engine/forward.h"
#include "formats/gguf.h"
#include "util/status.h"

int cli_run(int argc, char **argv);
int cli_info(int argc, char **argv);
int cli_logits(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_perplexity(int argc, char **argv);
int cli_convert(int argc, char **argv);
int cli_pack(int argc, char **argv);
int cli_quantize(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_route(int argc, char **argv);
int cli_sweep(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_upcycle(int argc, char **argv);
int cli_grow(int argc, char **argv);
int cli_merge(int argc, char **argv);
int cli_eval(int argc, char **argv);

/* ---- getopt_long for every subcommand ----
 * A table is a struct option array ending in {0}: an option whose val is an
 * ASCII letter or digit also has that short form (-n 4, -n4), any other val
 * (CLI_LONG + k) makes it long-only.  --name=value, clustered short flags and
 * `--` work as in GNU tools; llama.cpp's single-dash spellings -ngl, -cnv
 * and -no-cnv are taken for the long options of those names.
 * -h/--help need not be listed: they set *help and parsing stops. */
enum { CLI_POS = 1, CLI_LONG = 256 };
/* Called for each option in order: id is its val, flag its name as typed
 * ("-n", "--n-predict"), val its argument or NULL; positional arguments
 * (also all after `--`) come with id CLI_POS, flag NULL. */
typedef cm_status (*cli_opt_fn)(void *user, int id, const char *flag, const char *val,
                                cm_err *err);
/* Errors (unknown or ambiguous option, missing value, value given to a
 * flag, whatever fn returns) fill err with one line, CM_E_USAGE for the
 * parser's own, ending "(see codemoe CMD --help)". */
cm_status cli_getopt(int argc, char **argv, const char *cmd, const struct option *opts,
                     cli_opt_fn fn, void *user, int *help, cm_err *err);
/* The error for a positional argument a command does not take. */
cm_status cli_stray(const char *cmd, const char *arg, cm_err *err);
/* The long options of -ngl/--gpu-layers, --vram-budget and --device, with
 * these ids, for a command's table; cli_place_opt handles them. */
enum { CLI_PLACE_NGL = CLI_LONG + 200, CLI_PLACE_BUDGET, CLI_PLACE_DEVICE };
#define CLI_PLACE_OPTIONS                                                                    \
    {"ngl", required_argument, 0, CLI_PLACE_NGL},                                            \
    {"gpu-layers", required_argument, 0, CLI_PLACE_NGL},                                     \
    {"n-gpu-layers", required_argument, 0, CLI_PLACE_NGL},                                   \
    {"vram-budget", required_argument, 0, CLI_PLACE_BUDGET},                                 \
    {"device", required_argument, 0, CLI_PLACE_DEVICE}
cm_status cli_place_opt(int id, const char *flag, const char *v, cm_place_opts *o, cm_err *err);

/* Flag helpers: they fill err with a message naming the flag on failure
 * (status CM_E_USAGE, so the command exits 2). */
int arg_is(const char *a, const char *short_name, const char *long_name);
cm_status arg_value(int argc, char **argv, int *i, const char **out, cm_err *err);
cm_status arg_int(const char *flag, const char *s, long lo, long hi, int *out, cm_err *err);
cm_status arg_float(const char *flag, const char *s, float lo, float hi, float *out, cm_err *err);
cm_status arg_u64(const char *flag, const char *s, uint64_t *out, cm_err *err);
cm_status arg_threads(const char *s, cm_err *err); /* -t N: sets the OpenMP team size */
/* A byte count: 1048576, 512K, 300M, 1.5G (powers of 1024; optional "iB"/"B"). */
cm_status arg_size(const char *flag, const char *s, uint64_t *out, cm_err *err);
#define PLACE_HELP                                                                           \
    "  -ngl, --n-gpu-layers N  on a GPU backend: the last N layers' weights on the\n"       \
    "                          device (more than the layers: the output head too;\n"        \
    "                          --gpu-layers is the same)\n"                                  \
    "      --vram-budget SIZE  on a GPU backend: device bytes for weights (default: what\n"  \
    "                          the card has free); experts that do not fit run on the CPU\n"   \
    "      --device N          on a GPU backend: its N-th device (codemoe info --devices)\n"

/* On stderr: the backend and device a context ran on, and how many ops
 * of each kind ran on the CPU because the backend lacks them. */
void print_backend_use(const cm_ctx *c);
/* One line: where the weights are, and the device expert cache's counts. */
void print_placement(const cm_place_stats *ps, FILE *f);

cm_status parse_kv_type(const char *s, cm_kv_type *out, cm_err *err);

/* Reads a whole file (NUL-terminated for convenience; *len excludes it). */
cm_status read_file(const char *path, char **out, size_t *len, cm_err *err);

/* Reads a stream to its end (standard input: a pipe or a redirected file). */
cm_status read_stream(FILE *f, const char *name, char **out, size_t *len, cm_err *err);

/* A text from the command line: given (-p TEXT) or a file (-f FILE, "-"
 * for standard input).  Setting one twice is a usage error naming flag. */
typedef struct {
    const char *text, *file;
    int set;
} cli_text;
typedef struct {
    char *p; /* NUL-terminated; len excludes it */
    size_t len;
} cli_buf;
cm_status cli_text_set(cli_text *t, const char *flag, const char *v, int is_file, cm_err *err);
cm_status cli_text_read(const cli_text *t, cli_buf *out, cm_err *err);
/* llama.cpp's -e: \n \r \t \' \" \\ \xHH (others kept as typed), in
 * place; returns the new length. */
size_t cli_unescape(char *s, size_t len);
/* Progress of a long write (convert, quantize) on stderr, redrawn in
 * place: "tensor i/N, MB/s, ETA", only when stderr is a terminal.
 * cli_progress_attach gives the callback and its state (NULL, NULL
 * otherwise). */
typedef struct {
    const char *what;
    double t0;
} cli_progress;
void cli_progress_fn(void *ctx, size_t i, size_t n, uint64_t done, uint64_t total,
                     const char *name);
void cli_progress_attach(cli_progress *p, const char *what, gguf_progress_fn *fn, void **ctx);
/* What --infill looks for, for messages. */
#define CLI_FIM_KNOWN                                                                        \
    "tokenizer.ggml.fim_pre_token_id or a token such as <fim_prefix>, <|fim_prefix|>, "       \
    "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C> or <PRE>"

/* The model `codemoe run` uses when no -m is given, or NULL. */
const char *default_model_path(char *buf, size_t cap);

/* Prints "codemoe: <msg>" on stderr and returns the exit code for s. */
int cli_fail(const cm_err *err);

double now_seconds(void);
double peak_rss_mib(void);

#endif
