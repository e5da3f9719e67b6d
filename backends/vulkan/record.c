/* record.c - how the Vulkan backend's ops reach the device.
 *
 * Ops record dispatches into a command buffer; nothing runs until the
 * host needs results (download, synchronize, logits, route) or is about to
 * write what the ops read (upload, a batch's io words): then the lot is
 * submitted and waited for, one submit per batch instead of one per
 * dispatch.  A dispatch waits behind a barrier only when it depends on
 * something recorded since the last barrier (hazard tracking by buffer), so
 * independent ones (the rotations of q and k, the two cache stores, the
 * products of one input) run side by side.  Descriptor sets are made once
 * per binding and kept.
 *
 * Generation steps (one token, every op on the device, batch_begin's
 * replayable) are recorded once and replayed: what changes between steps
 * (the position, the token id) is read by the shaders from st->io, which
 * the host writes before each submit, so the record holds no per-step
 * value.  Anything that would need the host in the middle of a recorded
 * step (a flush, host row lists) ends the recording there: the step runs
 * as recorded so far and the rest eagerly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/vulkan/vk_internal.h"

/* ------------------------------------------------------------ recording */

static void record_begin(vk_state *st)
{
    if (st->recording)
        return;
    VkCommandBufferBeginInfo begin = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = st->cmd == st->replay_cmd ? 0 : VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    vk_check(vkBeginCommandBuffer(st->cmd, &begin), "recording");
    st->recording = 1;
    if (st->ts_pool) {
        const int c = st->cmd == st->replay_cmd;
        vkCmdResetQueryPool(st->cmd, st->ts_pool, 0, VK_TS_MAX);
        vkCmdWriteTimestamp(st->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, st->ts_pool, 0);
        st->n_ts[c] = 1;
    }
    st->after_submit = 1; /* the first dispatch waits for the submits before */
    st->n_wrote = st->n_read = 0;
    st->bound = -1;
}

#define WRITES (VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT)
#define STAGES (VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT)

/* Everything recorded before (this command buffer's and earlier submits')
 * finished and visible to what comes next. */
static void barrier(vk_state *st)
{
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = WRITES,
                          .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                           VK_ACCESS_TRANSFER_READ_BIT |
                                           VK_ACCESS_TRANSFER_WRITE_BIT};
    vkCmdPipelineBarrier(st->cmd, STAGES, STAGES, 0, 1, &mb, 0, NULL, 0, NULL);
    st->after_submit = 0;
    st->n_wrote = st->n_read = 0;
    st->barriers++;
}

static int listed(const VkBuffer *list, int n, VkBuffer b)
{
    for (int i = 0; i < n; i++)
        if (list[i] == b)
            return 1;
    return 0;
}

/* Whether a dispatch reading r[] and writing w[] must wait: it reads or
 * writes what was written since the last barrier, or writes what was read
 * (a lost count counts as a hazard). */
static int hazard(const vk_state *st, const VkBuffer *r, int nr, const VkBuffer *w, int nw)
{
    if (st->after_submit || st->n_wrote < 0 || !st->track)
        return 1;
    for (int i = 0; i < nr; i++)
        if (listed(st->wrote, st->n_wrote, r[i]))
            return 1;
    for (int i = 0; i < nw; i++)
        if (listed(st->wrote, st->n_wrote, w[i]) || listed(st->read, st->n_read, w[i]))
            return 1;
    return 0;
}

static void track(vk_state *st, const VkBuffer *r, int nr, const VkBuffer *w, int nw)
{
    if (st->n_wrote < 0)
        return;
    if (st->n_wrote + nw > VK_TRACK || st->n_read + nr > VK_TRACK) {
        st->n_wrote = -1; /* too many to follow: the next dispatch waits */
        return;
    }
    for (int i = 0; i < nw; i++)
        st->wrote[st->n_wrote++] = w[i];
    for (int i = 0; i < nr; i++)
        st->read[st->n_read++] = r[i];
}

/* Orders the next command after what it depends on and notes what it
 * touches.  Within a group (vk_group) the members' writes are noted only
 * when the group ends: members do not depend on each other. */
static void order(vk_state *st, const VkBuffer *r, int nr, const VkBuffer *w, int nw)
{
    if (hazard(st, r, nr, w, nw))
        barrier(st);
    if (!st->grouped) {
        track(st, r, nr, w, nw);
        return;
    }
    track(st, r, nr, NULL, 0);
    for (int i = 0; i < nw && st->n_group < VK_TRACK; i++)
        st->group_wrote[st->n_group++] = w[i];
    if (nw && st->n_group == VK_TRACK)
        st->n_wrote = -1;
}

