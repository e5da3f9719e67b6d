/* engine.c - the model, lanes and contexts of `codemoe serve`, and token-by-token
 * generation with the same choices as `codemoe run` (same prompt ids,
 * batches, sampler and stop-string handling: a greedy request answers
 * exactly what `codemoe run --temp 0` prints). */
#include "server/engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "experts/pack.h"
#include "util/threads.h"

/* ---- the gate: no generation starts once stopping */

int srv_engine_acquire(srv_engine *e) { return !atomic_load(&e->stopping); }
void srv_engine_release(srv_engine *e) { (void)e; }

void srv_engine_stop(srv_engine *e)
{
    pthread_mutex_lock(&e->lock);
    atomic_store(&e->stopping, 1);
    pthread_cond_broadcast(&e->done);
    pthread_mutex_unlock(&e->lock);
}

int srv_engine_slots_busy(srv_engine *e)
{
    pthread_mutex_lock(&e->lock);
    int n = e->n_busy;
    pthread_mutex_unlock(&e->lock);
    return n;
}

/* ---- loading */

static cm_status make_ctx(srv_engine *e, srv_lane *l, cm_err *err)
{
    cm_ctx_free(l->ctx);
    l->ctx = NULL;
    cm_status s = cm_ctx_new_multi(&e->m, e->be, &e->o.place, e->o.n_ctx, e->o.kv, SRV_BATCH,
                                   l->n, &l->ctx, err);
    snprintf(l->ctx_expert, sizeof l->ctx_expert, "%s", e->m.expert);
    return s;
}

/* A context on a device backend holds its member's weights: with one slot
 * (whose cache the new member's request does not reuse) a new context. */
cm_status srv_engine_bind(srv_engine *e, srv_lane *l, const char *expert, cm_err *err)
{
    if (!e->m.is_pack || !strcmp(l->ctx_expert, expert))
        return CM_OK;
    cm_status s = cm_model_select_expert(&e->m, expert, err);
    if (!s)
        s = cm_ctx_rebind(l->ctx, err);
    if (s == CM_E_UNSUPPORTED && e->n_slots == 1)
        return make_ctx(e, l, err);
    if (!s)
        snprintf(l->ctx_expert, sizeof l->ctx_expert, "%s", e->m.expert);
    return s;
}

/* How many lanes: --lanes, else several only on the CPU, for a model small
 * enough that a step's operations are short (weights read per token up to
 * 64 MiB) and at least 8 slots a lane, one thread each at most. */
static int choose_lanes(const srv_engine *e)
{
    int n = e->o.n_lanes;
    if (n <= 0) {
        int small = !strcmp(e->be->name, "cpu") &&
                    cm_model_bytes_per_token(&e->m) <= ((uint64_t)64 << 20);
        n = small ? e->n_slots / 8 : 1;
        n = n < e->o.n_threads ? n : e->o.n_threads;
    }
    n = n < e->n_slots ? n : e->n_slots;
    n = n < SRV_MAX_LANES ? n : SRV_MAX_LANES;
    return n > 0 ? n : 1;
}

static void free_lanes(srv_engine *e)
{
    for (int i = 0; i < e->n_lanes; i++) {
        cm_ctx_free(e->lanes[i].ctx);
        pthread_cond_destroy(&e->lanes[i].work);
    }
    memset(e->lanes, 0, sizeof e->lanes);
    e->n_lanes = 0;
}

/* n lanes over the slots (consecutive shares, the threads spread). */
static cm_status make_lanes(srv_engine *e, int n, cm_err *err)
{
    cm_status s = CM_OK;
    free_lanes(e);
    for (int i = 0; i < n && !s; i++) {
        srv_lane *l = &e->lanes[i];
        l->e = e;
        l->first = e->n_slots * i / n;
        l->n = e->n_slots * (i + 1) / n - l->first;
        l->n_threads = e->o.n_threads * (i + 1) / n - e->o.n_threads * i / n;
        l->n_threads = l->n_threads > 0 ? l->n_threads : 1;
        pthread_cond_init(&l->work, NULL);
        e->n_lanes = i + 1;
        s = make_ctx(e, l, err);
    }
    return s;
}

