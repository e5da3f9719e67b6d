/* ops_vulkan.c - the Vulkan backend's ops: each one shader dispatch, or a
 * few (the products: the activations quantized, then a dispatch per weight)
 * (the .comp files of backends/vulkan/shaders; their bindings and push constants are
 * listed at the top of each shader, and mirrored by the structs here).
 * Each records its dispatches (vk_dispatch); only logits waits for them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/vulkan/vk_internal.h"

#define RUN(st, s, b0, b1, b2, b3, pc, x, y, z) RUN5(st, s, b0, b1, b2, b3, NULL, pc, x, y, z)
#define RUN5(st, s, b0, b1, b2, b3, b4, pc, x, y, z)                             \
    do {                                                                         \
        vk_buf *const bufs_[VK_OPERANDS] = {b0, b1, b2, b3, b4};                 \
        vk_dispatch(st, s, bufs_, &(pc), sizeof(pc), x, y, z);                   \
    } while (0)

/* An op's start: nothing to do while a recorded step replays; otherwise
 * what was held back runs first, unless the op takes it over (keep). */
static int op_begin(vk_state *st, int keep)
{
    if (vk_replaying(st))
        return 1;
    if (!keep)
        vk_emit_held(st);
    return 0;
}

/* A position as the shaders take it: relative to the batch's first
 * (io.glsl), so that a recorded step holds no position of its own. */
static uint32_t rel_pos(const vk_state *st, int p)
{
    return (uint32_t)p - st->batch_p0;
}

void vk_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0)
{
    vk_state *st = vk_st(be);
    if (op_begin(st, 0))
        return;
    const cm_tensor *src[2] = {k, v};
    vk_buf *dst[2] = {st->k_cache[il], st->v_cache[il]};
    for (int i = 0; i < 2; i++) {
        struct {
            uint32_t ox, cols, n, p0, kv;
        } pc = {vk_off(src[i]), (uint32_t)src[i]->ne[0], (uint32_t)src[i]->ne[1],
                rel_pos(st, p0), (uint32_t)st->kv};
        if (st->kv == 2) {
            /* one thread per pair of q8_0 blocks (17 uints) of the cache
             * holding one of the blocks stored (all n rows, one grid row):
             * at most n nb / 2 + 1 pairs, whatever the position */
            const uint64_t pairs = (uint64_t)pc.n * (pc.cols / 32) / 2 + 1;
            RUN(st, VK_SH_KV_STORE, vk_buf_of(src[i]), dst[i], NULL, NULL, pc,
                vk_groups(pairs, 64), 1, 1);
            continue;
        }
        /* one thread per value, or per pair of halves */
        uint32_t per = st->kv == 1 ? (pc.cols + 1) / 2 : pc.cols;
        RUN(st, VK_SH_KV_STORE, vk_buf_of(src[i]), dst[i], NULL, NULL, pc, vk_groups(per, 64),
            pc.n, 1);
    }
}

/* How many workgroups split a prompt's keys (attention_prompt.comp's p.ns;
 * 1: none), and the positions each takes (*sk, whole tiles of bk): enough
 * that blocks x heads x splits reaches st->attn_split workgroups, within
 * the partial results' buffer.  Never in a recorded step, which replays at
 * other positions with the same splits. */
static uint32_t attention_splits(const vk_state *st, uint32_t n, uint32_t keys, uint32_t br,
                                 uint32_t bk, uint32_t *sk)
{
    const cm_hparams *hp = st->hp;
    const uint64_t wgs = (uint64_t)(n + br - 1) / br * (uint64_t)hp->n_head;
    if (!st->attn_split || wgs >= st->attn_split || st->cmd == st->replay_cmd)
        return 1;
    uint64_t s = (st->attn_split + wgs - 1) / wgs;
    const uint64_t tiles = (keys + bk - 1) / bk;
    const uint64_t per = (uint64_t)n * (uint64_t)hp->n_head * (uint64_t)(2 + hp->head_dim_v);
    const uint64_t fit = st->attn_part.size / sizeof(float) / per;
    s = s < tiles ? s : tiles;
    s = s < fit ? s : fit;
    if (s < 2)
        return 1;
    *sk = (uint32_t)((keys + s - 1) / s + bk - 1) / bk * bk;
    return (keys + *sk - 1) / *sk;
}

/* attention_prompt.comp: heads of multiples of 32 up to 128 (values of 4),
 * each cached head whole blocks for Q8_0; the keys split among workgroups
 * (its modes 1 and 2, then 3 to combine) where the rows' blocks are too
 * few to fill the device */
static int prompt_attention(vk_state *st, int il, const cm_tensor *q, int p0, cm_tensor *out)
{
    const cm_hparams *hp = st->hp;
    const uint32_t n = (uint32_t)q->ne[1];
    int wide = st->attn_wide;
    const uint32_t min_rows = st->attn_min;
    const int d = hp->head_dim, dv = hp->head_dim_v;
    if (!min_rows || n < min_rows || !vk_prompt_heads(hp, st->kv))
        return 0;
    wide |= d > 64 || dv > 64;
    struct {
        uint32_t oq, oo, p0, n, n_head, group, d, dv, krow, vrow, kv;
        float scale;
        uint32_t mode, sk, ns;
    } pc = {vk_off(q), vk_off(out), rel_pos(st, p0), n, (uint32_t)hp->n_head,
            (uint32_t)(hp->n_head / hp->n_head_kv), (uint32_t)d, (uint32_t)dv,
            (uint32_t)(hp->n_head_kv * d), (uint32_t)(hp->n_head_kv * dv), (uint32_t)st->kv,
            1.0f / sqrtf((float)d), 0, 0, 1};
    /* workgroups of 32 rows and tiles of 32 keys (16 and 16 wide) of one head */
    const uint32_t br = wide ? 16 : 32, nt = wide ? 128 : 256;
    const int sh = wide ? VK_SH_ATTENTION_PROMPT_128 : VK_SH_ATTENTION_PROMPT;
    const uint32_t blocks = (n + br - 1) / br, heads = (uint32_t)hp->n_head;
    pc.ns = attention_splits(st, n, (uint32_t)p0 + n, br, br, &pc.sk);
    vk_buf *part = pc.ns > 1 ? &st->attn_part : NULL;
    if (pc.ns > 1 && st->kv == 1) {
        pc.mode = 1;
        RUN5(st, sh, vk_buf_of(q), vk_buf_of(out), st->k_cache[il], st->v_cache[il], part, pc,
             blocks * pc.ns, heads, 1);
    }
    pc.mode = pc.ns > 1 ? 2 : 0;
    RUN5(st, sh, vk_buf_of(q), vk_buf_of(out), st->k_cache[il], st->v_cache[il], part, pc,
         blocks * pc.ns, heads, 1);
    if (pc.ns > 1) {
        pc.mode = 3;
        RUN5(st, sh, vk_buf_of(q), vk_buf_of(out), st->k_cache[il], st->v_cache[il], part, pc,
             (n * (uint32_t)(dv / 4) + nt - 1) / nt, heads, 1);
    }
    return 1;
}

