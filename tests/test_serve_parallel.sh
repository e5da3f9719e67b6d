#!/bin/sh
# test_serve_parallel.sh - `codemoe serve --parallel`: prompt-prefix reuse
# (a second /infill with the same ~2,000-token prefix and one changed line
# answers at least 5x faster, and exactly what a request without reuse
# answers), several requests decoded together (each answer equal to the
# same request made alone, batches holding several slots), a client leaving
# mid-stream freeing its slot, the expert of a language-expert pack chosen
# per request (input_extra file names, "language") and counted by /metrics.
set -u
TL_PROBE="corpus/c/sample.txt fixtures/gguf/llama/llama-f32.gguf"
. "$(dirname "$0")/lib.sh"
grep -q '^#define CM_HAVE_MICROHTTPD 1' "$BUILD/config.h" 2>/dev/null ||
    tl_skip "this build has no libmicrohttpd"
command -v curl >/dev/null 2>&1 || tl_skip "curl is not installed"
command -v python3 >/dev/null 2>&1 || tl_skip "python3 is not installed"
MODEL="$TL_SRC/models/default.gguf"
[ -f "$MODEL" ] || tl_skip "no default model at $MODEL"
SAMPLE="$SHARED/corpus/c/sample.txt"
[ -f "$SAMPLE" ] || tl_skip "no corpus sample at $SAMPLE"
tl_tmpdir
SPID=
trap '[ -n "$SPID" ] && kill -9 "$SPID" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$TMP"' EXIT

# start_server LOG ARGS...: a server on a free port; sets SPID and URL
start_server() {
    log=$1; shift
    "$CODEMOE" serve --port 0 "$@" 2>"$log" &
    SPID=$!
    i=0
    while ! grep -q "listening on" "$log" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 300 ] && kill -0 "$SPID" 2>/dev/null || { cat "$log"; fail "no server"; exit 1; }
        sleep 0.1
    done
    URL=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)
}
stop_server() {
    kill -TERM "$SPID"
    wait "$SPID" || fail "serve exited $? after SIGTERM"
    SPID=
}
start_server "$TMP/server.log" -m "$MODEL" -t 1 -c 3072 --parallel 4
grep -q "context 3072, 4 slots" "$TMP/server.log" || fail "slots: $(head -3 "$TMP/server.log")"

# post NAME PATH JSONFILE: the answer in $TMP/NAME, seconds taken in $TMP/NAME.t
post() {
    curl -s -o "$TMP/$1" -w '%{http_code} %{time_total}' -X POST --data-binary @"$3" "$URL$2" >"$TMP/$1.w"
    read -r code secs <"$TMP/$1.w"
    [ "$code" = 200 ] || fail "$1: status $code: $(head -c 300 "$TMP/$1")"
    echo "$secs" >"$TMP/$1.t"
}
jget() {
    python3 -c 'import json, os, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
sys.stdout.write(str(eval(sys.argv[2])))' "$1" "$2" 2>/dev/null
}
metric() { curl -s "$URL/metrics" | sed -n "s/^$1 //p"; }

# ---- prefix reuse: an editor resending a file with one line changed
python3 - "$SAMPLE" "$TMP" <<'PY'
import json, sys
text = open(sys.argv[1], encoding="utf-8").read()
lines = text.splitlines(keepends=True)
pre = "".join(lines[:200])[:7600]
pre = pre[:pre.rindex("\n") + 1]
body = lambda p, cache: {"input_prefix": p, "input_suffix": "\n}\n", "n_predict": 4,
                         "temperature": 0, "cache_prompt": cache,
                         "input_extra": [{"filename": "sample.c", "text": ""}]}
cut = pre.rindex("\n", 0, len(pre) - 1) + 1           # the last line, changed
pre2 = pre[:cut] + "    int changed_line = 42;\n"
for name, p, cache in (("first", pre, True), ("second", pre2, True), ("nocache", pre2, False)):
    json.dump(body(p, cache), open(sys.argv[2] + "/" + name + ".json", "w"))
PY
post first /infill "$TMP/first.json"
post second /infill "$TMP/second.json"
post nocache /infill "$TMP/nocache.json"
n1=$(jget "$TMP/first" 'd["tokens_evaluated"]')
c2=$(jget "$TMP/second" 'd["tokens_cached"]')
c3=$(jget "$TMP/nocache" 'd["tokens_cached"]')
echo "first /infill: $n1 tokens in $(cat "$TMP/first.t") s; second: $c2 of them cached, $(cat "$TMP/second.t") s"
[ "${n1:-0}" -ge 1800 ] || fail "the prompt is ${n1:-?} tokens, not about 2,000"
[ "${c2:-0}" -ge $((n1 - 40)) ] || fail "second /infill reused ${c2:-?} of $n1 tokens"
[ "${c3:--1}" = 0 ] || fail "cache_prompt false reused ${c3:-?} tokens"
[ "$(jget "$TMP/second" 'd["content"]')" = "$(jget "$TMP/nocache" 'd["content"]')" ] ||
    fail "with reuse '$(jget "$TMP/second" 'd["content"]')', without '$(jget "$TMP/nocache" 'd["content"]')'"
