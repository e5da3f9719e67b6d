/* expert_cache.c - LRU residency of MoE experts under a RAM budget. */
#include "engine/expert_cache.h"

#include "backends/cpu/cpu.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct {
    uint64_t last_use; /* tick of the last use; 0 = never */
    int resident;
} expert_slot;

struct cm_expert_cache {
    const cm_model *m;
    uint64_t budget, tick;
    size_t page;
    expert_slot *slots; /* [n_layer][n_expert] */
    cm_expert_stats st;
};

static const cm_tensor *expert_tensor(const cm_layer *L, int which)
{
    return which == 0 ? &L->gate_exps : which == 1 ? &L->up_exps : &L->down_exps;
}

/* [start, end) of expert e's matrix inside a stacked tensor. */
static void slice(const cm_tensor *t, int e, const char **start, const char **end)
{
    size_t bytes = t->nbytes / (size_t)t->ne[2];
    *start = (const char *)t->data + (size_t)e * bytes;
    *end = *start + bytes;
}

uint64_t cm_expert_bytes(const cm_model *m, int il)
{
    const cm_layer *L = &m->layers[il];
    uint64_t total = 0;
    for (int w = 0; w < 3; w++)
        total += expert_tensor(L, w)->nbytes / (uint64_t)m->hp.n_expert;
    return total;
}

cm_status cm_expert_cache_new(const cm_model *m, uint64_t budget, cm_expert_cache **out,
                              cm_err *err)
{
    *out = NULL;
    if (m->hp.n_expert == 0)
        return cm_fail(err, CM_E_USAGE, "%s has no experts: an expert RAM budget does not apply",
                       m->path);
    cm_expert_cache *c = calloc(1, sizeof *c);
    if (c)
        c->slots = calloc((size_t)m->hp.n_layer * m->hp.n_expert, sizeof *c->slots);
    if (!c || !c->slots) {
        free(c);
        return cm_fail(err, CM_E_NOMEM, "out of memory for the expert cache");
    }
    c->m = m;
    c->budget = c->st.budget = budget;
    c->page = (size_t)sysconf(_SC_PAGESIZE);
    /* residency is the mapping's pages here: no repacked copies beside them */
    cm_cpu_repack_drop_experts(m);
    *out = c;
    return CM_OK;
}

void cm_expert_cache_free(cm_expert_cache *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c);
}

/* Pages of [start, end) that are not in the page cache: a read from disk. */
static uint64_t missing_bytes(const cm_expert_cache *c, const char *start, const char *end)
{
    uintptr_t a = (uintptr_t)start & ~(uintptr_t)(c->page - 1);
    size_t len = (size_t)((uintptr_t)end - a), pages = (len + c->page - 1) / c->page;
    unsigned char vec[4096];
    uint64_t missing = 0;
    for (size_t done = 0; done < pages;) {
        size_t n = pages - done < sizeof vec ? pages - done : sizeof vec;
        if (mincore((void *)(a + done * c->page), n * c->page, vec) != 0)
            return 0; /* cannot tell: count nothing rather than guess */
        for (size_t i = 0; i < n; i++)
            missing += !(vec[i] & 1);
        done += n;
    }
    return missing * c->page;
}

/* Drops the whole pages inside [start, end); edge pages may be shared with
 * a neighbour and stay. */
static void release(const cm_expert_cache *c, const char *start, const char *end)
{
    uintptr_t a = ((uintptr_t)start + c->page - 1) & ~(uintptr_t)(c->page - 1);
    uintptr_t b = (uintptr_t)end & ~(uintptr_t)(c->page - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

static void evict(cm_expert_cache *c, size_t idx)
{
    int il = (int)(idx / (size_t)c->m->hp.n_expert), e = (int)(idx % (size_t)c->m->hp.n_expert);
    const cm_layer *L = &c->m->layers[il];
    for (int w = 0; w < 3; w++) {
        const char *s, *t;
        slice(expert_tensor(L, w), e, &s, &t);
        release(c, s, t);
    }
    c->slots[idx].resident = 0;
    c->st.resident_bytes -= cm_expert_bytes(c->m, il);
    c->st.evictions++;
}

/* Evicts least recently used experts until `need` more bytes fit. */
static void make_room(cm_expert_cache *c, uint64_t need, size_t keep)
{
    size_t n = (size_t)c->m->hp.n_layer * c->m->hp.n_expert;
    while (c->budget && c->st.resident_bytes + need > c->budget) {
        size_t victim = n;
        for (size_t i = 0; i < n; i++)
            if (c->slots[i].resident && i != keep &&
                (victim == n || c->slots[i].last_use < c->slots[victim].last_use))
                victim = i;
        if (victim == n)
            return; /* one expert alone exceeds the budget: run it anyway */
        evict(c, victim);
    }
}

void cm_expert_cache_use(cm_expert_cache *c, int il, int e)
{
    size_t idx = (size_t)il * c->m->hp.n_expert + e;
    expert_slot *s = &c->slots[idx];
    s->last_use = ++c->tick;
    if (s->resident) {
        c->st.hits++;
        return;
    }
    uint64_t bytes = cm_expert_bytes(c->m, il);
    c->st.misses++;
    make_room(c, bytes, idx);
    const cm_layer *L = &c->m->layers[il];
    for (int w = 0; w < 3; w++) {
        const char *a, *b;
        slice(expert_tensor(L, w), e, &a, &b);
        c->st.bytes_from_disk += missing_bytes(c, a, b);
    }
    s->resident = 1;
    c->st.resident_bytes += bytes;
    if (c->st.resident_bytes > c->st.peak_resident)
        c->st.peak_resident = c->st.resident_bytes;
}

void cm_expert_cache_stats(const cm_expert_cache *c, cm_expert_stats *out) { *out = c->st; }
