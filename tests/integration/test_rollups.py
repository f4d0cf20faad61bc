"""Hourly rollups equal the raw aggregates: counts exactly, float sums up to rounding, latency
quantiles within the histogram's stated relative error.

Random logs with late, repeated and changed feedback, feedback that arrives before its record,
several loggers on one store (threads and real processes), and a logging process killed with
``kill -9`` in the middle of its batches. Runs on SQLite and, with ``AFS_TEST_DATABASE_URL``, on
PostgreSQL (the ``store_url`` fixture).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from afs_continuous import ManualClock, Store, UsageLogger
from afs_continuous import _rollups
from afs_continuous._queries import latest_feedback
from afs_continuous.registry import ModelVersion, VersionStatus
from afs_continuous.store import UsageRecord

U = UsageRecord.__table__
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
MODELS = ("base", "base-ft1", "base-ft2")
INT_COLUMNS = ("calls", "n_quality", "n_latency", "feedback_up", "feedback_down", "feedback_neutral", "n_tokens",
               "prompt_tokens", "completion_tokens", "fallbacks")
FLOAT_COLUMNS = ("quality_sum", "quality_sumsq", "latency_sum")


def raw_aggregates(store: Store) -> dict[tuple[Any, ...], dict[str, Any]]:
    """What the rollups must hold, computed from the raw records and their latest votes."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    stmt = select(U.c.created_at, U.c.model, U.c.experiment_id, U.c.arm, U.c.latency_ms, U.c.quality_score,
                  U.c.prompt_tokens, U.c.completion_tokens, U.c.fallback_from, latest_feedback())
    with store.read() as conn:
        rows = conn.execute(stmt).all()
    for at, model, exp, arm, lat, q, p_tok, c_tok, fallback, vote in rows:
        key = (at.replace(minute=0, second=0, microsecond=0), model, exp or 0, arm or "")
        a = out.setdefault(key, {**{c: 0 for c in INT_COLUMNS}, **{c: 0.0 for c in FLOAT_COLUMNS},
                                 "latencies": []})
        a["calls"] += 1
        if q is not None:
            a["n_quality"] += 1
            a["quality_sum"] += q
            a["quality_sumsq"] += q * q
        if lat is not None:
            a["n_latency"] += 1
            a["latency_sum"] += lat
            a["latencies"].append(lat)
        if p_tok is not None or c_tok is not None:
            a["n_tokens"] += 1
            a["prompt_tokens"] += p_tok or 0
            a["completion_tokens"] += c_tok or 0
        if fallback is not None:
            a["fallbacks"] += 1
        if vote is not None:
            a[{1: "feedback_up", -1: "feedback_down", 0: "feedback_neutral"}[int(vote)]] += 1
    return out


def assert_rollups_equal_raw(store: Store) -> int:
    """Compare every rollup row with the raw aggregates; returns the number of records covered."""
    raw = raw_aggregates(store)
    with store.read() as conn:
        rows = _rollups.read_rows(conn)
    # a row whose records were all removed may stay with zero counts; it must be all zeros
    rolled = {(r["hour"], r["model"], r["experiment_id"], r["arm"]): r for r in rows
              if any(r[c] for c in INT_COLUMNS)}
    assert set(rolled) == set(raw), (sorted(set(rolled) ^ set(raw)))[:5]
    for key, expected in raw.items():
        got = rolled[key]
        for c in INT_COLUMNS:
            assert got[c] == expected[c], (key, c, got[c], expected[c])
        for c in FLOAT_COLUMNS:
            assert math.isclose(got[c], expected[c], rel_tol=1e-12, abs_tol=1e-9), (key, c, got[c], expected[c])
        hist: dict[int, int] = {}
        for lat in expected["latencies"]:
            b = _rollups.bucket_of(lat)
            hist[b] = hist.get(b, 0) + 1
        assert got["latency_hist"] == hist, key
        if expected["latencies"]:
            exact = np.quantile(np.array(expected["latencies"]), [0.5, 0.95, 0.99], method="inverted_cdf")
            for q, want in zip((0.5, 0.95, 0.99), exact):
                est = _rollups.quantile(got["latency_hist"], q)
                assert abs(est - want) <= _rollups.RELATIVE_ACCURACY * want + 1e-12, (key, q, est, want)
    return sum(a["calls"] for a in raw.values())


def test_latency_quantiles_are_within_the_stated_relative_error() -> None:
    rng = np.random.default_rng(7)
    for sample in (rng.lognormal(6.0, 1.2, 20_000), rng.uniform(0.0005, 5.0, 5_000), rng.exponential(800.0, 3)):
        hist: dict[int, int] = {}
        for x in sample:
            b = _rollups.bucket_of(float(x))
            hist[b] = hist.get(b, 0) + 1
        for q in (0.01, 0.5, 0.9, 0.95, 0.99, 1.0):
            exact = float(np.quantile(sample, q, method="inverted_cdf"))
            est = _rollups.quantile(hist, q)
            if exact < _rollups.MIN_LATENCY_MS:
                assert est == 0.0
            else:
                assert abs(est - exact) <= _rollups.RELATIVE_ACCURACY * exact * (1 + 1e-9), (q, est, exact)
    assert _rollups.quantile({}, 0.5) is None
    with pytest.raises(ValueError, match="q must be"):
        _rollups.quantile({1: 1}, 0.0)