/* The attention held in st->pend_attn; its output also quantized to
 * q8_0/q8_1 blocks in st->xq when q8 (attention.comp). */
static void attention_now(vk_state *st, int q8)
{
    const cm_hparams *hp = st->hp;
    const cm_tensor *q = &st->pend_attn.q, *out = &st->pend_attn.out;
    const int il = st->pend_attn.il;
    struct {
        uint32_t oq, oo, p0, n_head, group, d, dv, krow, vrow, kv;
        float scale;
        uint32_t q8;
    } pc = {vk_off(q), vk_off(out), rel_pos(st, st->pend_attn.p0), (uint32_t)hp->n_head,
            (uint32_t)(hp->n_head / hp->n_head_kv), (uint32_t)hp->head_dim,
            (uint32_t)hp->head_dim_v, 0, 0, (uint32_t)st->kv,
            1.0f / sqrtf((float)hp->head_dim), (uint32_t)q8};
    /* rows in elements (floats, halves two to a word, or q8_0 quants) */
    pc.krow = (uint32_t)(hp->n_head_kv * hp->head_dim);
    pc.vrow = (uint32_t)(hp->n_head_kv * hp->head_dim_v);
    st->pend_attn.held = 0;
    RUN5(st, VK_SH_ATTENTION, vk_buf_of(q), vk_buf_of(out), st->k_cache[il], st->v_cache[il],
         q8 ? &st->xq : NULL, pc, (uint32_t)q->ne[1], (uint32_t)hp->n_head, 1);
}

/* A prompt's rows take attention_prompt.comp; a generated token's are
 * held back for the output product (vk_matmul) to have them quantized. */
void vk_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out)
{
    vk_state *st = vk_st(be);
    if (op_begin(st, 0) || prompt_attention(st, il, q, p0, out))
        return;
    st->pend_attn.held = 1;
    st->pend_attn.il = il, st->pend_attn.p0 = p0;
    st->pend_attn.q = *q, st->pend_attn.out = *out;
    if (!st->fuse || q->ne[1] > 8)
        attention_now(st, 0);
}

static int same_tensor(const cm_tensor *a, const cm_tensor *b)
{
    return a->buf == b->buf && a->offs == b->offs && a->ne[0] == b->ne[0] && a->ne[1] == b->ne[1];
}

/* A weight (or bias) bound from the last multiple of st->align at or below
 * it to its end (rounded up to a whole uint): the binding's offset and
 * range, and the tensor's first halfword in it.  Binding the tensor, not
 * the buffer, keeps the shaders' indices small and the range within
 * maxStorageBufferRange whatever the size of the buffer holding it. */
typedef struct {
    vk_buf *b;
    VkDeviceSize off, range;
    uint32_t h;
} vk_view;

static vk_view view_of(vk_state *st, const cm_tensor *t)
{
    vk_view v = {vk_buf_of(t), 0, VK_WHOLE_SIZE, 0};
    if (!v.b)
        return v;
    v.off = t->offs / st->align * st->align;
    VkDeviceSize end = (t->offs + t->nbytes + 3) / 4 * 4;
    end = end > v.b->size ? v.b->size : end;
    v.range = end - v.off;
    v.h = (uint32_t)((t->offs - v.off) / 2);
    if (v.range > st->max_range || (t->offs & 1)) {
        fprintf(stderr, "codemoe: vulkan: tensor %s (%.1f MiB at byte %llu) cannot be bound: "
                "the device binds at most %.1f MiB (maxStorageBufferRange), from even offsets\n",
                t->name ? t->name : "?", t->nbytes / 1048576.0, (unsigned long long)t->offs,
                st->max_range / 1048576.0);
        exit(1);
    }
    return v;
}

/* A small F32 weight (a norm's) bound as view_of binds the products'
 * weights: binding i's offset and range set, its first float's index in
 * the binding returned. */
static uint32_t weight_binding(vk_state *st, const cm_tensor *t, int i, VkDeviceSize *off,
                               VkDeviceSize *range)
{
    const vk_view v = view_of(st, t);
    off[i] = v.off, range[i] = v.range;
    return v.h / 2;
}

#define WHOLE5 {VK_WHOLE_SIZE, VK_WHOLE_SIZE, VK_WHOLE_SIZE, VK_WHOLE_SIZE, VK_WHOLE_SIZE}

/* The norm held in st->pend_norm, its rows also quantized to kind q's
 * blocks in st->xq when q != 0 (norm.comp). */
