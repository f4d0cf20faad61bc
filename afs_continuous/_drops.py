"""Dropped records that every process can see, and store failures that say what to do.

A logger that cannot write (queue full, disk full, store locked or damaged)
counts what it dropped. The counts are written to the ``writer_drops`` table
(one row per event: host, pid, counts, reason, first and last time) at the
next successful write of that logger. Records still unwritten when the process
exits can no longer be written by it: their counts go to a spool file next to
a SQLite store (``<store>-drops.jsonl``, mode 0600, one JSON line per event),
and the next logger on that store (any process) moves them into the table at
its next successful write. Each event has a unique id, so an event is stored
once even when two processes pick up the same spool file. For a server
database (PostgreSQL) there is no file next to the store: drops at exit are
logged only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import String, cast, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from .errors import AfsContinuousError, StoreError
from .store import Store, WriterDrop, parse_dt
from ._store_errors import store_problem

__all__ = ["DropTally", "SpoolFile", "drops_summary", "loud_error", "store_errors", "store_problem", "where"]

log = logging.getLogger("afs_continuous")

_DROPS = WriterDrop.__table__  # type: ignore[attr-defined]
RECENT = timedelta(hours=24)


def where(store: Store) -> str:
    """The store's file path, or its URL with the password hidden."""
    if store.path is not None:
        return str(store.path)
    return store.display_url


