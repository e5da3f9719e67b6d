/* ops_vulkan.c - the Vulkan backend's ops: each one shader dispatch
 * (the .comp files of backends/vulkan/shaders; their bindings and push constants are
 * listed at the top of each shader, and mirrored by the structs here). */
#include <math.h>
#include <string.h>

#include "backends/vulkan/vk_internal.h"

#define RUN(st, s, b0, b1, b2, b3, pc, x, y, z)                                   \
    do {                                                                         \
        vk_buf *const bufs_[4] = {b0, b1, b2, b3};                               \
        vk_dispatch(st, s, bufs_, &(pc), sizeof(pc), x, y, z);                   \
    } while (0)

void vk_kv_store(cm_backend *be, int il, const cm_tensor *k, const cm_tensor *v, int p0)
{
    vk_state *st = vk_st(be);
    const cm_tensor *src[2] = {k, v};
    vk_buf *dst[2] = {st->k_cache[il], st->v_cache[il]};
    for (int i = 0; i < 2; i++) {
        struct {
            uint32_t ox, cols, n, p0, kv;
        } pc = {vk_off(src[i]), (uint32_t)src[i]->ne[0], (uint32_t)src[i]->ne[1], (uint32_t)p0,
                (uint32_t)st->kv};
        if (st->kv == 2) {
            /* one thread per pair of q8_0 blocks (17 uints) of the cache
             * holding one of the blocks stored (all n rows, one grid row) */
            const uint64_t nb = pc.cols / 32, b0 = (uint64_t)pc.p0 * nb;
            const uint64_t pairs = ((b0 + pc.n * nb + 1) / 2) - b0 / 2;
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

void vk_attention(cm_backend *be, int il, const cm_tensor *q, int p0, cm_tensor *out)
{
    vk_state *st = vk_st(be);
    const cm_hparams *hp = st->hp;
    struct {
        uint32_t oq, oo, p0, n_head, group, d, dv, krow, vrow, kv;
        float scale;
    } pc = {vk_off(q), vk_off(out), (uint32_t)p0, (uint32_t)hp->n_head,
            (uint32_t)(hp->n_head / hp->n_head_kv), (uint32_t)hp->head_dim,
            (uint32_t)hp->head_dim_v, 0, 0, (uint32_t)st->kv,
            1.0f / sqrtf((float)hp->head_dim)};
    /* rows in elements (floats, halves two to a word, or q8_0 quants) */
    pc.krow = (uint32_t)(hp->n_head_kv * hp->head_dim);
    pc.vrow = (uint32_t)(hp->n_head_kv * hp->head_dim_v);
    RUN(st, VK_SH_ATTENTION, vk_buf_of(q), vk_buf_of(out), st->k_cache[il], st->v_cache[il], pc,
        (uint32_t)q->ne[1], (uint32_t)hp->n_head, 1);
}

void vk_norm(cm_backend *be, const cm_tensor *x, const cm_tensor *w, const cm_tensor *b,
             float eps, int layer_norm, cm_tensor *out)
{
    vk_state *st = vk_st(be);
    const int has_b = layer_norm && cm_tensor_present(b);
    struct {
        uint32_t ox, ow, ob, oo, n, layer_norm, has_b;
        float eps;
    } pc = {vk_off(x), vk_off(w), has_b ? vk_off(b) : 0, vk_off(out), (uint32_t)x->ne[0],
            (uint32_t)layer_norm, (uint32_t)has_b, eps};
    RUN(st, VK_SH_NORM, vk_buf_of(x), vk_buf_of(w), has_b ? vk_buf_of(b) : NULL, vk_buf_of(out),
        pc, (uint32_t)x->ne[1], 1, 1);
}

void vk_rope(cm_backend *be, cm_tensor *x, const cm_tensor *norm_w, int p0)
{
    vk_state *st = vk_st(be);
    const cm_hparams *hp = st->hp;
    const int has_norm = cm_tensor_present(norm_w);
    if (!has_norm && !hp->use_rope)
        return;
    struct {
        uint32_t ox, onw, n_heads, head_dim, rope_dim, neox, use_rope, has_norm, p0;
        float eps;
    } pc = {vk_off(x), has_norm ? vk_off(norm_w) : 0, (uint32_t)(x->ne[0] / hp->head_dim),
            (uint32_t)hp->head_dim, (uint32_t)hp->rope_dim, (uint32_t)hp->rope_neox,
            (uint32_t)hp->use_rope, (uint32_t)has_norm, (uint32_t)p0, hp->norm_eps};
    RUN(st, VK_SH_ROPE, vk_buf_of(x), has_norm ? vk_buf_of(norm_w) : NULL, &st->rope_cs, NULL,
        pc, pc.n_heads, (uint32_t)x->ne[1], 1);
}

/* Every op has finished when another starts: the mapped bytes are free. */
void vk_clear(cm_backend *be, cm_tensor *x)
{
    (void)be;
    memset((char *)x->buf->host + x->offs, 0, x->nbytes);
}

void vk_swiglu(cm_backend *be, cm_tensor *a, const cm_tensor *b)
{
    struct {
        uint32_t oa, ob, n;
    } pc = {vk_off(a), vk_off(b), (uint32_t)(a->ne[0] * a->ne[1])};
    RUN(vk_st(be), VK_SH_SWIGLU, vk_buf_of(a), vk_buf_of(b), NULL, NULL, pc, vk_groups(pc.n, 64),
        1, 1);
}

void vk_gelu(cm_backend *be, const cm_tensor *x, cm_tensor *out)
{
    struct {
        uint32_t ox, oo, n;
    } pc = {vk_off(x), vk_off(out), (uint32_t)(x->ne[0] * x->ne[1])};
    RUN(vk_st(be), VK_SH_GELU, vk_buf_of(x), vk_buf_of(out), NULL, NULL, pc, vk_groups(pc.n, 64),
        1, 1);
}

void vk_add(cm_backend *be, cm_tensor *x, const cm_tensor *y)
{
    struct {
        uint32_t ox, oy, n;
    } pc = {vk_off(x), vk_off(y), (uint32_t)(x->ne[0] * x->ne[1])};
    RUN(vk_st(be), VK_SH_ADD, vk_buf_of(x), vk_buf_of(y), NULL, NULL, pc, vk_groups(pc.n, 64), 1,
        1);
}

void vk_add_gated(cm_backend *be, cm_tensor *out, const cm_tensor *y, const cm_tensor *gate)
{
    const int has_gate = cm_tensor_present(gate);
    struct {
        uint32_t oo, oy, og, E, n_rows, has_gate;
    } pc = {vk_off(out), vk_off(y), has_gate ? vk_off(gate) : 0, (uint32_t)out->ne[0],
            (uint32_t)out->ne[1], (uint32_t)has_gate};
    RUN(vk_st(be), VK_SH_ADD_GATED, vk_buf_of(out), vk_buf_of(y), has_gate ? vk_buf_of(gate) : NULL,
        NULL, pc, vk_groups((uint64_t)pc.E * pc.n_rows, 64), 1, 1);
}

/* Row lists go through st->rows: ids in its first half, weights after. */
void vk_gather(cm_backend *be, const cm_tensor *src, const int32_t *rows, int n, cm_tensor *dst)
{
    vk_state *st = vk_st(be);
    memcpy(st->rows.map, rows, (size_t)n * sizeof(int32_t));
    struct {
        uint32_t os, od, orows, E, n;
    } pc = {vk_off(src), vk_off(dst), 0, (uint32_t)src->ne[0], (uint32_t)n};
    RUN(st, VK_SH_GATHER, vk_buf_of(src), vk_buf_of(dst), &st->rows, NULL, pc,
        vk_groups(pc.E, 64), (uint32_t)n, 1);
}

void vk_scatter_add(cm_backend *be, cm_tensor *dst, const cm_tensor *src, const int32_t *rows,
                    const float *wts, int n)
{
    vk_state *st = vk_st(be);
    const uint32_t half = (uint32_t)(st->n_batch + 1);
    memcpy(st->rows.map, rows, (size_t)n * sizeof(int32_t));
    memcpy((float *)st->rows.map + half, wts, (size_t)n * sizeof(float));
    struct {
        uint32_t od, os, orows, owts, E, n;
    } pc = {vk_off(dst), vk_off(src), 0, half, (uint32_t)dst->ne[0], (uint32_t)n};
    RUN(st, VK_SH_SCATTER_ADD, vk_buf_of(dst), vk_buf_of(src), &st->rows, &st->rows, pc,
        vk_groups(pc.E, 64), (uint32_t)n, 1);
}
