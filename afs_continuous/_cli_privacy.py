"""``afs-continuous forget``: delete every trace of a unit (private; registered by :mod:`afs_continuous.cli`)."""

from __future__ import annotations

from typing import Any

import click

from .cli import _actor_option, _config_option, _db_option, _emit, _json_option, _load, _open_loop

__all__ = ["forget"]


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


@click.command()
@click.option("--unit-id", required=True, help="The unit (user or conversation id) the records were logged under.")
@_actor_option
@click.option("--reason", default=None, help="Why (recorded in the audit trail; do not put personal data here).")
@click.option("--no-vacuum", is_flag=True,
              help="SQLite: skip the VACUUM that rebuilds the file (faster on a large store; copies of the unit's "
                   "rows that earlier updates left in free space may remain until overwritten).")
@_config_option
@_db_option
@_json_option
def forget(unit_id: str, actor: str, reason: str | None, no_vacuum: bool, config_path: str | None, db: str | None,
           as_json: bool) -> None:
    """Delete every trace of a unit: its records, feedback, training samples, rehearsal-buffer and
    training-set lines; the rollups are corrected; the deletion is audited (unit id hashed).
    Idempotent: run it again to catch records that other processes logged meanwhile. See docs/privacy.md."""
    loop = _open_loop(_load(config_path, db))
    try:
        report = loop.forget(unit_id, actor=actor, reason=reason, vacuum=not no_vacuum).to_dict()
        _emit(report, as_json, format_forget(report))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        loop.close()
