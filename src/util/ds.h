/* ds.h - stb_ds (Debian's libstb-dev), configured the way codemoe uses it.
 *
 * Include this, never <stb/stb_ds.h> directly: the allocator macros below
 * must be the same in every file that uses stb_ds's arrays and hash maps.
 * src/util/stb_ds_impl.c holds the one copy of the implementation.
 *
 * Two rules for hash maps:
 *  - stb_ds's own hashes must not see bytes an attacker chose.  Its byte
 *    loads widen through int, so in a key word whose fourth byte is 0x80 or
 *    more the next four bytes are lost (and UBSan reports the shift): keys
 *    that differ only there collide whatever the seed.  Hash names with
 *    cm_names (names.h) instead, and keep bits 31 and 63 of a 64-bit key
 *    clear (cm_ds_key does).
 *  - look up with hmgeti_ts on a copy of the map pointer, after checking it
 *    is not NULL: plain hmgeti writes into the map (so two threads cannot
 *    share it) and allocates one when given NULL. */
#ifndef CM_DS_H
#define CM_DS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* stb_ds cannot report a failed allocation, so this one exits with a
 * message rather than let it dereference NULL. */
void *cm_ds_realloc(void *p, size_t n);

#define STBDS_REALLOC(ctx, p, n) cm_ds_realloc((p), (n))
#define STBDS_FREE(ctx, p) free(p)
#include <stb/stb_ds.h>

/* stb_ds gives each new hash map the next value of one global seed, which
 * it updates unguarded: an insertion that may create a map's table (the
 * first, into a NULL map) is made under this lock, so that threads can
 * build maps at the same time. */
void cm_ds_lock(void);
void cm_ds_unlock(void);

/* A 64-bit hash as an stb_ds key: bits 31 and 63 cleared, so that none of
 * the key's bytes is sign-extended by stb_ds's loads (see above). */
static inline uint64_t cm_ds_key(uint64_t h)
{
    return h & 0x7fffffff7fffffffull;
}

#endif
