#!/usr/bin/env bash
# Issue 12's nested saved segments, measured: N saved segments, each
# `IN SEGMENT "prev" OR IN SEGMENT "prev"` over the one before, on a demo
# node of P profiles; then Count of the last, GetProfile of one user, and
# a Count of ALL, each timed over R runs through the CLI (one gRPC call
# each, the CLI's process start included). Release build required.
# Usage: [BIN=path/to/cohort] bench/nested_segments.sh [N=23] [P=100000] [R=5]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-23}
P=${2:-100000}
R=${3:-5}
BIN=${BIN:-target/release/cohort}
[ -x "$BIN" ] || { echo "build it first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
addr="http://127.0.0.1:$port"
"$BIN" demo --no-serve --data-dir "$work/data" --profiles "$P" --shards 8 >/dev/null
"$BIN" serve --data-dir "$work/data" --shards 8 --grpc-addr "127.0.0.1:$port" \
    --http-addr "127.0.0.1:$((port + 1))" >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q '^cohort ' "$work/serve.out" 2>/dev/null && break; sleep 0.2; done
"$BIN" --addr "$addr" segment create s0 'plan = "pro"' >/dev/null
for i in $(seq 1 "$N"); do
    "$BIN" --addr "$addr" segment create "s$i" "IN SEGMENT \"s$((i - 1))\" OR IN SEGMENT \"s$((i - 1))\"" >/dev/null
done
rss() { awk '/VmRSS/ {print int($2 / 1024) " MB"}' "/proc/$pid/status"; }
echo "nested saved segments: $N levels over $P profiles (commit $(git rev-parse --short HEAD)); node RSS $(rss)"
user=$("$BIN" --addr "$addr" --json members 'plan = "pro"' --limit 1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["members"][0] if isinstance(d["members"][0], str) else d["members"][0].get("user_id", ""))' 2>/dev/null || true)
time_it() {
    local what=$1; shift
    local best=999999 total=0
    for _ in $(seq "$R"); do
        local t0 t1 ms
        t0=$(date +%s%N)
        "$@" >/dev/null
        t1=$(date +%s%N)
        ms=$(( (t1 - t0) / 1000000 ))
        total=$((total + ms))
        [ "$ms" -lt "$best" ] && best=$ms
    done
    echo "$what: best $best ms, mean $((total / R)) ms over $R runs"
}
time_it "Count IN SEGMENT \"s$N\"" "$BIN" --addr "$addr" count "segment:s$N"
time_it "Count plan = \"pro\" (the same set, written out)" "$BIN" --addr "$addr" count 'plan = "pro"'
time_it "Count ALL" "$BIN" --addr "$addr" count ALL
if [ -n "$user" ]; then
    time_it "GetProfile $user (with its segments)" "$BIN" --addr "$addr" profile "$user"
fi
for e in "segment:s$N" 'plan = "pro"'; do
    best=$(for _ in $(seq "$R"); do "$BIN" --addr "$addr" --json count "$e"; done |
        python3 -c 'import json,sys; d=json.JSONDecoder(); t=sys.stdin.read(); i=0; b=[]
while i < len(t):
    t2=t[i:].lstrip(); 
    if not t2: break
    o,n=d.raw_decode(t2); i=len(t)-len(t2)+n; b.append(o["elapsed_ms"]); c=o["counts"][0]["count"]
print(f"{min(b):.2f} ms (count {c})")')
    echo "server-side Count of $e: best $best over $R runs"
done
echo "node RSS after: $(rss)"
