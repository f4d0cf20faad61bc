"""Retraining triggers: sample count, schedule, quality drop, manual; with a cooldown.

Every check returns a :class:`TriggerResult` saying whether to retrain, which
trigger fired, why, and the numbers behind every trigger. All reference times
come from the store (``loop_state``), so a restarted daemon decides exactly as
the previous one would have.

State keys used (in ``loop_state``):

- ``first_start_at``: when a loop first opened this store (schedule reference
  before any training run; never "retrain at once because the store is new").
- ``last_training_at``: when the last training run called its train_fn
  (cooldown and schedule reference).
- ``last_schedule_at``: when the schedule trigger last fired (it fires once per
  period even if the run was skipped or blocked; the loop writes it).
- ``data_watermark``: creation time of the newest record consumed by the last
  successful training run; only records after it count as new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from ._queries import backfill_content_hashes, count_eligible, quality_window
from .clock import Clock, ensure_utc, utc_now
from .config import DataGeneratorConfig, TriggerConfig
from .registry import ModelRegistry
from .store import Store, parse_dt

__all__ = ["TriggerChecker", "TriggerResult", "TriggerCheck", "TriggerType"]


class TriggerType(str, Enum):
    """Why a training run started."""

    MANUAL = "manual"
    QUALITY_DROP = "quality_drop"
    SAMPLE_COUNT = "sample_count"
    SCHEDULE = "schedule"


@dataclass
class TriggerCheck:
    """One trigger's verdict with its numbers."""

    trigger: TriggerType
    fired: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger.value, "fired": self.fired, "reason": self.reason, **self.details}


@dataclass
class TriggerResult:
    """Outcome of one trigger check.

    Attributes:
        should_retrain: True when a trigger fired and nothing blocks it.
        trigger: The deciding trigger (priority manual > quality drop > sample
            count > schedule), or None.
        reason: One sentence for people.
        checks: Every trigger's verdict with its numbers.
        cooldown_remaining_s: Seconds of cooldown left (0 when none).
        blocked_by: Why a fired trigger does not retrain ("cooldown", or the
            running experiment), or None.
    """

    should_retrain: bool
    trigger: TriggerType | None
    reason: str
    checked_at: datetime
    checks: list[TriggerCheck] = field(default_factory=list)
    cooldown_remaining_s: float = 0.0
    blocked_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "should_retrain": self.should_retrain,
            "trigger": self.trigger.value if self.trigger else None,
            "reason": self.reason,
            "checked_at": self.checked_at.isoformat(),
            "cooldown_remaining_s": round(self.cooldown_remaining_s, 1),
            "blocked_by": self.blocked_by,
            "checks": [c.to_dict() for c in self.checks],
        }


_PRIORITY = [TriggerType.MANUAL, TriggerType.QUALITY_DROP, TriggerType.SAMPLE_COUNT, TriggerType.SCHEDULE]


