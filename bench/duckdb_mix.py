#!/usr/bin/env python3
"""The DuckDB side of Cohort's benchmark: the same query mix, in SQL, over
the same dataset (the CSV that `cohort-bench --duckdb` writes).

Steps:
1. CSV -> Parquet with DuckDB (`COPY ... TO 'x.parquet' (FORMAT PARQUET)`),
   once per data dir: skipped when the Parquet files exist and are newer
   than the CSV.
2. Parquet -> DuckDB tables in a compressed in-memory database
   (`ATTACH ':memory:' (COMPRESS)`, loaded in slices with a CHECKPOINT after
   each, which is when DuckDB compresses): both engines answer from RAM,
   which is the fair comparison. `profiles` gets a `shard` column computed once at
   load, as Cohort places profiles, so that a members page can be ordered
   the way Cohort orders it (shard, then profile).
3. Each query of the mix (ids shared with `bench/src/mix.rs`) runs once to
   warm up, then `--iterations` times (membership: `--member-runs` checks,
   one per profile id, the same ids as Cohort's). Latency is wall clock
   around `execute(...).fetchall()` in this process, parameters bound.
4. One JSON line per query on stdout:
   {id, class, query, count, checksum, detail, p50_us, p99_us, runs,
   samples_us, match}; an `{"kind": "info", ...}` line first. With
   `--expect` (Cohort's answers), every answer is compared and a mismatch
   is printed loudly on stderr.

Two-valued logic as in shared/SEGMENTS.md: a predicate on a missing value is
false, and `NOT p` is true when `p` is not true (so `NOT country = 'US'` is
written `NOT coalesce(country = 'US', false)`); `plan != 'free'` excludes a
NULL plan, as SQL already does in a WHERE clause. Behaviour windows `IN LAST
n DAYS` are `ts_ms BETWEEN now - n days AND now` (both ends inclusive).
"""

import argparse
import json
import math
import os
import sys
import time

DAY_MS = 86_400_000

PROFILE_COLUMNS = {
    "profile": "BIGINT",
    "user_id": "VARCHAR",
    "anonymous_id": "VARCHAR",
    "country": "VARCHAR",
    "city": "VARCHAR",
    "age": "DOUBLE",
    "plan": "VARCHAR",
    "signup_at_ms": "BIGINT",
    "ltv": "DOUBLE",
    "email": "VARCHAR",
    "tags": "VARCHAR",
    "newsletter": "BOOLEAN",
}

EVENT_COLUMNS = {
    "profile": "BIGINT",
    "name": "VARCHAR",
    "ts_ms": "BIGINT",
    "path": "VARCHAR",
    "referrer": "VARCHAR",
    "platform": "VARCHAR",
    "sku": "VARCHAR",
    "price": "DOUBLE",
    "amount": "DOUBLE",
    "category": "VARCHAR",
    "currency": "VARCHAR",
    "campaign": "VARCHAR",
    "link": "VARCHAR",
}


def log(msg):
    print(f"duckdb_mix: {msg}", file=sys.stderr, flush=True)


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


def columns_sql(cols):
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in cols.items()) + "}"


def newer(a, b):
    return os.path.exists(a) and os.path.getmtime(a) >= os.path.getmtime(b)


def convert(con, data_dir):
    """CSV -> Parquet, once. Tags become a list of strings in Parquet."""
    start = time.perf_counter()
    done = False
    for table, cols, select in (
        (
            "profiles",
            PROFILE_COLUMNS,
            "SELECT * REPLACE (CASE WHEN tags IS NULL OR tags = '' THEN []::VARCHAR[] "
            "ELSE string_split(tags, '|') END AS tags)",
        ),
        ("events", EVENT_COLUMNS, "SELECT *"),
    ):
        csv = os.path.join(data_dir, f"{table}.csv")
        parquet = os.path.join(data_dir, f"{table}.parquet")
        if newer(parquet, csv):
            continue
        log(f"converting {csv} -> {parquet}")
        tmp = parquet + ".tmp"
        con.execute(
            f"COPY ({select} FROM read_csv('{csv}', header = true, columns = {columns_sql(cols)})) "
            f"TO '{tmp}' (FORMAT PARQUET)"
        )
        os.replace(tmp, parquet)
        done = True
    return (time.perf_counter() - start) if done else 0.0


