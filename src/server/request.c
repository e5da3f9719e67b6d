/* request.c - request bodies of `codemoe serve`: parsing, checking, the
 * chat template, and JSON string output. */
#include "server/request.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- typed fields: absent or null leaves the default; anything else of
 * the wrong type is an error naming the field, never a guess */

static cm_status field_error(cm_err *err, const char *key, const char *what)
{
    return cm_fail(err, CM_E_FORMAT, "field '%s' must be %s", key, what);
}

static cm_status opt_str(const json_doc *d, const json_node *o, const char *key, srv_str *out,
                         cm_err *err)
{
    const json_node *n = json_get_val(d, o, key);
    if (!n)
        return CM_OK;
    if (n->type != JSON_STRING)
        return field_error(err, key, "a string");
    out->p = n->str, out->len = n->len;
    return CM_OK;
}

static cm_status opt_num(const json_doc *d, const json_node *o, const char *key, double lo,
                         double hi, float *out, cm_err *err)
{
    const json_node *n = json_get_val(d, o, key);
    if (!n)
        return CM_OK;
    if (n->type != JSON_NUMBER || !isfinite(n->num))
        return field_error(err, key, "a number");
    if (n->num < lo || n->num > hi)
        return cm_fail(err, CM_E_RANGE, "field '%s': %g is out of range [%g, %g]", key, n->num,
                       lo, hi);
    *out = (float)n->num;
    return CM_OK;
}

/* Integers may be written 16 or 16.0 (JavaScript clients do). */
static cm_status opt_int(const json_doc *d, const json_node *o, const char *key, int64_t lo,
                         int64_t hi, int64_t *out, int *given, cm_err *err)
{
    const json_node *n = json_get_val(d, o, key);
    int64_t v;
    if (!n)
        return CM_OK;
    if (n->type != JSON_NUMBER || !json_get_int(d, o, key, &v))
        return field_error(err, key, "an integer");
    if (v < lo || v > hi)
        return cm_fail(err, CM_E_RANGE, "field '%s': %lld is out of range [%lld, %lld]", key,
                       (long long)v, (long long)lo, (long long)hi);
    *out = v;
    if (given)
        *given = 1;
    return CM_OK;
}

static cm_status opt_bool(const json_doc *d, const json_node *o, const char *key, int *out,
                          cm_err *err)
{
    const json_node *n = json_get_val(d, o, key);
    if (n && n->type != JSON_TRUE && n->type != JSON_FALSE)
        return field_error(err, key, "true or false");
    if (n)
        *out = n->type == JSON_TRUE;
    return CM_OK;
}

/* ---- the fields every generating endpoint shares */

/* "stop": a string or an array of strings; empty ones are dropped (they
 * would end every completion before its first character). */
static cm_status parse_stops(const json_doc *d, const json_node *o, srv_request *r, cm_err *err)
{
    const json_node *n = json_get_val(d, o, "stop");
    if (!n)
        return CM_OK;
    if (n->type == JSON_STRING) {
        if (n->len)
            r->stops[r->n_stops++] = (srv_str){n->str, n->len};
        return CM_OK;
    }
    if (n->type != JSON_ARRAY)
        return field_error(err, "stop", "a string or an array of strings");
    if (n->n > SRV_MAX_STOPS)
        return cm_fail(err, CM_E_RANGE, "field 'stop': at most %d strings", SRV_MAX_STOPS);
    for (const json_node *c = json_first(d, n); c; c = json_next(d, c)) {
        if (c->type != JSON_STRING)
            return field_error(err, "stop", "a string or an array of strings");
        if (c->len)
            r->stops[r->n_stops++] = (srv_str){c->str, c->len};
    }
    return CM_OK;
}

