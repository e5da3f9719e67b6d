/* fuzz_formats.c - bounded mutation fuzzing of the parsers that fuzz_gguf
 * and fuzz_safetensors do not reach: the model loader on top of the GGUF
 * reader (hyperparameters, tensor shapes and types, the tokenizer, pack
 * metadata) followed by a short forward pass, the router's classifier file
 * (models/router.bin), and the corpus's JSONL lines.
 *
 *   fuzz_formats SECONDS seed [seed ...]
 *
 * A seed's kind comes from its content: GGUF magic -> model, CMROUTER
 * magic -> router, anything else -> JSONL lines (one line per case).
 * Inputs are mutated at random ($CM_FUZZ_SEED, default 1) for SECONDS; the
 * loaders must either succeed or return an error, and whatever loads must
 * then run.  A crash, a sanitizer report or a hang is the failure.  Exit 0
 * otherwise, 77 when no seed could be read. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "eval/corpus.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "experts/router.h"
#include "tokenizer/tokenizer.h"
#include "testlib.h"

enum kind { KIND_MODEL, KIND_ROUTER, KIND_JSONL };

typedef struct {
    uint8_t *p;
    size_t n;
    enum kind kind;
} seed_file;

typedef struct {
    unsigned long model, model_ok, router, router_ok, jsonl, jsonl_ok;
} tally;

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* ---- targets --------------------------------------------------------------- */

/* Whatever loads must also run: tokenize a line of code, evaluate a few
 * tokens and read every logit (shapes that passed validation but lie would
 * crash here, or show up under ASan). */
static void run_model(const cm_model *m)
{
    cm_err e;
    cm_ctx *c = NULL;
    int32_t ids[3] = {1, 2, 3};
    int nv = m->hp.n_vocab;
    if (m->tok) {
        int32_t *t = NULL;
        size_t nt = 0;
        const char text[] = "def f(x):\n\treturn x + 1  # \xc3\xa9\n";
        if (cm_tokenize(m->tok, text, sizeof text - 1, 1, 1, &t, &nt, &e) == CM_OK) {
            char piece[64];
            for (size_t i = 0; i < nt; i++)
                cm_token_piece(m->tok, t[i], 1, piece, sizeof piece);
        }
        free(t);
    }
    if (nv <= 0 || cm_ctx_new(m, 8, CM_KV_F16, 4, &c, &e) != CM_OK)
        return;
    for (int i = 0; i < 3; i++)
        ids[i] %= nv;
    if (cm_eval(c, ids, 3, NULL, &e) == CM_OK) {
        const float *l = cm_ctx_logits(c);
        volatile float sum = 0;
        for (int i = 0; i < nv; i++)
            sum += l[i];
    }
    cm_ctx_free(c);
}

/* The loader takes a path: the bytes go to an anonymous memory file. */
static int fuzz_model(const uint8_t *p, size_t n)
{
    int fd = memfd_create("fuzz.gguf", 0);
    if (fd < 0)
        return 0;
    int ok = 0;
    if (write(fd, p, n) == (ssize_t)n) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        cm_model m;
        cm_err e;
        if (cm_model_load(path, &m, &e) == CM_OK) {
            run_model(&m);
            cm_model_free(&m);
            ok = 1;
        }
    }
    close(fd);
    return ok;
}

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
    uint32_t h = 0x811C9DC5u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x01000193u;
    return h;
}

/* Half the cases get a valid checksum again, or every mutation would stop
 * at the checksum and the field checks behind it would go untested. */
static int fuzz_router(uint8_t *p, size_t n, uint64_t *rs)
{
    if (n >= 4 && rnd(rs) % 2) {
        uint32_t h = fnv1a(p, n - 4);
        memcpy(p + n - 4, &h, 4);
    }
    cm_router *r = NULL;
    cm_err e;
    if (cm_router_parse(p, n, &r, &e) != CM_OK)
        return 0;
    float probs[CM_ROUTER_MAX_LANGS];
    const char text[] = "fn main() {\n    println!(\"hi\");\n}\n";
    int best = cm_router_classify(r, text, sizeof text - 1, probs);
    (void)cm_router_lang(r, best);
    cm_router_free(r);
    return 1;
}

static int fuzz_jsonl(const uint8_t *p, size_t n)
{
    cm_buf out = {0};
    char why[128];
    /* a copy of exactly n bytes, so ASan sees any read past the line */
    char *line = malloc(n ? n : 1);
    if (!line)
        return 0;
    memcpy(line, p, n);
    int ok = cm_jsonl_content(line, n, &out, why, sizeof why) == CM_OK;
    free(line);
    cm_buf_free(&out);
    return ok;
}

