/* unicode.c - code point classes and lenient UTF-8. */
#include "tokenizer/unicode.h"

uint8_t cm_ucp_flags(uint32_t cp)
{
    if (cp < 256)
        return cm_ulatin1_flags[cp];
    if (cp > CM_UNICODE_MAX)
        return 0;
    /* Binary search for the last run starting at or before cp; the table
     * starts at 0 so one always exists. */
    unsigned lo = 0, hi = cm_urange_count;
    while (hi - lo > 1) {
        unsigned mid = lo + (hi - lo) / 2;
        if (cm_urange_table[mid].first <= cp)
            lo = mid;
        else
            hi = mid;
    }
    return cm_urange_table[lo].flags;
}

uint32_t cm_utf8_decode(const unsigned char *s, size_t n, size_t *adv)
{
    unsigned char c = s[0];
    int len = cm_utf8_len(c);
    uint32_t cp;
    *adv = 1;
    if (len == 1)
        return c < 0x80 ? c : CM_UNICODE_REPLACEMENT;
    if (c >= 0xF8 || (size_t)len > n)
        return CM_UNICODE_REPLACEMENT;
    cp = c & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return CM_UNICODE_REPLACEMENT;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp > CM_UNICODE_MAX)
        return CM_UNICODE_REPLACEMENT;
    *adv = (size_t)len;
    return cp;
}

int cm_utf8_encode(uint32_t cp, unsigned char *out)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
