/* pool.c - see pool.h.  The jobs form one list in submission order; a
 * worker runs the oldest queued one, the caller takes back from the head. */
#include "eval/pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE } job_state;

typedef struct job {
    struct job *next;
    const cm_eval_lang *l;
    char *prog;
    size_t len;
    void *tag;
    job_state state;
    cm_ev_outcome oc;
    cm_status st;
    cm_err err;
} job;

typedef struct {
    cm_ev_pool *p;
    cm_sandbox *sb; /* this worker's slot */
    pthread_t th;
    int started;
} worker;

struct cm_ev_pool {
    pthread_mutex_t mu;
    pthread_cond_t work, done; /* a job queued (or quit); a job finished */
    job *head, *tail, *queued; /* queued: the oldest not yet running */
    int pending, quit, n_workers;
    double wall_s;
    worker *w;
};

static void *worker_main(void *arg)
{
    worker *w = arg;
    cm_ev_pool *p = w->p;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && !p->queued)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->quit)
            break;
        job *j = p->queued;
        p->queued = j->next;
        j->state = JOB_RUNNING;
        pthread_mutex_unlock(&p->mu);
        j->st = cm_eval_program(w->sb, j->l, j->prog, j->len, p->wall_s, &j->oc, &j->err);
        free(j->prog);
        j->prog = NULL;
        pthread_mutex_lock(&p->mu);
        j->state = JOB_DONE;
        pthread_cond_broadcast(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static cm_status start_workers(cm_ev_pool *p, const cm_sandbox *sb, cm_err *err)
{
    for (int i = 0; i < p->n_workers; i++) {
        worker *w = &p->w[i];
        w->p = p;
        cm_status s = cm_sb_slot(sb, i, &w->sb, err);
        if (s)
            return s;
        if (pthread_create(&w->th, NULL, worker_main, w) != 0)
            return cm_fail(err, CM_E_NOMEM, "cannot start a thread for the programs");
        w->started = 1;
    }
    return CM_OK;
}

cm_status cm_ev_pool_new(const cm_sandbox *sb, int n_workers, double wall_s, cm_ev_pool **out,
                         cm_err *err)
{
    *out = NULL;
    if (n_workers < 1 || n_workers > 1024)
        return cm_fail(err, CM_E_RANGE, "%d programs at a time is out of range", n_workers);
    cm_ev_pool *p = calloc(1, sizeof *p);
    if (!p || !(p->w = calloc((size_t)n_workers, sizeof *p->w))) {
        free(p);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    p->n_workers = n_workers, p->wall_s = wall_s;
    cm_status s = start_workers(p, sb, err);
    if (s) {
        cm_ev_pool_free(p, NULL);
        return s;
    }
    *out = p;
    return CM_OK;
}

cm_status cm_ev_pool_submit(cm_ev_pool *p, const cm_eval_lang *l, char *program, size_t len,
                            void *tag, cm_err *err)
{
    job *j = calloc(1, sizeof *j);
    if (!j) {
        free(program);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    j->l = l, j->prog = program, j->len = len, j->tag = tag, j->state = JOB_QUEUED;
    pthread_mutex_lock(&p->mu);
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    if (!p->queued)
        p->queued = j;
    p->pending++;
    pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->mu);
    return CM_OK;
}

int cm_ev_pool_pending(cm_ev_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->pending;
    pthread_mutex_unlock(&p->mu);
    return n;
}

int cm_ev_pool_take(cm_ev_pool *p, int wait, void **tag, cm_ev_outcome *oc, cm_status *st,
                    cm_err *err)
{
    pthread_mutex_lock(&p->mu);
    while (wait && p->head && p->head->state != JOB_DONE)
        pthread_cond_wait(&p->done, &p->mu);
    job *j = p->head;
    if (!j || j->state != JOB_DONE) {
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
    p->head = j->next;
    if (!p->head)
        p->tail = NULL;
    p->pending--;
    pthread_mutex_unlock(&p->mu);
    *tag = j->tag, *oc = j->oc, *st = j->st;
    if (j->st)
        *err = j->err;
    free(j);
    return 1;
}

void cm_ev_pool_free(cm_ev_pool *p, void (*free_tag)(void *))
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_workers; i++) {
        if (p->w[i].started)
            pthread_join(p->w[i].th, NULL);
        cm_sb_free(p->w[i].sb);
    }
    for (job *j = p->head, *n; j; j = n) {
        n = j->next;
        if (free_tag)
            free_tag(j->tag);
        free(j->prog);
        free(j);
    }
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->w);
    free(p);
}
