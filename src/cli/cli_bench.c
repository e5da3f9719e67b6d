/* cli_bench.c - `codemoe bench`: prompt and generation speed, llama-bench
 * style, set against the memory-bandwidth bound for generation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu.h"
#include "cli/cli.h"
#include "util/json.h"
#include "engine/forward.h"
#include "util/membw.h"
#include "util/threads.h"

static const char BENCH_HELP[] =
    "usage: codemoe bench -m MODEL [-p 512] [-n 128] [-t N] [-r 5] [options]\n"
    "\n"
    "Measures prompt processing (pp: -p random token ids evaluated as one batch)\n"
    "and generation (tg: -n tokens evaluated one at a time), each from an empty\n"
    "context as llama-bench does, after one uncounted warm-up.  Prints tok/s as\n"
    "median ± sample standard deviation over the repetitions, then the read\n"
    "bandwidth, the weight bytes read per token, the generation bound\n"
    "(bandwidth / bytes) and how close tg comes to it.\n"
    "\n"
    "  -m, --model FILE        GGUF model\n"
    "  -p, --n-prompt N        prompt tokens (default 512; 0 skips the pp test)\n"
    "  -n, --n-gen N           generated tokens (default 128; 0 skips the tg test)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "  -r, --repetitions N     timed runs of each test (default 5)\n"
    "      --kv-type T         KV cache type: f16 (default), f32 or q8_0\n"
    "      --backend B         cpu (default; CODEMOE_BACKEND sets another), ref, cuda or vulkan\n"
    PLACE_HELP
    "  -v, --verbose           print the backend and any ops that ran on the CPU instead\n"
    "      --bw GBPS           read bandwidth in GB/s to use instead of measuring it\n"
    "  -o, --output FORMAT     md (default) or json\n"
    "      --json              same as -o json\n"
    "  -h, --help              this text\n";

typedef struct {
    const char *model, *backend;
    const cm_backend_ops *be;
    int n_prompt, n_gen, reps, threads, json, verbose;
    cm_kv_type kv;
    cm_place_opts place;
    float bw; /* GB/s from --bw; 0: measure */
} bench_opts;

typedef struct {
    double *pp, *tg; /* tok/s of each repetition */
    double pp_med, pp_sd, tg_med, tg_sd;
    double bw;       /* GB/s */
    uint64_t bytes_per_token;
    double bound;    /* tok/s */
    size_t llc;      /* bytes of the last-level cache, 0: unknown */
    double bw_resident, bound_resident; /* reading weights-per-token bytes again and again,
                                         * where they fit in the cache (else 0) */
} bench_result;

/* ------------------------------------------------------------ options */

enum { OPT_KV = CLI_LONG, OPT_BACKEND, OPT_BW, OPT_JSON };

static const struct option BENCH_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"n-prompt", required_argument, 0, 'p'},
    {"n-gen", required_argument, 0, 'n'}, {"repetitions", required_argument, 0, 'r'},
    {"threads", required_argument, 0, 't'}, {"kv-type", required_argument, 0, OPT_KV},
    {"backend", required_argument, 0, OPT_BACKEND}, {"bw", required_argument, 0, OPT_BW},
    {"output", required_argument, 0, 'o'}, {"json", no_argument, 0, OPT_JSON},
    {"verbose", no_argument, 0, 'v'}, CLI_PLACE_OPTIONS, {0}};

static cm_status bench_opt(void *user, int id, const char *a, const char *v, cm_err *err)
{
    bench_opts *o = user;
    cm_status s;
    switch (id) {
    case CLI_POS: return cli_stray("bench", v, err);
    case 'm': o->model = v; return CM_OK;
    case 'p': return arg_int(a, v, 0, 1 << 16, &o->n_prompt, err);
    case 'n': return arg_int(a, v, 0, 1 << 16, &o->n_gen, err);
    case 'r': return arg_int(a, v, 1, 1000, &o->reps, err);
    case 't': return (s = arg_threads(v, err)) ? s : arg_int(a, v, 1, 1024, &o->threads, err);
    case OPT_KV: return parse_kv_type(v, &o->kv, err);
    case OPT_BACKEND: o->backend = v; return CM_OK;
    case OPT_BW: return arg_float(a, v, 0.001f, 1e6f, &o->bw, err);
    case OPT_JSON: o->json = 1; return CM_OK;
    case 'v': o->verbose = 1; return CM_OK;
    case 'o':
        if (strcmp(v, "md") && strcmp(v, "json"))
            return cm_fail(err, CM_E_USAGE, "option %s: '%s' is not md or json", a, v);
        o->json = !strcmp(v, "json");
        return CM_OK;
    default: return cli_place_opt(id, a, v, &o->place, err);
    }
}

