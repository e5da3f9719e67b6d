/* router.c - language detection for routing prompts to language experts.
 *
 * The data format and the features are described in router.h.  The trainer
 * (tools/train_router.c) takes its features from cm_router_features, which
 * runs the very scanner cm_router_classify runs. */
#include "experts/router.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "util/atomic_file.h"

#ifndef CM_PKGDATADIR
#define CM_PKGDATADIR "/usr/local/share/codemoe"
#endif
#ifndef CM_SRCDIR
#define CM_SRCDIR "."
#endif

#define MAGIC "CMROUTER"
#define VERSION 1
#define FEATURE_SET 1
#define HEADER_BYTES 32
#define NAME_BYTES 16
#define MAX_FILE_BYTES (64u << 20)

#define FNV_OFFSET 0x811C9DC5u
#define FNV_PRIME 0x01000193u
#define SALT_UNI 0x5bd1e995u
#define SALT_BOL 0x27d4eb2fu
#define SALT_PAIR 0x165667b1u
#define PAIR_MUL 0x9E3779B1u

const char *const cm_known_langs[CM_N_KNOWN_LANGS] = {
    "c", "cpp", "python", "java", "javascript", "go", "rust",
};

struct cm_router {
    int n_langs;
    int lanes;        /* row stride in memory: n_langs rounded up to 8 or 16 */
    unsigned bits;
    float scale;
    float bias[CM_ROUTER_MAX_LANGS];
    char names[CM_ROUTER_MAX_LANGS][NAME_BYTES];
    int16_t *w;       /* 2^bits rows of `lanes` weights; padding lanes are 0 */
};

/* ------------------------------------------------------------ loading */

static uint32_t rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float rd_f32(const unsigned char *p)
{
    uint32_t u = rd_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t fnv1a(const unsigned char *p, size_t n)
{
    uint32_t h = FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * FNV_PRIME;
    return h;
}

static int name_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '_' || c == '-';
}

/* A name field: 1..15 allowed characters, then NULs to the end. */
static int name_ok(const unsigned char *p)
{
    int n = 0;
    while (n < NAME_BYTES && p[n])
        if (!name_char_ok(p[n++]))
            return 0;
    if (n == 0 || n == NAME_BYTES)
        return 0;
    for (int i = n; i < NAME_BYTES; i++)
        if (p[i])
            return 0;
    return 1;
}

static cm_status parse_header(const unsigned char *p, size_t len, cm_router *r, cm_err *err)
{
    if (len < HEADER_BYTES + 4)
        return cm_fail(err, CM_E_FORMAT, "router data: %zu bytes is too short", len);
    if (memcmp(p, MAGIC, 8) != 0)
        return cm_fail(err, CM_E_FORMAT, "router data: bad magic (not a router.bin)");
    uint32_t version = rd_u32(p + 8), n = rd_u32(p + 12), bits = rd_u32(p + 16);
    uint32_t fset = rd_u32(p + 20), reserved = rd_u32(p + 28);
    float scale = rd_f32(p + 24);
    if (version != VERSION)
        return cm_fail(err, CM_E_FORMAT, "router data: version %u, expected %d", version, VERSION);
    if (n < 2 || n > CM_ROUTER_MAX_LANGS)
        return cm_fail(err, CM_E_FORMAT, "router data: %u languages (want 2..%d)", n,
                       CM_ROUTER_MAX_LANGS);
    if (bits < 10 || bits > 22)
        return cm_fail(err, CM_E_FORMAT, "router data: hash_bits %u out of range 10..22", bits);
    if (fset != FEATURE_SET || reserved != 0)
        return cm_fail(err, CM_E_FORMAT, "router data: unknown feature set %u", fset);
    if (!isfinite(scale) || scale <= 0 || scale > 1e3f)
        return cm_fail(err, CM_E_FORMAT, "router data: bad weight scale %g", (double)scale);
    r->n_langs = (int)n;
    r->lanes = n <= 8 ? 8 : 16;
    r->bits = bits;
    r->scale = scale;
    return CM_OK;
}

