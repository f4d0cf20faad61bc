"""Monte Carlo checks of the promotion rule: A/A peeking, boundary, skewed metric, power.

All simulations are vectorised over runs and use fixed seeds. They run the
same kernels as :func:`afs_continuous.stats.compare` (``_stats_sequential``)
and the same decision rule as ``ExperimentManager.evaluate``
(``_stats_sequential.decide_vec``, fed with an :class:`ABTestConfig`);
``test_harness_matches_compare_and_the_rule`` pins that equivalence look by
look, and ``tests/integration/test_experiment.py`` pins it against a real store.

Setting (docs/statistics.md, "Simulation: what the defaults do"): 500
requests per hour (one unit each), 10% to the challenger, a look every hour
until ``max_duration_hours`` (336), the defaults of :class:`ABTestConfig`:
this look's sequential p-value, 200 units per arm, 48 h minimum duration,
stop on a significant regression, sample-ratio check.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import integrate, optimize
from scipy import stats as st

from afs_continuous import _stats_sequential as k
from afs_continuous.config import ABTestConfig
from afs_continuous.stats import ArmSummary, compare, sequential_halfwidth, srm_test

ALPHA = 0.05
MIN_LIFT = 0.05
N_RUNS = 2000
REQ_PER_H = 500
FRACTION_B = 0.10
DEFAULTS = ABTestConfig()
N_HOURS = int(DEFAULTS.max_duration_hours)


def mc_bound(p: float, n_runs: int) -> float:
    """p + 3 Monte Carlo standard errors."""
    return p + 3.0 * math.sqrt(p * (1.0 - p) / n_runs)


def promoted(result: tuple[np.ndarray, np.ndarray]) -> float:
    return float((result[1] == k.PROMOTE).mean())


# ------------------------------------------------------------------ A/A, binary
@pytest.fixture(scope="module")
def aa_binary() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    configs = {"defaults": DEFAULTS, "fixed": ABTestConfig(sequential=False), "strict": ABTestConfig(strict=True)}
    return {name: k.simulate_binary_experiments(n_runs=N_RUNS, true_lift=0.0, config=cfg, seed=20240501)
            for name, cfg in configs.items()}


def test_aa_default_rule_controls_false_promotions(aa_binary):
    seq = promoted(aa_binary["defaults"])
    print(f"\nA/A binary, {N_RUNS} runs x {N_HOURS} looks: the defaults promote {seq:.4f}")
    assert seq <= mc_bound(ALPHA, N_RUNS), f"false promotion share {seq} > alpha + 3 MC SE"


def early_decisions(result: tuple[np.ndarray, np.ndarray]) -> float:
    """Share of runs promoted, or stopped as worse, before max_duration_hours: in an A/A test all are errors."""
    hour, decision = result
    return float(((decision == k.PROMOTE) | ((decision == k.STOP) & (hour < N_HOURS))).mean())


def test_aa_naive_fixed_horizon_is_detected_by_harness(aa_binary):
    fixed, wrong = promoted(aa_binary["fixed"]), early_decisions(aa_binary["fixed"])
    print(f"\nA/A binary: fixed-horizon test (sequential=False) looked at hourly promotes {fixed:.4f}, "
          f"promotes or stops {wrong:.4f} (alpha {ALPHA}); the defaults {early_decisions(aa_binary['defaults']):.4f}")
    assert fixed > mc_bound(ALPHA, N_RUNS), f"harness failed to show the peeking problem: fixed-horizon share {fixed}"
    assert wrong > 4 * ALPHA  # stop_on_regression turns most of the peeking errors into false stops
    assert early_decisions(aa_binary["defaults"]) <= mc_bound(ALPHA, N_RUNS)


def test_aa_strict_rule(aa_binary):
    assert promoted(aa_binary["strict"]) <= mc_bound(ALPHA / 2, N_RUNS)


def test_aa_defaults_never_promote_before_the_minimum_duration(aa_binary):
    hour, decision = aa_binary["defaults"]
    assert (hour[decision == k.PROMOTE] >= DEFAULTS.min_duration_hours).all()
    assert (decision == k.CONTINUE).sum() == 0  # every run ends by max_duration_hours


def test_strict_rule_at_boundary_lift():
    """True lift exactly min_lift: 'significantly more than 5%' must be wrong at most alpha/2 of the time."""
    res = k.simulate_binary_experiments(n_runs=N_RUNS, true_lift=MIN_LIFT, config=ABTestConfig(strict=True), seed=7)
    strict = promoted(res)
    print(f"\nboundary (true lift = min_lift): strict rule promotes {strict:.4f}")
    assert strict <= mc_bound(ALPHA / 2, N_RUNS)


def test_harness_matches_compare_and_the_rule():
    """The vectorised harness takes exactly the decisions compare() + srm_test() + decide_vec() take on
    each look's scalars (what ExperimentManager.evaluate does), look by look, for every configuration."""
    rng = np.random.default_rng(11)
    m_a, v_a, n_a, m_b, v_b, n_b = k.binary_cumulative_arms(
        rng, 12, 80, p_champion=0.30, true_lift=0.10, requests_per_hour=REQ_PER_H, challenger_fraction=FRACTION_B
    )
    configs = [DEFAULTS, ABTestConfig(sequential=False), ABTestConfig(strict=True),
               ABTestConfig(min_duration_hours=0, max_duration_hours=60), ABTestConfig(stop_on_regression=False)]
    for cfg in configs:
        vec_look, vec_decision = k.first_decision_look(m_a, v_a, n_a, m_b, v_b, n_b, config=cfg)
        for run in range(m_a.shape[0]):
            first, how = -1, k.CONTINUE
            for look in range(m_a.shape[1]):
                champ = ArmSummary(int(n_a[run, look]), m_a[run, look], v_a[run, look])
                chall = ArmSummary(int(n_b[run, look]), m_b[run, look], v_b[run, look])
                c = compare(champ, chall, alpha=cfg.alpha, min_lift=cfg.promotion_threshold, sequential=cfg.sequential,
                            n_star=cfg.sequential_n_star, strict=cfg.strict)
                srm = srm_test([champ.n, chall.n], [1 - FRACTION_B, FRACTION_B], threshold=cfg.srm_threshold)
                decision, _, _ = k.decide_vec(
                    srm_mismatch=srm.mismatch, n_min=min(champ.n, chall.n), compared=True, significant=c.significant,
                    lift=c.lift, promotable=c.promotable_lift, guardrail_violated=False, elapsed_h=look + 1,
                    min_samples=cfg.min_samples_per_arm, min_duration_h=cfg.min_duration_hours,
                    max_duration_h=cfg.max_duration_hours, stop_on_regression=cfg.stop_on_regression)
                if int(decision) in (k.PROMOTE, k.STOP):
                    first, how = look, int(decision)
                    break
            assert (first, how) == (vec_look[run], vec_decision[run]), (cfg, run)


