#!/bin/sh
# run_fuzz_formats.sh - bounded fuzzing, in `make check` and CI, of the model
# loader (+ a short forward pass), the language-expert pack's metadata, the
# router's classifier file and the corpus's JSONL lines: mutates real files
# for CM_FUZZ_SECONDS (default 20) seconds.
. "$(dirname "$0")/lib.sh"
seeds=$(ls "$SHARED"/fixtures/gguf/llama/llama-q4_0.gguf "$SHARED"/fixtures/gguf/llama/llama-f16.gguf \
    "$SHARED"/fixtures/gguf/kquants/kq-q4_k_m.gguf 2>/dev/null)
[ -n "$seeds" ] || tl_skip "no seed models under $SHARED"
tl_tmpdir
# the shipped pack (language experts) and classifier
for f in "$TL_SRC/models/default.gguf" "$TL_SRC/models/router.bin"; do
    [ -f "$f" ] && seeds="$seeds $f"
done
# JSONL lines: the start of a corpus file, plus escapes the corpus may lack
if xz -dc "$SHARED/corpus/python/valid.jsonl.xz" 2>/dev/null | head -c 200000 >"$TMP/seed.jsonl"; then
    printf '%s\n' '{"content": "a\\u00e9\\ud83d\\ude00\\ud800x\\n\\t\\"\\\\\\/", "sha1": "0"}' \
        '{"x": [1, -2.5e3, true, null, {"y": {}}], "content": ""}' >>"$TMP/seed.jsonl"
    seeds="$seeds $TMP/seed.jsonl"
fi
# not exec: the shell must stay to remove $TMP
"$BUILD/tests/fuzz_formats" "${CM_FUZZ_SECONDS:-20}" $seeds
