/* safetensors.h - reading Hugging Face .safetensors checkpoints.
 *
 * Format: an 8-byte little-endian header length N, N bytes of JSON mapping
 * each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
 * (plus an optional "__metadata__" object of strings), then the data; the
 * offsets are relative to the first byte after the header.  Every length,
 * offset, shape and dtype is validated against the file before use, so a
 * corrupt or hostile file is an error naming the file and tensor.
 *
 * A checkpoint folder is either one model.safetensors or several shards
 * listed by model.safetensors.index.json ("weight_map": name -> file).
 * Files are memory-mapped read-only; tensors point into the mappings. */
#ifndef CM_SAFETENSORS_H
#define CM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "util/names.h"
#include "util/status.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER ((uint64_t)100000000) /* the format's own limit */

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_U16, ST_I16, ST_F16, ST_BF16, ST_U32, ST_I32, ST_F32,
    ST_U64, ST_I64, ST_F64, ST_F8_E4M3, ST_F8_E5M2, ST_DTYPE_COUNT
} st_dtype;

typedef struct {
    char *name;
    st_dtype dtype;
    int n_dims;                    /* 0 (a scalar) .. ST_MAX_DIMS */
    int64_t shape[ST_MAX_DIMS];    /* PyTorch order: the last dim is contiguous */
    uint64_t nbytes;
    const uint8_t *data;           /* inside the shard's mapping */
    int shard;                     /* index into st_model.shards */
} st_tensor;

typedef struct {
    char *path;
    const uint8_t *base;
    size_t size;
    int mapped;                    /* 1: st_close munmaps base */
} st_shard;

typedef struct {
    st_shard *shards;
    int n_shards;
    st_tensor *tensors;            /* in shard order, then header order */
    size_t n_tensors, cap;
    cm_names names;                /* seeded index of the tensor names */
} st_model;

/* Parses one file's bytes (kept alive by the caller) and appends its
 * tensors to m as shard `shard`; what names the file in messages.  Used by
 * st_open_file and directly by the fuzzer.  Duplicate names are errors. */
cm_status st_parse(const void *buf, size_t size, const char *what, int shard, st_model *m,
                   cm_err *err);
/* Maps path and appends its tensors as a new shard. */
cm_status st_open_file(const char *path, st_model *m, cm_err *err);
/* Opens the checkpoint in dir: model.safetensors.index.json with its shards
 * (each must exist and hold every tensor the index assigns to it), else
 * model.safetensors, else every model*.safetensors in name order. */
cm_status st_open_dir(const char *dir, st_model *m, cm_err *err);
void st_close(st_model *m);

const st_tensor *st_find(const st_model *m, const char *name);
const char *st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);
int64_t st_numel(const st_tensor *t);
/* 1 for the float types st_to_f32 converts (F64, F32, F16, BF16). */
int st_is_float(st_dtype t);
/* Drops t's pages from memory once the caller is done with them; the
 * mapping stays valid (touched again, they are re-read from the file).
 * Keeps a conversion's resident size near one tensor, not the checkpoint. */
void st_release(const st_model *m, const st_tensor *t);
/* Converts n elements starting at element `first` to float32. */
void st_to_f32(const st_tensor *t, uint64_t first, int64_t n, float *dst);

#endif
