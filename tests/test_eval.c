/* test_eval.c - `codemoe eval`'s pieces: the pass@k estimator against the
 * formula worked by hand, the problem files (counts from
 * ../shared/evalsets/README.md), stop strings, program assembly, and
 * results.jsonl reading (a cut-off last line, duplicates) and summaries. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eval/compare.h"
#include "eval/problems.h"
#include "eval/results.h"
#include "testlib.h"

#define NEAR(a, b) (fabs((a) - (b)) < 1e-12)

static void test_pass_at_k(void)
{
    /* 1 - C(n-c,k)/C(n,k), worked out with the binomials */
    CHECK(NEAR(cm_pass_at_k(10, 3, 1), 0.3));            /* c/n for k = 1 */
    CHECK(NEAR(cm_pass_at_k(5, 2, 2), 1.0 - 3.0 / 10));  /* C(3,2)=3, C(5,2)=10 */
    CHECK(NEAR(cm_pass_at_k(20, 1, 10), 0.5));           /* C(19,10)/C(20,10) = 10/20 */
    CHECK(NEAR(cm_pass_at_k(6, 2, 3), 1.0 - 4.0 / 20));  /* C(4,3)=4, C(6,3)=20 */
    CHECK(NEAR(cm_pass_at_k(200, 0, 10), 0.0));
    CHECK(NEAR(cm_pass_at_k(4, 4, 2), 1.0));
    CHECK(NEAR(cm_pass_at_k(10, 5, 10), 1.0));           /* n - c < k */
    /* n = 200, c = 7, k = 100: the product stays finite where C(200,100) ~ 9e58 */
    double p = cm_pass_at_k(200, 7, 100), q = 1;
    for (int i = 0; i < 7; i++)
        q *= (100.0 - i) / (200.0 - i); /* C(193,100)/C(200,100) */
    CHECK(fabs(p - (1 - q)) < 1e-12, "pass@100 = %.15f, want %.15f", p, 1 - q);
}

static void test_parse(void)
{
    const char *he = "{\"task_id\": \"HumanEval/9\", \"prompt\": \"def f(x):\\n\", "
                     "\"entry_point\": \"f\", \"canonical_solution\": \"    return x\\n\", "
                     "\"test\": \"def check(c):\\n    assert c(2) == 2\\n\"}\n\n";
    cm_problem_set ps;
    cm_err err;
    CHECK(cm_problems_parse(he, strlen(he), CM_BENCH_HUMANEVAL, "t", &ps, &err) == CM_OK);
    CHECK(ps.n == 1 && !strcmp(ps.p[0].name, "HumanEval/9"));
    size_t len;
    char *prog = cm_problem_program(&ps.p[0], ps.p[0].canonical, &len);
    CHECK(prog && !strcmp(prog, "def f(x):\n    return x\n\ndef check(c):\n    assert c(2) == 2"
                                "\n\ncheck(f)\n"), "program: %s", prog);
    free(prog);
    char c[] = "    return x\n\ndef g():\n    pass\n";
    CHECK(cm_problem_cut(&ps.p[0], c, strlen(c)) == 13 && !strcmp(c, "    return x\n"));
    cm_problems_free(&ps);
    CHECK(cm_problems_parse(he, strlen(he), CM_BENCH_MULTIPLE, "t", &ps, &err) == CM_E_FORMAT);
    CHECK(strstr(err.msg, "t line 1"), "%s", err.msg);
    const char *me = "{\"name\": \"P\", \"prompt\": \"a\", \"tests\": \"c\", \"stop_tokens\": "
                     "[\"\\n}\", \"X\"]}";
    CHECK(cm_problems_parse(me, strlen(me), CM_BENCH_MULTIPLE, "t", &ps, &err) == CM_OK);
    char d[] = "b\nX\n}";
    CHECK(ps.n == 1 && cm_problem_cut(&ps.p[0], d, strlen(d)) == 2 && !strcmp(d, "b\n"));
    cm_problems_free(&ps);
    const char *bad[] = {"", "[1]", "{\"name\": 1}", "{\"name\": \"P\", \"prompt\": \"a\", "
                         "\"tests\": \"c\", \"stop_tokens\": [\"\"]}", "{\"name\": \"P\""};
    for (int i = 0; i < 5; i++)
        CHECK(cm_problems_parse(bad[i], strlen(bad[i]), CM_BENCH_MULTIPLE, "t", &ps, &err) ==
              CM_E_FORMAT, "bad[%d] accepted", i);
}

static void test_files(void)
{
    static const struct { const char *lang; int n; } counts[] = {
        {"cpp", 161}, {"java", 158}, {"js", 161}, {"go", 154}, {"rs", 155}, {"py", 161}};
    const char *sh = tl_shared("evalsets/HumanEval.jsonl.gz");
    char path[1024];
    cm_problem_set ps;
    cm_err err;
    if (!sh) {
        printf("SKIP part: no evalsets\n");
        return;
    }
    snprintf(path, sizeof path, "%s/evalsets/HumanEval.jsonl.gz", sh);
    CHECK(cm_problems_load(path, CM_BENCH_HUMANEVAL, &ps, &err) == CM_OK, "%s", err.msg);
    CHECK(ps.n == 164, "HumanEval: %d problems", ps.n);
    cm_problems_free(&ps);
    for (int i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "%s/evalsets/multipl-e-humaneval-%s.jsonl.gz", sh,
                 counts[i].lang);
        CHECK(cm_problems_load(path, CM_BENCH_MULTIPLE, &ps, &err) == CM_OK, "%s", err.msg);
        CHECK(ps.n == counts[i].n, "%s: %d problems", counts[i].lang, ps.n);
        CHECK(ps.n == 0 || ps.p[0].n_stops > 0);
        cm_problems_free(&ps);
    }
    CHECK(cm_problems_load("/nonexistent.jsonl.gz", CM_BENCH_MULTIPLE, &ps, &err) == CM_E_IO);
    snprintf(path, sizeof path, "%s/evalsets/README.md", sh); /* not gzip */
    CHECK(cm_problems_load(path, CM_BENCH_MULTIPLE, &ps, &err) != CM_OK);
}

