/* cli_common.c - argument parsing and small utilities for the CLI. */
#include "cli/cli.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "config.h"
#include "util/atomic_file.h"

int arg_is(const char *a, const char *short_name, const char *long_name)
{
    return (short_name && !strcmp(a, short_name)) || (long_name && !strcmp(a, long_name));
}

cm_status arg_value(int argc, char **argv, int *i, const char **out, cm_err *err)
{
    if (*i + 1 >= argc)
        return cm_fail(err, CM_E_USAGE, "option %s needs a value", argv[*i]);
    *out = argv[++*i];
    return CM_OK;
}

cm_status arg_int(const char *flag, const char *s, long lo, long hi, int *out, cm_err *err)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end)
        return cm_fail(err, CM_E_USAGE, "option %s: '%s' is not an integer", flag, s);
    if (v < lo || v > hi)
        return cm_fail(err, CM_E_USAGE, "option %s: %ld is out of range [%ld, %ld]", flag, v, lo, hi);
    *out = (int)v;
    return CM_OK;
}

cm_status arg_float(const char *flag, const char *s, float lo, float hi, float *out, cm_err *err)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return cm_fail(err, CM_E_USAGE, "option %s: '%s' is not a number", flag, s);
    if (v < lo || v > hi)
        return cm_fail(err, CM_E_USAGE, "option %s: %g is out of range [%g, %g]", flag, v, lo, hi);
    *out = v;
    return CM_OK;
}

cm_status arg_u64(const char *flag, const char *s, uint64_t *out, cm_err *err)
{
    char *end;
    errno = 0;
    if (*s == '-')
        return cm_fail(err, CM_E_USAGE, "option %s: '%s' must not be negative", flag, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end)
        return cm_fail(err, CM_E_USAGE, "option %s: '%s' is not an integer", flag, s);
    *out = v;
    return CM_OK;
}

cm_status arg_size(const char *flag, const char *s, uint64_t *out, cm_err *err)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mult = 1;
    if (errno || end == s || !(v >= 0))
        return cm_fail(err, CM_E_USAGE, "option %s: '%s' is not a size (e.g. 512M, 2G)", flag, s);
    switch (*end) {
    case 'K': case 'k': mult = 1024.0; end++; break;
    case 'M': case 'm': mult = 1048576.0; end++; break;
    case 'G': case 'g': mult = 1073741824.0; end++; break;
    case 'T': case 't': mult = 1099511627776.0; end++; break;
    }
    if (mult > 1 && *end == 'i')
        end++;
    if (*end == 'B')
        end++;
    if (*end || v * mult > 1.8e19)
        return cm_fail(err, CM_E_USAGE, "option %s: '%s' is not a size (e.g. 512M, 2G)", flag, s);
    *out = (uint64_t)(v * mult);
    return CM_OK;
}

cm_status cli_place_opt(int id, const char *flag, const char *v, cm_place_opts *o, cm_err *err)
{
    if (id == CLI_PLACE_DEVICE)
        return arg_int(flag, v, 0, 1023, &o->device, err);
    if (id == CLI_PLACE_NGL)
        return arg_int(flag, v, 0, 1 << 20, &o->gpu_layers, err);
    cm_status s = arg_size(flag, v, &o->budget, err);
    if (!s && o->budget == 0)
        s = cm_fail(err, CM_E_USAGE, "option %s: the budget must be more than 0 bytes", flag);
    return s;
}

/* ---- getopt_long */

/* llama.cpp's options spelled with one dash and several letters: getopt
 * would read -ngl as -n gl, so they become --ngl where the table has it. */
static const char *const single_dash_long[] = {"--ngl", "--cnv", "--no-cnv", "--np", NULL};

static const char *single_dash_alias(const char *a)
{
    for (const char *const *p = single_dash_long; *p; p++)
        if (!strcmp(*p + 1, a))
            return *p;
    return NULL;
}

static const struct option *find_long(const struct option *opts, const char *name, size_t len)
{
    for (; opts->name; opts++)
        if (strlen(opts->name) == len && !memcmp(opts->name, name, len))
            return opts;
    return NULL;
}

/* The options with -h/--help appended, and the optstring getopt wants:
 * '-' (positionals in order, whatever POSIXLY_CORRECT says), ':' (a
 * missing value is told apart from an unknown flag), then the letters. */
