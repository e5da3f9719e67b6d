/* pack.h - language-expert packs: one GGUF file holding N expert models
 * (one per programming language) and an optional generalist fallback,
 * with one shared tokenizer and every tensor identical across members
 * stored once.
 *
 * Format: an ordinary GGUF file whose metadata is that of the members
 * (architecture, hyper-parameters, tokenizer: identical in all of them) plus
 *   codemoe.pack.version   u32     1
 *   codemoe.pack.experts   [str]   member languages, e.g. ["c", "python"]
 *   codemoe.pack.fallback  str     "fallback" when a generalist is included
 * Tensor names are "<member>/<llama.cpp name>" for a member's own tensors
 * and "shared/<llama.cpp name>" for tensors identical in every member.
 * A member sees its own copy of a tensor if there is one, else the shared
 * one, so loading one expert touches only its own and the shared bytes. */
#ifndef CM_PACK_H
#define CM_PACK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "formats/gguf.h"
#include "util/status.h"

#define CM_PACK_SHARED "shared"
#define CM_PACK_FALLBACK "fallback"
#define CM_PACK_MAX_MEMBERS 16

/* Whether f is a pack and, if so, the member to load by default: the
 * fallback when there is one, else the first expert. */
cm_status cm_pack_default_member(const gguf_file *f, const char *path, int *is_pack,
                                 char *member, size_t cap, cm_err *err);
int cm_pack_has_member(const gguf_file *f, const char *name);

/* Member names of a pack: languages first, then "fallback" if present.
 * Returns the count (0 for a file that is not a pack). */
int cm_pack_members(const gguf_file *f, char names[][32], int max);

typedef struct {
    const char *name; /* a language, or "fallback" */
    const char *path;
} cm_pack_input;

/* Builds a pack from model files that share architecture, hyper-parameters,
 * tokenizer and tensor shapes (otherwise the message names what differs).
 * Writes atomically; a line per tensor group to log (if non-NULL). */
cm_status cm_pack_build(const cm_pack_input *in, int n, const char *out_path, FILE *log,
                        cm_err *err);

#endif