def _version(name: str, exp: int | None, arm: str | None) -> ModelVersion:
    return ModelVersion(name=name, path=None, status=VersionStatus.CHAMPION, created_at=START,
                        experiment_id=exp, arm=arm)


def _random_log(rng: random.Random, logger: UsageLogger) -> str:
    model: Any = rng.choice(MODELS)
    if rng.random() < 0.5:
        exp = rng.choice((1, 2))
        model = _version(model, exp, rng.choice(("champion", "challenger")))
    has_tokens = rng.random() < 0.5
    return logger.log(
        f"question {rng.random()}", "answer", model,
        latency_ms=None if rng.random() < 0.1 else rng.lognormvariate(6.0, 1.0),
        quality_score=None if rng.random() < 0.2 else rng.random(),
        unit_id=f"u{rng.randrange(50)}",
        prompt_tokens=rng.randrange(1, 500) if has_tokens else None,
        completion_tokens=rng.randrange(1, 900) if has_tokens and rng.random() < 0.9 else None,
        fallback_from="base-ft9" if rng.random() < 0.05 else None,
    )


@pytest.mark.parametrize("seed", range(4))
def test_rollups_equal_raw_aggregates_with_late_repeated_and_early_feedback(store_url, seed) -> None:
    rng = random.Random(seed)
    clock = ManualClock(START)
    store = Store(store_url)
    # several loggers on one store, each with its own writer (as several processes would have);
    # one in sync durability; slow flushes make feedback often reach the store before its record
    loggers = [UsageLogger(store, clock=clock, durability="sync"),
               UsageLogger(store, clock=clock),
               UsageLogger(store, clock=clock)]
    for lg in loggers[1:]:
        lg.config = lg.config.model_copy(update={"flush_interval_s": 0.2, "batch_size": 64})
    ids: list[str] = []
    try:
        for _ in range(1500):
            r = rng.random()
            if r < 0.55 or not ids:
                ids.append(_random_log(rng, rng.choice(loggers)))
            elif r < 0.9:  # feedback on a recent record (often before its logger flushed) or an old one (late)
                rid = ids[-rng.randrange(1, min(len(ids), 20) + 1)] if rng.random() < 0.6 else rng.choice(ids)
                rng.choice(loggers).record_feedback(rid, rng.choice((1, 1, -1, 0)))
            elif r < 0.93:
                rng.choice(loggers).record_feedback(os.urandom(16).hex(), 1)  # a record that never comes
            else:
                clock.advance(timedelta(minutes=rng.choice((1, 7, 30, 65, 180))))
            if rng.random() < 0.02:
                rng.choice(loggers).flush()
        for lg in loggers:
            assert lg.flush()
        n = assert_rollups_equal_raw(store)
        assert n == len(ids)
        with store.read() as conn:
            hours = {r["hour"] for r in _rollups.read_rows(conn)}
        assert len(hours) > 10  # the clock moved across many hours; late feedback reached old hours
    finally:
        for lg in loggers:
            lg.close()
        store.dispose()


def _process_logs(url: str, seed: int, barrier: Any, ids_out: Any, others: Any) -> None:
    """One worker process: log records, publish their ids, vote on records of the other processes."""
    rng = random.Random(seed)
    clock = ManualClock(START + timedelta(minutes=seed * 17))
    logger = UsageLogger(url, clock=clock)
    barrier.wait()
    for i in range(400):
        rid = _random_log(rng, logger)
        ids_out.put(rid)
        if i % 3 == 0:
            try:
                other = others.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty from the manager
                other = rid
            logger.record_feedback(other, rng.choice((1, -1, 0)))
            if rng.random() < 0.3:
                logger.record_feedback(other, rng.choice((1, -1)))  # a changed or repeated vote
        if i % 50 == 0:
            clock.advance(timedelta(minutes=40))
    assert logger.close()


def test_rollups_equal_raw_aggregates_across_processes(store_url) -> None:
    Store(store_url).dispose()  # create the schema once
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        ids = manager.Queue()
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_process_logs, args=(store_url, seed, barrier, ids, ids)) for seed in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    store = Store(store_url)
    try:
        assert assert_rollups_equal_raw(store) == 1600
    finally:
        store.dispose()


KILL_SCRIPT = r"""
import os, random, sys
from afs_continuous import UsageLogger
url, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
logger = UsageLogger(url)
logger.config = logger.config.model_copy(update={"flush_interval_s": 0.01, "batch_size": 200})
ids = []
def one():
    rid = logger.log("q " + "x" * rng.randrange(2000), "a", rng.choice(["base", "ft"]),
                     latency_ms=rng.lognormvariate(5, 1), quality_score=rng.random(), unit_id=str(rng.randrange(99)))
    ids.append(rid)
    if rng.random() < 0.5:
        logger.record_feedback(rng.choice(ids), rng.choice([1, -1, 0]))
for _ in range(100):
    one()
assert logger.flush()
print("ready", flush=True)  # the writer is running; from here on it commits batch after batch
while True:
    one()
"""


