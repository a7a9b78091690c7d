#!/usr/bin/env python3
"""The ClickHouse side of Cohort's benchmark, through chdb (ClickHouse
in-process, from PyPI): the query mix of `duckdb_mix.py`, in ClickHouse SQL,
over the same Parquet files (`profiles.parquet`, `events.parquet`, which
`duckdb_mix.py` writes from the CSV).

Modes (`--mode`):
- `table` (default): the Parquet files are loaded once through the `file()`
  table function into MergeTree tables of a chdb session in a temporary
  directory: `profiles` ordered by `profile`, `events` by
  `(name, profile, ts_ms)`, which is what a ClickHouse user would choose for
  this mix (an event's window is a range of the key; a membership check on
  events is a prefix lookup). DuckDB answers from its own in-memory tables,
  so this is the comparable setup.
- `file`: every query reads the Parquet files through `file(..., Parquet)`.

Each query of the mix (ids shared with `bench/src/mix.rs` and
`duckdb_mix.py`) runs once to warm up, then `--iterations` times
(membership: `--member-runs` checks, one per profile id, the same ids as
Cohort's). Latency is wall clock around `session.query(...)` in this process,
with the profile id bound as a query parameter. Output: one JSON line per
query, as `duckdb_mix.py` prints them; with `--expect` (Cohort's answers)
every answer is compared and a mismatch is printed loudly on stderr.

Two-valued logic as in shared/SEGMENTS.md and `duckdb_mix.py`: a predicate on a
missing value is false, `NOT p` is true when `p` is not true
(`NOT ifNull(country = 'US', false)`). Windows `IN LAST n DAYS` are
`ts_ms BETWEEN now - n days AND now`. ClickHouse's `EXCEPT` defaults to
`EXCEPT ALL`, so b2 is written with `NOT IN`.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

DAY_MS = 86_400_000


def log(msg):
    print(f"chdb_mix: {msg}", file=sys.stderr, flush=True)


def percentile(samples, p):
    """Nearest rank, as bench/src/stats.rs."""
    if not samples:
        return 0.0
    v = sorted(samples)
    rank = math.ceil(p / 100.0 * len(v))
    return v[min(max(rank, 1), len(v)) - 1]


def member_id(k, n):
    """The profile of membership run k, as mix::member_id in Rust."""
    return (((k * 6364136223846793005 + 1442695040888963407) % 2**64) >> 33) % max(n, 1)


def shard_expr(shards):
    """The shard of a profile as Cohort computes it, from Cohort's id of it
    (the files hold the dataset index; Cohort's id is index + 1,
    `cohort::demo::profile_id`): ((id * 0x9E3779B97F4A7C15) mod 2^64 >> 32)
    mod shards (UInt64 multiplication wraps in ClickHouse)."""
    return f"(bitShiftRight(toUInt64(profile + 1) * toUInt64(11400714819323198485), 32) % {shards})"


def queries(now, P, E, shards):
    """The mix, by id, as in duckdb_mix.py. Each entry: (id, class, segment, kind, sql).

    P and E are the profiles and events relations (table names or file()
    calls). Membership queries take the profile id as {id:Int64}.
    """

    def ago(days):
        return now - days * DAY_MS

    def did(name, days, extra=""):
        return (
            f"SELECT profile FROM {E} WHERE name = '{name}' "
            f"AND ts_ms BETWEEN {ago(days)} AND {now}{extra}"
        )

    attribute = {
        "a1": ('country = "FR"', "country = 'FR'"),
        "a2": (
            'country IN ("FR", "BE", "CH") AND age BETWEEN 25 AND 34 AND plan != "free"',
            "country IN ('FR', 'BE', 'CH') AND age BETWEEN 25 AND 34 AND plan != 'free'",
        ),
        "a3": (
            'tags CONTAINS "vip" OR ltv > 500',
            "has(tags, 'vip') OR ifNull(ltv > 500, false)",
        ),
        "a4": (
            "newsletter = true AND signup_at > NOW - 90 DAYS",
            f"newsletter = true AND signup_at_ms > {ago(90)}",
        ),
        "a5": (
            'NOT country = "US" AND age >= 65',
            "NOT ifNull(country = 'US', false) AND age >= 65",
        ),
    }
    out = []
    for qid, (seg, where) in attribute.items():
        out.append((qid, "a", seg, "count", f"SELECT count() FROM {P} WHERE {where}"))

    b1 = did("purchase", 30)
    eo7 = did("email_open", 7)
    ao30 = did("app_open", 30)
    out += [
        ("b1", "b", 'DID "purchase" IN LAST 30 DAYS', "count",
         f"SELECT uniqExact(profile) FROM ({b1})"),
        ("b2", "b", 'DID "purchase" IN LAST 30 DAYS AND NOT DID "email_open" IN LAST 7 DAYS', "count",
         f"SELECT uniqExact(profile) FROM ({b1}) WHERE profile NOT IN ({eo7})"),
        ("b3", "b", 'DID "app_open" IN LAST 30 DAYS AND country = "DE"', "count",
         f"SELECT count() FROM {P} WHERE country = 'DE' AND profile IN ({ao30})"),
    ]

    def freq(name, days, where, at_least):
        return (
            f"SELECT count() FROM (SELECT profile FROM {E} WHERE name = '{name}' "
            f"AND ts_ms BETWEEN {ago(days)} AND {now} AND {where} "
            f"GROUP BY profile HAVING count() >= {at_least})"
        )

    out += [
        ("c1", "c", 'DID "purchase" WHERE amount > 100 AND category = "shoes" AT LEAST 2 TIMES IN LAST 90 DAYS',
         "count", freq("purchase", 90, "amount > 100 AND category = 'shoes'", 2)),
        ("c2", "c", 'DID "page" WHERE path = "/pricing" AT LEAST 2 TIMES IN LAST 90 DAYS',
         "count", freq("page", 90, "path = '/pricing'", 2)),
        ("c3", "c", 'DID "add_to_cart" WHERE price > 50 AT LEAST 1 TIMES IN LAST 14 DAYS',
         "count", freq("add_to_cart", 14, "price > 50", 1)),
        ("c4", "c", 'DID "page" WHERE referrer = "google.com" AT LEAST 2 TIMES IN LAST 90 DAYS',
         "count", freq("page", 90, "referrer = 'google.com'", 2)),
    ]

    # Membership: one profile id bound as {id:Int64}.
    def exists(name, days):
        return (
            f"(SELECT count() > 0 FROM {E} WHERE name = '{name}' AND profile = {{id:Int64}} "
            f"AND ts_ms BETWEEN {ago(days)} AND {now})"
        )

    for qid, (seg, where) in attribute.items():
        out.append((f"d-{qid}", "d", seg, "member",
                    f"SELECT count() FROM {P} WHERE profile = {{id:Int64}} AND ({where})"))
    out += [
        ("d-b1", "d", 'DID "purchase" IN LAST 30 DAYS', "member",
         f"SELECT toUInt8({exists('purchase', 30)})"),
        ("d-b2", "d", 'DID "purchase" IN LAST 30 DAYS AND NOT DID "email_open" IN LAST 7 DAYS', "member",
         f"SELECT toUInt8({exists('purchase', 30)} AND NOT {exists('email_open', 7)})"),
        ("d-b3", "d", 'DID "app_open" IN LAST 30 DAYS AND country = "DE"', "member",
         f"SELECT toUInt8((SELECT count() > 0 FROM {P} WHERE profile = {{id:Int64}} AND country = 'DE') "
         f"AND {exists('app_open', 30)})"),
    ]

    out += [
        ("e1", "e", 'DID "purchase" IN LAST 30 DAYS (breakdown by country)', "breakdown",
         f"SELECT country, count() AS n FROM {P} WHERE profile IN ({b1}) AND country IS NOT NULL "
         f"GROUP BY country ORDER BY n DESC, country LIMIT 10"),
        ("e2", "e", 'plan = "pro" (breakdown by tags)', "breakdown",
         f"SELECT tag, count() AS n FROM (SELECT arrayJoin(tags) AS tag FROM {P} WHERE plan = 'pro') "
         "GROUP BY tag ORDER BY n DESC, tag LIMIT 10"),
        ("f1", "f", 'country = "FR" AND age > 30 (first 100 by shard, profile)', "page",
         f"SELECT profile + 1 FROM {P} WHERE country = 'FR' AND age > 30 "
         f"ORDER BY {shard_expr(shards)}, profile LIMIT 100"),
    ]
    return out


def rows_of(result):
    """The rows of a JSONCompact result."""
    return json.loads(result.bytes())["data"] if result.bytes() else []


def run_one(sess, kind, sql, run, n_profiles):
    """Runs one query once; returns (count, checksum, detail) and the latency in µs."""
    params = {"id": member_id(run, n_profiles)} if kind == "member" else None
    t0 = time.perf_counter_ns()
    if params:
        res = sess.query(sql, "JSONCompact", params=params)
    else:
        res = sess.query(sql, "JSONCompact")
    us = (time.perf_counter_ns() - t0) / 1000.0
    rows = rows_of(res)
    if kind in ("count", "member"):
        return (int(rows[0][0]), 0, ""), us
    if kind == "breakdown":
        return (sum(int(r[1]) for r in rows), 0, ",".join(f"{r[0]}={r[1]}" for r in rows)), us
    ids = [int(r[0]) for r in rows]
    return (len(ids), sum(ids), ""), us


def load(sess, data_dir, threads):
    """Parquet -> MergeTree tables through file()."""
    start = time.perf_counter()
    p = os.path.join(data_dir, "profiles.parquet")
    e = os.path.join(data_dir, "events.parquet")
    settings = f"SETTINGS max_threads = {threads}, max_insert_threads = {threads}"
    sess.query("CREATE DATABASE IF NOT EXISTS bench")
    sess.query("USE bench")
    sess.query("DROP TABLE IF EXISTS profiles")
    sess.query("DROP TABLE IF EXISTS events")
    # Key columns are never NULL in the files; keyword columns become
    # LowCardinality, as a ClickHouse schema would declare them.
    sess.query(
        f"CREATE TABLE profiles ENGINE = MergeTree ORDER BY profile "
        f"AS SELECT * REPLACE (assumeNotNull(profile) AS profile, toLowCardinality(country) AS country, "
        f"toLowCardinality(city) AS city, toLowCardinality(plan) AS plan) "
        f"FROM file('{p}', Parquet) {settings}"
    )
    log(f"loaded profiles in {time.perf_counter() - start:.1f} s")
    sess.query(
        f"CREATE TABLE events ENGINE = MergeTree ORDER BY (name, profile, ts_ms) "
        f"AS SELECT * REPLACE (assumeNotNull(profile) AS profile, toLowCardinality(assumeNotNull(name)) AS name, "
        f"assumeNotNull(ts_ms) AS ts_ms, toLowCardinality(path) AS path, toLowCardinality(referrer) AS referrer, "
        f"toLowCardinality(platform) AS platform, toLowCardinality(category) AS category, "
        f"toLowCardinality(currency) AS currency, toLowCardinality(campaign) AS campaign, "
        f"toLowCardinality(link) AS link) "
        f"FROM file('{e}', Parquet) {settings}"
    )
    log(f"loaded events in {time.perf_counter() - start:.1f} s")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True, help="holds profiles.parquet and events.parquet")
    ap.add_argument("--now-ms", type=int, required=True)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--member-runs", type=int, default=200)
    ap.add_argument("--profiles", type=int, required=True, help="dataset size, for membership ids")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=("table", "file"), default="table")
    ap.add_argument("--session-dir", help="chdb session directory (default: a temporary one, removed at the end)")
    ap.add_argument("--expect", help="Cohort's answers by query id (JSON)")
    ap.add_argument("--only", help="comma-separated query ids")
    args = ap.parse_args()

    import chdb
    from chdb import session

    for f in ("profiles.parquet", "events.parquet"):
        if not os.path.exists(os.path.join(args.data_dir, f)):
            sys.exit(f"chdb_mix: {f} is missing in {args.data_dir}; run duckdb_mix.py first (it writes the Parquet files)")

    tmp = args.session_dir or tempfile.mkdtemp(prefix="chdb-", dir=args.data_dir)
    sess = session.Session(tmp)
    try:
        sess.query(f"SET max_threads = {args.threads}")
        load_s = 0.0
        if args.mode == "table":
            load_s = load(sess, args.data_dir, args.threads)
            P, E = "bench.profiles", "bench.events"
        else:
            P = f"file('{os.path.join(args.data_dir, 'profiles.parquet')}', Parquet)"
            E = f"file('{os.path.join(args.data_dir, 'events.parquet')}', Parquet)"
        n_profiles = int(rows_of(sess.query(f"SELECT count() FROM {P}", "JSONCompact"))[0][0])
        n_events = int(rows_of(sess.query(f"SELECT count() FROM {E}", "JSONCompact"))[0][0])
        mem = None
        if args.mode == "table":
            r = rows_of(sess.query(
                "SELECT sum(data_compressed_bytes), sum(data_uncompressed_bytes), count() FROM system.parts "
                "WHERE database = 'bench' AND active", "JSONCompact"))
            mem = {"compressed_mb": round(int(r[0][0]) / 2**20), "uncompressed_mb": round(int(r[0][1]) / 2**20),
                   "parts": int(r[0][2])}
        version = rows_of(sess.query("SELECT version()", "JSONCompact"))[0][0]
        info = {
            "kind": "info",
            "chdb_version": chdb.__version__,
            "clickhouse_version": version,
            "mode": ("MergeTree tables loaded from the Parquet files via file() (profiles ORDER BY profile, "
                     "events ORDER BY (name, profile, ts_ms), keyword columns LowCardinality), "
                     "on disk in the session directory"
                     if args.mode == "table" else "queries over the Parquet files via file(..., Parquet)"),
            "threads": args.threads,
            "load_s": round(load_s, 1),
            "storage": mem,
            "profiles": n_profiles,
            "events": n_events,
        }
        print(json.dumps(info), flush=True)
        log(json.dumps(info))

        expect = {}
        if args.expect:
            with open(args.expect, encoding="utf-8") as f:
                expect = json.load(f)
        only = set(args.only.split(",")) if args.only else None

        mismatches = 0
        for qid, cls, seg, kind, sql in queries(args.now_ms, P, E, args.shards):
            if only and qid not in only:
                continue
            if kind == "member":
                runs = args.member_runs
                run_one(sess, kind, sql, runs - 1, args.profiles)  # warm-up
                total, samples = 0, []
                for k in range(runs):
                    (n, _, _), us = run_one(sess, kind, sql, k, args.profiles)
                    total += n
                    samples.append(us)
                answer = (total, 0, "")
            else:
                runs = args.iterations
                answer, _ = run_one(sess, kind, sql, 0, args.profiles)  # warm-up
                samples = []
                for k in range(runs):
                    a, us = run_one(sess, kind, sql, k, args.profiles)
                    if a != answer:
                        log(f"!!! {qid}: run {k} answered {a}, the warm-up {answer}")
                    samples.append(us)
            line = {
                "id": qid,
                "class": cls,
                "query": seg,
                "count": answer[0],
                "checksum": answer[1],
                "detail": answer[2],
                "p50_us": percentile(samples, 50),
                "p99_us": percentile(samples, 99),
                "runs": runs,
                "samples_us": [round(s, 1) for s in samples],
            }
            if qid in expect:
                want = expect[qid]
                ok = (want["count"], want.get("checksum", 0), want.get("detail", "")) == answer
                line["match"] = ok
                if not ok:
                    mismatches += 1
                    log(
                        f"!!!!!!!! COUNT MISMATCH {qid} `{seg}`: chdb {answer} vs Cohort "
                        f"({want['count']}, {want.get('checksum', 0)}, {want.get('detail', '')!r})"
                    )
            log(f"{qid:<5} p50 {line['p50_us']:>10.0f} µs  p99 {line['p99_us']:>10.0f} µs  count {answer[0]}")
            print(json.dumps(line), flush=True)
        if mismatches:
            log(f"!!!!!!!! {mismatches} MISMATCHES between chdb and Cohort")
    finally:
        sess.close()
        if not args.session_dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
