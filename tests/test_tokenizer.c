/* test_tokenizer.c - the tokenizers against llama.cpp's own tokenizations.
 *
 * Data: $CM_SHARED (default ../shared, then $srcdir/../shared) holding
 * vocab/ggml-vocab-*.gguf with llama.cpp's test vectors (.inp/.out) and
 * fixtures/tokenize/<vocab>.jsonl.  Exit 0 pass, 1 fail, 77 skip (no data). */
#include "tokenizer/tokenizer.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static const char *const vocabs[] = {"starcoder", "deepseek-coder", "refact",
                                     "gpt-2", "llama-spm", "phi-3"};
#define N_VOCABS (sizeof vocabs / sizeof *vocabs)

/* ---------------------------------------------------------------- files */

typedef struct {
    gguf_file f;
    cm_tokenizer *tok;
} vocab;

static int open_vocab(const char *shared, const char *name, vocab *v)
{
    char path[2048];
    cm_err err = {0};
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", shared, name);
    v->tok = NULL;
    if (gguf_open(path, &v->f, &err)) {
        CHECK(0, "%s: %s", path, err.msg);
        return 0;
    }
    if (cm_tokenizer_load(&v->f, &v->tok, &err)) {
        CHECK(0, "%s: load: %s", name, err.msg);
        gguf_close(&v->f);
        return 0;
    }
    return 1;
}

static void close_vocab(vocab *v)
{
    cm_tokenizer_free(v->tok);
    gguf_close(&v->f);
}

/* ----------------------------------------------------------- comparison */

static void print_text(const char *label, const char *s, size_t n)
{
    fprintf(stderr, "  %s (%zu bytes): \"", label, n);
    for (size_t i = 0; i < n && i < 300; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stderr);
        else if (c == '\t')
            fputs("\\t", stderr);
        else if (c < 0x20 || c == 0x7F)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fputs(n > 300 ? "\"...\n" : "\"\n", stderr);
}

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 80; i++)
        fprintf(stderr, " %d", ids[i]);
    fputs(n > 80 ? " ...\n" : "\n", stderr);
}

/* Tokenizes text and compares with want; prints the first mismatch of a
 * vocabulary (*shown counts them). */
static int check_ids(const vocab *v, const char *what, const char *text, size_t len,
                     const int32_t *want, size_t n_want, int *shown)
{
    int32_t *ids = NULL;
    size_t n = 0;
    cm_err err = {0};
    if (cm_tokenize(v->tok, text, len, 0, 0, &ids, &n, &err)) {
        CHECK(0, "%s: tokenize: %s", what, err.msg);
        return 0;
    }
    int ok = n == n_want && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    if (!ok && !(*shown)++) {
        fprintf(stderr, "MISMATCH %s\n", what);
        print_text("text", text, len);
        print_ids("want", want, n_want);
        print_ids("got ", ids, n);
    }
    free(ids);
    return ok;
}

/* Decodes ids back to text (show_special off). */
static char *detok(const vocab *v, const int32_t *ids, size_t n, size_t *len)
{
    size_t cap = 64, at = 0;
    char *s = malloc(cap);
    for (size_t i = 0; s && i < n; i++) {
        size_t k = cm_token_piece(v->tok, ids[i], 0, s + at, cap - at);
        if (k > cap - at) {
            char *b = realloc(s, 2 * (cap + k));
            if (!b) {
                free(s);
                return NULL;
            }
            s = b;
            cap = 2 * (cap + k);
            k = cm_token_piece(v->tok, ids[i], 0, s + at, cap - at);
        }
        at += k;
    }
    *len = at;
    return s;
}

