/* corpus.h - text for perplexity runs: the shared code corpus and plain files.
 *
 * The corpus is laid out as <DIR>/<lang>/<split>.jsonl.xz (see
 * ../shared/corpus/README.md): xz-compressed, one JSON object per line, the
 * source file in its "content" string.  The reader streams the xz data through
 * liblzma (the train split is ~18 MB decoded, so it can stop early) and
 * decodes only the "content" string of each line; the other members are
 * checked for well-formedness and skipped.
 *
 * Documents are joined the way llama.cpp's perplexity joins a text file's
 * paragraphs: one after the other, separated by "\n\n" (no EOS token between
 * them; the text is tokenized as one string later).  Nothing here keeps
 * global state. */
#ifndef CM_CORPUS_H
#define CM_CORPUS_H

#include <stddef.h>

#include "util/status.h"

/* A growable byte buffer.  Start zeroed; free with cm_buf_free. */
typedef struct {
    char *p;
    size_t len, cap;
} cm_buf;

cm_status cm_buf_append(cm_buf *b, const void *data, size_t n, cm_err *err);
void cm_buf_free(cm_buf *b);

/* What a corpus read produced. */
typedef struct {
    size_t n_docs;   /* documents (lines with content) appended */
    size_t n_lines;  /* lines read, blank ones included */
    int complete;    /* 1: the whole file was read; 0: stopped at max_bytes */
} cm_corpus_info;

/* Decodes the "content" string of one JSONL line (len bytes, no newline)
 * and appends it to out.  On malformed JSON, a "content" that is missing or
 * not a string, returns CM_E_FORMAT with a short reason in why (no file or
 * line: the caller adds them).  \uXXXX escapes become UTF-8, surrogate pairs
 * combined; a lone surrogate becomes U+FFFD, as Python's json would keep
 * it but UTF-8 cannot carry it.  Never reads outside line[0..len). */
cm_status cm_jsonl_content(const char *line, size_t len, cm_buf *out, char *why, size_t why_cap);

/* Streams an xz-compressed JSONL file, appending each line's content to out
 * ("\n\n" between documents, also between this call's first document and
 * text already in out).  Stops after the document that brings out->len to
 * max_bytes or beyond (0: no limit).  Errors name the path, and the line for
 * malformed JSON; truncated or corrupt xz data is CM_E_FORMAT. */
cm_status cm_corpus_read_xz(const char *path, size_t max_bytes, cm_buf *out,
                            cm_corpus_info *info, cm_err *err);

/* Streams an xz-compressed JSONL file document by document: on_doc gets
 * each line's decoded content (valid until it returns; blank lines are
 * skipped).  A status other than CM_OK from on_doc stops the read and is
 * returned.  Errors as cm_corpus_read_xz; on malformed JSON the documents
 * before the bad line have been handed over already. */
typedef cm_status (*cm_doc_fn)(void *ctx, const char *text, size_t len, cm_err *err);
cm_status cm_corpus_each_doc(const char *path, cm_doc_fn on_doc, void *ctx,
                             cm_corpus_info *info, cm_err *err);

/* Reads <dir>/<lang>/<split>.jsonl.xz (split NULL means "valid"; any name
 * cm_corpus_name_ok accepts).  A missing directory, an unknown language or
 * split (the message lists those present) is CM_E_IO. */
cm_status cm_corpus_load(const char *dir, const char *lang, const char *split, size_t max_bytes,
                         cm_buf *out, cm_corpus_info *info, cm_err *err);

/* 1 when s can name a language or split: one path component, not "." or
 * "..", at most 200 bytes (so no name leads outside the corpus folder). */
int cm_corpus_name_ok(const char *s);

/* For --split: CM_E_USAGE when split is not a name, or when <dir>/<lang>
 * exists but holds no <split>.jsonl.xz (the message lists the splits it
 * has).  Other problems are left to cm_corpus_load. */
cm_status cm_corpus_check_split(const char *dir, const char *lang, const char *split,
                                cm_err *err);

#endif
