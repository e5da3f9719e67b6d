#!/bin/sh
# run_pack_bench.sh - peak RSS and generation speed of a language-expert
# pack with 4 experts, routed (only the chosen expert resident) against all
# experts resident.  Writes bench/PACK.md.  Usage: bench/run_pack_bench.sh [-t N] [-r N]
set -eu
cd "$(dirname "$0")/.."
THREADS=1; REPS=3
while [ $# -gt 0 ]; do
    case $1 in -t) THREADS=$2; shift 2;; -r) REPS=$2; shift 2;; *) echo "usage: $0 [-t N] [-r N]"; exit 2;; esac
done
SHARED=${CM_SHARED:-../shared}
VOCAB=$SHARED/vocab/ggml-vocab-starcoder.gguf
DIR=bench/models/pack
mkdir -p "$DIR"
make -s codemoe tools/gen_model
dims="--n-embd 512 --n-layer 8 --n-head 8 --n-head-kv 4 --n-ff 4096 --type q8_0 --vocab $VOCAB"
seed=1
for l in c python java javascript; do
    [ -f "$DIR/$l.gguf" ] || tools/gen_model -o "$DIR/$l.gguf" $dims --ffn-seed $seed >/dev/null
    seed=$((seed + 1))
done
./codemoe pack -o "$DIR/pack4.gguf" --expert c=$DIR/c.gguf --expert python=$DIR/python.gguf \
    --expert java=$DIR/java.gguf --expert javascript=$DIR/javascript.gguf 2>/dev/null

# median of REPS runs: "tok/s rss"
measure() {
    i=0
    while [ $i -lt "$REPS" ]; do
        ./codemoe run -m "$DIR/pack4.gguf" --lang python -p "def parse(line):" -n 64 --temp 0 \
            -c 256 -t "$THREADS" "$@" 2>&1 >/dev/null |
            sed -n 's/.*generated [0-9]* tok, \([0-9.]*\) tok\/s.*peak RSS \([0-9.]*\) MiB.*/\1 \2/p'
        i=$((i + 1))
    done | sort -n | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'
}
routed=$(measure)
all=$(measure --all-experts)
info=$(./codemoe info "$DIR/pack4.gguf")
{
    echo "# Language-expert pack: routed vs all experts resident"
    echo
    echo "Measured $(date -u +%Y-%m-%d) on $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), commit $(git rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Pack: 4 random-weight experts (c, python, java, javascript) sharing embeddings, attention"
    echo "and norms, each with its own feed-forward weights; q8_0; n_embd 512, 8 layers, ffn 4096,"
    echo "StarCoder vocabulary. \`codemoe run --lang python -n 64 -c 256 -t $THREADS\`, median of $REPS runs."
    echo
    echo '```'
    echo "$info" | sed -n '/language-expert pack/,/all experts resident/p'
    echo '```'
    echo
    echo "| mode | generation tok/s | peak RSS MiB |"
    echo "|---|---|---|"
    echo "| routed (default) | $(echo "$routed" | cut -d' ' -f1) | $(echo "$routed" | cut -d' ' -f2) |"
    echo "| all experts resident (\`--all-experts\`) | $(echo "$all" | cut -d' ' -f1) | $(echo "$all" | cut -d' ' -f2) |"
    echo
    echo "Regenerate with \`bench/run_pack_bench.sh\`."
} >bench/PACK.md
cat bench/PACK.md