/* decode(encode(text)) == text; SentencePiece adds one leading space. */
static int check_roundtrip(const vocab *v, const char *what, const char *text, size_t len)
{
    int32_t *ids = NULL;
    size_t n = 0, dl = 0;
    cm_err err = {0};
    if (cm_tokenize(v->tok, text, len, 0, 0, &ids, &n, &err))
        return 0;
    char *d = detok(v, ids, n, &dl);
    free(ids);
    if (!d)
        return 0;
    size_t skip = (!strcmp(cm_tok_model(v->tok), "llama") && len && dl && d[0] == ' ');
    int ok = dl - skip == len && !memcmp(d + skip, text, len);
    if (!ok) {
        fprintf(stderr, "ROUNDTRIP %s\n", what);
        print_text("text", text, len);
        print_text("back", d, dl);
    }
    free(d);
    return ok;
}

/* ------------------------------------------------ llama.cpp's vectors */

#define SEP "\n__ggml_vocab_test__\n"

/* Parses space-separated ids of one line; returns the count. */
static size_t parse_id_line(const char *s, const char *end, int32_t *ids, size_t cap)
{
    size_t n = 0;
    while (s < end) {
        char *e;
        long v = strtol(s, &e, 10);
        if (e == s) {
            s++;
            continue;
        }
        if (n < cap)
            ids[n] = (int32_t)v;
        n++;
        s = e;
    }
    return n;
}

static void test_vectors(const char *shared, const char *name, const vocab *v)
{
    char path[2048];
    size_t il = 0, ol = 0;
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf.inp", shared, name);
    char *inp = tl_slurp(path, &il);
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf.out", shared, name);
    char *out = tl_slurp(path, &ol);
    CHECK(inp && out, "%s: missing .inp/.out", name);
    int total = 0, pass = 0, rt = 0, shown = 0;
    static int32_t want[1 << 16];
    char *p = inp, *o = out;
    while (inp && out && *p && *o) {
        char *sep = strstr(p, SEP), *nl = strchr(o, '\n');
        if (!sep || !nl)
            break;
        size_t n = parse_id_line(o, nl, want, sizeof want / sizeof *want);
        char what[128];
        snprintf(what, sizeof what, "%s vector %d", name, total);
        total++;
        pass += check_ids(v, what, p, (size_t)(sep - p), want, n, &shown);
        rt += check_roundtrip(v, what, p, (size_t)(sep - p));
        p = sep + strlen(SEP);
        o = nl + 1;
    }
    CHECK(total > 0 && pass == total, "%s: %d/%d vectors match", name, pass, total);
    CHECK(rt == total, "%s: %d/%d vectors round-trip", name, rt, total);
    printf("%-15s vectors  %3d/%-3d match, %3d round-trip\n", name, pass, total, rt);
    free(inp);
    free(out);
}

/* --------------------------------------------------------- JSON lines */

static void put_utf8(char **o, unsigned cp)
{
    unsigned char *u = (unsigned char *)*o;
    if (cp < 0x80) {
        *u++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *u++ = (unsigned char)(0xC0 | (cp >> 6));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *u++ = (unsigned char)(0xE0 | (cp >> 12));
        *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        *u++ = (unsigned char)(0xF0 | (cp >> 18));
        *u++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    *o = (char *)u;
}

static unsigned hex4(const char *s)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v = v * 16 + (unsigned)(c >= '0' && c <= '9' ? c - '0'
                                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 0);
    }
    return v;
}

/* Unescapes the JSON string starting after its opening quote into out (as
 * large as the input); returns the position after the closing quote. */
static const char *json_string(const char *s, char *out, size_t *len)
{
    char *o = out;
    while (*s && *s != '"') {
        if (*s != '\\') {
            *o++ = *s++;
            continue;
        }
        s++;
        char c = *s++;
        switch (c) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u': {
            unsigned cp = hex4(s);
            s += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && s[0] == '\\' && s[1] == 'u') {
                unsigned lo = hex4(s + 2);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    s += 6;
                }
            }
            put_utf8(&o, cp);
            break;
        }
        default: *o++ = c; break; /* \" \\ \/ */
        }
    }
    *len = (size_t)(o - out);
    return *s ? s + 1 : s;
}

