/* cli_perplexity.c - `codemoe perplexity`: PPL (and KLD against a base) over
 * a text file or the shared code corpus. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "util/json.h"
#include "eval/corpus.h"
#include "experts/pack.h"
#include "eval/perplexity.h"

static const char PPL_HELP[] =
    "usage: codemoe perplexity -m MODEL (-f FILE | --corpus DIR --lang L) [options]\n"
    "\n"
    "Measures perplexity the way llama.cpp does: the text is tokenized once,\n"
    "cut into non-overlapping chunks of CTX tokens, and only the second half\n"
    "of each chunk is scored.  Prints the running PPL per chunk, then a last\n"
    "line `Final estimate: PPL = X +/- ERR` (ERR: the standard error).\n"
    "\n"
    "  -m, --model MODEL       GGUF model (needs its tokenizer)\n"
    "  -f, --file FILE         plain text to score\n"
    "      --corpus DIR        the code corpus: reads DIR/L/SPLIT.jsonl.xz,\n"
    "      --lang L            files joined by a blank line (\"\\n\\n\")\n"
    "      --split S           which DIR/L/S.jsonl.xz to read (default valid)\n"
    "  -c, --ctx-size N        tokens per chunk (default 512)\n"
    "  -b, --batch-size N      tokens per forward batch (default 512)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "      --max-tokens N      use only the first N tokens of the text\n"
    "      --chunks N          score at most N chunks\n"
    "      --kv-type T         KV cache type: f16 (default) or f32\n"
    "      --backend B         cpu (default; CODEMOE_BACKEND sets another), ref, cuda or vulkan\n"
    "      --expert NAME       language-expert packs: score this member (a language\n"
    "                          or \"fallback\"); default: --lang's expert if the pack\n"
    "                          has one, else the fallback\n"
    "      --save-logits FILE  save this model's log-probabilities of the scored\n"
    "                          positions (f16; --save-f32 for f32) to compare others with\n"
    "      --kld-base FILE     report KL divergence and top-1 agreement against the\n"
    "                          model that saved FILE (same text, -c and vocabulary)\n"
    "      --json              print one JSON object on stdout instead (progress on stderr)\n"
    "  -h, --help              this text\n";

typedef struct {
    const char *model, *file, *corpus, *lang, *split, *save, *base, *expert, *backend;
    const cm_backend_ops *be;
    int n_ctx, n_batch, max_tokens, chunks, json, save_f32;
    cm_kv_type kv;
} ppl_opts;

enum { OPT_CORPUS = CLI_LONG, OPT_LANG, OPT_SPLIT, OPT_SAVE, OPT_BASE, OPT_MAX_TOKENS,
       OPT_CHUNKS, OPT_KV, OPT_EXPERT, OPT_BACKEND, OPT_JSON, OPT_SAVE_F32 };

static const struct option PPL_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"file", required_argument, 0, 'f'},
    {"corpus", required_argument, 0, OPT_CORPUS}, {"lang", required_argument, 0, OPT_LANG},
    {"split", required_argument, 0, OPT_SPLIT}, {"save-logits", required_argument, 0, OPT_SAVE},
    {"kld-base", required_argument, 0, OPT_BASE}, {"ctx-size", required_argument, 0, 'c'},
    {"batch-size", required_argument, 0, 'b'}, {"max-tokens", required_argument, 0, OPT_MAX_TOKENS},
    {"chunks", required_argument, 0, OPT_CHUNKS}, {"kv-type", required_argument, 0, OPT_KV},
    {"threads", required_argument, 0, 't'}, {"expert", required_argument, 0, OPT_EXPERT},
    {"backend", required_argument, 0, OPT_BACKEND}, {"json", no_argument, 0, OPT_JSON},
    {"save-f32", no_argument, 0, OPT_SAVE_F32}, {0}};

/* Stores the value of flag a. */
static cm_status ppl_opt(void *user, int id, const char *a, const char *v, cm_err *err)
{
    ppl_opts *o = user;
    switch (id) {
    case CLI_POS: return cli_stray("perplexity", v, err);
    case 'm': o->model = v; break;
    case 'f': o->file = v; break;
    case OPT_CORPUS: o->corpus = v; break;
    case OPT_LANG: o->lang = v; break;
    case OPT_SPLIT: o->split = v; break;
    case OPT_SAVE: o->save = v; break;
    case OPT_BASE: o->base = v; break;
    case OPT_EXPERT: o->expert = v; break;
    case OPT_BACKEND: o->backend = v; break;
    case OPT_JSON: o->json = 1; break;
    case OPT_SAVE_F32: o->save_f32 = 1; break;
    case 'c': return arg_int(a, v, 4, 1 << 20, &o->n_ctx, err);
    case 'b': return arg_int(a, v, 1, 1 << 20, &o->n_batch, err);
    case OPT_MAX_TOKENS: return arg_int(a, v, 1, 0x7fffffff, &o->max_tokens, err);
    case OPT_CHUNKS: return arg_int(a, v, 1, 0x7fffffff, &o->chunks, err);
    case OPT_KV: return parse_kv_type(v, &o->kv, err);
    default: return arg_threads(v, err);
    }
    return CM_OK;
}

