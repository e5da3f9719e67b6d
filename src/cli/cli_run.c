/* cli_run.c - `codemoe run`: stream a completion to stdout. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "experts/pack.h"
#include "experts/router.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/sampling.h"
#include "server/request.h"

#define MAX_STOPS 16

static const char RUN_HELP[] =
    "usage: codemoe run [-m MODEL] (-p PROMPT | -f FILE) [options]\n"
    "       codemoe run [-m MODEL] --infill --prefix-file A --suffix-file B [options]\n"
    "\n"
    "Streams the model's continuation of the prompt to stdout; timings and\n"
    "peak memory go to stderr.  Without -m the installed default model is used.\n"
    "Without -p or -f, a prompt piped or redirected to standard input is read.\n"
    "\n"
    "  -m, --model FILE        GGUF model (llama, qwen2, qwen3 architectures)\n"
    "  -p, --prompt TEXT       prompt text (repeatable: prompts run one after another)\n"
    "  -f, --file FILE         read a prompt from FILE, - for standard input (repeatable)\n"
    "  -e, --escape            turn \\n \\r \\t \\' \\\" \\\\ \\xHH in -p, --prefix, --suffix and\n"
    "                          --stop into the characters (--no-escape: off, the default)\n"
    "      --lang L            with a language-expert pack: use the expert for L\n"
    "                          (c, cpp, python, java, javascript, go, rust) instead of routing\n"
    "  -n, --n-predict N       tokens to generate (default 256; -1: until end of text or\n"
    "                          the context is full; stops early at end of text)\n"
    "      --ignore-eos        never end at an end-of-text token (-n still limits)\n"
    "      --temp T            temperature, 0 = greedy (default 0.8)\n"
    "      --top-k K           keep the K most likely tokens, 0 = off (default 40)\n"
    "      --top-p P           nucleus sampling, 1 = off (default 0.95)\n"
    "      --min-p P           drop tokens below P x the best probability (default 0.05)\n"
    "      --repeat-penalty R  penalise the last 64 tokens, 1 = off (default 1.0)\n"
    "      --repeat-last-n N   how many last tokens the penalty sees (default 64)\n"
    "  -s, --seed S            random seed (default or -1: from the clock, printed on stderr)\n"
    "      --stop STR          stop before STR is printed (repeatable)\n"
    "  -c, --ctx-size N        context length (default: the model's, at most 4096; 0: the\n"
    "                          model's trained context; more than that warns)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "      --kv-type T         KV cache type: f16 (default), f32 or q8_0\n"
    "      --backend B         cpu (default; CODEMOE_BACKEND sets another), ref (the\n"
    "                          scalar reference kernels), cuda or vulkan; `codemoe\n"
    "                          --version` lists those built\n"
    PLACE_HELP
    "      --infill            fill in the middle: generate what goes between --prefix\n"
    "                          and --suffix, with the model's FIM tokens (<fim_prefix>,\n"
    "                          <PRE>, ...; a model without them is refused)\n"
    "      --prefix TEXT, --prefix-file FILE   the code before the gap\n"
    "      --suffix TEXT, --suffix-file FILE   the code after it\n"
    "      --no-heal           keep the prefix's last token (by default it is taken off\n"
    "                          and the first token generated must start with its text:\n"
    "                          a prefix ending in a newline or half a word then reads as\n"
    "                          the model saw such text in training)\n"
    "  -v, --verbose           print the backend and device, and any ops that ran on the CPU\n"
    "      --no-bos            do not add the BOS token to the prompt\n"
    "      --all-experts       with a pack: bring every expert into memory first (to\n"
    "                          compare with routing, which keeps only the one in use)\n"
    "      --moe-stats         print tokens per expert (MoE models) on stderr\n"
    "      --moe-ram-budget S  keep at most S bytes of expert weights resident (e.g. 512M):\n"
    "                          least recently used experts are released; prints hit rate\n"
    "                          and bytes read from disk\n"
    "  -i, -cnv, --conversation  chat: user turns are read from standard input (a line\n"
    "                          each; /exit or end of input ends), each answered with\n"
    "                          the model's chat template; the KV cache is kept, so a\n"
    "                          turn evaluates only its new tokens; -p/-f: the system\n"
    "                          message\n"
    "      --chat-template NAME  chatml, llama2 (= codellama), llama3, deepseek-coder,\n"
    "                          zephyr, gemma (default: the GGUF's, else chatml)\n"
    "      -no-cnv             no chat (the default)\n"
    "  -h, --help              this text\n"
    "\n"
    "On a terminal, prompts of more than 512 tokens show their progress on stderr.\n";

#define MAX_PROMPTS 64
#define RUN_BATCH 512 /* tokens per forward batch; progress is reported between them */

typedef struct {
    const char *model, *lang, *backend;
    cli_text prompts[MAX_PROMPTS];
    int n_prompts;
    cli_text prefix, suffix;
    int infill, no_heal, escape, ignore_eos, stdin_used, chat;
    const char *chat_template;
    int n_predict, n_ctx, no_bos, have_seed, moe_stats, all_experts, verbose;
    uint64_t moe_budget; /* 0: none given */
    cm_kv_type kv;
    cm_place_opts place;
    cm_sampling_params sp;
    const char *stops[MAX_STOPS];
    char *stop_copies[MAX_STOPS]; /* -e: the unescaped stops */
    int n_stops;
} run_opts;

cm_status parse_kv_type(const char *s, cm_kv_type *out, cm_err *err)
{
    if (!strcmp(s, "f16"))
        *out = CM_KV_F16;
    else if (!strcmp(s, "f32"))
        *out = CM_KV_F32;
    else if (!strcmp(s, "q8_0"))
        *out = CM_KV_Q8_0;
    else
        return cm_fail(err, CM_E_USAGE, "option --kv-type: '%s' is not f32, f16 or q8_0", s);
    return CM_OK;
}

