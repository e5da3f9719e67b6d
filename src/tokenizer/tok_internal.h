/* tok_internal.h - what tokenizer.c, tok_spm.c, tok_bpe.c and pretok.c
 * share: the tokenizer struct, a string interning table, a pair map, a
 * bigram heap and the per-call scratch buffers. */
#ifndef CM_TOK_INTERNAL_H
#define CM_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "util/names.h"

/* tokenizer.ggml.token_type values. */
enum {
    CM_TT_UNDEFINED = 0, CM_TT_NORMAL = 1, CM_TT_UNKNOWN = 2, CM_TT_CONTROL = 3,
    CM_TT_USER = 4, CM_TT_UNUSED = 5, CM_TT_BYTE = 6
};

/* Per-token attributes beyond the type (llama.cpp derives these from the
 * model name and token texts, not from the file). */
enum { CM_TA_LSTRIP = 1, CM_TA_RSTRIP = 2, CM_TA_EOG = 4 };

/* Pre-tokenizers, i.e. the regex sequences of llama.cpp. */
typedef enum {
    CM_PRE_NONE,           /* SentencePiece: no pre-tokenization */
    CM_PRE_DEFAULT,        /* llama.cpp's fallback sequence for "default" */
    CM_PRE_GPT2,
    CM_PRE_STARCODER,      /* also refact, smollm, codeshell */
    CM_PRE_DEEPSEEK_CODER,
    CM_PRE_DEEPSEEK_LLM,
    CM_PRE_LLAMA3,
    CM_PRE_QWEN2
} cm_pre_kind;

/* Interned byte strings: index -> bytes, and bytes -> index through a
 * seeded index (util/names.h), since the strings come from the file. */
typedef struct {
    char *bytes;
    size_t nbytes, capbytes;
    uint32_t *off, *len;
    int32_t n, cap;
    cm_names index;
} cm_strtab;

cm_status cm_strtab_init(cm_strtab *t, size_t expected);
void cm_strtab_free(cm_strtab *t);
/* Index of the string, or -1. */
int32_t cm_strtab_find(const cm_strtab *t, const void *s, size_t n);
/* Index of the string, adding it if new; -1 when out of memory. */
int32_t cm_strtab_intern(cm_strtab *t, const void *s, size_t n);

/* BPE merges: (left string, right string) -> (rank, merged string), an
 * stb_ds hash map keyed by left << 32 | right. */
typedef struct {
    struct cm_merge *map;
} cm_pairmap;

struct cm_tokenizer {
    int spm;                  /* 1: "llama" (SentencePiece), 0: "gpt2" */
    cm_pre_kind pre;
    char pre_name[48];
    int32_t n_vocab;
    cm_strtab strs;           /* distinct texts; tokens, then BPE merge parts */
    int32_t *tok_str;         /* token id -> string index */
    int32_t *str_tok;         /* string index -> token id (last wins), or -1 */
    uint8_t *type;            /* CM_TT_*, after llama.cpp's overrides */
    uint8_t *attr;            /* CM_TA_* */
    float *score;             /* SPM merge scores */
    int32_t bos, eos, unk, eot, eom, pad;
    int32_t fim[3];           /* fill-in-the-middle prefix, suffix, middle; -1: none */
    int add_bos, add_space_prefix, ignore_merges;
    int max_tok_len;
    /* special tokens split off before pre-tokenization, longest first */
    int32_t *special;
    int32_t n_special;
    /* a byte trie over their texts, to find quickly which ones occur */
    int32_t *trie_child, *trie_sibling, *special_node;
    uint8_t *trie_byte;
    int32_t trie_n;
    uint8_t special_first[256];
    /* SPM: <0xXX> tokens; ASCII characters in no multi-character token */
    int32_t byte_tok[256];
    uint8_t spm_alone[128];
    /* SPM: the token of each two-byte text (b0 << 8 | b1), or -1: most
     * candidate pairs are two single bytes, and an array beats a hash */
    int32_t *text2_tok;
    /* BPE */
    cm_pairmap merges;
    int32_t byte_sid[256];        /* string of the mapped char of byte b */
    uint8_t byte_utf8[256][2];    /* GPT-2 byte -> unicode mapping, as UTF-8 */
    uint8_t byte_ulen[256];
    int16_t byte_inv[0x144];      /* mapped code point -> byte, or -1 */
    int32_t single_byte_tok[256]; /* token whose text is that one byte (SPM too) */
    /* the merge of the symbols of bytes b0, b1 (b0 << 8 | b1) as its place
     * in merges.map, or -1: every piece starts as single bytes */
    int32_t *byte_merge;
};