static cm_status parse_langs(const unsigned char *p, cm_router *r, cm_err *err)
{
    for (int i = 0; i < r->n_langs; i++) {
        const unsigned char *nm = p + (size_t)i * NAME_BYTES;
        if (!name_ok(nm))
            return cm_fail(err, CM_E_FORMAT, "router data: language name %d is malformed", i);
        memcpy(r->names[i], nm, NAME_BYTES);
        for (int j = 0; j < i; j++)
            if (!strcmp(r->names[j], r->names[i]))
                return cm_fail(err, CM_E_FORMAT, "router data: language '%s' listed twice",
                               r->names[i]);
    }
    p += (size_t)r->n_langs * NAME_BYTES;
    for (int i = 0; i < r->n_langs; i++) {
        float b = rd_f32(p + 4 * (size_t)i);
        if (!isfinite(b) || fabsf(b) > 1e4f)
            return cm_fail(err, CM_E_FORMAT, "router data: bias of '%s' is not a sane number",
                           r->names[i]);
        r->bias[i] = b;
    }
    return CM_OK;
}

/* Copies the weights into rows padded to `lanes`, so that summing a row is
 * a fixed-length loop the compiler vectorizes. */
static cm_status load_weights(const unsigned char *p, cm_router *r, cm_err *err)
{
    size_t rows = (size_t)1 << r->bits;
    r->w = calloc(rows * (size_t)r->lanes, sizeof *r->w);
    if (!r->w)
        return cm_fail(err, CM_E_NOMEM, "router data: out of memory for %zu weights", rows);
    for (size_t b = 0; b < rows; b++)
        for (int l = 0; l < r->n_langs; l++) {
            const unsigned char *q = p + 2 * (b * (size_t)r->n_langs + (size_t)l);
            r->w[b * (size_t)r->lanes + (size_t)l] = (int16_t)(uint16_t)(q[0] | q[1] << 8);
        }
    return CM_OK;
}

cm_status cm_router_parse(const void *buf, size_t len, cm_router **out, cm_err *err)
{
    const unsigned char *p = buf;
    cm_router *r = calloc(1, sizeof *r);
    *out = NULL;
    if (!r)
        return cm_fail(err, CM_E_NOMEM, "router data: out of memory");
    cm_status st = parse_header(p, len, r, err);
    if (st == CM_OK) {
        size_t n = (size_t)r->n_langs;
        size_t want = HEADER_BYTES + n * (NAME_BYTES + 4) + 2 * n * ((size_t)1 << r->bits) + 4;
        if (len != want)
            st = cm_fail(err, CM_E_FORMAT, "router data: %zu bytes, expected %zu (truncated?)",
                         len, want);
        else if (fnv1a(p, len - 4) != rd_u32(p + len - 4))
            st = cm_fail(err, CM_E_FORMAT, "router data: checksum mismatch (corrupted file)");
        else if ((st = parse_langs(p + HEADER_BYTES, r, err)) == CM_OK)
            st = load_weights(p + HEADER_BYTES + n * (NAME_BYTES + 4), r, err);
    }
    if (st != CM_OK) {
        cm_router_free(r);
        return st;
    }
    *out = r;
    return CM_OK;
}

cm_status cm_router_load(const char *path, cm_router **out, cm_err *err)
{
    *out = NULL;
    FILE *f;
    cm_status os = cm_fopen_regular(path, &f, err); /* a FIFO would block fopen */
    if (os)
        return os;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > MAX_FILE_BYTES) {
        fclose(f);
        return cm_fail(err, CM_E_FORMAT, "router data %s: not a regular file of sane size", path);
    }
    size_t len = (size_t)sb.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        return cm_fail(err, CM_E_NOMEM, "router data %s: out of memory", path);
    }
    size_t got = fread(buf, 1, len, f);
    int bad = ferror(f);
    fclose(f);
    cm_status st;
    if (bad || got != len)
        st = cm_fail(err, CM_E_IO, "cannot read router data %s", path);
    else if ((st = cm_router_parse(buf, len, out, err)) != CM_OK) {
        /* Name the file: parse errors only say "router data". */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
        cm_fail(err, st, "%s (%s)", msg, path);
    }
    free(buf);
    return st;
}