enum {
    OPT_TEMP = CLI_LONG, OPT_TOP_K, OPT_TOP_P, OPT_MIN_P, OPT_REPEAT, OPT_REPEAT_N, OPT_STOP,
    OPT_LANG, OPT_KV, OPT_BACKEND, OPT_NO_BOS, OPT_ALL_EXPERTS, OPT_MOE_STATS, OPT_MOE_BUDGET,
    OPT_NO_ESCAPE, OPT_IGNORE_EOS, OPT_INFILL, OPT_NO_HEAL, OPT_PREFIX, OPT_SUFFIX, OPT_PREFIX_FILE,
    OPT_SUFFIX_FILE, OPT_CHAT, OPT_NO_CHAT, OPT_TEMPLATE
};

static const struct option RUN_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
    {"file", required_argument, 0, 'f'}, {"escape", no_argument, 0, 'e'},
    {"no-escape", no_argument, 0, OPT_NO_ESCAPE}, {"lang", required_argument, 0, OPT_LANG},
    {"n-predict", required_argument, 0, 'n'}, {"predict", required_argument, 0, 'n'},
    {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS}, {"temp", required_argument, 0, OPT_TEMP},
    {"top-k", required_argument, 0, OPT_TOP_K}, {"top-p", required_argument, 0, OPT_TOP_P},
    {"min-p", required_argument, 0, OPT_MIN_P},
    {"repeat-penalty", required_argument, 0, OPT_REPEAT},
    {"repeat-last-n", required_argument, 0, OPT_REPEAT_N}, {"seed", required_argument, 0, 's'},
    {"stop", required_argument, 0, OPT_STOP}, {"ctx-size", required_argument, 0, 'c'},
    {"threads", required_argument, 0, 't'}, {"kv-type", required_argument, 0, OPT_KV},
    {"backend", required_argument, 0, OPT_BACKEND}, CLI_PLACE_OPTIONS,
    {"verbose", no_argument, 0, 'v'}, {"no-bos", no_argument, 0, OPT_NO_BOS},
    {"all-experts", no_argument, 0, OPT_ALL_EXPERTS}, {"moe-stats", no_argument, 0, OPT_MOE_STATS},
    {"moe-ram-budget", required_argument, 0, OPT_MOE_BUDGET},
    {"infill", no_argument, 0, OPT_INFILL}, {"prefix", required_argument, 0, OPT_PREFIX},
    {"no-heal", no_argument, 0, OPT_NO_HEAL},
    {"suffix", required_argument, 0, OPT_SUFFIX},
    {"prefix-file", required_argument, 0, OPT_PREFIX_FILE},
    {"suffix-file", required_argument, 0, OPT_SUFFIX_FILE},
    {"interactive", no_argument, 0, 'i'}, {"conversation", no_argument, 0, OPT_CHAT},
    {"cnv", no_argument, 0, OPT_CHAT}, {"no-cnv", no_argument, 0, OPT_NO_CHAT},
    {"no-conversation", no_argument, 0, OPT_NO_CHAT},
    {"chat-template", required_argument, 0, OPT_TEMPLATE}, {0}};

static cm_status sampling_opt(int id, const char *a, const char *v, run_opts *o, cm_err *err)
{
    switch (id) {
    case OPT_TEMP: return arg_float(a, v, 0.0f, 100.0f, &o->sp.temp, err);
    case OPT_TOP_K: return arg_int(a, v, 0, 1 << 24, &o->sp.top_k, err);
    case OPT_TOP_P: return arg_float(a, v, 0.0f, 1.0f, &o->sp.top_p, err);
    case OPT_MIN_P: return arg_float(a, v, 0.0f, 1.0f, &o->sp.min_p, err);
    case OPT_REPEAT: return arg_float(a, v, 0.0f, 100.0f, &o->sp.repeat_penalty, err);
    case OPT_REPEAT_N: return arg_int(a, v, 0, 1 << 16, &o->sp.repeat_last_n, err);
    case OPT_IGNORE_EOS: o->ignore_eos = 1; return CM_OK;
    case 's':
        o->have_seed = strcmp(v, "-1") != 0; /* llama.cpp's -1: a random seed */
        return o->have_seed ? arg_u64(a, v, &o->sp.seed, err) : CM_OK;
    case 'n': return arg_int(a, v, -1, 1 << 24, &o->n_predict, err);
    default: return cli_place_opt(id, a, v, &o->place, err);
    }
}

static cm_status add_prompt(run_opts *o, int id, const char *a, const char *v, cm_err *err)
{
    if (o->n_prompts == MAX_PROMPTS)
        return cm_fail(err, CM_E_USAGE, "at most %d prompts", MAX_PROMPTS);
    if (id == 'f' && !strcmp(v, "-") && o->stdin_used++)
        return cm_fail(err, CM_E_USAGE, "option %s: standard input can be read only once", a);
    return cli_text_set(&o->prompts[o->n_prompts++], a, v, id == 'f', err);
}

static cm_status add_stop(run_opts *o, const char *v, cm_err *err)
{
    if (o->n_stops == MAX_STOPS)
        return cm_fail(err, CM_E_USAGE, "at most %d --stop strings", MAX_STOPS);
    if (!*v)
        return cm_fail(err, CM_E_USAGE, "option --stop: empty string");
    o->stops[o->n_stops++] = v;
    return CM_OK;
}

