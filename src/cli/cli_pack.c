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

int cli_pack(int argc, char **argv)
{
    cm_pack_input in[CM_PACK_MAX_MEMBERS];
    char names[CM_PACK_MAX_MEMBERS][32];
    const char *out = NULL;
    int n = 0;
    cm_err err = {0};
    cm_status s = CM_OK;
    for (int i = 1; i < argc && !s; i++) {
        const char *a = argv[i], *v;
        if (arg_is(a, "-h", "--help")) {
            fputs(PACK_HELP, stdout);
            return 0;
        }
        if ((s = arg_value(argc, argv, &i, &v, &err)))
            break;
        if ((!strcmp(a, "--expert") || !strcmp(a, "--fallback")) && n == CM_PACK_MAX_MEMBERS)
            s = cm_fail(&err, CM_E_USAGE, "at most %d members", CM_PACK_MAX_MEMBERS);
        else if (!strcmp(a, "--expert") && !(s = parse_expert(v, &in[n], &err))) {
            size_t len = (size_t)(strchr(v, '=') - v);
            memcpy(names[n], v, len);
            names[n][len] = 0;
            in[n].name = names[n];
            n++;
        } else if (!strcmp(a, "--fallback")) {
            snprintf(names[n], sizeof names[n], "%s", CM_PACK_FALLBACK);
            in[n].name = names[n];
            in[n++].path = v;
        } else if (arg_is(a, "-o", "--output"))
            out = v;
        else if (strcmp(a, "--expert"))
            s = cm_fail(&err, CM_E_USAGE, "unknown option %s (see codemoe pack --help)", a);
    }
    if (!s && (!out || n == 0))
        s = cm_fail(&err, CM_E_USAGE, "pack needs -o OUT.gguf and at least one --expert LANG=FILE");
    for (int i = 0; !s && i < n; i++)
        if (!strcmp(in[i].path, out))
            s = cm_fail(&err, CM_E_USAGE, "the output %s is also an input", out);
    if (!s)
        s = cm_pack_build(in, n, out, stderr, &err);
    return s ? cli_fail(&err) : 0;
}
