"""Privacy: deleting every trace of a unit (``forget``), late arrivals, the audit trail (private).

:func:`forget` removes a unit's data (a unit is the ``unit_id`` records were logged under: a user or
a conversation):

1. the unit's texts in the files under ``data_dir`` (rehearsal buffer, kept training sets; matched
   by content, see :mod:`afs_continuous._scrub`), first, so that a failure leaves the rows that let
   a second call find them again;
2. in the store, in batches of :data:`FORGET_BATCH` records, one write transaction each: the
   records' contributions to the rollups (:func:`afs_continuous._rollups.subtract_records`, under
   the writers' lock), their feedback events (with the users' comments), their ``training_samples``
   rows and the ``usage_records`` rows. Writers wait for one batch at most, not for the whole unit;
3. on SQLite, the deleted content is overwritten with zeros (``PRAGMA secure_delete=ON`` for the
   deleting transactions), the write-ahead log, which holds earlier copies of every changed page,
   is checkpointed and truncated to zero bytes (``PRAGMA wal_checkpoint(TRUNCATE)``), and with
   ``vacuum=True`` (the default) the file is rebuilt (``VACUUM``): copies of a row that earlier
   updates left in free space of its page are gone only then. VACUUM rewrites the whole file and
   blocks writers meanwhile (loggers queue their records in memory);
4. one audit entry: when, who, why, how many rows and lines of each kind, the unit id hashed
   (:func:`unit_hash`). Never a text, never the raw unit id.

Late arrivals: a record or feedback event of the unit still queued in another process's logger
(or being written when ``forget`` scans) can reach the store after ``forget`` returned; so can the
samples of a training run that read the unit's records before they were deleted (its rehearsal
update and ``training_samples`` rows come at its end). ``forget`` therefore leaves a *tombstone*
for :data:`TOMBSTONE_DAYS` days in ``loop_state`` (``privacy_tombstones``: the unit hash, the
forgotten record ids and the text keys of their (prompt, response) pairs, never texts), and every
daemon iteration (:func:`sweep`) removes what arrived since: records of the unit created up to the
forget (found by hashing the unit ids of the day before it), feedback and ``training_samples`` rows
of the forgotten record ids, and matching lines of files changed since. Calling ``forget`` again
does the same at once. Records of the unit created after the forget are new data and stay.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from . import _rollups
from ._scrub import scrub_files, text_key, training_files
from ._validate import unit_text
from .store import FeedbackEvent, Store, TrainingRunRow, TrainingSample, UsageRecord, parse_dt

if TYPE_CHECKING:
    from .loop import ContinuousLearningLoop

__all__ = ["ForgetReport", "forget", "maintain", "sweep", "unit_hash", "audit_log", "add_audit", "scrubbing_write",
           "delete_records", "AUDIT_KEY", "TOMBSTONE_KEY", "TOMBSTONE_DAYS", "FORGET_BATCH"]

log = logging.getLogger("afs_continuous")

U = UsageRecord.__table__  # type: ignore[attr-defined]
F = FeedbackEvent.__table__  # type: ignore[attr-defined]
T = TrainingSample.__table__  # type: ignore[attr-defined]
R = TrainingRunRow.__table__  # type: ignore[attr-defined]

#: loop_state key of the audit trail (a JSON list, newest last, at most :data:`AUDIT_MAX` entries).
AUDIT_KEY = "privacy_audit"
AUDIT_MAX = 5000
#: loop_state key of the tombstones of forgotten units.
TOMBSTONE_KEY = "privacy_tombstones"
#: How long the daemon keeps removing late arrivals of a forgotten unit, days.
TOMBSTONE_DAYS = 7
#: How far before the forget a late record may have been created (it waited in a logger), hours.
LATE_WINDOW_HOURS = 24
#: Records per deleting transaction.
FORGET_BATCH = 1000
#: A unit whose newest record is younger than this may have more records in other processes' loggers, seconds.
RECENT_S = 300.0
_CHUNK = 500


def unit_hash(unit_id: str) -> str:
    """The unit id as the audit trail and the tombstones record it: 32 hex characters of SHA-256.

    Unsalted: whoever knows (or guesses) a unit id can check that it was forgotten, which is what
    an answer to an erasure request needs; the audit trail alone does not reveal the id.
    """
    return hashlib.sha256(b"afs-continuous unit\x00" + unit_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class ForgetReport:
    """What :func:`forget` removed.

    Attributes:
        unit_hash: The unit id hashed (:func:`unit_hash`).
        records / feedback_events / training_samples: Store rows deleted.
        rehearsal_samples: Rehearsal-buffer lines removed.
        training_lines: Lines (or parquet rows) removed from kept training sets; ``files`` the files
            rewritten (with the lines removed from each).
        late_arrivals: Records deleted now that were created before an earlier ``forget`` of the unit
            (they reached the store after it).
        newest_record_at: Creation time of the unit's newest deleted record (None: none found).
        recent_activity: The newest record is younger than 5 minutes: other processes may still hold
            records of the unit in their loggers; the daemon removes them when they arrive (for
            :data:`TOMBSTONE_DAYS` days), or call ``forget`` again.
        store: What was done to the store file: ``secure_delete``, ``wal_truncated``, ``vacuumed``
            (SQLite); on a server database the deleted rows' space is reclaimed by its own vacuum.
    """

    unit_hash: str
    records: int = 0
    feedback_events: int = 0
    training_samples: int = 0
    rehearsal_samples: int = 0
    training_lines: int = 0
    files: dict[str, int] = field(default_factory=dict)
    late_arrivals: int = 0
    newest_record_at: datetime | None = None
    recent_activity: bool = False
    store: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601)."""
        out = asdict(self)
        out["newest_record_at"] = self.newest_record_at.isoformat() if self.newest_record_at else None
        return out