static cm_status run_opt(void *user, int id, const char *a, const char *v, cm_err *err)
{
    run_opts *o = user;
    int *flag = id == 'e' ? &o->escape : id == 'v' ? &o->verbose : id == OPT_NO_BOS ? &o->no_bos
              : id == OPT_ALL_EXPERTS ? &o->all_experts : id == OPT_MOE_STATS ? &o->moe_stats
              : id == OPT_INFILL ? &o->infill : id == OPT_NO_HEAL ? &o->no_heal : NULL;
    if (flag)
        return *flag = 1, CM_OK;
    switch (id) {
    case CLI_POS:
        return cm_fail(err, CM_E_USAGE, "unexpected argument '%s' (a prompt goes after -p, in "
                       "quotes if it has spaces; see codemoe run --help)", v);
    case 'm': o->model = v; return CM_OK;
    case 'p': case 'f': return add_prompt(o, id, a, v, err);
    case OPT_PREFIX: case OPT_PREFIX_FILE:
        return cli_text_set(&o->prefix, a, v, id == OPT_PREFIX_FILE, err);
    case OPT_SUFFIX: case OPT_SUFFIX_FILE:
        return cli_text_set(&o->suffix, a, v, id == OPT_SUFFIX_FILE, err);
    case OPT_NO_ESCAPE: o->escape = 0; return CM_OK;
    case OPT_LANG: o->lang = v; return CM_OK;
    case 'c': return arg_int(a, v, 0, 1 << 24, &o->n_ctx, err);
    case 't': return arg_threads(v, err);
    case OPT_KV: return parse_kv_type(v, &o->kv, err);
    case OPT_BACKEND: o->backend = v; return CM_OK;
    case OPT_MOE_BUDGET: return arg_size(a, v, &o->moe_budget, err);
    case OPT_STOP: return add_stop(o, v, err);
    case OPT_NO_CHAT: o->chat = 0; return CM_OK; /* (llama-cli chats by default) */
    case OPT_CHAT: case 'i': o->chat = 1; return CM_OK;
    case OPT_TEMPLATE: {
        srv_template t;
        o->chat_template = v;
        return srv_template_by_name(v, &t, err);
    }
    default: return sampling_opt(id, a, v, o, err);
    }
}

/* A prompt piped or redirected to standard input, when no -p or -f is given
 * (a terminal or /dev/null is not read: that would wait or read nothing). */
static int stdin_has_prompt(void)
{
    struct stat st;
    if (isatty(0) || fstat(0, &st) != 0)
        return 0;
    return S_ISFIFO(st.st_mode) || S_ISREG(st.st_mode) || S_ISSOCK(st.st_mode);
}

/* -e: the --stop strings unescaped. */
static cm_status check_stops(run_opts *o, cm_err *err)
{
    for (int i = 0; o->escape && i < o->n_stops; i++) {
        size_t n = strlen(o->stops[i]);
        if (!(o->stop_copies[i] = malloc(n + 1)))
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        memcpy(o->stop_copies[i], o->stops[i], n + 1);
        cli_unescape(o->stop_copies[i], n);
        if (!o->stop_copies[i][0]) /* "\x00": a stop at every position */
            return cm_fail(err, CM_E_USAGE, "option --stop: '%s' is empty once unescaped",
                           o->stops[i]);
        o->stops[i] = o->stop_copies[i];
    }
    return CM_OK;
}

static cm_status check_run(run_opts *o, cm_err *err)
{
    if (o->chat && (o->infill || o->n_prompts > 1 || o->stdin_used))
        return cm_fail(err, CM_E_USAGE, "chat (-i, -cnv) reads its turns from standard input: "
                       "at most one -p or -f FILE (the system message), no --infill");
    if (o->chat)
        return check_stops(o, err);
    if (o->infill && (o->n_prompts || !o->prefix.set || !o->suffix.set))
        return cm_fail(err, CM_E_USAGE, "--infill needs --prefix/--prefix-file and "
                       "--suffix/--suffix-file, and no -p or -f");
    if (!o->infill && (o->prefix.set || o->suffix.set))
        return cm_fail(err, CM_E_USAGE, "--prefix and --suffix go with --infill");
    if (!o->infill && o->no_heal)
        return cm_fail(err, CM_E_USAGE, "--no-heal goes with --infill");
    if (o->infill && o->prefix.file && o->suffix.file && !strcmp(o->prefix.file, "-") &&
        !strcmp(o->suffix.file, "-"))
        return cm_fail(err, CM_E_USAGE, "standard input can be read only once");
    if (!o->infill && o->n_prompts == 0 && stdin_has_prompt())
        add_prompt(o, 'f', "-f", "-", err);
    if (!o->infill && o->n_prompts == 0)
        return cm_fail(err, CM_E_USAGE, "give a prompt with -p PROMPT or -f FILE, or pipe one "
                       "in (see codemoe run --help)");
    return check_stops(o, err);
}

static cm_status parse_run(int argc, char **argv, run_opts *o, int *help, cm_err *err)
{
    cm_status s = cli_getopt(argc, argv, "run", RUN_OPTS, run_opt, o, help, err);
    return s || *help ? s : check_run(o, err);
}

/* ---- output: whole UTF-8 characters only, never any part of a stop string */

typedef struct {
    cm_utf8_stream utf8;
    char *text;   /* decoded but not yet printed */
    size_t len, cap;
    const run_opts *o;
    cli_buf *copy; /* chat: what was printed, or NULL */
} out_stream;

/* Prints n bytes (and keeps them, for chat). */
static void out_write(out_stream *s, const char *p, size_t n)
{
    fwrite(p, 1, n, stdout);
    char *t = s->copy && n ? realloc(s->copy->p, s->copy->len + n + 1) : NULL;
    if (t) {
        memcpy(t + s->copy->len, p, n);
        s->copy->p = t, s->copy->len += n;
        t[s->copy->len] = 0;
    }
}

