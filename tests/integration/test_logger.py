"""UsageLogger against real SQLite files: validation, durability, feedback joins, odd text, exit."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from afs_continuous import (
    DataGeneratorConfig,
    LoggerConfig,
    ManualClock,
    Store,
    StoreError,
    TrainingDataGenerator,
    UsageLogger,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "usage.db"


@pytest.fixture
def logger(db: Path, clock: ManualClock):
    lg = UsageLogger(db, clock=clock)
    yield lg
    lg.close()


def count_rows(db: Path, table: str = "usage_records") -> int:
    """Count rows with a separate plain sqlite3 connection (what another process sees)."""
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def export_all(store: Store, data_dir: Path, clock: ManualClock) -> list[str]:
    """Export every record as training JSONL (no filters) and return its raw lines."""
    cfg = DataGeneratorConfig(min_quality_score=None, min_user_feedback=None, include_existing_data=False,
                              deduplicate=False, min_samples=1)
    result = TrainingDataGenerator(store, cfg, data_dir, clock=clock).generate(after=None)
    assert result.output_path is not None
    raw = result.output_path.read_bytes()
    return raw.decode("utf-8").splitlines()  # strict: raises on invalid UTF-8


def test_log_returns_a_hex_id_at_once_and_flush_commits(logger: UsageLogger, db: Path) -> None:
    rid = logger.log("What is 65816 assembly?", "65816 is the CPU used in the SNES...", "nayru-v1", quality_score=0.85)
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert logger.flush(timeout_s=10) is True
    assert count_rows(db) == 1
    rec = logger.get_records()[0]
    assert (rec["id"], rec["model"], rec["quality_score"], rec["feedback"]) == (rid, "nayru-v1", 0.85, None)


def test_ids_are_unique(logger: UsageLogger) -> None:
    ids = {logger.log(f"q{i}", "r", "m") for i in range(500)}
    assert len(ids) == 500


@pytest.mark.parametrize("value", [-1, 0, 1])
def test_feedback_values_accepted(logger: UsageLogger, value: int) -> None:
    rid = logger.log("q", "r", "m")
    assert logger.record_feedback(rid, feedback=value) is True
    assert logger.get_records()[0]["feedback"] == value


@pytest.mark.parametrize("value", [7, 2, True, False, "up", "1", None, 0.5, 1.0])
def test_invalid_feedback_rejected(logger: UsageLogger, db: Path, value: Any) -> None:
    rid = logger.log("q", "r", "m")
    with pytest.raises(ValueError, match=r"feedback must be -1, 0 or 1 \(int\), got"):
        logger.record_feedback(rid, feedback=value)
    logger.flush()
    assert count_rows(db, "feedback_events") == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"quality_score": float("nan")}, "quality_score"),
        ({"quality_score": float("inf")}, "quality_score"),
        ({"quality_score": float("-inf")}, "quality_score"),
        ({"quality_score": -0.5}, "quality_score"),
        ({"quality_score": 1.5}, "quality_score"),
        ({"quality_score": "0.9"}, "quality_score"),
        ({"quality_score": True}, "quality_score"),
        ({"latency_ms": -5}, "latency_ms"),
        ({"latency_ms": float("nan")}, "latency_ms"),
        ({"latency_ms": float("inf")}, "latency_ms"),
    ],
)
def test_bad_numbers_rejected_naming_the_argument_and_nothing_stored(
    logger: UsageLogger, db: Path, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        logger.log("q", "r", "m", **kwargs)
    assert logger.get_statistics()["total"] == 0
    assert count_rows(db) == 0


def test_bad_model_and_text_types_rejected(logger: UsageLogger) -> None:
    with pytest.raises(ValueError, match="model must be a non-empty str"):
        logger.log("q", "r", "")
    with pytest.raises(ValueError, match="query must be str"):
        logger.log(None, "r", "m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="response must be str"):
        logger.log("q", 42, "m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="record_id must be a non-empty str"):
        logger.record_feedback("", 1)


def test_boundary_values_accepted(logger: UsageLogger) -> None:
    logger.log("q", "r", "m", quality_score=0, latency_ms=0)
    logger.log("q", "r", "m", quality_score=1, latency_ms=0.0)
    stats = logger.get_statistics()
    assert stats["total"] == 2 and stats["n_scored"] == 2
    assert stats["avg_quality_score"] == pytest.approx(0.5)


def test_feedback_from_another_logger_before_the_record_is_committed(db: Path, clock: ManualClock) -> None:
    """Process A logs; the record is still in A's queue when B records feedback; both join later."""
    a = UsageLogger(db, clock=clock)
    b = UsageLogger(db, clock=clock)
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock: A's writer waits
        rid = a.log("Explain WAL mode", "Readers never block writers...", "m", quality_score=0.9)
        assert b.record_feedback(rid, feedback=1) is False  # not logged by B; stored anyway
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert a.flush(timeout_s=30) and b.flush(timeout_s=30)
    rec = a.get_records()[0]
    assert (rec["id"], rec["feedback"]) == (rid, 1)
    assert a.get_statistics()["positive_feedback"] == 1
    # record_feedback never reads the store: A's record stays unknown to B (False), and the vote still joins it
    assert b.record_feedback(rid, feedback=-1) is False
    assert b.flush(timeout_s=30)
    assert a.get_records()[0]["feedback"] == -1
    a.close()
    b.close()


