/* gguf.c - GGUF v2/v3 reader and writer, written from the GGUF spec.
 *
 * Layout (all little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv,
 * n_kv key/value records, n_tensors tensor infos, padding to the alignment,
 * then the data section.  The reader trusts nothing: every length and count
 * is checked against the bytes that remain before it is used or allocated,
 * and all size arithmetic is overflow-checked, because files come from the
 * internet and this code is fuzzed. */
#define _GNU_SOURCE
#include "formats/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant/quant.h"
#include "util/atomic_file.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define NO_INDEX UINT64_MAX
/* Precision for printing a file string: clipped, and never negative (a
 * negative %.*s precision would read to a NUL that may not exist). */
#define CLIP(len) ((int)((len) > 80 ? 80 : (len)))
/* Smallest possible records, used to bound counts before allocating:
 * kv = key length (8) + value type (4) + a 1-byte value;
 * tensor info = name length (8) + n_dims (4) + ne[0] (8) + type (4) + offset (8). */
#define MIN_KV_BYTES 13
#define MIN_TINFO_BYTES 32
/* Name indexes hold uint32 indices. */
#define MAX_ENTRIES 0x7fffffffu

/* Byte size of each scalar value type; 0 for STRING and ARRAY (variable). */
static const uint8_t vtype_size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const vtype_names[13] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
    "string", "array", "u64", "i64", "f64"};

static const char *vtype_name(uint32_t t)
{
    return t < 13 ? vtype_names[t] : "invalid";
}

/* Decoded byte-wise so the reader works on any host byte order. */
static uint64_t get_le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_le(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* ---------------------------------------------------------------- reader */

/* Parse cursor plus what is being parsed, so that every error message can
 * name the record (kv 3 'key', tensor info 7 'name') and the byte offset. */
typedef struct {
    const uint8_t *p;
    size_t size, pos;
    const char *name;  /* file name for messages */
    cm_err *err;
    const char *item;  /* "header", "kv", "tensor info" */
    uint64_t idx;
    gguf_str label;    /* key or tensor name once read */
    uint64_t elem;     /* array element index, or NO_INDEX */
} rd;

static cm_status ferr(const rd *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Every reader error is CM_E_FORMAT and starts with the file name. */
static cm_status ferr(const rd *r, const char *fmt, ...)
{
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *c = buf; *c; c++) /* names from the file must not break the line */
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    return cm_fail(r->err, CM_E_FORMAT, "%s: %s", r->name, buf);
}

/* "kv 3 'general.name' element 12" - labels are clipped to keep one line. */
static const char *where(const rd *r, char *buf, size_t n)
{
    int k;
    if (!strcmp(r->item, "header"))
        return "header";
    if (!r->label.ptr)
        k = snprintf(buf, n, "%s %llu", r->item, (unsigned long long)r->idx);
    else
        k = snprintf(buf, n, "%s %llu '%.*s'", r->item, (unsigned long long)r->idx,
                     CLIP(r->label.len), r->label.ptr);
    if (r->elem != NO_INDEX && k >= 0 && (size_t)k < n)
        snprintf(buf + k, n - (size_t)k, " element %llu", (unsigned long long)r->elem);
    return buf;
}

static cm_status need(const rd *r, uint64_t n, const char *field)
{
    char w[200];
    if (n <= r->size - r->pos)
        return CM_OK;
    return ferr(r, "truncated: %s %s at offset %zu runs past end of file (size %zu)",
                where(r, w, sizeof w), field, r->pos, r->size);
}

static cm_status rd_int(rd *r, uint64_t *v, unsigned n, const char *field)
{
    cm_status st = need(r, n, field);
    if (st)
        return st;
    *v = get_le(r->p + r->pos, n);
    r->pos += n;
    return CM_OK;
}

static cm_status rd_u32(rd *r, uint32_t *v, const char *field)
{
    uint64_t x = 0;
    cm_status st = rd_int(r, &x, 4, field);
    *v = (uint32_t)x;
    return st;
}

static cm_status rd_str(rd *r, gguf_str *s, const char *field)
{
    uint64_t len;
    cm_status st = rd_int(r, &len, 8, field);
    if (st || (st = need(r, len, field)))
        return st;
    s->ptr = (const char *)r->p + r->pos;
    s->len = len;
    r->pos += (size_t)len;
    return CM_OK;
}

/* Arrays: u32 element type, u64 count, elements.  String arrays are walked
 * here so later getters can trust every element. */
static cm_status parse_array(rd *r, gguf_kv *kv)
{
    cm_status st = rd_u32(r, &kv->arr_type, "array type");
    if (st || (st = rd_int(r, &kv->arr_n, 8, "array count")))
        return st;
    if (kv->arr_type == GGUF_ARRAY)
        return ferr(r, "key '%.*s': nested arrays are not supported",
                    CLIP(kv->key.len), kv->key.ptr);
    if (kv->arr_type > GGUF_FLOAT64)
        return ferr(r, "key '%.*s': bad array element type %u",
                    CLIP(kv->key.len), kv->key.ptr, kv->arr_type);
    kv->data = r->p + r->pos;
    if (kv->arr_type != GGUF_STRING) {
        uint64_t esz = vtype_size[kv->arr_type];
        if (kv->arr_n > (r->size - r->pos) / esz)
            return need(r, UINT64_MAX, "array data");
        r->pos += (size_t)(kv->arr_n * esz);
        return CM_OK;
    }
    if (kv->arr_n > (r->size - r->pos) / 8) /* each string needs its length */
        return need(r, UINT64_MAX, "array data");
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        gguf_str s;
        r->elem = i;
        if ((st = rd_str(r, &s, "string")))
            return st;
    }
    r->elem = NO_INDEX;
    return CM_OK;
}

