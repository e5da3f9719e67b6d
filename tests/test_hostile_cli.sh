#!/bin/sh
# test_hostile_cli.sh - the command against an attacker and a careful new user
# (issue 15): outputs written past symlinks planted at temporary names, FIFOs
# given as inputs, `run -n 0`, a checkpoint without lm_head.weight, a model
# whose hyper-parameters the loader rejects, a corpus split other than train
# and valid, and README's first command as root and as a user.
set -u
CODEMOE=${CODEMOE:-./codemoe}
SHARED=${CM_SHARED:-../shared}
SRC=$(cd "$(dirname "$0")/.." && pwd)
F32="$SHARED/fixtures/gguf/llama/llama-f32.gguf"
HF="$SHARED/fixtures/hf/llama"
TMP=$(mktemp -d) || exit 99
trap 'rm -rf "$TMP"' EXIT
trap 'exit 1' INT TERM
umask 022
fails=0

fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# Every command runs under a time limit: a FIFO must not stall `make check`.
LIMIT=120

# expect CODE DESCRIPTION -- COMMAND...: checks the exit status (124: the
# limit ran out); an error must be one stderr line starting "codemoe: ",
# besides perplexity's and sweep's progress lines.
expect() {
    code=$1; what=$2; shift 3
    timeout "$LIMIT" "$@" >"$TMP/out" 2>"$TMP/err.all"
    got=$?
    grep -Ev '^(perplexity|sweep): ' "$TMP/err.all" >"$TMP/err"
    if [ "$got" != "$code" ]; then
        fail "$what: exit $got, expected $code; stderr: $(head -c 300 "$TMP/err")"
    elif [ "$code" != 0 ] && { [ "$(wc -l <"$TMP/err")" != 1 ] ||
                               ! grep -q '^codemoe: ' "$TMP/err"; }; then
        fail "$what: error is not one 'codemoe:' line: $(head -c 300 "$TMP/err")"
    fi
}

# err_has TEXT DESCRIPTION: the last command's error mentions TEXT.
err_has() { grep -qF -- "$1" "$TMP/err" || fail "$2: the error does not say '$1': $(cat "$TMP/err")"; }

# ---- README's first command: as root without sudo, as a user with it ----
# Stubs on PATH stand in for id, sudo and apt-get; apt-get install fails on
# purpose, so the rest of the command (bootstrap, build) never starts.
readme_cmd=$(awk '/^```sh$/ { getline; print; exit }' "$SRC/README.md")
mkdir "$TMP/stub"
cat >"$TMP/stub/apt-get" <<'EOF'
#!/bin/sh
echo "apt-get $*" >>"$STUB_LOG"
[ "$1" != install ]
EOF
cat >"$TMP/stub/sudo" <<'EOF'
#!/bin/sh
echo "sudo $*" >>"$STUB_LOG"
exec "$@"
EOF
for uid in 0 1000; do
    printf '#!/bin/sh\necho %s\n' "$uid" >"$TMP/stub/id"
    chmod +x "$TMP/stub/id" "$TMP/stub/apt-get" "$TMP/stub/sudo"
    log="$TMP/stub/log.$uid"
    : >"$log"
    (cd "$TMP/stub" && PATH="$TMP/stub:$PATH" STUB_LOG="$log" sh -c "$readme_cmd") >/dev/null 2>&1
    grep -q '^apt-get install -y .*liblzma-dev' "$log" ||
        fail "README's first command as uid $uid never reaches apt-get install: $(cat "$log")"
    if [ "$uid" = 0 ]; then
        ! grep -q '^sudo' "$log" || fail "README's first command runs sudo as root"
    else
        grep -q '^sudo apt-get install' "$log" || fail "README's first command skips sudo as a user"
    fi
done

if [ ! -f "$F32" ]; then
    echo "SKIP: fixtures not found at $SHARED (set CM_SHARED)"
    [ "$fails" -eq 0 ] || exit 1
    exit 77
fi

# ---- outputs: a fresh temporary beside the target, never a planted link ----
VICTIM="$TMP/victim"
echo "precious" >"$VICTIM"
cp "$VICTIM" "$TMP/victim.orig"
export VICTIM
mkdir "$TMP/o"

