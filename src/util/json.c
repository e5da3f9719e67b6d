/* json.c - strict JSON parser into a flat node array (see json.h). */
#include "util/json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/atomic_file.h"

typedef struct {
    const unsigned char *s;
    size_t len, pos;
    json_doc *doc;
    const char *what;
    cm_err *err;
} jparser;

/* Reports the error at the current position as line:column (1-based). */
static cm_status jfail(jparser *p, const char *msg)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < p->pos && i < p->len; i++) {
        if (p->s[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    return cm_fail(p->err, CM_E_FORMAT, "%s: invalid JSON at line %zu, column %zu: %s", p->what,
                   line, col, msg);
}

static void skip_ws(jparser *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

/* Appends a zeroed node; *idx receives its index. */
static cm_status new_node(jparser *p, json_type type, uint32_t *idx)
{
    json_doc *d = p->doc;
    if (d->n_nodes == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        if (cap > UINT32_MAX)
            return jfail(p, "too many values");
        json_node *n = realloc(d->nodes, cap * sizeof *n);
        if (!n)
            return cm_fail(p->err, CM_E_NOMEM, "%s: out of memory parsing JSON", p->what);
        d->nodes = n;
        d->cap = cap;
    }
    memset(&d->nodes[d->n_nodes], 0, sizeof d->nodes[0]);
    d->nodes[d->n_nodes].type = type;
    *idx = (uint32_t)d->n_nodes++;
    return CM_OK;
}

static int hex4(const unsigned char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = s[i], h;
        if (c >= '0' && c <= '9')
            h = c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            h = (c | 0x20) - 'a' + 10;
        else
            return -1;
        v = v << 4 | h;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t json_utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k;
    unsigned cp, min;
    if (c < 0x80)
        return 1;
    if ((c & 0xE0) == 0xC0)
        k = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        k = 3, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        k = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (k > n)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return k;
}

/* Decodes one escape after the backslash into o; returns bytes written or
 * 0 on error.  A lone surrogate becomes U+FFFD (it has no UTF-8 form). */
static size_t unescape(jparser *p, char *o)
{
    const unsigned char *s = p->s;
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (p->pos >= p->len)
        return 0;
    const char *hit = memchr(from, s[p->pos], 8);
    if (hit && s[p->pos]) {
        o[0] = to[hit - from];
        p->pos++;
        return 1;
    }
    unsigned cp, lo;
    if (s[p->pos] != 'u' || p->len - p->pos < 5 || hex4(s + p->pos + 1, &cp))
        return 0;
    p->pos += 5;
    if (cp >= 0xD800 && cp <= 0xDBFF && p->len - p->pos >= 6 && s[p->pos] == '\\' &&
        s[p->pos + 1] == 'u' && !hex4(s + p->pos + 2, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
        p->pos += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    } else if (cp >= 0xD800 && cp <= 0xDFFF) {
        cp = 0xFFFD;
    }
    return put_utf8(o, cp);
}

/* Parses a string at p->pos (the opening quote) into the arena.  The
 * decoded form is never longer than the source, so the arena (sized to the
 * whole text) cannot overflow. */
static cm_status parse_string(jparser *p, const char **out, size_t *out_len)
{
    json_doc *d = p->doc;
    char *o = d->arena + d->arena_used, *start = o;
    p->pos++;
    for (;;) {
        if (p->pos >= p->len)
            return jfail(p, "unterminated string");
        unsigned char c = p->s[p->pos];
        if (c == '"')
            break;
        if (c < 0x20)
            return jfail(p, "control character in string");
        if (c == '\\') {
            p->pos++;
            size_t k = unescape(p, o);
            if (!k)
                return jfail(p, "bad escape in string");
            o += k;
            continue;
        }
        size_t k = json_utf8_len(p->s + p->pos, p->len - p->pos);
        if (!k)
            return jfail(p, "invalid UTF-8 in string");
        memcpy(o, p->s + p->pos, k);
        o += k;
        p->pos += k;
    }
    p->pos++;
    *o++ = 0;
    *out = start;
    *out_len = (size_t)(o - start - 1);
    d->arena_used += (size_t)(o - start);
    return CM_OK;
}

static size_t digits(const unsigned char *s, size_t n, size_t at)
{
    size_t k = 0;
    while (at + k < n && s[at + k] >= '0' && s[at + k] <= '9')
        k++;
    return k;
}

/* Integer value of an integral literal, or 0 when it does not fit int64. */
static int parse_i64(const char *s, int64_t *out)
{
    int neg = *s == '-';
    uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (s += neg; *s; s++) {
        unsigned dg = (unsigned)(*s - '0');
        if (v > (lim - dg) / 10)
            return 0;
        v = v * 10 + dg;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

static cm_status parse_special_number(jparser *p, json_node *n)
{
    static const struct {
        const char *word;
        double v;
    } w[] = {{"NaN", NAN}, {"Infinity", INFINITY}, {"-Infinity", -INFINITY}};
    for (size_t i = 0; i < 3; i++) {
        size_t l = strlen(w[i].word);
        if (p->len - p->pos >= l && !memcmp(p->s + p->pos, w[i].word, l)) {
            n->num = w[i].v;
            p->pos += l;
            return CM_OK;
        }
    }
    return jfail(p, "unexpected character");
}

/* Validates the JSON number grammar, then converts with strtod. */
static cm_status parse_number(jparser *p, uint32_t idx)
{
    const unsigned char *s = p->s;
    size_t at = p->pos, n = p->len, k;
    int integral = 1;
    json_node *node = &p->doc->nodes[idx];
    if (at < n && s[at] == '-')
        at++;
    if (at < n && s[at] == 'I')
        return parse_special_number(p, node);
    if (!(k = digits(s, n, at)) || (s[at] == '0' && k > 1))
        return jfail(p, "malformed number");
    at += k;
    if (at < n && s[at] == '.') {
        integral = 0;
        if (!(k = digits(s, n, at + 1)))
            return jfail(p, "malformed number");
        at += 1 + k;
    }
    if (at < n && (s[at] | 0x20) == 'e') {
        integral = 0;
        at += at + 1 < n && (s[at + 1] == '+' || s[at + 1] == '-') ? 2 : 1;
        if (!(k = digits(s, n, at)))
            return jfail(p, "malformed number");
        at += k;
    }
    char buf[400];
    if (at - p->pos >= sizeof buf)
        return jfail(p, "number too long");
    memcpy(buf, s + p->pos, at - p->pos);
    buf[at - p->pos] = 0;
    node->num = strtod(buf, NULL);
    node->is_int = integral && parse_i64(buf, &node->i);
    p->pos = at;
    return CM_OK;
}

static cm_status parse_value(jparser *p, int depth, uint32_t *idx);

/* Parses the members (objects) or elements (arrays) after the opening
 * bracket, linking them as children of node idx. */
static cm_status parse_container(jparser *p, int depth, uint32_t idx, int is_obj)
{
    char close = is_obj ? '}' : ']';
    uint32_t prev = 0, count = 0;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == (unsigned char)close) {
        p->pos++;
        return CM_OK;
    }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        uint32_t child;
        cm_status st;
        skip_ws(p);
        if (is_obj) {
            if (p->pos >= p->len || p->s[p->pos] != '"')
                return jfail(p, "expected a member name");
            if ((st = parse_string(p, &key, &key_len)))
                return st;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':')
                return jfail(p, "expected ':'");
            p->pos++;
        }
        if ((st = parse_value(p, depth + 1, &child)))
            return st;
        json_node *nodes = p->doc->nodes;
        nodes[child].key = key;
        nodes[child].key_len = key_len;
        if (prev)
            nodes[prev].next = child;
        else
            nodes[idx].first = child;
        prev = child;
        nodes[idx].n = ++count;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == (unsigned char)close) {
            p->pos++;
            return CM_OK;
        }
        return jfail(p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static cm_status parse_literal(jparser *p, uint32_t *idx)
{
    static const struct {
        const char *word;
        json_type type;
    } lit[] = {{"null", JSON_NULL}, {"true", JSON_TRUE}, {"false", JSON_FALSE}};
    for (size_t i = 0; i < 3; i++) {
        size_t l = strlen(lit[i].word);
        if (p->len - p->pos >= l && !memcmp(p->s + p->pos, lit[i].word, l)) {
            p->pos += l;
            return new_node(p, lit[i].type, idx);
        }
    }
    return jfail(p, "unexpected character");
}

static cm_status parse_value(jparser *p, int depth, uint32_t *idx)
{
    cm_status st;
    if (depth > JSON_MAX_DEPTH)
        return jfail(p, "nested too deeply");
    skip_ws(p);
    if (p->pos >= p->len)
        return jfail(p, "unexpected end of text");
    unsigned char c = p->s[p->pos];
    if (c == '{' || c == '[') {
        if ((st = new_node(p, c == '{' ? JSON_OBJECT : JSON_ARRAY, idx)))
            return st;
        return parse_container(p, depth, *idx, c == '{');
    }
    if (c == '"') {
        const char *s;
        size_t l;
        if ((st = new_node(p, JSON_STRING, idx)) || (st = parse_string(p, &s, &l)))
            return st;
        p->doc->nodes[*idx].str = s;
        p->doc->nodes[*idx].len = l;
        return CM_OK;
    }
    if (c == '-' || (c >= '0' && c <= '9') || c == 'I' || c == 'N') {
        if ((st = new_node(p, JSON_NUMBER, idx)))
            return st;
        if (c == 'N')
            return parse_special_number(p, &p->doc->nodes[*idx]);
        return parse_number(p, *idx);
    }
    return parse_literal(p, idx);
}

cm_status json_parse(const char *text, size_t len, const char *what, json_doc *doc, cm_err *err)
{
    jparser p = {(const unsigned char *)text, len, 0, doc, what ? what : "JSON", err};
    uint32_t root;
    memset(doc, 0, sizeof *doc);
    if (len > JSON_MAX_BYTES)
        return cm_fail(err, CM_E_FORMAT, "%s: %zu bytes of JSON is too large", p.what, len);
    if (!(doc->arena = malloc(len + 1)))
        return cm_fail(err, CM_E_NOMEM, "%s: out of memory parsing JSON", p.what);
    doc->arena_cap = len + 1;
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) /* tolerate a UTF-8 BOM */
        p.pos = 3;
    cm_status st = parse_value(&p, 0, &root);
    if (!st) {
        skip_ws(&p);
        if (p.pos != len)
            st = jfail(&p, "unexpected text after the value");
    }
    if (st)
        json_free(doc);
    return st;
}

cm_status json_parse_file(const char *path, const char *what, json_doc *doc, cm_err *err)
{
    struct stat st;
    memset(doc, 0, sizeof *doc);
    FILE *f;
    cm_status os = cm_fopen_regular(path, &f, err); /* a FIFO would block fopen */
    if (os)
        return os;
    if (fstat(fileno(f), &st) != 0) {
        int e = errno;
        fclose(f);
        return cm_fail(err, CM_E_IO, "cannot read %s: %s", path, strerror(e));
    }
    if ((uint64_t)st.st_size > JSON_MAX_BYTES) {
        fclose(f);
        return cm_fail(err, CM_E_FORMAT, "%s: %lld bytes of JSON is too large", path,
                       (long long)st.st_size);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n ? n : 1);
    if (!buf) {
        fclose(f);
        return cm_fail(err, CM_E_NOMEM, "%s: out of memory", path);
    }
    size_t got = fread(buf, 1, n, f);
    int bad = ferror(f) || got != n;
    fclose(f);
    cm_status s = bad ? cm_fail(err, CM_E_IO, "cannot read %s", path)
                      : json_parse(buf, n, what ? what : path, doc, err);
    free(buf);
    return s;
}

void json_free(json_doc *doc)
{
    if (!doc)
        return;
    free(doc->nodes);
    free(doc->arena);
    memset(doc, 0, sizeof *doc);
}

const json_node *json_root(const json_doc *d)
{
    return d && d->n_nodes ? &d->nodes[0] : NULL;
}

const json_node *json_first(const json_doc *d, const json_node *n)
{
    if (!n || (n->type != JSON_ARRAY && n->type != JSON_OBJECT) || !n->first)
        return NULL;
    return &d->nodes[n->first];
}

const json_node *json_next(const json_doc *d, const json_node *n)
{
    return n && n->next ? &d->nodes[n->next] : NULL;
}

const json_node *json_get(const json_doc *d, const json_node *obj, const char *key)
{
    const json_node *hit = NULL;
    size_t kl = strlen(key);
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    for (const json_node *c = json_first(d, obj); c; c = json_next(d, c))
        if (c->key_len == kl && !memcmp(c->key, key, kl))
            hit = c;
    return hit;
}

const json_node *json_get_val(const json_doc *d, const json_node *obj, const char *key)
{
    const json_node *n = json_get(d, obj, key);
    return n && n->type != JSON_NULL ? n : NULL;
}

int json_get_int(const json_doc *d, const json_node *obj, const char *key, int64_t *out)
{
    const json_node *n = json_get_val(d, obj, key);
    if (!n || n->type != JSON_NUMBER)
        return 0;
    if (n->is_int) {
        *out = n->i;
        return 1;
    }
    /* 1e5 or 4096.0 are integers too */
    if (!isfinite(n->num) || n->num != floor(n->num) || fabs(n->num) > 9.0e15)
        return 0;
    *out = (int64_t)n->num;
    return 1;
}

int json_get_num(const json_doc *d, const json_node *obj, const char *key, double *out)
{
    const json_node *n = json_get_val(d, obj, key);
    if (!n || n->type != JSON_NUMBER)
        return 0;
    *out = n->num;
    return 1;
}

int json_get_bool(const json_doc *d, const json_node *obj, const char *key, int *out)
{
    const json_node *n = json_get_val(d, obj, key);
    if (!n || (n->type != JSON_TRUE && n->type != JSON_FALSE))
        return 0;
    *out = n->type == JSON_TRUE;
    return 1;
}

const char *json_get_str(const json_doc *d, const json_node *obj, const char *key)
{
    const json_node *n = json_get_val(d, obj, key);
    return n && n->type == JSON_STRING ? n->str : NULL;
}

void json_write_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}
