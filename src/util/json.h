/* json.h - a small, strict JSON reader for Hugging Face model folders
 * (config.json, tokenizer.json, safetensors headers, index files).
 *
 * The whole text is parsed into a flat array of nodes; strings are decoded
 * (escapes, \uXXXX and surrogate pairs) into one arena and NUL-terminated.
 * Input is validated completely: bad UTF-8, raw control characters, depth
 * beyond JSON_MAX_DEPTH and trailing garbage are errors naming the line and
 * column.  NaN, Infinity and -Infinity are accepted because Python's json
 * module writes them.  Nothing here keeps global state. */
#ifndef CM_JSON_H
#define CM_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util/status.h"

#define JSON_MAX_DEPTH 64
#define JSON_MAX_BYTES ((size_t)1 << 30) /* larger texts are refused */

typedef enum {
    JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT
} json_type;

typedef struct {
    json_type type;
    uint32_t n;         /* children of an array or object */
    uint32_t first;     /* index of the first child, 0 when none */
    uint32_t next;      /* index of the next sibling, 0 when none */
    const char *key;    /* member name when the parent is an object, else NULL */
    size_t key_len;
    const char *str;    /* decoded string (NUL-terminated; may contain NULs) */
    size_t len;
    double num;         /* numbers */
    int64_t i;          /* numbers written as integers that fit int64 */
    int is_int;
} json_node;

typedef struct {
    json_node *nodes;   /* nodes[0] is the root */
    size_t n_nodes, cap;
    char *arena;        /* decoded strings */
    size_t arena_used, arena_cap;
} json_doc;

/* Parses len bytes (need not be NUL-terminated).  what names the text in
 * messages ("config.json").  On failure doc is left empty (safe to free). */
cm_status json_parse(const char *text, size_t len, const char *what, json_doc *doc, cm_err *err);
void json_free(json_doc *doc);
/* Reads and parses a file; what defaults to path.  CM_E_IO when it cannot
 * be read (the message names the path). */
cm_status json_parse_file(const char *path, const char *what, json_doc *doc, cm_err *err);

const json_node *json_root(const json_doc *d);
/* Children of an array or object in order; NULL at the end. */
const json_node *json_first(const json_doc *d, const json_node *n);
const json_node *json_next(const json_doc *d, const json_node *n);
/* The member named key (the last one when repeated, as Python does), or NULL
 * when obj is not an object or has no such member. */
const json_node *json_get(const json_doc *d, const json_node *obj, const char *key);
/* Like json_get but a JSON null counts as absent (transformers writes null
 * for unset fields). */
const json_node *json_get_val(const json_doc *d, const json_node *obj, const char *key);

/* Typed lookups: return 1 and set *out when the member exists with the
 * right type (null counts as absent), else 0. */
int json_get_int(const json_doc *d, const json_node *obj, const char *key, int64_t *out);
int json_get_num(const json_doc *d, const json_node *obj, const char *key, double *out);
int json_get_bool(const json_doc *d, const json_node *obj, const char *key, int *out);
const char *json_get_str(const json_doc *d, const json_node *obj, const char *key);

/* Writes s to f as a JSON string: quotes, with '"', '\\' and control
 * characters escaped; other bytes (UTF-8) as they are. */
void json_write_string(FILE *f, const char *s);

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid:
 * no overlong forms, no encoded surrogates, nothing above U+10FFFF. */
size_t json_utf8_len(const unsigned char *s, size_t n);

#endif
