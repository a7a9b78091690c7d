#!/usr/bin/env bash
# The benchmark of record: 10 M profiles, 16 shards, 2 threads, with the
# DuckDB comparison, appended to bench/RESULTS.md. Extra arguments go to
# cohort-bench (e.g. --profiles 5000000). At 10 M profiles it takes about 10
# minutes on 2 cores, 10-12 GB of free RAM and 11.5 GB of disk under
# bench/data; see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p cohort-bench
python3 -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt

# A run that hangs must not run forever: 90 minutes is far above the
# ~10 minutes a 10 M run takes on a 2-core machine.
timeout --signal=INT --kill-after=60 "${BENCH_TIMEOUT:-5400}" \
  ./target/release/cohort-bench \
  --profiles 10000000 --shards 16 --threads 2 \
  --duckdb --data-dir bench/data --out-md bench/RESULTS.md "$@"
