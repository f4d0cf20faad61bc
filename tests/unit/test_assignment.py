"""Assignment is a pure function of (experiment seed, unit id), pinned by tests/data/assignment_cases.json.

The JSON file is language-neutral (like GrowthBook's ``cases.json``): another
SDK (a JavaScript router, say) can replay the same cases and route a unit to
the same arm as the Python daemon expects.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from afs_continuous import Arm, assign_arm
from afs_continuous.experiment import bucket

CASES = json.loads((Path(__file__).parents[1] / "data" / "assignment_cases.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("seed", "unit_id", "expected"), CASES["bucket"]["cases"])
def test_bucket_pinned(seed: str, unit_id: str, expected: float) -> None:
    assert bucket(seed, unit_id) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(("seed", "unit_id", "fraction", "expected"), CASES["assign_arm"]["cases"])
def test_assign_arm_pinned(seed: str, unit_id: str, fraction: float, expected: str) -> None:
    assert assign_arm(seed, unit_id, fraction) == Arm(expected)


def test_pinned_cases_cover_both_arms_and_the_boundary() -> None:
    arms = Counter(c[3] for c in CASES["assign_arm"]["cases"])
    assert arms["challenger"] > 10 and arms["champion"] > 10
    # half-open range: a fraction equal to the bucket is champion, the next float up is challenger
    b = bucket("exp-1", "user-42")
    assert assign_arm("exp-1", "user-42", b) is Arm.CHAMPION
    assert assign_arm("exp-1", "user-42", math.nextafter(b, 1.0)) is Arm.CHALLENGER


@pytest.mark.parametrize("fraction", CASES["invalid_traffic_fraction"])
def test_traffic_fraction_outside_unit_interval_is_rejected(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"traffic_fraction must be in \[0, 1\] \(a fraction, not percent\)"):
        assign_arm("exp-1", "user-1", fraction)


def test_extremes_send_everyone_to_one_arm() -> None:
    units = [f"u{i}" for i in range(500)]
    assert {assign_arm("s", u, 0.0) for u in units} == {Arm.CHAMPION}
    assert {assign_arm("s", u, 1.0) for u in units} == {Arm.CHALLENGER}


def test_buckets_are_uniform_over_unit_ids() -> None:
    n, bins = 20_000, 10
    values = [bucket("3f9a1c0d5e7b2a46", f"user-{i}") for i in range(n)]
    assert all(0.0 <= v < 1.0 for v in values)
    counts = Counter(min(int(v * bins), bins - 1) for v in values)
    expected = n / bins
    chi2 = sum((counts[k] - expected) ** 2 / expected for k in range(bins))
    assert chi2 < 27.88  # chi-square, 9 df, p = 0.001


def test_a_new_seed_reshuffles_units() -> None:
    units = [f"user-{i}" for i in range(20_000)]
    a = {u for u in units if assign_arm("seed-a", u, 0.1) is Arm.CHALLENGER}
    b = {u for u in units if assign_arm("seed-b", u, 0.1) is Arm.CHALLENGER}
    # independent seeds: overlap ~ 1% of units (200), not ~10% (the same users again)
    assert 100 < len(a & b) < 320


def test_larger_fraction_keeps_earlier_challengers() -> None:
    """Ramping traffic up (10% -> 30%) only adds units to the challenger, never moves one back."""
    units = [f"user-{i}" for i in range(5_000)]
    at_10 = {u for u in units if assign_arm("ramp", u, 0.1) is Arm.CHALLENGER}
    at_30 = {u for u in units if assign_arm("ramp", u, 0.3) is Arm.CHALLENGER}
    assert at_10 < at_30
