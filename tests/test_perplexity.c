/* test_perplexity.c - the corpus reader and the perplexity measurement.
 *
 *  - the JSONL "content" extractor on hand-made lines (every escape, surrogate
 *    pairs, lone surrogates, nesting, malformed input);
 *  - robustness: thousands of mutated lines and corrupted/truncated .xz files
 *    must give CM_OK or a clean error (run under ASan by --enable-sanitizers);
 *  - perplexity recomputed here from plain cm_eval logits (a log-softmax NLL
 *    average over the second half of each chunk, written independently of
 *    src/eval/perplexity.c) must match both the library and the `codemoe
 *    perplexity` command within 1e-4 relative, on sample.txt and on the corpus.
 */
#include <lzma.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/cpu/cpu.h"
#include "eval/corpus.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "eval/perplexity.h"
#include "testlib.h"

static const char *shared;
static char tmpdir[256];

/* ------------------------------------------------------------ JSON lines */

/* Runs the extractor on an exact-size heap copy (so ASan sees over-reads). */
static cm_status content_of(const char *line, size_t len, cm_buf *out, char *why)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, line, len);
    out->len = 0;
    cm_status s = cm_jsonl_content(copy, len, out, why, 160);
    free(copy);
    return s;
}

static void expect_content(const char *line, const char *want, size_t want_len)
{
    cm_buf out = {0};
    char why[160] = "";
    cm_status s = content_of(line, strlen(line), &out, why);
    CHECK(s == CM_OK, "line %s: error %s", line, why);
    CHECK(!s && out.len == want_len && !memcmp(out.p, want, want_len), "line %s: wrong content",
          line);
    cm_buf_free(&out);
}

static void expect_bad(const char *line)
{
    cm_buf out = {0};
    char why[160] = "";
    cm_status s = content_of(line, strlen(line), &out, why);
    CHECK(s == CM_E_FORMAT && why[0], "line %s: accepted (status %d)", line, s);
    cm_buf_free(&out);
}

