/* router.h - picks the programming language (and so the expert) for a prompt.
 *
 * Evidence, strongest first: an explicit language, the file name's extension,
 * a shebang or editor modeline in the text, and finally a classifier over
 * the text itself.  The classifier is a linear model over hashed features,
 * trained by tools/train_router.c from the corpus train splits and shipped
 * as models/router.bin (bench/ROUTER.md: its accuracy, how to retrain).
 * Everything here is pure and thread-safe: a loaded cm_router is read-only
 * and classification allocates nothing.
 *
 * Features (the trainer takes them from cm_router_features, which runs the
 * classifier's own scanner, so the two cannot diverge).  The text is read
 * as bytes and normalized byte by byte: '\r' is dropped, bytes >= 0x80 become
 * 0x80, digits 1-9 become '0', other control bytes and DEL become ' ' (tab
 * and newline stay).  Then, with fmix32 the MurmurHash3 finalizer and
 * MASK = 2^hash_bits - 1:
 *   - character n-grams, n = 1..4: after each byte c, w = (w >> 8) | c << 24
 *     (w starts at 0) and the keys w, w >> 8, w >> 16, w >> 24 each add the
 *     bucket fmix32(key) & MASK;
 *   - tokens: identifiers [A-Za-z_][A-Za-z0-9_]*, numbers '0'[A-Za-z0-9_.]*
 *     (all spelled "0"), and any other non-blank byte alone; with h the
 *     32-bit FNV-1a hash of the token, each token adds
 *     fmix32(h ^ 0x5bd1e995) & MASK, the first token of a line adds
 *     fmix32(h ^ 0x27d4eb2f) & MASK, and each token after the first adds the
 *     pair bucket fmix32((prev * 0x9E3779B1 + h) ^ 0x165667b1) & MASK
 *     (32-bit arithmetic, prev the previous token's h, across lines).
 * With n features counted in all, the logit of language l is
 *     bias[l] + scale * sum(q[bucket][l] over the features) / sqrt(n)
 * and the scores are the softmax of the logits.  Only the first
 * CM_ROUTER_MAX_TEXT bytes of a prompt are read.
 *
 * router.bin layout (all integers little-endian):
 *   off  size
 *     0     8  magic "CMROUTER"
 *     8     4  u32 version, 1
 *    12     4  u32 n_langs, 2..CM_ROUTER_MAX_LANGS
 *    16     4  u32 hash_bits, 10..22
 *    20     4  u32 feature set, 1 (the features above)
 *    24     4  f32 scale, finite and > 0
 *    28     4  u32 reserved, 0
 *    32    16 * n_langs  language names, NUL-padded, [a-z0-9+_-], unique
 *     .     4 * n_langs  f32 bias per language
 *     .     2 * n_langs * 2^hash_bits  i16 weights q, bucket-major
 *                        (the n_langs weights of bucket 0, then bucket 1...)
 *   end-4   4  u32 FNV-1a hash of every byte before it
 * Anything else (short, long, bad field, bad checksum) is CM_E_FORMAT. */
#ifndef CM_ROUTER_H
#define CM_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

#define CM_ROUTER_MAX_LANGS 16
#define CM_ROUTER_MAX_TEXT (256 * 1024)
#define CM_ROUTER_DEFAULT_THRESHOLD 0.5f

/* The languages language-expert models know, in the order the shipped
 * classifier lists them. */
#define CM_N_KNOWN_LANGS 7
extern const char *const cm_known_langs[CM_N_KNOWN_LANGS];

typedef struct cm_router cm_router;

/* Loads and fully validates a router data file. */
cm_status cm_router_load(const char *path, cm_router **out, cm_err *err);
/* Parses an in-memory image of router.bin (copied; buf may be freed). */
cm_status cm_router_parse(const void *buf, size_t len, cm_router **out, cm_err *err);
void cm_router_free(cm_router *r);

int cm_router_n_langs(const cm_router *r);
const char *cm_router_lang(const cm_router *r, int i);
/* Index of a language in the router's list, or -1. */
int cm_router_lang_index(const cm_router *r, const char *name);

/* Softmax probabilities, one per router language, into probs[n_langs].
 * Returns the index of the most probable language. */
int cm_router_classify(const cm_router *r, const char *text, size_t len, float *probs);

/* The classifier's features of a text, for the trainer: the bucket
 * (< 2^hash_bits, hash_bits 1..31) of each feature, in the order
 * cm_router_classify adds them, goes to out while fewer than cap are
 * written.  Returns how many features the text has (the n of the 1/sqrt(n)
 * scale): at most 7 * len.  Allocates nothing. */
size_t cm_router_features(const char *text, size_t len, unsigned hash_bits, uint32_t *out,
                          size_t cap);

/* Where the data file is: $CODEMOE_ROUTER if set (even if missing, so a
 * typo is reported rather than silently ignored), then the installed copy,
 * then the source tree's.  Returns buf, or NULL when none exists. */
const char *cm_router_default_path(char *buf, size_t cap);

/* The canonical name (one of cm_known_langs) for a name or common alias
 * ("c++", "js", "py", "golang", ...), case-insensitive; NULL if unknown. */
const char *cm_lang_canonical(const char *name);
int cm_known_lang_index(const char *name); /* canonical names only; -1 if not */

/* Languages a file name allows, as a bit mask over cm_known_langs (bit i is
 * cm_known_langs[i]); 0 when the name says nothing.  A ".h" header allows
 * both c and cpp. */
unsigned cm_langs_from_filename(const char *path);
/* The single language a file name implies, or NULL (none, or ambiguous). */
const char *cm_lang_from_filename(const char *path);
/* A language named by a shebang on the first line, or by a vim/Emacs
 * modeline in the first or last 5 lines; NULL if none. */
const char *cm_lang_from_text_hints(const char *text, size_t len);

typedef enum {
    CM_ROUTE_EXPLICIT,   /* opts.lang */
    CM_ROUTE_FILENAME,   /* the extension */
    CM_ROUTE_HINT,       /* shebang or modeline */
    CM_ROUTE_CLASSIFIER, /* the text, confident enough */
    CM_ROUTE_UNKNOWN     /* the classifier below the threshold */
} cm_route_source;

typedef struct {
    const char *lang;     /* explicit language (canonical or alias), or NULL */
    const char *filename; /* the prompt's file name, or NULL */
    int use_hints;        /* look for a shebang / modeline in the text */
    float threshold;      /* classifier confidence needed, e.g. CM_ROUTER_DEFAULT_THRESHOLD */
} cm_route_opts;

typedef struct {
    const char *lang;       /* a cm_known_langs name, a router language, or "unknown" */
    cm_route_source source;
    float confidence;       /* classifier probability of lang; 1 for explicit/filename/hint */
    int n_langs;            /* entries of probs (0 without a router) */
    float probs[CM_ROUTER_MAX_LANGS]; /* classifier scores, router order */
} cm_route;

/* Applies explicit > filename > hint > classifier.  r may be NULL (no
 * classifier: then the text never decides, and a ".h" means c).  An opts.lang
 * that is not a known language name or alias is used verbatim. */
void cm_route_decide(const cm_router *r, const cm_route_opts *opts, const char *text,
                     size_t len, cm_route *out);

#endif
