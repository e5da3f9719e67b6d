/* http.c - `codemoe serve` on GNU libmicrohttpd: one thread per connection
 * (a generating request blocks only its own connection; /health and
 * /metrics answer meanwhile), requests that generate take one of the
 * engine's slots (sched.c). */
#define _GNU_SOURCE
#include "server/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/metrics.h"

typedef struct {
    srv_engine *e;
    const srv_http_opts *o;
    srv_metrics metrics;
    atomic_int in_flight;
    atomic_ullong ids;
} server;

/* One request, from its headers to its last byte (MHD's con_cls). */
typedef struct {
    srv_endpoint ep;
    int status;
    double t0;
    char *body;
    size_t len, cap;
    int too_big, replied;
} req_ctx;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- responses */

static enum MHD_Result send_buf(struct MHD_Connection *c, req_ctx *q, int status,
                                const char *ctype, char *buf, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, buf ? buf : (char *)"", buf ? MHD_RESPMEM_MUST_FREE
                                                                         : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(buf);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (status == 405)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, q->ep == SRV_EP_HEALTH ||
                                q->ep == SRV_EP_MODELS || q->ep == SRV_EP_METRICS ? "GET" : "POST");
    if (status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    q->status = status, q->replied = 1;
    return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *c, req_ctx *q, int status, char *buf,
                                 size_t len)
{
    return send_buf(c, q, status, "application/json; charset=utf-8", buf, len);
}

static const char *error_type(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 500: return "server_error";
    case 503: return "unavailable_error";
    default: return "invalid_request_error";
    }
}

/* OpenAI's error object: {"error": {"message", "type", "code"}}. */
static enum MHD_Result send_error(struct MHD_Connection *c, req_ctx *q, int status,
                                  const char *msg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return MHD_NO;
    fputs("{\"error\": {\"message\": ", f);
    srv_json_str(f, msg, strlen(msg));
    fprintf(f, ", \"type\": \"%s\", \"code\": %d}}\n", error_type(status), status);
    fclose(f);
    return send_json(c, q, status, buf, len);
}

/* What a failed cm_status is to a client: its fault (400) or ours (500). */
static int status_of(cm_status s)
{
    return s == CM_E_NOMEM || s == CM_E_IO ? 500 : 400;
}

static enum MHD_Result send_fail(struct MHD_Connection *c, req_ctx *q, const cm_err *err)
{
    return send_error(c, q, status_of(err->code), err->msg);
}

/* ---- routes */

static const struct {
    const char *path;
    srv_endpoint ep;
} routes[] = {
    {"/health", SRV_EP_HEALTH}, {"/v1/health", SRV_EP_HEALTH},
    {"/v1/models", SRV_EP_MODELS}, {"/models", SRV_EP_MODELS},
    {"/tokenize", SRV_EP_TOKENIZE}, {"/detokenize", SRV_EP_DETOKENIZE},
    {"/v1/completions", SRV_EP_COMPLETIONS}, {"/completions", SRV_EP_COMPLETIONS},
    {"/v1/chat/completions", SRV_EP_CHAT}, {"/chat/completions", SRV_EP_CHAT},
    {"/infill", SRV_EP_INFILL}, {"/metrics", SRV_EP_METRICS},
};

static srv_endpoint find_route(const char *url)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(url, routes[i].path))
            return routes[i].ep;
    return SRV_EP_OTHER;
}

static int is_get(srv_endpoint ep)
{
    return ep == SRV_EP_HEALTH || ep == SRV_EP_MODELS || ep == SRV_EP_METRICS;
}

/* Compares without stopping at the first difference, so the time taken
 * says nothing about how much of the key a guess got right. */
static int same_secret(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = la != lb;
    for (size_t i = 0; i < lb; i++)
        d |= (unsigned char)(a[i < la ? i : 0] ^ b[i]);
    return d == 0;
}

static int authorized(const server *sv, struct MHD_Connection *c, srv_endpoint ep)
{
    if (!sv->o->api_key || ep == SRV_EP_HEALTH)
        return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    return h && !strncmp(h, "Bearer ", 7) && same_secret(h + 7, sv->o->api_key);
}

