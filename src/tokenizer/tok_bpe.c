/* tok_bpe.c - byte-level BPE ("gpt2" vocabularies).
 *
 * The text is decoded to code points (invalid UTF-8 becomes U+FFFD, as in
 * llama.cpp), split by the pre-tokenizer, and each piece's bytes are mapped
 * to GPT-2's printable byte alphabet.  Within a piece the adjacent pair
 * with the lowest merge rank is merged until none is left (ties: leftmost),
 * using a heap, so a piece costs O(n log n).
 *
 * Symbols are identified by interned string ids: a merge is a lookup of
 * (left id, right id) in a hash map giving the rank and the merged string's
 * id, so no string is built or hashed while merging. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"
#include "util/ds.h"

struct cm_merge {
    uint64_t key; /* left << 32 | right: ids below 2^31, so bits 31 and 63 are clear */
    struct {
        int32_t rank, res;
    } value;
};

static uint64_t pair_key(int32_t l, int32_t r)
{
    return ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
}

/* stb_ds hashes the key with its seeded mix of the 8 bytes (the seed is
 * random per process, stb_ds_impl.c). */
static int pair_find(const cm_pairmap *m, int32_t l, int32_t r, int32_t *rank,
                     int32_t *res)
{
    struct cm_merge *map = m->map;
    ptrdiff_t i;
    if (!map)
        return 0;
    if (hmgeti_ts(map, pair_key(l, r), i) < 0)
        return 0;
    *rank = map[i].value.rank;
    *res = map[i].value.res;
    return 1;
}

void cm_bpe_free(cm_tokenizer *t)
{
    hmfree(t->merges.map);
    free(t->byte_merge);
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes get U+0100 onwards, in byte order. */
static void build_byte_map(cm_tokenizer *t)
{
    int extra = 0;
    for (int i = 0; i < 0x144; i++)
        t->byte_inv[i] = -1;
    for (int b = 0; b < 256; b++) {
        int self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        uint32_t cp = self ? (uint32_t)b : 0x100u + (uint32_t)extra++;
        t->byte_ulen[b] = (uint8_t)cm_utf8_encode(cp, t->byte_utf8[b]);
        t->byte_inv[cp] = (int16_t)b;
    }
}

/* Interns one merge "left right" (split at the first space after the first
 * byte, so a merge may start with a space character). */
static cm_status add_merge(cm_tokenizer *t, gguf_str m, uint64_t rank, char **cat,
                           size_t *cat_cap, struct cm_merge **list, cm_err *err)
{
    const char *sp = m.len > 1 ? memchr(m.ptr + 1, ' ', m.len - 1) : NULL;
    if (!sp)
        return cm_fail(err, CM_E_FORMAT, "tokenizer.ggml.merges[%llu] '%.*s' is not \"a b\"",
                       (unsigned long long)rank, (int)(m.len > 60 ? 60 : m.len), m.ptr);
    size_t ll = (size_t)(sp - m.ptr), rl = m.len - ll - 1;
    if (cm_reserve((void **)cat, cat_cap, ll + rl, 1))
        return cm_fail(err, CM_E_NOMEM, "out of memory for merges");
    memcpy(*cat, m.ptr, ll);
    memcpy(*cat + ll, sp + 1, rl);
    int32_t l = cm_strtab_intern(&t->strs, m.ptr, ll);
    int32_t r = cm_strtab_intern(&t->strs, sp + 1, rl);
    int32_t res = cm_strtab_intern(&t->strs, *cat, ll + rl);
    if (l < 0 || r < 0 || res < 0)
        return cm_fail(err, CM_E_NOMEM, "out of memory for merges");
    struct cm_merge e = {.key = pair_key(l, r), .value = {(int32_t)rank, res}};
    arrput(*list, e);
    return CM_OK;
}

static cm_status build_merges(cm_tokenizer *t, const gguf_str *merges, uint64_t n,
                              cm_err *err)
{
    char *cat = NULL;
    size_t cat_cap = 0;
    struct cm_merge *list = NULL;
    cm_status st = CM_OK;
    arrsetcap(list, n ? n : 1);
    for (uint64_t i = 0; i < n && !st; i++)
        st = add_merge(t, merges[i], i, &cat, &cat_cap, &list, err);
    /* Inserted last rank first, each overwriting: a pair listed twice
     * keeps its first (lowest-rank) merge, as in llama.cpp. */
    for (ptrdiff_t i = st ? -1 : arrlen(list) - 1; i >= 0; i--) {
        int create = !t->merges.map; /* the first insertion makes the table (util/ds.h) */
        if (create)
            cm_ds_lock();
        hmputs(t->merges.map, list[i]);
        if (create)
            cm_ds_unlock();
    }
    arrfree(list);
    free(cat);
    return st;
}

/* Fills byte_merge from the merges (byte_sid must be set). */
static cm_status build_byte_merges(cm_tokenizer *t, cm_err *err)
{
    struct cm_merge *map = t->merges.map;
    int16_t *sid_byte = malloc(((size_t)t->strs.n + 1) * sizeof *sid_byte);
    t->byte_merge = malloc(65536 * sizeof *t->byte_merge);
    if (!sid_byte || !t->byte_merge) {
        free(sid_byte);
        return cm_fail(err, CM_E_NOMEM, "out of memory for merges");
    }
    memset(sid_byte, 0xFF, (size_t)t->strs.n * sizeof *sid_byte);
    memset(t->byte_merge, 0xFF, 65536 * sizeof *t->byte_merge);
    for (int b = 0; b < 256; b++)
        if (t->byte_sid[b] >= 0)
            sid_byte[t->byte_sid[b]] = (int16_t)b;
    for (ptrdiff_t i = 0; i < hmlen(map); i++) {
        int l = sid_byte[map[i].key >> 32], r = sid_byte[(uint32_t)map[i].key];
        if (l >= 0 && r >= 0)
            t->byte_merge[l << 8 | r] = (int32_t)i;
    }
    free(sid_byte);
    return CM_OK;
}

cm_status cm_bpe_build(cm_tokenizer *t, const gguf_str *merges, uint64_t n_merges,
                       cm_err *err)
{
    if (n_merges > INT32_MAX)
        return cm_fail(err, CM_E_FORMAT, "tokenizer.ggml.merges: %llu merges is too many",
                       (unsigned long long)n_merges);
    build_byte_map(t);
    int32_t n0 = t->strs.n;
    cm_status st = build_merges(t, merges, n_merges, err);
    if (st)
        return st;
    /* Merge parts that are not tokens got new string ids: extend str_tok
     * (which has n_vocab entries, of which the first n0 are in use). */
    if (t->strs.n > t->n_vocab) {
        int32_t *st2 = realloc(t->str_tok, (size_t)t->strs.n * sizeof *st2);
        if (!st2)
            return cm_fail(err, CM_E_NOMEM, "out of memory for merges");
        t->str_tok = st2;
    }
    for (int32_t i = n0; i < t->strs.n; i++)
        t->str_tok[i] = -1;
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        int32_t s = cm_strtab_find(&t->strs, &c, 1);
        t->single_byte_tok[b] = s >= 0 ? t->str_tok[s] : -1;
        t->byte_sid[b] = cm_strtab_find(&t->strs, t->byte_utf8[b], t->byte_ulen[b]);
    }
    return build_byte_merges(t, err);
}

