#!/usr/bin/env bash
# Runs every fuzz target in turn: up to RUNS executions or SECS seconds each
# (defaults: 10 million, 600 s), from its committed corpus, and prints each
# target's final libFuzzer stats. Needs cargo-fuzz (`cargo install
# cargo-fuzz --locked`); RUSTC_BOOTSTRAP=1 lets the stable toolchain take
# its nightly flags. New corpus entries go to work/NAME (ignored by git),
# crashes to artifacts/NAME/. Usage: fuzz/run-all.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
SECS=${SECS:-600}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(segment message shard_snapshot catalog_snapshot directory_image raft_log)
RUSTC_BOOTSTRAP=1 cargo fuzz build
bin=target/x86_64-unknown-linux-gnu/release
for t in "${targets[@]}"; do
    mkdir -p work/"$t" artifacts/"$t"
    dict=()
    [ -f dict/"$t".dict ] && dict=(-dict=dict/"$t".dict)
    echo "== $t (up to $RUNS runs or $SECS s)"
    start=$SECONDS
    nice -n 19 "$bin/$t" work/"$t" corpus/"$t" "${dict[@]}" -runs="$RUNS" -max_total_time="$SECS" \
        -timeout=10 -print_final_stats=1 -artifact_prefix=artifacts/"$t"/ 2>&1 |
        grep -E '^(stat::|==|SUMMARY|Done|INFO: -max_total_time)|crash|deadly|panicked' || true
    echo "$t: $((SECONDS - start)) s"
done
