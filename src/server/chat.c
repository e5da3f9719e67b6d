/* chat.c - chat templates: which family a GGUF's tokenizer.chat_template
 * belongs to (by the markers each family's template carries) and its
 * prompt for a list of messages, written as the family documents it.  The
 * Jinja text itself is not run: a template of no known family is refused.
 *
 * Markers are special pieces (tokenized as special tokens where the
 * vocabulary has them); message text is plain, so a message cannot forge a
 * marker.  The BOS token is the tokenizer's to add. */
#include <string.h>
#include <stdlib.h>

#include "server/request.h"
#include "tokenizer/tokenizer.h"

static const char *const NAMES[SRV_TMPL_COUNT] = {"chatml", "llama2", "llama3",
                                                  "deepseek-coder", "zephyr", "gemma"};
static const char *const ENDS[SRV_TMPL_COUNT] = {"<|im_end|>", "</s>", "<|eot_id|>", "<|EOT|>",
                                                 "</s>", "<end_of_turn>"};

const char *srv_template_name(srv_template t) { return t < SRV_TMPL_COUNT ? NAMES[t] : "?"; }
const char *srv_template_end(srv_template t) { return t < SRV_TMPL_COUNT ? ENDS[t] : ""; }

cm_status srv_template_by_name(const char *name, srv_template *out, cm_err *err)
{
    for (int t = 0; t < SRV_TMPL_COUNT; t++)
        if (!strcmp(name, NAMES[t]))
            return *out = (srv_template)t, CM_OK;
    if (!strcmp(name, "codellama") || !strcmp(name, "codellama-instruct"))
        return *out = SRV_TMPL_LLAMA2, CM_OK;
    if (!strcmp(name, "deepseek"))
        return *out = SRV_TMPL_DEEPSEEK, CM_OK;
    return cm_fail(err, CM_E_USAGE, "unknown chat template '%s' (chatml, llama2, codellama, "
                   "llama3, deepseek-coder, zephyr, gemma)", name);
}

static int contains(const char *s, size_t n, const char *what)
{
    size_t k = strlen(what);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(s + i, what, k))
            return 1;
    return 0;
}

cm_status srv_template_detect(const char *tmpl, size_t len, srv_template *out, cm_err *err)
{
    static const struct {
        const char *marker, *also, *none; /* all of marker and also, not none */
        srv_template t;
    } sig[] = {
        {"<|im_start|>", "", NULL, SRV_TMPL_CHATML},
        {"<|start_header_id|>", "<|eot_id|>", NULL, SRV_TMPL_LLAMA3},
        {"<start_of_turn>", "<end_of_turn>", NULL, SRV_TMPL_GEMMA},
        {"[INST]", "<<SYS>>", NULL, SRV_TMPL_LLAMA2},
        {"### Instruction", "### Response", NULL, SRV_TMPL_DEEPSEEK},
        {"<|user|>", "<|assistant|>", "<|end|>", SRV_TMPL_ZEPHYR},
    };
    static const struct {
        const char *marker, *name;
    } refused[] = {
        {"[INST]", "Mistral's [INST] without <<SYS>>"}, {"<|end|>", "Phi-3"},
        {"<\xef\xbd\x9cUser\xef\xbd\x9c>", "DeepSeek-V2/V3"}, {"<step>", "CodeLlama-70B-Instruct"},
    };
    *out = SRV_TMPL_CHATML;
    if (!tmpl || len == 0)
        return CM_OK;
    for (size_t i = 0; i < sizeof sig / sizeof sig[0]; i++)
        if (contains(tmpl, len, sig[i].marker) && contains(tmpl, len, sig[i].also) &&
            !(sig[i].none && contains(tmpl, len, sig[i].none)))
            return *out = sig[i].t, CM_OK;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (contains(tmpl, len, refused[i].marker))
            return cm_fail(err, CM_E_UNSUPPORTED, "the model's chat template (%s) is not one "
                           "this server renders: start it with --chat-template NAME",
                           refused[i].name);
    return cm_fail(err, CM_E_UNSUPPORTED, "the model's chat template is of no family this "
                   "server renders (chatml, llama2, llama3, deepseek-coder, zephyr, gemma): "
                   "start it with --chat-template NAME");
}

/* ---- rendering */

typedef struct {
    srv_piece *p;
    int n;
} pieces;

static void put(pieces *o, const char *s, size_t len, int special)
{
    if (len)
        o->p[o->n++] = (srv_piece){s, len, special};
}
#define LIT(o, s) put(o, s, sizeof s - 1, 0)
#define MARK(o, s) put(o, s, sizeof s - 1, 1)

