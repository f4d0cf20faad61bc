#!/usr/bin/env python3
"""The logger's writer on a store that already holds many records: what the schema costs per record.

A chat service's store grows without bound; the writer's cost per record must not grow with it. This
benchmark fills a fresh SQLite store with ``--records`` real AlpacaEval records (raw ``executemany``,
unit ids drawn from ``--units`` users, so that the store looks like months of traffic), then logs
``--batches`` batches of 240 records and 240 votes through :class:`afs_continuous.UsageLogger` (as a
service does: each vote on one of the last 1,000 records, from random users) and measures the CPU
time of the writer thread per record or vote (``time.thread_time`` around each batch's write).

Variants, each on its own store, in the same run:

- ``current``: the schema and page size of a new store (16 KiB pages, no index on ``unit_id``);
- ``with unit_id index``: the same plus the ``unit_id`` index that schema 0007 had and 0008 dropped
  (unit ids arrive in random order, so each record writes its index entry on a random page);
- ``4 KiB pages``: the current schema in SQLite's default page size.

Every variant runs ``--rounds`` times, in turn (the first measurement of a run is often slower,
whichever variant it is); it prints the writer's CPU per item of each run, the best per variant and
its ratio to ``current``.

Usage:
    python benchmarks/bench_store_scale.py [--records 1000000] [--units 200000] [--batches 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from afs_continuous import UsageLogger  # noqa: E402
from afs_continuous._rows import USAGE_COLUMNS, new_record_id  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "alpaca_eval" / "FuseChat-Llama-3.1-8B-Instruct.jsonl.gz"
BATCH = 240


def rows_of(path: Path) -> list[tuple[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [(r["instruction"], r["output"]) for r in map(json.loads, fh)]


def fill(db: Path, n: int, units: int, page_size: int, rows: list[tuple[str, str]], rng: random.Random) -> None:
    """A new store (the package's schema) with ``n`` records inserted by raw ``executemany``."""
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA page_size={page_size}")  # before the first table: a new file's page size
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE _page_size (x)")
    con.execute("DROP TABLE _page_size")
    con.close()
    UsageLogger(str(db)).close()  # creates the schema at its head revision (page size as set above)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    sql = f"INSERT INTO usage_records ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"
    for start in range(0, n, 10_000):
        batch = []
        for i in range(start, min(n, start + 10_000)):
            q, r = rows[i % len(rows)]
            batch.append((new_record_id(), "2026-11-01 10:00:00.000000", q, r, "base", 900.0, 0.8,
                          f"user-{rng.randrange(units)}", None, None, 0, len(q), len(r), None, None, None, None,
                          None, None))
        con.execute("BEGIN")
        con.executemany(sql, batch)
        con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def measure(db: Path, batches: int, units: int, rows: list[tuple[str, str]], rng: random.Random) -> float:
    """Writer CPU per record or vote, microseconds."""
    logger = UsageLogger(str(db))
    spent = [0.0, 0]
    write = logger._write

    def timed(records: list, events: list) -> None:
        t0 = time.thread_time()
        write(records, events)
        spent[0] += time.thread_time() - t0
        spent[1] += len(records) + len(events)

    ids: list[str] = []
    try:
        for b in range(batches + 5):
            if b == 5:  # five warm-up batches, then measure
                logger._write = timed
            for i in range(BATCH):
                q, r = rows[(b * BATCH + i) % len(rows)]
                ids.append(logger.log(query=q, response=r, model="base", unit_id=f"user-{rng.randrange(units)}",
                                      latency_ms=rng.uniform(200, 2000), quality_score=rng.random()))
                logger.record_feedback(rng.choice(ids[-1000:]), rng.choice((1, -1)))
            logger.flush()
    finally:
        logger.close()
    return spent[0] / max(1, spent[1]) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="records in the store before measuring")
    ap.add_argument("--units", type=int, default=200_000, help="distinct unit ids (users) the records come from")
    ap.add_argument("--batches", type=int, default=40, help=f"measured batches of {BATCH} records and {BATCH} votes")
    ap.add_argument("--rounds", type=int, default=2, help="runs of every variant (in turn); the best is reported")
    ap.add_argument("--reverse", action="store_true", help="run the variants in the reverse order")
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    rows = rows_of(Path(args.data))
    work = Path(tempfile.mkdtemp(prefix="afs-bench-scale-"))
    results: dict[str, list[float]] = {}
    try:
        variants = [("current", 16_384, False), ("with unit_id index", 16_384, True), ("4 KiB pages", 4_096, False)]
        if args.reverse:
            variants.reverse()
        for name, page_size, unit_index in variants * args.rounds:
            db = work / f"{name.replace(' ', '_')}.db"
            t0 = time.perf_counter()
            fill(db, args.records, args.units, page_size, rows, random.Random(1))
            if unit_index:
                con = sqlite3.connect(db)
                con.execute("CREATE INDEX ix_usage_unit_id ON usage_records (unit_id)")
                con.close()
            filled = time.perf_counter() - t0
            os.sync()  # the fill's dirty pages reach the disk before the measurement, not during it
            us = measure(db, args.batches, args.units, rows, random.Random(2))
            results.setdefault(name, []).append(us)
            size = os.path.getsize(db) / 2 ** 20
            print(f"{name}: filled {args.records:,} records in {filled:.0f} s ({size:,.0f} MB); writer CPU "
                  f"{us:.2f} us per record or vote", flush=True)
            for p in work.glob(f"{db.name}*"):
                p.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = min(results["current"])
    print(f"\n| store of {args.records:,} records ({args.units:,} users) | writer CPU per record or vote "
          f"(best of {args.rounds}) | vs current |\n|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {min(runs):.2f} us ({', '.join(f'{u:.2f}' for u in runs)}) | {min(runs) / base:.2f}x |")


if __name__ == "__main__":
    main()
