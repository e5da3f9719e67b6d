/* tokenizer.c - loading a GGUF vocabulary, special tokens, dispatch to the
 * SentencePiece / BPE encoders, decoding, and the UTF-8 output stream.
 *
 * Behaviour follows llama.cpp's public tokenizer semantics so that ids
 * match token for token; where llama.cpp applies fix-ups that are not in
 * the file (token types overridden by text, phi-3's whitespace stripping)
 * they are reproduced and marked as such. */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"
#include "util/ds.h"

/* Longest text accepted by cm_tokenize: offsets inside are 32-bit and the
 * SentencePiece escape triples spaces. */
#define MAX_TEXT (256u << 20)

/* ------------------------------------------------------------ utilities */

cm_status cm_reserve(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return CM_OK;
    size_t n = need + need / 2 + 16;
    if (n > SIZE_MAX / elem)
        return CM_E_NOMEM;
    void *q = realloc(*p, n * elem);
    if (!q)
        return CM_E_NOMEM;
    *p = q;
    *cap = n;
    return CM_OK;
}

cm_status cm_work_symbols(cm_work *w, size_t n)
{
    /* n - 1 initial pairs plus at most two new ones per merge */
    if (cm_reserve((void **)&w->sym, &w->sym_cap, n + 1, sizeof *w->sym) ||
        cm_reserve((void **)&w->heap, &w->heap_cap, 3 * n + 3, sizeof *w->heap))
        return CM_E_NOMEM;
    return CM_OK;
}

/* The piece cache stops taking new pieces at this many bytes of them, so
 * that a huge text of distinct words cannot double its memory. */
#define PIECE_CACHE_BYTES (16u << 20)

int cm_piece_replay(cm_work *w, const void *s, size_t n, cm_ids *out, cm_status *st)
{
    int32_t k = cm_strtab_find(&w->pieces, s, n);
    *st = CM_OK;
    if (k < 0)
        return 0;
    for (uint32_t i = 0; i < w->piece_n[k] && !*st; i++)
        *st = cm_ids_push(out, w->piece_ids[w->piece_at[k] + i]);
    return 1;
}

cm_status cm_piece_record(cm_work *w, const void *s, size_t n, const cm_ids *out, size_t first)
{
    size_t m = out->n - first;
    if (w->pieces.nbytes + n > PIECE_CACHE_BYTES)
        return CM_OK;
    if (cm_strtab_intern(&w->pieces, s, n) < 0)
        return CM_E_NOMEM;
    arrput(w->piece_at, (uint32_t)arrlen(w->piece_ids));
    arrput(w->piece_n, (uint32_t)m);
    int32_t *ids = arraddnptr(w->piece_ids, m);
    if (m) /* a piece may give no token (bytes the vocabulary lacks) */
        memcpy(ids, out->v + first, m * sizeof *out->v);
    return CM_OK;
}

static void work_free(cm_work *w)
{
    free(w->sym);
    free(w->heap);
    free(w->bytes);
    free(w->cp);
    free(w->fl);
    free(w->ends_a);
    free(w->ends_b);
    cm_strtab_free(&w->pieces);
    arrfree(w->piece_at);
    arrfree(w->piece_n);
    arrfree(w->piece_ids);
}

cm_status cm_ids_push(cm_ids *o, int32_t id)
{
    if (o->n == o->cap && cm_reserve((void **)&o->v, &o->cap, o->n + 1, sizeof *o->v))
        return CM_E_NOMEM;
    o->v[o->n++] = id;
    return CM_OK;
}

/* Binary min-heap on key; the caller reserved room. */
void cm_heap_push(cm_bigram *h, size_t *n, cm_bigram b)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h[parent].key <= b.key)
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = b;
}

cm_bigram cm_heap_pop(cm_bigram *h, size_t *n)
{
    cm_bigram top = h[0], last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m)
            break;
        if (c + 1 < m && h[c + 1].key < h[c].key)
            c++;
        if (last.key <= h[c].key)
            break;
        h[i] = h[c];
        i = c;
    }
    if (m)
        h[i] = last;
    return top;
}

/* ---------------------------------------------------------- string table */

cm_status cm_strtab_init(cm_strtab *t, size_t expected)
{
    memset(t, 0, sizeof *t);
    if (expected > INT32_MAX)
        return CM_E_NOMEM;
    t->off = malloc((expected ? expected : 1) * sizeof *t->off);
    t->len = malloc((expected ? expected : 1) * sizeof *t->len);
    if (!t->off || !t->len)
        return CM_E_NOMEM;
    t->cap = (int32_t)(expected ? expected : 1);
    return CM_OK;
}

void cm_strtab_free(cm_strtab *t)
{
    free(t->bytes);
    free(t->off);
    free(t->len);
    cm_names_free(&t->index);
    memset(t, 0, sizeof *t);
}

