/* problems.c - see problems.h. */
#define _GNU_SOURCE
#include "eval/problems.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "util/json.h"
#ifdef CM_HAVE_ZLIB
#include <zlib.h>
#endif

#define JAVATUPLES "/usr/share/java/javatuples.jar"

static const cm_eval_lang LANGS[] = {
    {"cpp", "prog.cpp", "g++ -std=c++17 -o prog prog.cpp", "./prog", {"g++", NULL}, NULL, "g++",
     "    exit(1);\n", 2048, 4096},
    {"java", "Problem.java", "javac -cp " JAVATUPLES " Problem.java",
     "java -ea -cp " JAVATUPLES ":. Problem", {"javac", "java", NULL}, JAVATUPLES,
     "default-jdk-headless libjavatuples-java",
     "        throw new RuntimeException(\"wrong\");\n", 3072, 0},
    {"js", "prog.js", NULL, "node prog.js", {"node", NULL}, NULL, "nodejs",
     "  throw new Error(\"wrong\");\n}\n\n", 2048, 0},
    {"go", "prog_test.go", NULL, "go test prog_test.go", {"go", NULL}, NULL, "golang",
     "\tpanic(\"wrong\")\n}\n\n", 3072, 0},
    {"rs", "prog.rs", "rustc --edition 2021 -o prog prog.rs", "./prog", {"rustc", NULL}, NULL,
     "rustc", "    panic!(\"wrong\");\n", 2048, 0},
    {"py", "prog.py", NULL, "python3 prog.py", {"python3", NULL}, NULL, "python3",
     "    raise ValueError(\"wrong\")\n\n", 2048, 4096},
};
#define N_LANGS (int)(sizeof LANGS / sizeof *LANGS)

const cm_eval_lang *cm_eval_lang_at(int i) { return i >= 0 && i < N_LANGS ? &LANGS[i] : NULL; }

const cm_eval_lang *cm_eval_lang_find(const char *name)
{
    for (int i = 0; i < N_LANGS; i++)
        if (!strcmp(LANGS[i].name, name))
            return &LANGS[i];
    return NULL;
}

static int on_path(const char *tool, const char *path)
{
    while (path && *path) {
        size_t n = strcspn(path, ":");
        char p[1024];
        snprintf(p, sizeof p, "%.*s/%s", (int)n, path, tool);
        if (n && access(p, X_OK) == 0)
            return 1;
        path += n + (path[n] == ':');
    }
    return 0;
}

int cm_eval_lang_ready(const cm_eval_lang *l, const char *path, char *missing, size_t cap)
{
    size_t used = 0;
    missing[0] = 0;
    for (int i = 0; l->tools[i]; i++)
        if (!on_path(l->tools[i], path) && used < cap)
            used += (size_t)snprintf(missing + used, cap - used, "%s%s", used ? ", " : "",
                                     l->tools[i]);
    if (l->need_file && access(l->need_file, R_OK) != 0 && used < cap)
        used += (size_t)snprintf(missing + used, cap - used, "%s%s", used ? ", " : "",
                                 l->need_file);
    return used == 0;
}

/* ---- problem files ---- */

static char *dup_str(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n), d[n] = 0;
    return d;
}

static char *concat3(const char *a, const char *b, const char *c)
{
    size_t na = strlen(a), nb = strlen(b), nc = strlen(c);
    char *d = malloc(na + nb + nc + 1);
    if (d)
        memcpy(d, a, na), memcpy(d + na, b, nb), memcpy(d + na + nb, c, nc + 1);
    return d;
}

static void problem_free(cm_problem *p)
{
    free(p->name), free(p->prompt), free(p->tests), free(p->canonical);
    for (int i = 0; i < p->n_stops; i++)
        free(p->stops[i]);
    memset(p, 0, sizeof *p);
}

/* The stop strings the Codex paper and MultiPL-E use for Python. */
static const char *const HUMANEVAL_STOPS[] = {"\ndef", "\n#", "\nif", "\nclass", "\nprint"};