static cm_status parse_kv(rd *r, gguf_kv *kv)
{
    cm_status st = rd_str(r, &kv->key, "key");
    if (st)
        return st;
    r->label = kv->key;
    if ((st = rd_u32(r, &kv->type, "value type")))
        return st;
    if (kv->type > GGUF_FLOAT64)
        return ferr(r, "key '%.*s': bad value type %u", CLIP(kv->key.len),
                    kv->key.ptr, kv->type);
    if (kv->type == GGUF_ARRAY)
        return parse_array(r, kv);
    kv->data = r->p + r->pos;
    if (kv->type == GGUF_STRING) {
        gguf_str s;
        return rd_str(r, &s, "value");
    }
    if ((st = need(r, vtype_size[kv->type], "value")))
        return st;
    r->pos += vtype_size[kv->type];
    return CM_OK;
}

static cm_status parse_header(rd *r, gguf_file *f)
{
    static const uint8_t magic[4] = {'G', 'G', 'U', 'F'};
    cm_status st;
    r->item = "header";
    if (r->size == 0)
        return ferr(r, "empty file (not a GGUF file)");
    if (r->size < 4 || memcmp(r->p, magic, 4) != 0) {
        uint8_t m[4] = {0};
        memcpy(m, r->p, r->size < 4 ? r->size : 4);
        return ferr(r, "not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")",
                    m[0], m[1], m[2], m[3]);
    }
    r->pos = 4;
    if ((st = rd_u32(r, &f->version, "version")))
        return st;
    if (f->version == 1)
        return ferr(r, "GGUF version 1 is not supported (only versions 2 and 3)");
    if (f->version != 2 && f->version != 3)
        return ferr(r, "unsupported GGUF version %u (expected 2 or 3%s)", f->version,
                    (f->version == 0x02000000u || f->version == 0x03000000u)
                        ? "; big-endian files are not supported" : "");
    if ((st = rd_int(r, &f->n_tensors, 8, "n_tensors")) ||
        (st = rd_int(r, &f->n_kv, 8, "n_kv")))
        return st;
    /* Bound both counts by the bytes left before anything is allocated. */
    size_t rem = r->size - r->pos;
    if (f->n_kv > rem / MIN_KV_BYTES || f->n_kv > MAX_ENTRIES)
        return ferr(r, "header claims %llu key/value pairs but only %zu bytes follow",
                    (unsigned long long)f->n_kv, rem);
    rem -= (size_t)f->n_kv * MIN_KV_BYTES;
    if (f->n_tensors > rem / MIN_TINFO_BYTES || f->n_tensors > MAX_ENTRIES)
        return ferr(r, "header claims %llu tensors but only %zu bytes follow",
                    (unsigned long long)f->n_tensors, r->size - r->pos);
    return CM_OK;
}

/* ---- name indexes (duplicate detection and O(1) lookup) ----
 * kv and tensor records both start with their name, a gguf_str. */

static int str_eq_n(gguf_str s, const char *p, uint64_t n)
{
    return s.len == n && (n == 0 || memcmp(s.ptr, p, (size_t)n) == 0);
}

static cm_name kv_name(const void *arr, uint32_t i)
{
    const gguf_kv *kv = (const gguf_kv *)arr + i;
    return (cm_name){kv->key.ptr, (size_t)kv->key.len};
}

static cm_name tensor_name(const void *arr, uint32_t i)
{
    const gguf_tensor *t = (const gguf_tensor *)arr + i;
    return (cm_name){t->name.ptr, (size_t)t->name.len};
}

/* Indexes the n names of arr; returns the index of the first name that
 * repeats an earlier one, or NO_INDEX. */
static uint64_t index_build(cm_names *x, cm_name_at at, const void *arr, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (cm_names_add(x, at, arr, (uint32_t)i) != CM_NAMES_NONE)
            return i;
    return NO_INDEX;
}

static uint64_t index_find(const cm_names *x, cm_name_at at, const void *arr, uint64_t n,
                           const char *key)
{
    size_t len = strlen(key);
    if (!x->map) { /* a hand-built gguf_file */
        for (uint64_t i = 0; i < n; i++) {
            cm_name nm = at(arr, (uint32_t)i);
            if (nm.len == len && !memcmp(nm.ptr, key, len))
                return i;
        }
        return NO_INDEX;
    }
    uint32_t i = cm_names_find(x, at, arr, key, len);
    return i == CM_NAMES_NONE ? NO_INDEX : i;
}

static cm_status parse_kvs(rd *r, gguf_file *f)
{
    cm_status st;
    uint64_t dup;
    f->kv = calloc(f->n_kv ? (size_t)f->n_kv : 1, sizeof *f->kv);
    if (!f->kv)
        return cm_fail(r->err, CM_E_NOMEM, "%s: out of memory for %llu keys", r->name,
                       (unsigned long long)f->n_kv);
    r->item = "kv";
    for (uint64_t i = 0; i < f->n_kv; i++) {
        r->idx = i;
        r->label.ptr = NULL;
        if ((st = parse_kv(r, &f->kv[i])))
            return st;
    }
    r->label.ptr = NULL;
    if ((dup = index_build(&f->kv_names, kv_name, f->kv, f->n_kv)) != NO_INDEX)
        return ferr(r, "duplicate key '%.*s' (kv %llu)", CLIP(f->kv[dup].key.len),
                    f->kv[dup].key.ptr, (unsigned long long)dup);
    return CM_OK;
}