def test_feedback_for_a_record_of_another_logger_instance(db: Path, clock: ManualClock) -> None:
    a = UsageLogger(db, clock=clock)
    rid = a.log("q", "r", "m")
    a.close()
    b = UsageLogger(db, clock=clock, durability="sync")
    assert b.record_feedback(rid, -1) is False  # not logged by this logger (the store is not read); stored
    assert b.get_records()[0]["feedback"] == -1
    assert b.record_feedback("0" * 32, 1) is False  # unknown id: kept as an event, not an error
    stats = b.get_statistics()
    assert stats["with_feedback"] == 1  # the orphan event does not count as feedback on a record
    b.close()


def test_repeated_votes_latest_wins(logger: UsageLogger, clock: ManualClock) -> None:
    rid = logger.log("q", "r", "m")
    logger.record_feedback(rid, 1)
    clock.advance(minutes=1)
    logger.record_feedback(rid, -1)
    assert logger.get_records()[0]["feedback"] == -1
    stats = logger.get_statistics()
    assert (stats["with_feedback"], stats["positive_feedback"], stats["negative_feedback"]) == (1, 0, 1)
    logger.record_feedback(rid, 1)
    assert logger.get_records()[0]["feedback"] == 1


def test_sync_durability_commits_in_the_call(db: Path, clock: ManualClock) -> None:
    lg = UsageLogger(db, clock=clock, config=LoggerConfig(durability="sync"))
    rid = lg.log("q", "r", "m")
    assert count_rows(db) == 1  # no flush, another connection already sees it
    lg.record_feedback(rid, 1)
    assert count_rows(db, "feedback_events") == 1
    assert lg.writer_stats()["durability"] == "sync"
    lg.close()


ODD_TEXTS = {
    "bytes": (b"caf\xc3\xa9 and a bad byte \xff", "caf\u00e9 and a bad byte \ufffd"),
    "emoji": ("\U0001F600 \U0001F44D\U0001F3FD family \U0001F468\u200D\U0001F469\u200D\U0001F467", None),
    "lone_surrogate": ("half a pair: \ud83d end", "half a pair: \ufffd end"),
    "nul": ("before\x00after", "before\ufffdafter"),
    "rtl": ("\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u202eevil\u202c", None),
}


@pytest.mark.parametrize("kind", list(ODD_TEXTS))
def test_odd_text_stored_and_exported_as_valid_utf8(tmp_path: Path, db: Path, clock: ManualClock, kind: str) -> None:
    text, stored = ODD_TEXTS[kind]
    expected = stored if stored is not None else text
    lg = UsageLogger(db, clock=clock)
    lg.log(text, text, "m", quality_score=0.9)
    lg.flush()
    assert lg.writer_stats()["n_dropped"] == 0
    rec = lg.get_records()[0]
    assert rec["query"] == expected and rec["response"] == expected
    lines = export_all(lg.store, tmp_path / "data", clock)
    assert len(lines) == 1
    messages = json.loads(lines[0])["messages"]
    assert [m["content"] for m in messages] == [expected, expected]
    lg.close()