static cm_name strtab_name(const void *arr, uint32_t i)
{
    const cm_strtab *t = arr;
    return (cm_name){t->bytes + t->off[i], t->len[i]};
}

int32_t cm_strtab_find(const cm_strtab *t, const void *s, size_t n)
{
    uint32_t i = cm_names_find(&t->index, strtab_name, t, s, n);
    return i == CM_NAMES_NONE ? -1 : (int32_t)i;
}

/* Room for one more string of n bytes. */
static cm_status strtab_reserve(cm_strtab *t, size_t n)
{
    if (cm_reserve((void **)&t->bytes, &t->capbytes, t->nbytes + n + 1, 1))
        return CM_E_NOMEM;
    if (t->n < t->cap)
        return CM_OK;
    size_t nc = (size_t)t->cap * 2 + 64;
    if (nc > INT32_MAX)
        nc = INT32_MAX;
    void *p = realloc(t->off, nc * sizeof *t->off);
    if (!p)
        return CM_E_NOMEM;
    t->off = p;
    if (!(p = realloc(t->len, nc * sizeof *t->len)))
        return CM_E_NOMEM;
    t->len = p;
    t->cap = (int32_t)nc;
    return CM_OK;
}

/* The string is appended first and then offered to the index, which keeps
 * it only if it is new; a repeat is dropped again. */
int32_t cm_strtab_intern(cm_strtab *t, const void *s, size_t n)
{
    if (t->n == INT32_MAX || n > UINT32_MAX || t->nbytes + n > UINT32_MAX ||
        strtab_reserve(t, n))
        return -1;
    memcpy(t->bytes + t->nbytes, s, n);
    t->off[t->n] = (uint32_t)t->nbytes;
    t->len[t->n] = (uint32_t)n;
    uint32_t dup = cm_names_add(&t->index, strtab_name, t, (uint32_t)t->n);
    if (dup != CM_NAMES_NONE)
        return (int32_t)dup;
    t->nbytes += n;
    return t->n++;
}

/* ------------------------------------------------------------- loading */

static cm_status load_texts(const gguf_file *f, cm_tokenizer *t, cm_err *err)
{
    gguf_str *tok = NULL;
    uint64_t n = 0;
    cm_status st = gguf_get_str_array(f, "tokenizer.ggml.tokens", &tok, &n, err);
    if (st == CM_E_RANGE)
        return cm_fail(err, CM_E_FORMAT, "tokenizer.ggml.tokens is missing");
    if (st)
        return st;
    if (n == 0 || n > INT32_MAX / 2) {
        free(tok);
        return cm_fail(err, CM_E_FORMAT, "tokenizer.ggml.tokens has %llu entries",
                       (unsigned long long)n);
    }
    t->n_vocab = (int32_t)n;
    t->tok_str = malloc(n * sizeof *t->tok_str);
    t->str_tok = malloc(n * sizeof *t->str_tok);
    t->type = malloc(n);
    t->attr = calloc(n, 1);
    t->score = calloc(n, sizeof *t->score);
    if (!t->tok_str || !t->str_tok || !t->type || !t->attr || !t->score ||
        cm_strtab_init(&t->strs, n)) {
        free(tok);
        return cm_fail(err, CM_E_NOMEM, "out of memory for %llu tokens", (unsigned long long)n);
    }
    for (uint64_t i = 0; i < n; i++) {
        char empty[32];
        const char *s = tok[i].ptr;
        size_t len = tok[i].len;
        if (!len) { /* llama.cpp renames empty tokens so they never match */
            len = (size_t)snprintf(empty, sizeof empty, "[EMPTY_%llu]", (unsigned long long)i);
            s = empty;
        }
        int32_t k = cm_strtab_intern(&t->strs, s, len);
        if (k < 0) {
            free(tok);
            return cm_fail(err, CM_E_NOMEM, "out of memory for token texts");
        }
        t->tok_str[i] = k;
        t->str_tok[k] = (int32_t)i; /* a repeated text maps to its last id */
        if (len > (size_t)t->max_tok_len)
            t->max_tok_len = (int)(len > INT32_MAX ? INT32_MAX : len);
    }
    for (int32_t k = t->strs.n; k < t->n_vocab; k++)
        t->str_tok[k] = -1;
    free(tok);
    return CM_OK;
}

