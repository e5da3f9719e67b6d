/* vk_internal.h - what the Vulkan backend's files share. */
#ifndef CM_VK_INTERNAL_H
#define CM_VK_INTERNAL_H

#include <vulkan/vulkan.h>

#include "backends/vulkan/shaders.h"
#include "engine/backend.h"

typedef struct {
    VkBuffer buf;
    VkDeviceMemory mem;
    void *map; /* NULL: device memory the host reaches by copies only */
    VkDeviceSize size;
    VkDeviceSize counted; /* bytes of it in vk_state's allocated (mem_type's heap) */
} vk_buf;

/* Every shader's bindings: operands 0 .. VK_OPERANDS - 1 (as each shader
 * declares them), then the batch's io words (io.glsl). */
#define VK_OPERANDS 5
#define VK_IO_BINDING 5
#define VK_BINDINGS 6

/* A descriptor set kept for one binding of the buffers. */
typedef struct {
    VkDescriptorBufferInfo bi[VK_BINDINGS];
    uint64_t hash;
    VkDescriptorSet set;
} vk_set_entry;

/* Pipelines: one per shader, then per weight type code (ops_vulkan.c
 * type_code) matmul.comp's, matmul_tiled.comp's and its cooperative-matrix
 * compile's (vk_pipe_matmul's variants). */
#define VK_MM_TYPES 13
enum { VK_MM_PLAIN = 0, VK_MM_TILED = 1, VK_MM_COOP = 2 };
#define VK_PIPE_COUNT (VK_SHADER_COUNT + 3 * VK_MM_TYPES)
#define VK_TS_MAX 4096 /* timestamps a batch (the rest of its dispatches untimed) */
/* matmul_tiled.comp's tile: weight rows (its BM) by tokens (its BN) */
#define VK_TILE_ROWS 64
#define VK_TILE_TOKENS 64
/* split prompt attention's default target of workgroups (a few per core
 * of a large GPU), and the most CODEMOE_VULKAN_ATTN_SPLIT may ask */
#define VK_ATTN_SPLIT 1024
#define VK_ATTN_SPLIT_MAX 8192
/* likewise the split products' (CODEMOE_VULKAN_SPLIT_K) */
#define VK_SPLIT_K 1024
#define VK_SPLIT_K_MAX 4096

#define VK_SET_SLOTS 4096 /* the table; the pool holds half as many sets */
#define VK_TRACK 24       /* buffers followed between barriers (record.c) */

/* How a batch's ops reach the device (record.c): recorded and submitted,
 * recorded as a generation step to replay, or that record replayed. */
enum { VK_EAGER = 0, VK_CAPTURE = 1, VK_REPLAY = 2 };

/* The Vulkan version the instance asks for (make_instance): the core
 * versions of the feature queries are used only up to it. */
#define VK_APP_API VK_API_VERSION_1_1

/* What a device offers beyond what the shaders need (Vulkan 1.1 compute,
 * 32-bit storage), asked once at start-up (vk_query_features): printed by
 * info --devices, kept so that shaders can be chosen by feature.  Nothing
 * here is enabled on the device yet: every path works without all of it. */
#define VK_COOPMAT_MAX 16
typedef struct {
    uint32_t m, n, k; /* C (m x n) += A (m x k) B (k x n) */
    int a, c;         /* VkComponentTypeKHR of A and B, of C */
} vk_coopmat_shape;

typedef struct {
    uint32_t api;       /* the device's Vulkan version */
    int f64;            /* shaderFloat64 */
    int f16_storage;    /* storageBuffer16BitAccess */
    int f16_math;       /* shaderFloat16 */
    int i8_storage;     /* storageBuffer8BitAccess */
    int i8_math;        /* shaderInt8 */
    int int_dot;        /* shaderIntegerDotProduct */
    int int_dot_fast;   /* ... with 4x8-bit packed signed dots accelerated */
    int mem_model;      /* vulkanMemoryModel */
    uint32_t subgroup_size;
    uint32_t subgroup_ops;           /* VkSubgroupFeatureFlags in compute shaders */
    uint32_t subgroup_min, subgroup_max; /* with subgroup size control, else 0 */
    int coopmat;        /* VK_KHR_cooperative_matrix: 1 usable, -1 listed but
                         * not asked (these headers predate it), 0 none */
    uint32_t n_coopmat; /* its shapes in coopmat_shapes (the first few) */
    vk_coopmat_shape coopmat_shapes[VK_COOPMAT_MAX];
    /* VK_NV_cooperative_matrix: its subgroup-scope shapes (the first few) */
    uint32_t n_nv;
    vk_coopmat_shape nv_shapes[VK_COOPMAT_MAX];
    VkDeviceSize local_bytes, host_bytes; /* device-local, host-visible heaps */
} vk_features;

