"""Champion/challenger experiments: sticky assignment, routing and evaluation.

Assignment is a pure function of (experiment seed, unit id): the unit id is
hashed with the seed into a bucket in [0, 1) and the challenger takes the
half-open range [0, traffic_fraction) (the approach of GrowthBook's SDKs). The
same unit id therefore always gets the same arm within one experiment, and a
new experiment (new seed) reshuffles units.

Evaluation reads per-arm sums from the records exposed under the experiment
(records whose ``experiment_id`` is the experiment's, each counted for the
``arm`` it was routed to: what ``route()`` returned, logged with
``model=version``) and applies the decision rule of
:class:`~afs_continuous.config.ABTestConfig` with the statistics of
:mod:`afs_continuous.stats`. A record served while a worker's routing cache
still held the state before the experiment carries no exposure and counts for
neither arm. Experiments of stores older than schema 0006
(``exposure_logging`` false) keep the older attribution: records logged with
``model=<version name>`` since the experiment started.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ._queries import arm_aggregates
from .clock import Clock, utc_now
from .config import ABTestConfig, PrimaryMetric
from .store import ExperimentRow, Store, dumps

__all__ = [
    "Arm",
    "Decision",
    "Evaluation",
    "ExperimentInfo",
    "ExperimentManager",
    "assign_arm",
    "bucket",
]

E = ExperimentRow.__table__  # type: ignore[attr-defined]


class Arm(str, Enum):
    """The two arms of an experiment."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"


class Decision(str, Enum):
    """Outcome of one evaluation of a running experiment."""

    PROMOTE = "promote"
    CONTINUE = "continue"
    STOP = "stop"
    INVALID = "invalid"


def bucket(seed: str, unit_id: str) -> float:
    """Map (seed, unit id) to a uniform number in [0, 1): first 8 bytes of SHA-256, big-endian.

    >>> bucket("exp-1", "user-42") == bucket("exp-1", "user-42")
    True
    >>> 0.0 <= bucket("exp-1", "user-42") < 1.0
    True
    """
    digest = hashlib.sha256(f"{seed}:{unit_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_arm(seed: str, unit_id: str, traffic_fraction: float) -> Arm:
    """The arm of ``unit_id``: challenger when its bucket is in [0, traffic_fraction).

    Args:
        seed: The experiment's seed.
        unit_id: User, session or conversation id.
        traffic_fraction: Challenger share of traffic, 0..1 (not percent).

    Raises:
        ValueError: ``traffic_fraction`` outside [0, 1].
    """
    if not 0.0 <= traffic_fraction <= 1.0:
        raise ValueError(f"traffic_fraction must be in [0, 1] (a fraction, not percent), got {traffic_fraction!r}")
    return Arm.CHALLENGER if bucket(seed, unit_id) < traffic_fraction else Arm.CHAMPION


@dataclass(frozen=True)
class ExperimentInfo:
    """A champion/challenger experiment (snapshot of its row).

    ``exposure_logging``: True for experiments started since schema 0006, evaluated only on the
    records exposed under them (``usage_records.experiment_id``); False for older ones (by model name).
    """

    id: int
    champion: str
    challenger: str
    traffic_fraction: float
    seed: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    decision: str | None
    last_evaluation: dict[str, Any] | None
    min_p_value: float | None
    n_looks: int
    exposure_logging: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "champion": self.champion, "challenger": self.challenger,
            "traffic_fraction": self.traffic_fraction, "status": self.status,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "decision": self.decision, "min_p_value": self.min_p_value, "n_looks": self.n_looks,
            "last_evaluation": self.last_evaluation, "exposure_logging": self.exposure_logging,
        }


def _to_info(row: Any) -> ExperimentInfo:
    m = row._mapping
    return ExperimentInfo(
        id=m["id"], champion=m["champion"], challenger=m["challenger"], traffic_fraction=m["traffic_fraction"],
        seed=m["seed"], status=m["status"], started_at=m["started_at"], ended_at=m["ended_at"],
        decision=m["decision"], last_evaluation=json.loads(m["last_evaluation_json"]) if m["last_evaluation_json"] else None,
        min_p_value=m["min_p_value"], n_looks=m["n_looks"], exposure_logging=bool(m["exposure_logging"]),
    )


