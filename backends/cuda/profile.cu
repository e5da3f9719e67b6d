/* profile.cu - where the GPU's time goes, op by op (CODEMOE_CUDA_PROFILE=1).
 *
 * Every op records an event on the stream as it is issued; the time from
 * one event to the next is the GPU time of the work issued in between,
 * charged to the op (products are marked by type and shape too).  "host"
 * marks where the stream waited for the host (a download, routing), so
 * the gap after it is time the GPU sat idle.  The totals are printed to
 * stderr when the backend is released.  Recorded steps (CUDA graphs) are
 * off while profiling: each op must be issued to be timed. */
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/common.cuh"

namespace {

const int MAX_MARKS = 4096, MAX_NAMES = 256;

struct name_total {
    char name[64];
    double ms;
    long calls;
};

} // namespace

struct cuda_profile {
    cudaEvent_t ev[MAX_MARKS];
    int who[MAX_MARKS]; /* index into names */
    int n_marks;
    name_total names[MAX_NAMES];
    int n_names;
};

namespace {

int name_index(cuda_profile *p, const char *name)
{
    for (int i = 0; i < p->n_names; i++)
        if (strcmp(p->names[i].name, name) == 0)
            return i;
    if (p->n_names == MAX_NAMES)
        return MAX_NAMES - 1; /* the last one collects the rest */
    name_total *t = &p->names[p->n_names];
    snprintf(t->name, sizeof t->name, "%s", name);
    return p->n_names++;
}

/* Charges each interval between marks to its opening mark's name; the
 * last mark stays as the first of the next round. */
void collect(cuda_profile *p)
{
    if (p->n_marks < 2)
        return;
    cuda_check(cudaEventSynchronize(p->ev[p->n_marks - 1]), "profile");
    for (int i = 0; i + 1 < p->n_marks; i++) {
        float ms = 0.0f;
        cuda_check(cudaEventElapsedTime(&ms, p->ev[i], p->ev[i + 1]), "profile");
        p->names[p->who[i]].ms += ms;
        p->names[p->who[i]].calls++;
    }
    cudaEvent_t last = p->ev[p->n_marks - 1];
    p->ev[p->n_marks - 1] = p->ev[0];
    p->ev[0] = last;
    p->who[0] = p->who[p->n_marks - 1];
    p->n_marks = 1;
}

int by_time(const void *a, const void *b)
{
    const double x = ((const name_total *)a)->ms, y = ((const name_total *)b)->ms;
    return (x < y) - (x > y);
}

} // namespace

cuda_profile *cuda_profile_new(void)
{
    const char *v = getenv("CODEMOE_CUDA_PROFILE");
    if (!v || strcmp(v, "1") != 0)
        return NULL;
    cuda_profile *p = (cuda_profile *)calloc(1, sizeof *p);
    for (int i = 0; p && i < MAX_MARKS; i++)
        cuda_check(cudaEventCreate(&p->ev[i]), "profile");
    return p;
}

void cuda_profile_mark(cuda_state *st, const char *name)
{
    cuda_profile *p = st->prof;
    if (p->n_marks == MAX_MARKS)
        collect(p);
    p->who[p->n_marks] = name_index(p, name);
    cuda_check(cudaEventRecord(p->ev[p->n_marks++], st->stream), "profile");
}

void cuda_profile_free(cuda_state *st)
{
    cuda_profile *p = st->prof;
    if (!p)
        return;
    cuda_profile_mark(st, "(end)");
    collect(p);
    qsort(p->names, (size_t)p->n_names, sizeof p->names[0], by_time);
    double total = 0.0;
    for (int i = 0; i < p->n_names; i++)
        total += p->names[i].ms;
    fprintf(stderr, "cuda profile: %.3f ms of GPU time from the first op to the last\n", total);
    for (int i = 0; i < p->n_names && p->names[i].calls; i++)
        fprintf(stderr, "cuda profile: %10.3f ms %5.1f %% %8ld x %8.1f us  %s\n", p->names[i].ms,
                total > 0 ? 100.0 * p->names[i].ms / total : 0.0, p->names[i].calls,
                1000.0 * p->names[i].ms / p->names[i].calls, p->names[i].name);
    for (int i = 0; i < MAX_MARKS; i++)
        cudaEventDestroy(p->ev[i]);
    free(p);
    st->prof = NULL;
}