static cm_status parse_alignment(rd *r, gguf_file *f)
{
    const gguf_kv *kv = gguf_find(f, "general.alignment");
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (!kv)
        return CM_OK;
    if (kv->type != GGUF_UINT32)
        return ferr(r, "general.alignment has type %s, expected u32", vtype_name(kv->type));
    uint64_t a = get_le(kv->data, 4);
    if (a == 0 || (a & (a - 1)) != 0)
        return ferr(r, "general.alignment %llu is not a power of two",
                    (unsigned long long)a);
    f->alignment = a;
    return CM_OK;
}

static cm_status parse_tinfo(rd *r, gguf_tensor *t)
{
    cm_status st = rd_str(r, &t->name, "name");
    if (st || (st = rd_u32(r, &t->n_dims, "n_dims")))
        return st;
    r->label = t->name;
    if (t->n_dims < 1 || t->n_dims > 4)
        return ferr(r, "tensor '%.*s': n_dims %u out of range 1..4",
                    CLIP(t->name.len), t->name.ptr, t->n_dims);
    for (uint32_t d = 0; d < 4; d++) {
        uint64_t v = 1;
        if (d < t->n_dims && (st = rd_int(r, &v, 8, "ne")))
            return st;
        if (v == 0 || v > (uint64_t)INT64_MAX)
            return ferr(r, "tensor '%.*s': ne[%u] = %llu out of range",
                        CLIP(t->name.len), t->name.ptr, d, (unsigned long long)v);
        t->ne[d] = (int64_t)v;
    }
    if ((st = rd_u32(r, &t->type, "type")))
        return st;
    return rd_int(r, &t->offset, 8, "offset");
}

/* Bytes of a tensor: whole blocks per row times rows, all overflow-checked.
 * Returns 0 on success or a static reason. */
static const char *tensor_nbytes(uint32_t type, const int64_t ne[4], uint64_t *out)
{
    const cm_type_info *ti = cm_type_get(type);
    uint64_t n = (uint64_t)ne[0], rows = 1;
    if (!ti)
        return "unknown type";
    if (n % (uint64_t)ti->block_elems)
        return "ne[0] is not a multiple of the block size";
    for (int d = 1; d < 4; d++) {
        if ((uint64_t)ne[d] > (uint64_t)INT64_MAX / rows)
            return "element count overflows";
        rows *= (uint64_t)ne[d];
    }
    if (rows > (uint64_t)INT64_MAX / n)
        return "element count overflows";
    uint64_t row = n / (uint64_t)ti->block_elems;
    if (row > UINT64_MAX / ti->block_bytes)
        return "size overflows";
    row *= ti->block_bytes;
    if (rows > UINT64_MAX / row)
        return "size overflows";
    *out = row * rows;
    return NULL;
}