/* Checks made on the headers alone, before any body is read; returns 1
 * when it answered. */
static int precheck(server *sv, struct MHD_Connection *c, req_ctx *q, const char *method,
                    enum MHD_Result *ret)
{
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    int want_get = is_get(q->ep);
    char msg[160];
    if (q->ep == SRV_EP_OTHER)
        *ret = send_error(c, q, 404, "no such endpoint");
    else if (!authorized(sv, c, q->ep))
        *ret = send_error(c, q, 401, "invalid or missing API key (send Authorization: Bearer KEY)");
    else if (strcmp(method, want_get ? "GET" : "POST")) {
        snprintf(msg, sizeof msg, "%s takes %s, not %.20s", srv_endpoint_name(q->ep),
                 want_get ? "GET" : "POST", method);
        *ret = send_error(c, q, 405, msg);
    } else if (cl && strtoull(cl, NULL, 10) > sv->o->max_body) {
        snprintf(msg, sizeof msg, "the request body is larger than %zu bytes (--max-body)",
                 sv->o->max_body);
        *ret = send_error(c, q, 413, msg);
    } else
        return 0;
    return 1;
}

/* Keeps the body, up to --max-body bytes (chunked uploads have no length
 * to check first). */
static void take_body(server *sv, req_ctx *q, const char *data, size_t n)
{
    if (q->too_big || q->len + n > sv->o->max_body) {
        q->too_big = 1;
        return;
    }
    if (q->len + n + 1 > q->cap) {
        size_t cap = (q->len + n + 1) * 2;
        char *p = realloc(q->body, cap);
        if (!p) {
            q->too_big = 1;
            return;
        }
        q->body = p, q->cap = cap;
    }
    memcpy(q->body + q->len, data, n);
    q->len += n;
}

/* ---- GET endpoints */

static enum MHD_Result get_models(server *sv, struct MHD_Connection *c, req_ctx *q)
{
    const srv_engine *e = sv->e;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return MHD_NO;
    fputs("{\"object\": \"list\", \"data\": [{\"id\": ", f);
    srv_json_str(f, e->name, strlen(e->name));
    fprintf(f, ", \"object\": \"model\", \"created\": %lld, \"owned_by\": \"codemoe\", "
            "\"meta\": {\"n_ctx\": %d, \"n_ctx_train\": %d, \"n_vocab\": %d, \"architecture\": ",
            e->created, e->o.n_ctx, e->m.hp.n_ctx_train, e->n_vocab);
    srv_json_str(f, e->m.hp.arch_name, strlen(e->m.hp.arch_name));
    fprintf(f, ", \"language_expert_pack\": %s}}]}\n", e->m.is_pack ? "true" : "false");
    fclose(f);
    return send_json(c, q, 200, buf, len);
}

static enum MHD_Result get_metrics(server *sv, struct MHD_Connection *c, req_ctx *q)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return MHD_NO;
    srv_engine *e = sv->e;
    char names[CM_PACK_MAX_MEMBERS][32];
    unsigned long long counts[CM_PACK_MAX_MEMBERS];
    int n = e->m.is_pack ? cm_pack_members(&e->m.file, names, CM_PACK_MAX_MEMBERS) : 0;
    pthread_mutex_lock(&e->lock);
    int busy = e->n_busy;
    memcpy(counts, e->expert_requests, sizeof counts);
    unsigned long long steps = e->steps, seqs = e->step_seqs, toks = e->step_tokens;
    unsigned long long reused = e->reused_tokens;
    pthread_mutex_unlock(&e->lock);
    srv_metrics_write(&sv->metrics, f, busy, e->n_slots, atomic_load(&sv->in_flight));
    fprintf(f, "# HELP codemoe_batches_total Forward batches run (each holds tokens of one or "
            "more slots).\n# TYPE codemoe_batches_total counter\ncodemoe_batches_total %llu\n"
            "# HELP codemoe_batch_slots_total Slots in those batches, summed.\n"
            "# TYPE codemoe_batch_slots_total counter\ncodemoe_batch_slots_total %llu\n"
            "# HELP codemoe_batch_tokens_total Tokens in those batches, summed.\n"
            "# TYPE codemoe_batch_tokens_total counter\ncodemoe_batch_tokens_total %llu\n"
            "# HELP codemoe_prompt_tokens_cached_total Prompt tokens found in a slot's cache "
            "(not evaluated again).\n# TYPE codemoe_prompt_tokens_cached_total counter\n"
            "codemoe_prompt_tokens_cached_total %llu\n", steps, seqs, toks, reused);
    fputs("# HELP codemoe_expert_requests_total Generating requests routed to each expert of "
          "a language-expert pack.\n# TYPE codemoe_expert_requests_total counter\n", f);
    for (int i = 0; i < n; i++)
        fprintf(f, "codemoe_expert_requests_total{expert=\"%s\"} %llu\n", names[i], counts[i]);
    fclose(f);
    return send_buf(c, q, 200, "text/plain; version=0.0.4; charset=utf-8", buf, len);
}