static cm_status parse_bench(int argc, char **argv, bench_opts *o, int *help, cm_err *err)
{
    cm_status s = cli_getopt(argc, argv, "bench", BENCH_OPTS, bench_opt, o, help, err);
    if (!s && !*help && !o->model)
        s = cm_fail(err, CM_E_USAGE, "bench needs -m MODEL (see codemoe bench --help)");
    if (!s && !*help && o->n_prompt == 0 && o->n_gen == 0)
        s = cm_fail(err, CM_E_USAGE, "nothing to measure: -p and -n are both 0");
    return s;
}

/* ------------------------------------------------------------ timing */

/* Token ids spread over the vocabulary from a fixed seed: what a prompt of
 * real text would cost, without tokenizer or sampling overhead. */
static void random_ids(int32_t *ids, int n, int n_vocab)
{
    uint64_t s = 0x243f6a8885a308d3ull;
    for (int i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ids[i] = (int32_t)(s % (uint64_t)n_vocab);
    }
}

/* Seconds to evaluate ids from an empty context, one batch (batch > 1) or
 * one token per call (batch == 1). */
static cm_status timed_eval(cm_ctx *c, const int32_t *ids, int n, int batch, double *secs,
                            cm_err *err)
{
    cm_status s = CM_OK;
    cm_ctx_reset(c);
    double t0 = now_seconds();
    for (int i = 0; i < n && !s; i += batch)
        s = cm_eval(c, ids + i, n - i < batch ? n - i : batch, NULL, err);
    *secs = now_seconds() - t0;
    return s;
}

/* One repetition: pp then tg; rep < 0 is the uncounted warm-up. */
static cm_status run_once(cm_ctx *c, const bench_opts *o, const int32_t *ids, int rep,
                          bench_result *r, cm_err *err)
{
    double dt;
    cm_status s;
    if (o->n_prompt > 0) {
        if ((s = timed_eval(c, ids, o->n_prompt, o->n_prompt, &dt, err)))
            return s;
        if (rep >= 0)
            r->pp[rep] = o->n_prompt / dt;
    }
    if (o->n_gen > 0) {
        /* a short warm-up suffices: the pp warm-up already paged weights in */
        int n = rep < 0 && o->n_prompt > 0 && o->n_gen > 4 ? 4 : o->n_gen;
        if ((s = timed_eval(c, ids, n, 1, &dt, err)))
            return s;
        if (rep >= 0)
            r->tg[rep] = n / dt;
    }
    return CM_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median and sample standard deviation (0 for a single value). */
static void summarize(const double *v, int n, double *med, double *sd)
{
    double *s = malloc((size_t)n * sizeof *s), mean = 0, ss = 0;
    if (!s) {
        *med = v[0], *sd = 0;
        return;
    }
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    *med = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    for (int i = 0; i < n; i++)
        mean += v[i] / n;
    for (int i = 0; i < n; i++)
        ss += (v[i] - mean) * (v[i] - mean);
    *sd = n > 1 ? sqrt(ss / (n - 1)) : 0.0;
    free(s);
}

static cm_status run_all(const cm_model *m, const bench_opts *o, bench_result *r, cm_err *err)
{
    int n_ids = o->n_prompt > o->n_gen ? o->n_prompt : o->n_gen;
    int batch = o->n_prompt > 0 ? o->n_prompt : 1;
    cm_ctx *c = NULL;
    int32_t *ids = malloc((size_t)n_ids * sizeof *ids);
    if (!ids)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    random_ids(ids, n_ids, m->hp.n_vocab);
    cm_status s = cm_ctx_new_placed(m, o->be, &o->place, n_ids, o->kv, batch, &c, err);
    for (int rep = -1; rep < o->reps && !s; rep++)
        s = run_once(c, o, ids, rep, r, err);
    if (!s && o->n_prompt > 0)
        summarize(r->pp, o->reps, &r->pp_med, &r->pp_sd);
    if (!s && o->n_gen > 0)
        summarize(r->tg, o->reps, &r->tg_med, &r->tg_sd);
    if (!s && o->verbose)
        print_backend_use(c);
    cm_ctx_free(c);
    free(ids);
    return s;
}

/* ------------------------------------------------------------ report */

/* llama.cpp's general.file_type names the mix ("Q4_K_M"); without it, the
 * type holding most of the bytes. */
static void type_summary(const cm_model *m, char *buf, size_t cap)
{
    static const struct {
        uint32_t id;
        const char *name;
    } FT[] = {{0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},
              {8, "Q5_0"},    {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"},
              {13, "Q3_K_L"}, {14, "Q4_K_S"}, {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"},
              {18, "Q6_K"},   {32, "BF16"}};
    uint32_t ft;
    if (gguf_get_u32(&m->file, "general.file_type", &ft, NULL) == CM_OK)
        for (size_t i = 0; i < sizeof FT / sizeof FT[0]; i++)
            if (FT[i].id == ft) {
                snprintf(buf, cap, "%s", FT[i].name);
                return;
            }
    uint64_t bytes[CM_TYPE_COUNT] = {0};
    uint32_t best = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++)
        bytes[m->file.tensors[i].type] += m->file.tensors[i].nbytes;
    for (uint32_t t = 1; t < CM_TYPE_COUNT; t++)
        best = bytes[t] > bytes[best] ? t : best;
    char tb[32];
    snprintf(buf, cap, "mostly %s", cm_type_name(best, tb));
}

static uint64_t model_params(const cm_model *m)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++) {
        const gguf_tensor *t = &m->file.tensors[i];
        n += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
    }
    return n;
}

