/* test_ops.c - norms, rotary embeddings and activations against direct
 * double-precision evaluations of their definitions. */
#include <math.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

#include "backends/cpu/ops.h"
#include "testlib.h"

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* RoPE as complex rotation: pair p of a head turns by pos*scale*base^(-2p/d). */
static void test_rope(int neox, float scale)
{
    cm_hparams hp = {0};
    hp.head_dim = 16;
    hp.rope_dim = 12; /* partial rotation: the last 4 dims pass through */
    hp.rope_base = 10000.0f;
    hp.rope_freq_scale = scale;
    hp.rope_neox = neox;
    unsigned seed = 7;
    for (int pos = 0; pos < 300; pos += 37) {
        float v[16], orig[16];
        for (int i = 0; i < 16; i++)
            orig[i] = v[i] = frand(&seed);
        cm_rope_head(v, pos, &hp);
        for (int p = 0; p < 6; p++) {
            int a = neox ? p : 2 * p, b = neox ? p + 6 : 2 * p + 1;
            double th = pos * (double)scale * pow(10000.0, -2.0 * p / 12);
            double ra = orig[a] * cos(th) - orig[b] * sin(th);
            double rb = orig[a] * sin(th) + orig[b] * cos(th);
            CHECK(fabs(v[a] - ra) < 1e-5 && fabs(v[b] - rb) < 1e-5,
                  "rope neox=%d pos=%d pair %d: (%g,%g) vs (%g,%g)", neox, pos, p, v[a], v[b], ra, rb);
        }
        for (int i = 12; i < 16; i++)
            CHECK(v[i] == orig[i], "rope touched pass-through dim %d", i);
        /* the forward pass's two-step form (a table per position, applied
         * to every head) rotates bit for bit the same */
        float w[16], cs[12];
        memcpy(w, orig, sizeof w);
        cm_rope_table(cs, pos, &hp);
        cm_rope_apply(w, cs, &hp);
        CHECK(memcmp(w, v, sizeof w) == 0, "rope table+apply differs from rope_head at pos %d", pos);
    }
}

/* Linear scaling by 2 at position 2p is the unscaled rotation at p. */
static void test_rope_linear_scaling(void)
{
    cm_hparams hp = {0};
    hp.head_dim = hp.rope_dim = 8;
    hp.rope_base = 10000.0f;
    float a[8], b[8];
    for (int i = 0; i < 8; i++)
        a[i] = b[i] = (float)(i + 1);
    hp.rope_freq_scale = 0.5f;
    cm_rope_head(a, 100, &hp);
    hp.rope_freq_scale = 1.0f;
    cm_rope_head(b, 50, &hp);
    for (int i = 0; i < 8; i++)
        CHECK(fabs(a[i] - b[i]) < 1e-5, "linear scaling dim %d: %g vs %g", i, a[i], b[i]);
}

static void test_norms(void)
{
    unsigned seed = 3;
    float x[96], w[96], b[96], out[96];
    for (int i = 0; i < 96; i++)
        x[i] = 10 * frand(&seed), w[i] = frand(&seed), b[i] = frand(&seed);
    cm_tensor tw = {.data = w}, tb = {.data = b};
    double ss = 0, mean = 0, var = 0;
    for (int i = 0; i < 96; i++)
        ss += (double)x[i] * x[i], mean += x[i];
    mean /= 96;
    for (int i = 0; i < 96; i++)
        var += (x[i] - mean) * (x[i] - mean);
    cm_norm_rows(out, x, &tw, NULL, 1, 96, 1e-5f, 0);
    for (int i = 0; i < 96; i++)
        CHECK(fabs(out[i] - x[i] / sqrt(ss / 96 + 1e-5) * w[i]) < 1e-5, "rmsnorm %d", i);
    cm_norm_rows(out, x, &tw, &tb, 1, 96, 1e-5f, 1);
    for (int i = 0; i < 96; i++)
        CHECK(fabs(out[i] - ((x[i] - mean) / sqrt(var / 96 + 1e-5) * w[i] + b[i])) < 1e-5,
              "layernorm %d", i);
}

static void test_activations(void)
{
    for (double x = -8; x <= 8; x += 0.125) {
        double gelu = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        double silu = x / (1 + exp(-x));
        CHECK(fabs(cm_gelu((float)x) - gelu) < 1e-5, "gelu(%g)", x);
        CHECK(fabs(cm_silu((float)x) - silu) < 1e-5, "silu(%g)", x);
    }
    float v[5] = {1000, 999, -1000, 0, 1000};
    cm_softmax(v, 5);
    double sum = 0;
    for (int i = 0; i < 5; i++)
        sum += v[i];
    CHECK(fabs(sum - 1) < 1e-6 && fabs(v[0] - v[4]) < 1e-7 && v[2] == 0.0f,
          "softmax of large logits: sum %g", sum);
}

int main(void)
{
    test_rope(0, 1.0f);
    test_rope(1, 1.0f);
    test_rope(0, 0.25f);
    test_rope_linear_scaling();
    test_norms();
    test_activations();
    return tl_finish("test_ops");
}