# planted OUT... -- COMMAND...: COMMAND with symlinks to $VICTIM at the names
# the old code wrote through: OUT.tmp and OUT.tmp.<pid> (exec keeps the pid).
planted="$TMP/planted"
cat >"$planted" <<'EOF'
#!/bin/sh
while [ "$1" != -- ]; do
    ln -s "$VICTIM" "$1.tmp"
    ln -s "$VICTIM" "$1.tmp.$$"
    shift
done
shift
exec "$@"
EOF
chmod +x "$planted"

# outputs_ok DESCRIPTION FILE...: the victim is intact, each FILE a regular
# file of mode 644 (umask 022), and no temporary file is left in $TMP/o.
outputs_ok() {
    what=$1; shift
    cmp -s "$VICTIM" "$TMP/victim.orig" || fail "$what: wrote through a planted symlink"
    for f in "$@"; do
        if [ -L "$f" ] || [ ! -f "$f" ]; then
            fail "$what: $f is not a regular file"
        elif [ "$(stat -c %a "$f")" != 644 ]; then
            fail "$what: $f has mode $(stat -c %a "$f"), not 644"
        fi
    done
    left=$(find "$TMP/o" -name '*.tmp*' ! -type l)
    [ -z "$left" ] || fail "$what: temporary files left: $left"
    find "$TMP/o" -name '*.tmp*' -type l -exec rm -f {} +
    cp "$TMP/victim.orig" "$VICTIM"
}

OUT="$TMP/o/logits.bin"
expect 0 "logits past planted links" -- "$planted" "$OUT" -- "$CODEMOE" logits -m "$F32" --ids 1,2,3 -o "$OUT"
outputs_ok "logits -o" "$OUT"
[ "$(wc -c <"$OUT")" = 12000 ] || fail "logits -o wrote $(wc -c <"$OUT") bytes, not 3 x 1000 floats"

awk 'BEGIN { for (i = 0; i < 300; i++) printf "int f%d(int x) { return x * %d + %d; }\n", i, i, i % 7 }' \
    >"$TMP/sample.c"
OUT="$TMP/o/base.lg"
expect 0 "perplexity --save-logits past planted links" -- "$planted" "$OUT" -- \
    "$CODEMOE" perplexity -m "$F32" -f "$TMP/sample.c" -c 64 --chunks 2 --save-logits "$OUT"
outputs_ok "perplexity --save-logits" "$OUT"

# a failed write (the target is a folder: the rename fails) leaves nothing
mkdir "$TMP/o/adir"
expect 1 "logits -o a folder" -- "$CODEMOE" logits -m "$F32" --ids 1,2 -o "$TMP/o/adir"
expect 1 "perplexity --save-logits a folder" -- "$CODEMOE" perplexity -m "$F32" \
    -f "$TMP/sample.c" -c 64 --chunks 1 --save-logits "$TMP/o/adir"
outputs_ok "failed writes"
rmdir "$TMP/o/adir"

