#!/usr/bin/env bash
# Count latency when shards are read from replicas on other nodes, against
# the same count answered where every shard is local. Runs the partition
# scenario of tests/cluster_partition.rs that cuts one node off from one
# shard leader (three `cohort serve` processes in network namespaces,
# shard leaders spread, 4 shards, 350 profiles), in a release build, and
# times ROUNDS Counts on the cut-off node (its stale shards read from
# another node over Forward.Read) and on the catalog's leader (every shard
# local), one after the other. Needs root (namespaces and iptables).
#
#   bench/remote_reads.sh [ROUNDS]      # default 500
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-500}"
COHORT_READ_ROUNDS="$ROUNDS" cargo test --release --locked --test cluster_partition \
    a_node_cut_off_from_a_shards_leader_reads_that_shard_from_another_node -- --nocapture 2>&1 \
    | grep -E "^cluster_partition: .*counts, |^cluster_partition: SKIPPED|test result"
