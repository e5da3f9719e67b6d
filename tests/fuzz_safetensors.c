/* fuzz_safetensors.c - fuzz target for the safetensors reader and the JSON
 * parser under it.  Each input is parsed both as a safetensors file and as
 * a JSON text, so seeding with model.safetensors and config.json files
 * fuzzes both.
 *
 * libFuzzer:   clang -fsanitize=fuzzer,address ... tests/fuzz_safetensors.c
 *              ./fuzz_safetensors -max_total_time=60 corpus_dir seeds...
 * Standalone:  cc -DCM_FUZZ_STANDALONE -fsanitize=address ... tests/fuzz_safetensors.c
 *              ./fuzz_safetensors SECONDS seed [seed ...]
 *   mutates the seeds at random (seed: $CM_FUZZ_SEED, default 1) for
 *   SECONDS.  Exit 0 unless a sanitizer aborts. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"
#include "formats/safetensors.h"

/* Touches every tensor's first and last element (ASan checks the bounds)
 * and looks every name up. */
static void exercise_st(const st_model *m)
{
    for (size_t i = 0; i < m->n_tensors; i++) {
        const st_tensor *t = &m->tensors[i];
        int64_t n = st_numel(t);
        float v[2];
        (void)st_find(m, t->name);
        if (n > 0 && st_is_float(t->dtype)) {
            st_to_f32(t, 0, 1, v);
            st_to_f32(t, (uint64_t)n - 1, 1, v + 1);
        }
        if (t->nbytes)
            (void)*(volatile const uint8_t *)(t->data + t->nbytes - 1);
    }
}

/* Walks every node and looks every object member up by name. */
static void exercise_json(const json_doc *d)
{
    for (size_t i = 0; i < d->n_nodes; i++) {
        const json_node *n = &d->nodes[i];
        int64_t iv;
        double dv;
        int b;
        if (n->type == JSON_STRING && n->len)
            (void)*(volatile const char *)(n->str + n->len);
        if (n->type != JSON_OBJECT)
            continue;
        for (const json_node *c = json_first(d, n); c; c = json_next(d, c)) {
            (void)json_get(d, n, c->key);
            json_get_int(d, n, c->key, &iv);
            json_get_num(d, n, c->key, &dv);
            json_get_bool(d, n, c->key, &b);
            (void)json_get_str(d, n, c->key);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_model m = {0};
    json_doc d;
    cm_err e;
    if (st_parse(data, size, "fuzz", 0, &m, &e) == CM_OK)
        exercise_st(&m);
    st_close(&m);
    if (json_parse((const char *)data, size, "fuzz", &d, &e) == CM_OK)
        exercise_json(&d);
    json_free(&d);
    return 0;
}

#ifdef CM_FUZZ_STANDALONE
#include <time.h>

#include "testlib.h"

typedef struct {
    uint8_t *p;
    size_t n;
} seed_file;

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* Mutations land mostly in the first 8 KiB, where the headers are; tensor
 * bytes are only ever converted, never interpreted. */
static size_t pick(uint64_t *s, size_t n)
{
    size_t span = (rnd(s) % 10 == 0 || n < 8192) ? n : 8192;
    return (size_t)(rnd(s) % span);
}

static void mutate(uint64_t *s, uint8_t *p, size_t n)
{
    static const char *tokens[] = {"{", "}", "[", "]", ",", ":", "\"", "\\u", "\\ud800", "null",
                                   "-", "e9", "0", "99999999999999999999", "\"F32\"", "\"BF16\"",
                                   "[]", "1e400", "NaN", "\xff", "\xc0\x80"};
    static const uint64_t vals[] = {0, 1, 2, 7, 8, 9, 255, 0x7fffffff, 0xffffffffu,
                                    1ull << 32, 1ull << 62, UINT64_MAX};
    int k = 1 + (int)(rnd(s) % 4);
    while (k-- && n) {
        size_t at = pick(s, n);
        switch (rnd(s) % 4) {
        case 0: p[at] ^= (uint8_t)(1u << (rnd(s) % 8)); break;
        case 1: p[at] = (uint8_t)rnd(s); break;
        case 2: { /* a JSON-ish token */
            const char *t = tokens[rnd(s) % (sizeof tokens / sizeof tokens[0])];
            size_t l = strlen(t);
            memcpy(p + at, t, at + l <= n ? l : n - at);
            break;
        }
        default: { /* the 8-byte header length, or any little-endian value */
            uint64_t v = vals[rnd(s) % (sizeof vals / sizeof vals[0])];
            size_t where = rnd(s) % 3 == 0 ? 0 : at;
            for (unsigned b = 0; b < 8 && where + b < n; b++)
                p[where + b] = (uint8_t)(v >> (8 * b));
        }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s SECONDS seed [seed ...]\n", argv[0]);
        return 2;
    }
    double secs = atof(argv[1]);
    int ns = argc - 2;
    seed_file *seeds = calloc((size_t)ns, sizeof *seeds);
    const char *env = getenv("CM_FUZZ_SEED");
    uint64_t s = env ? strtoull(env, NULL, 0) | 1 : 1;
    for (int i = 0; i < ns; i++) {
        if (!(seeds[i].p = tl_slurp(argv[i + 2], &seeds[i].n))) {
            fprintf(stderr, "cannot read %s\n", argv[i + 2]);
            return 2;
        }
    }
    time_t t0 = time(NULL);
    unsigned long it = 0;
    while (difftime(time(NULL), t0) < secs) {
        const seed_file *sf = &seeds[rnd(&s) % (uint64_t)ns];
        /* sometimes truncate; the copy is exactly n bytes so ASan sees overreads */
        size_t n = rnd(&s) % 8 == 0 && sf->n ? (size_t)(rnd(&s) % sf->n) : sf->n;
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, sf->p, n);
        mutate(&s, p, n);
        LLVMFuzzerTestOneInput(p, n);
        free(p);
        it++;
    }
    printf("fuzz_safetensors: %lu iterations in %.0f s, no crash\n", it, secs);
    for (int i = 0; i < ns; i++)
        free(seeds[i].p);
    free(seeds);
    return 0;
}
#endif
