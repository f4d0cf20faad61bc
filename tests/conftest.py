"""Shared fixtures of the afs_continuous test suite.

Everything here is real: SQLite files under ``tmp_path``, the package's own
classes, and :class:`~afs_continuous.clock.ManualClock` to move time (tests
never sleep to wait for a schedule). The only "user code" is a small training
function that writes an adapter directory, as a user's ``train_fn`` would.

Real text comes from the AlpacaEval 2.0 judged outputs in
``<repo>/../shared/data/alpaca_eval`` (override with ``AFS_ALPACA_EVAL_DIR``):
``quality_score = preference - 1`` and ``feedback = +1 if preference > 1.5 else -1``.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

from afs_continuous import ContinuousLearningLoop, ManualClock, UsageLogger, load_config
from afs_continuous._config_load import _deep_merge

START = datetime(2026, 1, 1, tzinfo=timezone.utc)

_DEFAULT_ALPACA_DIR = Path(__file__).parents[1].parent / "shared/data/alpaca_eval"
_ALPACA_CACHE: dict[str, list[dict[str, Any]]] = {}


def alpaca_dir() -> Path:
    """Folder of the AlpacaEval ``*.jsonl.gz`` files (``AFS_ALPACA_EVAL_DIR`` overrides)."""
    override = os.environ.get("AFS_ALPACA_EVAL_DIR")
    return Path(override) if override else _DEFAULT_ALPACA_DIR


def quality_of(row: dict[str, Any]) -> float:
    """AlpacaEval preference in [1, 2] mapped to a quality score in [0, 1]."""
    return min(1.0, max(0.0, float(row["preference"]) - 1.0))


def thumbs_of(row: dict[str, Any]) -> int:
    """AlpacaEval preference mapped to thumbs: +1 when the judge preferred this answer."""
    return 1 if float(row["preference"]) > 1.5 else -1


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at 2026-01-01 00:00 UTC."""
    return ManualClock(START)


@pytest.fixture(scope="session")
def alpaca() -> Callable[[str], list[dict[str, Any]]]:
    """Loader of one model's 805 AlpacaEval rows, sorted by ``index`` (cached per session).

    ``alpaca("FuseChat-Llama-3.2-3B")`` finds ``FuseChat-Llama-3.2-3B-Instruct.jsonl.gz``.
    Skips the test when the data folder is missing.
    """
    folder = alpaca_dir()
    if not folder.is_dir():
        pytest.skip(f"AlpacaEval data not found at {folder} (set AFS_ALPACA_EVAL_DIR)")

    def load(model_name: str) -> list[dict[str, Any]]:
        if model_name not in _ALPACA_CACHE:
            candidates = [folder / f"{model_name}.jsonl.gz", folder / f"{model_name}-Instruct.jsonl.gz"]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                pytest.skip(f"no AlpacaEval file for {model_name!r} in {folder}")
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
            _ALPACA_CACHE[model_name] = sorted(rows, key=lambda r: r["index"])
        return _ALPACA_CACHE[model_name]

    return load


