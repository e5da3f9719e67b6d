/* test_hostile.c - model files built to attack the loaders (issue 15).
 *
 *  - A GGUF of 300,000 keys whose hashes all land together: under the old
 *    unseeded FNV-1a tables (one probe run of 300,000) `codemoe info` took
 *    minutes; it must now load, or be refused, in well under a second of CPU.
 *    The keys also collide under stb_ds's own byte hash for every seed (it
 *    loses the four bytes after any byte of 0x80 or more in a key word), the
 *    reason names are hashed with util/names.h's SipHash instead.
 *  - The same for a safetensors header's tensor names.
 *  - Repeated keys and tensor names are still refused.
 *  - FIFOs given as models or model files are refused at once, not read
 *    forever (each attempt runs in a child under an alarm, so a regression
 *    fails instead of hanging `make check`).
 *  - The name hash is keyed per process: two runs hash a name differently.
 *
 * `codemoe` ($CODEMOE) is run on the hostile GGUF and a FIFO when built.
 * Needs no reference data.  Exit 0 pass, 1 fail.  `test_hostile --write
 * FILE` only writes the hostile GGUF (to time another build on it). */
#define _GNU_SOURCE
#include "formats/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "experts/router.h"
#include "formats/safetensors.h"
#include "util/ds.h"
#include "util/json.h"
#include "util/names.h"
#include "testlib.h"

#define N_KEYS 300000
#define N_ST_NAMES 100000
#define KEY_LEN 16
/* The old tables were 2^20 slots for this many names, indexed by the low
 * 20 bits of the hash. */
#define CLUSTER_BITS 20
#define CLUSTER_MASK ((1u << CLUSTER_BITS) - 1)
#define FNV_PRIME 1099511628211ull
#define FNV_BASIS 1469598103934665603ull
/* A child stuck this long is a hang, whatever the machine's load. */
#define HANG_SECONDS 60

/* --enable-sanitizers builds (ASan and UBSan together) run code several
 * times slower, and UBSan stops at stb_ds's byte loads. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif
/* CPU seconds a load may take */
#define CPU_LIMIT (SANITIZED ? 3.0 : 1.0)

static char tmpdir[] = "/tmp/cm-hostile.XXXXXX";

/* Name characters: printable, so the safetensors header is plain JSON. */
static const char alphabet[65] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.";

/* ---- names whose FNV-1a hashes share their low CLUSTER_BITS bits ----
 * A key is PREFIX(4) COUNTER(4) MIDDLE(4) SUFFIX(4).  The counter makes it
 * unique; the suffix is searched so that the hash ends on TARGET.  FNV-1a's
 * low bits depend only on low bits, and each step is invertible, so a table
 * of the two-byte endings that lead back from TARGET is met halfway. */

#define TARGET 0x5eedu

typedef struct {
    uint16_t back[1u << CLUSTER_BITS]; /* state -> last two chars + 1, or 0 */
    uint64_t inv;                      /* FNV_PRIME^-1 mod 2^64 */
} fnv_solver;

static uint64_t fnv_step(uint64_t h, unsigned char c)
{
    return (h ^ c) * FNV_PRIME;
}

static uint64_t fnv(const unsigned char *p, size_t n)
{
    uint64_t h = FNV_BASIS;
    for (size_t i = 0; i < n; i++)
        h = fnv_step(h, p[i]);
    return h;
}

static void solver_init(fnv_solver *s)
{
    uint64_t x = FNV_PRIME; /* Newton's iteration for the inverse of an odd number */
    for (int i = 0; i < 6; i++)
        x *= 2 - FNV_PRIME * x;
    s->inv = x;
    memset(s->back, 0, sizeof s->back);
    for (int a = 0; a < 64; a++) {
        for (int b = 0; b < 64; b++) {
            uint64_t h = ((uint64_t)TARGET * s->inv) ^ (unsigned char)alphabet[b];
            h = (h * s->inv) ^ (unsigned char)alphabet[a];
            s->back[h & CLUSTER_MASK] = (uint16_t)(a * 64 + b + 1);
        }
    }
}

/* Fills the key's suffix; 0 when no suffix of the alphabet fits. */
static int solve(const fnv_solver *s, unsigned char *key)
{
    uint64_t h12 = fnv(key, 12);
    for (int a = 0; a < 64; a++) {
        for (int b = 0; b < 64; b++) {
            uint64_t h = fnv_step(fnv_step(h12, (unsigned char)alphabet[a]),
                                  (unsigned char)alphabet[b]);
            uint16_t e = s->back[h & CLUSTER_MASK];
            if (e) {
                key[12] = (unsigned char)alphabet[a];
                key[13] = (unsigned char)alphabet[b];
                key[14] = (unsigned char)alphabet[(e - 1) / 64];
                key[15] = (unsigned char)alphabet[(e - 1) % 64];
                return 1;
            }
        }
    }
    return 0;
}

