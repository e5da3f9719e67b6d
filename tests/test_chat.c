/* test_chat.c - chat templates: each family's GGUF template recognised by
 * its markers (the templates below are excerpts of the families' published
 * tokenizer_config.json templates), --chat-template names, and each
 * rendering equal to a prompt written by hand from the family's documented
 * format; roles a template has no place for and unknown templates refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/request.h"
#include "testlib.h"

static const char CONV[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"You write C.\"},"
    " {\"role\": \"user\", \"content\": \"Print hello.\"},"
    " {\"role\": \"assistant\", \"content\": \"puts(\\\"hello\\\");\"},"
    " {\"role\": \"user\", \"content\": \" And exit. \"}]}";

/* The rendering of body under t, pieces joined; special pieces in [[ ]]. */
static char *render(srv_template t, const char *body, cm_status *st)
{
    static const cm_sampling_params sp = {0};
    srv_request r;
    cm_err err;
    srv_piece *p = NULL;
    int n = 0;
    *st = srv_parse_request(SRV_CHAT, body, strlen(body), &sp, 16, &r, &err);
    if (!*st)
        *st = srv_chat_render(&r, t, &p, &n, &err);
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += p[i].len + 4;
    char *out = calloc(len + 1, 1);
    for (int i = 0; out && i < n; i++) {
        if (p[i].special)
            strcat(out, "[[");
        strncat(out, p[i].p, p[i].len);
        if (p[i].special)
            strcat(out, "]]");
    }
    free(p);
    srv_request_free(&r);
    return out;
}

static void expect(const char *name, const char *want, const char *end)
{
    srv_template t;
    cm_err err;
    cm_status st;
    CHECK(!srv_template_by_name(name, &t, &err), "%s", name);
    CHECK(!strcmp(srv_template_name(t), name) || !strcmp(name, "codellama"), "%s", name);
    char *got = render(t, CONV, &st);
    CHECK(!st && got && !strcmp(got, want), "%s:\n got  '%s'\n want '%s'", name, got, want);
    CHECK(!strcmp(srv_template_end(t), end), "%s ends with %s", name, srv_template_end(t));
    free(got);
}

static void detect(const char *tmpl, const char *want)
{
    srv_template t;
    cm_err err;
    cm_status st = srv_template_detect(tmpl, tmpl ? strlen(tmpl) : 0, &t, &err);
    if (!want)
        CHECK(st == CM_E_UNSUPPORTED && strstr(err.msg, "--chat-template"), "refused: %.60s",
              tmpl);
    else
        CHECK(!st && !strcmp(srv_template_name(t), want), "%.60s: %s, not %s", tmpl,
              st ? err.msg : srv_template_name(t), want);
}

int main(void)
{
    /* the documented formats, written out (BOS is the tokenizer's) */
    expect("chatml",
           "[[<|im_start|>]]system\nYou write C.[[<|im_end|>]]\n[[<|im_start|>]]user\nPrint "
           "hello.[[<|im_end|>]]\n[[<|im_start|>]]assistant\nputs(\"hello\");[[<|im_end|>]]\n"
           "[[<|im_start|>]]user\n And exit. [[<|im_end|>]]\n[[<|im_start|>]]assistant\n",
           "<|im_end|>");
    const char *l2 = "[INST] <<SYS>>\nYou write C.\n<</SYS>>\n\nPrint hello. [/INST] "
                     "puts(\"hello\"); [[</s>]][[<s>]][INST] And exit. [/INST]";
    expect("llama2", l2, "</s>");
    expect("codellama", l2, "</s>");
    expect("llama3",
           "[[<|start_header_id|>]]system[[<|end_header_id|>]]\n\nYou write C.[[<|eot_id|>]]"
           "[[<|start_header_id|>]]user[[<|end_header_id|>]]\n\nPrint hello.[[<|eot_id|>]]"
           "[[<|start_header_id|>]]assistant[[<|end_header_id|>]]\n\nputs(\"hello\");"
           "[[<|eot_id|>]][[<|start_header_id|>]]user[[<|end_header_id|>]]\n\nAnd exit."
           "[[<|eot_id|>]][[<|start_header_id|>]]assistant[[<|end_header_id|>]]\n\n",
           "<|eot_id|>");
    expect("deepseek-coder",
           "You write C.### Instruction:\nPrint hello.\n### Response:\nputs(\"hello\");\n"
           "[[<|EOT|>]]\n### Instruction:\n And exit. \n### Response:\n",
           "<|EOT|>");
    expect("zephyr",
           "[[<|system|>]]\nYou write C.[[</s>]]\n[[<|user|>]]\nPrint hello.[[</s>]]\n"
           "[[<|assistant|>]]\nputs(\"hello\");[[</s>]]\n[[<|user|>]]\n And exit. [[</s>]]\n"
           "[[<|assistant|>]]\n",
           "</s>");
    expect("gemma",
           "[[<start_of_turn>]]user\nYou write C.\n\nPrint hello.[[<end_of_turn>]]\n"
           "[[<start_of_turn>]]model\nputs(\"hello\");[[<end_of_turn>]]\n"
           "[[<start_of_turn>]]user\nAnd exit.[[<end_of_turn>]]\n[[<start_of_turn>]]model\n",
           "<end_of_turn>");

    /* recognised by the markers of each family's published template */
    detect(NULL, "chatml");
    detect("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
           "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}", "chatml");
    detect("{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
           "+ message['content'] | trim + '<|eot_id|>' %}", "llama3");
    detect("{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% set content = "
           "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' %}", "llama2");
    detect("{{'### Instruction:\\n' + message['content'] + '\\n'}}{{'### Response:\\n' + "
           "message['content'] + '\\n<|EOT|>\\n'}}", "deepseek-coder");
    detect("{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token }}"
           "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' }}", "zephyr");
    detect("{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + "
           "'<end_of_turn>\\n' }}", "gemma");
    /* and the ones it cannot render: refused with a way out */
    detect("{{ '[INST] ' + message['content'] + ' [/INST]' }}", NULL);
    detect("{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{{'<|assistant|>\\n'}}", NULL);
    detect("{{ 'Source: ' + role + '\\n\\n ' + content + ' <step> ' }}", NULL);
    detect("{{ message.content }}", NULL);

    /* a role the template has no place for; an unknown name */
    cm_status st;
    char *got = render(SRV_TMPL_LLAMA2, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, "
                       "{\"role\": \"system\", \"content\": \"y\"}]}", &st);
    CHECK(st == CM_E_RANGE); /* Llama 2 has a system prompt only first */
    free(got);
    got = render(SRV_TMPL_GEMMA, "{\"messages\": [{\"role\": \"developer\", \"content\": \"S\"}, "
                 "{\"role\": \"user\", \"content\": \"U\"}]}", &st);
    CHECK(!st && got && !strcmp(got, "[[<start_of_turn>]]user\nS\n\nU[[<end_of_turn>]]\n"
                                     "[[<start_of_turn>]]model\n"), "developer: %s", got);
    free(got);
    srv_template t;
    cm_err err;
    CHECK(srv_template_by_name("jinja", &t, &err) == CM_E_USAGE && strstr(err.msg, "gemma"));
    return tl_finish("test_chat");
}