void cm_router_free(cm_router *r)
{
    if (!r)
        return;
    free(r->w);
    free(r);
}

int cm_router_n_langs(const cm_router *r)
{
    return r->n_langs;
}

const char *cm_router_lang(const cm_router *r, int i)
{
    return i >= 0 && i < r->n_langs ? r->names[i] : NULL;
}

int cm_router_lang_index(const cm_router *r, const char *name)
{
    for (int i = 0; name && i < r->n_langs; i++)
        if (!strcmp(r->names[i], name))
            return i;
    return -1;
}

/* ------------------------------------------------------------ features */

static uint32_t fmix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

/* Feature sums are kept in int32 per block of features (no overflow:
 * FLUSH_EVERY * 32767 < 2^31) and folded into int64 totals. */
#define FLUSH_EVERY 32768

/* One scanner serves both users of the features, so that the trainer
 * (through cm_router_features) and the classifier can never disagree: with
 * r set, each feature adds its weight row to the sums; with r NULL, its
 * bucket is written to out (while there is room). */
typedef struct {
    const cm_router *r;
    uint32_t *out;       /* bucket output when r is NULL */
    size_t cap;
    uint32_t mask;
    uint32_t w;          /* the last 4 normalized bytes, newest on top */
    uint32_t tok;        /* FNV-1a of the token being read */
    uint32_t prev;       /* the previous token's hash */
    int kind;            /* token being read: 0 none, 1 identifier, 2 number */
    int have_prev, bol;
    uint32_t in_block;
    uint64_t n;          /* features counted */
    int32_t part[16];
    int64_t total[16];
} scan;

static void flush(scan *s)
{
    for (int l = 0; l < 16; l++) {
        s->total[l] += s->part[l];
        s->part[l] = 0;
    }
    s->in_block = 0;
}

static inline void add(scan *s, uint32_t key)
{
    uint32_t bucket = fmix32(key) & s->mask;
    if (!s->r) {
        if (s->n < s->cap)
            s->out[s->n] = bucket;
        s->n++;
        return;
    }
    const int16_t *row = s->r->w + (size_t)bucket * (size_t)s->r->lanes;
    if (s->r->lanes == 8) {
        for (int l = 0; l < 8; l++)
            s->part[l] += row[l];
    } else {
        for (int l = 0; l < 16; l++)
            s->part[l] += row[l];
    }
    s->n++;
    if (++s->in_block == FLUSH_EVERY)
        flush(s);
}

static void emit_token(scan *s, uint32_t h)
{
    add(s, h ^ SALT_UNI);
    if (s->bol)
        add(s, h ^ SALT_BOL);
    if (s->have_prev)
        add(s, (s->prev * PAIR_MUL + h) ^ SALT_PAIR);
    s->bol = 0;
    s->have_prev = 1;
    s->prev = h;
}

static int is_word(unsigned c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '0' || c == '_';
}

static const uint32_t HASH_ZERO = (FNV_OFFSET ^ '0') * FNV_PRIME; /* the token "0" */

/* Advances the token scanner by one normalized byte. */
static void scan_token(scan *s, unsigned c)
{
    if (s->kind == 1) {
        if (is_word(c)) {
            s->tok = (s->tok ^ c) * FNV_PRIME;
            return;
        }
        emit_token(s, s->tok);
    } else if (s->kind == 2) {
        if (is_word(c) || c == '.')
            return;
        emit_token(s, HASH_ZERO);
    }
    s->kind = 0;
    if (c == '\n')
        s->bol = 1;
    else if (c == ' ' || c == '\t')
        return;
    else if (c == '0')
        s->kind = 2;
    else if (is_word(c)) {
        s->kind = 1;
        s->tok = (FNV_OFFSET ^ c) * FNV_PRIME;
    } else
        emit_token(s, (FNV_OFFSET ^ c) * FNV_PRIME);
}

