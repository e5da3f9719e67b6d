/* gguf.h - reading and writing GGUF (v2 and v3), llama.cpp's model format.
 *
 * The reader maps the file and validates every count, length, offset and
 * size before anything is used: a hostile file yields CM_E_FORMAT with a
 * message naming the key/tensor and byte offset, never a crash.  Strings
 * point into the mapping and are NOT NUL-terminated. */
#ifndef CM_GGUF_H
#define CM_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "util/names.h"
#include "util/status.h"

enum gguf_vtype {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3,
    GGUF_UINT32 = 4, GGUF_INT32 = 5, GGUF_FLOAT32 = 6, GGUF_BOOL = 7,
    GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_UINT64 = 10, GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12
};

typedef struct {
    const char *ptr;
    uint64_t len;
} gguf_str;

typedef struct {
    gguf_str key;
    uint32_t type;       /* enum gguf_vtype */
    uint32_t arr_type;   /* element type when type == GGUF_ARRAY */
    uint64_t arr_n;      /* element count when type == GGUF_ARRAY */
    const uint8_t *data; /* the value (or first array element) in the file */
} gguf_kv;

typedef struct {
    gguf_str name;
    uint32_t n_dims;
    int64_t ne[4];       /* unused dims are 1 */
    uint32_t type;       /* ggml type id; validated known, maybe unsupported */
    uint64_t offset;     /* relative to the data section */
    const void *data;    /* points into the mapping */
    uint64_t nbytes;
} gguf_tensor;

typedef struct {
    const uint8_t *base; /* file bytes (mapping or caller's buffer) */
    size_t size;
    int mapped;          /* 1 if gguf_close must munmap */
    uint32_t version;
    uint64_t n_kv;
    gguf_kv *kv;
    uint64_t n_tensors;
    gguf_tensor *tensors;
    uint64_t alignment;  /* general.alignment or 32 */
    uint64_t data_offset;
    /* Private: seeded indexes of the key / tensor names (util/names.h),
     * built by the parser so lookups are O(1).  When empty (a hand-built
     * gguf_file) the finders fall back to a linear scan. */
    cm_names kv_names, tensor_names;
} gguf_file;

/* Maps and parses path.  On failure *f is left empty and safe to close. */
cm_status gguf_open(const char *path, gguf_file *f, cm_err *err);
/* Parses a buffer the caller keeps alive (tests and the fuzzer use this). */
cm_status gguf_parse(const void *buf, size_t size, gguf_file *f, cm_err *err);
void gguf_close(gguf_file *f);

const gguf_kv *gguf_find(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);
int gguf_str_eq(gguf_str s, const char *c);

/* Typed getters.  They return CM_OK, or CM_E_FORMAT when the key exists
 * with an incompatible type, or CM_E_RANGE when it is missing (the caller
 * decides whether that matters).  Integer getters accept any integer type
 * whose value fits. */
cm_status gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out, cm_err *err);
cm_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, cm_err *err);
cm_status gguf_get_f32(const gguf_file *f, const char *key, float *out, cm_err *err);  /* f32 or f64 */
cm_status gguf_get_bool(const gguf_file *f, const char *key, int *out, cm_err *err);
cm_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, cm_err *err);
/* Array of strings: *out is malloc'ed (caller frees), pointing into the file. */
cm_status gguf_get_str_array(const gguf_file *f, const char *key, gguf_str **out,
                             uint64_t *n, cm_err *err);
/* Array of numbers converted to float / int32: *out malloc'ed, caller frees. */
cm_status gguf_get_f32_array(const gguf_file *f, const char *key, float **out,
                             uint64_t *n, cm_err *err);
cm_status gguf_get_i32_array(const gguf_file *f, const char *key, int32_t **out,
                             uint64_t *n, cm_err *err);

/* ---- writer ----
 * Builds a file in memory-light fashion: metadata and tensor descriptions are
 * collected, then gguf_writer_finish writes header, padding and tensor data
 * to "<path>.tmp" and renames it over path, so a failed write never leaves a
 * half-written output. Tensor data is copied from the caller's pointer at
 * finish time (the pointer must stay valid until then) or produced by a
 * callback so converters can stream. */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(uint32_t version /* 2 or 3 */);
void gguf_writer_free(gguf_writer *w);
cm_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
cm_status gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v);
cm_status gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v);
cm_status gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
cm_status gguf_writer_set_bool(gguf_writer *w, const char *key, int v);
cm_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *v);
/* Array of n elements of scalar type (not STRING/ARRAY), copied. */
cm_status gguf_writer_set_arr(gguf_writer *w, const char *key, uint32_t elem_type,
                              const void *data, uint64_t n);
cm_status gguf_writer_set_str_arr(gguf_writer *w, const char *key,
                                  const char *const *strs, uint64_t n);
/* Copies every key/value of src except those for which skip(key) returns 1. */
cm_status gguf_writer_copy_kv(gguf_writer *w, const gguf_file *src,
                              int (*skip)(const char *key, void *ctx), void *ctx);
/* Copies one key/value of a parsed file under the name key (a rename). */
cm_status gguf_writer_copy_kv_as(gguf_writer *w, const gguf_kv *kv, const char *key);

typedef cm_status (*gguf_fill_fn)(void *ctx, void *dst, uint64_t nbytes, cm_err *err);
/* ne[0..n_dims-1]; nbytes is computed from type and dims. data or fill. */
cm_status gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type,
                                 uint32_t n_dims, const int64_t *ne,
                                 const void *data, gguf_fill_fn fill, void *fill_ctx);
cm_status gguf_writer_finish(gguf_writer *w, const char *path, cm_err *err);
/* Called by finish before each tensor's data is produced and written (i of
 * n, bytes of tensor data written so far of total) and once at the end (i
 * == n): a long conversion's progress. */
typedef void (*gguf_progress_fn)(void *ctx, size_t i, size_t n, uint64_t done, uint64_t total,
                                 const char *name);
void gguf_writer_set_progress(gguf_writer *w, gguf_progress_fn fn, void *ctx);
/* Writes the same bytes into an open descriptor (no temporary file). */
cm_status gguf_writer_finish_fd(gguf_writer *w, int fd, cm_err *err);

#endif
