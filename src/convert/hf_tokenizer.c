/* hf_tokenizer.c - Hugging Face tokenizer files -> GGUF tokenizer.* keys.
 *
 * Two sources, as in llama.cpp's converter:
 *   tokenizer.model  SentencePiece ModelProto (protobuf) -> model "llama":
 *                    pieces, scores and token types;
 *   tokenizer.json   byte-level BPE -> model "gpt2": vocabulary, merges,
 *                    token types and a pre-tokenizer name recognized from
 *                    the pre_tokenizer's regular expressions.
 * Special token ids and add_bos/add_eos flags come from tokenizer.json's
 * added_tokens, tokenizer_config.json and config.json, with gguf-py's
 * precedence.  A byte-level tokenizer.json wins over tokenizer.model (the
 * Llama 3 layout); a SentencePiece-style tokenizer.json (byte_fallback)
 * defers to tokenizer.model. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "convert/convert.h"
#include "util/atomic_file.h"
#include "util/json.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

#define MAX_TOKENIZER_BYTES ((size_t)1 << 29)
#define MAX_VOCAB ((int64_t)1 << 24)

typedef struct {
    char **tok;      /* NUL-terminated, owned */
    float *score;    /* NULL for BPE vocabularies */
    int32_t *type;
    int64_t n;
} vocab;

static void warn(FILE *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(FILE *log, const char *fmt, ...)
{
    if (!log)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("warning: ", log);
    vfprintf(log, fmt, ap);
    fputc('\n', log);
    va_end(ap);
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* ------------------------------------------------------------ vocab */

static void vocab_free(vocab *v)
{
    for (int64_t i = 0; v->tok && i < v->n; i++)
        free(v->tok[i]);
    free(v->tok);
    free(v->score);
    free(v->type);
    memset(v, 0, sizeof *v);
}

/* Every id starts as "[PADi]", unused, score -10000 (gguf-py's filler). */
static cm_status vocab_init(vocab *v, int64_t n, int with_scores, cm_err *err)
{
    memset(v, 0, sizeof *v);
    if (n < 1 || n > MAX_VOCAB)
        return cm_fail(err, CM_E_FORMAT, "implausible vocabulary size %lld", (long long)n);
    v->n = n;
    v->tok = calloc((size_t)n, sizeof *v->tok);
    v->type = malloc((size_t)n * sizeof *v->type);
    v->score = with_scores ? malloc((size_t)n * sizeof *v->score) : NULL;
    if (!v->tok || !v->type || (with_scores && !v->score)) {
        vocab_free(v);
        return cm_fail(err, CM_E_NOMEM, "out of memory for the vocabulary");
    }
    for (int64_t i = 0; i < n; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "[PAD%lld]", (long long)i);
        v->type[i] = TT_UNUSED;
        if (v->score)
            v->score[i] = -10000.0f;
        if (!(v->tok[i] = strdup(buf))) {
            vocab_free(v);
            return cm_fail(err, CM_E_NOMEM, "out of memory for the vocabulary");
        }
    }
    return CM_OK;
}

/* GGUF strings here are C strings, so a token may not contain NUL. */
static cm_status vocab_set(vocab *v, int64_t id, const char *s, size_t len, int type, cm_err *err)
{
    if (memchr(s, 0, len))
        return cm_fail(err, CM_E_UNSUPPORTED, "token %lld contains a NUL byte", (long long)id);
    char *c = strndup(s, len);
    if (!c)
        return cm_fail(err, CM_E_NOMEM, "out of memory for the vocabulary");
    free(v->tok[id]);
    v->tok[id] = c;
    v->type[id] = type;
    return CM_OK;
}

/* gguf-py's TextModel.does_token_look_special. */
static int looks_special(const char *t)
{
    size_t n = strlen(t);
#define PRE(p) (!strncmp(t, p, strlen(p)))
#define SUF(s) (n >= strlen(s) && !strcmp(t + n - strlen(s), s))
    return !strcmp(t, "<pad>") || !strcmp(t, "<mask>") || !strcmp(t, "<2mass>") ||
           !strcmp(t, "[@BOS@]") || (PRE("<|") && SUF("|>")) ||
           (PRE("<\xef\xbd\x9c") && SUF("\xef\xbd\x9c>")) || (PRE("<unused") && SUF(">"));
#undef PRE
#undef SUF
}

/* Added tokens: control if special (or looking special), else user-defined
 * with SentencePiece's U+2581 turned back into spaces. */
static cm_status set_added(vocab *v, int64_t id, const char *content, int special, cm_err *err)
{
    if (special || looks_special(content))
        return vocab_set(v, id, content, strlen(content), TT_CONTROL, err);
    size_t n = strlen(content), k = 0;
    char *t = malloc(n + 1);
    if (!t)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n;) {
        if (!strncmp(content + i, "\xe2\x96\x81", 3)) {
            t[k++] = ' ';
            i += 3;
        } else {
            t[k++] = content[i++];
        }
    }
    cm_status s = vocab_set(v, id, t, k, TT_USER, err);
    free(t);
    return s;
}