# ---- store helpers --------------------------------------------------------------------------------


@contextmanager
def scrubbing_write(store: Store) -> Iterator[Connection]:
    """A write transaction whose deletions overwrite the deleted content with zeros on SQLite
    (``PRAGMA secure_delete=ON`` for this connection, restored afterwards)."""
    with store.write() as conn:
        old = None
        if store.is_sqlite:
            old = conn.exec_driver_sql("PRAGMA secure_delete").scalar()
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        try:
            yield conn
        finally:
            if old is not None:
                try:
                    conn.exec_driver_sql(f"PRAGMA secure_delete={int(old)}")
                except Exception:  # noqa: BLE001 - the connection is broken anyway; the pool drops it
                    pass


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def delete_records(conn: Connection, ids: Sequence[str], *, subtract: bool, samples: bool) -> dict[str, int]:
    """Delete records ``ids`` and their feedback events in the caller's transaction.

    Args:
        subtract: Remove their contributions from the rollups first (forget; retention keeps them).
        samples: Delete their ``training_samples`` rows too (forget; retention keeps the content
            hashes that stop the same content from being trained on twice).

    Returns:
        ``{"records", "feedback_events", "training_samples"}`` rows deleted.
    """
    if subtract:
        _rollups.subtract_records(conn, ids)
    n = {"records": 0, "feedback_events": 0, "training_samples": 0}
    for chunk in _chunks(ids):
        n["feedback_events"] += conn.execute(delete(F).where(F.c.record_id.in_(chunk))).rowcount
        if samples:
            n["training_samples"] += conn.execute(delete(T).where(T.c.record_id.in_(chunk))).rowcount
        n["records"] += conn.execute(delete(U).where(U.c.id.in_(chunk))).rowcount
    return n


def _unit_rows(store: Store, units: set[str], *, until: datetime | None = None, since: datetime | None = None
               ) -> list[tuple[str, datetime, str]]:
    """(id, created_at, text key) of the records logged under ``units``."""
    conds: list[Any] = [U.c.unit_id.in_(sorted(units))]
    if until is not None:
        conds.append(U.c.created_at <= until)
    if since is not None:
        conds.append(U.c.created_at >= since)
    with store.read() as conn:
        rows = conn.execute(select(U.c.id, U.c.created_at, U.c.query, U.c.response).where(*conds))
        return [(rid, at, text_key(q, r)) for rid, at, q, r in rows]


