"""Retention: the daemon deletes raw records and feedback older than ``retention_days`` (private).

Each daemon iteration with ``retention_days`` set deletes, in transactions of at most
:data:`RETENTION_BATCH` records (a writer waits for one of them at most):

- the usage records created before the *bound* and their feedback events. The bound is
  ``now - retention_days``, moved back to what the daemon still needs: the start of the running
  experiment (its evaluation reads every record exposed under it) and the start of the
  post-promotion drift watch (it compares the champion's records since the promotion with the
  baseline); records created since either start are kept until the experiment or watch ends;
- feedback events older than ``now - retention_days`` whose record is not stored (the record was
  deleted, or never came).

Not deleted: the rollups (they hold no text, the status and the reports keep their history, so the
aggregates are not subtracted), ``training_samples`` (record ids and content hashes, no text: they
keep the same content from being trained on twice), experiment looks, training-run reports, the
audit trail. On SQLite the deletions overwrite the deleted content with zeros
(``PRAGMA secure_delete=ON``); earlier copies of the pages stay in the write-ahead log until it is
reused (``forget`` truncates it).

The training window is not protected: a record older than the retention is deleted whether or not
a training run used it; keep ``retention_days`` longer than the time between training runs
(``trigger_config.schedule_interval_hours``, the cooldown) or untrained records expire, and longer
than ``quality_window_hours + quality_baseline_hours`` or the quality-drop trigger compares thinner
windows. A training run itself never overlaps a retention pass: both run in the daemon's iteration
under its lease.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, exists, select

from ._privacy import F, U, add_audit, delete_records, scrubbing_write
from .store import parse_dt

if TYPE_CHECKING:
    from .loop import ContinuousLearningLoop

__all__ = ["apply_retention", "retention_bound", "RETENTION_BATCH"]

log = logging.getLogger("afs_continuous")

#: Records (or orphan feedback events) per deleting transaction.
RETENTION_BATCH = 1000


def retention_bound(loop: "ContinuousLearningLoop", now: datetime,
                    days: float) -> tuple[datetime, datetime, str | None]:
    """(the record bound, the feedback cutoff ``now - days``, what moved the bound back or None)."""
    cutoff = now - timedelta(days=days)
    bound, why = cutoff, None
    exp = loop.experiments.active()
    if exp is not None and exp.started_at < bound:
        bound, why = exp.started_at, f"experiment {exp.id} running since {exp.started_at.isoformat()}"
    watch = loop.monitor.active()
    since = parse_dt(watch.get("since")) if watch else None
    if since is not None and since < bound:
        bound, why = since, f"drift watch of {watch['champion']} since {since.isoformat()}"  # type: ignore[index]
    return bound, cutoff, why


def apply_retention(loop: "ContinuousLearningLoop", now: datetime, *,
                    batch: int = RETENTION_BATCH) -> dict[str, Any] | None:
    """Delete what is older than ``loop.config.retention_days`` (see the module docstring).

    Args:
        loop: The loop (its store, running experiment and drift watch).
        now: The iteration's time (the loop's clock).
        batch: Rows per transaction.

    Returns:
        None when ``retention_days`` is None; else ``{"bound", "cutoff", "kept_for", "records",
        "feedback_events", "orphan_feedback_events"}`` (``kept_for``: what moved the bound back).
        An audit entry is added when rows were deleted.
    """
    days = loop.config.retention_days
    if days is None:
        return None
    store = loop.store
    bound, cutoff, why = retention_bound(loop, now, days)
    n_rec = n_fb = n_orphan = 0
    while True:
        with scrubbing_write(store) as conn:
            ids = list(conn.execute(select(U.c.id).where(U.c.created_at < bound).order_by(U.c.created_at, U.c.id)
                                    .limit(batch)).scalars())
            if not ids:
                break
            counts = delete_records(conn, ids, subtract=False, samples=False)
        n_rec += counts["records"]
        n_fb += counts["feedback_events"]
    orphan = select(F.c.id).where(F.c.created_at < cutoff, ~exists().where(U.c.id == F.c.record_id)).limit(batch)
    while True:
        with scrubbing_write(store) as conn:
            fids = list(conn.execute(orphan).scalars())
            if fids:
                n_orphan += conn.execute(delete(F).where(F.c.id.in_(fids))).rowcount
        if len(fids) < batch:
            break
    out = {"bound": bound.isoformat(), "cutoff": cutoff.isoformat(), "kept_for": why, "records": n_rec,
           "feedback_events": n_fb, "orphan_feedback_events": n_orphan}
    if n_rec or n_fb or n_orphan:
        add_audit(store, {"at": now.isoformat(), "action": "retention", "actor": "daemon",
                          "reason": f"retention_days={days:g}", "bound": out["bound"],
                          "counts": {"records": n_rec, "feedback_events": n_fb, "orphan_feedback_events": n_orphan}})
    return out
