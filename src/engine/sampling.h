/* sampling.h - choosing the next token from logits. */
#ifndef CM_SAMPLING_H
#define CM_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float temp;            /* 0 = greedy (argmax) */
    int top_k;             /* 0 = off */
    float top_p;           /* 1 = off */
    float min_p;           /* 0 = off */
    float repeat_penalty;  /* 1 = off; applied to the last repeat_last_n ids */
    int repeat_last_n;     /* default 64 */
    uint64_t seed;
} cm_sampling_params;

void cm_sampling_defaults(cm_sampling_params *p);

typedef struct cm_sampler cm_sampler;

cm_sampler *cm_sampler_new(const cm_sampling_params *p, int32_t n_vocab);
void cm_sampler_free(cm_sampler *s);
/* Records an id (prompt or generated) for the repeat penalty window. */
void cm_sampler_accept(cm_sampler *s, int32_t id);
/* Picks a token; logits may be modified in place.  Deterministic for a
 * given seed.  Order: repeat penalty, top-k, temperature, softmax, top-p,
 * min-p, draw (as llama.cpp's default chain). */
int32_t cm_sampler_sample(cm_sampler *s, float *logits);

#endif