static struct option *build_table(const struct option *opts, char *optstring, size_t cap)
{
    size_t n = 0, k = 0;
    while (opts[n].name)
        n++;
    struct option *all = calloc(n + 2, sizeof *all);
    if (!all)
        return NULL;
    memcpy(all, opts, n * sizeof *all);
    all[n] = (struct option){"help", no_argument, 0, 'h'};
    optstring[k++] = '-', optstring[k++] = ':', optstring[k++] = 'h';
    for (size_t i = 0; i < n && k + 3 < cap; i++) {
        int c = opts[i].val;
        if (c < 128 && isalnum(c) && !memchr(optstring, c, k)) {
            optstring[k++] = (char)c;
            if (opts[i].has_arg == required_argument)
                optstring[k++] = ':';
        }
    }
    optstring[k] = 0;
    return all;
}

/* Whether the word after the short-flag cluster a is its last flag's value. */
static int cluster_takes_next(const char *a, const char *optstring)
{
    for (a++; *a; a++) {
        const char *c = strchr(optstring + 2, *a);
        if (!c || *a == ':')
            return 0;
        if (c[1] == ':')
            return a[1] == 0; /* else the rest of the word is the value */
    }
    return 0;
}

/* A copy of argv (getopt permutes it) with -ngl turned into --ngl; only
 * before a `--`, and never a flag's value (-p -ngl is the prompt "-ngl"). */
static char **copy_argv(int argc, char **argv, const struct option *opts, const char *optstring)
{
    char **v = calloc((size_t)argc + 1, sizeof *v);
    if (!v)
        return NULL;
    int value_next = 0, done = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *alias;
        const struct option *o = NULL;
        v[i] = argv[i];
        if (i == 0 || value_next || done || a[0] != '-' || !a[1]) {
            value_next = 0;
            continue;
        }
        done = !strcmp(a, "--");
        if (a[1] != '-' && (alias = single_dash_alias(a)) && (o = find_long(opts, a + 1, strlen(a + 1))))
            v[i] = (char *)alias; /* getopt only permutes the pointers */
        else if (a[1] == '-' && !strchr(a, '='))
            o = find_long(opts, a + 2, strlen(a + 2));
        value_next = o ? o->has_arg == required_argument
                       : a[1] != '-' && cluster_takes_next(a, optstring);
    }
    return v;
}

/* The name of the flag being parsed, as typed, for messages: the word
 * before the value (or the one holding both) up to any '='. */
static void flag_name(const char *word, char *buf, size_t cap)
{
    if (single_dash_alias(word + 1))
        word++; /* -ngl was rewritten to --ngl */
    snprintf(buf, cap, "%.*s", (int)strcspn(word, "="), word);
}

/* How many long options start with the n bytes of name. */
static int n_prefixed(const struct option *opts, const char *name, size_t n)
{
    int k = 0;
    for (; opts->name; opts++)
        k += !strncmp(opts->name, name, n);
    return k;
}

/* getopt's '?' and ':' as one line. */
static cm_status bad_option(int c, char **v, const struct option *all, const char *cmd,
                            cm_err *err)
{
    const char *word = v[optind - 1], *fmt = "unknown option %s (see codemoe %s --help)";
    char name[64];
    int is_long = word[0] == '-' && word[1] == '-';
    if (is_long)
        flag_name(word, name, sizeof name);
    else
        snprintf(name, sizeof name, "-%c", optopt);
    if (c == ':')
        fmt = "option %s needs a value (see codemoe %s --help)";
    else if (is_long) {
        size_t n = strlen(name) - 2;
        int k = n_prefixed(all, name + 2, n);
        int exact = find_long(all, name + 2, n) != NULL;
        if (strchr(word, '=') && (exact || k == 1))
            fmt = "option %s takes no value (see codemoe %s --help)";
        else if (!exact && k > 1)
            fmt = "option %s is ambiguous (see codemoe %s --help)";
    }
    return cm_fail(err, CM_E_USAGE, fmt, name, cmd);
}