static void norm_now(vk_state *st, int q)
{
    const cm_tensor *x = &st->pend_norm.x, *y = st->pend_norm.has_y ? &st->pend_norm.y : NULL;
    const cm_tensor *out = &st->pend_norm.out;
    struct {
        uint32_t ox, ow, ob, oo, n, layer_norm, has_b;
        float eps;
        uint32_t has_y, oy, q;
    } pc = {vk_off(x), vk_off(&st->pend_norm.w), 0, vk_off(out), (uint32_t)x->ne[0],
            (uint32_t)st->pend_norm.layer_norm, 0, st->pend_norm.eps, (uint32_t)(y != NULL),
            vk_off(y), (uint32_t)q};
    st->pend_norm.held = 0;
    VkDeviceSize off[VK_OPERANDS] = {0}, range[VK_OPERANDS] = WHOLE5;
    pc.ow = weight_binding(st, &st->pend_norm.w, 1, off, range);
    vk_buf *const bufs[VK_OPERANDS] = {vk_buf_of(x), vk_buf_of(&st->pend_norm.w),
                                       q ? &st->xq : NULL, vk_buf_of(out), vk_buf_of(y)};
    vk_dispatch_at(st, VK_SH_NORM, bufs, off, range, &pc, sizeof pc, (uint32_t)x->ne[1], 1, 1);
}

/* The norm of x, after the residual add held back for it (x += y, one
 * dispatch for both) when that add was to this x.  Without a bias it is
 * held back in turn: the product of out that follows has the norm
 * quantize out for it (vk_matmul), one dispatch and barrier fewer. */
void vk_norm(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
             float eps, int layer_norm, cm_tensor *out)
{
    vk_state *st = vk_st(be);
    const int fuse = st->pend_add.held && same_tensor(&st->pend_add.x, x);
    if (op_begin(st, fuse))
        return;
    const cm_tensor *y = fuse ? &st->pend_add.y : NULL;
    st->pend_add.held = 0;
    const int has_b = layer_norm && cm_tensor_present(b);
    if (!has_b) {
        st->pend_norm.held = 1;
        st->pend_norm.x = *x, st->pend_norm.w = *w, st->pend_norm.out = *out;
        st->pend_norm.has_y = y != NULL;
        if (y)
            st->pend_norm.y = *y;
        st->pend_norm.eps = eps, st->pend_norm.layer_norm = layer_norm;
        if (!st->fuse) /* (held only to share this code) */
            norm_now(st, 0);
        return;
    }
    struct {
        uint32_t ox, ow, ob, oo, n, layer_norm, has_b;
        float eps;
        uint32_t has_y, oy, q;
    } pc = {vk_off(x), vk_off(w), vk_off(b), vk_off(out), (uint32_t)x->ne[0],
            (uint32_t)layer_norm, 1, eps, (uint32_t)(y != NULL), vk_off(y), 0};
    VkDeviceSize off[VK_OPERANDS] = {0}, range[VK_OPERANDS] = WHOLE5;
    pc.ow = weight_binding(st, w, 1, off, range);
    pc.ob = weight_binding(st, b, 2, off, range);
    vk_buf *const bufs[VK_OPERANDS] = {vk_buf_of(x), vk_buf_of(w), vk_buf_of(b), vk_buf_of(out),
                                       vk_buf_of(y)};
    vk_dispatch_at(st, VK_SH_NORM, bufs, off, range, &pc, sizeof pc, (uint32_t)x->ne[1], 1, 1);
}

void vk_rope(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0)
{
    vk_state *st = vk_st(be);
    const cm_hparams *hp = st->hp;
    const int has_norm = cm_tensor_present(norm_w);
    if (op_begin(st, 0) || (!has_norm && !hp->use_rope))
        return;
    struct {
        uint32_t ox, onw, n_heads, head_dim, rope_dim, neox, use_rope, has_norm, p0;
        float eps;
    } pc = {vk_off(x), has_norm ? vk_off(norm_w) : 0, (uint32_t)(x->ne[0] / hp->head_dim),
            (uint32_t)hp->head_dim, (uint32_t)hp->rope_dim, (uint32_t)hp->rope_neox,
            (uint32_t)hp->use_rope, (uint32_t)has_norm, rel_pos(st, p0), hp->norm_eps};
    VkDeviceSize off[VK_OPERANDS] = {0}, range[VK_OPERANDS] = WHOLE5;
    if (has_norm)
        pc.onw = weight_binding(st, norm_w, 1, off, range);
    vk_buf *const bufs[VK_OPERANDS] = {vk_buf_of(x), has_norm ? vk_buf_of(norm_w) : NULL,
                                       &st->rope_cs, NULL, NULL};
    vk_dispatch_at(st, VK_SH_ROPE, bufs, off, range, &pc, sizeof pc, pc.n_heads,
                   (uint32_t)x->ne[1], 1);
}

void vk_clear(cm_backend *be, cm_tensor *x)
{
    if (op_begin(vk_st(be), 0))
        return;
    vk_fill_zero(vk_st(be), vk_buf_of(x), x->offs, x->nbytes);
}

static void swiglu_now(vk_state *st, const cm_tensor *a, const cm_tensor *b)
{
    struct {
        uint32_t oa, ob, n;
    } pc = {vk_off(a), vk_off(b), (uint32_t)(a->ne[0] * a->ne[1])};
    RUN(st, VK_SH_SWIGLU, vk_buf_of(a), vk_buf_of(b), NULL, NULL, pc, vk_groups(pc.n, 64), 1, 1);
}

static void add_now(vk_state *st, const cm_tensor *x, const cm_tensor *y)
{
    struct {
        uint32_t ox, oy, n;
    } pc = {vk_off(x), vk_off(y), (uint32_t)(x->ne[0] * x->ne[1])};
    RUN(st, VK_SH_ADD, vk_buf_of(x), vk_buf_of(y), NULL, NULL, pc, vk_groups(pc.n, 64), 1, 1);
}

/* What is held back runs as an op of its own after all: the next op was
 * not one to take it over, or the batch is being submitted. */
void vk_emit_held(vk_state *st)
{
    if (st->pend_add.held) {
        st->pend_add.held = 0;
        add_now(st, &st->pend_add.x, &st->pend_add.y);
    }
    if (st->pend_glu.held) {
        st->pend_glu.held = 0;
        swiglu_now(st, &st->pend_glu.a, &st->pend_glu.b);
    }
    if (st->pend_norm.held)
        norm_now(st, 0);
    if (st->pend_attn.held)
        attention_now(st, 0);
}

