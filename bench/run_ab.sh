#!/bin/sh
# run_ab.sh OLD NEW [THREADS] - the same models, the same machine, one run:
# `codemoe bench` of two builds, interleaved (old, new, old, new) so a drift
# of the host hits both; prints a markdown table of pp512 and tg128 medians
# and the ratio new/old.  Models come from tools/gen_model (random weights in
# real shapes) into bench/models/, made once.
#   bench/run_ab.sh /tmp/before/codemoe ./codemoe 2
set -eu
OLD=$1 NEW=$2 T=${3:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
GEN=${GEN_MODEL:-$HERE/../tools/gen_model}
M=$HERE/models
mkdir -p "$M"
for spec in "smol135m q8_0" "smol135m q4_k_m" "moe8x q4_0"; do
    set -- $spec
    [ -f "$M/$1-$2.gguf" ] || "$GEN" -o "$M/$1-$2.gguf" --preset "$1" --type "$2" >/dev/null
done
med() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "| model | test | before t/s | after t/s | after / before |"
echo "| --- | --- | ---: | ---: | ---: |"
for f in "$M"/smol135m-q8_0.gguf "$M"/smol135m-q4_k_m.gguf "$M"/moe8x-q4_0.gguf; do
    : >/tmp/ab.$$
    for round in 1 2; do
        for which in old new; do
            bin=$OLD; [ $which = new ] && bin=$NEW
            out=$("$bin" bench -m "$f" -p 512 -n 128 -r 3 -t "$T" --bw 10 -o json 2>/dev/null)
            echo "$which pp $(printf '%s\n' "$out" | sed -n 's/.*"pp_median": \([0-9.]*\).*/\1/p')" >>/tmp/ab.$$
            echo "$which tg $(printf '%s\n' "$out" | sed -n 's/.*"tg_median": \([0-9.]*\).*/\1/p')" >>/tmp/ab.$$
        done
    done
    for k in pp tg; do
        o=$(awk -v k=$k '$1 == "old" && $2 == k { print $3 }' /tmp/ab.$$ | med)
        n=$(awk -v k=$k '$1 == "new" && $2 == k { print $3 }' /tmp/ab.$$ | med)
        awk -v m="$(basename "$f" .gguf)" -v k=$k -v o="$o" -v n="$n" \
            'BEGIN { printf "| %s | %s%s | %.2f | %.2f | %.3f |\n", m, k, k == "pp" ? 512 : 128, o, n, n / o }'
    done
done
rm -f /tmp/ab.$$