/* Length of the longest tail of text that starts some stop string. */
static size_t held_tail(const out_stream *s)
{
    size_t best = 0;
    for (int k = 0; k < s->o->n_stops; k++) {
        size_t sl = strlen(s->o->stops[k]);
        for (size_t t = sl - 1 < s->len ? sl - 1 : s->len; t > best; t--)
            if (!memcmp(s->text + s->len - t, s->o->stops[k], t)) {
                best = t;
                break;
            }
    }
    return best;
}

/* Appends bytes; prints what is safe; returns 1 when a stop string appeared. */
static int out_push(out_stream *s, const char *bytes, size_t n)
{
    if (s->len + n + 8 > s->cap) {
        size_t cap = (s->len + n + 8) * 2;
        char *t = realloc(s->text, cap);
        if (!t)
            return 1;
        s->text = t, s->cap = cap;
    }
    s->len += cm_utf8_stream_push(&s->utf8, bytes, n, s->text + s->len);
    s->text[s->len] = 0;
    for (int k = 0; k < s->o->n_stops; k++) {
        char *hit = strstr(s->text, s->o->stops[k]);
        if (hit) {
            out_write(s, s->text, (size_t)(hit - s->text));
            s->len = 0;
            return 1;
        }
    }
    size_t keep = held_tail(s);
    out_write(s, s->text, s->len - keep);
    memmove(s->text, s->text + s->len - keep, keep);
    s->len = keep;
    fflush(stdout);
    return 0;
}

static void out_finish(out_stream *s)
{
    char tail[8];
    size_t n = cm_utf8_stream_flush(&s->utf8, tail);
    if (s->len) /* text is NULL when nothing was generated (-n 0) */
        out_write(s, s->text, s->len);
    out_write(s, tail, n);
    fflush(stdout);
    free(s->text);
}

/* ---- generation */

typedef struct {
    int n_prompt, n_gen;
    double t_prompt, t_gen;
    const char *stop_reason;
} run_stats;

/* Progress of a long prompt on a terminal: tokens done, speed and time
 * left, redrawn in place and erased when the prompt is done. */
static void prompt_progress(int done, int n, double t0, int tty)
{
    if (!tty || n <= RUN_BATCH)
        return;
    if (done == n) {
        fputs("\r\033[K", stderr);
        return;
    }
    double dt = now_seconds() - t0, rate = done / (dt > 0 ? dt : 1e-9);
    fprintf(stderr, "\r\033[K[codemoe] prompt %d/%d tokens (%.0f%%)", done, n, 100.0 * done / n);
    if (done > 0)
        fprintf(stderr, ", %.1f tok/s, ETA %.0f s", rate, (n - done) / rate);
    fflush(stderr);
}

/* The prompt, one batch per call so its progress can be shown: the same
 * batches cm_eval would make of it, so the same numbers. */
static cm_status eval_prompt(cm_ctx *ctx, const int32_t *ids, int n, cm_err *err)
{
    int tty = isatty(2);
    double t0 = now_seconds();
    cm_status s = CM_OK;
    for (int done = 0; !s && done < n; done += RUN_BATCH) {
        prompt_progress(done, n, t0, tty);
        s = cm_eval(ctx, ids + done, n - done < RUN_BATCH ? n - done : RUN_BATCH, NULL, err);
    }
    prompt_progress(n, n, t0, tty);
    return s;
}

/* --ignore-eos: every end-of-generation token, to be masked out. */
static int32_t *eog_ids(const cm_model *m, int *n)
{
    int32_t *ids = malloc(sizeof *ids * (size_t)m->hp.n_vocab);
    *n = 0;
    for (int32_t id = 0; ids && id < m->hp.n_vocab && id < cm_tok_n_vocab(m->tok); id++)
        if (cm_tok_is_eog(m->tok, id))
            ids[(*n)++] = id;
    return ids;
}

static int out_piece(void *user, const char *bytes, size_t n) { return out_push(user, bytes, n); }

/* Samples and prints until -n, end of text, a stop string or a full context. */
static cm_status decode_loop(const cm_model *m, cm_ctx *ctx, const run_opts *o, cm_sampler *smp,
                             const cm_heal *heal, run_stats *st, cm_err *err)
{
    int n_mask = 0;
    int32_t *mask = o->ignore_eos ? eog_ids(m, &n_mask) : NULL;
    out_stream out = {.o = o};
    cm_gen_opts go = {o->n_predict, mask, n_mask, out_piece, &out, heal->len ? heal : NULL};
    cm_gen_result gr = {0, "token limit"};
    cm_status s = o->ignore_eos && !mask ? cm_fail(err, CM_E_NOMEM, "out of memory")
                                         : cm_generate(m, ctx, smp, &go, &gr, err);
    st->n_gen += gr.n_gen;
    st->stop_reason = gr.stop_reason;
    out_finish(&out);
    free(mask);
    return s;
}

static cm_status generate(const cm_model *m, cm_ctx *ctx, const run_opts *o, int32_t *ids,
                          size_t n_ids, const cm_heal *heal, run_stats *st, cm_err *err)
{
    cm_sampler *smp = cm_sampler_new(&o->sp, m->hp.n_vocab);
    if (!smp)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the sampler");
    for (size_t i = 0; i < n_ids; i++)
        cm_sampler_accept(smp, ids[i]);
    double t0 = now_seconds();
    cm_status s = eval_prompt(ctx, ids, (int)n_ids, err);
    st->t_prompt = now_seconds() - t0;
    st->stop_reason = "token limit";
    t0 = now_seconds();
    if (!s)
        s = decode_loop(m, ctx, o, smp, heal, st, err);
    st->t_gen = now_seconds() - t0;
    cm_sampler_free(smp);
    return s;
}