static cm_status check_tensor(rd *r, const gguf_file *f, gguf_tensor *t)
{
    int nl = CLIP(t->name.len);
    const char *why = tensor_nbytes(t->type, t->ne, &t->nbytes);
    if (why && !cm_type_get(t->type))
        return ferr(r, "tensor '%.*s': unknown type %u", nl, t->name.ptr, t->type);
    if (why)
        return ferr(r, "tensor '%.*s': %s (type %s, ne = %lld x %lld x %lld x %lld)",
                    nl, t->name.ptr, why, cm_type_get(t->type)->name,
                    (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                    (long long)t->ne[3]);
    if (t->offset % f->alignment)
        return ferr(r, "tensor '%.*s': offset %llu is not a multiple of the alignment %llu",
                    nl, t->name.ptr, (unsigned long long)t->offset,
                    (unsigned long long)f->alignment);
    uint64_t room = f->data_offset <= r->size ? r->size - f->data_offset : 0;
    if (t->offset > room || t->nbytes > room - t->offset)
        return ferr(r, "tensor '%.*s': data (offset %llu, %llu bytes) runs past end of file "
                    "(data section at %llu, size %zu)", nl, t->name.ptr,
                    (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                    (unsigned long long)f->data_offset, r->size);
    t->data = r->p + f->data_offset + t->offset;
    return CM_OK;
}

static cm_status parse_tensors(rd *r, gguf_file *f)
{
    cm_status st;
    uint64_t dup;
    f->tensors = calloc(f->n_tensors ? (size_t)f->n_tensors : 1, sizeof *f->tensors);
    if (!f->tensors)
        return cm_fail(r->err, CM_E_NOMEM, "%s: out of memory for %llu tensors",
                       r->name, (unsigned long long)f->n_tensors);
    r->item = "tensor info";
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        r->idx = i;
        r->label.ptr = NULL;
        if ((st = parse_tinfo(r, &f->tensors[i])))
            return st;
    }
    r->label.ptr = NULL;
    dup = index_build(&f->tensor_names, tensor_name, f->tensors, f->n_tensors);
    if (dup != NO_INDEX)
        return ferr(r, "duplicate tensor name '%.*s' (tensor %llu)",
                    CLIP(f->tensors[dup].name.len), f->tensors[dup].name.ptr,
                    (unsigned long long)dup);
    /* r->pos <= size, so rounding up cannot overflow 64 bits. */
    f->data_offset = ((uint64_t)r->pos + f->alignment - 1) & ~(f->alignment - 1);
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if ((st = check_tensor(r, f, &f->tensors[i])))
            return st;
    return CM_OK;
}

static void free_tables(gguf_file *f)
{
    free(f->kv);
    free(f->tensors);
    cm_names_free(&f->kv_names);
    cm_names_free(&f->tensor_names);
}

static cm_status parse_named(const void *buf, size_t size, const char *name,
                             gguf_file *f, cm_err *err)
{
    rd r = {.p = buf, .size = buf ? size : 0, .name = name, .err = err,
            .item = "header", .elem = NO_INDEX};
    cm_status st;
    memset(f, 0, sizeof *f);
    f->base = buf;
    f->size = r.size;
    if ((st = parse_header(&r, f)) || (st = parse_kvs(&r, f)) ||
        (st = parse_alignment(&r, f)) || (st = parse_tensors(&r, f))) {
        free_tables(f);
        memset(f, 0, sizeof *f);
        return st;
    }
    return CM_OK;
}

cm_status gguf_parse(const void *buf, size_t size, gguf_file *f, cm_err *err)
{
    return parse_named(buf, size, "<gguf buffer>", f, err);
}

cm_status gguf_open(const char *path, gguf_file *f, cm_err *err)
{
    struct stat sb;
    int fd;
    memset(f, 0, sizeof *f);
    /* a FIFO would block open(2) and then read(2) forever: refused */
    cm_status os = cm_open_regular(path, &fd, err);
    if (os)
        return os;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return cm_fail(err, CM_E_IO, "cannot read %s: %s", path, strerror(e));
    }
    if (sb.st_size == 0) {
        close(fd);
        return cm_fail(err, CM_E_FORMAT, "%s: empty file (not a GGUF file)", path);
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (m == MAP_FAILED)
        return cm_fail(err, CM_E_IO, "cannot map %s: %s", path, strerror(e));
    cm_status st = parse_named(m, (size_t)sb.st_size, path, f, err);
    if (st) {
        munmap(m, (size_t)sb.st_size);
        return st;
    }
    f->mapped = 1;
    return CM_OK;
}

void gguf_close(gguf_file *f)
{
    if (!f)
        return;
    free_tables(f);
    if (f->mapped && f->base)
        munmap((void *)f->base, f->size);
    memset(f, 0, sizeof *f);
}

/* --------------------------------------------------------------- lookups */

const gguf_kv *gguf_find(const gguf_file *f, const char *key)
{
    if (!f || !f->kv || !key)
        return NULL;
    uint64_t i = index_find(&f->kv_names, kv_name, f->kv, f->n_kv, key);
    return i == NO_INDEX ? NULL : &f->kv[i];
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    if (!f || !f->tensors || !name)
        return NULL;
    uint64_t i = index_find(&f->tensor_names, tensor_name, f->tensors, f->n_tensors, name);
    return i == NO_INDEX ? NULL : &f->tensors[i];
}

int gguf_str_eq(gguf_str s, const char *c)
{
    return c && str_eq_n(s, c, strlen(c));
}

/* Integer value as sign + magnitude so every range check is exact.
 * Returns 0 if t is not an integer type. */
static int int_value(uint32_t t, const uint8_t *p, uint64_t *mag, int *neg)
{
    static const uint8_t is_signed[13] = {0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0};
    *mag = 0;
    *neg = 0;
    if (t > GGUF_FLOAT64 || t == GGUF_FLOAT32 || t == GGUF_FLOAT64 || t == GGUF_BOOL ||
        t == GGUF_STRING || t == GGUF_ARRAY)
        return 0;
    unsigned n = vtype_size[t];
    uint64_t v = get_le(p, n);
    if (is_signed[t] && (v >> (8 * n - 1)) & 1) {
        *neg = 1;
        /* two's complement magnitude within n bytes */
        uint64_t mask = n == 8 ? UINT64_MAX : ((1ull << (8 * n)) - 1);
        v = ((~v) & mask) + 1;
    }
    *mag = v;
    return 1;
}

static int float_value(uint32_t t, const uint8_t *p, double *out)
{
    uint64_t mag;
    int neg;
    *out = 0;
    if (t == GGUF_FLOAT32) {
        uint32_t b = (uint32_t)get_le(p, 4);
        float x;
        memcpy(&x, &b, 4);
        *out = x;
    } else if (t == GGUF_FLOAT64) {
        uint64_t b = get_le(p, 8);
        memcpy(out, &b, 8);
    } else if (int_value(t, p, &mag, &neg)) {
        *out = neg ? -(double)mag : (double)mag;
    } else {
        return 0;
    }
    return 1;
}

#define INT_MASK 0xc3fu  /* u8 i8 u16 i16 u32 i32 u64 i64 */
#define FLOAT_MASK 0x1040u /* f32 f64 */

/* Finds key and checks its type (or, for arrays, its element type) against
 * a bit mask of accepted types.  Missing is CM_E_RANGE, mismatch CM_E_FORMAT. */
static cm_status find_typed(const gguf_file *f, const char *key, int array, uint32_t mask,
                            const char *want, const gguf_kv **kv, cm_err *err)
{
    *kv = gguf_find(f, key);
    if (!*kv)
        return cm_fail(err, CM_E_RANGE, "key '%s' not found", key);
    uint32_t t = array ? (*kv)->arr_type : (*kv)->type;
    if ((array == ((*kv)->type == GGUF_ARRAY)) && t < 13 && ((mask >> t) & 1))
        return CM_OK;
    if ((*kv)->type == GGUF_ARRAY)
        return cm_fail(err, CM_E_FORMAT, "key '%s' is an array of %s, expected %s", key,
                       vtype_name((*kv)->arr_type), want);
    return cm_fail(err, CM_E_FORMAT, "key '%s' has type %s, expected %s", key,
                   vtype_name((*kv)->type), want);
}

/* Shared by the u64/u32 getters: any integer type whose value is in [0, max]. */
static cm_status get_uint(const gguf_file *f, const char *key, uint64_t max,
                          uint64_t *out, cm_err *err)
{
    const gguf_kv *kv;
    uint64_t mag;
    int neg;
    cm_status st = find_typed(f, key, 0, INT_MASK, "an integer", &kv, err);
    if (st)
        return st;
    int_value(kv->type, kv->data, &mag, &neg);
    if (neg || mag > max)
        return cm_fail(err, CM_E_FORMAT, "key '%s': value %s%llu out of range", key,
                       neg ? "-" : "", (unsigned long long)mag);
    *out = mag;
    return CM_OK;
}

cm_status gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out, cm_err *err)
{
    return get_uint(f, key, UINT64_MAX, out, err);
}

