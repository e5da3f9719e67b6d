/* cli_run.c - `codemoe run`: stream a completion to stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "experts/pack.h"
#include "experts/router.h"
#include "engine/forward.h"
#include "engine/sampling.h"

#define MAX_STOPS 16

static const char RUN_HELP[] =
    "usage: codemoe run [-m MODEL] (-p PROMPT | -f FILE) [options]\n"
    "\n"
    "Streams the model's continuation of the prompt to stdout; timings and\n"
    "peak memory go to stderr.  Without -m the installed default model is used.\n"
    "\n"
    "  -m, --model FILE        GGUF model (llama, qwen2, qwen3 architectures)\n"
    "  -p, --prompt TEXT       prompt text (repeatable: prompts run one after another)\n"
    "  -f, --file FILE         read a prompt from FILE (repeatable)\n"
    "      --lang L            with a language-expert pack: use the expert for L\n"
    "                          (c, cpp, python, java, javascript, go, rust) instead of routing\n"
    "  -n, --n-predict N       tokens to generate (default 256; stops early at end of text)\n"
    "      --temp T            temperature, 0 = greedy (default 0.8)\n"
    "      --top-k K           keep the K most likely tokens, 0 = off (default 40)\n"
    "      --top-p P           nucleus sampling, 1 = off (default 0.95)\n"
    "      --min-p P           drop tokens below P x the best probability (default 0.05)\n"
    "      --repeat-penalty R  penalise the last 64 tokens, 1 = off (default 1.0)\n"
    "      --seed S            random seed (default: from the clock, printed on stderr)\n"
    "      --stop STR          stop before STR is printed (repeatable)\n"
    "  -c, --ctx-size N        context length (default: the model's, at most 4096)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "      --kv-type T         KV cache type: f16 (default), f32 or q8_0\n"
    "      --backend B         cpu (default; CODEMOE_BACKEND sets another), ref (the\n"
    "                          scalar reference kernels), cuda or vulkan; `codemoe\n"
    "                          --version` lists those built\n"
    PLACE_HELP
    "  -v, --verbose           print the backend and device, and any ops that ran on the CPU\n"
    "      --no-bos            do not add the BOS token to the prompt\n"
    "      --all-experts       with a pack: bring every expert into memory first (to\n"
    "                          compare with routing, which keeps only the one in use)\n"
    "      --moe-stats         print tokens per expert (MoE models) on stderr\n"
    "      --moe-ram-budget S  keep at most S bytes of expert weights resident (e.g. 512M):\n"
    "                          least recently used experts are released; prints hit rate\n"
    "                          and bytes read from disk\n"
    "  -h, --help              this text\n";

#define MAX_PROMPTS 64

typedef struct {
    const char *text; /* from -p, or NULL */
    const char *file; /* from -f, or NULL */
} prompt_src;

