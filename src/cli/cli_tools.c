/* cli_tools.c - `codemoe info`, `codemoe logits`, `codemoe tokenize`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/cpu/cpu.h"
#include "cli/cli.h"
#include "engine/forward.h"
#include "experts/pack.h"
#include "util/atomic_file.h"

/* ------------------------------------------------------------------ info */

static const char INFO_HELP[] =
    "usage: codemoe info MODEL [--tensors] [--backend B] [-ngl N] [--vram-budget SIZE]\n"
    "       codemoe info --devices\n"
    "\n"
    "Prints the architecture, hyper-parameters, tokenizer, tensor types and\n"
    "sizes of a GGUF model, and the backend and memory needed to run it.\n"
    "  --tensors     also list every tensor\n"
    "  --backend B   the backend to size for (default: cpu, or CODEMOE_BACKEND); on a\n"
    "                GPU backend, where each layer's weights and experts would go\n"
    "  -ngl N, --vram-budget SIZE, --device N   that placement's options (codemoe run --help)\n"
    "  --devices     list the GPUs of the compiled backends (cuda, vulkan) and stop\n";

static void print_type_table(const cm_model *m, int list)
{
    uint64_t bytes[CM_TYPE_COUNT] = {0}, count[CM_TYPE_COUNT] = {0};
    char tb[32];
    for (uint64_t i = 0; i < m->file.n_tensors; i++) {
        const gguf_tensor *t = &m->file.tensors[i];
        bytes[t->type] += t->nbytes;
        count[t->type]++;
        if (list)
            printf("  %-40.*s %-6s [%lld, %lld, %lld] %llu bytes\n", (int)t->name.len, t->name.ptr,
                   cm_type_name(t->type, tb), (long long)t->ne[0], (long long)t->ne[1],
                   (long long)t->ne[2], (unsigned long long)t->nbytes);
    }
    printf("tensor types:\n");
    for (int ty = 0; ty < CM_TYPE_COUNT; ty++)
        if (count[ty])
            printf("  %-6s %4llu tensors %10.2f MiB\n", cm_type_name((uint32_t)ty, tb),
                   (unsigned long long)count[ty], bytes[ty] / 1048576.0);
}

static void print_info(const cm_model *m)
{
    const cm_hparams *hp = &m->hp;
    uint64_t params = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++) {
        const gguf_tensor *t = &m->file.tensors[i];
        params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
    }
    printf("file:            %s (%.2f MiB, GGUF v%u)\n", m->path, m->file.size / 1048576.0,
           m->file.version);
    printf("architecture:    %s\n", hp->arch_name);
    printf("parameters:      %.2f M\n", params / 1e6);
    printf("layers:          %d\nembedding:       %d\nheads:           %d (KV heads %d, head dim %d)\n",
           hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim);
    printf("feed-forward:    %d\nvocabulary:      %d\ncontext (train): %d\n", hp->n_ff, hp->n_vocab,
           hp->n_ctx_train);
    if (hp->n_expert > 0)
        printf("experts:         %d, %d used per token, expert ffn %d%s\n", hp->n_expert,
               hp->n_expert_used, hp->n_ff_exp, hp->n_ff_shexp ? ", plus a shared expert" : "");
    printf("rope:            %s, base %g, dims %d, linear scale %g\n",
           hp->rope_neox ? "neox" : "normal", hp->rope_base, hp->rope_dim, 1.0 / hp->rope_freq_scale);
    printf("norm eps:        %g\noutput:          %s\n", hp->norm_eps,
           m->tied_output ? "tied to token embeddings" : "separate");
    if (m->tok)
        printf("tokenizer:       %s%s%s, %d tokens, bos %d, eos %d\n", cm_tok_model(m->tok),
               *cm_tok_pre(m->tok) ? " / " : "", cm_tok_pre(m->tok), cm_tok_n_vocab(m->tok),
               cm_tok_bos(m->tok), cm_tok_eos(m->tok));
    else
        printf("tokenizer:       none (token ids only)\n");
}

/* Bytes per type of the tensors whose name starts with prefix + '/'. */
static uint64_t member_bytes(const cm_model *m, const char *prefix, uint64_t by_type[CM_TYPE_COUNT])
{
    size_t plen = strlen(prefix);
    uint64_t total = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++) {
        const gguf_tensor *t = &m->file.tensors[i];
        if (t->name.len > plen && !memcmp(t->name.ptr, prefix, plen) && t->name.ptr[plen] == '/') {
            by_type[t->type] += t->nbytes;
            total += t->nbytes;
        }
    }
    return total;
}