/* The byte normalization of router.h; -1 for a dropped byte ('\r'). */
static int normalize(unsigned char c)
{
    if (c == '\r')
        return -1;
    if (c >= 0x80)
        return 0x80;
    if (c >= '1' && c <= '9')
        return '0';
    if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f)
        return ' ';
    return c;
}

/* Runs the scanner over the text (its first CM_ROUTER_MAX_TEXT bytes);
 * s->r, s->out and s->mask are set by the caller. */
static void scan_text(scan *s, const char *text, size_t len)
{
    s->bol = 1;
    if (len > CM_ROUTER_MAX_TEXT)
        len = CM_ROUTER_MAX_TEXT;
    for (size_t i = 0; i < len; i++) {
        int c = normalize((unsigned char)text[i]);
        if (c < 0)
            continue;
        s->w = s->w >> 8 | (uint32_t)c << 24;
        add(s, s->w);
        add(s, s->w >> 8);
        add(s, s->w >> 16);
        add(s, s->w >> 24);
        scan_token(s, (unsigned)c);
    }
    if (s->kind == 1)
        emit_token(s, s->tok);
    else if (s->kind == 2)
        emit_token(s, HASH_ZERO);
}

size_t cm_router_features(const char *text, size_t len, unsigned hash_bits, uint32_t *out,
                          size_t cap)
{
    scan s;
    memset(&s, 0, sizeof s);
    s.out = out;
    s.cap = out ? cap : 0;
    s.mask = hash_bits >= 32 ? 0xFFFFFFFFu : ((uint32_t)1 << hash_bits) - 1;
    scan_text(&s, text, len);
    return (size_t)s.n;
}

int cm_router_classify(const cm_router *r, const char *text, size_t len, float *probs)
{
    scan s;
    memset(&s, 0, sizeof s);
    s.r = r;
    s.mask = ((uint32_t)1 << r->bits) - 1;
    scan_text(&s, text, len);
    flush(&s);

    double logit[CM_ROUTER_MAX_LANGS], mx = -INFINITY, z = 0;
    double k = s.n ? (double)r->scale / sqrt((double)s.n) : 0.0;
    int best = 0;
    for (int l = 0; l < r->n_langs; l++) {
        logit[l] = r->bias[l] + k * (double)s.total[l];
        if (logit[l] > mx) {
            mx = logit[l];
            best = l;
        }
    }
    for (int l = 0; l < r->n_langs; l++)
        z += exp(logit[l] - mx);
    for (int l = 0; l < r->n_langs; l++)
        probs[l] = (float)(exp(logit[l] - mx) / z);
    return best;
}

/* ------------------------------------------------------------ names */

static const struct {
    const char *alias;
    int lang; /* index into cm_known_langs */
} ALIASES[] = {
    {"c", 0},          {"ansi-c", 0},    {"cpp", 1},        {"c++", 1},
    {"cxx", 1},        {"cc", 1},        {"python", 2},     {"py", 2},
    {"python3", 2},    {"python2", 2},   {"java", 3},       {"javascript", 4},
    {"js", 4},         {"js2", 4},       {"js3", 4},        {"jsx", 4},
    {"node", 4},       {"nodejs", 4},    {"ecmascript", 4}, {"javascriptreact", 4},
    {"go", 5},         {"golang", 5},    {"rust", 6},       {"rs", 6},
    {"rustic", 6},
};

const char *cm_lang_canonical(const char *name)
{
    for (size_t i = 0; name && i < sizeof ALIASES / sizeof *ALIASES; i++)
        if (!strcasecmp(name, ALIASES[i].alias))
            return cm_known_langs[ALIASES[i].lang];
    return NULL;
}

