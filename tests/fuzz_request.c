/* fuzz_request.c - bounded mutation fuzzing of `codemoe serve`'s request
 * parser (src/server/request.c): every endpoint's body, then the chat
 * template and the JSON string writer on whatever parsed.
 *
 *   fuzz_request [SECONDS]   (default $CM_FUZZ_SECONDS, else 5)
 *
 * Seeds are request bodies as clients send them; mutations flip, insert,
 * delete and splice bytes ($CM_FUZZ_SEED, default 1).  The parser must
 * accept or refuse each with a message; a crash or a sanitizer report is
 * the failure. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/request.h"

static const char *const seeds[] = {
    "{\"prompt\": \"def f(x):\", \"max_tokens\": 16, \"temperature\": 0.5, \"top_p\": 0.9, "
    "\"stop\": [\"\\n\\n\", \"def\"], \"seed\": 42, \"stream\": true, "
    "\"stream_options\": {\"include_usage\": true}}",
    "{\"prompt\": [1, 2, 3], \"n\": 1, \"max_tokens\": null, \"stop\": \"x\"}",
    "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", "
    "\"content\": [{\"type\": \"text\", \"text\": \"a\\u00e9\\ud83d\\ude00\"}, {\"type\": "
    "\"text\", \"text\": \"b\"}]}, {\"role\": \"assistant\", \"content\": null}], "
    "\"max_completion_tokens\": 8}",
    "{\"input_prefix\": \"int f() {\\n\", \"input_suffix\": \"}\\n\", \"input_extra\": "
    "[{\"filename\": \"a.c\", \"text\": \"#include <x.h>\\n\"}, {\"text\": \"y\"}], "
    "\"prompt\": \"  \", \"n_predict\": 32, \"top_k\": 40, \"min_p\": 0.1, \"language\": \"c\"}",
    "{\"content\": \"hello \\\"world\\\"\", \"add_special\": true}",
    "{\"tokens\": [0, 1, 2147483647]}",
};

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* One random edit of buf (len bytes, capacity cap). */
static size_t mutate(char *buf, size_t len, size_t cap, uint64_t *rs)
{
    static const char *const tokens[] = {"{", "}", "[", "]", "\"", ",", ":", "null", "true",
                                         "1e999", "-1", "\\u0000", "\\ud800", "\xff", "0.5",
                                         "\"prompt\"", "\"messages\"", "NaN", "\\"};
    size_t pos = len ? rnd(rs) % len : 0;
    switch (rnd(rs) % 4) {
    case 0: /* flip a byte */
        if (len)
            buf[pos] = (char)rnd(rs);
        return len;
    case 1: /* delete a run */
        if (len) {
            size_t n = 1 + rnd(rs) % (len - pos < 8 ? len - pos : 8);
            memmove(buf + pos, buf + pos + n, len - pos - n);
            len -= n;
        }
        return len;
    default: { /* insert a JSON-ish token */
        const char *t = tokens[rnd(rs) % (sizeof tokens / sizeof tokens[0])];
        size_t n = strlen(t);
        if (len + n > cap)
            return len;
        memmove(buf + pos + n, buf + pos, len - pos);
        memcpy(buf + pos, t, n);
        return len + n;
    }
    }
}

static void run_case(const char *buf, size_t len, FILE *sink, unsigned long *ok)
{
    cm_sampling_params sp;
    cm_sampling_defaults(&sp);
    for (int k = SRV_COMPLETION; k <= SRV_DETOKENIZE; k++) {
        srv_request r;
        cm_err err;
        if (srv_parse_request((srv_kind)k, buf, len, &sp, 16, &r, &err) == CM_OK) {
            srv_piece *p = NULL;
            int n = 0;
            ++*ok;
            for (int t = 0; k == SRV_CHAT && t < SRV_TMPL_COUNT; t++, free(p), p = NULL, n = 0)
                if (srv_chat_render(&r, (srv_template)t, &p, &n, &err) == CM_OK)
                    for (int i = 0; i < n; i++)
                        srv_json_str(sink, p[i].p, p[i].len);
            srv_json_str(sink, r.prompt.p ? r.prompt.p : "", r.prompt.len);
            if (r.has_fields) /* the body is JSON too: pick its members */
                srv_json_fields(sink, buf, len, r.fields, r.n_fields);
        } else
            srv_json_str(sink, err.msg, strlen(err.msg));
        srv_request_free(&r);
    }
    srv_json_str(sink, buf, len); /* arbitrary bytes must come out as a JSON string */
}

int main(int argc, char **argv)
{
    const char *env = getenv("CM_FUZZ_SECONDS"), *seed_env = getenv("CM_FUZZ_SEED");
    double seconds = argc > 1 ? atof(argv[1]) : env ? atof(env) : 5;
    uint64_t rs = seed_env ? strtoull(seed_env, NULL, 10) | 1 : 1;
    enum { CAP = 4096 };
    char buf[CAP];
    unsigned long cases = 0, ok = 0;
    FILE *sink = fopen("/dev/null", "w");
    time_t t0 = time(NULL);
    if (!sink)
        return 99;
    while (difftime(time(NULL), t0) < seconds) {
        const char *s = seeds[rnd(&rs) % (sizeof seeds / sizeof seeds[0])];
        size_t len = strlen(s);
        memcpy(buf, s, len);
        for (int m = 1 + (int)(rnd(&rs) % 6); m > 0; m--)
            len = mutate(buf, len, CAP, &rs);
        run_case(buf, len, sink, &ok);
        cases++;
    }
    fclose(sink);
    printf("fuzz_request: %lu cases, %lu parses accepted, no crash\n", cases, ok);
    return 0;
}