static void print_bytes_by_type(const char *label, uint64_t total, const uint64_t *by_type)
{
    char tb[32];
    printf("  %-12s %9.2f MiB  (", label, total / 1048576.0);
    int first = 1;
    for (int ty = 0; ty < CM_TYPE_COUNT; ty++)
        if (by_type[ty]) {
            printf("%s%s %.2f MiB", first ? "" : ", ", cm_type_name((uint32_t)ty, tb),
                   by_type[ty] / 1048576.0);
            first = 0;
        }
    printf(")\n");
}

/* Per member: bytes on disk and resident when routed (its own + shared). */
static void print_pack(const cm_model *m, size_t ctx_bytes)
{
    char names[CM_PACK_MAX_MEMBERS][32];
    int n = cm_pack_members(&m->file, names, CM_PACK_MAX_MEMBERS);
    uint64_t shared_t[CM_TYPE_COUNT] = {0}, all = 0, worst = 0;
    uint64_t shared = member_bytes(m, CM_PACK_SHARED, shared_t);
    printf("language-expert pack: %d members (bytes on disk by type; resident = shared + member)\n", n);
    print_bytes_by_type("shared", shared, shared_t);
    for (int i = 0; i < n; i++) {
        uint64_t by_type[CM_TYPE_COUNT] = {0};
        uint64_t own = member_bytes(m, names[i], by_type);
        print_bytes_by_type(names[i], own, by_type);
        printf("  %-12s resident when routed: %.2f MiB weights + %.2f MiB context\n", "",
               (shared + own) / 1048576.0, ctx_bytes / 1048576.0);
        all += own;
        worst = own > worst ? own : worst;
    }
    printf("all experts resident: %.2f MiB; routed (one expert, the largest): %.2f MiB\n",
           (shared + all) / 1048576.0, (shared + worst) / 1048576.0);
}

/* Where a context on a device backend puts each layer's weights and
 * experts, and the device memory in use then (measured). */
static void print_placement_plan(const cm_model *m, const cm_backend_ops *be,
                                 const cm_place_opts *place, int n_ctx)
{
    cm_ctx *c = NULL;
    cm_err err = {0};
    if (cm_ctx_new_placed(m, be, place, n_ctx, CM_KV_F16, 512, &c, &err)) {
        printf("placement:       none (%s)\n", err.msg);
        return;
    }
    cm_place_stats ps;
    cm_ctx_place_stats(c, &ps);
    print_placement(&ps, stdout);
    const cm_hparams *hp = &m->hp;
    for (int il = 0; hp->n_expert > 0 && il < hp->n_layer; il++) {
        uint64_t eb = cm_expert_bytes(m, il);
        int on = 0;
        printf("  layer %2d experts on the device:", il);
        for (int e = 0; e < hp->n_expert; e++)
            if (cm_ctx_expert_on_device(c, il, e))
                printf(" %d", e), on++;
        printf("%s (%.2f MiB each; %.2f MiB device, %.2f MiB host)\n", on ? "" : " none",
               eb / 1048576.0, on * eb / 1048576.0, (hp->n_expert - on) * eb / 1048576.0);
    }
    size_t fr = 0, total = 0;
    cm_backend *b = cm_ctx_backend(c);
    b->ops->mem_info(b, &fr, &total);
    printf("device memory in use: %.1f MiB of %.1f MiB (%s, with a %d-token f16 KV cache)\n",
           (total - fr) / 1048576.0, total / 1048576.0,
           strcmp(be->name, "cuda") ? "allocated by codemoe" : "cudaMemGetInfo", n_ctx);
    cm_ctx_free(c);
}

static void print_memory(const cm_model *m, const cm_backend_ops *be, const cm_place_opts *place)
{
    int n_ctx = m->hp.n_ctx_train < 4096 ? m->hp.n_ctx_train : 4096;
    size_t ctx_bytes = cm_ctx_bytes_estimate(m, be, n_ctx, CM_KV_F16, 512);
    char dev[160];
    be->describe(dev, sizeof dev);
    printf("backend:         %s\n", dev);
    if (m->is_pack)
        print_pack(m, ctx_bytes);
    printf("weights read per token: %.2f MiB", cm_model_bytes_per_token(m) / 1048576.0);
    printf(m->is_pack ? " (member %s)\n" : "%s\n", m->is_pack ? m->expert : "");
    printf("memory to run:   %.2f MiB (weights %.2f MiB mapped + %.2f MiB KV cache and buffers "
           "at %d tokens, f16 KV)\n",
           (m->file.size + ctx_bytes) / 1048576.0, m->file.size / 1048576.0,
           ctx_bytes / 1048576.0, n_ctx);
    if (!be->reads_host && be->mem_info)
        print_placement_plan(m, be, place, n_ctx);
}