static const char *humaneval_fields(const json_doc *d, const json_node *o, cm_problem *p)
{
    const char *id = json_get_str(d, o, "task_id"), *pr = json_get_str(d, o, "prompt");
    const char *ep = json_get_str(d, o, "entry_point"), *t = json_get_str(d, o, "test");
    const char *cs = json_get_str(d, o, "canonical_solution");
    if (!id || !pr || !ep || !t || !cs)
        return "needs string members task_id, prompt, entry_point, canonical_solution, test";
    char *tail = concat3("\ncheck(", ep, ")\n");
    p->name = strdup(id), p->prompt = strdup(pr), p->canonical = strdup(cs);
    p->tests = tail ? concat3("\n", t, tail) : NULL;
    free(tail);
    for (int i = 0; i < 5; i++)
        p->stops[p->n_stops++] = strdup(HUMANEVAL_STOPS[i]);
    return NULL;
}

static const char *multipl_fields(const json_doc *d, const json_node *o, cm_problem *p)
{
    const char *nm = json_get_str(d, o, "name"), *pr = json_get_str(d, o, "prompt");
    const char *t = json_get_str(d, o, "tests");
    const json_node *st = json_get_val(d, o, "stop_tokens");
    if (!nm || !pr || !t || !st || st->type != JSON_ARRAY)
        return "needs string members name, prompt, tests and an array stop_tokens";
    p->name = strdup(nm), p->prompt = strdup(pr), p->tests = strdup(t);
    for (const json_node *c = json_first(d, st); c; c = json_next(d, c)) {
        if (c->type != JSON_STRING || c->len == 0 || memchr(c->str, 0, c->len))
            return "stop_tokens must be non-empty strings";
        if (p->n_stops == CM_EV_MAX_STOPS)
            return "too many stop_tokens";
        p->stops[p->n_stops++] = dup_str(c->str, c->len);
    }
    return NULL;
}

static cm_status parse_line(const char *s, size_t n, cm_bench bench, const char *what,
                            int line, cm_problem *p, cm_err *err)
{
    json_doc d = {0};
    cm_status st = json_parse(s, n, what, &d, err);
    if (st)
        return cm_fail(err, st, "%s line %d: %s", what, line, err->msg);
    const json_node *o = json_root(&d);
    const char *why = o->type != JSON_OBJECT ? "not a JSON object"
                    : bench == CM_BENCH_HUMANEVAL ? humaneval_fields(&d, o, p)
                                                  : multipl_fields(&d, o, p);
    int oom = !why && (!p->name || !p->prompt || !p->tests);
    for (int i = 0; !why && i < p->n_stops; i++)
        oom |= !p->stops[i];
    json_free(&d);
    if (why || oom) {
        problem_free(p);
        return why ? cm_fail(err, CM_E_FORMAT, "%s line %d: %s", what, line, why)
                   : cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    return CM_OK;
}

cm_status cm_problems_parse(const char *text, size_t len, cm_bench bench, const char *what,
                            cm_problem_set *out, cm_err *err)
{
    cm_status s = CM_OK;
    int line = 0, cap = 0;
    memset(out, 0, sizeof *out);
    for (size_t i = 0; !s && i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (text + i)) : len - i;
        line++;
        if (n > 0 && !(n == 1 && text[i] == '\r')) {
            if (out->n == cap) {
                cap = cap ? cap * 2 : 64;
                cm_problem *p = realloc(out->p, sizeof *p * (size_t)cap);
                if (!p) {
                    s = cm_fail(err, CM_E_NOMEM, "out of memory");
                    break;
                }
                out->p = p;
            }
            memset(&out->p[out->n], 0, sizeof *out->p);
            s = parse_line(text + i, n, bench, what, line, &out->p[out->n], err);
            out->n += !s;
        }
        i += n + 1;
    }
    if (!s && out->n == 0)
        s = cm_fail(err, CM_E_FORMAT, "%s: no problems", what);
    if (s)
        cm_problems_free(out);
    return s;
}

void cm_problems_free(cm_problem_set *s)
{
    for (int i = 0; i < s->n; i++)
        problem_free(&s->p[i]);
    free(s->p);
    s->p = NULL, s->n = 0;
}

