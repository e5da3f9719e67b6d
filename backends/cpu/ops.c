/* ops.c - norms, rotary embeddings, activations. */
#include "backends/cpu/ops.h"

#include "backends/cpu/cpu.h"

#include <math.h>

static void layernorm(float *out, const float *x, const float *w, const float *b, int n,
                      float eps)
{
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    float scale = (float)(1.0 / sqrt(var / n + eps));
    for (int i = 0; i < n; i++)
        out[i] = (float)(x[i] - mean) * scale * w[i] + (b ? b[i] : 0.0f);
}

void cm_norm_rows(float *out, const float *x, const cm_tensor *w, const cm_tensor *b, int rows,
                  int n, float eps, int layer_norm)
{
    const float *wd = w->data, *bd = b ? b->data : NULL;
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)r * n;
        const float *xi = x + (size_t)r * n;
        if (layer_norm)
            layernorm(o, xi, wd, bd, n, eps);
        else
            cm_rmsnorm(o, xi, wd, n, eps);
    }
}

/* NeoX order pairs dim i with i + rope_dim/2; normal order pairs 2i, 2i+1.
 * Angles in double: position x frequency loses precision in float at long
 * contexts. */
static double rope_angle(int pos, int i, const cm_hparams *hp)
{
    double freq = pow(hp->rope_base, -2.0 * i / hp->rope_dim);
    return (double)pos * hp->rope_freq_scale * freq;
}

/* Rotates pair i of v by the angle whose cosine and sine are c, s. */
static void rope_pair(float *v, int i, float c, float s, const cm_hparams *hp)
{
    int half = hp->rope_dim / 2;
    int a = hp->rope_neox ? i : 2 * i;
    int b = hp->rope_neox ? i + half : 2 * i + 1;
    float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
}

void cm_rope_table(float *cs, int pos, const cm_hparams *hp)
{
    for (int i = 0; i < hp->rope_dim / 2; i++) {
        double theta = rope_angle(pos, i, hp);
        cs[2 * i] = (float)cos(theta);
        cs[2 * i + 1] = (float)sin(theta);
    }
}

void cm_rope_apply(float *v, const float *cs, const cm_hparams *hp)
{
    for (int i = 0; i < hp->rope_dim / 2; i++)
        rope_pair(v, i, cs[2 * i], cs[2 * i + 1], hp);
}

void cm_rope_head(float *v, int pos, const cm_hparams *hp)
{
    for (int i = 0; i < hp->rope_dim / 2; i++) {
        double theta = rope_angle(pos, i, hp);
        rope_pair(v, i, (float)cos(theta), (float)sin(theta), hp);
    }
}

void cm_add_bias(float *y, const cm_tensor *b, int rows, int n)
{
    if (!b || !b->data)
        return;
    const float *bias = b->data;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++)
            y[(size_t)r * n + i] += bias[i];
}

float cm_silu(float x) { return x / (1.0f + expf(-x)); }

float cm_gelu(float x)
{
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

void cm_softmax(float *v, int n)
{
    float mx = v[0], sum = 0.0f;
    for (int i = 1; i < n; i++)
        mx = v[i] > mx ? v[i] : mx;
    for (int i = 0; i < n; i++)
        sum += v[i] = expf(v[i] - mx);
    for (int i = 0; i < n; i++)
        v[i] /= sum;
}

void cm_route_row(float *probs, int n_expert, int k, int norm, int32_t *chosen, float *w)
{
    float sum = 0.0f;
    cm_softmax(probs, n_expert);
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < n_expert; e++) {
            int taken = 0;
            for (int i = 0; i < j; i++)
                taken |= chosen[i] == e;
            if (!taken && (best < 0 || probs[e] > probs[best]))
                best = e;
        }
        chosen[j] = best;
        sum += w[j] = probs[best];
    }
    for (int j = 0; norm && j < k; j++)
        w[j] /= sum;
}