/* Key i with the given prefix and middle words; 0 if it has no suffix. */
static int make_key(const fnv_solver *s, uint32_t i, const char *prefix, const char *middle,
                    unsigned char *key)
{
    memcpy(key, prefix, 4);
    for (int d = 0; d < 4; d++, i /= 64)
        key[4 + d] = (unsigned char)alphabet[i % 64];
    memcpy(key + 8, middle, 4);
    return solve(s, key);
}

/* ---- files ---- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 4096;
        if (!(b->p = realloc(b->p, b->cap)))
            abort();
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); } /* little-endian host */
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }

static void put_kv_u32(buf *b, const void *key, size_t len, uint32_t v)
{
    put_u64(b, len);
    put(b, key, len);
    put_u32(b, GGUF_UINT32);
    put_u32(b, v);
}

static char *write_file(const char *name, const buf *b)
{
    static char path[4][200];
    static int k;
    char *p = path[k++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(b->p, 1, b->n, f) != b->n || fclose(f)) {
        fprintf(stderr, "test error: cannot write %s\n", p);
        exit(99);
    }
    return p;
}

/* The GGUF keys: byte 3 and byte 11 are 0x80, so that stb_ds's loads lose
 * the counter and the suffix (see the top); keys[i] is KEY_LEN bytes. */
static unsigned char *hostile_keys(const fnv_solver *s, uint32_t n)
{
    unsigned char *keys = malloc((size_t)n * KEY_LEN);
    if (!keys)
        abort();
    for (uint32_t i = 0; i < n; i++)
        if (!make_key(s, i, "hos\x80", "til\x80", keys + (size_t)i * KEY_LEN)) {
            fprintf(stderr, "test error: no FNV suffix for key %u\n", i);
            exit(99);
        }
    return keys;
}

