/* quantize.h - quantizing GGUF models the way llama-quantize does.
 *
 * Three layers, each usable on its own:
 *
 *   1. The policy (cm_quantize_choose): which type each tensor gets for a
 *      target such as q4_k_m.  It follows llama.cpp's documented mixes:
 *      norms, biases, routers and other 1-D tensors keep their type; the
 *      output projection gets q6_K; the *_M mixes give attn_v and ffn_down
 *      more bits in the "use more bits" layers (the first and last eighth
 *      and every third layer in between); MoE experts are placed by the
 *      layer in their name; rows that do not fill the chosen type's blocks
 *      fall back to a legacy type (q4_K -> q5_0, q5_K -> q5_1, q6_K ->
 *      q8_0, q2_K/q3_K -> q4_0, then f16).  The converter uses it too.
 *
 *   2. The row quantizer (cm_quantize_weights): llama.cpp's reference
 *      encoders re-implemented operation for operation, so our bytes match
 *      llama-quantize's (no importance matrix).
 *
 *   3. Files (cm_quantize_job_*, cm_quantize_to_path, cm_quantize_file):
 *      metadata copied with general.file_type updated, tensors in
 *      llama.cpp's order, each quantized from the dequantized source while
 *      the file is written (memory: about one tensor), with the RMS error
 *      of every tensor.  A job adds itself to any gguf_writer, so a caller
 *      that wants the model in memory (a sweep over types) can finish the
 *      writer into a memfd instead of a path. */
#ifndef CM_QUANTIZE_H
#define CM_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "formats/gguf.h"
#include "util/status.h"

/* ------------------------------------------------------------ targets */

typedef struct {
    const char *name;  /* lower case: "q4_k_m" (lookups ignore case) */
    uint32_t ftype;    /* llama.cpp's general.file_type for it */
    uint32_t base;     /* the type most weights get (enum cm_type) */
    const char *about; /* one line for --help */
} cm_qmix;

/* The target called name ("Q4_K_M", "q4_k", "f16", ...), or NULL.  The
 * bare K names are llama.cpp's aliases: q3_k, q4_k, q5_k -> the _m mixes. */
const cm_qmix *cm_qmix_find(const char *name);
/* The i-th target (i from 0), or NULL past the last one. */
const cm_qmix *cm_qmix_at(size_t i);
/* "f32, f16, bf16, q8_0, ..." for messages. */
void cm_qmix_names(char *buf, size_t cap);

/* ------------------------------------------------------------ policy */

/* What the policy needs to know about the model (from its metadata). */
typedef struct {
    char arch[32];  /* general.architecture */
    int n_layer, n_head, n_head_kv, n_expert;
} cm_qmodel;

typedef struct {
    const char *name;   /* llama.cpp's tensor name */
    uint32_t n_dims;
    int64_t ne[4];      /* unused dims 1 */
    uint32_t src_type;  /* the type the data has now */
    /* set by cm_quantize_choose: */
    uint32_t type;      /* the type to store */
    uint32_t wanted;    /* what the mix asked for before a fallback */
    int convert;        /* 0: type == src_type, the bytes are copied */
    int fallback;       /* 1: wanted's blocks do not fit the rows */
} cm_qtensor;

/* Chooses every tensor's type.  The choices depend on the tensor's
 * position among its kind, counted in llama.cpp's order (by layer, then
 * name) whatever the order of t.  pure: every weight gets the base type
 * (still with the row-length fallback).  Fails (CM_E_FORMAT) only for an
 * expert tensor outside blk.N. of the model's layers. */
cm_status cm_quantize_choose(const cm_qmix *mix, const cm_qmodel *m, int pure, cm_qtensor *t,
                             size_t n, cm_err *err);

/* Reads arch, layers, heads and experts from a GGUF's metadata. */
void cm_qmodel_from_gguf(const gguf_file *f, cm_qmodel *m);

/* ------------------------------------------------------------ rows */

/* Encodes n floats (a whole number of the type's blocks) as llama.cpp's
 * reference quantizer would: F32/F16/BF16 convert; Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0 (ties away from zero) and Q2_K..Q6_K quantize.  Returns 0, or -1 for
 * another type or a bad n.  Thread-safe. */
int cm_quantize_weights(uint32_t type, const float *src, void *dst, int64_t n);

/* ------------------------------------------------------------ files */

typedef struct {
    FILE *log;  /* per-tensor lines and the summary; NULL: none */
    FILE *warn; /* warnings (fallbacks, requantizing); NULL: to log */
    int quiet;  /* only warnings and the summary */
    int pure;   /* see cm_quantize_choose */
    int pack;   /* 1: a language-expert pack is quantized whole, each member
                 * as its own model would be; 0: a pack is refused */
    gguf_progress_fn progress; /* the writer's progress (NULL: none) */
    void *progress_ctx;
} cm_quantize_opts;

typedef struct {
    uint64_t n_tensors, n_converted, n_fallback, n_requantized;
    uint64_t n_elements, bytes_in, bytes_out; /* tensor data only */
} cm_quantize_stats;

typedef struct cm_quantize_job cm_quantize_job;

/* Plans src (which must stay open while the job lives) for target mix.
 * Fails for a pack unless o->pack, or for a tensor that would need
 * converting from a type codemoe cannot decode. */
cm_status cm_quantize_job_new(const gguf_file *src, const cm_qmix *mix,
                              const cm_quantize_opts *o, cm_quantize_job **out, cm_err *err);
void cm_quantize_job_free(cm_quantize_job *j);

/* Adds the metadata and the tensors to w (a fresh writer).  The tensors
 * are produced, their lines printed and their errors measured when the
 * caller finishes w; the job must live until then. */
cm_status cm_quantize_job_add(cm_quantize_job *j, gguf_writer *w, cm_err *err);

size_t cm_quantize_job_count(const cm_quantize_job *j);
/* Tensor i in output order, with its RMS error (after the writer
 * finished; 0 for copied tensors) in *rmse when rmse is non-NULL. */
const cm_qtensor *cm_quantize_job_tensor(const cm_quantize_job *j, size_t i, double *rmse);
void cm_quantize_job_stats(const cm_quantize_job *j, cm_quantize_stats *s);

/* Job + writer + gguf_writer_finish(path): a temporary beside path renamed
 * over it when complete, nothing left behind on failure.  stats may be NULL. */
cm_status cm_quantize_to_path(const gguf_file *src, const cm_qmix *mix, const char *path,
                              const cm_quantize_opts *o, cm_quantize_stats *stats, cm_err *err);

/* The whole command: refuses in == out, loads in as cm_model_load does (a
 * model `run` would reject is refused before anything is written),
 * quantizes to the target named type_name (CM_E_USAGE, listing the valid
 * ones, if unknown), prints a summary to o->log.  o may be NULL (silent). */
cm_status cm_quantize_file(const char *in, const char *out, const char *type_name,
                           const cm_quantize_opts *o, cm_err *err);

#endif