static enum MHD_Result get_health(server *sv, struct MHD_Connection *c, req_ctx *q)
{
    if (atomic_load(&sv->e->stopping))
        return send_json(c, q, 503, strdup("{\"status\": \"shutting down\"}\n"), 27);
    return send_json(c, q, 200, strdup("{\"status\": \"ok\"}\n"), 17);
}

/* ---- tokenize / detokenize */

static enum MHD_Result post_tokens(server *sv, struct MHD_Connection *c, req_ctx *q,
                                   srv_request *r)
{
    cm_err err = {0};
    int32_t *ids = NULL;
    size_t n = 0, tlen = 0, len = 0;
    char *text = NULL, *buf = NULL;
    cm_status s = r->kind == SRV_TOKENIZE ? srv_tokenize(sv->e, r, &ids, &n, &err)
                                          : srv_detokenize(sv->e, r, &text, &tlen, &err);
    FILE *f = s ? NULL : open_memstream(&buf, &len);
    if (s || !f) {
        free(ids), free(text);
        return s ? send_fail(c, q, &err) : MHD_NO;
    }
    if (r->kind == SRV_TOKENIZE) {
        fputs("{\"tokens\": [", f);
        for (size_t i = 0; i < n; i++)
            fprintf(f, "%s%d", i ? ", " : "", ids[i]);
        fputs("]}\n", f);
    } else {
        fputs("{\"content\": ", f);
        srv_json_str(f, text, tlen);
        fputs("}\n", f);
    }
    fclose(f);
    free(ids), free(text);
    return send_json(c, q, 200, buf, len);
}

/* ---- generation: whole responses */

static const char *oai_finish(const srv_gen *g)
{
    return strcmp(g->finish, "limit") ? "stop" : "length";
}

static void write_usage(FILE *f, const srv_gen *g)
{
    fprintf(f, "\"usage\": {\"prompt_tokens\": %d, \"completion_tokens\": %d, "
            "\"total_tokens\": %d}", g->n_prompt, g->n_gen, g->n_prompt + g->n_gen);
}

/* llama.cpp's timings of a generation (milliseconds). */
static void write_timings(FILE *f, const srv_gen *g)
{
    int pn = g->n_prompt - g->n_reused;
    double pms = g->t_prompt * 1e3, gms = g->t_gen * 1e3;
    fprintf(f, "\"timings\": {\"prompt_n\": %d, \"prompt_ms\": %.3f, \"prompt_per_token_ms\": "
            "%.3f, \"prompt_per_second\": %.2f, \"predicted_n\": %d, \"predicted_ms\": %.3f, "
            "\"predicted_per_token_ms\": %.3f, \"predicted_per_second\": %.2f}", pn, pms,
            pn ? pms / pn : 0.0, pms > 0 ? pn * 1e3 / pms : 0.0, g->n_gen, gms,
            g->n_gen ? gms / g->n_gen : 0.0, gms > 0 ? g->n_gen * 1e3 / gms : 0.0);
}

