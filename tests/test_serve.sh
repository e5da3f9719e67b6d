#!/bin/sh
# test_serve.sh - `codemoe serve` with a real client (curl): answers equal to
# `codemoe run` (greedy), streamed chunks equal to the whole answer, /infill
# equal to run --infill, every error with its status and OpenAI's error
# object, a client leaving mid-stream, idle connections closed, /metrics
# counting, SIGTERM finishing the running request and exiting 0.
set -u
. "$(dirname "$0")/lib.sh"
grep -q '^#define CM_HAVE_MICROHTTPD 1' "$BUILD/config.h" 2>/dev/null || {
    tl_tmpdir
    expect 1 "serve without libmicrohttpd" -- "$CODEMOE" serve --port 0
    grep -q "no HTTP server library" "$TMP/err" || fail "serve without a server library: $(cat "$TMP/err")"
    tl_skip "this build has no libmicrohttpd (install libmicrohttpd-dev and reconfigure)"
}
command -v curl >/dev/null 2>&1 || tl_skip "curl is not installed"
command -v python3 >/dev/null 2>&1 || tl_skip "python3 (to read JSON answers) is not installed"
MODEL="$TL_SRC/models/default.gguf"
[ -f "$MODEL" ] || tl_skip "no default model at $MODEL"
tl_tmpdir
KEY=sekrit-key
RUNOPTS="-t 2 -c 512"
SPIDS=
trap 'for p in $SPIDS; do kill -9 "$p" 2>/dev/null; done; rm -rf "$TMP"' EXIT

# start_server LOG ARGS...: a server on a free port; sets SPID and URL
start_server() {
    log=$1; shift
    "$CODEMOE" serve --port 0 "$@" 2>"$log" &
    SPID=$!
    SPIDS="$SPIDS $SPID"
    i=0
    while ! grep -q "listening on" "$log" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 300 ] && kill -0 "$SPID" 2>/dev/null || { cat "$log"; return 1; }
        sleep 0.1
    done
    URL=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)
    curl -sf "$URL/health" >/dev/null || { cat "$log"; return 1; }
}

# req NAME METHOD PATH [curl args]: the body in $TMP/NAME, the status in $TMP/NAME.code
req() {
    name=$1 method=$2 path=$3; shift 3
    curl -s -o "$TMP/$name" -w '%{http_code}' -X "$method" -H "Authorization: Bearer $KEY" \
        "$@" "$URL$path" >"$TMP/$name.code"
}
# status NAME CODE: the request answered CODE
status() {
    [ "$(cat "$TMP/$1.code")" = "$2" ] || fail "$1: status $(cat "$TMP/$1.code"), not $2: $(head -c 300 "$TMP/$1")"
}
# jget FILE EXPR: a value of the JSON in FILE (d), written as text
jget() {
    python3 -c 'import json, os, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
sys.stdout.write(str(eval(sys.argv[2])))' "$1" "$2" 2>/dev/null
}
# an error answer: OpenAI's {"error": {"message", "type", "code"}}
is_error() {
    [ "$(jget "$TMP/$1" '(d["error"]["code"] == int(open(sys.argv[1] + ".code").read()) and
        len(d["error"]["message"]) > 0 and d["error"]["type"] != "")')" = True ] ||
        fail "$1: not an error object: $(head -c 300 "$TMP/$1")"
}

start_server "$TMP/server.log" -m "$MODEL" $RUNOPTS --api-key "$KEY" --max-body 65536 \
    --timeout 2 || { fail "the server did not start"; exit 1; }

# ---- answers equal to `codemoe run` (greedy)
PROMPT='def fibonacci(n):'
"$CODEMOE" run -m "$MODEL" -p "$PROMPT" -n 24 --temp 0 $RUNOPTS >"$TMP/run.txt" 2>/dev/null ||
    fail "codemoe run failed"
