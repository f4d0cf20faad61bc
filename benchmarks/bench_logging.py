#!/usr/bin/env python3
"""Logging cost in the caller and sustained write throughput, against baselines measured in the same run.

Measures, on realistic payloads (AlpacaEval instructions and answers, ~2 KB):

(a) caller-side latency of ``UsageLogger.log()`` (p50/p99 in microseconds), async and sync, with
    ``query=`` and with ``messages=`` (a 4-turn conversation: system prompt, an earlier exchange, the question);
(b) sustained committed records/s (from the first ``log()`` until ``flush()`` returns);
(c) the same workload through raw ``sqlite3`` ``executemany`` in batches of 1000 in WAL mode
    (the practical limit) and through a connect-insert-commit-per-call logger (the naive
    baseline, as the closest peer does), and prints the ratios.

Usage:
    python benchmarks/bench_logging.py [--records 100000] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from afs_continuous import UsageLogger  # noqa: E402

SCHEMA = """CREATE TABLE usage_records (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, query TEXT NOT NULL,
response TEXT NOT NULL, model TEXT NOT NULL, latency_ms REAL, quality_score REAL)"""


def payloads(data_dir: Path) -> list[tuple[str, str, float]]:
    rows = []
    for path in sorted(data_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            rows += [(r["instruction"], r["output"], float(r["preference"]) - 1.0) for r in map(json.loads, fh)]
    if not rows:
        raise SystemExit(f"no AlpacaEval files in {data_dir}")
    return rows


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def conversation(data: list, i: int) -> list[dict[str, str]]:
    """A 4-turn chat (system prompt, an earlier exchange, the final user turn) from real rows."""
    q0, r0, _ = data[(i + 1) % len(data)]
    return [{"role": "system", "content": "You are a helpful assistant. Answer accurately and concisely."},
            {"role": "user", "content": q0}, {"role": "assistant", "content": r0},
            {"role": "user", "content": data[i % len(data)][0]}]


def bench_afs(path: Path, data: list, n: int, durability: str, *, messages: bool = False, rollups: bool = True) -> dict:
    logger = UsageLogger(path, durability=durability)
    logger._rollups = rollups  # internal switch, only to measure what the hourly rollups cost the writer
    lat = []
    chats = [conversation(data, i) for i in range(min(n, len(data)))] if messages else []
    t0 = time.perf_counter()
    for i in range(n):
        q, r, qual = data[i % len(data)]
        if messages:  # the same call with the whole conversation (validated on the caller's thread)
            chat = chats[i % len(chats)]
            s = time.perf_counter_ns()
            logger.log(messages=chat, response=r, model="champion-v1", latency_ms=latency(i), quality_score=qual,
                       prompt_tokens=300, completion_tokens=120)
        else:
            s = time.perf_counter_ns()
            logger.log(q, r, "champion-v1", latency_ms=latency(i), quality_score=qual)
        lat.append((time.perf_counter_ns() - s) / 1000.0)
    t_enqueued = time.perf_counter()
    assert logger.flush(timeout_s=600)
    elapsed = time.perf_counter() - t0
    stats = logger.writer_stats()
    logger.close()
    return {"p50_us": pct(lat, 0.5), "p99_us": pct(lat, 0.99), "records_per_s": n / elapsed,
            "enqueue_s": t_enqueued - t0, "committed": stats["n_committed"], "dropped": stats["n_dropped"]}


def latency(i: int) -> float:
    """A spread of latencies (80 ms to ~2 s), so the rollups' latency histogram fills many buckets."""
    return 80.0 + (i * 7919) % 1900 + (i % 7) * 0.37


def bench_raw(path: Path, data: list, n: int, batch: int = 1000) -> dict:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(SCHEMA)
    t0 = time.perf_counter()
    rows = []
    for i in range(n):
        q, r, qual = data[i % len(data)]
        rows.append((uuid.uuid4().hex, datetime.now(timezone.utc).isoformat(), q, r, "champion-v1", 123.0, qual))
        if len(rows) == batch:
            with con:
                con.executemany("INSERT INTO usage_records VALUES (?,?,?,?,?,?,?)", rows)
            rows = []
    if rows:
        with con:
            con.executemany("INSERT INTO usage_records VALUES (?,?,?,?,?,?,?)", rows)
    elapsed = time.perf_counter() - t0
    con.close()
    return {"records_per_s": n / elapsed}


def bench_naive(path: Path, data: list, n: int) -> dict:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(SCHEMA)
    con.close()
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        q, r, qual = data[i % len(data)]
        s = time.perf_counter_ns()
        c = sqlite3.connect(path)
        c.execute("INSERT INTO usage_records VALUES (?,?,?,?,?,?,?)",
                  (uuid.uuid4().hex, datetime.now(timezone.utc).isoformat(), q, r, "champion-v1", 123.0, qual))
        c.commit()
        c.close()
        lat.append((time.perf_counter_ns() - s) / 1000.0)
    elapsed = time.perf_counter() - t0
    return {"p50_us": pct(lat, 0.5), "p99_us": pct(lat, 0.99), "records_per_s": n / elapsed}


def _pg_schema(url: str) -> tuple[str, str] | None:
    """A fresh schema on the PostgreSQL server at ``url``: (url using it, schema), or None if unreachable."""
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with engine.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - report and skip
        print(f"PostgreSQL at {url} not reachable, skipped: {str(exc).splitlines()[0]}")
        return None
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}", schema


