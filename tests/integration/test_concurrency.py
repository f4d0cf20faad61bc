"""Many processes on one SQLite store: concurrent logging and feedback, SIGTERM, kill -9, fork.

Every process here is real (a small script written under ``tmp_path`` and run with
this interpreter), every store a real SQLite file in WAL mode. The test process
plays the daemon: it polls ``get_status_summary()`` while the children write.
Children write their exceptions to ``<name>.err`` and exit non-zero on any
error, and report their ``writer_stats()`` in ``<name>.json``.

Reliability table rows covered (docs/RELIABILITY.md): 1 (kill -9, sync), 4
(processes logging while status is polled), 5 (fork after the logger started),
6 (exit on a signal while another process holds the write lock), 7 (feedback
before the record is committed, repeated votes, latest wins).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from afs_continuous import ContinuousLearningLoop, LoopConfig, Store, UsageLogger

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
N_WRITERS = 4
N_PER_WRITER = 2_000
N_EARLY = 25  # ids per writer that get feedback while the store's write lock is held (nothing committed)

# --------------------------------------------------------------------------------------------------
# The child processes. One script, several modes; argv[1] is the mode, argv[2] the work directory
# (where the child writes <name>.ready / .err / .json and ids files), argv[3] the store.
CHILD = r'''
import gzip, json, os, sys, time, traceback
from pathlib import Path

MODE, WORK, DB = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
ARGS = sys.argv[4:]


def load_rows(data_dir, k):
    files = sorted(Path(data_dir).glob("FuseChat-*.jsonl.gz")) or sorted(Path(data_dir).glob("*.jsonl.gz"))
    path = files[k % len(files)]
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return path.name.split(".jsonl")[0], rows


def quality(row):
    return min(1.0, max(0.0, float(row["preference"]) - 1.0))


def wait_for(path, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def append(fh, line, fsync=False):
    fh.write(line + "\n")
    fh.flush()
    if fsync:
        os.fsync(fh.fileno())


def report(name, **values):
    tmp = WORK / f"{name}.json.tmp"
    tmp.write_text(json.dumps(values, default=str))
    os.replace(tmp, WORK / f"{name}.json")


def run_writer(k, n, data_dir, use_loop):
    """Log n records (real ~2 KB texts); every 50th gets +1 feedback from this process at once."""
    name = f"writer{k}"
    model, rows = load_rows(data_dir, k)
    if use_loop == "1":
        from afs_continuous import ContinuousLearningLoop, LoopConfig
        loop = ContinuousLearningLoop(LoopConfig(db_path=DB, data_dir=str(WORK / f"data{k}")))
        logger, log, feedback = loop.logger, loop.log_usage, loop.record_feedback
    else:
        from afs_continuous import UsageLogger
        logger = UsageLogger(DB)
        log, feedback = logger.log, logger.record_feedback
    versions = [f"{model}-v{v}" for v in (1, 2, 3)]
    (WORK / f"{name}.ready").touch()
    wait_for(WORK / "go")
    with open(WORK / f"{name}.ids", "w") as ids, open(WORK / f"{name}.sent", "w") as sent:
        for i in range(n):
            row = rows[i % len(rows)]
            rid = log(row["instruction"], row["output"], versions[i % 3], latency_ms=80.0 + (i * 37) % 900,
                      quality_score=quality(row), unit_id=f"user-{k}-{i % 97}", metadata={"i": i, "worker": k})
            append(ids, rid)
            if i % 50 == 0:  # a handler that logs and records feedback in the same request, before any flush
                feedback(rid, 1)
                append(sent, json.dumps([rid, 1]))
            if i % 25 == 24:
                time.sleep(0.002)  # request pacing: a handler is not a tight loop
    closed = logger.close(timeout_s=60)
    report(name, closed=closed, stats=logger.writer_stats())


def run_feedback(n_writers, n, n_early):
    """Follow the writers' ids files as they grow; vote on most ids, some twice (+1 then -1)."""
    from afs_continuous import UsageLogger
    logger = UsageLogger(DB)
    (WORK / "feedback.ready").touch()
    wait_for(WORK / "go")
    offsets, partial, seen = [0] * n_writers, [b""] * n_writers, [0] * n_writers
    n_early_events = n_early_unknown = n_events = 0
    early_reported = False
    deadline = time.monotonic() + 120
    with open(WORK / "feedback.sent", "w") as sent:
        while min(seen) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ids files stopped growing at {seen}")
            progressed = False
            for w in range(n_writers):
                path = WORK / f"writer{w}.ids"
                if not path.exists():
                    continue
                with open(path, "rb") as fh:
                    fh.seek(offsets[w])
                    chunk = fh.read()
                offsets[w] += len(chunk)
                lines = (partial[w] + chunk).split(b"\n")
                partial[w] = lines.pop()
                for raw in lines:
                    rid, i = raw.decode(), seen[w]
                    seen[w] += 1
                    progressed = True
                    votes = [] if i % 50 == 0 else [1, -1] if i % 7 == 0 else [1] if i % 3 == 0 else [-1] if i % 11 == 0 else []
                    for v in votes:
                        known = logger.record_feedback(rid, v)
                        append(sent, json.dumps([rid, v]))
                        n_events += 1
                        if i < n_early:
                            n_early_events += 1
                            n_early_unknown += not known
            if not early_reported and min(seen) >= n_early:
                report("early", n_events=n_early_events, n_unknown=n_early_unknown)
                early_reported = True
            if not progressed:
                time.sleep(0.003)
    closed = logger.close(timeout_s=60)
    report("feedback", closed=closed, stats=logger.writer_stats(), n_events=n_events)


