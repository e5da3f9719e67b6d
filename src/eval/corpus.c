/* corpus.c - the shared code corpus (xz-compressed JSONL) as one text. */
#include "eval/corpus.h"

#include <dirent.h>
#include <errno.h>
#include <lzma.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/atomic_file.h"

#define LINE_MAX_BYTES ((size_t)256 << 20) /* a longer line is surely not JSONL */
#define JSON_DEPTH 64

cm_status cm_buf_append(cm_buf *b, const void *data, size_t n, cm_err *err)
{
    if (n > SIZE_MAX / 2 - b->len)
        return cm_fail(err, CM_E_NOMEM, "text too large");
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return cm_fail(err, CM_E_NOMEM, "out of memory for %zu bytes of text", b->len + n);
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0; /* always a C string, for convenience */
    return CM_OK;
}

void cm_buf_free(cm_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------ JSON line */

/* A cursor over one line.  Decoded string bytes go to buf when set; member
 * names go to key (only the first bytes matter: we look for "content"). */
typedef struct {
    const char *start, *p, *end;
    char *why;
    size_t why_cap;
    cm_buf *buf;
    char key[8];
    size_t n_out;
} jscan;

static cm_status jfail(jscan *s, const char *what)
{
    snprintf(s->why, s->why_cap, "column %zu: %s", (size_t)(s->p - s->start) + 1, what);
    return CM_E_FORMAT;
}

static void skip_ws(jscan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\r' || *s->p == '\n'))
        s->p++;
}

static cm_status emit(jscan *s, const char *bytes, size_t n)
{
    if (!s->buf) {
        for (size_t i = 0; i < n && s->n_out + i < sizeof s->key; i++)
            s->key[s->n_out + i] = bytes[i];
        s->n_out += n;
        return CM_OK;
    }
    s->n_out += n;
    return cm_buf_append(s->buf, bytes, n, NULL) ? CM_E_NOMEM : CM_OK;
}

static int hex4(const char *p, const char *end, unsigned *out)
{
    unsigned v = 0;
    if (end - p < 4)
        return 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return 0;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 1;
}

static size_t utf8_put(unsigned cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)), o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* \uXXXX at s->p (just after the backslash-u), with a following low
 * surrogate when the first is a high one.  Lone surrogates give U+FFFD. */
static cm_status unicode_escape(jscan *s)
{
    unsigned cp, lo;
    char o[4];
    if (!hex4(s->p, s->end, &cp))
        return jfail(s, "\\u needs four hex digits");
    s->p += 4;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u' &&
            hex4(s->p + 2, s->end, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            s->p += 6;
        } else
            cp = 0xFFFD;
    } else if (cp >= 0xDC00 && cp <= 0xDFFF)
        cp = 0xFFFD;
    return emit(s, o, utf8_put(cp, o));
}

static cm_status escape(jscan *s)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (s->p >= s->end)
        return jfail(s, "unterminated string");
    char c = *s->p++;
    if (c == 'u')
        return unicode_escape(s);
    const char *hit = c ? strchr(from, c) : NULL;
    if (!hit) {
        s->p--;
        return jfail(s, "invalid escape in string");
    }
    return emit(s, &to[hit - from], 1);
}

/* A string starting at the opening quote. */
static cm_status scan_string(jscan *s)
{
    cm_status st;
    s->p++;
    s->n_out = 0;
    for (;;) {
        const char *run = s->p;
        while (s->p < s->end && *s->p != '"' && *s->p != '\\' && (unsigned char)*s->p >= 0x20)
            s->p++;
        if (s->p > run && (st = emit(s, run, (size_t)(s->p - run))))
            return st;
        if (s->p >= s->end)
            return jfail(s, "unterminated string");
        char c = *s->p++;
        if (c == '"')
            return CM_OK;
        if (c != '\\') {
            s->p--;
            return jfail(s, "control character in string");
        }
        if ((st = escape(s)))
            return st;
    }
}

