/* stb_ds_impl.c - the one copy of stb_ds's implementation, its allocator,
 * and the per-process random seeds of every hash table.
 *
 * Names in model files are chosen by whoever wrote the file, so the hashes
 * that index them are keyed with random bits drawn once per process
 * (before main, so before any thread exists): an attacker who cannot know
 * them cannot compute names that collide. */
#define _GNU_SOURCE
#define STB_DS_IMPLEMENTATION
#include "util/ds.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "util/names.h"

uint64_t cm_names_key[2];

/* Held only while a new table is allocated: a spin costs less than a mutex
 * and needs no thread library. */
static atomic_flag ds_lock = ATOMIC_FLAG_INIT;

void cm_ds_lock(void)
{
    while (atomic_flag_test_and_set_explicit(&ds_lock, memory_order_acquire))
        ;
}

void cm_ds_unlock(void)
{
    atomic_flag_clear_explicit(&ds_lock, memory_order_release);
}

void *cm_ds_realloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q && n) {
        fputs("codemoe: out of memory (hash table)\n", stderr);
        abort();
    }
    return q;
}

/* Fills buf from the kernel; 0 when it could not. */
static int kernel_random(void *buf, size_t n)
{
    if (getrandom(buf, n, GRND_NONBLOCK) == (ssize_t)n)
        return 1;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t got = read(fd, buf, n);
    close(fd);
    return got == (ssize_t)n;
}

/* Without a kernel source (a sandbox without /dev), at least differ per
 * process and per run: the time, the process id and where ASLR put us. */
static void weak_random(uint64_t *w, size_t n)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                 ((uint64_t)getpid() << 48) ^ (uint64_t)(uintptr_t)&x;
    for (size_t i = 0; i < n; i++) { /* splitmix64 steps */
        uint64_t z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        w[i] = z ^ (z >> 31);
    }
}

__attribute__((constructor)) static void seed_tables(void)
{
    uint64_t w[3];
    if (!kernel_random(w, sizeof w))
        weak_random(w, 3);
    cm_names_key[0] = w[0];
    cm_names_key[1] = w[1];
    stbds_rand_seed((size_t)w[2]); /* seeds stb_ds's own hash of each new table */
}