class Trainer:
    """A user's train_fn: checks the chat JSONL, writes an adapter directory, returns metrics.

    Attributes:
        calls: Every data path it was called with.
        n_lines: Number of training lines seen per call.
        samples: The parsed samples of every call.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []
        self.n_lines: list[int] = []
        self.samples: list[list[dict[str, Any]]] = []

    def __call__(self, data_path: str) -> dict[str, Any]:
        self.calls.append(data_path)
        with open(data_path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        assert rows, "train_fn called on an empty file"
        for row in rows:
            assert set(row) == {"messages"}
        self.samples.append(rows)
        self.n_lines.append(len(rows))
        out = self.root / f"adapter-{len(self.calls):03d}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter_config.json").write_text(json.dumps({"r": 8, "n_train": len(rows)}), encoding="utf-8")
        return {"model_path": str(out), "loss": round(1.0 / len(self.calls), 4), "n_train": len(rows)}


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    """A fresh :class:`Trainer` writing adapters under ``tmp_path/models``."""
    return Trainer(tmp_path / "models")


TEST_DATABASE_URL = os.environ.get("AFS_TEST_DATABASE_URL")


def _postgres_reachable(url: str) -> str | None:
    """None when the PostgreSQL server at ``url`` answers, else the reason."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: skip with the reason
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    """The store URL of one test: a SQLite file in ``tmp_path`` by default; with
    ``AFS_TEST_DATABASE_URL=postgresql+psycopg://...`` a fresh PostgreSQL schema, dropped afterwards.
    PostgreSQL tests skip with the reason when the server does not answer."""
    if not TEST_DATABASE_URL:
        yield f"sqlite:///{tmp_path / 'usage.db'}"
        return
    why = _postgres_reachable(TEST_DATABASE_URL)
    if why is not None:
        pytest.skip(f"PostgreSQL at AFS_TEST_DATABASE_URL not reachable: {why}")
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in TEST_DATABASE_URL else "?"
    try:
        yield f"{TEST_DATABASE_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def make_loop(store_url: str) -> Iterator[Callable[..., ContinuousLearningLoop]]:
    """Factory ``make_loop(tmp_path, clock, *, train_fn=None, **overrides)``.

    Builds a loop over ``tmp_path/usage.db`` (or the test's PostgreSQL schema,
    see :func:`store_url`; data in ``tmp_path/data``) with
    ``route_cache_s=0``; ``overrides`` are nested config keys merged over that
    (``trigger_config={"min_new_samples": 5}``), validated by ``load_config``
    with the environment ignored. Every loop made is closed at teardown.
    """
    made: list[ContinuousLearningLoop] = []

    def factory(tmp_path: Path, clock: Callable[[], datetime], *, train_fn: Any = None,
                **overrides: Any) -> ContinuousLearningLoop:
        base: dict[str, Any] = {
            "db_path": str(tmp_path / "usage.db"),
            "database_url": None if store_url.startswith("sqlite") else store_url,
            "data_dir": str(tmp_path / "data"),
            "route_cache_s": 0,
            "logger_config": {"flush_interval_s": 0.05},
        }
        cfg = load_config(None, env={}, overrides=_merge(base, overrides))
        loop = ContinuousLearningLoop(cfg, clock=clock, train_fn=train_fn)
        made.append(loop)
        return loop

    yield factory
    for loop in made:
        loop.close()


_merge = _deep_merge  # the same precedence rule as load_config


@pytest.fixture
def log_rows() -> Callable[..., list[str]]:
    """``log_rows(target, rows, model, *, feedback=True, unit_prefix=None)``: log AlpacaEval rows.

    ``target`` is a loop or a :class:`UsageLogger`. Each row is logged with
    its real instruction/output, ``quality_score = preference - 1`` and (when
    ``feedback``) thumbs from the preference. Returns the record ids.
    """

    def log(target: Any, rows: Iterable[dict[str, Any]], model: str, *, feedback: bool = True,
            unit_prefix: str | None = None) -> list[str]:
        logger: UsageLogger = target.logger if isinstance(target, ContinuousLearningLoop) else target
        ids = []
        for i, row in enumerate(rows):
            rid = logger.log(row["instruction"], row["output"], model, quality_score=quality_of(row),
                             latency_ms=100.0 + i % 50,
                             unit_id=None if unit_prefix is None else f"{unit_prefix}-{i}")
            if feedback:
                logger.record_feedback(rid, thumbs_of(row))
            ids.append(rid)
        logger.flush()
        return ids

    return log


