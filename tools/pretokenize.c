/* pretokenize.c - the code corpus as token streams for training.
 *
 *   pretokenize --vocab V.gguf --corpus DIR --out DIR [--langs c,cpp,...]
 *               [--splits train,valid] [--max-tokens N] [--max-valid-tokens N]
 *               [--xz-preset P] [--no-check]
 *
 * For every language and split it streams <corpus>/<lang>/<split>.jsonl.xz
 * (one JSON object per line, the file in "content"), tokenizes each file
 * with the engine's own tokenizer (no BOS, special-token text kept as plain
 * text, exactly as `codemoe perplexity` and `codemoe run` see code) and
 * writes <out>/<lang>.<split>.u16.xz: little-endian uint16 token ids, each
 * file preceded by the EOS id (so the stream reads EOS doc EOS doc ...),
 * xz-compressed with liblzma.  --max-tokens caps the ids written per
 * language for the train split (--max-valid-tokens for the others; 0 means
 * no cap); every file is still tokenized so that the round trip is checked
 * on the whole corpus: the bytes of the pieces of encode(file) must equal the
 * file.  A summary (files, bytes, tokens, tokens written, round-trip
 * failures) goes to stdout and to <out>/pretokenize.tsv.  Exit 1 if any file
 * fails the round trip or anything else goes wrong. */
#include <errno.h>
#include <lzma.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eval/corpus.h"
#include "formats/gguf.h"
#include "util/status.h"
#include "tokenizer/tokenizer.h"

typedef struct {
    const char *vocab, *corpus, *out;
    char langs[512], splits[128];
    uint64_t max_tokens, max_valid_tokens;
    uint32_t preset;
    int check;
} opts;

typedef struct {
    uint64_t files, bytes, tokens, written, bad;
} counts;

/* An xz-compressed output file. */
typedef struct {
    FILE *f;
    lzma_stream zs;
    uint8_t buf[1 << 16];
    const char *path;
} xz_out;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static cm_status xz_open(xz_out *x, const char *path, uint32_t preset, cm_err *err)
{
    memset(x, 0, sizeof *x);
    x->path = path;
    x->zs = (lzma_stream)LZMA_STREAM_INIT;
    if (lzma_easy_encoder(&x->zs, preset, LZMA_CHECK_CRC64) != LZMA_OK)
        return cm_fail(err, CM_E_NOMEM, "cannot start the xz encoder");
    if (!(x->f = fopen(path, "wb"))) {
        lzma_end(&x->zs);
        return cm_fail(err, CM_E_IO, "cannot create %s: %s", path, strerror(errno));
    }
    return CM_OK;
}

static cm_status xz_run(xz_out *x, const void *p, size_t n, lzma_action act, cm_err *err)
{
    x->zs.next_in = p;
    x->zs.avail_in = n;
    for (;;) {
        x->zs.next_out = x->buf;
        x->zs.avail_out = sizeof x->buf;
        lzma_ret r = lzma_code(&x->zs, act);
        size_t got = sizeof x->buf - x->zs.avail_out;
        if (got && fwrite(x->buf, 1, got, x->f) != got)
            return cm_fail(err, CM_E_IO, "cannot write %s: %s", x->path, strerror(errno));
        if (r == LZMA_STREAM_END)
            return CM_OK;
        if (r != LZMA_OK)
            return cm_fail(err, CM_E_IO, "%s: xz encoder error %d", x->path, (int)r);
        if (act == LZMA_RUN && x->zs.avail_in == 0)
            return CM_OK;
    }
}

static cm_status xz_close(xz_out *x, cm_err *err)
{
    cm_status s = xz_run(x, NULL, 0, LZMA_FINISH, err);
    lzma_end(&x->zs);
    if (fclose(x->f) && !s)
        s = cm_fail(err, CM_E_IO, "cannot write %s: %s", x->path, strerror(errno));
    return s;
}

/* What each document goes through. */
typedef struct {
    const opts *o;
    const cm_tokenizer *tok;
    xz_out *xz;
    uint64_t cap;
    counts *c;
    const char *lang, *split;
    cm_buf doc, dec;
    uint16_t *u16;
    size_t u16_cap;
} job;

static cm_status write_ids(job *j, const int32_t *ids, size_t n, cm_err *err)
{
    if (j->cap && j->c->written >= j->cap)
        return CM_OK;
    if (j->cap && n > j->cap - j->c->written)
        n = (size_t)(j->cap - j->c->written);
    if (n > j->u16_cap) {
        uint16_t *p = realloc(j->u16, n * sizeof *p);
        if (!p)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        j->u16 = p;
        j->u16_cap = n;
    }
    for (size_t i = 0; i < n; i++) { /* little-endian on every host */
        uint8_t *b = (uint8_t *)&j->u16[i];
        b[0] = (uint8_t)(ids[i] & 0xFF);
        b[1] = (uint8_t)(ids[i] >> 8);
    }
    j->c->written += n;
    return xz_run(j->xz, j->u16, n * sizeof *j->u16, LZMA_RUN, err);
}