static int is_digit(const jscan *s)
{
    return s->p < s->end && *s->p >= '0' && *s->p <= '9';
}

/* The JSON number grammar, strictly (no leading zeros, no bare '.'). */
static cm_status scan_number(jscan *s)
{
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (!is_digit(s))
        return jfail(s, "invalid value");
    if (*s->p++ != '0')
        while (is_digit(s))
            s->p++;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!is_digit(s))
            return jfail(s, "invalid number");
        while (is_digit(s))
            s->p++;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!is_digit(s))
            return jfail(s, "invalid number");
        while (is_digit(s))
            s->p++;
    }
    return CM_OK;
}

static cm_status skip_value(jscan *s, int depth);

/* Elements of an array or members of an object, after the opening bracket. */
static cm_status skip_container(jscan *s, int depth, int is_obj)
{
    char close = is_obj ? '}' : ']';
    cm_status st;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return CM_OK;
    }
    for (;;) {
        skip_ws(s);
        if (is_obj) {
            if (s->p >= s->end || *s->p != '"')
                return jfail(s, "expected a member name");
            if ((st = scan_string(s)))
                return st;
            skip_ws(s);
            if (s->p >= s->end || *s->p++ != ':')
                return jfail(s, "expected ':'");
        }
        if ((st = skip_value(s, depth + 1)))
            return st;
        skip_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return CM_OK;
        }
        return jfail(s, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

/* Any value, validated and discarded (nothing is emitted). */
static cm_status skip_value(jscan *s, int depth)
{
    static const char *const lits[] = {"true", "false", "null"};
    cm_buf *saved = s->buf;
    cm_status st;
    skip_ws(s);
    if (depth > JSON_DEPTH)
        return jfail(s, "nested too deeply");
    if (s->p >= s->end)
        return jfail(s, "expected a value");
    if (*s->p == '"') {
        s->buf = NULL;
        st = scan_string(s);
        s->buf = saved;
        return st;
    }
    if (*s->p == '{' || *s->p == '[') {
        int is_obj = *s->p++ == '{';
        s->buf = NULL;
        st = skip_container(s, depth, is_obj);
        s->buf = saved;
        return st;
    }
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if ((size_t)(s->end - s->p) >= n && !memcmp(s->p, lits[i], n)) {
            s->p += n;
            return CM_OK;
        }
    }
    return scan_number(s);
}

/* One member of the top-level object: "content" is decoded into out. */
static cm_status top_member(jscan *s, cm_buf *out, int *found)
{
    cm_status st;
    s->buf = NULL;
    if (s->p >= s->end || *s->p != '"')
        return jfail(s, "expected a member name");
    if ((st = scan_string(s)))
        return st;
    int is_content = s->n_out == 7 && !memcmp(s->key, "content", 7);
    skip_ws(s);
    if (s->p >= s->end || *s->p++ != ':')
        return jfail(s, "expected ':'");
    skip_ws(s);
    if (!is_content)
        return skip_value(s, 1);
    if (*found)
        return jfail(s, "\"content\" appears twice");
    if (s->p >= s->end || *s->p != '"')
        return jfail(s, "\"content\" is not a string");
    *found = 1;
    s->buf = out;
    st = scan_string(s);
    s->buf = NULL;
    return st;
}

cm_status cm_jsonl_content(const char *line, size_t len, cm_buf *out, char *why, size_t why_cap)
{
    jscan s = {.start = line, .p = line, .end = line + len, .why = why, .why_cap = why_cap};
    int found = 0;
    cm_status st;
    skip_ws(&s);
    if (s.p >= s.end || *s.p++ != '{')
        return jfail(&s, "expected a JSON object");
    skip_ws(&s);
    if (s.p < s.end && *s.p == '}')
        s.p++;
    else
        for (;;) {
            if ((st = top_member(&s, out, &found)))
                return st == CM_E_NOMEM ? (snprintf(why, why_cap, "out of memory"), st) : st;
            skip_ws(&s);
            if (s.p < s.end && *s.p == ',') {
                s.p++;
                skip_ws(&s);
                continue;
            }
            if (s.p >= s.end || *s.p++ != '}')
                return jfail(&s, "expected ',' or '}'");
            break;
        }
    skip_ws(&s);
    if (s.p != s.end)
        return jfail(&s, "unexpected text after the object");
    if (!found) {
        snprintf(why, why_cap, "no \"content\" member");
        return CM_E_FORMAT;
    }
    return CM_OK;
}