/* token_type and scores are optional, but must cover every token. */
static cm_status load_types_scores(const gguf_file *f, cm_tokenizer *t, cm_err *err)
{
    int32_t *ty = NULL;
    float *sc = NULL;
    uint64_t n = 0;
    cm_status st = gguf_get_i32_array(f, "tokenizer.ggml.token_type", &ty, &n, err);
    if (st == CM_E_RANGE) {
        memset(t->type, CM_TT_NORMAL, (size_t)t->n_vocab);
    } else if (st) {
        return st;
    } else {
        if (n != (uint64_t)t->n_vocab) {
            free(ty);
            return cm_fail(err, CM_E_FORMAT, "tokenizer.ggml.token_type has %llu entries "
                           "for %d tokens", (unsigned long long)n, t->n_vocab);
        }
        for (uint64_t i = 0; i < n; i++) {
            if (ty[i] < 0 || ty[i] > CM_TT_BYTE) {
                cm_fail(err, CM_E_FORMAT, "tokenizer.ggml.token_type[%llu] = %d is not a "
                        "token type", (unsigned long long)i, (int)ty[i]);
                free(ty);
                return CM_E_FORMAT;
            }
            t->type[i] = (uint8_t)ty[i];
        }
        free(ty);
    }
    st = gguf_get_f32_array(f, "tokenizer.ggml.scores", &sc, &n, err);
    if (st == CM_E_RANGE)
        return CM_OK; /* all zero */
    if (st)
        return st;
    if (n != (uint64_t)t->n_vocab) {
        free(sc);
        return cm_fail(err, CM_E_FORMAT, "tokenizer.ggml.scores has %llu entries for %d "
                       "tokens", (unsigned long long)n, t->n_vocab);
    }
    memcpy(t->score, sc, n * sizeof *sc);
    free(sc);
    return CM_OK;
}

/* A token id key: absent keeps *id; a negative value means none. */
static cm_status get_id(const gguf_file *f, const char *key, cm_tokenizer *t, int32_t *id,
                        cm_err *err)
{
    uint32_t v;
    cm_status st = gguf_get_u32(f, key, &v, err);
    if (st == CM_E_RANGE)
        return CM_OK;
    if (st) {
        static const uint8_t signed_size[13] = {0, 1, 0, 2, 0, 4, 0, 0, 0, 0, 0, 8, 0};
        const gguf_kv *kv = gguf_find(f, key);
        unsigned sz = kv && kv->type < 13 ? signed_size[kv->type] : 0;
        if (sz && (kv->data[sz - 1] & 0x80)) {
            *id = -1;
            return CM_OK;
        }
        return st;
    }
    if (v >= (uint32_t)t->n_vocab)
        return cm_fail(err, CM_E_FORMAT, "%s = %u is out of range (%d tokens)", key, v,
                       t->n_vocab);
    *id = (int32_t)v;
    return CM_OK;
}

static cm_status get_flag(const gguf_file *f, const char *key, int *v, cm_err *err)
{
    cm_status st = gguf_get_bool(f, key, v, err);
    return st == CM_E_RANGE ? CM_OK : st;
}

static cm_status load_ids(const gguf_file *f, cm_tokenizer *t, cm_err *err)
{
    cm_status st;
    t->bos = t->eos = t->unk = t->eot = t->eom = t->pad = -1;
    if (t->spm) { /* llama.cpp's defaults for SentencePiece vocabularies */
        t->unk = 0;
        t->bos = t->n_vocab > 1 ? 1 : -1;
        t->eos = t->n_vocab > 2 ? 2 : -1;
    }
    t->add_bos = t->spm || t->pre == CM_PRE_LLAMA3;
    t->add_space_prefix = t->spm;
    t->ignore_merges = t->pre == CM_PRE_LLAMA3;
    if ((st = get_id(f, "tokenizer.ggml.bos_token_id", t, &t->bos, err)) ||
        (st = get_id(f, "tokenizer.ggml.eos_token_id", t, &t->eos, err)) ||
        (st = get_id(f, "tokenizer.ggml.unknown_token_id", t, &t->unk, err)) ||
        (st = get_id(f, "tokenizer.ggml.padding_token_id", t, &t->pad, err)) ||
        (st = get_id(f, "tokenizer.ggml.eot_token_id", t, &t->eot, err)) ||
        (st = get_id(f, "tokenizer.ggml.eom_token_id", t, &t->eom, err)) ||
        (st = get_flag(f, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) ||
        (st = get_flag(f, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err)))
        return st;
    return CM_OK;
}

static cm_status load_model(const gguf_file *f, cm_tokenizer *t, cm_err *err)
{
    gguf_str s;
    cm_status st = gguf_get_str(f, "tokenizer.ggml.model", &s, err);
    if (st == CM_E_RANGE)
        return cm_fail(err, CM_E_RANGE, "the file has no tokenizer (tokenizer.ggml.model)");
    if (st)
        return st;
    int n = (int)(s.len > 60 ? 60 : s.len);
    if (gguf_str_eq(s, "llama"))
        t->spm = 1;
    else if (!gguf_str_eq(s, "gpt2"))
        return cm_fail(err, CM_E_UNSUPPORTED, "tokenizer model '%.*s' is not supported "
                       "(only llama and gpt2)", n, s.ptr);
    t->pre = CM_PRE_NONE;
    if (t->spm)
        return CM_OK;
    st = gguf_get_str(f, "tokenizer.ggml.pre", &s, err);
    if (st == CM_E_RANGE) {
        s.ptr = "default";
        s.len = 7;
    } else if (st) {
        return st;
    }
    n = (int)(s.len > 60 ? 60 : s.len);
    if (!cm_pretok_lookup(s.ptr, s.len, &t->pre))
        return cm_fail(err, CM_E_UNSUPPORTED, "pre-tokenizer '%.*s' is not supported", n,
                       s.ptr);
    memcpy(t->pre_name, s.ptr, s.len); /* known names are short */
    t->pre_name[s.len] = 0;
    return CM_OK;
}

static void find_byte_tokens(cm_tokenizer *t)
{
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        int32_t k = cm_strtab_find(&t->strs, name, 6);
        t->byte_tok[b] = k >= 0 ? t->str_tok[k] : -1;
    }
}