/* Tokens per expert, one line per layer, and the residency counters. */
static void print_moe_stats(const cm_model *m, const cm_ctx *ctx, int per_expert)
{
    const uint64_t *tok = cm_ctx_expert_tokens(ctx);
    cm_expert_stats st;
    if (per_expert)
        for (int il = 0; il < m->hp.n_layer; il++) {
            fprintf(stderr, "[codemoe] layer %2d tokens per expert:", il);
            for (int e = 0; e < m->hp.n_expert; e++)
                fprintf(stderr, " %llu", (unsigned long long)tok[(size_t)il * m->hp.n_expert + e]);
            fputc('\n', stderr);
        }
    cm_place_stats ps; /* a GPU backend's expert cache: hits, uploads, bytes moved */
    cm_ctx_place_stats(ctx, &ps);
    if (ps.experts > 0 && ps.dense_dev + ps.exp_dev > 0)
        print_placement(&ps, stderr);
    if (!cm_ctx_expert_stats(ctx, &st))
        return;
    uint64_t uses = st.hits + st.misses;
    fprintf(stderr,
            "[codemoe] experts: hit rate %.1f%% (%llu of %llu uses), %llu evictions, %.1f MiB read "
            "from disk, resident %.1f MiB (peak %.1f MiB, budget %s)\n",
            uses ? 100.0 * st.hits / uses : 0.0, (unsigned long long)st.hits,
            (unsigned long long)uses, (unsigned long long)st.evictions,
            st.bytes_from_disk / 1048576.0, st.resident_bytes / 1048576.0,
            st.peak_resident / 1048576.0, st.budget ? "set" : "none");
}

/* A text of the prompt, with -e's escapes turned into characters (given
 * texts only: a file holds the characters already). */
static cm_status read_text(const run_opts *o, const cli_text *t, cli_buf *b, cm_err *err)
{
    cm_status s = cli_text_read(t, b, err);
    if (!s && o->escape && t->text)
        b->len = cli_unescape(b->p, b->len);
    if (!s && t->file && !strcmp(t->file, "-") && b->len == 0)
        s = cm_fail(err, CM_E_RANGE, "the prompt from standard input is empty");
    return s;
}

/* The file name routing may go by: not standard input's "-". */
static const char *route_file(const cli_text *t)
{
    return t->file && strcmp(t->file, "-") ? t->file : NULL;
}

static cm_status check_fits(const run_opts *o, const cm_model *m, size_t n, cm_err *err)
{
    if (n == 0)
        return cm_fail(err, CM_E_RANGE, "the prompt is empty");
    if (n >= (size_t)o->n_ctx)
        return cm_fail(err, CM_E_RANGE, "the prompt is %zu tokens but the context holds %d "
                       "(raise -c, the model was trained on %d)", n, o->n_ctx, m->hp.n_ctx_train);
    return CM_OK;
}

static cm_status route_to_expert(const run_opts *o, cm_model *m, const char *file,
                                 const char *text, size_t len, cm_err *err);

/* --infill: <PRE> prefix <SUF> suffix <MID> (the prefix's last token taken
 * off into heal unless --no-heal); a pack is routed on both. */
static cm_status infill_ids(const run_opts *o, cm_model *m, int32_t **ids, size_t *n,
                            cm_heal *heal, cm_err *err)
{
    cli_buf pre = {0}, suf = {0};
    cm_status s = read_text(o, &o->prefix, &pre, err);
    if (!s)
        s = read_text(o, &o->suffix, &suf, err);
    char *both = s ? NULL : malloc(pre.len + suf.len + 2);
    if (!s && !both)
        s = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!s && m->is_pack) {
        memcpy(both, pre.p, pre.len);
        both[pre.len] = '\n';
        memcpy(both + pre.len + 1, suf.p, suf.len + 1);
        s = route_to_expert(o, m, route_file(&o->prefix), both, pre.len + suf.len + 1, err);
    }
    if (!s && (cm_tok_fim(m->tok, CM_FIM_PRE) < 0 || cm_tok_fim(m->tok, CM_FIM_SUF) < 0 ||
               cm_tok_fim(m->tok, CM_FIM_MID) < 0))
        s = cm_fail(err, CM_E_UNSUPPORTED, "%s has no fill-in-the-middle tokens (%s), so "
                    "--infill cannot be used", o->model, CLI_FIM_KNOWN);
    if (!s)
        s = cm_tokenize_infill(m->tok, pre.p, pre.len, suf.p, suf.len,
                               !o->no_bos && cm_tok_add_bos(m->tok), o->no_heal ? NULL : heal,
                               ids, n, err);
    free(both);
    free(pre.p);
    free(suf.p);
    return s ? s : check_fits(o, m, *n, err);
}

/* The token ids of prompt p (routing a pack to its expert first). */
static cm_status prompt_ids(const run_opts *o, cm_model *m, const cli_text *p, int32_t **ids,
                            size_t *n, cm_err *err)
{
    cli_buf b = {0};
    cm_status s = read_text(o, p, &b, err);
    if (!s && m->is_pack)
        s = route_to_expert(o, m, route_file(p), b.p, b.len, err);
    if (!s)
        s = cm_tokenize(m->tok, b.p, b.len, !o->no_bos && cm_tok_add_bos(m->tok), 1, ids, n, err);
    free(b.p);
    return s ? s : check_fits(o, m, *n, err);
}

