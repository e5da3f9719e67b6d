/* cli_surgery.c - `codemoe upcycle`, `codemoe grow` and `codemoe merge`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "convert/quantize.h"
#include "surgery/surgery.h"

static const char UPCYCLE_HELP[] =
    "usage: codemoe upcycle IN.gguf OUT.gguf --experts E --top-k K [--noise S]\n"
    "                       [--seed N] [--type TYPE] [--check-tokens N]\n"
    "\n"
    "Turns a dense model (llama, qwen2, qwen3) into a token-level mixture of E\n"
    "experts with K used per token: each layer's feed-forward is copied into\n"
    "every expert (llama.cpp's stacked ffn_*_exps layout), a router\n"
    "ffn_gate_inp is added (small random weights, N(0, 0.02^2)), and the top-K\n"
    "weights are renormalised (<arch>.expert_weights_norm), so identical experts\n"
    "compute exactly the dense function.  qwen2 becomes qwen2moe, qwen3\n"
    "qwen3moe.  OUT is written to a temporary, loaded and run against IN on\n"
    "sample tokens, and renamed only if the check passes (F32 weights without\n"
    "noise: max |logits difference| <= 1e-5 x the largest |logit|, at least\n"
    "1e-5: rounding grows with the logits).\n"
    "\n"
    "  --experts E       experts per layer (1..4096)\n"
    "  --top-k K         experts used per token (1..E)\n"
    "  --noise S         add S x rms(W) x N(0, 1) to each expert's copy (default 0)\n"
    "  --seed N          seed of the noise and the router (default 1)\n"
    "  --type TYPE       same (default: each tensor keeps its type), f32, f16,\n"
    "                    bf16, q8_0, ... (norms and routers stay f32)\n"
    "  --check-tokens N  tokens of the check (default 16)\n";

static const char GROW_HELP[] =
    "usage: codemoe grow IN.gguf OUT.gguf [--width-mult M] [--embd-mult M]\n"
    "                    [--add-layers L] [--type TYPE] [--check-tokens N]\n"
    "\n"
    "Function-preserving growth (Net2Net) of a dense or mixture-of-experts\n"
    "model.  Feed-forward width: the hidden size (each routed expert's, for a\n"
    "MoE) becomes round(M x F); new unit j copies unit j mod F and every copy\n"
    "of a unit gets an equal share of its down-projection column.  Residual\n"
    "width: n_embd becomes round(M x E) by the same duplication, the copies\n"
    "scaled so that RMSNorm's mean of squares is unchanged and the norm\n"
    "weights scaled to match (exact for any M with RMSNorm; LayerNorm models\n"
    "need a whole M); attention grows with it by whole KV groups\n"
    "(round(M x n_kv) KV heads, each copying a head with its query heads,\n"
    "the output projection split between copies; the head size is kept).\n"
    "Depth: L new layers, spread evenly, each a copy of the layer before it\n"
    "with its output projections (attn_output, ffn_down and their biases)\n"
    "zero, so the residual stream passes through.  OUT is checked against IN\n"
    "like upcycle's (F32: max |logits difference| <= 1e-4 x the largest\n"
    "|logit|, at least 1e-4) before it is\n"
    "renamed into place.\n"
    "\n"
    "  --width-mult M    feed-forward width multiplier, >= 1 (default 1)\n"
    "  --embd-mult M     residual width (and heads) multiplier, >= 1 (default 1)\n"
    "  --add-layers L    layers to add (default 0)\n"
    "  --type TYPE       same (default), f32, f16, bf16, q8_0, ...\n"
    "  --check-tokens N  tokens of the check (default 16)\n";

static const char MERGE_HELP[] =
    "usage: codemoe merge [--base B.gguf] --method average|task-arithmetic|ties\n"
    "                     [--density D] [--ties-scope tensor|model] [--lambda L]\n"
    "                     [--type TYPE] A.gguf ... -o OUT.gguf\n"
    "\n"
    "Merges fine-tunes of one base model (same architecture, same tensors and\n"
    "shapes; any types, decoded to F32):\n"
    "  average           mean of the models (--base optional: only checked)\n"
    "  task-arithmetic   base + L x sum of (model - base)\n"
    "  ties              TIES-merging (Yadav et al. 2023): each task vector\n"
    "                    (model - base) trimmed to its D largest magnitudes (per\n"
    "                    tensor, or over the whole model), a sign elected per\n"
    "                    weight by the summed mass, the agreeing values\n"
    "                    averaged; base + L x that\n"
    "\n"
    "  --base B          the common base (needed by task-arithmetic and ties)\n"
    "  --density D       ties: fraction kept, in (0, 1] (default 0.2)\n"
    "  --ties-scope S    ties: where the fraction is taken: tensor (each tensor's\n"
    "                    top D, the default) or model (the top D of all weights\n"
    "                    together, as the paper does: two more passes over the\n"
    "                    inputs find the exact threshold)\n"
    "  --lambda L        task-arithmetic, ties: scale (default 1)\n"
    "  --type TYPE       output type: f32 (default), f16, bf16, q8_0, ...\n"
    "  -o OUT            the output file\n";

enum {
    OPT_EXPERTS = CLI_LONG, OPT_TOPK, OPT_NOISE, OPT_SEED, OPT_TYPE, OPT_CHECK, OPT_WIDTH,
    OPT_LAYERS, OPT_EMBD, OPT_BASE, OPT_METHOD, OPT_DENSITY, OPT_LAMBDA, OPT_SCOPE
};

static cm_status parse_type(const char *v, int allow_same, uint32_t *out, cm_err *err)
{
    char names[512];
    const cm_qmix *mix = cm_qmix_find(v);
    if (allow_same && !strcasecmp(v, "same")) {
        *out = CM_SURG_SAME;
        return CM_OK;
    }
    if (mix) {
        *out = mix->base;
        return CM_OK;
    }
    cm_qmix_names(names, sizeof names);
    return cm_fail(err, CM_E_USAGE, "--type: unknown type '%s' (valid: %s%s)", v,
                   allow_same ? "same, " : "", names);
}

/* ------------------------------------------------------------ upcycle, grow */

