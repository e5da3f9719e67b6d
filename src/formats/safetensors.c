/* safetensors.c - validated, memory-mapped safetensors reader (see the
 * header for the format). */
#define _GNU_SOURCE
#include "formats/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/json.h"
#include "quant/quant.h"
#include "util/atomic_file.h"

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},     [ST_I8] = {"I8", 1},
    [ST_U16] = {"U16", 2},   [ST_I16] = {"I16", 2},   [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_U32] = {"U32", 4},   [ST_I32] = {"I32", 4},
    [ST_F32] = {"F32", 4},   [ST_U64] = {"U64", 8},   [ST_I64] = {"I64", 8},
    [ST_F64] = {"F64", 8},   [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].name : "?";
}

size_t st_dtype_size(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].size : 0;
}

int st_is_float(st_dtype t)
{
    return t == ST_F32 || t == ST_F16 || t == ST_BF16 || t == ST_F64;
}

int64_t st_numel(const st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++)
        n *= t->shape[i];
    return n;
}

/* ---- name index (util/names.h) ---- */

static cm_name tensor_name(const void *arr, uint32_t i)
{
    const char *name = ((const st_tensor *)arr)[i].name;
    return (cm_name){name, strlen(name)};
}

const st_tensor *st_find(const st_model *m, const char *name)
{
    uint32_t i = cm_names_find(&m->names, tensor_name, m->tensors, name, strlen(name));
    return i == CM_NAMES_NONE ? NULL : &m->tensors[i];
}

/* Appends t (taking its name) unless the name is already present. */
static cm_status add_tensor(st_model *m, st_tensor *t, const char *what, cm_err *err)
{
    if (m->n_tensors == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 256;
        st_tensor *n = cap < UINT32_MAX ? realloc(m->tensors, cap * sizeof *n) : NULL;
        if (!n) {
            free(t->name);
            return cm_fail(err, CM_E_NOMEM, "out of memory reading %s", what);
        }
        m->tensors = n;
        m->cap = cap;
    }
    m->tensors[m->n_tensors] = *t;
    if (cm_names_add(&m->names, tensor_name, m->tensors, (uint32_t)m->n_tensors) !=
        CM_NAMES_NONE) {
        cm_fail(err, CM_E_FORMAT, "%s: tensor '%s' appears twice in the checkpoint", what, t->name);
        free(t->name);
        return CM_E_FORMAT;
    }
    m->n_tensors++;
    return CM_OK;
}

/* ---- header ---- */

static cm_status parse_shape(const json_doc *d, const json_node *sh, st_tensor *t,
                             const char *what, cm_err *err)
{
    if (!sh || sh->type != JSON_ARRAY || sh->n > ST_MAX_DIMS)
        return cm_fail(err, CM_E_FORMAT, "%s: tensor '%s': 'shape' must be an array of at most %d "
                       "sizes", what, t->name, ST_MAX_DIMS);
    uint64_t numel = 1;
    for (const json_node *c = json_first(d, sh); c; c = json_next(d, c)) {
        if (c->type != JSON_NUMBER || !c->is_int || c->i < 0 || c->i > ((int64_t)1 << 48))
            return cm_fail(err, CM_E_FORMAT, "%s: tensor '%s': bad dimension in 'shape'", what,
                           t->name);
        t->shape[t->n_dims++] = c->i;
        if (c->i && numel > ((uint64_t)1 << 60) / (uint64_t)c->i)
            return cm_fail(err, CM_E_FORMAT, "%s: tensor '%s': shape too large", what, t->name);
        numel *= (uint64_t)c->i;
    }
    t->nbytes = numel * st_dtype_size(t->dtype);
    return CM_OK;
}

