#!/bin/sh
# eval_local.sh - measures the converted models with the engine itself (CPU).
#
#   train/eval_local.sh [quantize] [ppl] [samples] [sweep] [pack]
#                                   (default: quantize ppl samples)
#
# quantize: when TYPE is not f16, `codemoe quantize` train_out/gguf/<name>-f16.gguf
#          to <name>-$TYPE.gguf for every model the ppl stage measures,
#          unless that file is newer than its f16; results of a remade file
#          are deleted from train_out/eval/ppl/.
# ppl:     `codemoe perplexity` on the corpus valid split, -c 512, the first
#          $MAX_TOKENS tokens (default 32768) of each language, for each
#          expert on its own language and for baseline, merged_avg and
#          merged_ties on every language ($EXTRA adds more models: "base"...).
#          One JSON per run in train_out/eval/ppl/ (runs already there are
#          skipped, so the script resumes; several instances can share the
#          work, e.g. two with THREADS=1), then train_out/eval/ppl-$TYPE.md.
# samples: `codemoe run --temp 0.2 -n 64 --seed 1` on one prompt per
#          language, baseline and the language's expert, into
#          train_out/eval/samples-$TYPE.md.
# sweep:   `codemoe pack` of the seven f16 experts with the baseline as
#          fallback (train_out/pack/pack-f16.gguf; delete it after
#          re-converting), then `codemoe sweep` of that pack over $SCHEMES
#          (default q8_0,q6_k,q5_k_m,q5_k_s,q5_1,q5_0,q4_k_m,q4_k_s,q4_1,
#          q4_0), -c 512, $SWEEP_TOKENS tokens per language (default
#          $MAX_TOKENS): each language measured on its own expert, the pack
#          quantized in memory as a whole (shared tensors once).  Into
#          train_out/eval/sweep-$SWEEP_TOKENS.csv (resumes) and .md, with
#          each scheme's pack size against the $LIMIT bytes (default
#          40000000) the shipped pack must fit.
# pack:    measures a quantized pack as shipped: $PACK (default: `codemoe
#          pack` of the seven experts and the baseline at $TYPE, the quantize
#          stage's files, into train_out/pack/pack-$TYPE.gguf).  `codemoe
#          perplexity` on a pack scores its default member (the fallback) and
#          has no option to pick an expert, so each member is also copied
#          byte for byte out of the pack (its own tensors and the shared
#          ones, names unprefixed) into train_out/pack/<pack>.<member>.gguf
#          and the language's expert scored there on its language (what
#          routing picks); the pack itself (its fallback) is scored on every
#          language too.  Same -c and
#          $MAX_TOKENS as ppl; JSONs in train_out/eval/pack/, table in
#          train_out/eval/pack-<pack>.md.
# Models are read from train_out/gguf/<name>-$TYPE.gguf (TYPE default f16).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CODEMOE=${CODEMOE:-$ROOT/codemoe}
CORPUS=${CORPUS:-$ROOT/../shared/corpus}
G=${GGUF_DIR:-$ROOT/train_out/gguf}
E=${EVAL_DIR:-$ROOT/train_out/eval}
P=${PACK_DIR:-$ROOT/train_out/pack}
TYPE=${TYPE:-f16}
MAX_TOKENS=${MAX_TOKENS:-32768}
SCHEMES=${SCHEMES:-q8_0,q6_k,q5_k_m,q5_k_s,q5_1,q5_0,q4_k_m,q4_k_s,q4_1,q4_0}
SWEEP_TOKENS=${SWEEP_TOKENS:-$MAX_TOKENS}
LIMIT=${LIMIT:-40000000}
LANGS="c cpp go java javascript python rust"
MODELS="$LANGS baseline merged_avg merged_ties ${EXTRA:-}"
STAGES=${*:-quantize ppl samples}
mkdir -p "$E/ppl"