/* ---- mutation -------------------------------------------------------------- */

/* Byte flips, random bytes, small integers and truncation; for models most
 * of them land in the metadata (the first 64 KiB), where the parsing is. */
static size_t mutate(uint8_t *p, size_t n, enum kind k, uint64_t *rs)
{
    size_t span = (k == KIND_MODEL && n > 65536 && rnd(rs) % 10) ? 65536 : n;
    int edits = 1 + (int)(rnd(rs) % 8);
    for (int i = 0; i < edits && n; i++) {
        size_t at = (size_t)(rnd(rs) % span);
        switch (rnd(rs) % 4) {
        case 0: p[at] ^= (uint8_t)(1u << (rnd(rs) % 8)); break;
        case 1: p[at] = (uint8_t)rnd(rs); break;
        case 2: p[at] = (uint8_t)(rnd(rs) % 3 ? 0xFF : 0); break;
        default: { /* a small or huge little-endian integer */
            uint32_t v = rnd(rs) % 2 ? (uint32_t)(rnd(rs) % 64) : (uint32_t)rnd(rs);
            size_t m = n - at < 4 ? n - at : 4;
            memcpy(p + at, &v, m);
        }
        }
    }
    if (rnd(rs) % 16 == 0)
        n = (size_t)(rnd(rs) % (n + 1));
    return n;
}

/* A random line of a JSONL seed (the seed is a whole file). */
static void pick_line(const seed_file *s, uint64_t *rs, const uint8_t **p, size_t *n)
{
    size_t at = s->n ? (size_t)(rnd(rs) % s->n) : 0;
    while (at > 0 && s->p[at - 1] != '\n')
        at--;
    const uint8_t *nl = memchr(s->p + at, '\n', s->n - at);
    *p = s->p + at;
    *n = nl ? (size_t)(nl - *p) : s->n - at;
}

static void one_case(const seed_file *s, uint64_t *rs, tally *t)
{
    const uint8_t *src = s->p;
    size_t n = s->n;
    if (s->kind == KIND_JSONL)
        pick_line(s, rs, &src, &n);
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return;
    memcpy(p, src, n);
    n = mutate(p, n, s->kind, rs);
    if (s->kind == KIND_MODEL)
        t->model++, t->model_ok += fuzz_model(p, n);
    else if (s->kind == KIND_ROUTER)
        t->router++, t->router_ok += fuzz_router(p, n, rs);
    else
        t->jsonl++, t->jsonl_ok += fuzz_jsonl(p, n);
    free(p);
}

/* ---- driver ---------------------------------------------------------------- */

static int read_seed(const char *path, seed_file *s)
{
    if (!(s->p = tl_slurp(path, &s->n)) || !s->n) {
        free(s->p);
        return 0;
    }
    s->kind = s->n >= 4 && !memcmp(s->p, "GGUF", 4)       ? KIND_MODEL
              : s->n >= 8 && !memcmp(s->p, "CMROUTER", 8) ? KIND_ROUTER
                                                           : KIND_JSONL;
    return 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: fuzz_formats SECONDS seed [seed ...]\n");
        return 2;
    }
    double secs = atof(argv[1]);
    seed_file *seeds = calloc((size_t)argc, sizeof *seeds);
    int ns = 0;
    for (int i = 2; i < argc; i++)
        ns += seeds && read_seed(argv[i], &seeds[ns]);
    if (ns == 0) {
        free(seeds);
        tl_skip("fuzz_formats: no readable seed");
    }
    const char *env = getenv("CM_FUZZ_SEED");
    uint64_t rs = 0x9E3779B97F4A7C15ull ^ (uint64_t)(env ? atoll(env) : 1);
    tally t = {0};
    double t0 = now();
    while (now() - t0 < secs)
        one_case(&seeds[rnd(&rs) % (uint64_t)ns], &rs, &t);
    printf("fuzz_formats: %.0f s, no crash; loaded/tried: models %lu/%lu, routers %lu/%lu, "
           "jsonl lines %lu/%lu\n",
           secs, t.model_ok, t.model, t.router_ok, t.router, t.jsonl_ok, t.jsonl);
    for (int i = 0; i < ns; i++)
        free(seeds[i].p);
    free(seeds);
    return 0;
}
