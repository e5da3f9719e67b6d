/* cli_eval.c - `codemoe eval`: HumanEval / MultiPL-E pass@k, programs run in
 * a sandbox (src/eval/sandbox.h), results resumable and shardable. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "engine/generate.h"
#include "engine/sampling.h"
#include "eval/compare.h"
#include "eval/pool.h"
#include "eval/problems.h"
#include "eval/results.h"
#include "eval/sandbox.h"
#include "experts/pack.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/json.h"
#include "util/membw.h"

static const char EVAL_HELP[] =
    "usage: codemoe eval -m MODEL --bench humaneval|multipl-e --out DIR [options]\n"
    "       codemoe eval --canonical --bench humaneval|multipl-e --out DIR [options]\n"
    "       codemoe eval --check\n"
    "       codemoe eval merge --out DIR SHARD_DIR...\n"
    "       codemoe eval sandbox [-j N] --lang L FILE... [--lang L FILE...]\n"
    "\n"
    "Completes each problem's prompt, cuts the completion at the problem's stop\n"
    "strings, assembles the program with its tests and compiles and runs it in a\n"
    "sandbox (no network, scratch directory, limits; --check says which kind).\n"
    "Writes DIR/results.jsonl (one line per completion), DIR/summary.json,\n"
    "summary.csv and summary.md (pass@k per language, the unbiased estimator).\n"
    "An existing DIR is resumed: completions already there are kept.\n"
    "\n"
    "  -m, --model FILE        GGUF model (default: the installed default model)\n"
    "      --bench B           humaneval (Python) or multipl-e (default)\n"
    "      --langs L,L         multipl-e languages: cpp,java,js,go,rs,py (default all)\n"
    "      --evalsets DIR      the problem files (default $CM_SHARED/evalsets, else\n"
    "                          ../shared/evalsets)\n"
    "  -n, --samples N         completions per problem (default 1)\n"
    "      --temp T            temperature (default 0 = greedy with -n 1, else 0.2)\n"
    "      --top-p P           nucleus sampling (default 0.95)\n"
    "      --top-k K           top-k, 0 = off (default 0)\n"
    "  -k, --pass-at K,K       the k of pass@k (default 1,10,100; those <= n shown)\n"
    "  -s, --seed S            random seed (default 1); each completion's seed comes\n"
    "                          from it, the language, problem and sample number\n"
    "      --max-tokens N      tokens per completion at most (default 512)\n"
    "      --batch N           completions of a problem decoded together, from its\n"
    "                          prompt's KV cache (default min(n, 16)); each keeps its\n"
    "                          seed (a larger batch may round logits differently)\n"
    "  -j, --jobs N            programs compiled and run at a time, each in its own\n"
    "                          sandbox (default: the CPUs this process may use)\n"
    "      --limit N           the first N problems of each language only\n"
    "      --shard I/N         this machine's share: problems i with i mod N = I-1\n"
    "      --expert NAME       language-expert packs: use this member for every\n"
    "                          language (default: the language's expert, else fallback)\n"
    "      --compare           with a pack: run it routed (DIR/routed), its fallback\n"
    "                          (DIR/baseline) and --merged FILE (DIR/merged) on the same\n"
    "                          problems and samples; DIR/compare.md: pass@k per model and\n"
    "                          language, the difference to the baseline, its 95%% CI\n"
    "      --canonical         no model: HumanEval's canonical solutions (all must\n"
    "                          pass) or, for MultiPL-E, a wrong completion (all must fail)\n"
    "      --timeout S         wall-clock seconds per compile and per run (default 15)\n"
    "      --sandbox KIND      auto (default), bwrap, namespaces or plain\n"
    "  -c, --ctx-size N        context length (default: the model's, at most 4096)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "      --backend B         cpu (default), ref, cuda or vulkan\n"
    "      --estimate          print what the run would take: tokens, program runs, the\n"
    "                          time here (from a short measured run: a completion and its\n"
    "                          program for 3 problems a language) and on the GPU instances of\n"
    "                          --instances FILE (default bench/instances.tsv), with cost\n"
    "      --check             list the toolchains installed and the apt-get line for\n"
    "                          the missing ones, and the sandbox in use\n"
    "  -h, --help              this text\n";

#define MAX_LANGS 6
#define MAX_KS 16

typedef struct {
    const char *model, *bench_name, *langs, *evalsets, *out, *expert, *backend, *sandbox;
    cm_bench bench;
    const cm_eval_lang *lang[MAX_LANGS];
    int n_langs, samples, max_tokens, limit, shard_i, shard_n, canonical, check, n_ctx;
    int ks[MAX_KS], n_ks, temp_set, estimate, compare, batch, jobs;
    const char *instances, *merged;
    double timeout;
    cm_sampling_params sp;
} eval_opts;

enum { OPT_BENCH = CLI_LONG, OPT_LANGS, OPT_EVALSETS, OPT_TEMP, OPT_TOP_P, OPT_TOP_K, OPT_MAXTOK,
       OPT_LIMIT, OPT_SHARD, OPT_EXPERT, OPT_CANONICAL, OPT_TIMEOUT, OPT_SANDBOX, OPT_BACKEND,
       OPT_CHECK, OPT_OUT, OPT_LANG, OPT_ESTIMATE, OPT_INSTANCES, OPT_COMPARE, OPT_MERGED,
       OPT_BATCH };

static const struct option EVAL_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"bench", required_argument, 0, OPT_BENCH},
    {"langs", required_argument, 0, OPT_LANGS}, {"evalsets", required_argument, 0, OPT_EVALSETS},
    {"samples", required_argument, 0, 'n'}, {"temp", required_argument, 0, OPT_TEMP},
    {"top-p", required_argument, 0, OPT_TOP_P}, {"top-k", required_argument, 0, OPT_TOP_K},
    {"pass-at", required_argument, 0, 'k'}, {"seed", required_argument, 0, 's'},
    {"max-tokens", required_argument, 0, OPT_MAXTOK}, {"limit", required_argument, 0, OPT_LIMIT},
    {"shard", required_argument, 0, OPT_SHARD}, {"expert", required_argument, 0, OPT_EXPERT},
    {"canonical", no_argument, 0, OPT_CANONICAL}, {"timeout", required_argument, 0, OPT_TIMEOUT},
    {"sandbox", required_argument, 0, OPT_SANDBOX}, {"ctx-size", required_argument, 0, 'c'},
    {"threads", required_argument, 0, 't'}, {"backend", required_argument, 0, OPT_BACKEND},
    {"check", no_argument, 0, OPT_CHECK}, {"out", required_argument, 0, OPT_OUT},
    {"estimate", no_argument, 0, OPT_ESTIMATE}, {"instances", required_argument, 0, OPT_INSTANCES},
    {"compare", no_argument, 0, OPT_COMPARE}, {"merged", required_argument, 0, OPT_MERGED},
    {"batch", required_argument, 0, OPT_BATCH}, {"jobs", required_argument, 0, 'j'},
    {0}};

static cm_status parse_ks(const char *a, const char *v, eval_opts *o, cm_err *err)
{
    o->n_ks = 0;
    for (const char *p = v; *p;) {
        char *end;
        long k = strtol(p, &end, 10);
        if (end == p || k < 1 || k > 100000 || (*end && *end != ',') || o->n_ks == MAX_KS)
            return cm_fail(err, CM_E_USAGE, "option %s: '%s' is not a list of up to %d "
                           "numbers >= 1 (1,10,100)", a, v, MAX_KS);
        o->ks[o->n_ks++] = (int)k;
        p = *end ? end + 1 : end;
    }
    return o->n_ks ? CM_OK : cm_fail(err, CM_E_USAGE, "option %s: empty list", a);
}

static cm_status parse_langs(const char *a, const char *v, eval_opts *o, cm_err *err)
{
    char buf[128];
    o->n_langs = 0;
    snprintf(buf, sizeof buf, "%s", v);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        const cm_eval_lang *l = cm_eval_lang_find(t);
        if (!l)
            return cm_fail(err, CM_E_USAGE, "option %s: unknown language '%s' (cpp, java, js, "
                           "go, rs, py)", a, t);
        for (int i = 0; i < o->n_langs; i++)
            if (o->lang[i] == l)
                return cm_fail(err, CM_E_USAGE, "option %s: '%s' given twice", a, t);
        o->lang[o->n_langs++] = l;
    }
    return o->n_langs ? CM_OK : cm_fail(err, CM_E_USAGE, "option %s: no language", a);
}

static cm_status parse_shard(const char *a, const char *v, eval_opts *o, cm_err *err)
{
    int i, n, used = 0;
    if (sscanf(v, "%d/%d%n", &i, &n, &used) != 2 || v[used] || n < 1 || i < 1 || i > n)
        return cm_fail(err, CM_E_USAGE, "option %s: '%s' is not I/N with 1 <= I <= N", a, v);
    o->shard_i = i, o->shard_n = n;
    return CM_OK;
}

static cm_status eval_opt(void *user, int id, const char *a, const char *v, cm_err *err)
{
    eval_opts *o = user;
    float f;
    cm_status s;
    switch (id) {
    case CLI_POS: return cli_stray("eval", v, err);
    case 'm': o->model = v; return CM_OK;
    case OPT_BENCH: o->bench_name = v; return CM_OK;
    case OPT_LANGS: o->langs = v; return CM_OK;
    case OPT_EVALSETS: o->evalsets = v; return CM_OK;
    case OPT_OUT: o->out = v; return CM_OK;
    case OPT_EXPERT: o->expert = v; return CM_OK;
    case OPT_BACKEND: o->backend = v; return CM_OK;
    case OPT_SANDBOX: o->sandbox = v; return CM_OK;
    case OPT_CANONICAL: o->canonical = 1; return CM_OK;
    case OPT_CHECK: o->check = 1; return CM_OK;
    case OPT_ESTIMATE: o->estimate = 1; return CM_OK;
    case OPT_COMPARE: o->compare = 1; return CM_OK;
    case OPT_MERGED: o->merged = v; return CM_OK;
    case OPT_INSTANCES: o->instances = v; return CM_OK;
    case 'n': return arg_int(a, v, 1, 100000, &o->samples, err);
    case OPT_TEMP: o->temp_set = 1; return arg_float(a, v, 0.0f, 100.0f, &o->sp.temp, err);
    case OPT_TOP_P: return arg_float(a, v, 0.0f, 1.0f, &o->sp.top_p, err);
    case OPT_TOP_K: return arg_int(a, v, 0, 1 << 24, &o->sp.top_k, err);
    case 'k': return parse_ks(a, v, o, err);
    case 's': return arg_u64(a, v, &o->sp.seed, err);
    case OPT_MAXTOK: return arg_int(a, v, 1, 1 << 20, &o->max_tokens, err);
    case OPT_LIMIT: return arg_int(a, v, 1, 1 << 20, &o->limit, err);
    case OPT_BATCH: return arg_int(a, v, 1, 256, &o->batch, err);
    case 'j': return arg_int(a, v, 1, 256, &o->jobs, err);
    case OPT_SHARD: return parse_shard(a, v, o, err);
    case OPT_TIMEOUT:
        s = arg_float(a, v, 0.1f, 3600.0f, &f, err);
        o->timeout = f;
        return s;
    case 'c': return arg_int(a, v, 16, 1 << 24, &o->n_ctx, err);
    case 't': return arg_threads(v, err);
    default: return cm_fail(err, CM_E_USAGE, "option %s not handled", a);
    }
}

static cm_status check_eval(eval_opts *o, cm_err *err)
{
    if (o->check)
        return CM_OK;
    if (!strcmp(o->bench_name, "humaneval"))
        o->bench = CM_BENCH_HUMANEVAL;
    else if (!strcmp(o->bench_name, "multipl-e") || !strcmp(o->bench_name, "multiple"))
        o->bench = CM_BENCH_MULTIPLE;
    else
        return cm_fail(err, CM_E_USAGE, "option --bench: '%s' is not humaneval or multipl-e",
                       o->bench_name);
    cm_status s = parse_langs("--langs", o->bench == CM_BENCH_HUMANEVAL ? "py"
                                         : o->langs ? o->langs : "cpp,java,js,go,rs,py", o, err);
    if (!s && o->bench == CM_BENCH_HUMANEVAL && o->langs && strcmp(o->langs, "py"))
        s = cm_fail(err, CM_E_USAGE, "--bench humaneval is Python only (--langs py)");
    if (!s && !o->out && !o->estimate)
        s = cm_fail(err, CM_E_USAGE, "give the output directory with --out DIR");
    if (!s && (o->compare || o->merged) && (o->canonical || o->estimate || o->expert))
        s = cm_fail(err, CM_E_USAGE, "--compare runs the pack routed and its fallback: no "
                    "--canonical, --estimate or --expert");
    if (!s && o->merged && !o->compare)
        s = cm_fail(err, CM_E_USAGE, "--merged FILE goes with --compare");
    if (!s && o->estimate && o->canonical)
        s = cm_fail(err, CM_E_USAGE, "--estimate is for model runs, not --canonical");
    if (!s && o->canonical && (o->model || o->samples > 1))
        s = cm_fail(err, CM_E_USAGE, "--canonical runs no model: no -m, and one sample");
    if (!o->temp_set)
        o->sp.temp = o->samples > 1 ? 0.2f : 0.0f;
    if (!o->batch)
        o->batch = o->samples < 16 ? o->samples : 16;
    cpu_set_t set; /* the CPUs this process may use (taskset, a Slurm job's) */
    long cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                            : sysconf(_SC_NPROCESSORS_ONLN);
    if (!o->jobs)
        o->jobs = cpus < 1 ? 1 : cpus > 64 ? 64 : (int)cpus;
    return s;
}

