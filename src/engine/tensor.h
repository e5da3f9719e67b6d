/* tensor.h - a tensor: (buffer, offset, type, shape).
 *
 * Weights are views into the mapped model file (buf NULL: plain host
 * memory, the mapping); activations live in a backend's buffers. */
#ifndef CM_TENSOR_H
#define CM_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "quant/quant.h"

/* Memory a backend allocated.  host: the bytes' address when the CPU can
 * read them (CPU memory, mapped device memory), else NULL. */
typedef struct {
    void *host;
    void *dev;  /* the backend's own handle */
    size_t size;
} cm_buffer;

/* ne[0] is the row length (contiguous), ne[1] the number of rows, ne[2] the
 * number of matrices (experts), as in GGUF.  Unused dims are 1. */
typedef struct {
    const char *name;
    enum cm_type type;
    int n_dims;
    int64_t ne[4];
    const void *data; /* host address of the bytes (buf->host + offs), or
                       * NULL: absent, or only in device memory */
    size_t nbytes;
    cm_buffer *buf;   /* NULL: host memory at data (the mapped file) */
    size_t offs;      /* offset of the first byte in buf */
} cm_tensor;

static inline int64_t cm_tensor_rows(const cm_tensor *t)
{
    return t->ne[1] * t->ne[2] * t->ne[3];
}

/* Writable host bytes of an activation tensor (NULL on a device). */
static inline float *cm_f32(const cm_tensor *t)
{
    return (float *)(uintptr_t)t->data;
}

/* Whether an optional tensor is there (in host or device memory). */
static inline int cm_tensor_present(const cm_tensor *t)
{
    return t && (t->data || t->buf);
}

#endif
