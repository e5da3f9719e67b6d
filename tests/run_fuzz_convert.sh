#!/bin/sh
# run_fuzz_convert.sh - bounded fuzzing of the safetensors reader and the JSON
# parser in `make check` and CI: mutates real checkpoints and config files for
# CM_FUZZ_SECONDS (default 20) seconds.
. "$(dirname "$0")/lib.sh"
seeds=$(ls "$SHARED"/fixtures/hf/*/model.safetensors "$SHARED"/fixtures/hf/*/config.json \
    "$SHARED"/fixtures/hf/llama/reference.json 2>/dev/null)
[ -n "$seeds" ] || tl_skip "no seed files under $SHARED"
exec "$BUILD/tests/fuzz_safetensors" "${CM_FUZZ_SECONDS:-20}" $seeds