static cm_status parse_sampling(const json_doc *d, const json_node *o, srv_request *r,
                                cm_err *err)
{
    cm_sampling_params *sp = &r->sp;
    int64_t k = sp->top_k, last = sp->repeat_last_n, seed = -1;
    cm_status s = opt_num(d, o, "temperature", 0, 100, &sp->temp, err);
    if (!s)
        s = opt_num(d, o, "top_p", 0, 1, &sp->top_p, err);
    if (!s)
        s = opt_num(d, o, "min_p", 0, 1, &sp->min_p, err);
    if (!s)
        s = opt_num(d, o, "repeat_penalty", 0, 100, &sp->repeat_penalty, err);
    if (!s)
        s = opt_int(d, o, "top_k", 0, 1 << 24, &k, NULL, err);
    if (!s)
        s = opt_int(d, o, "repeat_last_n", 0, 1 << 16, &last, NULL, err);
    if (!s) /* -1: a random seed, as llama.cpp's */
        s = opt_int(d, o, "seed", -1, (int64_t)1 << 53, &seed, NULL, err);
    sp->top_k = (int)k, sp->repeat_last_n = (int)last;
    if (!s && seed >= 0)
        sp->seed = (uint64_t)seed, r->have_seed = 1;
    return s;
}

/* The token limit: OpenAI's max_tokens (max_completion_tokens for chat),
 * llama.cpp's n_predict; -1 is until end of text or a full context. */
static cm_status parse_limit(const json_doc *d, const json_node *o, srv_request *r, cm_err *err)
{
    static const char *const keys[] = {"n_predict", "max_tokens", "max_completion_tokens"};
    int64_t n = r->n_predict, count = 1;
    cm_status s = CM_OK;
    for (size_t i = 0; !s && i < sizeof keys / sizeof keys[0]; i++)
        s = opt_int(d, o, keys[i], -1, 1 << 24, &n, NULL, err);
    r->n_predict = (int)n;
    int64_t ms = 0; /* llama.cpp's (llama.vim sends it): 0 is no limit */
    if (!s)
        s = opt_int(d, o, "t_max_predict_ms", 0, (int64_t)1 << 40, &ms, NULL, err);
    r->t_max_predict_ms = ms;
    if (!s)
        s = opt_int(d, o, "n", 1, 1 << 10, &count, NULL, err);
    if (!s && count != 1)
        s = cm_fail(err, CM_E_UNSUPPORTED, "field 'n': one completion per request is served "
                    "(n must be 1)");
    return s;
}

static cm_status parse_stream(const json_doc *d, const json_node *o, srv_request *r, cm_err *err)
{
    cm_status s = opt_bool(d, o, "stream", &r->stream, err);
    const json_node *so = s ? NULL : json_get_val(d, o, "stream_options");
    if (so && so->type != JSON_OBJECT)
        return field_error(err, "stream_options", "an object");
    return s || !so ? s : opt_bool(d, so, "include_usage", &r->include_usage, err);
}

static cm_status parse_generation(const json_doc *d, const json_node *o, srv_request *r,
                                  cm_err *err)
{
    cm_status s = parse_sampling(d, o, r, err);
    if (!s)
        s = parse_limit(d, o, r, err);
    if (!s)
        s = parse_stream(d, o, r, err);
    if (!s)
        s = parse_stops(d, o, r, err);
    if (!s)
        s = opt_str(d, o, "language", &r->language, err);
    if (!s)
        s = opt_bool(d, o, "cache_prompt", &r->cache_prompt, err);
    return s;
}

/* ---- endpoint bodies */

/* An array of token ids (the prompt as ids, /detokenize's tokens). */
static cm_status parse_ids(const json_doc *d, const json_node *a, const char *key, srv_request *r,
                           cm_err *err)
{
    r->ids = malloc(sizeof *r->ids * (a->n ? a->n : 1));
    if (!r->ids)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (const json_node *c = json_first(d, a); c; c = json_next(d, c)) {
        if (c->type != JSON_NUMBER || !c->is_int || c->i < 0 || c->i > INT32_MAX)
            return field_error(err, key, "an array of token ids (integers from 0)");
        r->ids[r->n_ids++] = (int32_t)c->i;
    }
    return CM_OK;
}