score() { # out.json model.gguf lang
    [ -s "$1" ] && return 0
    [ -e "$1.tmp" ] && return 0 # another instance is on it (delete stale .tmp files)
    echo "perplexity $(basename "$2") $3" >&2
    "$CODEMOE" perplexity -m "$2" --corpus "$CORPUS" --lang "$3" -c 512 \
        --max-tokens "$MAX_TOKENS" ${THREADS:+-t "$THREADS"} --json >"$1.tmp" 2>/dev/null
    mv "$1.tmp" "$1"
}
ppl() { score "$E/ppl/$1-$TYPE.$2.json" "$G/$1-$TYPE.gguf" "$2"; } # model lang

for stage in $STAGES; do
    case $stage in
    quantize)
        [ "$TYPE" = f16 ] && continue
        for m in $MODELS; do
            src="$G/$m-f16.gguf" dst="$G/$m-$TYPE.gguf"
            [ -s "$dst" ] && [ -n "$(find "$dst" -newer "$src")" ] && continue
            echo "quantize $m $TYPE" >&2
            "$CODEMOE" quantize "$src" "$dst" "$TYPE" ${THREADS:+-t "$THREADS"} --quiet
            rm -f "$E/ppl/$m-$TYPE".*.json
        done
        ;;
    ppl)
        for l in $LANGS; do ppl "$l" "$l"; done
        for m in baseline merged_avg merged_ties ${EXTRA:-}; do
            for l in $LANGS; do ppl "$m" "$l"; done
        done
        python3 - "$E" "$TYPE" <<'EOF'
import glob, json, os, sys
e, typ = sys.argv[1], sys.argv[2]
langs = "c cpp go java javascript python rust".split()
r = {}
for p in glob.glob(os.path.join(e, "ppl", "*-%s.*.json" % typ)):
    name, lang = os.path.basename(p)[:-5].split("-%s." % typ)
    with open(p) as f:
        j = json.load(f)
    r[(name, lang)] = (j["ppl"], j["ppl_err"])
others = sorted({m for m, _ in r} - set(langs) - {"baseline", "merged_avg", "merged_ties", "base"})
rows = ["expert (own language)"] + [m for m in ["baseline", "merged_avg", "merged_ties", "base"] + others
                                     if any((m, l) in r for l in langs)]
out = ["| model | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
for m in rows:
    cells = []
    for l in langs:
        k = (l, l) if m.startswith("expert") else (m, l)
        cells.append("%.3f" % r[k][0] if k in r else "")
    out.append("| %s | %s |" % (m, " | ".join(cells)))
for m in ["expert (own language)", "merged_avg", "merged_ties"]:
    cells = []
    for l in langs:
        k = (l, l) if m.startswith("expert") else (m, l)
        cells.append("%+.1f %%" % (100 * (r[k][0] / r[("baseline", l)][0] - 1))
                     if k in r and ("baseline", l) in r else "")
    out.append("| %s vs baseline | %s |" % (m.split(" ")[0], " | ".join(cells)))
txt = "\n".join(out) + "\n"
with open(os.path.join(e, "ppl-%s.md" % typ), "w") as f:
    f.write(txt)
print(txt)
EOF
        ;;
    samples)
        S="$E/samples-$TYPE.md"
        : >"$S"
        for l in $LANGS; do
            case $l in
            c) p='#include <stdio.h>
#include <string.h>

/* Return the number of times c occurs in s. */
int count_char(const char *s, char c)
{' ;;
            cpp) p='#include <vector>
#include <string>