def loud_error(msg: str, *args: Any) -> None:
    """Log at ERROR on ``afs_continuous``; also print to stderr when no handler would show it.

    Without any handler Python's ``logging.lastResort`` prints the record; a
    logger whose only handlers are ``NullHandler``s (a library default) would
    swallow it, so then the message goes to stderr directly.
    """
    log.error(msg, *args)
    if not log.isEnabledFor(logging.ERROR):
        return
    node: logging.Logger | None = log
    visible = False
    found = False
    while node is not None:
        for handler in node.handlers:
            found = True
            if not isinstance(handler, logging.NullHandler):
                visible = True
        if not node.propagate:
            break
        node = node.parent
    if found and not visible:
        try:
            sys.stderr.write("afs_continuous ERROR: " + (msg % args if args else msg) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - stderr closed at exit: nothing more we can do
            pass




@contextmanager
def store_errors(store: Store, doing: str) -> Iterator[None]:
    """Turn a raw database error into a :class:`StoreError` naming the store, the cause and the fix."""
    try:
        yield
    except AfsContinuousError:
        raise
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise StoreError(f"could not {doing} the store {where(store)}: {store_problem(exc)}") from exc


@dataclass
class DropTally:
    """Drops of one logger not yet written to ``writer_drops`` (guarded by the logger's lock)."""

    n_records: int = 0
    n_feedback: int = 0
    reason: str = ""
    first_at: datetime | None = None
    last_at: datetime | None = None

    def add(self, n_records: int, n_feedback: int, reason: str, now: datetime) -> None:
        self.n_records += n_records
        self.n_feedback += n_feedback
        self.reason = reason
        self.first_at = now if self.first_at is None else min(self.first_at, now)
        self.last_at = now if self.last_at is None else max(self.last_at, now)

    def merge(self, other: "DropTally") -> None:
        if other.n_records or other.n_feedback:
            assert other.first_at is not None and other.last_at is not None
            self.add(other.n_records, other.n_feedback, self.reason or other.reason, other.first_at)
            self.last_at = max(self.last_at or other.last_at, other.last_at)

    def take(self) -> "DropTally":
        """Return the pending counts and reset them."""
        taken = DropTally(self.n_records, self.n_feedback, self.reason, self.first_at, self.last_at)
        self.n_records = self.n_feedback = 0
        self.first_at = self.last_at = None
        return taken

    def __bool__(self) -> bool:
        return bool(self.n_records or self.n_feedback)

    def row(self, event_id: str | None = None) -> dict[str, Any]:
        return {"event_id": event_id or uuid.uuid4().hex, "host": socket.gethostname()[:200], "pid": os.getpid(),
                "n_records": self.n_records, "n_feedback": self.n_feedback, "reason": self.reason[:2000],
                "first_at": self.first_at, "last_at": self.last_at}


class SpoolFile:
    """The drop spool next to a SQLite store: written at exit, emptied by the next logger."""

    def __init__(self, store_path: Path) -> None:
        self.path = store_path.with_name(store_path.name + "-drops.jsonl")
        self._claimed: list[Path] = []
        self._sizes: dict[Path, int] = {}  # bytes of each claimed file that were read
        self._scanned = False

    def append(self, tally: DropTally) -> None:
        """Append one event (one short line, ``O_APPEND``: whole even with concurrent writers)."""
        row = tally.row()
        line = json.dumps({**row, "first_at": row["first_at"].isoformat(), "last_at": row["last_at"].isoformat()})
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> bool:
        """Whether there is anything to move into the store (cheap: one ``stat``)."""
        if not self._scanned:  # once per logger: files claimed by a process that died before storing them
            self._scanned = True
            self._claimed += sorted(self.path.parent.glob(self.path.name + ".*"))
        return bool(self._claimed) or self.path.exists()

    def store_into(self, conn: Connection) -> int:
        """Insert the spooled events not stored yet (call inside a write transaction); returns how many.

        Call :meth:`done` after the transaction committed.
        """
        try:  # claim the spool: events appended after this go to a new file, never lost
            claimed = self.path.with_name(f"{self.path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(self.path, claimed)
            self._claimed.append(claimed)
        except FileNotFoundError:
            pass
        rows: dict[str, dict[str, Any]] = {}
        for path in self._claimed:
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # stored and removed by another logger meanwhile
                continue
            self._sizes[path] = len(data)
            lines = data.decode("utf-8", errors="replace").split("\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    row = {k: obj[k] for k in ("event_id", "host", "pid", "n_records", "n_feedback", "reason")}
                    row["first_at"], row["last_at"] = parse_dt(obj["first_at"]), parse_dt(obj["last_at"])
                    rows[str(row["event_id"])] = row
                except (ValueError, KeyError, TypeError):
                    log.warning("skipped a malformed line of the drop spool %s", path)
        if not rows:
            return 0
        known = set(conn.execute(select(_DROPS.c.event_id).where(_DROPS.c.event_id.in_(list(rows)))).scalars())
        new = [r for k, r in rows.items() if k not in known]
        if new:
            conn.execute(insert(_DROPS), new)
        return len(new)

    def done(self) -> None:
        """Remove the claimed spool files whose events are in the store now. A file that grew after it was
        read (an exiting process appended to it while it was being claimed) is kept for the next write."""
        kept = []
        for path in self._claimed:
            try:
                if path.stat().st_size != self._sizes.get(path):
                    kept.append(path)
                    continue
            except FileNotFoundError:
                continue
            path.unlink(missing_ok=True)
        self._claimed = kept
        self._sizes = {}


def drops_summary(conn: Connection, now: datetime) -> dict[str, Any]:
    """Drops of every process, as stored: totals, the last 24 hours, and the latest event.

    Returns:
        ``{"records", "feedback", "events", "processes", "recent_records", "recent_feedback",
        "last_at", "last_reason", "last_host", "last_pid"}`` (counts are ints; times ISO 8601 or None).
    """
    d = _DROPS.c
    total = conn.execute(select(func.coalesce(func.sum(d.n_records), 0), func.coalesce(func.sum(d.n_feedback), 0),
                                func.count(), func.count(func.distinct(d.host + ":" + cast(d.pid, String))))).one()
    recent = conn.execute(select(func.coalesce(func.sum(d.n_records), 0), func.coalesce(func.sum(d.n_feedback), 0))
                          .where(d.last_at >= now - RECENT)).one()
    last = conn.execute(select(d.last_at, d.reason, d.host, d.pid).order_by(d.last_at.desc(), d.id.desc()).limit(1)).first()
    return {
        "records": int(total[0]), "feedback": int(total[1]), "events": int(total[2]), "processes": int(total[3]),
        "recent_records": int(recent[0]), "recent_feedback": int(recent[1]),
        "last_at": last[0].isoformat() if last else None, "last_reason": last[1] if last else None,
        "last_host": last[2] if last else None, "last_pid": last[3] if last else None,
    }