typedef struct {
    VkInstance inst;
    VkDebugUtilsMessengerEXT messenger;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    VkCommandPool cmd_pool;
    VkCommandBuffer cmd; /* the one being recorded: eager_cmd or replay_cmd */
    VkCommandBuffer eager_cmd, replay_cmd;
    VkFence fence;
    VkDescriptorSetLayout set_layout;
    VkPipelineLayout pipe_layout;
    VkDescriptorPool desc_pool;
    VkPipeline pipe[VK_PIPE_COUNT]; /* the shaders', then the products' per type */
    VkShaderModule mm_module;       /* matmul.comp, for those */
    VkShaderModule mt_module;       /* matmul_tiled.comp (its int_dot variant or not) */
    VkShaderModule mc_module;       /* its COOP_NV compile, where st->coop */
    uint32_t mm_rows;               /* rows per matmul workgroup (its RW) */
    /* products of the block types over at least this many tokens take
     * matmul_tiled.comp (0: never); int_dot: shaderIntegerDotProduct is
     * enabled, and that shader uses it */
    uint32_t tile_min;
    int int_dot;
    /* a prompt product whose tiles are fewer than this (0: never) splits
     * its rows' chunks among workgroups, their partial sums in mm_part,
     * added up by split_sum.comp */
    uint32_t split_k;
    int tiled_prefetch; /* matmul_tiled.comp's PREFETCH_ON */
    uint32_t tiled_chunks; /* matmul_tiled.comp's KC */
    /* the legacy types' tiled products on NVIDIA's int8 cooperative
     * matrices (matmul_tiled.comp's COOP_NV), with coop_chunks its KC */
    int coop;
    uint32_t coop_chunks;
    int split_groups; /* products that share their input split too */
    vk_buf mm_part;
    /* prompt attention (attention_prompt.comp) from attn_min query rows (0:
     * never); attn_wide: its variant for heads up to 128 for any head */
    uint32_t attn_min;
    int attn_wide;
    /* a prompt's keys split among workgroups while its rows' blocks times
     * heads are fewer than this (0: never), their partial results in
     * attn_part */
    uint32_t attn_split;
    vk_buf attn_part;
    uint32_t mem_type;  /* the buffers' memory (pick_memory) */
    uint32_t host_type; /* host-visible, coherent: what the host reads or writes */
    /* host-visible, coherent and cached where the device has such memory:
     * what the host reads back (reads of device-local memory mapped through
     * the bus are uncached and crawl); slow_reads: host_type is such
     * device-local memory, so downloads go through st->stage */
    uint32_t read_type;
    int slow_reads;
    int force_staging;  /* CODEMOE_VULKAN_STAGING=1: device memory unmapped */
    VkDeviceSize heap_size, allocated; /* of mem_type's heap */
    int f64; /* the device has 64-bit floats: norms sum in double, as the CPU */
    vk_features feat; /* what else it offers (vk_query_features) */
    const cm_hparams *hp;
    int n_ctx, n_batch;
    int kv; /* the cache's type, as the shaders name it: 0 F32, 1 F16, 2 Q8_0 */
    vk_buf **k_cache, **v_cache; /* [n_layer] */
    vk_buf rope_cs, rows, dummy; /* rows: the arena of the ops' row lists */
    /* the products: activation rows quantized to q8_0 (quantize.comp's
     * 36-byte blocks, xq_blocks of them), and the logits of a few tokens
     * before they go to the caller's host array */
    vk_buf xq, lout;
    vk_buf stage; /* copies to and from unmapped buffers */
    float *route_host;   /* the router's logits of n_batch tokens, on the host */
    /* routing on the device (vk_moe_ffn, one token): per layer, k expert
     * ids then k weights in route, the ids again in route_out for the
     * host, copied to moe_dst[layer] (the engine's) when the batch ends */
    vk_buf route, route_out;
    int32_t **moe_dst;
    int moe_pending;
    size_t route_floats; /* its size */
    uint64_t xq_blocks;
    VkDeviceSize align;     /* minStorageBufferOffsetAlignment (at least 4) */
    VkDeviceSize max_range; /* maxStorageBufferRange */
    /* the batch being recorded (record.c) */
    int recording;    /* cmd has begun */
    int after_submit; /* nothing recorded since it began: the next waits */
    VkBuffer wrote[VK_TRACK], read[VK_TRACK]; /* since the last barrier */
    int n_wrote, n_read;                      /* n_wrote -1: lost count */
    int grouped;   /* dispatches of one product: no barriers between them */
    VkBuffer group_wrote[VK_TRACK]; /* written by the group's members */
    int n_group;
    int track;     /* barriers only on hazards (else before every dispatch:
                    * CODEMOE_VULKAN_TRACK=0) */
    int bound;     /* the pipeline bound, -1 none */
    uint64_t dispatches, barriers; /* recorded so far (vk_stats_report) */
    uint64_t captures, replays;
    /* io: host-visible words the shaders read at binding VK_IO_BINDING:
     * [0] the batch's first position (ops push positions relative to it),
     * [1 ..] its token ids */
    vk_buf io;
    uint32_t batch_p0;
    const int32_t *batch_ids; /* the batch's ids (embed reads them from io) */
    int batch_n;
    int mode;                 /* VK_EAGER, VK_CAPTURE or VK_REPLAY */
    int ops_seen, ops_recorded;
    int replay_ready;         /* replay_cmd holds a generation step */
    int replay_off, capture_breaks;
    float *logits_dst;        /* logits in lout, copied there after the wait */
    size_t logits_bytes;
    /* ops held back to run fused with the op after them (ops_vulkan.c),
     * unless CODEMOE_VULKAN_FUSE=0 (fuse 0) */
    int fuse;
    struct {
        int held;
        cm_tensor x, y;
    } pend_add;  /* x += y, for the norm of x that follows */
    struct {
        int held;
        cm_tensor a, b;
    } pend_glu;  /* a = silu(a) * b, for the product of a that follows */
    struct {
        int held, layer_norm, has_y;
        cm_tensor x, w, out, y;
        float eps;
    } pend_norm; /* out = norm(x (+= y)), for the product of out that follows
                  * to have it quantized by the norm's own dispatch */
    struct {
        int held, il, p0;
        cm_tensor q, out;
    } pend_attn; /* a generated token's attention, for the output product
                  * to have it quantized by the attention's own dispatch */
    VkDeviceSize arena_used; /* bytes of rows handed out since the last flush */
    int profile; /* CODEMOE_VULKAN_PROFILE=1: each dispatch timed alone */
    /* CODEMOE_VULKAN_PROFILE=gpu: device timestamps after every dispatch
     * of the batches as they run (replays too), per command buffer (0
     * eager, 1 the replay record): what each dispatch added to the time */
    VkQueryPool ts_pool;
    double ts_ns; /* nanoseconds a tick */
    uint32_t n_ts[2];
    uint16_t ts_pipe[2][VK_TS_MAX];   /* each timestamp's dispatch: its pipeline */
    uint32_t ts_groups[2][VK_TS_MAX]; /* and its workgroups */
    uint64_t ts_val[VK_TS_MAX];       /* the values read back */
    double prof_s[VK_PIPE_COUNT];
    uint64_t prof_n[VK_PIPE_COUNT], prof_groups[VK_PIPE_COUNT];
    vk_set_entry sets[VK_SET_SLOTS];
    uint32_t n_sets;
} vk_state;