void vk_group(vk_state *st, int on)
{
    if (on) {
        record_begin(st);
        st->n_group = 0;
    } else if (st->grouped) {
        track(st, NULL, 0, st->group_wrote, st->n_group);
    }
    st->grouped = on;
}

static void copy_logits(vk_state *st)
{
    if (st->logits_dst)
        memcpy(st->logits_dst, st->lout.map, st->logits_bytes);
    st->logits_dst = NULL;
}

/* Submits what is recorded and waits for it.  keep_arena: an op being
 * recorded has its host data in the arena already. */
static void submit_wait(vk_state *st, int keep_arena)
{
    if (st->mode != VK_REPLAY)
        vk_emit_held(st);
    if (!st->recording)
        return;
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = WRITES,
                          .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
    vkCmdPipelineBarrier(st->cmd, STAGES, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
    vk_check(vkEndCommandBuffer(st->cmd), "recording");
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1,
                       .pCommandBuffers = &st->cmd};
    vk_check(vkQueueSubmit(st->queue, 1, &si, st->fence), "submitting");
    vk_check(vkWaitForFences(st->dev, 1, &st->fence, VK_TRUE, UINT64_MAX), "waiting");
    vk_check(vkResetFences(st->dev, 1, &st->fence), "resetting a fence");
    if (st->ts_pool)
        vk_ts_collect(st, st->cmd == st->replay_cmd);
    if (st->cmd != st->replay_cmd) /* (a record is kept) */
        vk_check(vkResetCommandBuffer(st->cmd, 0), "resetting a command buffer");
    st->recording = 0;
    st->arena_used = keep_arena ? st->arena_used : 0;
    copy_logits(st);
}

/* A recorded step that needs the host half-way: what is recorded runs now,
 * the rest eagerly; after two such steps no more are recorded. */
static void capture_break(vk_state *st, int keep_arena)
{
    submit_wait(st, keep_arena);
    vk_check(vkResetCommandBuffer(st->replay_cmd, 0), "resetting a command buffer");
    st->cmd = st->eager_cmd;
    st->mode = VK_EAGER;
    if (++st->capture_breaks >= 2)
        st->replay_off = 1;
}

/* Then the host may read what the ops wrote, and write what they read. */
void vk_flush(vk_state *st)
{
    if (st->mode == VK_CAPTURE)
        capture_break(st, 0);
    else if (st->mode != VK_REPLAY)
        submit_wait(st, 0);
}

/* n bytes of st->rows for an op's host data (row ids, weights), at a
 * 4-byte multiple *at: written now by the host, read when the batch runs,
 * so each op gets its own (the arena starts over after a flush). */
void *vk_arena(vk_state *st, size_t n, uint32_t *at)
{
    n = (n + 3) / 4 * 4;
    if (n > st->rows.size) {
        fprintf(stderr, "codemoe: vulkan: %zu bytes of row lists, more than the %llu reserved\n",
                n, (unsigned long long)st->rows.size);
        exit(1);
    }
    if (st->mode == VK_CAPTURE) /* host data of one step: not for a record */
        capture_break(st, 1);
    if (st->arena_used + n > st->rows.size)
        vk_flush(st);
    *at = (uint32_t)(st->arena_used / 4);
    st->arena_used += n;
    return (char *)st->rows.map + (size_t)*at * 4;
}

/* ------------------------------------------------------------ descriptor sets */

/* A descriptor set per distinct binding of the buffers (buffer, offset,
 * range), made once and kept: a model's ops bind the same few hundred
 * combinations token after token, so after the first batch a dispatch
 * allocates and writes nothing.  A full table (or a freed buffer, whose
 * handle may come back) starts the table and the pool over, and with it
 * the recorded step, which names the sets. */
static uint64_t set_hash(const VkDescriptorBufferInfo bi[VK_BINDINGS])
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < VK_BINDINGS; i++) {
        const uint64_t v[3] = {(uint64_t)(uintptr_t)bi[i].buffer, bi[i].offset, bi[i].range};
        for (int k = 0; k < 3; k++)
            h = (h ^ v[k]) * 0x100000001b3ull, h ^= h >> 29;
    }
    return h;
}