cm_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, cm_err *err)
{
    uint64_t v = 0;
    cm_status st = get_uint(f, key, UINT32_MAX, &v, err);
    if (!st)
        *out = (uint32_t)v;
    return st;
}

cm_status gguf_get_f32(const gguf_file *f, const char *key, float *out, cm_err *err)
{
    const gguf_kv *kv;
    double d;
    cm_status st = find_typed(f, key, 0, FLOAT_MASK, "f32 or f64", &kv, err);
    if (!st && float_value(kv->type, kv->data, &d))
        *out = (float)d;
    return st;
}

cm_status gguf_get_bool(const gguf_file *f, const char *key, int *out, cm_err *err)
{
    const gguf_kv *kv;
    cm_status st = find_typed(f, key, 0, 1u << GGUF_BOOL, "bool", &kv, err);
    if (!st)
        *out = kv->data[0] != 0;
    return st;
}

cm_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, cm_err *err)
{
    const gguf_kv *kv;
    cm_status st = find_typed(f, key, 0, 1u << GGUF_STRING, "string", &kv, err);
    if (!st) {
        out->len = get_le(kv->data, 8);
        out->ptr = (const char *)kv->data + 8;
    }
    return st;
}

/* Finds an array key with an accepted element type and allocates room for
 * its elements (at least 1 byte, so an empty array still yields a pointer). */
static cm_status get_array(const gguf_file *f, const char *key, uint32_t mask,
                           const char *want, size_t esz, const gguf_kv **kv,
                           void **out, cm_err *err)
{
    cm_status st = find_typed(f, key, 1, mask, want, kv, err);
    if (st)
        return st;
    if ((*kv)->arr_n > SIZE_MAX / esz)
        return cm_fail(err, CM_E_NOMEM, "key '%s': array too large", key);
    *out = malloc((*kv)->arr_n ? (size_t)(*kv)->arr_n * esz : 1);
    if (!*out)
        return cm_fail(err, CM_E_NOMEM, "key '%s': out of memory for %llu elements", key,
                       (unsigned long long)(*kv)->arr_n);
    return CM_OK;
}

cm_status gguf_get_str_array(const gguf_file *f, const char *key, gguf_str **out,
                             uint64_t *n, cm_err *err)
{
    const gguf_kv *kv;
    *out = NULL;
    *n = 0;
    cm_status st = get_array(f, key, 1u << GGUF_STRING, "an array of string",
                             sizeof **out, &kv, (void **)out, err);
    if (st)
        return st;
    const uint8_t *p = kv->data; /* lengths were validated at parse time */
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        (*out)[i].len = get_le(p, 8);
        (*out)[i].ptr = (const char *)p + 8;
        p += 8 + (*out)[i].len;
    }
    *n = kv->arr_n;
    return CM_OK;
}

cm_status gguf_get_f32_array(const gguf_file *f, const char *key, float **out,
                             uint64_t *n, cm_err *err)
{
    const gguf_kv *kv;
    double d;
    *out = NULL;
    *n = 0;
    cm_status st = get_array(f, key, INT_MASK | FLOAT_MASK, "an array of numbers",
                             sizeof **out, &kv, (void **)out, err);
    if (st)
        return st;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        float_value(kv->arr_type, kv->data + i * vtype_size[kv->arr_type], &d);
        (*out)[i] = (float)d;
    }
    *n = kv->arr_n;
    return CM_OK;
}

cm_status gguf_get_i32_array(const gguf_file *f, const char *key, int32_t **out,
                             uint64_t *n, cm_err *err)
{
    const gguf_kv *kv;
    uint64_t mag;
    int neg;
    *out = NULL;
    *n = 0;
    cm_status st = get_array(f, key, INT_MASK, "an array of integers", sizeof **out, &kv,
                             (void **)out, err);
    if (st)
        return st;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        int_value(kv->arr_type, kv->data + i * vtype_size[kv->arr_type], &mag, &neg);
        if (neg ? mag > 0x80000000ull : mag > INT32_MAX) {
            free(*out);
            *out = NULL;
            return cm_fail(err, CM_E_FORMAT, "key '%s': element %llu = %s%llu does not fit "
                           "in i32", key, (unsigned long long)i, neg ? "-" : "",
                           (unsigned long long)mag);
        }
        (*out)[i] = (int32_t)(neg ? -(int64_t)mag : (int64_t)mag);
    }
    *n = kv->arr_n;
    return CM_OK;
}

/* ---------------------------------------------------------------- writer
 * Values are serialized when set (so copy_kv can take bytes straight from a
 * parsed file); finish only concatenates.  Array element data is copied in
 * host order: like the rest of codemoe this assumes a little-endian host. */

typedef struct {
    char *key;
    uint32_t type;
    uint8_t *val; /* serialized value; arrays include elem type and count */
    size_t len;
} wkv;

typedef struct {
    char *name;
    uint32_t type, n_dims;
    int64_t ne[4];
    uint64_t nbytes, offset;
    const void *data;
    gguf_fill_fn fill;
    void *ctx;
} wtensor;

