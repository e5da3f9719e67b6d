/* test_multiseq.c - several sequences in one context (cm_ctx_new_multi,
 * cm_eval_batch): each sequence's logits, its tokens batched with other
 * sequences' (prompts and single generated tokens mixed, runs split across
 * batches, sequences cut back with cm_ctx_seq_keep), equal its logits
 * evaluated alone in a one-sequence context, on every backend that runs
 * here, for a dense and a mixture-of-experts fixture model; cm_ctx_truncate
 * continues a one-sequence context from a kept prefix as if evaluated anew;
 * a language-expert pack's batch of several members (cm_eval_batch_members)
 * equals, member by member, the same rows with the context bound to it;
 * a prompt's cache copied to other sequences (cm_ctx_seq_copy) continues as
 * the prompt evaluated in each; cm_generate_shared's completions equal
 * cm_generate's one at a time. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "experts/pack.h"
#include "testlib.h"

#define N_SEQ 3
#define LEN 40

static double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        d = e > d || isnan(e) ? e : d;
    }
    return d;
}

/* Every sequence alone: all its logits, [LEN][n_vocab]. */
static int alone(const cm_model *m, const cm_backend_ops *ops, int32_t ids[N_SEQ][LEN],
                 float *out)
{
    const size_t V = (size_t)m->hp.n_vocab;
    cm_err err;
    cm_ctx *c;
    if (cm_ctx_new_on(m, ops, 64, CM_KV_F32, 16, &c, &err))
        return 0;
    for (int s = 0; s < N_SEQ; s++) {
        cm_ctx_reset(c);
        CHECK(!cm_eval(c, ids[s], LEN, out + s * LEN * V, &err), "%s", err.msg);
    }
    /* kept prefix: positions 25.. evaluated again after keeping 25 */
    float *again = malloc(LEN * V * sizeof(float));
    cm_ctx_truncate(c, 25);
    CHECK(cm_ctx_n_past(c) == 25);
    CHECK(!cm_eval(c, ids[N_SEQ - 1] + 25, LEN - 25, again, &err), "%s", err.msg);
    double d = max_diff(again, out + ((N_SEQ - 1) * LEN + 25) * V, (LEN - 25) * V);
    CHECK(d < 1e-4, "%s: logits after cm_ctx_truncate differ by %g", ops->name, d);
    free(again);
    cm_ctx_free(c);
    return 1;
}

/* The schedule: step k gives sequence s a chunk of tokens (prompt-sized
 * chunks early, then one at a time), sequences joining at different steps. */
static int chunk_of(int step, int s, int done)
{
    if (step < s || done >= LEN)
        return 0;
    int n = step == s ? 11 + 4 * s : 1;
    return done + n > LEN ? LEN - done : n;
}