void vk_sets_reset(vk_state *st)
{
    if (st->mode == VK_CAPTURE)
        capture_break(st, 1);
    else if (st->mode != VK_REPLAY)
        submit_wait(st, 1);
    vk_check(vkResetDescriptorPool(st->dev, st->desc_pool, 0), "resetting descriptor sets");
    memset(st->sets, 0, sizeof st->sets);
    st->n_sets = 0;
    if (st->replay_ready)
        vk_check(vkResetCommandBuffer(st->replay_cmd, 0), "resetting a command buffer");
    st->replay_ready = 0;
}

static VkDescriptorSet set_for(vk_state *st, const VkDescriptorBufferInfo bi[VK_BINDINGS])
{
    const uint64_t h = set_hash(bi);
    for (;;) {
        for (uint32_t k = 0; k < VK_SET_SLOTS; k++) {
            vk_set_entry *e = &st->sets[(h + k) % VK_SET_SLOTS];
            if (!e->set)
                break;
            if (e->hash == h && !memcmp(e->bi, bi, sizeof e->bi))
                return e->set;
        }
        if (st->n_sets < VK_SET_SLOTS / 2)
            break;
        vk_sets_reset(st); /* half full: probes stay short */
    }
    vk_set_entry *e = &st->sets[h % VK_SET_SLOTS];
    for (uint32_t k = 1; e->set; k++)
        e = &st->sets[(h + k) % VK_SET_SLOTS];
    VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                      .descriptorPool = st->desc_pool, .descriptorSetCount = 1,
                                      .pSetLayouts = &st->set_layout};
    vk_check(vkAllocateDescriptorSets(st->dev, &ai, &e->set), "allocating a descriptor set");
    VkWriteDescriptorSet w[VK_BINDINGS];
    for (uint32_t i = 0; i < VK_BINDINGS; i++)
        w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
                                      .dstSet = e->set, .dstBinding = i, .descriptorCount = 1,
                                      .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                      .pBufferInfo = &bi[i]};
    vkUpdateDescriptorSets(st->dev, VK_BINDINGS, w, 0, NULL);
    memcpy(e->bi, bi, sizeof e->bi);
    e->hash = h;
    st->n_sets++;
    return e->set;
}

/* ------------------------------------------------------------ dispatch */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* CODEMOE_VULKAN_PROFILE=1: every dispatch submitted and waited for on
 * its own (so the batch is not what runs), its time added to its
 * shader's, the totals printed when the backend is released. */
static void profile(vk_state *st, int s, uint32_t groups)
{
    const double t0 = now_s();
    vk_flush(st);
    st->prof_s[s] += now_s() - t0;
    st->prof_n[s]++;
    st->prof_groups[s] += groups;
}

void vk_ts_collect(vk_state *st, int c)
{
    uint64_t *t = st->ts_val;
    const uint32_t n = st->n_ts[c];
    if (n < 2 || vkGetQueryPoolResults(st->dev, st->ts_pool, 0, n, sizeof st->ts_val, t, sizeof *t,
                                       VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT) != VK_SUCCESS)
        return;
    for (uint32_t i = 1; i < n; i++) {
        const int s = st->ts_pipe[c][i];
        st->prof_s[s] += (double)(t[i] - t[i - 1]) * st->ts_ns * 1e-9;
        st->prof_n[s]++;
        st->prof_groups[s] += st->ts_groups[c][i];
    }
}

void vk_profile_report(vk_state *st)
{
    static const char *const names[VK_SHADER_COUNT] = {
        "add", "swiglu", "gelu", "add_gated", "gather", "scatter_add", "norm",
        "rope", "kv_store", "attention", "quantize", "matmul", "embed", "matmul_tiled",
        "attn_prompt", "attn_prompt128", "route", "moe_sum", "split_sum"};
    fprintf(stderr, "[codemoe] vulkan profile (%s):\n",
            st->ts_pool ? "device timestamps: the time each dispatch added, batches as they ran"
                        : "each dispatch waited for");
    for (int i = 0; i < VK_PIPE_COUNT; i++) {
        if (!st->prof_n[i])
            continue;
        char name[32];
        if (i < VK_SHADER_COUNT)
            snprintf(name, sizeof name, "%s", names[i]);
        else
            snprintf(name, sizeof name, "%s/%d",
                     i < VK_SHADER_COUNT + VK_MM_TYPES       ? "matmul"
                     : i < VK_SHADER_COUNT + 2 * VK_MM_TYPES ? "matmul_tiled"
                                                             : "matmul_coop",
                     (i - VK_SHADER_COUNT) % VK_MM_TYPES);
        fprintf(stderr, "  %-16s %8llu dispatches %10.4f s %8.2f us each %12llu workgroups\n",
                name, (unsigned long long)st->prof_n[i], st->prof_s[i],
                1e6 * st->prof_s[i] / (double)st->prof_n[i], (unsigned long long)st->prof_groups[i]);
    }
}

