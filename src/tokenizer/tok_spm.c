/* tok_spm.c - SentencePiece-style tokenization ("llama" vocabularies).
 *
 * Spaces become U+2581 (plus one in front when the space prefix is on), the
 * text is cut into UTF-8 characters, and then, over and over, the adjacent
 * pair whose concatenation is a vocabulary token with the highest score is
 * merged (ties: leftmost).  A heap of candidate pairs keeps this
 * O(n log n); pairs made stale by an earlier merge are skipped when popped.
 * Symbols that are not tokens at the end fall back to <0xXX> byte tokens.
 *
 * llama.cpp runs this over a whole text fragment at once; here the text is
 * cut at ASCII characters that occur in no multi-character token (newlines,
 * in practice), which cannot take part in any merge, so the pieces on either
 * side are independent and the result is the same with far smaller heaps. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

/* Maps a float to a key whose unsigned order is the float order. */
static uint32_t float_order(float f)
{
    uint32_t u;
    f += 0.0f; /* -0 and +0 compare equal, so give them one key */
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The token whose text is the n bytes at s, or -1.  One and two bytes
 * (most lookups) are read from arrays. */
static int32_t text_tok(const cm_tokenizer *t, const unsigned char *s, size_t n)
{
    if (n == 1)
        return t->single_byte_tok[s[0]];
    if (n == 2)
        return t->text2_tok[s[0] << 8 | s[1]];
    int32_t k = cm_strtab_find(&t->strs, s, n);
    return k >= 0 ? t->str_tok[k] : -1;
}

/* Queues the merge of symbols l and r if their concatenation is a token. */
static void try_pair(const cm_tokenizer *t, const unsigned char *text, cm_sym *sym,
                     cm_bigram *heap, size_t *n_heap, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return;
    uint32_t size = sym[l].len + sym[r].len;
    if (size > (uint32_t)t->max_tok_len)
        return; /* no token is that long: skip the hash */
    int32_t tok = text_tok(t, text + sym[l].start, size);
    if (tok < 0)
        return;
    cm_bigram b;
    /* Highest score first, then leftmost: invert the score's order. */
    b.key = ((uint64_t)~float_order(t->score[tok]) << 32) | (uint32_t)l;
    b.left = l;
    b.right = r;
    b.size = size;
    b.res = tok;
    cm_heap_push(heap, n_heap, b);
}

/* Writes the escaped text to out and returns its length. */
static size_t escape(const char *text, size_t len, int prefix, unsigned char *out)
{
    static const unsigned char mark[3] = {0xE2, 0x96, 0x81}; /* U+2581 */
    size_t n = 0;
    if (prefix) {
        memcpy(out, mark, 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(out + n, mark, 3);
            n += 3;
        } else {
            out[n++] = (unsigned char)text[i];
        }
    }
    return n;
}

/* Cuts text[from, to) into characters (a lead byte claims its continuation
 * bytes without checking them, as llama.cpp does); returns the count. */
static int32_t split_chars(const cm_tokenizer *t, const unsigned char *text, size_t from,
                           size_t to, cm_sym *sym)
{
    int32_t k = 0;
    for (size_t i = from; i < to; k++) {
        size_t l = (size_t)cm_utf8_len(text[i]);
        if (l > to - i)
            l = to - i;
        sym[k].sid = text_tok(t, text + i, l);
        sym[k].start = (uint32_t)i;
        sym[k].len = (uint32_t)l;
        sym[k].prev = k - 1;
        sym[k].next = i + l < to ? k + 1 : -1;
        i += l;
    }
    return k;
}

/* Emits one final symbol: its token, or else one byte token per byte. */
static cm_status emit(const cm_tokenizer *t, const unsigned char *text, const cm_sym *s,
                      cm_ids *out)
{
    if (s->sid >= 0)
        return cm_ids_push(out, s->sid);
    for (uint32_t i = 0; i < s->len; i++) {
        int32_t id = t->byte_tok[text[s->start + i]];
        if (id < 0)
            id = t->unk;
        if (id >= 0 && cm_ids_push(out, id))
            return CM_E_NOMEM;
    }
    return CM_OK;
}

/* Merges text[from, to) to the end and emits its tokens. */
static cm_status encode_chunk(const cm_tokenizer *t, const unsigned char *buf, size_t from,
                              size_t to, cm_work *w, cm_ids *out)
{
    if (from == to)
        return CM_OK;
    cm_sym *sym = w->sym;
    int32_t n_sym = split_chars(t, buf, from, to, sym);
    size_t n_heap = 0;
    for (int32_t i = 1; i < n_sym; i++)
        try_pair(t, buf, sym, w->heap, &n_heap, i - 1, i);
    while (n_heap) {
        cm_bigram b = cm_heap_pop(w->heap, &n_heap);
        cm_sym *l = &sym[b.left], *r = &sym[b.right];
        if (!l->len || !r->len || l->len + r->len != b.size)
            continue; /* one side already merged elsewhere */
        l->len += r->len;
        l->sid = b.res;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = b.left;
        try_pair(t, buf, sym, w->heap, &n_heap, l->prev, b.left);
        try_pair(t, buf, sym, w->heap, &n_heap, b.left, l->next);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if (emit(t, buf, &sym[i], out))
            return CM_E_NOMEM;
    return CM_OK;
}

/* encode_chunk through the piece cache: lines repeat in code. */
static cm_status cached_chunk(const cm_tokenizer *t, const unsigned char *buf, size_t from,
                              size_t to, cm_work *w, cm_ids *out)
{
    cm_status st;
    if (to - from < 2) /* one character: cheaper to merge than to look up */
        return encode_chunk(t, buf, from, to, w, out);
    if (cm_piece_replay(w, buf + from, to - from, out, &st))
        return st;
    size_t first = out->n;
    if ((st = encode_chunk(t, buf, from, to, w, out)))
        return st;
    return cm_piece_record(w, buf + from, to - from, out, first);
}

/* Fills single_byte_tok and text2_tok from the one- and two-byte texts. */
static cm_status short_texts(cm_tokenizer *t, cm_err *err)
{
    t->text2_tok = malloc(65536 * sizeof *t->text2_tok);
    if (!t->text2_tok)
        return cm_fail(err, CM_E_NOMEM, "out of memory for the tokenizer");
    memset(t->text2_tok, 0xFF, 65536 * sizeof *t->text2_tok);
    memset(t->single_byte_tok, 0xFF, sizeof t->single_byte_tok);
    for (int32_t k = 0; k < t->strs.n; k++) {
        const unsigned char *s = (const unsigned char *)t->strs.bytes + t->strs.off[k];
        if (t->strs.len[k] == 1)
            t->single_byte_tok[s[0]] = t->str_tok[k];
        else if (t->strs.len[k] == 2)
            t->text2_tok[s[0] << 8 | s[1]] = t->str_tok[k];
    }
    return CM_OK;
}

cm_status cm_spm_build(cm_tokenizer *t, cm_err *err)
{
    memset(t->spm_alone, 1, sizeof t->spm_alone);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t n;
        const unsigned char *s = (const unsigned char *)cm_tok_text(t, id, &n);
        if ((size_t)cm_utf8_len(s[0]) >= n)
            continue; /* a single character */
        for (size_t i = 0; i < n; i++)
            if (s[i] < 0x80)
                t->spm_alone[s[i]] = 0;
    }
    return short_texts(t, err);
}

cm_status cm_spm_encode(const cm_tokenizer *t, const char *text, size_t len, int prefix,
                        cm_work *w, cm_ids *out)
{
    size_t need = 3 * len + 3, from = 0, i = 0;
    if (cm_reserve((void **)&w->bytes, &w->bytes_cap, need, 1) ||
        cm_work_symbols(w, need))
        return CM_E_NOMEM;
    const unsigned char *buf = w->bytes;
    size_t n = escape(text, len, prefix, w->bytes);
    /* A character that no longer token contains can never merge, so the
     * text on either side of it is merged independently: cutting there gives
     * the same result with small heaps. */
    while (i < n) {
        size_t l = (size_t)cm_utf8_len(buf[i]);
        if (l == 1 && buf[i] < 0x80 && t->spm_alone[buf[i]]) {
            if (cached_chunk(t, buf, from, i, w, out) ||
                encode_chunk(t, buf, i, i + 1, w, out))
                return CM_E_NOMEM;
            from = i + 1;
        }
        i += l;
    }
    return cached_chunk(t, buf, from, n, w, out);
}
