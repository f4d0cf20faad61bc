"""Operator actions on the loop: promotion, rollback and forget (private; mixed into the loop).

Both are recorded with who, why, when and the prior champion, end a running
experiment, and with a serving engine load the new champion on every replica
before the registry routes traffic to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ._drops import store_errors
from ._privacy import ForgetReport, forget
from ._serving import rollback_target
from .errors import NotFoundError
from .experiment import Decision
from .registry import ModelVersion
from .runs import RunStatus

__all__ = ["OperatorActions"]


class OperatorActions:
    """``promote``, ``rollback`` and ``forget`` of :class:`~afs_continuous.loop.ContinuousLearningLoop`."""

    registry: Any
    experiments: Any
    store: Any
    runs: Any
    monitor: Any
    _serving: Any
    _invalidate: Callable[[], None]  # the loop's routing-cache reset

    def promote(self, name: str, *, reason: str = "manual promotion", actor: str = "operator",
                force: bool = False) -> ModelVersion:
        """Make version ``name`` champion now; recorded with ``actor``, ``reason``, the time and the prior champion.

        A running experiment ends: promoting its challenger concludes it
        (``promote``); promoting any other version retires the challenger
        (``stop``). The training run of ``name`` becomes ``promoted``.

        Args:
            name: The version.
            reason: Why (the audit history).
            actor: Who (the audit history).
            force: Promote even when the version's ``path`` no longer exists.

        With a serving engine, the version is loaded on every replica (and
        checked) before it becomes champion; the replaced adapters are unloaded
        by the daemon once no routing cache can still send them traffic.

        Raises:
            NotFoundError: Unknown version, or (without ``force``) its recorded
                ``path`` is gone; nothing changes. A version without a path
                (e.g. the initial champion without ``champion_model_path``) is allowed.
            EngineError: The serving engine cannot load it (the message names the
                replica and why); nothing changes.
        """
        return self._switch_champion(
            self.registry.get(name), force, actor,
            lambda conn: self.registry.promote(name, reason=reason, actor=actor, conn=conn),
            lambda new: f"manual promotion of {new}: {reason}", mark_replaced=False)

    def _end_experiment_for(self, exp: Any, champion: str, why: str, actor: str, conn: Any) -> None:
        """A manual champion change ends the running experiment: its challenger wins if it is the new
        champion, else it is retired and its run rejected. The drift watch ends too."""
        self.monitor.stop(conn=conn)
        if exp is None:
            return
        if exp.challenger == champion:
            self.experiments.conclude(exp, Decision.PROMOTE, conn=conn)
            return
        self.registry.retire(exp.challenger, reason=f"experiment ended by {why}", actor=actor, conn=conn)
        self.experiments.conclude(exp, Decision.STOP, conn=conn)
        self.runs.set_outcome(exp.challenger, RunStatus.REJECTED, conn=conn)

    def rollback(self, name: str | None = None, *, reason: str = "manual rollback", actor: str = "operator",
                 force: bool = False) -> ModelVersion:
        """Restore ``name`` (default: the previous champion) as champion; ends a running experiment.

        Recorded in both versions' histories with ``actor``, ``reason``, the
        time and the prior champion. The run that produced the replaced
        champion becomes ``rolled_back``; the run of the restored version
        ``promoted``. Idempotent (see :meth:`ModelRegistry.rollback`).

        Args:
            name: The version (None: the previous champion).
            reason: Why (the audit history).
            actor: Who (the audit history).
            force: Restore it even when its ``path`` no longer exists.

        With a serving engine, the restored version is loaded on every replica
        (and checked) first.

        Raises:
            NotFoundError: Unknown version, no previous champion, or (without
                ``force``) the version's recorded ``path`` is gone; nothing changes.
            EngineError: The serving engine cannot load it (the message names the
                replica and why); nothing changes.
        """
        return self._switch_champion(
            rollback_target(self.registry, name), force, actor,
            lambda conn: self.registry.rollback(name, reason=reason, actor=actor, conn=conn),
            lambda new: f"rollback to {new}: {reason}", mark_replaced=True)

    def _switch_champion(self, target: ModelVersion | None, force: bool, actor: str,
                         move: Callable[[Any], ModelVersion], why: Callable[[str], str], *,
                         mark_replaced: bool) -> ModelVersion:
        """Make ``target`` champion through ``move(conn)`` (the registry's promote or rollback).

        Its files are checked (unless ``force``) and the serving engine loads it
        before the registry changes; in one transaction: the registry move, the
        runs' outcomes (the replaced champion's run ``rolled_back`` when
        ``mark_replaced``) and the end of a running experiment. Already the
        champion: nothing changes. ``why(new champion's name)`` is the reason the experiment ends.
        """
        if target is not None:
            current = self.registry.champion()
            if current is None or current.name != target.name:
                if not force:
                    _require_files(target)
                self._serving.load(target)
        exp = self.experiments.active()
        with self.store.write() as conn:
            before = self.registry.champion(conn=conn)
            version = move(conn)
            if before is not None and before.name == version.name:
                return version  # already the champion: nothing changes, a running experiment goes on
            if not force:
                _require_files(version)  # raising rolls the whole transaction back
            if mark_replaced and before is not None:
                self.runs.set_outcome(before.name, RunStatus.ROLLED_BACK, conn=conn)
            self.runs.set_outcome(version.name, RunStatus.PROMOTED, conn=conn)
            self._end_experiment_for(exp, version.name, why(version.name), actor, conn)
        self._invalidate()
        return version


    def forget(self, unit_id: str | int, *, actor: str = "operator", reason: str | None = None,
               vacuum: bool = True) -> ForgetReport:
        """Delete every trace of a unit (what ``afs-continuous forget`` runs; see docs/privacy.md).

        Removes the unit's usage records and their feedback events (comments included), their
        ``training_samples`` rows, and their lines in the rehearsal buffer and the kept training sets
        under ``data_dir`` (matched by content); subtracts the records from the rollups in the same
        transactions, in batches of 1,000 records; on SQLite zeroes the deleted content, rebuilds the
        file (``vacuum``) and truncates the write-ahead log. Records this process still queues are
        flushed first; records queued in other processes reach the store later: the daemon removes
        them for 7 days, and calling ``forget`` again removes them at once (idempotent). Audited in
        ``loop_state.privacy_audit`` with ``actor``, ``reason``, the time, the counts and the unit id
        hashed, never the texts or the raw id. Trained adapters are not changed.

        Args:
            unit_id: The unit the records were logged under (an int is used as its decimal text).
            actor: Who asked (the audit trail).
            reason: Why (the audit trail; no personal data).
            vacuum: SQLite: rebuild the file with ``VACUUM`` (blocks writers for about the time it
                takes to copy the file); False leaves copies that earlier updates left in free space.

        Returns:
            A :class:`~afs_continuous._privacy.ForgetReport` (counts, ``late_arrivals``,
            ``recent_activity``, what was done to the store file); ``.to_dict()`` for JSON.

        Raises:
            ValueError: ``unit_id`` is empty or not a str/int, ``actor`` is empty, ``reason`` is not a str.
            StoreError: The store failed; the rows deleted so far stay deleted, run it again.
        """
        with store_errors(self.store, "delete a unit's data on"):
            return forget(self, unit_id, actor=actor, reason=reason, vacuum=vacuum)  # type: ignore[arg-type]


def _require_files(version: ModelVersion) -> None:
    """Refuse to make ``version`` champion when its recorded path is gone (serving it would fail)."""
    if version.path and not Path(version.path).expanduser().exists():
        raise NotFoundError(
            f"model version {version.name!r} has no files at {version.path!r}: its path is gone (deleted or moved); "
            "nothing changed. Restore the files, or pass --force (force=True) to make it champion anyway"
        )