/* ------------------------------------------- llama.cpp's text fix-ups */

/* Texts llama.cpp recognises as end-of-turn, end-of-message, fill-in-the-
 * middle and end-of-generation tokens; it forces such tokens to be control
 * tokens whatever the file says, which changes how text is split. */
static const char *const eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
    "_<EOT>", "<\xEF\xBD\x9C\x65nd\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
    "<end_of_utterance>", NULL};
static const char *const eom_texts[] = {"<|eom_id|>", NULL};
static const char *const fim_pre_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
    "<\xEF\xBD\x9C\x66im\xE2\x96\x81\x62\x65gin\xEF\xBD\x9C>", "<PRE>", "\xE2\x96\x81<PRE>",
    "<|code_prefix|>", NULL};
static const char *const fim_suf_texts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
    "<\xEF\xBD\x9C\x66im\xE2\x96\x81hole\xEF\xBD\x9C>", "<SUF>", "\xE2\x96\x81<SUF>",
    "<|code_suffix|>", NULL};
static const char *const fim_mid_texts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>",
    "<\xEF\xBD\x9C\x66im\xE2\x96\x81\x65nd\xEF\xBD\x9C>", "<MID>", "\xE2\x96\x81<MID>",
    "<|code_middle|>", NULL};
static const char *const fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", NULL};
static const char *const fim_rep_texts[] = {
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL};
static const char *const fim_sep_texts[] = {"<|file_sep|>", NULL};
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>",
    "<end_of_utterance>", NULL};

static int32_t text_id(const cm_tokenizer *t, const char *s)
{
    int32_t k = cm_strtab_find(&t->strs, s, strlen(s));
    return k >= 0 ? t->str_tok[k] : -1;
}

/* If *id is unset, the first listed text present becomes it, as control. */
static void detect(cm_tokenizer *t, const char *const *texts, int32_t *id)
{
    if (*id >= 0)
        return;
    for (; *texts; texts++) {
        int32_t k = text_id(t, *texts);
        if (k >= 0) {
            *id = k;
            t->type[k] = CM_TT_CONTROL;
            return;
        }
    }
}

static void mark_eog(cm_tokenizer *t, int32_t id)
{
    if (id >= 0)
        t->attr[id] |= CM_TA_EOG;
}

static cm_status detect_special(const gguf_file *f, cm_tokenizer *t, cm_err *err)
{
    static const char *const fim_keys[6] = {
        "tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id",
        "tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.fim_pad_token_id",
        "tokenizer.ggml.fim_rep_token_id", "tokenizer.ggml.fim_sep_token_id"};
    static const char *const *const fim_texts[6] = {
        fim_pre_texts, fim_suf_texts, fim_mid_texts, fim_pad_texts, fim_rep_texts,
        fim_sep_texts};
    int32_t fim[6];
    cm_status st;
    detect(t, eot_texts, &t->eot);
    detect(t, eom_texts, &t->eom);
    for (int i = 0; i < 6; i++) {
        fim[i] = -1;
        if ((st = get_id(f, fim_keys[i], t, &fim[i], err)))
            return st;
        detect(t, fim_texts[i], &fim[i]);
    }
    for (const char *const *s = eog_texts; *s; s++) {
        int32_t k = text_id(t, *s);
        if (k >= 0) {
            t->type[k] = CM_TT_CONTROL;
            mark_eog(t, k);
        }
    }
    memcpy(t->fim, fim, sizeof t->fim);
    mark_eog(t, fim[3]); /* pad, repo and file separator end generation too */
    mark_eog(t, fim[4]);
    mark_eog(t, fim[5]);
    mark_eog(t, t->eos);
    mark_eog(t, t->eot);
    mark_eog(t, t->eom);
    return CM_OK;
}

static int is_special_type(uint8_t ty)
{
    return ty == CM_TT_CONTROL || ty == CM_TT_USER || ty == CM_TT_UNKNOWN;
}

/* llama.cpp strips whitespace after phi-3's special tokens (except <unk>,
 * <s> and <|endoftext|>), chosen by the model name. */