/* ------------------------------------------------------- streaming lines */

typedef struct {
    const char *path;
    cm_buf line;     /* a line split across decoder outputs */
    cm_buf *out;     /* documents joined here, or ... */
    cm_doc_fn on_doc; /* ... each handed to this, decoded into doc */
    void *ctx;
    cm_buf doc;
    cm_corpus_info *info;
    size_t max_bytes;
    int stop;        /* max_bytes reached */
    int bad;         /* a JSON error is recorded in bad_err */
    cm_err bad_err;
} line_feed;

static int is_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return 0;
    return 1;
}

static cm_status one_line(line_feed *lf, const char *p, size_t n, cm_err *err)
{
    char why[160];
    lf->info->n_lines++;
    if (is_blank(p, n))
        return CM_OK;
    cm_buf *to = lf->on_doc ? &lf->doc : lf->out;
    if (lf->on_doc)
        lf->doc.len = 0;
    else if (lf->out->len && cm_buf_append(lf->out, "\n\n", 2, err))
        return CM_E_NOMEM;
    cm_status st = cm_jsonl_content(p, n, to, why, sizeof why);
    if (st == CM_E_NOMEM)
        return cm_fail(err, st, "%s: out of memory", lf->path);
    if (st) {
        /* Kept aside: if the xz data turns out corrupt, that is the real
         * cause and the better message (see xz_decode). */
        lf->bad = 1;
        cm_fail(&lf->bad_err, st, "%s: line %zu: %s", lf->path, lf->info->n_lines, why);
        return CM_OK;
    }
    lf->info->n_docs++;
    if (lf->on_doc)
        return lf->on_doc(lf->ctx, lf->doc.p ? lf->doc.p : "", lf->doc.len, err);
    if (lf->max_bytes && lf->out->len >= lf->max_bytes)
        lf->stop = 1;
    return CM_OK;
}

static cm_status feed(line_feed *lf, const char *p, size_t n, cm_err *err)
{
    while (n && !lf->stop && !lf->bad) {
        const char *nl = memchr(p, '\n', n);
        size_t seg = nl ? (size_t)(nl - p) : n;
        if (lf->line.len + seg > LINE_MAX_BYTES)
            return cm_fail(err, CM_E_FORMAT, "%s: line %zu is longer than %zu MiB", lf->path,
                           lf->info->n_lines + 1, LINE_MAX_BYTES >> 20);
        if (!nl || lf->line.len) { /* only partial lines are copied */
            if (cm_buf_append(&lf->line, p, seg, err))
                return CM_E_NOMEM;
        }
        if (nl) {
            cm_status st = lf->line.len ? one_line(lf, lf->line.p, lf->line.len, err)
                                        : one_line(lf, p, seg, err);
            if (st)
                return st;
            lf->line.len = 0;
            seg++;
        }
        p += seg;
        n -= seg;
    }
    return CM_OK;
}

static cm_status xz_error(const char *path, lzma_ret r, cm_err *err)
{
    switch (r) {
    case LZMA_MEM_ERROR:
        return cm_fail(err, CM_E_NOMEM, "%s: out of memory decoding xz", path);
    case LZMA_FORMAT_ERROR:
        return cm_fail(err, CM_E_FORMAT, "%s: not xz-compressed data", path);
    case LZMA_DATA_ERROR:
        return cm_fail(err, CM_E_FORMAT, "%s: corrupt xz data", path);
    case LZMA_BUF_ERROR:
        return cm_fail(err, CM_E_FORMAT, "%s: truncated xz data", path);
    case LZMA_OPTIONS_ERROR:
        return cm_fail(err, CM_E_UNSUPPORTED, "%s: unsupported xz options", path);
    default:
        return cm_fail(err, CM_E_FORMAT, "%s: xz decoding failed (liblzma error %d)", path, (int)r);
    }
}