static cm_status make_ctx(const run_opts *o, const cm_model *m, cm_ctx **ctx, cm_err *err)
{
    const cm_backend_ops *be;
    static int hinted;
    cm_status s = cm_backend_choose(o->backend, &be, err);
    /* llama-cli users type -ngl 99 by habit: say why it changes nothing here */
    if (!s && o->place.gpu_layers > 0 && be->reads_host && !hinted++)
        fprintf(stderr, "[codemoe] -ngl: the %s backend runs every layer in host memory "
                "(--backend cuda or vulkan places layers on a GPU)\n", be->name);
    if (!s)
        s = cm_ctx_new_placed(m, be, &o->place, o->n_ctx, o->kv, RUN_BATCH, ctx, err);
    if (!s && (o->moe_budget || o->moe_stats) && m->hp.n_expert == 0)
        s = cm_fail(err, CM_E_USAGE, "%s is not a mixture-of-experts model: --moe-stats and "
                    "--moe-ram-budget do not apply", o->model);
    if (!s && (o->moe_budget || o->moe_stats))
        s = cm_ctx_set_expert_budget(*ctx, o->moe_budget, err);
    return s;
}

static const char *route_source_name(cm_route_source src)
{
    static const char *const names[] = {"--lang", "file name", "shebang/modeline", "classifier",
                                        "classifier unsure"};
    return names[src];
}

/* Binds a pack to the member for this prompt: the expert for its language
 * (--lang, file name, shebang/modeline, else the shipped classifier), else
 * the fallback, else the most probable language the pack has. */
static cm_status route_to_expert(const run_opts *o, cm_model *m, const char *file,
                                 const char *text, size_t len, cm_err *err)
{
    char path[1024], names[CM_PACK_MAX_MEMBERS][32];
    cm_router *r = NULL;
    cm_route rt;
    cm_route_opts ro = {o->lang, file, file != NULL, CM_ROUTER_DEFAULT_THRESHOLD};
    const char *rpath = cm_router_default_path(path, sizeof path), *member = NULL;
    cm_status s = rpath && !o->lang ? cm_router_load(rpath, &r, err) : CM_OK;
    if (s)
        return s;
    cm_route_decide(r, &ro, text, len, &rt);
    int n = cm_pack_members(&m->file, names, CM_PACK_MAX_MEMBERS);
    if (cm_pack_has_member(&m->file, rt.lang))
        member = rt.lang;
    else if (cm_pack_has_member(&m->file, CM_PACK_FALLBACK))
        member = CM_PACK_FALLBACK;
    else if (o->lang)
        s = cm_fail(err, CM_E_RANGE, "%s has no expert for %s and no fallback", o->model, o->lang);
    else { /* no fallback: the likeliest language the pack covers */
        float best = -1;
        for (int i = 0; i < n; i++) {
            int li = r ? cm_router_lang_index(r, names[i]) : -1;
            float p = li >= 0 && li < rt.n_langs ? rt.probs[li] : 0.0f;
            if (p > best)
                best = p, member = names[i];
        }
    }
    char chosen[32] = "";
    if (!s) {
        fprintf(stderr, "[codemoe] language %s (%s, %.2f) -> expert %s\n", rt.lang,
                route_source_name(rt.source), rt.confidence, member);
        snprintf(chosen, sizeof chosen, "%.31s", member); /* rt.lang lives in r */
    }
    cm_router_free(r);
    return s ? s : cm_model_select_expert(m, chosen, err);
}

static void print_stats(const run_stats *st, double t_load)
{
    fprintf(stderr,
            "\n[codemoe] load %.2f s | prompt %d tok, %.1f tok/s | generated %d tok, %.1f tok/s "
            "(%s) | peak RSS %.1f MiB\n",
            t_load, st->n_prompt, st->n_prompt / (st->t_prompt > 0 ? st->t_prompt : 1e-9),
            st->n_gen, st->n_gen / (st->t_gen > 0 ? st->t_gen : 1e-9), st->stop_reason,
            peak_rss_mib());
}

/* One prompt (p, or the infill texts when p is NULL): route (packs),
 * tokenize, generate, report. */
static cm_status run_one(const run_opts *o, cm_model *m, const cli_text *p, double t_load,
                         cm_err *err)
{
    size_t n_ids = 0;
    int32_t *ids = NULL;
    cm_ctx *ctx = NULL;
    run_stats st = {0};
    cm_heal heal = {.len = 0};
    cm_status s = p ? prompt_ids(o, m, p, &ids, &n_ids, err)
                    : infill_ids(o, m, &ids, &n_ids, &heal, err);
    if (!s)
        s = make_ctx(o, m, &ctx, err);
    if (!s && !o->have_seed && o->sp.temp > 0) /* so a run can be repeated */
        fprintf(stderr, "[codemoe] seed %llu\n", (unsigned long long)o->sp.seed);
    st.n_prompt = (int)n_ids;
    if (!s)
        s = generate(m, ctx, o, ids, n_ids, &heal, &st, err);
    if (!s)
        print_stats(&st, t_load);
    if (!s && m->hp.n_expert > 0 && (o->moe_stats || o->moe_budget))
        print_moe_stats(m, ctx, o->moe_stats);
    if (!s && o->verbose)
        print_backend_use(ctx);
    free(ids);
    cm_heal_free(&heal);
    cm_ctx_free(ctx);
    return s;
}

/* Reads one byte of every page of every tensor, so the whole file is
 * resident: the "all experts loaded" baseline routing is measured against. */
static uint64_t touch_all(const cm_model *m)
{
    volatile uint8_t sink = 0;
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++) {
        const uint8_t *p = m->file.tensors[i].data;
        for (uint64_t off = 0; off < m->file.tensors[i].nbytes; off += 4096)
            sink ^= p[off];
        bytes += m->file.tensors[i].nbytes;
    }
    (void)sink;
    return bytes;
}