/* The merge of symbols l and r: single bytes from byte_merge, others
 * from the map. */
static int merge_of(const cm_tokenizer *t, const unsigned char *bytes, const cm_sym *sym,
                    int32_t l, int32_t r, int32_t *rank, int32_t *res)
{
    if (sym[l].len == 1 && sym[r].len == 1) {
        int32_t i = t->byte_merge[bytes[sym[l].start] << 8 | bytes[sym[r].start]];
        if (i < 0)
            return 0;
        *rank = t->merges.map[i].value.rank;
        *res = t->merges.map[i].value.res;
        return 1;
    }
    return pair_find(&t->merges, sym[l].sid, sym[r].sid, rank, res);
}

static void try_pair(const cm_tokenizer *t, const unsigned char *bytes, cm_sym *sym,
                     cm_bigram *heap, size_t *n_heap, int32_t l, int32_t r)
{
    int32_t rank, res;
    if (l < 0 || r < 0 || sym[l].sid < 0 || sym[r].sid < 0 ||
        !merge_of(t, bytes, sym, l, r, &rank, &res))
        return;
    cm_bigram b;
    b.key = ((uint64_t)(uint32_t)rank << 32) | (uint32_t)l;
    b.left = l;
    b.right = r;
    b.size = sym[l].len + sym[r].len;
    b.res = res;
    cm_heap_push(heap, n_heap, b);
}

/* A final symbol's token; when its string is not in the vocabulary, the
 * tokens of the single bytes of its mapped text, as llama.cpp does. */
static cm_status emit(const cm_tokenizer *t, const unsigned char *bytes, const cm_sym *s,
                      cm_ids *out)
{
    int32_t tok = s->sid >= 0 ? t->str_tok[s->sid] : -1;
    if (tok >= 0)
        return cm_ids_push(out, tok);
    for (uint32_t i = s->start; i < s->start + s->len; i++) {
        unsigned char b = bytes[i];
        for (int k = 0; k < t->byte_ulen[b]; k++) {
            int32_t id = t->single_byte_tok[t->byte_utf8[b][k]];
            if (id >= 0 && cm_ids_push(out, id))
                return CM_E_NOMEM;
        }
    }
    return CM_OK;
}

/* llama3's ignore_merges: a piece that is itself a token is taken whole. */
static int32_t whole_piece(const cm_tokenizer *t, const unsigned char *bytes, size_t n,
                           unsigned char *mapped)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(mapped + m, t->byte_utf8[bytes[i]], t->byte_ulen[bytes[i]]);
        m += t->byte_ulen[bytes[i]];
    }
    int32_t s = cm_strtab_find(&t->strs, mapped, m);
    return s >= 0 ? t->str_tok[s] : -1;
}

