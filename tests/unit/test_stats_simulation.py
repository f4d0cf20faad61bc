"""Monte Carlo checks of the promotion rule: A/A peeking, boundary, skewed metric, power.

All simulations are vectorised over runs and use fixed seeds. They run the
same kernels as :func:`afs_continuous.stats.compare` (``_stats_sequential``),
and ``test_harness_matches_compare`` pins that equivalence look by look.

Setting (docs/STATISTICS.md, "Decision rules and what they cost"): 500
requests per hour, 10% to the challenger, a look every hour for 168 hours,
a burn-in of 100 samples per arm before any decision (the caller's
``min_samples``; ``compare`` itself does not enforce it), the running minimum
of the sequential p over looks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import integrate, optimize
from scipy import stats as st

from afs_continuous import _stats_sequential as k
from afs_continuous.stats import ArmSummary, compare, running_min_p, sequential_halfwidth

ALPHA = 0.05
MIN_LIFT = 0.05
N_RUNS = 2000
N_HOURS = 168
REQ_PER_H = 500
FRACTION_B = 0.10
MIN_SAMPLES = 100


def mc_bound(p: float, n_runs: int) -> float:
    """p + 3 Monte Carlo standard errors."""
    return p + 3.0 * math.sqrt(p * (1.0 - p) / n_runs)


def share(first_hour: np.ndarray) -> float:
    return k.summarize_hours(first_hour)[0]


# ------------------------------------------------------------------ A/A, binary
@pytest.fixture(scope="module")
def aa_binary() -> dict[str, np.ndarray]:
    return k.simulate_binary_promotion(
        n_runs=N_RUNS, true_lift=0.0, p_champion=0.30, requests_per_hour=REQ_PER_H,
        challenger_fraction=FRACTION_B, n_hours=N_HOURS, alpha=ALPHA, min_lift=MIN_LIFT,
        min_samples=MIN_SAMPLES, seed=20240501,
    )


def test_aa_default_rule_controls_false_promotions(aa_binary):
    seq = share(aa_binary["sequential"])
    print(f"\nA/A binary, {N_RUNS} runs x {N_HOURS} looks: sequential default rule promotes {seq:.4f}")
    assert seq <= mc_bound(ALPHA, N_RUNS), f"false promotion share {seq} > alpha + 3 MC SE"


def test_aa_naive_fixed_horizon_is_detected_by_harness(aa_binary):
    fixed = share(aa_binary["fixed"])
    print(f"\nA/A binary: naive fixed-horizon rule peeked hourly promotes {fixed:.4f} (alpha {ALPHA})")
    assert fixed > 2 * ALPHA, f"harness failed to show the peeking problem: fixed-horizon share {fixed}"


def test_aa_strict_rule(aa_binary):
    assert share(aa_binary["strict"]) <= mc_bound(ALPHA / 2, N_RUNS)


def test_strict_rule_at_boundary_lift():
    """True lift exactly min_lift: 'significantly more than 5%' must be wrong at most alpha/2 of the time."""
    res = k.simulate_binary_promotion(
        n_runs=N_RUNS, true_lift=MIN_LIFT, rules=("strict",), n_hours=N_HOURS, min_samples=MIN_SAMPLES, seed=7
    )
    strict = share(res["strict"])
    print(f"\nboundary (true lift = min_lift): strict rule promotes {strict:.4f}")
    assert strict <= mc_bound(ALPHA / 2, N_RUNS)


def test_harness_matches_compare():
    """The vectorised harness takes exactly the decisions compare() + running_min_p() take, look by look."""
    rng = np.random.default_rng(11)
    m_a, v_a, n_a, m_b, v_b, n_b = k.binary_cumulative_arms(
        rng, 16, 100, p_champion=0.30, true_lift=0.10, requests_per_hour=REQ_PER_H, challenger_fraction=FRACTION_B
    )
    for rule in k.RULES:
        vec = k.first_promotion_look(m_a, v_a, n_a, m_b, v_b, n_b, rule=rule, binary=True, min_samples=MIN_SAMPLES)
        for run in range(m_a.shape[0]):
            p_min, first = None, -1
            for look in range(m_a.shape[1]):
                if min(n_a[run, look], n_b[run, look]) < MIN_SAMPLES:
                    continue
                champ = ArmSummary(int(n_a[run, look]), m_a[run, look], v_a[run, look], binary=True)
                chall = ArmSummary(int(n_b[run, look]), m_b[run, look], v_b[run, look], binary=True)
                c = compare(champ, chall, sequential=rule != "fixed", strict=rule == "strict")
                if rule == "fixed":
                    decide = c.promotable_lift
                else:
                    p_min = running_min_p(p_min, c.p_value)
                    bar = c.ci_low if rule == "strict" else c.lift
                    decide = p_min < ALPHA and c.lift > 0 and bar >= MIN_LIFT
                if decide:
                    first = look
                    break
            assert first == vec[run], (rule, run)


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
    """A/A on a heavily skewed metric (lognormal, sigma 1, skewness 6.2), same harness and looks."""
    n_runs = N_RUNS

    def draw(rng, size):
        return np.exp(rng.standard_normal(size, dtype=np.float32)).astype(np.float64)

    arms = continuous_cumulative_arms(np.random.default_rng(3), n_runs, N_HOURS, draw, draw)
    res = {r: k.first_promotion_look(*arms, rule=r, binary=False, min_samples=MIN_SAMPLES) for r in k.RULES}
    seq, fixed = (res["sequential"] >= 0).mean(), (res["fixed"] >= 0).mean()
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
    """+10% true relative lift on a quality score N(0.5, 0.35) clipped to [0, 1] is promoted in > 80% of runs."""
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
    look = k.first_promotion_look(*arms, rule="sequential", binary=False, min_samples=MIN_SAMPLES)
    promoted = look >= 0
    power = promoted.mean()
    n_at_promotion = (arms[2] + arms[5])[np.flatnonzero(promoted), look[promoted]]
    print(
        f"\npower, +10% on clipped N(0.5, 0.35): computed horizon N = {n_total} samples ({n_hours} h); "
        f"promoted {power:.3f} of {n_runs} runs; median samples to promotion {np.median(n_at_promotion):.0f} "
        f"(hour {np.median(look[promoted]) + 1:.0f})"
    )
    assert power > 0.80