/* ---- the sandbox and the toolchains ---- */

static cm_status open_sandbox(const eval_opts *o, char *cache, size_t cap, cm_sandbox **sb,
                              cm_err *err)
{
    cm_sb_kind k = CM_SB_AUTO;
    const char *names[] = {"auto", "bwrap", "namespaces", "plain"};
    int found = !o->sandbox;
    for (int i = 0; o->sandbox && i < 4; i++)
        if (!strcmp(o->sandbox, names[i]))
            k = (cm_sb_kind)i, found = 1;
    if (!found)
        return cm_fail(err, CM_E_USAGE, "option --sandbox: '%s' is not auto, bwrap, "
                       "namespaces or plain", o->sandbox);
    const char *t = getenv("TMPDIR");
    snprintf(cache, cap, "%s/codemoe-cache-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(cache))
        return cm_fail(err, CM_E_IO, "cannot create %s: %s", cache, strerror(errno));
    cm_status s = cm_sb_new(k, NULL, cache, sb, err);
    if (s)
        cm_sb_scratch_remove(cache);
    return s;
}

static int eval_check(const eval_opts *o)
{
    char cache[1024], missing[256], apt[256] = "";
    cm_sandbox *sb = NULL;
    cm_err err = {0};
    if (open_sandbox(o, cache, sizeof cache, &sb, &err))
        return cli_fail(&err);
    printf("sandbox: %s\n", cm_sb_describe(sb));
    printf("problem files: gzip read with %s\n", cm_problems_gunzip());
    for (int i = 0; cm_eval_lang_at(i); i++) {
        const cm_eval_lang *l = cm_eval_lang_at(i);
        int ok = cm_eval_lang_ready(l, cm_sb_path(sb), missing, sizeof missing);
        printf("%-5s %s%s\n", l->name, ok ? "ready" : "missing: ", ok ? "" : missing);
        if (!ok && strlen(apt) + strlen(l->apt) + 2 < sizeof apt)
            strcat(strcat(apt, " "), l->apt);
    }
    if (*apt)
        printf("install the missing ones with: apt-get install%s\n", apt);
    cm_sb_free(sb);
    cm_sb_scratch_remove(cache);
    return 0;
}

/* ---- one run ---- */

typedef struct {
    const eval_opts *o;
    cm_sandbox *sb;
    cm_model m;
    int have_model;
    cm_ev_records rs;
    FILE *results;
    cm_problem_set sets[MAX_LANGS];
    int ready[MAX_LANGS];
    cm_ev_pool *pool; /* the programs, -j at a time */
    long total, done, passed, gen_tok;
    double t0, gen_s, prog_s; /* decoding's wall time; the programs' (added up) */
} eval_run;

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 0x100000001b3ull;
    return h;
}

