/* unicode.h - the little Unicode the tokenizers need: lenient UTF-8
 * decoding (as llama.cpp does it) and per-code-point classes for the
 * pre-tokenizer scanners. */
#ifndef CM_UNICODE_H
#define CM_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Class flags; must match tools/gen_unicode.py. */
enum {
    CM_U_LETTER = 1 << 0,  /* \p{L} */
    CM_U_NUMBER = 1 << 1,  /* \p{N} */
    CM_U_PUNCT = 1 << 2,   /* \p{P} */
    CM_U_SYMBOL = 1 << 3,  /* \p{S} */
    CM_U_MARK = 1 << 4,    /* \p{M} */
    CM_U_SEPAR = 1 << 5,   /* \p{Z} */
    CM_U_CONTROL = 1 << 6, /* \p{C} except unassigned */
    CM_U_SPACE = 1 << 7    /* \s: the White_Space property */
};

typedef struct {
    uint32_t first; /* first code point of a run sharing these flags */
    uint8_t flags;
} cm_urange;

extern const cm_urange cm_urange_table[];
extern const unsigned cm_urange_count;
extern const uint8_t cm_ulatin1_flags[256];
extern const char cm_unicode_version[];

#define CM_UNICODE_MAX 0x10FFFFu
#define CM_UNICODE_REPLACEMENT 0xFFFDu

/* Flags of code point cp (0 for unassigned or out of range). */
uint8_t cm_ucp_flags(uint32_t cp);

/* Bytes in the UTF-8 sequence led by byte c, from its top four bits alone
 * (1 for ASCII and for stray continuation bytes). */
static inline int cm_utf8_len(unsigned char c)
{
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[c >> 4];
}

/* Decodes one code point from s[0..n) (n >= 1) and sets *adv to the bytes
 * used.  Like llama.cpp: sequences are checked only for the right number of
 * continuation bytes (overlong forms and surrogates pass); anything else, and
 * values above U+10FFFF, give U+FFFD consuming one byte. */
uint32_t cm_utf8_decode(const unsigned char *s, size_t n, size_t *adv);

/* Writes cp (<= U+10FFFF) as UTF-8 to out, returns the byte count (1..4). */
int cm_utf8_encode(uint32_t cp, unsigned char *out);

#endif