/* Reads {"lang": ..., "text": ..., "ids": [...]}: text into text, ids. */
static int parse_jsonl(const char *line, char *text, size_t *len, int32_t *ids,
                       size_t *n_ids, size_t cap)
{
    const char *t = strstr(line, "\"text\": \"");
    const char *a = strstr(line, "\"ids\": [");
    if (!t || !a)
        return 0;
    json_string(t + 9, text, len);
    *n_ids = 0;
    for (const char *p = a + 8; *p && *p != ']';) {
        char *e;
        long v = strtol(p, &e, 10);
        if (e == p) {
            p++;
            continue;
        }
        if (*n_ids < cap)
            ids[(*n_ids)++] = (int32_t)v;
        p = e;
    }
    return 1;
}

/* llama.cpp's CLI escape processing (\\n \\r \\t \\' \\" \\\\ \\xHH; other
 * backslashes stay), in place; returns the new length. */
static size_t cli_unescape(char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 == n) {
            s[o++] = s[i];
            continue;
        }
        char c = s[++i];
        if (c == 'x' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
            isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            s[o++] = (char)strtol(hex, NULL, 16);
            i += 2;
            continue;
        }
        const char *from = "nrt'\"\\", *to = "\n\r\t'\"\\";
        const char *k = c ? strchr(from, c) : NULL;
        if (k) {
            s[o++] = to[k - from];
        } else {
            s[o++] = '\\';
            s[o++] = c;
        }
    }
    return o;
}

