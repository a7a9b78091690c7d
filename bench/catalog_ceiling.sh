#!/usr/bin/env bash
# The ingest ceiling the single catalog group imposes: CPU seconds per
# message of the catalog's applier thread (`apply-1`), of the Raft driver
# thread (one for every group) and of the rest, read from
# /proc/PID/task/*/stat around a `cohort load` into a fresh release node.
# The catalog applies every message on one thread, so 1 / (its CPU
# seconds per message) is what one catalog leader core can sequence.
#
#   bench/catalog_ceiling.sh [PROFILES] [SHARDS]
#
# Loads the generator's file as written (each user's messages together)
# and the same file shuffled (users interleaved), first 300,000 lines.
set -euo pipefail
profiles=${1:-60000}
shards=${2:-8}
repo=$(cd "$(dirname "$0")/.." && pwd)
(cd "$repo" && cargo build --release --locked -q -p cohort -p cohort-datagen)
bin=$repo/target/release
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
pid=
"$bin/cohort-datagen" --profiles "$profiles" --out "$work/ordered.ndjson" >/dev/null 2>&1
shuf -n 300000 --random-source=<(yes) "$work/ordered.ndjson" > "$work/interleaved.ndjson"

# CPU ticks by thread name (names are cut at 15 characters by the kernel).
threads() {
    for t in /proc/"$1"/task/*; do
        # Fields after the name in parentheses; utime and stime are 14th and 15th.
        stat=$(cat "$t/stat") name=$(cat "$t/comm")
        set -- ${stat##*) }
        echo "$name $((${12} + ${13}))"
    done | awk '{t[$1] += $2} END {for (k in t) print k, t[k]}' | sort
}

tick=$(getconf CLK_TCK)
for file in ordered interleaved; do
    rm -rf "$work/data"
    "$bin/cohort" serve --data-dir "$work/data" --shards "$shards" --grpc-addr 127.0.0.1:37070 \
        --http-addr 127.0.0.1:37071 --log-level warn >"$work/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do "$bin/cohort" --addr 127.0.0.1:37070 status >/dev/null 2>&1 && break; sleep 0.1; done
    lines=$(wc -l < "$work/$file.ndjson")
    threads "$pid" > "$work/before"
    start=$(date +%s.%N)
    "$bin/cohort" --addr 127.0.0.1:37070 load "$work/$file.ndjson" >/dev/null
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    threads "$pid" > "$work/after"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "== $file: $lines messages in ${wall} s ($(echo "$lines / $wall" | bc) msg/s, one cohort load)"
    join "$work/before" "$work/after" | awk -v n="$lines" -v hz="$tick" '
        { d = ($3 - $2) / hz; if ($1 ~ /^apply-/ && $1 != "apply-1") shards += d; else if (d > 0) t[$1] = d }
        END {
            for (k in t) printf "  %-16s %6.2f CPU s  %6.2f us/msg  ceiling %9.0f msg/s per core\n", k, t[k], 1e6 * t[k] / n, n / t[k]
            printf "  %-16s %6.2f CPU s  %6.2f us/msg\n", "shard appliers", shards, 1e6 * shards / n
        }' | sort -k2 -nr
done