def _pg_drop(url: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def bench_pg_raw(url: str, data: list, n: int, batch: int = 1000) -> dict:
    """psycopg executemany in batches of 1000 into the same table (the PostgreSQL limit)."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(SCHEMA.replace("REAL", "DOUBLE PRECISION"))
    raw = engine.raw_connection()
    cur = raw.cursor()
    t0 = time.perf_counter()
    rows = []
    for i in range(n):
        q, r, qual = data[i % len(data)]
        rows.append((uuid.uuid4().hex, datetime.now(timezone.utc).isoformat(), q, r, "champion-v1", 123.0, qual))
        if len(rows) == batch or i == n - 1:
            cur.executemany("INSERT INTO usage_records VALUES (%s,%s,%s,%s,%s,%s,%s)", rows)
            raw.commit()
            rows = []
    elapsed = time.perf_counter() - t0
    raw.close()
    engine.dispose()
    return {"records_per_s": n / elapsed}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=100_000, help="records for the async and raw runs")
    p.add_argument("--sync-records", type=int, default=3_000)
    p.add_argument("--naive-records", type=int, default=3_000)
    p.add_argument("--data-dir", default=os.environ.get("AFS_ALPACA_EVAL_DIR", str(ROOT.parent / "shared/data/alpaca_eval")))
    p.add_argument("--postgres-url", default=os.environ.get("AFS_TEST_DATABASE_URL",
                                                            "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                   help="also measure PostgreSQL (empty string: skip)")
    p.add_argument("--postgres-records", type=int, default=30_000)
    args = p.parse_args()
    data = payloads(Path(args.data_dir))
    avg_bytes = statistics.mean(len(q.encode()) + len(r.encode()) for q, r, _ in data)
    print(f"payloads: {len(data)} real AlpacaEval (instruction, answer) pairs, {avg_bytes:.0f} bytes on average")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = bench_raw(tmp / "raw.db", data, args.records)
        naive = bench_naive(tmp / "naive.db", data, args.naive_records)
        a = bench_afs(tmp / "async.db", data, args.records, "async")
        a0 = bench_afs(tmp / "async-norollups.db", data, args.records, "async", rollups=False)
        m = bench_afs(tmp / "messages.db", data, args.records, "async", messages=True)
        s = bench_afs(tmp / "sync.db", data, args.sync_records, "sync")
        size = sum(f.stat().st_size for f in tmp.glob("async.db*"))
    print()
    print("| writer | caller p50 (us) | caller p99 (us) | committed records/s |")
    print("|---|---|---|---|")
    print(f"| afs_continuous async | {a['p50_us']:.1f} | {a['p99_us']:.1f} | {a['records_per_s']:,.0f} |")
    print(f"| afs_continuous async, hourly rollups off (internal switch) | {a0['p50_us']:.1f} | {a0['p99_us']:.1f} | "
          f"{a0['records_per_s']:,.0f} |")
    print(f"| afs_continuous async, messages= (4 turns) | {m['p50_us']:.1f} | {m['p99_us']:.1f} | "
          f"{m['records_per_s']:,.0f} |")
    print(f"| afs_continuous sync | {s['p50_us']:.1f} | {s['p99_us']:.1f} | {s['records_per_s']:,.0f} |")
    print(f"| raw sqlite3 executemany x1000 (limit) | - | - | {raw['records_per_s']:,.0f} |")
    print(f"| connect+commit per call (naive) | {naive['p50_us']:.1f} | {naive['p99_us']:.1f} | {naive['records_per_s']:,.0f} |")
    if args.postgres_url:
        pg = _pg_schema(args.postgres_url)
        if pg is not None:
            try:
                pa = bench_afs(pg[0], data, args.postgres_records, "async")
            finally:
                _pg_drop(args.postgres_url, pg[1])
            pg0 = _pg_schema(args.postgres_url)
            assert pg0 is not None
            try:
                pa0 = bench_afs(pg0[0], data, args.postgres_records, "async", rollups=False)
            finally:
                _pg_drop(args.postgres_url, pg0[1])
            pg2 = _pg_schema(args.postgres_url)
            assert pg2 is not None
            try:
                praw = bench_pg_raw(pg2[0], data, args.postgres_records)
            finally:
                _pg_drop(args.postgres_url, pg2[1])
            print(f"| afs_continuous async, PostgreSQL | {pa['p50_us']:.1f} | {pa['p99_us']:.1f} | {pa['records_per_s']:,.0f} |")
            print(f"| afs_continuous async, PostgreSQL, rollups off | {pa0['p50_us']:.1f} | {pa0['p99_us']:.1f} | "
                  f"{pa0['records_per_s']:,.0f} |")
            print(f"| raw psycopg executemany x1000, PostgreSQL (limit) | - | - | {praw['records_per_s']:,.0f} |")
            print(f"\nPostgreSQL: async throughput / raw executemany: {pa['records_per_s'] / praw['records_per_s']:.2f}x; "
                  f"with rollups / without: {pa['records_per_s'] / pa0['records_per_s']:.2f}x")
    print()
    print(f"async throughput / raw executemany: {a['records_per_s'] / raw['records_per_s']:.2f}x  (target >= 0.5x)")
    print(f"async throughput / naive baseline:  {a['records_per_s'] / naive['records_per_s']:.0f}x  (target >= 100x)")
    print(f"async caller p99: {a['p99_us']:.1f} us  (target <= 50 us)")
    print(f"cost of the hourly rollups: async throughput with / without them: "
          f"{a['records_per_s'] / a0['records_per_s']:.2f}x (caller p99 {a['p99_us']:.1f} vs {a0['p99_us']:.1f} us)")
    print(f"bytes on disk per record (async store, indexes included): {size / args.records:,.0f}")
    if m["dropped"] or m["committed"] != args.records:
        print(f"WARNING: messages= run committed {m['committed']} of {args.records}, dropped {m['dropped']}")
        return 1
    if a["dropped"] or a["committed"] != args.records:
        print(f"WARNING: committed {a['committed']} of {args.records}, dropped {a['dropped']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