static void phi3_rstrip(const gguf_file *f, cm_tokenizer *t)
{
    gguf_str name;
    char low[128];
    if (gguf_get_str(f, "general.name", &name, NULL))
        return;
    size_t n = name.len < sizeof low - 1 ? (size_t)name.len : sizeof low - 1;
    for (size_t i = 0; i < n; i++)
        low[i] = (char)((name.ptr[i] >= 'A' && name.ptr[i] <= 'Z') ? name.ptr[i] + 32
                                                                   : name.ptr[i]);
    low[n] = 0;
    if (!strstr(low, "phi-3") && !strstr(low, "phi3"))
        return;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (is_special_type(t->type[i]))
            t->attr[i] |= CM_TA_RSTRIP;
    int32_t k = text_id(t, "</s>");
    if (k >= 0)
        t->attr[k] |= CM_TA_RSTRIP;
    static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
    for (int i = 0; i < 3; i++)
        if ((k = text_id(t, keep[i])) >= 0)
            t->attr[k] &= (uint8_t)~CM_TA_RSTRIP;
}

/* ------------------------------------------------------ special tokens */

typedef struct {
    uint32_t len;
    int32_t id;
} len_id;

/* Longest first; equal lengths by id for a deterministic order. */
static int cmp_len_id(const void *a, const void *b)
{
    const len_id *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Child of node with byte c, or -1. */
static int32_t trie_child(const cm_tokenizer *t, int32_t node, unsigned char c)
{
    for (int32_t k = t->trie_child[node]; k >= 0; k = t->trie_sibling[k])
        if (t->trie_byte[k] == c)
            return k;
    return -1;
}

static int32_t trie_insert(cm_tokenizer *t, const unsigned char *s, size_t n)
{
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t k = trie_child(t, node, s[i]);
        if (k < 0) {
            k = t->trie_n++;
            t->trie_byte[k] = s[i];
            t->trie_child[k] = -1;
            t->trie_sibling[k] = t->trie_child[node];
            t->trie_child[node] = k;
        }
        node = k;
    }
    return node;
}

static cm_status build_specials(cm_tokenizer *t, cm_err *err)
{
    size_t n = 0, bytes = 1;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (is_special_type(t->type[i]))
            n++;
    len_id *v = malloc((n + 1) * sizeof *v);
    t->special = malloc((n + 1) * sizeof *t->special);
    t->special_node = malloc((n + 1) * sizeof *t->special_node);
    if (!v || !t->special || !t->special_node) {
        free(v);
        return cm_fail(err, CM_E_NOMEM, "out of memory for special tokens");
    }
    n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (!is_special_type(t->type[i]))
            continue;
        v[n].id = i;
        v[n++].len = t->strs.len[t->tok_str[i]];
        bytes += t->strs.len[t->tok_str[i]];
    }
    qsort(v, n, sizeof *v, cmp_len_id);
    t->trie_child = malloc(bytes * sizeof *t->trie_child);
    t->trie_sibling = malloc(bytes * sizeof *t->trie_sibling);
    t->trie_byte = malloc(bytes);
    if (!t->trie_child || !t->trie_sibling || !t->trie_byte) {
        free(v);
        return cm_fail(err, CM_E_NOMEM, "out of memory for special tokens");
    }
    t->trie_n = 1;
    t->trie_child[0] = t->trie_sibling[0] = -1;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const unsigned char *s = (const unsigned char *)cm_tok_text(t, v[i].id, &len);
        t->special[i] = v[i].id;
        t->special_node[i] = trie_insert(t, s, len);
        t->special_first[s[0]] = 1;
    }
    t->n_special = (int32_t)n;
    free(v);
    return CM_OK;
}

/* ------------------------------------------------------- load and free */

void cm_tokenizer_free(cm_tokenizer *t)
{
    if (!t)
        return;
    cm_strtab_free(&t->strs);
    free(t->tok_str);
    free(t->str_tok);
    free(t->type);
    free(t->attr);
    free(t->score);
    free(t->special);
    free(t->special_node);
    free(t->trie_child);
    free(t->trie_sibling);
    free(t->trie_byte);
    cm_bpe_free(t);
    free(t->text2_tok);
    free(t);
}

static cm_status load_bpe(const gguf_file *f, cm_tokenizer *t, cm_err *err)
{
    gguf_str *m = NULL;
    uint64_t n = 0;
    cm_status st = gguf_get_str_array(f, "tokenizer.ggml.merges", &m, &n, err);
    if (st == CM_E_RANGE)
        return cm_fail(err, CM_E_FORMAT, "tokenizer.ggml.merges is missing (gpt2 model)");
    if (st)
        return st;
    st = cm_bpe_build(t, m, n, err);
    free(m);
    return st;
}