typedef struct {
    const char *model, *lang, *backend;
    prompt_src prompts[MAX_PROMPTS];
    int n_prompts;
    int n_predict, n_ctx, no_bos, have_seed, moe_stats, all_experts, verbose;
    uint64_t moe_budget; /* 0: none given */
    cm_kv_type kv;
    cm_place_opts place;
    cm_sampling_params sp;
    const char *stops[MAX_STOPS];
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

static cm_status parse_sampling(const char *a, const char *v, run_opts *o, cm_err *err)
{
    if (!strcmp(a, "--temp"))
        return arg_float(a, v, 0.0f, 100.0f, &o->sp.temp, err);
    if (!strcmp(a, "--top-k"))
        return arg_int(a, v, 0, 1 << 24, &o->sp.top_k, err);
    if (!strcmp(a, "--top-p"))
        return arg_float(a, v, 0.0f, 1.0f, &o->sp.top_p, err);
    if (!strcmp(a, "--min-p"))
        return arg_float(a, v, 0.0f, 1.0f, &o->sp.min_p, err);
    if (!strcmp(a, "--repeat-penalty"))
        return arg_float(a, v, 0.0f, 100.0f, &o->sp.repeat_penalty, err);
    if (!strcmp(a, "--seed")) {
        o->have_seed = 1;
        return arg_u64(a, v, &o->sp.seed, err);
    }
    return cm_fail(err, CM_E_USAGE, "unknown option %s (see codemoe run --help)", a);
}

static cm_status parse_run(int argc, char **argv, run_opts *o, int *help, cm_err *err)
{
    cm_status s = CM_OK;
    for (int i = 1; i < argc && !s; i++) {
        const char *a = argv[i], *v = NULL;
        if (arg_is(a, "-h", "--help")) {
            *help = 1;
            return CM_OK;
        }
        if (!strcmp(a, "--no-bos") || !strcmp(a, "--moe-stats") || !strcmp(a, "--all-experts")) {
            *(a[2] == 'n' ? &o->no_bos : a[2] == 'm' ? &o->moe_stats : &o->all_experts) = 1;
            continue;
        }
        if (arg_is(a, "-v", "--verbose")) {
            o->verbose = 1;
            continue;
        }
        if ((s = arg_value(argc, argv, &i, &v, err)))
            break;
        if (arg_is(a, "-m", "--model"))
            o->model = v;
        else if (arg_is(a, "-p", "--prompt") || arg_is(a, "-f", "--file")) {
            if (o->n_prompts == MAX_PROMPTS)
                return cm_fail(err, CM_E_USAGE, "at most %d prompts", MAX_PROMPTS);
            o->prompts[o->n_prompts].text = a[1] == 'p' || a[2] == 'p' ? v : NULL;
            o->prompts[o->n_prompts++].file = a[1] == 'p' || a[2] == 'p' ? NULL : v;
        } else if (!strcmp(a, "--lang"))
            o->lang = v;
        else if (arg_is(a, "-n", "--n-predict"))
            s = arg_int(a, v, 0, 1 << 24, &o->n_predict, err);
        else if (arg_is(a, "-c", "--ctx-size"))
            s = arg_int(a, v, 1, 1 << 24, &o->n_ctx, err);
        else if (arg_is(a, "-t", "--threads"))
            s = arg_threads(v, err);
        else if (!strcmp(a, "--kv-type"))
            s = parse_kv_type(v, &o->kv, err);
        else if (!strcmp(a, "--backend"))
            o->backend = v;
        else if (arg_is_place(a))
            s = arg_place(a, v, &o->place, err);
        else if (!strcmp(a, "--moe-ram-budget"))
            s = arg_size(a, v, &o->moe_budget, err);
        else if (!strcmp(a, "--stop")) {
            if (o->n_stops == MAX_STOPS)
                return cm_fail(err, CM_E_USAGE, "at most %d --stop strings", MAX_STOPS);
            if (!*v)
                return cm_fail(err, CM_E_USAGE, "option --stop: empty string");
            o->stops[o->n_stops++] = v;
        } else
            s = parse_sampling(a, v, o, err);
    }
    if (!s && !*help && o->n_prompts == 0)
        s = cm_fail(err, CM_E_USAGE, "give a prompt with -p PROMPT or -f FILE (see codemoe run --help)");
    return s;
}

/* ---- output: whole UTF-8 characters only, never any part of a stop string */

typedef struct {
    cm_utf8_stream utf8;
    char *text;   /* decoded but not yet printed */
    size_t len, cap;
    const run_opts *o;
} out_stream;

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
            fwrite(s->text, 1, (size_t)(hit - s->text), stdout);
            s->len = 0;
            return 1;
        }
    }
    size_t keep = held_tail(s);
    fwrite(s->text, 1, s->len - keep, stdout);
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
        fwrite(s->text, 1, s->len, stdout);
    fwrite(tail, 1, n, stdout);
    fflush(stdout);
    free(s->text);
}

/* ---- generation */

typedef struct {
    int n_prompt, n_gen;
    double t_prompt, t_gen;
    const char *stop_reason;
} run_stats;