/* Held back: the quantization of a for the product that follows may
 * compute it (vk_matmul), so a itself is then never written.  The forward
 * pass reads a swiglu's result only as the input of the next product. */
void vk_swiglu(cm_backend *be, cm_tensor *a, const cm_tensor *b)
{
    vk_state *st = vk_st(be);
    if (op_begin(st, 0))
        return;
    if (st->fuse) {
        st->pend_glu.held = 1;
        st->pend_glu.a = *a;
        st->pend_glu.b = *b;
        return;
    }
    swiglu_now(st, a, b);
}

void vk_gelu(cm_backend *be, const cm_tensor *x, cm_tensor *out)
{
    if (op_begin(vk_st(be), 0))
        return;
    struct {
        uint32_t ox, oo, n;
    } pc = {vk_off(x), vk_off(out), (uint32_t)(x->ne[0] * x->ne[1])};
    RUN(vk_st(be), VK_SH_GELU, vk_buf_of(x), vk_buf_of(out), NULL, NULL, pc, vk_groups(pc.n, 64),
        1, 1);
}

/* Held back for the norm of x that usually follows (the residual stream:
 * vk_norm adds and normalises in one dispatch). */
void vk_add(cm_backend *be, cm_tensor *x, const cm_tensor *y)
{
    vk_state *st = vk_st(be);
    if (op_begin(st, 0))
        return;
    if (st->fuse) {
        st->pend_add.held = 1;
        st->pend_add.x = *x;
        st->pend_add.y = *y;
        return;
    }
    add_now(st, x, y);
}

void vk_add_gated(cm_backend *be, cm_tensor *out, const cm_tensor *y, const cm_tensor *gate)
{
    if (op_begin(vk_st(be), 0))
        return;
    const int has_gate = cm_tensor_present(gate);
    struct {
        uint32_t oo, oy, og, E, n_rows, has_gate;
    } pc = {vk_off(out), vk_off(y), has_gate ? vk_off(gate) : 0, (uint32_t)out->ne[0],
            (uint32_t)out->ne[1], (uint32_t)has_gate};
    RUN(vk_st(be), VK_SH_ADD_GATED, vk_buf_of(out), vk_buf_of(y), has_gate ? vk_buf_of(gate) : NULL,
        NULL, pc, vk_groups((uint64_t)pc.E * pc.n_rows, 64), 1, 1);
}

/* Row lists (and weights) go through st->rows' arena: each op its own
 * place, as the batch runs later. */
void vk_gather(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n, cm_tensor *dst)
{
    vk_state *st = vk_st(be);
    if (op_begin(st, 0))
        return;
    uint32_t at;
    memcpy(vk_arena(st, (size_t)n * sizeof(int32_t), &at), rows, (size_t)n * sizeof(int32_t));
    struct {
        uint32_t os, od, orows, E, n;
    } pc = {vk_off(src), vk_off(dst), at, (uint32_t)src->ne[0], (uint32_t)n};
    RUN(st, VK_SH_GATHER, vk_buf_of(src), vk_buf_of(dst), &st->rows, NULL, pc,
        vk_groups(pc.E, 64), (uint32_t)n, 1);
}

void vk_scatter_add(cm_backend *be, cm_tensor *dst, const cm_tensor *src, const int32_t *rows,
                    const float *wts, int n)
{
    vk_state *st = vk_st(be);
    if (op_begin(st, 0))
        return;
    uint32_t at;
    char *a = vk_arena(st, (size_t)n * 2 * sizeof(int32_t), &at);
    memcpy(a, rows, (size_t)n * sizeof(int32_t));
    memcpy(a + (size_t)n * sizeof(int32_t), wts, (size_t)n * sizeof(float));
    struct {
        uint32_t od, os, orows, owts, E, n;
    } pc = {vk_off(dst), vk_off(src), at, at + (uint32_t)n, (uint32_t)dst->ne[0], (uint32_t)n};
    RUN(st, VK_SH_SCATTER_ADD, vk_buf_of(dst), vk_buf_of(src), &st->rows, &st->rows, pc,
        vk_groups(pc.E, 64), (uint32_t)n, 1);
}

/* ------------------------------------------------------------ the products */

/* The weight types the products and embeddings read on the device (all
 * of the engine's); the engine would run any other on the CPU. */
int vk_has_type(int op, enum cm_type type)
{
    (void)op;
    return type == CM_TYPE_F32 || type == CM_TYPE_F16 || type == CM_TYPE_BF16 ||
           type == CM_TYPE_Q8_0 || type == CM_TYPE_Q4_0 || type == CM_TYPE_Q5_0 ||
           type == CM_TYPE_Q4_1 || type == CM_TYPE_Q5_1 || type == CM_TYPE_Q2_K ||
           type == CM_TYPE_Q3_K || type == CM_TYPE_Q4_K || type == CM_TYPE_Q5_K ||
           type == CM_TYPE_Q6_K;
}

/* The shaders' names of those types (matmul.comp, embed.comp). */
static uint32_t type_code(enum cm_type t)
{
    switch (t) {
    case CM_TYPE_F32: return 0;
    case CM_TYPE_F16: return 1;
    case CM_TYPE_Q8_0: return 2;
    case CM_TYPE_Q4_0: return 3;
    case CM_TYPE_Q5_0: return 4;
    case CM_TYPE_Q4_1: return 5;
    case CM_TYPE_Q5_1: return 6;
    case CM_TYPE_Q4_K: return 7;
    case CM_TYPE_Q6_K: return 8;
    case CM_TYPE_Q5_K: return 9;
    case CM_TYPE_BF16: return 10;
    case CM_TYPE_Q2_K: return 11;
    case CM_TYPE_Q3_K: return 12;
    default: return 0;
    }
}

/* The block types, whose products read the activations as quantize.comp's
 * blocks: 1 q8_0/q8_1 (the legacy types), 2 q8_K (the K-quants). */
static int quantized(enum cm_type t)
{
    const uint32_t c = type_code(t);
    return c == 10 ? 0 : c >= 7 ? 2 : c >= 2 ? 1 : 0;
}