python3 -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2])
sys.exit(0 if a >= 5 * b else "first %.3f s, second %.3f s: %.1fx, not 5x" % (a, b, a / b))' \
    "$(cat "$TMP/first.t")" "$(cat "$TMP/second.t")" || fail "prefix reuse is not 5x faster"

# ---- a client leaving mid-stream frees its slot
echo '{"prompt": "1, 2, 3, 4, 5,", "max_tokens": 3000, "stream": true, "temperature": 0, "cache_prompt": false}' >"$TMP/long.json"
curl -s -N --max-time 1 -X POST --data-binary @"$TMP/long.json" "$URL/v1/completions" >/dev/null 2>&1
i=0
while [ "$(metric codemoe_slots_busy)" != 0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ "$(metric codemoe_slots_busy)" = 0 ] || fail "the slot stayed busy after its client left"
[ "$(metric codemoe_requests_cancelled_total)" -ge 1 ] || fail "the stream was not counted cancelled"

# ---- llama.vim's requests, shaped exactly as its autoload/llama.vim sends
# them (ggml-org/llama.vim a1c8e6e): the ring-buffer update (n_predict 0,
# input_extra only) then the completion at the cursor, twice (the second
# finds the prompt in the cache), answering just its response_fields
python3 - "$TMP" <<'PY'
import json, sys
extra = [{"text": "import os\nimport sys\n\ndef helper(x):\n    return x * 2\n",
          "time": [1738322518, 123456], "filename": "util.py"}]