/* -c: absent, the model's context up to 4096; 0, the model's; above the
 * model's, a warning (RoPE models run past it, worse). */
static void choose_ctx(run_opts *o, const cm_model *m)
{
    int train = m->hp.n_ctx_train > 0 ? m->hp.n_ctx_train : 4096;
    if (o->n_ctx < 0)
        o->n_ctx = train < 4096 ? train : 4096;
    else if (o->n_ctx == 0)
        o->n_ctx = train;
    else if (o->n_ctx > train)
        fprintf(stderr, "[codemoe] warning: -c %d is more than the %d tokens %s was trained on; "
                "text past them may be worse\n", o->n_ctx, train, o->model);
}

/* ---- chat (-i, -cnv) */

typedef struct {
    srv_template tmpl;
    srv_msg *msgs;
    char **texts;       /* the messages' own copies */
    int n_msgs;
    int32_t *cache;     /* the ids the context holds, in order */
    int n_cache;
    cm_ctx *ctx;
    run_opts co;        /* o with the end of an assistant turn as a stop */
    int32_t end_id;     /* that end as one token, or -1 */
} chat_state;

static cm_status chat_template(const run_opts *o, const cm_model *m, chat_state *c, cm_err *err)
{
    gguf_str t = {0};
    cm_err ignore;
    int32_t *ids = NULL;
    size_t n = 0;
    if (gguf_get_str(&m->file, "tokenizer.chat_template", &t, &ignore))
        t.ptr = NULL, t.len = 0;
    cm_status s = o->chat_template ? srv_template_by_name(o->chat_template, &c->tmpl, err)
                                   : srv_template_detect(t.ptr, t.len, &c->tmpl, err);
    if (s)
        return s;
    const char *end = srv_template_end(c->tmpl);
    c->co = *o;
    if (c->co.n_stops < MAX_STOPS)
        c->co.stops[c->co.n_stops++] = end;
    c->end_id = -1;
    if (!cm_tokenize(m->tok, end, strlen(end), 0, 1, &ids, &n, &ignore) && n == 1)
        c->end_id = ids[0];
    free(ids);
    fprintf(stderr, "[codemoe] chat template %s; /exit or end of input ends the chat\n",
            srv_template_name(c->tmpl));
    return CM_OK;
}

/* Appends a message (text copied). */
static cm_status chat_add(chat_state *c, const char *role, const char *text, size_t len,
                          cm_err *err)
{
    srv_msg *m = realloc(c->msgs, sizeof *m * (size_t)(c->n_msgs + 1));
    char **t = m ? realloc(c->texts, sizeof *t * (size_t)(c->n_msgs + 1)) : NULL;
    if (m)
        c->msgs = m;
    if (t)
        c->texts = t;
    char *copy = t ? malloc(len + 1) : NULL;
    if (!copy)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    memcpy(copy, text, len);
    copy[len] = 0;
    c->texts[c->n_msgs] = copy;
    c->msgs[c->n_msgs++] = (srv_msg){{role, strlen(role)}, {copy, len}};
    return CM_OK;
}

/* The conversation's prompt; the context keeps what it shares with the
 * cache and evaluates the rest (at least the last token: its logits). */
static cm_status chat_prompt(const run_opts *o, const cm_model *m, chat_state *c, int32_t **ids,
                             size_t *n, int *reused, cm_err *err)
{
    srv_request r = {.kind = SRV_CHAT, .msgs = c->msgs, .n_msgs = c->n_msgs};
    cm_status s = srv_chat_ids(m->tok, &r, c->tmpl, ids, n, err);
    if (!s && *n >= (size_t)o->n_ctx)
        s = cm_fail(err, CM_E_RANGE, "the conversation is %zu tokens but the context holds %d "
                    "(raise -c)", *n, o->n_ctx);
    if (s)
        return s;
    int k = 0;
    while (k < c->n_cache && (size_t)k < *n - 1 && c->cache[k] == (*ids)[k])
        k++;
    cm_ctx_truncate(c->ctx, k);
    *reused = k;
    s = eval_prompt(c->ctx, *ids + k, (int)*n - k, err);
    int32_t *keep = s ? NULL : realloc(c->cache, sizeof *keep * (size_t)o->n_ctx);
    if (!s && !keep)
        s = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!s) {
        memcpy(keep, *ids, *n * sizeof *keep);
        c->cache = keep, c->n_cache = (int)*n;
    }
    return s;
}

/* The assistant's answer: printed, kept as a message, its tokens cached. */
static cm_status chat_answer(const cm_model *m, chat_state *c, cm_sampler *smp, run_stats *st,
                             cm_err *err)
{
    cli_buf text = {0};
    out_stream out = {.o = &c->co, .copy = &text};
    cm_status s = CM_OK;
    st->stop_reason = "token limit";
    for (int i = 0; !s && (c->co.n_predict < 0 || i < c->co.n_predict); i++) {
        int32_t id = cm_sampler_sample(smp, (float *)cm_ctx_logits(c->ctx));
        if (cm_tok_is_eog(m->tok, id) || id == c->end_id) {
            st->stop_reason = "end of turn";
            break;
        }
        char piece[256];
        size_t pn = cm_token_piece(m->tok, id, 0, piece, sizeof piece);
        st->n_gen++;
        if (out_push(&out, piece, pn < sizeof piece ? pn : sizeof piece)) {
            st->stop_reason = "end of turn";
            break;
        }
        if (cm_ctx_n_past(c->ctx) >= cm_ctx_n_ctx(c->ctx)) {
            st->stop_reason = "context full";
            break;
        }
        cm_sampler_accept(smp, id);
        s = cm_eval(c->ctx, &id, 1, NULL, err);
        if (!s)
            c->cache[c->n_cache++] = id;
    }
    out_finish(&out);
    fputc('\n', stdout);
    fflush(stdout);
    if (!s)
        s = chat_add(c, "assistant", text.p ? text.p : "", text.len, err);
    free(text.p);
    return s;
}