/* A completion's seed: the same whatever the order, shard or resume. */
static uint64_t item_seed(uint64_t seed, const char *lang, const char *prob, int sample)
{
    return mix64(seed ^ mix64(fnv1a(lang) ^ mix64(fnv1a(prob) + (uint64_t)sample)));
}

static int in_shard(const eval_opts *o, long index)
{
    return o->shard_n <= 1 || index % o->shard_n == o->shard_i - 1;
}

static int missing_samples(const eval_run *r, const char *lang, const cm_problem *p)
{
    int n = 0;
    for (int s = 0; s < r->o->samples; s++)
        n += !cm_ev_records_find(&r->rs, lang, p->name, s);
    return n;
}

/* Problems of language li this run does: the first --limit, in the shard.
 * The shard index runs over every language's problems in order. */
static int problem_count(const eval_run *r, int li)
{
    int n = r->sets[li].n;
    return r->o->limit && r->o->limit < n ? r->o->limit : n;
}

static long shard_base(const eval_run *r, int li)
{
    long base = 0;
    for (int i = 0; i < li; i++)
        base += problem_count(r, i);
    return base;
}

static void progress(eval_run *r, const char *lang, int pi, int np)
{
    double el = now_seconds() - r->t0, per = r->done ? el / r->done : 0;
    double eta = per * (double)(r->total - r->done);
    fprintf(stderr, "[eval] %s %d/%d | %ld/%ld completions, %.2f s each, %ld pass | ETA "
            "%d:%02d:%02d\n", lang, pi, np, r->done, r->total, per, r->passed,
            (int)(eta / 3600), (int)(eta / 60) % 60, (int)eta % 60);
}

static cm_status record(eval_run *r, const char *lang, const cm_problem *p, int sample,
                        const char *completion, int tokens, const cm_ev_outcome *oc,
                        cm_err *err)
{
    cm_ev_record rec = {(char *)lang, p->name, (char *)completion, sample, tokens, oc->status,
                        oc->seconds};
    cm_ev_record_write(r->results, &rec);
    if (fflush(r->results) != 0)
        return cm_fail(err, CM_E_IO, "cannot write %s/results.jsonl: %s", r->o->out,
                       strerror(errno));
    r->done++;
    r->passed += oc->status == CM_EV_PASS;
    r->prog_s += oc->seconds;
    return cm_ev_records_add(&r->rs, &rec, err);
}

/* A program in the pool: what its record needs once it has run. */
typedef struct {
    const cm_eval_lang *l;
    const cm_problem *p;
    int sample, tokens;
    char *completion;
} queued_item;

static void queued_free(void *tag)
{
    queued_item *q = tag;
    if (q)
        free(q->completion);
    free(q);
}

/* Records the programs that have run, in the order they were queued
 * (results.jsonl does not depend on which finished first): waits until
 * at most `keep` are left running or queued. */
static cm_status drain(eval_run *r, int keep, cm_err *err)
{
    cm_status s = CM_OK, st;
    cm_ev_outcome oc;
    cm_err e;
    void *tag;
    while (cm_ev_pool_take(r->pool, cm_ev_pool_pending(r->pool) > keep, &tag, &oc, &st, &e)) {
        queued_item *q = tag;
        if (!s && st)
            s = st, *err = e;
        if (!s)
            s = record(r, q->l->name, q->p, q->sample, q->completion, q->tokens, &oc, err);
        queued_free(q);
    }
    return s;
}

/* Cuts and assembles one completion (taking it over) and queues its
 * program; records those that have run. */
