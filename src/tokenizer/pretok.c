/* pretok.c - the pre-tokenizers of byte-level BPE vocabularies.
 *
 * llama.cpp describes each pre-tokenizer as a sequence of regexes.  Each
 * regex is applied to every current piece in turn: its matches become pieces
 * and so do the unmatched stretches between them (nothing is dropped); the
 * next regex then splits those pieces further.  Instead of a regex engine,
 * each regex here is a hand-written scanner over code points that gives the
 * same leftmost, first-alternative-wins match a backtracking engine would.
 *
 * Classes: \s is the Unicode White_Space property, \p{L}/\p{N}/\p{P} the
 * general categories (see unicode.h).  Where llama.cpp feeds a regex with
 * literal non-ASCII ranges to std::wregex it first replaces non-ASCII
 * whitespace by U+000B, so such characters only ever match \s; the CJK and
 * deepseek-llm classes below exclude them for that reason. */
#include <string.h>

#include "tokenizer/tok_internal.h"

typedef int (*rx_find)(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p,
                       size_t *s, size_t *e);

#define U_S CM_U_SPACE
#define U_L CM_U_LETTER
#define U_N CM_U_NUMBER
#define U_P CM_U_PUNCT

/* [^\s\p{L}\p{N}] */
static inline int is_other(uint8_t f)
{
    return !(f & (U_S | U_L | U_N));
}

static inline int is_crlf(uint32_t c)
{
    return c == '\r' || c == '\n';
}

/* End of the run of code points having one of the bits, from q. */
static inline size_t run(const uint8_t *fl, size_t n, size_t q, uint8_t bits)
{
    while (q < n && (fl[q] & bits))
        q++;
    return q;
}

static inline size_t run_other(const uint8_t *fl, size_t n, size_t q)
{
    while (q < n && is_other(fl[q]))
        q++;
    return q;
}

/* 's|'t|'re|'ve|'m|'ll|'d after the apostrophe at p; fold: also uppercase
 * (llama3's (?:'[sS]|...)).  Returns the match length or 0. */
