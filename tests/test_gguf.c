/* test_gguf.c - GGUF reader/writer tests: real fixtures, writer round trips,
 * byte-compatibility with llama.cpp-written files, and hostile inputs (run
 * under ASan in CI, so "never crashes" is checked too).
 *
 * Exit 0 pass, 1 fail, 77 skip (shared data missing).  Shared data: $CM_SHARED,
 * else ../shared (testlib.h's tl_shared). */
#define _GNU_SOURCE
#include "formats/gguf.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "quant/quant.h"
#include "testlib.h"

/* ---- a tiny byte builder for hand-made (and hand-broken) files ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void u8_(buf *b, uint8_t v) { put(b, &v, 1); }
static void u32_(buf *b, uint32_t v) { put(b, &v, 4); } /* little-endian host */
static void u64_(buf *b, uint64_t v) { put(b, &v, 8); }
static void str_(buf *b, const char *s)
{
    u64_(b, strlen(s));
    put(b, s, strlen(s));
}
static void hdr(buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    put(b, "GGUF", 4);
    u32_(b, version);
    u64_(b, n_tensors);
    u64_(b, n_kv);
}
static void kv_u32(buf *b, const char *k, uint32_t v)
{
    str_(b, k);
    u32_(b, GGUF_UINT32);
    u32_(b, v);
}
static void kv_str(buf *b, const char *k, const char *v)
{
    str_(b, k);
    u32_(b, GGUF_STRING);
    str_(b, v);
}
static void tinfo(buf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                  uint32_t type, uint64_t off)
{
    str_(b, name);
    u32_(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        u64_(b, ne[d]);
    u32_(b, type);
    u64_(b, off);
}
static void pad(buf *b, size_t a)
{
    while (b->n % a)
        u8_(b, 0);
}

/* A small valid file: two kvs (string, u32 array), one F32 tensor of 8. */
static buf small_valid(void)
{
    buf b = {0};
    uint64_t ne[1] = {8};
    hdr(&b, 3, 1, 2);
    kv_str(&b, "general.architecture", "llama");
    str_(&b, "a.arr");
    u32_(&b, GGUF_ARRAY);
    u32_(&b, GGUF_UINT32);
    u64_(&b, 3);
    for (uint32_t i = 1; i <= 3; i++)
        u32_(&b, i);
    tinfo(&b, "t", 1, ne, 0, 0);
    pad(&b, 32);
    for (int i = 0; i < 8; i++)
        u32_(&b, 0x3f800000u);
    return b;
}

/* Touches every key and tensor through every getter: nothing may crash. */
static void exercise(const gguf_file *f)
{
    for (uint64_t i = 0; i < f->n_kv; i++) {
        char key[256];
        const gguf_kv *kv = &f->kv[i];
        size_t n = kv->key.len < 255 ? (size_t)kv->key.len : 255;
        memcpy(key, kv->key.ptr, n);
        key[n] = 0;
        uint64_t u64, an;
        uint32_t u32;
        float fl;
        int bo;
        gguf_str s, *sa;
        float *fa;
        int32_t *ia;
        cm_err e;
        gguf_get_u64(f, key, &u64, &e);
        gguf_get_u32(f, key, &u32, &e);
        gguf_get_f32(f, key, &fl, &e);
        gguf_get_bool(f, key, &bo, &e);
        gguf_get_str(f, key, &s, &e);
        if (!gguf_get_str_array(f, key, &sa, &an, &e))
            free(sa);
        if (!gguf_get_f32_array(f, key, &fa, &an, &e))
            free(fa);
        if (!gguf_get_i32_array(f, key, &ia, &an, &e))
            free(ia);
    }
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        const uint8_t *d = t->data;
        sink ^= d[0] ^ d[t->nbytes - 1];
    }
    (void)sink;
}

static int expect_fail(const buf *b, cm_status code, const char *sub, int line)
{
    gguf_file f;
    cm_err e = {0};
    cm_status st = gguf_parse(b->p, b->n, &f, &e);
    int ok = st == code && (!sub || strstr(e.msg, sub));
    if (!ok) {
        fprintf(stderr, "line %d: expected %d '%s', got %d '%s'\n", line, code,
                sub ? sub : "", st, e.msg);
        tl_failures++;
    }
    CHECK(f.kv == NULL && f.tensors == NULL); /* failed struct left empty */
    gguf_close(&f);
    gguf_close(&f);
    return ok;
}
#define EXPECT_FAIL(b, code, sub) expect_fail(b, code, sub, __LINE__)

/* ---- 1. real files ---- */

/* out = a/b; 0 if it does not fit (no snprintf: gcc -O3 would warn about
 * possible truncation). */
static int join(char *out, size_t n, const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la + lb + 2 > n)
        return 0;
    memcpy(out, a, la);
    out[la] = '/';
    memcpy(out + la + 1, b, lb + 1);
    return 1;
}

static int has_type(const gguf_file *f, uint32_t type)
{
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].type == type)
            return 1;
    return 0;
}

