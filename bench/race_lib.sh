# race_lib.sh - what race.sh and race_gpu.sh share: reading both engines'
# JSON results.  Sourced, not run.

# llama_ts FILE: "pp tg" tok/s from llama-bench -o json
llama_ts() { python3 -c '
import json, sys
r = json.load(open(sys.argv[1])); pp = tg = 0
for x in r:
    if x["n_prompt"] > 0 and x["n_gen"] == 0: pp = x["avg_ts"]
    if x["n_gen"] > 0 and x["n_prompt"] == 0: tg = x["avg_ts"]
print("%.1f %.1f" % (pp, tg))' "$1"; }

# codemoe_ts FILE: "pp tg" tok/s (medians) from codemoe bench --json
codemoe_ts() { python3 -c '
import json, sys
r = json.load(open(sys.argv[1])); print("%.1f %.1f" % (r["pp_median"], r["tg_median"]))' "$1"; }

# ratio A B: A / B to two places, n/a where B is 0
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
