/* sandbox.h - running untrusted programs (model completions) safely.
 *
 * Each program gets a scratch directory (mkdtemp, removed afterwards) and
 * runs with no network, bounded CPU time, memory, processes, file size,
 * output and wall time; at the end everything it started is killed.  The
 * mechanism is the best this machine allows, in this order:
 *
 *   bwrap       bubblewrap (Debian's bubblewrap): new user, network, PID,
 *               IPC and UTS namespaces, / read-only, fresh /tmp /dev/shm,
 *               only the scratch directory (and the shared cache) writable;
 *   namespaces  unshare(2) of the network, PID, mount, IPC and UTS
 *               namespaces (root, or an unprivileged user namespace), with
 *               fresh /tmp, /var/tmp and /dev/shm;
 *   plain       rlimits and a process group only: NO network isolation (a
 *               warning says so).
 *
 * Run as root, the program itself runs as the user nobody (65534), so that
 * RLIMIT_NPROC counts only its processes (root is exempt from it) and the
 * rest of the file system is not writable; programs run in parallel get a
 * user each (cm_sb_slot).  In the PID namespace the
 * program's init is a small reaper; killing it (at the end, on timeout or
 * when output is too large) ends the whole namespace.  In plain mode the
 * process group is killed. */
#ifndef CM_SANDBOX_H
#define CM_SANDBOX_H

#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

typedef enum { CM_SB_AUTO, CM_SB_BWRAP, CM_SB_NAMESPACES, CM_SB_PLAIN } cm_sb_kind;

typedef struct {
    double wall_s;       /* wall-clock limit (default 15) */
    int cpu_s;           /* RLIMIT_CPU seconds */
    uint64_t data_bytes; /* RLIMIT_DATA (heap and private writable maps) */
    uint64_t as_bytes;   /* RLIMIT_AS, 0: none (JVM, V8 and Go reserve a lot) */
    int nproc;           /* processes and threads of the sandbox user */
    uint64_t fsize;      /* RLIMIT_FSIZE: largest file written */
    size_t out_cap;      /* bytes of stdout and of stderr kept */
    uint64_t out_kill;   /* more output than this (both together): killed */
} cm_sb_limits;

void cm_sb_default_limits(cm_sb_limits *l);

typedef struct {
    int exit_code;      /* when exited normally, else -1 */
    int signal;         /* the signal that ended it, else 0 */
    int timed_out;      /* the wall-clock limit was reached */
    int out_limit;      /* killed for printing more than out_kill */
    double seconds;
    char *out, *err;    /* NUL-terminated, at most out_cap bytes each */
    size_t out_len, err_len;
    uint64_t out_total; /* bytes printed, kept or not */
} cm_sb_result;

void cm_sb_result_free(cm_sb_result *r);

typedef struct cm_sandbox cm_sandbox;

/* Chooses the mechanism (want: CM_SB_AUTO for the best available; another
 * kind is an error when it does not work here).  tmp_base: where scratch
 * directories go (NULL: $TMPDIR or /tmp).  cache_dir: a directory the
 * programs may write besides their scratch (toolchain caches such as
 * GOCACHE), created if missing; NULL for none. */
cm_status cm_sb_new(cm_sb_kind want, const char *tmp_base, const char *cache_dir,
                    cm_sandbox **out, cm_err *err);
void cm_sb_free(cm_sandbox *sb);
/* The sandbox for parallel slot `slot` (0: the same as sb): run as root,
 * its programs run as a user of their own (nobody for slot 0), so that the
 * process limit is each program's; its cache is sb's subdirectory slot-N.
 * Free it with cm_sb_free. */
cm_status cm_sb_slot(const cm_sandbox *sb, int slot, cm_sandbox **out, cm_err *err);
/* One line: the mechanism and what it isolates. */
const char *cm_sb_describe(const cm_sandbox *sb);
cm_sb_kind cm_sb_kind_of(const cm_sandbox *sb);
/* The PATH programs get, and the shared cache directory ("" when none). */
const char *cm_sb_path(const cm_sandbox *sb);
const char *cm_sb_cache(const cm_sandbox *sb);
const char *cm_sb_kind_name(cm_sb_kind k);

/* A scratch directory: created empty, writable by the program. */
cm_status cm_sb_scratch_new(const cm_sandbox *sb, char *path, size_t cap, cm_err *err);
/* Writes a file name (no '/') into the scratch directory. */
cm_status cm_sb_write(const char *scratch, const char *name, const char *data, size_t len,
                      cm_err *err);
/* Removes the directory and everything in it, whatever the program did to
 * its permissions.  0 on success. */
int cm_sb_scratch_remove(const char *scratch);

/* Runs `/bin/sh -c cmd` in scratch with the limits; env: extra "K=V"
 * entries (NULL-terminated, may be NULL) on top of a clean environment
 * (PATH, HOME=scratch, TMPDIR=scratch, LANG).  A program that fails, is
 * killed or times out is not an error: that is in *res.  Errors are this
 * side's (fork, pipes). */
cm_status cm_sb_run(const cm_sandbox *sb, const char *scratch, const cm_sb_limits *lim,
                    const char *cmd, const char *const *env, cm_sb_result *res, cm_err *err);

#endif