static void check_llama_f32(const gguf_file *f)
{
    gguf_str s;
    uint32_t n;
    cm_err e;
    CHECK(gguf_get_str(f, "general.architecture", &s, &e) == CM_OK && gguf_str_eq(s, "llama"));
    CHECK(gguf_get_u32(f, "llama.block_count", &n, &e) == CM_OK && n == 2);
    const gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
    CHECK(t && t->n_dims == 2 && t->ne[0] == 64 && t->ne[1] == 1000 && t->type == 0);
    CHECK(t && t->nbytes == 64 * 1000 * 4);
    CHECK(gguf_find_tensor(f, "no.such.tensor") == NULL);
    CHECK(gguf_get_u32(f, "no.such.key", &n, &e) == CM_E_RANGE);
    CHECK(gguf_get_u32(f, "general.architecture", &n, &e) == CM_E_FORMAT);
    gguf_str *toks;
    uint64_t nt;
    CHECK(gguf_get_str_array(f, "tokenizer.ggml.tokens", &toks, &nt, &e) == CM_OK && nt == 1000);
    free(toks);
    float *sc;
    CHECK(gguf_get_f32_array(f, "tokenizer.ggml.scores", &sc, &nt, &e) == CM_OK && nt == 1000);
    free(sc);
    CHECK(gguf_get_str_array(f, "tokenizer.ggml.scores", &toks, &nt, &e) == CM_E_FORMAT);
}

/* Rewrites a llama.cpp-written model with our writer: bytes must match. */
static void check_byte_compat(const char *path, const gguf_file *f, const char *tmpdir)
{
    char out[512];
    snprintf(out, sizeof out, "%s/compat.gguf", tmpdir);
    gguf_writer *w = gguf_writer_new(f->version);
    cm_err e = {0};
    CHECK(gguf_writer_copy_kv(w, f, NULL, NULL) == CM_OK);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        CHECK(gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data, NULL,
                                     NULL) == CM_OK);
    }
    CHECK(gguf_writer_finish(w, out, &e) == CM_OK);
    gguf_writer_free(w);
    FILE *fp = fopen(out, "rb");
    uint8_t *b = malloc(f->size + 1);
    size_t n = fp ? fread(b, 1, f->size + 1, fp) : 0;
    if (n != f->size || memcmp(b, f->base, f->size) != 0) {
        fprintf(stderr, "%s: rewrite differs (%zu vs %zu bytes)\n", path, n, f->size);
        tl_failures++;
    }
    if (fp)
        fclose(fp);
    free(b);
    unlink(out);
}

static int test_dir(const char *dir, const char *tmpdir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int count = 0;
    if (!d)
        return 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        char path[1024];
        if (l < 5 || strcmp(de->d_name + l - 5, ".gguf"))
            continue;
        if (!join(path, sizeof path, dir, de->d_name))
            continue;
        gguf_file f;
        cm_err e = {0};
        if (gguf_open(path, &f, &e) != CM_OK) {
            fprintf(stderr, "FAIL open %s: %s\n", path, e.msg);
            tl_failures++;
            continue;
        }
        count++;
        exercise(&f);
        if (!strcmp(de->d_name, "llama-f32.gguf"))
            check_llama_f32(&f);
        if (strstr(de->d_name, "q8_0"))
            CHECK(has_type(&f, CM_TYPE_Q8_0));
        if (strstr(de->d_name, "q4_k_m"))
            CHECK(has_type(&f, CM_TYPE_Q4_K));
        if (f.n_tensors) /* model fixtures are written by llama.cpp's C++ writer */
            check_byte_compat(path, &f, tmpdir);
        gguf_close(&f);
        gguf_close(&f);
    }
    closedir(d);
    return count;
}

static int test_fixtures(const char *shared, const char *tmpdir)
{
    char p[1024];
    int n = 0;
    join(p, sizeof p, shared, "fixtures/gguf");
    DIR *d = opendir(p);
    struct dirent *de;
    if (!d)
        return 0;
    while ((de = readdir(d))) {
        char sub[1024];
        if (de->d_name[0] == '.')
            continue;
        if (!join(sub, sizeof sub, p, de->d_name))
            continue;
        n += test_dir(sub, tmpdir);
    }
    closedir(d);
    join(p, sizeof p, shared, "vocab");
    n += test_dir(p, tmpdir);
    printf("fixtures: %d files parsed\n", n);
    return n;
}

/* ---- 2. writer round trip ---- */

static cm_status fill_pattern(void *ctx, void *dst, uint64_t n, cm_err *err)
{
    (void)err;
    for (uint64_t i = 0; i < n; i++)
        ((uint8_t *)dst)[i] = (uint8_t)(i * 7 + *(int *)ctx);
    return CM_OK;
}

static cm_status fill_fail(void *ctx, void *dst, uint64_t n, cm_err *err)
{
    (void)ctx, (void)dst, (void)n;
    return cm_fail(err, CM_E_FORMAT, "fill failed on purpose");
}

