/* sampling.c - choosing the next token from logits.
 *
 * The chain follows llama.cpp's default order: repeat penalty, top-k,
 * temperature, softmax, top-p, min-p, draw.  Everything a call needs is
 * allocated once in cm_sampler_new, so sampling never touches malloc, and
 * the PRNG lives in the sampler so two samplers never disturb each other. */
#include "engine/sampling.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu.h"

/* One surviving token: v holds the logit, later its unnormalised prob. */
typedef struct {
    float v;
    int32_t id;
} cm_cand;

struct cm_sampler {
    cm_sampling_params p;
    int32_t n_vocab;
    uint64_t rng[4];  /* xoshiro256** state */
    cm_cand *cand;    /* n_vocab slots: worst case keeps every token */
    uint8_t *mark;    /* n_vocab flags: penalise each distinct id once */
    int32_t *hist;    /* ring buffer of the last repeat_last_n ids */
    int hist_len, hist_pos;
};

void cm_sampling_defaults(cm_sampling_params *p)
{
    p->temp = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0;  /* used as given; the CLI decides what seed 0 means */
}

/* ---- PRNG: splitmix64 seeds xoshiro256**, so any seed (even 0) gives a
 * well-mixed, non-zero state and the sequence is identical everywhere. */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform double in [0, 1): the top 53 bits fill the mantissa exactly. */
static double rng_uniform(uint64_t s[4])
{
    return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

/* ---- construction */

/* Bring out-of-range or NaN parameters to their "off" meaning so the hot
 * path never has to second-guess them. */
static void clamp_params(cm_sampling_params *p, int32_t n_vocab)
{
    if (!(p->temp > 0.0f)) p->temp = 0.0f;
    if (p->top_k < 0 || p->top_k >= n_vocab) p->top_k = 0;
    if (!(p->top_p < 1.0f)) p->top_p = 1.0f;
    if (!(p->min_p > 0.0f)) p->min_p = 0.0f;
    if (p->min_p > 1.0f) p->min_p = 1.0f;  /* still keeps the top token */
    if (!(p->repeat_penalty > 0.0f) || !isfinite(p->repeat_penalty))
        p->repeat_penalty = 1.0f;
    if (p->repeat_last_n < 0) p->repeat_last_n = 0;
}

cm_sampler *cm_sampler_new(const cm_sampling_params *p, int32_t n_vocab)
{
    if (n_vocab <= 0) return NULL;
    cm_sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (p) s->p = *p;
    else cm_sampling_defaults(&s->p);
    clamp_params(&s->p, n_vocab);
    s->n_vocab = n_vocab;
    uint64_t x = s->p.seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->mark = calloc((size_t)n_vocab, 1);
    /* +1 so a zero-length window still gets a valid (unused) buffer. */
    s->hist = malloc(((size_t)s->p.repeat_last_n + 1) * sizeof *s->hist);
    if (!s->cand || !s->mark || !s->hist) {
        cm_sampler_free(s);
        return NULL;
    }
    return s;
}

void cm_sampler_free(cm_sampler *s)
{
    if (!s) return;
    free(s->cand);
    free(s->mark);
    free(s->hist);
    free(s);
}

void cm_sampler_accept(cm_sampler *s, int32_t id)
{
    int cap = s->p.repeat_last_n;
    /* Out-of-range ids cannot be penalised; dropping them keeps the
     * penalty loop free of bounds checks. */
    if (cap == 0 || id < 0 || id >= s->n_vocab) return;
    s->hist[s->hist_pos] = id;
    s->hist_pos = (s->hist_pos + 1) % cap;
    if (s->hist_len < cap) s->hist_len++;
}

/* ---- the chain */

/* llama.cpp's rule: dividing a positive logit and multiplying a negative
 * one both push the token down.  Each distinct id counts once however
 * often it appears in the window, hence the mark array. */
static void apply_repeat_penalty(cm_sampler *s, float *logits)
{
    float pen = s->p.repeat_penalty;
    if (pen == 1.0f || s->hist_len == 0) return;
    for (int i = 0; i < s->hist_len; i++) {
        int32_t id = s->hist[i];
        if (s->mark[id]) continue;
        s->mark[id] = 1;
        logits[id] = logits[id] > 0.0f ? logits[id] / pen : logits[id] * pen;
    }
    for (int i = 0; i < s->hist_len; i++) s->mark[s->hist[i]] = 0;
}

/* NaN becomes -inf (never chosen) and +inf becomes FLT_MAX so later
 * subtractions cannot produce inf - inf = NaN.  Returns the argmax with
 * ties going to the lowest id, or -1 if no token has a finite logit. */
static int32_t sanitize_argmax_slow(float *logits, int32_t n)
{
    int32_t best = -1;
    float bv = -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        float v = logits[i];
        if (isnan(v)) v = -INFINITY;
        else if (v > FLT_MAX) v = FLT_MAX;
        logits[i] = v;
        if (v > bv) {  /* strict: an equal later id never wins a tie */
            bv = v;
            best = i;
        }
    }
    return best;
}

/* The ISA's arg-max (one vector pass, then the first position holding
 * the maximum) where every logit is finite; rows with a non-finite logit
 * take the one-pass loop above, which rewrites them. */
static int32_t sanitize_argmax(float *logits, int32_t n)
{
    int64_t best = cm_argmax_finite(logits, n);
    return best >= 0 ? (int32_t)best : sanitize_argmax_slow(logits, n);
}

/* Total order used everywhere: higher value first, then lower id, so the
 * result never depends on qsort's or the heap's internal order. */
