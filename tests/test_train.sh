#!/bin/sh
# test_train.sh - the standard-library half of train/ (train/test_local.py):
# safetensors, merging, the tokenizer through `codemoe convert`, assembling and
# converting fake dense and MoE models, gguf_read on `codemoe upcycle`'s output,
# and the token streams when carry/ holds them.  Needs python3, no torch.
set -u
TL_PROBE="vocab/ggml-vocab-starcoder.gguf corpus/python/sample.txt"
. "$(dirname "$0")/lib.sh"
command -v python3 >/dev/null 2>&1 || tl_skip "needs python3"
VOCAB="$SHARED/vocab/ggml-vocab-starcoder.gguf"
[ -f "$VOCAB" ] && [ -f "$SHARED/corpus/python/sample.txt" ] || tl_skip "needs $VOCAB and the corpus"
tl_tmpdir
TMPDIR=$TMP python3 "$TL_SRC/train/test_local.py" --codemoe "$CODEMOE" --vocab "$VOCAB" \
    --corpus "$SHARED/corpus" --data "$TL_SRC/carry" > "$TMP/log" 2>&1
rc=$?
cat "$TMP/log"
[ $rc -eq 0 ] || fail "train/test_local.py exited $rc"
[ "$fails" -eq 0 ]
