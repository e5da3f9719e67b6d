/* pack.c - building and reading language-expert packs (format: pack.h). */
#include "experts/pack.h"

#include <stdlib.h>
#include <string.h>

static const char *const LANGS[] = {"c", "cpp", "python", "java", "javascript", "go", "rust"};

static int known_language(const char *s)
{
    for (size_t i = 0; i < sizeof LANGS / sizeof LANGS[0]; i++)
        if (!strcmp(s, LANGS[i]))
            return 1;
    return 0;
}

/* ------------------------------------------------------------- reading */

int cm_pack_members(const gguf_file *f, char names[][32], int max)
{
    gguf_str *ex = NULL, fb;
    uint64_t n = 0;
    int count = 0;
    if (!gguf_find(f, "codemoe.pack.version") ||
        gguf_get_str_array(f, "codemoe.pack.experts", &ex, &n, NULL) != CM_OK)
        return 0;
    for (uint64_t i = 0; i < n && count < max; i++)
        if (ex[i].len < 32) {
            memcpy(names[count], ex[i].ptr, ex[i].len);
            names[count++][ex[i].len] = 0;
        }
    free(ex);
    if (count < max && gguf_get_str(f, "codemoe.pack.fallback", &fb, NULL) == CM_OK)
        snprintf(names[count++], 32, "%s", CM_PACK_FALLBACK);
    return count;
}

int cm_pack_has_member(const gguf_file *f, const char *name)
{
    char names[CM_PACK_MAX_MEMBERS][32];
    int n = cm_pack_members(f, names, CM_PACK_MAX_MEMBERS);
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], name))
            return 1;
    return 0;
}

cm_status cm_pack_default_member(const gguf_file *f, const char *path, int *is_pack,
                                 char *member, size_t cap, cm_err *err)
{
    char names[CM_PACK_MAX_MEMBERS][32];
    uint32_t version;
    *is_pack = 0;
    member[0] = 0;
    cm_status s = gguf_get_u32(f, "codemoe.pack.version", &version, err);
    if (s == CM_E_RANGE)
        return CM_OK; /* an ordinary model */
    if (s)
        return s;
    if (version != 1)
        return cm_fail(err, CM_E_UNSUPPORTED, "%s: pack version %u is not supported (1 is)", path,
                       version);
    int n = cm_pack_members(f, names, CM_PACK_MAX_MEMBERS);
    if (n == 0)
        return cm_fail(err, CM_E_FORMAT, "%s: pack lists no experts (codemoe.pack.experts)", path);
    *is_pack = 1;
    snprintf(member, cap, "%s", names[n - 1][0] == 'f' && !strcmp(names[n - 1], CM_PACK_FALLBACK)
                                    ? names[n - 1]
                                    : names[0]);
    return CM_OK;
}

/* ------------------------------------------------------------ building */

/* Bytes of a validated metadata value (the parser checked every length). */
static uint64_t scalar_size(uint32_t t)
{
    static const uint8_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < sizeof sz ? sz[t] : 0;
}

static uint64_t value_size(uint32_t type, uint32_t arr_type, uint64_t arr_n, const uint8_t *p)
{
    uint64_t len;
    if (type == GGUF_STRING) {
        memcpy(&len, p, 8);
        return 8 + len;
    }
    if (type != GGUF_ARRAY)
        return scalar_size(type);
    if (arr_type != GGUF_STRING)
        return arr_n * scalar_size(arr_type);
    uint64_t off = 0;
    for (uint64_t i = 0; i < arr_n; i++) {
        memcpy(&len, p + off, 8);
        off += 8 + len;
    }
    return off;
}

static int same_kv(const gguf_kv *a, const gguf_kv *b)
{
    if (a->type != b->type || a->arr_type != b->arr_type || a->arr_n != b->arr_n)
        return 0;
    uint64_t na = value_size(a->type, a->arr_type, a->arr_n, a->data);
    return na == value_size(b->type, b->arr_type, b->arr_n, b->data) && !memcmp(a->data, b->data, na);
}