req cmpl POST /v1/completions -d '{"prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0}'
status cmpl 200
jget "$TMP/cmpl" 'd["choices"][0]["text"]' >"$TMP/cmpl.txt"
cmp -s "$TMP/run.txt" "$TMP/cmpl.txt" || fail "completion differs from codemoe run: '$(cat "$TMP/cmpl.txt")' vs '$(cat "$TMP/run.txt")'"
[ "$(jget "$TMP/cmpl" 'd["usage"]["completion_tokens"] + 0')" -le 24 ] || fail "usage: $(cat "$TMP/cmpl")"
[ "$(jget "$TMP/cmpl" 'd["object"]')" = text_completion ] || fail "completion object: $(cat "$TMP/cmpl")"

# streamed: server-sent events whose texts join to the same answer, then [DONE]
req stream POST /v1/completions -N -d '{"prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0, "stream": true}'
status stream 200
python3 -c 'import json, sys
out, done = [], False
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.rstrip("\n")
    if line == "data: [DONE]": done = True
    elif line.startswith("data: "): out.append(json.loads(line[6:])["choices"][0]["text"])
    elif line: sys.exit("not an event line: " + line)
sys.stdout.write("".join(out))
sys.exit(0 if done else "no [DONE]")' "$TMP/stream" >"$TMP/stream.txt" || fail "stream: $(head -c 300 "$TMP/stream")"
cmp -s "$TMP/stream.txt" "$TMP/cmpl.txt" || fail "streamed text differs: '$(cat "$TMP/stream.txt")'"