static void together(const cm_model *m, const cm_backend_ops *ops, int32_t ids[N_SEQ][LEN],
                     const float *ref)
{
    const size_t V = (size_t)m->hp.n_vocab;
    cm_err err;
    cm_ctx *c;
    if (cm_ctx_new_multi(m, ops, NULL, 64, CM_KV_F32, 8, N_SEQ, &c, &err)) {
        CHECK(0, "%s: %s", ops->name, err.msg);
        return;
    }
    int32_t bids[N_SEQ * LEN], bseq[N_SEQ * LEN];
    uint8_t want[N_SEQ * LEN];
    float *out = malloc(N_SEQ * LEN * V * sizeof(float));
    int done[N_SEQ] = {0}, pos[N_SEQ * LEN];
    double worst = 0;
    for (int step = 0, any = 1; any; step++) {
        int n = 0;
        any = 0;
        for (int s = N_SEQ - 1; s >= 0; s--) /* (not in sequence order) */
            for (int k = chunk_of(step, s, done[s]); k > 0; k--, done[s]++, n++)
                bids[n] = ids[s][done[s]], bseq[n] = s, want[n] = 1, pos[n] = done[s];
        if (!n)
            continue;
        any = 1;
        CHECK(!cm_eval_batch(c, bids, bseq, n, want, out, &err), "%s", err.msg);
        for (int i = 0; i < n; i++) {
            double d = max_diff(out + i * V, ref + (bseq[i] * LEN + pos[i]) * V, V);
            worst = d > worst ? d : worst;
        }
    }
    for (int s = 0; s < N_SEQ; s++)
        CHECK(cm_ctx_seq_past(c, s) == LEN, "sequence %d holds %d", s, cm_ctx_seq_past(c, s));
    /* sequence 1 cut back to 30 and continued beside sequence 0's fresh start */
    cm_ctx_seq_keep(c, 1, 30);
    cm_ctx_seq_keep(c, 0, 0);
    int n = 0;
    for (int i = 30; i < LEN; i++)
        bids[n] = ids[1][i], bseq[n] = 1, want[n++] = i == LEN - 1;
    for (int i = 0; i < 5; i++)
        bids[n] = ids[0][i], bseq[n] = 0, want[n++] = i == 4;
    CHECK(!cm_eval_batch(c, bids, bseq, n, want, out, &err), "%s", err.msg);
    double d = max_diff(out, ref + (1 * LEN + LEN - 1) * V, V);
    d = fmax(d, max_diff(out + V, ref + 4 * V, V));
    worst = d > worst ? d : worst;
    printf("%s: %d sequences together against alone: max |diff| %.2e\n", ops->name, N_SEQ,
           worst);
    CHECK(worst < 1e-4, "%s: logits of sequences together differ from alone by %g", ops->name,
          worst);
    /* overflowing a sequence, or naming one it lacks, changes nothing */
    bseq[0] = N_SEQ;
    CHECK(cm_eval_batch(c, bids, bseq, 1, NULL, NULL, &err) == CM_E_RANGE);
    int32_t many[LEN * 2], one[LEN * 2];
    for (int i = 0; i < LEN * 2; i++)
        many[i] = ids[2][i % LEN], one[i] = 2;
    CHECK(cm_eval_batch(c, many, one, 64 - LEN + 1, NULL, NULL, &err) == CM_E_RANGE);
    CHECK(cm_ctx_seq_past(c, 2) == LEN);
    CHECK(cm_eval(c, many, 1, NULL, &err) == CM_E_UNSUPPORTED);
    cm_ctx_free(c);
    /* one sequence (serve --parallel 1): a prompt, then tokens one by one */
    if (cm_ctx_new_multi(m, ops, NULL, 64, CM_KV_F32, 8, 1, &c, &err)) {
        CHECK(0, "%s: %s", ops->name, err.msg);
        free(out);
        return;
    }
    int32_t zero[LEN] = {0};
    memset(want, 0, LEN);
    want[19] = 1;
    CHECK(!cm_eval_batch(c, ids[2], zero, 20, want, out, &err), "%s", err.msg);
    d = max_diff(out, ref + (2 * LEN + 19) * V, V);
    for (int i = 20; i < LEN; i++) {
        CHECK(!cm_eval_batch(c, ids[2] + i, zero, 1, want + 19, out, &err), "%s", err.msg);
        d = fmax(d, max_diff(out, ref + (2 * LEN + i) * V, V));
    }
    CHECK(d < 1e-4 && cm_ctx_seq_past(c, 0) == LEN, "%s: one sequence: %g", ops->name, d);
    free(out);
    cm_ctx_free(c);
}

/* A prompt evaluated once in sequence 0 and copied (cm_ctx_seq_copy) into
 * sequences 1 (whole, over tokens it held) and 2 (a prefix): their
 * continuations give the logits of the prompt evaluated alone. */