def _delete_ids(store: Store, ids: Sequence[str]) -> dict[str, int]:
    total = {"records": 0, "feedback_events": 0, "training_samples": 0}
    for i in range(0, len(ids), FORGET_BATCH):
        with scrubbing_write(store) as conn:
            for k, v in delete_records(conn, ids[i:i + FORGET_BATCH], subtract=True, samples=True).items():
                total[k] += v
    return total


def _delete_leftovers(store: Store, ids: Sequence[str]) -> dict[str, int]:
    """Feedback events and ``training_samples`` rows of record ids already deleted (late arrivals)."""
    n = {"feedback_events": 0, "training_samples": 0}
    if not ids:
        return n
    with scrubbing_write(store) as conn:
        for chunk in _chunks(ids):
            n["feedback_events"] += conn.execute(delete(F).where(F.c.record_id.in_(chunk))).rowcount
            n["training_samples"] += conn.execute(delete(T).where(T.c.record_id.in_(chunk))).rowcount
    return n


def compact_sqlite(store: Store, *, vacuum: bool) -> dict[str, Any]:
    """VACUUM (optional), then checkpoint the WAL and truncate it; what was done (SQLite only)."""
    if not store.is_sqlite or store.path is None:
        return {"backend": store.engine.dialect.name}
    out: dict[str, Any] = {"backend": "sqlite", "secure_delete": True, "vacuumed": False, "wal_truncated": False}
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            if vacuum:
                cur.execute("VACUUM")
                out["vacuumed"] = True
            busy, _log, _done = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            out["wal_truncated"] = busy == 0
        except sqlite3.OperationalError as exc:  # locked past the busy timeout: the deletion itself stands
            out["error"] = str(exc)
            log.warning("forget: could not compact the store %s: %s; the rows are deleted, run "
                        "`afs-continuous forget` again later to rewrite the file", store.path, exc)
        finally:
            cur.close()
    finally:
        raw.close()
    return out


# ---- audit trail and tombstones -----------------------------------------------------------------


def add_audit(store: Store, entry: dict[str, Any], *, conn: Connection | None = None) -> None:
    """Append one entry to the audit trail (``loop_state.privacy_audit``; the oldest go beyond
    :data:`AUDIT_MAX` entries). Entries hold counts and hashes, never user text."""
    if conn is None:
        with store.write() as c:
            add_audit(store, entry, conn=c)
        return
    entries = store.get_state(AUDIT_KEY, [], conn=conn)
    entries.append(entry)
    store.set_state(AUDIT_KEY, entries[-AUDIT_MAX:], conn=conn)
    log.info("privacy: %s %s", entry.get("action"), {k: v for k, v in entry.items() if k not in ("action", "reason")})


def audit_log(store: Store) -> list[dict[str, Any]]:
    """The audit trail of deletions, oldest first (forget, late arrivals, retention passes)."""
    return list(store.get_state(AUDIT_KEY, []))


def _tombstones(store: Store, conn: Connection | None = None) -> dict[str, Any]:
    return dict(store.get_state(TOMBSTONE_KEY, {}, conn=conn) or {})


def _save_tombstone(store: Store, h: str, *, at: datetime, until: datetime, ids: Iterable[str],
                    keys: Iterable[str], scrubbed_wall: float) -> None:
    """Create or extend the tombstone of unit hash ``h`` (record ids and text keys are merged);
    ``scrubbed_wall`` is the wall-clock time (file modification times) its files were last scrubbed."""
    with store.write() as conn:
        stones = _tombstones(store, conn)
        old = stones.get(h, {})
        stones[h] = {"at": at.isoformat(), "until": until.isoformat(), "scrubbed_wall": scrubbed_wall,
                     "record_ids": sorted(set(old.get("record_ids", [])) | set(ids)),
                     "keys": sorted(set(old.get("keys", [])) | set(keys))}
        store.set_state(TOMBSTONE_KEY, stones, conn=conn)


# ---- forget -------------------------------------------------------------------------------------


def _files(loop: "ContinuousLearningLoop") -> tuple[Path, list[Path]]:
    """(the rehearsal buffer, the kept training files)."""
    with loop.store.read() as conn:
        paths = list(conn.execute(select(R.c.data_path).where(R.c.data_path.is_not(None))).scalars())
    return loop.generator.rehearsal_buffer.path, training_files(loop.config.data_path, paths)