/* Rows t0 .. t0 + n - 1 of x (cols floats) to q8_0/q8_1 blocks in st->xq;
 * of silu(x) * g instead where g is given (a swiglu held back). */
static void quantize_rows(vk_state *st, const cm_tensor *x, int64_t cols, int64_t t0, int64_t n,
                          int kind, const cm_tensor *g)
{
    struct {
        uint32_t ox, cols, n, k, glu, og;
    } pc = {vk_off(x) + (uint32_t)(t0 * cols), (uint32_t)cols, (uint32_t)n, kind == 2,
            g != NULL, g ? vk_off(g) + (uint32_t)(t0 * cols) : 0};
    /* a workgroup per q8_K block, one per 8 q8_0/q8_1 blocks */
    const uint64_t blocks = (uint64_t)(cols / (kind == 2 ? 256 : 32)) * n;
    const uint64_t groups = kind == 2 ? blocks : vk_groups(blocks, 8);
    RUN(st, VK_SH_QUANTIZE, vk_buf_of(x), &st->xq, g ? vk_buf_of(g) : NULL, NULL, pc,
        groups > 65535 ? 65535 : (uint32_t)groups, 1, 1);
}

/* Where a product's activations come from: quantize.comp's blocks at
 * uint ox of b, or F32 rows there for the float weights. */
typedef struct {
    vk_buf *b;
    uint32_t ox;
} vk_act;

/* An expert product (vk_moe_ffn): for each of k slots, the weights of
 * the expert route names at uint oe + slot, n_expert matrices of stride
 * bytes from w's; the slot's activations xstep uints after the last's
 * (0: all read the same row); its output row after the last's. */
typedef struct {
    int k, n_expert;
    size_t stride;
    uint32_t oe, xstep;
} vk_experts;

/* How many splits of its row's chunks a tiled product of rows x n takes
 * (1: none): while its 64 x 64 tiles are fewer than st->split_k, enough
 * splits to make that many workgroups, each split at least a step's four
 * chunks or, for the K types, a super-block, all of their partial sums
 * within room floats.  *kc: the chunks of each. */
static uint32_t product_splits(const vk_state *st, enum cm_type t, uint32_t rows, int64_t n,
                               uint32_t cols, uint64_t room, uint32_t *kc)
{
    const uint64_t tiles = (uint64_t)vk_groups(rows, VK_TILE_ROWS) * vk_groups((uint64_t)n, VK_TILE_TOKENS);
    const uint32_t unit = quantized(t) == 2 ? 8 : 4, units = cols / 32 / unit;
    if (!st->split_k || tiles >= st->split_k || units < 2)
        return 1;
    uint64_t ns = vk_groups(st->split_k, tiles);
    const uint64_t fit = room / ((uint64_t)rows * (uint64_t)n);
    ns = ns < units ? ns : units;
    ns = ns < fit ? ns : fit;
    if (ns < 2)
        return 1;
    *kc = vk_groups(units, ns) * unit;
    return vk_groups(cols / 32, *kc);
}

/* The split products of a group (product, then split_sums once the group
 * has ended, so that a barrier orders their partial sums before the
 * additions): the floats of st->mm_part taken, and the additions due. */
#define SPLITS_MAX 4
typedef struct {
    uint32_t op, oy, rows, n, ns, has_b, ob;
} split_sum_pc;
typedef struct {
    uint64_t used;
    int count, shared; /* shared: the group has other products beside */
    split_sum_pc pc[SPLITS_MAX];
    vk_buf *y[SPLITS_MAX];
    vk_view bias[SPLITS_MAX];
} vk_splits;

/* split_sum.comp for each split product of sp, as a group (they write
 * different outputs). */
static void split_sums(vk_state *st, vk_splits *sp)
{
    vk_group(st, 1);
    for (int i = 0; i < sp->count; i++) {
        const vk_view *bv = &sp->bias[i];
        vk_buf *const bufs[VK_OPERANDS] = {&st->mm_part, NULL, bv->b, sp->y[i], NULL};
        const VkDeviceSize off[VK_OPERANDS] = {0, 0, bv->b ? bv->off : 0, 0, 0};
        const VkDeviceSize range[VK_OPERANDS] = {VK_WHOLE_SIZE, VK_WHOLE_SIZE,
                                                 bv->b ? bv->range : VK_WHOLE_SIZE,
                                                 VK_WHOLE_SIZE, VK_WHOLE_SIZE};
        vk_dispatch_at(st, VK_SH_SPLIT_SUM, bufs, off, range, &sp->pc[i], sizeof sp->pc[i],
                       vk_groups((uint64_t)sp->pc[i].n * sp->pc[i].rows, 256), 1, 1);
    }
    vk_group(st, 0);
    sp->used = 0, sp->count = 0;
}

/* y = x w^T (+ b) for n tokens: y rows of w->ne[1] floats from element oy
 * of yb; with ex, one token's products by its k experts (bias-less).
 * With sp, a tiled product may split its rows' chunks (product_splits),
 * its partial sums in st->mm_part after the group's others and its
 * addition left in sp for split_sums. */
