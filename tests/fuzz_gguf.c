/* fuzz_gguf.c - fuzz target for the GGUF reader.
 *
 * libFuzzer:   clang -fsanitize=fuzzer,address ... tests/fuzz_gguf.c
 *              ./fuzz_gguf -max_total_time=60 corpus_dir seed.gguf ...
 * Standalone:  cc -DCM_FUZZ_STANDALONE -fsanitize=address ... tests/fuzz_gguf.c
 *              ./fuzz_gguf SECONDS seed.gguf [seed.gguf ...]
 *   mutates the seed files at random (seed: $CM_FUZZ_SEED, default 1) for
 *   SECONDS, so CI can fuzz with any compiler.  Exit 0 unless a sanitizer
 *   aborts. */
#define _GNU_SOURCE
#include "formats/gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Calls every getter on every key, looks every tensor up by name and reads
 * the first and last byte of its data (ASan catches a bad bound). */
static void exercise(const gguf_file *f)
{
    char name[300];
    cm_err e;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        size_t n = kv->key.len < sizeof name - 1 ? (size_t)kv->key.len : sizeof name - 1;
        uint64_t u64, an;
        uint32_t u32;
        float fl, *fa;
        int bo;
        int32_t *ia;
        gguf_str s, *sa;
        memcpy(name, kv->key.ptr, n);
        name[n] = 0;
        (void)gguf_find(f, name);
        gguf_get_u64(f, name, &u64, &e);
        gguf_get_u32(f, name, &u32, &e);
        gguf_get_f32(f, name, &fl, &e);
        gguf_get_bool(f, name, &bo, &e);
        if (gguf_get_str(f, name, &s, &e) == CM_OK && s.len)
            (void)*(volatile const char *)(s.ptr + s.len - 1);
        if (gguf_get_str_array(f, name, &sa, &an, &e) == CM_OK) {
            for (uint64_t j = 0; j < an; j++)
                if (sa[j].len)
                    (void)*(volatile const char *)(sa[j].ptr + sa[j].len - 1);
            free(sa);
        }
        if (gguf_get_f32_array(f, name, &fa, &an, &e) == CM_OK)
            free(fa);
        if (gguf_get_i32_array(f, name, &ia, &an, &e) == CM_OK)
            free(ia);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        size_t n = t->name.len < sizeof name - 1 ? (size_t)t->name.len : sizeof name - 1;
        memcpy(name, t->name.ptr, n);
        name[n] = 0;
        (void)gguf_find_tensor(f, name);
        (void)*(volatile const uint8_t *)t->data;
        (void)*((volatile const uint8_t *)t->data + t->nbytes - 1);
    }
    /* the writer's copy path walks parsed values too */
    gguf_writer *w = gguf_writer_new(3);
    if (w)
        gguf_writer_copy_kv(w, f, NULL, NULL);
    gguf_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gguf_file f;
    cm_err e;
    if (gguf_parse(data, size, &f, &e) == CM_OK)
        exercise(&f);
    gguf_close(&f);
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

/* Most mutations land in the first 64 KiB: that is where the metadata of
 * the seed models lies; tensor bytes are never interpreted. */
static size_t pick(uint64_t *s, size_t n)
{
    size_t span = (rnd(s) % 10 == 0 || n < 65536) ? n : 65536;
    return (size_t)(rnd(s) % span);
}

static void mutate(uint64_t *s, uint8_t *p, size_t n)
{
    static const uint64_t vals[] = {0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 31, 32, 64, 255,
                                    0x7fffffff, 0x80000000u, 0xffffffffu,
                                    1ull << 32, 1ull << 60, INT64_MAX, UINT64_MAX};
    int k = 1 + (int)(rnd(s) % 4);
    while (k-- && n) {
        size_t at = pick(s, n);
        switch (rnd(s) % 4) {
        case 0: p[at] ^= (uint8_t)(1u << (rnd(s) % 8)); break;
        case 1: p[at] = (uint8_t)rnd(s); break;
        default: { /* an interesting 1/4/8-byte little-endian value */
            static const unsigned w[3] = {1, 4, 8};
            unsigned width = w[rnd(s) % 3];
            uint64_t v = vals[rnd(s) % (sizeof vals / sizeof vals[0])];
            for (unsigned b = 0; b < width && at + b < n; b++)
                p[at + b] = (uint8_t)(v >> (8 * b));
        }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s SECONDS seed.gguf [seed.gguf ...]\n", argv[0]);
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
    printf("fuzz_gguf: %lu iterations in %.0f s, no crash\n", it, secs);
    for (int i = 0; i < ns; i++)
        free(seeds[i].p);
    free(seeds);
    return 0;
}
#endif
