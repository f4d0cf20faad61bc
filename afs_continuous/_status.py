"""The loop's status summary (private): what ``get_status_summary()`` and ``status`` show."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ._drops import drops_summary
from ._queries import count_eligible

__all__ = ["status_summary"]


def status_summary(loop: Any) -> dict[str, Any]:
    """The summary of :meth:`~afs_continuous.loop.ContinuousLearningLoop.get_status_summary` (see there)."""
    now = loop.clock()
    usage = loop.logger.get_statistics()
    st = loop.triggers.state()
    tcfg = loop.config.trigger_config
    champion = loop.registry.champion()
    challenger = loop.registry.challenger()
    exp = loop.experiments.active()
    remaining = loop.triggers.cooldown_remaining(now, st["last_training_at"])
    refs = [t for t in (st["last_training_at"], st["last_schedule_at"]) if t is not None]
    ref = max(refs) if refs else st["first_start_at"]
    next_sched = (ref + timedelta(hours=tcfg.schedule_interval_hours)) if (ref and tcfg.schedule_interval_hours) else None
    # As counted at the daemon's last check (cheap on a large store); counted now, read-only, before any
    # check (records whose content hash the daemon has not computed yet count as distinct: an upper bound).
    eligible = loop.store.get_state("eligible_samples")
    if eligible is None:
        with loop.store.read() as conn:
            eligible = {"n": count_eligible(conn, loop.config.generator_config, st["data_watermark"], now),
                        "checked_at": now.isoformat()}
    return {
        "usage_stats": usage,
        "status": {
            "now": now.isoformat(),
            "total_retrains": loop.runs.count_trained(),
            "champion_model": champion.name if champion else None,
            "champion_path": champion.path if champion else None,
            "challenger_model": challenger.name if challenger else None,
            "challenger_traffic": exp.traffic_fraction if exp else 0.0,
            "first_start_at": _iso(st["first_start_at"]),
            "last_training_at": _iso(st["last_training_at"]),
            "last_iteration_at": loop.store.get_state("last_iteration_at"),
            "cooldown_until": _iso(now + timedelta(seconds=remaining)) if remaining > 0 else None,
            "next_scheduled_at": _iso(next_sched),
            "eligible_samples": eligible["n"],
            "eligible_checked_at": eligible["checked_at"],
            "min_new_samples": tcfg.min_new_samples,
            "data_watermark": _iso(st["data_watermark"]),
            "rehearsal_buffer": str(loop.generator.rehearsal_buffer.path),
        },
        "experiment": exp.to_dict() if exp else None,
        "promotion_watch": loop.monitor.active(),
        "training_runs": [r.to_dict() for r in loop.runs.list(limit=5)],
        "last_24h": _last_24h(loop, now),
        "lease": loop.lease.status(),
        "store": loop.store.display_url,
        "drops": _drops(loop, now),
        "serving": loop._serving.summary(now),
    }


def _drops(loop: Any, now: Any) -> dict[str, Any]:
    with loop.store.read() as conn:
        return drops_summary(conn, now)


def _last_24h(loop: Any, now: Any) -> dict[str, Any]:
    from ._rollups import window_by_model

    from ._rollups import hour_of

    since = hour_of(now) - timedelta(hours=23)  # 24 hourly rollups: this hour and the 23 before
    with loop.store.read() as conn:
        return {"since": since.isoformat(), "by_model": window_by_model(conn, since=since)}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
