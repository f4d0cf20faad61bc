"""The store: every table of afs_continuous, and how to open it.

One SQLAlchemy database holds all state: usage records, feedback events, model
versions, experiments, training runs (with the samples they used) and the
loop's own state (first start, last training run, rehearsal counters). SQLite
is the embedded default; any SQLAlchemy URL works.

Passwords never leave the store object: :attr:`Store.display_url`, ``repr()``
and every error message show the URL with the password hidden.

A SQLite store that afs_continuous creates is readable by its owner only
(0600, and so are its ``-wal``/``-shm`` side files; folders it creates are 0700).
A file whose pages are damaged raises :class:`StoreError` naming the path and
how to recover, whenever a statement hits the damage, and at open with
``verify=True`` (``PRAGMA quick_check``; the daemon and the operator commands).

SQLite connections get ``journal_mode=WAL``, ``synchronous=NORMAL``,
``busy_timeout`` and ``foreign_keys=ON`` on every connection. Write
transactions opened with :meth:`Store.write` take the write lock up front
(``BEGIN IMMEDIATE``), so a read-then-write never dead-locks against another
process (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional
DDL" for pysqlite).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Boolean, Column, Index, Integer, String, Text, false, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlmodel import Field, SQLModel, create_engine

from ._io import make_private_dirs
from ._store_errors import corruption_message, directory_message, display_url, open_error_message
from ._alembic_log import quiet_alembic
from ._sqlite import BUSY_TIMEOUT_MS, install_sqlite_pragmas
from ._schema_head import at_head
from ._telemetry_tables import ExperimentLook, UsageRollup
from ._utc import UTCDateTime
from .errors import SchemaVersionError, StoreError

__all__ = [
    "Store",
    "UsageRecord",
    "FeedbackEvent",
    "ModelVersionRow",
    "ExperimentRow",
    "TrainingRunRow",
    "TrainingSample",
    "LoopState",
    "DaemonLease",
    "WriterDrop",
    "ServingEvent",
    "UsageRollup",
    "ExperimentLook",
    "UTCDateTime",
    "schema_head",
    "display_url",
]

log = logging.getLogger("afs_continuous")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _ts(**kwargs: Any) -> Any:
    return Field(sa_column=Column(UTCDateTime(), **kwargs))


class UsageRecord(SQLModel, table=True):
    """One model call as logged by ``log_usage``; ``model`` is the version that served it.

    ``query`` is the final user turn; ``messages_json`` the whole conversation before the response
    (JSON list of ``{"role", "content"}``; None for a record logged with ``query=``). ``experiment_id``
    and ``arm`` are the record's exposure: the experiment and arm ``route()`` assigned the request
    under (None when it was not routed under a running experiment). ``fallback_from``: the version
    the request was routed to but not served by (the engine had lost it; see serving).
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_created_at", "created_at"),
        Index("ix_usage_model_created", "model", "created_at"),
        Index("ix_usage_content_hash", "content_hash"),
        Index("ix_usage_experiment_arm", "experiment_id", "arm"),
    )

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    created_at: datetime = _ts(nullable=False)
    query: str = Field(sa_column=Column(Text, nullable=False))
    response: str = Field(sa_column=Column(Text, nullable=False))
    model: str = Field(sa_column=Column(String(200), nullable=False))
    latency_ms: float | None = None
    quality_score: float | None = None
    unit_id: str | None = Field(default=None, sa_column=Column(String(200)))
    metadata_json: str | None = Field(default=None, sa_column=Column(Text))
    # Filled by the daemon for records that may be trained on (see _queries.backfill_content_hashes),
    # not by the writer: hashing 2 KB of normalised text would cost the hot path ~25 us per record.
    content_hash: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    truncated: bool = False
    query_chars: int = 0
    response_chars: int = 0
    messages_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    experiment_id: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    arm: str | None = Field(default=None, sa_column=Column(String(20), nullable=True))
    prompt_tokens: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    completion_tokens: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    fallback_from: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))