def run_until_killed(durability):
    """Log in a tight loop; write each id only after log() returned, fsync'ed, until a signal ends us."""
    from afs_continuous import UsageLogger
    logger = UsageLogger(DB, durability=durability)
    (WORK / "victim.ready").touch()
    wait_for(WORK / "go")
    i = 0
    with open(WORK / "victim.ids", "a") as ids:
        while True:
            rid = logger.log(f"question {i} " + "x" * 900, f"answer {i} " + "y" * 900, "victim-v1",
                             latency_ms=float(i % 300), quality_score=(i % 10) / 10)
            if durability == "sync" and i % 5 == 0:
                logger.record_feedback(rid, 1)
            append(ids, rid, fsync=True)
            i += 1


def run_fork(n_children, n_child, n_pre, flush_first):
    """gunicorn --preload: logger made (and writing) in the master, then workers forked.

    Before each fork the master hands over n_pre ~2 KB records (a warm-up, traffic of a
    preloaded app); with flush_first it flushes them, so its writer thread is idle at the fork.
    """
    from afs_continuous import UsageLogger
    logger = UsageLogger(DB)
    parent_ids = []
    children = []
    for c in range(n_children):
        parent_ids += [logger.log(f"master {c} {i}", "preloaded " * 200, "fork-v1", quality_score=0.5)
                       for i in range(n_pre)]
        if flush_first == "1":
            assert logger.flush(timeout_s=30)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                ids = [logger.log(f"child {c} q {i}", "worker answer " * 40, "fork-v1", quality_score=0.7)
                       for i in range(n_child)]
                (WORK / f"child{c}.ids").write_text("\n".join(ids) + "\n")
                closed = logger.close(timeout_s=5)
                report(f"child{c}", closed=closed, stats=logger.writer_stats())
                code = 0 if closed else 3
            except BaseException:
                (WORK / f"child{c}.err").write_text(traceback.format_exc())
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # no parent frames below us may run in the worker
        children.append(pid)
    parent_ids += [logger.log(f"master after fork {i}", "still serving " * 40, "fork-v1") for i in range(100)]
    statuses = {}
    deadline = time.monotonic() + 20
    while len(statuses) < len(children):
        for pid in children:
            if pid not in statuses:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses[pid] = os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            for pid in children:
                if pid not in statuses:
                    os.kill(pid, 9)
                    statuses[pid] = "hung (killed after 20 s)"
            break
        time.sleep(0.01)
    closed = logger.close(timeout_s=30)
    (WORK / "parent.ids").write_text("\n".join(parent_ids) + "\n")
    report("parent", closed=closed, children=[statuses[p] for p in children], stats=logger.writer_stats())


