#!/usr/bin/env bash
# Starts a three-node Cohort cluster as local processes on 127.0.0.1,
# 127.0.0.2 and 127.0.0.3 (all loopback: no --insecure needed), every group
# replicated on the three, and stops them on Ctrl-C. Data goes to
# cluster/local-data/nodeN (kept between runs: a second run restarts the
# same cluster). BIN=path picks the binary (default: a release build).
#
#   cluster/local.sh
#   cohort --addr http://127.0.0.1:7070 status     # node 1; 127.0.0.2, .3 for the others
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
if [ -z "${BIN:-}" ]; then
    (cd "$repo" && cargo build --release --locked --bin cohort)
    BIN=$repo/target/release/cohort
fi
data=${DATA:-$here/local-data}
peers=()
for n in 1 2 3; do
    peers+=(--peer "$n=127.0.0.$n:7170,127.0.0.$n:7070")
done
pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait
}
trap stop INT TERM EXIT
for n in 1 2 3; do
    mkdir -p "$data/node$n"
    "$BIN" serve --node-id "$n" --data-dir "$data/node$n" --raft-addr "127.0.0.$n:7170" \
        --grpc-addr "127.0.0.$n:7070" --http-addr "127.0.0.$n:7071" "${peers[@]}" \
        >"$data/node$n.log" 2>&1 &
    pids+=($!)
done
echo "three nodes starting: gRPC on 127.0.0.{1,2,3}:7070, HTTP on :7071, logs in $data/nodeN.log; Ctrl-C stops them"
for n in 1 2 3; do
    for _ in $(seq 100); do
        grep -q '^cohort ' "$data/node$n.log" 2>/dev/null && break
        sleep 0.1
    done
    grep '^cohort ' "$data/node$n.log" || { echo "node $n did not start; see $data/node$n.log" >&2; exit 1; }
done
wait