/* CODEMOE_VULKAN_STATS=1: what reached the device, printed at release. */
void vk_stats_report(const vk_state *st)
{
    const char *v = getenv("CODEMOE_VULKAN_STATS");
    if (!v || strcmp(v, "1") != 0)
        return;
    fprintf(stderr, "[codemoe] vulkan: %llu dispatches and %llu barriers recorded, %llu steps "
            "recorded to replay, %llu replayed, %d recordings ended half-way\n",
            (unsigned long long)st->dispatches, (unsigned long long)st->barriers,
            (unsigned long long)st->captures, (unsigned long long)st->replays,
            st->capture_breaks);
}

/* The bindings shader s writes (the others it only reads), as each
 * shader declares them. */
static uint32_t written_by(int s, vk_buf *const b[VK_OPERANDS])
{
    switch (s) {
    case VK_SH_ADD: case VK_SH_SWIGLU: case VK_SH_ADD_GATED: case VK_SH_SCATTER_ADD:
    case VK_SH_ROPE:
        return 1u << 0;
    case VK_SH_ATTENTION: /* and the quantized output, when asked */
        return 1u << 1 | (b[4] ? 1u << 4 : 0u);
    case VK_SH_GELU: case VK_SH_GATHER: case VK_SH_KV_STORE: case VK_SH_QUANTIZE:
        return 1u << 1;
    case VK_SH_ATTENTION_PROMPT: case VK_SH_ATTENTION_PROMPT_128: /* and split keys' partials */
        return 1u << 1 | (b[4] ? 1u << 4 : 0u);
    case VK_SH_NORM: /* with a residual to add (binding 4), x too; binding
                      * 2 when it is the quantized rows (taken to be so) */
        return 1u << 3 | (b[4] ? 1u << 0 : 0u) | (b[2] ? 1u << 2 : 0u);
    case VK_SH_ROUTE: /* the choices, and their copy for the host */
        return 1u << 3 | 1u << 4;
    default: /* the products, embed */
        return 1u << 3;
    }
}

void vk_dispatch(vk_state *st, int s, vk_buf *const b[VK_OPERANDS], const void *pc,
                 size_t pc_bytes, uint32_t x, uint32_t y, uint32_t z)
{
    vk_dispatch_at(st, s, b, NULL, NULL, pc, pc_bytes, x, y, z);
}

void vk_dispatch_at(vk_state *st, int s, vk_buf *const b[VK_OPERANDS],
                    const VkDeviceSize off[VK_OPERANDS], const VkDeviceSize range[VK_OPERANDS],
                    const void *pc, size_t pc_bytes, uint32_t x, uint32_t y, uint32_t z)
{
    VkDescriptorBufferInfo bi[VK_BINDINGS];
    VkBuffer r[VK_OPERANDS], w[VK_OPERANDS];
    int nr = 0, nw = 0;
    const uint32_t wmask = written_by(s, b);
    for (int i = 0; i < VK_OPERANDS; i++) {
        const vk_buf *vb = b[i] ? b[i] : &st->dummy;
        bi[i] = (VkDescriptorBufferInfo){vb->buf, b[i] && off ? off[i] : 0,
                                         b[i] && range ? range[i] : VK_WHOLE_SIZE};
        if (b[i] && (wmask >> i & 1u))
            w[nw++] = vb->buf;
        else if (b[i])
            r[nr++] = vb->buf;
    }
    bi[VK_IO_BINDING] = (VkDescriptorBufferInfo){st->io.buf, 0, VK_WHOLE_SIZE};
    const VkDescriptorSet set = set_for(st, bi); /* before recording: it may flush */
    record_begin(st);
    order(st, r, nr, w, nw);
    if (st->bound != s) {
        vkCmdBindPipeline(st->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, st->pipe[s]);
        st->bound = s;
    }
    vkCmdBindDescriptorSets(st->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, st->pipe_layout, 0, 1, &set, 0,
                            NULL);
    vkCmdPushConstants(st->cmd, st->pipe_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                       (uint32_t)pc_bytes, pc);
    vkCmdDispatch(st->cmd, x, y, z);
    st->dispatches++;
    const int c = st->cmd == st->replay_cmd;
    if (st->ts_pool && st->n_ts[c] < VK_TS_MAX) {
        vkCmdWriteTimestamp(st->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, st->ts_pool, st->n_ts[c]);
        st->ts_groups[c][st->n_ts[c]] = x * y * z;
        st->ts_pipe[c][st->n_ts[c]++] = (uint16_t)s;
    }
    if (st->profile == 1)
        profile(st, s, x * y * z);
}