static uint8_t tdata[4096];

static void write_sample(gguf_writer *w)
{
    static const uint8_t a8[] = {1, 255};
    static const int16_t a16[] = {-3, 300};
    static const uint32_t a32[] = {7, 8, 4000000000u};
    static const int32_t i32[] = {-5, 6};
    static const float f32[] = {0.5f, -2.25f};
    static const int64_t i64[] = {-1, INT64_MAX};
    static const double f64[] = {3.5, -1e300};
    static const char *const strs[] = {"", "hello", "w\xc3\xb6rld"};
    static int ctx = 5;
    gguf_writer_set_str(w, "general.architecture", "test");
    gguf_writer_set_u32(w, "k.u32", 4000000000u);
    gguf_writer_set_i32(w, "k.i32", -7);
    gguf_writer_set_u64(w, "k.u64", 1ull << 40);
    gguf_writer_set_f32(w, "k.f32", 1.5f);
    gguf_writer_set_bool(w, "k.bool", 1);
    gguf_writer_set_arr(w, "a.u8", GGUF_UINT8, a8, 2);
    gguf_writer_set_arr(w, "a.i8", GGUF_INT8, a8, 2);
    gguf_writer_set_arr(w, "a.u16", GGUF_UINT16, a16, 2);
    gguf_writer_set_arr(w, "a.i16", GGUF_INT16, a16, 2);
    gguf_writer_set_arr(w, "a.u32", GGUF_UINT32, a32, 3);
    gguf_writer_set_arr(w, "a.i32", GGUF_INT32, i32, 2);
    gguf_writer_set_arr(w, "a.f32", GGUF_FLOAT32, f32, 2);
    gguf_writer_set_arr(w, "a.bool", GGUF_BOOL, a8, 1);
    gguf_writer_set_arr(w, "a.u64", GGUF_UINT64, i64, 2);
    gguf_writer_set_arr(w, "a.i64", GGUF_INT64, i64, 2);
    gguf_writer_set_arr(w, "a.f64", GGUF_FLOAT64, f64, 2);
    gguf_writer_set_arr(w, "a.empty", GGUF_UINT32, NULL, 0);
    gguf_writer_set_str_arr(w, "a.str", strs, 3);
    gguf_writer_set_i32(w, "k.i32", -8); /* replaced in place */
    for (size_t i = 0; i < sizeof tdata; i++)
        tdata[i] = (uint8_t)(i * 13 + 1);
    int64_t ne_f32[2] = {8, 3}, ne_f16[1] = {16}, ne_q4[2] = {64, 2}, ne_q8[3] = {32, 1, 2};
    int64_t ne_qk[1] = {256};
    CHECK(gguf_writer_add_tensor(w, "t.f32", CM_TYPE_F32, 2, ne_f32, tdata, NULL, NULL) == 0);
    CHECK(gguf_writer_add_tensor(w, "t.f16", CM_TYPE_F16, 1, ne_f16, tdata, NULL, NULL) == 0);
    CHECK(gguf_writer_add_tensor(w, "t.q4_0", CM_TYPE_Q4_0, 2, ne_q4, tdata, NULL, NULL) == 0);
    CHECK(gguf_writer_add_tensor(w, "t.q8_0", CM_TYPE_Q8_0, 3, ne_q8, NULL, fill_pattern,
                                 &ctx) == 0);
    CHECK(gguf_writer_add_tensor(w, "t.q4_k", CM_TYPE_Q4_K, 1, ne_qk, tdata, NULL, NULL) == 0);
}

static void check_sample_kv(const gguf_file *f)
{
    cm_err e;
    uint32_t u32;
    uint64_t u64, n;
    float fl;
    int bo;
    gguf_str s, *sa;
    int32_t *ia;
    float *fa;
    uint64_t n_kv = 19 + (gguf_find(f, "general.alignment") != NULL);
    CHECK(f->n_kv == n_kv && gguf_str_eq(f->kv[2].key, "k.i32")); /* insertion order */
    CHECK(gguf_get_u32(f, "k.u32", &u32, &e) == 0 && u32 == 4000000000u);
    CHECK(gguf_get_u64(f, "k.i32", &u64, &e) == CM_E_FORMAT && strstr(e.msg, "-8"));
    CHECK(gguf_get_u64(f, "k.u64", &u64, &e) == 0 && u64 == 1ull << 40);
    CHECK(gguf_get_u32(f, "k.u64", &u32, &e) == CM_E_FORMAT);
    CHECK(gguf_get_f32(f, "k.f32", &fl, &e) == 0 && fl == 1.5f);
    CHECK(gguf_get_bool(f, "k.bool", &bo, &e) == 0 && bo == 1);
    CHECK(gguf_get_str(f, "general.architecture", &s, &e) == 0 && gguf_str_eq(s, "test"));
    CHECK(gguf_get_str_array(f, "a.str", &sa, &n, &e) == 0 && n == 3 && sa[0].len == 0 &&
          gguf_str_eq(sa[1], "hello") && gguf_str_eq(sa[2], "w\xc3\xb6rld"));
    free(sa);
    CHECK(gguf_get_i32_array(f, "a.i16", &ia, &n, &e) == 0 && n == 2 && ia[0] == -3 &&
          ia[1] == 300);
    free(ia);
    CHECK(gguf_get_i32_array(f, "a.i8", &ia, &n, &e) == 0 && ia[0] == 1 && ia[1] == -1);
    free(ia);
    CHECK(gguf_get_i32_array(f, "a.u32", &ia, &n, &e) == CM_E_FORMAT);
    CHECK(gguf_get_i32_array(f, "a.f32", &ia, &n, &e) == CM_E_FORMAT);
    CHECK(gguf_get_f32_array(f, "a.f64", &fa, &n, &e) == 0 && n == 2 && fa[0] == 3.5f);
    free(fa);
    CHECK(gguf_get_f32_array(f, "a.i32", &fa, &n, &e) == 0 && fa[0] == -5.0f);
    free(fa);
    CHECK(gguf_get_f32_array(f, "a.str", &fa, &n, &e) == CM_E_FORMAT);
    CHECK(gguf_get_i32_array(f, "a.empty", &ia, &n, &e) == 0 && n == 0);
    free(ia);
    CHECK(gguf_get_str_array(f, "k.u32", &sa, &n, &e) == CM_E_FORMAT && sa == NULL);
}

