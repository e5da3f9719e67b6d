/* pool.h - `codemoe eval`'s programs run in parallel: N workers, each with
 * a sandbox slot of its own (cm_sb_slot: its own user when run as root, so
 * the limits stay per program), outcomes handed back in the order the
 * programs were submitted, so that what is recorded does not depend on
 * which finished first. */
#ifndef CM_POOL_H
#define CM_POOL_H

#include <stddef.h>

#include "eval/problems.h"
#include "eval/sandbox.h"
#include "util/status.h"

typedef struct cm_ev_pool cm_ev_pool;

/* n_workers programs at a time in sandboxes like sb; wall_s: each step's
 * wall-clock limit (cm_eval_program's). */
cm_status cm_ev_pool_new(const cm_sandbox *sb, int n_workers, double wall_s, cm_ev_pool **out,
                         cm_err *err);
/* Queues a program of language l (the pool owns and frees it); tag comes
 * back with its outcome. */
cm_status cm_ev_pool_submit(cm_ev_pool *p, const cm_eval_lang *l, char *program, size_t len,
                            void *tag, cm_err *err);
/* Programs submitted and not yet taken back. */
int cm_ev_pool_pending(cm_ev_pool *p);
/* Takes back the oldest program's outcome once it has run (wait: blocks
 * until then; else returns 0 while it runs).  Returns 1 with *tag, *oc and
 * *st (the run's own status, its message in err) set; 0 when nothing
 * is pending or, without wait, the oldest has not finished. */
int cm_ev_pool_take(cm_ev_pool *p, int wait, void **tag, cm_ev_outcome *oc, cm_status *st,
                    cm_err *err);
/* Waits for the programs running, drops the rest: free_tag (may be NULL)
 * gets the tags not taken back. */
void cm_ev_pool_free(cm_ev_pool *p, void (*free_tag)(void *));

#endif