static cm_status score(eval_run *r, const cm_eval_lang *l, const cm_problem *p, int sample,
                       char *completion, size_t len, int tokens, cm_err *err)
{
    size_t plen = 0;
    cm_problem_cut(p, completion, len);
    char *prog = cm_problem_program(p, completion, &plen);
    queued_item *q = prog ? malloc(sizeof *q) : NULL;
    if (!q) {
        free(prog), free(completion);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    *q = (queued_item){l, p, sample, tokens, completion};
    cm_status s = cm_ev_pool_submit(r->pool, l, prog, plen, q, err);
    if (s)
        queued_free(q);
    return s ? s : drain(r, 4 * r->o->jobs, err);
}

/* ---- generation ---- */

typedef struct {
    char *p;
    size_t len, cap;
    const cm_problem *pb;
} comp_buf;

/* Collects the completion; stops once a stop string is in it. */
static int comp_piece(void *user, const char *bytes, size_t n)
{
    comp_buf *c = user;
    if (c->len + n + 1 > c->cap) {
        size_t cap = (c->len + n + 1) * 2;
        char *p = realloc(c->p, cap);
        if (!p)
            return 1;
        c->p = p, c->cap = cap;
    }
    memcpy(c->p + c->len, bytes, n);
    c->len += n;
    c->p[c->len] = 0;
    for (int i = 0; i < c->pb->n_stops; i++)
        if (memmem(c->p, c->len, c->pb->stops[i], strlen(c->pb->stops[i])))
            return 1;
    return 0;
}

/* Completions of problem p for the samples listed (k of them), decoded
 * together from the prompt's KV cache (cm_generate_shared), each with its
 * own seed: the same text whatever the batch.  cbs receives them. */
static cm_status decode_samples(eval_run *r, cm_ctx *ctx, const cm_eval_lang *l,
                                const cm_problem *p, const int32_t *ids, int n,
                                const int *sample, int k, comp_buf *cbs, cm_gen_seq *gs,
                                cm_err *err)
{
    cm_status s = CM_OK;
    for (int i = 0; !s && i < k; i++) {
        cm_sampling_params sp = r->o->sp;
        sp.seed = item_seed(r->o->sp.seed, l->name, p->name, sample[i]);
        cbs[i] = (comp_buf){calloc(1, 1), 0, 1, p};
        gs[i] = (cm_gen_seq){cm_sampler_new(&sp, r->m.hp.n_vocab), comp_piece, &cbs[i], {0, 0}};
        if (!cbs[i].p || !gs[i].smp)
            s = cm_fail(err, CM_E_NOMEM, "out of memory creating a sampler");
        for (int t = 0; !s && t < n; t++)
            cm_sampler_accept(gs[i].smp, ids[t]);
    }
    cm_gen_opts go = {r->o->max_tokens, NULL, 0, NULL, NULL, NULL};
    if (!s)
        s = cm_generate_shared(&r->m, ctx, ids, n, gs, k, &go, err);
    for (int i = 0; i < k; i++)
        cm_sampler_free(gs[i].smp), gs[i].smp = NULL;
    return s;
}

static cm_status generate_problem(eval_run *r, cm_ctx *ctx, const cm_eval_lang *l,
                                  const cm_problem *p, cm_err *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int k = 0, *sample = calloc((size_t)r->o->samples, sizeof *sample);
    comp_buf *cbs = calloc((size_t)r->o->samples, sizeof *cbs);
    cm_gen_seq *gs = calloc((size_t)r->o->samples, sizeof *gs);
    cm_status s = sample && cbs && gs ? cm_tokenize(r->m.tok, p->prompt, strlen(p->prompt),
                                                    cm_tok_add_bos(r->m.tok), 0, &ids, &n, err)
                                      : cm_fail(err, CM_E_NOMEM, "out of memory");
    for (int smp = 0; !s && smp < r->o->samples; smp++)
        if (!cm_ev_records_find(&r->rs, l->name, p->name, smp))
            sample[k++] = smp;
    int fits = n >= 1 && (int)n + 1 < r->o->n_ctx;
    if (!s && !fits) /* recorded as failures: the model never saw the problem */
        s = drain(r, 0, err);
    for (int i = 0; !s && !fits && i < k; i++) {
        cm_ev_outcome oc = {CM_EV_FAIL, 0, "prompt longer than the context"};
        s = record(r, l->name, p, sample[i], "", 0, &oc, err);
    }
    double t0 = now_seconds();
    if (!s && fits && k)
        s = decode_samples(r, ctx, l, p, ids, (int)n, sample, k, cbs, gs, err);
    r->gen_s += now_seconds() - t0;
    for (int i = 0; !s && fits && i < k; i++)
        r->gen_tok += gs[i].res.n_gen;
    for (int i = 0; !s && fits && i < k; i++) {
        s = score(r, l, p, sample[i], cbs[i].p, cbs[i].len, gs[i].res.n_gen, err);
        cbs[i].p = NULL;
    }
    for (int i = 0; cbs && i < k; i++)
        free(cbs[i].p);
    free(sample), free(cbs), free(gs), free(ids);
    return s;
}

/* The pack member for a language: --expert, else the language's, else the
 * fallback. */
static cm_status bind_expert(eval_run *r, const cm_eval_lang *l, cm_err *err)
{
    static const char *const map[][2] = {{"cpp", "cpp"}, {"java", "java"}, {"js", "javascript"},
                                         {"go", "go"}, {"rs", "rust"}, {"py", "python"}};
    const char *want = r->o->expert;
    if (!r->m.is_pack)
        return want ? cm_fail(err, CM_E_USAGE, "--expert: %s is not a language-expert pack",
                              r->o->model) : CM_OK;
    for (int i = 0; !want && i < 6; i++)
        if (!strcmp(map[i][0], l->name) && cm_pack_has_member(&r->m.file, map[i][1]))
            want = map[i][1];
    if (!want)
        want = CM_PACK_FALLBACK;
    fprintf(stderr, "[eval] %s: expert %s\n", l->name, want);
    return cm_model_select_expert(&r->m, want, err);
}

/* The longest prompt of the language's share in tokens, to size the
 * context: each sequence needs no more than it and --max-tokens. */
static cm_status longest_prompt(eval_run *r, int li, int *out, cm_err *err)
{
    long base = shard_base(r, li);
    cm_status s = CM_OK;
    *out = 1;
    for (int i = 0; !s && i < problem_count(r, li); i++) {
        const cm_problem *p = &r->sets[li].p[i];
        int32_t *ids = NULL;
        size_t n = 0;
        if (!in_shard(r->o, base + i))
            continue;
        s = cm_tokenize(r->m.tok, p->prompt, strlen(p->prompt), cm_tok_add_bos(r->m.tok), 0, &ids,
                        &n, err);
        free(ids);
        *out = (int)n > *out ? (int)n : *out;
    }
    return s;
}

/* A context of `seqs` sequences for language li's problems. */
static cm_status gen_context(eval_run *r, int li, int seqs, cm_ctx **ctx, cm_err *err)
{
    const cm_backend_ops *be;
    int longest = 0;
    cm_status s = bind_expert(r, r->o->lang[li], err);
    if (!s)
        s = longest_prompt(r, li, &longest, err);
    if (!s)
        s = cm_backend_choose(r->o->backend, &be, err);
    long need = (long)longest + r->o->max_tokens + 1;
    int n_ctx = need < r->o->n_ctx ? (int)need : r->o->n_ctx;
    if (!s)
        s = cm_ctx_new_multi(&r->m, be, NULL, n_ctx, CM_KV_F16, 512, seqs, ctx, err);
    return s;
}

static cm_status run_language(eval_run *r, int li, cm_err *err)
{
    const cm_eval_lang *l = r->o->lang[li];
    const cm_problem_set *ps = &r->sets[li];
    int np = problem_count(r, li);
    long base = shard_base(r, li);
    cm_ctx *ctx = NULL;
    cm_status s = CM_OK;
    for (int i = 0; !s && i < np; i++) {
        const cm_problem *p = &ps->p[i];
        if (!in_shard(r->o, base + i) || !missing_samples(r, l->name, p))
            continue;
        if (r->o->canonical) {
            size_t len = strlen(p->canonical ? p->canonical : l->wrong);
            char *c = strdup(p->canonical ? p->canonical : l->wrong);
            s = c ? score(r, l, p, 0, c, len, 0, err) : cm_fail(err, CM_E_NOMEM, "out of memory");
        } else {
            if (!ctx)
                s = gen_context(r, li, r->o->batch, &ctx, err);
            if (!s)
                s = generate_problem(r, ctx, l, p, err);
        }
        progress(r, l->name, i + 1, np);
    }
    cm_ctx_free(ctx);
    return s;
}

/* What the completions depend on: a resumed or merged directory must match.
 * The batch is among them: a larger batch may take other kernels, whose
 * rounding can flip a sampled token. */
static void config_text(const eval_opts *o, char *buf, size_t cap)
{
    const char *m = o->model ? strrchr(o->model, '/') : NULL;
    int batch = o->canonical ? 0 : o->batch < o->samples ? o->batch : o->samples;
    snprintf(buf, cap, "{\"bench\": \"%s\", \"model\": \"%s\", \"expert\": \"%s\", \"temp\": %g, "
             "\"top_p\": %g, \"top_k\": %d, \"seed\": %llu, \"max_tokens\": %d, "
             "\"canonical\": %d, \"batch\": %d}\n",
             o->bench == CM_BENCH_HUMANEVAL ? "humaneval" : "multipl-e",
             o->canonical ? "" : m ? m + 1 : o->model ? o->model : "",
             o->expert ? o->expert : "", o->sp.temp, o->sp.top_p, o->sp.top_k,
             (unsigned long long)o->sp.seed, o->max_tokens, o->canonical, batch);
}

static cm_status write_text(const char *dir, const char *name, const char *text, cm_err *err)
{
    char path[1024];
    cm_atomic_file a;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cm_status s = cm_atomic_open(&a, path, 0644, err);
    if (s)
        return s;
    if (write(a.fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        cm_atomic_abort(&a);
        return cm_fail(err, CM_E_IO, "cannot write %s", path);
    }
    return cm_atomic_commit(&a, 0, err);
}

/* DIR's config.json must be this run's (or absent). */
static cm_status open_out(const char *dir, const char *config, cm_err *err)
{
    char path[1024], *old = NULL;
    size_t len = 0;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return cm_fail(err, CM_E_IO, "cannot create %s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/config.json", dir);
    cm_err e;
    if (access(path, F_OK) == 0) {
        cm_status s = read_file(path, &old, &len, &e);
        int same = !s && !strcmp(old, config);
        free(old);
        if (!same)
            return cm_fail(err, CM_E_USAGE, "%s holds a run with other settings (%s): use "
                           "another --out, or the same settings to resume it", dir, path);
        return CM_OK;
    }
    return write_text(dir, "config.json", config, err);
}

/* Reads DIR/results.jsonl (a cut-off last line dropped) and rewrites it
 * with the complete lines only, then opens it for appending. */
static cm_status load_results(eval_run *r, cm_err *err)
{
    char path[1024];
    int dropped = 0;
    snprintf(path, sizeof path, "%s/results.jsonl", r->o->out);
    cm_status s = cm_ev_records_load(path, &r->rs, &dropped, err);
    if (!s && dropped)
        fprintf(stderr, "[eval] %s: %d unreadable line(s) dropped (an interrupted run)\n", path,
                dropped);
    if (!s && r->rs.n)
        fprintf(stderr, "[eval] resuming: %zu completions already in %s\n", r->rs.n, path);
    cm_atomic_file a;
    if (!s)
        s = cm_atomic_open(&a, path, 0644, err);
    FILE *f = s ? NULL : cm_atomic_stream(&a);
    if (!s && !f)
        cm_atomic_abort(&a), s = cm_fail(err, CM_E_NOMEM, "out of memory");
    for (size_t i = 0; f && i < r->rs.n; i++)
        cm_ev_record_write(f, &r->rs.r[i]);
    if (f)
        s = cm_atomic_commit(&a, 0, err);
    if (!s)
        s = cm_ev_records_index(&r->rs, err);
    if (!s && !(r->results = fopen(path, "ab")))
        s = cm_fail(err, CM_E_IO, "cannot append to %s: %s", path, strerror(errno));
    return s;
}

static const char *evalsets_dir(const eval_opts *o, char *buf, size_t cap)
{
    const char *sh = getenv("CM_SHARED");
    if (o->evalsets)
        return o->evalsets;
    snprintf(buf, cap, "%s/evalsets", sh && *sh ? sh : "../shared");
    return buf;
}

/* Loads the problems of each language whose toolchain is here. */
static cm_status load_sets(eval_run *r, cm_err *err)
{
    char buf[900], path[1024], missing[256];
    const char *dir = evalsets_dir(r->o, buf, sizeof buf);
    cm_status s = CM_OK;
    for (int i = 0; !s && i < r->o->n_langs; i++) {
        const cm_eval_lang *l = r->o->lang[i];
        if (!cm_eval_lang_ready(l, cm_sb_path(r->sb), missing, sizeof missing)) {
            fprintf(stderr, "[eval] skipping %s: %s not installed (apt-get install %s)\n",
                    l->name, missing, l->apt);
            continue;
        }
        if (r->o->bench == CM_BENCH_HUMANEVAL)
            snprintf(path, sizeof path, "%s/HumanEval.jsonl.gz", dir);
        else
            snprintf(path, sizeof path, "%s/multipl-e-humaneval-%s.jsonl.gz", dir, l->name);
        s = cm_problems_load(path, r->o->bench, &r->sets[i], err);
        r->ready[i] = !s;
    }
    return s;
}

static long count_work(const eval_run *r)
{
    long n = 0;
    for (int li = 0; li < r->o->n_langs; li++) {
        long base = shard_base(r, li);
        for (int i = 0; r->ready[li] && i < problem_count(r, li); i++)
            if (in_shard(r->o, base + i))
                n += missing_samples(r, r->o->lang[li]->name, &r->sets[li].p[i]);
    }
    return n;
}

static cm_status load_model(eval_run *r, cm_err *err)
{
    char path[1024];
    eval_opts *o = (eval_opts *)r->o;
    if (!o->model && !(o->model = default_model_path(path, sizeof path)))
        return cm_fail(err, CM_E_IO, "no model given and no default model is installed: "
                       "pass -m FILE.gguf");
    cm_status s = cm_model_load(o->model, &r->m, err);
    if (s)
        return s;
    r->have_model = 1;
    if (!r->m.tok)
        return cm_fail(err, CM_E_UNSUPPORTED, "%s has no tokenizer", o->model);
    int train = r->m.hp.n_ctx_train > 0 ? r->m.hp.n_ctx_train : 4096;
    if (!o->n_ctx)
        o->n_ctx = train < 4096 ? train : 4096;
    return CM_OK;
}

static const char SUMMARY_TITLE[] = "pass@k per language (codemoe eval)";

/* Prints summary.md; for --canonical, whether every canonical solution
 * passed (HumanEval) or every wrong completion failed (MultiPL-E). */
static cm_status report(const eval_run *r, const char *dir, const char *name, cm_err *err)
{
    char path[1024], *md = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cm_status s = read_file(path, &md, &len, err);
    if (!s)
        fputs(md, stdout);
    free(md);
    if (s || !r || !r->o->canonical)
        return s;
    long n = 0, pass = 0;
    for (size_t i = 0; i < r->rs.n_unique; i++) {
        n++;
        pass += r->rs.r[r->rs.order[i]].status == CM_EV_PASS;
    }
    int human = r->o->bench == CM_BENCH_HUMANEVAL;
    printf("\ncanonical check: %ld/%ld %s %s\n", human ? pass : n - pass, n,
           human ? "canonical solutions pass" : "wrong completions fail",
           (human ? pass == n : pass == 0) ? "(as they must)" : "(ALL must: FAILED)");
    if (human ? pass != n : pass != 0)
        return cm_fail(err, CM_E_RANGE, "canonical check failed: see %s/results.jsonl", dir);
    return CM_OK;
}

static cm_status eval_main(eval_opts *o, cm_err *err)
{
    eval_run r = {.o = o};
    char cache[1024], config[1024];
    config_text(o, config, sizeof config);
    cm_status s = open_sandbox(o, cache, sizeof cache, &r.sb, err);
    if (s)
        return s;
    fprintf(stderr, "[eval] sandbox: %s; %d program%s at a time\n", cm_sb_describe(r.sb),
            o->jobs, o->jobs > 1 ? "s" : "");
    s = cm_ev_pool_new(r.sb, o->jobs, o->timeout, &r.pool, err);
    if (!s)
        s = open_out(o->out, config, err);
    if (!s)
        s = load_results(&r, err);
    if (!s)
        s = load_sets(&r, err);
    r.total = s ? 0 : count_work(&r);
    if (!s && r.total && !o->canonical)
        s = load_model(&r, err);
    r.t0 = now_seconds();
    for (int li = 0; !s && li < o->n_langs; li++)
        if (r.ready[li])
            s = run_language(&r, li, err);
    if (!s)
        s = drain(&r, 0, err);
    cm_ev_pool_free(r.pool, queued_free);
    if (!s && r.done && r.gen_s > 0)
        fprintf(stderr, "[eval] %ld completions in %.1f s: %ld tokens decoded in %.1f s (%.1f "
                "tok/s, --batch %d), programs %.1f s (-j %d)\n", r.done, now_seconds() - r.t0,
                r.gen_tok, r.gen_s, r.gen_tok / r.gen_s, o->batch, r.prog_s, o->jobs);
    else if (!s && r.done)
        fprintf(stderr, "[eval] %ld programs in %.1f s: %.1f s of programs (-j %d)\n", r.done,
                now_seconds() - r.t0, r.prog_s, o->jobs);
    if (r.results && fclose(r.results) != 0 && !s)
        s = cm_fail(err, CM_E_IO, "cannot write %s/results.jsonl", o->out);
    if (!s)
        s = cm_ev_records_index(&r.rs, err);
    if (!s)
        s = cm_ev_summarize(&r.rs, o->ks, o->n_ks, o->out, SUMMARY_TITLE, err);
    if (!s)
        s = report(&r, o->out, "summary.md", err);
    for (int i = 0; i < MAX_LANGS; i++)
        cm_problems_free(&r.sets[i]);
    cm_ev_records_free(&r.rs);
    if (r.have_model)
        cm_model_free(&r.m);
    cm_sb_free(r.sb);
    cm_sb_scratch_remove(cache);
    return s;
}

/* ---- --estimate: the run's size, and its time and cost from a measured sample ---- */

typedef struct {
    long problems, completions, runs, prompt_tok;
    double run_s, gen_tok; /* measured means: a program's seconds, a completion's tokens */
    int measured;          /* problems measured */
} est_lang;

typedef struct {
    double pp_s, pp_tok, tg_s, tg_tok, bw;
    est_lang l[MAX_LANGS];
} est_state;

/* Counts the language's prompt tokens; returns the first problem in the shard, or -1. */
static int count_prompts(eval_run *r, int li, est_lang *el, cm_err *err, cm_status *s)
{
    long base = shard_base(r, li);
    int first = -1;
    for (int i = 0; !*s && i < problem_count(r, li); i++) {
        const cm_problem *p = &r->sets[li].p[i];
        int32_t *ids = NULL;
        size_t n = 0;
        if (!in_shard(r->o, base + i))
            continue;
        *s = cm_tokenize(r->m.tok, p->prompt, strlen(p->prompt), cm_tok_add_bos(r->m.tok), 0,
                         &ids, &n, err);
        free(ids);
        el->problems++, el->prompt_tok += (long)n;
        first = first < 0 ? i : first;
    }
    el->completions = el->problems * r->o->samples;
    el->runs = el->completions * (r->o->lang[li]->compile ? 2 : 1);
    return first;
}

#define EST_PROBLEMS 3 /* problems per language the estimate measures */

/* Times problem p's prompt, min(n, --batch) completions of it decoded
 * together, and the first one's program. */
static cm_status measure_one(eval_run *r, cm_ctx *ctx, int li, const cm_problem *p, est_state *e,
                             cm_err *err)
{
    const cm_eval_lang *l = r->o->lang[li];
    int32_t *ids = NULL, seq[512] = {0};
    size_t n = 0, plen = 0;
    int k = cm_ctx_n_seq(ctx), sample[256], tokens = 0;
    comp_buf cbs[256] = {{0}};
    cm_gen_seq gs[256];
    cm_status s = cm_tokenize(r->m.tok, p->prompt, strlen(p->prompt), cm_tok_add_bos(r->m.tok), 0,
                              &ids, &n, err);
    if (!s && (n < 2 || (int)n + 1 >= r->o->n_ctx))
        s = cm_fail(err, CM_E_RANGE, "%s %s: the prompt does not fit the context", l->name,
                    p->name);
    double t0 = now_seconds();
    cm_ctx_seq_keep(ctx, 0, 0);
    for (int i = 0; !s && i < (int)n - 1; i += 512) { /* the prompt alone: its speed */
        int m = (int)n - 1 - i < 512 ? (int)n - 1 - i : 512;
        s = cm_eval_batch(ctx, ids + i, seq, m, NULL, NULL, err);
    }
    double t_pp = now_seconds() - t0;
    e->pp_s += t_pp, e->pp_tok += (double)n - 1;
    for (int i = 0; i < k; i++)
        sample[i] = i;
    t0 = now_seconds();
    if (!s) /* the prompt again (shared), then the completions */
        s = decode_samples(r, ctx, l, p, ids, (int)n, sample, k, cbs, gs, err);
    for (int i = 0; !s && i < k; i++)
        tokens += gs[i].res.n_gen;
    double t_tg = now_seconds() - t0 - t_pp;
    e->tg_s += t_tg > 1e-6 ? t_tg : 1e-6, e->tg_tok += tokens;
    e->l[li].gen_tok += (double)tokens / k;
    cm_ev_outcome oc;
    if (!s)
        cm_problem_cut(p, cbs[0].p, cbs[0].len);
    char *prog = s ? NULL : cm_problem_program(p, cbs[0].p, &plen);
    if (!s && prog && !(s = cm_eval_program(r->sb, l, prog, plen, r->o->timeout, &oc, err)))
        e->l[li].run_s += oc.seconds;
    for (int i = 0; i < k; i++)
        free(cbs[i].p);
    free(prog), free(ids);
    return s;
}

/* The first EST_PROBLEMS problems of the language's share, measured; the
 * means are kept. */
static cm_status measure_lang(eval_run *r, int li, est_state *e, cm_err *err)
{
    cm_status s = CM_OK;
    int first = count_prompts(r, li, &e->l[li], err, &s), done = 0;
    if (s || first < 0)
        return s;
    cm_ctx *ctx = NULL;
    long base = shard_base(r, li);
    int k = r->o->batch < r->o->samples ? r->o->batch : r->o->samples;
    s = gen_context(r, li, k, &ctx, err);
    for (int i = first; !s && i < problem_count(r, li) && done < EST_PROBLEMS; i++)
        if (in_shard(r->o, base + i))
            s = measure_one(r, ctx, li, &r->sets[li].p[i], e, err), done++;
    e->l[li].gen_tok /= done ? done : 1, e->l[li].run_s /= done ? done : 1;
    e->l[li].measured = done;
    cm_ctx_free(ctx);
    return s;
}

static void hours(char *buf, size_t cap, double s)
{
    snprintf(buf, cap, "%.0f:%02.0f:%02.0f", floor(s / 3600), floor(fmod(s, 3600) / 60),
             floor(fmod(s, 60)));
}

static void print_instances(const eval_opts *o, double t_model, double t_prog, double tg,
                            double bw)
{
    char def[1024], line[512], name[64], gpu[32], th[32];
    const char *path = o->instances;
    if (!path) { /* the source tree's (edited there), else the installed copy */
        snprintf(def, sizeof def, "%s/bench/instances.tsv", CM_SRCDIR), path = def;
        if (access(def, R_OK) != 0)
            snprintf(def, sizeof def, "%s/instances.tsv", CM_PKGDATADIR);
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("(no instance table: %s: %s)\n", path, strerror(errno));
        return;
    }
    printf("\n%-12s %-5s %10s %10s %12s %12s   (%s)\n", "instance", "GPU", "gen tok/s", "h:mm:ss",
           "on-demand $", "spot $", path);
    while (fgets(line, sizeof line, f)) {
        double gbw, tf, floor_ms, od, spot;
        if (line[0] == '#' || sscanf(line, "%63s %31s %lf %lf %lf %lf %lf", name, gpu, &gbw, &tf,
                                     &floor_ms, &od, &spot) != 7)
            continue;
        double tg_gpu = tg * gbw / (bw > 0 ? bw : 1), cap = floor_ms > 0 ? 1000 / floor_ms : 1e9;
        tg_gpu = tg_gpu < cap ? tg_gpu : cap;
        double total = t_model * tg / tg_gpu + t_prog;
        hours(th, sizeof th, total);
        printf("%-12s %-5s %10.0f %10s %12.2f %12.2f\n", name, gpu, tg_gpu, th,
               total / 3600 * od, total / 3600 * spot);
    }
    fclose(f);
}

static void print_estimate(const eval_run *r, const est_state *e)
{
    const eval_opts *o = r->o;
    long problems = 0, completions = 0, runs = 0, ptok = 0;
    double gen_exp = 0, t_prog = 0, pp = e->pp_tok / (e->pp_s > 0 ? e->pp_s : 1e-9);
    double tg = e->tg_tok / (e->tg_s > 0 ? e->tg_s : 1e-9);
    char a[32], b[32], c[32];
    for (int li = 0; li < o->n_langs; li++) {
        const est_lang *l = &e->l[li];
        problems += l->problems, completions += l->completions, runs += l->runs;
        ptok += l->prompt_tok, gen_exp += l->completions * l->gen_tok;
        t_prog += l->completions * l->run_s / o->jobs;
        if (l->problems)
            printf("%-5s %4ld problems, %7ld completions; %d measured: %4.0f tokens, program "
                   "%.2f s (means)\n", o->lang[li]->name, l->problems, l->completions,
                   l->measured, l->gen_tok, l->run_s);
    }
    printf("total: %ld problems, %ld completions (n = %d), %ld program runs (compile + run)\n",
           problems, completions, o->samples, runs);
    printf("prompt tokens: %ld (each prompt evaluated once)\n", ptok);
    printf("generated tokens: %.0f expected (the measured completions' lengths), %.0f at most "
           "(--max-tokens %d)\n", gen_exp, (double)completions * o->max_tokens, o->max_tokens);
    printf("measured here: prompt %.0f tok/s, generation %.1f tok/s, memory read %.1f GB/s\n", pp,
           tg, e->bw);
    double t_model = ptok / pp + gen_exp / tg;
    hours(a, sizeof a, t_model), hours(b, sizeof b, t_prog), hours(c, sizeof c, t_model + t_prog);
    printf("time here (h:mm:ss): model %s, programs %s (%d at a time), total %s\n", a, b, o->jobs,
           c);
    print_instances(o, t_model, t_prog, tg, e->bw);
}

static cm_status estimate_main(eval_opts *o, cm_err *err)
{
    eval_run r = {.o = o};
    est_state e = {0};
    char cache[1024];
    cm_status s = open_sandbox(o, cache, sizeof cache, &r.sb, err);
    if (s)
        return s;
    s = load_sets(&r, err);
    if (!s)
        s = load_model(&r, err);
    for (int li = 0; !s && li < o->n_langs; li++)
        if (r.ready[li])
            s = measure_lang(&r, li, &e, err);
    e.bw = s ? 0 : cm_measure_read_bw(0, 0, 2);
    if (!s)
        print_estimate(&r, &e);
    for (int i = 0; i < MAX_LANGS; i++)
        cm_problems_free(&r.sets[i]);
    if (r.have_model)
        cm_model_free(&r.m);
    cm_sb_free(r.sb);
    cm_sb_scratch_remove(cache);
    return s;
}

/* ---- --compare ---- */

static cm_status compare_main(eval_opts *o, cm_err *err)
{
    const char *names[3] = {"routed", "baseline", "merged"};
    const char *models[3] = {o->model, o->model, o->merged};
    const char *experts[3] = {NULL, CM_PACK_FALLBACK, NULL};
    int n = o->merged ? 3 : 2, ks[2] = {1, 10};
    char dirs[3][1024], path[1100];
    cm_ev_records rs[3] = {{0}};
    cm_status s = mkdir(o->out, 0755) != 0 && errno != EEXIST
                      ? cm_fail(err, CM_E_IO, "cannot create %s: %s", o->out, strerror(errno))
                      : CM_OK;
    for (int i = 0; !s && i < n; i++) {
        eval_opts c = *o;
        snprintf(dirs[i], sizeof dirs[i], "%s/%s", o->out, names[i]);
        c.out = dirs[i], c.model = models[i], c.expert = experts[i], c.compare = 0;
        fprintf(stderr, "[eval] --compare: %s (%s%s%s) into %s\n", names[i], models[i],
                experts[i] ? ", expert " : "", experts[i] ? experts[i] : "", dirs[i]);
        s = eval_main(&c, err);
        snprintf(path, sizeof path, "%s/results.jsonl", dirs[i]);
        if (!s)
            s = cm_ev_records_load(path, &rs[i], NULL, err);
        if (!s)
            s = cm_ev_records_index(&rs[i], err);
    }
    cm_atomic_file a;
    snprintf(path, sizeof path, "%s/compare.md", o->out);
    FILE *f = NULL;
    if (!s && !(s = cm_atomic_open(&a, path, 0644, err)) && !(f = cm_atomic_stream(&a)))
        cm_atomic_abort(&a), s = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (f)
        s = cm_ev_compare(rs, names, n, 1, ks, 2, f, err);
    if (f && s)
        cm_atomic_abort(&a);
    else if (f)
        s = cm_atomic_commit(&a, 0, err);
    if (!s)
        s = report(NULL, o->out, "compare.md", err);
    for (int i = 0; i < 3; i++)
        cm_ev_records_free(&rs[i]);
    return s;
}

/* ---- codemoe eval merge ---- */

static cm_status merge_main(int argc, char **argv, cm_err *err)
{
    const char *out = NULL;
    int ks[MAX_KS] = {1, 10, 100}, n_ks = 3, first = 0;
    char *config = NULL, path[1024];
    cm_ev_records rs = {0};
    cm_status s = CM_OK;
    for (int i = 0; !s && i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "-k") && i + 1 < argc) {
            eval_opts tmp = {0};
            if (!(s = parse_ks("-k", argv[++i], &tmp, err)))
                memcpy(ks, tmp.ks, sizeof ks), n_ks = tmp.n_ks;
        } else if (argv[i][0] == '-')
            s = cm_fail(err, CM_E_USAGE, "eval merge: unknown option %s (--out DIR, -k K,K)",
                        argv[i]);
        else if (!first)
            first = i;
    }
    if (!s && (!out || !first))
        s = cm_fail(err, CM_E_USAGE, "usage: codemoe eval merge --out DIR SHARD_DIR...");
    for (int i = first; !s && i < argc; i++) {
        if (argv[i][0] == '-') {
            i++;
            continue;
        }
        char *c = NULL;
        size_t len;
        snprintf(path, sizeof path, "%s/config.json", argv[i]);
        s = read_file(path, &c, &len, err);
        if (!s && config && strcmp(c, config))
            s = cm_fail(err, CM_E_USAGE, "%s has other settings than the first shard", path);
        if (!config)
            config = c, c = NULL;
        free(c);
        snprintf(path, sizeof path, "%s/results.jsonl", argv[i]);
        if (!s)
            s = cm_ev_records_load(path, &rs, NULL, err);
    }
    if (!s)
        s = open_out(out, config, err);
    if (!s)
        s = cm_ev_records_index(&rs, err);
    cm_atomic_file a;
    snprintf(path, sizeof path, "%s/results.jsonl", out ? out : ".");
    if (!s)
        s = cm_atomic_open(&a, path, 0644, err);
    FILE *f = s ? NULL : cm_atomic_stream(&a);
    if (!s && !f)
        cm_atomic_abort(&a), s = cm_fail(err, CM_E_NOMEM, "out of memory");
    for (size_t i = 0; f && i < rs.n_unique; i++)
        cm_ev_record_write(f, &rs.r[rs.order[i]]);
    if (f)
        s = cm_atomic_commit(&a, 0, err);
    if (!s)
        s = cm_ev_summarize(&rs, ks, n_ks, out, SUMMARY_TITLE, err);
    if (!s)
        s = report(NULL, out, "summary.md", err);
    free(config);
    cm_ev_records_free(&rs);
    return s;
}

