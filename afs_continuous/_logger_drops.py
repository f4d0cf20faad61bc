"""What ``UsageLogger`` does with records it could not write: count them, report them, persist the counts (private).

A mixin of :class:`~afs_continuous.logger.UsageLogger` (its attributes are the logger's): every
record or feedback event that is not written is counted in this process and in the store's
``writer_drops`` table (see :mod:`afs_continuous._drops`), and said at ERROR level.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import insert

from ._drops import loud_error, store_problem, where
from .store import WriterDrop

__all__ = ["DropAccounting"]

log = logging.getLogger("afs_continuous")

_DROPS = WriterDrop.__table__  # type: ignore[attr-defined]


class DropAccounting:
    """Drop counting for the logger (a mixin; the state lives on the logger)."""

    _tally_lock: Any
    _dropped: list[int]
    _tally: Any
    _spool: Any
    _write_lock: Any
    store: Any
    n_dropped: int
    n_logged: int
    n_feedback: int
    n_committed: int
    _fb_committed: int
    _last_drop_log: float
    last_error: str | None
    _now: Any  # the logger's clock (a zero-argument callable)

    def _count_drop(self, n_records: int, n_feedback: int, why: str, *, report: bool = True) -> None:
        """Count records/events that were not written: in this process, for the store, and say so (ERROR)."""
        with self._tally_lock:
            self._dropped[0] += n_records
            self._dropped[1] += n_feedback
            self.n_dropped += n_records + n_feedback
            self._tally.add(n_records, n_feedback, why, self._now())
        now = time.monotonic()
        if report and now - self._last_drop_log >= 10.0:
            self._last_drop_log = now
            loud_error("afs_continuous is DROPPING records: %d records and %d feedback events not written to the "
                       "store %s so far: %s. They are counted in the store (writer_drops, shown by `afs-continuous "
                       "status`) once writing works again.", self._dropped[0], self._dropped[1], where(self.store), why)

    def _persist_drops(self) -> None:
        """Write the pending drop counts (and any spooled by exited processes) to ``writer_drops``.

        Own transaction after a successful batch, so a failure here never costs a record.
        """
        with self._tally_lock:
            tally = self._tally.take()
        try:
            with self._write_lock, self.store.write() as conn:
                if tally:
                    conn.execute(insert(_DROPS), [tally.row()])
                if self._spool is not None:
                    self._spool.store_into(conn)
            if self._spool is not None:
                self._spool.done()
        except Exception as exc:  # noqa: BLE001 - keep the counts for the next successful write
            log.warning("could not record dropped-record counts in the store yet: %s", store_problem(exc))
            with self._tally_lock:
                self._tally.merge(tally)

    def _unwritten(self) -> tuple[int, int]:
        """(records, feedback events) handed over to this logger and neither committed nor counted as dropped."""
        with self._tally_lock:
            return (max(0, self.n_logged - self.n_committed - self._dropped[0]),
                    max(0, self.n_feedback - self._fb_committed - self._dropped[1]))

    def _abandon(self, waited_s: float) -> None:
        """At exit, when the writer could not commit in time: say how much is lost and why (one ERROR line),
        and spool the counts so that the next logger on this store records them in ``writer_drops``."""
        n_records, n_feedback = self._unwritten()
        lost = ""
        if n_records or n_feedback:
            why = (f"not written before the process exited: the store did not accept writes within {waited_s:.0f} s "
                   f"({self.last_error or 'no error: the writer was still waiting for the write lock, held by another process'})")
            lost = f"LOST {n_records} records and {n_feedback} feedback events at exit: {why}; "
            self._count_drop(n_records, n_feedback, why, report=False)
        with self._tally_lock:
            tally = self._tally.take()
        if not tally:
            return
        if self._spool is None:
            counted = "not counted in the store (a server database has no spool file beside it)"
        else:
            try:
                self._spool.append(tally)
                counted = f"the next logger on this store counts them in writer_drops (from {self._spool.path})"
            except OSError as exc:
                counted = f"not counted in the store (writing {self._spool.path} failed: {exc})"
        reason = "" if lost else f" (last reason: {tally.reason})"
        loud_error("afs_continuous %sstore %s; in all %d records and %d feedback events dropped by this process were "
                   "never written%s; %s", lost, where(self.store), tally.n_records, tally.n_feedback, reason, counted)