/* Architecture, hyper-parameters and tokenizer must agree (general.* may
 * differ: names, file types). */
static cm_status check_metadata(const gguf_file *f, const gguf_file *ref, const cm_pack_input *a,
                                const cm_pack_input *b, cm_err *err)
{
    for (int pass = 0; pass < 2; pass++) {
        const gguf_file *x = pass ? ref : f, *y = pass ? f : ref;
        for (uint64_t i = 0; i < x->n_kv; i++) {
            const gguf_kv *kv = &x->kv[i];
            char key[256];
            if (kv->key.len >= sizeof key || (kv->key.len >= 8 && !memcmp(kv->key.ptr, "general.", 8)))
                continue;
            memcpy(key, kv->key.ptr, kv->key.len);
            key[kv->key.len] = 0;
            const gguf_kv *other = gguf_find(y, key);
            if (!other || !same_kv(kv, other))
                return cm_fail(err, CM_E_FORMAT, "experts differ: metadata %s of %s (%s) and %s (%s)%s",
                               key, a->name, a->path, b->name, b->path,
                               !strncmp(key, "tokenizer.", 10) ? ": they must share one tokenizer" : "");
        }
    }
    return CM_OK;
}

static cm_status check_tensors(const gguf_file *f, const gguf_file *ref, const cm_pack_input *a,
                               const cm_pack_input *b, cm_err *err)
{
    if (f->n_tensors != ref->n_tensors)
        return cm_fail(err, CM_E_FORMAT, "experts differ: %s has %llu tensors, %s has %llu", a->path,
                       (unsigned long long)ref->n_tensors, b->path, (unsigned long long)f->n_tensors);
    for (uint64_t i = 0; i < ref->n_tensors; i++) {
        const gguf_tensor *t = &ref->tensors[i];
        char name[200];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        const gguf_tensor *u = gguf_find_tensor(f, name);
        if (!u)
            return cm_fail(err, CM_E_FORMAT, "experts differ: %s has tensor %s, %s does not", a->path,
                           name, b->path);
        if (memcmp(t->ne, u->ne, sizeof t->ne))
            return cm_fail(err, CM_E_FORMAT,
                           "experts differ: tensor %s is [%lld, %lld, %lld] in %s but [%lld, %lld, %lld] in %s",
                           name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], a->path,
                           (long long)u->ne[0], (long long)u->ne[1], (long long)u->ne[2], b->path);
    }
    return CM_OK;
}

static cm_status check_inputs(const cm_pack_input *in, int n, cm_err *err)
{
    int fallbacks = 0;
    if (n < 1 || n > CM_PACK_MAX_MEMBERS)
        return cm_fail(err, CM_E_USAGE, "a pack holds 1 to %d members", CM_PACK_MAX_MEMBERS);
    for (int i = 0; i < n; i++) {
        int fb = !strcmp(in[i].name, CM_PACK_FALLBACK);
        fallbacks += fb;
        if (!fb && !known_language(in[i].name))
            return cm_fail(err, CM_E_USAGE, "'%s' is not a language the router knows "
                           "(c, cpp, python, java, javascript, go, rust)", in[i].name);
        for (int j = 0; j < i; j++)
            if (!strcmp(in[i].name, in[j].name))
                return cm_fail(err, CM_E_USAGE, "expert '%s' is given twice", in[i].name);
    }
    if (fallbacks == n)
        return cm_fail(err, CM_E_USAGE, "a pack needs at least one --expert LANG=FILE");
    return CM_OK;
}

/* Writes every tensor: once under shared/ when all members hold the same
 * bytes, else once per member under its name. */
