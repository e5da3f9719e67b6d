#!/bin/sh
# contenders.sh - default model v2: the four contenders built and measured with codemoe.
#
#   train/contenders.sh DEV OUT      (DEV: what train.py wrote; OUT: a new folder)
#
# From base.safetensors, mlp_<name>.safetensors (baseline and the seven
# languages) and moe.safetensors:
#   dense   baseline: the base's MLPs trained on all languages
#   merged  merged_avg and merged_ties (train/assemble.py) of the seven experts
#   pack    `codemoe pack` of the seven experts, merged_avg as the fallback
#           (a member that cost no training tokens of its own)
#   moe     the token-level MoE (`codemoe upcycle` of the base, then trained)
# each converted to f16 and quantized to $QTYPE (default q5_k_m; q5_k_s
# for a contender over $LIMIT bytes, default 40000000), then
#   perplexity per language on the corpus valid split (-c 512, the first
#   $MAX_TOKENS tokens, default 32768; the pack scores the language's
#   expert, what its router picks for a file of that language), and
#   fill-in-the-middle exact match (train/fim_eval.py, $FIM_N files per
#   language, default 50), at f16 and $QTYPE,
# into OUT/ppl/*.json, OUT/fim/*.json and OUT/contenders.md, and the best
# contender that fits in $LIMIT bytes (lowest mean log-perplexity over the
# seven languages at $QTYPE) copied to OUT/best.gguf.
# Environment: CODEMOE (default ./codemoe), CORPUS (../shared/corpus), VOCAB
# (../shared/vocab/ggml-vocab-starcoder.gguf), PYTHON (python3), JOBS (nproc), CONFIG
# (train/model_config.json).
set -eu
DEV=$1
OUT=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CODEMOE=${CODEMOE:-$ROOT/codemoe}
CORPUS=${CORPUS:-$ROOT/../shared/corpus}
VOCAB=${VOCAB:-$ROOT/../shared/vocab/ggml-vocab-starcoder.gguf}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
QTYPE=${QTYPE:-q5_k_m}
LIMIT=${LIMIT:-40000000}
MAX_TOKENS=${MAX_TOKENS:-32768}
FIM_N=${FIM_N:-50}
LANGS="c cpp go java javascript python rust"
mkdir -p "$OUT/hf" "$OUT/gguf" "$OUT/ppl" "$OUT/fim"

$PYTHON "$ROOT/train/assemble.py" --dev "$DEV" --out "$OUT/hf" --vocab "$VOCAB" \
    --config "${CONFIG:-$ROOT/train/model_config.json}" > "$OUT/assemble.log"
for d in "$OUT"/hf/*/; do
    n=$(basename "$d")
    case $n in _*) continue ;; esac
    echo "$CODEMOE convert $d -o $OUT/gguf/$n-f16.gguf --type f16 && \
$CODEMOE quantize $OUT/gguf/$n-f16.gguf $OUT/gguf/$n-$QTYPE.gguf $QTYPE -t 2 --quiet"
done | xargs -P "$JOBS" -I{} sh -c '{} > /dev/null'
for t in f16 $QTYPE; do
    args=
    for l in $LANGS; do args="$args --expert $l=$OUT/gguf/$l-$t.gguf"; done
    # shellcheck disable=SC2086
    $CODEMOE pack -o "$OUT/gguf/pack-$t.gguf" $args --fallback "$OUT/gguf/merged_avg-$t.gguf" > /dev/null
done
CONTENDERS="baseline merged_avg merged_ties pack moe"
size() { stat -c %s "$1"; }
if [ "$(size "$OUT/gguf/moe-$QTYPE.gguf")" -gt "$LIMIT" ]; then
    $CODEMOE quantize "$OUT/gguf/moe-f16.gguf" "$OUT/gguf/moe-q5_k_s.gguf" q5_k_s --quiet
    echo "moe at $QTYPE: $(size "$OUT/gguf/moe-$QTYPE.gguf") bytes, over $LIMIT: q5_k_s instead" >> "$OUT/notes.txt"
    cp "$OUT/gguf/moe-q5_k_s.gguf" "$OUT/gguf/moe-$QTYPE.gguf"
fi

for c in $CONTENDERS; do
    for t in f16 $QTYPE; do
        for l in $LANGS; do
            j=$OUT/ppl/$c-$t-$l.json
            [ -s "$j" ] || echo "$CODEMOE perplexity -m $OUT/gguf/$c-$t.gguf --corpus $CORPUS --lang $l \
-c 512 --max-tokens $MAX_TOKENS -t 2 --json > $j.tmp 2>/dev/null && mv $j.tmp $j"
        done
    done
done | xargs -P "$(( (JOBS + 1) / 2 ))" -I{} sh -c '{}'

for c in $CONTENDERS; do
    for t in f16 $QTYPE; do
        [ -s "$OUT/fim/$c-$t.json" ] ||
            $PYTHON "$ROOT/train/fim_eval.py" --codemoe "$CODEMOE" -m "$OUT/gguf/$c-$t.gguf" \
                --corpus "$CORPUS" -n "$FIM_N" --jobs "$JOBS" --json "$OUT/fim/$c-$t.json" > /dev/null
    done
done

$PYTHON - "$OUT" "$QTYPE" "$LIMIT" "$CONTENDERS" <<'PY'
import json, math, os, shutil, sys
out, qtype, limit, cons = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
langs = "c cpp go java javascript python rust".split()
def ppl(c, t, l):
    with open(os.path.join(out, "ppl", "%s-%s-%s.json" % (c, t, l))) as f:
        return json.load(f)["ppl"]
def fim(c, t):
    with open(os.path.join(out, "fim", "%s-%s.json" % (c, t))) as f:
        return json.load(f)
rows, best = [], None
for t in ("f16", qtype):
    rows.append("\n### perplexity, corpus valid split, %s\n" % t)
    rows.append("| contender | bytes | " + " | ".join(langs) + " | geo. mean | FIM exact |")
    rows.append("|---|---:|" + "---:|" * (len(langs) + 2))
    for c in cons:
        path = os.path.join(out, "gguf", "%s-%s.gguf" % (c, t))
        v = [ppl(c, t, l) for l in langs]
        g = math.exp(sum(map(math.log, v)) / len(v))
        fm = fim(c, t)
        rows.append("| %s | %d | %s | %.3f | %d/%d |" % (c, os.path.getsize(path), " | ".join("%.3f" % x for x in v),
                                                       g, fm["all"][0], fm["all"][1]))
        if t == qtype and os.path.getsize(path) <= limit and (best is None or g < best[1]):
            best = (c, g)
rows.append("\nbest at %s within %d bytes: %s (geometric mean perplexity %.3f)" % (qtype, limit, best[0], best[1]))
with open(os.path.join(out, "contenders.md"), "w") as f:
    f.write("\n".join(rows) + "\n")
shutil.copyfile(os.path.join(out, "gguf", "%s-%s.gguf" % (best[0], qtype)), os.path.join(out, "best.gguf"))
with open(os.path.join(out, "best.txt"), "w") as f:
    f.write(best[0] + "\n")
print("\n".join(rows))
PY