cm_status cm_tokenizer_load(const gguf_file *f, cm_tokenizer **out, cm_err *err)
{
    cm_status st;
    *out = NULL;
    cm_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return cm_fail(err, CM_E_NOMEM, "out of memory for the tokenizer");
    if ((st = load_model(f, t, err)) || (st = load_texts(f, t, err)) ||
        (st = load_types_scores(f, t, err)) || (st = load_ids(f, t, err)))
        goto fail;
    if (!t->spm && (st = load_bpe(f, t, err)))
        goto fail;
    find_byte_tokens(t);
    if (t->spm && (st = cm_spm_build(t, err)))
        goto fail;
    if ((st = detect_special(f, t, err)))
        goto fail;
    phi3_rstrip(f, t);
    if ((st = build_specials(t, err)))
        goto fail;
    *out = t;
    return CM_OK;
fail:
    cm_tokenizer_free(t);
    return st;
}

/* ------------------------------------------------------------ encoding */

/* A stretch of raw text, or a special token (tok >= 0). */
typedef struct {
    int32_t tok;
    uint32_t off, len;
} frag;

typedef struct {
    frag *v;
    size_t n, cap;
} frags;

static cm_status frag_push(frags *fs, int32_t tok, size_t off, size_t len)
{
    if (cm_reserve((void **)&fs->v, &fs->cap, fs->n + 1, sizeof *fs->v))
        return CM_E_NOMEM;
    fs->v[fs->n].tok = tok;
    fs->v[fs->n].off = (uint32_t)off;
    fs->v[fs->n].len = (uint32_t)len;
    fs->n++;
    return CM_OK;
}

static int c_isspace(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* Marks the trie nodes of every special text occurring in s, so that the
 * exact (but per-token) splitting below only runs for tokens present. */
static void mark_present(const cm_tokenizer *t, const unsigned char *s, size_t n,
                         uint8_t *seen)
{
    for (size_t i = 0; i < n; i++) {
        if (!t->special_first[s[i]])
            continue;
        int32_t node = 0;
        for (size_t j = i; j < n && (node = trie_child(t, node, s[j])) >= 0; j++)
            seen[node] = 1;
    }
}

/* Splits raw fragment r on every occurrence of special token id, left to
 * right, appending to out; strips whitespace next to it when its attributes
 * say so. */
static cm_status split_on(const cm_tokenizer *t, const char *text, frag r, int32_t id,
                          frags *out)
{
    size_t slen, off = r.off, len = r.len;
    const char *stext = cm_tok_text(t, id, &slen);
    for (;;) {
        const char *m = memmem(text + off, len, stext, slen);
        if (!m)
            return len ? frag_push(out, -1, off, len) : CM_OK;
        size_t pos = (size_t)(m - text), left = pos - off;
        if (t->attr[id] & CM_TA_LSTRIP)
            while (left && c_isspace((unsigned char)text[off + left - 1]))
                left--;
        if ((left && frag_push(out, -1, off, left)) || frag_push(out, id, 0, 0))
            return CM_E_NOMEM;
        size_t roff = pos + slen, rlen = off + len - roff;
        if (t->attr[id] & CM_TA_RSTRIP)
            while (rlen && c_isspace((unsigned char)text[roff]))
                roff++, rlen--;
        off = roff;
        len = rlen;
    }
}

/* llama.cpp's partition: for each special token, longest first, every raw
 * fragment is split on its occurrences.  With parse_special = 0 only
 * user-defined tokens take part. */
static cm_status partition(const cm_tokenizer *t, const char *text, size_t len,
                           int parse_special, frags *cur)
{
    frags nxt = {0};
    cm_status st = CM_OK;
    if (len && frag_push(cur, -1, 0, len))
        return CM_E_NOMEM;
    if (!t->n_special || !len)
        return CM_OK;
    uint8_t *seen = calloc((size_t)t->trie_n, 1);
    if (!seen)
        return CM_E_NOMEM;
    mark_present(t, (const unsigned char *)text, len, seen);
    for (int32_t k = 0; k < t->n_special && !st; k++) {
        int32_t id = t->special[k];
        if (!seen[t->special_node[k]] || (!parse_special && t->type[id] != CM_TT_USER))
            continue;
        nxt.n = 0;
        for (size_t i = 0; i < cur->n && !st; i++)
            st = cur->v[i].tok >= 0 ? frag_push(&nxt, cur->v[i].tok, 0, 0)
                                    : split_on(t, text, cur->v[i], id, &nxt);
        frags tmp = *cur;
        *cur = nxt;
        nxt = tmp;
    }
    free(nxt.v);
    free(seen);
    return st;
}

static cm_status encode_frags(const cm_tokenizer *t, const char *text, const frags *fs,
                              cm_work *w, cm_ids *out)
{
    int prev_special = 1; /* SPM: the space prefix goes at the start and after
                             each special token */
    for (size_t i = 0; i < fs->n; i++) {
        const frag *fr = &fs->v[i];
        cm_status st;
        if (fr->tok >= 0)
            st = cm_ids_push(out, fr->tok);
        else if (t->spm)
            st = cm_spm_encode(t, text + fr->off, fr->len,
                               t->add_space_prefix && prev_special, w, out);
        else
            st = cm_bpe_encode(t, text + fr->off, fr->len, w, out);
        if (st)
            return st;
        prev_special = fr->tok >= 0;
    }
    return CM_OK;
}

cm_status cm_tokenize(const cm_tokenizer *t, const char *text, size_t len, int add_bos,
                      int parse_special, int32_t **ids, size_t *n_ids, cm_err *err)
{
    if (!t || !ids || !n_ids || (!text && len))
        return cm_fail(err, CM_E_RANGE, "cm_tokenize: missing argument");
    *ids = NULL;
    *n_ids = 0;
    if (len > MAX_TEXT)
        return cm_fail(err, CM_E_RANGE, "text of %zu bytes is too long to tokenize "
                       "(limit %u)", len, MAX_TEXT);
    cm_ids out = {0};
    cm_work w = {0};
    frags fs = {0};
    cm_status st = cm_reserve((void **)&out.v, &out.cap, len / 4 + 16, sizeof *out.v);
    if (!st && add_bos && t->bos >= 0)
        st = cm_ids_push(&out, t->bos);
    if (!st)
        st = partition(t, text, len, parse_special, &fs);
    if (!st)
        st = encode_frags(t, text, &fs, &w, &out);
    free(fs.v);
    work_free(&w);
    if (st) {
        free(out.v);
        return cm_fail(err, st, "out of memory tokenizing %zu bytes", len);
    }
    *ids = out.v;
    *n_ids = out.n;
    return CM_OK;
}

/* ------------------------------------------------------------ decoding */

static size_t put(char *buf, size_t cap, size_t at, const char *s, size_t n)
{
    if (at < cap)
        memcpy(buf + at, s, n < cap - at ? n : cap - at);
    return at + n;
}

/* SentencePiece text: U+2581 stands for a space. */
static size_t spm_unescape(const char *s, size_t n, char *buf, size_t cap)
{
    size_t out = 0;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && !memcmp(s + i, "\xE2\x96\x81", 3)) {
            out = put(buf, cap, out, " ", 1);
            i += 3;
        } else {
            out = put(buf, cap, out, s + i, 1);
            i++;
        }
    }
    return out;
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

