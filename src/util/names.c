/* names.c - seeded name indexes on stb_ds (see names.h). */
#include "util/names.h"

#include <string.h>

#include "util/ds.h"

struct cm_names_entry {
    uint64_t key;   /* cm_ds_key of the name's hash */
    uint32_t value; /* index of the first name with that hash */
};

static inline uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

/* One SipRound, as in Aumasson and Bernstein's SipHash paper. */
static inline void sipround(uint64_t v[4])
{
    v[0] += v[1], v[1] = rotl(v[1], 13), v[1] ^= v[0], v[0] = rotl(v[0], 32);
    v[2] += v[3], v[3] = rotl(v[3], 16), v[3] ^= v[2];
    v[0] += v[3], v[3] = rotl(v[3], 21), v[3] ^= v[0];
    v[2] += v[1], v[1] = rotl(v[1], 17), v[1] ^= v[2], v[2] = rotl(v[2], 32);
}

/* SipHash-1-3 (one round per word, three to finish), the variant CPython
 * and Rust key their hash tables with: fast on short names and, keyed,
 * unpredictable.  Words are read little-endian (configure insists on a
 * little-endian CPU). */
uint64_t cm_names_hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    const uint64_t k0 = cm_names_key[0], k1 = cm_names_key[1];
    uint64_t v[4] = {k0 ^ 0x736f6d6570736575ull, k1 ^ 0x646f72616e646f6dull,
                     k0 ^ 0x6c7967656e657261ull, k1 ^ 0x7465646279746573ull};
    uint64_t m, last = (uint64_t)n << 56;
    size_t full = n & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        memcpy(&m, s + i, 8);
        v[3] ^= m;
        sipround(v);
        v[0] ^= m;
    }
    for (size_t i = full; i < n; i++)
        last |= (uint64_t)s[i] << (8 * (i - full));
    v[3] ^= last;
    sipround(v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sipround(v);
    sipround(v);
    sipround(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

static int name_is(cm_name a, const void *p, size_t n)
{
    return a.len == n && (n == 0 || memcmp(a.ptr, p, n) == 0);
}

/* Index of the spilled name equal to p, or CM_NAMES_NONE. */
static uint32_t spill_find(const cm_names *x, cm_name_at at, const void *arr, const void *p,
                           size_t n)
{
    for (ptrdiff_t k = 0; k < arrlen(x->spill); k++)
        if (name_is(at(arr, x->spill[k]), p, n))
            return x->spill[k];
    return CM_NAMES_NONE;
}

/* Map position of key, or -1; never writes to the map. */
static ptrdiff_t slot_of(const cm_names *x, uint64_t key)
{
    struct cm_names_entry *m = x->map;
    ptrdiff_t slot;
    if (!m)
        return -1;
    return hmgeti_ts(m, key, slot);
}

uint32_t cm_names_find(const cm_names *x, cm_name_at at, const void *arr, const void *p,
                       size_t n)
{
    ptrdiff_t slot = slot_of(x, cm_ds_key(cm_names_hash(p, n)));
    if (slot < 0)
        return CM_NAMES_NONE;
    uint32_t i = x->map[slot].value;
    if (name_is(at(arr, i), p, n))
        return i;
    return spill_find(x, at, arr, p, n);
}

uint32_t cm_names_add(cm_names *x, cm_name_at at, const void *arr, uint32_t i)
{
    cm_name nm = at(arr, i);
    uint64_t key = cm_ds_key(cm_names_hash(nm.ptr, nm.len));
    ptrdiff_t slot = slot_of(x, key);
    if (slot < 0) {
        int create = !x->map; /* the first insertion makes the table (util/ds.h) */
        if (create)
            cm_ds_lock();
        hmput(x->map, key, i);
        if (create)
            cm_ds_unlock();
        return CM_NAMES_NONE;
    }
    uint32_t first = x->map[slot].value;
    if (name_is(at(arr, first), nm.ptr, nm.len))
        return first;
    uint32_t dup = spill_find(x, at, arr, nm.ptr, nm.len);
    if (dup == CM_NAMES_NONE)
        arrput(x->spill, i);
    return dup;
}

void cm_names_free(cm_names *x)
{
    hmfree(x->map);
    arrfree(x->spill);
}
