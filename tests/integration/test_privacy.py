"""Privacy: ``forget`` removes every trace of a unit (store file bytes, files under data_dir, PostgreSQL
tables), also while another process logs; retention deletes exactly the expired rows and keeps what the
running experiment needs; the rollups stay equal to the raw aggregates after a forget."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from afs_continuous import _rollups
from afs_continuous._privacy import AUDIT_KEY, TOMBSTONE_KEY, unit_hash
from afs_continuous._retention import apply_retention
from afs_continuous.store import FeedbackEvent, TrainingSample, UsageRecord

from conftest import quality_of

U = UsageRecord.__table__
F = FeedbackEvent.__table__
T = TrainingSample.__table__
REPO = Path(__file__).resolve().parents[2]
_NO_TRIGGERS = {"min_new_samples": None, "schedule_interval_hours": None, "quality_drop_threshold": None}


def _raw_aggregates(conn: Any) -> dict[str, Any]:
    """The rollup sums computed from the raw tables (latest vote per record)."""
    row = conn.execute(select(func.count(), func.count(U.c.quality_score), func.coalesce(func.sum(U.c.quality_score), 0),
                              func.count(U.c.latency_ms), func.coalesce(func.sum(U.c.latency_ms), 0))).one()
    latest = select(F.c.record_id, func.max(F.c.id).label("mid")).group_by(F.c.record_id).subquery()
    votes = conn.execute(select(F.c.feedback, func.count()).select_from(F.join(latest, F.c.id == latest.c.mid))
                         .join(U, U.c.id == F.c.record_id).group_by(F.c.feedback)).all()
    v = {int(k): n for k, n in votes}
    return {"calls": row[0], "n_quality": row[1], "quality_sum": float(row[2]), "n_latency": row[3],
            "latency_sum": float(row[4]), "feedback_up": v.get(1, 0), "feedback_down": v.get(-1, 0),
            "feedback_neutral": v.get(0, 0)}


def _assert_rollups_match(loop: Any) -> dict[str, Any]:
    with loop.store.read() as conn:
        raw = _raw_aggregates(conn)
        tot = _rollups.totals(conn)
    for key in ("calls", "n_quality", "n_latency", "feedback_up", "feedback_down", "feedback_neutral"):
        assert tot[key] == raw[key], key
    for key in ("quality_sum", "latency_sum"):
        assert tot[key] == pytest.approx(raw[key], rel=1e-9, abs=1e-9), key
    return tot


def _file_texts(root: Path) -> list[tuple[Path, bytes]]:
    """Every file under ``root`` as bytes; parquet files decoded (their pages are compressed)."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            out.append((path, json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False).encode()))
        else:
            out.append((path, path.read_bytes()))
    return out


