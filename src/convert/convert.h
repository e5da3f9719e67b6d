/* convert.h - Hugging Face checkpoint folder -> GGUF.
 *
 * Reads config.json, the safetensors weights (one file or shards) and, when
 * present, the tokenizer (tokenizer.model or tokenizer.json), and writes a
 * GGUF with the metadata keys and tensor names llama.cpp's converter uses
 * for the architecture, so the file loads in llama.cpp as well as here.
 *
 * Everything is validated before the output is created: an unknown
 * architecture, a tensor whose shape disagrees with config.json, a missing
 * shard or a corrupt safetensors header fails with one line naming it and
 * no output file.  Tensor data is then streamed tensor by tensor (the peak
 * memory is about the largest output tensor) into a temporary beside the
 * output, renamed over it only when complete. */
#ifndef CM_CONVERT_H
#define CM_CONVERT_H

#include <stdint.h>
#include <stdio.h>

#include "formats/gguf.h"
#include "util/status.h"

typedef struct {
    const char *hf_dir;
    const char *out_path;
    uint32_t type;   /* CM_TYPE_F32, F16, BF16, Q8_0, Q4_0 ... Q6_K (a K type means
                        its _m mix) */
    const char *mix; /* or a target of quantize.h by name ("q4_k_s"); wins over
                        type.  f32/f16/bf16/q8_0 follow llama.cpp's converter,
                        the others llama-quantize's per-tensor types */
    FILE *log;       /* warnings and the summary; NULL for silence */
    int verbose;     /* also one line per tensor */
    gguf_progress_fn progress; /* the writer's progress (NULL: none) */
    void *progress_ctx;
} cm_convert_opts;

typedef struct {
    char arch[32];       /* general.architecture written */
    uint64_t n_tensors;
    uint64_t n_bytes;    /* bytes of tensor data */
    int n_fallback;      /* weights that could not take the requested type */
    int has_tokenizer;
} cm_convert_result;

/* res may be NULL. */
cm_status cm_convert(const cm_convert_opts *o, cm_convert_result *res, cm_err *err);

/* A target name ("f16", "q8_0", "q4_k_m", ... see quantize.h) -> the type
 * most weights get and llama.cpp's general.file_type; returns 0, or -1 for
 * an unknown name. */
int cm_convert_type(const char *name, uint32_t *type, uint32_t *file_type);

/* ---- internal, shared by convert.c and hf_tokenizer.c ---- */

/* Adds the tokenizer.* keys from dir's tokenizer.model (SentencePiece ->
 * "llama") or tokenizer.json (byte-level BPE -> "gpt2"), plus special token
 * ids and flags from tokenizer_config.json / config.json, as llama.cpp's
 * converter does.  n_vocab is config.json's vocab_size (-1 if absent).
 * *added is 0 when the folder has no usable tokenizer (not an error). */
cm_status hf_tokenizer_add(gguf_writer *w, const char *dir, int64_t n_vocab, FILE *log,
                           int *added, cm_err *err);

#endif
