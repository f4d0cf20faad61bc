"""Vectorised kernels behind :mod:`afs_continuous.stats`, and the promotion simulator.

Every function here works elementwise on numpy arrays (scalars are 0-d arrays),
so :func:`afs_continuous.stats.compare` and the Monte Carlo simulations in
``tests/unit/test_stats_simulation.py`` and ``benchmarks/simulate_promotion.py``
run the *same* code: the simulation exercises the production decision path,
not a re-implementation of it. That includes the decision rule itself
(:func:`decide_vec`), which :meth:`afs_continuous.experiment.ExperimentManager.evaluate`
calls on each look's scalars and the simulator on arrays of looks.

Nothing here validates its inputs; :mod:`afs_continuous.stats` does that. The
kernels never produce NaN from a zero standard error: an estimate equal to the
null gives ``z = 0`` (p = 1), any other estimate gives ``z = +-inf`` (p = 0).
Formulas and sources are in ``docs/statistics.md`` and in the docstrings of
:mod:`afs_continuous.stats`.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats as _st

from afs_continuous.errors import ConfigError

FloatArray = npt.NDArray[np.float64]


# -------------------------------------------------------------- validation
def check_finite(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {value!r}; drop NaN/inf observations before summarising")
    return out


def check_count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer count, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            out = int(value)
        else:
            raise ConfigError(f"{name} must be an integer count, got {value!r}") from None
    if out < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {out}")
    return out


def check_alpha(alpha: Any) -> float:
    a = check_finite("alpha", alpha)
    if not 0.0 < a < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}; e.g. 0.05")
    return a


def check_n_star(n_star: Any) -> float:
    v = check_finite("n_star", n_star)
    if v <= 0:
        raise ConfigError(f"n_star must be > 0, got {n_star!r}; set it near the total sample at which you expect to decide")
    return v


def check_se(se: Any) -> float:
    v = check_finite("se", se)
    if v < 0:
        raise ConfigError(f"se must be >= 0, got {se!r}")
    return v


# ---------------------------------------------------------------- estimates
def relative_lift_vec(
    m_a: npt.ArrayLike,
    v_a: npt.ArrayLike,
    n_a: npt.ArrayLike,
    m_b: npt.ArrayLike,
    v_b: npt.ArrayLike,
    n_b: npt.ArrayLike,
) -> tuple[FloatArray, FloatArray]:
    """Delta-method relative lift ``m_b / m_a - 1`` and its standard error (NaN where m_a == 0)."""
    m_a, v_a, n_a, m_b, v_b, n_b = (np.asarray(x, dtype=np.float64) for x in (m_a, v_a, n_a, m_b, v_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = m_b / m_a - 1.0
        var = v_b / (m_a**2 * n_b) + v_a * m_b**2 / (m_a**4 * n_a)
    return lift, np.sqrt(var)


def welch_df_vec(v_a: npt.ArrayLike, n_a: npt.ArrayLike, v_b: npt.ArrayLike, n_b: npt.ArrayLike) -> FloatArray:
    """Welch-Satterthwaite degrees of freedom; ``inf`` when both variances are 0."""
    v_a, n_a, v_b, n_b = (np.asarray(x, dtype=np.float64) for x in (v_a, n_a, v_b, n_b))
    q_a, q_b = v_a / n_a, v_b / n_b
    den = q_a**2 / (n_a - 1.0) + q_b**2 / (n_b - 1.0)
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, (q_a + q_b) ** 2 / safe, np.inf)


def z_score_vec(estimate: npt.ArrayLike, se: npt.ArrayLike, null: float = 0.0) -> FloatArray:
    """``(estimate - null) / se`` with se == 0 mapped to 0 (no difference) or +-inf."""
    diff = np.asarray(estimate, dtype=np.float64) - null
    se = np.asarray(se, dtype=np.float64)
    degenerate = np.where(diff == 0, 0.0, np.copysign(np.inf, diff))
    safe = np.where(se > 0, se, 1.0)
    return np.where(se > 0, diff / safe, degenerate)


# ---------------------------------------------------------- fixed horizon
def fixed_p_vec(z: npt.ArrayLike, df: npt.ArrayLike) -> FloatArray:
    """Two-sided p-value of a t (``df`` finite) or normal (``df = inf``) statistic."""
    return np.minimum(1.0, 2.0 * _st.t.sf(np.abs(np.asarray(z, dtype=np.float64)), df))


def fixed_halfwidth_vec(se: npt.ArrayLike, df: npt.ArrayLike, alpha: float) -> FloatArray:
    """Half-width ``t_{1-alpha/2, df} * se`` of the fixed-horizon interval."""
    return np.asarray(_st.t.ppf(1.0 - alpha / 2.0, df) * np.asarray(se, dtype=np.float64), dtype=np.float64)


# -------------------------------------------------------------- sequential
def rho(alpha: float, n_star: float) -> float:
    """Mixture tuning ``rho`` of the asymptotic confidence sequence (gbstats ``sequential_rho``)."""
    minus_two_ln_a = -2.0 * math.log(alpha)
    return math.sqrt((minus_two_ln_a + math.log(1.0 + minus_two_ln_a)) / n_star)


def sequential_halfwidth_vec(se: npt.ArrayLike, n: npt.ArrayLike, alpha: float, n_star: float) -> FloatArray:
    """Half-width of the always-valid interval; ``se * sqrt(N)`` is ``sqrt(s2)`` of STATISTICS.md."""
    n = np.asarray(n, dtype=np.float64)
    r2n = rho(alpha, n_star) ** 2 * n
    factor = 2.0 * (r2n + 1.0) / r2n * np.log(np.sqrt(r2n + 1.0) / alpha)
    return np.asarray(np.asarray(se, dtype=np.float64) * np.sqrt(factor), dtype=np.float64)


def sequential_p_vec(
    estimate: npt.ArrayLike,
    se: npt.ArrayLike,
    n: npt.ArrayLike,
    alpha: float,
    n_star: float,
    null: float = 0.0,
) -> FloatArray:
    """Per-look sequential p ``min(1, 1/Lambda(null))``, computed in log space (no overflow)."""
    z = z_score_vec(estimate, se, null)
    r2n = rho(alpha, n_star) ** 2 * np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf * finite is fine; 0 * inf cannot occur (r2n > 0)
        log_lambda = r2n * z**2 / (2.0 * (r2n + 1.0)) - 0.5 * np.log1p(r2n)
    return np.minimum(1.0, np.exp(-log_lambda))


# ---------------------------------------------------------------- decision
def infer_vec(
    lift: npt.ArrayLike,
    se: npt.ArrayLike,
    n_total: npt.ArrayLike,
    df: npt.ArrayLike,
    *,
    alpha: float,
    sequential: bool,
    n_star: float,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Interval and p-value for the relative lift: returns ``(ci_low, ci_high, p_value)``."""
    lift = np.asarray(lift, dtype=np.float64)
    if sequential:
        half = sequential_halfwidth_vec(se, n_total, alpha, n_star)
        p = sequential_p_vec(lift, se, n_total, alpha, n_star)
    else:
        half = fixed_halfwidth_vec(se, df, alpha)
        p = fixed_p_vec(z_score_vec(lift, se), df)
    return lift - half, lift + half, p