@dataclass
class Evaluation:
    """The result of evaluating a running experiment once.

    Attributes:
        decision: promote, continue, stop or invalid.
        reasons: Human-readable reasons, one per rule that decided or blocked.
        metric: The primary metric's name.
        champion / challenger: Per-arm figures (n, mean, variance, n_served, ...).
        comparison: The statistical comparison (lift, ci_low, ci_high, p_value,
            significant, ...) or None before the minimum sample size.
        srm: The sample-ratio-mismatch check.
        elapsed_hours: Experiment age at this look.
    """

    experiment_id: int
    decision: Decision
    reasons: list[str]
    metric: str
    evaluated_at: datetime
    elapsed_hours: float
    champion: dict[str, Any]
    challenger: dict[str, Any]
    comparison: dict[str, Any] | None = None
    srm: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lift(self) -> float | None:
        return None if self.comparison is None else self.comparison["lift"]

    @property
    def p_value(self) -> float | None:
        return None if self.comparison is None else self.comparison["p_value"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id, "decision": self.decision.value, "reasons": self.reasons,
            "metric": self.metric, "evaluated_at": self.evaluated_at.isoformat(),
            "elapsed_hours": round(self.elapsed_hours, 3), "champion": self.champion, "challenger": self.challenger,
            "comparison": self.comparison, "srm": self.srm, **self.extra,
        }


#: Primary metric -> per-unit aggregate key of :func:`~afs_continuous._queries.arm_aggregates`.
_METRIC_KEY = {PrimaryMetric.QUALITY_SCORE: "quality", PrimaryMetric.POSITIVE_FEEDBACK_RATE: "positive"}
#: Guardrail metrics (higher is worse) -> the ABTestConfig field holding their margin.
GUARDRAILS = {"latency": "guardrail_latency_margin", "negative": "guardrail_negative_feedback_margin"}


def unit_summary(agg: dict[str, Any], key: str) -> Any:
    """The cluster-robust :class:`~afs_continuous.stats.ArmSummary` of metric ``key``, or None below 2 units."""
    from . import stats

    sums = agg[key]
    if sums["k"] < 2:
        return None
    return stats.ArmSummary.from_unit_sums(sums["k"], sums["s"], sums["s2"], sums["m"], sums["m2"], sums["sm"])


def _mean(agg: dict[str, Any], key: str) -> float | None:
    return agg[key]["s"] / agg[key]["m"] if agg[key]["m"] else None


def _arm_figures(name: str, agg: dict[str, Any], summary: Any) -> dict[str, Any]:
    return {
        "model": name,
        "n_served": agg["n_served"],
        "n_units": agg["n_units"],
        "n": summary.n if summary else 0,
        "mean": summary.mean if summary else None,
        "variance": summary.variance if summary else None,
        "positive_rate": _mean(agg, "positive"),
        "negative_rate": _mean(agg, "negative"),
        "avg_latency_ms": _mean(agg, "latency"),
    }