@pytest.fixture
def good_rows(alpaca: Callable[[str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Gemma-2-9B rows the judge preferred (quality >= 0.7 and thumbs up): eligible for training."""
    rows = [r for r in alpaca("FuseChat-Gemma-2-9B") if quality_of(r) >= 0.7 and thumbs_of(r) == 1]
    assert len(rows) > 300
    return rows


# ------------------------------------------------------------------ experiments on real traffic
EXP_CHAMPION = "FuseChat-Llama-3.2-3B"
EXP_CHALLENGER = f"{EXP_CHAMPION}-ft1"
_NO_TRIGGERS = {"min_new_samples": None, "schedule_interval_hours": None, "quality_drop_threshold": None}


@pytest.fixture
def experiment_loop(tmp_path, clock, make_loop, trainer, alpaca, log_rows) -> ContinuousLearningLoop:
    """A loop whose champion is Llama-3.2-3B and whose first retrain is under test since now."""
    # A fixed assignment seed: the replays are deterministic (with a random one an A/A replay is wrongly
    # decided in ~2% of runs, as the simulation in docs/statistics.md says it should be).
    loop = make_loop(tmp_path, clock, train_fn=trainer, champion_model=EXP_CHAMPION, route_cache_s=60,
                     trigger_config=_NO_TRIGGERS, generator_config={"min_samples": 10, "include_existing_data": False},
                     ab_test_config={"assignment_seed": "experiment-tests"})
    seed_rows = [r for r in alpaca(EXP_CHAMPION) if r["preference"] > 1.7][:20]
    clock.advance(hours=-1)  # training data from before the experiment: not counted in either arm
    log_rows(loop, seed_rows, EXP_CHAMPION)
    clock.advance(hours=1)
    deployed = loop.run_iteration(manual=True)["retrain"]
    assert deployed["status"] == "deployed" and deployed["model_version"] == EXP_CHALLENGER
    assert loop.experiments.active().started_at == clock()
    return loop


@pytest.fixture
def replay(clock: ManualClock) -> Callable[..., dict[str, int]]:
    """``replay(loop, champion_rows, challenger_rows, n, hours, start=0)``: n routed requests over ``hours``."""

    def run(loop: ContinuousLearningLoop, champion_rows: list[dict[str, Any]], challenger_rows: list[dict[str, Any]],
            n: int, hours: float, start: int = 0) -> dict[str, int]:
        served = {EXP_CHAMPION: 0, EXP_CHALLENGER: 0}
        step = timedelta(hours=hours) / n
        for i in range(start, start + n):
            uid = f"user-{i}"
            version = loop.route(uid)
            row = (challenger_rows if version.name == EXP_CHALLENGER else champion_rows)[i % len(champion_rows)]
            loop.log_usage(row["instruction"], row["output"], model=version.name, unit_id=uid,
                           quality_score=row["preference"] - 1.0, latency_ms=250.0)
            served[version.name] += 1
            clock.advance(step)
        assert loop.logger.flush(timeout_s=30)
        return served

    return run


@pytest.fixture
def damaged_store() -> Callable[[Path], tuple[Path, bytes]]:
    """``damaged_store(folder) -> (path, bytes)``: a loop's SQLite store of 3,000 records at ``folder/usage.db``
    whose eight middle pages are overwritten with random bytes (the 100-byte header intact), as a disk
    or a copy gone wrong leaves it; returns the path and the file's bytes after the damage."""
    import random
    import sqlite3

    def make(folder: Path, n_records: int = 3000) -> tuple[Path, bytes]:
        db = folder / "usage.db"
        with ContinuousLearningLoop(load_config(None, env={}, overrides={"db_path": str(db),
                                                                         "data_dir": str(folder / "data")})) as loop:
            for i in range(n_records):
                loop.log_usage(f"question {i} " + "about the SNES CPU " * 20, f"answer {i} " + "it is a 65816 " * 40,
                           "base", quality_score=0.8)
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0  # everything in the main file
        con.close()
        data = bytearray(db.read_bytes())
        page = int.from_bytes(data[16:18], "big") or 65536
        total = len(data) // page
        assert total > 100, f"store too small to damage ({total} pages)"
        rng = random.Random(11)
        for p in range(total // 2, total // 2 + 8):
            data[p * page:(p + 1) * page] = bytes(rng.getrandbits(8) for _ in range(page))
        db.write_bytes(bytes(data))
        return db, bytes(data)

    return make


@pytest.fixture(scope="session")
def sqlite_rows() -> Callable[[Path], list[Any]]:
    """``sqlite_rows(path)``: every row of every table of a SQLite store, sorted (what a read-only
    reader must leave exactly as it was)."""
    import sqlite3

    def read(path: Path) -> list[Any]:
        conn = sqlite3.connect(path)
        try:
            tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
            return [(t, sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"')))) for t in tables]
        finally:
            conn.close()

    return read


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``afs-continuous ui`` as a real subprocess on a free port."""

    def __init__(self, store: Path | list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
        env["PYTHONPATH"] = str(Path(__file__).parents[1])
        store_args = store if isinstance(store, list) else ["--db", str(store)]
        self.proc = subprocess.Popen([sys.executable, "-m", "afs_continuous.cli", "ui", *store_args,
                                      "--port", str(self.port)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"ui exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(self.url + "/static/plotly.min.js", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("ui did not answer within 60 s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def start_ui() -> Iterator[Any]:
    """``start_ui(store) -> Server``: ``afs-continuous ui`` as a real subprocess on a free port, stopped at
    teardown; ``store`` is a SQLite file or the command's store arguments (``["--config", path]``)."""
    servers: list[Server] = []

    def start(store: Path | list[str]) -> Server:
        servers.append(Server(store))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
