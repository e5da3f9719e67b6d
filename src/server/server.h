/* server.h - `codemoe serve`'s HTTP side, on GNU libmicrohttpd: routes,
 * limits, authentication, JSON and server-sent-event responses. */
#ifndef CM_SRV_SERVER_H
#define CM_SRV_SERVER_H

#include <stddef.h>

#include "server/engine.h"
#include "util/status.h"

typedef struct {
    const char *host;     /* numeric address or name; "127.0.0.1" by default */
    int port;             /* 0: any free port (the one bound is printed) */
    const char *api_key;  /* NULL: no authentication */
    size_t max_body;      /* bytes; larger bodies get 413 */
    unsigned timeout;     /* seconds a connection may stay idle */
} srv_http_opts;

/* Serves e until SIGTERM or SIGINT, then lets the running request finish
 * (a second signal ends its generation at the next token) and returns
 * CM_OK.  Prints "listening on http://HOST:PORT" on stderr once bound. */
cm_status srv_serve(srv_engine *e, const srv_http_opts *o, cm_err *err);

#endif
