/* main.c - the codemoe command: dispatches to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "backends/cpu/cpu.h"
#include "cli/cli.h"
#include "engine/backend.h"
#include "config.h"

static const char USAGE[] =
    "usage: codemoe COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  run         generate a completion for a prompt\n"
    "  info        describe a model file\n"
    "  logits      write the logits of every position for a list of token ids\n"
    "  tokenize    print the token ids of a text\n"
    "  perplexity  perplexity (and KL divergence against a base) on a text or the code corpus\n"
    "  convert     convert a Hugging Face folder (safetensors) to GGUF\n"
    "  pack        build a language-expert pack from per-language models\n"
    "  route       which programming language (and expert) a prompt goes to\n"
    "  sweep       PPL and KLD of each quantization scheme on each language\n"
    "  quantize    requantize a GGUF to q4_k_m, q8_0, ... (llama-quantize's types)\n"
    "  upcycle     a dense model into a mixture of experts, checked to compute the same\n"
    "  grow        widen and deepen a model, checked to compute the same (Net2Net)\n"
    "  merge       merge fine-tunes of one base (average, task arithmetic, TIES)\n"
    "  bench       prompt and generation speed against the memory-bandwidth bound\n"
    "  serve       an HTTP server: OpenAI completions and chat, llama.cpp's /infill\n"
    "  eval        HumanEval / MultiPL-E pass@k, programs run in a sandbox\n"
    "\n"
    "`codemoe COMMAND --help` describes each command.\n"
    "environment: CODEMOE_ISA=scalar|avx2|avx512|neon forces a CPU kernel set;\n"
    "             CODEMOE_BACKEND=NAME picks the backend where --backend is not given.\n";

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"run", cli_run}, {"info", cli_info}, {"logits", cli_logits}, {"tokenize", cli_tokenize},
        {"perplexity", cli_perplexity},
        {"convert", cli_convert},
        {"pack", cli_pack},
        {"route", cli_route},
        {"sweep", cli_sweep},
        {"quantize", cli_quantize},
        {"upcycle", cli_upcycle}, {"grow", cli_grow}, {"merge", cli_merge},
        {"bench", cli_bench},
        {"serve", cli_serve},
        {"eval", cli_eval},
    };
    if (argc < 2) {
        fputs(USAGE, stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("codemoe %s\nbackends: %s\n", PACKAGE_VERSION, cm_backend_names());
        return 0;
    }
    char msg[256];
    if (cm_cpu_init(msg, sizeof msg) != 0) {
        fprintf(stderr, "codemoe: %s\n", msg);
        return 1;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name))
            return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "codemoe: unknown command '%s' (try codemoe --help)\n", argv[1]);
    return 2;
}