def _store_bytes(loop: Any) -> list[tuple[Path, bytes]]:
    path = loop.store.path
    return [(p, p.read_bytes()) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def _needles(texts: list[str]) -> list[bytes]:
    """Distinctive pieces of each text (60 characters from the middle), as stored (UTF-8)."""
    out = []
    for t in texts:
        mid = len(t) // 2
        piece = t[max(0, mid - 30):mid + 30]
        if len(piece) >= 20:
            out.append(piece.encode("utf-8"))
    return out


def _found(blobs: list[tuple[Path, bytes]], needles: list[bytes]) -> list[str]:
    return [f"{p.name}: {n[:30]!r}" for p, b in blobs for n in needles if n in b]


def _pg_rows_with(loop: Any, texts: list[str]) -> int:
    """Rows of any text column of the store holding one of ``texts`` (server databases)."""
    n = 0
    with loop.store.read() as conn:
        for t in texts:
            like = f"%{t[len(t) // 2 - 10:len(t) // 2 + 10]}%"
            for sql in ("SELECT count(*) FROM usage_records WHERE query LIKE :p OR response LIKE :p "
                        "OR coalesce(messages_json, '') LIKE :p OR coalesce(metadata_json, '') LIKE :p",
                        "SELECT count(*) FROM feedback_events WHERE coalesce(comment, '') LIKE :p",
                        "SELECT count(*) FROM loop_state WHERE value LIKE :p",
                        "SELECT count(*) FROM training_runs WHERE coalesce(counts_json, '') || coalesce(decision_json, '') "
                        "|| coalesce(error, '') LIKE :p"):
                n += conn.execute(text(sql), {"p": like}).scalar_one()
    return n


def test_forget_removes_every_trace(tmp_path, clock, make_loop, trainer, good_rows) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, keep_training_data=True, trigger_config={**_NO_TRIGGERS, "min_new_samples": 100000},
                     generator_config={"min_samples": 5, "rehearsal_fraction": 0.3, "validation_fraction": 0.2,
                                       "export_parquet": True})
    alice, others = good_rows[:12], good_rows[12:60]
    alice_ids = []
    for i, row in enumerate(alice):
        rid = loop.log_usage(row["instruction"], row["output"], "base", quality_score=quality_of(row), latency_ms=80.0 + i,
                             unit_id="alice")
        loop.record_feedback(rid, 1, comment=f"alice says thanks, order number AX-{7000 + i}-confidential")
        alice_ids.append(rid)
    conv = [{"role": "user", "content": good_rows[60]["instruction"]}, {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "Please expand on that, alice-private-followup-question-314159."}]
    alice_ids.append(loop.log_usage(messages=conv, response=good_rows[60]["output"], model="base", quality_score=0.95,
                                    unit_id="alice"))
    loop.record_feedback(alice_ids[-1], 1)
    for i, row in enumerate(others):
        rid = loop.log_usage(row["instruction"], row["output"], "base", quality_score=quality_of(row), latency_ms=90.0,
                             unit_id=f"user-{i % 7}")
        loop.record_feedback(rid, 1 if i % 3 else -1)
    loop.logger.flush()
    loop.run_iteration()
    first = loop.run_iteration(manual=True)["retrain"]
    assert first["status"] == "deployed", first
    # a second run: the first one's samples went to the rehearsal buffer; this one mixes them in and keeps its files
    clock.advance(hours=2)
    for row in good_rows[61:75]:
        loop.record_feedback(loop.log_usage(row["instruction"], row["output"], "base", quality_score=quality_of(row),
                                            unit_id="user-9"), 1)
    loop.logger.flush()
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "deployed"

    alice_texts = ([r["output"] for r in alice] + [r["instruction"] for r in alice if len(r["instruction"]) > 40]
                   + [good_rows[60]["output"], conv[-1]["content"]] + [f"AX-{7000 + i}-confidential" for i in range(12)])
    needles = _needles(alice_texts) + [b"alice-private-followup-question-314159"]
    other_needles = _needles([r["output"] for r in others])
    data_dir = loop.config.data_path
    # the texts are there before: the search below can fail
    assert _found(_file_texts(data_dir), needles)
    assert (data_dir / "rehearsal_buffer.jsonl").is_file() and len(list((data_dir / "runs").glob("*.parquet"))) >= 2
    before_other = len(_found(_file_texts(data_dir), other_needles))
    with loop.store.read() as conn:
        n_before = conn.execute(select(func.count()).select_from(U)).scalar_one()
        n_samples_alice = conn.execute(select(func.count()).select_from(T).where(T.c.record_id.in_(alice_ids))).scalar_one()
    assert n_samples_alice > 0
    if loop.store.is_sqlite:
        assert _found(_store_bytes(loop), needles)
    else:
        assert _pg_rows_with(loop, alice_texts) > 0

    report = loop.forget("alice", actor="dpo", reason="erasure request #12")
    assert report.records == 13 and report.feedback_events == 13 and report.training_samples == n_samples_alice
    assert report.rehearsal_samples > 0 and report.training_lines > 0 and report.late_arrivals == 0

    assert _found(_file_texts(data_dir), needles) == []
    if loop.store.is_sqlite:
        assert report.store["vacuumed"] and report.store["wal_truncated"]
        assert _found(_store_bytes(loop), needles) == []
    else:
        assert _pg_rows_with(loop, alice_texts) == 0
    with loop.store.read() as conn:
        assert conn.execute(select(func.count()).select_from(U)).scalar_one() == n_before - 13
        assert conn.execute(select(func.count()).select_from(U).where(U.c.unit_id == "alice")).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(F).where(F.c.record_id.in_(alice_ids))).scalar_one() == 0
    # other units' texts are untouched (the training files still hold them)
    assert len(_found(_file_texts(data_dir), other_needles)) == before_other
    tot = _assert_rollups_match(loop)
    assert tot["calls"] == n_before - 13
    audit = loop.store.get_state(AUDIT_KEY)
    assert audit[-1]["action"] == "forget" and audit[-1]["unit_hash"] == unit_hash("alice")
    assert audit[-1]["actor"] == "dpo" and audit[-1]["counts"]["records"] == 13
    assert "alice" not in json.dumps(audit) and "alice" not in json.dumps(loop.store.get_state(TOMBSTONE_KEY))

    again = loop.forget("alice")  # idempotent
    assert (again.records, again.feedback_events, again.rehearsal_samples, again.training_lines) == (0, 0, 0, 0)
    _assert_rollups_match(loop)


