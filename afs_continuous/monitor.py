"""Post-promotion drift monitor: roll back a new champion that does worse than the one it replaced.

At a promotion the previous champion's level on the primary metric during the
experiment (its per-unit summary) is kept in the store as the baseline. For
``rollback_watch_hours`` afterwards, every daemon iteration compares the new
champion's records since the promotion with that baseline using the same
always-valid sequential test as the promotion; a significant drop rolls back
to the previous champion automatically, recording why (the drift monitor of
seed 002). The watch survives restarts (it lives in ``loop_state``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ._queries import arm_aggregates
from .clock import Clock, utc_now
from .config import ABTestConfig
from .store import Store, parse_dt

__all__ = ["DriftMonitor", "DriftCheck"]

_KEY = "promotion_watch"


@dataclass
class DriftCheck:
    """One look of the drift monitor.

    Attributes:
        champion / previous: The watched champion and the one it replaced.
        rollback: True when the new champion is significantly worse.
        finished: True when the watch ended (rolled back or watch time over).
        comparison: The statistical comparison (new champion vs baseline) or None.
        reason: One sentence for people.
    """

    champion: str
    previous: str
    rollback: bool
    finished: bool
    reason: str
    comparison: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion, "previous": self.previous, "rollback": self.rollback,
                "finished": self.finished, "reason": self.reason, "comparison": self.comparison}


class DriftMonitor:
    """Watches a newly promoted champion against the previous champion's level.

    Args:
        store: The store (the watch is kept in ``loop_state``).
        config: Experiment settings (``rollback_watch_hours``, ``alpha``,
            ``min_samples_per_arm``, ``primary_metric``, sequential settings).
        clock: Callable returning the current UTC datetime.
    """

    def __init__(self, store: Store, config: ABTestConfig, *, clock: Clock = utc_now) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    def start(self, champion: str, previous: str, baseline: Any, *, conn: Any = None) -> None:
        """Begin watching ``champion``; ``baseline`` is the previous champion's ArmSummary (or None: no watch)."""
        hours = self.config.rollback_watch_hours
        if hours is None or baseline is None:
            return
        now = self.clock()
        self.store.set_state(_KEY, {
            "champion": champion, "previous": previous, "since": now.isoformat(),
            "until": (now + timedelta(hours=hours)).isoformat(), "metric": self.config.primary_metric.value,
            "baseline": {"n": baseline.n, "mean": baseline.mean, "variance": baseline.variance},
        }, conn=conn)

    def active(self) -> dict[str, Any] | None:
        """The current watch, or None."""
        return self.store.get_state(_KEY)

    def stop(self, *, conn: Any = None) -> None:
        """End the watch (after a rollback, a new promotion, or its time)."""
        self.store.set_state(_KEY, None, conn=conn)

    def check(self, current_champion: str, *, now: datetime | None = None) -> DriftCheck | None:
        """Compare the watched champion with its baseline once; None when nothing is watched."""
        from . import stats
        from .experiment import _METRIC_KEY, unit_summary

        watch = self.active()
        if watch is None:
            return None
        now = self.clock() if now is None else now
        champion, previous = watch["champion"], watch["previous"]
        since, until = parse_dt(watch["since"]), parse_dt(watch["until"])
        assert since is not None and until is not None  # written by start()
        if current_champion != champion:
            self.stop()
            return DriftCheck(champion, previous, False, True, f"{champion} is no longer champion; watch ended")
        cfg = self.config
        with self.store.read() as conn:
            agg = arm_aggregates(conn, champion, since, now)
        current = unit_summary(agg, _METRIC_KEY[cfg.primary_metric])
        base = stats.ArmSummary(watch["baseline"]["n"], watch["baseline"]["mean"], watch["baseline"]["variance"])
        if current is None or current.n < cfg.min_samples_per_arm or base.mean <= 0:
            n = current.n if current else 0
            finished = now >= until
            if finished:
                self.stop()
            return DriftCheck(champion, previous, False, finished,
                              f"watching {champion}: {n} units since promotion, need {cfg.min_samples_per_arm}")
        c = stats.compare(base, current, alpha=cfg.alpha, min_lift=0.0, sequential=cfg.sequential,
                          n_star=cfg.sequential_n_star)
        detail = (f"{c.lift:+.1%} vs {previous}'s level {base.mean:.3f} (CI {c.ci_low:+.1%} to {c.ci_high:+.1%}, "
                  f"p {c.p_value:.3g})")
        if c.significant and c.lift < 0:
            return DriftCheck(champion, previous, True, True, f"{champion} dropped significantly after promotion: {detail}",
                              c.to_dict())
        if now >= until:
            self.stop()
            return DriftCheck(champion, previous, False, True, f"watch of {champion} ended without a drop: {detail}",
                              c.to_dict())
        return DriftCheck(champion, previous, False, False, f"watching {champion}: {detail}", c.to_dict())
