#!/usr/bin/env bash
# A three-node cluster beside a single node, with real `cohort serve`
# processes on loopback: durable ingest (single node, cluster with the
# clients on every node, cluster with every client on the leader), bytes
# between nodes per message, Count latency on the single node, the leader
# and a follower, the join (`cohort serve --join`: a learner of the
# catalog), rebalance (`Admin.Rebalance`) and removal (`Admin.SetMember`) of
# a fourth node under a Count and write load (time to serve, to the catalog
# group, until every group is placed after the rebalance, replica moves,
# groups the fourth node votes in, snapshot bytes, Count p50/p99/max steady
# vs during the join vs during the rebalance vs during the removal, failed
# calls), and kill -9 failover rounds of the catalog's leader.
#
#   bench/cluster_bench.sh                                   # the run of record → bench/RESULTS.md (about 5 minutes)
#   bench/cluster_bench.sh --profiles 1000 --rounds 3        # a smoke test, no RESULTS.md (about 45 s)
#   bench/cluster_bench.sh --profiles 1000 --rounds 0 --join-secs 3   # the join phase alone, quickly
#   bench/cluster_bench.sh --no-join                         # the binary's defaults, no join of a fourth node, no RESULTS.md
#
# Extra arguments go to cohort-cluster-bench (see `--help`); any of them
# turns the RESULTS.md section off unless --out-md is given. Never run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

args=("$@")
if [[ $# -eq 0 ]]; then
  args=(--profiles 31250 --rounds 30 --out-md bench/RESULTS.md)
fi

cargo build --release --locked -p cohort -p cohort-bench

export COHORT_CLUSTER_BENCH_COMMAND="bench/cluster_bench.sh $*"
# A run that hangs must not run forever: 30 minutes is far above the few
# minutes a run of record takes on a 2-core machine.
exec timeout --signal=TERM "${BENCH_TIMEOUT:-1800}" \
  ./target/release/cohort-cluster-bench --cohort target/release/cohort "${args[@]}"
