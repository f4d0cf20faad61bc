"""Statistics of promotion: compare a challenger with the champion, safely under peeking.

The promotion loop looks at a running experiment every hour and promotes as soon
as the challenger looks better. A fixed-horizon test (Welch t, two-proportion z)
is valid only at one pre-planned look: checked hourly for a week at alpha 0.05,
an A/A experiment "wins" far more often than 5% of the time (the peeking problem;
see the simulation table in ``docs/statistics.md``). The default here is therefore
an always-valid inference: the asymptotic confidence sequence of Waudby-Smith et
al., identical to the normal-mixture mSPRT of Johari et al. (Optimizely Stats
Engine), to GrowthBook's sequential testing and to Eppo's bound, applied to the
delta-method relative lift. Its interval and p-value stay valid at every look, so
the loop may decide whenever it wants; callers keep a burn-in (``min_samples``)
because the guarantee is asymptotic. The loop decides on each look's own
p-value and interval (:meth:`afs_continuous.experiment.ExperimentManager.evaluate`,
rule in :func:`afs_continuous._stats_sequential.decide_vec`), which is at least
as strict as the running minimum of the sequential p-value
(:func:`running_min_p`, kept for reports because :func:`compare` is stateless).

References:
    Johari, Koomen, Pekelis, Walsh (2017), "Peeking at A/B Tests", KDD.
    Waudby-Smith et al., "Time-uniform central limit theory", arXiv 2103.06476.
    Howard et al., "Time-uniform, nonparametric, nonasymptotic confidence
    sequences", arXiv 1810.08240.
    GrowthBook gbstats (``frequentist/tests.py``, ``utils.py``); Eppo docs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from afs_continuous import _stats_sequential as _k
from afs_continuous.errors import ConfigError

__all__ = [
    "ArmSummary", "Comparison", "SRMResult", "compare", "welch_test", "two_proportion_z_test", "relative_lift",
    "sequential_rho", "sequential_halfwidth", "sequential_p_value", "running_min_p", "srm_test",
]


# ------------------------------------------------------------------ helpers
_finite, _count, _alpha, _n_star, _se = _k.check_finite, _k.check_count, _k.check_alpha, _k.check_n_star, _k.check_se


def _check_arm(name: str, arm: ArmSummary) -> None:
    if not isinstance(arm, ArmSummary):
        raise ConfigError(f"{name} must be an ArmSummary, got {type(arm).__name__}")
    if arm.n < 2:
        raise ConfigError(f"{name} has n={arm.n} observations; need at least 2 per arm (use a burn-in / min_samples)")


# -------------------------------------------------------------- summaries
@dataclass(frozen=True)
class ArmSummary:
    """Sufficient statistics of one arm's metric.

    Attributes:
        n: Number of observations (>= 0; :func:`compare` needs >= 2).
        mean: Sample mean, in the metric's unit.
        variance: Sample variance (ddof=1), in the metric's unit squared; for a
            0/1 metric built by :meth:`from_proportion` it is ``p(1-p)``.
        binary: True for a 0/1 metric (set by :meth:`from_proportion`). When both
            arms are binary the fixed-horizon test uses the normal distribution
            (two-proportion z-test); otherwise Student t with Welch-Satterthwaite
            degrees of freedom, as gbstats does. Sequential inference ignores it.

    Raises:
        ConfigError: ``n`` negative or not an integer; ``mean``/``variance`` NaN
            or infinite; ``variance`` negative.

    Example:
        >>> ArmSummary.from_sums(4, 10.0, 30.0)
        ArmSummary(n=4, mean=2.5, variance=1.6666666666666667, binary=False)
    """

    n: int
    mean: float
    variance: float
    binary: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _count("n", self.n))
        object.__setattr__(self, "mean", _finite("mean", self.mean))
        variance = _finite("variance", self.variance)
        if variance < 0:
            raise ConfigError(f"variance must be >= 0, got {variance!r}")
        object.__setattr__(self, "variance", variance)
        object.__setattr__(self, "binary", bool(self.binary))

    @classmethod
    def from_values(cls, values: Iterable[float]) -> ArmSummary:
        """Summarise raw observations.

        Args:
            values: Observations (floats, in the metric's unit). Fewer than 2
                give variance 0.0; none give mean 0.0.

        Returns:
            ArmSummary with ddof=1 variance.

        Raises:
            ConfigError: A value is NaN, infinite or not a number.
        """
        try:
            arr = np.asarray(list(values), dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise ConfigError("values must be numbers") from None
        if not np.all(np.isfinite(arr)):
            raise ConfigError("values contain NaN or infinity; drop or fix them before summarising")
        n = int(arr.size)
        mean = float(arr.mean()) if n else 0.0
        variance = float(arr.var(ddof=1)) if n >= 2 else 0.0
        return cls(n, mean, variance)

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> ArmSummary:
        """Summarise streamable sums ``(n, sum y, sum y^2)``.

        Args:
            n: Number of observations (>= 0).
            total: Sum of observations, in the metric's unit.
            total_sq: Sum of squared observations, in the unit squared.

        Returns:
            ArmSummary with ``variance = (total_sq - total^2/n) / (n-1)``, clipped
            at 0 against rounding (0.0 when n < 2; mean 0.0 when n == 0).

        Raises:
            ConfigError: Bad count, NaN/inf sums or negative ``total_sq``.
        """
        n = _count("n", n)
        total, total_sq = _finite("total", total), _finite("total_sq", total_sq)
        if total_sq < 0:
            raise ConfigError(f"total_sq (sum of squares) must be >= 0, got {total_sq!r}")
        mean = total / n if n else 0.0
        variance = max(0.0, (total_sq - total * total / n) / (n - 1)) if n >= 2 else 0.0
        return cls(n, mean, variance)

    @classmethod
    def from_unit_sums(cls, k: int, s: float, s2: float, m: float, m2: float, sm: float) -> ArmSummary:
        """Summarise a per-record metric randomised by unit (user), cluster-robustly.

        Each of the ``k`` units contributes ``S_u`` (sum of its values) and
        ``M_u`` (its number of values); the metric is the ratio ``R = sum S / sum M``
        and its variance comes from the delta method over units, so repeated
        requests of one user are not counted as independent evidence:
        ``Var(R) ~ (s_S^2 - 2 R s_SM + R^2 s_M^2) / (k mean_M^2)``. The returned
        summary has ``n = k`` and ``variance = k Var(R)``, so :func:`compare`
        uses it unchanged. With one value per unit it equals :meth:`from_sums`.

        Args:
            k: Units with at least one value (>= 0).
            s, s2: Sum over units of ``S_u`` and of ``S_u^2``.
            m, m2: Sum over units of ``M_u`` and of ``M_u^2``.
            sm: Sum over units of ``S_u M_u``.

        References:
            Deng, Knoblich, Lu (2018), "Applying the Delta Method in Metric
            Analytics", KDD; GrowthBook ratio metrics (gbstats).

        Example:
            >>> a = ArmSummary.from_unit_sums(3, 6.0, 14.0, 3.0, 3.0, 6.0)   # one value per unit
            >>> b = ArmSummary.from_sums(3, 6.0, 14.0)
            >>> (a.n, a.mean, round(a.variance, 12)) == (b.n, b.mean, round(b.variance, 12))
            True
        """
        k = _count("k", k)
        vals = [_finite(name, v) for name, v in (("s", s), ("s2", s2), ("m", m), ("m2", m2), ("sm", sm))]
        s, s2, m, m2, sm = vals
        if k == 0 or m <= 0:
            return cls(k, 0.0, 0.0)
        ratio = s / m
        if k < 2:
            return cls(k, ratio, 0.0)
        var_s = (s2 - s * s / k) / (k - 1)
        var_m = (m2 - m * m / k) / (k - 1)
        cov = (sm - s * m / k) / (k - 1)
        mean_m = m / k
        variance = max(0.0, (var_s - 2.0 * ratio * cov + ratio * ratio * var_m) / (mean_m * mean_m))
        return cls(k, ratio, variance)

    @classmethod
    def from_proportion(cls, n: int, successes: int) -> ArmSummary:
        """Summarise a 0/1 metric as gbstats does (variance ``p(1-p)``, ``binary=True``).

        Args:
            n: Number of trials (>= 0).
            successes: Number of ones, ``0 <= successes <= n``.

        Returns:
            ArmSummary with mean ``p = successes/n`` (0.0 when n == 0).

        Raises:
            ConfigError: Counts not integers, negative, or successes > n.
        """
        n, successes = _count("n", n), _count("successes", successes)
        if successes > n:
            raise ConfigError(f"successes ({successes}) cannot exceed n ({n})")
        p = successes / n if n else 0.0
        return cls(n, p, p * (1.0 - p), binary=True)


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare` (challenger vs champion, relative lift).

    Attributes:
        lift: Relative lift ``challenger.mean / champion.mean - 1`` (0.05 = +5%).
        ci_low: Lower end of the level-(1-alpha) interval for the lift: the
            always-valid confidence sequence when ``sequential``, else fixed-horizon.
        ci_high: Upper end of that interval.
        p_value: Two-sided p for ``lift == 0``; the per-look sequential p when
            ``sequential`` (the loop decides on it; :func:`running_min_p` gives the running minimum for reports).
        significant: ``p_value < alpha`` (equivalently, the interval excludes 0).
        absolute_diff: ``challenger.mean - champion.mean``, in the metric's unit.
        se: Delta-method standard error of ``lift``.
        alpha: Two-sided error level used.
        sequential: Whether always-valid (sequential) inference was used.
        n_champion: Champion observations.
        n_challenger: Challenger observations.
        promotable_lift: The decision helper. Default rule (``strict=False``):
            ``significant and lift > 0 and lift >= min_lift`` ("a significant gain,
            at least min_lift observed"). Strict rule: additionally requires
            ``ci_low >= min_lift`` with ``ci_low`` the lower end of the reported
            *two-sided* level-alpha interval ("significantly more than min_lift";
            its error rate at a true lift of exactly min_lift is at most alpha/2).
        min_lift: Minimum relative lift used for ``promotable_lift``.
        strict: Whether the strict rule was used.
        n_star: Tuning constant N* of the confidence sequence (used only if sequential).
    """

    lift: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    absolute_diff: float
    se: float
    alpha: float
    sequential: bool
    n_champion: int
    n_challenger: int
    promotable_lift: bool
    min_lift: float
    strict: bool
    n_star: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of all fields (floats, ints, bools)."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------ fixed horizon
def welch_test(a: ArmSummary, b: ArmSummary, alpha: float = 0.05) -> dict[str, float]:
    """Welch's unequal-variance t-test on the absolute difference ``b.mean - a.mean``.

    Matches ``scipy.stats.ttest_ind_from_stats(..., equal_var=False)``. A fixed-
    horizon building block only: valid at one pre-planned look, not under peeking.

    Args:
        a: Champion (reference) arm.
        b: Challenger arm.
        alpha: Two-sided level of the interval, in (0, 1). Default 0.05.

    Returns:
        dict with ``d`` (difference, metric unit), ``se``, ``t``, ``df``
        (Welch-Satterthwaite; ``inf`` when both variances are 0), ``p_value``
        (two-sided), ``ci_low``, ``ci_high``. Zero standard error gives
        ``t = 0, p = 1`` for equal means and ``t = +-inf, p = 0`` otherwise.

    Raises:
        ConfigError: alpha outside (0, 1) or an arm with n < 2.

    References:
        GrowthBook gbstats ``frequentist/tests.py``; Welch (1947).

    Example:
        >>> r = welch_test(ArmSummary(9000, 0.70, 0.09), ArmSummary(1000, 0.72, 0.0784))
        >>> round(r["t"], 5), round(r["p_value"], 7)
        (2.12718, 0.0335979)
    """
    alpha = _alpha(alpha)
    _check_arm("a", a)
    _check_arm("b", b)
    d = b.mean - a.mean
    se = math.sqrt(a.variance / a.n + b.variance / b.n)
    df = float(_k.welch_df_vec(a.variance, a.n, b.variance, b.n))
    t = float(_k.z_score_vec(d, se))
    half = float(_k.fixed_halfwidth_vec(se, df, alpha))
    p = float(_k.fixed_p_vec(t, df))
    return {"d": d, "se": se, "t": t, "df": df, "p_value": p, "ci_low": d - half, "ci_high": d + half}


def two_proportion_z_test(
    a: ArmSummary, b: ArmSummary, *, alpha: float = 0.05, pooled: bool = False
) -> dict[str, float]:
    """Two-proportion z-test on ``b.mean - a.mean`` for 0/1 metrics.

    Args:
        a: Champion arm (mean = conversion rate, 0..1).
        b: Challenger arm.
        alpha: Two-sided level of the interval, in (0, 1). Default 0.05.
        pooled: False (default, as gbstats and :func:`compare`): unpooled SE
            ``sqrt(pA(1-pA)/nA + pB(1-pB)/nB)``. True: pooled SE under H0, whose
            ``z**2`` equals ``scipy.stats.chi2_contingency(..., correction=False)``.

    Returns:
        dict with ``d``, ``se``, ``z``, ``p_value`` (two-sided normal), ``ci_low``,
        ``ci_high`` (``d +- z_{1-alpha/2} se``, with the chosen SE).

    Raises:
        ConfigError: alpha outside (0, 1), n < 2, or a mean outside [0, 1].
    """
    alpha = _alpha(alpha)
    _check_arm("a", a)
    _check_arm("b", b)
    for name, arm in (("a", a), ("b", b)):
        if not 0.0 <= arm.mean <= 1.0:
            raise ConfigError(f"{name}.mean must be a proportion in [0, 1], got {arm.mean!r}")
    d = b.mean - a.mean
    if pooled:
        p = (a.n * a.mean + b.n * b.mean) / (a.n + b.n)
        se = math.sqrt(p * (1.0 - p) * (1.0 / a.n + 1.0 / b.n))
    else:
        se = math.sqrt(a.mean * (1 - a.mean) / a.n + b.mean * (1 - b.mean) / b.n)
    z = float(_k.z_score_vec(d, se))
    half = float(_k.fixed_halfwidth_vec(se, math.inf, alpha))
    return {"d": d, "se": se, "z": z, "p_value": float(_k.fixed_p_vec(z, math.inf)), "ci_low": d - half, "ci_high": d + half}


def relative_lift(a: ArmSummary, b: ArmSummary) -> tuple[float, float]:
    """Relative lift ``L = m_B/m_A - 1`` and its delta-method standard error.

    ``Var(L) = s_B^2/(m_A^2 n_B) + s_A^2 m_B^2/(m_A^4 n_A)`` (arms independent).
    Meant for metrics with a positive mean (rates, quality scores); with a
    negative champion mean, a positive L means the challenger is *lower*.

    Args:
        a: Champion arm (denominator); its mean must not be 0.
        b: Challenger arm.

    Returns:
        ``(L, SE_L)``, both unitless (0.05 = +5%).

    Raises:
        ConfigError: ``a.mean == 0`` ("champion mean is 0; relative lift
            undefined"): compare absolute differences (:func:`welch_test`) or
            wait for data instead. Also an arm with n < 2.

    References:
        gbstats ``utils.variance_of_ratios``; Eppo "statistical nitty-gritty".

    Example:
        >>> lift, se = relative_lift(ArmSummary.from_proportion(9000, 900), ArmSummary.from_proportion(1000, 120))
        >>> round(lift, 6), round(se, 6)
        (0.2, 0.109545)
    """
    _check_arm("a", a)
    _check_arm("b", b)
    if a.mean == 0.0:
        raise ConfigError("champion mean is 0; relative lift undefined (compare absolute differences instead)")
    lift, se = _k.relative_lift_vec(a.mean, a.variance, a.n, b.mean, b.variance, b.n)
    return float(lift), float(se)


# --------------------------------------------------------------- sequential
def sequential_rho(alpha: float, n_star: float) -> float:
    """Mixture tuning constant of the asymptotic confidence sequence.

    ``rho = sqrt((-2 ln alpha + ln(1 - 2 ln alpha)) / N*)``, which makes the
    sequence tightest near ``N = N*`` total observations.

    Args:
        alpha: Two-sided error level, in (0, 1).
        n_star: N*, total observations (both arms) at which a decision is
            expected; fixed before launch (GrowthBook 5,000; Eppo 10,000).

    Returns:
        rho (> 0).

    Raises:
        ConfigError: alpha outside (0, 1) or n_star <= 0.

    References:
        Waudby-Smith et al., arXiv 2103.06476; gbstats ``sequential_rho``.

    Example:
        >>> round(sequential_rho(0.05, 5000), 7)
        0.0398401
    """
    return _k.rho(_alpha(alpha), _n_star(n_star))


def sequential_halfwidth(se: float, n: int, alpha: float, n_star: float) -> float:
    """Half-width of the always-valid (asymptotic) confidence sequence.

    With ``s2 = N se^2``: ``halfwidth = sqrt(s2) sqrt(2 (N rho^2 + 1) /
    (N^2 rho^2) ln(sqrt(N rho^2 + 1) / alpha))``. ``estimate +- halfwidth``
    covers the truth at all looks simultaneously with probability >= 1-alpha
    (asymptotically).

    Args:
        se: Standard error of the estimate, ``sqrt(V)`` (absolute or relative
            scale, same unit as the estimate).
        n: N, total observations in both arms (>= 1).
        alpha: Two-sided error level, in (0, 1).
        n_star: Tuning constant N* (> 0), see :func:`sequential_rho`.

    Returns:
        Half-width, in the estimate's unit.

    Raises:
        ConfigError: se negative/NaN, n < 1, alpha outside (0, 1), n_star <= 0.

    References:
        Waudby-Smith et al., arXiv 2103.06476; Howard et al., arXiv 1810.08240;
        gbstats ``sequential_interval_halfwidth``.

    Example:
        >>> round(sequential_halfwidth(0.1095445, 10_000, 0.05, 5000), 5)
        0.33537
    """
    return float(_k.sequential_halfwidth_vec(_se(se), _count("n", n, 1), _alpha(alpha), _n_star(n_star)))


def sequential_p_value(
    estimate: float, se: float, n: int, alpha: float, n_star: float, null: float = 0.0
) -> float:
    """Always-valid p-value of one look (normal-mixture mSPRT).

    ``Lambda = exp(rho^2 N (est - null)^2 / (2 V (N rho^2 + 1))) / sqrt(N rho^2 + 1)``
    with ``V = se^2``; returns ``min(1, 1/Lambda)``. ``p < alpha`` exactly when
    the confidence sequence of :func:`sequential_halfwidth` excludes ``null``.
    Report the running minimum over looks (:func:`running_min_p`).

    Args:
        estimate: Current estimate (absolute or relative lift).
        se: Its standard error ``sqrt(V)``, same unit (>= 0).
        n: N, total observations in both arms (>= 1).
        alpha: The alpha ``rho`` was tuned for, in (0, 1).
        n_star: Tuning constant N* (> 0).
        null: Null value ``d0``. Default 0.

    Returns:
        p in [0, 1]; 0 when se == 0 and estimate != null, 1 when equal.

    Raises:
        ConfigError: NaN inputs, se < 0, n < 1, alpha outside (0, 1), n_star <= 0.

    References:
        Johari et al. (2017) "Peeking at A/B Tests"; Waudby-Smith et al.,
        arXiv 2103.06476.

    Example:
        >>> round(sequential_p_value(0.2, 0.1095445, 10_000, 0.05, 5000), 4)
        0.8564
    """
    est, null = _finite("estimate", estimate), _finite("null", null)
    return float(_k.sequential_p_vec(est, _se(se), _count("n", n, 1), _alpha(alpha), _n_star(n_star), null))


def running_min_p(previous: float | None, current: float) -> float:
    """Running minimum of sequential p-values over looks (``previous`` None at the first look).

    Args:
        previous: Running minimum so far, or None before the first look.
        current: This look's p-value.

    Returns:
        ``min(previous, current)``, or ``current`` if previous is None.

    Raises:
        ConfigError: A p-value is NaN or outside [0, 1].

    Example:
        >>> running_min_p(running_min_p(None, 0.2), 0.5)
        0.2
    """
    cur = _finite("current", current)
    values = [cur] if previous is None else [_finite("previous", previous), cur]
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"p-values must be in [0, 1], got previous={previous!r}, current={current!r}")
    return min(values)