def promotable_vec(
    lift: npt.ArrayLike,
    ci_low: npt.ArrayLike,
    significant: npt.ArrayLike,
    *,
    min_lift: float,
    strict: bool,
) -> npt.NDArray[np.bool_]:
    """Decision helper: significant positive lift, and lift (or, if strict, ci_low) >= min_lift."""
    lift = np.asarray(lift, dtype=np.float64)
    base = np.asarray(significant, dtype=bool) & (lift > 0)
    bar = np.asarray(ci_low, dtype=np.float64) if strict else lift
    return np.asarray(base & (bar >= min_lift))


# ------------------------------------------------------------ the decision rule
#: Decisions, as the values of :class:`afs_continuous.experiment.Decision` (index = code).
DECISIONS: tuple[str, ...] = ("continue", "promote", "stop", "invalid")
CONTINUE, PROMOTE, STOP, INVALID = range(4)
#: Why a look decided what it did: the first rule that decided or blocked, in the order they are checked.
BRANCHES: tuple[str, ...] = ("srm", "too_few", "no_comparison", "regression", "guardrail", "too_young", "promote",
                             "undecided")
B_SRM, B_TOO_FEW, B_NO_COMPARISON, B_REGRESSION, B_GUARDRAIL, B_TOO_YOUNG, B_PROMOTE, B_UNDECIDED = range(8)
_DECISION_OF_BRANCH = np.array([INVALID, CONTINUE, CONTINUE, STOP, STOP, CONTINUE, PROMOTE, CONTINUE])


