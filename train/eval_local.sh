#!/bin/sh
# eval_local.sh - measures the converted models with the engine itself (CPU).
#
#   train/eval_local.sh [ppl] [samples]      (default: both)
#
# ppl:     `codemoe perplexity` on the corpus valid split, -c 512, the first
#          $MAX_TOKENS tokens (default 32768) of each language, for each
#          expert on its own language and for baseline, merged_avg and
#          merged_ties on every language ($EXTRA adds more models: "base"...).
#          One JSON per run in train_out/eval/ppl/ (runs already there are
#          skipped, so the script resumes; several instances can share the
#          work, e.g. two with THREADS=1), then train_out/eval/ppl-$TYPE.md.
# samples: `codemoe run --temp 0.2 -n 64 --seed 1` on one prompt per
#          language, baseline and the language's expert, into
#          train_out/eval/samples.md.
# Models are read from train_out/gguf/<name>-$TYPE.gguf (TYPE default f16).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CODEMOE=${CODEMOE:-$ROOT/codemoe}
CORPUS=${CORPUS:-$ROOT/../shared/corpus}
G=${GGUF_DIR:-$ROOT/train_out/gguf}
E=${EVAL_DIR:-$ROOT/train_out/eval}
TYPE=${TYPE:-f16}
MAX_TOKENS=${MAX_TOKENS:-32768}
LANGS="c cpp go java javascript python rust"
STAGES=${*:-ppl samples}
mkdir -p "$E/ppl"

ppl() { # model lang
    out="$E/ppl/$1-$TYPE.$2.json"
    [ -s "$out" ] && return 0
    [ -e "$out.tmp" ] && return 0 # another instance is on it (delete stale .tmp files)
    echo "perplexity $1 $2" >&2
    "$CODEMOE" perplexity -m "$G/$1-$TYPE.gguf" --corpus "$CORPUS" --lang "$2" -c 512 \
        --max-tokens "$MAX_TOKENS" ${THREADS:+-t "$THREADS"} --json >"$out.tmp" 2>/dev/null
    mv "$out.tmp" "$out"
}

for stage in $STAGES; do
    case $stage in
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
    *) echo "unknown stage $stage (ppl, samples)" >&2; exit 2 ;;
    esac
done