static void product(vk_state *st, const cm_tensor *w, const cm_tensor *b, const vk_act *x,
                    int64_t n, vk_buf *yb, uint32_t oy, const vk_experts *ex, vk_splits *sp)
{
    const int has_b = b && cm_tensor_present(b);
    cm_tensor all = *w; /* (every expert's matrix, for an expert product) */
    if (ex)
        all.nbytes = ex->stride * (size_t)(ex->n_expert - 1) + w->nbytes;
    const vk_view wv = view_of(st, &all), bv = has_b ? view_of(st, b) : (vk_view){0};
    const uint32_t rows = (uint32_t)w->ne[1];
    struct {
        uint32_t type, ox, ow, ob, has_b, oy, cols, rows, n, tpc, es, oe, xstep;
    } pc = {type_code(w->type), x->ox, wv.h, bv.h, (uint32_t)has_b, oy, (uint32_t)w->ne[0], rows,
            (uint32_t)n, 0, ex ? (uint32_t)(ex->stride / 2) : 0, ex ? ex->oe : 0,
            ex ? ex->xstep : 0};
    vk_buf *const bufs[VK_OPERANDS] = {x->b, wv.b, ex ? &st->route : has_b ? bv.b : NULL, yb,
                                       NULL};
    const VkDeviceSize off[VK_OPERANDS] = {0, wv.off, ex ? 0 : bv.off, 0, 0};
    const VkDeviceSize range[VK_OPERANDS] = {VK_WHOLE_SIZE, wv.range,
                                             has_b ? bv.range : VK_WHOLE_SIZE, VK_WHOLE_SIZE,
                                             VK_WHOLE_SIZE};
    if (ex) { /* a slot along z */
        const uint32_t groups = vk_groups(rows, st->mm_rows), gx = groups < 32768 ? groups : 32768;
        vk_dispatch_at(st, vk_pipe_matmul(st, pc.type, VK_MM_PLAIN), bufs, off, range, &pc,
                       sizeof pc, gx, vk_groups(groups, gx), (uint32_t)ex->k);
        return;
    }
    if (quantized(w->type) && st->tile_min && n >= st->tile_min) {
        /* matmul_tiled.comp: a workgroup per tile of rows x tokens (x
         * splits: partial sums to mm_part, then split_sum.comp adds them) */
        uint32_t kc = 0, ns = 1;
        if (sp && sp->count < SPLITS_MAX && (!sp->shared || st->split_groups))
            ns = product_splits(st, w->type, rows, n, pc.cols,
                                st->mm_part.size / sizeof(float) - sp->used, &kc);
        vk_buf *const parts[VK_OPERANDS] = {x->b, wv.b, NULL, &st->mm_part, NULL};
        if (ns > 1) {
            sp->pc[sp->count] = (split_sum_pc){(uint32_t)sp->used, oy, rows, (uint32_t)n, ns,
                                               (uint32_t)has_b, bv.h};
            sp->y[sp->count] = yb;
            sp->bias[sp->count++] = has_b ? bv : (vk_view){0};
            pc.tpc = kc, pc.has_b = 0, pc.oy = (uint32_t)sp->used;
            sp->used += (uint64_t)ns * rows * (uint64_t)n;
        }
        const int variant = st->coop && quantized(w->type) == 1 ? VK_MM_COOP : VK_MM_TILED;
        vk_dispatch_at(st, vk_pipe_matmul(st, pc.type, variant), ns > 1 ? parts : bufs, off,
                       range, &pc, sizeof pc, vk_groups(rows, VK_TILE_ROWS),
                       vk_groups((uint64_t)n, VK_TILE_TOKENS), ns);
        return;
    }
    /* a workgroup per st->mm_rows rows (matmul.comp's RW): (gx, gy) over
     * them, gx within every device's 65535; where that makes fewer than
     * MM_SPREAD workgroups, the tokens split along z in chunks of whole
     * passes (8 tokens), each chunk reading the weights again */
    enum { MM_SPREAD = 256, MM_PASS = 8 };
    const uint32_t groups = vk_groups(rows, st->mm_rows), gx = groups < 32768 ? groups : 32768;
    uint32_t chunks = 1;
    if (groups < MM_SPREAD && n > MM_PASS) {
        const uint32_t passes = vk_groups((uint64_t)n, MM_PASS), want = vk_groups(MM_SPREAD, groups);
        chunks = want < passes ? want : passes;
        pc.tpc = vk_groups(passes, chunks) * MM_PASS;
        chunks = vk_groups((uint64_t)n, pc.tpc);
    }
    vk_dispatch_at(st, vk_pipe_matmul(st, pc.type, VK_MM_PLAIN), bufs,
                   off, range, &pc, sizeof pc, gx, vk_groups(groups, gx), chunks);
}

/* How many tokens of cols columns fit st->xq at once (fatal if none): 40
 * bytes per 32 (q8_0/q8_1, kind 1) or 292 per 256 (q8_K, kind 2). */
static int64_t xq_tokens(vk_state *st, int64_t cols, int kind)
{
    const int64_t per = kind == 2 ? (int64_t)(st->xq.size / (uint64_t)(cols / 256 * 292))
                                  : (int64_t)(st->xq_blocks / (uint64_t)(cols / 32));
    if (per < 1) {
        fprintf(stderr, "codemoe: vulkan: a product's input of %lld columns is wider than the "
                "model's (scratch for %llu blocks)\n", (long long)cols,
                (unsigned long long)st->xq_blocks);
        exit(1);
    }
    return per;
}

/* The kind of blocks a held norm whose output is x makes for these
 * weights' products (0: no such norm, or no weight of a block type). */
static int norm_fold_kind(vk_state *st, int nw, const cm_tensor *const *ws, const cm_tensor *x)
{
    /* norm.comp's ROW_MAX; a few rows only (generation): a norm's
     * workgroup quantizes its one row, fewer workgroups than quantize.comp
     * spreads a prompt's blocks over */
    enum { ROW_MAX = 3072, ROWS_MAX = 8 };
    if (!st->pend_norm.held || !same_tensor(&st->pend_norm.out, x) ||
        x->ne[0] > ROW_MAX || x->ne[1] > ROWS_MAX)
        return 0;
    for (int i = 0; i < nw; i++) {
        const int kind = quantized(ws[i]->type);
        if (kind && x->ne[1] <= xq_tokens(st, ws[i]->ne[0], kind))
            return kind;
    }
    return 0;
}