enum { XZ_IN = 1 << 16, XZ_OUT = 1 << 18 };

/* Decodes f into lf.  After a JSON error the rest is still decoded (not
 * parsed): corrupt xz data often decodes to garbage before liblzma notices,
 * and "corrupt xz data" is then the truthful message. */
static cm_status xz_decode(FILE *f, line_feed *lf, uint8_t *in, uint8_t *outb, cm_err *err)
{
    lzma_stream zs = LZMA_STREAM_INIT;
    lzma_ret r = lzma_stream_decoder(&zs, UINT64_MAX, LZMA_CONCATENATED);
    if (r != LZMA_OK)
        return xz_error(lf->path, r, err);
    lzma_action act = LZMA_RUN;
    cm_status st = CM_OK;
    zs.next_out = outb;
    zs.avail_out = XZ_OUT;
    while (!st && !lf->stop) {
        if (zs.avail_in == 0 && act == LZMA_RUN) {
            zs.next_in = in;
            zs.avail_in = fread(in, 1, XZ_IN, f);
            if (ferror(f)) {
                st = cm_fail(err, CM_E_IO, "cannot read %s: %s", lf->path, strerror(errno));
                break;
            }
            if (feof(f))
                act = LZMA_FINISH;
        }
        r = lzma_code(&zs, act);
        if (zs.avail_out == 0 || r == LZMA_STREAM_END) {
            st = feed(lf, (const char *)outb, XZ_OUT - zs.avail_out, err);
            zs.next_out = outb;
            zs.avail_out = XZ_OUT;
        }
        if (r == LZMA_STREAM_END)
            break;
        if (r != LZMA_OK && !st)
            st = xz_error(lf->path, r, err);
    }
    lzma_end(&zs);
    return st;
}

static cm_status read_lines(line_feed *lf, cm_err *err)
{
    const char *path = lf->path;
    cm_corpus_info *info = lf->info;
    memset(info, 0, sizeof *info);
    FILE *f;
    cm_status st = cm_fopen_regular(path, &f, err); /* a FIFO would block fopen */
    if (st)
        return st;
    uint8_t *in = malloc(XZ_IN), *outb = malloc(XZ_OUT);
    st = in && outb ? xz_decode(f, lf, in, outb, err) : cm_fail(err, CM_E_NOMEM, "out of memory");
    /* a last line without a newline still counts */
    if (!st && !lf->stop && !lf->bad && lf->line.len)
        st = one_line(lf, lf->line.p, lf->line.len, err);
    if (!st && lf->bad)
        st = cm_fail(err, lf->bad_err.code, "%s", lf->bad_err.msg);
    info->complete = !st && !lf->stop;
    free(in);
    free(outb);
    cm_buf_free(&lf->line);
    cm_buf_free(&lf->doc);
    fclose(f);
    return st;
}

cm_status cm_corpus_read_xz(const char *path, size_t max_bytes, cm_buf *out,
                            cm_corpus_info *info, cm_err *err)
{
    line_feed lf = {.path = path, .out = out, .info = info, .max_bytes = max_bytes};
    return read_lines(&lf, err);
}

cm_status cm_corpus_each_doc(const char *path, cm_doc_fn on_doc, void *ctx,
                             cm_corpus_info *info, cm_err *err)
{
    line_feed lf = {.path = path, .on_doc = on_doc, .ctx = ctx, .info = info};
    return read_lines(&lf, err);
}

/* ------------------------------------------------------------- the layout */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

#define SPLIT_SUFFIX ".jsonl.xz"

