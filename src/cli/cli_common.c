/* cli_common.c - argument parsing and small utilities for the CLI. */
#include "cli/cli.h"

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

int arg_is_place(const char *a)
{
    return !strcmp(a, "-ngl") || !strcmp(a, "--gpu-layers") || !strcmp(a, "--n-gpu-layers") ||
           !strcmp(a, "--vram-budget") || !strcmp(a, "--device");
}

cm_status arg_place(const char *a, const char *v, cm_place_opts *o, cm_err *err)
{
    if (!strcmp(a, "--device"))
        return arg_int(a, v, 0, 1023, &o->device, err);
    if (strcmp(a, "--vram-budget"))
        return arg_int(a, v, 0, 1 << 20, &o->gpu_layers, err);
    cm_status s = arg_size(a, v, &o->budget, err);
    if (!s && o->budget == 0)
        s = cm_fail(err, CM_E_USAGE, "option %s: the budget must be more than 0 bytes", a);
    return s;
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
