"""Schema migrations (Alembic, shipped in the package): create, upgrade in place, refuse newer stores."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest
from alembic import command
from alembic.migration import MigrationContext
from alembic.autogenerate import compare_metadata
from sqlalchemy import MetaData, text

from afs_continuous import ContinuousLearningLoop, LoopConfig, ManualClock, SchemaVersionError, Store, StoreError
from afs_continuous.store import _TABLES, schema_head


def _store_at(url: str, revision: str) -> None:
    """Create a store at an old schema revision, as an earlier release would have."""
    from afs_continuous.store import MIGRATIONS_DIR
    from alembic.config import Config
    from sqlalchemy import create_engine

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def test_a_new_store_is_created_at_head(store_url):
    store = Store(store_url)
    assert store.schema_revision() == schema_head()


def test_models_match_the_migrations(store_url):
    store = Store(store_url)
    metadata = MetaData()
    for model in _TABLES:
        model.__table__.to_metadata(metadata)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_first_release_store_is_upgraded_in_place_without_losing_data(store_url):
    _store_at(store_url, "0001")
    from sqlalchemy import create_engine  # write with plain SQL, as version 0.1 did

    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO usage_records (id, created_at, query, response, model, latency_ms, quality_score, unit_id, "
            "metadata_json, content_hash, truncated, query_chars, response_chars) VALUES "
            "('a' || '0000000000000000000000000000000', '2026-01-01 00:00:00.000000', 'q', 'r', 'base', 12.5, 0.9, "
            "'u1', NULL, NULL, false, 1, 1)"))
        conn.execute(text("INSERT INTO feedback_events (record_id, feedback, created_at) VALUES "
                          "('a0000000000000000000000000000000', 1, '2026-01-01 00:00:01.000000')"))
        conn.execute(text("INSERT INTO model_versions (name, path, status, created_at, history_json) VALUES "
                          "('base', NULL, 'champion', '2026-01-01 00:00:00.000000', '[]')"))
        conn.execute(text("INSERT INTO loop_state (key, value) VALUES ('first_start_at', "
                          "'\"2026-01-01T00:00:00+00:00\"')"))
    engine.dispose()

    with pytest.raises(SchemaVersionError, match="afs-continuous db upgrade"):
        Store(store_url, auto_upgrade=False)
    assert Store(store_url).schema_revision() == schema_head()  # opened: upgraded in place
    loop = ContinuousLearningLoop(LoopConfig(database_url=store_url, data_dir="/tmp/unused"), clock=ManualClock())
    stats = loop.logger.get_statistics()
    assert stats["total"] == 1 and stats["positive_feedback"] == 1 and stats["avg_latency_ms"] == 12.5
    assert loop.registry.champion().name == "base"
    assert loop.triggers.state()["first_start_at"].year == 2026
    loop.close()


def test_a_0005_store_with_data_upgrades_to_conversations_and_exposure_in_place(store_url):
    """Issue 9: schema 0006 adds conversations, tokens, feedback comments, exposure and serving events;
    a store of the previous release keeps every row, and its running experiment keeps the attribution
    by model name (exposure_logging false)."""
    _store_at(store_url, "0005")
    from sqlalchemy import create_engine

    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO usage_records (id, created_at, query, response, model, latency_ms, quality_score, unit_id, "
            "metadata_json, content_hash, truncated, query_chars, response_chars) VALUES "
            "('b0000000000000000000000000000000', '2026-01-01 00:00:00.000000', 'q', 'r', 'cand', 12.5, 0.9, "
            "'u1', '{\"k\": 1}', NULL, false, 1, 1)"))
        conn.execute(text("INSERT INTO feedback_events (record_id, feedback, created_at) VALUES "
                          "('b0000000000000000000000000000000', -1, '2026-01-01 00:00:01.000000')"))
        conn.execute(text("INSERT INTO model_versions (name, path, status, created_at, history_json) VALUES "
                          "('base', NULL, 'champion', '2026-01-01 00:00:00.000000', '[]'), "
                          "('cand', NULL, 'challenger', '2026-01-01 00:00:00.000000', '[]')"))
        conn.execute(text("INSERT INTO experiments (champion, challenger, traffic_fraction, seed, status, started_at, "
                          "n_looks) VALUES ('base', 'cand', 0.5, 's', 'running', '2025-12-31 00:00:00.000000', 0)"))
    engine.dispose()

    store = Store(store_url)
    assert store.schema_revision() == schema_head() == "0008"
    with store.read() as conn:
        row = conn.execute(text("SELECT query, response, model, unit_id, metadata_json, messages_json, experiment_id, "
                                "arm, prompt_tokens, completion_tokens, fallback_from FROM usage_records")).one()
        assert tuple(row) == ("q", "r", "cand", "u1", '{"k": 1}', None, None, None, None, None, None)
        assert tuple(conn.execute(text("SELECT feedback, comment FROM feedback_events")).one()) == (-1, None)
        assert conn.execute(text("SELECT count(*) FROM serving_events")).scalar_one() == 0
    store.dispose()
    loop = ContinuousLearningLoop(LoopConfig(database_url=store_url, data_dir="/tmp/unused"), clock=ManualClock())
    exp = loop.experiments.active()
    assert exp is not None and exp.exposure_logging is False  # evaluated by model name, as before the upgrade
    assert loop.evaluate_experiment().challenger["n_served"] == 1
    stats = loop.logger.get_statistics()
    assert stats["total"] == 1 and stats["negative_feedback"] == 1
    loop.close()


def test_explicit_upgrade_reports_the_revisions(store_url):
    _store_at(store_url, "0001")
    store = Store(store_url)  # auto-upgrades
    assert store.upgrade() == (schema_head(), schema_head())


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    Store(url)
    con = sqlite3.connect(tmp_path / "usage.db")
    con.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    con.commit()
    con.close()
    with pytest.raises(SchemaVersionError, match="newer than this afs_continuous supports"):
        Store(url)
    con = sqlite3.connect(tmp_path / "usage.db")
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "9999_from_the_future"


def _open(url: str, q) -> None:
    try:
        q.put(Store(url).schema_revision())
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        q.put(f"error: {exc}")


def test_two_processes_upgrading_at_once_upgrade_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    _store_at(url, "0001")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = [q.get(timeout=5) for _ in procs]
    assert results == [schema_head()] * 3
    con = sqlite3.connect(tmp_path / "usage.db")
    assert con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1


def test_a_non_sqlite_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "usage.db"
    path.write_bytes(b"this is not a database, it is someone's notes\n" * 10)
    before = path.read_bytes()
    with pytest.raises(Exception, match="not a valid SQLite database"):
        Store(str(path))
    assert path.read_bytes() == before


# ------------------------------------------------------------------ opening: each cause its own message
PASSWORD = "s3cr3tpw"


def with_password(url: str, host: str | None = None, port: int | None = None, database: str | None = None) -> str:
    """``url`` with the password PASSWORD (trust auth ignores it) and optionally another host/port/database."""
    from sqlalchemy.engine import make_url

    parts: dict[str, object] = {"password": PASSWORD}
    for key, value in (("host", host), ("port", port), ("database", database)):
        if value is not None:
            parts[key] = value
    return make_url(url).set(**parts).render_as_string(hide_password=False)


@pytest.fixture
def pg_url(store_url) -> str:
    """The test's PostgreSQL URL with a password added (trust auth ignores it); skips on SQLite."""
    if store_url.startswith("sqlite"):
        pytest.skip("needs AFS_TEST_DATABASE_URL=postgresql+psycopg://...")
    return with_password(store_url)


