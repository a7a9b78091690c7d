#!/usr/bin/env bash
# Cohort over gRPC, the benchmark of the performance contract (shared/DESIGN.md):
# durable ingest into a fresh node, restart to serving at 10 M profiles, the
# query mix with 1 and 8 clients, DuckDB and ClickHouse (chdb) beside it on
# the same data, appended to bench/RESULTS.md as "Over gRPC (issue 3)".
#
#   bench/grpc_run.sh                       # the run of record: 10 M profiles, about 30 minutes
#   bench/grpc_run.sh --profiles 200000     # a small end-to-end run, about 1 minute
#
# Extra arguments go to cohort-grpc-bench (see `cohort-grpc-bench --help`); a
# --profiles other than 10 M also sets --ingest-profiles to a tenth of it and
# writes no RESULTS.md section unless --out-md is given. Needs python3 with
# venv, 12-14 GB of free RAM and about 20 GB of disk under bench/data at 10 M.
# Never run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

profiles=10000000
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--profiles" ]]; then j=$((i + 1)); profiles="${!j}"; fi
  if [[ "${!i}" == --profiles=* ]]; then profiles="${!i#--profiles=}"; fi
done
defaults=(--profiles 10000000 --shards 16 --ingest-profiles 500000)
if [[ "$profiles" != 10000000 ]]; then
  defaults=(--shards 16 --ingest-profiles $((profiles / 10)))
else
  defaults+=(--out-md bench/RESULTS.md)
fi

cargo build --release -p cohort -p cohort-datagen -p cohort-bench

venv=bench/.venv
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt

export COHORT_GRPC_BENCH_COMMAND="bench/grpc_run.sh $*"
# A run that hangs must not run forever: 2 hours is far above the ~30
# minutes a 10 M run takes on a 2-core machine.
timeout --signal=INT --kill-after=60 "${BENCH_TIMEOUT:-7200}" \
  ./target/release/cohort-grpc-bench "${defaults[@]}" \
  --python "$venv/bin/python" --data-dir bench/data "$@"
