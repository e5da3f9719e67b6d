/* cli_route.c - `codemoe route`: which language, and which expert, a prompt
 * would be routed to. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "experts/pack.h"
#include "experts/router.h"

static const char ROUTE_HELP[] =
    "usage: codemoe route [-m MODEL] (-p TEXT | -f FILE) [options]\n"
    "\n"
    "Prints the prompt's language (c, cpp, python, java, javascript, go, rust or\n"
    "unknown) alone on the first line, the expert that would run it alone on the\n"
    "second, then one line per language with the classifier's score.  Evidence,\n"
    "strongest first: --lang, the file's extension, a shebang or vim/Emacs\n"
    "modeline in the file, the classifier over the text (below the threshold the\n"
    "language is unknown and the fallback runs).\n"
    "\n"
    "  -m, --model FILE     language-expert pack: the second line names its member\n"
    "  -p, --prompt TEXT    the prompt text\n"
    "  -f, --file FILE      read the prompt from FILE\n"
    "      --no-extension   ignore the file name, so the text alone decides\n"
    "      --lang L         the language, decided by the caller\n"
    "      --threshold X    classifier confidence needed, 0..1 (default 0.5)\n"
    "  -h, --help           this text\n"
    "\n"
    "environment: CODEMOE_ROUTER=FILE uses that router data instead of the\n"
    "installed router.bin.\n";

typedef struct {
    const char *model, *text, *file, *lang;
    int no_extension;
    float threshold;
} route_opts;

static cm_status check_lang(const char *v, cm_err *err)
{
    if (cm_lang_canonical(v))
        return CM_OK;
    return cm_fail(err, CM_E_USAGE,
                   "option --lang: '%s' is not one of c, cpp, python, java, javascript, go, rust",
                   v);
}

enum { OPT_NO_EXT = CLI_LONG, OPT_LANG, OPT_THRESHOLD };

static const struct option ROUTE_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
    {"file", required_argument, 0, 'f'}, {"no-extension", no_argument, 0, OPT_NO_EXT},
    {"lang", required_argument, 0, OPT_LANG}, {"threshold", required_argument, 0, OPT_THRESHOLD},
    {0}};

static cm_status route_opt(void *user, int id, const char *flag, const char *v, cm_err *err)
{
    route_opts *o = user;
    switch (id) {
    case CLI_POS: return cm_fail(err, CM_E_USAGE, "unexpected argument '%s' (a file needs -f)", v);
    case 'm': o->model = v; break;
    case 'p': o->text = v; break;
    case 'f': o->file = v; break;
    case OPT_NO_EXT: o->no_extension = 1; break;
    case OPT_LANG: return check_lang(o->lang = v, err);
    default: return arg_float(flag, v, 0.0f, 1.0f, &o->threshold, err);
    }
    return CM_OK;
}

/* Returns CM_OK with *help set for -h. */
static cm_status parse(int argc, char **argv, route_opts *o, int *help, cm_err *err)
{
    cm_status s = cli_getopt(argc, argv, "route", ROUTE_OPTS, route_opt, o, help, err);
    if (!s && !*help && !o->text == !o->file)
        s = cm_fail(err, CM_E_USAGE, "route needs one of -p TEXT or -f FILE");
    return s;
}

/* The member of pack MODEL that runs a prompt routed to rt->lang, as
 * `codemoe run` chooses it: that expert, else the fallback, else the most
 * probable language the pack has.  Without a model: the language itself,
 * or "fallback" when unknown. */
static cm_status expert_for(const char *model, const cm_router *r, const cm_route *rt,
                            char *out, size_t cap, cm_err *err)
{
    char names[CM_PACK_MAX_MEMBERS][32];
    gguf_file f = {0};
    if (!model) {
        snprintf(out, cap, "%.31s", strcmp(rt->lang, "unknown") ? rt->lang : CM_PACK_FALLBACK);
        return CM_OK;
    }
    cm_status s = gguf_open(model, &f, err);
    if (s)
        return s;
    int n = cm_pack_members(&f, names, CM_PACK_MAX_MEMBERS);
    if (n == 0)
        s = cm_fail(err, CM_E_UNSUPPORTED, "%s is not a language-expert pack (codemoe pack)", model);
    else if (cm_pack_has_member(&f, rt->lang))
        snprintf(out, cap, "%.31s", rt->lang);
    else if (cm_pack_has_member(&f, CM_PACK_FALLBACK))
        snprintf(out, cap, "%.31s", CM_PACK_FALLBACK);
    else {
        float best = -1;
        for (int i = 0; i < n; i++) {
            int li = cm_router_lang_index(r, names[i]);
            float p = li >= 0 && li < rt->n_langs ? rt->probs[li] : 0.0f;
            if (p > best)
                best = p, snprintf(out, cap, "%.31s", names[i]);
        }
    }
    gguf_close(&f);
    return s;
}

static cm_status load_router(cm_router **r, cm_err *err)
{
    char path[4096];
    if (!cm_router_default_path(path, sizeof path))
        return cm_fail(err, CM_E_IO, "cannot find the router data router.bin "
                                     "(set CODEMOE_ROUTER=FILE)");
    return cm_router_load(path, r, err);
}

static void print_route(const cm_router *r, const cm_route *rt, const char *expert)
{
    printf("%s\n%s\n", rt->lang, expert);
    for (int i = 0; i < rt->n_langs; i++)
        printf("%s %.4f\n", cm_router_lang(r, i), (double)rt->probs[i]);
}

int cli_route(int argc, char **argv)
{
    route_opts o = {.threshold = CM_ROUTER_DEFAULT_THRESHOLD};
    cm_err err = {0};
    int help = 0;
    cm_status s = parse(argc, argv, &o, &help, &err);
    if (s)
        return cli_fail(&err);
    if (help) {
        fputs(ROUTE_HELP, stdout);
        return 0;
    }
    char *buf = NULL;
    size_t len = o.text ? strlen(o.text) : 0;
    cm_router *r = NULL;
    if (o.file)
        s = read_file(o.file, &buf, &len, &err);
    if (!s)
        s = load_router(&r, &err);
    if (!s) {
        const char *text = o.file ? buf : o.text;
        char expert[32];
        /* Hints (shebang, modeline) only for files: the prompt came from one. */
        cm_route_opts ro = {.lang = o.lang, .filename = o.no_extension ? NULL : o.file,
                            .use_hints = o.file != NULL, .threshold = o.threshold};
        cm_route rt;
        cm_route_decide(r, &ro, text, len, &rt);
        s = expert_for(o.model, r, &rt, expert, sizeof expert, &err);
        if (!s)
            print_route(r, &rt, expert);
    }
    cm_router_free(r);
    free(buf);
    return s ? cli_fail(&err) : 0;
}
