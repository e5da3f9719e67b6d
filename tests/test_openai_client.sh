#!/bin/sh
# test_openai_client.sh - `codemoe serve` under OpenAI's own client library
# (the `openai` npm package, installed at test time into the build folder's
# npm-openai/, git-ignored): a completion and the same completion streamed
# (equal texts), a chat and a streamed chat, the model list.  SKIP without
# node/npm or when the package cannot be installed (no network).
set -u
. "$(dirname "$0")/lib.sh"
grep -q '^#define CM_HAVE_MICROHTTPD 1' "$BUILD/config.h" 2>/dev/null ||
    tl_skip "this build has no libmicrohttpd"
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || tl_skip "node and npm are not installed"
MODEL="$TL_SRC/models/default.gguf"
[ -f "$MODEL" ] || tl_skip "no default model at $MODEL"
NPMDIR="$(cd "$BUILD" && pwd)/npm-openai"
if [ ! -f "$NPMDIR/node_modules/openai/package.json" ]; then
    mkdir -p "$NPMDIR"
    timeout 180 npm install --prefix "$NPMDIR" --no-audit --no-fund --loglevel=error openai \
        >"$NPMDIR/install.log" 2>&1 || tl_skip "npm could not install openai (no network?): $(tail -1 "$NPMDIR/install.log")"
fi
tl_tmpdir
SPID=
trap '[ -n "$SPID" ] && kill -9 "$SPID" 2>/dev/null; rm -rf "$TMP"' EXIT
"$CODEMOE" serve --port 0 -m "$MODEL" -t 1 -c 512 --parallel 2 --api-key sk-codemoe 2>"$TMP/server.log" &
SPID=$!
i=0
while ! grep -q "listening on" "$TMP/server.log" 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 300 ] && kill -0 "$SPID" 2>/dev/null || { cat "$TMP/server.log"; fail "no server"; exit 1; }
    sleep 0.1
done
URL=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$TMP/server.log" | head -1)

cat >"$TMP/client.js" <<'JS'
const m = require(process.env.OPENAI_PKG);
const OpenAI = m.OpenAI || m.default || m;
const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: "sk-codemoe" });
(async () => {
    const out = {};
    const ask = { model: "default.gguf", prompt: "def fibonacci(n):", max_tokens: 24, temperature: 0 };
    const whole = await client.completions.create(ask);
    out.text = whole.choices[0].text;
    out.usage = whole.usage.completion_tokens;
    const stream = await client.completions.create({ ...ask, stream: true });
    out.streamed = "";
    for await (const chunk of stream)
        out.streamed += chunk.choices.length ? chunk.choices[0].text : "";
    const msgs = [{ role: "system", content: "You write Python." },
                  { role: "user", content: "Reverse a list." }];
    const chat = await client.chat.completions.create({ model: "default.gguf", messages: msgs,
                                                        max_tokens: 12, temperature: 0 });
    out.chat_role = chat.choices[0].message.role;
    out.chat = chat.choices[0].message.content;
    const cs = await client.chat.completions.create({ model: "default.gguf", messages: msgs,
                                                      max_tokens: 12, temperature: 0, stream: true });
    out.chat_streamed = "";
    for await (const chunk of cs)
        out.chat_streamed += (chunk.choices[0] && chunk.choices[0].delta.content) || "";
    out.models = (await client.models.list()).data.map((x) => x.id);
    try {
        await new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: "wrong", maxRetries: 0 })
            .completions.create(ask);
        out.bad_key = "accepted";
    } catch (e) {
        out.bad_key = e.status;
    }
    console.log(JSON.stringify(out));
})().catch((e) => { console.error(String(e)); process.exit(1); });
JS
OPENAI_PKG="$NPMDIR/node_modules/openai" timeout 120 node "$TMP/client.js" "$URL" >"$TMP/out.json" 2>"$TMP/client.err" ||
    fail "the openai client failed: $(tail -3 "$TMP/client.err")"
echo "openai $(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$NPMDIR/node_modules/openai/package.json"): $(head -c 300 "$TMP/out.json")"
python3 - "$TMP/out.json" <<'PY' || fail "the openai client's answers"
import json, sys
d = json.load(open(sys.argv[1]))
checks = [
    (len(d["text"]) > 0 and 0 < d["usage"] <= 24, "a completion"),
    (d["streamed"] == d["text"], "the streamed completion equals the whole one"),
    (d["chat_role"] == "assistant" and isinstance(d["chat"], str), "a chat answer"),
    (d["chat_streamed"] == d["chat"], "the streamed chat equals the whole one"),
    (d["models"] == ["default.gguf"], "the model list"),
    (d["bad_key"] == 401, "a wrong key refused with 401"),
]
bad = [what for ok, what in checks if not ok]
sys.exit("failed: " + ", ".join(bad) if bad else 0)
PY
kill -TERM "$SPID"
wait "$SPID" || fail "serve exited $? after SIGTERM"
SPID=
[ "$fails" -eq 0 ] || { tail -20 "$TMP/server.log"; exit 1; }
echo "PASS: openai client"