static cm_status write_vocab(gguf_writer *w, const vocab *v)
{
    gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", (const char *const *)v->tok, (uint64_t)v->n);
    if (v->score)
        gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_FLOAT32, v->score, (uint64_t)v->n);
    return gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_INT32, v->type,
                               (uint64_t)v->n);
}

/* ------------------------------------------------------------ SentencePiece */

typedef struct {
    const uint8_t *p, *end;
} pb;

static int pb_varint(pb *b, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && b->p < b->end; shift += 7) {
        uint8_t c = *b->p++;
        *v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80))
            return 0;
    }
    return -1;
}

/* Reads one field: key, then the payload (sub holds length-delimited
 * bytes, *val the number of varint / fixed fields).  -1 if malformed. */
static int pb_field(pb *b, uint64_t *field, int *wt, pb *sub, uint64_t *val)
{
    uint64_t key, len;
    if (pb_varint(b, &key))
        return -1;
    *field = key >> 3;
    *wt = (int)(key & 7);
    switch (*wt) {
    case 0:
        return pb_varint(b, val);
    case 1:
    case 5: {
        size_t n = *wt == 1 ? 8 : 4;
        if ((size_t)(b->end - b->p) < n)
            return -1;
        *val = 0;
        for (size_t i = 0; i < n; i++)
            *val |= (uint64_t)b->p[i] << (8 * i);
        b->p += n;
        return 0;
    }
    case 2:
        if (pb_varint(b, &len) || len > (uint64_t)(b->end - b->p))
            return -1;
        sub->p = b->p;
        sub->end = b->p + len;
        b->p += len;
        return 0;
    default:
        return -1; /* groups are not used by sentencepiece_model.proto */
    }
}

typedef struct {
    const char *s;
    size_t len;
    float score;
    int type;
} spm_piece;

/* message SentencePiece { string piece = 1; float score = 2; Type type = 3; } */
static int parse_piece(pb b, spm_piece *out)
{
    uint64_t field, val;
    int wt;
    pb sub;
    *out = (spm_piece){"", 0, 0.0f, 1};
    while (b.p < b.end) {
        if (pb_field(&b, &field, &wt, &sub, &val))
            return -1;
        if (field == 1 && wt == 2) {
            out->s = (const char *)sub.p;
            out->len = (size_t)(sub.end - sub.p);
        } else if (field == 2 && wt == 5) {
            uint32_t bits = (uint32_t)val;
            memcpy(&out->score, &bits, 4);
        } else if (field == 3 && wt == 0) {
            out->type = (int)(val & 0xFF);
        }
    }
    return 0;
}

