/* cli_serve.c - `codemoe serve`: an HTTP server (OpenAI's completions and
 * chat, llama.cpp's /infill) for editors, on GNU libmicrohttpd. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "config.h"
#include "util/threads.h"
#ifdef CM_HAVE_MICROHTTPD
#include "server/server.h"
#endif

static const char SERVE_HELP[] =
    "usage: codemoe serve [-m MODEL] [--host ADDR] [--port N] [--api-key KEY] [options]\n"
    "\n"
    "Serves one model over HTTP until SIGTERM or SIGINT (which let the running\n"
    "request finish).  Endpoints: POST /v1/completions, /v1/chat/completions\n"
    "(OpenAI's fields, stream: true for server-sent events), /infill (llama.cpp's\n"
    "fields), /tokenize, /detokenize; GET /v1/models, /health, /metrics\n"
    "(Prometheus).  --parallel N requests generate together (their tokens\n"
    "batched); more wait for a slot.  A prompt that starts with what a slot's\n"
    "cache holds (an editor resending a file) evaluates only the rest.\n"
    "\n"
    "  -m, --model FILE        GGUF model (default: the installed default model)\n"
    "      --host ADDR         address to listen on (default 127.0.0.1: this machine\n"
    "                          only; 0.0.0.0 for every interface)\n"
    "      --port N            TCP port (default 8080; 0: any free port, printed)\n"
    "      --api-key KEY       require Authorization: Bearer KEY (not for /health)\n"
    "      --max-body BYTES    largest request body, e.g. 4M (default 4M; more: 413)\n"
    "      --timeout S         close a connection idle for S seconds (default 600)\n"
    "  -c, --ctx-size N        context length of each slot (default: the model's, at\n"
    "                          most 4096; 0: the model's trained context)\n"
    "  -np, --parallel N       slots: requests generated together (default 1)\n"
    "      --chat-template NAME  chatml, llama2 (= codellama), llama3, deepseek-coder,\n"
    "                          zephyr or gemma (default: the model's, by its markers)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "      --lanes N           scheduler threads, each stepping its own share of the\n"
    "                          slots with its own share of the threads (default: on\n"
    "                          the CPU, for a model reading up to 64 MiB a token,\n"
    "                          one per 8 slots up to -t; else 1)\n"
    "      --kv-type T         KV cache type: f16 (default), f32 or q8_0\n"
    "      --backend B         cpu (default), ref, cuda or vulkan (codemoe --version)\n"
    PLACE_HELP
    "  -h, --help              this text\n";

enum {
    OPT_HOST = CLI_LONG, OPT_PORT, OPT_API_KEY, OPT_MAX_BODY, OPT_TIMEOUT, OPT_KV, OPT_BACKEND,
    OPT_PARALLEL, OPT_TEMPLATE, OPT_LANES
};

static const struct option SERVE_OPTS[] = {
    {"model", required_argument, 0, 'm'}, {"host", required_argument, 0, OPT_HOST},
    {"port", required_argument, 0, OPT_PORT}, {"api-key", required_argument, 0, OPT_API_KEY},
    {"max-body", required_argument, 0, OPT_MAX_BODY},
    {"timeout", required_argument, 0, OPT_TIMEOUT}, {"ctx-size", required_argument, 0, 'c'},
    {"threads", required_argument, 0, 't'}, {"kv-type", required_argument, 0, OPT_KV},
    {"backend", required_argument, 0, OPT_BACKEND}, {"parallel", required_argument, 0, OPT_PARALLEL},
    {"np", required_argument, 0, OPT_PARALLEL},
    {"chat-template", required_argument, 0, OPT_TEMPLATE}, {"lanes", required_argument, 0, OPT_LANES},
    CLI_PLACE_OPTIONS, {0}};

typedef struct {
    const char *model, *host, *api_key, *backend, *chat_template;
    int port, timeout, n_ctx, n_slots, n_lanes;
    uint64_t max_body;
    cm_kv_type kv;
    cm_place_opts place;
} serve_opts;

static cm_status serve_opt(void *user, int id, const char *a, const char *v, cm_err *err)
{
    serve_opts *o = user;
    switch (id) {
    case CLI_POS: return cli_stray("serve", v, err);
    case 'm': o->model = v; return CM_OK;
    case OPT_HOST: o->host = v; return CM_OK;
    case OPT_PORT: return arg_int(a, v, 0, 65535, &o->port, err);
    case OPT_API_KEY:
        o->api_key = v;
        return *v ? CM_OK : cm_fail(err, CM_E_USAGE, "option %s: the key is empty", a);
    case OPT_MAX_BODY: {
        cm_status s = arg_size(a, v, &o->max_body, err);
        if (!s && (o->max_body < 64 || o->max_body > ((uint64_t)1 << 30)))
            s = cm_fail(err, CM_E_USAGE, "option %s: between 64 bytes and 1G", a);
        return s;
    }
    case OPT_TIMEOUT: return arg_int(a, v, 1, 86400, &o->timeout, err);
    case 'c': return arg_int(a, v, 0, 1 << 24, &o->n_ctx, err);
    case 't': return arg_threads(v, err);
    case OPT_KV: return parse_kv_type(v, &o->kv, err);
    case OPT_BACKEND: o->backend = v; return CM_OK;
    case OPT_PARALLEL: return arg_int(a, v, 1, 256, &o->n_slots, err);
    case OPT_LANES: return arg_int(a, v, 1, 16, &o->n_lanes, err);
    case OPT_TEMPLATE: o->chat_template = v; return CM_OK;
    default: return cli_place_opt(id, a, v, &o->place, err);
    }
}

#ifdef CM_HAVE_MICROHTTPD
static cm_status serve(const serve_opts *o, cm_err *err)
{
    srv_engine e;
    srv_engine_opts eo = {o->model, o->backend, o->place, o->n_ctx, o->kv, cm_max_threads(),
                          o->n_slots, o->chat_template, o->n_lanes};
    srv_http_opts ho = {o->host, o->port, o->api_key, (size_t)o->max_body, (unsigned)o->timeout};
    double t0 = now_seconds();
    cm_status s = srv_engine_init(&e, &eo, err);
    if (s)
        return s;
    fprintf(stderr, "[codemoe] loaded %s in %.2f s (%s%s), %d slot%s of %d tokens\n", o->model,
            now_seconds() - t0, e.m.hp.arch_name,
            e.m.is_pack ? ", language-expert pack routed per request" : "", e.n_slots,
            e.n_slots == 1 ? "" : "s", e.o.n_ctx);
    if (!e.tmpl_ok)
        fprintf(stderr, "[codemoe] chat is refused: %s\n", e.tmpl_err.msg);
    else
        fprintf(stderr, "[codemoe] chat template: %s\n", srv_template_name(e.tmpl));
    s = srv_serve(&e, &ho, err);
    srv_engine_free(&e);
    if (!s)
        fprintf(stderr, "[codemoe] stopped\n");
    return s;
}
#else
static cm_status serve(const serve_opts *o, cm_err *err)
{
    (void)o;
    return cm_fail(err, CM_E_UNSUPPORTED, "this build has no HTTP server library: codemoe serve "
                   "needs GNU libmicrohttpd (apt-get install libmicrohttpd-dev, then ./configure "
                   "and make again)");
}
#endif

int cli_serve(int argc, char **argv)
{
    serve_opts o = {.host = "127.0.0.1", .port = 8080, .timeout = 600, .n_ctx = -1, .n_slots = 1,
                    .max_body = 4u << 20, .kv = CM_KV_F16, .place = CM_PLACE_AUTO};
    cm_err err = {0};
    int help = 0;
    char path[1024];
    cm_status s = cli_getopt(argc, argv, "serve", SERVE_OPTS, serve_opt, &o, &help, &err);
    if (!s && help) {
        fputs(SERVE_HELP, stdout);
        return 0;
    }
    if (!s && !o.model && !(o.model = default_model_path(path, sizeof path)))
        s = cm_fail(&err, CM_E_IO, "no model given and no default model is installed: "
                    "pass -m FILE.gguf");
    if (!s)
        s = serve(&o, &err);
    return s ? cli_fail(&err) : 0;
}