static int cand_better(const cm_cand *a, const cm_cand *b)
{
    return a->v > b->v || (a->v == b->v && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const cm_cand *a = pa, *b = pb;
    return cand_better(a, b) ? -1 : cand_better(b, a) ? 1 : 0;
}

/* Min-heap (worst candidate at the root) sift-down. */
static void heap_down(cm_cand *h, int n, int i)
{
    for (;;) {
        int w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && cand_better(&h[w], &h[l])) w = l;
        if (r < n && cand_better(&h[w], &h[r])) w = r;
        if (w == i) return;
        cm_cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Keeps the k best finite tokens in O(n log k) with a bounded min-heap:
 * a full sort of a 150k vocabulary per token would dominate small k.
 * k == 0 keeps every finite token.  Returns how many were kept. */
static int select_top_k(cm_cand *c, const float *logits, int32_t n, int k)
{
    int m = 0;
    if (k == 0) {
        for (int32_t i = 0; i < n; i++)
            if (logits[i] > -INFINITY) c[m++] = (cm_cand){logits[i], i};
        return m;
    }
    for (int32_t i = 0; i < n; i++) {
        cm_cand x = {logits[i], i};
        if (!(x.v > -INFINITY)) continue;
        if (m < k) {
            /* Sift up: append and bubble while better than the parent. */
            int j = m++;
            while (j > 0 && cand_better(&c[(j - 1) / 2], &x)) {
                c[j] = c[(j - 1) / 2];
                j = (j - 1) / 2;
            }
            c[j] = x;
        } else if (cand_better(&x, &c[0])) {
            c[0] = x;
            heap_down(c, m, 0);
        }
    }
    return m;
}

/* Temperature and softmax in one pass.  exp((x - max) / temp) equals
 * softmax(x / temp) up to normalisation but never overflows: the exponent
 * is <= 0 and max is finite.  The top token gets exactly 1.  Returns the
 * (unnormalised) sum. */
static double softmax_temp(cm_cand *c, int m, float max, float temp)
{
    double sum = 0.0;
    for (int i = 0; i < m; i++) {
        c[i].v = expf((c[i].v - max) / temp);
        sum += (double)c[i].v;
    }
    return sum;
}

/* min-p keeps p >= min_p * p_max; with p_max == 1 unnormalised the
 * threshold is just min_p.  Both top-p and min-p cut a prefix of the
 * probability-sorted list, and min-p's ratio test is unchanged by top-p's
 * renormalisation, so running min-p first yields the same set as
 * llama.cpp's order while leaving far fewer tokens to sort.  Zero-prob
 * tokens are dropped too: they can never be drawn. */
static int filter_min_p(cm_cand *c, int m, float min_p)
{
    int w = 0;
    for (int i = 0; i < m; i++)
        if (c[i].v > 0.0f && c[i].v >= min_p) c[w++] = c[i];
    return w;
}

/* Moves candidates with v >= t to the front; returns how many, and their
 * total mass through *mass. */
static int partition_ge(cm_cand *c, int m, float t, double *mass)
{
    int n = 0;
    *mass = 0.0;
    for (int i = 0; i < m; i++) {
        if (c[i].v < t) continue;
        *mass += (double)c[i].v;
        cm_cand x = c[i];
        c[i] = c[n];
        c[n++] = x;
    }
    return n;
}

/* Smallest prefix (by descending prob) whose mass reaches top_p of the
 * full softmax mass `sum`; at least one token always survives.  Sorting
 * all 150k tokens costs ~25 ms, so we first gather the tokens above a
 * threshold t: they are exactly a prefix of the sorted order, so if their
 * mass already reaches the target the cut lies inside them and only they
 * need sorting.  t falls until that holds (t = 0 takes everything). */
static int filter_top_p(cm_cand *c, int m, float top_p, double sum)
{
    if (top_p >= 1.0f || m <= 1) return m;
    double target = (double)top_p * sum, mass;
    int n = m;
    for (float t = 0.1f; t > 0.0f; t = t > 1e-7f ? t * 0.01f : 0.0f) {
        n = partition_ge(c, m, t, &mass);
        if (mass >= target) break;
        n = m;
    }
    qsort(c, (size_t)n, sizeof *c, cand_cmp);
    double cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += (double)c[i].v;
        if (cum >= target) return i + 1;
    }
    return n;
}

/* Inverse-CDF draw over the survivors; renormalising is implicit in
 * scaling u by their total.  Rounding can leave u at the very top, so the
 * last survivor is the fallback. */
static int32_t draw(cm_sampler *s, const cm_cand *c, int m)
{
    double total = 0.0;
    for (int i = 0; i < m; i++) total += (double)c[i].v;
    double u = rng_uniform(s->rng) * total, cum = 0.0;
    for (int i = 0; i < m; i++) {
        cum += (double)c[i].v;
        if (u < cum) return c[i].id;
    }
    return c[m - 1].id;
}

int32_t cm_sampler_sample(cm_sampler *s, float *logits)
{
    const cm_sampling_params *p = &s->p;
    apply_repeat_penalty(s, logits);
    int32_t best = sanitize_argmax(logits, s->n_vocab);
    if (best < 0) return 0;  /* every logit -inf/NaN: nothing to prefer */
    /* top_k == 1 is greedy by definition; shortcutting keeps the tie rule
     * (lowest id) identical and skips the PRNG. */
    if (p->temp <= 0.0f || p->top_k == 1) return best;
    int m = select_top_k(s->cand, logits, s->n_vocab, p->top_k);
    double sum = softmax_temp(s->cand, m, logits[best], p->temp);
    m = filter_min_p(s->cand, m, p->min_p);
    m = filter_top_p(s->cand, m, p->top_p, sum);
    if (m == 0) return best;  /* cannot happen (top token has p 1); safe */
    return draw(s, s->cand, m);
}
