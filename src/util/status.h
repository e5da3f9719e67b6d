/* status.h - how every codemoe function reports failure.
 *
 * Functions return a cm_status and, on failure, fill a cm_err with one
 * human-readable line naming the problem (file, tensor, offset or flag).
 * The CLI prints that line and turns the code into an exit status:
 * usage errors exit 2, everything else exits 1. */
#ifndef CM_STATUS_H
#define CM_STATUS_H

typedef enum {
    CM_OK = 0,
    CM_E_IO,          /* missing, unreadable or unwritable file */
    CM_E_FORMAT,      /* malformed, truncated or inconsistent input */
    CM_E_UNSUPPORTED, /* well-formed but not something we run (type, arch) */
    CM_E_NOMEM,       /* allocation failed */
    CM_E_RANGE,       /* a value out of range, e.g. prompt longer than context */
    CM_E_USAGE        /* bad command-line usage (exit code 2) */
} cm_status;

typedef struct {
    cm_status code;
    char msg[512];
} cm_err;

/* Records code and a printf-style message in err (if non-NULL) and returns
 * code, so callers can write `return cm_fail(err, CM_E_FORMAT, "...")`. */
cm_status cm_fail(cm_err *err, cm_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Exit code for a status: 0 ok, 2 usage, 1 anything else. */
int cm_exit_code(cm_status s);

#endif