/* n keys (value = index), then `extra` copies of earlier keys. */
static void hostile_gguf(buf *b, const unsigned char *keys, uint32_t n, const uint32_t *extra,
                         int n_extra)
{
    b->n = 0;
    put(b, "GGUF", 4);
    put_u32(b, 3);
    put_u64(b, 0);
    put_u64(b, (uint64_t)n + (uint64_t)n_extra);
    for (uint32_t i = 0; i < n; i++)
        put_kv_u32(b, keys + (size_t)i * KEY_LEN, KEY_LEN, i);
    for (int i = 0; i < n_extra; i++)
        put_kv_u32(b, keys + (size_t)extra[i] * KEY_LEN, KEY_LEN, 7);
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- children: a hang becomes a failure ---- */

typedef struct {
    int status;  /* as from waitpid */
    double cpu;  /* the child's user + system seconds */
    char err[600];
} child_result;

/* Runs fn(arg) in a child that SIGALRM ends after HANG_SECONDS; the child
 * exits with fn's return value.  Its stderr goes to err. */
static child_result in_child(int (*fn)(const void *), const void *arg)
{
    child_result r = {0};
    char path[200];
    snprintf(path, sizeof path, "%s/stderr", tmpdir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        alarm(HANG_SECONDS); /* survives exec: the default action ends the child */
        _exit(fn(arg));
    }
    struct rusage ru;
    if (pid < 0 || wait4(pid, &r.status, 0, &ru) != pid) {
        fprintf(stderr, "test error: fork/wait: %s\n", strerror(errno));
        exit(99);
    }
    r.cpu = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
            (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
    char *e = tl_slurp(path, NULL);
    snprintf(r.err, sizeof r.err, "%s", e ? e : "");
    free(e);
    return r;
}

static int exec_argv(const void *arg)
{
    char *const *argv = arg;
    execv(argv[0], argv);
    return 127;
}

static int exited(const child_result *r, int code)
{
    return WIFEXITED(r->status) && WEXITSTATUS(r->status) == code;
}

static const char *how(const child_result *r)
{
    static char s[64];
    if (WIFSIGNALED(r->status))
        snprintf(s, sizeof s, "killed by signal %d%s", WTERMSIG(r->status),
                 WTERMSIG(r->status) == SIGALRM ? " (hung)" : "");
    else
        snprintf(s, sizeof s, "exit %d", WEXITSTATUS(r->status));
    return s;
}

/* An error is one line: text, then one newline at the very end. */
static int one_line(const char *s)
{
    const char *nl = strchr(s, '\n');
    return *s && nl && nl[1] == 0;
}

/* ---- the tests ---- */

static void test_collisions(const unsigned char *keys)
{
    /* the generator did its job: every key in one FNV cluster, and one
     * stb_ds hash for all of them under any seed (not asked of UBSan, which
     * stops at the very shifts that lose the bytes) */
    int fnv_ok = 1, stb_ok = 1;
    for (uint32_t i = 0; i < N_KEYS; i += 997) {
        const unsigned char *k = keys + (size_t)i * KEY_LEN;
        fnv_ok &= (fnv(k, KEY_LEN) & CLUSTER_MASK) == TARGET;
        for (size_t seed = 1; seed < 4 && !SANITIZED; seed++)
            stb_ok &= stbds_hash_bytes((void *)k, KEY_LEN, seed * 0x9e3779b9u) ==
                      stbds_hash_bytes((void *)keys, KEY_LEN, seed * 0x9e3779b9u);
    }
    CHECK(fnv_ok, "the hostile keys do not share their low %d FNV-1a bits", CLUSTER_BITS);
    /* a fixed stb_ds would be good news, not a failure: say so */
    if (!SANITIZED)
        printf("stbds_hash_bytes: the hostile keys %s\n",
               stb_ok ? "all collide, whatever the seed (util/ds.h says why)"
                      : "no longer collide: util/ds.h's warning may be out of date");
    /* ... while the keyed hash tells them apart */
    CHECK(cm_names_hash(keys, KEY_LEN) != cm_names_hash(keys + KEY_LEN, KEY_LEN));
}

static void test_gguf_load(const char *path, const unsigned char *keys)
{
    gguf_file f;
    cm_err e = {0};
    double t0 = cpu_now();
    cm_status st = gguf_open(path, &f, &e);
    double t = cpu_now() - t0;
    printf("hostile GGUF: %d clustered keys opened in %.3f s of CPU (limit %.1f)\n", N_KEYS, t,
           CPU_LIMIT);
    CHECK(st == CM_OK, "gguf_open: %s", e.msg);
    CHECK(t < CPU_LIMIT, "gguf_open took %.2f s of CPU", t);
    if (st)
        return;
    int found = 1;
    char key[KEY_LEN + 1] = {0};
    for (uint32_t i = 0; i < N_KEYS; i += 101) {
        memcpy(key, keys + (size_t)i * KEY_LEN, KEY_LEN);
        uint32_t v;
        found &= gguf_get_u32(&f, key, &v, NULL) == CM_OK && v == i;
    }
    CHECK(found, "gguf_find misses or mixes up hostile keys");
    memcpy(key, keys, KEY_LEN);
    key[5] ^= 1; /* same stb_ds hash, same FNV cluster, absent */
    CHECK(!gguf_find(&f, key), "gguf_find found a key that is not there");
    gguf_close(&f);
}

static void test_gguf_duplicates(const unsigned char *keys)
{
    buf b = {0};
    gguf_file f;
    cm_err e = {0};
    uint32_t again = N_KEYS / 2;
    hostile_gguf(&b, keys, 1000, (uint32_t[]){500}, 1);
    CHECK(gguf_parse(b.p, b.n, &f, &e) == CM_E_FORMAT && strstr(e.msg, "duplicate key"),
          "a repeated key among clustered ones: %s", e.msg);
    hostile_gguf(&b, keys, N_KEYS, &again, 1);
    e.msg[0] = 0;
    CHECK(gguf_parse(b.p, b.n, &f, &e) == CM_E_FORMAT && strstr(e.msg, "duplicate key") &&
              strstr(e.msg, "(kv 300000)"),
          "a repeated key after 300,000: %s", e.msg);
    /* tensor names: two tensors called "w" */
    b.n = 0;
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 2);
    put_u64(&b, 0);
    for (int i = 0; i < 2; i++) {
        put_u64(&b, 1);
        put(&b, "w", 1);
        put_u32(&b, 1);     /* n_dims */
        put_u64(&b, 8);     /* ne[0] */
        put_u32(&b, 0);     /* F32 */
        put_u64(&b, 32u * (uint64_t)i);
    }
    while (b.n % 32)
        put(&b, "", 1);
    put(&b, (char[64]){0}, 64);
    e.msg[0] = 0;
    CHECK(gguf_parse(b.p, b.n, &f, &e) == CM_E_FORMAT && strstr(e.msg, "duplicate tensor name 'w'"),
          "a repeated tensor name: %s", e.msg);
    free(b.p);
}

/* A safetensors file of n one-byte U8 tensors named by names[] (KEY_LEN
 * bytes each), plus a repeat of names[dup] when dup >= 0.  Returns where
 * the data section starts. */
static size_t hostile_safetensors(buf *b, const unsigned char *names, uint32_t n, int64_t dup)
{
    buf h = {0};
    char ent[200];
    uint32_t count = n + (dup >= 0);
    put(&h, "{", 1);
    for (uint32_t i = 0; i < count; i++) {
        uint32_t k = i < n ? i : (uint32_t)dup;
        int len = snprintf(ent, sizeof ent, "%s\"%.*s\":{\"dtype\":\"U8\",\"shape\":[1],"
                           "\"data_offsets\":[%u,%u]}", i ? "," : "", KEY_LEN,
                           (const char *)names + (size_t)k * KEY_LEN, i, i + 1);
        put(&h, ent, (size_t)len);
    }
    put(&h, "}", 1);
    b->n = 0;
    put_u64(b, h.n);
    put(b, h.p, h.n);
    for (uint32_t i = 0; i < count; i++)
        put(b, "x", 1);
    free(h.p);
    return 8 + h.n;
}

static void test_safetensors(const fnv_solver *s)
{
    unsigned char *names = malloc((size_t)N_ST_NAMES * KEY_LEN);
    buf b = {0};
    st_model m = {0};
    cm_err e = {0};
    if (!names)
        abort();
    for (uint32_t i = 0; i < N_ST_NAMES; i++)
        if (!make_key(s, i, "mdl.", ".wgt", names + (size_t)i * KEY_LEN)) {
            fprintf(stderr, "test error: no FNV suffix for name %u\n", i);
            exit(99);
        }
    size_t data = hostile_safetensors(&b, names, N_ST_NAMES, -1);
    double t0 = cpu_now();
    cm_status st = st_parse(b.p, b.n, "hostile.safetensors", 0, &m, &e);
    double t = cpu_now() - t0;
    printf("hostile safetensors: %d clustered names parsed in %.3f s of CPU (limit %.1f)\n",
           N_ST_NAMES, t, CPU_LIMIT);
    CHECK(st == CM_OK, "st_parse: %s", e.msg);
    CHECK(t < CPU_LIMIT, "st_parse took %.2f s of CPU", t);
    char name[KEY_LEN + 1] = {0};
    memcpy(name, names + (size_t)777 * KEY_LEN, KEY_LEN);
    const st_tensor *tt = st_find(&m, name);
    CHECK(tt && tt->data == b.p + data + 777, "st_find of a clustered name");
    st_close(&m);
    hostile_safetensors(&b, names, 2000, 1234);
    memset(&m, 0, sizeof m);
    CHECK(st_parse(b.p, b.n, "dup.safetensors", 0, &m, &e) == CM_E_FORMAT &&
              strstr(e.msg, "appears twice"),
          "a repeated safetensors tensor name: %s", e.msg);
    st_close(&m);
    free(b.p);
    free(names);
}

/* ---- FIFOs ---- */

static const char *fifo_path;

static int open_gguf(const void *path)
{
    gguf_file f;
    cm_err e = {0};
    if (gguf_open(path, &f, &e) == CM_OK)
        return 2;
    fprintf(stderr, "%s\n", e.msg);
    return 0;
}

static int open_safetensors(const void *path)
{
    st_model m = {0};
    cm_err e = {0};
    cm_status s = st_open_file(path, &m, &e);
    st_close(&m);
    if (!s)
        return 2;
    fprintf(stderr, "%s\n", e.msg);
    return 0;
}

static int open_json(const void *path)
{
    json_doc d;
    cm_err e = {0};
    if (json_parse_file(path, NULL, &d, &e) == CM_OK)
        return 2;
    fprintf(stderr, "%s\n", e.msg);
    return 0;
}

static int open_router(const void *path)
{
    cm_router *r;
    cm_err e = {0};
    if (cm_router_load(path, &r, &e) == CM_OK)
        return 2;
    fprintf(stderr, "%s\n", e.msg);
    return 0;
}

static void test_fifos(void)
{
    static const struct {
        const char *what;
        int (*fn)(const void *);
    } loaders[] = {{"gguf_open", open_gguf}, {"st_open_file", open_safetensors},
                   {"json_parse_file (config.json)", open_json},
                   {"cm_router_load", open_router}};
    for (size_t i = 0; i < sizeof loaders / sizeof *loaders; i++) {
        child_result r = in_child(loaders[i].fn, fifo_path);
        CHECK(exited(&r, 0) && strstr(r.err, fifo_path) && strstr(r.err, "not a regular file") &&
                  one_line(r.err),
              "%s on a FIFO: %s; said: %s", loaders[i].what, how(&r), r.err);
    }
    /* a folder too, and it was refused before any read */
    child_result r = in_child(open_gguf, tmpdir);
    CHECK(exited(&r, 0) && strstr(r.err, "not a regular file"), "gguf_open on a folder: %s; %s",
          how(&r), r.err);
}

/* ---- the command ---- */

static void test_cli(const char *codemoe, const char *hostile)
{
    char *info[] = {(char *)codemoe, "info", (char *)hostile, NULL};
    child_result r = in_child(exec_argv, info);
    printf("codemoe info on the hostile GGUF: %s in %.3f s of CPU\n", how(&r), r.cpu);
    /* loaded (0), or refused (1) with one line: the file has no architecture */
    CHECK(exited(&r, 0) || (exited(&r, 1) && one_line(r.err)),
          "codemoe info on the hostile GGUF: %s; said: %.300s", how(&r), r.err);
    CHECK(r.cpu < CPU_LIMIT, "codemoe info on the hostile GGUF took %.2f s of CPU", r.cpu);
    char *fifo[] = {(char *)codemoe, "info", (char *)fifo_path, NULL};
    r = in_child(exec_argv, fifo);
    CHECK(exited(&r, 1) && one_line(r.err) && strstr(r.err, "not a regular file") &&
              strstr(r.err, fifo_path),
          "codemoe info on a FIFO: %s; said: %.300s", how(&r), r.err);
}

/* Two processes must hash one name differently: the key is drawn at run
 * time, not compiled in. */
static void test_seed(const char *self)
{
    char cmd[600];
    unsigned long long h[2] = {0, 0};
    CHECK(cm_names_key[0] | cm_names_key[1], "the SipHash key was never set");
    snprintf(cmd, sizeof cmd, "'%s' --print-hash", self);
    for (int i = 0; i < 2; i++) {
        FILE *p = popen(cmd, "r");
        if (!p || fscanf(p, "%llx", &h[i]) != 1)
            h[i] = (unsigned long long)i; /* counted below as a failure */
        if (p)
            pclose(p);
    }
    CHECK(h[0] != h[1] && h[0] > 1, "two runs hash a name alike (%llx, %llx)", h[0], h[1]);
}

/* --write PATH: just the hostile GGUF, e.g. to time an older build. */
static int write_hostile(const char *path)
{
    static fnv_solver solver;
    solver_init(&solver);
    unsigned char *keys = hostile_keys(&solver, N_KEYS);
    buf b = {0};
    hostile_gguf(&b, keys, N_KEYS, NULL, 0);
    FILE *f = fopen(path, "wb");
    int bad = !f || fwrite(b.p, 1, b.n, f) != b.n;
    bad |= f && fclose(f);
    free(keys);
    free(b.p);
    if (bad)
        fprintf(stderr, "cannot write %s\n", path);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--print-hash")) {
        printf("%llx\n", (unsigned long long)cm_names_hash("general.architecture", 20));
        return 0;
    }
    if (argc > 2 && !strcmp(argv[1], "--write")) /* to time another build on it */
        return write_hostile(argv[2]);
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "test error: mkdtemp: %s\n", strerror(errno));
        return 99;
    }
    static fnv_solver solver;
    solver_init(&solver);
    unsigned char *keys = hostile_keys(&solver, N_KEYS);
    buf b = {0};
    hostile_gguf(&b, keys, N_KEYS, NULL, 0);
    const char *hostile = write_file("hostile.gguf", &b);
    printf("hostile GGUF: %s, %.1f MB\n", hostile, (double)b.n / 1e6);
    free(b.p);
    char fifo[200];
    snprintf(fifo, sizeof fifo, "%s/model.gguf", tmpdir);
    fifo_path = fifo;
    if (mkfifo(fifo, 0600) != 0) {
        fprintf(stderr, "test error: mkfifo: %s\n", strerror(errno));
        return 99;
    }

    test_collisions(keys);
    test_gguf_load(hostile, keys);
    test_gguf_duplicates(keys);
    test_safetensors(&solver);
    test_fifos();
    test_seed(argv[0]);
    const char *codemoe = getenv("CODEMOE");
    if (codemoe && access(codemoe, X_OK) == 0)
        test_cli(codemoe, hostile);
    else
        printf("(codemoe not built or $CODEMOE unset: the command's checks skipped)\n");

    free(keys);
    unlink(hostile);
    unlink(fifo);
    char stderr_path[200];
    snprintf(stderr_path, sizeof stderr_path, "%s/stderr", tmpdir);
    unlink(stderr_path);
    rmdir(tmpdir);
    return tl_finish("test_hostile");
}
