#!/usr/bin/env bash
# Runs a fault simulation over many seeds, in a release build, and checks
# each seed's history against its model. A failure prints its seed.
#
# tests/simulation.rs (the default): the replication driver with a list
# machine; every seed crashes, cuts off, joins and removes nodes on its
# own schedule (and moves the group's replicas between them) over a
# network that drops, duplicates and reorders; nothing acknowledged lost,
# nothing applied twice, linearizable reads.
#
# tests/pipeline_simulation.rs (--pipeline): the ingest pipeline on three
# nodes (catalog and two shard groups) under the same network, crashes of
# the catalog's leader included, with merges across shards; every message
# applied once, identities as the model has them, replicas identical,
# linearizable per-profile reads.
#
# Replay a seed with
#   COHORT_SIM_SEED=S cargo test --release --test simulation -- --nocapture
#   COHORT_SIM_SEED=S cargo test --release --test pipeline_simulation -- --nocapture
#
#   tools/simulate.sh                       # seeds 1..200 of the driver simulation (about 15 minutes on 2 cores)
#   tools/simulate.sh 500 1000              # 500 seeds from 1000
#   tools/simulate.sh --pipeline 100        # seeds 1..100 of the pipeline simulation
set -euo pipefail
cd "$(dirname "$0")/.."
test=simulation
if [[ ${1:-} == --pipeline ]]; then
  test=pipeline_simulation
  shift
fi
count=${1:-200}
first=${2:-1}
COHORT_SIM_SEEDS=$count COHORT_SIM_FIRST=$first \
  cargo test --release --locked --test "$test" -- --nocapture 2>&1 \
  | grep -E '^(pipeline )?simulation: seed|panicked|seed [0-9]+:|replay|test result'