/* Bytes of all tensors: llama-bench's "size" (the file adds metadata). */
static uint64_t model_bytes(const cm_model *m)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++)
        n += m->file.tensors[i].nbytes;
    return n;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static const char *kv_name(cm_kv_type kv)
{
    return kv == CM_KV_F16 ? "f16" : kv == CM_KV_Q8_0 ? "q8_0" : "f32";
}

static void print_markdown(const cm_model *m, const bench_opts *o, const bench_result *r,
                           int measured)
{
    char ty[32];
    type_summary(m, ty, sizeof ty);
    printf("| model | size | params | type | threads | test | t/s |\n");
    printf("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
    for (int k = 0; k < 2; k++) {
        int n = k ? o->n_gen : o->n_prompt;
        if (n == 0)
            continue;
        printf("| %s | %.2f MiB | %.2f M | %s | %d | %s%d | %.2f ± %.2f |\n", base_name(o->model),
               model_bytes(m) / 1048576.0, model_params(m) / 1e6, ty, o->threads, k ? "tg" : "pp",
               n, k ? r->tg_med : r->pp_med, k ? r->tg_sd : r->pp_sd);
    }
    char dev[160];
    o->be->describe(dev, sizeof dev);
    printf("\nt/s: median ± sample standard deviation of %d run%s after 1 warm-up; each test "
           "starts from an empty context; backend %s, KV cache %s\n",
           o->reps, o->reps == 1 ? "" : "s", dev, kv_name(o->kv));
    if (!o->be->reads_host) { /* host memory is not what a GPU's products read */
        printf("weights read per token: %.1f MB (host memory's %.1f GB/s bounds only the CPU)\n",
               r->bytes_per_token / 1e6, r->bw);
        return;
    }
    printf("bandwidth: %.1f GB/s read (%s) | weights read per token: %.1f MB | "
           "bound: %.1f tok/s", r->bw, measured ? "measured: 1 GiB, best of 5" : "given by --bw",
           r->bytes_per_token / 1e6, r->bound);
    if (o->n_gen > 0 && !(r->bound_resident > 0))
        printf(" | tg / bound = %.0f%%", 100.0 * r->tg_med / r->bound);
    printf("\n");
    if (r->bound_resident > 0) { /* the larger of the two is the bound */
        const double b = r->bound_resident > r->bound ? r->bound_resident : r->bound;
        printf("the weights read per token fit in the last-level cache this CPU reports (%.1f MB): "
               "main memory need not bound them; %.1f MB read again and again: %.1f GB/s, "
               "bound %.1f tok/s", r->llc / 1e6, r->bytes_per_token / 1e6, r->bw_resident,
               r->bound_resident);
        if (o->n_gen > 0)
            printf(" | tg / larger bound = %.0f%%", 100.0 * r->tg_med / b);
        printf("\n");
    }
}

static void json_runs(const char *key, const double *v, int n, double med, double sd)
{
    printf("  \"%s_tok_s\": [", key);
    for (int i = 0; i < n; i++)
        printf(i ? ", %.3f" : "%.3f", v[i]);
    printf("],\n  \"%s_median\": %.3f,\n  \"%s_stdev\": %.3f,\n", key, med, key, sd);
}

/* One key per line, so scripts can pick values with grep/awk. */
static void print_json(const cm_model *m, const bench_opts *o, const bench_result *r,
                       int measured)
{
    char ty[32];
    type_summary(m, ty, sizeof ty);
    printf("{\n  \"model\": ");
    json_write_string(stdout, base_name(o->model));
    printf(",\n  \"size_bytes\": %llu,\n  \"params\": %llu,\n  \"type\": ",
           (unsigned long long)model_bytes(m), (unsigned long long)model_params(m));
    json_write_string(stdout, ty);
    char dev[160];
    o->be->describe(dev, sizeof dev);
    printf(",\n  \"threads\": %d,\n  \"isa\": \"%s\",\n  \"kv_type\": \"%s\",\n", o->threads,
           cm_cpu_isa(), kv_name(o->kv));
    printf("  \"backend\": \"%s\",\n  \"device\": ", o->be->name);
    json_write_string(stdout, dev);
    printf(",\n");
    printf("  \"n_prompt\": %d,\n  \"n_gen\": %d,\n  \"repetitions\": %d,\n", o->n_prompt,
           o->n_gen, o->reps);
    if (o->n_prompt > 0)
        json_runs("pp", r->pp, o->reps, r->pp_med, r->pp_sd);
    if (o->n_gen > 0)
        json_runs("tg", r->tg, o->reps, r->tg_med, r->tg_sd);
    printf("  \"bw_gbs\": %.3f,\n  \"bw_measured\": %s,\n  \"bytes_per_token\": %llu,\n", r->bw,
           measured ? "true" : "false", (unsigned long long)r->bytes_per_token);
    printf("  \"tg_bound\": %.3f", r->bound); /* 0: not computed (a GPU backend) */
    if (o->n_gen > 0 && r->bound > 0)
        printf(",\n  \"tg_over_bound\": %.4f", r->tg_med / r->bound);
    printf(",\n  \"llc_bytes\": %zu,\n  \"fits_llc\": %s", r->llc,
           r->bound_resident > 0 ? "true" : "false");
    if (r->bound_resident > 0) /* the bound where the weights stay in the cache */
        printf(",\n  \"bw_resident_gbs\": %.3f,\n  \"tg_bound_resident\": %.3f", r->bw_resident,
               r->bound_resident);
    printf("\n}\n");
}

/* ------------------------------------------------------------ command */

/* A CPU whose last-level cache holds the weights read per token (large
 * server caches hold small models) reads them from there, not from main
 * memory: then the bound is the bandwidth of reading that many bytes again
 * and again.  Measured unless --bw gave the bandwidth. */
static void resident_bound(const bench_opts *o, bench_result *r)
{
    r->llc = cm_llc_bytes();
    if (!o->be->reads_host || o->bw > 0 || !r->llc || r->bytes_per_token > r->llc ||
        r->bytes_per_token < 4096)
        return;
    r->bw_resident = cm_measure_read_bw((size_t)r->bytes_per_token, o->threads, 5);
    if (r->bw_resident > 0)
        r->bound_resident = r->bw_resident * 1e9 / (double)r->bytes_per_token;
}

static cm_status bench_model(const bench_opts *o, cm_err *err)
{
    cm_model m;
    bench_result r = {0};
    cm_status s = cm_model_load(o->model, &m, err);
    if (s)
        return s;
    r.pp = calloc((size_t)o->reps, sizeof *r.pp);
    r.tg = calloc((size_t)o->reps, sizeof *r.tg);
    if (!r.pp || !r.tg)
        s = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!s)
        s = run_all(&m, o, &r, err);
    /* measured after the runs, so the 1 GiB array never competes with them */
    if (!s)
        r.bw = o->bw > 0 ? o->bw : cm_measure_read_bw(CM_MEMBW_DEFAULT_BYTES, o->threads, 5);
    if (!s && !(r.bw > 0))
        s = cm_fail(err, CM_E_NOMEM, "cannot allocate 1 GiB to measure bandwidth (use --bw)");
    if (!s) {
        r.bytes_per_token = cm_model_bytes_per_token(&m);
        r.bound = o->be->reads_host ? r.bw * 1e9 / (double)r.bytes_per_token : 0.0;
        resident_bound(o, &r);
        (o->json ? print_json : print_markdown)(&m, o, &r, !(o->bw > 0));
    }
    free(r.pp);
    free(r.tg);
    cm_model_free(&m);
    return s;
}

int cli_bench(int argc, char **argv)
{
    bench_opts o = {.n_prompt = 512, .n_gen = 128, .reps = 5, .kv = CM_KV_F16, .place = CM_PLACE_AUTO};
    cm_err err = {0};
    int help = 0;
    o.threads = cm_max_threads();
    if (parse_bench(argc, argv, &o, &help, &err))
        return cli_fail(&err);
    if (help) {
        fputs(BENCH_HELP, stdout);
        return 0;
    }
    if (cm_backend_choose(o.backend, &o.be, &err) || bench_model(&o, &err))
        return cli_fail(&err);
    return 0;
}