namespace util {

// Split s at every occurrence of sep.
std::vector<std::string> split(const std::string &s, char sep)
{' ;;
            go) p='package strutil

import "strings"

// Reverse returns s with its runes in reverse order.
func Reverse(s string) string {' ;;
            java) p='package org.example.util;

import java.util.ArrayList;
import java.util.List;

public class Lists {
    /** Returns the elements of list that are greater than limit. */
    public static List<Integer> above(List<Integer> list, int limit) {' ;;
            javascript) p="'use strict';

/**
 * Debounce: call fn at most once every wait milliseconds.
 */
function debounce(fn, wait) {" ;;
            python) p='import os


def list_python_files(root):
    """Return the paths of all .py files under root."""' ;;
            rust) p='use std::collections::HashMap;

/// Count how many times each word occurs in text.
pub fn word_counts(text: &str) -> HashMap<String, usize> {' ;;
            esac
            for m in baseline "$l"; do
                printf '### %s, model %s\n\n```%s\n%s' "$l" "$m" "$l" "$p" >>"$S"
                "$CODEMOE" run -m "$G/$m-$TYPE.gguf" -p "$p" --temp 0.2 -n 64 --seed 1 2>/dev/null >>"$S"
                printf '\n```\n\n' >>"$S"
            done
        done
        echo "wrote $S" >&2
        ;;
    sweep)
        mkdir -p "$P"
        pk="$P/pack-f16.gguf"
        if [ ! -s "$pk" ]; then
            set --
            for l in $LANGS; do set -- "$@" --expert "$l=$G/$l-f16.gguf"; done
            "$CODEMOE" pack -o "$pk" "$@" --fallback "$G/baseline-f16.gguf"
        fi
        csv="$E/sweep-$SWEEP_TOKENS.csv"
        "$CODEMOE" sweep -m "$pk" --out "$csv" --schemes "$SCHEMES" --corpus "$CORPUS" \
            --langs "$(echo "$LANGS" | tr ' ' ,)" -c 512 --max-tokens "$SWEEP_TOKENS" \
            ${THREADS:+-t "$THREADS"}
        python3 - "$csv" "$pk" "$LIMIT" <<'EOF'
import csv, os, sys
path, pack, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
langs = "c cpp go java javascript python rust".split()
rows = list(csv.DictReader(open(path, newline="")))
by = {}
for r in rows:
    by.setdefault(r["scheme"], {})[r["language"]] = r
out = ["| scheme | pack bytes | fits %d | %s | mean PPL increase | mean KLD |" % (limit, " | ".join(langs)),
       "|---|---:|---|" + "---:|" * (len(langs) + 2)]
any_row = next(iter(by.values()))
out.append("| f16 (unquantized) | %d | %s | %s | | |" % (
    os.path.getsize(pack), "no" if os.path.getsize(pack) > limit else "yes",
    " | ".join("%.3f" % float(any_row[l]["base_ppl"]) if l in any_row else "" for l in langs)))
for sch, d in sorted(by.items(), key=lambda kv: -int(next(iter(kv[1].values()))["model_bytes"])):
    b = int(next(iter(d.values()))["model_bytes"])
    full = all(l in d for l in langs)
    inc = sum(float(d[l]["ppl_increase_pct"]) for l in langs) / 7 if full else float("nan")
    kld = sum(float(d[l]["kld"]) for l in langs) / 7 if full else float("nan")
    out.append("| %s | %d | %s | %s | %+.2f %% | %.4f |" % (
        sch, b, "yes" if b <= limit else "no",
        " | ".join("%.3f" % float(d[l]["ppl"]) if l in d else "" for l in langs), inc, kld))
txt = "\n".join(out) + "\n"
with open(path[:-4] + ".md", "w") as f:
    f.write(txt)
print(txt)
EOF
        ;;
    pack)
        mkdir -p "$P" "$E/pack"
        pk=${PACK:-$P/pack-$TYPE.gguf}
        if [ -z "${PACK:-}" ]; then
            set --
            for l in $LANGS; do set -- "$@" --expert "$l=$G/$l-$TYPE.gguf"; done
            "$CODEMOE" pack -o "$pk" "$@" --fallback "$G/baseline-$TYPE.gguf"
        fi
        n=$(basename "$pk" .gguf)
        # the members, byte for byte (names unprefixed, pack keys dropped)
        python3 - "$pk" "$P/$n" <<'EOF'
import struct, sys
src, stem = sys.argv[1], sys.argv[2]
buf = open(src, "rb").read()
pos = 0
def take(fmt):
    global pos
    v = struct.unpack_from("<" + fmt, buf, pos)
    pos += struct.calcsize("<" + fmt)
    return v[0] if len(v) == 1 else v
