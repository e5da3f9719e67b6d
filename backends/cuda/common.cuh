/* common.cuh - what the CUDA backend's files share: its state, device
 * pointers of tensors, error checks. */
#ifndef CM_CUDA_COMMON_CUH
#define CM_CUDA_COMMON_CUH

#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "engine/backend.h"
}

struct cuda_state {
    const cm_hparams *hp;
    cudaStream_t stream;       /* every op is queued here, in order */
    int n_ctx, n_batch;
    cm_kv_type kv;
    size_t krow, vrow;         /* bytes of one position's keys, values */
    char **k_cache, **v_cache; /* [n_layer] device pointers */
    size_t smem;               /* shared bytes an attention block may need */
    float *rope_cs;            /* [n_ctx][rope_dim/2][2] cos, sin */
    char *xq;                  /* activations quantized for the products */
    size_t xq_bytes;
    float *split_scratch;      /* partial sums of products split by columns (mmq.cu) */
    size_t split_floats;
    int32_t *rows;             /* gather / scatter-add row lists */
    float *wts;
    float *logits;             /* a chunk of logit rows before their download */
    int logit_rows;
    float *host_route;         /* router logits, downloaded */
    int sm_count, cc;          /* multiprocessors, compute capability x 10 + y */
    size_t vram_peak;          /* most device memory seen in use */
    bool prompt_attn;          /* attention_prompt.cu's kernel suits the model */
    bool mmq;                  /* mmq.cu's tensor-core kernels are in this build */
    bool pdl;                  /* launch_pdl may overlap kernels (sm_90 code on an sm_90+ device) */
    /* the rotations of q and k, held back so that one launch does them and
     * stores k and v in the cache (ops.cu) */
    struct {
        float *x;
        const float *norm_w;
        int n_heads, rows, delta;
    } pend_rope[2];
    int n_pend_rope;
    struct { /* a residual add, held back for the norm that follows (x NULL: none) */
        float *x;
        const float *y;
        long n;
    } pend_add;
    struct { /* two products held back for a swiglu of theirs (matmul.cu) */
        bool held;
        enum cm_type type;
        const char *w[2];
        float *y[2];
        size_t wrow;
        const float *x;
        int rows, cols, n;
    } pend_gate_up;
    /* the batch's first position and token ids: kernels read the position
     * from io_dev[0] (plus an offset known when the ops are issued), so a
     * recorded batch replays at any position */
    int32_t *io_dev, *io_host; /* [1 + n_batch]; io_host pinned */
    int batch_p0;
    /* a recorded generation step (CUDA graph) */
    int mode;                  /* EAGER, CAPTURE or REPLAY */
    int ops_seen, ops_recorded;
    cudaGraphExec_t graph;
    float *logits_host;        /* pinned: the recorded step's logits */
    float *logits_dst;         /* where batch_end copies them */
    size_t logits_bytes;
    struct cuda_profile *prof; /* NULL unless CODEMOE_CUDA_PROFILE=1 (profile.cu) */
};

enum { EAGER = 0, CAPTURE = 1, REPLAY = 2 };

/* Launches what ops.cu held back to fuse with the op after it. */
void cuda_flush(cuda_state *st);

/* profile.cu: NULL unless profiling is asked for; a mark charges the GPU
 * time from it to the next mark to name. */
struct cuda_profile *cuda_profile_new(void);
void cuda_profile_mark(cuda_state *st, const char *name);
void cuda_profile_free(cuda_state *st);

/* Every op counts itself; in a replayed batch that is all it does (the
 * record runs at the batch's end).  Otherwise work held back runs first,
 * unless the op is one that may take it over (keep). */
enum { KEEP_NONE = 0, KEEP_HELD = 1, KEEP_GATE_UP = 2 };

/* keep: KEEP_HELD for an op that may take over held-back rotations or a
 * residual add (held products still run first); KEEP_GATE_UP for the
 * swiglu that takes over held products (nothing else held then). */
static inline bool skip_op_named(cuda_state *st, const char *name, int keep = KEEP_NONE)
{
    st->ops_seen++;
    if (st->mode == REPLAY)
        return true;
    if (keep == KEEP_NONE || (keep == KEEP_HELD && st->pend_gate_up.held))
        cuda_flush(st);
    if (st->prof)
        cuda_profile_mark(st, name);
    return false;
}
#define skip_op(st, ...) skip_op_named(st, __func__, ##__VA_ARGS__)

/* Programmatic dependent launch (sm_90 and later): a kernel launched by
 * launch_pdl may start while the one before it ends, so its launch and its
 * first loads overlap that kernel's tail (a generated token is a chain of
 * hundreds of short kernels).  Such a kernel calls wait_prior_grid() before
 * it reads anything an earlier kernel wrote or writes anything, and before
 * any return: what comes first may only read weights.  Where the code is
 * older than sm_90 both calls are empty, and st->pdl is off. */
