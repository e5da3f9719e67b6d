/* metrics.h - what `codemoe serve` counts, for GET /metrics (Prometheus
 * text format 0.0.4).  Thread-safe: connections record from their threads. */
#ifndef CM_SRV_METRICS_H
#define CM_SRV_METRICS_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    SRV_EP_HEALTH, SRV_EP_MODELS, SRV_EP_TOKENIZE, SRV_EP_DETOKENIZE, SRV_EP_COMPLETIONS,
    SRV_EP_CHAT, SRV_EP_INFILL, SRV_EP_METRICS, SRV_EP_OTHER, SRV_EP_COUNT
} srv_endpoint;

#define SRV_N_STATUS 10 /* the status codes the server answers with */
#define SRV_N_BUCKETS 12

typedef struct {
    pthread_mutex_t lock;
    uint64_t requests[SRV_EP_COUNT][SRV_N_STATUS];
    uint64_t buckets[SRV_EP_COUNT][SRV_N_BUCKETS]; /* request seconds, cumulative */
    double seconds[SRV_EP_COUNT];
    uint64_t count[SRV_EP_COUNT];
    uint64_t prompt_tokens, generated_tokens, cancelled;
    double prompt_seconds, generation_seconds;
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_metrics_free(srv_metrics *m);
const char *srv_endpoint_name(srv_endpoint ep);
void srv_metrics_request(srv_metrics *m, srv_endpoint ep, int status, double seconds);
void srv_metrics_tokens(srv_metrics *m, int prompt, int generated, double t_prompt,
                        double t_gen);
/* A streamed generation ended early because its client went away. */
void srv_metrics_cancelled(srv_metrics *m);
void srv_metrics_write(srv_metrics *m, FILE *f, int slot_busy, int n_slots, int in_flight);

#endif