static cm_status check_opts(const ppl_opts *o, cm_err *err)
{
    if (!o->model)
        return cm_fail(err, CM_E_USAGE, "perplexity needs -m MODEL (see codemoe perplexity --help)");
    if (!!o->file == !!(o->corpus || o->lang))
        return cm_fail(err, CM_E_USAGE, "perplexity needs one of -f FILE or --corpus DIR --lang L");
    if (!o->file && (!o->corpus || !o->lang))
        return cm_fail(err, CM_E_USAGE, "--corpus and --lang go together");
    if (o->split && o->file)
        return cm_fail(err, CM_E_USAGE, "option --split goes with --corpus, not -f");
    if (o->split) {
        cm_status s = cm_corpus_check_split(o->corpus, o->lang, o->split, err);
        if (s)
            return s;
    }
    if (o->save_f32 && !o->save)
        return cm_fail(err, CM_E_USAGE, "--save-f32 needs --save-logits FILE");
    return CM_OK;
}

static cm_status parse_opts(int argc, char **argv, ppl_opts *o, int *help, cm_err *err)
{
    cm_status s = cli_getopt(argc, argv, "perplexity", PPL_OPTS, ppl_opt, o, help, err);
    if (s || *help)
        return s;
    s = cm_backend_choose(o->backend, &o->be, err);
    return s ? s : check_opts(o, err);
}

/* ------------------------------------------------------------ the text */

static cm_status tokenize_all(const cm_tokenizer *tok, const cm_buf *text, int32_t **ids,
                              size_t *n, cm_err *err)
{
    free(*ids);
    *ids = NULL;
    /* as llama.cpp: BOS first when the model adds it, special-token text kept as text */
    return cm_tokenize(tok, text->p ? text->p : "", text->len, cm_tok_add_bos(tok), 0, ids, n, err);
}

/* The corpus is read only as far as --max-tokens needs: documents up to a
 * generous byte budget, more if that gave too few tokens.  The margin keeps
 * the cut far from the end of the text read, where the last tokens could
 * differ from those of the full text. */
static cm_status corpus_ids(const ppl_opts *o, const cm_tokenizer *tok, int32_t **ids, size_t *n,
                            cm_err *err)
{
    const size_t margin = 1024;
    size_t budget = o->max_tokens ? ((size_t)o->max_tokens + margin) * 8 : 0;
    cm_status s;
    for (;;) {
        cm_buf text = {0};
        cm_corpus_info info;
        s = cm_corpus_load(o->corpus, o->lang, o->split, budget, &text, &info, err);
        if (!s)
            s = tokenize_all(tok, &text, ids, n, err);
        cm_buf_free(&text);
        if (s || info.complete || *n >= (size_t)o->max_tokens + margin)
            return s;
        budget *= 4;
    }
}

static cm_status text_ids(const ppl_opts *o, const cm_tokenizer *tok, int32_t **ids, size_t *n,
                          cm_err *err)
{
    cm_status s;
    if (o->corpus)
        s = corpus_ids(o, tok, ids, n, err);
    else {
        cm_buf text = {0};
        s = read_file(o->file, &text.p, &text.len, err);
        if (!s)
            s = tokenize_all(tok, &text, ids, n, err);
        free(text.p);
    }
    if (!s && o->max_tokens && *n > (size_t)o->max_tokens)
        *n = (size_t)o->max_tokens;
    return s;
}

/* ------------------------------------------------------------ output */

typedef struct {
    FILE *out;  /* running values: stdout, or stderr with --json */
} progress_ctx;

static void on_chunk(void *user, int chunk, const cm_ppl_result *r)
{
    progress_ctx *pc = user;
    fprintf(pc->out, "[%d]%.4f,", chunk + 1, r->ppl);
    fflush(pc->out);
}

static void print_text(const cm_ppl_result *r)
{
    if (r->has_kld) {
        printf("Mean KLD:      %.8f +/- %.8f\n", r->kld, r->kld_err);
        printf("Maximum KLD:   %.8f\n", r->kld_max);
        printf("Same top-1:    %.3f +/- %.3f %%\n", r->top1, r->top1_err);
        printf("Base PPL:      %.4f +/- %.5f\n", r->base_ppl, r->base_ppl_err);
    }
    printf("Final estimate: PPL = %.4f +/- %.5f\n", r->ppl, r->ppl_err);
}

