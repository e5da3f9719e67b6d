/* tensor.h - a view of a weight tensor inside a mapped model file. */
#ifndef CM_TENSOR_H
#define CM_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "quant/quant.h"

/* ne[0] is the row length (contiguous), ne[1] the number of rows, ne[2] the
 * number of matrices (experts), as in GGUF.  Unused dims are 1. */
typedef struct {
    const char *name;
    enum cm_type type;
    int n_dims;
    int64_t ne[4];
    const void *data; /* read-only, usually inside an mmap */
    size_t nbytes;
} cm_tensor;

static inline int64_t cm_tensor_rows(const cm_tensor *t)
{
    return t->ne[1] * t->ne[2] * t->ne[3];
}

#endif