/* "prompt": a string, an array of one string, or an array of token ids. */
static cm_status parse_prompt(const json_doc *d, const json_node *o, srv_request *r, cm_err *err)
{
    const json_node *p = json_get_val(d, o, "prompt");
    if (!p)
        return cm_fail(err, CM_E_FORMAT, "field 'prompt' is required");
    if (p->type == JSON_STRING) {
        r->prompt = (srv_str){p->str, p->len};
        return CM_OK;
    }
    if (p->type != JSON_ARRAY || p->n == 0)
        return field_error(err, "prompt", "a string, or an array of one string or of token ids");
    const json_node *c = json_first(d, p);
    if (c->type == JSON_STRING && p->n == 1) {
        r->prompt = (srv_str){c->str, c->len};
        return CM_OK;
    }
    if (c->type == JSON_STRING)
        return cm_fail(err, CM_E_UNSUPPORTED, "field 'prompt': one prompt per request is served");
    r->prompt_is_ids = 1;
    return parse_ids(d, p, "prompt", r, err);
}

static int known_role(const json_node *n)
{
    static const char *const roles[] = {"system", "developer", "user", "assistant"};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
        if (n->len == strlen(roles[i]) && !memcmp(n->str, roles[i], n->len))
            return 1;
    return 0;
}

/* A message's content: a string, null, or OpenAI's array of parts, whose
 * text parts are joined (into join, which holds at least the body's size:
 * decoded text is never longer than the JSON it came from). */
static cm_status parse_content(const json_doc *d, const json_node *c, char *join, size_t *used,
                               srv_str *out, cm_err *err)
{
    const char *what = "a string, null or an array of {\"type\": \"text\", \"text\": ...} parts";
    if (!c || c->type == JSON_NULL)
        return *out = (srv_str){"", 0}, CM_OK;
    if (c->type == JSON_STRING)
        return *out = (srv_str){c->str, c->len}, CM_OK;
    if (c->type != JSON_ARRAY)
        return field_error(err, "messages[].content", what);
    out->p = join + *used, out->len = 0;
    for (const json_node *part = json_first(d, c); part; part = json_next(d, part)) {
        const char *type = json_get_str(d, part, "type");
        const json_node *t = json_get_val(d, part, "text");
        if (!type || strcmp(type, "text") || !t || t->type != JSON_STRING)
            return field_error(err, "messages[].content", what);
        memcpy(join + *used, t->str, t->len);
        *used += t->len, out->len += t->len;
    }
    return CM_OK;
}

static cm_status parse_messages(const json_doc *d, const json_node *o, size_t body_len,
                                srv_request *r, cm_err *err)
{
    const json_node *ms = json_get_val(d, o, "messages");
    if (!ms || ms->type != JSON_ARRAY || ms->n == 0)
        return field_error(err, "messages", "a non-empty array of messages");
    if (ms->n > SRV_MAX_MESSAGES)
        return cm_fail(err, CM_E_RANGE, "field 'messages': at most %d", SRV_MAX_MESSAGES);
    r->msgs = calloc(ms->n, sizeof *r->msgs);
    char *join = malloc(body_len + 1);
    size_t used = 0;
    cm_status s = r->msgs && join ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory");
    for (const json_node *m = s ? NULL : json_first(d, ms); !s && m; m = json_next(d, m)) {
        const json_node *role = json_get_val(d, m, "role");
        if (m->type != JSON_OBJECT || !role || role->type != JSON_STRING)
            s = field_error(err, "messages", "an array of {\"role\": ..., \"content\": ...}");
        else if (!known_role(role))
            s = cm_fail(err, CM_E_FORMAT, "field 'messages[].role': '%.40s' is not system, "
                        "developer, user or assistant", role->str);
        else {
            r->msgs[r->n_msgs].role = (srv_str){role->str, role->len};
            s = parse_content(d, json_get(d, m, "content"), join, &used,
                              &r->msgs[r->n_msgs++].content, err);
        }
    }
    r->join = join;
    return s;
}