/* The chat template (--chat-template, else the GGUF's), and the marker
 * ending a turn when it is one token. */
static void load_template(srv_engine *e)
{
    gguf_str t = {0};
    cm_err ignore;
    int32_t *ids = NULL;
    size_t n = 0;
    const char *end;
    if (gguf_get_str(&e->m.file, "tokenizer.chat_template", &t, &ignore))
        t.ptr = NULL, t.len = 0;
    if (e->o.chat_template) /* checked by srv_engine_init */
        e->tmpl_ok = !srv_template_by_name(e->o.chat_template, &e->tmpl, &e->tmpl_err);
    else
        e->tmpl_ok = !srv_template_detect(t.ptr, t.len, &e->tmpl, &e->tmpl_err);
    e->chat_end_id = -1;
    end = srv_template_end(e->tmpl);
    if (!cm_tokenize(e->m.tok, end, strlen(end), 0, 1, &ids, &n, &ignore) && n == 1)
        e->chat_end_id = ids[0];
    free(ids);
}

/* -c as `codemoe run` takes it: absent, the model's context up to 4096;
 * 0, the model's. */
static void choose_ctx(srv_engine *e)
{
    int train = e->m.hp.n_ctx_train > 0 ? e->m.hp.n_ctx_train : 4096;
    if (e->o.n_ctx < 0)
        e->o.n_ctx = train < 4096 ? train : 4096;
    else if (e->o.n_ctx == 0)
        e->o.n_ctx = train;
}

/* Every member's layers, so that one step can run the slots of several
 * (when the context accepts them: members differing only in the
 * feed-forward, on the CPU); the default member bound again after. */
static cm_status setup_members(srv_engine *e, cm_err *err)
{
    char first[32];
    const size_t L = (size_t)e->m.hp.n_layer;
    cm_err ignore;
    snprintf(first, sizeof first, "%s", e->m.expert);
    e->n_members = cm_pack_members(&e->m.file, e->member_names, CM_PACK_MAX_MEMBERS);
    for (int k = 0; k < e->n_members; k++) {
        cm_status s = cm_model_select_expert(&e->m, e->member_names[k], err);
        if (s)
            return s;
        if (!(e->member_layers[k] = malloc((L ? L : 1) * sizeof(cm_layer))))
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        memcpy(e->member_layers[k], e->m.layers, L * sizeof(cm_layer));
    }
    cm_status s = cm_model_select_expert(&e->m, first, err);
    e->mixed = 1;
    for (int i = 0; i < e->n_lanes && !s; i++) {
        s = cm_ctx_rebind(e->lanes[i].ctx, err);
        if (!s) /* (unsupported: steps of one member each) */
            e->mixed &= !cm_ctx_set_members(e->lanes[i].ctx, e->member_layers, e->n_members,
                                            &ignore);
    }
    if (s)
        e->mixed = 0;
    return s == CM_E_UNSUPPORTED ? CM_OK : s;
}

/* The index of a pack member in member_names (0 when not found). */
int srv_engine_member(const srv_engine *e, const char *name)
{
    for (int k = 0; k < e->n_members; k++)
        if (!strcmp(e->member_names[k], name))
            return k;
    return 0;
}