_WRITER = textwrap.dedent("""
    import sys, time, pathlib
    from datetime import datetime
    from afs_continuous import UsageLogger, Store, ManualClock
    from afs_continuous.config import LoggerConfig

    url, stop, mode = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
    store = Store(url)
    if mode == "past":  # stamped at a given time (before a forget), written after it: 50 rounds, then exit
        logger = UsageLogger(store, clock=ManualClock(datetime.fromisoformat(sys.argv[4])))
    else:  # live: until the stop file appears
        logger = UsageLogger(store, config=LoggerConfig(flush_interval_s=0.01))
    i = 0
    while True:
        for unit in ("bob", "u1", "u2"):
            rid = logger.log(f"{unit} question {i}: my secret is {unit}-secret-{i:05d}", f"answer to {unit} number {i:05d} xyz",
                             "base", quality_score=0.5, latency_ms=10.0 + i % 7, unit_id=unit)
            logger.record_feedback(rid, 1 if i % 2 else -1, comment=f"comment of {unit} {i:05d}")
        i += 1
        if mode == "past":
            if i == 50:
                break
            continue
        if i == 30:
            print("started", flush=True)
        if stop.exists():
            break
        time.sleep(0.002)
    logger.close()
    print("done", i, flush=True)
""")


def _writer(store_url: str, stop: Path, mode: str, *extra: str) -> subprocess.Popen:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", _WRITER, store_url, str(stop), mode, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))


def _bob_traces(loop: Any) -> int:
    with loop.store.read() as conn:
        n = conn.execute(select(func.count()).select_from(U).where(U.c.unit_id == "bob")).scalar_one()
        n += conn.execute(select(func.count()).select_from(F).where(F.c.comment.like("comment of bob%"))).scalar_one()
    return n


def test_forget_while_a_logging_process_writes(tmp_path, clock, make_loop, store_url) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=_NO_TRIGGERS)
    stop = tmp_path / "stop"
    proc = _writer(store_url, stop, "live")
    try:
        assert proc.stdout.readline().strip() == "started", proc.stderr.read() if proc.poll() is not None else ""
        first = loop.forget("bob")  # the writer keeps committing bob's records meanwhile (it waits for VACUUM)
        assert first.records > 0 and first.recent_activity
        stop.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _bob_traces(loop) > 0  # written after the first forget
    second = loop.forget("bob")
    assert second.records > 0
    assert _bob_traces(loop) == 0
    with loop.store.read() as conn:
        units = dict(conn.execute(select(U.c.unit_id, func.count()).group_by(U.c.unit_id)).all())
    assert units["u1"] == units["u2"] > 30 and "bob" not in units
    assert loop.get_status_summary()["drops"]["records"] == 0  # the writer lost nothing while it waited
    if loop.store.is_sqlite:
        assert _found(_store_bytes(loop), [b"bob-secret-", b"comment of bob", b"answer to bob"]) == []
    _assert_rollups_match(loop)


def test_daemon_removes_records_that_reach_the_store_after_the_forget(tmp_path, clock, make_loop, store_url) -> None:
    """Records stamped before the forget but written after it (as records queued in another process's
    logger are): the daemon's next iteration removes them, and audits it."""
    loop = make_loop(tmp_path, clock, trigger_config=_NO_TRIGGERS)
    stamped = clock()
    loop.log_usage("bob's first question, kept in this process", "an answer", "base", unit_id="bob")
    clock.advance(minutes=10)
    first = loop.forget("bob")
    assert first.records == 1
    proc = _writer(store_url, tmp_path / "unused", "past", stamped.isoformat())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _bob_traces(loop) == 100  # 50 records and 50 feedback events (with comments) arrived after the forget
    clock.advance(hours=1)
    result = loop.run_iteration()
    assert result["privacy"]["late_arrivals"]["records"] == 50
    assert result["privacy"]["late_arrivals"]["feedback_events"] == 50
    assert _bob_traces(loop) == 0
    audit = loop.store.get_state(AUDIT_KEY)
    assert audit[-1]["action"] == "forget_late_arrivals" and audit[-1]["unit_hash"] == unit_hash("bob")
    _assert_rollups_match(loop)
    # a record of the unit logged after the forget is new data: it stays
    loop.log_usage("bob asks again after the forget", "a new answer", "base", unit_id="bob")
    clock.advance(hours=1)
    assert "privacy" not in loop.run_iteration() or loop.run_iteration()["privacy"].get("late_arrivals") is None
    assert _bob_traces(loop) == 1
    # the tombstone expires after 7 days
    clock.advance(days=8)
    loop.run_iteration()
    assert loop.store.get_state(TOMBSTONE_KEY) == {}