static void write_infill(server *sv, FILE *f, const srv_gen *g, const char *text, size_t len)
{
    const srv_engine *e = sv->e;
    fputs("{\"content\": ", f);
    srv_json_str(f, text, len);
    fputs(", \"stop\": true, \"model\": ", f);
    srv_json_str(f, e->name, strlen(e->name));
    fprintf(f, ", \"tokens_predicted\": %d, \"tokens_evaluated\": %d, \"tokens_cached\": %d, "
            "\"truncated\": false, \"stop_type\": \"%s\", ", g->n_gen, g->n_prompt, g->n_reused,
            g->finish);
    write_timings(f, g);
    fputs(", ", f);
    write_usage(f, g);
    fputs("}\n", f);
}

static void write_whole(server *sv, FILE *f, const srv_request *r, const srv_gen *g,
                        const char *text, size_t len)
{
    const srv_engine *e = sv->e;
    unsigned long long id = atomic_fetch_add(&sv->ids, 1);
    if (r->kind == SRV_INFILL) { /* llama.cpp's /infill answer */
        char *all = NULL;
        size_t n = 0;
        FILE *a = r->has_fields ? open_memstream(&all, &n) : f;
        if (!a)
            return;
        write_infill(sv, a, g, text, len);
        if (a != f) {
            fclose(a);
            srv_json_fields(f, all, n, r->fields, r->n_fields);
            free(all);
        }
        return;
    }
    int chat = r->kind == SRV_CHAT;
    fprintf(f, "{\"id\": \"%s-%llu\", \"object\": \"%s\", \"created\": %lld, \"model\": ",
            chat ? "chatcmpl" : "cmpl", id, chat ? "chat.completion" : "text_completion",
            (long long)time(NULL));
    srv_json_str(f, e->name, strlen(e->name));
    fputs(chat ? ", \"choices\": [{\"index\": 0, \"message\": {\"role\": \"assistant\", "
                 "\"content\": " : ", \"choices\": [{\"index\": 0, \"text\": ", f);
    srv_json_str(f, text, len);
    fprintf(f, "%s, \"logprobs\": null, \"finish_reason\": \"%s\"}], ", chat ? "}" : "",
            oai_finish(g));
    write_usage(f, g);
    fputs("}\n", f);
}

static void log_gen(const srv_gen *g)
{
    fprintf(stderr, "[codemoe] slot %d | prompt %d tok (%d cached), %.1f tok/s | generated %d tok, "
            "%.1f tok/s (%s)%s%s\n", g->slot ? g->slot->id : -1, g->n_prompt, g->n_reused,
            (g->n_prompt - g->n_reused) / (g->t_prompt > 0 ? g->t_prompt : 1e-9), g->n_gen,
            g->n_gen / (g->t_gen > 0 ? g->t_gen : 1e-9), g->finish, g->expert[0] ? " | expert " : "",
            g->expert);
}

/* Runs the whole generation (slot held), then answers. */
static enum MHD_Result generate_whole(server *sv, struct MHD_Connection *c, req_ctx *q,
                                      const srv_request *r, srv_gen *g)
{
    cm_err err = {0};
    char *text = NULL, *buf = NULL;
    size_t tlen = 0, len = 0;
    FILE *t = open_memstream(&text, &tlen);
    cm_status s = t ? CM_OK : cm_fail(&err, CM_E_NOMEM, "out of memory");
    while (!s && !g->done) {
        s = srv_gen_next(sv->e, g, &err);
        fwrite(g->emit, 1, g->emit_len, t);
    }
    if (t)
        fclose(t);
    srv_metrics_tokens(&sv->metrics, g->n_prompt, g->n_gen, g->t_prompt, g->t_gen);
    log_gen(g);
    FILE *f = s ? NULL : open_memstream(&buf, &len);
    if (f) {
        write_whole(sv, f, r, g, text, tlen);
        fclose(f);
    }
    free(text);
    if (s)
        return send_fail(c, q, &err);
    return f ? send_json(c, q, 200, buf, len) : MHD_NO;
}

/* ---- generation: server-sent events */

typedef struct {
    server *sv;
    srv_request r;
    srv_gen g;
    char *buf;        /* events not yet sent */
    size_t len, off;
    int ended, role_sent;
    unsigned long long id;
    long long created;
} stream;