try:
    if MODE == "writer":
        run_writer(int(ARGS[0]), int(ARGS[1]), ARGS[2], ARGS[3])
    elif MODE == "feedback":
        run_feedback(int(ARGS[0]), int(ARGS[1]), int(ARGS[2]))
    elif MODE == "victim":
        run_until_killed(ARGS[0])
    elif MODE == "fork":
        run_fork(int(ARGS[0]), int(ARGS[1]), int(ARGS[2]), ARGS[3])
    else:
        raise ValueError(MODE)
except Exception:
    (WORK / f"{MODE}-{os.getpid()}.err").write_text(traceback.format_exc())
    raise
'''


# --------------------------------------------------------------------------------------------------
# helpers


def alpaca_dir() -> Path:
    override = os.environ.get("AFS_ALPACA_EVAL_DIR")
    return Path(override) if override else ROOT.parent / "shared" / "data" / "alpaca_eval"


@pytest.fixture
def data_dir() -> Path:
    folder = alpaca_dir()
    if not any(folder.glob("*.jsonl.gz")):
        pytest.skip(f"AlpacaEval data not found in {folder} (set AFS_ALPACA_EVAL_DIR)")
    return folder


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "child.py").write_text(CHILD, encoding="utf-8")
    return tmp_path


class Child:
    """A child process running ``child.py MODE``, its output in files (never a pipe that can fill)."""

    def __init__(self, work: Path, name: str, mode: str, db: Path, *args: Any) -> None:
        self.name, self.work = name, work
        self.out = open(work / f"{name}.stdout", "w")
        self.err_path = work / f"{name}.stderr"
        self.err = open(self.err_path, "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
        self.proc = subprocess.Popen([sys.executable, str(work / "child.py"), mode, str(work), str(db), *map(str, args)],
                                     stdout=self.out, stderr=self.err, env=env, cwd=work)

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.name} did not finish within {timeout_s} s; stderr:\n{self.stderr()}")
        self.out.close()
        self.err.close()
        return code

    def stderr(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return self.err_path.read_text(errors="replace")

    def kill(self) -> None:
        """Stop the child if it still runs and close its output files (teardown; idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        self.err.close()


def wait_for(path: Path, children: list[Child], timeout_s: float = 60.0) -> None:
    """Poll until ``path`` exists; fail at once if a child died first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        for c in children:
            if c.proc.poll() is not None and c.proc.returncode != 0:
                pytest.fail(f"{c.name} exited with {c.proc.returncode} before {path.name}:\n{c.stderr()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout_s} s")
        time.sleep(0.01)


def complete_lines(path: Path) -> list[str]:
    """The lines of a file another process appends to, without a trailing partial line."""
    if not path.exists():
        return []
    data = path.read_text()
    return [line for line in data.split("\n")[:-1] if line]


def wait_for_lines(path: Path, n: int, child: Child, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(complete_lines(path)) < n:
        if child.proc.poll() is not None:
            pytest.fail(f"{child.name} exited with {child.proc.returncode} early:\n{child.stderr()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} has {len(complete_lines(path))} of {n} lines after {timeout_s} s")
        time.sleep(0.01)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def stored_ids(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT id FROM usage_records")]
    finally:
        con.close()


def integrity(db: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchall()
    finally:
        con.close()


def assert_clean(children: list[Child], work: Path) -> None:
    """Exit code 0, no exception file, nothing about locks or tracebacks on stderr."""
    errors = {p.name: p.read_text() for p in work.glob("*.err")}
    assert not errors, errors
    for c in children:
        err = c.stderr()
        assert c.proc.returncode == 0, f"{c.name} exited with {c.proc.returncode}:\n{err}"
        for needle in ("database is locked", "OperationalError", "Traceback", "dropped"):
            assert needle not in err, f"{c.name} stderr mentions {needle!r}:\n{err}"


# --------------------------------------------------------------------------------------------------
# 4 writers + 1 feedback process + the daemon polling status


def test_processes_log_and_vote_concurrently_while_status_is_polled(work: Path, data_dir: Path) -> None:
    db = work / "usage.db"
    loop = ContinuousLearningLoop(LoopConfig(db_path=str(db), data_dir=str(work / "daemon")))
    children: list[Child] = []
    lock: sqlite3.Connection | None = None
    try:
        for k in range(N_WRITERS):  # two plain UsageLoggers, two through loop.log_usage
            children.append(Child(work, f"writer{k}", "writer", db, k, N_PER_WRITER, data_dir, k % 2))
        children.append(Child(work, "feedback", "feedback", db, N_WRITERS, N_PER_WRITER, N_EARLY))
        for c in children:
            wait_for(work / f"{c.name}.ready", children)

        # Hold the write lock while the first records and votes flow: nothing can commit, so the
        # first N_EARLY ids of every writer certainly get their feedback before their record is stored.
        lock = sqlite3.connect(db, timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        (work / "go").touch()
        totals: list[int] = []
        poll_ms: list[float] = []

        def poll() -> dict[str, Any]:
            t0 = time.perf_counter()
            summary = loop.get_status_summary()
            poll_ms.append((time.perf_counter() - t0) * 1000)
            totals.append(summary["usage_stats"]["total"])
            return summary

        deadline = time.monotonic() + 30
        while True:  # the daemon polls while nothing can commit (it must not block on the lock either)
            for c in children:
                assert c.proc.poll() is None, f"{c.name} exited early ({c.proc.returncode}):\n{c.stderr()}"
            poll()
            if (work / "early.json").exists():
                break
            assert time.monotonic() < deadline, "the feedback process never voted on the first ids"
            time.sleep(0.05)
        assert lock.execute("SELECT count(*) FROM usage_records").fetchone()[0] == 0
        lock.execute("COMMIT")
        lock.close()
        lock = None
        early = read_json(work / "early.json")
        assert early["n_events"] > 0
        assert early["n_unknown"] == early["n_events"], "record_feedback() said known for an uncommitted record"

        deadline = time.monotonic() + 60
        while any(c.proc.poll() is None for c in children):
            assert time.monotonic() < deadline, "children still running after 60 s"
            poll()
            time.sleep(0.05)
        for c in children:
            c.wait(5)
        assert_clean(children, work)
        poll()  # once more, after every child closed its logger
    finally:
        if lock is not None:
            lock.close()
        for c in children:
            c.kill()
        loop.close()

    # the daemon saw the store empty (lock held), then grow, never shrink, and never failed
    assert len(totals) >= 5 and totals[0] == 0 and totals[-1] == N_WRITERS * N_PER_WRITER
    assert totals == sorted(totals), (totals, [round(ms) for ms in poll_ms])

    # every record exactly once
    logged = {k: complete_lines(work / f"writer{k}.ids") for k in range(N_WRITERS)}
    all_logged = [rid for ids in logged.values() for rid in ids]
    assert all(len(ids) == N_PER_WRITER for ids in logged.values())
    assert len(set(all_logged)) == N_WRITERS * N_PER_WRITER
    in_store = stored_ids(db)
    assert len(in_store) == len(set(in_store)) == N_WRITERS * N_PER_WRITER
    assert set(in_store) == set(all_logged)

    # every feedback event exactly once; each id is voted on by one process, so "latest" is well defined
    sent: list[tuple[str, int]] = []
    voters: dict[str, str] = {}
    for name in [f"writer{k}" for k in range(N_WRITERS)] + ["feedback"]:
        for line in complete_lines(work / f"{name}.sent"):
            rid, value = json.loads(line)
            assert voters.setdefault(rid, name) == name
            sent.append((rid, value))
    expected_events = Counter(rid for rid, _ in sent)
    expected_latest = {rid: value for rid, value in sent}  # later events overwrite earlier ones
    assert any(n == 2 for n in expected_events.values())
    con = sqlite3.connect(db)
    try:
        stored_events = dict(con.execute("SELECT record_id, count(*) FROM feedback_events GROUP BY record_id").fetchall())
    finally:
        con.close()
    assert stored_events == dict(expected_events)

    # writers' and voter's own counters: nothing dropped, nothing failed, everything committed
    for k in range(N_WRITERS):
        rep = read_json(work / f"writer{k}.json")
        assert rep["closed"] is True
        assert rep["stats"]["n_dropped"] == 0 and rep["stats"]["n_write_errors"] == 0, rep
        assert rep["stats"]["n_committed"] == N_PER_WRITER, rep
    rep = read_json(work / "feedback.json")
    assert rep["closed"] is True and rep["stats"]["n_dropped"] == 0 and rep["stats"]["n_write_errors"] == 0, rep
    assert rep["stats"]["n_feedback"] == rep["n_events"] == len(complete_lines(work / "feedback.sent"))

    # latest vote wins, as get_records and the status summary of a fresh daemon show it
    loop = ContinuousLearningLoop(LoopConfig(db_path=str(db), data_dir=str(work / "daemon")))
    records = {r["id"]: r for r in loop.logger.get_records(limit=N_WRITERS * N_PER_WRITER + 10)}
    assert len(records) == N_WRITERS * N_PER_WRITER
    mismatched = {rid: (records[rid]["feedback"], expected_latest.get(rid)) for rid in records
                  if records[rid]["feedback"] != expected_latest.get(rid)}
    assert not mismatched, dict(list(mismatched.items())[:5])
    usage = loop.get_status_summary()["usage_stats"]
    assert usage["total"] == N_WRITERS * N_PER_WRITER
    assert usage["with_feedback"] == len(expected_latest)
    assert usage["positive_feedback"] == sum(1 for v in expected_latest.values() if v > 0)
    assert usage["negative_feedback"] == sum(1 for v in expected_latest.values() if v < 0)
    assert sum(usage["by_model"].values()) == N_WRITERS * N_PER_WRITER
    loop.close()
    assert integrity(db) == [("ok",)]


# --------------------------------------------------------------------------------------------------
# SIGTERM (async) and kill -9 (sync)


@pytest.mark.parametrize("locked", [False, True], ids=["idle-store", "store-locked-at-signal"])
def test_sigterm_keeps_every_acknowledged_record(work: Path, locked: bool) -> None:
    """Default async logger, SIGTERM mid-stream: every id whose log() returned is in the store.

    ``store-locked-at-signal``: another process holds the write lock while the victim logs, so
    everything it acknowledged is still queued in memory when SIGTERM arrives; the lock is
    released right after the signal, and only the flush on SIGTERM can save those records
    (reliability row 6: another process holding the write lock at exit).
    """
    db = work / "usage.db"
    Store(str(db)).dispose()  # the schema first, so the lock below has tables to lock
    victim = Child(work, "victim", "victim", db, "async")
    lock: sqlite3.Connection | None = None
    try:
        wait_for(work / "victim.ready", [victim])
        if locked:
            lock = sqlite3.connect(db, timeout=30, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
        (work / "go").touch()
        wait_for_lines(work / "victim.ids", 300, victim)
        victim.proc.send_signal(signal.SIGTERM)
        if lock is not None:
            assert lock.execute("SELECT count(*) FROM usage_records").fetchone()[0] == 0
            lock.execute("COMMIT")
            lock.close()
            lock = None
        code = victim.wait(30)
    finally:
        if lock is not None:
            lock.close()
        victim.kill()
    assert code in (0, 143, -signal.SIGTERM), f"exit status {code}:\n{victim.stderr()}"
    acknowledged = complete_lines(work / "victim.ids")
    assert len(acknowledged) >= 300
    missing = set(acknowledged) - set(stored_ids(db))
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged records lost on SIGTERM (exit {code})"
    assert integrity(db) == [("ok",)]


def test_kill_9_in_sync_mode_loses_nothing_acknowledged(work: Path) -> None:
    """kill -9 at random points, three times on one file: every acknowledged id present, file healthy."""
    db = work / "usage.db"
    (work / "go").touch()
    rng = random.Random(20260101)
    acknowledged: list[str] = []
    for round_ in range(3):
        victim = Child(work, f"victim{round_}", "victim", db, "sync")
        try:
            wait_for(work / "victim.ready", [victim])
            wait_for_lines(work / "victim.ids", len(acknowledged) + rng.randint(50, 250), victim)
            victim.proc.send_signal(signal.SIGKILL)
            code = victim.wait(30)
        finally:
            victim.kill()
        (work / "victim.ready").unlink()
        assert code == -signal.SIGKILL
        acknowledged = complete_lines(work / "victim.ids")
        missing = set(acknowledged) - set(stored_ids(db))
        assert not missing, f"round {round_}: {len(missing)} acknowledged records lost in sync mode"
        assert integrity(db) == [("ok",)]
    # no partial rows: every stored row is whole
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT query, response, model, created_at, query_chars, response_chars "
                           "FROM usage_records").fetchall()
    finally:
        con.close()
    assert all(q.startswith("question ") and r.startswith("answer ") and m == "victim-v1" and ts
               and qn == len(q) and rn == len(r) for q, r, m, ts, qn, rn in rows)
    # the file opens again without repair and takes new writes
    with UsageLogger(db, durability="sync") as logger:
        rid = logger.log("after the crash", "still works", "victim-v1")
        assert logger.get_statistics()["total"] == len(rows) + 1
    assert rid in set(stored_ids(db))
    assert integrity(db) == [("ok",)]


# --------------------------------------------------------------------------------------------------
# fork after the logger started (gunicorn --preload)


@pytest.mark.parametrize("flush_first", [True, False], ids=["writer-idle-at-fork", "writer-busy-at-fork"])
def test_fork_after_the_logger_started(work: Path, flush_first: bool) -> None:
    """The master logs (its writer thread runs), then forks 3 workers that log 100 records each and close().

    ``writer-busy-at-fork``: each fork comes right after the master handed over 1,000 ~2 KB records,
    so its writer thread is usually inside a SQLite write at that moment (reliability row 5: the
    child's records must persist and its ``close()`` must return).
    """
    db = work / "usage.db"
    n_children, n_child, n_pre, n_post = 3, 100, 1000, 100
    parent = Child(work, "master", "fork", db, n_children, n_child, n_pre, int(flush_first))
    code = parent.wait(60)
    assert_clean([parent], work)
    assert code == 0
    rep = read_json(work / "parent.json")
    children = {c: read_json(work / f"child{c}.json") if (work / f"child{c}.json").exists() else None
                for c in range(n_children)}
    # 0: the worker's close() returned True within 5 s; 3: close() returned False (not drained)
    assert rep["children"] == [0] * n_children, (rep, children)
    assert rep["closed"] is True
    in_store = set(stored_ids(db))
    for c, child in children.items():
        assert child is not None and child["closed"] is True and child["stats"]["n_dropped"] == 0, child
        ids = complete_lines(work / f"child{c}.ids")
        assert len(ids) == n_child
        assert set(ids) <= in_store, f"worker {c}: {len(set(ids) - in_store)} of {n_child} records lost"
    parent_ids = complete_lines(work / "parent.ids")
    assert len(parent_ids) == n_children * n_pre + n_post and set(parent_ids) <= in_store
    assert len(in_store) == n_children * n_pre + n_post + n_children * n_child
    assert integrity(db) == [("ok",)]


# --------------------------------------------------------------------------------------------------
# Many workers opening a brand-new store at the same moment (gunicorn without --preload)

N_OPENERS = 6
N_ROUNDS = 5


def _open_fresh(cfg: LoopConfig, barrier: Any, errors: Any) -> None:
    """Child (forked): wait for every sibling, then construct the loop and close it."""
    import traceback

    try:
        barrier.wait(60)
        ContinuousLearningLoop(cfg).close()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        errors.put(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def _fresh_store_urls(tmp_path: Path, store_url: str, n: int) -> list[str]:
    """``n`` empty stores of the test's backend: SQLite files, or new PostgreSQL schemas (dropped at teardown)."""
    if store_url.startswith("sqlite"):
        return [f"sqlite:///{tmp_path / f'fresh-{k}.db'}" for k in range(n)]
    base, _, _ = store_url.partition("?")
    return [f"{base}?options=-csearch_path%3D{schema}" for schema in _PG_SCHEMAS.create(base, n)]


class _PgSchemas:
    """PostgreSQL schemas made for one test and dropped afterwards."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []

    def create(self, base: str, n: int) -> list[str]:
        import uuid

        from sqlalchemy import create_engine, text

        engine = create_engine(base, isolation_level="AUTOCOMMIT")
        names = [f"t_{uuid.uuid4().hex[:12]}" for _ in range(n)]
        with engine.connect() as conn:
            for name in names:
                conn.execute(text(f'CREATE SCHEMA "{name}"'))
        engine.dispose()
        self.made += [(base, name) for name in names]
        return names

    def drop_all(self) -> None:
        from sqlalchemy import create_engine, text

        for base, name in self.made:
            engine = create_engine(base, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            engine.dispose()
        self.made.clear()


_PG_SCHEMAS = _PgSchemas()


@pytest.fixture
def pg_schemas() -> Any:
    yield _PG_SCHEMAS
    _PG_SCHEMAS.drop_all()


def test_workers_opening_a_new_store_at_once_all_start(tmp_path: Path, store_url: str, pg_schemas: Any) -> None:
    """Issue 11 item 5: 6 processes construct the loop on the same empty store at the same instant
    (a barrier), 5 rounds: every one starts; one champion row, one first_start_at."""
    import multiprocessing

    from sqlalchemy import func, select

    from afs_continuous.store import LoopState, ModelVersionRow

    ctx = multiprocessing.get_context("fork")
    for url in _fresh_store_urls(tmp_path, store_url, N_ROUNDS):
        sqlite = url.startswith("sqlite")
        cfg = LoopConfig(db_path=url[len("sqlite:///"):] if sqlite else str(tmp_path / "unused.db"),
                         database_url=None if sqlite else url, data_dir=str(tmp_path / "data"))
        barrier, errors = ctx.Barrier(N_OPENERS), ctx.SimpleQueue()  # put() writes at once: survives _exit
        procs = [ctx.Process(target=_open_fresh, args=(cfg, barrier, errors)) for _ in range(N_OPENERS)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        assert [p.exitcode for p in procs] == [0] * N_OPENERS, "\n".join(failures)
        store = Store(url)
        with store.read() as conn:
            versions = conn.execute(select(ModelVersionRow.__table__.c.name,
                                           ModelVersionRow.__table__.c.status)).all()
            n_first = conn.execute(select(func.count()).select_from(LoopState.__table__)
                                   .where(LoopState.__table__.c.key == "first_start_at")).scalar_one()
        store.dispose()
        assert [tuple(v) for v in versions] == [("base", "champion")]
        assert n_first == 1