# ------------------------------------------------------------------ compare
def compare(
    champion: ArmSummary,
    challenger: ArmSummary,
    *,
    alpha: float = 0.05,
    min_lift: float = 0.05,
    sequential: bool = True,
    n_star: int = 5000,
    strict: bool = False,
) -> Comparison:
    """Compare a challenger with the champion on the relative lift of the mean.

    Sequential (default): always-valid confidence sequence and mSPRT p-value on
    the delta-method relative lift, with ``N = n_champion + n_challenger`` and
    ``V = SE_L^2``. Fixed-horizon (``sequential=False``, one planned look only):
    ``L +- q SE_L`` with ``q`` the normal quantile when both arms are binary and
    the Welch t quantile otherwise (as gbstats). ``compare`` is stateless: it
    does not enforce a burn-in (the caller's ``min_samples``) and returns the
    per-look p, on which the loop decides (:func:`running_min_p` keeps a running minimum for reports).

    Args:
        champion: Current model's arm (denominator of the lift; mean != 0).
        challenger: Candidate's arm.
        alpha: Two-sided error level, in (0, 1). Default 0.05.
        min_lift: Minimum relative lift for ``promotable_lift`` (0.05 = +5%).
        sequential: Always-valid inference (True, default) or fixed-horizon.
        n_star: N*, total observations at which a decision is expected (> 0).
        strict: Use the strict decision rule (``ci_low >= min_lift``), see
            :class:`Comparison`.

    Returns:
        Comparison. A zero standard error never yields NaN: equal means give
        lift 0 and p 1, different means give p 0 and a zero-width interval.

    Raises:
        ConfigError: alpha outside (0, 1), n_star <= 0, min_lift NaN, an arm
            with n < 2, or champion mean 0 (relative lift undefined).

    References:
        Johari et al. (2017) "Peeking at A/B Tests"; Waudby-Smith et al., arXiv
        2103.06476; Howard et al., arXiv 1810.08240; GrowthBook gbstats; Eppo.

    Example:
        >>> c = compare(ArmSummary.from_proportion(9000, 900), ArmSummary.from_proportion(1000, 120))
        >>> round(c.lift, 4), round(c.ci_low, 4), round(c.p_value, 4), c.promotable_lift
        (0.2, -0.1354, 0.8564, False)
    """
    alpha, n_star_f = _alpha(alpha), _n_star(n_star)
    min_lift = _finite("min_lift", min_lift)
    lift, se = relative_lift(champion, challenger)
    binary = champion.binary and challenger.binary
    df = math.inf if binary else float(_k.welch_df_vec(champion.variance, champion.n, challenger.variance, challenger.n))
    n_total = champion.n + challenger.n
    ci_low, ci_high, p = (
        float(x) for x in _k.infer_vec(lift, se, n_total, df, alpha=alpha, sequential=bool(sequential), n_star=n_star_f)
    )
    significant = p < alpha
    promotable = bool(_k.promotable_vec(lift, ci_low, significant, min_lift=min_lift, strict=bool(strict)))
    return Comparison(
        lift=lift, ci_low=ci_low, ci_high=ci_high, p_value=p, significant=significant,
        absolute_diff=challenger.mean - champion.mean, se=se, alpha=alpha, sequential=bool(sequential),
        n_champion=champion.n, n_challenger=challenger.n, promotable_lift=promotable,
        min_lift=min_lift, strict=bool(strict), n_star=n_star_f,
    )


from afs_continuous.srm import SRMResult, srm_test  # noqa: E402  (re-exported: part of the stats API)