/* One event: the text the generation made (and the end, when done). */
static void write_event(stream *st, FILE *f, const char *text, size_t n, const char *finish)
{
    const srv_request *r = &st->r;
    if (r->kind == SRV_INFILL) {
        fputs("data: {\"content\": ", f);
        srv_json_str(f, text, n);
        fprintf(f, ", \"stop\": %s", finish ? "true" : "false");
        if (finish)
            fprintf(f, ", \"stop_type\": \"%s\", \"tokens_predicted\": %d, "
                    "\"tokens_evaluated\": %d", st->g.finish, st->g.n_gen, st->g.n_prompt);
        fputs("}\n\n", f);
        return;
    }
    int chat = r->kind == SRV_CHAT;
    fprintf(f, "data: {\"id\": \"%s-%llu\", \"object\": \"%s\", \"created\": %lld, \"model\": ",
            chat ? "chatcmpl" : "cmpl", st->id, chat ? "chat.completion.chunk" : "text_completion",
            st->created);
    srv_json_str(f, st->sv->e->name, strlen(st->sv->e->name));
    fputs(", \"choices\": [{\"index\": 0, ", f);
    fputs(chat ? "\"delta\": {" : "\"text\": ", f);
    if (chat && !st->role_sent++)
        fputs("\"role\": \"assistant\", ", f);
    if (chat && (n || !finish))
        fputs("\"content\": ", f);
    if (!chat || n || !finish)
        srv_json_str(f, text, n);
    fprintf(f, "%s, \"logprobs\": null, \"finish_reason\": ", chat ? "}" : "");
    fprintf(f, finish ? "\"%s\"}]}\n\n" : "null}]}\n\n", finish);
}

/* The last events: the finish reason, the usage when asked, [DONE]. */
static void write_end(stream *st, FILE *f)
{
    write_event(st, f, "", 0, oai_finish(&st->g));
    if (st->r.kind == SRV_INFILL)
        return; /* llama.cpp's /infill ends with "stop": true, no [DONE] */
    if (st->r.include_usage) {
        fprintf(f, "data: {\"id\": \"%s-%llu\", \"object\": \"%s\", \"created\": %lld, "
                "\"choices\": [], ", st->r.kind == SRV_CHAT ? "chatcmpl" : "cmpl", st->id,
                st->r.kind == SRV_CHAT ? "chat.completion.chunk" : "text_completion", st->created);
        write_usage(f, &st->g);
        fputs("}\n\n", f);
    }
    fputs("data: [DONE]\n\n", f);
}

/* Generates until there is text to send or the end, as events in st->buf. */
static void produce(stream *st)
{
    cm_err err = {0};
    cm_status s = CM_OK;
    FILE *f = open_memstream(&st->buf, &st->len);
    if (!f) {
        st->ended = 1;
        return;
    }
    while (!s && !st->g.done && st->g.emit_len == 0)
        s = srv_gen_next(st->sv->e, &st->g, &err);
    if (!s && st->g.emit_len)
        write_event(st, f, st->g.emit, st->g.emit_len, NULL);
    st->g.emit_len = 0;
    if (s) { /* the status line is sent: an error event, then the end */
        fputs("data: {\"error\": {\"message\": ", f);
        srv_json_str(f, err.msg, strlen(err.msg));
        fputs(", \"type\": \"server_error\", \"code\": 500}}\n\n", f);
        st->ended = 1;
    } else if (st->g.done) {
        write_end(st, f);
        st->ended = 1;
    }
    fclose(f);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    stream *st = cls;
    (void)pos;
    if (st->off == st->len) {
        free(st->buf);
        st->buf = NULL, st->len = st->off = 0;
        if (st->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        produce(st);
        if (st->len == 0)
            return MHD_CONTENT_READER_END_OF_STREAM;
    }
    size_t n = st->len - st->off < max ? st->len - st->off : max;
    memcpy(out, st->buf + st->off, n);
    st->off += n;
    return (ssize_t)n;
}

/* The response is gone: finished, or its client left (then the generation
 * simply stops here, and the slot is free for the next request). */
static void stream_free(void *cls)
{
    stream *st = cls;
    server *sv = st->sv;
    if (!st->g.done)
        srv_metrics_cancelled(&sv->metrics);
    srv_metrics_tokens(&sv->metrics, st->g.n_prompt, st->g.n_gen, st->g.t_prompt, st->g.t_gen);
    if (!st->g.done)
        st->g.finish = "client gone";
    log_gen(&st->g);
    srv_gen_free(&st->g);
    srv_engine_release(sv->e);
    srv_request_free(&st->r);
    free(st->buf);
    free(st);
}

static enum MHD_Result start_stream(server *sv, struct MHD_Connection *c, req_ctx *q,
                                    stream *st)
{
    st->id = atomic_fetch_add(&sv->ids, 1);
    st->created = (long long)time(NULL);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, st, stream_free);
    if (!resp) {
        stream_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp); /* stream_free runs when MHD is done with it */
    q->status = 200, q->replied = 1;
    return ok;
}