/* Round trip: the pieces' bytes must give the file back. */
static int round_trips(job *j, const int32_t *ids, size_t n, cm_err *err)
{
    char piece[512];
    j->dec.len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = cm_token_piece(j->tok, ids[i], 1, piece, sizeof piece);
        if (k > sizeof piece || cm_buf_append(&j->dec, piece, k, err))
            return 0;
    }
    return j->dec.len == j->doc.len && !memcmp(j->dec.p, j->doc.p, j->doc.len);
}

static cm_status one_doc(job *j, cm_err *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    cm_status s = cm_tokenize(j->tok, j->doc.p ? j->doc.p : "", j->doc.len, 0, 0, &ids, &n, err);
    if (s)
        return s;
    j->c->files++;
    j->c->bytes += j->doc.len;
    j->c->tokens += n;
    if (j->o->check && !round_trips(j, ids, n, err)) {
        if (j->c->bad < 5)
            fprintf(stderr, "pretokenize: %s/%s: file %llu (%zu bytes) does not round-trip\n",
                    j->lang, j->split, (unsigned long long)j->c->files, j->doc.len);
        j->c->bad++;
    }
    int32_t eos = cm_tok_eos(j->tok);
    s = write_ids(j, &eos, 1, err);
    if (!s)
        s = write_ids(j, ids, n, err);
    free(ids);
    return s;
}

/* Streams one .jsonl.xz file, a line at a time. */
static cm_status stream_jsonl(job *j, const char *path, cm_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return cm_fail(err, CM_E_IO, "cannot open %s: %s", path, strerror(errno));
    lzma_stream zs = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&zs, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK) {
        fclose(f);
        return cm_fail(err, CM_E_NOMEM, "cannot start the xz decoder");
    }
    static uint8_t in[1 << 16], outb[1 << 18];
    cm_buf line = {0};
    cm_status s = CM_OK;
    size_t lineno = 0;
    lzma_action act = LZMA_RUN;
    zs.next_out = outb;
    zs.avail_out = sizeof outb;
    int done = 0;
    while (!s && !done) {
        if (zs.avail_in == 0 && act == LZMA_RUN) {
            zs.next_in = in;
            zs.avail_in = fread(in, 1, sizeof in, f);
            if (ferror(f))
                s = cm_fail(err, CM_E_IO, "cannot read %s: %s", path, strerror(errno));
            if (feof(f))
                act = LZMA_FINISH;
        }
        lzma_ret r = lzma_code(&zs, act);
        if (r == LZMA_STREAM_END)
            done = 1;
        else if (r != LZMA_OK && !s)
            s = cm_fail(err, CM_E_FORMAT, "%s: xz decoding failed (liblzma error %d)", path, (int)r);
        size_t got = sizeof outb - zs.avail_out;
        const char *p = (const char *)outb;
        while (!s && got) {
            const char *nl = memchr(p, '\n', got);
            size_t seg = nl ? (size_t)(nl - p) : got;
            if (cm_buf_append(&line, p, seg, err)) {
                s = CM_E_NOMEM;
                break;
            }
            p += seg;
            got -= seg;
            if (!nl)
                break;
            p++;
            got--;
            lineno++;
            int blank = 1;
            for (size_t i = 0; i < line.len && blank; i++)
                blank = line.p[i] == ' ' || line.p[i] == '\t' || line.p[i] == '\r';
            if (!blank) {
                char why[160];
                j->doc.len = 0;
                if (cm_jsonl_content(line.p, line.len, &j->doc, why, sizeof why))
                    s = cm_fail(err, CM_E_FORMAT, "%s: line %zu: %s", path, lineno, why);
                else
                    s = one_doc(j, err);
            }
            line.len = 0;
        }
        zs.next_out = outb;
        zs.avail_out = sizeof outb;
    }
    if (!s && line.len) {
        char why[160];
        j->doc.len = 0;
        if (cm_jsonl_content(line.p, line.len, &j->doc, why, sizeof why))
            s = cm_fail(err, CM_E_FORMAT, "%s: line %zu: %s", path, lineno + 1, why);
        else
            s = one_doc(j, err);
    }
    cm_buf_free(&line);
    lzma_end(&zs);
    fclose(f);
    return s;
}

static void usage(FILE *o)
{
    fprintf(o,
            "usage: pretokenize --vocab V.gguf --corpus DIR --out DIR [options]\n"
            "  --langs a,b,...        languages (default: c,cpp,go,java,javascript,python,rust)\n"
            "  --splits a,b           splits (default: train,valid)\n"
            "  --max-tokens N         ids written per language for train (0 = all; default 0)\n"
            "  --max-valid-tokens N   ids written per language for other splits (default 0)\n"
            "  --xz-preset P          liblzma preset 0-9 (default 6)\n"
            "  --no-check             skip the decode(encode(file)) == file check\n"
            "writes <out>/<lang>.<split>.u16.xz (EOS before every file) and <out>/pretokenize.tsv\n");
}