struct gguf_writer {
    uint32_t version;
    uint64_t alignment;
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
    cm_err pending; /* first failed set/add call, reported again by finish */
    gguf_progress_fn progress;
    void *progress_ctx;
};

void gguf_writer_set_progress(gguf_writer *w, gguf_progress_fn fn, void *ctx)
{
    if (w)
        w->progress = fn, w->progress_ctx = ctx;
}

static cm_status wfail(gguf_writer *w, cm_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static cm_status wfail(gguf_writer *w, cm_status code, const char *fmt, ...)
{
    if (w && w->pending.code == CM_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->pending.msg, sizeof w->pending.msg, fmt, ap);
        va_end(ap);
        w->pending.code = code;
    }
    return code;
}

static int grow(void **arr, size_t *cap, size_t n, size_t esz)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, c * esz);
    if (!p)
        return -1;
    *arr = p;
    *cap = c;
    return 0;
}

gguf_writer *gguf_writer_new(uint32_t version)
{
    if (version != 2 && version != 3)
        return NULL;
    gguf_writer *w = calloc(1, sizeof *w);
    if (w) {
        w->version = version;
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
    }
    return w;
}

void gguf_writer_free(gguf_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

/* Takes ownership of val (NULL means its allocation failed).  Setting a key
 * again replaces the value in place, keeping the original position. */
static cm_status set_raw(gguf_writer *w, const char *key, size_t klen, uint32_t type,
                         uint8_t *val, size_t len)
{
    if (!val)
        return wfail(w, CM_E_NOMEM, "out of memory for key '%.*s'", CLIP(klen), key);
    if (klen == 17 && !memcmp(key, "general.alignment", 17)) {
        uint64_t a = type == GGUF_UINT32 ? get_le(val, 4) : 0;
        if (a == 0 || (a & (a - 1))) {
            free(val);
            return wfail(w, CM_E_FORMAT, "general.alignment must be a u32 power of two");
        }
        w->alignment = a;
    }
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strlen(w->kv[i].key) == klen && !memcmp(w->kv[i].key, key, klen)) {
            free(w->kv[i].val);
            w->kv[i] = (wkv){w->kv[i].key, type, val, len};
            return CM_OK;
        }
    }
    char *k = malloc(klen + 1);
    if (!k || grow((void **)&w->kv, &w->cap_kv, w->n_kv, sizeof *w->kv)) {
        free(k);
        free(val);
        return wfail(w, CM_E_NOMEM, "out of memory for key '%.*s'", CLIP(klen), key);
    }
    memcpy(k, key, klen);
    k[klen] = 0;
    w->kv[w->n_kv++] = (wkv){k, type, val, len};
    return CM_OK;
}

static cm_status set_scalar(gguf_writer *w, const char *key, uint32_t type, uint64_t bits)
{
    if (!w || !key)
        return CM_E_USAGE;
    uint8_t *v = malloc(8);
    if (v)
        put_le(v, bits, vtype_size[type]);
    return set_raw(w, key, strlen(key), type, v, vtype_size[type]);
}

cm_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v)
{
    return set_scalar(w, key, GGUF_UINT32, v);
}

cm_status gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v)
{
    return set_scalar(w, key, GGUF_INT32, (uint32_t)v);
}

cm_status gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v)
{
    return set_scalar(w, key, GGUF_UINT64, v);
}

cm_status gguf_writer_set_f32(gguf_writer *w, const char *key, float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    return set_scalar(w, key, GGUF_FLOAT32, b);
}

cm_status gguf_writer_set_bool(gguf_writer *w, const char *key, int v)
{
    return set_scalar(w, key, GGUF_BOOL, v != 0);
}

cm_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *v)
{
    if (!w || !key || !v)
        return CM_E_USAGE;
    size_t n = strlen(v);
    uint8_t *b = malloc(8 + n);
    if (b) {
        put_le(b, n, 8);
        memcpy(b + 8, v, n);
    }
    return set_raw(w, key, strlen(key), GGUF_STRING, b, 8 + n);
}

/* Array header (elem type, count) followed by room for body bytes. */
static uint8_t *arr_buf(uint32_t elem, uint64_t n, size_t body)
{
    uint8_t *b = body <= SIZE_MAX - 12 ? malloc(12 + body) : NULL;
    if (b) {
        put_le(b, elem, 4);
        put_le(b + 4, n, 8);
    }
    return b;
}

cm_status gguf_writer_set_arr(gguf_writer *w, const char *key, uint32_t elem_type,
                              const void *data, uint64_t n)
{
    if (!w || !key || (n && !data))
        return CM_E_USAGE;
    if (elem_type > GGUF_FLOAT64 || elem_type == GGUF_STRING || elem_type == GGUF_ARRAY)
        return wfail(w, CM_E_USAGE, "key '%s': bad array element type %u", key, elem_type);
    size_t esz = vtype_size[elem_type];
    if (n > (SIZE_MAX - 12) / esz)
        return wfail(w, CM_E_NOMEM, "key '%s': array too large", key);
    uint8_t *b = arr_buf(elem_type, n, (size_t)n * esz);
    if (b && n)
        memcpy(b + 12, data, (size_t)n * esz);
    return set_raw(w, key, strlen(key), GGUF_ARRAY, b, 12 + (size_t)n * esz);
}