int cm_known_lang_index(const char *name)
{
    for (int i = 0; name && i < CM_N_KNOWN_LANGS; i++)
        if (!strcmp(name, cm_known_langs[i]))
            return i;
    return -1;
}

/* Bits over cm_known_langs. */
#define BIT_C (1u << 0)
#define BIT_CPP (1u << 1)
#define BIT_PY (1u << 2)
#define BIT_JAVA (1u << 3)
#define BIT_JS (1u << 4)
#define BIT_GO (1u << 5)
#define BIT_RUST (1u << 6)

unsigned cm_langs_from_filename(const char *path)
{
    static const struct {
        const char *ext;
        unsigned mask;
    } EXTS[] = {
        {"c", BIT_C},      {"h", BIT_C | BIT_CPP},
        {"cc", BIT_CPP},   {"cpp", BIT_CPP},   {"cxx", BIT_CPP}, {"c++", BIT_CPP},
        {"cp", BIT_CPP},   {"hh", BIT_CPP},    {"hpp", BIT_CPP}, {"hxx", BIT_CPP},
        {"h++", BIT_CPP},  {"ipp", BIT_CPP},   {"tcc", BIT_CPP}, {"tpp", BIT_CPP},
        {"inl", BIT_CPP},  {"ixx", BIT_CPP},   {"cppm", BIT_CPP},
        {"py", BIT_PY},    {"pyw", BIT_PY},    {"pyi", BIT_PY},
        {"java", BIT_JAVA},
        {"js", BIT_JS},    {"mjs", BIT_JS},    {"cjs", BIT_JS},  {"jsx", BIT_JS},
        {"go", BIT_GO},    {"rs", BIT_RUST},
    };
    if (!path)
        return 0;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base || !dot[1])
        return 0; /* no extension, or a dot file like ".profile" */
    const char *ext = dot + 1;
    /* Unix convention: upper-case .C and .H are C++. */
    if (!strcmp(ext, "C") || !strcmp(ext, "H"))
        return BIT_CPP;
    for (size_t i = 0; i < sizeof EXTS / sizeof *EXTS; i++)
        if (!strcasecmp(ext, EXTS[i].ext))
            return EXTS[i].mask;
    return 0;
}

const char *cm_lang_from_filename(const char *path)
{
    unsigned m = cm_langs_from_filename(path);
    if (!m || (m & (m - 1)))
        return NULL;
    for (int i = 0; i < CM_N_KNOWN_LANGS; i++)
        if (m == 1u << i)
            return cm_known_langs[i];
    return NULL;
}

/* ------------------------------------------------------------ text hints */

typedef struct {
    const char *p;
    size_t n;
} span;

/* memmem/memrchr are GNU extensions; these keep the file portable. */
static const char *find_str(const char *p, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(p + i, needle, k))
            return p + i;
    return NULL;
}

static const char *last_byte(const char *p, size_t n, char c)
{
    while (n--)
        if (p[n] == c)
            return p + n;
    return NULL;
}

/* Copies a word (up to a stop character) into buf, lower-cased. */
static void word_at(const char *p, const char *end, const char *stops, char *buf, size_t cap)
{
    size_t k = 0;
    while (p < end && *p && !strchr(stops, *p) && k + 1 < cap)
        buf[k++] = (char)tolower((unsigned char)*p++);
    buf[k] = 0;
}

static int prefix_is(const char *s, const char *pre)
{
    return !strncmp(s, pre, strlen(pre));
}

/* An interpreter's base name: python3.11, pypy3, node, ... */
static const char *lang_of_interpreter(const char *name)
{
    if (prefix_is(name, "python") || prefix_is(name, "pypy"))
        return "python";
    if (!strcmp(name, "node") || !strcmp(name, "nodejs") || !strcmp(name, "deno") ||
        !strcmp(name, "bun") || !strcmp(name, "qjs"))
        return "javascript";
    if (!strcmp(name, "rust-script") || !strcmp(name, "run-cargo-script"))
        return "rust";
    if (!strcmp(name, "gorun"))
        return "go";
    if (!strcmp(name, "java"))
        return "java";
    if (!strcmp(name, "tcc"))
        return "c";
    return NULL;
}

