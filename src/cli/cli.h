/* cli.h - pieces shared by the codemoe subcommands. */
#ifndef CM_CLI_H
#define CM_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/forward.h"
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
/* Placement on a device backend: -ngl/--gpu-layers N, --vram-budget SIZE. */
int arg_is_place(const char *a);
cm_status arg_place(const char *a, const char *v, cm_place_opts *o, cm_err *err);
#define PLACE_HELP                                                                           \
    "      -ngl, --gpu-layers N  on a GPU backend: the last N layers' weights on the\n"       \
    "                          device (more than the layers: the output head too)\n"         \
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

/* The model `codemoe run` uses when no -m is given, or NULL. */
const char *default_model_path(char *buf, size_t cap);

/* Prints "codemoe: <msg>" on stderr and returns the exit code for s. */
int cli_fail(const cm_err *err);

double now_seconds(void);
double peak_rss_mib(void);

#endif