def test_srm_kernel_matches_srm_test():
    for n_a, n_b in [(900, 100), (920, 80), (9040, 960), (90400, 9600), (30, 2), (0, 0), (45, 0)]:
        assert bool(k.srm_mismatch_vec(n_a, n_b, 0.1, 0.001)) is srm_test([n_a, n_b], [0.9, 0.1]).mismatch, (n_a, n_b)


# ---------------------------------------------------------- continuous metrics
def continuous_cumulative_arms(
    rng: np.random.Generator,
    n_runs: int,
    n_hours: int,
    draw_a: Callable[[np.random.Generator, tuple[int, int]], np.ndarray],
    draw_b: Callable[[np.random.Generator, tuple[int, int]], np.ndarray],
) -> tuple[np.ndarray, ...]:
    """Per-request simulation, hour by hour; returns cumulative (m_a, v_a, n_a, m_b, v_b, n_b).

    Requests within an hour are iid, so the first ``k ~ Binomial(500, 0.1)`` of
    each run's 500 draws from ``draw_b`` are the challenger's, the rest of
    ``draw_a``'s are the champion's. Summaries use the streamable sums of
    :meth:`ArmSummary.from_sums`.
    """
    cols = np.arange(REQ_PER_H)
    sums = np.zeros((6, n_runs))  # n, sum, sumsq for a then b
    out = np.empty((6, n_runs, n_hours))
    for h in range(n_hours):
        k_b = rng.binomial(REQ_PER_H, FRACTION_B, size=n_runs)
        to_b = cols[None, :] < k_b[:, None]
        y_a, y_b = draw_a(rng, (n_runs, REQ_PER_H)), draw_b(rng, (n_runs, REQ_PER_H))
        y_a = np.where(to_b, 0.0, y_a)
        y_b = np.where(to_b, y_b, 0.0)
        sums += np.stack([REQ_PER_H - k_b, y_a.sum(1), (y_a**2).sum(1), k_b, y_b.sum(1), (y_b**2).sum(1)])
        out[:, :, h] = sums
    n_a, s_a, q_a, n_b, s_b, q_b = out
    with np.errstate(divide="ignore", invalid="ignore"):
        m_a, m_b = s_a / n_a, s_b / n_b
        v_a = np.maximum(0.0, (q_a - s_a * m_a) / (n_a - 1))
        v_b = np.maximum(0.0, (q_b - s_b * m_b) / (n_b - 1))
    return m_a, v_a, n_a, m_b, v_b, n_b