def _scrub(loop: "ContinuousLearningLoop", keys: set[str], report: ForgetReport,
           modified_after: float | None = None) -> tuple[float, bool]:
    """Scrub the rehearsal buffer and the training files (those modified since ``modified_after``,
    wall-clock seconds); returns (the wall-clock time the scrub started, whether any file was read)."""
    started = time.time()
    buffer, files = _files(loop)
    if modified_after is not None:
        files = [p for p in files if p.stat().st_mtime >= modified_after]
        check_buffer = buffer.is_file() and buffer.stat().st_mtime >= modified_after
    else:
        check_buffer = True
    if check_buffer:
        report.rehearsal_samples += scrub_files([buffer], keys).get(str(buffer), 0)
    changed = scrub_files([p for p in files if p != buffer], keys)
    report.training_lines += sum(changed.values())
    for path, n in changed.items():
        report.files[path] = report.files.get(path, 0) + n
    return started, bool(files) or (check_buffer and buffer.is_file())


def _add_counts(report: ForgetReport, counts: dict[str, int]) -> None:
    report.records += counts.get("records", 0)
    report.feedback_events += counts.get("feedback_events", 0)
    report.training_samples += counts.get("training_samples", 0)


def forget(loop: "ContinuousLearningLoop", unit_id: Any, *, actor: str = "operator", reason: str | None = None,
           vacuum: bool = True) -> ForgetReport:
    """Delete every trace of ``unit_id``; see :meth:`ContinuousLearningLoop.forget` and the module docstring."""
    unit = unit_text(unit_id)
    if unit is None or unit == "":
        raise ValueError("unit_id must be a non-empty str or an int (the unit the records were logged under), "
                         f"got {unit_id!r}")
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError(f"actor must be a non-empty str (who asked for the deletion), got {actor!r}")
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"reason must be a str or None, got {type(reason).__name__}")
    store = loop.store
    loop.logger.flush()  # this process's queued records of the unit are deleted too
    h = unit_hash(unit)
    now = loop.clock()
    stone = _tombstones(store).get(h)
    before = parse_dt(stone["at"]) if stone else None
    report = ForgetReport(unit_hash=h)
    rows = _unit_rows(store, {unit})
    keys = {k for _, _, k in rows} | set(stone.get("keys", []) if stone else [])
    scrubbed, _ = _scrub(loop, keys, report)  # files first: if this fails, the rows that find the texts stay
    all_ids: set[str] = set()
    for _round in range(3):  # records written while we deleted are found by the next scan
        ids = sorted({rid for rid, _, _ in rows} - all_ids)
        if not ids:
            break
        _add_counts(report, _delete_ids(store, ids))
        all_ids.update(ids)
        times = [at for _rid, at, _k in rows]
        report.newest_record_at = max(times + ([report.newest_record_at] if report.newest_record_at else []))
        report.late_arrivals += sum(1 for at in times if before is not None and at <= before)
        rows = [r for r in _unit_rows(store, {unit}) if r[0] not in all_ids]
        keys |= {k for _, _, k in rows}
    leftovers = sorted(set(stone.get("record_ids", [])) - all_ids) if stone else []
    _add_counts(report, _delete_leftovers(store, leftovers))
    if report.newest_record_at is not None:
        report.recent_activity = (now - report.newest_record_at).total_seconds() < RECENT_S
    _save_tombstone(store, h, at=now, until=now + timedelta(days=TOMBSTONE_DAYS), ids=all_ids, keys=keys,
                    scrubbed_wall=scrubbed)
    report.store = compact_sqlite(store, vacuum=vacuum) if store.is_sqlite else {
        "backend": store.engine.dialect.name,
        "note": "deleted rows stay in the table's pages until the server's vacuum reuses them"}
    add_audit(store, {"at": now.isoformat(), "action": "forget", "actor": actor, "reason": reason,
                      "unit_hash": h, "counts": _counts(report), "late_arrivals": report.late_arrivals})
    return report