cm_status srv_engine_init(srv_engine *e, const srv_engine_opts *o, cm_err *err)
{
    char path[1024];
    memset(e, 0, sizeof *e);
    e->o = *o;
    e->n_slots = o->n_slots > 0 ? o->n_slots : 1;
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->done, NULL);
    srv_template forced;
    cm_status s = o->chat_template ? srv_template_by_name(o->chat_template, &forced, err) : CM_OK;
    if (!s)
        s = cm_backend_choose(o->backend, &e->be, err);
    if (!s)
        s = cm_model_load(o->model, &e->m, err);
    e->loaded = !s;
    e->m.keep_members = e->n_slots > 1; /* slots on different members take turns */
    e->n_vocab = e->m.hp.n_vocab; /* (the scheduler rebinds e->m: requests read this) */
    if (!s && !e->m.tok)
        s = cm_fail(err, CM_E_UNSUPPORTED, "%s has no tokenizer, so it cannot serve text",
                    o->model);
    const char *rpath = !s && e->m.is_pack ? cm_router_default_path(path, sizeof path) : NULL;
    if (rpath)
        s = cm_router_load(rpath, &e->router, err);
    if (!s) {
        choose_ctx(e);
        s = make_lanes(e, choose_lanes(e), err);
    }
    cm_err ignore;
    if (!s && e->m.is_pack && e->n_slots > 1)
        s = setup_members(e, err);
    if (!s && e->m.is_pack && !e->mixed && e->n_lanes > 1) /* one lane rebinds e->m */
        s = make_lanes(e, 1, err);
    if (!s && e->m.is_pack && e->n_slots > 1 && cm_ctx_rebind(e->lanes[0].ctx, &ignore))
        s = cm_fail(err, CM_E_UNSUPPORTED, "the %s backend holds one expert's weights per "
                    "context: serve this language-expert pack with --parallel 1", e->be->name);
    if (!s)
        s = srv_sched_start(e, err);
    if (s) {
        srv_engine_free(e);
        return s;
    }
    load_template(e);
    const char *base = strrchr(o->model, '/');
    snprintf(e->name, sizeof e->name, "%s", base ? base + 1 : o->model);
    e->created = (long long)time(NULL);
    return CM_OK;
}

void srv_engine_free(srv_engine *e)
{
    srv_sched_stop(e);
    free_lanes(e); /* contexts before their model */
    cm_router_free(e->router);
    for (int k = 0; k < e->n_members; k++)
        free(e->member_layers[k]);
    if (e->loaded)
        cm_model_free(&e->m);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->done);
    memset(e, 0, sizeof *e);
}

/* ---- tokenize / detokenize */

cm_status srv_tokenize(srv_engine *e, const srv_request *r, int32_t **ids, size_t *n,
                       cm_err *err)
{
    int bos = r->add_special && cm_tok_add_bos(e->m.tok);
    return cm_tokenize(e->m.tok, r->prompt.p, r->prompt.len, bos, 1, ids, n, err);
}

static cm_status check_ids(const srv_engine *e, const int32_t *ids, size_t n, cm_err *err)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= e->n_vocab || ids[i] >= cm_tok_n_vocab(e->m.tok))
            return cm_fail(err, CM_E_RANGE, "token id %d is outside the vocabulary (%d tokens)",
                           ids[i], e->n_vocab);
    return CM_OK;
}

/* Appends id's text (special tokens shown) to a growing buffer. */
static cm_status append_piece(const cm_tokenizer *t, int32_t id, int special, char **buf,
                              size_t *len, size_t *cap, cm_err *err)
{
    size_t need = cm_token_piece(t, id, special, NULL, 0);
    if (*len + need + 8 > *cap) {
        size_t c = (*len + need + 8) * 2;
        char *p = realloc(*buf, c);
        if (!p)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        *buf = p, *cap = c;
    }
    *len += cm_token_piece(t, id, special, *buf + *len, *cap - *len);
    (*buf)[*len] = 0;
    return CM_OK;
}

cm_status srv_detokenize(srv_engine *e, const srv_request *r, char **text, size_t *len,
                         cm_err *err)
{
    size_t cap = 0;
    cm_status s = check_ids(e, r->ids, r->n_ids, err);
    *text = NULL, *len = 0;
    for (size_t i = 0; !s && i < r->n_ids; i++)
        s = append_piece(e->m.tok, r->ids[i], 1, text, len, &cap, err);
    if (s) {
        free(*text);
        *text = NULL;
    }
    return s;
}

/* ---- prompts */

typedef struct {
    int32_t *p;
    size_t n, cap;
} idvec;