static void test_json_lines(void)
{
    expect_content("{\"content\": \"abc\"}", "abc", 3);
    expect_content("{\"lang\": \"c\", \"n\": -1.5e3, \"x\": [1, {\"content\": 5}, null, true],"
                   " \"content\": \"x\\ny\"}", "x\ny", 3);
    expect_content("{\"content\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"}", "\"\\/\b\f\n\r\t", 8);
    expect_content("{\"content\": \"\\u00e9\\u20AC\\u0000z\"}", "\xc3\xa9\xe2\x82\xac\0z", 7);
    expect_content("{\"content\": \"\\ud83d\\ude00!\"}", "\xf0\x9f\x98\x80!", 5);
    /* lone surrogates cannot be UTF-8: U+FFFD, and the next escape survives */
    expect_content("{\"content\": \"\\ud83dx\\ude00\\ud800\\u0041\"}",
                   "\xef\xbf\xbdx\xef\xbf\xbd\xef\xbf\xbd" "A", 11);
    expect_content(" {\"a\":{},\"b\":[],\"content\":\"\xe4\xb8\xad\"}\r", "\xe4\xb8\xad", 3);
    expect_content("{\"cont\\u0065nt\": \"k\"}", "k", 1); /* escaped member name */
    expect_bad("");
    expect_bad("[1]");
    expect_bad("{\"content\": 5}");
    expect_bad("{\"lang\": \"c\"}");
    expect_bad("{\"x\": {\"content\": \"nested only\"}}");
    expect_bad("{\"content\": \"a\", \"content\": \"b\"}");
    expect_bad("{\"content\": \"abc}");
    expect_bad("{\"content\": \"a\\qb\"}");
    expect_bad("{\"content\": \"\\u12G4\"}");
    expect_bad("{\"content\": \"\\u12\"}");
    expect_bad("{\"content\": \"tab\there\"}"); /* raw control character */
    expect_bad("{\"content\": \"a\"} x");
    expect_bad("{\"content\": \"a\",}");
    expect_bad("{\"n\": 01, \"content\": \"a\"}");
    expect_bad("{\"n\": 1., \"content\": \"a\"}");
    expect_bad("{\"n\": tru, \"content\": \"a\"}");
    expect_bad("{\"content\" \"a\"}");
    char deep[400];
    memset(deep, '[', sizeof deep);
    snprintf(deep, 20, "{\"x\": ");
    deep[6] = '[';
    deep[sizeof deep - 1] = 0;
    expect_bad(deep); /* 390 nested arrays: refused, not a stack overflow */
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* Mutated lines: every truncation, plus random byte flips and insertions. */
static void fuzz_json_lines(void)
{
    static const char base[] =
        "{\"lang\": \"python\", \"n\": [1, -2.5e-3, true, false, null, {\"k\": \"v\"}], "
        "\"content\": \"def f():\\n\\treturn \\\"\\u00e9\\ud83d\\ude00\\\\\\/\", \"sha1\": \"ab\"}";
    size_t n = strlen(base);
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    cm_buf out = {0};
    char why[160], line[sizeof base + 8];
    int ok = 0, bad = 0;
    for (size_t cut = 0; cut <= n; cut++)
        content_of(base, cut, &out, why) == CM_OK ? ok++ : bad++;
    CHECK(ok == 1, "truncations: %d accepted, expected only the whole line", ok);
    static const char alphabet[] = "{}[]\":,\\u0dD8e-+. \n\x01\x80\xff";
    for (int it = 0; it < 20000; it++) {
        memcpy(line, base, n);
        size_t len = n;
        for (int k = 0; k < 1 + (int)(rng_next(&seed) % 3); k++) {
            size_t at = rng_next(&seed) % len;
            char c = alphabet[rng_next(&seed) % (sizeof alphabet - 1)];
            if (rng_next(&seed) & 1)
                line[at] = c;
            else if (len < sizeof line) {
                memmove(line + at + 1, line + at, len - at);
                line[at] = c, len++;
            }
        }
        cm_status s = content_of(line, len, &out, why);
        CHECK(s == CM_OK || s == CM_E_FORMAT, "mutation %d: status %d", it, s);
    }
    cm_buf_free(&out);
}

/* ------------------------------------------------------------ xz files */

static int write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static unsigned char *xz_encode(const char *text, size_t len, size_t *out_len)
{
    size_t cap = len + len / 2 + 4096;
    unsigned char *out = malloc(cap);
    *out_len = 0;
    if (lzma_easy_buffer_encode(6, LZMA_CHECK_CRC64, NULL, (const uint8_t *)text, len, out,
                                out_len, cap) != LZMA_OK) {
        free(out);
        return NULL;
    }
    return out;
}

typedef struct {
    int n, stop_after;
    char all[64];
} doc_seen;

static cm_status see_doc(void *ctx, const char *text, size_t len, cm_err *err)
{
    doc_seen *d = ctx;
    size_t at = strlen(d->all);
    if (at + len + 2 <= sizeof d->all) {
        memcpy(d->all + at, text, len);
        memcpy(d->all + at + len, "|", 2);
    }
    if (++d->n == d->stop_after)
        return cm_fail(err, CM_E_RANGE, "enough");
    return CM_OK;
}