/* bytes bytes of b from byte off (multiples of 4) set to 0, in order with
 * the dispatches around it. */
void vk_fill_zero(vk_state *st, vk_buf *b, VkDeviceSize off, VkDeviceSize bytes)
{
    record_begin(st);
    order(st, NULL, 0, &b->buf, 1);
    vkCmdFillBuffer(st->cmd, b->buf, off, bytes, 0);
}

/* n bytes from byte so of src to byte d of dst, in order with the rest. */
void vk_copy(vk_state *st, vk_buf *src, VkDeviceSize so, vk_buf *dst, VkDeviceSize d,
             VkDeviceSize n)
{
    record_begin(st);
    order(st, &src->buf, 1, &dst->buf, 1);
    const VkBufferCopy c = {so, d, n};
    vkCmdCopyBuffer(st->cmd, src->buf, dst->buf, 1, &c);
}

/* ------------------------------------------------------------ batches */

static int replay_wanted(const vk_state *st)
{
    const char *v = getenv("CODEMOE_VULKAN_REPLAY");
    return st->profile != 1 && !st->replay_off && (!v || strcmp(v, "0") != 0);
}

/* The io words (position, ids) are written once what is recorded has run
 * (it may read them); a generation step replays its record, or is recorded. */
void vk_batch_begin(cm_backend *be, const int32_t *ids, int n, int p0, int n_out, int replayable)
{
    vk_state *st = vk_st(be);
    vk_flush(st);
    uint32_t *io = st->io.map;
    io[0] = (uint32_t)p0;
    const int m = n < st->n_batch ? n : st->n_batch;
    memcpy(io + 1, ids, (size_t)m * sizeof(int32_t));
    st->batch_p0 = (uint32_t)p0;
    st->batch_ids = ids;
    st->batch_n = n;
    st->ops_seen = 0;
    st->mode = VK_EAGER;
    if (!(replayable && n == 1 && n_out == 1 && replay_wanted(st)))
        return;
    if (st->replay_ready) {
        st->mode = VK_REPLAY;
        return;
    }
    st->mode = VK_CAPTURE;
    st->cmd = st->replay_cmd;
}

void vk_batch_end(cm_backend *be)
{
    vk_state *st = vk_st(be);
    if (st->mode == VK_REPLAY) {
        if (st->ops_seen != st->ops_recorded) {
            fprintf(stderr, "codemoe: vulkan: a replayed step issued %d ops, the record has %d\n",
                    st->ops_seen, st->ops_recorded);
            exit(1);
        }
        VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1,
                           .pCommandBuffers = &st->replay_cmd};
        st->replays++;
        vk_check(vkQueueSubmit(st->queue, 1, &si, st->fence), "replaying a step");
        vk_check(vkWaitForFences(st->dev, 1, &st->fence, VK_TRUE, UINT64_MAX), "waiting");
        vk_check(vkResetFences(st->dev, 1, &st->fence), "resetting a fence");
        if (st->ts_pool)
            vk_ts_collect(st, 1);
        copy_logits(st);
    } else if (st->mode == VK_CAPTURE) {
        const int recorded = st->recording;
        submit_wait(st, 0);
        st->replay_ready = recorded;
        st->captures += (uint64_t)recorded;
        st->ops_recorded = st->ops_seen;
        st->cmd = st->eager_cmd;
    } else if (st->logits_dst) { /* (a recording that ended half-way) */
        vk_flush(st);
    }
    st->mode = VK_EAGER;
    st->batch_ids = NULL;
    if (st->moe_pending) {
        vk_flush(st);
        vk_moe_copy_chosen(st);
    }
}

/* An op's start: counted, and skipped when a record replays. */
int vk_replaying(vk_state *st)
{
    st->ops_seen++;
    return st->mode == VK_REPLAY;
}
