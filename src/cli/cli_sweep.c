/* cli_sweep.c - `codemoe sweep`: quantization schemes x languages, PPL and
 * KLD per row (the engine is src/eval/sweep.c), with resume, JSON and an SVG
 * chart. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "util/atomic_file.h"
#include "util/svg_plot.h"
#include "eval/corpus.h"
#include "eval/sweep.h"

static const char SWEEP_HELP[] =
    "usage: codemoe sweep -m MODEL --out RESULTS.csv [options]\n"
    "\n"
    "Quantizes a float model (f32, f16 or bf16; also a language-expert pack of\n"
    "them, every member) in memory to each scheme and measures, on each\n"
    "language of the code corpus, perplexity and KL divergence from the\n"
    "unquantized model, the way `codemoe perplexity --kld-base` does.  One CSV\n"
    "row per (scheme, language).  Rows already in --out are skipped, so an\n"
    "interrupted sweep resumes where it stopped.\n"
    "\n"
    "  -m, --model MODEL       the float model or pack to quantize\n"
    "      --out FILE          results CSV (RFC 4180), rewritten atomically after\n"
    "                          every row; read first to resume\n"
    "      --json FILE         also the rows as a JSON array of objects; '-' writes\n"
    "                          it to stdout, which then carries nothing else\n"
    "      --plot FILE         an SVG chart of PPL increase against bits per weight,\n"
    "                          one line per language\n"
    "      --bits LIST         widths to sweep (default 8,4,3,2): 8 q8_0, 6 q6_k,\n"
    "                          5 q5_0 q5_k_m, 4 q4_0 q4_k_m, 3 q3_k_m, 2 q2_k\n"
    "      --schemes LIST      instead of --bits, any of codemoe quantize's types,\n"
    "                          e.g. q4_k_s,q5_k_m,q8_0\n"
    "      --langs LIST        languages (default c,cpp,python,java,javascript,go,rust)\n"
    "      --corpus DIR        the code corpus, DIR/LANG/SPLIT.jsonl.xz (default\n"
    "                          $CM_SHARED/corpus, else the source tree's ../shared/corpus)\n"
    "      --split S           the corpus split, DIR/LANG/S.jsonl.xz (default valid)\n"
    "      --max-tokens N      tokens per language (default 65536; 0: the whole split)\n"
    "  -c, --ctx-size N        tokens per chunk (default 512)\n"
    "  -b, --batch-size N      tokens per forward batch (default: the chunk)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "      --kv-type T         KV cache type: f16 (default) or f32\n"
    "      --backend B         measure on cpu (default; CODEMOE_BACKEND sets another)\n"
    "                          ref, cuda or vulkan; quantizing always runs on the CPU\n"
    "      --cross             packs: measure every expert on every language too\n"
    "      --order O           auto (default), language or scheme: measure language\n"
    "                          by language (each base, then every scheme on it; all\n"
    "                          quantized models loaded at once, one base kept at a\n"
    "                          time, in memory when it fits in a quarter of the RAM)\n"
    "                          or scheme by scheme (all bases kept, one quantized\n"
    "                          model at a time); auto: language by language when the\n"
    "                          quantized models fit in a quarter of the RAM\n"
    "      --tmpdir DIR        keep the base model's log-probabilities in files here\n"
    "                          (default: in memory, one language at a time, when\n"
    "                          that fits, else in $TMPDIR or /tmp; they take about\n"
    "                          tokens/2 x 2 x vocabulary bytes per language)\n"
    "  -h, --help              this text\n"
    "\n"
    "columns: scheme, language, bits_per_weight (whole file), model_bytes, ppl,\n"
    "ppl_increase_pct (against the unquantized model on the same tokens), kld\n"
    "(mean, nats), top1_agreement (%), tokens (evaluated), seconds, expert (the\n"
    "pack member measured; empty for a plain model), base_ppl, ctx,\n"
    "fallback_tensors (tensors whose rows do not fill the wanted type's blocks\n"
    "and use llama-quantize's fallback type instead).\n"
    "\n"
    "Progress goes to stderr: a bar with ETA on a terminal, plain lines\n"
    "otherwise; after each scheme, which language suffers most and least.\n"
    "\n"
    "exit status: 0 done; 1 bad input (a model that is not float, a missing\n"
    "corpus or language, a results file that is not a sweep's, weights that\n"
    "cannot be quantized); 2 bad usage; 3 the run failed midway (I/O error,\n"
    "disk or memory full: the rows measured so far are kept in --out).\n";

#define DEFAULT_LANGS "c,cpp,python,java,javascript,go,rust"

typedef struct {
    const char *model, *out, *json, *plot, *corpus, *split, *tmpdir;
    const char *bits, *schemes_arg, *langs_arg;
    int max_tokens, n_ctx, n_batch, cross, order;
    cm_kv_type kv;
    const char *backend;
    const cm_backend_ops *be;
    char corpus_buf[1024], lang_buf[1024];
    const char *langs[CM_SWEEP_MAX_LANGS];
    int n_langs;
    const cm_qmix *schemes[CM_SWEEP_MAX_SCHEMES];
    int n_schemes;
} sweep_opts;

/* ------------------------------------------------------------ options */