/* "#!/usr/bin/python3 -u" or "#!/usr/bin/env -S node --flag" on line one. */
static const char *shebang_lang(span line)
{
    const char *p = line.p + 2, *end = line.p + line.n;
    char word[64];
    if (line.n < 3 || line.p[0] != '#' || line.p[1] != '!')
        return NULL;
    for (int words = 0; words < 8 && p < end; words++) {
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *start = p;
        while (p < end && *p != ' ' && *p != '\t')
            p++;
        const char *slash = last_byte(start, (size_t)(p - start), '/');
        word_at(slash ? slash + 1 : start, p, " \t", word, sizeof word);
        if (!word[0])
            break;
        /* env takes options and VAR=value settings before the program. */
        if (!strcmp(word, "env") || word[0] == '-' || strchr(word, '='))
            continue;
        return lang_of_interpreter(word);
    }
    return NULL;
}

/* Vim: "[text]{white}{vi:|vim:|ex:}[white]{options}" with ft=/filetype=. */
static const char *vim_lang(span line)
{
    static const char *const marks[] = {"vim:", "vi:", "ex:", "Vim:"};
    const char *end = line.p + line.n;
    for (size_t m = 0; m < sizeof marks / sizeof *marks; m++) {
        size_t ml = strlen(marks[m]);
        for (const char *p = line.p; p + ml <= end; p++) {
            if (memcmp(p, marks[m], ml) != 0)
                continue;
            if (p > line.p && p[-1] != ' ' && p[-1] != '\t')
                continue; /* "vi:" inside a word, e.g. "navi:" */
            for (const char *q = p + ml; q < end; q++) {
                static const char *const keys[] = {"filetype=", "ft=", "syntax=", "syn="};
                for (size_t k = 0; k < 4; k++) {
                    size_t kl = strlen(keys[k]);
                    int starts = q == p + ml || q[-1] == ' ' || q[-1] == ':' || q[-1] == '\t';
                    if (starts && (size_t)(end - q) > kl && !memcmp(q, keys[k], kl)) {
                        char val[32];
                        word_at(q + kl, end, " \t:", val, sizeof val);
                        return cm_lang_canonical(val);
                    }
                }
            }
        }
    }
    return NULL;
}

/* Emacs: "-*- mode: c++; ... -*-" or "-*- python -*-". */
static const char *emacs_lang(span line)
{
    const char *end = line.p + line.n;
    const char *a = find_str(line.p, line.n, "-*-");
    if (!a)
        return NULL;
    a += 3;
    const char *b = find_str(a, (size_t)(end - a), "-*-");
    if (!b)
        return NULL;
    char val[32];
    const char *colon = memchr(a, ':', (size_t)(b - a));
    if (!colon) {
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        word_at(a, b, " \t;", val, sizeof val);
    } else {
        const char *m = NULL;
        for (const char *p = a; p + 5 <= b && !m; p++)
            if (!strncasecmp(p, "mode:", 5) && (p == a || p[-1] == ' ' || p[-1] == ';'))
                m = p + 5;
        if (!m)
            return NULL;
        while (m < b && (*m == ' ' || *m == '\t'))
            m++;
        word_at(m, b, " \t;", val, sizeof val);
    }
    size_t n = strlen(val);
    if (n > 5 && !strcmp(val + n - 5, "-mode"))
        val[n -= 5] = 0; /* python-mode */
    if (n > 3 && !strcmp(val + n - 3, "-ts"))
        val[n - 3] = 0; /* python-ts-mode */
    return cm_lang_canonical(val);
}

#define HINT_LINES 5

/* The first HINT_LINES lines, then the last HINT_LINES lines that are not
 * among them (the final newline does not start an empty last line). */
