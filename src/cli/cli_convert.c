/* cli_convert.c - `codemoe convert`: Hugging Face folder -> GGUF. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "convert/convert.h"
#include "quant/quant.h"
#include "convert/quantize.h"

static const char CONVERT_HELP[] =
    "usage: codemoe convert HF_DIR -o OUT.gguf [--type f32|f16|bf16|q8_0|q4_0|q4_k_m|...] [-v]\n"
    "\n"
    "Converts a Hugging Face model folder (config.json, model.safetensors or\n"
    "shards with model.safetensors.index.json, and tokenizer.model or\n"
    "tokenizer.json when present) to GGUF with the metadata keys and tensor\n"
    "names llama.cpp uses, so the file also loads there.\n"
    "Architectures: llama, mistral, mixtral, qwen2, qwen3, qwen2_moe, qwen3_moe,\n"
    "gpt_bigcode (starcoder), phi (phi-2), starcoder2.\n"
    "\n"
    "  -o, --output OUT  file to write; it appears only when complete\n"
    "  --type TYPE       weight type, default f16.  Norms, biases, routers and\n"
    "                    1-D tensors stay f32.  f32, f16, bf16, q8_0: as\n"
    "                    llama.cpp's converter (rows that do not fill whole\n"
    "                    q8_0 blocks fall back to f16).  q4_0, q4_1, q5_0, q5_1,\n"
    "                    q2_k, q2_k_s, q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k: the\n"
    "                    tensor types and bytes llama-quantize would write from\n"
    "                    the f32 file (see codemoe quantize --help)\n"
    "  -t N              threads for quantization\n"
    "  -v, --verbose     list every tensor written\n"
    "\n"
    "A folder without tokenizer files still converts: `codemoe logits` works on\n"
    "the result, `codemoe run` needs a tokenizer.\n";

static cm_status type_option(cm_convert_opts *o, const char *v, cm_err *err)
{
    char names[512];
    if (cm_convert_type(v, &o->type, NULL) == 0) {
        o->mix = v;
        return CM_OK;
    }
    cm_qmix_names(names, sizeof names);
    return cm_fail(err, CM_E_USAGE, "option --type: '%s' is not one of %s", v, names);
}

enum { OPT_TYPE = CLI_LONG };

static const struct option CONVERT_OPTS[] = {
    {"output", required_argument, 0, 'o'}, {"type", required_argument, 0, OPT_TYPE},
    {"outtype", required_argument, 0, OPT_TYPE}, {"threads", required_argument, 0, 't'},
    {"verbose", no_argument, 0, 'v'}, {0}};

static cm_status convert_opt(void *user, int id, const char *flag, const char *v, cm_err *err)
{
    cm_convert_opts *o = user;
    (void)flag;
    switch (id) {
    case CLI_POS:
        if (o->hf_dir)
            return cm_fail(err, CM_E_USAGE, "convert takes one folder (got '%s' and '%s')",
                           o->hf_dir, v);
        o->hf_dir = v;
        return CM_OK;
    case 'o': o->out_path = v; return CM_OK;
    case OPT_TYPE: return type_option(o, v, err);
    case 't': return arg_threads(v, err);
    default: o->verbose = 1; return CM_OK;
    }
}

static cm_status parse_convert(int argc, char **argv, cm_convert_opts *o, int *help, cm_err *err)
{
    cm_status s = cli_getopt(argc, argv, "convert", CONVERT_OPTS, convert_opt, o, help, err);
    if (!s && !*help && (!o->hf_dir || !o->out_path))
        s = cm_fail(err, CM_E_USAGE, "convert needs HF_DIR and -o OUT.gguf (see codemoe convert "
                    "--help)");
    return s;
}

int cli_convert(int argc, char **argv)
{
    cm_convert_opts o = {.type = CM_TYPE_F16, .log = stderr};
    cm_err err = {0};
    int help = 0;
    if (parse_convert(argc, argv, &o, &help, &err))
        return cli_fail(&err);
    if (help) {
        fputs(CONVERT_HELP, stdout);
        return 0;
    }
    cli_progress pr;
    if (!o.verbose) /* (its tensor lines go to stderr too) */
        cli_progress_attach(&pr, "convert", &o.progress, &o.progress_ctx);
    if (cm_convert(&o, NULL, &err))
        return cli_fail(&err);
    return 0;
}