/* ---- codemoe eval sandbox: program files, as eval runs them ---- */

#define SB_MAX_FILES 256
static const char SANDBOX_USAGE[] = "usage: codemoe eval sandbox [--timeout S] [--sandbox KIND] "
                                    "[-j N] --lang L FILE... [--lang L FILE...]";

typedef struct {
    const char *file[SB_MAX_FILES];
    const cm_eval_lang *lang[SB_MAX_FILES];
    int n;
} sb_files;

static cm_status sandbox_args(int argc, char **argv, eval_opts *o, sb_files *f, cm_err *err)
{
    const cm_eval_lang *l = NULL;
    cm_status s = CM_OK;
    float t;
    for (int i = 0; !s && i < argc; i++) {
        if (!strcmp(argv[i], "--lang") && i + 1 < argc) {
            if (!(l = cm_eval_lang_find(argv[++i])))
                s = cm_fail(err, CM_E_USAGE, "eval sandbox: unknown language '%s'", argv[i]);
        } else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            if (!(s = arg_float("--timeout", argv[++i], 0.1f, 3600.0f, &t, err)))
                o->timeout = t;
        } else if (!strcmp(argv[i], "--sandbox") && i + 1 < argc)
            o->sandbox = argv[++i];
        else if (!strcmp(argv[i], "-j") && i + 1 < argc)
            s = arg_int("-j", argv[++i], 1, 256, &o->jobs, err);
        else if (argv[i][0] != '-' && l && f->n < SB_MAX_FILES)
            f->file[f->n] = argv[i], f->lang[f->n++] = l;
        else
            s = cm_fail(err, CM_E_USAGE, "%s", SANDBOX_USAGE);
    }
    return !s && !f->n ? cm_fail(err, CM_E_USAGE, "%s", SANDBOX_USAGE) : s;
}