static cm_status parse_offsets(const json_doc *d, const json_node *off, st_tensor *t,
                               const uint8_t *data, uint64_t data_size, const char *what,
                               cm_err *err)
{
    const json_node *b = json_first(d, off), *e = json_next(d, b);
    if (!off || off->type != JSON_ARRAY || off->n != 2 || b->type != JSON_NUMBER || !b->is_int ||
        e->type != JSON_NUMBER || !e->is_int)
        return cm_fail(err, CM_E_FORMAT, "%s: tensor '%s': 'data_offsets' must be [begin, end]",
                       what, t->name);
    if (b->i < 0 || e->i < b->i || (uint64_t)e->i > data_size)
        return cm_fail(err, CM_E_FORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] are outside "
                       "the data section (%llu bytes)", what, t->name, (long long)b->i,
                       (long long)e->i, (unsigned long long)data_size);
    if ((uint64_t)(e->i - b->i) != t->nbytes)
        return cm_fail(err, CM_E_FORMAT, "%s: tensor '%s': data_offsets span %lld bytes but its "
                       "shape and dtype %s need %llu", what, t->name, (long long)(e->i - b->i),
                       st_dtype_name(t->dtype), (unsigned long long)t->nbytes);
    t->data = data + b->i;
    return CM_OK;
}

static cm_status parse_entry(const json_doc *d, const json_node *n, const uint8_t *data,
                             uint64_t data_size, const char *what, int shard, st_model *m,
                             cm_err *err)
{
    st_tensor t = {.shard = shard};
    if (strlen(n->key) != n->key_len)
        return cm_fail(err, CM_E_FORMAT, "%s: a tensor name contains a NUL byte", what);
    if (n->type != JSON_OBJECT)
        return cm_fail(err, CM_E_FORMAT, "%s: entry '%s' is not an object", what, n->key);
    if (!(t.name = strdup(n->key)))
        return cm_fail(err, CM_E_NOMEM, "out of memory reading %s", what);
    const char *dt = json_get_str(d, n, "dtype");
    int k = 0;
    while (k < ST_DTYPE_COUNT && (!dt || strcmp(dt, dtypes[k].name)))
        k++;
    cm_status s = CM_OK;
    if (!dt)
        s = cm_fail(err, CM_E_FORMAT, "%s: tensor '%s' has no dtype", what, t.name);
    else if (k == ST_DTYPE_COUNT)
        s = cm_fail(err, CM_E_FORMAT, "%s: tensor '%s': unknown dtype '%.40s'", what, t.name, dt);
    t.dtype = (st_dtype)k;
    if (!s)
        s = parse_shape(d, json_get(d, n, "shape"), &t, what, err);
    if (!s)
        s = parse_offsets(d, json_get(d, n, "data_offsets"), &t, data, data_size, what, err);
    if (s) {
        free(t.name);
        return s;
    }
    return add_tensor(m, &t, what, err);
}

cm_status st_parse(const void *buf, size_t size, const char *what, int shard, st_model *m,
                   cm_err *err)
{
    const uint8_t *p = buf;
    uint64_t n = 0;
    if (size < 8)
        return cm_fail(err, CM_E_FORMAT, "%s: truncated safetensors file (%zu bytes, no header "
                       "length)", what, size);
    for (int i = 7; i >= 0; i--)
        n = n << 8 | p[i];
    if (n > size - 8)
        return cm_fail(err, CM_E_FORMAT, "%s: header length %llu runs past the end of the file "
                       "(%zu bytes)", what, (unsigned long long)n, size);
    if (n > ST_MAX_HEADER || n < 2)
        return cm_fail(err, CM_E_FORMAT, "%s: implausible header length %llu", what,
                       (unsigned long long)n);
    json_doc d;
    char hwhat[600];
    snprintf(hwhat, sizeof hwhat, "%s (header)", what);
    cm_status s = json_parse((const char *)p + 8, (size_t)n, hwhat, &d, err);
    if (s)
        return s;
    const json_node *root = json_root(&d);
    if (root->type != JSON_OBJECT)
        s = cm_fail(err, CM_E_FORMAT, "%s: the header is not a JSON object", what);
    for (const json_node *c = json_first(&d, root); c && !s; c = json_next(&d, c)) {
        if (!strcmp(c->key, "__metadata__")) {
            if (c->type != JSON_OBJECT)
                s = cm_fail(err, CM_E_FORMAT, "%s: __metadata__ is not an object", what);
            continue;
        }
        s = parse_entry(&d, c, p + 8 + n, size - 8 - n, what, shard, m, err);
    }
    json_free(&d);
    return s;
}

