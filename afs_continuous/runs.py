"""Training-run reports: one row per attempt, whatever its outcome.

Statuses:

- ``generating`` / ``training``: in progress (owner = host:pid);
- ``skipped``: too few new samples, train_fn never called;
- ``data_ready``: data prepared, no training asked for (``--no-train``) or no train_fn;
- ``failed``: train_fn raised, timed out or returned an unusable result (reason stored);
- ``deployed``: the new version is the challenger of a running experiment;
- ``promoted``: the new version became champion;
- ``rejected``: the experiment ended without promoting it;
- ``rolled_back``: promoted, then rolled back by the drift monitor;
- ``interrupted``: the process died mid-run (found at the next start).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from .clock import Clock, utc_now
from .errors import NotFoundError
from .store import Store, TrainingRunRow, dumps

__all__ = ["RunStatus", "TrainingRun", "TrainingRunLog", "owner_id"]

R = TrainingRunRow.__table__  # type: ignore[attr-defined]


class RunStatus(str, Enum):
    """Status of a training run (see the module docstring)."""

    GENERATING = "generating"
    TRAINING = "training"
    SKIPPED = "skipped"
    DATA_READY = "data_ready"
    FAILED = "failed"
    DEPLOYED = "deployed"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    INTERRUPTED = "interrupted"


ACTIVE = (RunStatus.GENERATING.value, RunStatus.TRAINING.value)
TRAINED = (RunStatus.DEPLOYED.value, RunStatus.PROMOTED.value, RunStatus.REJECTED.value, RunStatus.ROLLED_BACK.value)


def owner_id() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class TrainingRun:
    """A training-run report."""

    id: int
    status: RunStatus
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    data_path: str | None
    counts: dict[str, Any]
    source_start: datetime | None
    source_end: datetime | None
    metrics: dict[str, Any]
    model_version: str | None
    error: str | None
    dry_run: bool
    trigger_details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-friendly dict."""
        return {
            "id": self.id, "status": self.status.value, "trigger": self.trigger,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "data_path": self.data_path, "counts": self.counts,
            "source_start": self.source_start.isoformat() if self.source_start else None,
            "source_end": self.source_end.isoformat() if self.source_end else None,
            "metrics": self.metrics, "model_version": self.model_version, "error": self.error,
            "dry_run": self.dry_run, "trigger_details": self.trigger_details,
        }


def _to_run(row: Any) -> TrainingRun:
    m = row._mapping
    return TrainingRun(
        id=m["id"], status=RunStatus(m["status"]), trigger=m["trigger"], started_at=m["started_at"],
        finished_at=m["finished_at"], data_path=m["data_path"],
        counts=json.loads(m["counts_json"]) if m["counts_json"] else {},
        source_start=m["source_start"], source_end=m["source_end"],
        metrics=json.loads(m["metrics_json"]) if m["metrics_json"] else {},
        model_version=m["model_version"], error=m["error"], dry_run=bool(m["dry_run"]),
        trigger_details=json.loads(m["trigger_json"]) if m["trigger_json"] else {},
    )


class TrainingRunLog:
    """Creates and updates training-run reports in the store."""

    def __init__(self, store: Store, *, clock: Clock = utc_now) -> None:
        self.store = store
        self.clock = clock

    def create(self, trigger: str, trigger_details: dict[str, Any], *, dry_run: bool = False) -> int:
        with self.store.write() as conn:
            res = conn.execute(R.insert().values(
                status=RunStatus.GENERATING.value, trigger=trigger, trigger_json=dumps(trigger_details),
                started_at=self.clock(), dry_run=dry_run, owner=owner_id(),
            ))
            return int(res.inserted_primary_key[0])

    def update(self, run_id: int, *, conn: Connection | None = None, finished: bool = False, **values: Any) -> None:
        """Update columns of a run; dict values are stored as JSON (``counts``, ``metrics``)."""
        row: dict[str, Any] = {}
        for key, value in values.items():
            if key in ("counts", "metrics", "watermark"):
                row[f"{key}_json"] = dumps(value)
            elif isinstance(value, Enum):
                row[key] = value.value
            else:
                row[key] = value
        if finished:
            row["finished_at"] = self.clock()
        if conn is None:
            with self.store.write() as c:
                c.execute(update(R).where(R.c.id == run_id).values(**row))
        else:
            conn.execute(update(R).where(R.c.id == run_id).values(**row))

    def get(self, run_id: int) -> TrainingRun:
        """The report of run ``run_id``.

        Raises:
            NotFoundError: No such run.
        """
        with self.store.read() as conn:
            row = conn.execute(select(R).where(R.c.id == run_id)).first()
        if row is None:
            raise NotFoundError(f"unknown training run {run_id}")
        return _to_run(row)

    def list(self, limit: int | None = 20) -> list[TrainingRun]:
        """The most recent runs, newest first."""
        stmt = select(R).order_by(R.c.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.store.read() as conn:
            return [_to_run(r) for r in conn.execute(stmt)]

    def count_trained(self) -> int:
        """Runs whose train_fn produced a model (deployed, promoted or rejected), dry runs excluded."""
        with self.store.read() as conn:
            return int(conn.execute(
                select(func.count()).select_from(R).where(R.c.status.in_(TRAINED), R.c.dry_run.is_(False))
            ).scalar_one())

    def by_version(self, name: str, *, conn: Connection) -> int | None:
        row = conn.execute(select(R.c.id).where(R.c.model_version == name)).first()
        return None if row is None else int(row[0])

    def recover_interrupted(self) -> list[int]:
        """Mark runs left ``generating``/``training`` by a dead process on this host as interrupted.

        Runs owned by a live process, or by another host, are left alone.
        Returns the ids marked.
        """
        host = owner_id().split(":")[0]
        marked = []
        with self.store.write() as conn:
            for run_id, owner in conn.execute(select(R.c.id, R.c.owner).where(R.c.status.in_(ACTIVE))):
                o_host, _, o_pid = (owner or ":").rpartition(":")
                if o_host == host and o_pid.isdigit() and not _pid_alive(int(o_pid)):
                    conn.execute(update(R).where(R.c.id == run_id).values(
                        status=RunStatus.INTERRUPTED.value, finished_at=self.clock(),
                        error=f"process {owner} stopped during the run; found at the next start",
                    ))
                    marked.append(int(run_id))
        return marked