static void copied(const cm_model *m, const cm_backend_ops *ops, int32_t ids[N_SEQ][LEN],
                   const float *ref)
{
    const size_t V = (size_t)m->hp.n_vocab;
    const int P = 25, PRE = 20; /* the prompt; sequence 2's prefix of it */
    cm_err err;
    cm_ctx *c;
    if (cm_ctx_new_multi(m, ops, NULL, 64, CM_KV_F32, 16, N_SEQ, &c, &err)) {
        CHECK(0, "%s: %s", ops->name, err.msg);
        return;
    }
    int32_t seq[LEN] = {0}, one[LEN];
    float *out = malloc(LEN * V * sizeof(float));
    CHECK(!cm_eval_batch(c, ids[1], seq, LEN, NULL, NULL, &err), "%s", err.msg);
    for (int i = 0; i < LEN; i++)
        one[i] = 1; /* sequence 1 first holds other tokens */
    CHECK(!cm_eval_batch(c, ids[2], one, 30, NULL, NULL, &err), "%s", err.msg);
    cm_ctx_seq_keep(c, 0, 0);
    CHECK(!cm_eval_batch(c, ids[0], seq, P, NULL, NULL, &err), "%s", err.msg);
    cm_status s = cm_ctx_seq_copy(c, 0, 1, P, &err);
    if (s == CM_E_UNSUPPORTED) {
        printf("%s: no cache copy (%s)\n", ops->name, err.msg);
        free(out);
        cm_ctx_free(c);
        return;
    }
    CHECK(!s && !cm_ctx_seq_copy(c, 0, 2, PRE, &err), "%s", err.msg);
    CHECK(cm_ctx_seq_past(c, 1) == P && cm_ctx_seq_past(c, 2) == PRE);
    CHECK(cm_ctx_seq_copy(c, 0, 2, P + 1, &err) == CM_E_RANGE, "copy past the end");
    CHECK(cm_ctx_seq_copy(c, 0, N_SEQ, 1, &err) == CM_E_RANGE, "copy to no sequence");
    CHECK(cm_ctx_seq_past(c, 2) == PRE, "a refused copy changed sequence 2");
    /* the three continue together, one token each per batch */
    int32_t bids[N_SEQ], bseq[N_SEQ];
    uint8_t want[N_SEQ] = {1, 1, 1};
    double worst = 0;
    for (int k = 0; k < LEN - PRE; k++) {
        int n = 0, pos[N_SEQ];
        for (int q = 0; q < N_SEQ; q++) {
            int p = cm_ctx_seq_past(c, q);
            if (p < LEN)
                bids[n] = ids[0][p], bseq[n] = q, pos[n++] = p;
        }
        if (!n)
            break;
        CHECK(!cm_eval_batch(c, bids, bseq, n, want, out, &err), "%s", err.msg);
        for (int i = 0; i < n; i++)
            worst = fmax(worst, max_diff(out + i * V, ref + (size_t)pos[i] * V, V));
    }
    printf("%s: a prompt copied to 2 sequences against evaluated alone: max |diff| %.2e\n",
           ops->name, worst);
    CHECK(worst < 1e-4, "%s: logits after cm_ctx_seq_copy differ by %g", ops->name, worst);
    free(out);
    cm_ctx_free(c);
}

/* ---- cm_generate_shared against cm_generate one completion at a time ---- */

#define N_COMP 12
#define TOGETHER 9 /* sequences: batches past the CPU's batched-product thresholds */
#define PROMPT 12

typedef struct {
    char text[4096];
    size_t len, stop_at; /* a "stop string": this many bytes */
} text_buf;

static int collect(void *user, const char *bytes, size_t n)
{
    text_buf *t = user;
    n = n < sizeof t->text - t->len ? n : sizeof t->text - t->len;
    memcpy(t->text + t->len, bytes, n);
    t->len += n;
    return t->len >= t->stop_at;
}

static cm_sampler *seeded(const cm_model *m, const int32_t *prompt, float temp, int i)
{
    cm_sampling_params sp;
    cm_sampling_defaults(&sp);
    sp.temp = temp, sp.seed = 1000 + (uint64_t)i;
    cm_sampler *smp = cm_sampler_new(&sp, m->hp.n_vocab);
    for (int t = 0; smp && t < PROMPT; t++)
        cm_sampler_accept(smp, prompt[t]);
    return smp;
}

/* N_COMP completions, TOGETHER at a time (so finished ones' sequences
 * are reused), some cut short by a stop, the others filling the small
 * context: the same text, length and reason as each decoded alone. */
