#!/usr/bin/env bash
# Live counts while a node ingests at full speed: runs the ingest-only gRPC
# benchmark (8.0 M messages, 500 k profiles, 4 clients) and, while it runs,
# asks the node two counts 25 times each, 0.4 s apart, with the CLI; prints
# the p50 and max of the node's `answered in` times, then the ingest rate.
#
#   bench/counts_during_ingest.sh [BIN_DIR]   # BIN_DIR holds cohort and
#                                             # cohort-grpc-bench (default
#                                             # target/release)
#
# The second query gets fewer samples when the ingest ends first. Never run
# by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$bin/cohort-grpc-bench" --ingest-only --shards 16 --ingest-profiles 500000 --data-dir bench/data >"$log" 2>&1 &
bench=$!
addr=
for _ in $(seq 1 300); do
  addr=$(grep -o 'grpc-addr" "[0-9.:]*' "$log" | head -1 | sed 's/.*" "//' || true)
  [[ -n "$addr" ]] && break
  sleep 0.2
done
[[ -n "$addr" ]] || { cat "$log" >&2; echo "the node did not start" >&2; exit 1; }
sleep 3
for query in 'country = "FR"' 'DID "purchase" IN LAST 30 DAYS'; do
  for _ in $(seq 1 25); do
    kill -0 "$bench" 2>/dev/null || break
    "$bin/cohort" --addr "http://$addr" count "$query" 2>/dev/null | grep -o 'answered in [0-9.]* [mµ]s' || true
    sleep 0.4
  done | python3 -c '
import re, sys
ms = sorted(float(v) / (1000 if unit == "µs" else 1)
            for v, unit in re.findall(r"answered in ([0-9.]+) (\S+)", sys.stdin.read()))
label = sys.argv[1]
print(f"{label}: {len(ms)} counts, p50 {ms[len(ms) // 2]:.2f} ms, max {ms[-1]:.2f} ms" if ms else f"{label}: no answers")
' "$query"
done
wait "$bench"
grep '^ingest: [0-9]* messages' "$log"