static cm_status add_tensors(gguf_writer *w, const gguf_file *files, const cm_pack_input *in,
                             int n, int *n_own, uint64_t *saved)
{
    const gguf_file *ref = &files[0];
    cm_status s = CM_OK;
    for (uint64_t i = 0; i < ref->n_tensors && !s; i++) {
        const gguf_tensor *t = &ref->tensors[i];
        char name[200], full[240];
        int shared = 1;
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        for (int k = 1; k < n && shared; k++) {
            const gguf_tensor *u = gguf_find_tensor(&files[k], name);
            shared = u->type == t->type && u->nbytes == t->nbytes && !memcmp(u->data, t->data, t->nbytes);
        }
        if (shared) {
            snprintf(full, sizeof full, "%s/%s", CM_PACK_SHARED, name);
            s = gguf_writer_add_tensor(w, full, t->type, t->n_dims, t->ne, t->data, NULL, NULL);
            *saved += t->nbytes * (uint64_t)(n - 1);
            continue;
        }
        for (int k = 0; k < n && !s; k++) {
            const gguf_tensor *u = gguf_find_tensor(&files[k], name);
            snprintf(full, sizeof full, "%s/%s", in[k].name, name);
            s = gguf_writer_add_tensor(w, full, u->type, u->n_dims, u->ne, u->data, NULL, NULL);
        }
        ++*n_own;
    }
    return s;
}

static cm_status write_pack(const gguf_file *files, const cm_pack_input *in, int n,
                            const char *out_path, FILE *log, cm_err *err)
{
    gguf_writer *w = gguf_writer_new(3);
    const char *langs[CM_PACK_MAX_MEMBERS];
    int n_langs = 0, has_fb = 0, n_own = 0;
    uint64_t saved = 0;
    if (!w)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        if (!strcmp(in[i].name, CM_PACK_FALLBACK))
            has_fb = 1;
        else
            langs[n_langs++] = in[i].name;
    }
    cm_status s = gguf_writer_copy_kv(w, &files[0], NULL, NULL);
    if (!s)
        s = gguf_writer_set_u32(w, "codemoe.pack.version", 1);
    if (!s)
        s = gguf_writer_set_str_arr(w, "codemoe.pack.experts", langs, (uint64_t)n_langs);
    if (!s && has_fb)
        s = gguf_writer_set_str(w, "codemoe.pack.fallback", CM_PACK_FALLBACK);
    if (!s)
        s = add_tensors(w, files, in, n, &n_own, &saved);
    s = s ? cm_fail(err, s, "%s: cannot assemble the pack", out_path)
          : gguf_writer_finish(w, out_path, err);
    gguf_writer_free(w);
    if (!s && log)
        fprintf(log, "wrote %s: %d experts%s; %llu tensors shared (%.2f MiB saved), %d per expert\n",
                out_path, n_langs, has_fb ? " + fallback" : "",
                (unsigned long long)(files[0].n_tensors - (uint64_t)n_own), saved / 1048576.0, n_own);
    return s;
}

cm_status cm_pack_build(const cm_pack_input *in, int n, const char *out_path, FILE *log,
                        cm_err *err)
{
    gguf_file files[CM_PACK_MAX_MEMBERS];
    int opened = 0;
    cm_status s = check_inputs(in, n, err);
    memset(files, 0, sizeof files);
    for (int i = 0; !s && i < n; i++) {
        if ((s = gguf_open(in[i].path, &files[i], err)))
            break;
        opened++;
        if (gguf_find(&files[i], "codemoe.pack.version"))
            s = cm_fail(err, CM_E_USAGE, "%s is already a pack", in[i].path);
        else if (i > 0 && !(s = check_metadata(&files[i], &files[0], &in[0], &in[i], err)))
            s = check_tensors(&files[i], &files[0], &in[0], &in[i], err);
    }
    if (!s)
        s = write_pack(files, in, n, out_path, log, err);
    for (int i = 0; i < opened; i++)
        gguf_close(&files[i]);
    return s;
}