/* ---- reading .jsonl.gz ---- */

#define GZ_MAX ((size_t)256 << 20) /* larger decompressed files are refused */

typedef struct {
    char *p;
    size_t len, cap;
} grow_buf;

static int grow(grow_buf *b, size_t need)
{
    if (b->len + need + 1 <= b->cap)
        return 1;
    size_t cap = (b->len + need + 1) * 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return 0;
    b->p = p, b->cap = cap;
    return 1;
}

#ifdef CM_HAVE_ZLIB
const char *cm_problems_gunzip(void) { return "zlib"; }

static cm_status gunzip(const char *path, grow_buf *b, cm_err *err)
{
    gzFile f = gzopen(path, "rb");
    if (!f)
        return cm_fail(err, CM_E_IO, "cannot open %s: %s", path, strerror(errno));
    int n, e = 0;
    while (grow(b, 65536) && (n = gzread(f, b->p + b->len, 65536)) > 0 && b->len < GZ_MAX)
        b->len += (size_t)n;
    const char *msg = gzerror(f, &e);
    int ok = b->p && e == Z_OK && b->len < GZ_MAX;
    cm_status s = ok ? CM_OK
                     : cm_fail(err, b->len >= GZ_MAX ? CM_E_RANGE : CM_E_FORMAT, "%s: %s", path,
                               b->len >= GZ_MAX ? "more than 256 MiB decompressed"
                               : !b->p ? "out of memory" : msg);
    gzclose(f);
    return s;
}
#else
#include <spawn.h>
#include <sys/wait.h>
extern char **environ;
const char *cm_problems_gunzip(void) { return "gzip -dc"; }