typedef struct {
    const char *pos[2];
    int n_pos, help, grow, set_experts, set_topk;
    cm_upcycle_opts u;
    cm_grow_opts g;
} sargs;

static const struct option UPCYCLE_OPTS[] = {
    {"experts", required_argument, 0, OPT_EXPERTS}, {"top-k", required_argument, 0, OPT_TOPK},
    {"noise", required_argument, 0, OPT_NOISE}, {"seed", required_argument, 0, OPT_SEED},
    {"type", required_argument, 0, OPT_TYPE}, {"check-tokens", required_argument, 0, OPT_CHECK},
    {0}};

static const struct option GROW_OPTS[] = {
    {"width-mult", required_argument, 0, OPT_WIDTH},
    {"embd-mult", required_argument, 0, OPT_EMBD},
    {"add-layers", required_argument, 0, OPT_LAYERS}, {"type", required_argument, 0, OPT_TYPE},
    {"check-tokens", required_argument, 0, OPT_CHECK}, {0}};

static cm_status surg_opt(void *user, int id, const char *flag, const char *v, cm_err *err)
{
    sargs *a = user;
    cm_surg_common *c = a->grow ? &a->g.c : &a->u.c;
    switch (id) {
    case CLI_POS:
        if (a->n_pos == 2)
            return cli_stray(a->grow ? "grow" : "upcycle", v, err);
        a->pos[a->n_pos++] = v;
        return CM_OK;
    case OPT_EXPERTS: a->set_experts = 1; return arg_int(flag, v, 1, 4096, &a->u.n_expert, err);
    case OPT_TOPK: a->set_topk = 1; return arg_int(flag, v, 1, 4096, &a->u.n_expert_used, err);
    case OPT_NOISE: return arg_float(flag, v, 0.0f, 10.0f, &a->u.noise, err);
    case OPT_SEED: return arg_u64(flag, v, &c->seed, err);
    case OPT_TYPE: return parse_type(v, 1, &c->type, err);
    case OPT_CHECK: return arg_int(flag, v, 1, 512, &c->n_check_tokens, err);
    case OPT_WIDTH: return arg_float(flag, v, 1.0f, 64.0f, &a->g.width_mult, err);
    case OPT_EMBD: return arg_float(flag, v, 1.0f, 64.0f, &a->g.embd_mult, err);
    default: return arg_int(flag, v, 0, 4096, &a->g.add_layers, err);
    }
}

static int report(cm_status s, const cm_err *err)
{
    return s ? cli_fail(err) : 0;
}

int cli_upcycle(int argc, char **argv)
{
    sargs a = {.u = {.c = {.log = stdout, .type = CM_SURG_SAME, .seed = 1},
                     .router_std = 0.02f}};
    cm_err err = {0};
    cm_status s = cli_getopt(argc, argv, "upcycle", UPCYCLE_OPTS, surg_opt, &a, &a.help, &err);
    if (!s && a.help) {
        fputs(UPCYCLE_HELP, stdout);
        return 0;
    }
    if (!s && (a.n_pos != 2 || !a.set_experts || !a.set_topk))
        s = cm_fail(&err, CM_E_USAGE, "usage: codemoe upcycle IN.gguf OUT.gguf --experts E "
                    "--top-k K (see codemoe upcycle --help)");
    if (!s)
        s = cm_upcycle(a.pos[0], a.pos[1], &a.u, NULL, &err);
    if (!s)
        printf("wrote %s\n", a.pos[1]);
    return report(s, &err);
}