static inline const char *cm_tok_text(const cm_tokenizer *t, int32_t id, size_t *len)
{
    int32_t s = t->tok_str[id];
    *len = t->strs.len[s];
    return t->strs.bytes + t->strs.off[s];
}

/* Growable output ids. */
typedef struct {
    int32_t *v;
    size_t n, cap;
} cm_ids;

cm_status cm_ids_push(cm_ids *o, int32_t id);

/* A symbol being merged: bytes [start, start + len) of the working text. */
typedef struct {
    int32_t sid;          /* BPE: interned string of the symbol, or -1 */
    uint32_t start, len;  /* len 0: merged away */
    int32_t prev, next;
} cm_sym;

/* A candidate merge; the heap pops the smallest key first. */
typedef struct {
    uint64_t key;
    int32_t left, right;
    uint32_t size;  /* left.len + right.len when queued, to spot stale ones */
    int32_t res;    /* BPE: merged string */
} cm_bigram;

void cm_heap_push(cm_bigram *h, size_t *n, cm_bigram b);
cm_bigram cm_heap_pop(cm_bigram *h, size_t *n);

/* Scratch buffers for one cm_tokenize call, grown as needed. */
typedef struct {
    cm_sym *sym;
    size_t sym_cap;
    cm_bigram *heap;
    size_t heap_cap;
    unsigned char *bytes;
    size_t bytes_cap;
    uint32_t *cp;
    uint8_t *fl;
    uint32_t *ends_a, *ends_b;
    size_t cp_cap;
    /* the distinct pieces (BPE) or chunks (SPM) seen in this call and their
     * tokens: code repeats its words and lines, and a repeat then costs one
     * lookup instead of a merge per token.  Piece i's tokens are
     * piece_ids[piece_at[i]...], piece_n[i] of them (stb_ds arrays). */
    cm_strtab pieces;
    uint32_t *piece_at, *piece_n;
    int32_t *piece_ids;
} cm_work;

/* The piece cache: when the n bytes at s were encoded earlier in this call,
 * pushes their tokens to out and returns 1 (*st: CM_OK or CM_E_NOMEM);
 * else returns 0.  After encoding such bytes, record remembers the tokens
 * out got from index first on. */
int cm_piece_replay(cm_work *w, const void *s, size_t n, cm_ids *out, cm_status *st);
cm_status cm_piece_record(cm_work *w, const void *s, size_t n, const cm_ids *out, size_t first);

/* Makes *p hold at least need elements of size elem. */
cm_status cm_reserve(void **p, size_t *cap, size_t need, size_t elem);
/* Room for n symbols and their bigrams. */
cm_status cm_work_symbols(cm_work *w, size_t n);

/* tok_spm.c: text is the raw fragment; prefix adds the U+2581 marker. */
cm_status cm_spm_build(cm_tokenizer *t, cm_err *err);
cm_status cm_spm_encode(const cm_tokenizer *t, const char *text, size_t len,
                        int prefix, cm_work *w, cm_ids *out);
/* tok_bpe.c */
cm_status cm_bpe_encode(const cm_tokenizer *t, const char *text, size_t len,
                        cm_work *w, cm_ids *out);
cm_status cm_bpe_build(cm_tokenizer *t, const gguf_str *merges, uint64_t n_merges,
                       cm_err *err);
void cm_bpe_free(cm_tokenizer *t);
size_t cm_bpe_decode(const cm_tokenizer *t, const char *s, size_t n, char *buf,
                     size_t cap);

/* pretok.c: splits cp[0..n) into pieces; returns the piece count and sets
 * *ends to the pieces' end offsets (pointing into w's buffers). */
size_t cm_pretok_split(cm_pre_kind k, const uint32_t *cp, const uint8_t *fl,
                       size_t n, cm_work *w, const uint32_t **ends);
/* Name -> kind; 0 if unknown. */
int cm_pretok_lookup(const char *name, size_t len, cm_pre_kind *out);

#endif