/* The flag just parsed, as typed: getopt has moved optind past its value. */
static void parsed_flag(char **v, int c, int li, const struct option *all, char *buf, size_t cap)
{
    const char *word = v[optind - 1];
    if (optarg && word == optarg && optind >= 2 && v[optind - 2][0] == '-')
        word = v[optind - 2]; /* the value was a word of its own */
    if (li >= 0 && word[0] == '-' && word[1] == '-')
        flag_name(word, buf, cap);
    else if (li >= 0)
        snprintf(buf, cap, "--%s", all[li].name);
    else
        snprintf(buf, cap, "-%c", c);
}

cm_status cli_getopt(int argc, char **argv, const char *cmd, const struct option *opts,
                     cli_opt_fn fn, void *user, int *help, cm_err *err)
{
    char optstring[160];
    struct option *all = build_table(opts, optstring, sizeof optstring);
    char **v = all ? copy_argv(argc, argv, opts, optstring) : NULL;
    cm_status s = CM_OK;
    if (!v) {
        free(all);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    optind = 0; /* glibc: start afresh, also after an earlier parse */
    opterr = 0;
    for (int c, li = -1; !s && (c = getopt_long(argc, v, optstring, all, &li)) != -1; li = -1) {
        char name[64];
        if (c == 'h') {
            *help = 1;
            break;
        }
        if (c == '?' || c == ':') {
            s = bad_option(c, v, all, cmd, err);
            break;
        }
        if (c == CLI_POS) {
            s = fn(user, CLI_POS, NULL, optarg, err);
            continue;
        }
        parsed_flag(v, c, li, all, name, sizeof name);
        s = fn(user, c, name, optarg, err);
    }
    for (int i = optind; !s && !*help && i < argc; i++) /* after `--` */
        s = fn(user, CLI_POS, NULL, v[i], err);
    free(v);
    free(all);
    return s;
}

cm_status cli_stray(const char *cmd, const char *arg, cm_err *err)
{
    return cm_fail(err, CM_E_USAGE, "unexpected argument '%s' (see codemoe %s --help)", arg, cmd);
}

cm_status arg_threads(const char *s, cm_err *err)
{
    int n;
    cm_status st = arg_int("-t", s, 1, 1024, &n, err);
    if (st)
        return st;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    return CM_OK;
}

cm_status read_file(const char *path, char **out, size_t *len, cm_err *err)
{
    FILE *f;
    struct stat st;
    *out = NULL;
    /* a FIFO or device is refused without blocking: fopen would wait for
     * a FIFO's writer forever */
    cm_status s = cm_fopen_regular(path, &f, err);
    if (s)
        return s;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return cm_fail(err, CM_E_IO, "cannot read %s: %s", path, strerror(errno));
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return cm_fail(err, CM_E_NOMEM, "%s: out of memory", path);
    }
    size_t got = fread(buf, 1, (size_t)st.st_size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != (size_t)st.st_size) {
        free(buf);
        return cm_fail(err, CM_E_IO, "cannot read %s", path);
    }
    buf[got] = 0;
    *out = buf;
    *len = got;
    return CM_OK;
}

cm_status read_stream(FILE *f, const char *name, char **out, size_t *len, cm_err *err)
{
    const size_t max = (size_t)1 << 30; /* a prompt, not a data set */
    size_t n = 0, cap = 0;
    char *buf = NULL;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            char *t = cap + 4096 > max ? NULL : realloc(buf, cap = (cap ? cap * 2 : 65536));
            if (!t) {
                free(buf);
                return cm_fail(err, CM_E_NOMEM, "%s: more than 1 GiB, or out of memory", name);
            }
            buf = t;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        free(buf);
        return cm_fail(err, CM_E_IO, "cannot read %s: %s", name, strerror(errno));
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return CM_OK;
}

cm_status cli_text_set(cli_text *t, const char *flag, const char *v, int is_file, cm_err *err)
{
    if (t->set)
        return cm_fail(err, CM_E_USAGE, "option %s: that text was already given", flag);
    t->set = 1;
    *(is_file ? &t->file : &t->text) = v;
    return CM_OK;
}