class ExperimentManager:
    """Starts, routes, evaluates and concludes champion/challenger experiments.

    Args:
        store: The store.
        config: Experiment settings.
        clock: Callable returning the current UTC datetime.
    """

    def __init__(self, store: Store, config: ABTestConfig, *, clock: Clock = utc_now) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self._rng = random.Random()

    def start(self, champion: str, challenger: str, *, traffic_fraction: float | None = None,
              seed: str | None = None, conn: Connection | None = None) -> ExperimentInfo:
        """Start an experiment; any running experiment is ended first (decision ``stop``).

        Args:
            champion / challenger: Version names of the two arms.
            traffic_fraction: Challenger share, 0..1 (default ``initial_challenger_traffic``).
            seed: Assignment seed (default: random); fixing it makes the unit-to-arm
                assignment reproducible.
        """
        if conn is None:
            with self.store.write() as c:
                return self.start(champion, challenger, traffic_fraction=traffic_fraction, seed=seed, conn=c)
        fraction = self.config.initial_challenger_traffic if traffic_fraction is None else traffic_fraction
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"traffic_fraction must be in (0, 1), got {fraction!r}")
        now = self.clock()
        conn.execute(update(E).where(E.c.status == "running").values(status="ended", ended_at=now, decision="stop"))
        result = conn.execute(E.insert().values(
            champion=champion, challenger=challenger, traffic_fraction=fraction,
            seed=seed if seed is not None else secrets.token_hex(8),
            status="running", started_at=now, n_looks=0, exposure_logging=True,
        ))
        return self.get(int(result.inserted_primary_key[0]), conn=conn)

    def get(self, experiment_id: int, *, conn: Connection | None = None) -> ExperimentInfo:
        stmt = select(E).where(E.c.id == experiment_id)
        if conn is not None:
            return _to_info(conn.execute(stmt).one())
        with self.store.read() as c:
            return _to_info(c.execute(stmt).one())

    def active(self, *, conn: Connection | None = None) -> ExperimentInfo | None:
        """The running experiment, or None."""
        stmt = select(E).where(E.c.status == "running").order_by(E.c.id.desc()).limit(1)
        if conn is not None:
            row = conn.execute(stmt).first()
        else:
            with self.store.read() as c:
                row = c.execute(stmt).first()
        return _to_info(row) if row is not None else None

    def history(self, limit: int = 20) -> list[ExperimentInfo]:
        """The most recent experiments, newest first."""
        with self.store.read() as c:
            return [_to_info(r) for r in c.execute(select(E).order_by(E.c.id.desc()).limit(limit))]

    def assign(self, exp: ExperimentInfo, unit_id: str | None = None) -> Arm:
        """The arm of ``unit_id`` in ``exp`` (sticky); ``None`` draws at random."""
        if unit_id is None:
            return Arm.CHALLENGER if self._rng.random() < exp.traffic_fraction else Arm.CHAMPION
        return assign_arm(exp.seed, str(unit_id), exp.traffic_fraction)

    def evaluate(self, exp: ExperimentInfo, *, now: datetime | None = None, record: bool = True) -> Evaluation:
        """Evaluate ``exp`` once with the decision rule of the configuration.

        Promote only when the challenger's relative lift on the primary metric
        is at least ``promotion_threshold`` and significantly greater than zero
        (always-valid sequential test unless ``sequential=False``), the
        experiment is at least ``min_duration_hours`` old, each arm has
        ``min_samples_per_arm`` samples, and there is no sample-ratio mismatch.
        Stop early when the challenger is significantly worse; stop when
        ``max_duration_hours`` pass undecided. Each look decides on its own
        comparison (this look's always-valid p-value and interval); the running
        minimum p-value is recorded for reports only. The rule itself is
        :func:`afs_continuous._stats_sequential.decide_vec`, which the
        simulations behind ``docs/statistics.md`` run too.

        Args:
            exp: The running experiment.
            now: Evaluation time (default: the clock).
            record: Store the evaluation on the experiment row (and the running minimum p-value, reported only).
        """
        from . import stats  # scipy: imported on first evaluation, not with the package

        cfg = self.config
        now = self.clock() if now is None else now
        metric = cfg.primary_metric
        with self.store.read() as conn:
            a, b = self.arm_data(exp, now, conn=conn)
        sa, sb = unit_summary(a, _METRIC_KEY[metric]), unit_summary(b, _METRIC_KEY[metric])
        elapsed_h = max(0.0, (now - exp.started_at).total_seconds() / 3600.0)
        ev = Evaluation(
            experiment_id=exp.id, decision=Decision.CONTINUE, reasons=[], metric=metric.value, evaluated_at=now,
            elapsed_hours=elapsed_h, champion=_arm_figures(exp.champion, a, sa), challenger=_arm_figures(exp.challenger, b, sb),
        )
        # units, not requests: the router assigns units, and requests per unit are heavy-tailed
        srm = stats.srm_test([a["n_units"], b["n_units"]], [1.0 - exp.traffic_fraction, exp.traffic_fraction],
                             threshold=cfg.srm_threshold)
        ev.srm = {"chi2": srm.chi2, "p_value": srm.p_value, "mismatch": srm.mismatch, "decided": srm.decided,
                  "observed": list(srm.observed), "expected": [round(x, 3) for x in srm.expected]}
        n_min = min(sa.n if sa else 0, sb.n if sb else 0)
        cmp = None
        if sa is not None and sb is not None and sa.mean > 0:
            cmp = stats.compare(sa, sb, alpha=cfg.alpha, min_lift=cfg.promotion_threshold, sequential=cfg.sequential,
                                n_star=cfg.sequential_n_star, strict=cfg.strict)
            ev.comparison = cmp.to_dict()
        guardrails = self._guardrails(a, b)
        ev.extra["guardrails"] = guardrails
        violated = [g for g in guardrails if g["violated"]]

        from . import _stats_sequential as rule  # the one decision rule, shared with the simulations

        decision, branch, expired = (int(x) for x in rule.decide_vec(
            srm_mismatch=srm.mismatch, n_min=n_min, compared=cmp is not None,
            significant=cmp is not None and cmp.significant, lift=cmp.lift if cmp is not None else 0.0,
            promotable=cmp is not None and cmp.promotable_lift, guardrail_violated=bool(violated),
            elapsed_h=elapsed_h, min_samples=cfg.min_samples_per_arm, min_duration_h=cfg.min_duration_hours,
            max_duration_h=cfg.max_duration_hours, stop_on_regression=cfg.stop_on_regression,
        ))
        ev.decision = Decision(rule.DECISIONS[decision])
        if branch == rule.B_SRM:
            ev.reasons.append(
                f"sample-ratio mismatch: served {a['n_units']}/{b['n_units']} units vs configured "
                f"{1 - exp.traffic_fraction:.0%}/{exp.traffic_fraction:.0%} (chi2 {srm.chi2:.1f}, p {srm.p_value:.2g} < "
                f"{cfg.srm_threshold}); promotion blocked: fix the routing, then end the experiment "
                f"(promote/rollback); it stops at max_duration_hours"
            )
        elif branch == rule.B_TOO_FEW:
            ev.reasons.append(f"not enough samples: {n_min} units in the smaller arm, need {cfg.min_samples_per_arm} per arm")
        elif cmp is None:  # B_NO_COMPARISON
            ev.reasons.append("champion mean is 0: relative lift undefined")
        elif branch == rule.B_REGRESSION:
            ev.reasons.append(
                f"challenger significantly worse: lift {cmp.lift:+.1%} (CI {cmp.ci_low:+.1%} to {cmp.ci_high:+.1%}, p {cmp.p_value:.3g})"
            )
        elif branch == rule.B_GUARDRAIL:
            for g in violated:
                ev.reasons.append(
                    f"guardrail {g['metric']}: {g['change']:+.1%} (CI {g['ci_low']:+.1%} to {g['ci_high']:+.1%}) "
                    f"significantly worse than the allowed +{g['margin']:.0%}"
                )
        elif branch == rule.B_TOO_YOUNG:
            ev.reasons.append(f"minimum duration not reached: {elapsed_h:.1f} h of {cfg.min_duration_hours:g} h")
        elif branch == rule.B_PROMOTE:
            ev.reasons.append(
                f"lift {cmp.lift:+.1%} >= {cfg.promotion_threshold:.0%} and significant "
                f"(CI {cmp.ci_low:+.1%} to {cmp.ci_high:+.1%}, p {cmp.p_value:.3g} < {cfg.alpha})"
            )
        elif not cmp.significant:  # B_UNDECIDED
            ev.reasons.append(f"not significant: p {cmp.p_value:.3g} >= {cfg.alpha} (lift {cmp.lift:+.1%})")
        elif cmp.lift < cfg.promotion_threshold:
            ev.reasons.append(f"lift {cmp.lift:+.1%} below the promotion threshold {cfg.promotion_threshold:.0%}")
        else:
            ev.reasons.append(f"lower bound {cmp.ci_low:+.1%} below the promotion threshold {cfg.promotion_threshold:.0%} (strict)")
        if expired:
            ev.reasons.append(f"maximum duration reached undecided ({elapsed_h:.1f} h >= {cfg.max_duration_hours:g} h); champion stays")
        if record:
            self._record(exp, ev)
        return ev

    def arm_data(self, exp: ExperimentInfo, now: datetime, *, conn: Connection) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per-unit sums (:func:`~afs_continuous._queries.arm_aggregates`) of the champion and challenger arms.

        Records exposed under ``exp`` (``experiment_id``) count for the arm they were routed to; an
        experiment from before schema 0006 (``exposure_logging`` false) counts records by model name.
        Only records created in ``[started_at, now]``.
        """
        if exp.exposure_logging:
            return (arm_aggregates(conn, exp.champion, exp.started_at, now, experiment=(exp.id, Arm.CHAMPION.value)),
                    arm_aggregates(conn, exp.challenger, exp.started_at, now,
                                   experiment=(exp.id, Arm.CHALLENGER.value)))
        return (arm_aggregates(conn, exp.champion, exp.started_at, now),
                arm_aggregates(conn, exp.challenger, exp.started_at, now))

    def _guardrails(self, a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
        """Guardrail metrics (higher is worse): violated when the challenger's relative increase is
        significantly above the margin (the lower bound of its always-valid interval exceeds it)."""
        from . import stats

        cfg = self.config
        out = []
        for key, margin_field in GUARDRAILS.items():
            margin = getattr(cfg, margin_field)
            sa, sb = unit_summary(a, key), unit_summary(b, key)
            if margin is None or sa is None or sb is None or sa.mean <= 0:
                continue
            if min(sa.n, sb.n) < cfg.min_samples_per_arm:
                continue
            c = stats.compare(sa, sb, alpha=cfg.alpha, min_lift=margin, sequential=cfg.sequential,
                              n_star=cfg.sequential_n_star)
            out.append({"metric": key, "champion": sa.mean, "challenger": sb.mean, "change": c.lift,
                        "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value, "margin": margin,
                        "violated": c.ci_low > margin})
        return out

    def _record(self, exp: ExperimentInfo, ev: Evaluation) -> None:
        p = ev.p_value
        min_p = exp.min_p_value
        if p is not None:
            min_p = p if min_p is None else min(min_p, p)
        ev.extra["min_p_value"] = min_p
        from ._looks import record_look

        evaluation = ev.to_dict()
        with self.store.write() as conn:
            conn.execute(update(E).where(E.c.id == exp.id).values(
                last_evaluation_json=dumps(evaluation), min_p_value=min_p, n_looks=E.c.n_looks + 1,
            ))
            record_look(conn, exp.id, evaluation)

    def conclude(self, exp: ExperimentInfo, decision: Decision, *, conn: Connection) -> None:
        """Mark ``exp`` ended with ``decision``."""
        conn.execute(update(E).where(E.c.id == exp.id).values(status="ended", ended_at=self.clock(), decision=decision.value))