/* ---- files ---- */

static cm_status add_shard(st_model *m, const char *path, cm_err *err)
{
    st_shard *sh = realloc(m->shards, (size_t)(m->n_shards + 1) * sizeof *sh);
    if (!sh)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    m->shards = sh;
    memset(&sh[m->n_shards], 0, sizeof *sh);
    if (!(sh[m->n_shards].path = strdup(path)))
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    m->n_shards++;
    return CM_OK;
}

cm_status st_open_file(const char *path, st_model *m, cm_err *err)
{
    struct stat st;
    cm_status s = add_shard(m, path, err);
    if (s)
        return s;
    st_shard *sh = &m->shards[m->n_shards - 1];
    int fd;
    if ((s = cm_open_regular(path, &fd, err))) /* a FIFO would block open(2) */
        return s;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return cm_fail(err, CM_E_IO, "cannot read %s: %s", path, strerror(e));
    }
    if (st.st_size < 8) {
        close(fd);
        return cm_fail(err, CM_E_FORMAT, "%s: truncated safetensors file (%lld bytes, no header "
                       "length)", path, (long long)st.st_size);
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (base == MAP_FAILED)
        return cm_fail(err, CM_E_IO, "cannot map %s: %s", path, strerror(errno));
    sh->base = base;
    sh->size = (size_t)st.st_size;
    sh->mapped = 1;
    return st_parse(sh->base, sh->size, path, m->n_shards - 1, m, err);
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A shard name from the index must stay inside the folder. */
static int safe_name(const char *s)
{
    return *s && *s != '/' && !strstr(s, "..") && !strchr(s, '\\');
}

/* Every tensor the index names must be in the shard it names. */
static cm_status check_weight_map(const json_doc *d, const json_node *wm, const st_model *m,
                                  const char *dir, cm_err *err)
{
    for (const json_node *c = json_first(d, wm); c; c = json_next(d, c)) {
        const st_tensor *t = st_find(m, c->key);
        const char *want = c->str, *got;
        if (!t)
            return cm_fail(err, CM_E_FORMAT, "%s/model.safetensors.index.json puts tensor '%s' in "
                           "%s, but it is not there", dir, c->key, want);
        got = strrchr(m->shards[t->shard].path, '/');
        got = got ? got + 1 : m->shards[t->shard].path;
        if (strcmp(got, strrchr(want, '/') ? strrchr(want, '/') + 1 : want))
            return cm_fail(err, CM_E_FORMAT, "%s/model.safetensors.index.json puts tensor '%s' in "
                           "%s, but it is in %s", dir, c->key, want, got);
    }
    return CM_OK;
}

/* Sorted, de-duplicated shard names of the index's weight_map. */
static cm_status index_shards(const json_doc *d, const json_node *wm, const char *ipath,
                              char ***out, size_t *n_out, cm_err *err)
{
    char **names = malloc((wm->n ? wm->n : 1) * sizeof *names);
    size_t n = 0;
    if (!names)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (const json_node *c = json_first(d, wm); c; c = json_next(d, c)) {
        if (c->type != JSON_STRING || !safe_name(c->str)) {
            free(names);
            return cm_fail(err, CM_E_FORMAT, "%s: weight_map entry '%s' does not name a file in "
                           "the folder", ipath, c->key);
        }
        names[n++] = (char *)c->str;
    }
    qsort(names, n, sizeof *names, cmp_str);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!k || strcmp(names[k - 1], names[i]))
            names[k++] = names[i];
    *out = names;
    *n_out = k;
    return CM_OK;
}

