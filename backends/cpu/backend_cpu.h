/* backend_cpu.h - the CPU backend's context state, shared by its files
 * (backend_cpu.c: memory and the row-wise ops; attention.c: the KV cache
 * and attention). */
#ifndef CM_BACKEND_CPU_H
#define CM_BACKEND_CPU_H

#include <stddef.h>

#include "engine/backend.h"

typedef struct {
    const cm_hparams *hp;
    int n_ctx, n_threads;
    enum cm_type kv_type; /* F32, F16 or Q8_0 rows, one per position */
    void **k_cache;       /* [n_layer] -> [n_ctx][n_head_kv * head_dim] */
    void **v_cache;       /* [n_layer] -> [n_ctx][n_head_kv * head_dim_v] */
    float *scores;        /* [n_threads][n_ctx + 2 * head_dim] one head's weights */
    float *attn_tile;     /* [n_threads][tile_floats] prompt attention tiles */
    size_t tile_floats;
    float *rope_cs;       /* [n_ctx][rope_dim / 2] (cos, sin) of each position */
    int rope_done;        /* positions 0 .. rope_done - 1 of rope_cs are filled */
    float *row;           /* n_embd floats: a learned position's embedding */
    void *scratch;        /* activations quantized for the matmul kernels */
    const void *repack_key; /* the model whose weights cm_cpu_repack_acquire took */
    int decoded;            /* cm_cpu_decode_acquire took weights, keyed by this state */
    const void *embd_unmap; /* the token table whose mapped pages lookups drop, or NULL */
} cm_cpu_state;

/* Prompt batches split row-wise work (norms, residual adds, RoPE, SwiGLU,
 * KV cache rows) over the threads by token; below this many tokens one
 * thread does it, as waking the others would cost more.  (Serial, that
 * work was ~7% of a two-thread perplexity run, spent with the other thread
 * spinning.)  Each row is computed as before, so results do not depend on
 * the threads. */
#define CM_PAR_TOKENS 16
/* ... and at least this many floats: a generation step of many sequences
 * has 16 rows or more of a small model's embedding, microseconds of work. */
#define CM_PAR_FLOATS ((size_t)1 << 16)
#define CM_PAR_ROWS(n, width) ((n) >= CM_PAR_TOKENS && (size_t)(n) * (size_t)(width) >= CM_PAR_FLOATS)

/* for (int i = 0; i < n; i++) body, on the thread team only when par: an
 * OpenMP region whose if clause is false still costs libgomp's closing
 * barrier wake, a system call (~3 us in a virtual machine), and a step of
 * many sequences runs hundreds of such small loops. */
#ifdef _OPENMP
#define CM_CPU_FOR(par, i, n, ...)                                  \
    do {                                                            \
        if (par) {                                                  \
            _Pragma("omp parallel for schedule(static)")            \
            for (int i = 0; i < (n); i++) { __VA_ARGS__ }           \
        } else                                                      \
            for (int i = 0; i < (n); i++) { __VA_ARGS__ }           \
    } while (0)
#else
#define CM_CPU_FOR(par, i, n, ...) for (int i = 0; i < (n); i++) { __VA_ARGS__ }
#endif

void *cm_cpu_alloc64(size_t bytes);

/* attention.c */
size_t cm_cpu_attention_bytes(const cm_backend_shape *s, int n_threads);
int cm_cpu_attention_alloc(cm_cpu_state *st, const cm_backend_shape *s);
void cm_cpu_attention_free(cm_cpu_state *st);
void cm_cpu_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0);
void cm_cpu_kv_copy(cm_backend *be, int il_dst, int il_src, int n);
void cm_cpu_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out);

#endif