class TriggerChecker:
    """Decides whether to retrain now.

    The quality-drop trigger compares the mean quality score of the last
    ``quality_window_hours`` with the ``quality_baseline_hours`` before, over
    the records served by the current champion only (every record when the
    registry has none), and fires on a drop of at least
    ``quality_drop_threshold`` that is also significant (one-sided Welch
    t-test, p < ``quality_drop_alpha``). Times are handled in UTC whatever zone
    the clock returns.

    Args:
        store: The store (reads ``loop_state`` and the usage tables).
        config: Trigger thresholds.
        generator_config: The generator's filters; the sample-count trigger
            counts exactly the samples the generator would use.
        clock: Callable returning the current UTC datetime.
    """

    def __init__(self, store: Store, config: TriggerConfig, generator_config: DataGeneratorConfig, *,
                 clock: Clock = utc_now) -> None:
        self.store = store
        self.config = config
        self.generator_config = generator_config
        self.clock = clock

    def state(self) -> dict[str, datetime | None]:
        """The reference times: first_start_at, last_training_at, last_schedule_at, data_watermark."""
        with self.store.read() as conn:
            return {k: parse_dt(self.store.get_state(k, conn=conn))
                    for k in ("first_start_at", "last_training_at", "last_schedule_at", "data_watermark")}

    def cooldown_remaining(self, now: datetime, last_training_at: datetime | None) -> float:
        """Seconds of cooldown left at ``now``; never negative, never more than the cooldown
        (a clock stepped back cannot make it endless)."""
        if last_training_at is None:
            return 0.0
        total = self.config.cooldown_hours * 3600.0
        remaining = (last_training_at + timedelta(hours=self.config.cooldown_hours) - now).total_seconds()
        return min(max(remaining, 0.0), total)

    def check(self, *, now: datetime | None = None, manual: bool = False, blocked_by: str | None = None) -> TriggerResult:
        """Evaluate every trigger.

        Args:
            now: Time of the check (default: the clock).
            manual: An operator asked for a run (``--trigger``); bypasses the cooldown.
            blocked_by: A reason that prevents retraining regardless (e.g. a
                challenger still under test); reported in the result.
        """
        # UTC: with a clock in a DST zone, now - timedelta(hours=...) would count wall-clock hours
        now = ensure_utc(self.clock() if now is None else now, name="now")
        st = self.state()
        checks: list[TriggerCheck] = []
        if manual:
            checks.append(TriggerCheck(TriggerType.MANUAL, True, "requested by the operator"))
        checks.append(self._quality_drop(now))
        checks.append(self._sample_count(now, st["data_watermark"]))
        checks.append(self._schedule(now, st))
        fired = [c for c in checks if c.fired]
        remaining = self.cooldown_remaining(now, st["last_training_at"])
        if not fired:
            return TriggerResult(False, None, "no trigger fired", now, checks, remaining)
        first = min(fired, key=lambda c: _PRIORITY.index(c.trigger))
        if blocked_by is not None and not manual:
            return TriggerResult(False, first.trigger, f"{first.trigger.value} fired but {blocked_by}", now, checks,
                                 remaining, blocked_by=blocked_by)
        if remaining > 0 and not manual:
            return TriggerResult(False, first.trigger,
                                 f"{first.trigger.value} fired but in cooldown for another {remaining / 3600:.1f} h",
                                 now, checks, remaining, blocked_by="cooldown")
        eligible = next(c.details["eligible_samples"] for c in checks if c.trigger == TriggerType.SAMPLE_COUNT)
        need = self.generator_config.min_samples
        if eligible < need and not manual:  # a run would only be skipped: do not start one every hour
            return TriggerResult(False, first.trigger,
                                 f"{first.trigger.value} fired but only {eligible} eligible samples "
                                 f"(< generator_config.min_samples {need}): nothing to train on",
                                 now, checks, remaining, blocked_by="too few samples")
        return TriggerResult(True, first.trigger, f"{first.trigger.value}: {first.reason}", now, checks, remaining)

    def _sample_count(self, now: datetime, watermark: datetime | None) -> TriggerCheck:
        threshold = self.config.min_new_samples
        with self.store.write() as conn:
            backfill_content_hashes(conn, self.generator_config, watermark, now)
            n = count_eligible(conn, self.generator_config, watermark, now)
        details = {"eligible_samples": n, "threshold": threshold,
                   "since": watermark.isoformat() if watermark else None}
        if threshold is None:
            return TriggerCheck(TriggerType.SAMPLE_COUNT, False, "disabled", details)
        fired = n >= threshold
        return TriggerCheck(TriggerType.SAMPLE_COUNT, fired,
                            f"{n} eligible samples {'>=' if fired else '<'} {threshold}", details)

    def _schedule(self, now: datetime, st: dict[str, datetime | None]) -> TriggerCheck:
        hours = self.config.schedule_interval_hours
        refs = [t for t in (st["last_training_at"], st["last_schedule_at"]) if t is not None]
        ref = max(refs) if refs else st["first_start_at"]
        if ref is None:
            ref = now
        elapsed_h = (now - ref).total_seconds() / 3600.0
        details = {"hours_since": round(elapsed_h, 3), "interval_hours": hours, "reference": ref.isoformat()}
        if hours is None:
            return TriggerCheck(TriggerType.SCHEDULE, False, "disabled", details)
        fired = elapsed_h >= hours
        return TriggerCheck(TriggerType.SCHEDULE, fired,
                            f"{elapsed_h:.1f} h since {ref.isoformat()} {'>=' if fired else '<'} {hours:g} h", details)

    def _quality_drop(self, now: datetime) -> TriggerCheck:
        """Fires when the recent mean quality is at least ``quality_drop_threshold`` below the baseline mean
        and the drop is significant (one-sided Welch t-test, p < ``quality_drop_alpha``)."""
        cfg = self.config
        threshold = cfg.quality_drop_threshold
        recent_start = now - timedelta(hours=cfg.quality_window_hours)
        base_start = recent_start - timedelta(hours=cfg.quality_baseline_hours)
        with self.store.read() as conn:
            # Only the serving champion's records: a rolled-back or retired version's (or a challenger's)
            # answers say nothing about the champion's quality; both windows measure the same model.
            champion = ModelRegistry(self.store).champion(conn=conn)
            model = champion.name if champion is not None else None
            n_recent, recent, var_recent = quality_window(conn, recent_start, now, model=model)
            n_base, base, var_base = quality_window(conn, base_start, recent_start, model=model)
        drop = (base - recent) / base if (base and recent is not None and base > 0) else None
        need = max(cfg.min_quality_samples, 2)  # the test needs a variance in each window
        details: dict[str, Any] = {
            "recent_mean": recent, "recent_n": n_recent, "baseline_mean": base, "baseline_n": n_base, "drop": drop,
            "threshold": threshold, "min_samples": cfg.min_quality_samples, "p_value": None, "alpha": cfg.quality_drop_alpha,
            "model": model,
        }
        if threshold is None:
            return TriggerCheck(TriggerType.QUALITY_DROP, False, "disabled", details)
        if min(n_recent, n_base) < need:
            return TriggerCheck(TriggerType.QUALITY_DROP, False,
                                f"too few scored records{_of(model)} (recent {n_recent}, baseline {n_base}; need {need} "
                                f"each)", details)
        if drop is None or recent is None or base is None:  # a baseline mean of 0 cannot drop
            return TriggerCheck(TriggerType.QUALITY_DROP, False, f"baseline mean is {base}: no drop to measure",
                                details)
        assert var_recent is not None and var_base is not None  # n >= 2 in both windows
        p = _one_sided_drop_p(n_base, base, var_base, n_recent, recent, var_recent)
        details["p_value"] = p
        head = f"recent mean{_of(model)} {recent:.3f} (n {n_recent}) vs baseline {base:.3f} (n {n_base}): drop {drop:.1%}"
        # a drop of exactly the threshold counts: means are float sums, so 1.0 -> 0.9 gives 0.0999...98
        if drop < threshold - 1e-9:
            return TriggerCheck(TriggerType.QUALITY_DROP, False, f"{head} < {threshold:.0%}", details)
        if p >= cfg.quality_drop_alpha:
            return TriggerCheck(TriggerType.QUALITY_DROP, False,
                                f"{head} >= {threshold:.0%} but within the noise (one-sided Welch p {p:.2g} >= "
                                f"quality_drop_alpha {cfg.quality_drop_alpha:g})", details)
        return TriggerCheck(TriggerType.QUALITY_DROP, True,
                            f"{head} >= {threshold:.0%} and significant (one-sided Welch p {p:.2g} < "
                            f"{cfg.quality_drop_alpha:g})", details)


def _of(model: str | None) -> str:
    return f" of {model}" if model is not None else ""


def _one_sided_drop_p(n_base: int, base: float, var_base: float, n_recent: int, recent: float, var_recent: float) -> float:
    """One-sided p-value of Welch's t-test of H0 "recent mean >= baseline mean" (small: a clear drop).

    Zero variance in both windows gives p 0 for any drop, 0.5 for equal means and 1 for a rise (never NaN).
    """
    from .stats import ArmSummary, welch_test  # scipy: imported at the first check that needs it

    res = welch_test(ArmSummary(n_base, base, var_base), ArmSummary(n_recent, recent, var_recent))
    two_sided = res["p_value"]
    return two_sided / 2.0 if res["t"] < 0 else 1.0 - two_sided / 2.0
