"""Model registry: model versions, their status, promotions and rollbacks.

A model version is a row with a unique name, the path of its weights (a LoRA
adapter directory, typically), metrics and a status: ``champion`` (serves
production), ``challenger`` (under test on a traffic fraction) or ``retired``.
Status changes happen in one transaction and each is appended to the
version's audit history with when, who, why, the prior champion and the
evidence (the experiment's evaluation, for an automatic promotion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Mapping

from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection

from .clock import Clock, utc_now
from .errors import NotFoundError
from .store import ModelVersionRow, Store, dumps

__all__ = ["ModelRegistry", "ModelVersion", "VersionStatus"]

V = ModelVersionRow.__table__  # type: ignore[attr-defined]


class VersionStatus(str, Enum):
    """Lifecycle status of a model version."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"
    RETIRED = "retired"


@dataclass(frozen=True)
class ModelVersion:
    """A model version as stored in the registry (immutable snapshot).

    Attributes:
        name: Unique name; inference handlers log with ``model=version.name``.
        path: Location of the weights (adapter directory), or None.
        status: champion, challenger or retired.
        created_at: When it was registered (UTC).
        parent: Name of the champion it was trained from, if any.
        training_run_id: The training run that produced it, if any.
        metrics: Metrics returned by the training function.
        promoted_at: When it last became champion, if ever.
        retired_at: When it was last retired, if ever.
        history: Audit trail, oldest first: dicts with ``at``, ``action``,
            ``from_status``, ``to_status``, ``actor``, ``reason`` and more.
        experiment_id: The exposure of a version returned by
            ``ContinuousLearningLoop.route()``: the running experiment the
            request was assigned under (None when none ran, or for a version
            read from the registry). ``log_usage(model=version)`` records it.
        arm: ``"champion"`` or ``"challenger"``: the arm of that assignment
            (None with ``experiment_id``).
    """

    name: str
    path: str | None
    status: VersionStatus
    created_at: datetime
    parent: str | None = None
    training_run_id: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    promoted_at: datetime | None = None
    retired_at: datetime | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    experiment_id: int | None = None
    arm: str | None = None

    @property
    def is_champion(self) -> bool:
        return self.status == VersionStatus.CHAMPION

    @property
    def is_challenger(self) -> bool:
        return self.status == VersionStatus.CHALLENGER

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (datetimes as ISO 8601); ``experiment_id`` and ``arm`` only for a routed version."""
        out = {
            "name": self.name,
            "path": self.path,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "parent": self.parent,
            "training_run_id": self.training_run_id,
            "metrics": self.metrics,
            "promoted_at": self.promoted_at.isoformat() if self.promoted_at else None,
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
            "history": self.history,
        }
        if self.experiment_id is not None:
            out.update(experiment_id=self.experiment_id, arm=self.arm)
        return out


def _to_version(row: Any) -> ModelVersion:
    m = row._mapping
    return ModelVersion(
        name=m["name"],
        path=m["path"],
        status=VersionStatus(m["status"]),
        created_at=m["created_at"],
        parent=m["parent"],
        training_run_id=m["training_run_id"],
        metrics=json.loads(m["metrics_json"]) if m["metrics_json"] else {},
        promoted_at=m["promoted_at"],
        retired_at=m["retired_at"],
        history=json.loads(m["history_json"] or "[]"),
    )


class ModelRegistry:
    """Registry of model versions in the store.

    Args:
        store: The store.
        clock: Callable returning the current UTC datetime.
    """

    def __init__(self, store: Store, *, clock: Clock = utc_now) -> None:
        self.store = store
        self.clock = clock

    # ---- reads -------------------------------------------------------------------------

    def get(self, name: str, *, conn: Connection | None = None) -> ModelVersion:
        """Return the version called ``name``.

        Raises:
            NotFoundError: No such version (the message lists the known names).
        """
        row = self._fetch(select(V).where(V.c.name == name), conn)
        if not row:
            known = ", ".join(v.name for v in self.list()) or "none"
            raise NotFoundError(f"unknown model version {name!r} (known versions: {known})")
        return row[0]

    def champion(self, *, conn: Connection | None = None) -> ModelVersion | None:
        """The current champion, or None in an empty registry."""
        rows = self._fetch(select(V).where(V.c.status == VersionStatus.CHAMPION.value), conn)
        return rows[0] if rows else None

    def challenger(self, *, conn: Connection | None = None) -> ModelVersion | None:
        """The current challenger, or None."""
        rows = self._fetch(select(V).where(V.c.status == VersionStatus.CHALLENGER.value), conn)
        return rows[0] if rows else None

    def list(self, *, conn: Connection | None = None) -> list[ModelVersion]:
        """Every version, oldest first."""
        return self._fetch(select(V).order_by(V.c.id), conn)

    def _fetch(self, stmt: Any, conn: Connection | None) -> list[ModelVersion]:
        if conn is not None:
            return [_to_version(r) for r in conn.execute(stmt)]
        with self.store.read() as c:
            return [_to_version(r) for r in c.execute(stmt)]

    # ---- writes ------------------------------------------------------------------------

    def ensure_champion(self, name: str, path: str | None = None) -> ModelVersion:
        """Register ``name`` as champion if the registry has no champion yet; return the champion.

        Safe when several processes open a new store at once: exactly one
        registers the champion (SQLite: the write lock taken up front;
        PostgreSQL: a transaction-scoped advisory lock), the others return it.
        """
        with self.store.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7714829014)"))
            current = self.champion(conn=conn)
            if current is not None:
                return current
            existing = self._fetch(select(V).where(V.c.name == name), conn)
            if existing:
                return self._set_status(conn, name, VersionStatus.CHAMPION, "bootstrap", "initial champion", "system")
            return self.register(name, path=path, status=VersionStatus.CHAMPION, reason="initial champion", conn=conn)

    def register(
        self,
        name: str,
        *,
        path: str | None = None,
        status: VersionStatus = VersionStatus.CHALLENGER,
        parent: str | None = None,
        training_run_id: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        reason: str = "registered",
        actor: str = "daemon",
        conn: Connection | None = None,
    ) -> ModelVersion:
        """Add a new model version.

        Registering a champion retires the previous champion; registering a
        challenger retires a previous challenger. Both in the same transaction.

        Raises:
            ValueError: ``name`` is empty or already registered.
        """
        if conn is None:
            with self.store.write() as c:
                return self.register(name, path=path, status=status, parent=parent, training_run_id=training_run_id,
                                     metrics=metrics, reason=reason, actor=actor, conn=c)
        if not name:
            raise ValueError("model version name must be a non-empty str")
        if conn.execute(select(V.c.name).where(V.c.name == name)).first() is not None:
            raise ValueError(f"model version {name!r} already exists; names are unique")
        now = self.clock()
        prior = self.champion(conn=conn)
        if status in (VersionStatus.CHAMPION, VersionStatus.CHALLENGER):
            for old in self._fetch(select(V).where(V.c.status == status.value), conn):
                self._set_status(conn, old.name, VersionStatus.RETIRED, "retire", f"replaced by {name}", actor)
        entry = {"at": now.isoformat(), "action": "register", "from_status": None, "to_status": status.value,
                 "actor": actor, "reason": reason, "prior_champion": prior.name if prior else None}
        conn.execute(
            V.insert().values(
                name=name, path=path, status=status.value, created_at=now, parent=parent,
                training_run_id=training_run_id, metrics_json=dumps(dict(metrics or {})),
                promoted_at=now if status == VersionStatus.CHAMPION else None,
                history_json=json.dumps([entry]),
            )
        )
        return self.get(name, conn=conn)

    def promote(
        self,
        name: str,
        *,
        reason: str,
        actor: str = "daemon",
        evidence: Mapping[str, Any] | None = None,
        conn: Connection | None = None,
    ) -> ModelVersion:
        """Make ``name`` the champion; the previous champion is retired. One transaction.

        Args:
            name: Version to promote (a challenger or a retired version).
            reason: Why (stored in the audit trail).
            actor: Who ("daemon", a user name...).
            evidence: The evaluation that justified it (stored in the audit trail).

        Returns:
            The new champion.

        Raises:
            NotFoundError: Unknown version; nothing changes.
        """
        if conn is None:
            with self.store.write() as c:
                return self.promote(name, reason=reason, actor=actor, evidence=evidence, conn=c)
        target = self.get(name, conn=conn)
        if target.is_champion:
            return target
        prior = self.champion(conn=conn)
        if prior is not None:
            self._set_status(conn, prior.name, VersionStatus.RETIRED, "retire", f"replaced by {name}: {reason}", actor)
        return self._set_status(conn, name, VersionStatus.CHAMPION, "promote", reason, actor,
                                evidence=evidence, prior=prior.name if prior else None)

    def rollback_target(self, name: str | None = None, *, conn: Connection | None = None) -> ModelVersion:
        """The version :meth:`rollback` would make champion (the current champion when it would change nothing).

        ``name`` None: the champion before the current one, unless the current
        champion itself came from a rollback (then the current champion).

        Raises:
            NotFoundError: Unknown version, or no earlier champion exists.
        """
        if name is None:
            current = self.champion(conn=conn)
            if current is None:
                raise NotFoundError("no champion to roll back from")
            became = next((h for h in reversed(current.history) if h.get("to_status") == "champion"), None)
            if became is not None and became.get("action") == "rollback":
                return current
            name = next((h.get("prior_champion") for h in reversed(current.history)
                         if h.get("to_status") == "champion" and h.get("prior_champion")), None)
            if name is None:
                raise NotFoundError(f"champion {current.name!r} has no earlier champion to roll back to")
        return self.get(name, conn=conn)

    def rollback(self, name: str | None = None, *, reason: str = "manual rollback", actor: str = "operator",
                 conn: Connection | None = None) -> ModelVersion:
        """Restore ``name`` (default: the champion before the current one) as champion.

        Idempotent: rolling back to the current champion changes nothing, and
        a second ``rollback()`` without a name right after one is a no-op (it
        never re-deploys the version that was just rolled back). To go further
        back, name the version.

        Raises:
            NotFoundError: Unknown version, or no earlier champion exists; nothing changes.
        """
        if conn is None:
            with self.store.write() as c:
                return self.rollback(name, reason=reason, actor=actor, conn=c)
        current = self.champion(conn=conn)
        target = self.rollback_target(name, conn=conn)
        if target.is_champion:
            return target
        if current is not None:
            self._set_status(conn, current.name, VersionStatus.RETIRED, "rolled_back", reason, actor)
        return self._set_status(conn, target.name, VersionStatus.CHAMPION, "rollback", reason, actor,
                                prior=current.name if current else None)

    def retire(self, name: str, *, reason: str, actor: str = "daemon", evidence: Mapping[str, Any] | None = None,
               conn: Connection | None = None) -> ModelVersion:
        """Retire a challenger (or any non-champion version).

        Raises:
            NotFoundError: Unknown version.
            ValueError: ``name`` is the champion (promote or roll back another version instead).
        """
        if conn is None:
            with self.store.write() as c:
                return self.retire(name, reason=reason, actor=actor, evidence=evidence, conn=c)
        target = self.get(name, conn=conn)
        if target.is_champion:
            raise ValueError(f"{name!r} is the champion; promote or roll back to another version instead of retiring it")
        if target.status == VersionStatus.RETIRED:
            return target
        return self._set_status(conn, name, VersionStatus.RETIRED, "retire", reason, actor, evidence=evidence)

    def _set_status(self, conn: Connection, name: str, status: VersionStatus, action: str, reason: str, actor: str,
                    *, evidence: Mapping[str, Any] | None = None, prior: str | None = None) -> ModelVersion:
        current = self.get(name, conn=conn)
        now = self.clock()
        entry: dict[str, Any] = {"at": now.isoformat(), "action": action, "from_status": current.status.value,
                                 "to_status": status.value, "actor": actor, "reason": reason}
        if prior is not None or status == VersionStatus.CHAMPION:
            entry["prior_champion"] = prior
        if evidence is not None:
            entry["evidence"] = json.loads(dumps(dict(evidence)))
        values: dict[str, Any] = {"status": status.value, "history_json": json.dumps([*current.history, entry])}
        if status == VersionStatus.CHAMPION:
            values["promoted_at"] = now
        if status == VersionStatus.RETIRED:
            values["retired_at"] = now
        conn.execute(update(V).where(V.c.name == name).values(**values))
        return self.get(name, conn=conn)