/* Whether a role is what; "developer" is OpenAI's newer name for system. */
static int is(const srv_str *s, const char *what)
{
    if (!strcmp(what, "system") && s->len == 9 && !memcmp(s->p, "developer", 9))
        return 1;
    return s->len == strlen(what) && !memcmp(s->p, what, s->len);
}

/* s without leading and trailing white space (Jinja's trim / strip()). */
static srv_str trim(srv_str s)
{
    while (s.len && strchr(" \t\r\n", s.p[0]))
        s.p++, s.len--;
    while (s.len && strchr(" \t\r\n", s.p[s.len - 1]))
        s.len--;
    return s;
}

static cm_status bad_role(const srv_msg *m, srv_template t, cm_err *err)
{
    return cm_fail(err, CM_E_RANGE, "role '%.*s' has no place in the %s chat template",
                   (int)(m->role.len < 40 ? m->role.len : 40), m->role.p, NAMES[t]);
}

static cm_status chatml(const srv_request *r, pieces *o, cm_err *err)
{
    (void)err;
    for (int i = 0; i < r->n_msgs; i++) {
        MARK(o, "<|im_start|>");
        put(o, r->msgs[i].role.p, r->msgs[i].role.len, 0);
        LIT(o, "\n");
        put(o, r->msgs[i].content.p, r->msgs[i].content.len, 0);
        MARK(o, "<|im_end|>");
        LIT(o, "\n");
    }
    MARK(o, "<|im_start|>");
    LIT(o, "assistant\n");
    return CM_OK;
}

/* <s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST] */
static cm_status llama2(const srv_request *r, pieces *o, cm_err *err)
{
    int first = 0, users = 0;
    srv_str sys = {0};
    if (r->n_msgs && is(&r->msgs[0].role, "system"))
        sys = r->msgs[0].content, first = 1;
    for (int i = first; i < r->n_msgs; i++) {
        const srv_msg *m = &r->msgs[i];
        srv_str c = trim(m->content);
        if (is(&m->role, "user")) {
            if (users++)
                MARK(o, "<s>");
            LIT(o, "[INST] ");
            if (users == 1 && first) {
                LIT(o, "<<SYS>>\n");
                put(o, sys.p, sys.len, 0);
                LIT(o, "\n<</SYS>>\n\n");
            }
            put(o, c.p, c.len, 0);
            LIT(o, " [/INST]");
        } else if (is(&m->role, "assistant")) {
            LIT(o, " ");
            put(o, c.p, c.len, 0);
            LIT(o, " ");
            MARK(o, "</s>");
        } else {
            return bad_role(m, SRV_TMPL_LLAMA2, err);
        }
    }
    return CM_OK;
}

static cm_status llama3(const srv_request *r, pieces *o, cm_err *err)
{
    (void)err;
    for (int i = 0; i < r->n_msgs; i++) {
        srv_str c = trim(r->msgs[i].content);
        MARK(o, "<|start_header_id|>");
        put(o, r->msgs[i].role.p, r->msgs[i].role.len, 0);
        MARK(o, "<|end_header_id|>");
        LIT(o, "\n\n");
        put(o, c.p, c.len, 0);
        MARK(o, "<|eot_id|>");
    }
    MARK(o, "<|start_header_id|>");
    LIT(o, "assistant");
    MARK(o, "<|end_header_id|>");
    LIT(o, "\n\n");
    return CM_OK;
}

static cm_status deepseek(const srv_request *r, pieces *o, cm_err *err)
{
    for (int i = 0; i < r->n_msgs; i++) {
        const srv_msg *m = &r->msgs[i];
        if (is(&m->role, "system")) {
            put(o, m->content.p, m->content.len, 0);
        } else if (is(&m->role, "user")) {
            LIT(o, "### Instruction:\n");
            put(o, m->content.p, m->content.len, 0);
            LIT(o, "\n");
        } else if (is(&m->role, "assistant")) {
            LIT(o, "### Response:\n");
            put(o, m->content.p, m->content.len, 0);
            LIT(o, "\n");
            MARK(o, "<|EOT|>");
            LIT(o, "\n");
        } else {
            return bad_role(m, SRV_TMPL_DEEPSEEK, err);
        }
    }
    LIT(o, "### Response:\n");
    return CM_OK;
}

static cm_status zephyr(const srv_request *r, pieces *o, cm_err *err)
{
    static const char *const marks[] = {"<|system|>", "<|user|>", "<|assistant|>"};
    static const char *const roles[] = {"system", "user", "assistant"};
    for (int i = 0; i < r->n_msgs; i++) {
        const srv_msg *m = &r->msgs[i];
        int k = 0;
        while (k < 3 && !is(&m->role, roles[k]))
            k++;
        if (k == 3)
            return bad_role(m, SRV_TMPL_ZEPHYR, err);
        put(o, marks[k], strlen(marks[k]), 1);
        LIT(o, "\n");
        put(o, m->content.p, m->content.len, 0);
        MARK(o, "</s>");
        LIT(o, "\n");
    }
    MARK(o, "<|assistant|>");
    LIT(o, "\n");
    return CM_OK;
}