/* Queues every file's program; prints each outcome, in order. */
static cm_status sandbox_run(const sb_files *f, cm_sandbox *sb, cm_ev_pool *pool, cm_err *err)
{
    char missing[256];
    cm_status s = CM_OK, st;
    for (int i = 0; !s && i < f->n; i++) {
        char *prog = NULL;
        size_t len = 0;
        if (!cm_eval_lang_ready(f->lang[i], cm_sb_path(sb), missing, sizeof missing))
            return cm_fail(err, CM_E_UNSUPPORTED, "%s is not installed (apt-get install %s)",
                           missing, f->lang[i]->apt);
        s = read_file(f->file[i], &prog, &len, err);
        if (!s)
            s = cm_ev_pool_submit(pool, f->lang[i], prog, len, (void *)f->file[i], err);
    }
    void *tag;
    cm_ev_outcome oc;
    cm_err e;
    while (cm_ev_pool_take(pool, 1, &tag, &oc, &st, &e)) {
        if (!s && st)
            s = st, *err = e;
        if (s)
            continue;
        fputs("{\"file\": ", stdout);
        json_write_string(stdout, tag);
        printf(", \"status\": \"%s\", \"seconds\": %.3f, \"sandbox\": \"%s\", \"detail\": ",
               cm_ev_status_name(oc.status), oc.seconds, cm_sb_kind_name(cm_sb_kind_of(sb)));
        json_write_string(stdout, oc.detail);
        puts("}");
        fflush(stdout);
    }
    return s;
}