size_t cm_token_piece(const cm_tokenizer *t, int32_t id, int show_special, char *buf,
                      size_t cap)
{
    size_t n;
    if (!t || id < 0 || id >= t->n_vocab)
        return 0;
    const char *s = cm_tok_text(t, id, &n);
    switch (t->type[id]) {
    case CM_TT_CONTROL:
    case CM_TT_UNKNOWN:
        return show_special ? put(buf, cap, 0, s, n) : 0;
    case CM_TT_USER:
        return put(buf, cap, 0, s, n);
    case CM_TT_NORMAL:
        return t->spm ? spm_unescape(s, n, buf, cap) : cm_bpe_decode(t, s, n, buf, cap);
    case CM_TT_BYTE:
        if (t->spm && n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' &&
            hex_val(s[3]) >= 0 && hex_val(s[4]) >= 0) {
            char b = (char)(hex_val(s[3]) * 16 + hex_val(s[4]));
            return put(buf, cap, 0, &b, 1);
        }
        return 0;
    default: /* unused and undefined tokens print as nothing, as in llama.cpp */
        return 0;
    }
}

/* ------------------------------------------------------------ accessors */

int32_t cm_tok_n_vocab(const cm_tokenizer *t) { return t->n_vocab; }
int32_t cm_tok_bos(const cm_tokenizer *t) { return t->bos; }
int32_t cm_tok_eos(const cm_tokenizer *t) { return t->eos; }
int cm_tok_add_bos(const cm_tokenizer *t) { return t->add_bos && t->bos >= 0; }
const char *cm_tok_model(const cm_tokenizer *t) { return t->spm ? "llama" : "gpt2"; }
const char *cm_tok_pre(const cm_tokenizer *t) { return t->pre_name; }

int cm_tok_is_eog(const cm_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && (t->attr[id] & CM_TA_EOG);
}

int32_t cm_tok_fim(const cm_tokenizer *t, cm_fim_part part)
{
    return part >= CM_FIM_PRE && part <= CM_FIM_MID ? t->fim[part] : -1;
}

/* Appends n ids to *dst (of *len, grown as needed). */
static cm_status append_ids(int32_t **dst, size_t *len, const int32_t *ids, size_t n, cm_err *err)
{
    int32_t *p = realloc(*dst, (*len + n + 1) * sizeof *p);
    if (!p)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    memcpy(p + *len, ids, n * sizeof *p);
    *dst = p;
    *len += n;
    return CM_OK;
}