cm_status cli_text_read(const cli_text *t, cli_buf *out, cm_err *err)
{
    out->p = NULL, out->len = 0;
    if (t->file && !strcmp(t->file, "-"))
        return read_stream(stdin, "standard input", &out->p, &out->len, err);
    if (t->file)
        return read_file(t->file, &out->p, &out->len, err);
    out->len = t->text ? strlen(t->text) : 0;
    if (!(out->p = malloc(out->len + 1)))
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    memcpy(out->p, t->text ? t->text : "", out->len + 1);
    return CM_OK;
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

size_t cli_unescape(char *s, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i], e = i + 1 < len ? s[i + 1] : 0;
        const char *from = "nrt'\"\\", *to = "\n\r\t'\"\\", *k = e ? strchr(from, e) : NULL;
        if (c == '\\' && k) {
            s[o++] = to[k - from], i++;
        } else if (c == '\\' && e == 'x' && i + 3 < len && hex_digit(s[i + 2]) >= 0 &&
                   hex_digit(s[i + 3]) >= 0) {
            s[o++] = (char)(hex_digit(s[i + 2]) * 16 + hex_digit(s[i + 3]));
            i += 3;
        } else
            s[o++] = c;
    }
    s[o] = 0;
    return o;
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Installed data first, then the source tree so an uninstalled build works. */
const char *default_model_path(char *buf, size_t cap)
{
    const char *dirs[] = {CM_PKGDATADIR, CM_SRCDIR "/models"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        snprintf(buf, cap, "%s/default.gguf", dirs[i]);
        if (is_file(buf))
            return buf;
    }
    return NULL;
}

int cli_fail(const cm_err *err)
{
    fprintf(stderr, "codemoe: %s\n", err->msg);
    return cm_exit_code(err->code ? err->code : CM_E_FORMAT);
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

void print_backend_use(const cm_ctx *c)
{
    const cm_backend *be = cm_ctx_backend(c);
    char dev[160];
    int any = 0;
    be->ops->describe(dev, sizeof dev);
    fprintf(stderr, "[codemoe] backend %s; ops run on the CPU instead:", dev);
    for (int op = 0; op < CM_OP_COUNT; op++)
        if (be->fallbacks[op]) {
            fprintf(stderr, "%s %s x%llu", any ? "," : "", cm_op_name(op),
                    (unsigned long long)be->fallbacks[op]);
            any = 1;
        }
    fprintf(stderr, "%s\n", any ? "" : " none");
    cm_place_stats ps;
    cm_ctx_place_stats(c, &ps);
    if (ps.dense_dev + ps.exp_dev + ps.dense_host + ps.exp_host > 0)
        print_placement(&ps, stderr);
}

void print_placement(const cm_place_stats *ps, FILE *f)
{
    fprintf(f, "[codemoe] weights on the device %.1f MiB, in host memory %.1f MiB (%d layers, "
            "head %s, embeddings %s)",
            (ps->dense_dev + ps->exp_dev) / 1048576.0, (ps->dense_host + ps->exp_host) / 1048576.0,
            ps->layers_dev, ps->head_dev ? "on the device" : "on the CPU",
            ps->embd_dev ? "on the device" : "on the CPU");
    if (ps->experts)
        fprintf(f, "; experts: %d slots for %d, %llu hits, %llu run on the CPU, %llu uploads "
                "(%.1f MiB)", ps->slots, ps->experts, (unsigned long long)ps->hits,
                (unsigned long long)ps->host_runs, (unsigned long long)ps->uploads,
                ps->bytes_uploaded / 1048576.0);
    fprintf(f, "\n");
}

void cli_progress_fn(void *ctx, size_t i, size_t n, uint64_t done, uint64_t total,
                     const char *name)
{
    cli_progress *p = ctx;
    if (i == 0)
        p->t0 = now_seconds();
    if (i >= n) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        return;
    }
    double dt = now_seconds() - p->t0, rate = dt > 0 ? done / dt : 0;
    fprintf(stderr, "\r\033[K[codemoe] %s: tensor %zu/%zu %.40s", p->what, i + 1, n, name);
    if (done > 0 && rate > 0)
        fprintf(stderr, ", %.1f MB/s, ETA %.0f s", rate / 1e6, (double)(total - done) / rate);
    fflush(stderr);
}

void cli_progress_attach(cli_progress *p, const char *what, gguf_progress_fn *fn, void **ctx)
{
    p->what = what, p->t0 = now_seconds();
    *fn = isatty(2) ? cli_progress_fn : NULL;
    *ctx = isatty(2) ? p : NULL;
}