static cm_status ids_push(idvec *v, const int32_t *ids, size_t n, cm_err *err)
{
    if (v->n + n > v->cap) {
        size_t c = (v->n + n) * 2 + 16;
        int32_t *p = realloc(v->p, c * sizeof *p);
        if (!p)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        v->p = p, v->cap = c;
    }
    memcpy(v->p + v->n, ids, n * sizeof *ids);
    v->n += n;
    return CM_OK;
}

/* Tokenizes text (special-token text a token only when special) onto v. */
static cm_status ids_text(const srv_engine *e, idvec *v, const char *text, size_t len,
                          int special, cm_err *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    cm_status s = cm_tokenize(e->m.tok, text, len, 0, special, &ids, &n, err);
    if (!s)
        s = ids_push(v, ids, n, err);
    free(ids);
    return s;
}

static cm_status chat_ids(const srv_engine *e, const srv_request *r, idvec *v, cm_err *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (!e->tmpl_ok)
        return *err = e->tmpl_err, err->code;
    cm_status s = srv_chat_ids(e->m.tok, r, e->tmpl, &ids, &n, err);
    if (!s)
        s = ids_push(v, ids, n, err);
    free(ids);
    return s;
}

/* llama.cpp's /infill without repository tokens: each input_extra chunk
 * after a "--- snippet ---" line, all before <PRE>; `prompt` after <MID>.
 * The last token of the text the middle continues (`prompt`, else the
 * prefix) is taken off into heal (cm_heal_take). */
static cm_status infill_ids(const srv_engine *e, const srv_request *r, idvec *v, cm_heal *heal,
                            cm_err *err)
{
    static const char sep[] = "\n\n--- snippet ---\n\n";
    const cm_tokenizer *t = e->m.tok;
    int32_t *fim = NULL;
    size_t nf = 0;
    if (cm_tok_fim(t, CM_FIM_PRE) < 0 || cm_tok_fim(t, CM_FIM_SUF) < 0 ||
        cm_tok_fim(t, CM_FIM_MID) < 0)
        return cm_fail(err, CM_E_UNSUPPORTED, "%s has no fill-in-the-middle tokens "
                       "(<fim_prefix>, <PRE>, ...), so /infill cannot be used", e->name);
    int bos = cm_tok_add_bos(t);
    cm_status s = cm_tokenize_infill(t, r->prefix.p, r->prefix.len, r->suffix.p, r->suffix.len,
                                     bos, r->prompt.len ? NULL : heal, &fim, &nf, err);
    size_t skip = !s && bos && nf && fim[0] == cm_tok_bos(t); /* BOS stays first */
    if (!s)
        s = ids_push(v, fim, skip, err);
    for (int i = 0; !s && i < r->n_extra; i++) {
        s = ids_text(e, v, sep, sizeof sep - 1, 0, err);
        if (!s)
            s = ids_text(e, v, r->extra[i].text.p, r->extra[i].text.len, 0, err);
    }
    if (!s)
        s = ids_push(v, fim + skip, nf - skip, err);
    int32_t *mid = NULL;
    size_t nm = 0;
    if (!s && r->prompt.len && !(s = cm_tokenize(t, r->prompt.p, r->prompt.len, 0, 0, &mid, &nm, err))) {
        cm_heal_take(t, mid, &nm, heal);
        s = ids_push(v, mid, nm, err);
    }
    free(mid);
    free(fim);
    return s;
}

static cm_status prompt_ids(const srv_engine *e, const srv_request *r, idvec *v, cm_heal *heal,
                            cm_err *err)
{
    switch (r->kind) {
    case SRV_CHAT: return chat_ids(e, r, v, err);
    case SRV_INFILL: return infill_ids(e, r, v, heal, err);
    default:
        if (r->prompt_is_ids) {
            cm_status s = check_ids(e, r->ids, r->n_ids, err);
            return s ? s : ids_push(v, r->ids, r->n_ids, err);
        } /* as `codemoe run`: BOS by default, special-token text a token */
        int32_t *ids = NULL;
        size_t n = 0;
        cm_status s = cm_tokenize(e->m.tok, r->prompt.p, r->prompt.len,
                                  cm_tok_add_bos(e->m.tok), 1, &ids, &n, err);
        if (!s)
            s = ids_push(v, ids, n, err);
        free(ids);
        return s;
    }
}