static cm_status gunzip(const char *path, grow_buf *b, cm_err *err)
{
    int fd[2], st = 0;
    pid_t pid;
    char *argv[] = {"gzip", "-dc", "--", (char *)path, NULL};
    posix_spawn_file_actions_t fa;
    if (access(path, R_OK) != 0)
        return cm_fail(err, CM_E_IO, "cannot open %s: %s", path, strerror(errno));
    if (pipe(fd) != 0)
        return cm_fail(err, CM_E_IO, "pipe: %s", strerror(errno));
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    posix_spawn_file_actions_addclose(&fa, fd[0]);
    int rc = posix_spawnp(&pid, "gzip", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    ssize_t n;
    while (!rc && grow(b, 65536) && (n = read(fd[0], b->p + b->len, 65536)) > 0 &&
           b->len < GZ_MAX)
        b->len += (size_t)n;
    close(fd[0]);
    if (!rc) {
        kill(pid, SIGTERM); /* a no-op once it has finished */
        waitpid(pid, &st, 0);
    }
    if (rc || !b->p || b->len >= GZ_MAX || !WIFEXITED(st) || WEXITSTATUS(st))
        return cm_fail(err, CM_E_FORMAT, "%s: gzip -dc failed (corrupt, too large, or no gzip)",
                       path);
    return CM_OK;
}
#endif

cm_status cm_problems_load(const char *path, cm_bench bench, cm_problem_set *out, cm_err *err)
{
    grow_buf b = {0};
    cm_status s = gunzip(path, &b, err);
    if (!s)
        s = cm_problems_parse(b.p, b.len, bench, path, out, err);
    free(b.p);
    return s;
}

/* ---- programs ---- */

size_t cm_problem_cut(const cm_problem *p, char *c, size_t len)
{
    for (int i = 0; i < p->n_stops; i++) {
        char *hit = memmem(c, len, p->stops[i], strlen(p->stops[i]));
        if (hit)
            len = (size_t)(hit - c);
    }
    c[len] = 0;
    return len;
}

char *cm_problem_program(const cm_problem *p, const char *completion, size_t *len)
{
    char *s = concat3(p->prompt, completion, p->tests);
    if (s && len)
        *len = strlen(s);
    return s;
}

static const char *const STATUS_NAMES[] = {"pass", "fail", "timeout", "compile-error", "crash"};

const char *cm_ev_status_name(cm_ev_status s) { return STATUS_NAMES[s]; }

int cm_ev_status_parse(const char *name)
{
    for (int i = 0; i < CM_EV_N_STATUS; i++)
        if (!strcmp(name, STATUS_NAMES[i]))
            return i;
    return -1;
}

/* The last non-empty line of stderr (else stdout): where compilers and
 * interpreters put the reason. */
static void last_line(char *dst, size_t cap, const cm_sb_result *r)
{
    const char *s = r->err_len ? r->err : r->out ? r->out : "";
    size_t end = strlen(s);
    while (end > 0 && (s[end - 1] == '\n' || s[end - 1] == ' ' || s[end - 1] == '\r'))
        end--;
    size_t start = end;
    while (start > 0 && s[start - 1] != '\n')
        start--;
    snprintf(dst, cap, "%.*s", (int)(end - start), s + start);
}

static cm_ev_status classify(const cm_eval_lang *l, const cm_sb_result *r, int compile_step)
{
    if (r->timed_out)
        return CM_EV_TIMEOUT;
    if (r->exit_code == 0)
        return CM_EV_PASS;
    if (compile_step)
        return CM_EV_COMPILE_ERROR;
    if (r->signal || r->out_limit)
        return CM_EV_CRASH;
    int build_failed = !strcmp(l->name, "go") && (strstr(r->out, "[build failed]") ||
                                                   strstr(r->out, "[setup failed]"));
    int syntax = (!strcmp(l->name, "py") || !strcmp(l->name, "js")) &&
                 (strstr(r->err, "SyntaxError") || strstr(r->err, "IndentationError"));
    return build_failed || syntax ? CM_EV_COMPILE_ERROR : CM_EV_FAIL;
}

static cm_status run_steps(const cm_sandbox *sb, const cm_eval_lang *l, const char *dir,
                           double wall_s, cm_ev_outcome *out, cm_err *err)
{
    char gocache[1024], gopath[1024];
    const char *env[] = {gocache, gopath, "GO111MODULE=off", "GOFLAGS=", NULL};
    snprintf(gocache, sizeof gocache, "GOCACHE=%s/go-build", *cm_sb_cache(sb) ? cm_sb_cache(sb)
                                                                               : dir);
    snprintf(gopath, sizeof gopath, "GOPATH=%s/go", dir);
    cm_sb_limits lim;
    cm_sb_default_limits(&lim);
    lim.wall_s = wall_s > 0 ? wall_s : 15;
    lim.cpu_s = (int)lim.wall_s * 2 + 1; /* compilers use several threads */
    lim.data_bytes = (uint64_t)l->data_mib << 20, lim.as_bytes = (uint64_t)l->as_mib << 20;
    cm_status s = CM_OK;
    out->status = CM_EV_PASS;
    for (int step = l->compile ? 0 : 1; !s && step < 2 && out->status == CM_EV_PASS; step++) {
        cm_sb_result r;
        s = cm_sb_run(sb, dir, &lim, step ? l->run : l->compile, env, &r, err);
        if (s)
            break;
        out->seconds += r.seconds;
        out->status = classify(l, &r, step == 0);
        if (out->status != CM_EV_PASS)
            last_line(out->detail, sizeof out->detail, &r);
        cm_sb_result_free(&r);
    }
    return s;
}

cm_status cm_eval_program(const cm_sandbox *sb, const cm_eval_lang *l, const char *program,
                          size_t len, double wall_s, cm_ev_outcome *out, cm_err *err)
{
    char dir[700];
    memset(out, 0, sizeof *out);
    cm_status s = cm_sb_scratch_new(sb, dir, sizeof dir, err);
    if (s)
        return s;
    s = cm_sb_write(dir, l->file, program, len, err);
    if (!s)
        s = run_steps(sb, l, dir, wall_s, out, err);
    if (cm_sb_scratch_remove(dir) != 0 && !s)
        s = cm_fail(err, CM_E_IO, "cannot remove the scratch directory %s", dir);
    return s;
}