static void test_xz_reader(void)
{
    const char *jsonl = "{\"content\": \"one\"}\n\n{\"path\": \"b\", \"content\": \"tw\\u00f6\"}\n"
                        "{\"content\": \"three\"}";
    size_t n;
    unsigned char *xz = xz_encode(jsonl, strlen(jsonl), &n);
    char path[400];
    snprintf(path, sizeof path, "%s/t.jsonl.xz", tmpdir);
    CHECK(xz && write_bytes(path, xz, n), "cannot write %s", path);
    cm_buf out = {0};
    cm_corpus_info info;
    cm_err err = {0};
    cm_status s = cm_corpus_read_xz(path, 0, &out, &info, &err);
    CHECK(!s && out.len == 16 && !memcmp(out.p, "one\n\ntw\xc3\xb6\n\nthree", 16),
          "small jsonl: %s", s ? err.msg : out.p);
    CHECK(!s && info.n_docs == 3 && info.n_lines == 4 && info.complete, "info %zu docs %zu lines",
          info.n_docs, info.n_lines);
    out.len = 0;
    s = cm_corpus_read_xz(path, 2, &out, &info, &err);
    CHECK(!s && info.n_docs == 1 && !info.complete && !strcmp(out.p, "one"), "max_bytes stop");
    /* document by document: the same documents, one call each, in order */
    doc_seen seen = {0};
    s = cm_corpus_each_doc(path, see_doc, &seen, &info, &err);
    CHECK(!s && seen.n == 3 && !strcmp(seen.all, "one|tw\xc3\xb6|three|") && info.complete,
          "each_doc: %s (%d docs: %s)", s ? err.msg : "ok", seen.n, seen.all);
    seen.stop_after = 2, seen.n = 0, seen.all[0] = 0;
    s = cm_corpus_each_doc(path, see_doc, &seen, &info, &err);
    CHECK(s == CM_E_RANGE && seen.n == 2, "each_doc stops on the callback's status: %d", s);
    /* a malformed line is named by file and line */
    const char *badl = "{\"content\": \"ok\"}\n{\"content\": \"x\\q\"}\n";
    free(xz);
    xz = xz_encode(badl, strlen(badl), &n);
    write_bytes(path, xz, n);
    out.len = 0;
    s = cm_corpus_read_xz(path, 0, &out, &info, &err);
    CHECK(s == CM_E_FORMAT && strstr(err.msg, "line 2") && strstr(err.msg, "t.jsonl.xz"),
          "malformed line: %s", err.msg);
    /* not xz at all */
    write_bytes(path, "hello", 5);
    s = cm_corpus_read_xz(path, 0, &out, &info, &err);
    CHECK(s == CM_E_FORMAT && strchr(err.msg, '\n') == NULL, "not xz: %s", err.msg);
    free(xz);
    cm_buf_free(&out);
}

/* Every truncation length class and byte flips of a real corpus file: an
 * error (never success: xz has checksums), never a crash. */
static void fuzz_xz_file(void)
{
    char src[1200], path[400];
    snprintf(src, sizeof src, "%s/corpus/rust/valid.jsonl.xz", shared);
    snprintf(path, sizeof path, "%s/c.jsonl.xz", tmpdir);
    FILE *f = fopen(src, "rb");
    if (!f) {
        printf("skip xz fuzz: %s missing\n", src);
        return;
    }
    unsigned char *buf = malloc(1 << 22);
    size_t n = fread(buf, 1, 1 << 22, f);
    fclose(f);
    cm_buf out = {0};
    cm_corpus_info info;
    cm_err err = {0};
    size_t cuts[] = {0, 1, 11, 12, 13, 100, n / 3, n / 2, n - 40, n - 13, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_bytes(path, buf, cuts[i]);
        out.len = 0;
        cm_status s = cm_corpus_read_xz(path, 0, &out, &info, &err);
        CHECK(s == CM_E_FORMAT, "truncated at %zu of %zu: status %d", cuts[i], n, s);
    }
    uint64_t seed = 12345;
    for (int it = 0; it < 24; it++) {
        size_t at = it < 4 ? (size_t)it * 3 : rng_next(&seed) % n;
        unsigned char old = buf[at];
        buf[at] ^= (unsigned char)(1 + rng_next(&seed) % 255);
        write_bytes(path, buf, n);
        out.len = 0;
        cm_status s = cm_corpus_read_xz(path, 0, &out, &info, &err);
        CHECK(s == CM_E_FORMAT || s == CM_E_UNSUPPORTED, "flip at %zu: status %d", at, s);
        buf[at] = old;
    }
    unlink(path);
    free(buf);
    cm_buf_free(&out);
}