static void shared_decode(const cm_model *m, const cm_backend_ops *ops, const int32_t *prompt,
                          float temp)
{
    const int n_ctx = 32;
    cm_gen_opts go = {24, NULL, 0, collect, NULL};
    static text_buf alone_t[N_COMP], shared_t[N_COMP];
    cm_gen_result alone_r[N_COMP];
    cm_gen_seq gs[N_COMP];
    cm_err err;
    cm_ctx *c;
    memset(alone_t, 0, sizeof alone_t), memset(shared_t, 0, sizeof shared_t);
    for (int i = 0; i < N_COMP; i++)
        alone_t[i].stop_at = shared_t[i].stop_at = i % 2 ? (size_t)-1 : 6 + 10 * (size_t)i;
    if (cm_ctx_new_on(m, ops, n_ctx, CM_KV_F16, 16, &c, &err))
        return;
    for (int i = 0; i < N_COMP; i++) {
        cm_sampler *smp = seeded(m, prompt, temp, i);
        cm_ctx_reset(c);
        go.user = &alone_t[i];
        CHECK(!cm_eval(c, prompt, PROMPT, NULL, &err), "%s", err.msg);
        CHECK(!cm_generate(m, c, smp, &go, &alone_r[i], &err), "%s", err.msg);
        cm_sampler_free(smp);
    }
    cm_ctx_free(c);
    if (cm_ctx_new_multi(m, ops, NULL, n_ctx, CM_KV_F16, 16, TOGETHER, &c, &err)) {
        CHECK(0, "%s: %s", ops->name, err.msg);
        return;
    }
    for (int i = 0; i < N_COMP; i++)
        gs[i] = (cm_gen_seq){seeded(m, prompt, temp, i), collect, &shared_t[i], {0, NULL}};
    CHECK(!cm_generate_shared(m, c, prompt, PROMPT, gs, N_COMP, &go, &err), "%s", err.msg);
    int same = 0, full = 0, stopped = 0;
    for (int i = 0; i < N_COMP; i++) {
        int eq = gs[i].res.n_gen == alone_r[i].n_gen && shared_t[i].len == alone_t[i].len &&
                 !memcmp(shared_t[i].text, alone_t[i].text, alone_t[i].len) &&
                 gs[i].res.stop_reason && !strcmp(gs[i].res.stop_reason, alone_r[i].stop_reason);
        CHECK(eq, "%s T=%g completion %d: %d tokens (%s) decoded together, %d (%s) alone",
              ops->name, temp, i, gs[i].res.n_gen, gs[i].res.stop_reason, alone_r[i].n_gen,
              alone_r[i].stop_reason);
        same += eq, full += !strcmp(alone_r[i].stop_reason, "context full");
        stopped += !strcmp(alone_r[i].stop_reason, "stop string");
        cm_sampler_free(gs[i].smp);
    }
    printf("%s: T=%g: %d/%d completions decoded %d at a time from a shared prompt equal their "
           "decoding alone (%d stopped, %d filled the context)\n", ops->name, temp, same, N_COMP,
           TOGETHER, stopped, full);
    cm_ctx_free(c);
}