static void test_jsonl(const char *shared, const char *name, const vocab *v)
{
    char path[2048];
    size_t fl = 0;
    snprintf(path, sizeof path, "%s/fixtures/tokenize/%s.jsonl", shared, name);
    char *all = tl_slurp(path, &fl);
    if (!all)
        return; /* not every vocabulary has fixtures */
    char *text = malloc(fl + 1);
    int32_t *ids = malloc((fl + 1) * sizeof *ids);
    int total = 0, pass = 0, rt = 0, shown = 0, escaped = 0;
    for (char *line = all; text && ids && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        size_t len, n;
        if (parse_jsonl(line, text, &len, ids, &n, fl + 1)) {
            char what[128];
            snprintf(what, sizeof what, "%s.jsonl line %d", name, total + 1);
            total++;
            int quiet = 1, ok = check_ids(v, what, text, len, ids, n, &quiet);
            rt += check_roundtrip(v, what, text, len);
            if (!ok && memchr(text, '\\', len)) {
                /* The fixture generator ran llama.cpp's CLI, which processes
                 * backslash escapes in its input by default. */
                len = cli_unescape(text, len);
                ok = check_ids(v, what, text, len, ids, n, &quiet);
                escaped += ok;
            }
            pass += ok || check_ids(v, what, text, len, ids, n, &shown);
        }
        line = nl ? nl + 1 : line + strlen(line);
    }
    CHECK(total > 0 && pass == total, "%s.jsonl: %d/%d lines match", name, pass, total);
    CHECK(rt == total, "%s.jsonl: %d/%d lines round-trip", name, rt, total);
    printf("%-15s fixtures %3d/%-3d match, %3d round-trip (%d after CLI escapes)\n", name,
           pass, total, rt, escaped);
    free(text);
    free(ids);
    free(all);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ------------------------------------------------------ UTF-8 streaming */

/* Strict check that s[0..n) is whole, valid UTF-8 characters. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t k = c < 0x80 ? 1 : c >= 0xF0 && c < 0xF8 ? 4 : c >= 0xE0 ? 3
                 : c >= 0xC0 ? 2 : 0;
        if (!k || (c >= 0xF8) || i + k > n)
            return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
        i += k;
    }
    return 1;
}

/* Feeds s in chunks of `step` bytes; chunks of valid input must come out
 * whole, and everything must come out in the end. */
static int stream_once(const char *s, size_t n, size_t step, int valid)
{
    cm_utf8_stream st = {0};
    char *all = malloc(n + 8), chunk[64 + 4];
    size_t at = 0;
    int ok = all != NULL;
    for (size_t i = 0; ok && i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        size_t w = cm_utf8_stream_push(&st, s + i, k, chunk);
        if (valid && !valid_utf8((unsigned char *)chunk, w))
            ok = 0;
        memcpy(all + at, chunk, w);
        at += w;
    }
    if (ok) {
        at += cm_utf8_stream_flush(&st, all + at);
        ok = at == n && !memcmp(all, s, n) && st.n_pend == 0;
    }
    free(all);
    return ok;
}

static void test_stream(void)
{
    static const char good[] = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80z \xE4\xB8\x80\xC2\xB5";
    static const char bad[] = "\xFF\xC3(\xE2\x82\xF0\x9F\x98\x80\x80\x80\xE2\x82";
    for (size_t step = 1; step <= 5; step++) {
        CHECK(stream_once(good, sizeof good - 1, step, 1), "stream: valid text, step %zu",
              step);
        CHECK(stream_once(bad, sizeof bad - 1, step, 0), "stream: invalid text, step %zu",
              step);
    }
    /* random bytes in random chunks all come out, in order */
    uint64_t rng = 12345;
    char buf[256];
    for (int it = 0; it < 2000; it++) {
        size_t n = rng_next(&rng) % sizeof buf;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = rng_next(&rng);
            buf[i] = (char)(r % 3 ? 0x80 | (r >> 8) % 0x80 : (r >> 8));
        }
        CHECK(stream_once(buf, n, 1 + rng_next(&rng) % 64, 0), "stream: random bytes %d", it);
    }
    /* an incomplete character is held back until its last byte arrives */
    cm_utf8_stream st = {0};
    char out[16];
    CHECK(cm_utf8_stream_push(&st, "\xE2", 1, out) == 0, "stream: lead byte held");
    CHECK(cm_utf8_stream_push(&st, "\x82", 1, out) == 0, "stream: 2 of 3 held");
    CHECK(cm_utf8_stream_push(&st, "\xAC", 1, out) == 3 && !memcmp(out, "\xE2\x82\xAC", 3),
          "stream: euro sign released whole");
    CHECK(cm_utf8_stream_push(&st, "\xF0\x9F", 2, out) == 0 &&
          cm_utf8_stream_flush(&st, out) == 2, "stream: flush returns the tail");
}

/* ---------------------------------------------------------- robustness */

/* Random bytes biased towards what breaks tokenizers: invalid UTF-8, NULs,
 * whitespace runs, digits, multi-byte characters and special texts. */
static size_t random_text(uint64_t *rng, char *buf, size_t cap)
{
    static const char *const bits[] = {
        "<|endoftext|>", "<fim_prefix>", "<s>", "</s>", "<unk>", "\xC3\xB5", "[PAD32022]",
        "<|end|>", "\xE2\x96\x81", "\xF0\x9F\x98\x80", "\xE4\xB8\x80", "'s", "'LL", "\r\n",
        "   ", "\t\t", "123456", "\xC2\xA0", "\xE3\x80\x80"};
    size_t n = 0, want = rng_next(rng) % (rng_next(rng) % 16 ? 300 : cap);
    while (n < want && n + 16 < cap) {
        uint64_t r = rng_next(rng);
        switch (r % 6) {
        case 0: buf[n++] = (char)(r >> 8); break;
        case 1: buf[n++] = (char)(0x80 | ((r >> 8) & 0x7F)); break;
        case 2: buf[n++] = " \n\0a1!"[(r >> 8) % 6]; break;
        case 3: buf[n++] = (char)('a' + (r >> 8) % 26); break;
        default: {
            const char *b = bits[(r >> 8) % (sizeof bits / sizeof *bits)];
            memcpy(buf + n, b, strlen(b));
            n += strlen(b);
        }
        }
    }
    return n;
}