cm_status gguf_writer_set_str_arr(gguf_writer *w, const char *key,
                                  const char *const *strs, uint64_t n)
{
    size_t body = 0;
    if (!w || !key || (n && !strs))
        return CM_E_USAGE;
    for (uint64_t i = 0; i < n; i++) {
        size_t l = strs[i] ? strlen(strs[i]) : 0;
        if (body > SIZE_MAX - 24 - l)
            return wfail(w, CM_E_NOMEM, "key '%s': array too large", key);
        body += 8 + l;
    }
    uint8_t *b = arr_buf(GGUF_STRING, n, body), *p = b ? b + 12 : NULL;
    for (uint64_t i = 0; p && i < n; i++) {
        size_t l = strs[i] ? strlen(strs[i]) : 0;
        put_le(p, l, 8);
        memcpy(p + 8, strs[i] ? strs[i] : "", l);
        p += 8 + l;
    }
    return set_raw(w, key, strlen(key), GGUF_ARRAY, b, 12 + body);
}

/* Serialized size of a parsed value; for arrays, the elements only.  The
 * parser already validated every length, so walking strings is safe. */
static size_t value_bytes(const gguf_kv *kv)
{
    uint32_t t = kv->type == GGUF_ARRAY ? kv->arr_type : kv->type;
    uint64_t n = kv->type == GGUF_ARRAY ? kv->arr_n : 1;
    if (t != GGUF_STRING)
        return (size_t)n * vtype_size[t];
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < n; i++)
        p += 8 + get_le(p, 8);
    return (size_t)(p - kv->data);
}

static cm_status copy_one(gguf_writer *w, const gguf_kv *kv, const char *key)
{
    size_t len = value_bytes(kv), hdr = kv->type == GGUF_ARRAY ? 12 : 0;
    uint8_t *b = hdr ? arr_buf(kv->arr_type, kv->arr_n, len) : malloc(len ? len : 1);
    if (b)
        memcpy(b + hdr, kv->data, len);
    return set_raw(w, key, strlen(key), kv->type, b, hdr + len);
}

cm_status gguf_writer_copy_kv(gguf_writer *w, const gguf_file *src,
                              int (*skip)(const char *key, void *ctx), void *ctx)
{
    if (!w || !src)
        return CM_E_USAGE;
    for (uint64_t i = 0; i < src->n_kv; i++) {
        const gguf_kv *kv = &src->kv[i];
        char *key = malloc((size_t)kv->key.len + 1);
        if (!key)
            return wfail(w, CM_E_NOMEM, "out of memory copying keys");
        memcpy(key, kv->key.ptr, (size_t)kv->key.len);
        key[kv->key.len] = 0;
        cm_status st = (skip && skip(key, ctx)) ? CM_OK : copy_one(w, kv, key);
        free(key);
        if (st)
            return st;
    }
    return CM_OK;
}

cm_status gguf_writer_copy_kv_as(gguf_writer *w, const gguf_kv *kv, const char *key)
{
    if (!w || !kv || !key)
        return CM_E_USAGE;
    return copy_one(w, kv, key);
}

cm_status gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type,
                                 uint32_t n_dims, const int64_t *ne,
                                 const void *data, gguf_fill_fn fill, void *fill_ctx)
{
    wtensor t = {.type = type, .n_dims = n_dims, .ne = {1, 1, 1, 1}, .data = data,
                 .fill = fill, .ctx = fill_ctx};
    if (!w || !name || !ne || (!data && !fill))
        return CM_E_USAGE;
    if (n_dims < 1 || n_dims > 4)
        return wfail(w, CM_E_USAGE, "tensor '%s': n_dims %u out of range 1..4", name, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] < 1)
            return wfail(w, CM_E_USAGE, "tensor '%s': ne[%u] = %lld out of range", name, d,
                         (long long)ne[d]);
        t.ne[d] = ne[d];
    }
    const char *why = tensor_nbytes(type, t.ne, &t.nbytes);
    if (why)
        return wfail(w, CM_E_USAGE, "tensor '%s': %s (type %u)", name, why, type);
    if (grow((void **)&w->t, &w->cap_t, w->n_t, sizeof *w->t) || !(t.name = strdup(name)))
        return wfail(w, CM_E_NOMEM, "out of memory for tensor '%s'", name);
    w->t[w->n_t++] = t;
    return CM_OK;
}

/* ---- finish: buffered output to an fd, tracking the file position ---- */

typedef struct {
    int fd, err_no;
    uint64_t pos;
    size_t n;
    uint8_t buf[1 << 16];
} wbuf;

static void write_all(wbuf *b, const uint8_t *p, size_t n)
{
    while (n && !b->err_no) {
        ssize_t k = write(b->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            b->err_no = k < 0 ? errno : EIO;
            return;
        }
        p += k;
        n -= (size_t)k;
    }
}

static void wb_flush(wbuf *b)
{
    write_all(b, b->buf, b->n);
    b->n = 0;
}

static void wb_put(wbuf *b, const void *p, size_t n)
{
    b->pos += n;
    if (n > sizeof b->buf - b->n)
        wb_flush(b);
    if (n >= sizeof b->buf) { /* large tensor data goes straight out */
        write_all(b, p, n);
        return;
    }
    memcpy(b->buf + b->n, p, n);
    b->n += n;
}

static void wb_int(wbuf *b, uint64_t v, unsigned n)
{
    uint8_t x[8];
    put_le(x, v, n);
    wb_put(b, x, n);
}

static void wb_pad(wbuf *b, uint64_t align)
{
    static const uint8_t zero[64];
    uint64_t k = (align - b->pos % align) % align;
    while (k) {
        size_t c = k > sizeof zero ? sizeof zero : (size_t)k;
        wb_put(b, zero, c);
        k -= c;
    }
}

