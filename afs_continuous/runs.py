"""Training-run reports: one row per attempt, whatever its outcome.

Statuses:

- ``generating`` / ``training``: in progress (owner = host:pid);
- ``skipped``: too few new samples, train_fn never called;
- ``data_ready``: data prepared, no training asked for (``--no-train``) or no train_fn;
- ``failed``: train_fn or eval_fn raised, timed out or returned an unusable result (reason stored);
- ``dry_run``: trained and evaluated (canary included) with ``--dry-run``; nothing deployed or consumed;
- ``deploy_failed``: trained (and passed the canary gate), but the serving engine refused to load it or
  failed the check generation on a replica (which one and why: the error and ``gate["deploy"]``); nothing
  was registered or routed and no data consumed; the champion keeps serving;
- ``deployed``: the new version is the challenger of a running experiment;
- ``promoted``: the new version became champion (by the experiment, by hand, or at once without A/B testing);
- ``rejected``: the canary gate refused it, or the experiment ended without promoting it;
- ``rolled_back``: promoted, then rolled back (by the drift monitor or an operator);
- ``interrupted``: the process died mid-run (found at the next start).

A report (:class:`TrainingRun`) joins the run row with what happened later to
the version it produced: that version's audit history in the registry (who
promoted, retired or rolled it back, when and why) and its experiment (the
decision and the reasons of the last evaluation). Only the run's own
pre-deployment decision (baseline version, challenger path, canary result) is
stored on the run row (``decision_json``); the rest is derived when read, so
there is one source of truth for each fact.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Iterable

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from .clock import Clock, utc_now
from .errors import NotFoundError
from .store import ExperimentRow, ModelVersionRow, Store, TrainingRunRow, dumps

__all__ = ["RunStatus", "TrainingRun", "TrainingRunLog", "owner_id"]

R = TrainingRunRow.__table__  # type: ignore[attr-defined]
_V = ModelVersionRow.__table__  # type: ignore[attr-defined]
_E = ExperimentRow.__table__  # type: ignore[attr-defined]


class RunStatus(str, Enum):
    """Status of a training run (see the module docstring)."""

    GENERATING = "generating"
    TRAINING = "training"
    SKIPPED = "skipped"
    DATA_READY = "data_ready"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    DEPLOY_FAILED = "deploy_failed"
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
    """A training-run report: what triggered it, what data it used, what was decided and why.

    Attributes:
        id: Run id (``afs-continuous report ID``).
        status: See :class:`RunStatus`.
        trigger: The trigger that started it (``sample_count``, ``schedule``, ``quality_drop``, ``manual``).
        counts: Samples per generator stage (``candidates`` ... ``total``).
        source_start / source_end: Creation-time range of the records trained on.
        metrics: What train_fn returned (the challenger's training metrics).
        model_version: The version it registered, if it was deployed.
        gate: The pre-deployment decision stored on the run: ``baseline_version``,
            ``baseline_pinned``, ``model_path`` and ``canary`` (a
            :class:`~afs_continuous._canary.CanaryResult` dict) when evaluated;
            ``data_only_reason`` (why no train_fn ran) on a ``data_ready`` run;
            ``data_deleted`` once a deployed run's training files were removed
            (``keep_training_data`` false; ``to_dict()["data_deleted"]``).
        version: The resulting version now (``name``, ``status``, ``path``,
            ``history``), read from the registry; None when none was registered.
        experiment: Its experiment (``id``, ``decision``, ``reasons``, ``last_evaluation``, ...) or None.
    """

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
    gate: dict[str, Any] = field(default_factory=dict)
    version: dict[str, Any] | None = None
    experiment: dict[str, Any] | None = None

    @property
    def baseline_version(self) -> str | None:
        """The version the challenger was compared with (pinned, or the champion at the time)."""
        return self.gate.get("baseline_version")

    @property
    def canary(self) -> dict[str, Any] | None:
        """The canary gate's result, or None when no eval_fn ran."""
        return self.gate.get("canary")

    @property
    def decision(self) -> dict[str, Any]:
        """The latest decision on this run and why: ``{"status", "decided_by", "decided_at", "reasons", ...}``.

        For a deployed version this is its latest status change in the
        registry (experiment promotion or stop, manual promote, rollback, a
        newer challenger replacing it) with the actor and the reason; before
        that, the experiment's current reasons. Before deployment it is the
        canary gate's or the pipeline's verdict.
        """
        done = self.finished_at.isoformat() if self.finished_at else None
        out: dict[str, Any] = {"status": self.status.value, "decided_by": "daemon", "decided_at": done, "reasons": []}
        canary = self.canary
        history = [h for h in (self.version or {}).get("history", []) if h.get("action") != "register"]
        if self.status in (RunStatus.GENERATING, RunStatus.TRAINING):
            out["reasons"] = [f"in progress ({self.status.value})"]
        elif self.status is RunStatus.DATA_READY:
            out["reasons"] = [self.gate.get("data_only_reason")
                              or "training data prepared; no training function was called (--no-train or none configured)"]
        elif self.status is RunStatus.DRY_RUN:
            out["decided_by"] = "dry run"
            out["would_deploy"] = canary is None or bool(canary.get("passed"))
            out["reasons"] = [*(canary or {}).get("reasons", []), "dry run: trained and evaluated, not deployed"]
        elif self.model_version is None and canary is not None and not canary.get("passed"):
            out["decided_by"] = "canary gate"
            out["reasons"] = list(canary.get("reasons", []))
        elif self.status is RunStatus.DEPLOY_FAILED:
            out["decided_by"] = "serving engine"
            out["reasons"] = [(self.error or "").split("\n")[0]]
        elif self.model_version is None or self.version is None:
            out["reasons"] = [(self.error or "").split("\n")[0]] if self.error else []
        elif history:
            last = history[-1]
            out.update(decided_by=last.get("actor"), decided_at=last.get("at"), action=last.get("action"),
                       reasons=[last.get("reason", "")])
            if last.get("prior_champion") is not None:
                out["prior_champion"] = last["prior_champion"]
            evaluation = last.get("evidence") or {}
            if evaluation.get("reasons") and evaluation.get("reasons") != out["reasons"]:
                out["evidence_reasons"] = evaluation["reasons"]
        elif self.version.get("status") == "champion":
            out["reasons"] = ["A/B testing disabled: deployed directly as champion"]
        else:
            exp = self.experiment or {}
            out["decided_by"] = "experiment"
            out["reasons"] = list(exp.get("reasons") or []) or ["challenger under test, not evaluated yet"]
            out["decided_at"] = (exp.get("last_evaluation") or {}).get("evaluated_at")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-friendly dict (what ``report --json`` and ``runs --json`` print)."""
        canary = self.canary or {}
        evaluation = (self.experiment or {}).get("last_evaluation") or {}
        model_path = self.gate.get("model_path") or (self.version or {}).get("path")
        return {
            "id": self.id, "status": self.status.value, "trigger": self.trigger, "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "data_path": self.data_path, "data_deleted": bool(self.gate.get("data_deleted")), "counts": self.counts,
            "source_start": self.source_start.isoformat() if self.source_start else None,
            "source_end": self.source_end.isoformat() if self.source_end else None,
            "metrics": self.metrics, "model_version": self.model_version, "model_path": model_path,
            "baseline_version": self.baseline_version,
            "baseline": {
                "version": self.baseline_version, "pinned": bool(self.gate.get("baseline_pinned")),
                "canary_metrics": canary.get("baseline"), "canary_source": canary.get("baseline_source"),
                "online": evaluation.get("champion"),
            },
            "challenger": {
                "version": self.model_version, "model_path": model_path, "training_metrics": self.metrics,
                "canary_metrics": canary.get("challenger"), "online": evaluation.get("challenger"),
            },
            "canary": self.canary,
            "deploy": self.gate.get("deploy"),
            "decision": self.decision,
            "experiment": self.experiment,
            "version": self.version,
            "error": self.error, "trigger_details": self.trigger_details,
        }


def _to_run(row: Any, version: dict[str, Any] | None = None, experiment: dict[str, Any] | None = None) -> TrainingRun:
    m = row._mapping
    return TrainingRun(
        id=m["id"], status=RunStatus(m["status"]), trigger=m["trigger"], started_at=m["started_at"],
        finished_at=m["finished_at"], data_path=m["data_path"],
        counts=json.loads(m["counts_json"]) if m["counts_json"] else {},
        source_start=m["source_start"], source_end=m["source_end"],
        metrics=json.loads(m["metrics_json"]) if m["metrics_json"] else {},
        model_version=m["model_version"], error=m["error"], dry_run=bool(m["dry_run"]),
        trigger_details=json.loads(m["trigger_json"]) if m["trigger_json"] else {},
        gate=json.loads(m["decision_json"]) if m["decision_json"] else {},
        version=version, experiment=experiment,
    )


def _outcomes(conn: Connection, rows: list[Any]) -> list[TrainingRun]:
    """Join runs with their versions and experiments (two queries for any number of runs)."""
    names = {r._mapping["model_version"] for r in rows if r._mapping["model_version"]}
    versions: dict[str, dict[str, Any]] = {}
    experiments: dict[str, dict[str, Any]] = {}
    if names:
        for v in conn.execute(select(_V).where(_V.c.name.in_(names))):
            vm = v._mapping
            versions[vm["name"]] = {"name": vm["name"], "status": vm["status"], "path": vm["path"],
                                    "history": json.loads(vm["history_json"] or "[]")}
        for e in conn.execute(select(_E).where(_E.c.challenger.in_(names)).order_by(_E.c.id)):
            experiments[e._mapping["challenger"]] = _experiment_summary(e)
    return [_to_run(r, versions.get(r._mapping["model_version"]), experiments.get(r._mapping["model_version"]))
            for r in rows]


def _experiment_summary(row: Any) -> dict[str, Any]:
    m = row._mapping
    evaluation = json.loads(m["last_evaluation_json"]) if m["last_evaluation_json"] else None
    return {
        "id": m["id"], "champion": m["champion"], "challenger": m["challenger"],
        "traffic_fraction": m["traffic_fraction"], "status": m["status"], "decision": m["decision"],
        "started_at": _iso(m["started_at"]), "ended_at": _iso(m["ended_at"]), "n_looks": m["n_looks"],
        "reasons": (evaluation or {}).get("reasons", []), "last_evaluation": evaluation,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
        """Update columns of a run; dict values are stored as JSON (``counts``, ``metrics``, ``decision``)."""
        row: dict[str, Any] = {}
        for key, value in values.items():
            if key in ("counts", "metrics", "decision"):
                # key order kept (counts are in pipeline order); datetimes and enums as dumps() writes them
                row[f"{key}_json"] = json.dumps(value, default=lambda v: json.loads(dumps(v)))
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
        """The report of run ``run_id``, with what happened to its version since.

        Raises:
            NotFoundError: No such run (the message names the newest run id).
        """
        with self.store.read() as conn:
            row = conn.execute(select(R).where(R.c.id == run_id)).first()
            if row is None:
                newest = conn.execute(select(func.max(R.c.id))).scalar()
                known = f"runs are numbered 1 to {newest}" if newest else "there are no training runs yet"
                raise NotFoundError(f"unknown training run {run_id} ({known}; see `afs-continuous runs`)")
            return _outcomes(conn, [row])[0]

    def list(self, limit: int | None = 20, *, status: RunStatus | str | None = None) -> list[TrainingRun]:
        """The most recent runs, newest first.

        Args:
            limit: At most this many (None: all).
            status: Only runs with this status.
        """
        stmt = select(R).order_by(R.c.id.desc())
        if status is not None:
            stmt = stmt.where(R.c.status == RunStatus(status).value)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.store.read() as conn:
            return _outcomes(conn, list(conn.execute(stmt)))

    def set_outcome(self, versions: str | Iterable[str], status: RunStatus, *, conn: Connection) -> None:
        """Set the status of the run(s) that produced ``versions`` (versions without a run are ignored)."""
        names = [versions] if isinstance(versions, str) else list(versions)
        if names:
            conn.execute(update(R).where(R.c.model_version.in_(names)).values(status=status.value))

    def count_trained(self) -> int:
        """Runs whose train_fn produced a model (deployed, promoted or rejected), dry runs excluded."""
        with self.store.read() as conn:
            return int(conn.execute(
                select(func.count()).select_from(R).where(R.c.status.in_(TRAINED), R.c.dry_run.is_(False))
            ).scalar_one())

    def recover_interrupted(self, dead_owner: str | None = None) -> list[int]:
        """Mark runs left ``generating``/``training`` by a dead process as interrupted.

        A run is the dead process's when its owner (``host:pid``) is on this
        host and that pid is gone, or when it is ``dead_owner`` (the holder of
        an expired daemon lease, on any host). Other runs are left alone.
        Returns the ids marked.
        """
        host = owner_id().split(":")[0]
        marked = []
        with self.store.write() as conn:
            for run_id, owner in conn.execute(select(R.c.id, R.c.owner).where(R.c.status.in_(ACTIVE))):
                o_host, _, o_pid = (owner or ":").rpartition(":")
                local_dead = o_host == host and o_pid.isdigit() and not _pid_alive(int(o_pid))
                if local_dead or (dead_owner is not None and owner == dead_owner):
                    conn.execute(update(R).where(R.c.id == run_id).values(
                        status=RunStatus.INTERRUPTED.value, finished_at=self.clock(),
                        error=f"process {owner} stopped during the run; found at the next start",
                    ))
                    marked.append(int(run_id))
        return marked
