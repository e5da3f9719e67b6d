/* request.h - the JSON bodies `codemoe serve` accepts, parsed and checked
 * before any of them reaches the model.
 *
 * Nothing here knows about HTTP: a body and its endpoint in, a filled
 * srv_request (or one line saying which field is wrong) out, so the same
 * code runs under the server and under tests/fuzz_request.  Strings point
 * into the request's own json_doc and live as long as the request. */
#ifndef CM_SRV_REQUEST_H
#define CM_SRV_REQUEST_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/sampling.h"
#include "util/json.h"
#include "util/status.h"

#define SRV_MAX_STOPS 16
#define SRV_MAX_FIELDS 32
#define SRV_MAX_MESSAGES 4096
#define SRV_MAX_EXTRA 1024

typedef enum {
    SRV_COMPLETION, /* POST /v1/completions */
    SRV_CHAT,       /* POST /v1/chat/completions */
    SRV_INFILL,     /* POST /infill (llama.cpp's fields) */
    SRV_TOKENIZE,   /* POST /tokenize */
    SRV_DETOKENIZE  /* POST /detokenize */
} srv_kind;

typedef struct {
    const char *p; /* not NUL-terminated where the JSON held \u0000: use len */
    size_t len;
} srv_str;

typedef struct {
    srv_str role, content;
} srv_msg;

typedef struct {
    srv_str filename, text;
} srv_extra;

typedef struct {
    srv_kind kind;
    json_doc doc;          /* owns every string below */
    /* completion: prompt text, or token ids (an array of integers) */
    srv_str prompt;
    int32_t *ids;          /* malloc'ed; also /detokenize's tokens */
    size_t n_ids;
    int prompt_is_ids;
    /* chat */
    srv_msg *msgs;         /* malloc'ed */
    char *join;            /* malloc'ed: contents given as arrays of parts, joined */
    int n_msgs;
    /* infill: [input_extra] <PRE> input_prefix <SUF> input_suffix <MID> prompt */
    srv_str prefix, suffix;
    srv_extra *extra;      /* malloc'ed */
    int n_extra;
    srv_str language;      /* optional: which expert of a pack (else routed) */
    /* generation */
    int n_predict;         /* -1: until end of text or a full context */
    long long t_max_predict_ms; /* > 0: generation stops once it has run this long
                                 * and made a new line (llama.cpp's), "limit" */
    int stream, include_usage, have_seed, add_special;
    int cache_prompt;      /* reuse a slot's cached prefix (llama.cpp's field; default on) */
    srv_str fields[SRV_MAX_FIELDS]; /* /infill's response_fields, when has_fields */
    int n_fields, has_fields;
    cm_sampling_params sp;
    srv_str stops[SRV_MAX_STOPS];
    int n_stops;
} srv_request;

/* Parses and checks a body for endpoint kind.  Unknown fields are ignored
 * (clients send many); known fields of the wrong type or out of range,
 * malformed JSON and bad UTF-8 are CM_E_FORMAT or CM_E_RANGE with a line
 * naming the field; CM_E_UNSUPPORTED for what is valid but not served yet
 * (n > 1).  defaults gives the sampling defaults and default_n_predict the
 * token limit when none is asked for.  r is always safe to free. */
cm_status srv_parse_request(srv_kind kind, const char *body, size_t len,
                            const cm_sampling_params *defaults, int default_n_predict,
                            srv_request *r, cm_err *err);
void srv_request_free(srv_request *r);

/* A rendered chat prompt: pieces of text in order, special ones (template
 * markers such as <|im_start|>) to be tokenized with special tokens
 * recognised, the others (message text) as plain text, so a message cannot
 * forge a marker. */
typedef struct {
    const char *p;
    size_t len;
    int special;
} srv_piece;

/* The chat formats rendered (chat.c), each as its family documents it. */
typedef enum {
    SRV_TMPL_CHATML,   /* <|im_start|>role\ncontent<|im_end|>\n (Qwen, Yi, ...) */
    SRV_TMPL_LLAMA2,   /* [INST] <<SYS>>..<</SYS>> .. [/INST] (Llama 2, CodeLlama-Instruct) */
    SRV_TMPL_LLAMA3,   /* <|start_header_id|>role<|end_header_id|>\n\n..<|eot_id|> */
    SRV_TMPL_DEEPSEEK, /* ### Instruction:\n..\n### Response:\n (DeepSeek-Coder) */
    SRV_TMPL_ZEPHYR,   /* <|role|>\ncontent</s>\n */
    SRV_TMPL_GEMMA,    /* <start_of_turn>user\n..<end_of_turn>\n */
    SRV_TMPL_COUNT
} srv_template;

/* Which template a GGUF's tokenizer.chat_template (NULL or empty: none) is,
 * by the markers each family's template carries; no template means ChatML.
 * CM_E_UNSUPPORTED, with a line naming what it looks like, for one that
 * cannot be rendered. */
cm_status srv_template_detect(const char *tmpl, size_t len, srv_template *out, cm_err *err);
/* A template by name (--chat-template): chatml, llama2, codellama, llama3,
 * deepseek-coder, zephyr, gemma; CM_E_USAGE naming them otherwise. */
cm_status srv_template_by_name(const char *name, srv_template *out, cm_err *err);
const char *srv_template_name(srv_template t);
/* The prompt of r's messages with an open assistant turn, without the BOS
 * token the tokenizer puts first.  *pieces is malloc'ed (the caller frees
 * it); texts point into r and static strings.  CM_E_RANGE for a role the
 * template has no place for. */
cm_status srv_chat_render(const srv_request *r, srv_template t, srv_piece **pieces, int *n,
                          cm_err *err);
/* The token ids of r's chat prompt (srv_chat_render's pieces, BOS first
 * where the tokenizer adds one); *ids is malloc'ed. */
struct cm_tokenizer;
cm_status srv_chat_ids(const struct cm_tokenizer *t, const srv_request *r, srv_template tmpl,
                       int32_t **ids, size_t *n, cm_err *err);
/* The marker that ends an assistant turn in template t ("<|im_end|>"). */
const char *srv_template_end(srv_template t);

/* Writes n bytes as a JSON string (quoted): '"', '\\' and control
 * characters escaped, and bytes that are not valid UTF-8 (a model may emit
 * half a character) as U+FFFD, so every response is valid JSON. */
void srv_json_str(FILE *f, const char *s, size_t n);
/* The members of the JSON object json named by fields (paths such as
 * "timings/prompt_n" as flat keys, as llama.cpp's response_fields), as a
 * JSON object; absent ones left out. */
void srv_json_fields(FILE *f, const char *json, size_t len, const srv_str *fields, int n);

#endif