static void write_meta(wbuf *b, const gguf_writer *w)
{
    wb_put(b, "GGUF", 4);
    wb_int(b, w->version, 4);
    wb_int(b, w->n_t, 8);
    wb_int(b, w->n_kv, 8);
    for (size_t i = 0; i < w->n_kv; i++) {
        size_t kl = strlen(w->kv[i].key);
        wb_int(b, kl, 8);
        wb_put(b, w->kv[i].key, kl);
        wb_int(b, w->kv[i].type, 4);
        wb_put(b, w->kv[i].val, w->kv[i].len);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        wb_int(b, strlen(t->name), 8);
        wb_put(b, t->name, strlen(t->name));
        wb_int(b, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++)
            wb_int(b, (uint64_t)t->ne[d], 8);
        wb_int(b, t->type, 4);
        wb_int(b, t->offset, 8);
    }
    wb_pad(b, w->alignment); /* the data section starts aligned */
}

/* Writes every tensor, each padded to the alignment (llama.cpp's layout). */
static cm_status write_data(wbuf *b, const gguf_writer *w, cm_err *err)
{
    void *tmp = NULL;
    uint64_t cap = 0, done = 0, total = 0;
    for (size_t i = 0; i < w->n_t; i++)
        total += w->t[i].nbytes;
    for (size_t i = 0; i < w->n_t && !b->err_no; i++) {
        const wtensor *t = &w->t[i];
        const void *src = t->data;
        if (w->progress)
            w->progress(w->progress_ctx, i, w->n_t, done, total, t->name);
        done += t->nbytes;
        if (!src) {
            if (t->nbytes > cap) {
                free(tmp);
                cap = t->nbytes;
                tmp = t->nbytes <= SIZE_MAX ? malloc((size_t)t->nbytes) : NULL;
                if (!tmp)
                    return cm_fail(err, CM_E_NOMEM, "out of memory for tensor '%s' "
                                   "(%llu bytes)", t->name, (unsigned long long)t->nbytes);
            }
            cm_status st = t->fill(t->ctx, tmp, t->nbytes, err);
            if (st) {
                free(tmp);
                return st;
            }
            src = tmp;
        }
        wb_put(b, src, (size_t)t->nbytes);
        wb_pad(b, w->alignment);
    }
    free(tmp);
    if (w->progress && !b->err_no)
        w->progress(w->progress_ctx, w->n_t, w->n_t, total, total, "");
    return CM_OK;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Assigns data offsets; rejects duplicate tensor names (sorted, not O(n^2)). */
static cm_status plan_tensors(gguf_writer *w, cm_err *err)
{
    uint64_t off = 0;
    char **names = malloc((w->n_t ? w->n_t : 1) * sizeof *names);
    if (!names)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < w->n_t; i++) {
        names[i] = w->t[i].name;
        w->t[i].offset = off;
        if (off > UINT64_MAX - w->alignment ||
            w->t[i].nbytes > UINT64_MAX - w->alignment - off) {
            free(names);
            return cm_fail(err, CM_E_RANGE, "tensor data too large");
        }
        off = (off + w->t[i].nbytes + w->alignment - 1) & ~(w->alignment - 1);
    }
    qsort(names, w->n_t, sizeof *names, cmp_names);
    for (size_t i = 1; i < w->n_t; i++) {
        if (!strcmp(names[i - 1], names[i])) {
            cm_status st = cm_fail(err, CM_E_USAGE, "duplicate tensor name '%s'", names[i]);
            free(names);
            return st;
        }
    }
    free(names);
    return CM_OK;
}

/* Written through a temporary beside path (util/atomic_file.h: a fresh
 * mkostemp name, so nothing planted there is followed), fsynced and renamed
 * over path: the file is complete or absent. */
cm_status gguf_writer_finish(gguf_writer *w, const char *path, cm_err *err)
{
    cm_status st;
    cm_atomic_file af;
    if (!w || !path)
        return cm_fail(err, CM_E_USAGE, "gguf_writer_finish: no writer or path");
    if (w->pending.code)
        return cm_fail(err, w->pending.code, "%s: %s", path, w->pending.msg);
    if ((st = plan_tensors(w, err)))
        return st;
    wbuf *b = calloc(1, sizeof *b);
    if (!b)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    if ((st = cm_atomic_open(&af, path, 0644, err))) {
        free(b);
        return st;
    }
    b->fd = af.fd;
    write_meta(b, w);
    st = write_data(b, w, err);
    wb_flush(b);
    if (!st && b->err_no)
        st = cm_fail(err, CM_E_IO, "cannot write %s: %s", path, strerror(b->err_no));
    if (st)
        cm_atomic_abort(&af);
    else
        st = cm_atomic_commit(&af, CM_ATOMIC_FSYNC | CM_ATOMIC_SYNC_DIR, err);
    free(b);
    return st;
}

/* The same file as gguf_writer_finish, written straight into an open
 * descriptor (e.g. a memfd, so a sweep can quantize a model in memory and
 * load it from /proc/self/fd/N).  No temporary file: the caller owns fd. */
cm_status gguf_writer_finish_fd(gguf_writer *w, int fd, cm_err *err)
{
    cm_status st;
    if (!w || fd < 0)
        return cm_fail(err, CM_E_USAGE, "gguf_writer_finish_fd: no writer or descriptor");
    if (w->pending.code)
        return cm_fail(err, w->pending.code, "%s", w->pending.msg);
    if ((st = plan_tensors(w, err)))
        return st;
    wbuf *b = calloc(1, sizeof *b);
    if (!b)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    b->fd = fd;
    write_meta(b, w);
    st = write_data(b, w, err);
    wb_flush(b);
    if (!st && b->err_no)
        st = cm_fail(err, CM_E_IO, "cannot write the model: %s", strerror(b->err_no));
    free(b);
    return st;
}