class FeedbackEvent(SQLModel, table=True):
    """Append-only feedback; the latest event per record wins. No foreign key on purpose:
    feedback may arrive before its record is committed."""

    __tablename__ = "feedback_events"
    # (record_id, id, feedback): the latest vote of a record is read from the index alone
    __table_args__ = (Index("ix_feedback_record_latest", "record_id", "id", "feedback"),)

    id: int | None = Field(default=None, primary_key=True)
    record_id: str = Field(sa_column=Column(String(32), nullable=False))
    feedback: int
    created_at: datetime = _ts(nullable=False)
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class ModelVersionRow(SQLModel, table=True):
    """A model version in the registry."""

    __tablename__ = "model_versions"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(200), unique=True, nullable=False))
    path: str | None = Field(default=None, sa_column=Column(Text))
    status: str = Field(sa_column=Column(String(20), nullable=False, index=True))
    created_at: datetime = _ts(nullable=False)
    promoted_at: datetime | None = _ts(nullable=True)
    retired_at: datetime | None = _ts(nullable=True)
    parent: str | None = Field(default=None, sa_column=Column(String(200)))
    training_run_id: int | None = None
    metrics_json: str | None = Field(default=None, sa_column=Column(Text))
    history_json: str = Field(default="[]", sa_column=Column(Text, nullable=False))


class ExperimentRow(SQLModel, table=True):
    """A champion/challenger experiment."""

    __tablename__ = "experiments"

    id: int | None = Field(default=None, primary_key=True)
    champion: str = Field(sa_column=Column(String(200), nullable=False))
    challenger: str = Field(sa_column=Column(String(200), nullable=False))
    traffic_fraction: float
    seed: str = Field(sa_column=Column(String(64), nullable=False))
    status: str = Field(sa_column=Column(String(20), nullable=False, index=True))
    started_at: datetime = _ts(nullable=False)
    ended_at: datetime | None = _ts(nullable=True)
    decision: str | None = Field(default=None, sa_column=Column(String(20)))
    last_evaluation_json: str | None = Field(default=None, sa_column=Column(Text))
    min_p_value: float | None = None
    n_looks: int = 0
    # True for experiments started since schema 0006: evaluated only on records exposed under them
    # (usage_records.experiment_id); older ones keep the attribution by model name.
    exposure_logging: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))


class TrainingRunRow(SQLModel, table=True):
    """One training-run attempt, whatever its outcome (the audit report)."""

    __tablename__ = "training_runs"

    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(sa_column=Column(String(20), nullable=False, index=True))
    trigger: str = Field(sa_column=Column(String(40), nullable=False))
    trigger_json: str | None = Field(default=None, sa_column=Column(Text))
    started_at: datetime = _ts(nullable=False)
    finished_at: datetime | None = _ts(nullable=True)
    data_path: str | None = Field(default=None, sa_column=Column(Text))
    counts_json: str | None = Field(default=None, sa_column=Column(Text))
    source_start: datetime | None = _ts(nullable=True)
    source_end: datetime | None = _ts(nullable=True)
    watermark_json: str | None = Field(default=None, sa_column=Column(Text))
    metrics_json: str | None = Field(default=None, sa_column=Column(Text))
    model_version: str | None = Field(default=None, sa_column=Column(String(200)))
    error: str | None = Field(default=None, sa_column=Column(Text))
    dry_run: bool = False
    owner: str | None = Field(default=None, sa_column=Column(String(200)))
    # The run's own pre-deployment decision (baseline version, challenger path, canary result); later
    # decisions (experiment, promotion, rollback) are derived from the registry and the experiments.
    decision_json: str | None = Field(default=None, sa_column=Column(Text))


class TrainingSample(SQLModel, table=True):
    """A record used by a successful training run; never used again."""

    __tablename__ = "training_samples"
    __table_args__ = (Index("ix_training_samples_hash", "content_hash"),)

    record_id: str = Field(sa_column=Column(String(32), primary_key=True))
    run_id: int = Field(index=True)
    content_hash: str = Field(sa_column=Column(String(32), nullable=False))


