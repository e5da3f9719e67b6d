/* test_router.c - the language router: file names, shebangs, modelines, the
 * features the trainer learns from, the classifier on hand-written snippets
 * and on every corpus valid file (the 99% whole-file target of
 * bench/ROUTER.md), and rejection of damaged router data.
 *
 * Router data: $CODEMOE_ROUTER, else models/router.bin under $srcdir (or
 * its parent, or the build's source tree).  Corpus: $CM_SHARED/corpus
 * (default ../shared: testlib.h's tl_shared).  Exit 0 pass, 1 fail, 77 skip
 * (no router data; the name/hint checks still run and a failure there still
 * fails). */
#include "experts/router.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "eval/corpus.h"
#include "testlib.h"

static int streq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

#define S(x) ((x) ? (x) : "(null)")

/* ---------------------------------------------------------------- names */

static void test_filenames(void)
{
    static const struct {
        const char *path, *lang;
    } cases[] = {
        {"main.c", "c"},          {"src/x.cc", "cpp"},      {"a/b.cpp", "cpp"},
        {"v.cxx", "cpp"},         {"v.hpp", "cpp"},         {"v.hh", "cpp"},
        {"boost/x.ipp", "cpp"},   {"Foo.C", "cpp"},         {"t.py", "python"},
        {"Main.java", "java"},    {"a.js", "javascript"},   {"a.mjs", "javascript"},
        {"a.cjs", "javascript"},  {"App.jsx", "javascript"}, {"x.go", "go"},
        {"lib.rs", "rust"},       {"X.PY", "python"},       {"x.h", NULL},
        {"Makefile", NULL},       {".bashrc", NULL},        {"dir.c/file", NULL},
        {"notes.txt", NULL},      {"x.", NULL},             {"", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *got = cm_lang_from_filename(cases[i].path);
        CHECK(streq(got, cases[i].lang), "filename %s: got %s, want %s", cases[i].path, S(got),
              S(cases[i].lang));
    }
    CHECK(cm_langs_from_filename("include/x.h") == 3u, "a .h header allows c and cpp");
    CHECK(cm_langs_from_filename(NULL) == 0, "NULL file name");
}

static void test_aliases(void)
{
    CHECK(streq(cm_lang_canonical("C++"), "cpp"), "c++");
    CHECK(streq(cm_lang_canonical("js"), "javascript"), "js");
    CHECK(streq(cm_lang_canonical("Python"), "python"), "Python");
    CHECK(streq(cm_lang_canonical("golang"), "go"), "golang");
    CHECK(cm_lang_canonical("cobol") == NULL, "cobol");
    CHECK(cm_known_lang_index("rust") == 6 && cm_known_lang_index("rs") == -1, "known index");
}

static const char *hint(const char *text)
{
    return cm_lang_from_text_hints(text, strlen(text));
}

static void test_hints(void)
{
    static const struct {
        const char *text, *lang;
    } cases[] = {
        {"#!/usr/bin/env python3\nprint(1)\n", "python"},
        {"#!/usr/bin/python2.7 -u\n", "python"},
        {"#!/usr/bin/env -S node --harmony\nx()\n", "javascript"},
        {"#!/usr/local/bin/node\n", "javascript"},
        {"#!/usr/bin/env FOO=1 python\n", "python"},
        {"#!/bin/sh\necho hi\n", NULL},
        {"x = 1\n#!/usr/bin/python\n", NULL}, /* a shebang only counts on line 1 */
        {"/* vim: set ft=cpp ts=4: */\nint x;\n", "cpp"},
        {"// vim: filetype=javascript\n", "javascript"},
        {"# vi: ft=python\n", "python"},
        {"a\nb\nc\nd\ne\nf\ng\n# vim: set filetype=python :\n", "python"},
        {"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n// ex: ft=go\nl\nm\nn\no\np\n", NULL},
        {"/* -*- mode: c++; indent-tabs-mode: nil -*- */\n", "cpp"},
        {"# -*- python -*-\n", "python"},
        {"// -*- Mode: Go; tab-width: 4 -*-\n", "go"},
        {"/* -*- mode: rust-mode -*- */", "rust"},
        {"# -*- coding: utf-8 -*-\nimport os\n", NULL},
        {"navi: ft=python\n", NULL},
        {"", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *got = hint(cases[i].text);
        CHECK(streq(got, cases[i].lang), "hints case %zu: got %s, want %s", i, S(got),
              S(cases[i].lang));
    }
    /* Only the first and last 5 lines count, and a lone "#!" is no shebang. */
    CHECK(cm_lang_from_text_hints("#!", 2) == NULL, "bare #!");
    CHECK(cm_lang_from_text_hints("#!/usr/bin/node", 9) == NULL, "shebang cut by len");
}

/* ---------------------------------------------------------------- features */

/* cm_router_features is what the trainer learns from: its count, order,
 * bounds and normalization must be those of router.h. */
static void test_features(void)
{
    uint32_t a[64], b[64];
    /* "ab\n": 3 bytes x 4 n-grams, then "ab" as a token and as the first
     * token of its line (no pair: it is the only token). */
    size_t n = cm_router_features("ab\n", 3, 18, a, 64);
    CHECK(n == 14, "features of \"ab\\n\": %zu, want 14", n);
    for (size_t i = 0; i < n && i < 64; i++)
        CHECK(a[i] < (1u << 18), "bucket %u out of range", a[i]);
    CHECK(cm_router_features("ab\n", 3, 18, NULL, 0) == 14, "count without output");
    memset(b, 0xff, sizeof b);
    CHECK(cm_router_features("ab\n", 3, 18, b, 3) == 14 && b[3] == 0xffffffffu &&
              !memcmp(a, b, 3 * sizeof *a),
          "cap: 3 buckets written, the count still whole");
    /* '\r' is dropped and the digits 1-9 read as '0'. */
    const char *crlf = "x = 17;\r\n", *lf = "x = 09;\n";
    n = cm_router_features(crlf, strlen(crlf), 12, a, 64);
    CHECK(n == cm_router_features(lf, strlen(lf), 12, b, 64) && !memcmp(a, b, n * sizeof *a),
          "normalization");
    const char *t = "a+b*c-(d/e)%f!=g\n";
    CHECK(cm_router_features(t, strlen(t), 16, NULL, 0) <= 7 * strlen(t), "at most 7 per byte");
    CHECK(cm_router_features("", 0, 16, a, 64) == 0, "empty text");
}

/* ---------------------------------------------------------------- classifier */

static const struct {
    const char *lang, *text;
} SNIPPETS[] = {
    {"c", "#include <stdio.h>\n#include <stdlib.h>\n\nint main(int argc, char **argv)\n{\n"
          "    struct stat st;\n    if (argc < 2) {\n        fprintf(stderr, \"usage: %s FILE\\n\","
          " argv[0]);\n        return 1;\n    }\n    char *buf = malloc(st.st_size);\n"
          "    free(buf);\n    return 0;\n}\n"},
    {"c", "static int\nlist_add (struct list *l, void *item)\n{\n  if (l->len == l->cap)\n"
          "    {\n      l->items = xrealloc (l->items, 2 * l->cap * sizeof (void *));\n"
          "      l->cap *= 2;\n    }\n  l->items[l->len++] = item;\n  return 0;\n}\n"},
    {"cpp", "#include <vector>\n#include <string>\n\nnamespace util {\ntemplate <typename T>\n"
            "class Stack {\npublic:\n    void push(const T& v) { items_.push_back(v); }\n"
            "    std::size_t size() const noexcept { return items_.size(); }\nprivate:\n"
            "    std::vector<T> items_;\n};\n} // namespace util\n"},
    {"cpp", "    for (auto& [key, value] : map) {\n        std::cout << key << \": \" << value"
            " << std::endl;\n    }\n    auto ptr = std::make_unique<Widget>();\n"},
    {"python", "import os\nimport sys\n\n\ndef main(argv):\n    \"\"\"Print the files.\"\"\"\n"
               "    for name in sorted(os.listdir(argv[1])):\n        if name.endswith('.py'):\n"
               "            print(name)\n    return 0\n\n\nif __name__ == '__main__':\n"
               "    sys.exit(main(sys.argv))\n"},
    {"python", "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
               "    def __repr__(self):\n        return f'Point({self.x}, {self.y})'\n"},
    {"java", "package com.example.util;\n\nimport java.util.ArrayList;\nimport java.util.List;\n\n"
             "public final class Names {\n    private final List<String> names = new ArrayList<>();\n"
             "\n    public void add(String name) {\n        names.add(name);\n    }\n}\n"},
    {"java", "    @Override\n    public boolean equals(Object obj) {\n        if (this == obj) {\n"
             "            return true;\n        }\n        if (!(obj instanceof Point)) {\n"
             "            return false;\n        }\n        Point other = (Point) obj;\n"
             "        return x == other.x && y == other.y;\n    }\n"},
    {"javascript", "'use strict';\n\nconst fs = require('fs');\nconst path = require('path');\n\n"
                   "module.exports = function readAll(dir, callback) {\n"
                   "  fs.readdir(dir, (err, files) => {\n    if (err) return callback(err);\n"
                   "    callback(null, files.map((f) => path.join(dir, f)));\n  });\n};\n"},
    {"javascript", "export default class Emitter {\n  constructor() {\n    this.listeners = {};\n"
                   "  }\n\n  on(name, fn) {\n    (this.listeners[name] ||= []).push(fn);\n"
                   "    return this;\n  }\n}\n"},
    {"go", "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n"
           "\tif len(os.Args) < 2 {\n\t\tfmt.Fprintln(os.Stderr, \"usage: hello NAME\")\n"
           "\t\tos.Exit(2)\n\t}\n\tfmt.Printf(\"hello %s\\n\", os.Args[1])\n}\n"},
    {"go", "func (s *Server) Close() error {\n\ts.mu.Lock()\n\tdefer s.mu.Unlock()\n"
           "\tif s.closed {\n\t\treturn nil\n\t}\n\ts.closed = true\n\treturn s.ln.Close()\n}\n"},
    {"rust", "use std::collections::HashMap;\n\nfn main() {\n    let mut counts: HashMap<String, "
             "usize> = HashMap::new();\n    for word in std::env::args().skip(1) {\n"
             "        *counts.entry(word).or_insert(0) += 1;\n    }\n"
             "    println!(\"{:?}\", counts);\n}\n"},
    {"rust", "impl<T: Clone> Stack<T> {\n    pub fn peek(&self) -> Option<&T> {\n"
             "        self.items.last()\n    }\n}\n"},
};

static void test_snippets(const cm_router *r)
{
    float probs[CM_ROUTER_MAX_LANGS];
    for (size_t i = 0; i < sizeof SNIPPETS / sizeof *SNIPPETS; i++) {
        int best = cm_router_classify(r, SNIPPETS[i].text, strlen(SNIPPETS[i].text), probs);
        const char *got = cm_router_lang(r, best);
        CHECK(streq(got, SNIPPETS[i].lang), "snippet %zu: got %s (%.3f), want %s", i, got,
              (double)probs[best], SNIPPETS[i].lang);
        float sum = 0;
        for (int l = 0; l < cm_router_n_langs(r); l++)
            sum += probs[l];
        CHECK(sum > 0.999f && sum < 1.001f, "snippet %zu: probabilities sum to %g", i, (double)sum);
    }
    /* Empty text: defined, and not confident. */
    int best = cm_router_classify(r, "", 0, probs);
    CHECK(best >= 0 && probs[best] < CM_ROUTER_DEFAULT_THRESHOLD, "empty text is confident");
}

static void test_decide(const cm_router *r)
{
    const char *py = SNIPPETS[4].text, *cpp = SNIPPETS[2].text;
    cm_route rt;
    cm_route_opts o = {.threshold = CM_ROUTER_DEFAULT_THRESHOLD};
    cm_route_decide(r, &o, py, strlen(py), &rt);
    CHECK(streq(rt.lang, "python") && rt.source == CM_ROUTE_CLASSIFIER, "classifier decides");
    o.filename = "x.go";
    cm_route_decide(r, &o, py, strlen(py), &rt);
    CHECK(streq(rt.lang, "go") && rt.source == CM_ROUTE_FILENAME, "extension beats text");
    o.lang = "C++";
    cm_route_decide(r, &o, py, strlen(py), &rt);
    CHECK(streq(rt.lang, "cpp") && rt.source == CM_ROUTE_EXPLICIT, "explicit beats extension");
    o = (cm_route_opts){.filename = "inc/stack.h", .threshold = 0.5f};
    cm_route_decide(r, &o, cpp, strlen(cpp), &rt);
    CHECK(streq(rt.lang, "cpp") && rt.source == CM_ROUTE_FILENAME, ".h with C++ text: %s",
          rt.lang);
    cm_route_decide(r, &o, SNIPPETS[0].text, strlen(SNIPPETS[0].text), &rt);
    CHECK(streq(rt.lang, "c"), ".h with C text: %s", rt.lang);
    const char *sh = "#!/usr/bin/env node\nx = 1\n";
    o = (cm_route_opts){.use_hints = 1, .threshold = 0.5f};
    cm_route_decide(r, &o, sh, strlen(sh), &rt);
    CHECK(streq(rt.lang, "javascript") && rt.source == CM_ROUTE_HINT, "shebang: %s", rt.lang);
    o.use_hints = 0;
    o.threshold = 1.0f;
    cm_route_decide(r, &o, "x = 1\n", 6, &rt);
    CHECK(streq(rt.lang, "unknown") && rt.source == CM_ROUTE_UNKNOWN, "threshold 1: %s",
          rt.lang);
    cm_route_decide(NULL, &o, py, strlen(py), &rt);
    CHECK(streq(rt.lang, "unknown") && rt.n_langs == 0, "no router, no evidence");
}

/* ---------------------------------------------------------------- corpus */

/* One language's valid files: whole, and 10-line snippets at ten evenly
 * spaced starts of every file that long (blank ones skipped). */
typedef struct {
    const cm_router *r;
    const char *lang;
    int files, files_ok, snips, snips_ok;
} valid_tally;

static int routed_right(const valid_tally *t, const char *text, size_t len)
{
    float probs[CM_ROUTER_MAX_LANGS];
    return streq(cm_router_lang(t->r, cm_router_classify(t->r, text, len, probs)), t->lang);
}

static int blank_text(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
            return 0;
    return 1;
}

static cm_status tally_doc(void *ctx, const char *text, size_t len, cm_err *err)
{
    (void)err;
    valid_tally *t = ctx;
    t->files++, t->files_ok += routed_right(t, text, len);
    size_t starts[4096];
    int nl = 0;
    starts[nl++] = 0;
    for (size_t i = 0; i < len && nl < 4096; i++)
        if (text[i] == '\n' && i + 1 < len)
            starts[nl++] = i + 1;
    for (int k = 0; nl >= 10 && k < 10; k++) {
        int first = k * (nl - 10) / 9, last = first + 10;
        size_t a = starts[first], b = last < nl ? starts[last] - 1 : len;
        if (blank_text(text + a, b - a))
            continue;
        t->snips++, t->snips_ok += routed_right(t, text + a, b - a);
    }
    return CM_OK;
}

/* The targets per language: >= 99% of whole files and >= 95% of
 * 10-line snippets (bench/bench_router measures more, with random cuts). */
static void test_valid_files(const cm_router *r, const char *shared)
{
    for (int i = 0; i < CM_N_KNOWN_LANGS; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/corpus/%s/valid.jsonl.xz", shared, cm_known_langs[i]);
        valid_tally t = {.r = r, .lang = cm_known_langs[i]};
        cm_corpus_info info;
        cm_err err = {0};
        if (cm_corpus_each_doc(path, tally_doc, &t, &info, &err) != CM_OK) {
            printf("skip: %s\n", err.msg);
            continue;
        }
        printf("valid %-10s %d/%d whole files, %d/%d 10-line snippets\n", t.lang, t.files_ok,
               t.files, t.snips_ok, t.snips);
        CHECK(t.files > 0 && t.files_ok >= 0.99 * t.files, "%s: %d of %d valid files right (< 99%%)",
              t.lang, t.files_ok, t.files);
        CHECK(t.snips > 0 && t.snips_ok >= 0.95 * t.snips,
              "%s: %d of %d 10-line snippets right (< 95%%)", t.lang, t.snips_ok, t.snips);
    }
}

/* ---------------------------------------------------------------- damage */

static uint32_t fnv(const unsigned char *p, size_t n)
{
    uint32_t h = 0x811C9DC5u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x01000193u;
    return h;
}

/* Re-signs an edited image so the check under test is the one that fires. */
static void resign(unsigned char *p, size_t n)
{
    uint32_t h = fnv(p, n - 4);
    for (int i = 0; i < 4; i++)
        p[n - 4 + i] = (unsigned char)(h >> 8 * i);
}

static void expect_format(const unsigned char *p, size_t n, const char *what)
{
    cm_router *r = (cm_router *)1;
    cm_err err = {0};
    cm_status st = cm_router_parse(p, n, &r, &err);
    CHECK(st == CM_E_FORMAT && r == NULL && err.msg[0], "%s: status %d", what, (int)st);
}

static void test_damage(const unsigned char *img, size_t n)
{
    unsigned char *p = malloc(n);
    size_t cuts[] = {0, 7, 8, 31, 35, 36, 100, n / 2, n - 5, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        memcpy(p, img, cuts[i]);
        expect_format(p, cuts[i], "truncated");
    }
    static const struct {
        size_t off;
        unsigned char val;
        const char *what;
    } edits[] = {
        {0, 'X', "magic"},       {8, 2, "version"},         {12, 1, "one language"},
        {12, 17, "17 languages"}, {16, 9, "hash bits 9"},    {16, 23, "hash bits 23"},
        {20, 7, "feature set"},  {27, 0xff, "scale NaN"},   {28, 1, "reserved"},
        {32, 'A', "name char"},  {32 + 15, 'x', "name pad"}, {48, 'c', "duplicate name"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof *edits; i++) {
        memcpy(p, img, n);
        if (edits[i].off == 48) /* second name := "c\0..." like the first */
            memset(p + 49, 0, 15);
        p[edits[i].off] = edits[i].val;
        if (edits[i].off == 27)
            p[26] = 0xff, p[25] = 0xff, p[24] = 0xff;
        resign(p, n);
        expect_format(p, n, edits[i].what);
    }
    uint64_t x = 88172645463325252ull; /* xorshift: a fixed set of byte flips */
    for (int i = 0; i < 200; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(p, img, n);
        p[x % n] ^= (unsigned char)(1 + (x >> 32) % 255);
        expect_format(p, n, "flipped byte (checksum)");
    }
    memcpy(p, img, n);
    cm_router *r = NULL;
    cm_err err = {0};
    CHECK(cm_router_parse(p, n, &r, &err) == CM_OK && r, "intact copy: %s", err.msg);
    cm_router_free(r);
    free(p);
}

static void test_load_errors(const unsigned char *img, size_t n)
{
    cm_router *r = NULL;
    cm_err err = {0};
    CHECK(cm_router_load("/nonexistent/router.bin", &r, &err) == CM_E_IO && !r, "missing file");
    char tmp[] = "/tmp/test_router_XXXXXX";
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!f)
        return;
    fwrite(img, 1, n / 3, f);
    fclose(f);
    cm_status st = cm_router_load(tmp, &r, &err);
    CHECK(st == CM_E_FORMAT && !r && strstr(err.msg, tmp), "truncated file: %d %s", (int)st,
          err.msg);
    remove(tmp);
}

/* ---------------------------------------------------------------- main */

static int is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static const char *router_path(char *buf, size_t cap)
{
    const char *env = getenv("CODEMOE_ROUTER"), *srcdir = getenv("srcdir");
    if (env && *env)
        return env;
    const char *fmts[] = {"%s/models/router.bin", "%s/../models/router.bin"};
    for (int i = 0; i < 2; i++) {
        snprintf(buf, cap, fmts[i], srcdir ? srcdir : ".");
        if (is_file(buf))
            return buf;
    }
#ifdef CM_SRCDIR
    snprintf(buf, cap, "%s/models/router.bin", CM_SRCDIR);
    if (is_file(buf))
        return buf;
#endif
    return NULL;
}

int main(void)
{
    test_filenames();
    test_aliases();
    test_hints();
    test_features();
    char buf[4096];
    const char *path = router_path(buf, sizeof buf);
    cm_router *r = NULL;
    cm_err err = {0};
    if (!path || cm_router_load(path, &r, &err) != CM_OK)
        tl_skip("classifier tests: %s", path ? err.msg : "no models/router.bin");
    test_snippets(r);
    test_decide(r);
    const char *shared = tl_shared("corpus");
    test_valid_files(r, shared ? shared : "../shared"); /* none: says what it skips */
    cm_router_free(r);
    size_t n;
    unsigned char *img = tl_slurp(path, &n);
    CHECK(img, "cannot re-read %s", path);
    if (img) {
        test_damage(img, n);
        test_load_errors(img, n);
    }
    free(img);
    return tl_finish("test_router");
}