enum { OPT_TENSORS = CLI_LONG, OPT_DEVICES, OPT_BACKEND };

static const struct option INFO_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"tensors", no_argument, 0, OPT_TENSORS},
    {"devices", no_argument, 0, OPT_DEVICES}, {"backend", required_argument, 0, OPT_BACKEND},
    CLI_PLACE_OPTIONS, {0}};

typedef struct {
    const char *path, *backend;
    cm_place_opts place;
    int list, devices;
} info_opts;

static cm_status info_opt(void *user, int id, const char *flag, const char *v, cm_err *err)
{
    info_opts *o = user;
    switch (id) {
    case CLI_POS:
    case 'm':
        if (o->path)
            return cm_fail(err, CM_E_USAGE, "info takes one model (got '%s' and '%s')", o->path, v);
        o->path = v;
        return CM_OK;
    case OPT_TENSORS: o->list = 1; return CM_OK;
    case OPT_DEVICES: o->devices = 1; return CM_OK;
    case OPT_BACKEND: o->backend = v; return CM_OK;
    default: return cli_place_opt(id, flag, v, &o->place, err);
    }
}

int cli_info(int argc, char **argv)
{
    info_opts o = {.place = CM_PLACE_AUTO};
    const cm_backend_ops *be;
    cm_err err = {0};
    int help = 0;
    if (cli_getopt(argc, argv, "info", INFO_OPTS, info_opt, &o, &help, &err))
        return cli_fail(&err);
    if (help) {
        fputs(INFO_HELP, stdout);
        return 0;
    }
    const char *path = o.path, *backend = o.backend;
    int list = o.list, devices = o.devices;
    cm_place_opts place = o.place;
    if (devices && !path) { /* the GPUs each compiled backend sees */
        const cm_backend_ops *o;
        int any = 0;
        for (size_t b = 0; (o = cm_backend_at(b)); b++)
            if (o->list_devices)
                o->list_devices(stdout), any = 1;
        if (!any)
            printf("no GPU backend in this build (compiled in: %s)\n", cm_backend_names());
        return 0;
    }
    if (!path)
        return cm_fail(&err, CM_E_USAGE, "usage: codemoe info MODEL"), cli_fail(&err);
    if (cm_backend_choose(backend, &be, &err))
        return cli_fail(&err);
    cm_model m;
    if (cm_model_load(path, &m, &err))
        return cli_fail(&err);
    print_info(&m);
    print_type_table(&m, list);
    print_memory(&m, be, &place);
    cm_model_free(&m);
    return 0;
}

/* ---------------------------------------------------------------- logits */

static const char LOGITS_HELP[] =
    "usage: codemoe logits -m MODEL --ids 1,2,3 -o OUT.f32 [--kv-type f32|f16|q8_0] [-t N]\n"
    "                      [--backend cpu|ref|cuda|vulkan] [-ngl N] [--vram-budget SIZE] [-v]\n"
    "\n"
    "Evaluates the ids as one sequence and writes the logits of every position\n"
    "as float32 little-endian rows [n_ids, n_vocab].  The file appears only\n"
    "when complete.  -v prints the backend and any ops that ran on the CPU\n"
    "instead of on it.\n";

static cm_status parse_ids(const char *s, int32_t **out, size_t *n, cm_err *err)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    size_t k = 0;
    for (const char *p = s;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            free(ids);
            return cm_fail(err, CM_E_USAGE, "option --ids: '%s' is not a comma-separated list of "
                           "token ids", s);
        }
        ids[k++] = (int32_t)v;
        if (!*end)
            break;
        p = end + 1;
    }
    *out = ids;
    *n = k;
    return CM_OK;
}

/* Writes to a temporary file and renames it, so OUT is complete or absent. */
static cm_status write_atomic(const char *path, const void *data, size_t bytes, cm_err *err)
{
    cm_atomic_file af;
    cm_status s = cm_atomic_open(&af, path, 0666, err);
    if (s)
        return s;
    FILE *f = cm_atomic_stream(&af);
    if (!f || fwrite(data, 1, bytes, f) != bytes) {
        s = cm_fail(err, CM_E_IO, "cannot write %s: %s", path, strerror(f ? errno : ENOMEM));
        cm_atomic_abort(&af);
        return s;
    }
    return cm_atomic_commit(&af, CM_ATOMIC_FSYNC, err);
}

