/* metrics.c - counters of `codemoe serve` and their Prometheus text. */
#include "server/metrics.h"

#include <string.h>

static const int status_codes[SRV_N_STATUS] = {200, 400, 401, 404, 405, 408, 413, 500, 503, 0};
static const double bucket_le[SRV_N_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                2.5, 5, 10, 60};

void srv_metrics_init(srv_metrics *m)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->lock, NULL);
}

void srv_metrics_free(srv_metrics *m)
{
    pthread_mutex_destroy(&m->lock);
}

const char *srv_endpoint_name(srv_endpoint ep)
{
    static const char *const names[SRV_EP_COUNT] = {
        "/health", "/v1/models", "/tokenize", "/detokenize", "/v1/completions",
        "/v1/chat/completions", "/infill", "/metrics", "other"};
    return names[ep];
}

/* The last slot (code 0) counts any status not listed. */
static int status_index(int status)
{
    int i = 0;
    while (i < SRV_N_STATUS - 1 && status_codes[i] != status)
        i++;
    return i;
}

void srv_metrics_request(srv_metrics *m, srv_endpoint ep, int status, double seconds)
{
    pthread_mutex_lock(&m->lock);
    m->requests[ep][status_index(status)]++;
    for (int b = 0; b < SRV_N_BUCKETS; b++)
        m->buckets[ep][b] += seconds <= bucket_le[b];
    m->seconds[ep] += seconds;
    m->count[ep]++;
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_tokens(srv_metrics *m, int prompt, int generated, double t_prompt, double t_gen)
{
    pthread_mutex_lock(&m->lock);
    m->prompt_tokens += (uint64_t)prompt;
    m->generated_tokens += (uint64_t)generated;
    m->prompt_seconds += t_prompt;
    m->generation_seconds += t_gen;
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_cancelled(srv_metrics *m)
{
    pthread_mutex_lock(&m->lock);
    m->cancelled++;
    pthread_mutex_unlock(&m->lock);
}

static void write_requests(const srv_metrics *m, FILE *f)
{
    fputs("# HELP codemoe_requests_total HTTP requests answered, by endpoint and status.\n"
          "# TYPE codemoe_requests_total counter\n", f);
    for (int ep = 0; ep < SRV_EP_COUNT; ep++)
        for (int i = 0; i < SRV_N_STATUS; i++)
            if (m->requests[ep][i])
                fprintf(f, "codemoe_requests_total{endpoint=\"%s\",status=\"%s%.0d\"} %llu\n",
                        srv_endpoint_name(ep), status_codes[i] ? "" : "other", status_codes[i],
                        (unsigned long long)m->requests[ep][i]);
    fputs("# HELP codemoe_request_seconds Time from a request's headers to its last byte.\n"
          "# TYPE codemoe_request_seconds histogram\n", f);
    for (int ep = 0; ep < SRV_EP_COUNT; ep++) {
        const char *n = srv_endpoint_name(ep);
        if (!m->count[ep])
            continue;
        for (int b = 0; b < SRV_N_BUCKETS; b++)
            fprintf(f, "codemoe_request_seconds_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n", n,
                    bucket_le[b], (unsigned long long)m->buckets[ep][b]);
        fprintf(f, "codemoe_request_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n", n,
                (unsigned long long)m->count[ep]);
        fprintf(f, "codemoe_request_seconds_sum{endpoint=\"%s\"} %.6f\n", n, m->seconds[ep]);
        fprintf(f, "codemoe_request_seconds_count{endpoint=\"%s\"} %llu\n", n,
                (unsigned long long)m->count[ep]);
    }
}

void srv_metrics_write(srv_metrics *m, FILE *f, int slot_busy, int n_slots, int in_flight)
{
    pthread_mutex_lock(&m->lock);
    write_requests(m, f);
    fprintf(f,
            "# HELP codemoe_prompt_tokens_total Prompt tokens evaluated.\n"
            "# TYPE codemoe_prompt_tokens_total counter\n"
            "codemoe_prompt_tokens_total %llu\n"
            "# HELP codemoe_generated_tokens_total Tokens generated.\n"
            "# TYPE codemoe_generated_tokens_total counter\n"
            "codemoe_generated_tokens_total %llu\n"
            "# HELP codemoe_prompt_seconds_total Time spent evaluating prompts.\n"
            "# TYPE codemoe_prompt_seconds_total counter\n"
            "codemoe_prompt_seconds_total %.6f\n"
            "# HELP codemoe_generation_seconds_total Time spent generating tokens.\n"
            "# TYPE codemoe_generation_seconds_total counter\n"
            "codemoe_generation_seconds_total %.6f\n"
            "# HELP codemoe_requests_cancelled_total Streams whose client went away mid-way.\n"
            "# TYPE codemoe_requests_cancelled_total counter\n"
            "codemoe_requests_cancelled_total %llu\n"
            "# HELP codemoe_slots_busy Slots generating now (of codemoe_slots).\n"
            "# TYPE codemoe_slots_busy gauge\n"
            "codemoe_slots_busy %d\n"
            "# HELP codemoe_slots Slots (sequences generated at once).\n"
            "# TYPE codemoe_slots gauge\n"
            "codemoe_slots %d\n"
            "# HELP codemoe_requests_in_flight Requests being answered now.\n"
            "# TYPE codemoe_requests_in_flight gauge\n"
            "codemoe_requests_in_flight %d\n",
            (unsigned long long)m->prompt_tokens, (unsigned long long)m->generated_tokens,
            m->prompt_seconds, m->generation_seconds, (unsigned long long)m->cancelled,
            slot_busy, n_slots, in_flight);
    pthread_mutex_unlock(&m->lock);
}