/* ---- routing (packs): as `codemoe run` decides, on the same text */

/* The text a pack routes on: the prompt, the infill's prefix and suffix
 * joined by a newline (as run --infill), the last user message.  NULL with
 * *len 0 when there is none (token ids). */
static char *route_text(const srv_request *r, size_t *len)
{
    srv_str a = r->prompt, b = {0};
    int join = r->kind == SRV_INFILL;
    if (join)
        a = r->prefix, b = r->suffix;
    for (int i = 0; r->kind == SRV_CHAT && i < r->n_msgs; i++)
        if (r->msgs[i].role.len == 4 && !memcmp(r->msgs[i].role.p, "user", 4))
            a = r->msgs[i].content;
    char *t = r->prompt_is_ids ? NULL : malloc(a.len + b.len + 2);
    *len = 0;
    if (t) {
        memcpy(t, a.p ? a.p : "", a.len);
        if (join)
            t[a.len] = '\n', memcpy(t + a.len + 1, b.p ? b.p : "", b.len);
        *len = a.len + join + (join ? b.len : 0);
        t[*len] = 0;
    }
    return t;
}

static void pick_member(const srv_engine *e, const cm_route *rt, int explicit_lang, char *out)
{
    char names[CM_PACK_MAX_MEMBERS][32];
    int n = cm_pack_members(&e->m.file, names, CM_PACK_MAX_MEMBERS);
    const char *member = NULL;
    float best = -1;
    if (cm_pack_has_member(&e->m.file, rt->lang))
        member = rt->lang;
    else if (cm_pack_has_member(&e->m.file, CM_PACK_FALLBACK))
        member = CM_PACK_FALLBACK;
    /* no fallback: the likeliest language the pack has */
    for (int i = 0; !member && !explicit_lang && i < n; i++) {
        int li = e->router ? cm_router_lang_index(e->router, names[i]) : -1;
        float p = li >= 0 && li < rt->n_langs ? rt->probs[li] : 0.0f;
        if (p > best)
            best = p, snprintf(out, 32, "%.31s", names[i]);
    }
    if (member) /* a language name from the router or the request: short, or no member */
        snprintf(out, 32, "%.31s", member);
}

/* The pack member for r (packs; "" otherwise), counted for /metrics. */
static cm_status route(srv_engine *e, const srv_request *r, char *member, cm_err *err)
{
    char lang[32];
    size_t len;
    member[0] = 0;
    if (!e->m.is_pack)
        return CM_OK;
    snprintf(lang, sizeof lang, "%.*s", (int)(r->language.len < 31 ? r->language.len : 31),
             r->language.p ? r->language.p : "");
    char file[256] = "";
    for (int i = 0; i < r->n_extra && !file[0]; i++) { /* the editor's file names */
        const srv_str *f = &r->extra[i].filename;
        snprintf(file, sizeof file, "%.*s", (int)(f->len < 255 ? f->len : 255), f->p ? f->p : "");
        if (strlen(file) != f->len || !cm_lang_from_filename(file))
            file[0] = 0;
    }
    cm_route_opts ro = {lang[0] ? lang : NULL, file[0] ? file : NULL, 0,
                        CM_ROUTER_DEFAULT_THRESHOLD};
    cm_route rt;
    char *text = route_text(r, &len);
    cm_route_decide(lang[0] ? NULL : e->router, &ro, text ? text : "", len, &rt);
    pick_member(e, &rt, lang[0] != 0, member);
    free(text);
    if (!member[0])
        return cm_fail(err, CM_E_RANGE, "%s has no expert for '%s' and no fallback", e->name,
                       lang);
    char names[CM_PACK_MAX_MEMBERS][32];
    int n = cm_pack_members(&e->m.file, names, CM_PACK_MAX_MEMBERS);
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < n; i++)
        e->expert_requests[i] += !strcmp(names[i], member);
    pthread_mutex_unlock(&e->lock);
    return CM_OK;
}