/* llama.cpp's infill prompt (prefix-suffix-middle order, as its server's
 * format_infill): the texts as plain text, so a file that contains
 * "<fim_middle>" cannot end the prefix early. */
void cm_heal_take(const cm_tokenizer *t, int32_t *ids, size_t *n_ids, cm_heal *h)
{
    h->len = 0, h->allowed = NULL, h->n_allowed = 0;
    if (*n_ids == 0)
        return;
    const int32_t last = ids[*n_ids - 1];
    if (last < 0 || last >= t->n_vocab ||
        (t->type[last] != CM_TT_NORMAL && t->type[last] != CM_TT_BYTE))
        return;
    const size_t n = cm_token_piece(t, last, 0, h->text, sizeof h->text);
    if (n == 0 || n > sizeof h->text)
        return;
    /* (a piece longer than the buffer still has its first n bytes there) */
    char piece[CM_HEAL_MAX];
    for (int pass = 0; pass < 2; pass++) { /* count, then fill */
        int32_t k = 0;
        for (int32_t id = 0; id < t->n_vocab; id++) {
            const size_t m = cm_token_piece(t, id, 0, piece, sizeof piece);
            if (m >= n && !memcmp(piece, h->text, n)) {
                if (pass)
                    h->allowed[k] = id;
                k++;
            }
        }
        if (!pass && !(h->allowed = malloc(sizeof *h->allowed * (size_t)k)))
            return;
        h->n_allowed = k;
    }
    h->len = n;
    (*n_ids)--;
}

void cm_heal_free(cm_heal *h)
{
    free(h->allowed);
    h->allowed = NULL, h->n_allowed = 0, h->len = 0;
}

void cm_heal_logits(const cm_heal *h, float *logits, int32_t n_logits)
{
    if (!h || h->len == 0)
        return;
    int32_t k = 0;
    for (int32_t id = 0; id < n_logits; id++) {
        if (k < h->n_allowed && h->allowed[k] == id)
            k++;
        else
            logits[id] = -INFINITY;
    }
}

cm_status cm_tokenize_infill(const cm_tokenizer *t, const char *prefix, size_t plen,
                             const char *suffix, size_t slen, int add_bos, cm_heal *heal,
                             int32_t **ids, size_t *n_ids, cm_err *err)
{
    int32_t *pre = NULL, *suf = NULL, *out = NULL;
    size_t np = 0, ns = 0, n = 0;
    *ids = NULL;
    *n_ids = 0;
    if (t->fim[0] < 0 || t->fim[1] < 0 || t->fim[2] < 0)
        return cm_fail(err, CM_E_UNSUPPORTED, "the vocabulary has no fill-in-the-middle tokens");
    cm_status s = cm_tokenize(t, prefix, plen, 0, 0, &pre, &np, err);
    if (!s && heal)
        cm_heal_take(t, pre, &np, heal);
    if (!s)
        s = cm_tokenize(t, suffix, slen, 0, 0, &suf, &ns, err);
    if (!s && add_bos && t->bos >= 0)
        s = append_ids(&out, &n, &t->bos, 1, err);
    if (!s)
        s = append_ids(&out, &n, &t->fim[CM_FIM_PRE], 1, err);
    if (!s)
        s = append_ids(&out, &n, pre, np, err);
    if (!s)
        s = append_ids(&out, &n, &t->fim[CM_FIM_SUF], 1, err);
    if (!s)
        s = append_ids(&out, &n, suf, ns, err);
    if (!s)
        s = append_ids(&out, &n, &t->fim[CM_FIM_MID], 1, err);
    free(pre);
    free(suf);
    if (s)
        free(out);
    else
        *ids = out, *n_ids = n;
    return s;
}

/* ------------------------------------------------------ UTF-8 streaming */

/* How many trailing bytes of s[0..n) are an unfinished character. */
static int incomplete_tail(const unsigned char *s, size_t n)
{
    for (size_t k = 1; k <= 4 && k <= n; k++) {
        unsigned char c = s[n - k];
        if ((c & 0xC0) == 0x80)
            continue; /* continuation: keep looking for the lead byte */
        if (c >= 0xC0 && c < 0xF8 && (size_t)cm_utf8_len(c) > k)
            return (int)k;
        return 0;
    }
    return 0;
}

size_t cm_utf8_stream_push(cm_utf8_stream *s, const char *in, size_t n, char *out)
{
    size_t np = (size_t)s->n_pend;
    memcpy(out, s->pend, np);
    memcpy(out + np, in, n);
    size_t total = np + n;
    int hold = incomplete_tail((const unsigned char *)out, total);
    memcpy(s->pend, out + total - (size_t)hold, (size_t)hold);
    s->n_pend = hold;
    return total - (size_t)hold;
}

size_t cm_utf8_stream_flush(cm_utf8_stream *s, char *out)
{
    size_t n = (size_t)s->n_pend;
    memcpy(out, s->pend, n);
    s->n_pend = 0;
    return n;
}
