/* fuzz_eval.c - bounded mutation fuzzing of `codemoe eval`'s parsers: the
 * problem files' JSONL (HumanEval and MultiPL-E, src/eval/problems.c) and
 * results.jsonl lines (src/eval/results.c); whatever parses is cut at its
 * stop strings and assembled into a program.
 *
 *   fuzz_eval [SECONDS]   (default $CM_FUZZ_SECONDS, else 5)
 *
 * Seeds are lines in the files' formats; mutations flip, delete and insert
 * JSON-ish tokens ($CM_FUZZ_SEED, default 1).  A crash or a sanitizer
 * report is the failure. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eval/problems.h"
#include "eval/results.h"

static const char *const seeds[] = {
    "{\"task_id\": \"HumanEval/0\", \"prompt\": \"def f(x):\\n    \\\"\\\"\\\"doc\\\"\\\"\\\"\\n\", "
    "\"entry_point\": \"f\", \"canonical_solution\": \"    return x\\n\", \"test\": "
    "\"def check(c):\\n    assert c(1) == 1\\n\"}\n{\"task_id\": \"HumanEval/1\", \"prompt\": "
    "\"\", \"entry_point\": \"g\", \"canonical_solution\": \"\", \"test\": \"\"}",
    "{\"name\": \"HumanEval_0_f\", \"language\": \"cpp\", \"prompt\": \"int f(int x) {\\n\", "
    "\"tests\": \"}\\nint main() {\\n    assert(f(1) == 1);\\n}\\n\", \"stop_tokens\": "
    "[\"\\n}\", \"\\u00e9\\ud83d\\ude00\"]}",
    "{\"lang\": \"py\", \"problem\": \"HumanEval/0\", \"sample\": 3, \"status\": \"pass\", "
    "\"seconds\": 0.25, \"tokens\": 17, \"completion\": \"    return x\\n\\ndef\"}",
};

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

static size_t mutate(char *buf, size_t len, size_t cap, uint64_t *rs)
{
    static const char *const tokens[] = {"{", "}", "[", "]", "\"", ",", ":", "null", "true",
                                         "1e999", "-1", "\\u0000", "\\ud800", "\xff", "\n",
                                         "\"stop_tokens\"", "\"sample\"", "\"\"", "\\"};
    size_t pos = len ? rnd(rs) % len : 0;
    switch (rnd(rs) % 4) {
    case 0:
        if (len)
            buf[pos] = (char)rnd(rs);
        return len;
    case 1:
        if (len) {
            size_t n = 1 + rnd(rs) % (len - pos < 8 ? len - pos : 8);
            memmove(buf + pos, buf + pos + n, len - pos - n);
            len -= n;
        }
        return len;
    default: {
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

static void run_case(const char *buf, size_t len, unsigned long *ok)
{
    cm_err err;
    for (int b = CM_BENCH_HUMANEVAL; b <= CM_BENCH_MULTIPLE; b++) {
        cm_problem_set ps;
        if (cm_problems_parse(buf, len, (cm_bench)b, "fuzz", &ps, &err) != CM_OK)
            continue;
        ++*ok;
        for (int i = 0; i < ps.n; i++) {
            char c[64] = "    return x\n}\n\ndef g(): pass\n";
            size_t n = cm_problem_cut(&ps.p[i], c, strlen(c)), plen = 0;
            free(cm_problem_program(&ps.p[i], c, &plen));
            (void)n;
        }
        cm_problems_free(&ps);
    }
    cm_ev_records rs = {0};
    if (cm_ev_records_parse_line(buf, len, &rs, &err) == CM_OK)
        ++*ok;
    cm_ev_records_index(&rs, &err);
    cm_ev_records_free(&rs);
}

int main(int argc, char **argv)
{
    const char *env = getenv("CM_FUZZ_SECONDS"), *seed_env = getenv("CM_FUZZ_SEED");
    double seconds = argc > 1 ? atof(argv[1]) : env ? atof(env) : 5;
    uint64_t rs = seed_env ? strtoull(seed_env, NULL, 10) | 1 : 1;
    enum { CAP = 4096 };
    char buf[CAP];
    unsigned long cases = 0, ok = 0;
    time_t t0 = time(NULL);
    while (difftime(time(NULL), t0) < seconds) {
        const char *s = seeds[rnd(&rs) % (sizeof seeds / sizeof seeds[0])];
        size_t len = strlen(s);
        memcpy(buf, s, len);
        for (int m = (int)(rnd(&rs) % 7); m > 0; m--)
            len = mutate(buf, len, CAP, &rs);
        run_case(buf, len, &ok);
        cases++;
    }
    printf("fuzz_eval: %lu cases, %lu parses accepted, no crash\n", cases, ok);
    return 0;
}