/* One user turn: its prompt evaluated (what the cache lacks), answered. */
static cm_status chat_turn(const run_opts *o, cm_model *m, chat_state *c, const char *line,
                           size_t len, int turn, cm_err *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int reused = 0;
    run_stats st = {0};
    cm_status s = CM_OK;
    if (!c->ctx && m->is_pack) /* the first turn picks the expert for the chat */
        s = route_to_expert(o, m, NULL, line, len, err);
    if (!s && !c->ctx)
        s = make_ctx(o, m, &c->ctx, err);
    if (!s)
        s = chat_add(c, "user", line, len, err);
    double t0 = now_seconds();
    if (!s)
        s = chat_prompt(o, m, c, &ids, &n, &reused, err);
    st.t_prompt = now_seconds() - t0;
    cm_sampler *smp = s ? NULL : cm_sampler_new(&o->sp, m->hp.n_vocab);
    if (!s && !smp)
        s = cm_fail(err, CM_E_NOMEM, "out of memory creating the sampler");
    for (size_t i = 0; smp && i < n; i++)
        cm_sampler_accept(smp, ids[i]);
    t0 = now_seconds();
    if (!s)
        s = chat_answer(m, c, smp, &st, err);
    st.t_gen = now_seconds() - t0;
    if (!s)
        fprintf(stderr, "[codemoe] turn %d: prompt %zu tok, %d evaluated (%d from the cache), "
                "%.1f tok/s | generated %d tok, %.1f tok/s (%s)\n", turn, n, (int)n - reused,
                reused, (n - reused) / (st.t_prompt > 0 ? st.t_prompt : 1e-9), st.n_gen,
                st.n_gen / (st.t_gen > 0 ? st.t_gen : 1e-9), st.stop_reason);
    cm_sampler_free(smp);
    free(ids);
    return s;
}

/* Reads user turns, a line each, until /exit or the end of the input. */
static cm_status run_chat(const run_opts *o, cm_model *m, cm_err *err)
{
    chat_state c = {0};
    cli_buf sys = {0};
    char *line = NULL;
    size_t cap = 0;
    cm_status s = chat_template(o, m, &c, err);
    if (!s && o->n_prompts)
        s = read_text(o, &o->prompts[0], &sys, err);
    if (!s && o->n_prompts)
        s = chat_add(&c, "system", sys.p, sys.len, err);
    int tty = isatty(0);
    for (int turn = 1; !s; turn++) {
        if (tty)
            fputs("> ", stdout), fflush(stdout);
        ssize_t len = getline(&line, &cap, stdin);
        if (len < 0)
            break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (!strcmp(line, "/exit"))
            break;
        if (len == 0) {
            turn--;
            continue;
        }
        s = chat_turn(o, m, &c, line, (size_t)len, turn, err);
    }
    for (int i = 0; i < c.n_msgs; i++)
        free(c.texts[i]);
    free(c.msgs), free(c.texts), free(c.cache), free(line), free(sys.p);
    cm_ctx_free(c.ctx);
    return s;
}

static cm_status run_model(run_opts *o, cm_err *err)
{
    cm_model m;
    double t0 = now_seconds();
    cm_status s = cm_model_load(o->model, &m, err);
    if (s)
        return s;
    double t_load = now_seconds() - t0;
    if (!m.tok)
        s = cm_fail(err, CM_E_UNSUPPORTED, "%s has no tokenizer, so it cannot run on text "
                    "(codemoe logits evaluates token ids)", o->model);
    if (!s)
        choose_ctx(o, &m);
    if (!s && o->all_experts && !m.is_pack)
        s = cm_fail(err, CM_E_USAGE, "--all-experts applies to language-expert packs only");
    if (!s && o->all_experts)
        fprintf(stderr, "[codemoe] all experts resident: %.1f MiB touched\n",
                touch_all(&m) / 1048576.0);
    if (!s && o->chat)
        s = run_chat(o, &m, err);
    else if (!s && o->infill)
        s = run_one(o, &m, NULL, t_load, err);
    for (int i = 0; !s && !o->infill && !o->chat && i < o->n_prompts; i++) {
        if (i > 0)
            putchar('\n'); /* completions of successive prompts on their own lines */
        s = run_one(o, &m, &o->prompts[i], i == 0 ? t_load : 0.0, err);
    }
    cm_model_free(&m);
    return s;
}

int cli_run(int argc, char **argv)
{
    run_opts o = {.n_predict = 256, .n_ctx = -1, .kv = CM_KV_F16, .place = CM_PLACE_AUTO};
    cm_err err = {0};
    int help = 0;
    char path[1024];
    cm_sampling_defaults(&o.sp);
    cm_status s = parse_run(argc, argv, &o, &help, &err);
    if (!s && help)
        fputs(RUN_HELP, stdout);
    if (!s && !help && !o.have_seed)
        o.sp.seed = (uint64_t)time(NULL);
    if (!s && !help && !o.model && !(o.model = default_model_path(path, sizeof path)))
        s = cm_fail(&err, CM_E_IO, "no model given and no default model is installed: "
                    "pass -m FILE.gguf (a GGUF model such as llama.cpp uses)");
    if (!s && !help)
        s = run_model(&o, &err);
    for (int i = 0; i < o.n_stops; i++)
        free(o.stop_copies[i]);
    return s ? cli_fail(&err) : 0;
}
