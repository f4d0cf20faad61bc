"""Reference values (docs/STATISTICS.md), scipy cross-checks and edge cases of afs_continuous.stats."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from scipy import stats as st

from afs_continuous import stats
from afs_continuous.errors import AfsContinuousError, ConfigError
from afs_continuous.stats import (
    ArmSummary,
    compare,
    relative_lift,
    running_min_p,
    sequential_halfwidth,
    sequential_p_value,
    sequential_rho,
    srm_test,
    two_proportion_z_test,
    welch_test,
)

TOL = 1e-5


@pytest.fixture
def welch_arms() -> tuple[ArmSummary, ArmSummary]:
    return ArmSummary(9000, 0.700, 0.300**2), ArmSummary(1000, 0.720, 0.280**2)


@pytest.fixture
def prop_arms() -> tuple[ArmSummary, ArmSummary]:
    return ArmSummary.from_proportion(9000, 900), ArmSummary.from_proportion(1000, 120)


@pytest.fixture
def gbstats_arms() -> tuple[ArmSummary, ArmSummary]:
    return ArmSummary.from_sums(3407, 1396.87, 52377.9767), ArmSummary.from_sums(3461, 2422.7, 134698.29)


# ------------------------------------------------------------ reference values
def test_welch_reference(welch_arms):
    r = welch_test(*welch_arms)
    assert r["d"] == pytest.approx(0.02, abs=TOL)
    assert r["se"] == pytest.approx(0.00940213, abs=TOL)
    assert r["t"] == pytest.approx(2.12718, abs=TOL)
    assert r["df"] == pytest.approx(1267.81, abs=0.005)
    assert r["p_value"] == pytest.approx(0.0335979, abs=TOL)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.0015546, 0.0384454), abs=TOL)


def test_welch_relative_reference(welch_arms):
    lift, se = relative_lift(*welch_arms)
    assert (lift, se) == pytest.approx((0.0285714, 0.0134756), abs=TOL)
    c = compare(*welch_arms, sequential=False)
    assert (c.lift, c.se) == pytest.approx((0.0285714, 0.0134756), abs=TOL)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.0021346, 0.0550083), abs=TOL)
    assert c.significant and not c.promotable_lift  # significant, but 2.9% < 5%
    assert c.absolute_diff == pytest.approx(0.02)


def test_two_proportions_reference(prop_arms):
    a, b = prop_arms
    assert a.variance == pytest.approx(0.09) and b.variance == pytest.approx(0.12 * 0.88)
    unpooled = two_proportion_z_test(a, b)
    assert unpooled["se"] == pytest.approx(0.0107517, abs=TOL)
    assert unpooled["z"] == pytest.approx(1.86016, abs=TOL)
    assert unpooled["p_value"] == pytest.approx(0.0628624, abs=TOL)
    pooled = two_proportion_z_test(a, b, pooled=True)
    assert pooled["se"] == pytest.approx(0.0100883, abs=TOL)
    assert pooled["z"] == pytest.approx(1.98250, abs=TOL)
    assert pooled["p_value"] == pytest.approx(0.0474234, abs=TOL)
    assert pooled["z"] ** 2 == pytest.approx(3.9303, abs=1e-4)
    chi2 = st.chi2_contingency([[900, 8100], [120, 880]], correction=False)
    assert pooled["z"] ** 2 == pytest.approx(chi2[0], rel=1e-9)
    assert pooled["p_value"] == pytest.approx(chi2[1], rel=1e-9)


def test_two_proportions_relative_reference(prop_arms):
    c = compare(*prop_arms, sequential=False)
    assert (c.lift, c.se) == pytest.approx((0.2, 0.109545), abs=TOL)
    assert (c.ci_low, c.ci_high) == pytest.approx((-0.01470, 0.41470), abs=TOL)
    assert not c.significant and not c.promotable_lift


@pytest.mark.parametrize(
    ("n_star", "rho", "half", "p_seq"),
    [
        (5_000, 0.0398401, 0.335368, 0.856374),
        (10_000, 0.0281712, 0.332490, 0.680379),
        (100_000, None, 0.422300, 0.640614),
    ],
)
def test_sequential_reference(prop_arms, n_star, rho, half, p_seq):
    if rho is not None:
        assert sequential_rho(0.05, n_star) == pytest.approx(rho, abs=TOL)
    c = compare(*prop_arms, n_star=n_star)
    assert c.sequential and c.n_champion + c.n_challenger == 10_000
    assert c.ci_high - c.lift == pytest.approx(half, abs=TOL)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.2 - half, 0.2 + half), abs=TOL)
    assert c.p_value == pytest.approx(p_seq, abs=TOL)
    # the stand-alone helpers agree with compare
    assert sequential_halfwidth(c.se, 10_000, 0.05, n_star) == pytest.approx(half, abs=TOL)
    assert sequential_p_value(c.lift, c.se, 10_000, 0.05, n_star) == pytest.approx(p_seq, abs=TOL)


def test_sequential_cs_5000_reference(prop_arms):
    c = compare(*prop_arms, n_star=5_000)
    assert (c.ci_low, c.ci_high) == pytest.approx((-0.135368, 0.535368), abs=TOL)


def test_gbstats_unit_test_values(gbstats_arms):
    c = compare(*gbstats_arms, sequential=False)
    assert (c.lift, c.se) == pytest.approx((0.70732, 0.37879), abs=TOL)
    assert (c.ci_low, c.ci_high) == pytest.approx((-0.03526, 1.44989), abs=TOL)
    assert c.p_value == pytest.approx(0.06191, abs=TOL)
    r = welch_test(*gbstats_arms)
    assert (r["d"], r["se"]) == pytest.approx((0.29, 0.12478), abs=TOL)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.04538, 0.53462), abs=TOL)
    assert r["p_value"] == pytest.approx(0.02016, abs=TOL)
    assert r["df"] == pytest.approx(5841.74, abs=0.005)


@pytest.mark.parametrize(
    ("counts", "chi2", "p", "mismatch"),
    [([9000, 1000], 0.0, 1.0, False), ([90300, 9700], 10.0, 0.0015654, False), ([90400, 9600], 17.7778, 2.48266e-5, True)],
)
def test_srm_reference(counts, chi2, p, mismatch):
    r = srm_test(counts, [0.9, 0.1])
    assert r.chi2 == pytest.approx(chi2, abs=1e-4)
    assert r.p_value == pytest.approx(p, rel=1e-5, abs=1e-9)
    assert r.mismatch is mismatch and r.decided
    assert r.observed == tuple(counts) and r.expected == pytest.approx((0.9 * sum(counts), 0.1 * sum(counts)))


# ---------------------------------------------------------------- cross-checks
@pytest.mark.parametrize("seed", range(5))
def test_welch_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n_a, n_b = rng.integers(2, 500, size=2)
    m_a, m_b = rng.normal(size=2)
    s_a, s_b = rng.uniform(0.1, 3, size=2)
    r = welch_test(ArmSummary(int(n_a), m_a, s_a**2), ArmSummary(int(n_b), m_b, s_b**2), alpha=0.1)
    ref = st.ttest_ind_from_stats(m_b, s_b, n_b, m_a, s_a, n_a, equal_var=False)
    assert r["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    half = st.t.ppf(0.95, r["df"]) * r["se"]
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((r["d"] - half, r["d"] + half))


def test_from_values_matches_numpy_and_sums():
    rng = np.random.default_rng(1)
    y = rng.uniform(0, 1, 1000)
    a = ArmSummary.from_values(y)
    b = ArmSummary.from_sums(y.size, y.sum(), (y**2).sum())
    assert a.n == b.n == 1000
    assert a.mean == pytest.approx(y.mean()) and a.variance == pytest.approx(y.var(ddof=1))
    assert b.mean == pytest.approx(a.mean) and b.variance == pytest.approx(a.variance, rel=1e-9)


def test_fixed_horizon_proportions_match_normal_z(prop_arms):
    a, b = prop_arms
    c = compare(a, b, sequential=False, alpha=0.1)
    z = c.lift / c.se
    assert c.p_value == pytest.approx(2 * st.norm.sf(abs(z)), rel=1e-12)
    q = st.norm.ppf(0.95)
    assert (c.ci_low, c.ci_high) == pytest.approx((c.lift - q * c.se, c.lift + q * c.se), rel=1e-12)


def test_sequential_p_below_alpha_iff_cs_excludes_zero():
    rng = np.random.default_rng(7)
    for _ in range(200):
        a = ArmSummary(int(rng.integers(100, 20_000)), 0.3, 0.21, binary=True)
        m_b = 0.3 * (1 + rng.uniform(-0.3, 0.3))
        b = ArmSummary(int(rng.integers(100, 5_000)), m_b, m_b * (1 - m_b), binary=True)
        c = compare(a, b, n_star=int(rng.integers(1_000, 100_000)))
        assert c.significant == (c.ci_low > 0 or c.ci_high < 0)


def test_mixture_form_equals_mspr_form():
    """Lambda in the CS form equals the mSPRT form with tau^2 = rho^2 N V."""
    est, se, n, alpha, n_star = 0.07, 0.03, 12_000, 0.05, 5_000
    v = se**2
    tau2 = sequential_rho(alpha, n_star) ** 2 * n * v
    lam = math.sqrt(v / (v + tau2)) * math.exp(tau2 * est**2 / (2 * v * (v + tau2)))
    assert sequential_p_value(est, se, n, alpha, n_star) == pytest.approx(min(1.0, 1 / lam), rel=1e-12)


def test_sequential_interval_wider_than_fixed_about_1_55_at_n_star():
    se = 0.01
    ratio = sequential_halfwidth(se, 5_000, 0.05, 5_000) / (st.norm.ppf(0.975) * se)
    assert 1.4 < ratio < 1.7


# ------------------------------------------------------------ decision helper
def test_promotable_default_and_strict():
    a = ArmSummary.from_proportion(40_000, 12_000)  # 0.30
    b = ArmSummary.from_proportion(40_000, 13_800)  # 0.345 -> +15%
    loose, strict = compare(a, b), compare(a, b, strict=True)
    assert loose.promotable_lift and loose.significant and loose.lift >= 0.05
    assert strict.ci_low >= 0.05 and strict.promotable_lift
    # significant but lower bound below min_lift: default promotes, strict does not
    b2 = ArmSummary.from_proportion(40_000, 12_900)  # +7.5%
    assert compare(a, b2).promotable_lift and not compare(a, b2, strict=True).promotable_lift
    # significant negative lift never promotes; min_lift is respected
    assert not compare(b, a).promotable_lift
    assert not compare(a, b, min_lift=0.5).promotable_lift


def test_to_dict_is_plain():
    c = compare(ArmSummary(100, 1.0, 0.5), ArmSummary(100, 1.1, 0.5))
    d = c.to_dict()
    assert d["lift"] == pytest.approx(0.1) and d["promotable_lift"] is c.promotable_lift
    assert set(d) >= {"lift", "ci_low", "ci_high", "p_value", "significant", "absolute_diff", "se", "alpha",
                      "sequential", "n_champion", "n_challenger", "promotable_lift"}


def test_running_min_p():
    p = None
    for cur, want in [(0.5, 0.5), (0.2, 0.2), (0.9, 0.2), (0.01, 0.01)]:
        p = running_min_p(p, cur)
        assert p == want
    with pytest.raises(ConfigError, match="p-values"):
        running_min_p(0.5, 1.5)
    with pytest.raises(ConfigError, match="finite"):
        running_min_p(None, float("nan"))


# ------------------------------------------------------------------ edge cases
@pytest.mark.parametrize("sequential", [True, False])
def test_zero_variance_equal_means(sequential):
    a, b = ArmSummary(10, 0.5, 0.0), ArmSummary(10, 0.5, 0.0)
    c = compare(a, b, sequential=sequential)
    assert (c.lift, c.se, c.p_value, c.ci_low, c.ci_high) == (0.0, 0.0, 1.0, 0.0, 0.0)
    assert not c.significant and not c.promotable_lift
    r = welch_test(a, b)
    assert (r["t"], r["p_value"], r["df"]) == (0.0, 1.0, math.inf)


@pytest.mark.parametrize("sequential", [True, False])
def test_zero_variance_different_means(sequential):
    c = compare(ArmSummary(10, 0.5, 0.0), ArmSummary(10, 0.6, 0.0), sequential=sequential)
    assert c.lift == pytest.approx(0.2) and c.se == 0.0 and c.p_value == 0.0
    assert c.ci_low == c.ci_high == c.lift and c.significant and c.promotable_lift
    assert not any(isinstance(v, float) and math.isnan(v) for v in c.to_dict().values())
    r = welch_test(ArmSummary(10, 0.6, 0.0), ArmSummary(10, 0.5, 0.0))
    assert r["t"] == -math.inf and r["p_value"] == 0.0


def test_zero_variance_one_arm():
    c = compare(ArmSummary(50, 0.5, 0.0), ArmSummary(50, 0.6, 0.04), sequential=False)
    assert math.isfinite(c.p_value) and math.isfinite(c.ci_low)


def test_champion_mean_zero_raises():
    with pytest.raises(ValueError, match="champion mean is 0; relative lift undefined"):
        compare(ArmSummary.from_proportion(100, 0), ArmSummary.from_proportion(100, 3))
    with pytest.raises(ConfigError, match="champion mean is 0"):
        relative_lift(ArmSummary(5, 0.0, 1.0), ArmSummary(5, 1.0, 1.0))


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_observations(n):
    small, ok = ArmSummary(n, 0.5, 0.0), ArmSummary(100, 0.5, 0.1)
    for args in [(small, ok), (ok, small)]:
        with pytest.raises(ConfigError, match="at least 2 per arm"):
            compare(*args)
        with pytest.raises(ConfigError, match="at least 2 per arm"):
            welch_test(*args)


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan")])
def test_alpha_out_of_range(alpha):
    a, b = ArmSummary(100, 0.5, 0.1), ArmSummary(100, 0.6, 0.1)
    with pytest.raises(ConfigError, match="alpha"):
        compare(a, b, alpha=alpha)
    with pytest.raises(ConfigError, match="alpha"):
        sequential_rho(alpha, 5000)


@pytest.mark.parametrize("n_star", [0, -5, float("nan")])
def test_bad_n_star(n_star):
    with pytest.raises(ConfigError, match="n_star"):
        compare(ArmSummary(100, 0.5, 0.1), ArmSummary(100, 0.6, 0.1), n_star=n_star)


def test_nan_inputs_raise():
    with pytest.raises(ValueError, match="mean must be finite"):
        ArmSummary(10, float("nan"), 1.0)
    with pytest.raises(ValueError, match="variance must be finite"):
        ArmSummary(10, 1.0, float("inf"))
    with pytest.raises(ValueError, match="NaN"):
        ArmSummary.from_values([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="total must be finite"):
        ArmSummary.from_sums(3, float("nan"), 1.0)
    with pytest.raises(ValueError, match="min_lift"):
        compare(ArmSummary(10, 1, 1), ArmSummary(10, 1, 1), min_lift=float("nan"))
    with pytest.raises(ValueError, match="estimate"):
        sequential_p_value(float("nan"), 0.1, 100, 0.05, 5000)
    with pytest.raises(ValueError, match="se"):
        sequential_halfwidth(float("nan"), 100, 0.05, 5000)


def test_bad_summaries():
    with pytest.raises(ConfigError, match="variance must be >= 0"):
        ArmSummary(10, 1.0, -0.1)
    with pytest.raises(ConfigError, match="n must be >= 0"):
        ArmSummary(-1, 1.0, 0.1)
    with pytest.raises(ConfigError, match="integer"):
        ArmSummary(2.5, 1.0, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot exceed"):
        ArmSummary.from_proportion(10, 11)
    with pytest.raises(ConfigError, match="must be an ArmSummary"):
        compare((100, 0.5, 0.1), ArmSummary(100, 0.5, 0.1))  # type: ignore[arg-type]
    assert issubclass(ConfigError, AfsContinuousError)


def test_small_summaries_are_defined():
    assert ArmSummary.from_values([]) == ArmSummary(0, 0.0, 0.0)
    assert ArmSummary.from_values([3.0]) == ArmSummary(1, 3.0, 0.0)
    assert ArmSummary.from_sums(0, 0.0, 0.0) == ArmSummary(0, 0.0, 0.0)
    assert ArmSummary.from_proportion(0, 0) == ArmSummary(0, 0.0, 0.0, binary=True)
    # cancellation in from_sums never yields a negative variance
    assert ArmSummary.from_sums(3, 3e8 + 3, 3 * (1e8 + 1) ** 2).variance >= 0.0


def test_srm_validation_and_zero_arms():
    with pytest.raises(ConfigError, match="sum to 1"):
        srm_test([10, 10], [0.5, 0.6])
    with pytest.raises(ConfigError, match="at least 2 arms"):
        srm_test([10, 10], [1.0])
    with pytest.raises(ConfigError, match="> 0"):
        srm_test([10, 10, 0], [0.5, 0.5, 0.0])
    with pytest.raises(ConfigError, match=">= 0"):
        srm_test([10, -1], [0.5, 0.5])
    with pytest.raises(ConfigError, match="threshold"):
        srm_test([10, 10], [0.5, 0.5], threshold=0)
    # an arm that received nothing is included (growthbook #4427) and flagged
    r = srm_test([1000, 0], [0.9, 0.1])
    assert r.decided and r.mismatch and r.observed == (1000, 0)
    # three arms, weights summing to 1 within float rounding
    assert not srm_test([700, 200, 100], [0.7, 0.2, 0.1]).mismatch


def test_srm_undecided_below_five_expected():
    r = srm_test([40, 0], [0.9, 0.1])  # small arm expects 4 units
    assert not r.decided and not r.mismatch
    assert srm_test([0, 0], [0.5, 0.5]) == stats.SRMResult(0.0, 1.0, False, (0, 0), (0.0, 0.0), False)


def test_srm_not_against_5050():
    """A 95/5 split checked against its own weights is fine (mozilla/experimenter #16010)."""
    assert not srm_test([9500, 500], [0.95, 0.05]).mismatch
    assert srm_test([9500, 500], [0.5, 0.5]).mismatch


def test_doctests():
    result = doctest.testmod(stats, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5 and result.failed == 0


def test_decision_rule_checks_in_order_and_broadcasts():
    """decide_vec: the rule ExperimentManager.evaluate applies to each look, and the simulations to arrays."""
    from afs_continuous import _stats_sequential as k

    base = dict(srm_mismatch=False, n_min=500, compared=True, significant=True, lift=0.08, promotable=True,
                guardrail_violated=False, elapsed_h=60.0, min_samples=200, min_duration_h=48.0,
                max_duration_h=336.0, stop_on_regression=True)
    cases = [
        ({}, k.PROMOTE, k.B_PROMOTE),
        ({"elapsed_h": 47.9}, k.CONTINUE, k.B_TOO_YOUNG),  # the 48 h gate, on this look's p
        ({"srm_mismatch": True}, k.INVALID, k.B_SRM),
        ({"n_min": 199}, k.CONTINUE, k.B_TOO_FEW),
        ({"compared": False}, k.CONTINUE, k.B_NO_COMPARISON),
        ({"lift": -0.08, "promotable": False, "elapsed_h": 3.0}, k.STOP, k.B_REGRESSION),  # no gate for a regression
        ({"lift": -0.08, "promotable": False, "stop_on_regression": False}, k.CONTINUE, k.B_UNDECIDED),
        ({"guardrail_violated": True}, k.STOP, k.B_GUARDRAIL),
        ({"significant": False, "promotable": False}, k.CONTINUE, k.B_UNDECIDED),
        ({"significant": False, "promotable": False, "elapsed_h": 336.0}, k.STOP, k.B_UNDECIDED),
        ({"srm_mismatch": True, "elapsed_h": 400.0}, k.STOP, k.B_SRM),
        ({"significant": False, "promotable": False, "elapsed_h": 5000.0, "max_duration_h": None}, k.CONTINUE, k.B_UNDECIDED),
    ]
    for change, decision, branch in cases:
        d, b, expired = k.decide_vec(**{**base, **change})
        assert (int(d), int(b)) == (decision, branch), change
        assert bool(expired) is (decision == k.STOP and branch in (k.B_UNDECIDED, k.B_SRM))
    d, b, _ = k.decide_vec(**{**base, "elapsed_h": np.array([[1.0, 47.0, 48.0, 400.0]])})
    assert d.tolist() == [[k.CONTINUE, k.CONTINUE, k.PROMOTE, k.PROMOTE]]
    assert [k.DECISIONS[i] for i in d[0]] == ["continue", "continue", "promote", "promote"]