static inline vk_state *vk_st(cm_backend *be) { return be->state; }

/* A failed call inside an op: reported, fatal. */
void vk_check(VkResult r, const char *what);
/* A buffer in the device's memory (mapped where the host can map it); _in
 * with host 1: in host-visible memory, mapped. */
VkResult vk_buf_make(vk_state *st, VkDeviceSize size, vk_buf *b);
/* host: 0 device memory, 1 host_type, VK_READBACK read_type */
enum { VK_READBACK = 2 };
VkResult vk_buf_make_in(vk_state *st, VkDeviceSize size, int host, vk_buf *b);
void vk_buf_drop(vk_state *st, vk_buf *b);
/* Records pipeline s (a shader id, or vk_pipe_matmul's) over (x, y, z)
 * workgroups with buffers b (NULL: a dummy) and push constants pc, after a
 * barrier on what came before (but within a group); it runs at the next
 * vk_flush. */
void vk_dispatch(vk_state *st, int s, vk_buf *const b[VK_OPERANDS], const void *pc,
                 size_t pc_bytes, uint32_t x, uint32_t y, uint32_t z);
/* The same with binding i at byte off[i] of its buffer (a multiple of
 * st->align), range[i] bytes (VK_WHOLE_SIZE: the rest); off, range NULL:
 * whole buffers. */