def test_over_long_response_is_truncated_flagged_and_never_trained(tmp_path: Path, db: Path, clock: ManualClock) -> None:
    lg = UsageLogger(db, clock=clock, config=LoggerConfig(max_text_chars=100))
    long_id = lg.log("short question", "x" * 5000, "m", quality_score=0.95)
    ok_id = lg.log("another question", "a fine answer", "m", quality_score=0.95)
    for rid in (long_id, ok_id):
        lg.record_feedback(rid, 1)
    recs = {r["id"]: r for r in lg.get_records()}
    long = recs[long_id]
    assert (long["truncated"], long["response_chars"], len(long["response"])) == (True, 5000, 100)
    assert (long["query_chars"], long["query"]) == (14, "short question")
    assert recs[ok_id]["truncated"] is False
    cfg = DataGeneratorConfig(include_existing_data=False, min_samples=1)
    result = TrainingDataGenerator(lg.store, cfg, tmp_path / "data", clock=clock).generate(after=None)
    assert result.counts["candidates"] == 2
    assert result.counts["after_quality"] == 1
    assert result.record_ids == [ok_id]
    lg.close()


def test_get_statistics_keys_and_values(logger: UsageLogger, clock: ManualClock) -> None:
    r1 = logger.log("q1", "r1", "a", quality_score=0.8, latency_ms=100)
    r2 = logger.log("q2", "r2", "a", quality_score=0.4, latency_ms=300)
    logger.log("q3", "r3", "b")
    clock.advance(hours=1)
    logger.log("q4", "r4", "b")
    logger.record_feedback(r1, 1)
    logger.record_feedback(r2, -1)
    stats = logger.get_statistics()
    expected_keys = {"total", "with_feedback", "positive_feedback", "negative_feedback", "feedback_rate",
                     "positive_rate", "n_scored", "avg_quality_score", "avg_latency_ms", "by_model", "first_at",
                     "last_at", "writer"}
    assert expected_keys <= set(stats)
    assert stats["total"] == 4
    assert stats["feedback_rate"] == pytest.approx(0.5)
    assert stats["avg_quality_score"] == pytest.approx(0.6)
    assert stats["avg_latency_ms"] == pytest.approx(200)
    assert stats["by_model"] == {"a": 2, "b": 2}
    assert stats["first_at"] == "2026-01-01T00:00:00+00:00"
    assert stats["last_at"] == "2026-01-01T01:00:00+00:00"
    assert stats["writer"]["n_committed"] == 4 and stats["writer"]["n_dropped"] == 0
    json.dumps(stats)  # JSON-serialisable, no NaN


def test_statistics_of_an_empty_store(logger: UsageLogger) -> None:
    stats = logger.get_statistics()
    # 0.0 (not None) so the quick start's dashboard line `{avg_quality_score:.3f}` runs on an empty store
    assert (stats["total"], stats["feedback_rate"], stats["avg_quality_score"], stats["n_scored"]) == (0, 0.0, 0.0, 0)


def test_close_is_idempotent_and_later_calls_fail_clearly(logger: UsageLogger, db: Path) -> None:
    logger.log("q", "r", "m")
    assert logger.close() is True
    assert logger.close() is True
    assert count_rows(db) == 1
    with pytest.raises(StoreError, match="this UsageLogger is closed"):
        logger.log("q", "r", "m")
    with pytest.raises(StoreError, match="this UsageLogger is closed"):
        logger.record_feedback("0" * 32, 1)
    assert logger.flush() is True


def test_context_manager_commits(db: Path, clock: ManualClock) -> None:
    with UsageLogger(db, clock=clock) as lg:
        for i in range(50):
            lg.log(f"q{i}", "r", "m")
    assert count_rows(db) == 50