/* POST /v1/completions, /v1/chat/completions, /infill. */
static enum MHD_Result post_generate(server *sv, struct MHD_Connection *c, req_ctx *q,
                                     stream *st)
{
    cm_err err = {0};
    if (!srv_engine_acquire(sv->e)) {
        srv_request_free(&st->r);
        free(st);
        return send_error(c, q, 503, "the server is shutting down");
    }
    cm_status s = srv_gen_start(sv->e, &st->r, &st->g, &err);
    if (!s && st->r.stream)
        return start_stream(sv, c, q, st); /* the stream releases the slot */
    enum MHD_Result ok = s ? send_fail(c, q, &err) : generate_whole(sv, c, q, &st->r, &st->g);
    srv_gen_free(&st->g);
    srv_engine_release(sv->e);
    srv_request_free(&st->r);
    free(st);
    return ok;
}

static enum MHD_Result dispatch_post(server *sv, struct MHD_Connection *c, req_ctx *q)
{
    static const srv_kind kinds[SRV_EP_COUNT] = {
        [SRV_EP_TOKENIZE] = SRV_TOKENIZE, [SRV_EP_DETOKENIZE] = SRV_DETOKENIZE,
        [SRV_EP_COMPLETIONS] = SRV_COMPLETION, [SRV_EP_CHAT] = SRV_CHAT,
        [SRV_EP_INFILL] = SRV_INFILL};
    cm_sampling_params sp;
    cm_err err = {0};
    stream *st = calloc(1, sizeof *st);
    if (!st)
        return send_error(c, q, 500, "out of memory");
    st->sv = sv;
    cm_sampling_defaults(&sp);
    /* OpenAI's completions default to 16 tokens; chat and infill run to
     * the end of text (or a full context), as llama.cpp's */
    cm_status s = srv_parse_request(kinds[q->ep], q->body, q->len, &sp,
                                    q->ep == SRV_EP_COMPLETIONS ? 16 : -1, &st->r, &err);
    if (s || q->ep == SRV_EP_TOKENIZE || q->ep == SRV_EP_DETOKENIZE) {
        enum MHD_Result ok = s ? send_fail(c, q, &err) : post_tokens(sv, c, q, &st->r);
        srv_request_free(&st->r);
        free(st);
        return ok;
    }
    return post_generate(sv, c, q, st);
}

static enum MHD_Result dispatch(server *sv, struct MHD_Connection *c, req_ctx *q)
{
    char msg[160];
    if (q->too_big) {
        snprintf(msg, sizeof msg, "the request body is larger than %zu bytes (--max-body)",
                 sv->o->max_body);
        return send_error(c, q, 413, msg);
    }
    switch (q->ep) {
    case SRV_EP_HEALTH: return get_health(sv, c, q);
    case SRV_EP_MODELS: return get_models(sv, c, q);
    case SRV_EP_METRICS: return get_metrics(sv, c, q);
    default: return dispatch_post(sv, c, q);
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **con_cls)
{
    server *sv = cls;
    req_ctx *q = *con_cls;
    enum MHD_Result ret = MHD_YES;
    (void)version;
    if (!q) { /* the headers: answer now what needs no body */
        if (!(q = calloc(1, sizeof *q)))
            return MHD_NO;
        *con_cls = q;
        q->t0 = now_s();
        q->ep = find_route(url);
        atomic_fetch_add(&sv->in_flight, 1);
        return precheck(sv, c, q, method, &ret) ? ret : MHD_YES;
    }
    if (*upload_size) {
        if (!q->replied)
            take_body(sv, q, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    return q->replied ? MHD_YES : dispatch(sv, c, q);
}

/* The request is over (answered, or its connection closed): count it. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    server *sv = cls;
    req_ctx *q = *con_cls;
    (void)c;
    if (!q)
        return;
    double dt = now_s() - q->t0;
    srv_metrics_request(&sv->metrics, q->ep, q->status ? q->status : 500, dt);
    fprintf(stderr, "[codemoe] %s %d %.3f s%s\n", srv_endpoint_name(q->ep), q->status, dt,
            toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    free(q->body);
    free(q);
    *con_cls = NULL;
    atomic_fetch_sub(&sv->in_flight, 1);
}

/* ---- the daemon */

static cm_status resolve(const srv_http_opts *o, struct sockaddr_storage *sa, int *v6,
                         cm_err *err)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res = NULL;
    int rc = getaddrinfo(o->host, NULL, &hints, &res);
    if (rc)
        return cm_fail(err, CM_E_USAGE, "option --host: cannot resolve '%s': %s", o->host,
                       gai_strerror(rc));
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *v6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    if (*v6)
        ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)o->port);
    else
        ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)o->port);
    return CM_OK;
}

