/* testlib.h - what the C tests share: the failure count and CHECK, finding the
 * reference data, reading a whole file, SKIP and the summary line.
 *
 * Each test is one program, so this is header-only; the functions are static
 * inline so that a test using part of it still builds warning-free.  Exit
 * codes are automake's: 0 pass, 1 fail, 77 skip, 99 hard error. */
#ifndef CM_TESTLIB_H
#define CM_TESTLIB_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__GNUC__)
#define TL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define TL_PRINTF(f, a)
#endif

static int tl_failures;

/* Past this many, failures are counted but not printed: a broken kernel fails
 * thousands of checks, and the first ones say what is wrong. */
#define TL_MAX_PRINTED 50

TL_PRINTF(4, 5)
static inline void tl_fail_(const char *file, int line, const char *cond, const char *fmt, ...)
{
    if (++tl_failures > TL_MAX_PRINTED) {
        if (tl_failures == TL_MAX_PRINTED + 1)
            fprintf(stderr, "(further failures counted, not printed)\n");
        return;
    }
    fflush(stdout); /* in the log, a failure comes after the output that led to it */
    fprintf(stderr, "FAIL %s:%d:", file, line);
    if (fmt[1]) {
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    } else {
        fprintf(stderr, " %s", cond);
    }
    fputc('\n', stderr);
}

/* CHECK(cond) or CHECK(cond, fmt, ...): a failed check is counted and printed
 * with file:line and the message, or the condition's text when there is none.
 * The " " prefix keeps the format a literal that -Wformat checks, and never an
 * empty one; tl_fail_ drops it. */
#define CHECK(cond, ...)                                               \
    do {                                                               \
        if (!(cond))                                                   \
            tl_fail_(__FILE__, __LINE__, #cond, " " __VA_ARGS__);      \
    } while (0)

/* Prints "SKIP: why" and exits 77, or 1 when checks that need no data have
 * already failed: a skip must not hide a failure. */
TL_PRINTF(1, 2)
static inline void tl_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("SKIP: ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
    exit(tl_failures ? 1 : 77);
}

/* The summary line; returns the exit status (return tl_finish("test_x");). */
static inline int tl_finish(const char *name)
{
    fflush(stderr);
    if (tl_failures)
        printf("FAIL: %s: %d check(s) failed\n", name, tl_failures);
    else
        printf("PASS: %s\n", name);
    return tl_failures ? 1 : 0;
}

/* snprintf into buf, returning buf.  A path cut short would name some other
 * file, so that is a hard error rather than a quiet wrong answer. */
TL_PRINTF(3, 4)
static inline char *tl_path(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= n) {
        fflush(stdout);
        fprintf(stderr, "test error: path longer than %zu bytes: %s...\n", n, buf);
        exit(99);
    }
    return buf;
}

/* The reference data directory, or NULL: $CM_SHARED, else ../shared (from
 * the working directory), $srcdir/../shared (make check), or ../shared beside
 * the source tree (a test run by hand from anywhere); failing those, the
 * repository's own copy of what the tests read, tests/data in the source
 * tree (tests/data/README.md), which mirrors ../shared's paths.  The first
 * that holds `probe`, a path inside it, wins (NULL: any directory), so a copy
 * lacking a test's files does not hide one that has them. */
static inline const char *tl_shared(const char *probe)
{
    static char dir[1024];
    char cand[7][1024], full[2048];
    const char *env = getenv("CM_SHARED"), *srcdir = getenv("srcdir");
    int n = 0;
    struct stat sb;
    if (env && *env)
        tl_path(cand[n++], sizeof cand[0], "%s", env);
    tl_path(cand[n++], sizeof cand[0], "../shared");
    if (srcdir && *srcdir)
        tl_path(cand[n++], sizeof cand[0], "%s/../shared", srcdir);
#ifdef CM_SRCDIR
    tl_path(cand[n++], sizeof cand[0], "%s/../shared", CM_SRCDIR);
#endif
    if (srcdir && *srcdir)
        tl_path(cand[n++], sizeof cand[0], "%s/tests/data", srcdir);
#ifdef CM_SRCDIR
    tl_path(cand[n++], sizeof cand[0], "%s/tests/data", CM_SRCDIR);
#endif
    for (int i = 0; i < n; i++)
        if (stat(tl_path(full, sizeof full, "%s/%s", cand[i], probe ? probe : "."), &sb) == 0)
            return tl_path(dir, sizeof dir, "%s", cand[i]);
    return NULL;
}

/* A whole file, plus a NUL after it so that text can be used as a string;
 * *len (if len) gets its size, 0 when NULL says it could not be read.  Reads
 * until EOF rather than trusting the size, so /proc and memfd paths work. */
static inline void *tl_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL, *grown;
    size_t n = 0, cap = 0, got;
    if (len)
        *len = 0;
    if (!f)
        return NULL;
    do {
        if (n == cap) {
            cap = cap ? 2 * cap : (size_t)1 << 16;
            if (!(grown = realloc(buf, cap + 1))) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = grown;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    if (ferror(f)) {
        free(buf);
        buf = NULL;
    } else {
        buf[n] = 0;
        if (len)
            *len = n;
    }
    fclose(f);
    return buf;
}

/* How many of the whole pages inside [p, p + n) are mapped in this process
 * now (what its RSS counts of them): /proc/self/pagemap's present bit, which
 * needs no privileges.  -1 where pagemap cannot be read (not Linux). */
static inline long tl_mapped_pages(const void *p, size_t n)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) / page, b = ((uintptr_t)p + n) / page;
    FILE *f = fopen("/proc/self/pagemap", "rb");
    long mapped = 0;
    if (!f)
        return -1;
    for (uintptr_t i = a; i < b; i++) {
        uint64_t e;
        if (fseek(f, (long)(i * 8), SEEK_SET) != 0 || fread(&e, 8, 1, f) != 1) {
            mapped = -1;
            break;
        }
        mapped += (long)(e >> 63);
    }
    fclose(f);
    return mapped;
}

#endif