def test_exit_without_close_commits_everything(tmp_path: Path, db: Path) -> None:
    n = 2000
    script = textwrap.dedent(f"""
        import sys
        from afs_continuous import LoggerConfig, UsageLogger
        lg = UsageLogger(sys.argv[1], config=LoggerConfig(flush_interval_s=30, batch_size=50_000))
        for i in range({n}):
            rid = lg.log(f"question {{i}}", "answer", "m", quality_score=0.5)
            if i % 10 == 0:
                lg.record_feedback(rid, 1)
        print("logged", flush=True)
        # no close(), no flush(): atexit must commit
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "logged"
    assert count_rows(db) == n
    assert count_rows(db, "feedback_events") == n // 10
    store = Store(str(db))
    assert store.integrity_check() == "ok"
    store.dispose()


def test_integrity_check_ok_after_many_writers(db: Path, clock: ManualClock) -> None:
    loggers = [UsageLogger(db, clock=clock) for _ in range(3)]
    for i in range(300):
        rid = loggers[i % 3].log(f"q{i}", "r", "m", quality_score=0.5)
        loggers[(i + 1) % 3].record_feedback(rid, 1)
    for lg in loggers:
        lg.close()
    assert count_rows(db) == 300
    store = Store(str(db))
    assert store.integrity_check() == "ok"
    store.dispose()


def test_not_a_database_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    path.write_bytes(b"this is not sqlite, it is a text file " * 200)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"cannot open the store at .*usage\.db.*left untouched"):
        UsageLogger(path)
    assert path.read_bytes() == before


def test_huge_responses_do_not_pile_up_in_memory(db: Path, clock: ManualClock) -> None:
    """20 distinct 5 MB responses queued while the store is locked: only the capped text is kept."""
    import tracemalloc

    lg = UsageLogger(db, clock=clock, config=LoggerConfig(max_text_chars=10_000))
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")  # the writer cannot commit: everything stays queued
    tracemalloc.start()
    try:
        for i in range(20):
            lg.log(f"q{i}", str(i) * 5_000_000, "m", quality_score=0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        holder.execute("COMMIT")
        holder.close()
    assert peak < 30_000_000, f"peak {peak / 1e6:.0f} MB for 20 x 5 MB responses"
    recs = lg.get_records(limit=20)
    assert len(recs) == 20
    assert all(r["truncated"] and len(r["response"]) == 10_000 for r in recs)
    assert {r["response_chars"] for r in recs} == {5_000_000, 10_000_000}
    lg.close()


def test_sync_write_failure_names_the_store_without_its_password(store_url: str, clock: ManualClock) -> None:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    if store_url.startswith("sqlite"):
        pytest.skip("a SQLite URL has no password; run with AFS_TEST_DATABASE_URL=postgresql+psycopg://...")
    url = make_url(store_url).set(password="s3cr3tpw").render_as_string(hide_password=False)
    store = Store(url)
    lg = UsageLogger(store, clock=clock, durability="sync")
    with store.write() as conn:
        conn.execute(text("DROP TABLE usage_records"))
    with pytest.raises(StoreError, match=r"could not write to the store postgresql\+psycopg://postgres:\*\*\*@") as info:
        lg.log("q", "r", "m")
    assert "s3cr3tpw" not in str(info.value)
    lg.close()
    store.dispose()


def test_close_closes_the_connections_of_a_store_it_opened(db: Path, clock: ManualClock) -> None:
    lg = UsageLogger(db, clock=clock)
    lg.log("q", "r", "m")
    assert lg.close()
    assert not Path(f"{db}-wal").exists()  # SQLite removes the WAL when its last connection closes


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"a": float("nan")}, r"metadata\['a'\]: nan is not a finite number"),
        ({"a": {"b": [1, float("inf")]}}, r"metadata\['a'\]\['b'\]\[1\]: inf is not a finite number"),
        ({"a": b"bytes"}, r"metadata\['a'\]: bytes is not a JSON value"),
        ({"a": object()}, r"metadata\['a'\]: object is not a JSON value"),
        ({"a": {1: "x"}}, r"metadata\['a'\]: key 1 is not a str"),
        ({2: "x"}, r"metadata: key 2 is not a str"),
        (5, r"metadata must be a mapping \(dict\) of str keys to JSON values, got int"),
        (b"x", r"metadata must be a mapping .*got bytes"),
        ([("a", 1)], r"metadata must be a mapping .*got list"),
    ],
)
def test_bad_metadata_rejected_naming_the_argument_and_the_key_path(logger: UsageLogger, db: Path, metadata: Any,
                                                                     message: str) -> None:
    with pytest.raises(ValueError, match=message):
        logger.log("q", "r", "m", metadata=metadata)
    assert logger.get_statistics()["total"] == 0


def test_metadata_is_stored_as_strict_json(logger: UsageLogger) -> None:
    from types import MappingProxyType

    meta = {"route": "/chat", "n": 3, "x": 0.5, "ok": True, "none": None, "tags": ["a", 1, [2.5]], "nested": {"k": "v"}}
    logger.log("q", "r", "m", metadata=MappingProxyType(meta))
    stored = logger.get_records()[0]["metadata_json"]

    def no_constants(name: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {name} stored")

    assert json.loads(stored, parse_constant=no_constants) == meta


@pytest.mark.parametrize("unit_id", [["u", 1], 1.5, b"user", True, {"u": 1}, ("u",)])
def test_unit_id_other_than_str_or_int_is_rejected(logger: UsageLogger, unit_id: Any) -> None:
    with pytest.raises(ValueError, match=r"^unit_id must be a str or an int \(user or conversation id\), got"):
        logger.log("q", "r", "m", unit_id=unit_id)
    assert logger.get_statistics()["total"] == 0


def test_unit_id_str_and_int_are_accepted(logger: UsageLogger) -> None:
    logger.log("q", "r", "m", unit_id="user-1")
    logger.log("q", "r", "m", unit_id=42)
    assert sorted(r["unit_id"] for r in logger.get_records()) == ["42", "user-1"]


# --------------------------------------------------------------------------------------------------
# drops every process can see: disk full, a write lock held at exit, a damaged store

def writer_drops(db: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT n_records, n_feedback, reason, host, pid FROM writer_drops ORDER BY id").fetchall()
    finally:
        con.close()


DISK_FULL_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from afs_continuous import LoggerConfig, UsageLogger
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
    lg = UsageLogger(sys.argv[1], config=LoggerConfig(flush_interval_s=0.05))
    for i in range(20):
        lg.log(f"before {i}", "answer", "m")
    assert lg.flush(30)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))  # the disk is full now
    ids = [lg.log(f"while full {i}", "answer", "m") for i in range(30)]
    for rid in ids[:5]:
        lg.record_feedback(rid, 1)
    flushed = lg.flush(60)
    during = lg.writer_stats()
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space returns
    for i in range(10):
        lg.log(f"after {i}", "answer", "m")
    assert lg.flush(30)
    print(json.dumps({"flushed": flushed, "during": during, "after": lg.writer_stats()}))
    lg.close()
""")