def decide_vec(
    *,
    srm_mismatch: npt.ArrayLike,
    n_min: npt.ArrayLike,
    compared: npt.ArrayLike,
    significant: npt.ArrayLike,
    lift: npt.ArrayLike,
    promotable: npt.ArrayLike,
    guardrail_violated: npt.ArrayLike,
    elapsed_h: npt.ArrayLike,
    min_samples: int,
    min_duration_h: float,
    max_duration_h: float | None,
    stop_on_regression: bool,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """The promotion decision of one look (elementwise): ``(decision, branch, expired)`` codes.

    The one rule behind :meth:`afs_continuous.experiment.ExperimentManager.evaluate` and the
    simulations. In order: a sample-ratio mismatch -> invalid; fewer than ``min_samples`` units in
    the smaller arm -> continue; no comparison (champion mean 0) -> continue; significantly worse
    (``stop_on_regression``) -> stop; a guardrail violated -> stop; younger than
    ``min_duration_h`` -> continue; ``promotable`` (this look's comparison) -> promote; otherwise
    continue. A look still continuing (or invalid) at ``max_duration_h`` or later stops (``expired``).

    Args:
        srm_mismatch: The arm split is flagged (bool).
        n_min: Units with the primary metric in the smaller arm.
        compared: A comparison exists (both arms >= 2 units, champion mean > 0); where False,
            ``significant``, ``lift`` and ``promotable`` are ignored.
        significant, lift, promotable: This look's comparison (:func:`afs_continuous.stats.compare`):
            ``p < alpha``, the relative lift, ``promotable_lift``.
        guardrail_violated: Some guardrail is significantly worse than its margin (bool).
        elapsed_h: Experiment age at the look, hours.
        min_samples, min_duration_h, max_duration_h, stop_on_regression: The
            :class:`~afs_continuous.config.ABTestConfig` settings of the same names.

    Returns:
        ``decision`` (index into :data:`DECISIONS`), ``branch`` (index into :data:`BRANCHES`) and
        ``expired`` (stopped by ``max_duration_h``), each of the broadcast shape.
    """
    compared = np.asarray(compared, dtype=bool)
    lift = np.where(compared, np.asarray(lift, dtype=np.float64), 0.0)
    significant = compared & np.asarray(significant, dtype=bool)
    elapsed = np.asarray(elapsed_h, dtype=np.float64)
    conditions = [
        np.asarray(srm_mismatch, dtype=bool),
        np.asarray(n_min) < min_samples,
        ~compared,
        significant & (lift < 0) & bool(stop_on_regression),
        np.asarray(guardrail_violated, dtype=bool),
        elapsed < min_duration_h,
        compared & np.asarray(promotable, dtype=bool),
    ]
    shape = np.broadcast_shapes(*(np.shape(c) for c in conditions))
    branch = np.select([np.broadcast_to(c, shape) for c in conditions], list(range(len(conditions))), B_UNDECIDED)
    decision = _DECISION_OF_BRANCH[branch]
    open_ = (decision == CONTINUE) | (decision == INVALID)
    expired = open_ & (max_duration_h is not None) & (elapsed >= (max_duration_h if max_duration_h is not None else np.inf))
    return np.where(expired, STOP, decision), branch, np.asarray(expired)


def srm_mismatch_vec(n_a: npt.ArrayLike, n_b: npt.ArrayLike, fraction_b: float, threshold: float) -> npt.NDArray[np.bool_]:
    """Two-arm sample-ratio mismatch, elementwise, as :func:`afs_continuous.srm.srm_test` decides it:
    Pearson chi-square (df 1) of the units per arm against ``(1 - fraction_b, fraction_b)``, flagged at
    ``p < threshold`` once the smaller arm expects at least 5 units."""
    n_a, n_b = np.asarray(n_a, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    total = n_a + n_b
    e_a, e_b = total * (1.0 - fraction_b), total * fraction_b
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.where(total > 0, (n_a - e_a) ** 2 / e_a + (n_b - e_b) ** 2 / e_b, 0.0)
    decided = np.minimum(e_a, e_b) >= 5.0
    return np.asarray(decided & (_st.chi2.sf(chi2, 1) < threshold))


# -------------------------------------------------------------- simulation
def first_decision_look(
    m_a: FloatArray,
    v_a: FloatArray,
    n_a: FloatArray,
    m_b: FloatArray,
    v_b: FloatArray,
    n_b: FloatArray,
    *,
    config: Any,
    binary: bool = False,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """First look (last axis) at which an experiment ends, and how: ``(look, decision)``.

    Arrays hold cumulative per-arm summaries (units, one value each), shape ``(runs, looks)``;
    look ``i`` is at hour ``i + 1`` of the experiment. Every look takes the decision
    :meth:`~afs_continuous.experiment.ExperimentManager.evaluate` takes with ``config`` (an
    :class:`~afs_continuous.config.ABTestConfig`): this look's comparison as
    :func:`afs_continuous.stats.compare` computes it, the sample-ratio check, and
    :func:`decide_vec`. No guardrail data is simulated (never violated). ``binary=False``
    matches the store, whose per-unit summaries are not marked binary.

    Returns:
        ``look``: index of the first promote or stop (-1: still running at the last look);
        ``decision``: :data:`PROMOTE`, :data:`STOP` or :data:`CONTINUE` (still running).
    """
    alpha, n_star = float(config.alpha), float(config.sequential_n_star)
    with np.errstate(divide="ignore", invalid="ignore"):
        compared = (n_a >= 2) & (n_b >= 2) & (m_a > 0)
        safe_n_a, safe_n_b = np.where(compared, n_a, 2.0), np.where(compared, n_b, 2.0)
        lift, se = relative_lift_vec(np.where(compared, m_a, 1.0), v_a, safe_n_a, m_b, v_b, safe_n_b)
        lift, se = np.where(compared, lift, 0.0), np.where(compared, se, 0.0)
        df = np.inf if binary else welch_df_vec(v_a, safe_n_a, v_b, safe_n_b)
        ci_low, _, p = infer_vec(lift, se, n_a + n_b, df, alpha=alpha, sequential=bool(config.sequential), n_star=n_star)
    significant = np.where(compared, p, 1.0) < alpha
    promotable = promotable_vec(lift, ci_low, significant, min_lift=float(config.promotion_threshold),
                                strict=bool(config.strict))
    decision, _, _ = decide_vec(
        srm_mismatch=srm_mismatch_vec(n_a, n_b, float(config.initial_challenger_traffic), float(config.srm_threshold)),
        n_min=np.minimum(n_a, n_b), compared=compared, significant=significant, lift=lift, promotable=promotable,
        guardrail_violated=False, elapsed_h=np.arange(1, m_a.shape[-1] + 1, dtype=np.float64),
        min_samples=int(config.min_samples_per_arm), min_duration_h=float(config.min_duration_hours),
        max_duration_h=config.max_duration_hours, stop_on_regression=bool(config.stop_on_regression),
    )
    ended = (decision == PROMOTE) | (decision == STOP)
    look = np.where(ended.any(axis=-1), ended.argmax(axis=-1), -1)
    at = np.take_along_axis(decision, np.maximum(look, 0)[..., None], axis=-1)[..., 0]
    return look, np.where(look >= 0, at, CONTINUE)


def simulate_binary_experiments(
    *,
    n_runs: int,
    true_lift: float,
    config: Any,
    p_champion: float = 0.30,
    requests_per_hour: int = 500,
    n_hours: int | None = None,
    seed: int = 0,
    chunk_runs: int = 2000,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Hourly-evaluated experiments on a 0/1 metric with the decision rule of ``config``.

    One request per unit; each goes to the challenger with probability
    ``config.initial_challenger_traffic``. Runs are simulated in chunks of ``chunk_runs``.

    Args:
        n_hours: Hourly looks (default: ``config.max_duration_hours``, else 168).

    Returns:
        ``(hour, decision)`` per run: the 1-based hour at which it ended (-1: still running after
        ``n_hours``) and :data:`PROMOTE`, :data:`STOP` or :data:`CONTINUE`.
    """
    hours = n_hours if n_hours is not None else int(math.ceil(config.max_duration_hours or 168))
    rng = np.random.default_rng(seed)
    looks, decisions = [], []
    for start in range(0, n_runs, chunk_runs):
        arms = binary_cumulative_arms(
            rng, min(chunk_runs, n_runs - start), hours, p_champion=p_champion, true_lift=true_lift,
            requests_per_hour=requests_per_hour, challenger_fraction=float(config.initial_challenger_traffic),
        )
        look, decision = first_decision_look(*arms, config=config)
        looks.append(np.where(look >= 0, look + 1, -1))
        decisions.append(decision)
    return np.concatenate(looks), np.concatenate(decisions)


def binary_cumulative_arms(
    rng: np.random.Generator,
    n_runs: int,
    n_hours: int,
    *,
    p_champion: float,
    true_lift: float,
    requests_per_hour: int,
    challenger_fraction: float,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Cumulative ``(m_a, v_a, n_a, m_b, v_b, n_b)`` after each hour, shape ``(n_runs, n_hours)``.

    Each request (one unit) goes to the challenger with probability ``challenger_fraction``;
    success rates are ``p_champion`` and ``p_champion * (1 + true_lift)``; variances are the
    sample variances (ddof=1) ``p(1-p) n/(n-1)`` that the store's per-unit summaries
    (:meth:`ArmSummary.from_unit_sums` with one value per unit) give.
    """
    size = (n_runs, n_hours)
    hourly_b = rng.binomial(requests_per_hour, challenger_fraction, size=size)
    n_b = np.cumsum(hourly_b, axis=1).astype(np.float64)
    n_a = np.cumsum(requests_per_hour - hourly_b, axis=1).astype(np.float64)
    s_a = np.cumsum(rng.binomial(requests_per_hour - hourly_b, p_champion), axis=1)
    s_b = np.cumsum(rng.binomial(hourly_b, p_champion * (1.0 + true_lift)), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        m_a, m_b = np.where(n_a > 0, s_a / n_a, 0.0), np.where(n_b > 0, s_b / n_b, 0.0)
        v_a = np.where(n_a >= 2, m_a * (1.0 - m_a) * n_a / (n_a - 1.0), 0.0)
        v_b = np.where(n_b >= 2, m_b * (1.0 - m_b) * n_b / (n_b - 1.0), 0.0)
    return m_a, v_a, n_a, m_b, v_b, n_b


def summarize_hours(first_hour: npt.NDArray[np.int64]) -> tuple[float, float | None]:
    """``(share of runs with an hour > 0, median of those hours or None)``."""
    hit = first_hour[first_hour > 0]
    share = hit.size / first_hour.size if first_hour.size else 0.0
    return share, (float(np.median(hit)) if hit.size else None)