static struct MHD_Daemon *start_daemon(server *sv, struct sockaddr_storage *sa, int v6)
{
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO_INTERNAL_THREAD |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    return MHD_start_daemon(flags, (uint16_t)sv->o->port, NULL, NULL, on_request, sv,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)sa,
                            MHD_OPTION_CONNECTION_TIMEOUT, sv->o->timeout,
                            MHD_OPTION_CONNECTION_LIMIT, 64u,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, sv, MHD_OPTION_END);
}

/* Waits for SIGTERM/SIGINT (blocked in every thread, so only here);
 * then no new generation starts and the running one finishes. */
static MHD_socket wait_for_signal(server *sv, struct MHD_Daemon *d, const sigset_t *set)
{
    int sig = 0;
    struct timespec tick = {0, 20 * 1000 * 1000};
    while (sigwait(set, &sig) != 0)
        ;
    fprintf(stderr, "[codemoe] %s: finishing the running request, then exiting\n",
            strsignal(sig));
    srv_engine_stop(sv->e);
    MHD_socket ls = MHD_quiesce_daemon(d); /* no new connections */
    while (atomic_load(&sv->in_flight) > 0)
        if (sigtimedwait(set, NULL, &tick) > 0) { /* a second signal: stop generating */
            atomic_store(&sv->e->abort, 1);
            fprintf(stderr, "[codemoe] second signal: ending the generation now\n");
        }
    return ls;
}

cm_status srv_serve(srv_engine *e, const srv_http_opts *o, cm_err *err)
{
    server sv = {.e = e, .o = o};
    struct sockaddr_storage sa = {0};
    sigset_t set, old;
    int v6 = 0;
    cm_status s = resolve(o, &sa, &v6, err);
    if (s)
        return s;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, &old); /* MHD's threads inherit the mask */
    signal(SIGPIPE, SIG_IGN);               /* a client gone mid-write is an error, not death */
    srv_metrics_init(&sv.metrics);
    struct MHD_Daemon *d = start_daemon(&sv, &sa, v6);
    if (!d) {
        s = cm_fail(err, CM_E_IO, "cannot listen on %s port %d: %s", o->host, o->port,
                    strerror(errno));
    } else {
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        fprintf(stderr, "[codemoe] listening on http://%s%s%s:%u (model %s, context %d, %d slot%s "
                "in %d lane%s%s)\n", v6 ? "[" : "", o->host, v6 ? "]" : "",
                di ? di->port : (unsigned)o->port, e->name, cm_ctx_n_ctx(e->lanes[0].ctx),
                e->n_slots, e->n_slots == 1 ? "" : "s", e->n_lanes, e->n_lanes == 1 ? "" : "s",
                o->api_key ? ", API key required" : "");
        MHD_socket ls = wait_for_signal(&sv, d, &set);
        MHD_stop_daemon(d);
        if (ls != MHD_INVALID_SOCKET)
            close(ls);
    }
    srv_metrics_free(&sv.metrics);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return s;
}
