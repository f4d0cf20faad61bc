#!/usr/bin/env python3
"""Cost of ``get_status_summary()`` on a large store, against a plain full-table aggregate in the same run.

Builds stores of ``--records`` usage records (default 1,000,000 and 10,000,000) with 0.1
feedback events per record -- fast, with raw ``sqlite3`` ``executemany`` into the
tables (and indexes) that :class:`afs_continuous.store.Store` creates, in the column
formats SQLAlchemy uses on SQLite (naive UTC text timestamps with microseconds, 0/1
booleans, 32-hex content hashes from ``afs_continuous._text.content_hash``). Texts are
real AlpacaEval instructions and answers cut to ``--payload-bytes`` (default 200, to keep
the build fast; a separate 2 KB sample measures bytes on disk per record at realistic size).

The hourly rollups of such a bulk-loaded store are built by the code of the migration that adds
them to existing stores (its time is printed). Then, for each size, it times after one warm-up
``--runs`` (>= 5) calls of ``ContinuousLearningLoop(LoopConfig(db_path=...)).get_status_summary()``
(before and after the daemon's hourly check) and, in the same run, the full-scan baseline
``SELECT count(*), avg(quality_score), avg(latency_ms) FROM usage_records`` plus a naive feedback
join (what a status that scans the usage table costs); prints p50s and ratios as a markdown table,
how flat the status cost is in N, and the statements of one status call, slowest first.

Target: status p50 <= 50 ms at 1 M and at 10 M records, flat in N.

Usage:
    python benchmarks/bench_status.py [--records 1000000,10000000] [--cache-dir DIR] [--runs 7]
                                      [--payload-bytes 200] [--feedback-fraction 0.1] [--data-dir DIR]

``--cache-dir DIR`` keeps the stores there (``usage-<N>.db``; the 10 M store is about 4 GB and
takes minutes to build) and reuses them in later runs; without it they are built in a temporary
directory and deleted at the end.
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
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event  # noqa: E402

from afs_continuous import ContinuousLearningLoop, LoopConfig, Store  # noqa: E402
from afs_continuous._rollups import rebuild as rebuild_rollups  # noqa: E402
from afs_continuous._text import content_hash  # noqa: E402

MODELS = ("base", "base-ft1", "base-ft2")  # three versions of one model, traffic shifting over time
N_UNITS = 50_000
DAYS = 30
CHUNK = 50_000

BASELINE_SQL = "SELECT count(*), avg(quality_score), avg(latency_ms) FROM usage_records"
NAIVE_FEEDBACK_SQL = (
    "SELECT count(DISTINCT f.record_id), sum(f.feedback > 0), sum(f.feedback < 0) "
    "FROM feedback_events f JOIN usage_records u ON u.id = f.record_id"
)


# ------------------------------------------------------------------------------------------- data


def default_data_dir() -> Path:
    override = os.environ.get("AFS_ALPACA_EVAL_DIR")
    return Path(override) if override else ROOT.parent / "shared" / "data" / "alpaca_eval"


def load_texts(data_dir: Path) -> list[tuple[str, str, float]]:
    """(instruction, output, quality) of every AlpacaEval row; synthetic text when the data is missing."""
    rows: list[tuple[str, str, float]] = []
    for path in sorted(data_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    r = json.loads(line)
                    rows.append((r["instruction"], r["output"], min(1.0, max(0.0, float(r["preference"]) - 1.0))))
    if not rows:
        print(f"note: no AlpacaEval files in {data_dir}; using synthetic text", file=sys.stderr)
        rng = random.Random(0)
        words = "the model answer query latency quality user request token adapter train data".split()
        rows = [(" ".join(rng.choices(words, k=40)), " ".join(rng.choices(words, k=300)), rng.random())
                for _ in range(2000)]
    return rows


def cut(query: str, response: str, payload_bytes: int, i: int) -> tuple[str, str]:
    """A unique (query, response) pair of about ``payload_bytes`` characters built from real text
    (``payload_bytes <= 0``: the whole real texts, of varying length)."""
    prefix = f"[{i}] "
    if payload_bytes <= 0:
        return prefix + query, response
    q_len = max(16, payload_bytes // 4)
    q = (prefix + query)[:q_len]
    r_len = max(16, payload_bytes - len(q))
    r = response
    while len(r) < r_len:
        r = r + " " + response
    return q, r[:r_len]


def ts(value: datetime) -> str:
    """SQLAlchemy's SQLite DateTime text form: naive UTC with microseconds."""
    return f"{value.astimezone(timezone.utc).replace(tzinfo=None):%Y-%m-%d %H:%M:%S.%f}"