def test_retention_deletes_exactly_the_expired_rows(tmp_path, clock, make_loop, trainer, good_rows) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, retention_days=5, trigger_config=_NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False},
                     ab_test_config={"rollback_watch_hours": None})
    start = clock()
    by_day: dict[int, list[str]] = {}
    for day in range(10):
        clock.advance(seconds=(start + timedelta(days=day) - clock()).total_seconds())
        ids = []
        for row in good_rows[day * 8:(day + 1) * 8]:
            rid = loop.log_usage(row["instruction"], row["output"], "base", quality_score=quality_of(row), unit_id=f"u{day}")
            loop.record_feedback(rid, 1)
            ids.append(rid)
        by_day[day] = ids
        loop.logger.flush()
        if day == 3:  # an experiment starts on day 3 (records of days 0-3 are trained on)
            assert loop.run_iteration(manual=True)["retrain"]["status"] == "deployed"
    with loop.store.write() as conn:  # feedback whose record never came: one old, one recent
        conn.execute(F.insert().values(record_id="f" * 32, feedback=1, created_at=start))
        conn.execute(F.insert().values(record_id="e" * 32, feedback=1, created_at=start + timedelta(days=9)))
    with loop.store.read() as conn:
        rollups_before = _rollups.totals(conn)
    clock.advance(days=1)  # day 10: cutoff day 5, but the experiment running since day 3 needs days 3-9
    exp = loop.experiments.active()
    assert exp is not None and exp.started_at == start + timedelta(days=3)
    result = loop.run_iteration()["privacy"]["retention"]
    expected_gone = [rid for d in (0, 1, 2) for rid in by_day[d]]
    # day 3's records were logged before the experiment started that day: they are older than its start
    assert result["kept_for"].startswith(f"experiment {exp.id}")
    with loop.store.read() as conn:
        left = set(conn.execute(select(U.c.id)).scalars())
        fb_left = set(conn.execute(select(F.c.record_id)).scalars())
        rollups_after = _rollups.totals(conn)
    assert left == {rid for d in range(3, 10) for rid in by_day[d]}
    assert result["records"] == len(expected_gone) and result["feedback_events"] == len(expected_gone)
    assert result["orphan_feedback_events"] == 1
    assert fb_left == left | {"e" * 32}
    assert rollups_after == rollups_before  # retention keeps the aggregates
    # the experiment ends: the bound is the cutoff again
    loop.promote(exp.challenger, reason="end the test experiment")
    clock.advance(days=1)  # day 11: cutoff day 6; in transactions of 5 records this time
    result = apply_retention(loop, clock(), batch=5)
    assert result["kept_for"] is None
    with loop.store.read() as conn:
        left = set(conn.execute(select(U.c.id)).scalars())
    assert left == {rid for d in range(6, 10) for rid in by_day[d]}
    assert result["records"] == 3 * 8
    audit = [e for e in loop.store.get_state(AUDIT_KEY) if e["action"] == "retention"]
    assert [e["counts"]["records"] for e in audit] == [24, 24]
    with loop.store.read() as conn:
        assert _rollups.totals(conn) == rollups_before


def test_retention_keeps_the_records_of_the_drift_watch(tmp_path, clock, make_loop) -> None:
    from afs_continuous.stats import ArmSummary

    loop = make_loop(tmp_path, clock, retention_days=1, trigger_config=_NO_TRIGGERS,
                     ab_test_config={"rollback_watch_hours": 24 * 30})
    start = clock()
    by_day = {}
    for day in range(4):
        clock.set(start + timedelta(days=day))
        if day == 1:  # a promotion on day 1: the watch compares the champion's records since then with the baseline
            loop.monitor.start("base", "base-0", ArmSummary(100, 0.5, 0.04))
        by_day[day] = [loop.log_usage(f"question {day}-{i}", f"answer {day}-{i}", "base", quality_score=0.5,
                                      unit_id=f"u{i}") for i in range(3)]
    loop.logger.flush()
    clock.set(start + timedelta(days=3, hours=12))  # cutoff: day 2.5
    result = loop.run_iteration()["privacy"]["retention"]
    assert result["kept_for"].startswith("drift watch of base")
    with loop.store.read() as conn:
        assert set(conn.execute(select(U.c.id)).scalars()) == {r for d in (1, 2, 3) for r in by_day[d]}
    loop.monitor.stop()
    clock.advance(hours=1)
    result = loop.run_iteration()["privacy"]["retention"]
    assert result["kept_for"] is None and result["records"] == 6
    with loop.store.read() as conn:
        assert set(conn.execute(select(U.c.id)).scalars()) == set(by_day[3])