static void test_file(const char *path)
{
    cm_model m;
    cm_err err;
    if (cm_model_load(path, &m, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    printf("%s\n", path);
    int32_t ids[N_SEQ][LEN];
    uint32_t r = 12345;
    for (int s = 0; s < N_SEQ; s++)
        for (int i = 0; i < LEN; i++)
            r = r * 1664525u + 1013904223u, ids[s][i] = (int32_t)((r >> 8) % m.hp.n_vocab);
    float *ref = malloc((size_t)N_SEQ * LEN * m.hp.n_vocab * sizeof(float));
    const cm_backend_ops *ops;
    for (size_t b = 0; ref && (ops = cm_backend_at(b)) && b < 16; b++) {
        if (!alone(&m, ops, ids, ref)) {
            printf("%s: cannot run here\n", ops->name);
            continue;
        }
        together(&m, ops, ids, ref);
        copied(&m, ops, ids, ref);
        for (int t = 0; m.tok && t < 2; t++)
            shared_decode(&m, ops, ids[0], t ? 0.8f : 0.0f);
    }
    free(ref);
    cm_model_free(&m);
}

/* The default model (a pack whose members differ in the feed-forward):
 * two sequences of member a beside two of member b in one batch, against
 * the same rows with every row's member bound.  On the reference backend
 * the arithmetic of a row does not depend on the batch around it, so the
 * two must agree to the last bits.  The CPU's kernels take other paths
 * for 12 rows than for 6 (batched products, tiled attention), and this
 * model's activations have outliers, so one activation quantized to the
 * other side of a rounding tie moves its logits by up to ~0.1: there the
 * rows must stay much closer to their own member than to the other one. */
static void test_members(const char *path, const cm_backend_ops *ops)
{
    cm_model m;
    cm_err err;
    cm_ctx *c = NULL;
    char names[CM_PACK_MAX_MEMBERS][32];
    cm_layer *layers[CM_PACK_MAX_MEMBERS] = {0};
    if (cm_model_load(path, &m, &err)) {
        printf("(no pack at %s: members not tested)\n", path);
        return;
    }
    m.keep_members = 1;
    const size_t V = (size_t)m.hp.n_vocab, L = (size_t)m.hp.n_layer;
    int n = cm_pack_members(&m.file, names, CM_PACK_MAX_MEMBERS);
    CHECK(n >= 2, "%s has %d members", path, n);
    for (int k = 0; k < n && k < 2; k++) {
        CHECK(!cm_model_select_expert(&m, names[k], &err), "%s", err.msg);
        layers[k] = malloc(L * sizeof(cm_layer));
        memcpy(layers[k], m.layers, L * sizeof(cm_layer));
    }
    CHECK(!cm_ctx_new_multi(&m, ops, NULL, 64, CM_KV_F32, 16, 4, &c, &err), "%s", err.msg);
    CHECK(!cm_ctx_set_members(c, layers, 2, &err), "%s", err.msg);
    int32_t ids[12], seq[12], mem[12];
    uint8_t want[12];
    for (int i = 0; i < 12; i++) /* both members get the same tokens */
        ids[i] = 100 + 37 * (i % 6), seq[i] = i / 3, mem[i] = i / 6, want[i] = i % 3 == 2;
    float *mixed = malloc(4 * V * sizeof(float)), *one = malloc(4 * V * sizeof(float));
    CHECK(!cm_eval_batch_members(c, ids, seq, mem, 12, want, mixed, &err), "%s", err.msg);
    double worst = 0;
    for (int k = 0; k < 2; k++) { /* sequences 2k, 2k+1 again, member k bound */
        cm_ctx_seq_keep(c, 2 * k, 0), cm_ctx_seq_keep(c, 2 * k + 1, 0);
        CHECK(!cm_model_select_expert(&m, names[k], &err) && !cm_ctx_rebind(c, &err), "%s", err.msg);
        CHECK(!cm_eval_batch(c, ids + 6 * k, seq + 6 * k, 6, want + 6 * k, one + 2 * k * V, &err),
              "%s", err.msg);
        worst = fmax(worst, max_diff(one + 2 * k * V, mixed + 2 * k * V, 2 * V));
    }
    const double members_apart = max_diff(one, one + 2 * V, 2 * V);
    printf("%s: pack members %s and %s in one batch against each bound: max |diff| %.2e "
           "(the members apart: %.2e)\n", ops ? ops->name : "cpu", names[0], names[1], worst,
           members_apart);
    if (ops == &cm_backend_ref_ops)
        CHECK(worst < 1e-5, "a batch of two members differs from each member bound by %g", worst);
    else
        CHECK(worst < 0.25 && worst < members_apart / 4,
              "a batch of two members differs from each member bound by %g (members apart: %g)",
              worst, members_apart);
    mem[0] = 2;
    CHECK(cm_eval_batch_members(c, ids, seq, mem, 1, NULL, NULL, &err) == CM_E_RANGE);
    cm_ctx_free(c);
    free(mixed), free(one), free(layers[0]), free(layers[1]);
    cm_model_free(&m);
}

/* Weights kept decoded for the batched kernels (a context of several
 * sequences, cm_cpu_decode_acquire) give the very logits of decoding each
 * tile per product: four sequences' 16-token batch with the decoded
 * copies off, then on. */
static void test_decoded(const char *path)
{
    cm_model m;
    cm_err err;
    if (cm_model_load(path, &m, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    enum { N = 16 };
    const size_t V = (size_t)m.hp.n_vocab;
    int32_t ids[N], seq[N];
    uint8_t want[N];
    for (int i = 0; i < N; i++)
        ids[i] = (int32_t)((50 + 97 * i) % m.hp.n_vocab), seq[i] = i % 4, want[i] = 1;
    float *lg[2] = {malloc(N * V * sizeof(float)), malloc(N * V * sizeof(float))};
    size_t bytes[2] = {0, 0};
    for (int on = 0; on < 2 && lg[0] && lg[1]; on++) {
        cm_ctx *c = NULL;
        setenv("CODEMOE_DECODE_MB", on ? "64" : "0", 1);
        CHECK(!cm_ctx_new_multi(&m, NULL, NULL, 32, CM_KV_F32, N, 4, &c, &err), "%s", err.msg);
        if (c)
            CHECK(!cm_eval_batch(c, ids, seq, N, want, lg[on], &err), "%s", err.msg);
        bytes[on] = cm_cpu_decoded_bytes();
        cm_ctx_free(c);
    }
    unsetenv("CODEMOE_DECODE_MB");
    CHECK(bytes[0] == 0 && bytes[1] > 0, "%s: %zu and %zu bytes decoded", path, bytes[0], bytes[1]);
    CHECK(cm_cpu_decoded_bytes() == 0, "decoded copies outlive their context");
    CHECK(lg[0] && lg[1] && !memcmp(lg[0], lg[1], N * V * sizeof(float)),
          "%s: logits with decoded weights differ", path);
    printf("%s: %zu bytes kept decoded, logits identical\n", path, bytes[1]);
    free(lg[0]), free(lg[1]);
    cm_model_free(&m);
}

/* A mixture of experts cannot take members' layers. */
static void test_members_refused(const char *path)
{
    cm_model m;
    cm_err err;
    cm_ctx *c;
    if (cm_model_load(path, &m, &err) || cm_ctx_new_multi(&m, NULL, NULL, 32, CM_KV_F32, 8, 2, &c,
                                                          &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    cm_layer *l = m.layers;
    CHECK(cm_ctx_set_members(c, &l, 1, &err) == CM_E_UNSUPPORTED, "a MoE took members");
    cm_ctx_free(c);
    cm_model_free(&m);
}

int main(void)
{
    char msg[256], path[1024];
    if (cm_cpu_init(msg, sizeof msg)) {
        fprintf(stderr, "test error: %s\n", msg);
        return 99;
    }
    const char *shared = tl_shared("fixtures/gguf/mixtral/mixtral-f32.gguf");
    if (!shared)
        tl_skip("fixture models not found (set CM_SHARED)");
    test_file(tl_path(path, sizeof path, "%s/fixtures/gguf/llama/llama-f32.gguf", shared));
    test_file(tl_path(path, sizeof path, "%s/fixtures/gguf/mixtral/mixtral-q4_0.gguf", shared));
    test_members_refused(tl_path(path, sizeof path, "%s/fixtures/gguf/mixtral/mixtral-f32.gguf",
                                 shared));
    test_members(tl_path(path, sizeof path, "%s/models/default.gguf", CM_SRCDIR),
                 &cm_backend_ref_ops);
    test_members(tl_path(path, sizeof path, "%s/models/default.gguf", CM_SRCDIR), NULL);
    static const char *const decoded[] = {"kq-q2_k", "kq-q3_k_m", "kq-q4_1", "kq-q4_k_m",
                                          "kq-q5_k_m", "kq-q6_k"};
    for (size_t i = 0; i < sizeof decoded / sizeof decoded[0]; i++)
        test_decoded(tl_path(path, sizeof path, "%s/fixtures/gguf/kquants/%s.gguf", shared,
                             decoded[i]));
    test_decoded(tl_path(path, sizeof path, "%s/models/default.gguf", CM_SRCDIR));
    return tl_finish("test_multiseq");
}