static cm_status generate(const cm_model *m, cm_ctx *ctx, const run_opts *o, int32_t *ids,
                          size_t n_ids, run_stats *st, cm_err *err)
{
    cm_sampler *smp = cm_sampler_new(&o->sp, m->hp.n_vocab);
    out_stream out = {.o = o};
    cm_status s = CM_OK;
    if (!smp)
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the sampler");
    for (size_t i = 0; i < n_ids; i++)
        cm_sampler_accept(smp, ids[i]);
    double t0 = now_seconds();
    s = cm_eval(ctx, ids, (int)n_ids, NULL, err);
    st->t_prompt = now_seconds() - t0;
    st->stop_reason = "token limit";
    t0 = now_seconds();
    for (int i = 0; !s && i < o->n_predict; i++) {
        float *logits = (float *)cm_ctx_logits(ctx);
        int32_t id = cm_sampler_sample(smp, logits);
        if (cm_tok_is_eog(m->tok, id)) {
            st->stop_reason = "end of text";
            break;
        }
        char piece[256];
        size_t pn = cm_token_piece(m->tok, id, 0, piece, sizeof piece);
        st->n_gen++;
        if (out_push(&out, piece, pn < sizeof piece ? pn : sizeof piece)) {
            st->stop_reason = "stop string";
            break;
        }
        if (cm_ctx_n_past(ctx) >= cm_ctx_n_ctx(ctx)) {
            st->stop_reason = "context full";
            break;
        }
        cm_sampler_accept(smp, id);
        s = cm_eval(ctx, &id, 1, NULL, err);
    }
    st->t_gen = now_seconds() - t0;
    out_finish(&out);
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

static cm_status read_prompt(const prompt_src *p, char **text, size_t *len, cm_err *err)
{
    if (p->file)
        return read_file(p->file, text, len, err);
    *len = strlen(p->text);
    *text = malloc(*len + 1);
    if (!*text)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    memcpy(*text, p->text, *len + 1);
    return CM_OK;
}

static cm_status tokenize_prompt(const run_opts *o, const cm_model *m, const char *text,
                                 size_t len, int32_t **ids, size_t *n, cm_err *err)
{
    cm_status s = cm_tokenize(m->tok, text, len, !o->no_bos && cm_tok_add_bos(m->tok), 1, ids, n,
                              err);
    if (!s && *n == 0)
        s = cm_fail(err, CM_E_RANGE, "the prompt is empty");
    if (!s && *n >= (size_t)o->n_ctx)
        s = cm_fail(err, CM_E_RANGE, "the prompt is %zu tokens but the context holds %d "
                    "(raise -c, the model was trained on %d)", *n, o->n_ctx, m->hp.n_ctx_train);
    return s;
}

static cm_status make_ctx(const run_opts *o, const cm_model *m, cm_ctx **ctx, cm_err *err)
{
    const cm_backend_ops *be;
    cm_status s = cm_backend_choose(o->backend, &be, err);
    if (!s)
        s = cm_ctx_new_placed(m, be, &o->place, o->n_ctx, o->kv, 512, ctx, err);
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

/* One prompt: route (packs), tokenize, generate, report. */
static cm_status run_one(const run_opts *o, cm_model *m, const prompt_src *p, double t_load,
                         cm_err *err)
{
    char *text = NULL;
    size_t len = 0, n_ids = 0;
    int32_t *ids = NULL;
    cm_ctx *ctx = NULL;
    run_stats st = {0};
    cm_status s = read_prompt(p, &text, &len, err);
    if (!s && m->is_pack)
        s = route_to_expert(o, m, p->file, text, len, err);
    if (!s)
        s = tokenize_prompt(o, m, text, len, &ids, &n_ids, err);
    if (!s)
        s = make_ctx(o, m, &ctx, err);
    if (!s && !o->have_seed && o->sp.temp > 0) /* so a run can be repeated */
        fprintf(stderr, "[codemoe] seed %llu\n", (unsigned long long)o->sp.seed);
    st.n_prompt = (int)n_ids;
    if (!s)
        s = generate(m, ctx, o, ids, n_ids, &st, err);
    if (!s)
        fprintf(stderr,
                "\n[codemoe] load %.2f s | prompt %d tok, %.1f tok/s | generated %d tok, %.1f tok/s "
                "(%s) | peak RSS %.1f MiB\n",
                t_load, st.n_prompt, st.n_prompt / (st.t_prompt > 0 ? st.t_prompt : 1e-9), st.n_gen,
                st.n_gen / (st.t_gen > 0 ? st.t_gen : 1e-9), st.stop_reason, peak_rss_mib());
    if (!s && m->hp.n_expert > 0 && (o->moe_stats || o->moe_budget))
        print_moe_stats(m, ctx, o->moe_stats);
    if (!s && o->verbose)
        print_backend_use(ctx);
    free(text);
    free(ids);
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
    if (o->n_ctx == 0)
        o->n_ctx = m.hp.n_ctx_train < 4096 ? m.hp.n_ctx_train : 4096;
    if (!s && o->all_experts && !m.is_pack)
        s = cm_fail(err, CM_E_USAGE, "--all-experts applies to language-expert packs only");
    if (!s && o->all_experts)
        fprintf(stderr, "[codemoe] all experts resident: %.1f MiB touched\n",
                touch_all(&m) / 1048576.0);
    for (int i = 0; !s && i < o->n_prompts; i++) {
        if (i > 0)
            putchar('\n'); /* completions of successive prompts on their own lines */
        s = run_one(o, &m, &o->prompts[i], i == 0 ? t_load : 0.0, err);
    }
    cm_model_free(&m);
    return s;
}

int cli_run(int argc, char **argv)
{
    run_opts o = {.n_predict = 256, .kv = CM_KV_F16, .place = CM_PLACE_AUTO};
    cm_err err = {0};
    int help = 0;
    char path[1024];
    cm_sampling_defaults(&o.sp);
    cm_status s = parse_run(argc, argv, &o, &help, &err);
    if (s)
        return cli_fail(&err);
    if (help) {
        fputs(RUN_HELP, stdout);
        return 0;
    }
    if (!o.have_seed)
        o.sp.seed = (uint64_t)time(NULL);
    if (!o.model && !(o.model = default_model_path(path, sizeof path))) {
        cm_fail(&err, CM_E_IO, "no model given and no default model is installed: "
                "pass -m FILE.gguf (a GGUF model such as llama.cpp uses)");
        return cli_fail(&err);
    }
    if ((s = run_model(&o, &err)))
        return cli_fail(&err);
    return 0;
}