def load(con, data_dir, shards, n_profiles, step=1_000_000):
    """Parquet -> compressed in-memory tables, a slice of profiles at a time.

    An in-memory table is compressed at CHECKPOINT only; loading 10 M
    profiles (150 M events) at once would hold the uncompressed rows
    (about 100 bytes an event) first. Loading slices of `step` profiles
    with a CHECKPOINT after each bounds that peak.
    """
    start = time.perf_counter()
    con.execute("ATTACH ':memory:' AS mem (COMPRESS)")
    con.execute("USE mem")
    p = os.path.join(data_dir, "profiles.parquet")
    e = os.path.join(data_dir, "events.parquet")
    # The shard of a profile as Cohort computes it, from Cohort's id of the
    # profile (the files hold the dataset index; Cohort numbers profiles
    # from 1, so its id is index + 1, `cohort::demo::profile_id`):
    # ((id * 0x9E3779B97F4A7C15) mod 2^64 >> 32) mod shards.
    profiles_select = (
        f"SELECT *, (((((profile + 1)::UHUGEINT * 11400714819323198485::UHUGEINT) % (1::UHUGEINT << 64)) >> 32) "
        f"% {shards})::INTEGER AS shard FROM read_parquet('{p}')"
    )
    events_select = f"SELECT * FROM read_parquet('{e}')"
    con.execute(f"CREATE TABLE profiles AS {profiles_select} LIMIT 0")
    con.execute(f"CREATE TABLE events AS {events_select} LIMIT 0")
    for lo in range(0, max(n_profiles, 1), step):
        where = f"WHERE profile >= {lo} AND profile < {lo + step}"
        con.execute(f"INSERT INTO profiles {profiles_select} {where}")
        con.execute(f"INSERT INTO events {events_select} {where}")
        con.execute("CHECKPOINT")
        if n_profiles > step:
            log(f"loaded profiles < {min(lo + step, n_profiles)}")
    return time.perf_counter() - start