def test_the_password_is_hidden_in_repr_and_display_url(store_url) -> None:
    if store_url.startswith("sqlite"):
        url = "postgresql+psycopg://postgres:s3cr3tpw@127.0.0.1:1/test"  # never connected
        from afs_continuous.store import display_url
        assert display_url(url) == "postgresql+psycopg://postgres:***@127.0.0.1:1/test"
        assert PASSWORD not in display_url(url + "?password=s3cr3tpw&sslmode=disable")
        return
    store = Store(with_password(store_url))
    try:
        assert PASSWORD not in repr(store) and PASSWORD not in store.display_url and "***" in store.display_url
    finally:
        store.dispose()


def test_unreachable_server_names_host_and_port_and_hides_the_password() -> None:
    url = "postgresql+psycopg://postgres:s3cr3tpw@127.0.0.1:1/test"
    with pytest.raises(StoreError, match=r"cannot connect to the database server at 127\.0\.0\.1:1.*is the server running") as info:
        Store(url)
    assert PASSWORD not in str(info.value) and "SQLite" not in str(info.value)


def test_missing_database_is_named_and_the_password_hidden(pg_url) -> None:
    url = with_password(pg_url, database="afs_no_such_database")
    with pytest.raises(StoreError, match=r"database 'afs_no_such_database' does not exist") as info:
        Store(url)
    assert PASSWORD not in str(info.value) and "SQLite" not in str(info.value)


