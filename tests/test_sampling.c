/* test_sampling.c - standalone checks for src/engine/sampling.c.
 * Exit 0 when every check passes, 1 otherwise. */
#include "engine/sampling.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

/* Everything off: plain softmax(logits / temp) sampling. */
static cm_sampling_params plain(float temp, uint64_t seed)
{
    cm_sampling_params p;
    cm_sampling_defaults(&p);
    p.temp = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = seed;
    return p;
}

/* Samples once from a private copy, since sampling may edit the logits. */
static int32_t sample_copy(cm_sampler *s, const float *logits, int n)
{
    float buf[2048];
    memcpy(buf, logits, (size_t)n * sizeof *buf);
    return cm_sampler_sample(s, buf);
}

/* Simple LCG for test data only (not the sampler's PRNG). */
static float test_rand(uint32_t *x)
{
    *x = *x * 1664525u + 1013904223u;
    return (float)(*x >> 8) / (float)(1u << 24) * 20.0f - 10.0f;
}

static void test_defaults(void)
{
    cm_sampling_params p;
    memset(&p, 0xff, sizeof p);
    cm_sampling_defaults(&p);
    CHECK(p.temp == 0.8f && p.top_k == 40 && p.top_p == 0.95f &&
              p.min_p == 0.05f && p.repeat_penalty == 1.0f &&
              p.repeat_last_n == 64 && p.seed == 0,
          "defaults");
    CHECK(cm_sampler_new(&p, 0) == NULL, "n_vocab 0 must fail");
}

static void test_greedy(void)
{
    float l[6] = {0.1f, 3.0f, -2.0f, 5.0f, 5.0f, 1.0f};
    cm_sampling_params p = plain(0.0f, 1);
    cm_sampler *s = cm_sampler_new(&p, 6);
    CHECK(sample_copy(s, l, 6) == 3, "greedy argmax, tie -> lowest id");
    p.temp = -1.0f;
    cm_sampler_free(s);
    s = cm_sampler_new(&p, 6);
    CHECK(sample_copy(s, l, 6) == 3, "negative temp is greedy");
    cm_sampler_free(s);
}

/* top_k = 1 must agree with greedy regardless of temperature. */
static void test_top_k_one(void)
{
    enum { N = 1000 };
    static float l[N];
    uint32_t x = 7;
    const float temps[] = {0.01f, 0.8f, 1.0f, 5.0f, 100.0f};
    for (int t = 0; t < 5; t++) {
        cm_sampling_params g = plain(0.0f, 3), k1 = plain(temps[t], 3);
        k1.top_k = 1;
        cm_sampler *sg = cm_sampler_new(&g, N), *sk = cm_sampler_new(&k1, N);
        for (int r = 0; r < 50; r++) {
            for (int i = 0; i < N; i++) l[i] = test_rand(&x);
            if (r % 10 == 0) l[(r * 37) % N] = l[(r * 91) % N] = 11.0f;
            int32_t a = sample_copy(sg, l, N), b = sample_copy(sk, l, N);
            CHECK(a == b, "top_k=1 temp %g: %d vs greedy %d", temps[t], b, a);
        }
        cm_sampler_free(sg);
        cm_sampler_free(sk);
    }
}

/* top_k = 3 with a high temp: only the 3 best ever appear, all of them do. */
static void test_top_k_three(void)
{
    enum { N = 500 };
    static float l[N];
    for (int i = 0; i < N; i++) l[i] = (float)(i % 17) * 0.01f;
    l[400] = 2.0f;
    l[7] = 1.9f;
    l[250] = 1.8f;
    l[100] = 1.79f;
    cm_sampling_params p = plain(50.0f, 11);
    p.top_k = 3;
    cm_sampler *s = cm_sampler_new(&p, N);
    int seen[N] = {0};
    for (int i = 0; i < 20000; i++) seen[sample_copy(s, l, N)]++;
    int others = 20000 - seen[400] - seen[7] - seen[250];
    CHECK(others == 0, "top_k=3 sampled outside top 3 (%d)", others);
    CHECK(seen[400] > 5000 && seen[7] > 5000 && seen[250] > 5000,
          "top_k=3 counts %d %d %d", seen[400], seen[7], seen[250]);
    cm_sampler_free(s);
}

