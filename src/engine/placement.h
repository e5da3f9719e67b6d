/* placement.h - which weights a device backend holds in its own memory.
 *
 * A backend that cannot read host memory (CUDA) computes an op itself only
 * when every weight of the op is in its memory; the rest runs on the CPU
 * from the mapped file (backend.c).  Placement copies weights to the device
 * in the order that matters most per byte:
 *   1. every layer's attention, norms, router, shared experts, dense FFN,
 *      and the output head (from the last layer down when not all fit);
 *   2. MoE experts, spread evenly over the layers, as many as fit;
 *   3. the token embedding table (one row per token is read).
 * With --gpu-layers N instead, layers n_layer - N .. n_layer - 1 go whole
 * (experts too) and the head when N > n_layer, as llama.cpp's -ngl.
 *
 * Experts that do not fit stay in host memory and are computed on the CPU;
 * the device's expert slots then act as a cache by use (expert buffering):
 * an expert used often, or by many tokens of a prompt batch at once, is
 * copied into the slot of the least used resident expert. */
#ifndef CM_PLACEMENT_H
#define CM_PLACEMENT_H

#include <stdint.h>

#include "engine/backend.h"

typedef struct {
    int gpu_layers;      /* -1: automatic under the budget */
    uint64_t budget;     /* device bytes for weights; 0: what the device
                          * has free less a margin */
    int device;          /* the backend's device number, -1: its choice */
} cm_place_opts;

#define CM_PLACE_AUTO ((cm_place_opts){-1, 0, -1})

typedef struct {
    uint64_t dense_dev, dense_host;   /* non-expert weight bytes */
    uint64_t exp_dev, exp_host;       /* expert bytes resident now / in host memory */
    int slots, experts;               /* device expert slots, experts in the model */
    uint64_t hits, host_runs, uploads, bytes_uploaded;
    int layers_dev;                   /* layers whose dense weights are on the device */
    int head_dev, embd_dev;
} cm_place_stats;

typedef struct cm_placement cm_placement;

/* Copies weights of m to be's memory under o and rewrites w (a copy of m's
 * tensors) and expw ([n_layer][n_expert][3] views of each expert's gate,
 * up, down) to point at them.  Nothing is placed on a backend that reads
 * host memory; *out is then NULL. */
cm_status cm_place_weights(cm_backend *be, const cm_model *m, const cm_place_opts *o,
                           cm_model *w, cm_tensor *expw, cm_placement **out, cm_err *err);
void cm_place_free(cm_backend *be, cm_placement *p);

/* Expert e of layer il is about to run on n tokens: may copy it to the
 * device (rewriting its expw views) when that pays. */
void cm_place_expert_use(cm_placement *p, cm_backend *be, int il, int e, int n, cm_tensor *expw);

void cm_place_get_stats(const cm_placement *p, cm_place_stats *out);
/* Device bytes of every layer's non-expert weights and the output head
 * (what an automatic placement puts first), and of one expert slot. */
uint64_t cm_place_dense_bytes(const cm_model *m, uint64_t *slot_bytes);
/* Whether every weight is on the device (nothing runs on the CPU). */
int cm_place_complete(const cm_placement *p);
/* Whether expert e of layer il is on the device now. */
int cm_place_expert_resident(const cm_placement *p, int il, int e);

/* Views of expert e's three matrices in the stacked tensors of L. */
void cm_expert_views(const cm_layer *L, int e, cm_tensor out[3]);

#endif