void vk_matmul(cm_backend *be, int nw, const cm_tensor *const *ws, const cm_tensor *const *bs,
               const cm_tensor *x, cm_tensor *const *ys)
{
    vk_state *st = vk_st(be);
    int all_q8 = 1, all_blocks = 1;
    for (int i = 0; i < nw; i++) {
        all_q8 &= quantized(ws[i]->type) == 1;
        all_blocks &= quantized(ws[i]->type) != 0;
    }
    /* a held swiglu computed by the quantization of x (each kind's
     * blocks: no float weight reads x itself); a held norm of x, or a
     * held attention (to q8_0/q8_1 blocks), quantizing it for the products */
    const int glu = st->pend_glu.held && same_tensor(&st->pend_glu.a, x) && all_blocks;
    int nq = norm_fold_kind(st, nw, ws, x);
    const int aq = st->pend_attn.held && all_q8 && same_tensor(&st->pend_attn.out, x) &&
                   st->hp->head_dim_v % 32 == 0;
    if (op_begin(st, glu || nq || aq))
        return;
    if (nq)
        norm_now(st, nq);
    if (aq)
        attention_now(st, 1), nq = 1; /* (the blocks made, as a norm's) */
    st->pend_glu.held = 0;
    const cm_tensor g = st->pend_glu.b;
    const int64_t n = x->ne[1];
    const vk_act a = {vk_buf_of(x), vk_off(x)};
    int any_q[3] = {0, 0, 0};
    int64_t cols = 0;
    /* float weights multiply x itself; the products of one input write
     * different outputs, so they are a group (no barriers between them),
     * the additions of those that split another after it */
    vk_splits sp = {.shared = nw > 1};
    vk_group(st, 1);
    for (int i = 0; i < nw; i++) {
        const int kind = quantized(ws[i]->type);
        if (kind) {
            any_q[kind] = 1, cols = ws[i]->ne[0];
            continue;
        }
        product(st, ws[i], bs ? bs[i] : NULL, &a, n, vk_buf_of(ys[i]), vk_off(ys[i]), NULL, &sp);
    }
    vk_group(st, 0);
    /* the quantized ones its q8_0/q8_1 rows, then its q8_K rows, each made
     * once for all the weights of that kind (by the norm before, for its
     * kind), as many tokens at a time as the scratch holds */
    for (int kind = 1; kind <= 2; kind++) {
        if (!any_q[kind])
            continue;
        const int64_t per = xq_tokens(st, cols, kind);
        for (int64_t t0 = 0; t0 < n; t0 += per) {
            const int64_t m = n - t0 < per ? n - t0 : per;
            if (kind != nq) /* (nq: all n rows fit, one pass) */
                quantize_rows(st, x, cols, t0, m, kind, glu ? &g : NULL);
            const vk_act q = {&st->xq, 0};
            vk_group(st, 1);
            for (int i = 0; i < nw; i++)
                if (quantized(ws[i]->type) == kind)
                    product(st, ws[i], bs ? bs[i] : NULL, &q, m, vk_buf_of(ys[i]),
                            vk_off(ys[i]) + (uint32_t)(t0 * ws[i]->ne[1]), NULL, &sp);
            vk_group(st, 0);
            if (sp.count)
                split_sums(st, &sp);
        }
    }
}

/* ---------------------------------------------- MoE routed on the device */

/* uints from one row's activations to the next's, as a product reads
 * them: F32 rows (kind 0), quantize.comp's q8_0/q8_1 (1) or q8_K (2) blocks. */
static uint32_t act_row_uints(int64_t cols, int kind)
{
    return (uint32_t)(kind == 0 ? cols : kind == 1 ? cols / 32 * 10 : cols / 256 * 73);
}

/* ys[i] row s = x row s (or row 0: rows_in 1) times the weights ws[i] of
 * slot s's expert, for each of ex's slots; per kind of activation, x
 * quantized once for all the weights of that kind. */
static void expert_products(vk_state *st, int nw, const cm_tensor *const *ws,
                            const size_t *stride, const cm_tensor *x, int rows_in,
                            vk_experts ex, cm_tensor *const *ys)
{
    const int64_t cols = x->ne[0];
    for (int kind = 0; kind <= 2; kind++) {
        int any = 0;
        for (int i = 0; i < nw; i++)
            any |= quantized(ws[i]->type) == kind;
        if (!any)
            continue;
        if (kind)
            quantize_rows(st, x, cols, 0, rows_in, kind, NULL);
        const vk_act act = {kind ? &st->xq : vk_buf_of(x), kind ? 0 : vk_off(x)};
        ex.xstep = rows_in > 1 ? act_row_uints(cols, kind) : 0;
        vk_group(st, 1);
        for (int i = 0; i < nw; i++)
            if (quantized(ws[i]->type) == kind) {
                ex.stride = stride[i];
                product(st, ws[i], NULL, &act, 1, vk_buf_of(ys[i]), vk_off(ys[i]), &ex, NULL);
            }
        vk_group(st, 0);
    }
}

/* Whether the device path takes these shapes: one token, route.comp's
 * bounds, every expert matrix of a weight bindable at once, the experts'
 * activations within the products' scratch. */
static int moe_fits(const vk_state *st, const cm_moe_args *a)
{
    const int k = a->k, X = (int)a->logits->ne[0];
    if (a->x->ne[1] != 1 || k < 1 || k > 16 || X > 256 || k > X || a->layer < 0 ||
        a->layer >= st->hp->n_layer || k > (st->hp->n_expert_used > 0 ? st->hp->n_expert_used : 0))
        return 0;
    for (int i = 0; i < 3; i++) {
        const cm_tensor *w = a->w[i];
        const int kind = quantized(w->type), rows_in = i == 2 ? k : 1;
        const VkDeviceSize lead = w->offs % st->align;
        if (!vk_buf_of(w) || !vk_has_type(CM_OP_matmul, w->type) || ((w->offs | a->stride[i]) & 1) ||
            lead + a->stride[i] * (size_t)(X - 1) + w->nbytes + 4 > st->max_range)
            return 0;
        if (kind && st->xq.size / 4 < (uint64_t)act_row_uints(w->ne[0], kind) * (uint64_t)rows_in)
            return 0;
    }
    return 1;
}

/* route.comp chooses the token's experts into st->route; the gate and up
 * products of each chosen expert, swiglu, the down products, and
 * moe_sum.comp's weighted sum follow with no host in between. */