enum { OPT_OUT = CLI_LONG, OPT_JSON, OPT_PLOT, OPT_BITS, OPT_SCHEMES, OPT_LANGS, OPT_CORPUS,
       OPT_SPLIT, OPT_MAX_TOKENS, OPT_KV, OPT_TMPDIR, OPT_ORDER, OPT_BACKEND, OPT_CROSS };

static const struct option SWEEP_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"out", required_argument, 0, OPT_OUT},
    {"json", required_argument, 0, OPT_JSON}, {"plot", required_argument, 0, OPT_PLOT},
    {"bits", required_argument, 0, OPT_BITS}, {"schemes", required_argument, 0, OPT_SCHEMES},
    {"langs", required_argument, 0, OPT_LANGS}, {"corpus", required_argument, 0, OPT_CORPUS},
    {"split", required_argument, 0, OPT_SPLIT}, {"max-tokens", required_argument, 0, OPT_MAX_TOKENS},
    {"ctx-size", required_argument, 0, 'c'}, {"batch-size", required_argument, 0, 'b'},
    {"threads", required_argument, 0, 't'}, {"kv-type", required_argument, 0, OPT_KV},
    {"tmpdir", required_argument, 0, OPT_TMPDIR}, {"order", required_argument, 0, OPT_ORDER},
    {"backend", required_argument, 0, OPT_BACKEND}, {"cross", no_argument, 0, OPT_CROSS}, {0}};

static cm_status parse_order(sweep_opts *o, const char *v, cm_err *err)
{
    static const char *const names[] = {"auto", "language", "scheme"};
    for (o->order = 0; o->order < 3 && strcmp(v, names[o->order]); o->order++)
        ;
    if (o->order == 3)
        return cm_fail(err, CM_E_USAGE, "option --order: '%s' is not auto, language or scheme", v);
    return CM_OK;
}

static cm_status sweep_opt(void *user, int id, const char *a, const char *v, cm_err *err)
{
    sweep_opts *o = user;
    switch (id) {
    case CLI_POS: return cli_stray("sweep", v, err);
    case 'm': o->model = v; break;
    case OPT_OUT: o->out = v; break;
    case OPT_JSON: o->json = v; break;
    case OPT_PLOT: o->plot = v; break;
    case OPT_BITS: o->bits = v; break;
    case OPT_SCHEMES: o->schemes_arg = v; break;
    case OPT_LANGS: o->langs_arg = v; break;
    case OPT_CORPUS: o->corpus = v; break;
    case OPT_SPLIT: o->split = v; break;
    case OPT_TMPDIR: o->tmpdir = v; break;
    case OPT_BACKEND: o->backend = v; break;
    case OPT_CROSS: o->cross = 1; break;
    case OPT_MAX_TOKENS: return arg_int(a, v, 0, 0x7fffffff, &o->max_tokens, err);
    case 'c': return arg_int(a, v, 4, 1 << 20, &o->n_ctx, err);
    case 'b': return arg_int(a, v, 1, 1 << 20, &o->n_batch, err);
    case OPT_KV: return parse_kv_type(v, &o->kv, err);
    case OPT_ORDER: return parse_order(o, v, err);
    default: return arg_threads(v, err);
    }
    return CM_OK;
}