static void fuzz_vocab(const char *name, const vocab *v, uint64_t seed)
{
    uint64_t rng = seed;
    char text[8192], piece[8];
    int32_t nv = cm_tok_n_vocab(v->tok);
    for (int it = 0; it < 1000; it++) {
        size_t len = random_text(&rng, text, sizeof text), n = 0;
        int32_t *ids = NULL;
        cm_err err = {0};
        int ps = it & 1, bos = (it >> 1) & 1;
        if (cm_tokenize(v->tok, text, len, bos, ps, &ids, &n, &err)) {
            CHECK(0, "%s: fuzz tokenize: %s", name, err.msg);
            continue;
        }
        for (size_t i = 0; i < n; i++)
            CHECK(ids[i] >= 0 && ids[i] < nv, "%s: fuzz id %d out of range", name, ids[i]);
        free(ids);
    }
    for (int it = 0; it < 2000; it++) {
        int32_t id = (int32_t)(rng_next(&rng) % (uint64_t)nv);
        size_t cap = rng_next(&rng) % sizeof piece;
        size_t k = cm_token_piece(v->tok, id, it & 1, piece, cap);
        CHECK(k < 1024, "%s: piece of %d has length %zu", name, id, k);
    }
    CHECK(cm_token_piece(v->tok, -1, 1, piece, sizeof piece) == 0 &&
          cm_token_piece(v->tok, nv, 1, piece, sizeof piece) == 0,
          "%s: out-of-range ids decode to nothing", name);
}

/* Random valid UTF-8 without special-token texts must survive a round
 * trip (SentencePiece adds its leading space). */
static void fuzz_roundtrip(const char *name, const vocab *v, uint64_t seed)
{
    static const char *const chars[] = {
        "\xC3\xA9", "\xE4\xB8\x80", "\xF0\x9F\x98\x80", "\xC2\xA0", "\xE3\x80\x80",
        "\xD0\x96", "\xEF\xBC\x81", "\xCC\x81", "\xE2\x80\xA8", "\xC2\xB2"};
    uint64_t rng = seed;
    char text[4096];
    int bad = 0;
    for (int it = 0; it < 300; it++) {
        size_t n = 0, want = rng_next(&rng) % (it % 10 ? 200 : 4000);
        while (n < want && n + 8 < sizeof text) {
            uint64_t r = rng_next(&rng);
            if (r % 4) {
                char c = (char)(0x20 + (r >> 8) % 95);
                text[n++] = (c == '<' || c == '[') ? ' ' : c;
            } else if (r % 8 == 4) {
                text[n++] = "\n\t\r \0"[(r >> 8) % 5];
            } else {
                const char *c = chars[(r >> 8) % (sizeof chars / sizeof *chars)];
                memcpy(text + n, c, strlen(c));
                n += strlen(c);
            }
        }
        char what[64];
        snprintf(what, sizeof what, "%s random text %d", name, it);
        bad += !check_roundtrip(v, what, text, n);
    }
    CHECK(!bad, "%s: %d random texts failed to round-trip", name, bad);
}

