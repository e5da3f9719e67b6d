/* atomic_file.h - outputs that appear whole or not at all, and user files
 * opened for reading without the ways they can hang.
 *
 * An output is written to a new temporary file in its target's folder,
 * created by mkstemp (a fresh name, opened O_EXCL: a symlink planted at
 * any name is never followed), then renamed over the target.  Readers of
 * the target see the old file or the complete new one; a failure or an
 * abort removes the temporary, so nothing is left behind. */
#ifndef CM_ATOMIC_FILE_H
#define CM_ATOMIC_FILE_H

#include <stdio.h>

#include "util/status.h"

typedef struct {
    char *path; /* the target */
    char *tmp;  /* the temporary, beside the target; NULL when closed */
    int fd;     /* the temporary, open for reading and writing */
    FILE *f;    /* a stream on fd once cm_atomic_stream made one */
} cm_atomic_file;

/* cm_atomic_commit's flags: the durability the caller wants. */
enum {
    CM_ATOMIC_FSYNC = 1,   /* fsync the data before the rename */
    CM_ATOMIC_SYNC_DIR = 2 /* fsync the folder after it, so the rename lasts (best effort) */
};

/* Creates the temporary for path with mode (e.g. 0666 or 0644; the umask
 * applies, as for open(2)).  Errors name path. */
cm_status cm_atomic_open(cm_atomic_file *a, const char *path, unsigned mode, cm_err *err);

/* A stdio stream ("w+b") on the temporary, owned by a: commit and abort
 * flush and close it.  NULL when out of memory. */
FILE *cm_atomic_stream(cm_atomic_file *a);

/* Flushes and closes the temporary and renames it over the target; on any
 * failure removes the temporary and names the target in err.  a is closed
 * either way. */
cm_status cm_atomic_commit(cm_atomic_file *a, int flags, cm_err *err);

/* Closes and removes the temporary (a no-op once closed). */
void cm_atomic_abort(cm_atomic_file *a);

/* Opens path read-only as a regular file.  A FIFO, device or folder is
 * refused, and the open itself cannot block (a FIFO without a writer
 * would block in open(2) forever).  Errors: "cannot open PATH: reason",
 * "PATH is not a regular file" (CM_E_IO). */
cm_status cm_open_regular(const char *path, int *fd, cm_err *err);
cm_status cm_fopen_regular(const char *path, FILE **f, cm_err *err); /* as a "rb" stream */

#endif