# a stop string (taken from the middle of that answer) ends the text before it
python3 -c 'import json, sys
t = open(sys.argv[1], encoding="utf-8").read()
print(json.dumps({"prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0,
                  "stop": ["@@never@@", t[len(t) // 2:len(t) // 2 + 3]]}))' "$TMP/cmpl.txt" >"$TMP/stop.json"
req stop POST /v1/completions --data-binary @"$TMP/stop.json"
status stop 200
[ "$(jget "$TMP/stop" 'd["choices"][0]["text"] == (lambda t: t[:t.index(t[len(t) // 2:len(t) // 2 + 3])])(open(os.path.join(os.path.dirname(sys.argv[1]), "cmpl.txt"), encoding="utf-8").read())')" = True ] ||
    fail "stop string: $(cat "$TMP/stop")"

# chat (ChatML)
req chat POST /v1/chat/completions -d '{"messages": [{"role": "system", "content": "You write C."}, {"role": "user", "content": [{"type": "text", "text": "Print hello."}]}], "max_tokens": 8, "temperature": 0}'
status chat 200
[ "$(jget "$TMP/chat" 'd["choices"][0]["message"]["role"] + str(type(d["choices"][0]["message"]["content"]) is str) + d["object"]')" = assistantTruechat.completion ] ||
    fail "chat answer: $(head -c 300 "$TMP/chat")"
req chats POST /v1/chat/completions -d '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true}'
status chats 200
grep -q '"delta": {"role": "assistant"' "$TMP/chats" && tail -2 "$TMP/chats" | grep -q '^data: \[DONE\]$' ||
    fail "chat stream: $(head -c 300 "$TMP/chats")"

# /infill equals run --infill (the default model's vocabulary has StarCoder's FIM tokens)
PRE='int add(int a, int b) {
'
SUF='}
'
"$CODEMOE" run -m "$MODEL" --infill --prefix "$PRE" --suffix "$SUF" -n 16 --temp 0 $RUNOPTS \
    >"$TMP/run_infill.txt" 2>/dev/null || fail "codemoe run --infill failed"
req infill POST /infill -d '{"input_prefix": "int add(int a, int b) {\n", "input_suffix": "}\n", "n_predict": 16, "temperature": 0}'
status infill 200
jget "$TMP/infill" 'd["content"]' >"$TMP/infill.txt"
cmp -s "$TMP/run_infill.txt" "$TMP/infill.txt" || fail "/infill differs from run --infill: '$(cat "$TMP/infill.txt")' vs '$(cat "$TMP/run_infill.txt")'"
# llama.vim's request shape: input_extra chunks, prompt, streaming
req infill2 POST /infill -N -d '{"input_prefix": "def f(x):\n", "input_suffix": "\n", "input_extra": [{"filename": "a.py", "text": "import os\n"}], "prompt": "    ", "n_predict": 8, "stream": true, "temperature": 0, "top_k": 40, "top_p": 0.99, "stop": [], "samplers": ["top_k"], "cache_prompt": true}'
status infill2 200
tail -2 "$TMP/infill2" | grep -q '"stop": true' || fail "/infill stream: $(tail -c 300 "$TMP/infill2")"

# tokenize / detokenize round trip
req tok POST /tokenize -d '{"content": "int main(void) { return 0; } // é €"}'
status tok 200
python3 -c 'import json, sys; print(json.dumps({"tokens": json.load(open(sys.argv[1]))["tokens"]}))' \
    "$TMP/tok" >"$TMP/tok.req"
req detok POST /detokenize --data-binary @"$TMP/tok.req"
status detok 200
[ "$(jget "$TMP/detok" 'd["content"] == "int main(void) { return 0; } // é €"')" = True ] ||
    fail "round trip: $(cat "$TMP/tok") -> $(cat "$TMP/detok")"

req models GET /v1/models
status models 200
[ "$(jget "$TMP/models" 'd["data"][0]["id"]')" = default.gguf ] || fail "/v1/models: $(cat "$TMP/models")"

# ---- errors: status, OpenAI's error object, never a crash
curl -s -o "$TMP/nokey" -w '%{http_code}' "$URL/v1/models" >"$TMP/nokey.code"
status nokey 401; is_error nokey
curl -s -o "$TMP/badkey" -w '%{http_code}' -H "Authorization: Bearer wrong" "$URL/v1/models" >"$TMP/badkey.code"
status badkey 401
curl -s -o "$TMP/health" -w '%{http_code}' "$URL/health" >"$TMP/health.code"
status health 200 # /health needs no key
req notfound GET /nope; status notfound 404; is_error notfound
req method GET /v1/completions; status method 405; is_error method
req method2 POST /health -d '{}'; status method2 405
head -c 70000 /dev/zero | tr '\0' ' ' >"$TMP/big.json"
req big POST /v1/completions --data-binary @"$TMP/big.json"; status big 413; is_error big
req bigc POST /tokenize -H 'Transfer-Encoding: chunked' --data-binary @"$TMP/big.json"; status bigc 413
long=$(awk 'BEGIN { for (i = 0; i < 400; i++) printf "x%d = %d; ", i, i }')
printf '{"prompt": "%s", "max_tokens": 1}' "$long" >"$TMP/long.json"
req long POST /v1/completions --data-binary @"$TMP/long.json"; status long 400; is_error long
grep -q context "$TMP/long" || fail "long prompt: $(cat "$TMP/long")"
n=0
for body in '{bad' '[1, 2]' '' '{"prompt": 5}' '{"prompt": "x", "temperature": "hot"}' \
    '{"prompt": "x", "max_tokens": -5}' '{"prompt": "x", "stop": 5}' '{"prompt": "x", "stream": "yes"}' \
    '{"prompt": "x", "n": 2}' '{"prompt": [99999999]}' '{"prompt": "x", "top_p": NaN}' \
    '{"prompt": "x", "seed": 1.5}' '{"prompt": "\ud800"} x' '{"prompt": "x", "temperature": 1e999}'; do
    n=$((n + 1))
    printf '%s' "$body" >"$TMP/bad$n.json"
    req bad$n POST /v1/completions --data-binary @"$TMP/bad$n.json"; status bad$n 400; is_error bad$n
done
printf '{"prompt": "\377\376"}' >"$TMP/utf8.json"
req utf8 POST /v1/completions --data-binary @"$TMP/utf8.json"; status utf8 400; is_error utf8
for body in '{}' '{"messages": []}' '{"messages": [{"role": "wizard", "content": "x"}]}' \
    '{"messages": [{"role": "user", "content": 5}]}' '{"messages": "hi"}'; do
    n=$((n + 1))
    printf '%s' "$body" >"$TMP/bad$n.json"
    req bad$n POST /v1/chat/completions --data-binary @"$TMP/bad$n.json"; status bad$n 400; is_error bad$n
done
for body in '{"input_prefix": 5}' '{"input_extra": [1]}' '{"input_extra": {"a": 1}}'; do
    n=$((n + 1))
    printf '%s' "$body" >"$TMP/bad$n.json"
    req bad$n POST /infill --data-binary @"$TMP/bad$n.json"; status bad$n 400; is_error bad$n
done
req badtok POST /detokenize -d '{"tokens": [1, 999999]}'; status badtok 400; is_error badtok
req badtok2 POST /tokenize -d '{"text": "x"}'; status badtok2 400
kill -0 "$SPID" 2>/dev/null || fail "the server died on bad requests"

# ---- a client that leaves mid-stream stops its generation; the slot is free again
# (a prompt whose seeded completion runs to the full context: the client leaves first)
curl -sN -H "Authorization: Bearer $KEY" "$URL/v1/completions" \
    -d '{"prompt": "class A:\n", "max_tokens": -1, "stream": true, "seed": 1}' | head -c 400 >/dev/null
req after POST /v1/completions -d '{"prompt": "x", "max_tokens": 2}'
status after 200
grep -q 'client gone' "$TMP/server.log" || fail "no generation stopped for a client that left: $(tail -3 "$TMP/server.log")"

# ---- an idle connection is closed after --timeout (2 s)
python3 -c 'import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(10); t = time.time()
sys.exit(0 if s.recv(1) == b"" and time.time() - t < 8 else 1)' \
    "$(echo "$URL" | sed 's|http://\(.*\):.*|\1|')" "${URL##*:}" || fail "an idle connection was not closed"

# ---- /metrics counts what happened
req metrics GET /metrics
status metrics 200
for pat in 'codemoe_requests_total{endpoint="/v1/completions",status="200"} [4-9]' \
    'codemoe_requests_total{endpoint="/v1/completions",status="400"} [1-9][0-9]' \
    'codemoe_requests_total{endpoint="/v1/completions",status="413"} 1' \
    'codemoe_requests_total{endpoint="/v1/models",status="401"} 2' \
    'codemoe_requests_total{endpoint="other",status="404"} 1' \
    'codemoe_requests_total{endpoint="/infill",status="200"} 2' \
    'codemoe_generated_tokens_total [1-9]' 'codemoe_prompt_tokens_total [1-9]' \
    'codemoe_requests_cancelled_total [1-9]' 'codemoe_request_seconds_count{endpoint="/infill"} 5'; do
    grep -q "^$pat" "$TMP/metrics" || fail "/metrics lacks '$pat'"
done

# ---- SIGTERM: the running request finishes, then exit 0
req term POST /v1/completions -d '{"prompt": "def f(x):", "max_tokens": 200, "seed": 2, "temperature": 1}' &
CPID=$!
sleep 0.3
kill -TERM "$SPID"
wait "$CPID"
status term 200
[ "$(jget "$TMP/term" 'd["usage"]["completion_tokens"] > 0')" = True ] || fail "the running request did not finish: $(head -c 300 "$TMP/term")"
wait "$SPID"
rc=$?
[ $rc -eq 0 ] || fail "serve exited $rc after SIGTERM: $(tail -3 "$TMP/server.log")"

# ---- a model without FIM tokens refuses /infill; without a key nothing is asked
FIX="$SHARED/fixtures/gguf/llama/llama-q8_0.gguf"
if [ -f "$FIX" ]; then
    KEY=
    start_server "$TMP/server2.log" -m "$FIX" -t 1 || fail "the second server did not start"
    req nofim POST /infill -d '{"input_prefix": "a", "input_suffix": "b"}'
    status nofim 400; is_error nofim
    grep -q "fill-in-the-middle" "$TMP/nofim" || fail "no-FIM message: $(cat "$TMP/nofim")"
    kill -INT "$SPID"
    wait "$SPID" || fail "serve exited $? after SIGINT"
fi

# ---- usage errors
expect 2 "serve stray argument" -- "$CODEMOE" serve stray
expect 2 "serve bad port" -- "$CODEMOE" serve --port 70000
expect 0 "serve --help" -- "$CODEMOE" serve --help
[ "$fails" -eq 0 ] || { tail -20 "$TMP/server.log"; exit 1; }
echo "PASS: serve"
