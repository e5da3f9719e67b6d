/* atomic_file.c - temporary-then-rename outputs, safe opens of inputs
 * (see atomic_file.h). */
#define _GNU_SOURCE /* mkostemp */
#include "util/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The umask without changing it: umask(2) can only set it, and setting it
 * back races with other threads creating files, so /proc comes first. */
static mode_t current_umask(void)
{
    char line[128];
    unsigned v;
    FILE *f = fopen("/proc/self/status", "re");
    if (f) {
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "Umask: %o", &v) == 1) {
                fclose(f);
                return (mode_t)(v & 0777);
            }
        fclose(f);
    }
    mode_t m = umask(022);
    umask(m);
    return m;
}

static void release(cm_atomic_file *a)
{
    free(a->path);
    free(a->tmp);
    a->path = a->tmp = NULL;
    a->f = NULL;
    a->fd = -1;
}

cm_status cm_atomic_open(cm_atomic_file *a, const char *path, unsigned mode, cm_err *err)
{
    static const char suffix[] = ".tmp.XXXXXX";
    size_t n = strlen(path);
    memset(a, 0, sizeof *a);
    a->fd = -1;
    if (!n)
        return cm_fail(err, CM_E_IO, "cannot write a file with an empty name");
    a->path = strdup(path);
    a->tmp = malloc(n + sizeof suffix);
    if (!a->path || !a->tmp) {
        release(a);
        return cm_fail(err, CM_E_NOMEM, "cannot write %s: out of memory", path);
    }
    memcpy(a->tmp, path, n);
    memcpy(a->tmp + n, suffix, sizeof suffix);
    /* beside the target, so the rename stays within one file system */
    a->fd = mkostemp(a->tmp, O_CLOEXEC);
    if (a->fd < 0) {
        int e = errno;
        release(a);
        return cm_fail(err, CM_E_IO, "cannot write %s: %s", path, strerror(e));
    }
    /* mkstemp creates 0600; the output gets the mode open(2) would give it.
     * Best effort: where modes cannot be set (some FUSE, vfat) 0600 is
     * the safe side. */
    (void)fchmod(a->fd, (mode_t)mode & 07777 & ~current_umask());
    return CM_OK;
}

FILE *cm_atomic_stream(cm_atomic_file *a)
{
    if (!a->f && a->fd >= 0)
        a->f = fdopen(a->fd, "w+b");
    return a->f;
}

/* Closes the temporary (through its stream if any); 0 or the first errno. */
static int close_tmp(cm_atomic_file *a, int sync)
{
    int e = 0;
    if (a->f && fflush(a->f) != 0)
        e = errno;
    else if (a->f && ferror(a->f))
        e = EIO; /* an earlier write failed; its errno is long gone */
    if (!e && sync && fsync(a->fd) != 0)
        e = errno;
    int bad = a->f ? fclose(a->f) != 0 : close(a->fd) != 0;
    if (bad && !e)
        e = errno;
    a->f = NULL;
    a->fd = -1;
    return e;
}

/* Makes a rename durable: fsync the folder that holds path (best effort). */
static void sync_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

cm_status cm_atomic_commit(cm_atomic_file *a, int flags, cm_err *err)
{
    if (!a->tmp)
        return cm_fail(err, CM_E_IO, "cannot write %s: the file was closed already",
                       a->path ? a->path : "(none)");
    int e = close_tmp(a, flags & CM_ATOMIC_FSYNC);
    if (!e && rename(a->tmp, a->path) != 0)
        e = errno;
    if (e)
        unlink(a->tmp);
    else if (flags & CM_ATOMIC_SYNC_DIR)
        sync_dir(a->path);
    cm_status s = e ? cm_fail(err, CM_E_IO, "cannot write %s: %s", a->path, strerror(e)) : CM_OK;
    release(a);
    return s;
}

void cm_atomic_abort(cm_atomic_file *a)
{
    if (a->tmp) {
        close_tmp(a, 0);
        unlink(a->tmp);
    }
    release(a);
}

cm_status cm_open_regular(const char *path, int *fd, cm_err *err)
{
    struct stat st;
    *fd = -1;
    /* O_NONBLOCK: a FIFO without a writer makes open(2) itself wait */
    int d = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (d < 0)
        return cm_fail(err, CM_E_IO, "cannot open %s: %s", path, strerror(errno));
    if (fstat(d, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(d);
        return cm_fail(err, CM_E_IO, "%s is not a regular file", path);
    }
    int fl = fcntl(d, F_GETFL); /* back to ordinary reads for the caller */
    if (fl >= 0)
        fcntl(d, F_SETFL, fl & ~O_NONBLOCK);
    *fd = d;
    return CM_OK;
}

cm_status cm_fopen_regular(const char *path, FILE **f, cm_err *err)
{
    int fd;
    *f = NULL;
    cm_status s = cm_open_regular(path, &fd, err);
    if (s)
        return s;
    if (!(*f = fdopen(fd, "rb"))) {
        int e = errno;
        close(fd);
        return cm_fail(err, CM_E_IO, "cannot open %s: %s", path, strerror(e));
    }
    return CM_OK;
}