/* parse_special: control tokens only when asked, user-defined ones always. */
static void test_specials(const char *name, const vocab *v)
{
    int32_t *ids = NULL;
    size_t n = 0;
    cm_err err = {0};
    if (!strcmp(name, "starcoder")) {
        const char *s = "<fim_prefix>def f():<fim_suffix>";
        CHECK(!cm_tokenize(v->tok, s, strlen(s), 0, 1, &ids, &n, &err) && n > 2 &&
              ids[0] == 1 && ids[n - 1] == 3, "starcoder: special tokens parsed");
        free(ids);
        CHECK(!cm_tokenize(v->tok, s, strlen(s), 0, 0, &ids, &n, &err) && n > 2 &&
              ids[0] != 1, "starcoder: special tokens left as text");
        free(ids);
        CHECK(cm_tok_is_eog(v->tok, 0) && !cm_tok_is_eog(v->tok, 1), "starcoder: eog");
    }
    if (!strcmp(name, "deepseek-coder")) {
        const char *s = "x\xC3\xB5y";
        CHECK(!cm_tokenize(v->tok, s, strlen(s), 1, 0, &ids, &n, &err) && n == 4 &&
              ids[0] == cm_tok_bos(v->tok) && ids[2] == 32000,
              "deepseek-coder: user-defined token matched without parse_special");
        free(ids);
    }
    if (!strcmp(name, "llama-spm")) {
        const char *s = "<s>hi";
        CHECK(!cm_tokenize(v->tok, s, strlen(s), 1, 1, &ids, &n, &err) && n >= 3 &&
              ids[0] == 1 && ids[1] == 1, "llama-spm: <s> parsed after BOS");
        free(ids);
    }
}

/* Token healing: the prefix's last token comes off with its bytes, and
 * cm_heal_logits leaves exactly the tokens whose text starts with them. */
static void test_heal(const char *name, const vocab *v)
{
    static const char *const texts[] = {"def add(a, b):\n    ", "x = compu", "int main() {\n"};
    const int32_t nv = cm_tok_n_vocab(v->tok);
    float *logits = malloc(sizeof *logits * (size_t)nv);
    for (size_t k = 0; logits && k < sizeof texts / sizeof *texts; k++) {
        int32_t *ids = NULL;
        size_t n = 0, n0;
        cm_err err = {0};
        cm_heal h;
        if (cm_tokenize(v->tok, texts[k], strlen(texts[k]), 0, 0, &ids, &n, &err))
            continue;
        n0 = n;
        const int32_t last = n ? ids[n - 1] : -1;
        cm_heal_take(v->tok, ids, &n, &h);
        char piece[CM_HEAL_MAX];
        const size_t pn = last >= 0 ? cm_token_piece(v->tok, last, 0, piece, sizeof piece) : 0;
        CHECK(h.len > 0 && n == n0 - 1 && h.len == pn && !memcmp(h.text, piece, pn),
              "%s: heal of \"%s\": the last token's %zu bytes taken (got %zu)", name, texts[k], pn,
              h.len);
        for (int32_t id = 0; id < nv; id++)
            logits[id] = 0.0f;
        cm_heal_logits(&h, logits, nv);
        int kept = 0, wrong = 0;
        for (int32_t id = 0; id < nv; id++) {
            char p[512];
            const size_t m = cm_token_piece(v->tok, id, 0, p, sizeof p);
            const int starts = m >= h.len && m <= sizeof p && !memcmp(p, h.text, h.len);
            kept += logits[id] == 0.0f;
            wrong += (logits[id] == 0.0f) != starts && m <= sizeof p;
        }
        CHECK(kept >= 1 && wrong == 0 && logits[last] == 0.0f && kept == h.n_allowed,
              "%s: heal of \"%s\": %d tokens kept (%d listed), %d wrongly", name, texts[k], kept,
              h.n_allowed, wrong);
        cm_heal_free(&h);
        free(ids);
    }
    /* a control token (a FIM sentinel) stays where it is */
    int32_t ids[2] = {5, cm_tok_fim(v->tok, CM_FIM_MID)};
    size_t n = 2;
    cm_heal h = {.len = 7};
    if (ids[1] >= 0) {
        cm_heal_take(v->tok, ids, &n, &h);
        CHECK(n == 2 && h.len == 0, "%s: a control token is not healed", name);
    }
    free(logits);
}

/* ------------------------------------------------------ bad metadata */

typedef struct {
    unsigned char *p;
    size_t n, cap;
    unsigned n_kv;
} gbuf;