static cm_status add_scheme(sweep_opts *o, const cm_qmix *mix, cm_err *err)
{
    for (int i = 0; i < o->n_schemes; i++)
        if (o->schemes[i] == mix)
            return CM_OK;
    if (o->n_schemes == CM_SWEEP_MAX_SCHEMES)
        return cm_fail(err, CM_E_USAGE, "at most %d schemes", CM_SWEEP_MAX_SCHEMES);
    o->schemes[o->n_schemes++] = mix;
    return CM_OK;
}

/* --bits: each width stands for llama.cpp's usual types of that width. */
static cm_status parse_bits(sweep_opts *o, cm_err *err)
{
    static const struct { int bits; const char *names[2]; } W[] = {
        {8, {"q8_0", NULL}}, {6, {"q6_k", NULL}}, {5, {"q5_0", "q5_k_m"}},
        {4, {"q4_0", "q4_k_m"}}, {3, {"q3_k_m", NULL}}, {2, {"q2_k", NULL}}};
    char buf[256], *save = NULL;
    cm_status s = CM_OK;
    snprintf(buf, sizeof buf, "%s", o->bits ? o->bits : "8,4,3,2");
    for (char *t = strtok_r(buf, ",", &save); t && !s; t = strtok_r(NULL, ",", &save)) {
        int b, k = 0;
        if ((s = arg_int("--bits", t, 2, 8, &b, err)))
            break;
        while (k < (int)(sizeof W / sizeof W[0]) && W[k].bits != b)
            k++;
        if (k == (int)(sizeof W / sizeof W[0]))
            return cm_fail(err, CM_E_USAGE, "option --bits: %d is not one of 8, 6, 5, 4, 3, 2", b);
        for (int j = 0; j < 2 && W[k].names[j] && !s; j++)
            s = add_scheme(o, cm_qmix_find(W[k].names[j]), err);
    }
    return s;
}

static cm_status parse_schemes(sweep_opts *o, cm_err *err)
{
    char buf[512], *save = NULL, names[512];
    cm_status s = CM_OK;
    snprintf(buf, sizeof buf, "%s", o->schemes_arg);
    for (char *t = strtok_r(buf, ",", &save); t && !s; t = strtok_r(NULL, ",", &save)) {
        const cm_qmix *mix = cm_qmix_find(t);
        if (!mix) {
            cm_qmix_names(names, sizeof names);
            return cm_fail(err, CM_E_USAGE, "option --schemes: unknown type '%s' (valid: %s)", t,
                           names);
        }
        s = add_scheme(o, mix, err);
    }
    return s;
}