# gguf.c's writer (quantize, convert, pack) goes through cm_atomic_open too
OUT="$TMP/o/q8.gguf"
expect 0 "quantize past planted links" -- "$planted" "$OUT" -- "$CODEMOE" quantize "$F32" "$OUT" q8_0 --quiet
outputs_ok "quantize" "$OUT"
find "$TMP/o" -name '*.tmp*' -type l -exec rm -f {} +
rm -f "$TMP/o"/*

# ---- FIFOs and other non-regular files are refused, without blocking ----
mkfifo "$TMP/fifo"
expect 1 "run -f FIFO" -- "$CODEMOE" run -m "$F32" -f "$TMP/fifo" -n 1
err_has "not a regular file" "run -f FIFO"
expect 1 "run -f folder" -- "$CODEMOE" run -m "$F32" -f "$TMP" -n 1
expect 1 "tokenize -f FIFO" -- "$CODEMOE" tokenize -m "$F32" -f "$TMP/fifo"
expect 1 "perplexity -f FIFO" -- "$CODEMOE" perplexity -m "$F32" -f "$TMP/fifo"
expect 1 "perplexity --kld-base FIFO" -- "$CODEMOE" perplexity -m "$F32" -f "$TMP/sample.c" \
    -c 64 --kld-base "$TMP/fifo"
expect 1 "run --infill --prefix-file FIFO" -- "$CODEMOE" run -m "$F32" --infill \
    --prefix-file "$TMP/fifo" --suffix x -n 1
err_has "not a regular file" "run --prefix-file FIFO"
# standard input as the prompt (-f -, or piped): a folder or junk is refused
# or run, never a crash or a hang; a terminal or /dev/null is not read
expect 1 "run -f - from a folder" -- "$CODEMOE" run -m "$F32" -f - -n 1 <"$TMP"
expect 2 "run with a folder on stdin and no prompt" -- "$CODEMOE" run -m "$F32" -n 1 <"$TMP"
head -c 3000 /dev/urandom >"$TMP/junk.bin"
timeout "$LIMIT" "$CODEMOE" run -m "$F32" -n 2 -c 4096 <"$TMP/junk.bin" >/dev/null 2>"$TMP/err"
rc=$?
[ $rc -le 1 ] || fail "run on random bytes from stdin exited $rc: $(cat "$TMP/err")"
timeout "$LIMIT" "$CODEMOE" tokenize -m "$F32" -f - <"$TMP/junk.bin" >/dev/null 2>"$TMP/err" ||
    fail "tokenize -f - on random bytes: $(cat "$TMP/err")"
# hostile flags: glued, repeated, cut short, or values shaped like flags
expect 2 "a value-taking flag glued to nothing" -- "$CODEMOE" run -m "$F32" -p x --n-predict=
expect 2 "-c above the limit" -- "$CODEMOE" run -m "$F32" -p x -c 99999999999
expect 2 "-n below -1" -- "$CODEMOE" run -m "$F32" -p x -n -99
expect 2 "--=x" -- "$CODEMOE" run -m "$F32" -p x --=x
expect 2 "a long unknown flag" -- "$CODEMOE" run -m "$F32" -p x "--$(printf '%0300d' 0)"
expect 0 "-e with an unfinished escape in --stop" -- "$CODEMOE" run -m "$F32" -e -p x --stop '\x0' -n 1
expect 0 "-e with an unfinished escape in -p" -- "$CODEMOE" run -m "$F32" -e -p 'x\' -n 1
mkdir -p "$TMP/fcorpus/c"
mkfifo "$TMP/fcorpus/c/valid.jsonl.xz"
expect 1 "perplexity on a FIFO corpus file" -- "$CODEMOE" perplexity -m "$F32" \
    --corpus "$TMP/fcorpus" --lang c -c 64
expect 1 "sweep --out FIFO" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/fifo" --schemes q8_0 \
    --langs c --corpus "$TMP/fcorpus"

# ---- run -n 0: nothing generated, nothing printed, success ----
expect 0 "run -n 0" -- "$CODEMOE" run -m "$F32" -p 'int main(void) {' -n 0 --temp 0
[ ! -s "$TMP/out" ] || fail "run -n 0 printed '$(head -c 100 "$TMP/out")'"

# ---- a corpus split of any name ----
if command -v xz >/dev/null 2>&1; then
    mkdir -p "$TMP/corpus/c"
    awk 'BEGIN { for (i = 0; i < 200; i++)
                     printf "{\"content\": \"int g%d(int a) {\\n\\treturn a + %d;\\n}\\n\", \"n\": %d}\n", i, i, i }' |
        xz -c >"$TMP/corpus/c/test.jsonl.xz"
    expect 0 "perplexity --split test" -- "$CODEMOE" perplexity -m "$F32" --corpus "$TMP/corpus" \
        --lang c --split test -c 64 --chunks 2
    grep -q '^Final estimate: PPL = ' "$TMP/out" || fail "--split test: no final estimate"
    expect 2 "a split the corpus lacks" -- "$CODEMOE" perplexity -m "$F32" --corpus "$TMP/corpus" \
        --lang c --split valid
    err_has "(it has: test)" "a split the corpus lacks"
    for bad in "" .. ../c/test c/test; do
        expect 2 "--split '$bad'" -- "$CODEMOE" perplexity -m "$F32" --corpus "$TMP/corpus" \
            --lang c --split "$bad"
    done
    OUT="$TMP/o/sweep.csv"
    expect 0 "sweep --split test past planted links" -- "$planted" "$OUT" "$TMP/o/s.json" "$TMP/o/s.svg" -- \
        "$CODEMOE" sweep -m "$F32" --out "$OUT" --json "$TMP/o/s.json" --plot "$TMP/o/s.svg" \
        --schemes q8_0 --langs c --corpus "$TMP/corpus" --split test --max-tokens 256 -c 64
    outputs_ok "sweep --out --json --plot" "$OUT" "$TMP/o/s.json" "$TMP/o/s.svg"
    [ "$(grep -c '^q8_0,c,' "$OUT")" = 1 ] || fail "sweep --split test: no q8_0,c row in $(cat "$OUT")"
    expect 2 "sweep --split the corpus lacks" -- "$CODEMOE" sweep -m "$F32" --out "$TMP/o/x.csv" \
        --schemes q8_0 --langs c --corpus "$TMP/corpus" --split train
    rm -f "$TMP/o"/*
else
    echo "SKIP: --split checks (no xz)"
fi

# ---- quantize validates its input as the loader does ----
# head_count 6 with 64-wide embeddings: the loader rejects the Q projection
if command -v python3 >/dev/null 2>&1; then
    python3 - "$F32" "$TMP/bad-heads.gguf" <<'EOF'
import struct, sys
b = bytearray(open(sys.argv[1], 'rb').read())
key = b'llama.attention.head_count'
pat = struct.pack('<Q', len(key)) + key + struct.pack('<I', 4)  # a u32 value follows
i = b.find(pat)
assert i > 0 and b.find(pat, i + 1) < 0, "no single u32 " + key.decode()
struct.pack_into('<I', b, i + len(pat), 6)
open(sys.argv[2], 'wb').write(b)
EOF
    expect 1 "info on bad hyper-parameters" -- "$CODEMOE" info "$TMP/bad-heads.gguf"
    expect 1 "quantize bad hyper-parameters" -- "$CODEMOE" quantize "$TMP/bad-heads.gguf" \
        "$TMP/o/bad-q8.gguf" q8_0
    err_has "bad-heads.gguf" "quantize bad hyper-parameters"
    [ -z "$(ls -A "$TMP/o")" ] || fail "quantize of a rejected model left: $(ls -A "$TMP/o")"
    expect 0 "quantize a good model" -- "$CODEMOE" quantize "$F32" "$TMP/o/q8.gguf" q8_0 --quiet
    expect 0 "info on its output" -- "$CODEMOE" info "$TMP/o/q8.gguf"
    rm -f "$TMP/o"/*
else
    echo "SKIP: quantize validation (no python3)"
fi

# ---- convert: a missing lm_head.weight is an error unless tied ----
if [ -f "$HF/model.safetensors" ] && command -v python3 >/dev/null 2>&1; then
    mkdir "$TMP/hf"
    for f in "$HF"/*.json "$HF"/tokenizer*; do
        [ -f "$f" ] && cp "$f" "$TMP/hf/"
    done
    # the same checkpoint without lm_head.weight: the header rewritten, the
    # other tensors' bytes moved up
    python3 - "$HF/model.safetensors" "$TMP/hf/model.safetensors" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack_from('<Q', b, 0)[0]
head, data = json.loads(b[8:8 + n]), b[8 + n:]
assert 'lm_head.weight' in head
del head['lm_head.weight']
out, pos = bytearray(), 0
for name, t in head.items():
    if name == '__metadata__':
        continue
    a, e = t['data_offsets']
    out += data[a:e]
    t['data_offsets'] = [pos, pos + e - a]
    pos += e - a
h = json.dumps(head).encode()
h += b' ' * (-len(h) % 8)
open(sys.argv[2], 'wb').write(struct.pack('<Q', len(h)) + h + out)
EOF
    grep -q '"tie_word_embeddings": false' "$TMP/hf/config.json" || fail "the llama fixture is not untied"
    expect 1 "convert without lm_head, untied" -- "$CODEMOE" convert "$TMP/hf" -o "$TMP/o/c.gguf"
    err_has "lm_head.weight" "convert without lm_head"
    [ -z "$(ls -A "$TMP/o")" ] || fail "a refused convert left: $(ls -A "$TMP/o")"
    sed 's/"tie_word_embeddings": false/"tie_word_embeddings": true/' "$HF/config.json" >"$TMP/hf/config.json"
    expect 0 "convert without lm_head, tied" -- "$CODEMOE" convert "$TMP/hf" -o "$TMP/o/c.gguf"
    expect 0 "info on the tied model" -- "$CODEMOE" info "$TMP/o/c.gguf"
    grep -q '^output: *tied' "$TMP/out" || fail "the tied model's output is not tied: $(grep '^output' "$TMP/out")"
else
    echo "SKIP: convert checks (no $HF or no python3)"
fi

if [ "$fails" -ne 0 ]; then
    echo "FAIL: test_hostile_cli.sh: $fails check(s) failed"
    exit 1
fi
echo "PASS: test_hostile_cli.sh"
