/* names.h - indexes of names (byte strings) that the caller keeps in an
 * array: name -> its index, built on stb_ds's hash map.
 *
 * The names come from model files (GGUF keys and tensor names, safetensors
 * headers, tokenizer vocabularies and merges), so whoever wrote the file
 * chose them.  Under a fixed hash they can all be made to land in one
 * place, and each insertion then walks every earlier name: a 7.5 MB GGUF of
 * 300,000 such keys kept `codemoe info` busy for minutes.  Here a name's
 * hash is SipHash-1-3 under a 128-bit key drawn at random once per process
 * (stb_ds_impl.c), so such names cannot be computed in advance.
 *
 * The map holds the 64-bit hash of each name and the index of the first
 * name with that hash.  A later, different name with the same full hash
 * (about one chance in 2^62 per pair) goes on a spill list that is searched
 * in turn, so answers are exact whatever the hashes.
 *
 * A zeroed cm_names is an empty index.  The array may move between calls
 * (the caller passes it each time); indices must be below UINT32_MAX. */
#ifndef CM_NAMES_H
#define CM_NAMES_H

#include <stddef.h>
#include <stdint.h>

#define CM_NAMES_NONE UINT32_MAX

typedef struct {
    const char *ptr;
    size_t len;
} cm_name;

/* Name i of the caller's array arr. */
typedef cm_name (*cm_name_at)(const void *arr, uint32_t i);

typedef struct {
    struct cm_names_entry *map; /* stb_ds hash map: hash -> first index */
    uint32_t *spill;            /* stb_ds array: the rest, rarely any */
} cm_names;

/* The process's SipHash key (set before main by stb_ds_impl.c). */
extern uint64_t cm_names_key[2];

/* The keyed hash of n bytes at p. */
uint64_t cm_names_hash(const void *p, size_t n);

/* Adds name i of arr unless an equal name is already in: then returns that
 * name's index and leaves i out, else CM_NAMES_NONE. */
uint32_t cm_names_add(cm_names *x, cm_name_at at, const void *arr, uint32_t i);

/* The index of the name equal to the n bytes at p, or CM_NAMES_NONE.
 * Reads only: threads may look up in one index at once. */
uint32_t cm_names_find(const cm_names *x, cm_name_at at, const void *arr, const void *p,
                       size_t n);

void cm_names_free(cm_names *x);

#endif