static cm_status open_index(const char *dir, const char *ipath, st_model *m, cm_err *err)
{
    json_doc d;
    char **names = NULL, path[4096];
    size_t n = 0;
    cm_status s = json_parse_file(ipath, NULL, &d, err);
    if (s)
        return s;
    const json_node *wm = json_get(&d, json_root(&d), "weight_map");
    if (!wm || wm->type != JSON_OBJECT || !wm->n)
        s = cm_fail(err, CM_E_FORMAT, "%s has no weight_map object", ipath);
    if (!s)
        s = index_shards(&d, wm, ipath, &names, &n, err);
    for (size_t i = 0; i < n && !s; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (!is_file(path))
            s = cm_fail(err, CM_E_IO, "shard %s named in %s is missing", names[i], ipath);
        else
            s = st_open_file(path, m, err);
    }
    if (!s)
        s = check_weight_map(&d, wm, m, dir, err);
    free(names);
    json_free(&d);
    return s;
}

/* No index and no model.safetensors: every model*.safetensors, sorted. */
static cm_status open_glob(const char *dir, st_model *m, cm_err *err)
{
    DIR *dp = opendir(dir);
    char **names = NULL, path[4096];
    size_t n = 0, cap = 0;
    cm_status s = CM_OK;
    if (!dp)
        return cm_fail(err, CM_E_IO, "cannot open %s: %s", dir, strerror(errno));
    for (struct dirent *e; !s && (e = readdir(dp));) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, "model", 5) || l < 12 || strcmp(e->d_name + l - 12, ".safetensors"))
            continue;
        if (n == cap) {
            char **nn = realloc(names, (cap = cap ? cap * 2 : 8) * sizeof *nn);
            if (!nn)
                s = cm_fail(err, CM_E_NOMEM, "out of memory");
            else
                names = nn;
        }
        if (!s && !(names[n++] = strdup(e->d_name)))
            s = cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    closedir(dp);
    if (!s && n)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && !s; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        s = st_open_file(path, m, err);
    }
    if (!s && !n) {
        snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
        s = cm_fail(err, CM_E_IO, "%s has no model.safetensors%s", dir,
                    is_file(path) ? " (PyTorch .bin checkpoints are not supported: save the "
                                    "model as safetensors first)" : "");
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return s;
}

cm_status st_open_dir(const char *dir, st_model *m, cm_err *err)
{
    char path[4096];
    memset(m, 0, sizeof *m);
    if (strlen(dir) > 3000)
        return cm_fail(err, CM_E_USAGE, "path too long: %.100s...", dir);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (is_file(path))
        return open_index(dir, path, m, err);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (is_file(path))
        return st_open_file(path, m, err);
    return open_glob(dir, m, err);
}

void st_close(st_model *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n_shards; i++) {
        if (m->shards[i].mapped)
            munmap((void *)m->shards[i].base, m->shards[i].size);
        free(m->shards[i].path);
    }
    for (size_t i = 0; i < m->n_tensors; i++)
        free(m->tensors[i].name);
    free(m->shards);
    free(m->tensors);
    cm_names_free(&m->names);
    memset(m, 0, sizeof *m);
}

void st_release(const st_model *m, const st_tensor *t)
{
    const st_shard *sh = &m->shards[t->shard];
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), base = (uintptr_t)sh->base;
    if (!sh->mapped || !t->nbytes)
        return;
    /* a private read-only file mapping: dropped pages simply fault back in,
     * so rounding outward to whole pages is safe */
    uintptr_t lo = (uintptr_t)t->data & ~(page - 1);
    uintptr_t hi = ((uintptr_t)t->data + t->nbytes + page - 1) & ~(page - 1);
    if (hi > base + sh->size)
        hi = (base + sh->size + page - 1) & ~(page - 1);
    madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

void st_to_f32(const st_tensor *t, uint64_t first, int64_t n, float *dst)
{
    const uint8_t *p = t->data + first * st_dtype_size(t->dtype);
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, p, (size_t)n * 4);
        break;
    case ST_F16:
    case ST_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
            dst[i] = t->dtype == ST_F16 ? cm_f16_to_f32(h) : cm_bf16_to_f32(h);
        }
        break;
    case ST_F64:
        for (int64_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            dst[i] = (float)v;
        }
        break;
    default: /* callers check st_is_float first */
        memset(dst, 0, (size_t)n * sizeof *dst);
    }
}