int cli_grow(int argc, char **argv)
{
    sargs a = {.grow = 1, .g = {.c = {.log = stdout, .type = CM_SURG_SAME, .seed = 1},
                                .width_mult = 1.0f, .embd_mult = 1.0f}};
    cm_err err = {0};
    cm_status s = cli_getopt(argc, argv, "grow", GROW_OPTS, surg_opt, &a, &a.help, &err);
    if (!s && a.help) {
        fputs(GROW_HELP, stdout);
        return 0;
    }
    if (!s && a.n_pos != 2)
        s = cm_fail(&err, CM_E_USAGE, "usage: codemoe grow IN.gguf OUT.gguf --width-mult M "
                    "--add-layers L (see codemoe grow --help)");
    if (!s && a.g.width_mult == 1.0f && a.g.embd_mult == 1.0f && a.g.add_layers == 0)
        s = cm_fail(&err, CM_E_USAGE, "grow: nothing to do (give --width-mult or --embd-mult "
                    "above 1, or --add-layers)");
    if (!s)
        s = cm_grow(a.pos[0], a.pos[1], &a.g, NULL, &err);
    if (!s)
        printf("wrote %s\n", a.pos[1]);
    return report(s, &err);
}

/* ------------------------------------------------------------ merge */

typedef struct {
    const char **models;
    int n_models, help, set_method;
    const char *base, *out;
    cm_merge_opts o;
} margs;

static const struct option MERGE_OPTS[] = {
    {"base", required_argument, 0, OPT_BASE}, {"method", required_argument, 0, OPT_METHOD},
    {"density", required_argument, 0, OPT_DENSITY}, {"lambda", required_argument, 0, OPT_LAMBDA},
    {"ties-scope", required_argument, 0, OPT_SCOPE},
    {"type", required_argument, 0, OPT_TYPE}, {"output", required_argument, 0, 'o'}, {0}};

static cm_status parse_method(const char *v, cm_merge_method *out, cm_err *err)
{
    static const char *const names[] = {"average", "task-arithmetic", "ties"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(v, names[i])) {
            *out = (cm_merge_method)i;
            return CM_OK;
        }
    return cm_fail(err, CM_E_USAGE, "--method: unknown method '%s' (valid: average, "
                   "task-arithmetic, ties)", v);
}

static cm_status merge_opt(void *user, int id, const char *flag, const char *v, cm_err *err)
{
    margs *a = user;
    switch (id) {
    case CLI_POS: a->models[a->n_models++] = v; return CM_OK;
    case OPT_BASE: a->base = v; return CM_OK;
    case 'o': a->out = v; return CM_OK;
    case OPT_METHOD: a->set_method = 1; return parse_method(v, &a->o.method, err);
    case OPT_DENSITY: return arg_float(flag, v, 1e-6f, 1.0f, &a->o.density, err);
    case OPT_LAMBDA: return arg_float(flag, v, -100.0f, 100.0f, &a->o.lambda, err);
    case OPT_SCOPE:
        if (strcmp(v, "tensor") && strcmp(v, "model"))
            return cm_fail(err, CM_E_USAGE, "--ties-scope: '%s' is not tensor or model", v);
        a->o.scope = strcmp(v, "model") ? CM_TIES_TENSOR : CM_TIES_MODEL;
        return CM_OK;
    default: return parse_type(v, 0, &a->o.type, err);
    }
}

int cli_merge(int argc, char **argv)
{
    margs a = {.o = {.log = stdout, .type = 0 /* F32 */, .density = 0.2f, .lambda = 1.0f}};
    cm_err err = {0};
    a.models = calloc((size_t)argc + 1, sizeof *a.models);
    if (!a.models) {
        cm_fail(&err, CM_E_NOMEM, "out of memory");
        return cli_fail(&err);
    }
    cm_status s = cli_getopt(argc, argv, "merge", MERGE_OPTS, merge_opt, &a, &a.help, &err);
    if (!s && a.help) {
        fputs(MERGE_HELP, stdout);
        free(a.models);
        return 0;
    }
    if (!s && (!a.out || !a.n_models || !a.set_method))
        s = cm_fail(&err, CM_E_USAGE, "usage: codemoe merge [--base B.gguf] --method "
                    "average|task-arithmetic|ties A.gguf ... -o OUT.gguf (see codemoe merge "
                    "--help)");
    if (!s)
        s = cm_merge(a.base, a.models, a.n_models, a.out, &a.o, &err);
    if (!s)
        printf("wrote %s\n", a.out);
    free(a.models);
    return report(s, &err);
}