/* Merges one piece of n bytes (w->bytes) and emits its tokens. */
static cm_status merge_piece(const cm_tokenizer *t, size_t n, cm_work *w, cm_ids *out)
{
    const unsigned char *bytes = w->bytes;
    cm_sym *sym = w->sym;
    if (t->ignore_merges) {
        int32_t tok = whole_piece(t, bytes, n, w->bytes + n);
        if (tok >= 0)
            return cm_ids_push(out, tok);
    }
    for (size_t i = 0; i < n; i++) {
        sym[i].sid = t->byte_sid[bytes[i]];
        sym[i].start = (uint32_t)i;
        sym[i].len = 1;
        sym[i].prev = (int32_t)i - 1;
        sym[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    size_t n_heap = 0;
    for (size_t i = 1; i < n; i++)
        try_pair(t, bytes, sym, w->heap, &n_heap, (int32_t)i - 1, (int32_t)i);
    while (n_heap) {
        cm_bigram b = cm_heap_pop(w->heap, &n_heap);
        cm_sym *l = &sym[b.left], *r = &sym[b.right];
        if (!l->len || !r->len || l->len + r->len != b.size)
            continue; /* stale: a side was merged since */
        l->len += r->len;
        l->sid = b.res;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = b.left;
        try_pair(t, bytes, sym, w->heap, &n_heap, l->prev, b.left);
        try_pair(t, bytes, sym, w->heap, &n_heap, b.left, l->next);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if (emit(t, bytes, &sym[i], out))
            return CM_E_NOMEM;
    return CM_OK;
}

/* Emits the tokens of one piece of n bytes (w->bytes): those of an
 * earlier equal piece of this call, else merged and recorded. */
static cm_status bpe_piece(const cm_tokenizer *t, size_t n, cm_work *w, cm_ids *out)
{
    cm_status st;
    if (cm_piece_replay(w, w->bytes, n, out, &st))
        return st;
    size_t first = out->n;
    if ((st = merge_piece(t, n, w, out)))
        return st;
    return cm_piece_record(w, w->bytes, n, out, first);
}

/* Decodes text to code points and their classes into w. */
static size_t decode_cps(const char *text, size_t len, cm_work *w)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t k = 0, adv;
    for (size_t i = 0; i < len; i += adv, k++) {
        uint32_t c = s[i];
        adv = 1;
        if (c >= 0x80)
            c = cm_utf8_decode(s + i, len - i, &adv);
        w->cp[k] = c;
        w->fl[k] = cm_ucp_flags(c);
    }
    return k;
}

/* Code points, classes and piece ends all need one slot per code point. */
static cm_status reserve_cps(cm_work *w, size_t need)
{
    if (need <= w->cp_cap)
        return CM_OK;
    size_t cap = need + need / 2 + 16;
    void *p;
    if (!(p = realloc(w->cp, cap * sizeof *w->cp)))
        return CM_E_NOMEM;
    w->cp = p;
    if (!(p = realloc(w->fl, cap)))
        return CM_E_NOMEM;
    w->fl = p;
    if (!(p = realloc(w->ends_a, cap * sizeof *w->ends_a)))
        return CM_E_NOMEM;
    w->ends_a = p;
    if (!(p = realloc(w->ends_b, cap * sizeof *w->ends_b)))
        return CM_E_NOMEM;
    w->ends_b = p;
    w->cp_cap = cap;
    return CM_OK;
}

cm_status cm_bpe_encode(const cm_tokenizer *t, const char *text, size_t len, cm_work *w,
                        cm_ids *out)
{
    if (reserve_cps(w, len + 1))
        return CM_E_NOMEM;
    size_t n_cp = decode_cps(text, len, w);
    const uint32_t *ends;
    size_t n_pieces = cm_pretok_split(t->pre, w->cp, w->fl, n_cp, w, &ends);
    size_t start = 0;
    for (size_t p = 0; p < n_pieces; p++) {
        size_t n = ends[p] - start, nb = 0;
        /* room for the piece's bytes and, after them, their mapped form */
        if (cm_reserve((void **)&w->bytes, &w->bytes_cap, 12 * n, 1) ||
            cm_work_symbols(w, 4 * n))
            return CM_E_NOMEM;
        for (size_t i = start; i < ends[p]; i++)
            nb += (size_t)cm_utf8_encode(w->cp[i], w->bytes + nb);
        start = ends[p];
        cm_status st = bpe_piece(t, nb, w, out);
        if (st)
            return st;
    }
    return CM_OK;
}

size_t cm_bpe_decode(const cm_tokenizer *t, const char *s, size_t n, char *buf, size_t cap)
{
    size_t out = 0, adv;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n; i += adv) {
        uint32_t c = cm_utf8_decode(u + i, n - i, &adv);
        if (c < 0x144 && t->byte_inv[c] >= 0) {
            if (out < cap)
                buf[out] = (char)t->byte_inv[c];
            out++;
        } else {
            /* not a byte-alphabet character: keep its bytes as they are */
            for (size_t k = 0; k < adv; k++, out++)
                if (out < cap)
                    buf[out] = s[i + k];
        }
    }
    return out;
}