typedef struct {
    const char *model, *out, *ids, *backend;
    cm_kv_type kv;
    cm_place_opts place;
    int verbose;
} logits_opts;

enum { OPT_IDS = CLI_LONG, OPT_KV, OPT_LBACKEND };

static const struct option LOGITS_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"output", required_argument, 0, 'o'},
    {"ids", required_argument, 0, OPT_IDS}, {"kv-type", required_argument, 0, OPT_KV},
    {"threads", required_argument, 0, 't'}, {"backend", required_argument, 0, OPT_LBACKEND},
    {"verbose", no_argument, 0, 'v'}, CLI_PLACE_OPTIONS, {0}};

static cm_status logits_opt(void *user, int id, const char *flag, const char *v, cm_err *err)
{
    logits_opts *o = user;
    switch (id) {
    case CLI_POS: return cli_stray("logits", v, err);
    case 'm': o->model = v; return CM_OK;
    case 'o': o->out = v; return CM_OK;
    case OPT_IDS: o->ids = v; return CM_OK;
    case OPT_KV: return parse_kv_type(v, &o->kv, err);
    case 't': return arg_threads(v, err);
    case OPT_LBACKEND: o->backend = v; return CM_OK;
    case 'v': o->verbose = 1; return CM_OK;
    default: return cli_place_opt(id, flag, v, &o->place, err);
    }
}

static cm_status parse_logits(int argc, char **argv, logits_opts *o, int *help, cm_err *err)
{
    cm_status s = cli_getopt(argc, argv, "logits", LOGITS_OPTS, logits_opt, o, help, err);
    if (!s && !*help && (!o->model || !o->out || !o->ids))
        s = cm_fail(err, CM_E_USAGE, "logits needs -m MODEL, --ids LIST and -o OUT");
    return s;
}

static cm_status logits_run(const logits_opts *o, cm_err *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    float *rows = NULL;
    cm_ctx *ctx = NULL;
    cm_model m;
    const cm_backend_ops *be;
    cm_status s = cm_backend_choose(o->backend, &be, err);
    if (!s)
        s = parse_ids(o->ids, &ids, &n, err);
    if (s)
        return s;
    if ((s = cm_model_load(o->model, &m, err))) {
        free(ids);
        return s;
    }
    if (n > (size_t)1 << 20)
        s = cm_fail(err, CM_E_RANGE, "too many ids (%zu)", n);
    else if (!(rows = malloc(n * (size_t)m.hp.n_vocab * sizeof(float))))
        s = cm_fail(err, CM_E_NOMEM, "out of memory for %zu rows of logits", n);
    if (!s)
        s = cm_ctx_new_placed(&m, be, &o->place, (int)n, o->kv, 512, &ctx, err);
    if (!s)
        s = cm_eval(ctx, ids, (int)n, rows, err);
    if (!s)
        s = write_atomic(o->out, rows, n * (size_t)m.hp.n_vocab * sizeof(float), err);
    if (!s && o->verbose)
        print_backend_use(ctx);
    cm_ctx_free(ctx);
    free(rows);
    free(ids);
    cm_model_free(&m);
    return s;
}

int cli_logits(int argc, char **argv)
{
    logits_opts o = {.kv = CM_KV_F16, .place = CM_PLACE_AUTO};
    cm_err err = {0};
    int help = 0;
    if (parse_logits(argc, argv, &o, &help, &err))
        return cli_fail(&err);
    if (help) {
        fputs(LOGITS_HELP, stdout);
        return 0;
    }
    if (logits_run(&o, &err))
        return cli_fail(&err);
    return 0;
}

/* -------------------------------------------------------------- tokenize */

static const char TOKENIZE_HELP[] =
    "usage: codemoe tokenize -m MODEL (-p TEXT | -f FILE) [--bos]\n"
    "       codemoe tokenize -m MODEL --infill (--prefix TEXT | --prefix-file FILE)\n"
    "                        (--suffix TEXT | --suffix-file FILE) [--bos]\n"
    "\n"
    "Prints the token ids of the text as a JSON array on one line.  Special-\n"
    "token text is treated as plain text; no BOS unless --bos.  -f - reads\n"
    "standard input.  --infill prints the fill-in-the-middle prompt `codemoe run\n"
    "--infill` evaluates: <PRE> prefix <SUF> suffix <MID> with the model's own\n"
    "FIM tokens (a vocabulary without them is refused).\n";

enum { OPT_BOS = CLI_LONG, OPT_INFILL, OPT_PREFIX, OPT_SUFFIX, OPT_PREFIX_FILE, OPT_SUFFIX_FILE };

