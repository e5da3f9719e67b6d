#!/bin/sh
# run_all.sh - reproduces codemoe's own code models from the corpus, in one command.
#
#   train/run_all.sh                 data, gpu, contenders (needs an NVIDIA GPU for `gpu`)
#   train/run_all.sh data gpu ...    only the stages named
#
# Stages (see train/README.md):
#   data      build tools/pretokenize, tokenize ../shared/corpus with the StarCoder
#             vocabulary into carry/<lang>.<split>.u16.xz, check decode(encode(f)) == f
#             for every file                                            (CPU, ~2 min)
#   gpu       train.py smoke, base (5000 steps, all languages, half the rows in
#             fill-in-the-middle order), cont: baseline (1400 steps) and one expert per
#             language (200 steps each), MLP only; `codemoe upcycle` of the base to 8
#             experts, top 2, then train.py moe (1400 steps, experts and routers only),
#             into train_out/dev/                                   (one H100: ~10 min)
#   assemble  Hugging Face folders train_out/hf/<model>/ for base, baseline, the seven
#             experts, merged_avg and merged_ties                     (CPU, ~1 min)
#   convert   codemoe convert each folder to train_out/gguf/<model>-{f16,q8_0}.gguf
#   eval      train/eval_local.sh: codemoe perplexity table and sample completions
#             into train_out/eval/                               (CPU, long on 2 cores)
#   contenders  train/contenders.sh: dense, merged, pack and MoE at f16 and q5_k_m,
#             perplexity and FIM exact match, the best into train_out/contenders/best.gguf
#             (CPU; ~4 min on 16 cores)
#
# Environment: SHARED (default ../shared), PYTHON (default python3; the gpu stage needs
# torch with CUDA, numpy; transformers optional), RESUME=1 to continue an interrupted
# gpu stage from its checkpoints.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SHARED=${SHARED:-$ROOT/../shared}
PYTHON=${PYTHON:-python3}
VOCAB=$SHARED/vocab/ggml-vocab-starcoder.gguf
DATA=$ROOT/carry
DEV=$ROOT/train_out/dev
STAGES=${*:-data gpu contenders}
RESUME_FLAG=
[ "${RESUME:-0}" = 1 ] && RESUME_FLAG=--resume

for stage in $STAGES; do
    echo "== $stage" >&2
    case $stage in
    data)
        [ -x ./codemoe ] || make -j2
        if ! make tools/pretokenize 2>/dev/null; then
            # not (yet) a Makefile target: link it against the engine library by hand
            ${CC:-cc} -std=gnu11 -O2 -I. -Isrc tools/pretokenize.c libcodemoe.a \
                $(sed -n 's/^OPENBLAS_LIBS = //p' Makefile) $(sed -n 's/^LIBS = //p' Makefile) \
                -fopenmp -lm -o tools/pretokenize
        fi
        mkdir -p "$DATA"
        tools/pretokenize --vocab "$VOCAB" --corpus "$SHARED/corpus" --out "$DATA"
        ;;
    gpu)
        mkdir -p "$DEV"
        $PYTHON train/train.py smoke --data "$DATA" --out "$DEV/smoke"
        $PYTHON train/train.py base --data "$DATA" --out "$DEV" --steps 5000 $RESUME_FLAG
        # the same continuation budget for every contender: 1400 x 64 x 512 tokens
        $PYTHON train/train.py cont --data "$DATA" --out "$DEV" --init "$DEV/base.safetensors" \
            --names baseline --steps 1400 $RESUME_FLAG
        $PYTHON train/train.py cont --data "$DATA" --out "$DEV" --init "$DEV/base.safetensors" \
            --names c,cpp,go,java,javascript,python,rust --steps 200 --no-compile $RESUME_FLAG
        mkdir -p "$DEV/upcycle/base"
        cp "$DEV/base.safetensors" "$DEV/upcycle/base/"
        $PYTHON train/assemble.py --dev "$DEV/upcycle/base" --out "$DEV/upcycle/hf" --vocab "$VOCAB" --no-merge
        ./codemoe convert "$DEV/upcycle/hf/base" -o "$DEV/upcycle/base-f32.gguf" --type f32
        ./codemoe upcycle "$DEV/upcycle/base-f32.gguf" "$DEV/upcycle/moe-init.gguf" --experts 8 --top-k 2
        $PYTHON train/train.py moe --data "$DATA" --out "$DEV" --init "$DEV/base.safetensors" \
            --upcycled "$DEV/upcycle/moe-init.gguf" --steps 1400 $RESUME_FLAG
        ;;
    contenders)
        CORPUS="$SHARED/corpus" VOCAB="$VOCAB" PYTHON="$PYTHON" train/contenders.sh "$DEV" train_out/contenders
        ;;
    assemble)
        $PYTHON train/assemble.py --dev "$DEV" --out train_out/hf --vocab "$VOCAB"
        ;;
    convert)
        mkdir -p train_out/gguf
        for d in train_out/hf/*/; do
            n=$(basename "$d")
            case $n in _*) continue ;; esac
            for t in f16 q8_0; do
                ./codemoe convert "$d" -o "train_out/gguf/$n-$t.gguf" --type "$t"
            done
        done
        ;;
    eval)
        CORPUS="$SHARED/corpus" train/eval_local.sh
        ;;
    *)
        echo "unknown stage '$stage' (data gpu contenders assemble convert eval)" >&2
        exit 2
        ;;
    esac
done