/* dir's language folders (suffix NULL) or the names of its files ending in
 * suffix (without it), sorted, as "c, cpp, go" for a message. */
static void list_names(const char *dir, const char *suffix, char *buf, size_t cap)
{
    char *names[64], path[1200];
    size_t n = 0, used = 0, sl = suffix ? strlen(suffix) : 0;
    struct stat st;
    DIR *d = opendir(dir);
    buf[0] = 0;
    if (!d)
        return;
    for (struct dirent *e; n < 64 && (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (e->d_name[0] == '.' || stat(path, &st) != 0)
            continue;
        if (suffix ? !S_ISREG(st.st_mode) || len <= sl || strcmp(e->d_name + len - sl, suffix)
                   : !S_ISDIR(st.st_mode))
            continue;
        if (!(names[n] = strndup(e->d_name, len - sl)))
            break;
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof names[0], cmp_str);
    for (size_t i = 0; i < n; i++) {
        if (used < cap)
            used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", names[i]);
        free(names[i]);
    }
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int cm_corpus_name_ok(const char *s)
{
    /* one path component: it cannot leave the corpus folder */
    return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..") && strlen(s) <= 200;
}

/* DIR/LANG/SPLIT.jsonl.xz into path; 0 when it does not fit. */
static int split_path(char *path, size_t cap, const char *dir, const char *lang, const char *split)
{
    return (size_t)snprintf(path, cap, "%s/%s/%s" SPLIT_SUFFIX, dir, lang, split) < cap;
}

cm_status cm_corpus_check_split(const char *dir, const char *lang, const char *split,
                                cm_err *err)
{
    char path[2048], have[400];
    struct stat st;
    if (!cm_corpus_name_ok(split))
        return cm_fail(err, CM_E_USAGE, "option --split: '%s' is not a split name (a file name "
                       "without '/')", split);
    snprintf(path, sizeof path, "%s/%s", dir, lang);
    if (!cm_corpus_name_ok(lang) || !is_dir(path))
        return CM_OK; /* cm_corpus_load names the problem */
    if (!split_path(path, sizeof path, dir, lang, split) || stat(path, &st) == 0)
        return CM_OK;
    snprintf(path, sizeof path, "%s/%s", dir, lang);
    list_names(path, SPLIT_SUFFIX, have, sizeof have);
    return cm_fail(err, CM_E_USAGE, "option --split: corpus %s has no split '%s' for %s (it has: "
                   "%s)", dir, split, lang, *have ? have : "none");
}

cm_status cm_corpus_load(const char *dir, const char *lang, const char *split, size_t max_bytes,
                         cm_buf *out, cm_corpus_info *info, cm_err *err)
{
    char path[2048], have[400];
    struct stat st;
    if (!split)
        split = "valid";
    if (!is_dir(dir))
        return cm_fail(err, CM_E_IO, "corpus directory %s not found", dir);
    if (!cm_corpus_name_ok(lang) || !cm_corpus_name_ok(split))
        return cm_fail(err, CM_E_IO, "bad corpus language '%s' or split '%s'", lang, split);
    snprintf(path, sizeof path, "%s/%s", dir, lang);
    if (!is_dir(path)) {
        list_names(dir, NULL, have, sizeof have);
        return cm_fail(err, CM_E_IO, "corpus %s has no language '%s' (it has: %s)", dir, lang,
                       *have ? have : "none");
    }
    if (!split_path(path, sizeof path, dir, lang, split))
        return cm_fail(err, CM_E_IO, "corpus path %s/%s/%s is too long", dir, lang, split);
    if (stat(path, &st) != 0 && errno == ENOENT) {
        snprintf(path, sizeof path, "%s/%s", dir, lang);
        list_names(path, SPLIT_SUFFIX, have, sizeof have);
        return cm_fail(err, CM_E_IO, "corpus %s has no split '%s' for %s (it has: %s)", dir,
                       split, lang, *have ? have : "none");
    }
    return cm_corpus_read_xz(path, max_bytes, out, info, err);
}
