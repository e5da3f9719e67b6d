/* ops.h - the small scalar pieces of a transformer layer: norms, rotary
 * embeddings, activations (the CPU and reference backends' own). */
#ifndef CM_OPS_H
#define CM_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"

/* out[r] = norm(x[r]) * w (+ b) for each of rows rows of n floats:
 * LayerNorm when layer_norm (b optional: NULL or data-less for none),
 * else RMSNorm (b unused). */
void cm_norm_rows(float *out, const float *x, const cm_tensor *w, const cm_tensor *b, int rows,
                  int n, float eps, int layer_norm);
/* Rotates the first rope_dim dims of one head vector for position pos. */
void cm_rope_head(float *v, int pos, const cm_hparams *hp);
/* The same in two steps, so a position's angles are computed once for
 * every head of every layer: cs gets rope_dim/2 (cos, sin) pairs. */
void cm_rope_table(float *cs, int pos, const cm_hparams *hp);
void cm_rope_apply(float *v, const float *cs, const cm_hparams *hp);
/* y[r] += bias for rows rows of n floats (no-op when b has no data). */
void cm_add_bias(float *y, const cm_tensor *b, int rows, int n);
float cm_silu(float x);
float cm_gelu(float x); /* tanh approximation, as gelu_new / gelu_pytorch_tanh */
/* A token's MoE routing: softmax of its n_expert router logits (in place),
 * then the k most probable experts (ties to the lower index) and their
 * probabilities, renormalised to sum 1 when norm. */
void cm_route_row(float *probs, int n_expert, int k, int norm, int32_t *chosen, float *w);
/* In-place softmax of n values. */
void cm_softmax(float *v, int n);

#endif