/* ------------------------------------------------------------ perplexity */

typedef struct {
    double ppl, err;
    int n_chunk;
} ref_ppl;

/* The reference: each chunk evaluated whole with every row of logits; the
 * NLL of token i+1 under row i for i in [n_ctx/2, n_ctx-2]. */
static ref_ppl reference_ppl(const cm_model *m, const int32_t *ids, size_t n_ids, int n_ctx)
{
    ref_ppl r = {0, 0, (int)(n_ids / (size_t)n_ctx)};
    int V = m->hp.n_vocab;
    float *logits = malloc((size_t)n_ctx * V * sizeof(float));
    int32_t *chunk = malloc((size_t)n_ctx * sizeof *chunk);
    cm_ctx *ctx = NULL;
    cm_err err = {0};
    double sum = 0, sum2 = 0;
    long cnt = 0;
    if (cm_ctx_new(m, n_ctx, CM_KV_F16, n_ctx, &ctx, &err))
        return r;
    for (int c = 0; c < r.n_chunk; c++) {
        memcpy(chunk, ids + (size_t)c * n_ctx, (size_t)n_ctx * sizeof *chunk);
        if (cm_tok_add_bos(m->tok))
            chunk[0] = cm_tok_bos(m->tok);
        cm_ctx_reset(ctx);
        if (cm_eval(ctx, chunk, n_ctx, logits, &err))
            return r;
        for (int i = n_ctx / 2; i < n_ctx - 1; i++) {
            const float *row = logits + (size_t)i * V;
            double mx = row[0], z = 0;
            for (int v = 1; v < V; v++)
                mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < V; v++)
                z += exp(row[v] - mx);
            double nll = mx + log(z) - row[chunk[i + 1]];
            sum += nll, sum2 += nll * nll, cnt++;
        }
    }
    double mean = sum / cnt, var = sum2 / cnt - mean * mean;
    r.ppl = exp(mean);
    r.err = r.ppl * sqrt(var / (cnt - 1));
    cm_ctx_free(ctx);
    free(logits);
    free(chunk);
    return r;
}

/* Runs the command with --json and picks "ppl" and "ppl_err" out of it. */
static int cli_ppl(const char *args, double *ppl, double *err)
{
    const char *exe = getenv("CODEMOE") ? getenv("CODEMOE") : "./codemoe";
    char cmd[4096], out[1 << 16];
    snprintf(cmd, sizeof cmd, "'%s' perplexity %s --json 2>/dev/null", exe, args);
    FILE *p = popen(cmd, "r");
    if (!p)
        return 0;
    size_t n = fread(out, 1, sizeof out - 1, p);
    int rc = pclose(p);
    out[n] = 0;
    const char *a = strstr(out, "\"ppl\": "), *b = strstr(out, "\"ppl_err\": ");
    if (rc != 0 || !a || !b) {
        printf("command failed (%d): %s\n", rc, cmd);
        return 0;
    }
    *ppl = strtod(a + 7, NULL);
    *err = strtod(b + 11, NULL);
    return 1;
}

static int close_rel(double a, double b, double tol)
{
    return fabs(a - b) <= tol * fabs(b);
}