static int parse_args(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->langs, sizeof o->langs, "c,cpp,go,java,javascript,python,rust");
    snprintf(o->splits, sizeof o->splits, "train,valid");
    o->preset = 6;
    o->check = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--no-check")) {
            o->check = 0;
            continue;
        }
        if (!v) {
            fprintf(stderr, "pretokenize: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        i++;
        if (!strcmp(a, "--vocab"))
            o->vocab = v;
        else if (!strcmp(a, "--corpus"))
            o->corpus = v;
        else if (!strcmp(a, "--out"))
            o->out = v;
        else if (!strcmp(a, "--langs"))
            snprintf(o->langs, sizeof o->langs, "%s", v);
        else if (!strcmp(a, "--splits"))
            snprintf(o->splits, sizeof o->splits, "%s", v);
        else if (!strcmp(a, "--max-tokens"))
            o->max_tokens = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--max-valid-tokens"))
            o->max_valid_tokens = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--xz-preset"))
            o->preset = (uint32_t)strtoul(v, NULL, 10);
        else {
            fprintf(stderr, "pretokenize: unknown option %s\n", a);
            return -1;
        }
    }
    if (!o->vocab || !o->corpus || !o->out || o->preset > 9) {
        usage(stderr);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    opts o;
    if (parse_args(argc, argv, &o))
        return 2;
    cm_err err = {0};
    gguf_file gf;
    cm_tokenizer *tok = NULL;
    if (gguf_open(o.vocab, &gf, &err) || cm_tokenizer_load(&gf, &tok, &err)) {
        fprintf(stderr, "pretokenize: %s\n", err.msg);
        return 1;
    }
    if (cm_tok_n_vocab(tok) > 65536 || cm_tok_eos(tok) < 0) {
        fprintf(stderr, "pretokenize: need a vocabulary of at most 65536 ids with an EOS id\n");
        return 1;
    }
    char tsv[4200];
    snprintf(tsv, sizeof tsv, "%s/pretokenize.tsv", o.out);
    FILE *ts = fopen(tsv, "w");
    if (!ts) {
        fprintf(stderr, "pretokenize: cannot create %s: %s\n", tsv, strerror(errno));
        return 1;
    }
    fprintf(ts, "lang\tsplit\tfiles\tbytes\ttokens\twritten\tround_trip_failures\n");
    printf("vocab %s: %d ids, model %s, pre %s, eos %d\n", o.vocab, cm_tok_n_vocab(tok),
           cm_tok_model(tok), cm_tok_pre(tok), cm_tok_eos(tok));
    int rc = 0;
    counts all = {0};
    char *save_l = NULL;
    for (char *lang = strtok_r(o.langs, ",", &save_l); lang && !rc;
         lang = strtok_r(NULL, ",", &save_l)) {
        char splits[128], *save_s = NULL;
        snprintf(splits, sizeof splits, "%s", o.splits);
        for (char *split = strtok_r(splits, ",", &save_s); split && !rc;
             split = strtok_r(NULL, ",", &save_s)) {
            char in[4200], out[4200];
            snprintf(in, sizeof in, "%s/%s/%s.jsonl.xz", o.corpus, lang, split);
            snprintf(out, sizeof out, "%s/%s.%s.u16.xz", o.out, lang, split);
            counts c = {0};
            xz_out xz;
            job j = {.o = &o, .tok = tok, .xz = &xz, .c = &c, .lang = lang, .split = split,
                     .cap = strcmp(split, "train") ? o.max_valid_tokens : o.max_tokens};
            double t0 = now();
            cm_status s = xz_open(&xz, out, o.preset, &err);
            if (!s) {
                s = stream_jsonl(&j, in, &err);
                cm_status s2 = xz_close(&xz, &err);
                if (!s)
                    s = s2;
            }
            cm_buf_free(&j.doc);
            cm_buf_free(&j.dec);
            free(j.u16);
            if (s) {
                fprintf(stderr, "pretokenize: %s\n", err.msg);
                rc = 1;
                break;
            }
            printf("%-10s %-5s %6llu files %10llu bytes %9llu tokens (%.2f bytes/token) "
                   "%9llu written, %llu round-trip failures, %.1f s\n",
                   lang, split, (unsigned long long)c.files, (unsigned long long)c.bytes,
                   (unsigned long long)c.tokens, c.tokens ? (double)c.bytes / (double)c.tokens : 0,
                   (unsigned long long)c.written, (unsigned long long)c.bad, now() - t0);
            fprintf(ts, "%s\t%s\t%llu\t%llu\t%llu\t%llu\t%llu\n", lang, split,
                    (unsigned long long)c.files, (unsigned long long)c.bytes,
                    (unsigned long long)c.tokens, (unsigned long long)c.written,
                    (unsigned long long)c.bad);
            all.files += c.files;
            all.bad += c.bad;
            if (c.bad)
                rc = 1;
        }
    }
    fclose(ts);
    if (o.check)
        printf("round trip: %llu of %llu files identical\n",
               (unsigned long long)(all.files - all.bad), (unsigned long long)all.files);
    cm_tokenizer_free(tok);
    gguf_close(&gf);
    return rc;
}
