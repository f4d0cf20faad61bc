"""SQLite connection set-up of the store (private; see :mod:`afs_continuous.store`)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ._store_errors import corruption_message, is_corruption
from .errors import StoreError

__all__ = ["BUSY_TIMEOUT_MS", "install_sqlite_pragmas"]

BUSY_TIMEOUT_MS = 30_000
#: Page size of a new store file, bytes (SQLite's default is 4,096). A record is a few KB of text and
#: every write transaction rewrites the pages it touched (in the WAL, then at the checkpoint): with
#: larger pages the logger's writer costs less CPU per record (13.9 against 15.9 us per record or
#: vote on a store of a million records, ``benchmarks/bench_store_scale.py``), and a record of 2 KB
#: takes less space (2.6 against 3.1 GB per million). An existing file keeps its page size: a WAL file
#: converts only out of WAL mode (``journal_mode=DELETE``, ``page_size``, ``VACUUM``, back to WAL;
#: docs/deployment.md).
PAGE_SIZE = 16_384


def _use_wal(cur: sqlite3.Cursor) -> None:
    """Switch the file to WAL (once per file; a no-op when it is WAL already).

    Switching needs an exclusive lock and SQLite does not wait for it through the
    busy handler: when several processes open a new store at once, all but one get
    "database is locked" at once. Retry with backoff up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            row = cur.execute("PRAGMA journal_mode").fetchone()
            if row is None or str(row[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def install_sqlite_pragmas(engine: Engine, store: Any) -> None:
    """Per-connection pragmas (WAL, synchronous=NORMAL, busy timeout, foreign keys, page size of a new
    file), ``BEGIN IMMEDIATE``
    for write transactions, and damaged-file errors turned into :class:`StoreError` naming ``store``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN (so BEGIN IMMEDIATE works).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only takes effect on a new, empty file
        _use_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("afs_immediate"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    @event.listens_for(engine, "handle_error")
    def _on_error(ctx: Any) -> BaseException | None:
        # A damaged or foreign file is not transient: say so with the path and the way out,
        # wherever the statement ran (the daemon, an operator command, the logger's writer).
        if is_corruption(ctx.original_exception):
            return StoreError(corruption_message(store._where, ctx.original_exception))
        return None