static void draw_seq(uint64_t seed, int32_t *out, int n)
{
    float l[64] = {0};  /* flat */
    cm_sampling_params p = plain(1.0f, seed);
    cm_sampler *s = cm_sampler_new(&p, 64);
    for (int i = 0; i < n; i++) out[i] = sample_copy(s, l, 64);
    cm_sampler_free(s);
}

static void test_seeds(void)
{
    int32_t a[100], b[100], c[100], z[100];
    draw_seq(42, a, 100);
    draw_seq(42, b, 100);
    draw_seq(43, c, 100);
    draw_seq(0, z, 100);
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, different sequence");
    CHECK(memcmp(a, c, sizeof a) != 0, "seeds 42/43 gave one sequence");
    CHECK(memcmp(a, z, sizeof a) != 0, "seeds 42/0 gave one sequence");
    int distinct = 0, seen[64] = {0};
    for (int i = 0; i < 100; i++) distinct += !seen[z[i]]++;
    CHECK(distinct > 30, "seed 0 looks degenerate (%d distinct)", distinct);

    /* Two interleaved samplers with one seed stay in lock-step: no
     * shared global state. */
    float l[64] = {0};
    cm_sampling_params p = plain(1.0f, 5);
    cm_sampler *s1 = cm_sampler_new(&p, 64), *s2 = cm_sampler_new(&p, 64);
    int same = 1;
    for (int i = 0; i < 100; i++)
        same &= sample_copy(s1, l, 64) == sample_copy(s2, l, 64);
    CHECK(same, "interleaved samplers diverged");
    cm_sampler_free(s1);
    cm_sampler_free(s2);
}

/* Empirical frequencies against softmax(logits / temp). */
static void check_freqs(float temp)
{
    enum { N = 5, DRAWS = 200000 };
    const float l[N] = {1.0f, 2.0f, 0.5f, 3.0f, -1.0f};
    double q[N], sum = 0.0;
    for (int i = 0; i < N; i++) sum += q[i] = exp((double)l[i] / temp);
    cm_sampling_params p = plain(temp, 1234);
    cm_sampler *s = cm_sampler_new(&p, N);
    int cnt[N] = {0};
    for (int i = 0; i < DRAWS; i++) cnt[sample_copy(s, l, N)]++;
    for (int i = 0; i < N; i++) {
        double want = q[i] / sum, got = (double)cnt[i] / DRAWS;
        /* 5 sigma of a binomial proportion, plus a hair. */
        double tol = 5.0 * sqrt(want * (1.0 - want) / DRAWS) + 1e-4;
        CHECK(fabs(got - want) <= tol, "temp %g token %d: got %.4f want %.4f",
              temp, i, got, want);
    }
    cm_sampler_free(s);
}

/* probs 0.5 0.3 0.15 0.05 as logits. */
static void prob_logits(float *l)
{
    l[0] = logf(0.5f);
    l[1] = logf(0.3f);
    l[2] = logf(0.15f);
    l[3] = logf(0.05f);
}

static void test_top_p(void)
{
    float l[4];
    prob_logits(l);
    cm_sampling_params p = plain(1.0f, 99);
    p.top_p = 0.75f;  /* 0.5 < 0.75 <= 0.8: keeps {0, 1} */
    cm_sampler *s = cm_sampler_new(&p, 4);
    int cnt[4] = {0};
    for (int i = 0; i < 50000; i++) cnt[sample_copy(s, l, 4)]++;
    CHECK(cnt[2] == 0 && cnt[3] == 0, "top_p leaked %d %d", cnt[2], cnt[3]);
    double r = (double)cnt[0] / 50000;  /* renormalised: 0.5/0.8 */
    CHECK(fabs(r - 0.625) < 0.015, "top_p renormalise: %.4f", r);
    cm_sampler_free(s);

    p.top_p = 0.3f;  /* the top token alone already covers it */
    s = cm_sampler_new(&p, 4);
    int other = 0;
    for (int i = 0; i < 10000; i++) other += sample_copy(s, l, 4) != 0;
    CHECK(other == 0, "top_p=0.3 sampled non-top %d times", other);
    cm_sampler_free(s);
}

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x > y ? -1 : x < y;
}