ring = {"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": extra, "prompt": "",
        "n_predict": 0, "temperature": 0.0, "samplers": [], "stream": False, "cache_prompt": True,
        "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""]}
fim = {"id_slot": 0, "input_prefix": "def main():\n    args = sys.argv[1:]\n",
       "input_suffix": "\n    return 0\n", "input_extra": extra, "prompt": "    for a in ",
       "n_predict": 128, "stop": [], "n_indent": 4, "top_k": 40, "top_p": 0.90,
       "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True,
       "t_max_prompt_ms": 500, "t_max_predict_ms": 1000,
       "response_fields": ["content", "timings/prompt_n", "timings/prompt_ms",
                           "timings/prompt_per_token_ms", "timings/prompt_per_second",
                           "timings/predicted_n", "timings/predicted_ms",
                           "timings/predicted_per_token_ms", "timings/predicted_per_second",
                           "truncated", "tokens_cached"]}
json.dump(ring, open(sys.argv[1] + "/vim_ring.json", "w"))
json.dump(fim, open(sys.argv[1] + "/vim_fim.json", "w"))
PY
post vim_ring /infill "$TMP/vim_ring.json"
[ "$(jget "$TMP/vim_ring" 'd == {}')" = True ] || fail "llama.vim ring update: $(cat "$TMP/vim_ring")"
post vim_fim1 /infill "$TMP/vim_fim.json"
post vim_fim2 /infill "$TMP/vim_fim.json"
[ "$(jget "$TMP/vim_fim1" 'sorted(d) == sorted(json.load(open(os.path.dirname(sys.argv[1]) + "/vim_fim.json"))["response_fields"]) and type(d["content"]) is str and d["timings/predicted_n"] > 0')" = True ] ||
    fail "llama.vim completion: $(head -c 400 "$TMP/vim_fim1")"
[ "$(jget "$TMP/vim_fim2" 'd["tokens_cached"] > 20 and d["timings/prompt_n"] < 5')" = True ] ||
    fail "llama.vim's second completion did not reuse the cache: $(head -c 400 "$TMP/vim_fim2")"

# ---- requests together, each equal to itself alone (greedy).  The default
# model's products quantize their activations, and a batch of several rows
# takes other kernels than one row (logits move by up to 0.3 between the
# two, enough to change a near tie): so F32 models here (a fixture, and a
# pack of four F32 members differing in the feed-forward, whose requests one
# step runs together, each member's rows through its own weights); on the
# default model, requests of four experts sharing steps, answers not compared.
# together K...: requests K.. at once; fails when an answer differs
together() {
    # threads released by one barrier: the requests arrive within a millisecond
    python3 - "$URL" "$TMP" "$@" <<'PY' || fail "requests together: $*"
import http.client, sys, threading, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
gate = threading.Barrier(len(sys.argv) - 3)
def one(k):
    body = open("%s/p%s.json" % (sys.argv[2], k), "rb").read()
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    gate.wait()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    open("%s/together%s" % (sys.argv[2], k), "wb").write(r.read())
    sys.exit(0 if r.status == 200 else 1)
ts = [threading.Thread(target=one, args=(k,)) for k in sys.argv[3:]]
[t.start() for t in ts]
[t.join() for t in ts]
PY
    for k in "$@"; do
        if [ -n "${NOCMP:-}" ]; then
            [ "$(jget "$TMP/together$k" 'len(d["choices"][0]["text"]) > 0')" = True ] ||
                fail "request $k together: $(head -c 300 "$TMP/together$k")"
            continue
        fi
        a=$(jget "$TMP/alone$k" 'd["choices"][0]["text"]') t=$(jget "$TMP/together$k" 'd["choices"][0]["text"]')
        [ -n "$a" ] && [ "$a" = "$t" ] || fail "request $k together: '$t', alone: '$a'"
    done
}
for k in 0 1 2 3 4 5 6 7; do
    python3 -c 'import json, os, sys
k = int(sys.argv[1])
p = ["def fibonacci(n):", "import os\n\ndef walk(d):", "class Stack:\n    def push(self, x):",
     "def main():\n    args =", "def fibonacci(n):", "#include <stdio.h>\nint main(void) {",
     "func main() {", "public class A {"][k]
print(json.dumps({"prompt": p, "max_tokens": (300 if k < 4 else 24) + 4 * (k % 4), "temperature": 0,
                  "cache_prompt": False}))' $k >"$TMP/p$k.json"
done
b0=$(metric codemoe_batches_total) s0=$(metric codemoe_batch_slots_total)
NOCMP=1 together 4 5 6 7
b1=$(metric codemoe_batches_total) s1=$(metric codemoe_batch_slots_total)
python3 -c 'import sys; b, s = int(sys.argv[1]), int(sys.argv[2])
print("4 experts together: %d batches, %.2f slots a batch" % (b, s / b))
sys.exit(0 if s >= 2 * b else "experts not batched together: %d slots in %d batches" % (s, b))' \
    $((b1 - b0)) $((s1 - s0)) || fail "the four experts' requests were not batched together"

# ---- t_max_predict_ms (llama.vim's): generation stops once it has run that
# long and made a new line; without it the same request goes on
python3 -c 'import json, sys
body = {"input_prefix": "def main():\n", "input_suffix": "\n", "n_predict": 256, "temperature": 0,
        "cache_prompt": False}
json.dump(body, open(sys.argv[1] + "/tmax0.json", "w"))
body["t_max_predict_ms"] = 1
json.dump(body, open(sys.argv[1] + "/tmax1.json", "w"))' "$TMP"
post tmax0 /infill "$TMP/tmax0.json"
post tmax1 /infill "$TMP/tmax1.json"
n0=$(jget "$TMP/tmax0" 'd["tokens_predicted"]') n1=$(jget "$TMP/tmax1" 'd["tokens_predicted"]')
[ "$(jget "$TMP/tmax1" 'd["stop_type"] == "limit" and "\n" in d["content"] and d["timings"]["predicted_ms"] >= 1')" = True ] &&
    [ "$n1" -lt "$n0" ] && [ "$(jget "$TMP/tmax0" 'd["content"].startswith(json.load(open(sys.argv[1][:-5] + "tmax1"))["content"])')" = True ] ||
    fail "t_max_predict_ms 1: $n1 tokens ($(head -c 300 "$TMP/tmax1")), without: $n0"

# ---- experts of the pack chosen per request, counted
go0=$(metric 'codemoe_expert_requests_total{expert="go"}')
py0=$(metric 'codemoe_expert_requests_total{expert="python"}')
printf '%s\n' '{"input_prefix": "x := 1\n", "input_suffix": "", "n_predict": 2, "input_extra": [{"filename": "main.go", "text": "package main\n"}]}' >"$TMP/go.json"
echo '{"prompt": "int x;", "max_tokens": 2, "language": "python"}' >"$TMP/py.json"
post go /infill "$TMP/go.json"
post py /v1/completions "$TMP/py.json"
[ "$(metric 'codemoe_expert_requests_total{expert="go"}')" = $((go0 + 1)) ] || fail "input_extra main.go did not pick go: $(curl -s "$URL/metrics" | grep expert_req)"
[ "$(metric 'codemoe_expert_requests_total{expert="python"}')" = $((py0 + 1)) ] || fail "language python did not pick python"
grep -q "expert go" "$TMP/server.log" || fail "the log names no go expert"

grep -q "expert c" "$TMP/server.log" && grep -q "expert java" "$TMP/server.log" ||
    fail "the requests did not run four experts"
stop_server

FIX="$SHARED/fixtures/gguf/llama/llama-f32.gguf"
if [ -f "$FIX" ]; then
    start_server "$TMP/server2.log" -m "$FIX" -t 1 -c 512 --parallel 4
    for k in 0 1 2 3; do post alone$k /v1/completions "$TMP/p$k.json"; done
    b0=$(metric codemoe_batches_total) s0=$(metric codemoe_batch_slots_total)
    together 0 1 2 3
    b1=$(metric codemoe_batches_total) s1=$(metric codemoe_batch_slots_total)
    python3 -c 'import sys; b, s = int(sys.argv[1]), int(sys.argv[2])
print("4 requests together: %d batches, %.2f slots a batch" % (b, s / b))
sys.exit(0 if s >= 2 * b else "no batching: %d slots in %d batches" % (s, b))' \
        $((b1 - b0)) $((s1 - s0)) || fail "the requests were not batched together"
    stop_server
    # two lanes (two scheduler threads, each its own context and two of the
    # slots): the same answers, and both lanes ran requests
    start_server "$TMP/server4.log" -m "$FIX" -t 2 -c 512 --parallel 4 --lanes 2
    grep -q "4 slots in 2 lanes" "$TMP/server4.log" || fail "lanes: $(grep listening "$TMP/server4.log")"
    for k in 0 1 2 3; do cp "$TMP/p$k.json" "$TMP/p4$k.json"; cp "$TMP/alone$k" "$TMP/alone4$k"; done
    together 40 41 42 43
    grep -q "slot [01] |" "$TMP/server4.log" && grep -q "slot [23] |" "$TMP/server4.log" ||
        fail "the requests did not run in both lanes: $(grep 'slot' "$TMP/server4.log")"
    stop_server
else
    echo "(no $FIX: requests batched together not compared)"
fi

# a pack of F32 members: requests of four experts together, each answer
# equal to the same request alone
GEN="$BUILD/tools/gen_model" VOCAB="$SHARED/vocab/ggml-vocab-starcoder.gguf"
if [ -x "$GEN" ] && [ -f "$VOCAB" ]; then
    seed=1 packargs=
    for l in c python java go; do
        "$GEN" -o "$TMP/m$l.gguf" --n-embd 128 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 256 \
            --type f32 --vocab "$VOCAB" --ffn-seed $seed >/dev/null 2>&1 || fail "gen_model $l"
        seed=$((seed + 1)) packargs="$packargs --expert $l=$TMP/m$l.gguf"
    done
    # shellcheck disable=SC2086 # packargs: words without spaces
    "$CODEMOE" pack -o "$TMP/f32pack.gguf" $packargs 2>"$TMP/err" || fail "pack: $(cat "$TMP/err")"
    start_server "$TMP/server3.log" -m "$TMP/f32pack.gguf" -t 1 -c 512 --parallel 4
    k=0
    for l in c python java go; do
        printf '{"prompt": "int main() { return", "max_tokens": %d, "temperature": 0, "cache_prompt": false, "language": "%s"}\n' \
            $((40 + 3 * k)) $l >"$TMP/p1$k.json"
        post alone1$k /v1/completions "$TMP/p1$k.json"
        k=$((k + 1))
    done
    for k in 0 1 2 3; do cp "$TMP/p1$k.json" "$TMP/p2$k.json"; cp "$TMP/alone1$k" "$TMP/alone2$k"; done
    b0=$(metric codemoe_batches_total) s0=$(metric codemoe_batch_slots_total)
    together 20 21 22 23
    b1=$(metric codemoe_batches_total) s1=$(metric codemoe_batch_slots_total)
    python3 -c 'import sys; b, s = int(sys.argv[1]), int(sys.argv[2])
print("4 experts of an F32 pack together: %d batches, %.2f slots a batch" % (b, s / b))
sys.exit(0 if s >= 2 * b else "no batching: %d slots in %d batches" % (s, b))' \
        $((b1 - b0)) $((s1 - s0)) || fail "the pack's experts were not batched together"
    [ "$(grep -c "expert \(c\|python\|java\|go\)$" "$TMP/server3.log")" -ge 8 ] ||
        fail "the requests did not run four experts: $(grep expert "$TMP/server3.log" | head)"
    stop_server
fi
[ "$fails" -eq 0 ] || { tail -20 "$TMP/server.log"; exit 1; }
echo "PASS: serve --parallel"