/* ---- generation */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static cm_status gen_setup(srv_engine *e, const srv_request *r, srv_gen *g, cm_err *err)
{
    memset(g, 0, sizeof *g);
    g->r = r;
    g->e = e;
    g->end_id = -1;
    g->finish = "limit";
    for (int i = 0; i < r->n_stops; i++)
        g->stops[g->n_stops++] = r->stops[i];
    if (r->kind == SRV_CHAT) { /* the end of the assistant's turn */
        const char *end = srv_template_end(e->tmpl);
        g->end_id = e->chat_end_id;
        g->stops[g->n_stops++] = (srv_str){end, strlen(end)};
    }
    cm_sampling_params sp = r->sp;
    if (!r->have_seed) /* a different draw for every request */
        sp.seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(now_s() * 1e9) ^
                  atomic_fetch_add(&e->seeds, 1);
    if (!(g->smp = cm_sampler_new(&sp, e->n_vocab)))
        return cm_fail(err, CM_E_NOMEM, "out of memory creating the sampler");
    return CM_OK;
}

cm_status srv_gen_start(srv_engine *e, const srv_request *r, srv_gen *g, cm_err *err)
{
    idvec v = {0};
    cm_status s = gen_setup(e, r, g, err);
    if (!s)
        s = route(e, r, g->expert, err);
    if (!s)
        s = prompt_ids(e, r, &v, &g->heal, err);
    if (!s && v.n == 0)
        s = cm_fail(err, CM_E_RANGE, "the prompt is empty");
    if (!s && v.n >= (size_t)e->o.n_ctx)
        s = cm_fail(err, CM_E_RANGE, "the prompt is %zu tokens but the context holds %d "
                    "(start the server with a larger -c)", v.n, e->o.n_ctx);
    for (size_t i = 0; !s && i < v.n; i++)
        cm_sampler_accept(g->smp, v.p[i]);
    g->n_prompt = (int)v.n;
    double t0 = now_s();
    if (!s && !(g->slot = srv_slot_take(e, g->expert, v.p, (int)v.n, r->cache_prompt,
                                        &g->n_reused, err)))
        s = err->code;
    if (!s)
        s = srv_slot_generate(e, g->slot, g->smp, &g->heal, r->n_predict, g->end_id, err);
    g->t_start = now_s();
    g->t_prompt = g->t_start - t0;
    free(v.p);
    return s;
}

static cm_status grow(char **p, size_t *cap, size_t need, cm_err *err)
{
    if (need <= *cap)
        return CM_OK;
    size_t c = need * 2 + 64;
    char *q = realloc(*p, c);
    if (!q)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    *p = q, *cap = c;
    return CM_OK;
}

/* The earliest place a stop string starts in the pending text, or -1. */
static long first_stop(const srv_gen *g)
{
    long best = -1;
    for (int k = 0; k < g->n_stops; k++) {
        size_t sl = g->stops[k].len;
        for (size_t i = 0; sl <= g->pend_len && i + sl <= g->pend_len; i++)
            if (!memcmp(g->pend + i, g->stops[k].p, sl)) {
                if (best < 0 || (long)i < best)
                    best = (long)i;
                break;
            }
    }
    return best;
}

/* Length of the longest tail of the pending text that starts a stop. */
static size_t held_tail(const srv_gen *g)
{
    size_t best = 0;
    for (int k = 0; k < g->n_stops; k++) {
        size_t sl = g->stops[k].len;
        for (size_t t = sl - 1 < g->pend_len ? sl - 1 : g->pend_len; t > best; t--)
            if (!memcmp(g->pend + g->pend_len - t, g->stops[k].p, t)) {
                best = t;
                break;
            }
    }
    return best;
}

