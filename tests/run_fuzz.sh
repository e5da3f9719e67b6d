#!/bin/sh
# run_fuzz.sh - bounded fuzzing of the GGUF parser in `make check` and CI:
# mutates real GGUF files for CM_FUZZ_SECONDS (default 20) seconds.
. "$(dirname "$0")/lib.sh"
seeds=$(ls "$SHARED"/fixtures/gguf/llama/*.gguf "$SHARED"/fixtures/gguf/kquants/kq-q4_k_m.gguf 2>/dev/null)
[ -n "$seeds" ] || tl_skip "no seed files under $SHARED"
exec "$BUILD/tests/fuzz_gguf" "${CM_FUZZ_SECONDS:-20}" $seeds