int vk_moe_ffn(cm_backend *be, const cm_moe_args *a)
{
    vk_state *st = vk_st(be);
    if (!moe_fits(st, a))
        return 0;
    const uint32_t k = (uint32_t)a->k, il = (uint32_t)a->layer, E = (uint32_t)a->out->ne[0];
    st->moe_dst[il] = a->chosen;
    st->moe_pending = 1;
    if (op_begin(st, 0))
        return 1;
    struct {
        uint32_t ol, X, k, norm, oo, oh;
    } rp = {vk_off(a->logits), (uint32_t)a->logits->ne[0], k, (uint32_t)a->norm, 2 * k * il, k * il};
    RUN5(st, VK_SH_ROUTE, vk_buf_of(a->logits), NULL, NULL, &st->route, &st->route_out, rp, 1,
         1, 1);
    const vk_experts ex = {a->k, (int)a->logits->ne[0], 0, 2 * k * il, 0};
    const cm_tensor *gu[2] = {a->w[0], a->w[1]}, *down = a->w[2];
    cm_tensor *ab[2] = {a->a, a->b}, *y = a->y;
    expert_products(st, 2, gu, a->stride, a->x, 1, ex, ab);
    swiglu_now(st, a->a, a->b);
    expert_products(st, 1, &down, a->stride + 2, a->a, a->k, ex, &y);
    struct {
        uint32_t oy, oo, oout, E, k;
    } sp = {vk_off(a->y), 2 * k * il, vk_off(a->out), E, k};
    RUN(st, VK_SH_MOE_SUM, vk_buf_of(a->y), NULL, &st->route, vk_buf_of(a->out), sp,
        vk_groups(E, 64), 1, 1);
    return 1;
}

void vk_moe_copy_chosen(vk_state *st)
{
    const int k = st->hp->n_expert_used;
    for (int il = 0; il < st->hp->n_layer; il++)
        if (st->moe_dst[il]) {
            memcpy(st->moe_dst[il], (const uint32_t *)st->route_out.map + (size_t)il * k,
                   (size_t)k * sizeof(int32_t));
            st->moe_dst[il] = NULL;
        }
    st->moe_pending = 0;
}

/* The product into st->lout, a few tokens at a time, each then submitted
 * (with the batch before it) and waited for, and copied to host; the one
 * row of a recorded step is copied when the step has run (vk_batch_end). */
void vk_logits(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
               float *host)
{
    vk_state *st = vk_st(be);
    const int64_t n = x->ne[1], cols = w->ne[0], rows = w->ne[1];
    if (st->mode != VK_EAGER && n == 1) {
        st->logits_dst = host;
        st->logits_bytes = (size_t)rows * sizeof(float);
    }
    if (op_begin(st, 0))
        return;
    const int q = quantized(w->type);
    int64_t per = (int64_t)(st->lout.size / ((uint64_t)rows * sizeof(float)));
    if (per < 1) {
        fprintf(stderr, "codemoe: vulkan: logits of %lld rows are more than the model's\n",
                (long long)rows);
        exit(1);
    }
    if (q) {
        const int64_t xper = xq_tokens(st, cols, q);
        per = xper < per ? xper : per;
    }
    for (int64_t t0 = 0; t0 < n; t0 += per) {
        const int64_t m = n - t0 < per ? n - t0 : per;
        if (q)
            quantize_rows(st, x, cols, t0, m, q, NULL);
        const vk_act a = {q ? &st->xq : vk_buf_of(x), q ? 0 : vk_off(x) + (uint32_t)(t0 * cols)};
        vk_splits sp = {0};
        product(st, w, b, &a, m, &st->lout, 0, NULL, &sp);
        if (sp.count)
            split_sums(st, &sp);
        if (st->mode == VK_CAPTURE) /* (copied once the step has run) */
            return;
        vk_flush(st);
        memcpy(host + t0 * rows, st->lout.map, (size_t)(m * rows) * sizeof(float));
    }
}

/* The batch's own ids are read from st->io (batch_begin put them there:
 * so a recorded step reads each step's id); others go through st->rows'
 * arena (n_batch of them at a time). */
void vk_embed(cm_backend *be, const cm_tensor *table, const cm_tensor *pos_table,
              const int32_t *ids, int n, int p0, cm_tensor *out)
{
    vk_state *st = vk_st(be);
    if (op_begin(st, 0))
        return;
    const int has_pos = cm_tensor_present(pos_table);
    const int batch = ids == st->batch_ids && n == st->batch_n && n <= st->n_batch;
    const vk_view tv = view_of(st, table), pv = has_pos ? view_of(st, pos_table) : (vk_view){0};
    const uint32_t E = (uint32_t)table->ne[0];
    vk_buf *const bufs[VK_OPERANDS] = {tv.b, has_pos ? pv.b : NULL, batch ? &st->io : &st->rows,
                                       vk_buf_of(out), NULL};
    const VkDeviceSize off[VK_OPERANDS] = {tv.off, pv.off, 0, 0, 0};
    const VkDeviceSize range[VK_OPERANDS] = {tv.range, has_pos ? pv.range : VK_WHOLE_SIZE,
                                             VK_WHOLE_SIZE, VK_WHOLE_SIZE, VK_WHOLE_SIZE};
    for (int t0 = 0; t0 < n; t0 += st->n_batch) {
        const int m = n - t0 < st->n_batch ? n - t0 : st->n_batch;
        uint32_t at = 1; /* (io: the ids after the position) */
        if (!batch)
            memcpy(vk_arena(st, (size_t)m * sizeof(int32_t), &at), ids + t0,
                   (size_t)m * sizeof(int32_t));
        struct {
            uint32_t tt, ot, pt, op, has_pos, E, n, p0, oo, oi;
        } pc = {type_code(table->type), tv.h, has_pos ? type_code(pos_table->type) : 0, pv.h,
                (uint32_t)has_pos, E, (uint32_t)m, rel_pos(st, p0 + t0),
                vk_off(out) + (uint32_t)t0 * E, at};
        vk_dispatch_at(st, VK_SH_EMBED, bufs, off, range, &pc, sizeof pc, vk_groups(E, 64),
                       (uint32_t)m, 1);
    }
}