class LoopState(SQLModel, table=True):
    """Key/value state of the loop (JSON values)."""

    __tablename__ = "loop_state"

    key: str = Field(sa_column=Column(String(100), primary_key=True))
    value: str = Field(sa_column=Column(Text, nullable=False))


class DaemonLease(SQLModel, table=True):
    """Who may act as the daemon on this store, until when (see :mod:`afs_continuous.lease`)."""

    __tablename__ = "daemon_leases"

    name: str = Field(sa_column=Column(String(100), primary_key=True))
    holder: str = Field(sa_column=Column(String(200), nullable=False))
    acquired_at: datetime = _ts(nullable=False)
    renewed_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)


class WriterDrop(SQLModel, table=True):
    """Records and feedback events a logger could not write, persisted once writing works again
    (in that process, or in a later one through the spool file; see :mod:`afs_continuous._drops`)."""

    __tablename__ = "writer_drops"
    __table_args__ = (Index("ix_writer_drops_last_at", "last_at"),)

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=Column(String(32), unique=True, nullable=False))
    host: str = Field(sa_column=Column(String(200), nullable=False))
    pid: int
    n_records: int
    n_feedback: int
    reason: str = Field(sa_column=Column(Text, nullable=False))
    first_at: datetime = _ts(nullable=False)
    last_at: datetime = _ts(nullable=False)


