/* cli_quantize.c - `codemoe quantize`: GGUF -> GGUF of another type. */
#include <stdio.h>
#include <unistd.h>
#include <string.h>

#include "cli/cli.h"
#include "convert/quantize.h"

static const char QUANTIZE_HELP_HEAD[] =
    "usage: codemoe quantize IN.gguf OUT.gguf TYPE [-t N] [--pure] [--quiet]\n"
    "\n"
    "Writes IN's model with its weights in TYPE, choosing each tensor's type as\n"
    "llama-quantize does (the same types, and the same bytes: no importance\n"
    "matrix).  Norms, biases, routers and other 1-D tensors keep their type; the\n"
    "output projection gets q6_K (q8_0 if its rows do not fill q6_K blocks);\n"
    "rows that do not fill the type's blocks fall back to q5_0 (q4_K), q5_1\n"
    "(q5_K), q8_0 (q6_K), q4_0 (q2_K, q3_K) or f16, with a warning.  An already\n"
    "quantized IN works (each tensor is decoded, then encoded) but loses more.\n"
    "Prints one line per tensor (shape, types, RMS error against IN) and the\n"
    "sizes before and after.  OUT appears only when complete.\n"
    "\n"
    "  -t N      threads\n"
    "  --pure    every weight in TYPE: no per-tensor rules\n"
    "  --quiet   only warnings and the summary\n"
    "\n"
    "TYPE (case does not matter; q3_k, q4_k, q5_k mean the _m mixes):\n";

static void print_help(void)
{
    fputs(QUANTIZE_HELP_HEAD, stdout);
    for (size_t i = 0; cm_qmix_at(i); i++)
        printf("  %-8s %s\n", cm_qmix_at(i)->name, cm_qmix_at(i)->about);
}

typedef struct {
    const char *pos[3];
    int n_pos, help;
    cm_quantize_opts o;
} qargs;

enum { OPT_PURE = CLI_LONG };

static const struct option QUANTIZE_OPTS[] = {
    {"quiet", no_argument, 0, 'q'}, {"pure", no_argument, 0, OPT_PURE},
    {"threads", required_argument, 0, 't'}, {0}};

static cm_status quantize_opt(void *user, int id, const char *flag, const char *v, cm_err *err)
{
    qargs *q = user;
    (void)flag;
    switch (id) {
    case CLI_POS:
        if (q->n_pos == 3)
            return cm_fail(err, CM_E_USAGE, "quantize takes IN OUT TYPE (extra argument '%s')", v);
        q->pos[q->n_pos++] = v;
        return CM_OK;
    case 'q': q->o.quiet = 1; return CM_OK;
    case OPT_PURE: q->o.pure = 1; return CM_OK;
    default: return arg_threads(v, err);
    }
}

static cm_status parse_quantize(int argc, char **argv, qargs *q, cm_err *err)
{
    cm_status s = cli_getopt(argc, argv, "quantize", QUANTIZE_OPTS, quantize_opt, q, &q->help, err);
    if (!s && !q->help && q->n_pos != 3)
        s = cm_fail(err, CM_E_USAGE, "usage: codemoe quantize IN.gguf OUT.gguf TYPE (see "
                    "codemoe quantize --help)");
    return s;
}

int cli_quantize(int argc, char **argv)
{
    qargs q = {.o = {.log = stdout, .warn = stderr}};
    cm_err err = {0};
    if (parse_quantize(argc, argv, &q, &err))
        return cli_fail(&err);
    if (q.help) {
        print_help();
        return 0;
    }
    cli_progress pr;
    if (q.o.quiet || !isatty(1)) /* (else its lines share the terminal with the tensor lines) */
        cli_progress_attach(&pr, "quantize", &q.o.progress, &q.o.progress_ctx);
    if (cm_quantize_file(q.pos[0], q.pos[1], q.pos[2], &q.o, &err))
        return cli_fail(&err);
    return 0;
}