def test_a_directory_as_the_store_says_it_is_a_directory(tmp_path) -> None:
    with pytest.raises(StoreError, match=r"is a directory") as info:
        Store(str(tmp_path))
    assert "not a valid SQLite database" not in str(info.value)


def _without_file_access(cmd: list[str]) -> list[str]:
    """``cmd`` run without the permission bypass root has (so mode 000 files are unreadable)."""
    import os
    import shutil

    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions are not enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"] + cmd


def test_permission_denied_says_so(tmp_path) -> None:
    import subprocess
    import sys

    path = tmp_path / "usage.db"
    Store(str(path)).dispose()
    path.chmod(0)
    code = ("import sys\nfrom afs_continuous import Store, StoreError\n"
            "try:\n    Store(sys.argv[1])\nexcept StoreError as exc:\n    print(exc)\n")
    try:
        proc = subprocess.run(_without_file_access([sys.executable, "-c", code, str(path)]),
                              capture_output=True, text=True, timeout=60)
    finally:
        path.chmod(0o600)
    assert "permission denied" in proc.stdout and str(path) in proc.stdout, proc.stdout + proc.stderr
    assert "not a valid SQLite database" not in proc.stdout and "Traceback" not in proc.stderr


def test_damaged_pages_with_an_intact_header_are_a_store_error_with_the_path_and_a_hint(tmp_path, damaged_store) -> None:
    db, before = damaged_store(tmp_path)
    config = LoopConfig(db_path=str(db), data_dir=str(tmp_path / "data"))
    with pytest.raises(StoreError, match=r"damaged.*\.recover") as info:  # at open (verify) ...
        Store(str(db), verify=True)
    assert str(db) in str(info.value)
    with pytest.raises(StoreError, match=r"damaged.*\.recover") as info:  # ... or at the first read that hits them
        loop = ContinuousLearningLoop(config, clock=ManualClock())
        try:
            loop.logger.get_records(limit=10_000)  # reads every record (status reads only the rollups)
        finally:
            loop.close()
    assert str(db) in str(info.value)
    assert db.read_bytes() == before


QUIET_SCRIPT = r'''
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
from afs_continuous import ContinuousLearningLoop, LoopConfig
cfg = LoopConfig(database_url=sys.argv[1], data_dir=sys.argv[2])
ContinuousLearningLoop(cfg).close()   # a new store: created
ContinuousLearningLoop(cfg).close()   # an existing one: checked
print("--- the user's own alembic use")
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
with create_engine(sys.argv[1]).connect() as conn:
    MigrationContext.configure(conn)
'''


def test_opening_the_store_logs_no_alembic_info_lines(tmp_path, store_url):
    """Issue 11 item 26: constructing the loop logged 9 alembic INFO lines under logging.basicConfig(INFO);
    our own migrations are quiet below WARNING, and the user's own alembic logging is left as it was."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "quiet.py"
    script.write_text(QUIET_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(script), store_url, str(tmp_path / "data")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    ours, _, user = proc.stdout.partition("--- the user's own alembic use")
    assert [line for line in ours.splitlines() if line.startswith("alembic")] == []
    assert "alembic.runtime.migration INFO Context impl" in user