static int hint_lines(const char *text, size_t len, span *out)
{
    int n = 0;
    size_t pos = 0;
    while (n < HINT_LINES && pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t e = nl ? (size_t)(nl - text) : len;
        out[n++] = (span){text + pos, e - pos};
        pos = e + 1;
    }
    size_t end = len;
    if (end > pos && text[end - 1] == '\n')
        end--;
    for (int k = 0; k < HINT_LINES && end > pos; k++) {
        const char *nl = last_byte(text + pos, end - pos, '\n');
        size_t s = nl ? (size_t)(nl - text) + 1 : pos;
        out[n++] = (span){text + s, end - s};
        if (!nl)
            break;
        end = s - 1;
    }
    return n;
}

const char *cm_lang_from_text_hints(const char *text, size_t len)
{
    span lines[2 * HINT_LINES];
    if (!text || !len)
        return NULL;
    int n = hint_lines(text, len, lines);
    const char *lang = shebang_lang(lines[0]);
    for (int i = 0; !lang && i < n; i++) {
        lang = vim_lang(lines[i]);
        if (!lang)
            lang = emacs_lang(lines[i]);
    }
    return lang;
}

/* ------------------------------------------------------------ decision */

static int is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

const char *cm_router_default_path(char *buf, size_t cap)
{
    const char *env = getenv("CODEMOE_ROUTER");
    if (env && *env) {
        snprintf(buf, cap, "%s", env);
        return buf;
    }
    static const char *const cands[] = {CM_PKGDATADIR "/router.bin",
                                        CM_SRCDIR "/models/router.bin"};
    for (size_t i = 0; i < sizeof cands / sizeof *cands; i++)
        if (is_file(cands[i])) {
            snprintf(buf, cap, "%s", cands[i]);
            return buf;
        }
    return NULL;
}

/* Among the known languages in mask (several, e.g. c|cpp for ".h"), the
 * one the classifier prefers; its probability renormalized over the mask. */
static const char *pick_among(const cm_route *o, const cm_router *r, unsigned mask, float *conf)
{
    const char *best = NULL;
    float bp = -1, sum = 0;
    for (int i = 0; i < CM_N_KNOWN_LANGS; i++) {
        if (!(mask & 1u << i))
            continue;
        int j = r ? cm_router_lang_index(r, cm_known_langs[i]) : -1;
        float p = j >= 0 ? o->probs[j] : 0;
        sum += p;
        if (!best || p > bp) {
            best = cm_known_langs[i];
            bp = p;
        }
    }
    *conf = sum > 0 ? bp / sum : 1;
    return best;
}

void cm_route_decide(const cm_router *r, const cm_route_opts *opts, const char *text,
                     size_t len, cm_route *out)
{
    memset(out, 0, sizeof *out);
    int best = -1;
    if (r) {
        out->n_langs = r->n_langs;
        best = cm_router_classify(r, text, len, out->probs);
    }
    out->confidence = 1;
    unsigned mask;
    const char *hint;
    if (opts->lang) {
        const char *canon = cm_lang_canonical(opts->lang);
        out->lang = canon ? canon : opts->lang;
        out->source = CM_ROUTE_EXPLICIT;
    } else if ((mask = cm_langs_from_filename(opts->filename)) != 0) {
        out->lang = pick_among(out, r, mask, &out->confidence);
        out->source = CM_ROUTE_FILENAME;
    } else if (opts->use_hints && (hint = cm_lang_from_text_hints(text, len)) != NULL) {
        out->lang = hint;
        out->source = CM_ROUTE_HINT;
    } else if (best >= 0 && out->probs[best] >= opts->threshold) {
        out->lang = r->names[best];
        out->source = CM_ROUTE_CLASSIFIER;
        out->confidence = out->probs[best];
    } else {
        out->lang = "unknown";
        out->source = CM_ROUTE_UNKNOWN;
        out->confidence = best >= 0 ? out->probs[best] : 0;
    }
}