def queries(now):
    """The mix, by id, as in bench/src/mix.rs. Each entry: (id, class, segment, kind, sql)."""

    def ago(days):
        return now - days * DAY_MS

    def did(name, days, extra=""):
        return (
            f"SELECT profile FROM events WHERE name = '{name}' "
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
            "coalesce(list_contains(tags, 'vip'), false) OR coalesce(ltv > 500, false)",
        ),
        "a4": (
            "newsletter = true AND signup_at > NOW - 90 DAYS",
            f"newsletter = true AND signup_at_ms > {ago(90)}",
        ),
        "a5": (
            'NOT country = "US" AND age >= 65',
            "NOT coalesce(country = 'US', false) AND age >= 65",
        ),
    }
    out = []
    for qid, (seg, where) in attribute.items():
        out.append((qid, "a", seg, "count", f"SELECT count(*) FROM profiles WHERE {where}"))

    b1 = did("purchase", 30)
    eo7 = did("email_open", 7)
    ao30 = did("app_open", 30)
    out += [
        ("b1", "b", 'DID "purchase" IN LAST 30 DAYS', "count",
         f"SELECT count(DISTINCT profile) FROM ({b1})"),
        ("b2", "b", 'DID "purchase" IN LAST 30 DAYS AND NOT DID "email_open" IN LAST 7 DAYS', "count",
         f"SELECT count(*) FROM ({b1} EXCEPT {eo7})"),
        ("b3", "b", 'DID "app_open" IN LAST 30 DAYS AND country = "DE"', "count",
         f"SELECT count(*) FROM profiles WHERE country = 'DE' AND profile IN ({ao30})"),
    ]

    def freq(name, days, where, at_least):
        return (
            f"SELECT count(*) FROM (SELECT profile FROM events WHERE name = '{name}' "
            f"AND ts_ms BETWEEN {ago(days)} AND {now} AND {where} "
            f"GROUP BY profile HAVING count(*) >= {at_least})"
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

    # Membership: one profile id bound as $1.
    def exists(name, days):
        return (
            f"EXISTS (SELECT 1 FROM events WHERE profile = $1 AND name = '{name}' "
            f"AND ts_ms BETWEEN {ago(days)} AND {now})"
        )

    for qid, (seg, where) in attribute.items():
        out.append((f"d-{qid}", "d", seg, "member",
                    f"SELECT count(*) FROM profiles WHERE profile = $1 AND ({where})"))
    out += [
        ("d-b1", "d", 'DID "purchase" IN LAST 30 DAYS', "member",
         f"SELECT {exists('purchase', 30)}::INTEGER"),
        ("d-b2", "d", 'DID "purchase" IN LAST 30 DAYS AND NOT DID "email_open" IN LAST 7 DAYS', "member",
         f"SELECT ({exists('purchase', 30)} AND NOT {exists('email_open', 7)})::INTEGER"),
        ("d-b3", "d", 'DID "app_open" IN LAST 30 DAYS AND country = "DE"', "member",
         f"SELECT (EXISTS (SELECT 1 FROM profiles WHERE profile = $1 AND country = 'DE') "
         f"AND {exists('app_open', 30)})::INTEGER"),
    ]

    out += [
        ("e1", "e", 'DID "purchase" IN LAST 30 DAYS (breakdown by country)', "breakdown",
         f"SELECT country, count(*) AS n FROM profiles WHERE profile IN ({b1}) AND country IS NOT NULL "
         f"GROUP BY country ORDER BY n DESC, country LIMIT 10"),
        ("e2", "e", 'plan = "pro" (breakdown by tags)', "breakdown",
         "SELECT tag, count(*) AS n FROM (SELECT unnest(tags) AS tag FROM profiles WHERE plan = 'pro') "
         "GROUP BY tag ORDER BY n DESC, tag LIMIT 10"),
        ("f1", "f", 'country = "FR" AND age > 30 (first 100 by shard, profile)', "page",
         "SELECT profile + 1 FROM profiles WHERE country = 'FR' AND age > 30 ORDER BY shard, profile LIMIT 100"),
    ]
    return out


def run_one(con, kind, sql, run, n_profiles):
    """Runs one query once; returns (count, checksum, detail) and the latency in µs."""
    params = [member_id(run, n_profiles)] if kind == "member" else None
    t0 = time.perf_counter_ns()
    rows = con.execute(sql, params).fetchall() if params else con.execute(sql).fetchall()
    us = (time.perf_counter_ns() - t0) / 1000.0
    if kind in ("count", "member"):
        return (int(rows[0][0]), 0, ""), us
    if kind == "breakdown":
        return (sum(int(r[1]) for r in rows), 0, ",".join(f"{r[0]}={r[1]}" for r in rows)), us
    ids = [int(r[0]) for r in rows]
    return (len(ids), sum(ids), ""), us


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--now-ms", type=int, required=True)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--member-runs", type=int, default=200)
    ap.add_argument("--profiles", type=int, required=True, help="dataset size, for membership ids")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--expect", help="Cohort's answers by query id (JSON)")
    ap.add_argument("--only", help="comma-separated query ids")
    args = ap.parse_args()

    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    convert_s = convert(con, args.data_dir)
    load_s = load(con, args.data_dir, args.shards, args.profiles)
    mem = con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]
    n_profiles = con.execute("SELECT count(*) FROM profiles").fetchone()[0]
    n_events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    info = {
        "kind": "info",
        "duckdb_version": duckdb.__version__,
        "mode": "compressed in-memory tables (ATTACH ':memory:' (COMPRESS), CHECKPOINT) loaded from Parquet",
        "threads": args.threads,
        "convert_s": round(convert_s, 1),
        "load_s": round(load_s, 1),
        "memory_mb": round((mem or 0) / 2**20),
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
    for qid, cls, seg, kind, sql in queries(args.now_ms):
        if only and qid not in only:
            continue
        if kind == "member":
            runs = args.member_runs
            run_one(con, kind, sql, runs - 1, args.profiles)  # warm-up
            total, samples = 0, []
            for k in range(runs):
                (n, _, _), us = run_one(con, kind, sql, k, args.profiles)
                total += n
                samples.append(us)
            answer = (total, 0, "")
        else:
            runs = args.iterations
            answer, _ = run_one(con, kind, sql, 0, args.profiles)  # warm-up
            samples = []
            for k in range(runs):
                a, us = run_one(con, kind, sql, k, args.profiles)
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
                    f"!!!!!!!! COUNT MISMATCH {qid} `{seg}`: DuckDB {answer} vs Cohort "
                    f"({want['count']}, {want.get('checksum', 0)}, {want.get('detail', '')!r})"
                )
        log(f"{qid:<5} p50 {line['p50_us']:>10.0f} µs  p99 {line['p99_us']:>10.0f} µs  count {answer[0]}")
        print(json.dumps(line), flush=True)
    if mismatches:
        log(f"!!!!!!!! {mismatches} MISMATCHES between DuckDB and Cohort")


if __name__ == "__main__":
    main()