def test_disk_full_drops_are_counted_shown_and_writing_resumes(tmp_path: Path, db: Path) -> None:
    """Reliability row 12 (the file-size limit makes every write of the store fail as on a full disk)."""
    Store(str(db)).dispose()
    proc = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(db)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["flushed"] is True  # flush() returned, nothing raised into the caller
    assert (out["during"]["n_dropped_records"], out["during"]["n_dropped_feedback"]) == (30, 5)
    assert out["after"]["n_committed"] == 30
    # said loudly (logging unconfigured: Python's last-resort handler prints errors), with the store's path
    assert "afs_continuous is DROPPING records" in proc.stderr and str(db) in proc.stderr
    assert "while full" not in proc.stderr  # never the user's text
    assert "Traceback" not in proc.stderr
    store = Store(str(db))
    assert store.integrity_check() == "ok"
    store.dispose()
    assert count_rows(db) == 30
    drops = writer_drops(db)
    assert sum(d[0] for d in drops) == 30 and sum(d[1] for d in drops) == 5
    assert all(("full" in d[2] or "I/O" in d[2]) for d in drops)
    # shown by every process's status
    from afs_continuous import ContinuousLearningLoop, LoopConfig

    loop = ContinuousLearningLoop(LoopConfig(db_path=str(db), data_dir=str(tmp_path / "data")))
    summary = loop.get_status_summary()["drops"]
    loop.close()
    assert (summary["records"], summary["feedback"], summary["recent_records"], summary["processes"]) == (30, 5, 30, 1)
    assert "write failed" in summary["last_reason"]
    status = subprocess.run([sys.executable, "-m", "afs_continuous.cli", "status", "--db", str(db)],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "DROPPED (store)  30 records, 5 feedback events by 1 process(es)" in status.stdout


LOCKED_AT_EXIT_CHILD = textwrap.dedent("""
    import logging, sys, time
    from afs_continuous import UsageLogger
    logging.getLogger("afs_continuous").addHandler(logging.NullHandler())  # a library-style silent logger
    lg = UsageLogger(sys.argv[1])
    for i in range(100):
        lg.log(f"question {i}", "answer", "m")
    print("logged", flush=True)
    # exit: atexit flushes, but another process holds the write lock
""")


def test_write_lock_held_at_exit_reports_and_counts_the_lost_records(tmp_path: Path, db: Path) -> None:
    """Item: 0 of 100 acknowledged records written at exit, and no message. Now: an error line saying how many
    and why (also with only a NullHandler), and the next logger on the store counts them in writer_drops."""
    import os
    import stat
    import time as _time

    Store(str(db)).dispose()
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    try:
        t0 = _time.monotonic()
        proc = subprocess.run([sys.executable, "-c", LOCKED_AT_EXIT_CHILD, str(db)], capture_output=True, text=True,
                              timeout=60)
        took = _time.monotonic() - t0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 0 and proc.stdout.strip() == "logged", proc.stderr
    assert took < 60  # the exit deadline (flush interval + 10 s) plus a slow machine's start-up, never a hang
    assert "LOST 100 records and 0 feedback events at exit" in proc.stderr, proc.stderr
    assert "waiting for the write lock, held by another process" in proc.stderr and str(db) in proc.stderr
    spool = db.with_name(db.name + "-drops.jsonl")
    assert stat.S_IMODE(os.stat(spool).st_mode) == 0o600
    assert count_rows(db) == 0 and writer_drops(db) == []
    # the next logger (any process) records them at its first successful write
    with UsageLogger(db) as lg:
        lg.log("next process", "answer", "m")
    drops = writer_drops(db)
    assert len(drops) == 1 and drops[0][:2] == (100, 0)
    assert "not written before the process exited" in drops[0][2]
    assert not spool.exists() and not list(tmp_path.glob("usage.db-drops.jsonl.*"))
    with UsageLogger(db) as lg:  # stored once, however many loggers come later
        lg.log("and another", "answer", "m")
    assert len(writer_drops(db)) == 1


def damage_pages(db: Path, n_records: int = 3000) -> None:
    """A store with an intact header and damaged data pages (the table's last leaves overwritten)."""
    import random

    with UsageLogger(db) as lg:
        for i in range(n_records):
            lg.log(f"q{i}", "r" * 200, "m")
    lg.store.dispose()
    size = db.stat().st_size
    rng = random.Random(11)
    with db.open("r+b") as fh:
        for page in range(size // 4096 - 40, size // 4096 - 1):
            fh.seek(page * 4096)
            fh.write(rng.randbytes(4096))


def test_damaged_store_the_logger_says_loudly_that_it_drops_and_why(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    damage_pages(db)
    lg = UsageLogger(db)  # the header is intact: opening works
    with caplog.at_level("ERROR", logger="afs_continuous"):
        for i in range(50):
            lg.log(f"secret question {i}", "answer", "m")
        assert lg.flush(30) is True
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors, "the logger dropped records without a word"
    msg = errors[0]
    assert "DROPPING records" in msg and str(db) in msg
    assert "malformed" in msg and "damaged" in msg and ".recover" in msg and "restore a backup" in msg
    assert "secret question" not in msg
    assert lg.writer_stats()["n_dropped_records"] == 50
    lg.close()


def test_queue_full_drops_are_recorded_in_the_store_when_writing_resumes(tmp_path: Path, clock: ManualClock,
                                                                         make_loop, store_url: str) -> None:
    """SQLite and PostgreSQL: drops counted while the store is locked reach writer_drops at the next write."""
    from sqlalchemy import create_engine, text

    loop = make_loop(tmp_path, clock, logger_config={"queue_size": 1, "enqueue_timeout_s": 0, "flush_interval_s": 0.01})
    if store_url.startswith("sqlite"):
        holder: Any = sqlite3.connect(tmp_path / "usage.db", isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        release = lambda: (holder.execute("ROLLBACK"), holder.close())  # noqa: E731
    else:
        engine = create_engine(store_url)
        holder = engine.connect()
        trans = holder.begin()
        holder.execute(text("LOCK TABLE usage_records IN EXCLUSIVE MODE"))  # inserts wait
        release = lambda: (trans.rollback(), holder.close(), engine.dispose())  # noqa: E731
    try:
        for i in range(50):
            loop.log_usage(f"q{i}", "r", "base")
        assert loop.logger.writer_stats()["n_dropped_records"] >= 1
    finally:
        release()
    assert loop.logger.flush(30)
    dropped = loop.logger.writer_stats()["n_dropped_records"]
    assert loop.logger.get_statistics()["total"] == 50 - dropped
    drops = loop.get_status_summary()["drops"]
    assert (drops["records"], drops["feedback"], drops["events"], drops["processes"]) == (dropped, 0, 1, 1)
    assert drops["recent_records"] == dropped and "queue stayed full" in drops["last_reason"]
    assert drops["last_at"] == clock().isoformat()


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 2 MB tmpfs (root only; skipped where mounting is not permitted), unmounted afterwards."""
    import os

    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_a_tiny_tmpfs(tiny_fs: Path, clock: ManualClock) -> None:
    """Reliability row 12 on a real full file system (ENOSPC): no exception into the caller, drops counted and
    shown, the store consistent, writing resumes when space returns."""
    db = tiny_fs / "usage.db"
    lg = UsageLogger(db, clock=clock, config=LoggerConfig(flush_interval_s=0.02))
    for i in range(20):
        lg.log(f"before {i}", "answer", "m")
    assert lg.flush(30)
    filler = tiny_fs / "filler"
    with filler.open("wb", buffering=0) as fh:  # fill the file system (unbuffered: close() has nothing left to write)
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    ids = [lg.log(f"while full {i}", "x" * 2000, "m") for i in range(30)]
    for rid in ids[:5]:
        lg.record_feedback(rid, 1)
    assert lg.flush(60) is True  # returns; nothing raised into the caller
    stats = lg.writer_stats()
    assert (stats["n_dropped_records"], stats["n_dropped_feedback"]) == (30, 5)
    assert "full" in stats["last_error"]
    filler.unlink()  # space returns
    for i in range(10):
        lg.log(f"after {i}", "answer", "m")
    assert lg.flush(30)
    assert lg.get_statistics()["total"] == 30
    lg.close()
    lg.store.dispose()
    assert count_rows(db) == 30
    drops = writer_drops(db)
    assert (sum(d[0] for d in drops), sum(d[1] for d in drops)) == (30, 5)
    assert all("database or disk is full" in d[2] for d in drops)
    store = Store(str(db))
    assert store.integrity_check() == "ok"
    store.dispose()


# ------------------------------------------------------------------ conversations, tokens, feedback comments (issue 9)
CHAT = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What CPU does the SNES use?"},
    {"role": "assistant", "content": "A Ricoh 5A22, based on the 65C816."},
    {"role": "user", "content": [{"type": "text", "text": "How fast"}, {"type": "text", "text": "is it?"}]},
]


def test_a_whole_conversation_is_stored_with_its_tokens(logger: UsageLogger) -> None:
    rid = logger.log(messages=CHAT, response="Up to 3.58 MHz.", model="m", prompt_tokens=57, completion_tokens=9,
                     unit_id="conv-1")
    old = logger.log("plain question", "plain answer", "m")  # the seed's call, unchanged
    records = {r["id"]: r for r in logger.get_records()}
    rec = records[rid]
    assert rec["query"] == "How fast\nis it?" and rec["response"] == "Up to 3.58 MHz."
    assert json.loads(rec["messages_json"]) == [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "What CPU does the SNES use?"},
        {"role": "assistant", "content": "A Ricoh 5A22, based on the 65C816."},
        {"role": "user", "content": "How fast\nis it?"},
    ]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["truncated"]) == (57, 9, False)
    assert records[old]["messages_json"] is None and records[old]["prompt_tokens"] is None


@pytest.mark.parametrize("kwargs, match", [
    ({"messages": CHAT, "query": "q"}, "either query= .* or messages="),
    ({"messages": []}, r"messages must be a non-empty list"),
    ({"messages": "hi"}, r"messages must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "a"}, "b"]}, r"messages\[1\] must be a dict"),
    ({"messages": [{"role": "human", "content": "a"}]}, r"messages\[0\]\.role must be one of .*got 'human'"),
    ({"messages": [{"role": "user", "content": 5}]}, r"messages\[0\]\.content must be a str or a list of text parts"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     r"messages\[0\]\.content\[0\] must be a text part"),
    ({"messages": CHAT[:3]}, r"must end with the user turn.*messages\[2\]\.role is 'assistant'"),
    ({"messages": CHAT, "prompt_tokens": -1}, r"prompt_tokens must be an int >= 0"),
    ({"messages": CHAT, "completion_tokens": 2.5}, r"completion_tokens must be an int >= 0"),
])
def test_bad_conversations_and_token_counts_are_refused(logger: UsageLogger, db: Path, kwargs: dict[str, Any],
                                                        match: str) -> None:
    with pytest.raises(ValueError, match=match):
        logger.log(response="r", model="m", **kwargs)
    assert logger.flush() and count_rows(db) == 0


def test_a_long_turn_is_capped_and_the_record_never_trained_on(db: Path, clock: ManualClock) -> None:
    with UsageLogger(db, clock=clock, config=LoggerConfig(max_text_chars=100)) as lg:
        rid = lg.log(messages=[{"role": "system", "content": "s" * 500}, {"role": "user", "content": "q"}],
                     response="r", model="m")
        rec = {r["id"]: r for r in lg.get_records()}[rid]
    assert rec["truncated"] is True and json.loads(rec["messages_json"])[0]["content"] == "s" * 100


def test_feedback_comments_are_stored(logger: UsageLogger, db: Path) -> None:
    rid = logger.log("q", "r", "m")
    assert logger.record_feedback(rid, -1, comment="Wrong: the 5A22 runs at 3.58 MHz at most.") is True
    logger.record_feedback(rid, 1)
    with pytest.raises(ValueError, match="comment must be None or a str"):
        logger.record_feedback(rid, 1, comment=42)  # type: ignore[arg-type]
    assert logger.flush()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT feedback, comment FROM feedback_events ORDER BY id").fetchall()
    assert rows == [(-1, "Wrong: the 5A22 runs at 3.58 MHz at most."), (1, None)]


def test_route_then_log_records_the_exposure(tmp_path: Path, clock: ManualClock, make_loop) -> None:
    loop = make_loop(tmp_path, clock)
    loop.registry.register("cand", reason="candidate")
    exp = loop.experiments.start("base", "cand", traffic_fraction=0.5, seed="exposure")
    version = loop.route("user-1")
    assert version.experiment_id == exp.id and version.arm in ("champion", "challenger")
    assert version.name == ("cand" if version.arm == "challenger" else "base")
    by_version = loop.log_usage(messages=CHAT, response="r", model=version)
    by_name = loop.log_usage("q", "r", model=version.name, unit_id="user-1")  # from route()'s per-unit map
    other = "base" if version.name == "cand" else "cand"
    wrong_name = loop.log_usage("q", "r", model=other, unit_id="user-1")  # not what route() said: no exposure
    never_routed = loop.log_usage("q", "r", model=version.name, unit_id="user-2")
    loop.logger.flush()
    records = {r["id"]: r for r in loop.logger.get_records()}
    assert (records[by_version]["experiment_id"], records[by_version]["arm"]) == (exp.id, version.arm)
    assert (records[by_name]["experiment_id"], records[by_name]["arm"]) == (exp.id, version.arm)
    assert records[wrong_name]["experiment_id"] is None and records[never_routed]["experiment_id"] is None
    with pytest.raises(ValueError, match="model must be the ModelVersion returned by route"):
        loop.log_usage("q", "r", model=42)  # type: ignore[arg-type]


def test_the_per_unit_exposure_map_is_bounded(tmp_path: Path, clock: ManualClock, make_loop) -> None:
    from afs_continuous._exposure import MAX_UNITS

    loop = make_loop(tmp_path, clock)
    loop.registry.register("cand", reason="candidate")
    loop.experiments.start("base", "cand", traffic_fraction=0.5)
    for i in range(MAX_UNITS + 500):
        loop.route(f"user-{i}")
    assert len(loop._exposures) == MAX_UNITS
    assert "user-0" not in loop._exposures and f"user-{MAX_UNITS + 499}" in loop._exposures