static size_t contraction(const uint32_t *cp, size_t n, size_t p, int fold)
{
    uint32_t a = cp[p + 1], b = p + 2 < n ? cp[p + 2] : 0;
    if (fold) {
        a = (a >= 'A' && a <= 'Z') ? a + 32 : a;
        b = (b >= 'A' && b <= 'Z') ? b + 32 : b;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* \s+(?!\S)|\s+ at whitespace p: a run followed by a non-space leaves its
 * last character to join what follows. */
static size_t ws_run(const uint8_t *fl, size_t n, size_t p)
{
    size_t e = run(fl, n, p, U_S);
    if (e - p > 1 && e < n)
        return e - 1;
    return e > p ? e : p + 1;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * (llama.cpp's gpt-2 regex lacks the final \s+, but a lone whitespace
 * before a non-space is then an unmatched stretch of one character, which
 * is a piece all the same). */
static size_t m_gpt2(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p)
{
    size_t k;
    if (cp[p] == '\'' && p + 1 < n && (k = contraction(cp, n, p, 0)))
        return p + k;
    size_t q = (cp[p] == ' ' && p + 1 < n) ? p + 1 : p;
    uint8_t f = fl[q];
    if (f & U_L)
        return run(fl, n, q, U_L);
    if (f & U_N)
        return run(fl, n, q, U_N);
    if (is_other(f))
        return run_other(fl, n, q);
    return ws_run(fl, n, p);
}

/* (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])
 * |[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxdig}| ?[^\s\p{L}\p{N}]+[\r\n]*
 * |\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t m_llama3(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p,
                       size_t maxdig)
{
    uint32_t c = cp[p];
    uint8_t f = fl[p];
    size_t k;
    if (c == '\'' && p + 1 < n && (k = contraction(cp, n, p, 1)))
        return p + k;
    if (!is_crlf(c) && !(f & U_N) && ((f & U_L) || (p + 1 < n && (fl[p + 1] & U_L))))
        return run(fl, n, p + 1, U_L);
    if (f & U_N) {
        size_t e = p;
        while (e < n && (fl[e] & U_N) && e - p < maxdig)
            e++;
        return e;
    }
    size_t q = (c == ' ' && p + 1 < n) ? p + 1 : p;
    if (is_other(fl[q])) {
        size_t e = run_other(fl, n, q);
        while (e < n && is_crlf(cp[e]))
            e++;
        return e;
    }
    /* whitespace: \s*[\r\n]+ reaches the run's last CR/LF if it has one */
    size_t e = p, last_nl = 0;
    for (; e < n && (fl[e] & U_S); e++)
        if (is_crlf(cp[e]))
            last_nl = e + 1;
    if (last_nl)
        return last_nl;
    return ws_run(fl, n, p);
}

static size_t m_llama3_3(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p)
{
    return m_llama3(cp, fl, n, p, 3);
}

static size_t m_qwen2(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p)
{
    return m_llama3(cp, fl, n, p, 1);
}

/* [\r\n] */
static size_t m_crlf(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p)
{
    (void)fl, (void)n;
    return is_crlf(cp[p]) ? p + 1 : 0;
}

/* \p{N} */
static size_t m_digit(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p)
{
    (void)cp, (void)n;
    return (fl[p] & U_N) ? p + 1 : 0;
}

/* \p{N}+ */
static size_t m_digits(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p)
{
    (void)cp;
    return (fl[p] & U_N) ? run(fl, n, p, U_N) : 0;
}

/* [0-9][0-9][0-9] */
static size_t m_ascii3(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p)
{
    (void)fl;
    if (p + 3 > n)
        return 0;
    for (size_t i = p; i < p + 3; i++)
        if (cp[i] < '0' || cp[i] > '9')
            return 0;
    return p + 3;
}

/* \s?X+ for a class X given as a predicate. */
#define WS_OPT_RUN(name, X)                                                   \
    static size_t name(const uint32_t *cp, const uint8_t *fl, size_t n,       \
                       size_t p)                                              \
    {                                                                         \
        size_t q = p;                                                         \
        if ((fl[p] & U_S) && p + 1 < n && X(cp[p + 1], fl[p + 1]))            \
            q = p + 1;                                                        \
        else if (!X(cp[p], fl[p]))                                            \
            return 0;                                                         \
        while (q < n && X(cp[q], fl[q]))                                      \
            q++;                                                              \
        return q;                                                             \
    }

static inline int x_letter(uint32_t c, uint8_t f)
{
    (void)c;
    return (f & U_L) != 0;
}

static inline int x_punct(uint32_t c, uint8_t f)
{
    (void)c;
    return (f & U_P) != 0;
}

WS_OPT_RUN(m_ws_letters, x_letter)
WS_OPT_RUN(m_ws_punct, x_punct)

/* [\p{P}\$\+<=>\^`\|]+ (llama.cpp's "default" sequence) */
static inline int x_default_punct(uint32_t c, uint8_t f)
{
    return (f & U_P) || (c < 0x80 && c && strchr("$+<=>^`|", (int)c));
}

static size_t m_default_punct(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p)
{
    size_t q = p;
    while (q < n && x_default_punct(cp[q], fl[q]))
        q++;
    return q > p ? q : 0;
}

/* [一-龥ࠀ-一가-퟿]+ */
static inline int x_cjk(uint32_t c, uint8_t f)
{
    return ((c >= 0x0800 && c <= 0x9FA5) || (c >= 0xAC00 && c <= 0xD7FF)) && !(f & U_S);
}

static size_t m_cjk(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p)
{
    size_t q = p;
    while (q < n && x_cjk(cp[q], fl[q]))
        q++;
    return q > p ? q : 0;
}

typedef struct {
    uint32_t lo, hi;
} cp_range;

/* deepseek-llm's letter class [A-Za-zµÀ-ÖØ-öø-ƺ...], sorted. */
static const cp_range dsl_letters[] = {
    {0x0041, 0x005A}, {0x0061, 0x007A}, {0x00B5, 0x00B5}, {0x00C0, 0x00D6},
    {0x00D8, 0x00F6}, {0x00F8, 0x01BA}, {0x01BC, 0x01BF}, {0x01C4, 0x0293},
    {0x0295, 0x02AF}, {0x0370, 0x0373}, {0x0376, 0x0377}, {0x037B, 0x037D},
    {0x037F, 0x037F}, {0x0386, 0x0386}, {0x0388, 0x038A}, {0x038C, 0x038C},
    {0x038E, 0x03A1}, {0x03A3, 0x03F5}, {0x03F7, 0x0481}, {0x048A, 0x052F},
    {0x0531, 0x0556}, {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77},
    {0x1D79, 0x1D9A}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D}, {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3},
    {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC},
    {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115},
    {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126}, {0x2128, 0x2128},
    {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F},
    {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B},
    {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE}, {0x2CF2, 0x2CF3}, {0xA640, 0xA66D},
    {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787}, {0xA78B, 0xA78E},
    {0xAB70, 0xABBF}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A}, {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};

/* deepseek-llm's punctuation class [!-/:-~！-／：-～‘-‟　-。], sorted. */
static const cp_range dsl_punct[] = {
    {0x0021, 0x002F}, {0x003A, 0x007E}, {0x2018, 0x201F},
    {0x3000, 0x3002}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E},
};