/* ModelProto field 1: repeated SentencePiece pieces. */
static cm_status parse_spm(const uint8_t *buf, size_t n, const char *path, spm_piece **out,
                           size_t *n_out, cm_err *err)
{
    pb b = {buf, buf + n}, sub;
    uint64_t field, val;
    int wt;
    size_t cap = 0, k = 0;
    spm_piece *pieces = NULL;
    while (b.p < b.end) {
        if (pb_field(&b, &field, &wt, &sub, &val)) {
            free(pieces);
            return cm_fail(err, CM_E_FORMAT, "%s: malformed protobuf at byte %zu", path,
                           (size_t)(b.p - buf));
        }
        if (field != 1 || wt != 2)
            continue;
        if (k == cap) {
            spm_piece *p = realloc(pieces, (cap = cap ? cap * 2 : 1024) * sizeof *p);
            if (!p || cap > (size_t)MAX_VOCAB) {
                free(p ? p : pieces);
                return cm_fail(err, CM_E_NOMEM, "%s: too many pieces", path);
            }
            pieces = p;
        }
        if (parse_piece(sub, &pieces[k++])) {
            free(pieces);
            return cm_fail(err, CM_E_FORMAT, "%s: malformed piece %zu", path, k - 1);
        }
    }
    if (!k)
        return cm_fail(err, CM_E_FORMAT, "%s holds no SentencePiece pieces", path);
    *out = pieces;
    *n_out = k;
    return CM_OK;
}

static cm_status read_all(const char *path, uint8_t **out, size_t *n, cm_err *err)
{
    struct stat st;
    FILE *f;
    *out = NULL;
    cm_status s = cm_fopen_regular(path, &f, err); /* a FIFO would block fopen */
    if (s)
        return s;
    if (fstat(fileno(f), &st) || (uint64_t)st.st_size > MAX_TOKENIZER_BYTES) {
        fclose(f);
        return cm_fail(err, CM_E_FORMAT, "%s is too large", path);
    }
    *n = (size_t)st.st_size;
    *out = malloc(*n ? *n : 1);
    int bad = !*out || fread(*out, 1, *n, f) != *n;
    fclose(f);
    if (bad) {
        free(*out);
        *out = NULL;
        return cm_fail(err, CM_E_IO, "cannot read %s", path);
    }
    return CM_OK;
}

/* added_tokens.json: {"text": id} -> user-defined tokens. */
static cm_status spm_added_tokens(const char *dir, vocab *v, FILE *log, cm_err *err)
{
    char path[4200];
    json_doc d;
    snprintf(path, sizeof path, "%s/added_tokens.json", dir);
    if (!is_file(path))
        return CM_OK;
    cm_status s = json_parse_file(path, NULL, &d, err);
    for (const json_node *c = s ? NULL : json_first(&d, json_root(&d)); c && !s; c = json_next(&d, c)) {
        if (!c->key || c->type != JSON_NUMBER || !c->is_int || c->i < 0) {
            s = cm_fail(err, CM_E_FORMAT, "%s: entries must be \"text\": id", path);
        } else if (c->i >= v->n) {
            warn(log, "%s: ignoring token %lld, outside the vocabulary", path, (long long)c->i);
        } else if (!(s = vocab_set(v, c->i, c->key, c->key_len, TT_USER, err))) {
            v->score[c->i] = -1000.0f;
        }
    }
    json_free(&d);
    return s;
}

/* tokenizer_config.json's added_tokens_decoder: {"id": {"content", "special"}}. */
static cm_status apply_added_decoder(const json_doc *tc, vocab *v, FILE *log, cm_err *err)
{
    const json_node *dec = json_get_val(tc, json_root(tc), "added_tokens_decoder");
    for (const json_node *c = json_first(tc, dec); c && dec->type == JSON_OBJECT; c = json_next(tc, c)) {
        char *end;
        long long id = strtoll(c->key, &end, 10);
        const char *content = json_get_str(tc, c, "content");
        int special = 0;
        if (*end || id < 0 || !content)
            return cm_fail(err, CM_E_FORMAT, "tokenizer_config.json: bad added_tokens_decoder "
                           "entry '%s'", c->key);
        if (id >= v->n) {
            warn(log, "tokenizer_config.json: ignoring token %lld, outside the vocabulary", id);
            continue;
        }
        json_get_bool(tc, c, "special", &special);
        cm_status s = set_added(v, id, content, special, err);
        if (s)
            return s;
        if (v->score)
            v->score[id] = -1000.0f;
    }
    return CM_OK;
}