static cm_status sandbox_main(int argc, char **argv, cm_err *err)
{
    eval_opts o = {.timeout = 15, .jobs = 1};
    sb_files f;
    f.n = 0;
    char cache[1024];
    cm_sandbox *sb = NULL;
    cm_ev_pool *pool = NULL;
    cm_status s = sandbox_args(argc, argv, &o, &f, err);
    if (!s)
        s = open_sandbox(&o, cache, sizeof cache, &sb, err);
    if (!s)
        s = cm_ev_pool_new(sb, o.jobs, o.timeout, &pool, err);
    if (!s)
        s = sandbox_run(&f, sb, pool, err);
    cm_ev_pool_free(pool, NULL);
    if (sb)
        cm_sb_free(sb), cm_sb_scratch_remove(cache);
    return s;
}

int cli_eval(int argc, char **argv)
{
    eval_opts o = {.bench_name = "multipl-e", .samples = 1, .max_tokens = 512, .timeout = 15,
                   .ks = {1, 10, 100}, .n_ks = 3};
    cm_err err = {0};
    int help = 0;
    char path[1024];
    if (argc > 1 && !strcmp(argv[1], "merge"))
        return merge_main(argc - 2, argv + 2, &err) ? cli_fail(&err) : 0;
    if (argc > 1 && !strcmp(argv[1], "sandbox"))
        return sandbox_main(argc - 2, argv + 2, &err) ? cli_fail(&err) : 0;
    cm_sampling_defaults(&o.sp);
    o.sp.top_k = 0, o.sp.min_p = 0, o.sp.top_p = 0.95f, o.sp.seed = 1;
    o.sp.repeat_penalty = 1.0f;
    cm_status s = cli_getopt(argc, argv, "eval", EVAL_OPTS, eval_opt, &o, &help, &err);
    if (!s && help)
        fputs(EVAL_HELP, stdout);
    if (!s && !help)
        s = check_eval(&o, &err);
    if (!s && !help && !o.check && !o.canonical && !o.model &&
        !(o.model = default_model_path(path, sizeof path)))
        s = cm_fail(&err, CM_E_IO, "no model given and no default model is installed: pass -m "
                    "FILE.gguf");
    if (!s && !help && o.check)
        return eval_check(&o);
    if (!s && !help && o.compare)
        s = compare_main(&o, &err);
    else if (!s && !help && o.estimate)
        s = estimate_main(&o, &err);
    else if (!s && !help)
        s = eval_main(&o, &err);
    return s ? cli_fail(&err) : 0;
}
