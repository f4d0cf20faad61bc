"""``afs-continuous forget``: delete every trace of a unit (private; registered by :mod:`afs_continuous.cli`)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import click

__all__ = ["forget_command", "format_forget"]


def format_forget(report: dict[str, Any]) -> str:
    """The text form of a forget report (counts only: the unit id and its texts are never printed)."""
    lines = [f"forgot unit {report['unit_hash']} (sha256 prefix of the unit id)",
             f"  records {report['records']}, feedback events {report['feedback_events']}, "
             f"training samples {report['training_samples']}",
             f"  rehearsal-buffer samples {report['rehearsal_samples']}, training-set lines {report['training_lines']} "
             f"in {len(report['files'])} file(s)"]
    if report["late_arrivals"]:
        lines.append(f"  {report['late_arrivals']} record(s) arrived after an earlier forget of this unit")
    if report["recent_activity"]:
        lines.append("  the unit's newest record is recent: other processes may still hold records of it in their "
                     "loggers; the daemon removes them as they arrive (7 days), or run forget again")
    store = report["store"]
    if store.get("backend") == "sqlite":
        lines.append(f"  store file: deleted content zeroed, vacuumed: {'yes' if store.get('vacuumed') else 'no'}, "
                     f"write-ahead log truncated: {'yes' if store.get('wal_truncated') else 'no (busy; run again)'}")
    elif store.get("note"):
        lines.append(f"  store: {store['note']}")
    return "\n".join(lines)


def forget_command(cli: ModuleType) -> click.Command:
    """The ``forget`` command, built with the options and helpers of the CLI module ``cli`` (passed in
    rather than imported: ``python -m afs_continuous.cli`` runs that module as ``__main__``)."""

    @click.command()
    @click.option("--unit-id", required=True, help="The unit (user or conversation id) the records were logged under.")
    @cli._actor_option
    @click.option("--reason", default=None, help="Why (recorded in the audit trail; do not put personal data here).")
    @click.option("--no-vacuum", is_flag=True,
                  help="SQLite: skip the VACUUM that rebuilds the file (faster on a large store; copies of the unit's "
                       "rows that earlier updates left in free space may remain until overwritten).")
    @cli._config_option
    @cli._db_option
    @cli._json_option
    def forget(unit_id: str, actor: str, reason: str | None, no_vacuum: bool, config_path: str | None, db: str | None,
               as_json: bool) -> None:
        """Delete every trace of a unit: its records, feedback, training samples, rehearsal-buffer and
        training-set lines; the rollups are corrected; the deletion is audited (unit id hashed).
        Idempotent: run it again to catch records that other processes logged meanwhile. See docs/privacy.md."""
        loop = cli._open_loop(cli._load(config_path, db))
        try:
            report = loop.forget(unit_id, actor=actor, reason=reason, vacuum=not no_vacuum).to_dict()
            cli._emit(report, as_json, format_forget(report))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        finally:
            loop.close()

    return forget