def _counts(report: ForgetReport) -> dict[str, int]:
    return {"records": report.records, "feedback_events": report.feedback_events,
            "training_samples": report.training_samples, "rehearsal_samples": report.rehearsal_samples,
            "training_lines": report.training_lines, "files": len(report.files)}


def maintain(loop: "ContinuousLearningLoop", now: datetime) -> dict[str, Any] | None:
    """The daemon's privacy step of each iteration: late arrivals of forgotten units (:func:`sweep`),
    then retention (:func:`afs_continuous._retention.apply_retention`). None when neither applies."""
    from ._retention import apply_retention

    try:
        late = sweep(loop, now)
    except OSError as exc:  # a file that cannot be rewritten must not stop training: say so, retry next time
        log.error("could not remove late arrivals of forgotten units from the files: %s; retrying at the next check",
                  exc)
        late = {"error": str(exc)}
    out = {"late_arrivals": late, "retention": apply_retention(loop, now)}
    return out if any(v is not None for v in out.values()) else None


# ---- the daemon's sweep of late arrivals ------------------------------------------------------------


def sweep(loop: "ContinuousLearningLoop", now: datetime) -> dict[str, Any] | None:
    """Remove what reached the store or the files after a ``forget`` (see the module docstring).

    Returns:
        ``{"units": n, "records", "feedback_events", "training_samples", "rehearsal_samples",
        "training_lines"}`` when something was removed, else None. Expired tombstones are dropped.
    """
    store = loop.store
    stones = _tombstones(store)
    if not stones:
        return None
    live = {h: s for h, s in stones.items() if _alive(s, now)}
    if len(live) != len(stones):
        with store.write() as conn:  # re-read: a forget in another process may have added one meanwhile
            current = _tombstones(store, conn)
            store.set_state(TOMBSTONE_KEY, {h: s for h, s in current.items() if _alive(s, now)}, conn=conn)
    total: dict[str, int] = {}
    for h, stone in live.items():
        report = _sweep_one(loop, h, stone, now)
        counts = _counts(report)
        counts.pop("files")
        if any(counts.values()):
            add_audit(store, {"at": now.isoformat(), "action": "forget_late_arrivals", "actor": "daemon",
                              "reason": None, "unit_hash": h, "counts": counts})
            total["units"] = total.get("units", 0) + 1
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
    return total or None


def _alive(stone: dict[str, Any], now: datetime) -> bool:
    until = parse_dt(stone.get("until"))
    return until is not None and until > now


def _sweep_one(loop: "ContinuousLearningLoop", h: str, stone: dict[str, Any], now: datetime) -> ForgetReport:
    store = loop.store
    at = parse_dt(stone["at"])
    assert at is not None
    report = ForgetReport(unit_hash=h)
    with store.read() as conn:
        candidates = conn.execute(select(U.c.unit_id).where(U.c.created_at <= at, U.c.created_at >= at - timedelta(
            hours=LATE_WINDOW_HOURS), U.c.unit_id.is_not(None)).distinct()).scalars()
        units = {u for u in candidates if unit_hash(u) == h}
    # the same window as the candidates: a range of the created_at index, not a scan of the table
    rows = _unit_rows(store, units, until=at, since=at - timedelta(hours=LATE_WINDOW_HOURS)) if units else []
    keys = set(stone.get("keys", [])) | {k for _, _, k in rows}
    scrubbed = stone.get("scrubbed_wall")
    started, read = _scrub(loop, keys, report, modified_after=float(scrubbed) - 1.0 if scrubbed is not None else None)
    ids = sorted({rid for rid, _, _ in rows})
    if ids:
        _add_counts(report, _delete_ids(store, ids))
        report.late_arrivals = len(ids)
    _add_counts(report, _delete_leftovers(store, sorted(set(stone.get("record_ids", [])) - set(ids))))
    if read or ids:
        _save_tombstone(store, h, at=at, until=parse_dt(stone["until"]) or now, ids=ids, keys=keys,
                        scrubbed_wall=started if read else float(scrubbed or started))
    if report.records or report.feedback_events or report.training_samples:
        if store.is_sqlite:
            compact_sqlite(store, vacuum=False)
    return report