static void compare_all(const cm_model *m, const int32_t *ids, size_t n, int n_ctx,
                        const char *cli_args, const char *what)
{
    ref_ppl ref = reference_ppl(m, ids, n, n_ctx);
    cm_ppl_params p = {.n_ctx = n_ctx, .kv = CM_KV_F16};
    cm_ppl_result r;
    cm_err err = {0};
    cm_status s = cm_perplexity(m, ids, n, &p, &r, &err);
    double cppl = 0, cerr = 0;
    int ok = cli_ppl(cli_args, &cppl, &cerr);
    printf("%s: reference PPL %.6f +/- %.6f, library %.6f +/- %.6f, command %.6f +/- %.6f\n",
           what, ref.ppl, ref.err, r.ppl, r.ppl_err, cppl, cerr);
    CHECK(ref.ppl > 1 && isfinite(ref.ppl), "%s: reference failed", what);
    CHECK(!s && r.n_chunk == ref.n_chunk, "%s: library: %s", what, err.msg);
    CHECK(close_rel(r.ppl, ref.ppl, 1e-4) && close_rel(r.ppl_err, ref.err, 1e-3),
          "%s: library PPL %.6f vs %.6f", what, r.ppl, ref.ppl);
    CHECK(ok && close_rel(cppl, ref.ppl, 1e-4) && close_rel(cerr, ref.err, 1e-3),
          "%s: command PPL %.6f vs %.6f", what, cppl, ref.ppl);
}

static void test_perplexity(void)
{
    char model[1200], text[1200], corpus[1200], args[4000];
    snprintf(model, sizeof model, "%s/fixtures/gguf/llama/llama-f32.gguf", shared);
    snprintf(text, sizeof text, "%s/corpus/python/sample.txt", shared);
    snprintf(corpus, sizeof corpus, "%s/corpus", shared);
    cm_model m;
    cm_err err = {0};
    if (cm_model_load(model, &m, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    /* sample.txt, read and tokenized here (BOS first: the model adds it) */
    cm_buf buf = {0};
    FILE *f = fopen(text, "rb");
    char chunk[4096];
    for (size_t k; f && (k = fread(chunk, 1, sizeof chunk, f)) > 0;)
        cm_buf_append(&buf, chunk, k, NULL);
    if (f)
        fclose(f);
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(buf.len > 10000 && !cm_tokenize(m.tok, buf.p, buf.len, 1, 0, &ids, &n, &err),
          "tokenize sample.txt");
    snprintf(args, sizeof args, "-m '%s' -f '%s' -c 256", model, text);
    compare_all(&m, ids, n, 256, args, "sample.txt, -c 256");
    snprintf(args, sizeof args, "-m '%s' -f '%s' -c 100 -b 32 --chunks 12", model, text);
    compare_all(&m, ids, 12 * 100, 100, args, "sample.txt, -c 100 -b 32, 12 chunks");
    free(ids), ids = NULL;
    /* the corpus, through the library's reader; the first 4096 tokens */
    buf.len = 0;
    cm_corpus_info info;
    CHECK(!cm_corpus_load(corpus, "python", NULL, 0, &buf, &info, &err), "corpus: %s", err.msg);
    CHECK(!cm_tokenize(m.tok, buf.p, buf.len, 1, 0, &ids, &n, &err) && n > 4096, "tokenize");
    snprintf(args, sizeof args, "-m '%s' --corpus '%s' --lang python --max-tokens 4096 -c 256",
             model, corpus);
    compare_all(&m, ids, 4096, 256, args, "corpus python, 4096 tokens");
    free(ids);
    cm_buf_free(&buf);
    cm_model_free(&m);
}

int main(void)
{
    char msg[256];
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cm_test_ppl.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        printf("cannot make a temporary directory\n");
        return 1;
    }
    test_json_lines();
    fuzz_json_lines();
    test_xz_reader();
    if (!(shared = tl_shared("fixtures/gguf/llama/llama-f32.gguf"))) {
        rmdir(tmpdir);
        tl_skip("(partly) ../shared not found (set CM_SHARED)");
    }
    if (cm_cpu_init(msg, sizeof msg)) {
        printf("cpu init: %s\n", msg);
        return 1;
    }
    fuzz_xz_file();
    test_perplexity();
    char path[400];
    snprintf(path, sizeof path, "%s/t.jsonl.xz", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    return tl_finish("test_perplexity");
}