static int in_ranges(const cp_range *r, size_t nr, uint32_t c)
{
    size_t lo = 0, hi = nr;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < r[mid].lo)
            hi = mid;
        else if (c > r[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static inline int x_dsl_letter(uint32_t c, uint8_t f)
{
    return in_ranges(dsl_letters, sizeof dsl_letters / sizeof *dsl_letters, c) &&
           !(c >= 0x80 && (f & U_S));
}

static inline int x_dsl_punct(uint32_t c, uint8_t f)
{
    return in_ranges(dsl_punct, sizeof dsl_punct / sizeof *dsl_punct, c) &&
           !(c >= 0x80 && (f & U_S));
}

WS_OPT_RUN(m_dsl_letters, x_dsl_letter)
WS_OPT_RUN(m_dsl_punct, x_dsl_punct)

/* Leftmost match at or after p, trying each start in turn. */
#define FIND_BY_MATCH(name, match)                                            \
    static int name(const uint32_t *cp, const uint8_t *fl, size_t n,         \
                    size_t p, size_t *s, size_t *e)                           \
    {                                                                         \
        for (; p < n; p++) {                                                  \
            size_t end = match(cp, fl, n, p);                                 \
            if (end) {                                                        \
                *s = p;                                                       \
                *e = end;                                                     \
                return 1;                                                     \
            }                                                                 \
        }                                                                     \
        return 0;                                                             \
    }

FIND_BY_MATCH(f_gpt2, m_gpt2)
FIND_BY_MATCH(f_llama3, m_llama3_3)
FIND_BY_MATCH(f_qwen2, m_qwen2)
FIND_BY_MATCH(f_crlf, m_crlf)
FIND_BY_MATCH(f_digit, m_digit)
FIND_BY_MATCH(f_digits, m_digits)
FIND_BY_MATCH(f_ascii3, m_ascii3)
FIND_BY_MATCH(f_ws_letters, m_ws_letters)
FIND_BY_MATCH(f_ws_punct, m_ws_punct)
FIND_BY_MATCH(f_default_punct, m_default_punct)
FIND_BY_MATCH(f_cjk, m_cjk)
FIND_BY_MATCH(f_dsl_letters, m_dsl_letters)
FIND_BY_MATCH(f_dsl_punct, m_dsl_punct)

/* \s+$: only a whitespace run reaching the end matches, so a run that stops
 * short is skipped whole (trying each of its starts would be quadratic). */
static int f_ws_end(const uint32_t *cp, const uint8_t *fl, size_t n, size_t p,
                    size_t *s, size_t *e)
{
    (void)cp;
    while (p < n) {
        if (!(fl[p] & U_S)) {
            p++;
            continue;
        }
        size_t q = run(fl, n, p, U_S);
        if (q == n) {
            *s = p;
            *e = n;
            return 1;
        }
        p = q;
    }
    return 0;
}

typedef struct {
    const char *name;
    cm_pre_kind kind;
} pre_name;

static const pre_name pre_names[] = {
    {"default", CM_PRE_DEFAULT},
    {"gpt-2", CM_PRE_GPT2},
    {"starcoder", CM_PRE_STARCODER},
    {"refact", CM_PRE_STARCODER},
    {"smollm", CM_PRE_STARCODER},
    {"codeshell", CM_PRE_STARCODER},
    {"deepseek-coder", CM_PRE_DEEPSEEK_CODER},
    {"deepseek-llm", CM_PRE_DEEPSEEK_LLM},
    {"llama3", CM_PRE_LLAMA3},
    {"llama-v3", CM_PRE_LLAMA3},
    {"llama-bpe", CM_PRE_LLAMA3},
    {"qwen2", CM_PRE_QWEN2},
};

int cm_pretok_lookup(const char *name, size_t len, cm_pre_kind *out)
{
    for (size_t i = 0; i < sizeof pre_names / sizeof *pre_names; i++) {
        if (strlen(pre_names[i].name) == len && !memcmp(pre_names[i].name, name, len)) {
            *out = pre_names[i].kind;
            return 1;
        }
    }
    return 0;
}

/* The regex sequence of each pre-tokenizer (NULL-terminated). */
static const rx_find *sequence(cm_pre_kind k)
{
    static const rx_find seq_default[] = {f_default_punct, f_gpt2, f_digits, f_ascii3, NULL};
    static const rx_find seq_gpt2[] = {f_gpt2, NULL};
    static const rx_find seq_starcoder[] = {f_digit, f_gpt2, NULL};
    static const rx_find seq_dsc[] = {f_crlf, f_ws_letters, f_ws_punct, f_cjk, f_digit, NULL};
    static const rx_find seq_dsl[] = {f_crlf, f_dsl_letters, f_dsl_punct, f_ws_end,
                                      f_cjk, f_digits, NULL};
    static const rx_find seq_llama3[] = {f_llama3, NULL};
    static const rx_find seq_qwen2[] = {f_qwen2, NULL};
    static const rx_find seq_none[] = {NULL};
    switch (k) {
    case CM_PRE_DEFAULT: return seq_default;
    case CM_PRE_GPT2: return seq_gpt2;
    case CM_PRE_STARCODER: return seq_starcoder;
    case CM_PRE_DEEPSEEK_CODER: return seq_dsc;
    case CM_PRE_DEEPSEEK_LLM: return seq_dsl;
    case CM_PRE_LLAMA3: return seq_llama3;
    case CM_PRE_QWEN2: return seq_qwen2;
    case CM_PRE_NONE: break;
    }
    return seq_none;
}

/* Splits piece [base, base + n) by one regex, appending piece ends to out:
 * each match, and each unmatched stretch before a match or at the end. */
static void split_piece(rx_find find, const uint32_t *cp, const uint8_t *fl, size_t base,
                        size_t n, uint32_t *out, size_t *n_out)
{
    size_t p = 0, s, e;
    while (p < n && find(cp + base, fl + base, n, p, &s, &e)) {
        if (s > p)
            out[(*n_out)++] = (uint32_t)(base + s);
        out[(*n_out)++] = (uint32_t)(base + e);
        p = e;
    }
    if (p < n)
        out[(*n_out)++] = (uint32_t)(base + n);
}

size_t cm_pretok_split(cm_pre_kind k, const uint32_t *cp, const uint8_t *fl, size_t n,
                       cm_work *w, const uint32_t **ends)
{
    uint32_t *cur = w->ends_a, *nxt = w->ends_b;
    size_t n_cur = 0;
    if (n)
        cur[n_cur++] = (uint32_t)n;
    for (const rx_find *rx = sequence(k); *rx; rx++) {
        size_t n_nxt = 0, start = 0;
        for (size_t i = 0; i < n_cur; i++) {
            split_piece(*rx, cp, fl, start, cur[i] - start, nxt, &n_nxt);
            start = cur[i];
        }
        uint32_t *tmp = cur;
        cur = nxt;
        nxt = tmp;
        n_cur = n_nxt;
    }
    *ends = cur;
    return n_cur;
}