/* Language names become paths and CSV fields: keep them plain. */
static cm_status parse_langs(sweep_opts *o, cm_err *err)
{
    char *save = NULL;
    snprintf(o->lang_buf, sizeof o->lang_buf, "%s", o->langs_arg ? o->langs_arg : DEFAULT_LANGS);
    for (char *t = strtok_r(o->lang_buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int dup = 0;
        if (!*t || strlen(t) > 31 || t[strspn(t, "abcdefghijklmnopqrstuvwxyz0123456789+_-")])
            return cm_fail(err, CM_E_USAGE, "option --langs: '%s' is not a language name "
                           "(lower-case letters, digits, + _ -)", t);
        for (int i = 0; i < o->n_langs; i++)
            dup |= !strcmp(o->langs[i], t);
        if (dup)
            continue;
        if (o->n_langs == CM_SWEEP_MAX_LANGS)
            return cm_fail(err, CM_E_USAGE, "option --langs: at most %d languages",
                           CM_SWEEP_MAX_LANGS);
        o->langs[o->n_langs++] = t;
    }
    return o->n_langs ? CM_OK : cm_fail(err, CM_E_USAGE, "option --langs: no language given");
}

static cm_status check_opts(sweep_opts *o, cm_err *err)
{
    if (!o->model)
        return cm_fail(err, CM_E_USAGE, "sweep needs -m MODEL (see codemoe sweep --help)");
    if (!o->out && !o->json)
        return cm_fail(err, CM_E_USAGE, "sweep needs --out FILE (or at least --json FILE)");
    if (o->out && !strcmp(o->out, "-"))
        return cm_fail(err, CM_E_USAGE, "--out needs a file (it is read back to resume); use "
                       "--json - for stdout");
    if (o->plot && !strcmp(o->plot, "-") && o->json && !strcmp(o->json, "-"))
        return cm_fail(err, CM_E_USAGE, "--json - and --plot - cannot both use stdout");
    if (o->bits && o->schemes_arg)
        return cm_fail(err, CM_E_USAGE, "give --bits or --schemes, not both");
    if (!o->corpus) {
        const char *sh = getenv("CM_SHARED");
        snprintf(o->corpus_buf, sizeof o->corpus_buf, "%s/corpus",
                 sh && *sh ? sh : CM_SRCDIR "/../shared");
        o->corpus = o->corpus_buf;
    }
    cm_status s = o->schemes_arg ? parse_schemes(o, err) : parse_bits(o, err);
    if (!s)
        s = parse_langs(o, err);
    for (int l = 0; !s && o->split && l < o->n_langs; l++)
        s = cm_corpus_check_split(o->corpus, o->langs[l], o->split, err);
    return s;
}

static cm_status parse_opts(int argc, char **argv, sweep_opts *o, int *help, cm_err *err)
{
    cm_status s = cli_getopt(argc, argv, "sweep", SWEEP_OPTS, sweep_opt, o, help, err);
    if (s || *help)
        return s;
    s = cm_backend_choose(o->backend, &o->be, err);
    return s ? s : check_opts(o, err);
}

/* ------------------------------------------------------------ progress */

typedef struct {
    const sweep_opts *o;
    cm_sweep *sw;
    cm_sweep_row *rows; /* every row of --out, then the new ones */
    size_t n, cap;
    int tty, bar;       /* stderr is a terminal; a bar is on screen */
    double last_draw;
} sweep_state;

static void fmt_eta(double s, char *buf, size_t cap)
{
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, cap, "--");
    else if (s >= 3600)
        snprintf(buf, cap, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else
        snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

static void clear_bar(sweep_state *st)
{
    if (st->bar)
        fputs("\r\033[K", stderr);
    st->bar = 0;
}

static void on_log(void *user, const char *line)
{
    sweep_state *st = user;
    clear_bar(st);
    fprintf(stderr, "sweep: %s\n", line);
}

/* A terminal gets a bar redrawn in place (at most ten times a second); a
 * log file gets a line when each step starts. */
static void on_progress(void *user, const cm_sweep_progress *p)
{
    sweep_state *st = user;
    double frac = p->total > 0 ? (double)p->done / (double)p->total : 0, t = now_seconds();
    char eta[32], bar[41];
    fmt_eta(p->done > 0 ? p->elapsed * (double)(p->total - p->done) / (double)p->done : -1, eta,
            sizeof eta);
    if (!st->tty) {
        if (p->chunk == 0)
            fprintf(stderr, "sweep: [%3.0f%%] %s%s%s\n", 100 * frac, p->what,
                    p->done > 0 ? ", ETA " : "", p->done > 0 ? eta : "");
        return;
    }
    if (p->chunk != 0 && p->chunk != p->n_chunk && t - st->last_draw < 0.1)
        return;
    st->last_draw = t;
    int w = (int)(frac * 30 + 0.5);
    memset(bar, '#', (size_t)w);
    memset(bar + w, '.', (size_t)(30 - w));
    bar[30] = 0;
    fprintf(stderr, "\r\033[K[%s] %3.0f%%  %s", bar, 100 * frac, p->what);
    if (p->n_chunk)
        fprintf(stderr, " %d/%d", p->chunk, p->n_chunk);
    fprintf(stderr, "  row %d/%d  ETA %s", p->rows_done, p->rows_total, eta);
    fflush(stderr);
    st->bar = 1;
}

/* ------------------------------------------------------------ rows */

static cm_status keep_row(sweep_state *st, const cm_sweep_row *r, cm_err *err)
{
    if (st->n == st->cap) {
        size_t cap = st->cap ? 2 * st->cap : 64;
        cm_sweep_row *g = realloc(st->rows, cap * sizeof *g);
        if (!g)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        st->rows = g;
        st->cap = cap;
    }
    st->rows[st->n++] = *r;
    return CM_OK;
}

static cm_status on_row(void *user, const cm_sweep_row *r, cm_err *err)
{
    sweep_state *st = user;
    cm_status s = keep_row(st, r, err);
    if (!s && st->o->out)
        s = cm_sweep_csv_write(st->o->out, st->rows, st->n, err);
    clear_bar(st);
    fprintf(stderr, "sweep: %s %s%s%s: PPL %.4f (%+.2f%%), KLD %.6f, top-1 %.2f%%, %lld tokens, "
            "%.1f s\n", r->scheme, r->language, r->expert[0] ? " on " : "", r->expert, r->ppl,
            r->ppl_increase_pct, r->kld, r->top1_agreement, (long long)r->tokens, r->seconds);
    return s;
}

/* Rows of this run's table (all experts with --cross, else the routed one),
 * ordered by scheme then language, whatever order they were measured in. */
static size_t select_rows(const sweep_state *st, int routed_only, cm_sweep_row *out)
{
    const sweep_opts *o = st->o;
    size_t k = 0;
    for (int si = 0; si < o->n_schemes; si++)
        for (int l = 0; l < o->n_langs; l++)
            for (size_t i = 0; i < st->n; i++) {
                const cm_sweep_row *r = &st->rows[i];
                int routed = !strcmp(r->expert, cm_sweep_route(st->sw, r->language));
                if (strcmp(r->scheme, o->schemes[si]->name) || strcmp(r->language, o->langs[l]) ||
                    (!routed && (routed_only || !o->cross || !cm_sweep_is_pack(st->sw))))
                    continue;
                out[k++] = *r;
            }
    return k;
}

static void on_scheme_done(void *user, const cm_qmix *mix)
{
    sweep_state *st = user;
    char line[512];
    cm_sweep_row *sel = malloc((st->n ? st->n : 1) * sizeof *sel);
    if (!sel)
        return;
    size_t n = select_rows(st, 1, sel);
    if (cm_sweep_disparity(sel, n, mix, line, sizeof line) == 0) {
        clear_bar(st);
        fprintf(stderr, "sweep: %s\n", line);
    }
    free(sel);
}

/* ------------------------------------------------------------ outputs */

typedef cm_status (*write_fn)(FILE *f, const sweep_state *st, cm_err *err);

/* "-" is stdout; a file is written to a temporary file and renamed. */
static cm_status write_output(const char *path, write_fn fn, const sweep_state *st, cm_err *err)
{
    cm_atomic_file af;
    if (!strcmp(path, "-")) {
        cm_status s = fn(stdout, st, err);
        if (!s && fflush(stdout) != 0)
            s = cm_fail(err, CM_E_IO, "cannot write to stdout: %s", strerror(errno));
        return s;
    }
    cm_status s = cm_atomic_open(&af, path, 0666, err);
    if (s)
        return s;
    FILE *f = cm_atomic_stream(&af);
    s = f ? fn(f, st, err) : cm_fail(err, CM_E_NOMEM, "cannot write %s: out of memory", path);
    if (s)
        cm_atomic_abort(&af);
    /* no fsync: the JSON and plot are rebuilt from --out, which is synced */
    return s ? s : cm_atomic_commit(&af, 0, err);
}

static cm_status write_json(FILE *f, const sweep_state *st, cm_err *err)
{
    cm_sweep_row *sel = malloc((st->n ? st->n : 1) * sizeof *sel);
    if (!sel)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    size_t n = select_rows(st, 0, sel);
    int bad = cm_sweep_json_write(f, sel, n);
    free(sel);
    return bad ? cm_fail(err, CM_E_IO, "cannot write the JSON: %s", strerror(errno)) : CM_OK;
}

static int cmp_x(const void *a, const void *b)
{
    const double *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

static cm_status write_plot(FILE *f, const sweep_state *st, cm_err *err)
{
    const sweep_opts *o = st->o;
    cm_sweep_row *sel = malloc((st->n ? st->n : 1) * sizeof *sel);
    double *xy = malloc((size_t)o->n_langs * o->n_schemes * 2 * sizeof *xy);
    double *x = malloc((size_t)o->n_langs * o->n_schemes * 2 * sizeof *x);
    cm_svg_series ser[CM_SWEEP_MAX_LANGS];
    int ns = 0;
    if (!sel || !xy || !x) {
        free(sel), free(xy), free(x);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    size_t n = select_rows(st, 1, sel);
    for (int l = 0; l < o->n_langs; l++) {
        double *pts = xy + (size_t)l * o->n_schemes * 2, *sx = x + (size_t)l * o->n_schemes * 2;
        int k = 0;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(sel[i].language, o->langs[l]) && k < o->n_schemes) {
                pts[2 * k] = sel[i].bits_per_weight;
                pts[2 * k++ + 1] = sel[i].ppl_increase_pct;
            }
        qsort(pts, (size_t)k, 2 * sizeof *pts, cmp_x); /* a line from low to high bits */
        for (int i = 0; i < k; i++)
            sx[i] = pts[2 * i], sx[o->n_schemes + i] = pts[2 * i + 1];
        if (k)
            ser[ns++] = (cm_svg_series){o->langs[l], sx, sx + o->n_schemes, k};
    }
    /* each scheme's bits per weight (the whole file's, the same for every
     * language) labelled above the plot */
    double mx[CM_SWEEP_MAX_SCHEMES];
    const char *ml[CM_SWEEP_MAX_SCHEMES];
    int nm = 0;
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (int k = 0; k < nm; k++)
            seen |= !strcmp(ml[k], sel[i].scheme);
        if (!seen && nm < CM_SWEEP_MAX_SCHEMES)
            mx[nm] = sel[i].bits_per_weight, ml[nm++] = sel[i].scheme;
    }
    cm_svg_chart c = {"Perplexity increase from quantization, per language", "bits per weight",
                      "PPL increase (%)", 0, 0, 1, mx, ml, nm};
    int bad = cm_svg_line_chart(f, &c, ser, ns);
    free(sel), free(xy), free(x);
    return bad ? cm_fail(err, CM_E_IO, "cannot write the plot: %s", strerror(errno)) : CM_OK;
}

/* ------------------------------------------------------------ the command */

/* The run proper: exit 1 for what the input caused, 3 for a failure. */
static int run(const sweep_opts *o, sweep_state *st, cm_err *err)
{
    cm_sweep_config cfg = {o->model, o->corpus, o->split, o->langs, o->n_langs, o->schemes,
                           o->n_schemes, o->max_tokens, o->n_ctx, o->n_batch, o->kv, o->cross,
                           o->tmpdir, (cm_sweep_order)o->order, o->be};
    cm_sweep_hooks h = {on_log, on_progress, on_row, on_scheme_done, st};
    size_t resumed = st->n;
    if (cm_sweep_open(&cfg, &st->sw, err) || cm_sweep_prepare(st->sw, st->rows, st->n, err))
        return cli_fail(err);
    int todo = cm_sweep_rows_todo(st->sw);
    double t0 = now_seconds();
    if (!todo)
        fprintf(stderr, "sweep: all rows are already in %s; nothing to measure\n", o->out);
    /* an unwritable --out is found now, not after the first row's work */
    if (todo && o->out && cm_sweep_csv_write(o->out, st->rows, st->n, err))
        return cli_fail(err);
    cm_status s = cm_sweep_measure(st->sw, &h, err);
    clear_bar(st);
    if (s) {
        cli_fail(err);
        return s == CM_E_FORMAT || s == CM_E_UNSUPPORTED ? 1 : 3;
    }
    if (todo)
        fprintf(stderr, "sweep: %d rows measured in %.1f s%s%s\n", todo, now_seconds() - t0,
                resumed ? ", the others resumed from " : "", resumed ? o->out : "");
    if ((o->json && write_output(o->json, write_json, st, err)) ||
        (o->plot && write_output(o->plot, write_plot, st, err)))
        return cli_fail(err), 3;
    return 0;
}

int cli_sweep(int argc, char **argv)
{
    sweep_opts o = {.max_tokens = 65536, .n_ctx = 512, .kv = CM_KV_F16};
    sweep_state st = {.o = &o, .tty = isatty(2)};
    cm_err err = {0};
    int help = 0;
    if (parse_opts(argc, argv, &o, &help, &err))
        return cli_fail(&err);
    if (help) {
        fputs(SWEEP_HELP, stdout);
        return 0;
    }
    if (o.out && cm_sweep_csv_read(o.out, &st.rows, &st.n, &err))
        return cli_fail(&err);
    st.cap = st.n;
    int rc = run(&o, &st, &err);
    cm_sweep_free(st.sw);
    free(st.rows);
    return rc;
}