def test_rollups_equal_raw_aggregates_after_kill_9_in_the_middle_of_batches(store_url, tmp_path: Path) -> None:
    Store(store_url).dispose()
    script = tmp_path / "logs_forever.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    store = Store(store_url)
    try:
        before = 0
        for seed, run_s in enumerate((0.3, 0.8, 1.5)):
            proc = subprocess.Popen([sys.executable, str(script), store_url, str(seed)], stdout=subprocess.PIPE,
                                    env=env, text=True)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(run_s)  # let it write: batches commit all the time, so the kill lands in one
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            n = assert_rollups_equal_raw(store)
            assert n >= before + 100
            before = n
    finally:
        store.dispose()


def test_the_migration_builds_rollups_for_an_existing_store(store_url) -> None:
    from alembic import command

    store = Store(store_url)
    clock = ManualClock(START)
    rng = random.Random(3)
    with UsageLogger(store, clock=clock) as logger:
        ids = []
        for i in range(300):
            ids.append(_random_log(rng, logger))
            if i % 2:
                logger.record_feedback(rng.choice(ids), rng.choice((1, -1, 0)))
            if i % 40 == 0:
                clock.advance(timedelta(hours=1))
    # back to the schema before the rollups existed, then upgrade: the migration builds them
    with store.write() as conn:
        command.downgrade(store._alembic_config(conn), "0006")
    assert store.schema_revision() == "0006"
    store.dispose()
    store = Store(store_url)
    try:
        assert store.schema_revision() == "0008"
        assert assert_rollups_equal_raw(store) == 300
    finally:
        store.dispose()


def test_db_rebuild_rollups_recomputes_them_from_the_records(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    rng = random.Random(5)
    clock = ManualClock(START)
    with UsageLogger(db, clock=clock) as logger:
        ids = [_random_log(rng, logger) for _ in range(200)]
        for rid in ids[::3]:
            logger.record_feedback(rid, 1)
    store = Store(str(db))
    with store.write() as conn:  # records written around the SDK: the rollups do not know them
        conn.execute(_rollups.R.delete())
    proc = subprocess.run([sys.executable, "-m", "afs_continuous.cli", "db", "rebuild-rollups", "--db", str(db)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "rollups rebuilt from 200 records"
    try:
        assert assert_rollups_equal_raw(store) == 200
    finally:
        store.dispose()


def test_rows_written_around_the_sdk_never_break_the_writer(tmp_path: Path) -> None:
    """Rows loaded by hand (an empty id, a date-only timestamp, a BLOB model name) next to the SDK's, and
    feedback batches of sizes that are not powers of two: the writer commits every event (the rollups'
    reads pad their id lists, parse what they find, and fall back to row-by-row reads)."""
    from afs_continuous._rows import USAGE_COLUMNS

    db = tmp_path / "usage.db"
    clock = ManualClock(START)
    with UsageLogger(db, clock=clock) as logger:
        ids = [logger.log(query=f"q{i}", response="r", model="m", latency_ms=5.0) for i in range(40)]
    store = Store(str(db))
    odd = {"": "2026-01-01 10:00:00.000000", "d": "2026-01-01", "b": "2026-01-01 10:00:00.000000"}
    with store.write() as conn:
        for rid, at in odd.items():
            row = dict.fromkeys(USAGE_COLUMNS)
            row.update(id=rid, created_at=at, query="q", response="r", model=b"m" if rid == "b" else "m",
                       truncated=0, query_chars=1, response_chars=1)
            conn.exec_driver_sql(f"INSERT INTO usage_records ({', '.join(USAGE_COLUMNS)}) VALUES "
                                 f"({', '.join('?' * len(USAGE_COLUMNS))})", tuple(row[c] for c in USAGE_COLUMNS))
    sent = 0
    try:
        with UsageLogger(store, clock=clock) as logger:
            for n in (1, 3, 5, 6, 7, 9):
                for rid in ids[:n]:
                    logger.record_feedback(rid, 1 if n % 2 else -1)
                logger.record_feedback("d", -1)
                if n > 5:
                    logger.record_feedback("b", 1)
                sent += n + 1 + (n > 5)
                assert logger.flush()
            stats = logger.writer_stats()
        assert stats["n_dropped"] == 0 and stats["n_write_errors"] == 0, stats
        with store.read() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM feedback_events").scalar() == sent
            # every record counts once with its latest vote: the first 9 +1 (the last batch), "d" -1 (its
            # date alone is the same hour)
            up, down = conn.exec_driver_sql("SELECT sum(feedback_up), sum(feedback_down) FROM usage_rollups WHERE "
                                            "model = 'm' AND hour = ?", (f"{START:%Y-%m-%d %H}:00:00.000000",)).one()
        assert (up, down) == (9, 1)
    finally:
        store.dispose()