static void gput(gbuf *b, const void *s, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = 2 * (b->n + n) + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void gput_le(gbuf *b, uint64_t v, unsigned size)
{
    unsigned char le[8];
    for (unsigned i = 0; i < size; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    gput(b, le, size);
}

static void gput_str(gbuf *b, const char *s)
{
    gput_le(b, strlen(s), 8);
    gput(b, s, strlen(s));
}

static void gkey(gbuf *b, const char *key, uint32_t type)
{
    gput_str(b, key);
    gput_le(b, type, 4);
    b->n_kv++;
}

static void kv_str(gbuf *b, const char *key, const char *v)
{
    gkey(b, key, GGUF_STRING);
    gput_str(b, v);
}

static void kv_u32(gbuf *b, const char *key, uint32_t v)
{
    gkey(b, key, GGUF_UINT32);
    gput_le(b, v, 4);
}

static void kv_strs(gbuf *b, const char *key, const char *const *v, size_t n)
{
    gkey(b, key, GGUF_ARRAY);
    gput_le(b, GGUF_STRING, 4);
    gput_le(b, n, 8);
    for (size_t i = 0; i < n; i++)
        gput_str(b, v[i]);
}

static void kv_f32s(gbuf *b, const char *key, const float *v, size_t n)
{
    gkey(b, key, GGUF_ARRAY);
    gput_le(b, GGUF_FLOAT32, 4);
    gput_le(b, n, 8);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        gput_le(b, u, 4);
    }
}

static void kv_i32s(gbuf *b, const char *key, const int32_t *v, size_t n)
{
    gkey(b, key, GGUF_ARRAY);
    gput_le(b, GGUF_INT32, 4);
    gput_le(b, n, 8);
    for (size_t i = 0; i < n; i++)
        gput_le(b, (uint32_t)v[i], 4);
}

/* Wraps the kv records in a GGUF v3 header and loads a tokenizer. */
static cm_status load_built(gbuf *kvs, cm_err *err, cm_tokenizer **tok)
{
    gbuf f = {0};
    gguf_file gf;
    gput(&f, "GGUF", 4);
    gput_le(&f, 3, 4);
    gput_le(&f, 0, 8);
    gput_le(&f, kvs->n_kv, 8);
    gput(&f, kvs->p, kvs->n);
    *tok = NULL;
    cm_status st = gguf_parse(f.p, f.n, &gf, err);
    if (!st) {
        st = cm_tokenizer_load(&gf, tok, err);
        gguf_close(&gf);
    }
    free(f.p);
    free(kvs->p);
    return st;
}

enum { SPM_OK, SPM_SHORT_SCORES, SPM_LONG_TYPES, SPM_BAD_BOS, SPM_BAD_TYPE, NO_MODEL,
       BERT, BPE_BAD_MERGE, BPE_BAD_PRE, BPE_NO_MERGES, NO_TOKENS };

static const char *const small_tokens[] = {
    "<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81\x61", "ab"};

/* A small vocabulary with one defect chosen by kind. */
static cm_status build_case(int kind, cm_err *err, cm_tokenizer **tok)
{
    static const float scores[8] = {0, 0, 0, -1, -2, -3, -0.5f, -0.1f};
    int32_t types[9] = {2, 3, 3, 1, 1, 1, 1, 1, 1};
    gbuf b = {0};
    int bpe = kind >= BPE_BAD_MERGE;
    if (kind == BERT)
        kv_str(&b, "tokenizer.ggml.model", "bert");
    else if (kind != NO_MODEL)
        kv_str(&b, "tokenizer.ggml.model", bpe ? "gpt2" : "llama");
    if (kind != NO_TOKENS)
        kv_strs(&b, "tokenizer.ggml.tokens", small_tokens, 8);
    kv_f32s(&b, "tokenizer.ggml.scores", scores, kind == SPM_SHORT_SCORES ? 7 : 8);
    if (kind == SPM_BAD_TYPE)
        types[4] = 9;
    kv_i32s(&b, "tokenizer.ggml.token_type", types, kind == SPM_LONG_TYPES ? 9 : 8);
    kv_u32(&b, "tokenizer.ggml.bos_token_id", kind == SPM_BAD_BOS ? 8 : 1);
    if (bpe) {
        const char *merges[2] = {"a b", kind == BPE_BAD_MERGE ? "ab" : "b a"};
        kv_str(&b, "tokenizer.ggml.pre", kind == BPE_BAD_PRE ? "frobnicate" : "gpt-2");
        if (kind != BPE_NO_MERGES)
            kv_strs(&b, "tokenizer.ggml.merges", merges, 2);
    }
    return load_built(&b, err, tok);
}

static void test_bad_metadata(void)
{
    static const struct {
        int kind;
        cm_status want;
        const char *msg;
    } cases[] = {
        {SPM_SHORT_SCORES, CM_E_FORMAT, "scores"}, {SPM_LONG_TYPES, CM_E_FORMAT, "token_type"},
        {SPM_BAD_BOS, CM_E_FORMAT, "bos_token_id"}, {SPM_BAD_TYPE, CM_E_FORMAT, "token_type"},
        {NO_MODEL, CM_E_RANGE, "tokenizer"}, {BERT, CM_E_UNSUPPORTED, "bert"},
        {BPE_BAD_MERGE, CM_E_FORMAT, "merges"}, {BPE_BAD_PRE, CM_E_UNSUPPORTED, "frobnicate"},
        {BPE_NO_MERGES, CM_E_FORMAT, "merges"}, {NO_TOKENS, CM_E_FORMAT, "tokens"},
    };
    cm_tokenizer *tok;
    cm_err err = {0};
    cm_status st = build_case(SPM_OK, &err, &tok);
    CHECK(!st, "small vocabulary loads: %s", err.msg);
    if (!st) {
        int32_t *ids = NULL;
        size_t n = 0;
        /* "ab" scores above "▁a", then "▁ab" is no token: [▁, ab] */
        CHECK(!cm_tokenize(tok, "ab", 2, 1, 0, &ids, &n, &err) && n == 3 && ids[0] == 1 &&
              ids[1] == 3 && ids[2] == 7, "small vocabulary: encode \"ab\"");
        free(ids);
        /* no <0xXX> tokens: an unknown character becomes <unk> per byte */
        CHECK(!cm_tokenize(tok, "c", 1, 0, 0, &ids, &n, &err) && n == 2 && ids[0] == 3 &&
              ids[1] == 0, "small vocabulary: unknown byte");
        free(ids);
        cm_tokenizer_free(tok);
    }
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memset(&err, 0, sizeof err);
        st = build_case(cases[i].kind, &err, &tok);
        CHECK(st == cases[i].want && strstr(err.msg, cases[i].msg) && !tok,
              "bad metadata case %d: got status %d '%s'", cases[i].kind, st, err.msg);
        cm_tokenizer_free(tok);
    }
}

int main(void)
{
    test_stream();
    test_bad_metadata();
    const char *shared = tl_shared("vocab");
    if (!shared)
        tl_skip("no shared data (set CM_SHARED)");
    for (size_t i = 0; i < N_VOCABS; i++) {
        vocab v;
        if (!open_vocab(shared, vocabs[i], &v))
            continue;
        test_vectors(shared, vocabs[i], &v);
        test_jsonl(shared, vocabs[i], &v);
        test_specials(vocabs[i], &v);
        test_heal(vocabs[i], &v);
        fuzz_vocab(vocabs[i], &v, 0x9E3779B97F4A7C15ull + i);
        fuzz_roundtrip(vocabs[i], &v, 0xD1B54A32D192ED03ull + i);
        close_vocab(&v);
    }
    return tl_finish("test_tokenizer");
}