static cm_status parse_extra(const json_doc *d, const json_node *o, srv_request *r, cm_err *err)
{
    const json_node *x = json_get_val(d, o, "input_extra");
    const char *what = "an array of {\"filename\": string, \"text\": string}";
    if (!x)
        return CM_OK;
    if (x->type != JSON_ARRAY)
        return field_error(err, "input_extra", what);
    if (x->n > SRV_MAX_EXTRA)
        return cm_fail(err, CM_E_RANGE, "field 'input_extra': at most %d chunks", SRV_MAX_EXTRA);
    if (!(r->extra = calloc(x->n ? x->n : 1, sizeof *r->extra)))
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    cm_status s = CM_OK;
    for (const json_node *c = json_first(d, x); !s && c; c = json_next(d, c)) {
        srv_extra *e = &r->extra[r->n_extra++];
        e->filename = (srv_str){"tmp", 3}; /* llama.cpp's name for a chunk without one */
        s = c->type == JSON_OBJECT ? CM_OK : field_error(err, "input_extra", what);
        if (!s)
            s = opt_str(d, c, "filename", &e->filename, err);
        if (!s)
            s = opt_str(d, c, "text", &e->text, err);
    }
    return s;
}

/* llama.cpp's response_fields: the answer holds only these (paths into it
 * such as "timings/prompt_n" become flat keys). */
static cm_status parse_fields(const json_doc *d, const json_node *o, srv_request *r, cm_err *err)
{
    const json_node *a = json_get_val(d, o, "response_fields");
    const char *what = "an array of strings";
    if (!a)
        return CM_OK;
    if (a->type != JSON_ARRAY)
        return field_error(err, "response_fields", what);
    if (a->n > SRV_MAX_FIELDS)
        return cm_fail(err, CM_E_RANGE, "field 'response_fields': at most %d", SRV_MAX_FIELDS);
    r->has_fields = 1;
    for (const json_node *c = json_first(d, a); c; c = json_next(d, c)) {
        if (c->type != JSON_STRING)
            return field_error(err, "response_fields", what);
        r->fields[r->n_fields++] = (srv_str){c->str, c->len};
    }
    return CM_OK;
}

static cm_status parse_infill(const json_doc *d, const json_node *o, srv_request *r, cm_err *err)
{
    cm_status s = opt_str(d, o, "input_prefix", &r->prefix, err);
    if (!s)
        s = opt_str(d, o, "input_suffix", &r->suffix, err);
    if (!s) /* the start of the middle, already typed: after <MID> */
        s = opt_str(d, o, "prompt", &r->prompt, err);
    if (!s)
        s = parse_extra(d, o, r, err);
    if (!s)
        s = parse_fields(d, o, r, err);
    return s;
}

static cm_status parse_tokenize(const json_doc *d, const json_node *o, srv_request *r, cm_err *err)
{
    const json_node *c = json_get_val(d, o, "content");
    if (!c || c->type != JSON_STRING)
        return field_error(err, "content", "a string");
    r->prompt = (srv_str){c->str, c->len};
    return opt_bool(d, o, "add_special", &r->add_special, err);
}

static cm_status parse_detokenize(const json_doc *d, const json_node *o, srv_request *r,
                                  cm_err *err)
{
    const json_node *t = json_get_val(d, o, "tokens");
    if (!t || t->type != JSON_ARRAY)
        return field_error(err, "tokens", "an array of token ids");
    return parse_ids(d, t, "tokens", r, err);
}

static cm_status parse_body(const json_doc *d, size_t len, srv_request *r, cm_err *err)
{
    const json_node *o = json_root(d);
    if (o->type != JSON_OBJECT)
        return cm_fail(err, CM_E_FORMAT, "the request body must be a JSON object");
    switch (r->kind) {
    case SRV_TOKENIZE: return parse_tokenize(d, o, r, err);
    case SRV_DETOKENIZE: return parse_detokenize(d, o, r, err);
    case SRV_COMPLETION: {
        cm_status s = parse_prompt(d, o, r, err);
        return s ? s : parse_generation(d, o, r, err);
    }
    case SRV_CHAT: {
        cm_status s = parse_messages(d, o, len, r, err);
        return s ? s : parse_generation(d, o, r, err);
    }
    case SRV_INFILL: {
        cm_status s = parse_infill(d, o, r, err);
        return s ? s : parse_generation(d, o, r, err);
    }
    }
    return cm_fail(err, CM_E_FORMAT, "unknown request kind");
}