def string():
    global pos
    n = take("Q")
    pos += n
    return buf[pos - n:pos].decode()
SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def skip_value(t):
    global pos
    if t == 8:
        string()
    elif t == 9:
        at, n = take("I"), take("Q")
        for _ in range(n):
            skip_value(at)
    else:
        pos += SIZE[t]
assert buf[:4] == b"GGUF"
pos = 4
version, n_t, n_kv = take("I"), take("Q"), take("Q")
kvs, align, members = [], 32, []
for _ in range(n_kv):
    start = pos
    key = string()
    t = take("I")
    vstart = pos
    skip_value(t)
    if key == "general.alignment":
        align = struct.unpack_from("<I", buf, vstart)[0]
    if key == "codemoe.pack.experts":
        p = pos
        pos = vstart + 4 + 8
        members = [string() for _ in range(struct.unpack_from("<Q", buf, vstart + 4)[0])]
        pos = p
    if key == "codemoe.pack.fallback":
        members.append("fallback")
    if not key.startswith("codemoe.pack."):
        kvs.append(buf[start:pos])
tensors = []
for _ in range(n_t):
    name = string()
    nd = take("I")
    ne = struct.unpack_from("<%dQ" % nd, buf, pos)
    pos += 8 * nd
    typ, off = take("I"), take("Q")
    tensors.append((name, nd, ne, typ, off))
data = (pos + align - 1) // align * align
ends = sorted(t[4] for t in tensors) + [len(buf) - data]
end_of = {o: ends[i + 1] for i, o in enumerate(ends[:-1])}
def pstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b
for m in members:
    sel = []
    for name, nd, ne, typ, off in tensors:
        owner, bare = name.split("/", 1)
        if owner in (m, "shared"):
            sel.append((bare, nd, ne, typ, off, end_of[off] - off))
    head = [b"GGUF", struct.pack("<IQQ", version, len(sel), len(kvs))] + kvs
    o = 0
    for bare, nd, ne, typ, off, n in sel:
        head += [pstr(bare), struct.pack("<I", nd), struct.pack("<%dQ" % nd, *ne), struct.pack("<IQ", typ, o)]
        o += n
    h = b"".join(head)
    with open("%s.%s.gguf" % (stem, m), "wb") as f:
        f.write(h + b"\0" * ((-len(h)) % align))
        for bare, nd, ne, typ, off, n in sel:
            f.write(buf[data + off:data + off + n])
print("members of %s: %s" % (src, " ".join(members)), file=sys.stderr)
EOF
        for l in $LANGS; do
            score "$E/pack/$n.routed.$l.json" "$P/$n.$l.gguf" "$l"
            score "$E/pack/$n.as-is.$l.json" "$pk" "$l"
        done
        python3 - "$E/pack" "$n" "$pk" <<'EOF'
import json, os, sys
d, n, pk = sys.argv[1:4]
langs = "c cpp go java javascript python rust".split()
def get(kind, l):
    p = os.path.join(d, "%s.%s.%s.json" % (n, kind, l))
    return json.load(open(p))["ppl"] if os.path.exists(p) else None
out = ["%s (%d bytes)\n" % (pk, os.path.getsize(pk)),
       "| model | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
rows = [("routed: the language's expert", "routed"), ("pack as is: its fallback", "as-is")]
for label, kind in rows:
    out.append("| %s | %s |" % (label, " | ".join("%.3f" % get(kind, l) if get(kind, l) else "" for l in langs)))
out.append("| routed vs fallback | %s |" % " | ".join(
    "%+.1f %%" % (100 * (get("routed", l) / get("as-is", l) - 1)) if get("routed", l) and get("as-is", l) else ""
    for l in langs))
txt = "\n".join(out) + "\n"
with open(os.path.join(os.path.dirname(d), "pack-%s.md" % n), "w") as f:
    f.write(txt)
print(txt)
EOF
        ;;
    *) echo "unknown stage $stage (quantize, ppl, samples, sweep, pack)" >&2; exit 2 ;;
    esac
done
