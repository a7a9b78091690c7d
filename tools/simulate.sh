#!/usr/bin/env bash
# Runs the fault simulation (tests/simulation.rs) over many seeds, in a
# release build: every seed crashes, cuts off, joins and removes nodes on
# its own schedule (and moves the group's replicas between them) over a
# network that drops, duplicates and reorders,
# then checks the history (nothing acknowledged lost, nothing applied
# twice, linearizable reads). A failure prints its seed; replay it with
# COHORT_SIM_SEED=S cargo test --release --test simulation -- --nocapture
#
#   tools/simulate.sh            # seeds 1..200 (about 15 minutes on 2 cores)
#   tools/simulate.sh 500 1000   # 500 seeds from 1000
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-200}
first=${2:-1}
COHORT_SIM_SEEDS=$count COHORT_SIM_FIRST=$first \
  cargo test --release --locked --test simulation -- --nocapture 2>&1 | grep -E '^simulation: seed|panicked|seed [0-9]+:|replay|test result'