static void check_sample_tensors(const gguf_file *f)
{
    static const uint64_t nb[5] = {96, 32, 72, 68, 144};
    static const char *const names[5] = {"t.f32", "t.f16", "t.q4_0", "t.q8_0", "t.q4_k"};
    CHECK(f->n_tensors == 5);
    CHECK(f->data_offset % f->alignment == 0);
    for (int i = 0; i < 5 && (uint64_t)i < f->n_tensors; i++) {
        const gguf_tensor *t = gguf_find_tensor(f, names[i]);
        CHECK(t == &f->tensors[i]);
        if (!t)
            continue;
        CHECK(t->nbytes == nb[i] && t->offset % f->alignment == 0);
        if (i != 3)
            CHECK(memcmp(t->data, tdata, t->nbytes) == 0);
        else
            CHECK(((const uint8_t *)t->data)[1] == 12);
    }
    const gguf_tensor *q8 = gguf_find_tensor(f, "t.q8_0");
    CHECK(q8 && q8->n_dims == 3 && q8->ne[0] == 32 && q8->ne[1] == 1 && q8->ne[2] == 2 &&
          q8->ne[3] == 1 && q8->type == CM_TYPE_Q8_0);
}

static void test_roundtrip(const char *tmpdir)
{
    char path[512], tmp[600];
    cm_err e = {0};
    snprintf(path, sizeof path, "%s/rt.gguf", tmpdir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    for (int v = 2; v <= 3; v++) {
        for (uint32_t align = 32; align <= 64; align *= 2) {
            gguf_writer *w = gguf_writer_new(v);
            gguf_file f;
            write_sample(w);
            if (align == 64)
                CHECK(gguf_writer_set_u32(w, "general.alignment", 64) == CM_OK);
            CHECK(gguf_writer_finish(w, path, &e) == CM_OK);
            gguf_writer_free(w);
            CHECK(access(tmp, F_OK) != 0);
            if (gguf_open(path, &f, &e) != CM_OK) {
                fprintf(stderr, "roundtrip reopen: %s\n", e.msg);
                tl_failures++;
                continue;
            }
            CHECK(f.version == (uint32_t)v && f.alignment == align);
            check_sample_kv(&f);
            check_sample_tensors(&f);
            gguf_close(&f);
        }
    }
    /* general.alignment from the writer is honoured by both sides */
    gguf_writer *w = gguf_writer_new(3);
    gguf_file f;
    int64_t ne[1] = {3};
    CHECK(gguf_writer_set_u32(w, "general.alignment", 3) != CM_OK); /* sticky failure */
    CHECK(gguf_writer_finish(w, path, &e) != CM_OK && strstr(e.msg, "power of two"));
    gguf_writer_free(w);
    w = gguf_writer_new(3);
    CHECK(gguf_writer_set_u32(w, "general.alignment", 256) == CM_OK);
    CHECK(gguf_writer_add_tensor(w, "a", CM_TYPE_F32, 1, ne, tdata, NULL, NULL) == CM_OK);
    CHECK(gguf_writer_add_tensor(w, "b", CM_TYPE_F32, 1, ne, tdata, NULL, NULL) == CM_OK);
    CHECK(gguf_writer_finish(w, path, &e) == CM_OK);
    gguf_writer_free(w);
    CHECK(gguf_open(path, &f, &e) == CM_OK && f.alignment == 256 && f.data_offset == 256 &&
          f.n_tensors == 2 && f.tensors[1].offset == 256 && f.size == 768);
    gguf_close(&f);
    unlink(path);
}

/* Every scalar kv type goes file -> parse -> copy_kv -> write -> parse intact. */
static void test_copy_all_types(const char *tmpdir)
{
    static const char *const keys[13] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                         "bool", "str", "arr", "u64", "i64", "f64"};
    static const uint8_t sz[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    buf b = {0};
    char path[512];
    cm_err e = {0};
    gguf_file f, g;
    hdr(&b, 3, 0, 13);
    for (uint32_t t = 0; t < 13; t++) {
        uint64_t v = 0x8877665544332211ull;
        str_(&b, keys[t]);
        u32_(&b, t);
        if (t == GGUF_STRING) {
            str_(&b, "s");
        } else if (t == GGUF_ARRAY) {
            u32_(&b, GGUF_STRING), u64_(&b, 2), str_(&b, "x"), str_(&b, "yz");
        } else {
            put(&b, &v, sz[t]);
        }
    }
    snprintf(path, sizeof path, "%s/copy.gguf", tmpdir);
    CHECK(gguf_parse(b.p, b.n, &f, &e) == CM_OK);
    gguf_writer *w = gguf_writer_new(3);
    CHECK(gguf_writer_copy_kv(w, &f, NULL, NULL) == CM_OK);
    CHECK(gguf_writer_finish(w, path, &e) == CM_OK);
    gguf_writer_free(w);
    CHECK(gguf_open(path, &g, &e) == CM_OK && g.n_kv == 13);
    /* no tensors: the file is the metadata padded to 32 */
    CHECK(g.size == (b.n + 31) / 32 * 32 && memcmp(g.base, b.p, b.n) == 0);
    uint64_t u;
    CHECK(gguf_get_u64(&g, "i8", &u, &e) == CM_OK && u == 0x11);
    CHECK(gguf_get_u64(&g, "u16", &u, &e) == CM_OK && u == 0x2211);
    CHECK(gguf_get_u64(&g, "i64", &u, &e) == CM_E_FORMAT); /* negative */
    gguf_close(&g);
    gguf_close(&f);
    unlink(path);
    free(b.p);
}

/* ---- 3. hostile inputs ---- */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

static void test_truncations(void)
{
    buf b = small_valid();
    gguf_file f;
    cm_err e = {0};
    for (size_t n = 0; n < b.n; n++) {
        /* a fresh allocation of exactly n bytes so ASan sees any overread */
        uint8_t *c = malloc(n ? n : 1);
        memcpy(c, b.p, n);
        if (gguf_parse(c, n, &f, &e) != CM_E_FORMAT) {
            fprintf(stderr, "truncation to %zu bytes was accepted\n", n);
            tl_failures++;
        }
        gguf_close(&f);
        free(c);
    }
    CHECK(gguf_parse(b.p, b.n, &f, &e) == CM_OK);
    exercise(&f);
    gguf_close(&f);
    free(b.p);
}

static void flip_run(const uint8_t *src, size_t n, size_t span, int iters, uint64_t seed)
{
    uint8_t *c = malloc(n);
    int ok = 0;
    for (int it = 0; it < iters; it++) {
        gguf_file f;
        cm_err e;
        memcpy(c, src, n);
        int flips = 1 + (int)(rng_next(&seed) % 4);
        for (int k = 0; k < flips; k++) {
            uint64_t r = rng_next(&seed);
            size_t at = (size_t)(r % span);
            c[at] = (r >> 32) & 1 ? (uint8_t)(r >> 40) : c[at] ^ (uint8_t)(1u << ((r >> 41) & 7));
        }
        if (gguf_parse(c, n, &f, &e) == CM_OK) {
            ok++;
            exercise(&f);
        }
        gguf_close(&f);
    }
    printf("byte flips: %d iterations, %d still parsed\n", iters, ok);
    free(c);
}

static void test_flips(const char *shared)
{
    buf b = small_valid();
    flip_run(b.p, b.n, b.n, 20000, 0x9e3779b97f4a7c15ull);
    free(b.p);
    char p[1024];
    gguf_file f;
    cm_err e;
    join(p, sizeof p, shared, "fixtures/gguf/llama/llama-q4_0.gguf");
    if (gguf_open(p, &f, &e) == CM_OK) { /* flip only the metadata */
        flip_run(f.base, f.size, (size_t)f.data_offset, 3000, 12345);
        gguf_close(&f);
    }
}

static void hostile_header(void)
{
    buf b = {0};
    EXPECT_FAIL(&b, CM_E_FORMAT, "empty");
    put(&b, "GGUX", 4), u32_(&b, 3);
    EXPECT_FAIL(&b, CM_E_FORMAT, "not a GGUF file (magic 47 47 55 58");
    b.n = 0, put(&b, "GG", 2);
    EXPECT_FAIL(&b, CM_E_FORMAT, "not a GGUF file");
    b.n = 0, hdr(&b, 1, 0, 0);
    EXPECT_FAIL(&b, CM_E_FORMAT, "version 1 is not supported");
    b.n = 0, hdr(&b, 4, 0, 0);
    EXPECT_FAIL(&b, CM_E_FORMAT, "unsupported GGUF version 4");
    b.n = 0, hdr(&b, 0x03000000u, 0, 0);
    EXPECT_FAIL(&b, CM_E_FORMAT, "big-endian");
    b.n = 0, hdr(&b, 3, 1ull << 60, 0);
    EXPECT_FAIL(&b, CM_E_FORMAT, "header claims 1152921504606846976 tensors");
    b.n = 0, hdr(&b, 3, 0, 1ull << 60);
    EXPECT_FAIL(&b, CM_E_FORMAT, "key/value pairs");
    b.n = 0, hdr(&b, 3, UINT64_MAX, UINT64_MAX);
    EXPECT_FAIL(&b, CM_E_FORMAT, "header claims");
    b.n = 0, hdr(&b, 3, 0, 0);
    b.n -= 3;
    EXPECT_FAIL(&b, CM_E_FORMAT, "truncated: header n_kv at offset 16");
    b.n = 0, hdr(&b, 2, 0, 0); /* v2 with nothing in it is fine */
    gguf_file f;
    cm_err e;
    CHECK(gguf_parse(b.p, b.n, &f, &e) == CM_OK && f.version == 2 && f.n_kv == 0);
    CHECK(gguf_find(&f, "x") == NULL && gguf_find_tensor(&f, "x") == NULL);
    gguf_close(&f);
    free(b.p);
}

static void hostile_kv(void)
{
    buf b = {0};
    hdr(&b, 3, 0, 1), u64_(&b, 1ull << 63), u64_(&b, 0);
    EXPECT_FAIL(&b, CM_E_FORMAT, "truncated: kv 0 key at offset 32");
    b.n = 0, hdr(&b, 3, 0, 1), str_(&b, "k"), u32_(&b, GGUF_STRING), u64_(&b, 5), put(&b, "abcd", 4);
    EXPECT_FAIL(&b, CM_E_FORMAT, "kv 0 'k' value at offset 45 runs past end of file (size 49)");
    b.n = 0, hdr(&b, 3, 0, 1), str_(&b, "k"), u32_(&b, 13), u32_(&b, 0);
    EXPECT_FAIL(&b, CM_E_FORMAT, "bad value type 13");
    b.n = 0, hdr(&b, 3, 0, 1), str_(&b, "k"), u32_(&b, GGUF_ARRAY), u32_(&b, GGUF_UINT32);
    u64_(&b, 1ull << 61), u32_(&b, 1);
    EXPECT_FAIL(&b, CM_E_FORMAT, "array data");
    b.n = 0, hdr(&b, 3, 0, 1), str_(&b, "k"), u32_(&b, GGUF_ARRAY), u32_(&b, GGUF_STRING);
    u64_(&b, UINT64_MAX), str_(&b, "a");
    EXPECT_FAIL(&b, CM_E_FORMAT, "array data");
    b.n = 0, hdr(&b, 3, 0, 1), str_(&b, "k"), u32_(&b, GGUF_ARRAY), u32_(&b, GGUF_STRING);
    u64_(&b, 3), str_(&b, "a"), str_(&b, "b"), u64_(&b, 100), u64_(&b, 0);
    EXPECT_FAIL(&b, CM_E_FORMAT, "kv 0 'k' element 2 string");
    b.n = 0, hdr(&b, 3, 0, 1), str_(&b, "k"), u32_(&b, GGUF_ARRAY), u32_(&b, GGUF_ARRAY);
    u64_(&b, 1), u32_(&b, GGUF_UINT8), u64_(&b, 1), u8_(&b, 1);
    EXPECT_FAIL(&b, CM_E_FORMAT, "nested arrays");
    b.n = 0, hdr(&b, 3, 0, 1), str_(&b, "k"), u32_(&b, GGUF_ARRAY), u32_(&b, 77), u64_(&b, 0);
    EXPECT_FAIL(&b, CM_E_FORMAT, "bad array element type 77");
    b.n = 0, hdr(&b, 3, 0, 2), kv_u32(&b, "dup", 1), kv_u32(&b, "dup", 2);
    EXPECT_FAIL(&b, CM_E_FORMAT, "duplicate key 'dup'");
    b.n = 0, hdr(&b, 3, 0, 1), str_(&b, "k\nx"), u32_(&b, 13);
    EXPECT_FAIL(&b, CM_E_FORMAT, "'k?x'"); /* control bytes never break the line */
    for (uint32_t a = 0; a < 4; a += 3) {
        b.n = 0, hdr(&b, 3, 0, 1), kv_u32(&b, "general.alignment", a);
        EXPECT_FAIL(&b, CM_E_FORMAT, "is not a power of two");
    }
    b.n = 0, hdr(&b, 3, 0, 1), str_(&b, "general.alignment"), u32_(&b, GGUF_UINT64), u64_(&b, 32);
    EXPECT_FAIL(&b, CM_E_FORMAT, "expected u32");
    free(b.p);
}

/* One tensor info with the given fields, followed by 64 data bytes. */
static buf one_tensor(uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off)
{
    buf b = {0};
    hdr(&b, 3, 1, 0);
    tinfo(&b, "w", n_dims, ne, type, off);
    pad(&b, 32);
    for (int i = 0; i < 64; i++)
        u8_(&b, 0);
    return b;
}

static void hostile_tensors(void)
{
    uint64_t ne[5] = {16, 1, 1, 1, 1}, big[2] = {1ull << 32, 1ull << 32};
    uint64_t zero[2] = {16, 0}, huge[1] = {UINT64_MAX}, blk[1] = {16};
    struct {
        buf b;
        const char *msg;
    } c[] = {
        {one_tensor(0, ne, 0, 0), "n_dims 0 out of range 1..4"},
        {one_tensor(5, ne, 0, 0), "n_dims 5 out of range"},
        {one_tensor(2, big, 0, 0), "tensor 'w': element count overflows"},
        {one_tensor(2, zero, 0, 0), "ne[1] = 0 out of range"},
        {one_tensor(1, huge, 0, 0), "out of range"},
        {one_tensor(1, ne, 57, 0), "tensor 'w': unknown type 57"},
        {one_tensor(1, ne, 0, 32), "runs past end of file"},
        {one_tensor(1, ne, 0, UINT64_MAX - 31), "runs past end of file"},
        {one_tensor(1, ne, 0, 4), "offset 4 is not a multiple of the alignment 32"},
        {one_tensor(1, blk, CM_TYPE_Q4_0, 0), "not a multiple of the block size"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        EXPECT_FAIL(&c[i].b, CM_E_FORMAT, c[i].msg);
        free(c[i].b.p);
    }
    buf b = one_tensor(1, ne, 0, 0); /* the same file unbroken parses */
    gguf_file f;
    cm_err e;
    CHECK(gguf_parse(b.p, b.n, &f, &e) == CM_OK && f.tensors[0].nbytes == 64);
    gguf_close(&f);
    free(b.p);
    b = (buf){0};
    hdr(&b, 3, 2, 0), tinfo(&b, "same", 1, ne, 0, 0), tinfo(&b, "same", 1, ne, 0, 64);
    EXPECT_FAIL(&b, CM_E_FORMAT, "duplicate tensor name 'same'");
    b.n = 0, hdr(&b, 3, 2, 0), tinfo(&b, "a", 1, ne, 0, 0), str_(&b, "bb"), u32_(&b, 4);
    u64_(&b, 1), u64_(&b, 1), u64_(&b, 1);
    EXPECT_FAIL(&b, CM_E_FORMAT, "<gguf buffer>: truncated: tensor info 1 'bb' ne at offset 95 "
                "runs past end of file (size 95)");
    b.n = 0, hdr(&b, 3, 1, 0), u64_(&b, 40), put(&b, "abcdefghijklmnopqrstuvwxyz0123", 30);
    EXPECT_FAIL(&b, CM_E_FORMAT, "truncated: tensor info 0 name at offset 32 runs past end of "
                "file (size 62)");
    free(b.p);
}

/* gguf_open error paths: messages name the file. */
static void hostile_files(const char *tmpdir)
{
    char p[512];
    gguf_file f;
    cm_err e = {0};
    snprintf(p, sizeof p, "%s/missing.gguf", tmpdir);
    CHECK(gguf_open(p, &f, &e) == CM_E_IO && strstr(e.msg, "cannot open") &&
          strstr(e.msg, "missing.gguf: No such file or directory"));
    gguf_close(&f);
    CHECK(gguf_open(tmpdir, &f, &e) == CM_E_IO);
    snprintf(p, sizeof p, "%s/empty.gguf", tmpdir);
    FILE *fp = fopen(p, "wb");
    fclose(fp);
    CHECK(gguf_open(p, &f, &e) == CM_E_FORMAT && strstr(e.msg, "empty.gguf: empty file"));
    gguf_close(&f);
    buf b = small_valid();
    fp = fopen(p, "wb");
    fwrite(b.p, 1, b.n - 1, fp);
    fclose(fp);
    CHECK(gguf_open(p, &f, &e) == CM_E_FORMAT && strstr(e.msg, "empty.gguf: tensor 't'") &&
          strstr(e.msg, "runs past end of file"));
    CHECK(f.base == NULL && f.kv == NULL);
    gguf_close(&f);
    gguf_close(&f);
    unlink(p);
    free(b.p);
}

/* 150k-token vocab array and 10k tensors: linear-time parse and lookup. */
static void test_scale(void)
{
    buf b = {0};
    uint64_t ne[1] = {8};
    char name[64];
    hdr(&b, 3, 10000, 1);
    str_(&b, "tokenizer.ggml.tokens"), u32_(&b, GGUF_ARRAY), u32_(&b, GGUF_STRING);
    u64_(&b, 150000);
    for (int i = 0; i < 150000; i++)
        snprintf(name, sizeof name, "tok%d", i), str_(&b, name);
    for (int i = 0; i < 10000; i++)
        snprintf(name, sizeof name, "blk.%d.w", i), tinfo(&b, name, 1, ne, 0, 32ull * i);
    pad(&b, 32);
    for (int i = 0; i < 10000 * 32; i++)
        u8_(&b, 0);
    clock_t t0 = clock();
    gguf_file f;
    cm_err e;
    CHECK(gguf_parse(b.p, b.n, &f, &e) == CM_OK);
    int found = 0;
    for (int i = 0; i < 10000; i++) {
        snprintf(name, sizeof name, "blk.%d.w", i);
        const gguf_tensor *t = gguf_find_tensor(&f, name);
        found += t && t == &f.tensors[i];
    }
    gguf_str *toks = NULL;
    uint64_t n = 0;
    CHECK(gguf_get_str_array(&f, "tokenizer.ggml.tokens", &toks, &n, &e) == CM_OK &&
          n == 150000 && gguf_str_eq(toks[149999], "tok149999"));
    free(toks);
    double s = (double)(clock() - t0) / CLOCKS_PER_SEC;
    CHECK(found == 10000);
    CHECK(s < 2.0); /* generous for sanitizer builds; quadratic would take minutes */
    printf("scale: 150k tokens + 10k tensors parsed and looked up in %.3f s\n", s);
    gguf_close(&f);
    free(b.p);
}

/* ---- 4. writer failures leave nothing behind ---- */

static void test_writer_failures(const char *tmpdir)
{
    cm_err e = {0};
    int64_t ne[1] = {32};
    int ctx = 0;
    gguf_writer *w = gguf_writer_new(3);
    gguf_writer_set_str(w, "general.architecture", "x");
    CHECK(gguf_writer_finish(w, "/nonexistent-dir-cm/out.gguf", &e) == CM_E_IO &&
          strstr(e.msg, "/nonexistent-dir-cm/out.gguf"));
    CHECK(access("/nonexistent-dir-cm/out.gguf", F_OK) != 0);
    gguf_writer_free(w);

    char p[512], t[600];
    snprintf(p, sizeof p, "%s/fail.gguf", tmpdir);
    snprintf(t, sizeof t, "%s.tmp", p);
    w = gguf_writer_new(3);
    CHECK(gguf_writer_add_tensor(w, "a", CM_TYPE_F32, 1, ne, NULL, fill_pattern, &ctx) == 0);
    CHECK(gguf_writer_add_tensor(w, "b", CM_TYPE_F32, 1, ne, NULL, fill_fail, NULL) == 0);
    CHECK(gguf_writer_finish(w, p, &e) == CM_E_FORMAT && strstr(e.msg, "on purpose"));
    CHECK(access(p, F_OK) != 0 && access(t, F_OK) != 0);
    gguf_writer_free(w);

    w = gguf_writer_new(3);
    CHECK(gguf_writer_add_tensor(w, "a", CM_TYPE_F32, 1, ne, tdata, NULL, NULL) == 0);
    CHECK(gguf_writer_add_tensor(w, "a", CM_TYPE_F32, 1, ne, tdata, NULL, NULL) == 0);
    CHECK(gguf_writer_finish(w, p, &e) != CM_OK && strstr(e.msg, "duplicate tensor name"));
    CHECK(access(p, F_OK) != 0 && access(t, F_OK) != 0);
    gguf_writer_free(w);

    w = gguf_writer_new(3);
    CHECK(gguf_writer_add_tensor(w, "q", CM_TYPE_Q4_0, 1, ne + 0, tdata, NULL, NULL) == 0);
    int64_t odd[1] = {16};
    CHECK(gguf_writer_add_tensor(w, "r", CM_TYPE_Q4_0, 1, odd, tdata, NULL, NULL) != 0);
    CHECK(gguf_writer_add_tensor(w, "s", 57, 1, ne, tdata, NULL, NULL) != 0);
    CHECK(gguf_writer_set_arr(w, "k", GGUF_STRING, tdata, 1) != 0);
    CHECK(gguf_writer_finish(w, p, &e) != CM_OK && strstr(e.msg, "block size"));
    CHECK(access(p, F_OK) != 0);
    gguf_writer_free(w);
    CHECK(gguf_writer_new(1) == NULL && gguf_writer_new(4) == NULL);
    gguf_writer_free(NULL);
}

int main(void)
{
    const char *shared = tl_shared("fixtures/gguf");
    char tmpdir[] = "/tmp/test_gguf.XXXXXX";
    if (!shared)
        tl_skip("no shared data with fixtures/gguf (set CM_SHARED)");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    CHECK(test_fixtures(shared, tmpdir) > 0);
    test_roundtrip(tmpdir);
    test_copy_all_types(tmpdir);
    test_truncations();
    test_flips(shared);
    hostile_header();
    hostile_kv();
    hostile_tensors();
    hostile_files(tmpdir);
    test_scale();
    test_writer_failures(tmpdir);
    rmdir(tmpdir);
    return tl_finish("test_gguf");
}