/* Moves n bytes of the pending text to emit. */
static cm_status emit(srv_gen *g, size_t n, cm_err *err)
{
    cm_status s = grow(&g->emit, &g->emit_cap, g->emit_len + n + 1, err);
    if (s)
        return s;
    memcpy(g->emit + g->emit_len, g->pend, n);
    g->emit_len += n;
    memmove(g->pend, g->pend + n, g->pend_len - n);
    g->pend_len -= n;
    return CM_OK;
}

/* The end: what is pending (no stop string completed) and any bytes of an
 * unfinished UTF-8 character go out, as `codemoe run` prints them. */
static cm_status finish(srv_gen *g, const char *why, cm_err *err)
{
    char tail[8];
    size_t n = cm_utf8_stream_flush(&g->utf8, tail);
    cm_status s = grow(&g->pend, &g->pend_cap, g->pend_len + n + 1, err);
    if (!s) {
        memcpy(g->pend + g->pend_len, tail, n);
        g->pend_len += n;
        s = emit(g, g->pend_len, err);
    }
    g->done = 1;
    g->finish = why;
    return s;
}

/* Adds a token's text; emits what is safe; ends at a stop string. */
static cm_status push_piece(srv_gen *g, const char *piece, size_t n, cm_err *err)
{
    cm_status s = grow(&g->pend, &g->pend_cap, g->pend_len + n + 8, err);
    if (s)
        return s;
    g->pend_len += cm_utf8_stream_push(&g->utf8, piece, n, g->pend + g->pend_len);
    long hit = first_stop(g);
    if (hit >= 0) {
        s = emit(g, (size_t)hit, err);
        g->pend_len = 0;
        g->done = 1, g->finish = "word";
        return s;
    }
    return emit(g, g->pend_len - held_tail(g), err);
}

static cm_status next_token(srv_engine *e, srv_gen *g, cm_err *err)
{
    const srv_request *r = g->r;
    const char *end;
    int32_t id;
    if (atomic_load(&e->abort))
        return finish(g, "limit", err);
    cm_status s = srv_slot_next(e, g->slot, &id, &end, err);
    if (s || end)
        return s ? s : finish(g, end, err);
    char piece[256], *big = NULL;
    size_t pn = cm_token_piece(e->m.tok, id, 0, piece, sizeof piece);
    if (pn > sizeof piece && (big = malloc(pn)))
        cm_token_piece(e->m.tok, id, 0, big, pn);
    size_t len = big || pn <= sizeof piece ? pn : sizeof piece;
    const size_t skip = g->n_gen++ == 0 && g->heal.len <= len ? g->heal.len : 0; /* healed */
    const char *text = (big ? big : piece) + skip;
    len -= skip;
    g->new_line |= memchr(text, '\n', len) != NULL;
    s = push_piece(g, text, len, err);
    free(big);
    if (s || g->done)
        return s;
    /* llama.cpp's t_max_predict_ms: an editor's time budget, once a line is
     * there to show */
    if (r->t_max_predict_ms > 0 && g->new_line &&
        (now_s() - g->t_start) * 1000.0 >= (double)r->t_max_predict_ms)
        return finish(g, "limit", err);
    return CM_OK;
}

cm_status srv_gen_next(srv_engine *e, srv_gen *g, cm_err *err)
{
    g->emit_len = 0;
    if (g->done)
        return CM_OK;
    double t0 = now_s();
    cm_status s = next_token(e, g, err);
    g->t_gen += now_s() - t0;
    if (s)
        g->done = 1;
    if (g->done) /* no more tokens needed: the slot's steps end now, not at the reply */
        srv_slot_cancel(e, g->slot);
    return s;
}

void srv_gen_free(srv_gen *g)
{
    if (g->slot)
        srv_slot_give(g->e, g->slot);
    cm_sampler_free(g->smp);
    cm_heal_free(&g->heal);
    free(g->pend);
    free(g->emit);
    memset(g, 0, sizeof *g);
}