__device__ __forceinline__ void wait_prior_grid(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Lets the next kernel in the stream be launched (it waits in turn). */
__device__ __forceinline__ void start_next_grid(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

template <typename... P, typename... A>
void launch_pdl(const cuda_state *st, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                A... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st->stream;
    cudaLaunchAttribute overlap;
    overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    overlap.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &overlap;
    cfg.numAttrs = st->pdl ? 1 : 0;
    cudaLaunchKernelEx(&cfg, kernel, args...); /* (its error: the caller's cuda_check) */
}

static inline cuda_state *cuda_st(cm_backend *be) { return (cuda_state *)be->state; }

/* Device address of a view: its buffer's memory plus the offset. */
static inline char *dev_ptr(const cm_tensor *t)
{
    return (char *)t->buf->dev + t->offs;
}

static inline int present(const cm_tensor *t) { return t && (t->data || t->buf); }

/* An op has no status to return: a failed launch or copy is a broken
 * device, reported and fatal, never a silently wrong answer. */
static inline void cuda_check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "codemoe: cuda: %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

/* matmul.cu: the held gate and up products, with their swiglu or not */
void cuda_gate_up_launch(cuda_state *st, bool with_swiglu);

/* SwiGLU of gate value a and up value b, as every kernel computes it */
static __device__ __forceinline__ float swiglu_value(float a, float b)
{
    return a / (1.0f + expf(-a)) * b;
}

static inline unsigned blocks_for(long n, int per) { return (unsigned)((n + per - 1) / per); }

/* One product: y (n rows of `rows`) = x w^T (+ bias). */
struct mm_args {
    const char *w;      /* weight rows */
    size_t wrow;        /* bytes of one */
    const char *x;      /* activation rows (quantized to the dot type, or floats) */
    size_t xrow;
    const float *bias;  /* or NULL */
    float *y;
    int rows, cols, n;  /* weight rows, columns, tokens */
};

/* Prompt batches of at least this many tokens go to the tensor-core
 * kernels (mmq.cu) where the GPU and the type allow: false if not. */
const int MMQ_MIN_TOKENS = 16, MMQ_PARTS = 3;
/* parts: up to MMQ_PARTS weights of type t sharing x, cols and n */
bool cuda_mmq(cuda_state *st, enum cm_type t, const mm_args *parts, int np);
bool cuda_mmq_available(void);
/* Whether the kernels run here are sm_90 code, whose launches may overlap
 * (launch_pdl). */
bool cuda_pdl_available(void);

/* Products (matmul.cu): ys[i] = x ws[i]^T (+ bs[i]), weights in device memory. */
void cuda_matmul(cm_backend *be, int nw, const cm_tensor *const *ws, const cm_tensor *const *bs,
                 const cm_tensor *x, cm_tensor *const *ys);
/* y (rows x w->ne[1], row stride ld floats) = x w^T (+ b) */
void cuda_matmul_into(cuda_state *st, const cm_tensor *w, const cm_tensor *b, const float *x,
                      int n, float *y);
size_t cuda_xq_bytes(const cm_hparams *hp, int n_batch);

/* The small ops (ops.cu). */
void cuda_embed(cm_backend *be, const cm_tensor *table, const cm_tensor *pos_table,
                const int32_t *ids, int n, int p0, cm_tensor *out);
void cuda_norm(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
               float eps, int layer_norm, cm_tensor *out);
void cuda_rope(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0);
/* k's and q's held-back rotations, then k and v into layer il's cache, in
 * one launch: false (nothing done) unless k is the held-back second. */
bool cuda_rope_store(cuda_state *st, int il, const cm_tensor *k, const cm_tensor *v, int delta);
void cuda_clear(cm_backend *be, cm_tensor *x);
void cuda_swiglu(cm_backend *be, cm_tensor *a, const cm_tensor *b);
void cuda_gelu(cm_backend *be, const cm_tensor *x, cm_tensor *out);
void cuda_add(cm_backend *be, cm_tensor *x, const cm_tensor *y);
void cuda_add_gated(cm_backend *be, cm_tensor *out, const cm_tensor *y, const cm_tensor *gate);
void cuda_gather(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n,
                 cm_tensor *dst);
void cuda_scatter_add(cm_backend *be, cm_tensor *dst, const cm_tensor *src, const int32_t *rows,
                      const float *wts, int n);

/* The KV cache and attention (attention.cu). */
void cuda_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0);
void cuda_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out);
size_t cuda_attention_smem(const cm_hparams *hp, int n_ctx);
/* Bytes a generated token's split attention keeps in st->xq (cuda_xq_bytes
 * reserves them). */
size_t cuda_attention_scratch(const cm_hparams *hp);
/* Prompt rows (attention_prompt.cu): whether the kernel suits this model
 * within smem_limit bytes of shared memory, and the kernel itself for the
 * n rows of q at positions *io_dev + delta ... */
bool cuda_attention_prompt_ok(const cm_hparams *hp, size_t smem_limit);
void cuda_attention_prompt(cuda_state *st, int il, const float *q, int n, int delta, float *out);
/* attention_tensor.cu: the same on the tensor cores, for an F16 cache and
 * the head sizes it has kernels for; false (nothing done) otherwise. */
bool cuda_attention_tensor(cuda_state *st, int il, const float *q, int n, int delta, float *out);

#endif
