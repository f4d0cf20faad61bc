"""Vectorised kernels behind :mod:`afs_continuous.stats`, and the promotion simulator.

Every function here works elementwise on numpy arrays (scalars are 0-d arrays),
so :func:`afs_continuous.stats.compare` and the Monte Carlo simulations in
``tests/unit/test_stats_simulation.py`` and ``benchmarks/simulate_promotion.py``
run the *same* code: the simulation exercises the production decision path,
not a re-implementation of it.

Nothing here validates its inputs; :mod:`afs_continuous.stats` does that. The
kernels never produce NaN from a zero standard error: an estimate equal to the
null gives ``z = 0`` (p = 1), any other estimate gives ``z = +-inf`` (p = 0).
Formulas and sources are in ``docs/STATISTICS.md`` and in the docstrings of
:mod:`afs_continuous.stats`.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as _st

from afs_continuous.errors import ConfigError

FloatArray = npt.NDArray[np.float64]
Rule = Literal["fixed", "sequential", "strict"]
RULES: tuple[Rule, ...] = ("fixed", "sequential", "strict")


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


# -------------------------------------------------------------- simulation
def first_promotion_look(
    m_a: FloatArray,
    v_a: FloatArray,
    n_a: FloatArray,
    m_b: FloatArray,
    v_b: FloatArray,
    n_b: FloatArray,
    *,
    rule: Rule,
    binary: bool,
    alpha: float = 0.05,
    min_lift: float = 0.05,
    n_star: float = 5000,
    min_samples: int = 100,
) -> npt.NDArray[np.int64]:
    """Index of the first look (last axis) at which ``rule`` promotes, or -1 if it never does.

    Arrays hold cumulative per-arm summaries, shape ``(runs, looks)``. Looks
    before both arms reach ``min_samples`` are skipped (the caller's burn-in).
    ``"fixed"`` is the naive fixed-horizon test peeked at every look;
    ``"sequential"`` is the default rule with the running-minimum sequential p;
    ``"strict"`` requires the current always-valid lower bound >= ``min_lift``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _first_promotion_look(m_a, v_a, n_a, m_b, v_b, n_b, rule, binary, alpha, min_lift, n_star, min_samples)


def _first_promotion_look(
    m_a: FloatArray, v_a: FloatArray, n_a: FloatArray, m_b: FloatArray, v_b: FloatArray, n_b: FloatArray,
    rule: Rule, binary: bool, alpha: float, min_lift: float, n_star: float, min_samples: int,
) -> npt.NDArray[np.int64]:
    ready = (n_a >= min_samples) & (n_b >= min_samples) & (n_a >= 2) & (n_b >= 2) & (m_a != 0)
    safe_n_a, safe_n_b = np.where(ready, n_a, 2.0), np.where(ready, n_b, 2.0)
    lift, se = relative_lift_vec(np.where(ready, m_a, 1.0), v_a, safe_n_a, m_b, v_b, safe_n_b)
    lift, se = np.where(ready, lift, 0.0), np.where(ready, se, 0.0)
    df = np.inf if binary else welch_df_vec(v_a, safe_n_a, v_b, safe_n_b)
    sequential = rule != "fixed"
    ci_low, _, p = infer_vec(lift, se, n_a + n_b, df, alpha=alpha, sequential=sequential, n_star=n_star)
    p = np.where(ready, p, 1.0)
    if sequential:
        p = np.minimum.accumulate(p, axis=-1)  # the caller's running minimum over looks
    promote = ready & promotable_vec(lift, ci_low, p < alpha, min_lift=min_lift, strict=rule == "strict")
    return np.where(promote.any(axis=-1), promote.argmax(axis=-1), -1)


def simulate_binary_promotion(
    *,
    n_runs: int,
    true_lift: float,
    rules: tuple[Rule, ...] = RULES,
    p_champion: float = 0.30,
    requests_per_hour: int = 500,
    challenger_fraction: float = 0.10,
    n_hours: int = 168,
    alpha: float = 0.05,
    min_lift: float = 0.05,
    n_star: float = 5000,
    min_samples: int = 100,
    seed: int = 0,
    chunk_runs: int = 5000,
) -> dict[Rule, npt.NDArray[np.int64]]:
    """Hourly-looked experiments on a 0/1 metric; returns, per rule, the first promoting hour (1-based) or -1.

    Arms are drawn by :func:`binary_cumulative_arms`; runs are simulated in
    chunks of ``chunk_runs`` to bound memory.
    """
    rng = np.random.default_rng(seed)
    out: dict[Rule, list[npt.NDArray[np.int64]]] = {r: [] for r in rules}
    for start in range(0, n_runs, chunk_runs):
        arms = binary_cumulative_arms(
            rng, min(chunk_runs, n_runs - start), n_hours, p_champion=p_champion, true_lift=true_lift,
            requests_per_hour=requests_per_hour, challenger_fraction=challenger_fraction,
        )
        for r in rules:
            look = first_promotion_look(
                *arms, rule=r, binary=True, alpha=alpha, min_lift=min_lift, n_star=n_star, min_samples=min_samples
            )
            out[r].append(np.where(look >= 0, look + 1, -1))
    return {r: np.concatenate(v) for r, v in out.items()}


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

    Each request goes to the challenger with probability ``challenger_fraction``;
    success rates are ``p_champion`` and ``p_champion * (1 + true_lift)``;
    variances are ``p(1-p)`` as in :meth:`ArmSummary.from_proportion`.
    """
    size = (n_runs, n_hours)
    hourly_b = rng.binomial(requests_per_hour, challenger_fraction, size=size)
    n_b = np.cumsum(hourly_b, axis=1).astype(np.float64)
    n_a = np.cumsum(requests_per_hour - hourly_b, axis=1).astype(np.float64)
    s_a = np.cumsum(rng.binomial(requests_per_hour - hourly_b, p_champion), axis=1)
    s_b = np.cumsum(rng.binomial(hourly_b, p_champion * (1.0 + true_lift)), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        m_a, m_b = np.where(n_a > 0, s_a / n_a, 0.0), np.where(n_b > 0, s_b / n_b, 0.0)
    return m_a, m_a * (1.0 - m_a), n_a, m_b, m_b * (1.0 - m_b), n_b


def summarize_hours(first_hour: npt.NDArray[np.int64]) -> tuple[float, float | None]:
    """``(share of runs that promoted, median promoting hour among them or None)``."""
    hit = first_hour[first_hour > 0]
    share = hit.size / first_hour.size if first_hour.size else 0.0
    return share, (float(np.median(hit)) if hit.size else None)
