/* surgery_internal.h - what upcycle, grow and merge share (common.c). */
#ifndef CM_SURGERY_INTERNAL_H
#define CM_SURGERY_INTERNAL_H

#include <stdint.h>

#include "formats/gguf.h"
#include "surgery/surgery.h"

/* A deterministic stream of numbers (splitmix64): seeded from the user's
 * seed and a tensor's name, so a tensor's values do not depend on the
 * order in which tensors are written. */
typedef struct {
    uint64_t s;
    int have;    /* a second normal deviate is cached */
    double next;
} surg_rng;

void surg_rng_seed(surg_rng *r, uint64_t seed, const char *name, uint64_t salt);
double surg_rng_normal(surg_rng *r);

/* The tensor's name as a C string (tensor names are at most 127 bytes in
 * what we write; longer ones are refused by the caller). */
int surg_name(const gguf_tensor *t, char *buf, size_t cap);
/* Dimensions ggml counts (trailing 1s dropped). */
uint32_t surg_dims(const int64_t ne[4]);
int64_t surg_rows(const int64_t ne[4]);

/* Decodes rows [r0, r0 + n) of t (ne[0] elements each) into dst. */
cm_status surg_decode_rows(const gguf_tensor *t, int64_t r0, int64_t n, float *dst, cm_err *err);
/* Encodes n rows of len floats as type into dst. */
cm_status surg_encode_rows(uint32_t type, const float *src, int64_t len, int64_t n, void *dst,
                           const char *name, cm_err *err);
/* Rows [r0, r0 + n) of t as type into dst, in chunks of about 4 MB of
 * floats: decoded, passed to edit (when non-NULL; r is the chunk's first
 * row counted from r0) and encoded; copied when the type is unchanged and
 * there is no edit. */
typedef void (*surg_edit_fn)(void *ctx, float *rows, int64_t r, int64_t n, int64_t len);
cm_status surg_convert_rows(const gguf_tensor *t, int64_t r0, int64_t n, uint32_t type,
                            surg_edit_fn edit, void *ctx, void *dst, const char *name, cm_err *err);
/* 1 when codemoe can decode the type. */
int surg_type_ok(uint32_t type);

/* The type an output tensor of shape ne gets when `want` is asked for and
 * the input had `src`: the input's for CM_SURG_SAME (F16 when its blocks
 * do not fit the new rows), F32 for 1-D tensors and routers, F16 when
 * want's blocks do not fit the rows. */
uint32_t surg_out_type(uint32_t want, uint32_t src, const char *name, const int64_t ne[4]);
/* general.file_type for a type asked for, or -1 for CM_SURG_SAME. */
int surg_file_type(uint32_t type);

/* Refuses in == out (by name or inode). */
cm_status surg_distinct(const char *in, const char *out, cm_err *err);

/* Finishes w into a temporary beside out; when check_in is non-NULL,
 * loads the temporary and compares its logits with check_in's
 * (cm_surgery_check), prints the result to log and refuses (removing the
 * temporary) when tol > 0 and the difference exceeds it; then renames the
 * temporary over out. */
cm_status surg_finish(gguf_writer *w, const char *out, const char *check_in, int n_tokens,
                      double tol, FILE *log, cm_surg_check *chk, cm_err *err);

/* "blk.12.ffn_up.weight" -> layer 12 and *suffix "ffn_up.weight"; -1 for
 * a tensor outside the layers. */
int surg_layer_of(const char *name, const char **suffix);

/* One output tensor: made from src (NULL for a new one) by the command's
 * fill callback, as kind (the command's own enum) says. */
typedef struct {
    const void *job;      /* the command's state, for the fill callback */
    const gguf_tensor *src;
    int kind;
    int axis[2];          /* grow: the index maps along ne[0] and ne[1] (0: none) */
    uint32_t type;
    char name[128];
    int64_t ne[4];
} surg_rec;

/* The output's tensors in file order, and whether the check's limit
 * applies (every tensor read and written is F32). */
typedef struct {
    surg_rec *rec;
    size_t n, cap;
    uint32_t want;  /* the type asked for: CM_SURG_SAME or a type id */
    int all_f32;
} surg_plan;

cm_status surg_plan_init(surg_plan *p, size_t cap, uint32_t want, cm_err *err);
void surg_plan_free(surg_plan *p);
/* Appends tensor `name` of shape ne made from src (or nothing), its type
 * chosen by surg_out_type; NULL when the plan is full. */
surg_rec *surg_plan_add(surg_plan *p, const void *job, const gguf_tensor *src, const char *name,
                        int kind, const int64_t ne[4]);
/* Adds every planned tensor to w, each produced by fill(its record). */
cm_status surg_plan_write(surg_plan *p, gguf_writer *w, gguf_fill_fn fill);
/* src's name into name[128]; refuses a longer name or a type codemoe
 * cannot decode, naming the tensor. */
cm_status surg_src_name(const gguf_tensor *t, char *name, cm_err *err);

#endif