void vk_dispatch_at(vk_state *st, int s, vk_buf *const b[VK_OPERANDS],
                    const VkDeviceSize off[VK_OPERANDS], const VkDeviceSize range[VK_OPERANDS],
                    const void *pc, size_t pc_bytes, uint32_t x, uint32_t y, uint32_t z);

/* The pipeline index of the product of weight type code t (made if new):
 * matmul.comp's, or matmul_tiled.comp's (tiled). */
int vk_pipe_matmul(vk_state *st, uint32_t t, int variant);
/* Submits the recorded ops and waits for them (nothing recorded: nothing). */
void vk_flush(vk_state *st);
/* on: the dispatches until the group ends (on 0) are independent of each
 * other (they write disjoint outputs), so no barriers between them. */
void vk_group(vk_state *st, int on);
/* Records a fill of bytes bytes of b from byte off with zeros. */
void vk_fill_zero(vk_state *st, vk_buf *b, VkDeviceSize off, VkDeviceSize bytes);
/* n bytes of host data for the op being recorded (in st->rows, at uint *at). */
void *vk_arena(vk_state *st, size_t n, uint32_t *at);
/* Forgets every descriptor set (a buffer is going away). */
void vk_sets_reset(vk_state *st);
/* Records a copy of n bytes from byte so of src to byte d of dst. */
void vk_copy(vk_state *st, vk_buf *src, VkDeviceSize so, vk_buf *dst, VkDeviceSize d,
             VkDeviceSize n);
/* The backend's batch_begin and batch_end (record.c). */
void vk_batch_begin(cm_backend *be, const int32_t *ids, int n, int p0, int n_out, int replayable);
void vk_batch_end(cm_backend *be);
/* Every op starts with it: 1 when a recorded step replays (the op has
 * nothing to do). */
int vk_replaying(vk_state *st);
/* Records the ops held back for fusion (ops_vulkan.c): before a submit. */
void vk_emit_held(vk_state *st);
void vk_profile_report(vk_state *st);
/* Adds the device timestamps of command buffer c's last run to the profile. */
void vk_ts_collect(vk_state *st, int c);
void vk_stats_report(const vk_state *st);

static inline vk_buf *vk_buf_of(const cm_tensor *t)
{
    return t && t->buf ? (vk_buf *)t->buf->dev : NULL;
}
/* A tensor's position in its buffer, in 32-bit elements. */
static inline uint32_t vk_off(const cm_tensor *t)
{
    return t && t->buf ? (uint32_t)(t->offs / 4) : 0;
}
/* Whether attention_prompt.comp takes the model's heads: multiples of 32
 * up to 128, values multiples of 4 up to 128, and whole blocks with a
 * Q8_0 cache (kv: the shaders' cache code, 2 for Q8_0). */
static inline int vk_prompt_heads(const cm_hparams *hp, int kv)
{
    const int d = hp->head_dim, dv = hp->head_dim_v;
    return d % 32 == 0 && dv % 4 == 0 && (kv != 2 || dv % 32 == 0) && d <= 128 && dv <= 128;
}
static inline uint32_t vk_groups(uint64_t n, uint32_t per) { return (uint32_t)((n + per - 1) / per); }

/* The ops (ops_vulkan.c). */
void vk_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0);
void vk_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out);
void vk_norm(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
             float eps, int layer_norm, cm_tensor *out);
void vk_rope(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0);
void vk_clear(cm_backend *be, cm_tensor *x);
void vk_swiglu(cm_backend *be, cm_tensor *a, const cm_tensor *b);
void vk_gelu(cm_backend *be, const cm_tensor *x, cm_tensor *out);
void vk_add(cm_backend *be, cm_tensor *x, const cm_tensor *y);
void vk_add_gated(cm_backend *be, cm_tensor *out, const cm_tensor *y, const cm_tensor *gate);
void vk_gather(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n, cm_tensor *dst);
void vk_scatter_add(cm_backend *be, cm_tensor *dst, const cm_tensor *src, const int32_t *rows,
                    const float *wts, int n);
int vk_moe_ffn(cm_backend *be, const cm_moe_args *a);
/* The device's expert choices to the engine's arrays (after the batch ran). */
void vk_moe_copy_chosen(vk_state *st);
/* The products and embeddings (every weight type: vk_has_type). */
int vk_has_type(int op, enum cm_type type);
void vk_embed(cm_backend *be, const cm_tensor *table, const cm_tensor *pos_table,
              const int32_t *ids, int n, int p0, cm_tensor *out);
void vk_matmul(cm_backend *be, int nw, const cm_tensor *const *ws, const cm_tensor *const *bs,
               const cm_tensor *x, cm_tensor *const *ys);
void vk_logits(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
               float *host);

#endif