static const struct option TOKENIZE_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
    {"file", required_argument, 0, 'f'}, {"bos", no_argument, 0, OPT_BOS},
    {"infill", no_argument, 0, OPT_INFILL}, {"prefix", required_argument, 0, OPT_PREFIX},
    {"suffix", required_argument, 0, OPT_SUFFIX},
    {"prefix-file", required_argument, 0, OPT_PREFIX_FILE},
    {"suffix-file", required_argument, 0, OPT_SUFFIX_FILE}, {0}};

typedef struct {
    const char *model;
    cli_text text, prefix, suffix;
    int bos, infill;
} tokenize_opts;

static cm_status tokenize_opt(void *user, int id, const char *flag, const char *v, cm_err *err)
{
    tokenize_opts *o = user;
    switch (id) {
    case CLI_POS: return cli_stray("tokenize", v, err);
    case 'm': o->model = v; return CM_OK;
    case OPT_BOS: o->bos = 1; return CM_OK;
    case OPT_INFILL: o->infill = 1; return CM_OK;
    case 'p': case 'f': return cli_text_set(&o->text, flag, v, id == 'f', err);
    case OPT_PREFIX: case OPT_PREFIX_FILE:
        return cli_text_set(&o->prefix, flag, v, id == OPT_PREFIX_FILE, err);
    default: return cli_text_set(&o->suffix, flag, v, id == OPT_SUFFIX_FILE, err);
    }
}

static cm_status check_tokenize(const tokenize_opts *o, cm_err *err)
{
    if (!o->model)
        return cm_fail(err, CM_E_USAGE, "tokenize needs -m MODEL (see codemoe tokenize --help)");
    if (o->infill && (o->text.set || !o->prefix.set || !o->suffix.set))
        return cm_fail(err, CM_E_USAGE, "--infill needs --prefix/--prefix-file and "
                       "--suffix/--suffix-file, and no -p or -f");
    if (!o->infill && (o->prefix.set || o->suffix.set))
        return cm_fail(err, CM_E_USAGE, "--prefix and --suffix go with --infill");
    if (!o->infill && !o->text.set)
        return cm_fail(err, CM_E_USAGE, "tokenize needs -m MODEL and one of -p TEXT or -f FILE");
    return CM_OK;
}

static cm_status tokenize_texts(const tokenize_opts *o, const cm_tokenizer *tok, int32_t **ids,
                                size_t *n, cm_err *err)
{
    cli_buf a = {0}, b = {0};
    cm_status s = cli_text_read(o->infill ? &o->prefix : &o->text, &a, err);
    if (!s && o->infill)
        s = cli_text_read(&o->suffix, &b, err);
    if (!s && o->infill) {
        s = cm_tokenize_infill(tok, a.p, a.len, b.p, b.len, o->bos, NULL, ids, n, err);
        if (s == CM_E_UNSUPPORTED)
            s = cm_fail(err, s, "%s has no fill-in-the-middle tokens (%s), so --infill cannot "
                        "be used", o->model, CLI_FIM_KNOWN);
    } else if (!s)
        s = cm_tokenize(tok, a.p, a.len, o->bos, 0, ids, n, err);
    free(a.p);
    free(b.p);
    return s;
}

int cli_tokenize(int argc, char **argv)
{
    tokenize_opts o = {0};
    int help = 0;
    cm_err err = {0};
    cm_status s = cli_getopt(argc, argv, "tokenize", TOKENIZE_OPTS, tokenize_opt, &o, &help, &err);
    if (!s && help) {
        fputs(TOKENIZE_HELP, stdout);
        return 0;
    }
    if (!s)
        s = check_tokenize(&o, &err);
    if (s)
        return cli_fail(&err);
    int32_t *ids = NULL;
    size_t n = 0;
    gguf_file f = {0};
    cm_tokenizer *tok = NULL;
    /* only the tokenizer is loaded, so vocabulary-only files work too */
    if (!(s = gguf_open(o.model, &f, &err))) {
        s = cm_tokenizer_load(&f, &tok, &err);
        if (s == CM_E_RANGE)
            s = cm_fail(&err, CM_E_UNSUPPORTED, "%s has no tokenizer", o.model);
    }
    if (!s)
        s = tokenize_texts(&o, tok, &ids, &n, &err);
    if (!s) {
        putchar('[');
        for (size_t i = 0; i < n; i++)
            printf(i ? ", %d" : "%d", ids[i]);
        puts("]");
    }
    free(ids);
    if (tok)
        cm_tokenizer_free(tok);
    gguf_close(&f);
    return s ? cli_fail(&err) : 0;
}