def clipped_normal_moments(mu: float, sd: float) -> tuple[float, float]:
    """Mean and variance of clip(N(mu, sd^2), 0, 1): E[Y] = int_0^1 P(X>t) dt, E[Y^2] = int_0^1 2t P(X>t) dt."""
    m1 = integrate.quad(lambda t: st.norm.sf(t, mu, sd), 0, 1)[0]
    m2 = integrate.quad(lambda t: 2 * t * st.norm.sf(t, mu, sd), 0, 1)[0]
    return m1, m2 - m1**2


def test_aa_skewed_metric():
    """A/A on a heavily skewed metric (lognormal, sigma 1, skewness 6.2), the defaults, 168 hourly looks."""
    n_runs = N_RUNS

    def draw(rng, size):
        return np.exp(rng.standard_normal(size, dtype=np.float32)).astype(np.float64)

    arms = continuous_cumulative_arms(np.random.default_rng(3), n_runs, 168, draw, draw)
    res = {name: k.first_decision_look(*arms, config=cfg)[1]
           for name, cfg in (("sequential", DEFAULTS), ("fixed", ABTestConfig(sequential=False)))}
    seq, fixed = (res["sequential"] == k.PROMOTE).mean(), (res["fixed"] == k.PROMOTE).mean()
    print(f"\nA/A lognormal: sequential {seq:.4f}, fixed-horizon peeked {fixed:.4f}")
    assert seq <= mc_bound(ALPHA, n_runs)
    assert fixed > seq  # peeking still inflates the naive rule (less than on the binary metric: 5% lift bar)


def required_total_samples(lift: float, se_unit: float, power: float = 0.80) -> int:
    """Smallest total N at which one look of the always-valid test has ``power`` at ``lift``.

    ``SE_L(N) = se_unit / sqrt(N)``; need ``lift - z_power SE_L >= halfwidth(N)``.
    Later looks only add power, so this is a conservative horizon.
    """
    z = st.norm.ppf(power)

    def gap(n: float) -> float:
        se = se_unit / math.sqrt(n)
        return lift - z * se - sequential_halfwidth(se, max(1, int(n)), ALPHA, 5000)

    return math.ceil(optimize.brentq(gap, 100, 1e8))


def test_power_continuous_quality_metric():
    """+10% true relative lift on a quality score N(0.5, 0.35) clipped to [0, 1] is promoted in > 80% of runs
    by the horizon at which one look has 80% power (the test alone, min_duration_hours 0)."""
    sd, lift = 0.35, 0.10
    mean_a, var_a = clipped_normal_moments(0.5, sd)
    mu_b = optimize.brentq(lambda mu: clipped_normal_moments(mu, sd)[0] - (1 + lift) * mean_a, 0.5, 1.0)
    mean_b, var_b = clipped_normal_moments(mu_b, sd)
    assert mean_b / mean_a - 1 == pytest.approx(lift, abs=1e-9)
    # delta-method SE of L per unit of 1/sqrt(N) with n_a = 0.9 N, n_b = 0.1 N
    se_unit = math.sqrt(var_b / (mean_a**2 * FRACTION_B) + var_a * mean_b**2 / (mean_a**4 * (1 - FRACTION_B)))
    n_total = required_total_samples(lift, se_unit)
    n_hours = math.ceil(n_total / REQ_PER_H)

    n_runs = N_RUNS
    arms = continuous_cumulative_arms(
        np.random.default_rng(5), n_runs, n_hours,
        lambda rng, size: np.clip(rng.normal(0.5, sd, size), 0.0, 1.0),
        lambda rng, size: np.clip(rng.normal(mu_b, sd, size), 0.0, 1.0),
    )
    # the test alone: no minimum duration, so the single-look horizon is comparable
    look, decision = k.first_decision_look(*arms, config=ABTestConfig(min_duration_hours=0))
    promoted = decision == k.PROMOTE
    power = promoted.mean()
    n_at_promotion = (arms[2] + arms[5])[np.flatnonzero(promoted), look[promoted]]
    print(
        f"\npower, +10% on clipped N(0.5, 0.35): computed horizon N = {n_total} samples ({n_hours} h); "
        f"promoted {power:.3f} of {n_runs} runs; median samples to promotion {np.median(n_at_promotion):.0f} "
        f"(hour {np.median(look[promoted]) + 1:.0f})"
    )
    assert power > 0.80