/* Gemma has no system turn: a system message opens the first user turn. */
static cm_status gemma(const srv_request *r, pieces *o, cm_err *err)
{
    srv_str sys = {0};
    for (int i = 0; i < r->n_msgs; i++) {
        const srv_msg *m = &r->msgs[i];
        srv_str c = trim(m->content);
        if (is(&m->role, "system")) {
            sys = c;
            continue;
        }
        int user = is(&m->role, "user");
        if (!user && !is(&m->role, "assistant"))
            return bad_role(m, SRV_TMPL_GEMMA, err);
        MARK(o, "<start_of_turn>");
        if (user)
            LIT(o, "user\n");
        else
            LIT(o, "model\n");
        if (user && sys.len) {
            put(o, sys.p, sys.len, 0);
            LIT(o, "\n\n");
            sys.len = 0;
        }
        put(o, c.p, c.len, 0);
        MARK(o, "<end_of_turn>");
        LIT(o, "\n");
    }
    MARK(o, "<start_of_turn>");
    LIT(o, "model\n");
    return CM_OK;
}

cm_status srv_chat_render(const srv_request *r, srv_template t, srv_piece **out, int *n,
                          cm_err *err)
{
    static cm_status (*const render[SRV_TMPL_COUNT])(const srv_request *, pieces *, cm_err *) = {
        chatml, llama2, llama3, deepseek, zephyr, gemma};
    pieces o = {malloc(sizeof *o.p * ((size_t)r->n_msgs * 10 + 8)), 0};
    *out = NULL, *n = 0;
    if (!o.p)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    cm_status s = t < SRV_TMPL_COUNT ? render[t](r, &o, err)
                                     : cm_fail(err, CM_E_RANGE, "no such chat template");
    if (s) {
        free(o.p);
        return s;
    }
    *out = o.p, *n = o.n;
    return CM_OK;
}

/* Appends n ids to a growing array. */
static cm_status ids_append(int32_t **v, size_t *n, size_t *cap, const int32_t *ids, size_t k,
                            cm_err *err)
{
    if (*n + k > *cap) {
        size_t c = (*n + k) * 2 + 16;
        int32_t *p = realloc(*v, c * sizeof *p);
        if (!p)
            return cm_fail(err, CM_E_NOMEM, "out of memory");
        *v = p, *cap = c;
    }
    memcpy(*v + *n, ids, k * sizeof *ids);
    *n += k;
    return CM_OK;
}

static cm_status text_ids(const cm_tokenizer *t, const char *p, size_t len, int special,
                          int32_t **v, size_t *n, size_t *cap, cm_err *err)
{
    int32_t *ids = NULL;
    size_t k = 0;
    cm_status s = cm_tokenize(t, p, len, 0, special, &ids, &k, err);
    if (!s)
        s = ids_append(v, n, cap, ids, k, err);
    free(ids);
    return s;
}

/* Consecutive plain pieces are tokenized as one text, so messages split
 * the way one text would. */
cm_status srv_chat_ids(const cm_tokenizer *t, const srv_request *r, srv_template tmpl,
                       int32_t **ids, size_t *n, cm_err *err)
{
    srv_piece *pc = NULL;
    int np = 0;
    char *buf = NULL;
    size_t total = 0, len = 0, cap = 0;
    int32_t bos = cm_tok_bos(t);
    *ids = NULL, *n = 0;
    cm_status s = srv_chat_render(r, tmpl, &pc, &np, err);
    for (int i = 0; i < np; i++)
        total += pc[i].len;
    if (!s && !(buf = malloc(total + 1)))
        s = cm_fail(err, CM_E_NOMEM, "out of memory");
    if (!s && cm_tok_add_bos(t) && bos >= 0)
        s = ids_append(ids, n, &cap, &bos, 1, err);
    for (int i = 0; !s && i < np; i++) {
        if (pc[i].special) {
            s = text_ids(t, pc[i].p, pc[i].len, 1, ids, n, &cap, err);
            continue;
        }
        memcpy(buf + len, pc[i].p, pc[i].len);
        len += pc[i].len;
        if (i + 1 == np || pc[i + 1].special) {
            s = text_ids(t, buf, len, 0, ids, n, &cap, err);
            len = 0;
        }
    }
    free(buf);
    free(pc);
    if (s) {
        free(*ids);
        *ids = NULL, *n = 0;
    }
    return s;
}