/* top-p on a 2000-token vocab against a brute-force reference: a full sort
 * in double.  Exercises the sampler's threshold shortcut. */
static void test_top_p_reference(void)
{
    enum { N = 2000 };
    static float l[N];
    static double q[N], sorted[N];
    uint32_t x = 17;
    const float temp = 0.5f, top_p = 0.9f;
    double sum = 0.0, mx = -1e30;
    for (int i = 0; i < N; i++) {
        l[i] = test_rand(&x);
        if (l[i] > mx) mx = l[i];
    }
    for (int i = 0; i < N; i++) sum += q[i] = exp((l[i] - mx) / temp);
    memcpy(sorted, q, sizeof q);
    qsort(sorted, N, sizeof *sorted, cmp_desc);
    double cum = 0.0, cut = 0.0;
    for (int i = 0; i < N && cum < top_p * sum; i++) cum += cut = sorted[i];
    cm_sampling_params p = plain(temp, 5);
    p.top_p = top_p;
    cm_sampler *s = cm_sampler_new(&p, N);
    int outside = 0, hits_last = 0;
    for (int i = 0; i < 100000; i++) {
        int32_t t = sample_copy(s, l, N);
        outside += q[t] < cut * (1 - 1e-6);
        hits_last += q[t] <= cut * (1 + 1e-6);
    }
    CHECK(outside == 0, "top_p reference: %d draws outside the set", outside);
    CHECK(hits_last > 0, "top_p reference: boundary token never drawn");
    cm_sampler_free(s);
}

static void test_min_p(void)
{
    float l[4];
    prob_logits(l);
    cm_sampling_params p = plain(1.0f, 77);
    p.min_p = 0.2f;  /* threshold 0.1: keeps 0.5 0.3 0.15, drops 0.05 */
    cm_sampler *s = cm_sampler_new(&p, 4);
    int cnt[4] = {0};
    for (int i = 0; i < 50000; i++) cnt[sample_copy(s, l, 4)]++;
    CHECK(cnt[3] == 0, "min_p leaked token 3 (%d)", cnt[3]);
    CHECK(cnt[0] && cnt[1] && cnt[2], "min_p dropped a kept token");
    cm_sampler_free(s);

    /* Combined with top_p, the intersection wins. */
    p.min_p = 0.5f;  /* threshold 0.25: {0, 1} */
    p.top_p = 0.99f; /* alone would keep all four */
    s = cm_sampler_new(&p, 4);
    memset(cnt, 0, sizeof cnt);
    for (int i = 0; i < 50000; i++) cnt[sample_copy(s, l, 4)]++;
    CHECK(cnt[2] == 0 && cnt[3] == 0 && cnt[0] && cnt[1],
          "min_p+top_p: %d %d %d %d", cnt[0], cnt[1], cnt[2], cnt[3]);
    cm_sampler_free(s);
}

static void test_repeat_penalty(void)
{
    cm_sampling_params p = plain(0.0f, 1);
    p.repeat_penalty = 1.1f;
    p.repeat_last_n = 2;
    cm_sampler *s = cm_sampler_new(&p, 8);

    float pos[8] = {2.0f, 1.9f, 0, 0, 0, 0, 0, 0};
    CHECK(sample_copy(s, pos, 8) == 0, "no history: argmax 0");
    cm_sampler_accept(s, 0);
    CHECK(sample_copy(s, pos, 8) == 1, "positive logit 2.0/1.1 < 1.9");

    float neg[8] = {-1.0f, -1.05f, -5, -5, -5, -5, -5, -5};
    CHECK(sample_copy(s, neg, 8) == 1, "negative logit -1.0*1.1 < -1.05");

    /* The same id twice in the window is penalised once:
     * 2.0/1.1 = 1.82 > 1.7, but 2.0/1.21 = 1.65 < 1.7. */
    float once[8] = {2.0f, 1.7f, 0, 0, 0, 0, 0, 0};
    cm_sampler_accept(s, 0);
    CHECK(sample_copy(s, once, 8) == 0, "distinct id penalised twice");

    /* The window slides: two newer ids push 0 out. */
    cm_sampler_accept(s, 5);
    cm_sampler_accept(s, 6);
    CHECK(sample_copy(s, pos, 8) == 0, "id outside window still penalised");
    cm_sampler_accept(s, -3);      /* ignored, must not crash */
    cm_sampler_accept(s, 100000);  /* ditto */
    cm_sampler_free(s);

    /* repeat_last_n = 0 disables the window entirely. */
    p.repeat_last_n = 0;
    s = cm_sampler_new(&p, 8);
    cm_sampler_accept(s, 0);
    CHECK(sample_copy(s, pos, 8) == 0, "repeat_last_n=0 still penalised");
    cm_sampler_free(s);
}