class ServingEvent(SQLModel, table=True):
    """What the serving engine did or failed to do (see :mod:`afs_continuous.serving`): ``kind`` is
    e.g. ``fallback``, ``reload``, ``load_failed``, ``loaded``, ``unloaded``; ``version`` the model
    version; ``replica`` the engine URL, when one is concerned; ``detail`` the engine's message."""

    __tablename__ = "serving_events"
    __table_args__ = (Index("ix_serving_events_kind_at", "kind", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(nullable=False)
    kind: str = Field(sa_column=Column(String(40), nullable=False))
    version: str = Field(sa_column=Column(String(200), nullable=False))
    replica: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    host: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    pid: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


class Store:
    """Opens (and creates) the store at a SQLAlchemy URL and hands out transactions.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///path/usage.db``. A bare path is
            accepted and treated as a SQLite file; ``~`` is expanded. A new
            SQLite file is created 0600 and missing folders 0700 (owner only).
        auto_upgrade: Create the schema in an empty store and upgrade an older
            one in place (Alembic migrations shipped in the package). False:
            an older store raises :class:`SchemaVersionError` asking for
            ``afs-continuous db upgrade``.
        verify: Check every page of a SQLite store first (:meth:`quick_check`;
            reads the whole file). The daemon and the operator commands do.

    Attributes:
        display_url: The URL with the password hidden (``url`` is the same);
            the real URL is never shown.
        path: The SQLite file (absolute), or None for other backends.

    Raises:
        StoreError: The store cannot be opened, one cause per message: the
            path is a directory; permission denied; the file is not a SQLite
            database; the file is damaged (with a recovery hint); the database
            server cannot be reached (host and port); the database does not
            exist (its name); the login was refused. Passwords are hidden. The
            file is never deleted or overwritten.
        SchemaVersionError: The store was written by a newer afs_continuous
            (or is older and ``auto_upgrade`` is False).

    Example:
        >>> import tempfile, os
        >>> store = Store(os.path.join(tempfile.mkdtemp(), "usage.db"))
        >>> store.get_state("missing", default=3)
        3
    """

    def __init__(self, url: str, *, auto_upgrade: bool = True, verify: bool = False) -> None:
        if "://" not in url:
            url = "sqlite:///" + str(Path(url).expanduser())
        self._url = url
        self.is_sqlite = _is_sqlite(url)
        self.path: Path | None = None
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            database = make_url(url).database
            if database and database != ":memory:":
                self.path = Path(database).expanduser().absolute()
                self._url = url = "sqlite:///" + str(self.path)
                self._create_file()
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            install_sqlite_pragmas(self.engine, self)
        self._lock = threading.Lock()
        try:
            if verify:
                self.quick_check()
            self._prepare_schema(auto_upgrade)
        except StoreError:
            self.engine.dispose()
            raise
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            self.engine.dispose()
            raise StoreError(open_error_message(self._url, self.path, exc)) from exc

    @property
    def display_url(self) -> str:
        """The store's URL with the password hidden (what to print or log)."""
        return display_url(self._url)

    @property
    def url(self) -> str:
        """Same as :attr:`display_url`: the password is hidden (the real URL stays private)."""
        return self.display_url

    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else self.display_url

    def _create_file(self) -> None:
        """Create the SQLite file (0600) and its missing folders (0700); an existing file is left as it is.

        SQLite gives the ``-wal`` and ``-shm`` files the database file's mode, so they are private too.

        Raises:
            StoreError: The path is a directory, or a folder or the file cannot be created.
        """
        assert self.path is not None
        path = self.path
        if path.is_dir():
            raise StoreError(directory_message(path))
        try:
            make_private_dirs(path.parent)
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass  # the store exists (or another process created it a moment ago)
        except PermissionError as exc:
            raise StoreError(f"permission denied creating the store at {path}: {exc.strerror} on {exc.filename}; "
                             "run as the user who owns that folder, or point db_path elsewhere") from exc
        except OSError as exc:
            raise StoreError(f"cannot create the store at {path}: {exc}; point db_path elsewhere") from exc

    def _alembic_config(self, conn: Connection | None = None) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", self._url.replace("%", "%%"))
        if conn is not None:
            cfg.attributes["connection"] = conn
        return cfg

    @quiet_alembic()
    def schema_revision(self, conn: Connection | None = None) -> str | None:
        """The Alembic revision of this store (None for an empty store)."""
        from alembic.runtime.migration import MigrationContext

        if conn is not None:
            return MigrationContext.configure(conn).get_current_revision()
        with self.engine.connect() as c:
            return MigrationContext.configure(c).get_current_revision()

    @quiet_alembic()
    def _prepare_schema(self, auto_upgrade: bool) -> None:
        """Create or upgrade the schema under a lock, so concurrent openers upgrade it once.

        SQLite: inside one ``BEGIN IMMEDIATE`` transaction (DDL is transactional);
        PostgreSQL: under ``pg_advisory_xact_lock``.
        """
        if at_head(self.engine):  # the usual case, answered without importing Alembic
            return
        from alembic import command
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(self._alembic_config())
        head = script.get_current_head()
        current = self.schema_revision()
        if current == head:
            return
        known = {rev.revision for rev in script.walk_revisions()}
        if current is not None and current not in known:
            raise SchemaVersionError(
                f"the store at {self._where} has schema revision {current!r}, newer than this afs_continuous "
                f"supports (head {head!r}); upgrade afs_continuous (pip install -U afs-continuous) or point it elsewhere"
            )
        if current is not None and not auto_upgrade:
            raise SchemaVersionError(
                f"the store at {self._where} has schema revision {current!r}, older than this "
                f"afs_continuous (head {head!r}); run `afs-continuous db upgrade` first"
            )
        with self.write() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(7714829013)"))
            current = self.schema_revision(conn)
            if current == head:
                return  # another process upgraded it while we waited for the lock
            if current is not None:
                log.warning("upgrading the store %s from schema %s to %s", self._where, current, head)
            command.upgrade(self._alembic_config(conn), "head")

    def upgrade(self) -> tuple[str | None, str]:
        """Upgrade the schema to this version's head (what ``afs-continuous db upgrade`` runs).

        Returns:
            (revision before, revision after).
        """
        before = self.schema_revision()
        self._prepare_schema(auto_upgrade=True)
        return before, str(self.schema_revision())

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite); commits, or rolls back on error."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(afs_immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (a consistent snapshot on SQLite WAL)."""
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    # ---- loop state ---------------------------------------------------------------

    def get_state(self, key: str, default: Any = None, *, conn: Connection | None = None) -> Any:
        """Read a JSON value from the ``loop_state`` table (``default`` when absent)."""
        sql = text("SELECT value FROM loop_state WHERE key = :k")
        if conn is not None:
            row = conn.execute(sql, {"k": key}).first()
        else:
            with self.read() as c:
                row = c.execute(sql, {"k": key}).first()
        return default if row is None else json.loads(row[0])

    def set_state(self, key: str, value: Any, *, conn: Connection | None = None) -> None:
        """Write a JSON value to the ``loop_state`` table.

        One atomic upsert (``INSERT ... ON CONFLICT DO UPDATE``), safe when
        several processes write the same key at once.
        """
        if conn is None:
            with self.write() as c:
                self.set_state(key, value, conn=c)
            return
        self._put_state(conn, key, json.dumps(value, default=_json_default), overwrite=True)

    def setdefault_state(self, key: str, value: Any, *, conn: Connection | None = None) -> Any:
        """Write ``value`` under ``key`` unless the key is present; return the stored value.

        Atomic (``INSERT ... ON CONFLICT DO NOTHING``): when several processes
        open a new store at once, exactly one value is written and every
        process reads it back.
        """
        if conn is None:
            with self.write() as c:
                return self.setdefault_state(key, value, conn=c)
        self._put_state(conn, key, json.dumps(value, default=_json_default), overwrite=False)
        return self.get_state(key, conn=conn)

    def _put_state(self, conn: Connection, key: str, payload: str, *, overwrite: bool) -> None:
        table = LoopState.__table__  # type: ignore[attr-defined]
        backend = conn.dialect.name
        if backend in ("sqlite", "postgresql"):
            if backend == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(table).values(key=key, value=payload)
            stmt = (stmt.on_conflict_do_update(index_elements=[table.c.key], set_={"value": stmt.excluded.value})
                    if overwrite else stmt.on_conflict_do_nothing(index_elements=[table.c.key]))
            conn.execute(stmt)
            return
        # other backends: update, else insert in a savepoint; a concurrent insert of the key wins the race
        if overwrite and conn.execute(table.update().where(table.c.key == key).values(value=payload)).rowcount:
            return
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(key=key, value=payload))
        except IntegrityError:
            if overwrite:
                conn.execute(table.update().where(table.c.key == key).values(value=payload))

    def integrity_check(self) -> str:
        """Run SQLite's ``PRAGMA integrity_check`` and return its verdict ('ok' when healthy)."""
        if not self.is_sqlite:
            return "ok"
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA integrity_check").scalar())

    def quick_check(self) -> None:
        """Check a SQLite store's pages with ``PRAGMA quick_check`` (no-op on other backends).

        Reads the whole file (about 0.35 s for a 440 MB store of 200,000
        records with a warm page cache); the daemon and the operator commands
        run it at open, the inference side does not.

        Raises:
            StoreError: The file is damaged or not a SQLite database (the
                message names the path and how to recover; the file is untouched).
        """
        if not self.is_sqlite:
            return
        with self.engine.connect() as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            raise StoreError(corruption_message(self._where, sqlite3.DatabaseError("; ".join(rows))))

    def dispose(self) -> None:
        """Close every pooled connection (call after ``fork`` in the child, or at shutdown).

        The store stays usable: a later statement opens a new connection.
        """
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self.display_url!r})"



def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):  # stored in UTC, whatever zone the clock returned
        return value.astimezone(timezone.utc).isoformat() if value.tzinfo is not None else value.isoformat()
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def dumps(value: Any) -> str:
    """JSON-encode with datetimes as ISO 8601 and enums as their values."""
    return json.dumps(value, default=_json_default, sort_keys=True)


def parse_dt(value: str | None) -> datetime | None:
    """Parse an ISO 8601 string written by :func:`dumps` (``None`` passes through)."""
    return None if value is None else datetime.fromisoformat(value).astimezone(timezone.utc)


_TABLES = (UsageRecord, FeedbackEvent, ModelVersionRow, ExperimentRow, TrainingRunRow, TrainingSample, LoopState,
           DaemonLease, WriterDrop, ServingEvent, UsageRollup, ExperimentLook)


def schema_head() -> str:
    """The newest schema revision this version of afs_continuous knows."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return str(ScriptDirectory.from_config(cfg).get_current_head())
