/* cli_pack.c - `codemoe pack`: language experts into one file. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "experts/pack.h"

static const char PACK_HELP[] =
    "usage: codemoe pack -o OUT.gguf --expert LANG=FILE [--expert LANG=FILE]... [--fallback FILE]\n"
    "\n"
    "Builds a language-expert pack: one GGUF file with one expert model per\n"
    "programming language (c, cpp, python, java, javascript, go, rust) and an\n"
    "optional generalist used when the router is unsure.  The members must share\n"
    "architecture, hyper-parameters, tokenizer and tensor shapes; tensors that are\n"
    "identical in all of them (e.g. frozen embeddings and attention) are stored once.\n"
    "`codemoe run -m OUT.gguf` routes each prompt to its expert and loads only it.\n";

static cm_status parse_expert(const char *v, cm_pack_input *in, cm_err *err)
{
    const char *eq = strchr(v, '=');
    static const size_t max_name = 31;
    if (!eq || eq == v || !eq[1] || (size_t)(eq - v) > max_name)
        return cm_fail(err, CM_E_USAGE, "option --expert: '%s' is not LANG=FILE", v);
    in->name = v; /* NUL-terminated below by the caller's copy */
    in->path = eq + 1;
    return CM_OK;
}

enum { OPT_EXPERT = CLI_LONG, OPT_FALLBACK };

static const struct option PACK_OPTS[] = {
    {"output", required_argument, 0, 'o'}, {"expert", required_argument, 0, OPT_EXPERT},
    {"fallback", required_argument, 0, OPT_FALLBACK}, {0}};

typedef struct {
    cm_pack_input in[CM_PACK_MAX_MEMBERS];
    char names[CM_PACK_MAX_MEMBERS][32];
    const char *out;
    int n;
} pack_args;

static cm_status pack_opt(void *user, int id, const char *flag, const char *v, cm_err *err)
{
    pack_args *p = user;
    (void)flag;
    if (id == CLI_POS)
        return cli_stray("pack", v, err);
    if (id == 'o') {
        p->out = v;
        return CM_OK;
    }
    if (p->n == CM_PACK_MAX_MEMBERS)
        return cm_fail(err, CM_E_USAGE, "at most %d members", CM_PACK_MAX_MEMBERS);
    if (id == OPT_FALLBACK) {
        snprintf(p->names[p->n], sizeof p->names[p->n], "%s", CM_PACK_FALLBACK);
        p->in[p->n].name = p->names[p->n];
        p->in[p->n++].path = v;
        return CM_OK;
    }
    cm_status s = parse_expert(v, &p->in[p->n], err);
    if (!s) { /* the name, NUL-terminated in our copy */
        size_t len = (size_t)(strchr(v, '=') - v);
        memcpy(p->names[p->n], v, len);
        p->names[p->n][len] = 0;
        p->in[p->n].name = p->names[p->n];
        p->n++;
    }
    return s;
}

int cli_pack(int argc, char **argv)
{
    pack_args p = {.n = 0};
    cm_err err = {0};
    int help = 0;
    cm_status s = cli_getopt(argc, argv, "pack", PACK_OPTS, pack_opt, &p, &help, &err);
    if (!s && help) {
        fputs(PACK_HELP, stdout);
        return 0;
    }
    if (!s && (!p.out || p.n == 0))
        s = cm_fail(&err, CM_E_USAGE, "pack needs -o OUT.gguf and at least one --expert LANG=FILE");
    for (int i = 0; !s && i < p.n; i++)
        if (!strcmp(p.in[i].path, p.out))
            s = cm_fail(&err, CM_E_USAGE, "the output %s is also an input", p.out);
    if (!s)
        s = cm_pack_build(p.in, p.n, p.out, stderr, &err);
    return s ? cli_fail(&err) : 0;
}