/* SentencePiece types map to GGUF's; USER_DEFINED pieces stay normal, as in
 * llama.cpp's converter. */
static int spm_type(int t)
{
    return t == 2 ? TT_UNKNOWN : t == 3 ? TT_CONTROL : t == 5 ? TT_UNUSED : t == 6 ? TT_BYTE
                                                                                 : TT_NORMAL;
}

static cm_status spm_vocab(const char *dir, int64_t n_vocab, const json_doc *tc, vocab *v,
                           FILE *log, cm_err *err)
{
    char path[4200];
    uint8_t *buf;
    size_t n = 0, np = 0;
    spm_piece *pc = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    cm_status s = read_all(path, &buf, &n, err);
    if (!s)
        s = parse_spm(buf, n, path, &pc, &np, err);
    if (!s)
        s = vocab_init(v, n_vocab > 0 ? n_vocab : (int64_t)np, 1, err);
    for (size_t i = 0; !s && i < np; i++) {
        if ((int64_t)i >= v->n) {
            warn(log, "%s has %zu pieces; ignoring those beyond vocab_size %lld", path, np,
                 (long long)v->n);
            break;
        }
        s = vocab_set(v, (int64_t)i, pc[i].s, pc[i].len, spm_type(pc[i].type), err);
        v->score[i] = pc[i].score;
    }
    if (!s)
        s = spm_added_tokens(dir, v, log, err);
    if (!s && tc)
        s = apply_added_decoder(tc, v, log, err);
    free(pc);
    free(buf);
    return s;
}

/* ------------------------------------------------------------ BPE */

/* Well-known split expressions (as decoded from tokenizer.json). */
static const char RE_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char RE_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct {
    const char *re[16];
    int n_re, byte_level, byte_regex, digits;
} pre_parts;

static void collect_pre(const json_doc *d, const json_node *pt, pre_parts *p)
{
    const char *type = json_get_str(d, pt, "type");
    if (!type)
        return;
    if (!strcmp(type, "Sequence")) {
        const json_node *list = json_get(d, pt, "pretokenizers");
        for (const json_node *c = json_first(d, list); c; c = json_next(d, c))
            collect_pre(d, c, p);
    } else if (!strcmp(type, "Split")) {
        const char *re = json_get_str(d, json_get(d, pt, "pattern"), "Regex");
        if (re && p->n_re < 16)
            p->re[p->n_re++] = re;
    } else if (!strcmp(type, "ByteLevel")) {
        int use = 1;
        json_get_bool(d, pt, "use_regex", &use);
        p->byte_level = 1;
        p->byte_regex |= use;
    } else if (!strcmp(type, "Digits")) {
        json_get_bool(d, pt, "individual_digits", &p->digits);
    }
}

static int has_re(const pre_parts *p, const char *re)
{
    for (int i = 0; i < p->n_re; i++)
        if (!strcmp(p->re[i], re))
            return 1;
    return 0;
}

/* llama.cpp identifies pre-tokenizers by hashing a test tokenization; we
 * recognize the expressions themselves, for the pre-tokenizers the engine
 * implements.  Anything else gets "default" and a warning. */