static void print_json(const ppl_opts *o, size_t n_ids, const cm_ppl_result *r,
                       const double *chunk_nll)
{
    int n_pred = r->n_ctx - 1 - r->n_ctx / 2;
    printf("{\"model\": ");
    json_write_string(stdout, o->model);
    printf(", \"source\": ");
    json_write_string(stdout, o->file ? o->file : o->corpus);
    if (o->corpus) {
        printf(", \"lang\": ");
        json_write_string(stdout, o->lang);
        printf(", \"split\": \"%s\"", o->split ? o->split : "valid");
    }
    printf(", \"n_tokens\": %zu, \"n_ctx\": %d, \"n_chunk\": %d, \"n_scored\": %lld",
           n_ids, r->n_ctx, r->n_chunk, (long long)r->n_scored);
    printf(", \"nll\": %.17g, \"nll_err\": %.17g, \"ppl\": %.17g, \"ppl_err\": %.17g", r->nll,
           r->nll_err, r->ppl, r->ppl_err);
    printf(", \"chunk_ppl\": [");
    for (int c = 0; c < r->n_chunk; c++)
        printf(c ? ", %.9g" : "%.9g", exp(chunk_nll[c] / n_pred));
    printf("]");
    if (r->has_kld)
        printf(", \"kld\": {\"mean\": %.9g, \"err\": %.9g, \"max\": %.9g, \"top1\": %.9g, "
               "\"top1_err\": %.9g, \"base_ppl\": %.9g, \"base_ppl_err\": %.9g}",
               r->kld, r->kld_err, r->kld_max, r->top1, r->top1_err, r->base_ppl,
               r->base_ppl_err);
    printf(", \"seconds\": %.3f}\n", r->seconds);
}

/* ------------------------------------------------------------ the command */

static cm_status measure(const ppl_opts *o, const cm_model *m, const int32_t *ids, size_t n,
                         cm_err *err)
{
    progress_ctx pc = {o->json ? stderr : stdout};
    cm_ppl_params p = {.n_ctx = o->n_ctx, .n_batch = o->n_batch, .kv = o->kv, .backend = o->be,
                       .max_chunks = o->chunks, .save_logits = o->save, .save_f32 = o->save_f32,
                       .kld_base = o->base, .progress = on_chunk, .user = &pc};
    cm_ppl_result r;
    int n_chunk = cm_ppl_n_chunks(n, o->n_ctx, o->chunks);
    p.chunk_nll = calloc(n_chunk > 0 ? (size_t)n_chunk : 1, sizeof(double));
    if (!p.chunk_nll)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    fprintf(stderr, "perplexity: %zu tokens, %d chunks of %d (%d scored each)\n", n, n_chunk,
            o->n_ctx, o->n_ctx - 1 - o->n_ctx / 2);
    if (m->hp.n_ctx_train > 0 && o->n_ctx > m->hp.n_ctx_train)
        fprintf(stderr, "perplexity: warning: -c %d is beyond the %d positions the model was "
                "trained on\n", o->n_ctx, m->hp.n_ctx_train);
    cm_status s = cm_perplexity(m, ids, n, &p, &r, err);
    if (r.n_chunk > 0)
        fputc('\n', pc.out);
    if (!s && r.n_chunk < n_chunk)
        fprintf(stderr, "perplexity: scored only the %d chunks %s holds\n", r.n_chunk, o->base);
    if (!s) {
        fprintf(stderr, "perplexity: %.2f s, %.0f tokens/s\n", r.seconds,
                r.seconds > 0 ? (double)r.n_chunk * o->n_ctx / r.seconds : 0.0);
        if (o->json)
            print_json(o, n, &r, p.chunk_nll);
        else
            print_text(&r);
    }
    free(p.chunk_nll);
    return s;
}

/* A pack scores --expert, else --lang's expert when it has one (as `run`
 * routes), else its fallback; the choice goes to stderr. */
static cm_status pick_expert(const ppl_opts *o, cm_model *m, cm_err *err)
{
    if (!m->is_pack)
        return o->expert ? cm_fail(err, CM_E_USAGE, "--expert needs a language-expert pack; "
                                   "%s is a single model", o->model)
                         : CM_OK;
    const char *pick = o->expert;
    if (!pick && o->lang && cm_pack_has_member(&m->file, o->lang))
        pick = o->lang;
    if (!pick)
        return CM_OK; /* loaded bound to the pack's default member */
    cm_status s = cm_model_select_expert(m, pick, err);
    if (!s)
        fprintf(stderr, "perplexity: expert %s\n", m->expert);
    return s;
}

int cli_perplexity(int argc, char **argv)
{
    ppl_opts o = {.n_ctx = 512, .n_batch = 512, .kv = CM_KV_F16};
    cm_err err = {0};
    int help = 0;
    if (parse_opts(argc, argv, &o, &help, &err))
        return cli_fail(&err);
    if (help) {
        fputs(PPL_HELP, stdout);
        return 0;
    }
    cm_model m;
    int32_t *ids = NULL;
    size_t n = 0;
    if (cm_model_load(o.model, &m, &err))
        return cli_fail(&err);
    cm_status s = pick_expert(&o, &m, &err);
    if (!s)
        s = m.tok ? CM_OK
                        : cm_fail(&err, CM_E_UNSUPPORTED, "%s has no tokenizer; perplexity needs "
                                  "one", o.model);
    if (!s)
        s = text_ids(&o, m.tok, &ids, &n, &err);
    if (!s)
        s = measure(&o, &m, ids, n, &err);
    free(ids);
    cm_model_free(&m);
    return s ? cli_fail(&err) : 0;
}
