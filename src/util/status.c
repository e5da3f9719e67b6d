#include "util/status.h"

#include <stdarg.h>
#include <stdio.h>

cm_status cm_fail(cm_err *err, cm_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int cm_exit_code(cm_status s)
{
    if (s == CM_OK)
        return 0;
    return s == CM_E_USAGE ? 2 : 1;
}