static const char *detect_pre(const json_doc *d, FILE *log)
{
    pre_parts p = {0};
    collect_pre(d, json_get_val(d, json_root(d), "pre_tokenizer"), &p);
    if (has_re(&p, RE_LLAMA3))
        return "llama-bpe";
    if (has_re(&p, RE_QWEN2))
        return "qwen2";
    if (has_re(&p, RE_GPT2) && p.n_re == 1)
        return "gpt-2";
    if (p.n_re >= 3 && !strcmp(p.re[0], "[\\r\\n]") && has_re(&p, "\\s?\\p{L}+"))
        return "deepseek-coder";
    if (p.n_re >= 3 && !strcmp(p.re[0], "[\\r\\n]") && has_re(&p, "\\s+$"))
        return "deepseek-llm";
    if (!p.n_re && p.byte_level && p.digits)
        return "starcoder";
    if (!p.n_re && p.byte_regex)
        return "gpt-2";
    warn(log, "tokenizer.json: pre-tokenizer not recognized; writing tokenizer.ggml.pre "
              "\"default\" (tokenization may differ from the original)");
    return "default";
}

static int64_t max_id(const json_doc *d, const json_node *vocab_obj, const json_node *added)
{
    int64_t m = -1, id;
    for (const json_node *c = json_first(d, vocab_obj); c; c = json_next(d, c))
        if (c->type == JSON_NUMBER && c->is_int && c->i > m)
            m = c->i;
    for (const json_node *c = json_first(d, added); c; c = json_next(d, c))
        if (json_get_int(d, c, "id", &id) && id > m)
            m = id;
    return m;
}

/* Byte-level BPE from tokenizer.json (gguf-py's get_vocab_base). */
static cm_status bpe_vocab(const json_doc *tj, int64_t n_vocab, vocab *v, cm_err *err)
{
    const json_node *model = json_get_val(tj, json_root(tj), "model");
    const json_node *vo = json_get_val(tj, model, "vocab");
    const json_node *added = json_get_val(tj, json_root(tj), "added_tokens");
    if (!vo || vo->type != JSON_OBJECT)
        return cm_fail(err, CM_E_FORMAT, "tokenizer.json has no model.vocab object");
    int64_t top = max_id(tj, vo, added), n = n_vocab > 0 ? n_vocab : top + 1;
    if (top >= n)
        return cm_fail(err, CM_E_FORMAT, "tokenizer.json has token id %lld but the model has %lld "
                       "embeddings", (long long)top, (long long)n);
    cm_status s = vocab_init(v, n, 0, err);
    for (const json_node *c = json_first(tj, vo); c && !s; c = json_next(tj, c)) {
        if (c->type != JSON_NUMBER || !c->is_int || c->i < 0)
            return cm_fail(err, CM_E_FORMAT, "tokenizer.json: bad id for token '%s'", c->key);
        s = vocab_set(v, c->i, c->key, c->key_len, TT_NORMAL, err);
    }
    for (const json_node *c = json_first(tj, added); c && !s; c = json_next(tj, c)) {
        int64_t id;
        int special = 0;
        const char *content = json_get_str(tj, c, "content");
        if (!json_get_int(tj, c, "id", &id) || id < 0 || !content)
            return cm_fail(err, CM_E_FORMAT, "tokenizer.json: malformed added_tokens entry");
        json_get_bool(tj, c, "special", &special);
        s = set_added(v, id, content, special, err);
    }
    return s;
}

static char *join_pair(const json_node *a, const json_node *b)
{
    char *out = malloc(2 * (a->len + b->len) + 2), *o = out;
    for (int k = 0; out && k < 2; k++) {
        const json_node *part = k ? b : a;
        for (size_t i = 0; i < part->len; i++) {
            if (part->str[i] == ' ') {
                memcpy(o, "\xc4\xa0", 2);
                o += 2;
            } else {
                *o++ = part->str[i];
            }
        }
        *o++ = k ? 0 : ' ';
    }
    return out;
}

/* model.merges: "a b" strings, or [a, b] pairs (transformers >= 4.45) whose
 * spaces gguf-py encodes as U+0120. */