cm_status srv_parse_request(srv_kind kind, const char *body, size_t len,
                            const cm_sampling_params *defaults, int default_n_predict,
                            srv_request *r, cm_err *err)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->sp = *defaults;
    r->n_predict = default_n_predict;
    r->cache_prompt = 1;
    if (len == 0)
        return cm_fail(err, CM_E_FORMAT, "the request has no body (a JSON object is expected)");
    cm_status s = json_parse(body, len, "the request body", &r->doc, err);
    return s ? CM_E_FORMAT : parse_body(&r->doc, len, r, err);
}

void srv_request_free(srv_request *r)
{
    json_free(&r->doc);
    free(r->ids);
    free(r->msgs);
    free(r->extra);
    free(r->join);
    memset(r, 0, sizeof *r);
}

/* ---- output */

void srv_json_str(FILE *f, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        size_t k = json_utf8_len(u + i, n - i);
        if (k == 0) {
            fputs("\\ufffd", f);
            i++;
        } else if (u[i] == '"' || u[i] == '\\') {
            fputc('\\', f), fputc(u[i], f), i++;
        } else if (u[i] < 0x20 || u[i] == 0x7f) {
            const char *e = u[i] == '\n' ? "\\n" : u[i] == '\t' ? "\\t" : u[i] == '\r' ? "\\r" : NULL;
            if (e)
                fputs(e, f);
            else
                fprintf(f, "\\u%04x", u[i]);
            i++;
        } else {
            fwrite(u + i, 1, k, f);
            i += k;
        }
    }
    fputc('"', f);
}

static void write_node(FILE *f, const json_doc *d, const json_node *n)
{
    switch (n->type) {
    case JSON_NULL: fputs("null", f); return;
    case JSON_FALSE: fputs("false", f); return;
    case JSON_TRUE: fputs("true", f); return;
    case JSON_STRING: srv_json_str(f, n->str, n->len); return;
    case JSON_NUMBER:
        if (n->is_int)
            fprintf(f, "%lld", (long long)n->i);
        else
            fprintf(f, "%.17g", n->num);
        return;
    default: break;
    }
    int obj = n->type == JSON_OBJECT;
    fputc(obj ? '{' : '[', f);
    for (const json_node *c = json_first(d, n); c; c = json_next(d, c)) {
        if (c != json_first(d, n))
            fputs(", ", f);
        if (obj)
            srv_json_str(f, c->key, c->key_len), fputs(": ", f);
        write_node(f, d, c);
    }
    fputc(obj ? '}' : ']', f);
}

void srv_json_fields(FILE *f, const char *json, size_t len, const srv_str *fields, int n)
{
    json_doc d;
    cm_err err;
    if (json_parse(json, len, "the answer", &d, &err)) {
        fwrite(json, 1, len, f);
        return;
    }
    fputc('{', f);
    for (int i = 0, out = 0; i < n; i++) {
        const json_node *v = json_root(&d);
        char key[128];
        const char *p = fields[i].p, *end = p + fields[i].len;
        while (v && p < end) { /* "a/b": member b of member a */
            const char *slash = memchr(p, '/', (size_t)(end - p));
            size_t k = (size_t)((slash ? slash : end) - p);
            snprintf(key, sizeof key, "%.*s", (int)(k < 127 ? k : 127), p);
            v = k < 128 ? json_get(&d, v, key) : NULL;
            p += k + (slash != NULL);
        }
        if (!v || fields[i].len == 0)
            continue;
        fputs(out++ ? ", " : "", f);
        srv_json_str(f, fields[i].p, fields[i].len);
        fputs(": ", f);
        write_node(f, &d, v);
    }
    fputs("}\n", f);
    json_free(&d);
}
