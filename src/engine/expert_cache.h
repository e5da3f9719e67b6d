/* expert_cache.h - which MoE experts are resident, under a RAM budget.
 *
 * Expert weights stay in the read-only file mapping; the kernel pages them
 * in when a matmul touches them.  With a budget, the least recently used
 * experts are released (madvise MADV_DONTNEED) once the resident expert
 * bytes would exceed it, so a model larger than RAM runs, slower, within a
 * bounded resident set.  Bytes read from disk are measured with mincore():
 * the pages of an expert not in the page cache when it is needed. */
#ifndef CM_EXPERT_CACHE_H
#define CM_EXPERT_CACHE_H

#include <stdint.h>

#include "engine/model.h"
#include "util/status.h"

typedef struct cm_expert_cache cm_expert_cache;

typedef struct {
    uint64_t hits;            /* uses of an expert already resident */
    uint64_t misses;          /* uses that had to bring it in */
    uint64_t evictions;
    uint64_t bytes_from_disk; /* pages not in the page cache when needed */
    uint64_t resident_bytes;  /* expert bytes resident now */
    uint64_t peak_resident;
    uint64_t budget;          /* 0: unlimited */
} cm_expert_stats;

/* budget: bytes of expert weights allowed resident, 0 for no limit (then
 * nothing is released; hits and misses are still counted). */
cm_status cm_expert_cache_new(const cm_model *m, uint64_t budget, cm_expert_cache **out,
                              cm_err *err);
void cm_expert_cache_free(cm_expert_cache *c);
/* Call before computing expert e of layer il. */
void cm_expert_cache_use(cm_expert_cache *c, int il, int e);
void cm_expert_cache_stats(const cm_expert_cache *c, cm_expert_stats *out);

/* Bytes of one expert (gate + up + down) of layer il. */
uint64_t cm_expert_bytes(const cm_model *m, int il);

#endif