def usage_rows(n: int, texts: list[tuple[str, str, float]], payload_bytes: int, hash_fraction: float,
               start: datetime, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    """Usage records spread evenly over ``DAYS`` days from ``start``, in creation order."""
    span_us = DAYS * 86_400 * 1_000_000
    for i in range(n):
        created = start + timedelta(microseconds=span_us * i // n + rng.randrange(1000))
        frac = i / n  # traffic moves from v1 to the fine-tunes over the month
        model = MODELS[0] if rng.random() > frac else MODELS[1 + (rng.random() < frac * 0.5)]
        query, response, quality = texts[rng.randrange(len(texts))]
        q, r = cut(query, response, payload_bytes, i)
        score = None if rng.random() < 0.1 else round(min(1.0, max(0.0, quality + rng.gauss(0, 0.05))), 4)
        latency = round(rng.lognormvariate(6.5, 0.5), 1)  # ~700 ms median
        unit = f"user-{rng.randrange(N_UNITS)}"
        meta = json.dumps({"route": "chat", "tokens": len(r) // 4}) if i % 10 == 0 else None
        chash = content_hash(q, r) if rng.random() < hash_fraction else None
        yield (uuid.uuid4().hex, ts(created), q, r, model, latency, score, unit, meta, chash, 0, len(q), len(r))


USAGE_INSERT = ("INSERT INTO usage_records (id, created_at, query, response, model, latency_ms, quality_score, unit_id, "
                "metadata_json, content_hash, truncated, query_chars, response_chars) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
FEEDBACK_INSERT = "INSERT INTO feedback_events (record_id, feedback, created_at) VALUES (?, ?, ?)"


def build(path: Path, n_records: int, n_feedback: int, payload_bytes: int, hash_fraction: float,
          texts: list[tuple[str, str, float]], seed: int) -> dict[str, float]:
    """Create the store with the package's schema, then bulk-load it with raw sqlite3."""
    t0 = time.perf_counter()
    Store(str(path)).dispose()  # the package's own tables and indexes
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")  # a build, not what is measured
    con.execute("PRAGMA cache_size=-1000000")
    # Drop the secondary indexes for the load and recreate them with their exact original SQL.
    indexes = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                          "AND tbl_name IN ('usage_records', 'feedback_events')").fetchall()
    for name, _ in indexes:
        con.execute(f'DROP INDEX "{name}"')
    rng = random.Random(seed)
    start = datetime.now(timezone.utc) - timedelta(days=DAYS)
    ids: list[str] = []
    created: list[str] = []
    rows = usage_rows(n_records, texts, payload_bytes, hash_fraction, start, rng)
    while True:
        chunk = [r for _, r in zip(range(CHUNK), rows)]
        if not chunk:
            break
        con.execute("BEGIN")
        con.executemany(USAGE_INSERT, chunk)
        con.execute("COMMIT")
        ids += [r[0] for r in chunk]
        created += [r[1] for r in chunk]
    t_usage = time.perf_counter()
    # Feedback: ~90% on distinct records (recent traffic more likely), ~10% second votes that
    # change the first (latest wins), and a few for ids that never arrived.
    events: list[tuple[str, int, str]] = []
    n_second = n_feedback // 10
    n_unknown = n_feedback // 100
    n_first = n_feedback - n_second - n_unknown
    picked = sorted({min(n_records - 1, int(n_records * (1 - rng.random() ** 2))) for _ in range(n_first * 2)})
    picked = rng.sample(picked, min(n_first, len(picked)))
    picked.sort()
    for k in picked:
        events.append((ids[k], 1 if rng.random() < 0.7 else -1, created[k]))
    for k in rng.sample(picked, min(n_second, len(picked))):
        events.append((ids[k], -1, created[k]))
    for _ in range(n_unknown):
        events.append((uuid.uuid4().hex, 1, created[-1]))
    events.sort(key=lambda e: e[2])
    con.execute("BEGIN")
    con.executemany(FEEDBACK_INSERT, events)
    con.execute("COMMIT")
    t_feedback = time.perf_counter()
    for _, sql in indexes:
        con.execute(sql)
    # No ANALYZE: a store written by the package has no sqlite_stat1, so the planner sees what it sees in production.
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    t_index = time.perf_counter()
    # The hourly rollups, built by the code of the migration that adds them to an existing store
    # (the writer keeps them up to date record by record; a bulk load bypasses the writer).
    store = Store(str(path))
    try:
        with store.write() as conn:
            rebuild_rollups(conn)
    finally:
        store.dispose()
    t_end = time.perf_counter()
    return {"usage_s": t_usage - t0, "feedback_s": t_feedback - t_usage, "index_s": t_index - t_feedback,
            "rollups_s": t_end - t_index, "total_s": t_end - t0, "n_feedback": len(events)}


def bytes_per_record(path: Path) -> float:
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        n = con.execute("SELECT count(*) FROM usage_records").fetchone()[0]
    finally:
        con.close()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return size / max(n, 1)


# ------------------------------------------------------------------------------------------- timing


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def time_status(loop: ContinuousLearningLoop, runs: int) -> list[float]:
    loop.get_status_summary()  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        loop.get_status_summary()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def time_baseline(path: Path, runs: int) -> tuple[list[float], list[float]]:
    con = sqlite3.connect(path)
    try:
        con.execute(BASELINE_SQL).fetchall()
        con.execute(NAIVE_FEEDBACK_SQL).fetchall()  # warm-up
        agg, join = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            con.execute(BASELINE_SQL).fetchall()
            t1 = time.perf_counter()
            con.execute(NAIVE_FEEDBACK_SQL).fetchall()
            t2 = time.perf_counter()
            agg.append((t1 - t0) * 1000)
            join.append((t2 - t1) * 1000)
        return agg, join
    finally:
        con.close()


def profile_status(loop: ContinuousLearningLoop) -> list[tuple[float, str, Any]]:
    """Every statement one status call runs, with its duration (SQLAlchemy cursor events)."""
    engine = loop.store.engine
    timings: list[tuple[float, str, Any]] = []
    started: dict[int, float] = {}

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        started[id(cursor)] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        # the rows are fetched after this event; for the aggregates measured here that is one row
        timings.append(((time.perf_counter() - started.pop(id(cursor), time.perf_counter())) * 1000,
                        statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        loop.get_status_summary()
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
    return sorted(timings, key=lambda t: -t[0])


# ------------------------------------------------------------------------------------------- main


def open_or_build(path: Path, n_records: int, n_feedback: int, args: argparse.Namespace,
                  texts: list[tuple[str, str, float]]) -> None:
    existing = 0
    if path.exists():
        con = sqlite3.connect(path)
        try:
            existing = con.execute("SELECT count(*) FROM usage_records").fetchone()[0]
        except sqlite3.DatabaseError:
            existing = 0
        finally:
            con.close()
    if existing:
        print(f"reusing {path} ({existing:,} usage records)", flush=True)
        Store(str(path)).dispose()  # an older cached store is upgraded (the migration builds its rollups)
        return
    print(f"building {n_records:,} records + {n_feedback:,} feedback events in {path} ...", flush=True)
    built = build(path, n_records, n_feedback, args.payload_bytes, args.hash_fraction, texts, args.seed)
    print(f"built in {built['total_s']:.1f} s (usage {built['usage_s']:.1f} s, feedback {built['feedback_s']:.1f} s, "
          f"indexes {built['index_s']:.1f} s, rollups from the records {built['rollups_s']:.1f} s)", flush=True)


def measure(path: Path, tmp: Path, runs: int) -> dict[str, Any]:
    """Status timings (cold, then after the daemon's hourly check) and the full-scan baseline, one store."""
    # A daemon has run its hourly check (a threshold it cannot reach, so it only counts): the status
    # then reports the counted eligible samples instead of recounting. The cold case is measured too.
    loop = ContinuousLearningLoop(LoopConfig(db_path=str(path), data_dir=str(tmp / "data"),
                                             trigger_config={"min_new_samples": 10**12}))
    try:
        cold = time_status(loop, runs)
        t0 = time.perf_counter()
        loop.run_iteration()
        check_ms = (time.perf_counter() - t0) * 1000
        status = time_status(loop, runs)
        agg, join = time_baseline(path, runs)
        summary = loop.get_status_summary()
        profile = profile_status(loop)
    finally:
        loop.close()
    return {"cold": cold, "status": status, "check_ms": check_ms, "agg": agg, "join": join, "summary": summary,
            "profile": profile, "bytes_per_record": bytes_per_record(path)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=str, default="1000000,10000000",
                    help="comma-separated store sizes in usage records (default 1000000,10000000)")
    ap.add_argument("--feedback-fraction", type=float, default=0.1,
                    help="feedback events per record (default 0.1)")
    ap.add_argument("--payload-bytes", type=int, default=200, help="query + response characters per record (default 200)")
    ap.add_argument("--sample-records", type=int, default=20_000,
                    help="records of the 2 KB sample that measures bytes on disk per record (0: skip)")
    ap.add_argument("--hash-fraction", type=float, default=1.0,
                    help="fraction of records with content_hash filled (the writer leaves it NULL for the daemon)")
    ap.add_argument("--runs", type=int, default=7, help="timed status calls after one warm-up (>= 5)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="keep the stores here (usage-<N>.db) and reuse them in later runs; never deleted")
    ap.add_argument("--data-dir", type=Path, default=None, help="AlpacaEval *.jsonl.gz folder (AFS_ALPACA_EVAL_DIR)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.runs < 5:
        ap.error("--runs must be >= 5")
    sizes = [int(x.replace("_", "")) for x in args.records.split(",") if x.strip()]
    texts = load_texts(args.data_dir or default_data_dir())

    tmp = Path(tempfile.mkdtemp(prefix="afs-bench-status-"))
    results: list[tuple[int, dict[str, Any]]] = []
    try:
        for n_records in sizes:
            folder = args.cache_dir.expanduser().absolute() if args.cache_dir else tmp
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"usage-{n_records}.db"
            open_or_build(path, n_records, int(n_records * args.feedback_fraction), args, texts)
            results.append((n_records, measure(path, tmp, args.runs)))
            shutil.rmtree(tmp / "data", ignore_errors=True)
            if args.cache_dir is None:
                for p in tmp.glob(path.name + "*"):
                    p.unlink()

        samples: list[tuple[str, float, float]] = []  # (what, mean payload chars, bytes on disk per record)
        if args.sample_records:
            for what, payload in (("real AlpacaEval texts, whole", 0), ("every record exactly 2,048 chars", 2048)):
                sample = tmp / "sample-2kb.db"
                build(sample, args.sample_records, args.sample_records // 10, payload, args.hash_fraction, texts,
                      args.seed + 1)
                con = sqlite3.connect(sample)
                mean_chars = con.execute("SELECT avg(query_chars + response_chars) FROM usage_records").fetchone()[0]
                con.close()
                samples.append((what, mean_chars, bytes_per_record(sample)))
                for p in tmp.glob("sample-2kb.db*"):
                    p.unlink()

        print()
        print(f"## get_status_summary() (p50 of {args.runs} runs after one warm-up; payload {args.payload_bytes} B; "
              "status reads the hourly rollups)")
        print()
        print("| records | with feedback | status p50 ms (min-max) | status before any daemon check | "
              "daemon's hourly check (once) | full-scan baseline p50 ms | baseline / status |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n_records, r in results:
            u = r["summary"]["usage_stats"]
            s50 = pct(r["status"], 0.5)
            base50 = pct(r["agg"], 0.5) + pct(r["join"], 0.5)
            print(f"| {u['total']:,} | {u['with_feedback']:,} | {s50:.1f} ({min(r['status']):.1f}-"
                  f"{max(r['status']):.1f}) | {pct(r['cold'], 0.5):.0f} | {r['check_ms']:.0f} | {base50:.0f} | "
                  f"**{base50 / s50:.1f}x** |")
        print()
        print(f"- baseline: `{BASELINE_SQL}` plus a naive feedback join (`{NAIVE_FEEDBACK_SQL}`): what a status "
              "that scans the usage table costs")
        for n_records, r in results:
            s50 = pct(r["status"], 0.5)
            print(f"- target status p50 <= 50 ms at {n_records:,} records: **{'met' if s50 <= 50 else 'NOT met'}** "
                  f"({s50:.1f} ms)")
        if len(results) >= 2:
            (n0, r0), (n1, r1) = results[0], results[-1]
            print(f"- flat in N: status p50 at {n1:,} / at {n0:,} = **{pct(r1['status'], 0.5) / pct(r0['status'], 0.5):.2f}x** "
                  f"for {n1 / n0:.0f}x the records (the baseline: "
                  f"{(pct(r1['agg'], 0.5) + pct(r1['join'], 0.5)) / (pct(r0['agg'], 0.5) + pct(r0['join'], 0.5)):.1f}x)")
        for n_records, r in results:
            print(f"- bytes on disk per record at {n_records:,} records (file + WAL after checkpoint, indexes and "
                  f"rollups included): {r['bytes_per_record']:,.0f} B at {args.payload_bytes} B payload")
        for what, mean_chars, sbpr in samples:
            print(f"- 2 KB sample, {args.sample_records:,} records, {what} (mean {mean_chars:,.0f} chars): "
                  f"{sbpr:,.0f} B on disk per record (quickstart claim: ~1 KB per query)")
        n_records, r = results[-1]
        print()
        print(f"### statements of one status call at {n_records:,} records, slowest first")
        print()
        print("| ms | statement |")
        print("|---:|---|")
        for ms, stmt, _ in r["profile"][:8]:
            print(f"| {ms:.1f} | `{' '.join(stmt.split())[:220]}` |")
        print(f"| {sum(t[0] for t in r['profile']):.1f} | total of {len(r['profile'])} statements |")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
