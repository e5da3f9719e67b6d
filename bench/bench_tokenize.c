/* bench_tokenize.c - single-thread tokenization speed on the code corpus.
 *
 * Encodes the concatenated $CM_SHARED/corpus/<lang>/sample.txt files with
 * the starcoder (BPE) and llama-spm (SentencePiece) vocabularies and prints
 * MB/s.  Exit 77 when the shared data is missing. */
#include "tokenizer/tokenizer.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define TARGET_MBS 5.0

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

static const char *find_shared(char *buf, size_t cap)
{
    const char *env = getenv("CM_SHARED");
    const char *cands[3] = {env, "../shared", NULL};
#ifdef CM_SRCDIR
    cands[2] = CM_SRCDIR "/../shared";
#endif
    for (int i = 0; i < 3; i++) {
        if (!cands[i] || !*cands[i])
            continue;
        snprintf(buf, cap, "%s/corpus", cands[i]);
        if (exists(buf)) {
            snprintf(buf, cap, "%s", cands[i]);
            return buf;
        }
    }
    return NULL;
}

/* Concatenates every corpus/<lang>/sample.txt; NULL if there are none. */
static char *load_corpus(const char *shared, size_t *len)
{
    char pat[1200];
    glob_t g;
    snprintf(pat, sizeof pat, "%s/corpus/*/sample.txt", shared);
    if (glob(pat, 0, NULL, &g) != 0)
        return NULL;
    char *all = NULL;
    size_t n = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        FILE *fp = fopen(g.gl_pathv[i], "rb");
        if (!fp)
            continue;
        fseek(fp, 0, SEEK_END);
        long sz = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        char *b = sz > 0 ? realloc(all, n + (size_t)sz) : NULL;
        if (b) {
            all = b;
            n += fread(all + n, 1, (size_t)sz, fp);
        }
        fclose(fp);
    }
    globfree(&g);
    *len = n;
    return all;
}

/* Returns MB/s, or a negative value on error. */
static double bench_vocab(const char *shared, const char *name, const char *text, size_t len)
{
    char path[1200];
    gguf_file f;
    cm_tokenizer *tok;
    cm_err err = {0};
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", shared, name);
    if (gguf_open(path, &f, &err) || cm_tokenizer_load(&f, &tok, &err)) {
        fprintf(stderr, "%s: %s\n", name, err.msg);
        return -1;
    }
    double t0 = now(), t = 0;
    size_t reps = 0, n_ids = 0;
    while (t < 1.0 || reps < 3) {
        int32_t *ids;
        if (cm_tokenize(tok, text, len, 0, 0, &ids, &n_ids, &err)) {
            fprintf(stderr, "%s: %s\n", name, err.msg);
            break;
        }
        free(ids);
        reps++;
        t = now() - t0;
    }
    double mbs = (double)len * (double)reps / t / 1e6;
    printf("%-10s %8zu bytes -> %7zu tokens (%.2f bytes/token): %6.1f MB/s (%zu runs)\n",
           name, len, n_ids, n_ids ? (double)len / (double)n_ids : 0.0, mbs, reps);
    cm_tokenizer_free(tok);
    gguf_close(&f);
    return mbs;
}

int main(void)
{
    static const char *const vocabs[] = {"starcoder", "llama-spm"};
    char shared[1024];
    size_t len = 0;
    char *text = find_shared(shared, sizeof shared) ? load_corpus(shared, &len) : NULL;
    if (!text || !len) {
        fprintf(stderr, "SKIP: no corpus (set CM_SHARED)\n");
        free(text);
        return 77;
    }
    int slow = 0;
    for (size_t i = 0; i < sizeof vocabs / sizeof *vocabs; i++) {
        double mbs = bench_vocab(shared, vocabs[i], text, len);
        if (mbs < TARGET_MBS) {
            printf("%-10s below the %.0f MB/s target\n", vocabs[i], TARGET_MBS);
            slow = 1;
        }
    }
    free(text);
    return slow;
}