static void test_records(void)
{
    char dir[] = "/tmp/cm_test_eval_XXXXXX", path[256], *csv;
    cm_err err;
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/results.jsonl", dir);
    FILE *f = fopen(path, "w");
    cm_ev_record r[] = {{"py", "A", "x", 0, 3, CM_EV_PASS, 0.5},
                        {"py", "A", "y\n\"q\"", 1, 3, CM_EV_FAIL, 0.5},
                        {"py", "B", "", 0, 3, CM_EV_TIMEOUT, 15},
                        {"py", "B", "", 1, 3, CM_EV_PASS, 0.1},
                        {"cpp", "A", "z", 0, 1, CM_EV_COMPILE_ERROR, 1},
                        {"cpp", "A", "z", 1, 1, CM_EV_CRASH, 1},
                        {"py", "A", "dup", 0, 3, CM_EV_FAIL, 0.5}};
    for (int i = 0; i < 7; i++)
        cm_ev_record_write(f, &r[i]);
    fputs("{\"lang\": \"py\", \"problem\": \"C\", \"sam", f); /* cut off */
    fclose(f);
    cm_ev_records rs = {0};
    int dropped = 0;
    CHECK(cm_ev_records_load(path, &rs, &dropped, &err) == CM_OK && rs.n == 7 && dropped == 1);
    CHECK(cm_ev_records_load(path, &rs, NULL, &err) == CM_E_FORMAT); /* strict */
    CHECK(cm_ev_records_index(&rs, &err) == CM_OK && rs.n_unique == 6);
    const cm_ev_record *a = cm_ev_records_find(&rs, "py", "A", 0), *b;
    CHECK(a && !strcmp(a->completion, "x") && a->status == CM_EV_PASS); /* first wins */
    b = cm_ev_records_find(&rs, "py", "A", 1);
    CHECK(b && !strcmp(b->completion, "y\n\"q\""));
    CHECK(!cm_ev_records_find(&rs, "py", "C", 0) && !cm_ev_records_find(&rs, "js", "A", 0));
    int ks[] = {1, 2, 3};
    CHECK(cm_ev_summarize(&rs, ks, 3, dir, "t", &err) == CM_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/summary.csv", dir);
    csv = tl_slurp(path, NULL);
    /* py: A 1/2, B 1/2 -> pass@1 0.5, pass@2 1 - C(1,2)/C(2,2) = 1; cpp 0/2 */
    CHECK(csv && strstr(csv, "cpp,1,2,2,0,0,0,1,1,0.000000,0.000000,\n"), "%s", csv ? csv : "");
    CHECK(csv && strstr(csv, "py,2,4,2,2,1,1,0,0,0.500000,1.000000,\n"), "%s", csv ? csv : "");
    free(csv);
    cm_ev_records_free(&rs);
    const char *rm[] = {"results.jsonl", "summary.csv", "summary.json", "summary.md"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, rm[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Three problems, two samples each: per-problem pass@1 baseline 0, .5, 0
 * and model 1, .5, .5; differences 1, 0, .5: mean .5, sd .5, 95% CI
 * .5 +/- 1.96 * .5 / sqrt(3) = [-.0658, 1.0658], which contains 0. */
static void test_compare(void)
{
    cm_ev_records sets[2] = {{0}};
    cm_err err;
    const int pass_base[3][2] = {{0, 0}, {1, 0}, {0, 0}}, pass_model[3][2] = {{1, 1}, {0, 1}, {1, 0}};
    const char *probs[3] = {"A", "B", "C"}, *names[2] = {"base", "model"};
    for (int p = 0; p < 3; p++)
        for (int k = 0; k < 2; k++) {
            cm_ev_record rb = {"py", (char *)probs[p], "", k, 0,
                               pass_base[p][k] ? CM_EV_PASS : CM_EV_FAIL, 0};
            cm_ev_record rm = rb;
            rm.status = pass_model[p][k] ? CM_EV_PASS : CM_EV_FAIL;
            CHECK(cm_ev_records_add(&sets[0], &rb, &err) == CM_OK);
            CHECK(cm_ev_records_add(&sets[1], &rm, &err) == CM_OK);
        }
    cm_ev_records_index(&sets[0], &err);
    cm_ev_records_index(&sets[1], &err);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    int ks[] = {1, 2};
    CHECK(f && cm_ev_compare(sets, names, 2, 0, ks, 2, f, &err) == CM_OK);
    fclose(f);
    CHECK(text && strstr(text, "| model | py | 3 | 66.7% | +50.0 [-6.6, +106.6] noise |"),
          "%s", text ? text : "");
    CHECK(text && strstr(text, "| base | py | 3 | 16.7% | (baseline) |"), "%s", text ? text : "");
    /* pass@2 (n = 2): baseline 0, 1, 0; model 1, 1, 1: differences 1, 0, 1 */
    CHECK(text && strstr(text, "| 100.0% | +66.7 [+1.3, +132.0] |"), "%s", text ? text : "");
    free(text);
    cm_ev_records_free(&sets[0]);
    cm_ev_records_free(&sets[1]);
}

int main(void)
{
    test_compare();
    test_pass_at_k();
    test_parse();
    test_records();
    test_files();
    return tl_finish("test_eval");
}
