/* tokenizer.h - text <-> token ids, from a GGUF file's tokenizer.* metadata.
 *
 * Two families, as in llama.cpp:
 *   tokenizer.ggml.model = "llama": SentencePiece-style (scores, byte
 *     fallback <0xXX>, the U+2581 space marker, optional space prefix);
 *   tokenizer.ggml.model = "gpt2": byte-level BPE (merges) with a
 *     pre-tokenizer chosen by tokenizer.ggml.pre: gpt-2 (also "default"),
 *     starcoder, refact, deepseek-coder, deepseek-llm, llama3 (llama-bpe),
 *     qwen2.
 * Results must equal llama.cpp's token for token. */
#ifndef CM_TOKENIZER_H
#define CM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "formats/gguf.h"
#include "util/status.h"

typedef struct cm_tokenizer cm_tokenizer;

/* Builds the tokenizer from f's metadata; the tokenizer copies what it needs
 * and does not reference f after returning.  CM_E_RANGE if f carries no
 * tokenizer at all, CM_E_UNSUPPORTED naming the model/pre it does not know. */
cm_status cm_tokenizer_load(const gguf_file *f, cm_tokenizer **out, cm_err *err);
void cm_tokenizer_free(cm_tokenizer *t);

int32_t cm_tok_n_vocab(const cm_tokenizer *t);
int32_t cm_tok_bos(const cm_tokenizer *t);     /* -1 if none */
int32_t cm_tok_eos(const cm_tokenizer *t);     /* -1 if none */
int cm_tok_add_bos(const cm_tokenizer *t);     /* whether prompts get BOS by default */
int cm_tok_is_eog(const cm_tokenizer *t, int32_t id); /* eos, eot, eom, ... */
/* Fill-in-the-middle tokens: from tokenizer.ggml.fim_{pre,suf,mid}_token_id,
 * else found by their texts as llama.cpp finds them (StarCoder/SantaCoder
 * <fim_prefix>, DeepSeek-Coder <｜fim▁begin｜>, CodeLlama <PRE> <SUF> <MID>,
 * Qwen2.5-Coder and CodeGemma <|fim_prefix|>, ...); -1 where absent. */
typedef enum { CM_FIM_PRE, CM_FIM_SUF, CM_FIM_MID } cm_fim_part;
int32_t cm_tok_fim(const cm_tokenizer *t, cm_fim_part part);
const char *cm_tok_model(const cm_tokenizer *t); /* "llama" or "gpt2" */
const char *cm_tok_pre(const cm_tokenizer *t);   /* pre-tokenizer name or "" */

/* Encodes len bytes of text.  add_bos prepends BOS when the vocabulary has
 * one.  parse_special: if 1, text equal to a control/special token's text
 * becomes that token; if 0 special-token text is tokenized as plain text
 * (user-defined tokens still match, as in llama.cpp).  *ids is malloc'ed;
 * the caller frees it.  Invalid UTF-8 is handled as llama.cpp does (never a
 * crash). */
cm_status cm_tokenize(const cm_tokenizer *t, const char *text, size_t len,
                      int add_bos, int parse_special,
                      int32_t **ids, size_t *n_ids, cm_err *err);

/* Token healing.  A text cut where an editor's cursor is (after a newline
 * that the tokenizer would merge with the indentation that follows, in the
 * middle of a word) ends in a token the model seldom saw end a text, so it
 * continues badly.  cm_heal_take leaves that last token out of the ids and
 * keeps its bytes and the tokens that start with them; the first token
 * generated is then one of those (cm_heal_logits masks the others) and the
 * output leaves the bytes out.  A control token, or one longer than
 * CM_HEAL_MAX bytes, stays (len 0); so does any token when the list cannot
 * be allocated.  Finding the tokens reads every token's text (~2 ms for
 * 49,152), so it is done here, before generation, not per sampled token. */
#define CM_HEAL_MAX 64
typedef struct {
    char text[CM_HEAL_MAX];
    size_t len;       /* 0: nothing taken */
    int32_t *allowed; /* the tokens whose text starts with text, ascending */
    int32_t n_allowed;
} cm_heal;
/* Overwrites h (cm_heal_free an earlier one first). */
void cm_heal_take(const cm_tokenizer *t, int32_t *ids, size_t *n_ids, cm_heal *h);
void cm_heal_free(cm_heal *h);
/* logits[id] = -inf for every id < n_logits not in h's list (nothing when
 * h->len is 0): one pass, no allocation. */
void cm_heal_logits(const cm_heal *h, float *logits, int32_t n_logits);

/* [BOS] <PRE> prefix <SUF> suffix <MID>: the prompt a fill-in-the-middle
 * model completes with the middle.  BOS when add_bos and the vocabulary has
 * one.  CM_E_UNSUPPORTED when it lacks any of the three FIM tokens.  heal
 * (or NULL): the prefix's last token taken off (cm_heal_take). */
cm_status cm_tokenize_infill(const cm_tokenizer *t, const char *prefix, size_t plen,
                             const char *suffix, size_t slen, int add_bos, cm_heal *heal,
                             int32_t **ids, size_t *n_ids, cm_err *err);

/* The bytes token id stands for (byte-level decoding for gpt2, U+2581 ->
 * space and <0xXX> -> byte for llama).  Control tokens give "" unless
 * show_special.  Writes at most cap bytes and returns the full length. */
size_t cm_token_piece(const cm_tokenizer *t, int32_t id, int show_special,
                      char *buf, size_t cap);

/* Streaming output never splits a UTF-8 character: bytes of an incomplete
 * sequence are held back until the rest arrives (or flushed at the end). */
typedef struct {
    unsigned char pend[4];
    int n_pend;
} cm_utf8_stream;

/* Appends n bytes; writes the complete characters to out (capacity n + 4)
 * and returns how many bytes were written. */
size_t cm_utf8_stream_push(cm_utf8_stream *s, const char *in, size_t n, char *out);
/* Returns and clears whatever is pending (an invalid tail) into out[4]. */
size_t cm_utf8_stream_flush(cm_utf8_stream *s, char *out);

#endif
