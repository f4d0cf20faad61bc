"""Sample-ratio mismatch: are the arm counts consistent with the configured split?

Pearson chi-square of the observed arm counts against the *configured*
weights (df = arms - 1), flagged below p = 0.001 (GrowthBook
``DEFAULT_SRM_THRESHOLD``, Eppo). Re-exported by :mod:`afs_continuous.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from afs_continuous import _stats_sequential as _k
from afs_continuous.errors import ConfigError

__all__ = ["SRMResult", "srm_test"]

_finite, _count = _k.check_finite, _k.check_count


# ---------------------------------------------------------------------- SRM
@dataclass(frozen=True)
class SRMResult:
    """Sample-ratio-mismatch check (see :func:`srm_test`).

    Attributes:
        chi2: Pearson chi-square statistic, df = arms - 1.
        p_value: Its upper-tail p-value.
        mismatch: ``decided and p_value < threshold``: block promotion and alert.
        observed: Observed units per arm.
        expected: Expected units per arm under the configured weights.
        decided: False while the smallest arm expects fewer than 5 units.
    """

    chi2: float
    p_value: float
    mismatch: bool
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    decided: bool


def srm_test(counts: Sequence[int], weights: Sequence[float], threshold: float = 0.001) -> SRMResult:
    """Pearson chi-square of observed arm counts against the *configured* weights.

    Arms with zero units are included (an arm that receives nothing is the
    worst mismatch). Checked hourly for a week, ``threshold=0.001`` gives about
    1.7% false alarms per experiment: block promotion and alert, do not reject.

    Args:
        counts: Units (users/conversations) per arm, integers >= 0.
        weights: Configured traffic fractions per arm (0..1, each > 0), same
            order and length as ``counts``, summing to 1 (tolerance 1e-6).
        threshold: Flag when p < threshold, in (0, 1). Default 0.001.

    Returns:
        SRMResult; ``decided`` is False (and ``mismatch`` False) while the
        smallest arm expects fewer than 5 units.

    Raises:
        ConfigError: Fewer than 2 arms, length mismatch, negative or
            non-integer counts, weights not > 0 or not summing to 1, bad threshold.

    References:
        GrowthBook ``DEFAULT_SRM_THRESHOLD``; Eppo SRM docs; ``scipy.stats.chisquare``.

    Example:
        >>> r = srm_test([90400, 9600], [0.9, 0.1])
        >>> round(r.chi2, 4), r.mismatch
        (17.7778, True)
    """
    obs = tuple(_count(f"counts[{i}]", c) for i, c in enumerate(counts))
    w = tuple(_finite(f"weights[{i}]", x) for i, x in enumerate(weights))
    if len(obs) < 2 or len(obs) != len(w):
        raise ConfigError(f"need one count per arm and at least 2 arms, got {len(obs)} counts and {len(w)} weights")
    if any(x <= 0.0 for x in w):
        raise ConfigError(f"weights must all be > 0, got {list(w)}; leave arms with weight 0 out of the test")
    if not math.isclose(sum(w), 1.0, rel_tol=0.0, abs_tol=1e-6):
        raise ConfigError(f"weights must sum to 1, got {list(w)} (sum {sum(w)!r}); pass the configured split, e.g. [0.9, 0.1]")
    thr = _finite("threshold", threshold)
    if not 0.0 < thr < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold!r}; e.g. 0.001")
    total = sum(obs)
    expected = tuple(total * x / sum(w) for x in w)
    if total == 0:
        return SRMResult(0.0, 1.0, False, obs, expected, False)
    res = _st.chisquare(np.asarray(obs, dtype=np.float64), np.asarray(expected, dtype=np.float64))
    chi2, p = float(res.statistic), float(res.pvalue)
    decided = min(expected) >= 5.0
    return SRMResult(chi2, p, decided and p < thr, obs, expected, decided)
