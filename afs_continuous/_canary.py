"""The canary gate: a trained challenger is evaluated offline before it may serve.

``eval_fn(model_path) -> {metric: float}`` is the user's evaluation on a fixed
golden set. The gate compares the challenger's metrics with floors
(``canary_min_metrics``), ceilings (``canary_max_metrics``) and the largest
allowed worsening against the baseline's metrics (``canary_max_regression``,
absolute, in the metric's own units; ``canary_lower_is_better`` names the
metrics where lower is better). The rules are pure functions of the numbers,
so a decision can be recomputed from the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .config import TrainingConfig

__all__ = ["CanaryResult", "EvalFn", "check_metrics", "judge"]

EvalFn = Callable[[str], Mapping[str, float]]


@dataclass
class CanaryResult:
    """The canary gate's verdict on one challenger.

    Attributes:
        passed: True when every check holds.
        reasons: One sentence per failed check, or one summary sentence when it passed.
        checks: Every check as ``{"metric", "rule", "value", "limit", "passed"}``
            (``rule`` is ``min``, ``max`` or ``max_regression``; for the last,
            ``value`` is the worsening against the baseline).
        challenger: The challenger's metrics.
        baseline: The baseline's metrics, or None when none could be had.
        baseline_version: The version compared with.
        baseline_source: ``evaluated`` (eval_fn on its path in this run),
            ``stored`` (the canary metrics kept when it was deployed) or None.
    """

    passed: bool
    reasons: list[str]
    checks: list[dict[str, Any]]
    challenger: dict[str, float]
    baseline: dict[str, float] | None
    baseline_version: str | None
    baseline_source: str | None
    thresholds: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": self.checks, "challenger": self.challenger,
                "baseline": self.baseline, "baseline_version": self.baseline_version,
                "baseline_source": self.baseline_source, "thresholds": self.thresholds}


def check_metrics(result: Any, where: str) -> dict[str, float]:
    """Validate an eval_fn result: a mapping of metric name to a finite number.

    Raises:
        ValueError: Not a mapping, a non-numeric value (bools included) or NaN/infinity.

    >>> check_metrics({"accuracy": 0.9}, "challenger")
    {'accuracy': 0.9}
    """
    if not isinstance(result, Mapping):
        raise ValueError(f"eval_fn must return a dict of metric -> float for the {where}, got "
                         f"{type(result).__name__}: {result!r}")
    out: dict[str, float] = {}
    for name, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"eval_fn returned {value!r} for metric {name!r} of the {where}; metrics must be numbers")
        if not math.isfinite(value):
            raise ValueError(f"eval_fn returned a non-finite value for metric {name!r} of the {where}: {value!r}")
        out[str(name)] = float(value)
    return out


def judge(challenger: Mapping[str, float], baseline: Mapping[str, float] | None, cfg: TrainingConfig,
          *, baseline_version: str | None = None) -> tuple[bool, list[str], list[dict[str, Any]]]:
    """Apply the thresholds of ``cfg`` to the challenger's (and baseline's) canary metrics.

    A threshold whose metric the baseline lacks (or no baseline metrics at
    all) fails closed: the challenger is rejected with a reason saying why.

    Returns:
        ``(passed, reasons, checks)`` as in :class:`CanaryResult`.

    Raises:
        ValueError: The challenger's metrics lack a metric a threshold names
            (the eval_fn and the configuration disagree; the run fails).

    >>> cfg = TrainingConfig(canary_min_metrics={"accuracy": 0.8}, canary_max_regression={"accuracy": 0.02})
    >>> judge({"accuracy": 0.85}, {"accuracy": 0.88}, cfg, baseline_version="base")[:2]
    (False, ['accuracy 0.8500 is 0.0300 worse than base (0.8800); at most 0.0200 allowed'])
    """
    named = {*cfg.canary_min_metrics, *cfg.canary_max_metrics, *cfg.canary_max_regression}
    missing = sorted(m for m in named if m not in challenger)
    if missing:
        raise ValueError(f"eval_fn returned no {', '.join(map(repr, missing))} for the challenger (it returned "
                         f"{sorted(challenger)}), but the canary thresholds in training.canary_* name it")
    checks: list[dict[str, Any]] = []
    failures: list[str] = []
    for metric, floor in cfg.canary_min_metrics.items():
        value = challenger[metric]
        ok = value >= floor
        checks.append({"metric": metric, "rule": "min", "value": value, "limit": floor, "passed": ok})
        if not ok:
            failures.append(f"{metric} {value:.4f} below the floor {floor:.4f}")
    for metric, ceiling in cfg.canary_max_metrics.items():
        value = challenger[metric]
        ok = value <= ceiling
        checks.append({"metric": metric, "rule": "max", "value": value, "limit": ceiling, "passed": ok})
        if not ok:
            failures.append(f"{metric} {value:.4f} above the ceiling {ceiling:.4f}")
    who = baseline_version or "the baseline"
    for metric, allowed in cfg.canary_max_regression.items():
        value = challenger[metric]
        if baseline is None or metric not in baseline:
            checks.append({"metric": metric, "rule": "max_regression", "value": None, "limit": allowed, "passed": False})
            failures.append(f"{metric}: no canary value for {who} to compare with (give it a model path that eval_fn "
                            "can evaluate, or pin a baseline version that has one)")
            continue
        base = baseline[metric]
        worse = value - base if metric in cfg.canary_lower_is_better else base - value
        ok = worse <= allowed + 1e-12
        checks.append({"metric": metric, "rule": "max_regression", "value": worse, "limit": allowed, "passed": ok,
                       "baseline": base, "challenger": value})
        if not ok:
            failures.append(f"{metric} {value:.4f} is {worse:.4f} worse than {who} ({base:.4f}); at most {allowed:.4f} allowed")
    if failures:
        return False, failures, checks
    if not checks:
        return True, ["no canary thresholds configured; metrics recorded only"], checks
    return True, ["canary passed: " + "; ".join(_describe(c, who) for c in checks)], checks


def _describe(check: dict[str, Any], who: str) -> str:
    if check["rule"] == "min":
        return f"{check['metric']} {check['value']:.4f} >= {check['limit']:.4f}"
    if check["rule"] == "max":
        return f"{check['metric']} {check['value']:.4f} <= {check['limit']:.4f}"
    return f"{check['metric']} {check['challenger']:.4f} vs {who} {check['baseline']:.4f} within {check['limit']:.4f}"