static void test_nonfinite(void)
{
    cm_sampling_params p;
    cm_sampling_defaults(&p);
    p.seed = 8;
    cm_sampler *s = cm_sampler_new(&p, 5);
    float all_nan[5] = {NAN, NAN, NAN, NAN, NAN};
    float all_ninf[5] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                         -INFINITY};
    CHECK(sample_copy(s, all_nan, 5) == 0, "all NaN -> 0");
    CHECK(sample_copy(s, all_ninf, 5) == 0, "all -inf -> 0");

    float some_nan[5] = {NAN, 1.0f, NAN, 1.2f, 0.9f};
    int bad = 0;
    for (int i = 0; i < 5000; i++) {
        int32_t t = sample_copy(s, some_nan, 5);
        bad += t == 0 || t == 2;
    }
    CHECK(bad == 0, "sampled a NaN token %d times", bad);

    float pinf[5] = {1.0f, INFINITY, NAN, INFINITY, 3.0f};
    int hit1 = 0;
    for (int i = 0; i < 1000; i++) {
        int32_t t = sample_copy(s, pinf, 5);
        bad += t != 1 && t != 3;  /* the two +inf ids tie */
        hit1 += t == 1;
    }
    CHECK(bad == 0 && hit1 > 350 && hit1 < 650, "+inf tokens: %d bad", bad);
    cm_sampler_free(s);

    /* Repeat penalty < 1 on a huge logit must not create NaN/inf trouble. */
    p.repeat_penalty = 0.5f;
    p.temp = 0.0f;
    s = cm_sampler_new(&p, 5);
    cm_sampler_accept(s, 4);
    float big[5] = {1.0f, 2.0f, 3.0f, 0.0f, 3e38f};
    CHECK(sample_copy(s, big, 5) == 4, "huge boosted logit");
    CHECK(sample_copy(s, pinf, 5) == 1, "greedy +inf tie -> lowest id");
    cm_sampler_free(s);
}

/* Large vocab with the default chain: only checks it runs and stays in
 * range (ASan/UBSan catch the rest). */
static void test_large_vocab(void)
{
    enum { N = 151936 };
    float *l = malloc(N * sizeof *l), *w = malloc(N * sizeof *w);
    uint32_t x = 3;
    for (int i = 0; i < N; i++) l[i] = test_rand(&x);
    cm_sampling_params p;
    cm_sampling_defaults(&p);
    p.seed = 1;
    cm_sampler *s = cm_sampler_new(&p, N);
    int ok = 1;
    for (int r = 0; r < 20; r++) {
        memcpy(w, l, N * sizeof *w);
        int32_t t = cm_sampler_sample(s, w);
        ok &= t >= 0 && t < N && l[t] > 9.0f;  /* near the top */
        cm_sampler_accept(s, t);
    }
    CHECK(ok, "large vocab sample out of range");
    cm_sampler_free(s);
    free(l);
    free(w);
}

int main(void)
{
    test_defaults();
    test_greedy();
    test_top_k_one();
    test_top_k_three();
    test_seeds();
    check_freqs(1.0f);
    check_freqs(0.7f);
    check_freqs(2.5f);
    test_top_p();
    test_top_p_reference();
    test_min_p();
    test_repeat_penalty();
    test_nonfinite();
    test_large_vocab();
    return tl_finish("test_sampling");
}