static cm_status add_merges(gguf_writer *w, const json_doc *tj, FILE *log, cm_err *err)
{
    const json_node *m = json_get_val(tj, json_get_val(tj, json_root(tj), "model"), "merges");
    if (!m || m->type != JSON_ARRAY || !m->n) {
        warn(log, "tokenizer.json has no merges; the tokenizer will not work");
        return CM_OK;
    }
    char **out = calloc(m->n, sizeof *out);
    size_t k = 0;
    cm_status s = out ? CM_OK : cm_fail(err, CM_E_NOMEM, "out of memory");
    for (const json_node *c = json_first(tj, m); c && !s; c = json_next(tj, c), k++) {
        const json_node *a = json_first(tj, c), *b = json_next(tj, a);
        if (c->type == JSON_STRING) {
            out[k] = strdup(c->str);
        } else if (c->type == JSON_ARRAY && c->n == 2 && a->type == JSON_STRING &&
                   b->type == JSON_STRING) {
            out[k] = join_pair(a, b);
        } else {
            s = cm_fail(err, CM_E_FORMAT, "tokenizer.json: merge %zu is neither \"a b\" nor [a, b]",
                        k);
            break;
        }
        if (!out[k])
            s = cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    if (!s)
        gguf_writer_set_str_arr(w, "tokenizer.ggml.merges", (const char *const *)out, m->n);
    for (size_t i = 0; out && i < m->n; i++)
        free(out[i]);
    free(out);
    return s;
}

/* ------------------------------------------------------------ special tokens */

enum { N_SPECIAL = 7 };
static const char *const SP_NAME[N_SPECIAL] = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
static const char *const SP_KEY[N_SPECIAL] = {
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.seperator_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.cls_token_id",
    "tokenizer.ggml.mask_token_id"};
enum { SP_BOS, SP_EOS, SP_UNK, SP_SEP, SP_PAD, SP_CLS, SP_MASK };

typedef struct {
    int64_t id[N_SPECIAL];
    int order[N_SPECIAL], n_order;
    int add[N_SPECIAL];             /* -1 unset */
    const char *content[N_SPECIAL]; /* tokenizer_config.json's <typ>_token */
    int64_t n_vocab;                /* range check, -1 for none */
} specials;

/* The first value wins, later sources only fill gaps (gguf-py's rule). */
static void set_special(specials *sp, int typ, int64_t id, FILE *log)
{
    if (id < 0 || sp->id[typ] >= 0)
        return;
    if (sp->n_vocab >= 0 && id >= sp->n_vocab) {
        warn(log, "special token %s = %lld is outside the vocabulary; skipped", SP_NAME[typ],
             (long long)id);
        return;
    }
    sp->id[typ] = id;
    sp->order[sp->n_order++] = typ;
}

static const char *token_content(const json_doc *d, const json_node *tc, const char *typ)
{
    char key[32];
    snprintf(key, sizeof key, "%s_token", typ);
    const json_node *n = json_get_val(d, tc, key);
    if (n && n->type == JSON_STRING)
        return n->str;
    return json_get_str(d, n, "content");
}

static int64_t added_id(const json_doc *tj, const char *content)
{
    int64_t id;
    const json_node *added = tj ? json_get_val(tj, json_root(tj), "added_tokens") : NULL;
    for (const json_node *c = json_first(tj, added); c; c = json_next(tj, c)) {
        const char *s = json_get_str(tj, c, "content");
        if (s && !strcmp(s, content) && json_get_int(tj, c, "id", &id))
            return id;
    }
    return -1;
}

static const char *special_id_str(const json_doc *d, const json_node *item)
{
    return json_get_str(d, json_get_val(d, item, "SpecialToken"), "id");
}

/* tokenizer.json's post_processor says whether BOS/EOS are added. */
static void post_processor(const json_doc *tj, specials *sp, int have_tc)
{
    const json_node *pp = json_get_val(tj, json_root(tj), "post_processor");
    const json_node *list = json_get_val(tj, pp, "processors");
    for (const json_node *p = list ? json_first(tj, list) : pp; p; p = list ? json_next(tj, p) : NULL) {
        const char *type = json_get_str(tj, p, "type");
        if (type && !strcmp(type, "RobertaProcessing")) {
            sp->add[SP_BOS] = sp->add[SP_EOS] = sp->add[SP_SEP] = 1;
            continue;
        }
        const json_node *single = json_get_val(tj, p, "single");
        if (!type || strcmp(type, "TemplateProcessing") || !single || single->n < 2)
            continue;
        const json_node *first = json_first(tj, single), *last = first;
        while (json_next(tj, last))
            last = json_next(tj, last);
        const char *f = special_id_str(tj, first), *l = special_id_str(tj, last);
        if (f) {
            if (!have_tc)
                sp->content[SP_BOS] = f;
            sp->add[SP_BOS] = (sp->content[SP_BOS] && !strcmp(f, sp->content[SP_BOS])) ||
                              (sp->content[SP_CLS] && !strcmp(f, sp->content[SP_CLS]));
        }
        if (l) {
            if (!have_tc)
                sp->content[SP_EOS] = l;
            sp->add[SP_EOS] = sp->content[SP_EOS] && !strcmp(l, sp->content[SP_EOS]);
        }
    }
}

static void chat_template(gguf_writer *w, const char *dir, const json_doc *tc)
{
    const char *t = json_get_str(tc, json_root(tc), "chat_template");
    char path[4200];
    uint8_t *buf = NULL;
    size_t n;
    cm_err e;
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    if (!t && is_file(path) && !read_all(path, &buf, &n, &e)) {
        char *s = strndup((char *)buf, n);
        if (s)
            gguf_writer_set_str(w, "tokenizer.chat_template", s);
        free(s);
        free(buf);
        return;
    }
    if (t)
        gguf_writer_set_str(w, "tokenizer.chat_template", t);
}

/* gguf-py's SpecialVocab: ids, add_* flags and the chat template. */
static cm_status add_specials(gguf_writer *w, const char *dir, const json_doc *tj,
                              int64_t n_vocab, FILE *log, cm_err *err)
{
    specials sp = {.n_vocab = n_vocab};
    json_doc tc = {0}, cfg = {0};
    char path[4200];
    cm_status s = CM_OK;
    for (int i = 0; i < N_SPECIAL; i++)
        sp.id[i] = -1, sp.add[i] = -1;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    int have_tc = is_file(path);
    if (have_tc && (s = json_parse_file(path, NULL, &tc, err)))
        return s;
    for (int i = 0; have_tc && i < N_SPECIAL; i++)
        sp.content[i] = token_content(&tc, json_root(&tc), SP_NAME[i]);
    if (tj && have_tc) { /* a missing BOS/EOS borrows CLS/SEP */
        if (!sp.content[SP_BOS])
            sp.content[SP_BOS] = sp.content[SP_CLS];
        if (!sp.content[SP_EOS])
            sp.content[SP_EOS] = sp.content[SP_SEP];
    }
    if (tj)
        post_processor(tj, &sp, have_tc);
    for (int i = 0; have_tc && i < N_SPECIAL; i++) {
        char key[32];
        snprintf(key, sizeof key, "add_%s_token", SP_NAME[i]);
        json_get_bool(&tc, json_root(&tc), key, &sp.add[i]);
        if (sp.content[i] && tj)
            set_special(&sp, i, added_id(tj, sp.content[i]), log);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!json_parse_file(path, NULL, &cfg, err)) {
        for (int i = 0; i < N_SPECIAL; i++) {
            char key[32];
            int64_t id;
            snprintf(key, sizeof key, "%s_token_id", SP_NAME[i]);
            if (json_get_int(&cfg, json_root(&cfg), key, &id))
                set_special(&sp, i, id, log);
        }
    }
    for (int k = 0; k < sp.n_order; k++)
        gguf_writer_set_u32(w, SP_KEY[sp.order[k]], (uint32_t)sp.id[sp.order[k]]);
    static const int add_types[3] = {SP_BOS, SP_EOS, SP_SEP};
    for (int k = 0; k < 3; k++) {
        char key[48];
        snprintf(key, sizeof key, "tokenizer.ggml.add_%s_token", SP_NAME[add_types[k]]);
        if (sp.add[add_types[k]] >= 0)
            gguf_writer_set_bool(w, key, sp.add[add_types[k]]);
    }
    if (have_tc)
        chat_template(w, dir, &tc);
    json_free(&tc);
    json_free(&cfg);
    return CM_OK;
}

/* ------------------------------------------------------------ entry */

/* A tokenizer.json we can write as "gpt2": BPE without byte fallback. */
static int is_byte_bpe(const json_doc *tj)
{
    const json_node *m = json_get_val(tj, json_root(tj), "model");
    const char *type = json_get_str(tj, m, "type");
    int fallback = 0;
    json_get_bool(tj, m, "byte_fallback", &fallback);
    return type && !strcmp(type, "BPE") && !fallback;
}

static cm_status write_spm(gguf_writer *w, const char *dir, int64_t n_vocab, const json_doc *tj,
                           FILE *log, cm_err *err)
{
    vocab v = {0};
    json_doc tc = {0};
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    cm_status s = is_file(path) ? json_parse_file(path, NULL, &tc, err) : CM_OK;
    if (!s)
        s = spm_vocab(dir, n_vocab, is_file(path) ? &tc : NULL, &v, log, err);
    if (!s) {
        gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
        gguf_writer_set_str(w, "tokenizer.ggml.pre", "default");
        write_vocab(w, &v);
        s = add_specials(w, dir, tj, v.n, log, err);
    }
    vocab_free(&v);
    json_free(&tc);
    return s;
}

static cm_status write_bpe(gguf_writer *w, const char *dir, int64_t n_vocab, const json_doc *tj,
                           FILE *log, cm_err *err)
{
    vocab v = {0};
    cm_status s = bpe_vocab(tj, n_vocab, &v, err);
    if (!s) {
        gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
        gguf_writer_set_str(w, "tokenizer.ggml.pre", detect_pre(tj, log));
        write_vocab(w, &v);
        s = add_merges(w, tj, log, err);
    }
    if (!s)
        s = add_specials(w, dir, tj, -1, log, err);
    vocab_free(&v);
    return s;
}

cm_status hf_tokenizer_add(gguf_writer *w, const char *dir, int64_t n_vocab, FILE *log,
                           int *added, cm_err *err)
{
    char model[4200], tjson[4200];
    json_doc tj = {0};
    cm_status s = CM_OK;
    *added = 0;
    snprintf(model, sizeof model, "%s/tokenizer.model", dir);
    snprintf(tjson, sizeof tjson, "%s/tokenizer.json", dir);
    int have_tj = is_file(tjson), have_model = is_file(model);
    if (have_tj && (s = json_parse_file(tjson, NULL, &tj, err)))
        return s;
    if (have_tj && is_byte_bpe(&tj)) {
        s = write_bpe(w, dir, n_vocab, &tj, log, err);
        *added = !s;
    } else if (have_model) {
        s = write_spm(w, dir, n_vocab, have_tj ? &tj : NULL, log, err);
        *added = !s;
    } else if (have_tj) {
        warn(log, "%s is not a byte-level BPE tokenizer and there is no tokenizer.model; "
                  "the GGUF gets no tokenizer", tjson);
    } else {
        warn(log, "%s has no tokenizer.model or tokenizer.json; the GGUF gets no tokenizer "
                  "(codemoe logits works on it, codemoe run does not)", dir);
    }
    json_free(&tj);
    return s;
}
