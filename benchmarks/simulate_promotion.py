"""Simulate what the promotion rule does under its defaults (and variants), and print markdown tables for the docs.

Setting (docs/statistics.md, "Simulation: what the defaults do"): a 0/1 metric at
0.30 for the champion, 500 requests per hour (one unit each), 10% to the
challenger, a look every hour until ``max_duration_hours`` (336). Every look
takes the decision ``ExperimentManager.evaluate`` takes with the same
:class:`~afs_continuous.config.ABTestConfig`: this look's comparison
(the vectorised kernels of :func:`afs_continuous.stats.compare`), the
sample-ratio check and the one decision rule,
:func:`afs_continuous._stats_sequential.decide_vec`. No guardrail data is
simulated. Each cell of the first table is the share of runs promoted, the
median promoting hour in brackets; the second table says how the defaults end.

Usage:
    python benchmarks/simulate_promotion.py              # 5,000 runs per cell
    python benchmarks/simulate_promotion.py --runs 1000  # quick
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

try:
    from afs_continuous import _stats_sequential as k
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from afs_continuous import _stats_sequential as k
from afs_continuous.config import ABTestConfig

VARIANTS: list[tuple[str, dict[str, object]]] = [
    ("defaults: sequential test on this look, 48 h minimum, 200 units/arm, stop on regression", {}),
    ("defaults without the 48 h minimum (`min_duration_hours: 0`)", {"min_duration_hours": 0}),
    ("fixed-horizon test looked at hourly (`sequential: false`)", {"sequential": False}),
    ("strict: lower bound >= 5% (`strict: true`)", {"strict": True}),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000, help="runs per cell (default 5000; 1000 is quick)")
    parser.add_argument("--lifts", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.10], help="true relative lifts")
    parser.add_argument("--requests-per-hour", type=int, default=500)
    parser.add_argument("--p-champion", type=float, default=0.30, help="champion's success rate (0..1)")
    parser.add_argument("--n-star", type=int, default=None, help="sequential_n_star (default: the config default)")
    parser.add_argument("--seed", type=int, default=12345)
    return parser.parse_args(argv)


def share_se(hits: int, n: int) -> tuple[float, float]:
    p = hits / n
    return p, math.sqrt(p * (1 - p) / n)


def fmt_cell(hour: np.ndarray, decision: np.ndarray) -> str:
    hit = decision == k.PROMOTE
    p, se = share_se(int(hit.sum()), hit.size)
    text = f"{p:.3f} ± {se:.3f}"
    return f"{text} ({np.median(hour[hit]):.0f})" if hit.any() else text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.runs < 2:
        print("--runs must be >= 2", file=sys.stderr)
        return 2
    base: dict[str, object] = {} if args.n_star is None else {"sequential_n_star": args.n_star}
    start = time.perf_counter()
    cells: list[list[str]] = []
    endings: list[str] = []
    defaults = ABTestConfig(**base)
    for label, overrides in VARIANTS:
        cfg = ABTestConfig(**{**base, **overrides})
        row = []
        for i, lift in enumerate(args.lifts):
            hour, decision = k.simulate_binary_experiments(
                n_runs=args.runs, true_lift=lift, config=cfg, p_champion=args.p_champion,
                requests_per_hour=args.requests_per_hour, seed=args.seed + i,
            )
            row.append(fmt_cell(hour, decision))
            if not overrides:
                horizon = cfg.max_duration_hours
                early = (decision == k.STOP) & (hour < horizon)
                late = (decision == k.STOP) & (hour >= horizon)
                parts = [share_se(int(x.sum()), args.runs) for x in (decision == k.PROMOTE, early, late)]
                endings.append(" | ".join(f"{p:.3f} ± {se:.3f}" for p, se in parts))
        cells.append(row)
    elapsed = time.perf_counter() - start

    print(
        f"{args.requests_per_hour} requests/h (one unit each), {defaults.initial_challenger_traffic:.0%} to the "
        f"challenger, binary metric at {args.p_champion}, a look every hour until {defaults.max_duration_hours:g} h, "
        f"{args.runs} runs per cell (± one standard error), alpha {defaults.alpha}, promotion_threshold "
        f"{defaults.promotion_threshold:.0%}, N* {defaults.sequential_n_star}. Share of runs promoted (median "
        f"promoting hour).\n"
    )
    header = " | ".join("true lift 0" if x == 0 else f"{x:+.0%}" for x in args.lifts)
    print(f"| rule | {header} |")
    print("|---|" + "---|" * len(args.lifts))
    for (label, _), row in zip(VARIANTS, cells):
        print(f"| {label} | " + " | ".join(row) + " |")
    print("\nHow the defaults end:\n")
    print(f"| true lift | promoted | stopped as worse | stopped at {defaults.max_duration_hours:g} h, champion kept |")
    print("|---|---|---|---|")
    for lift, ending in zip(args.lifts, endings):
        print(f"| {'0' if lift == 0 else f'{lift:+.0%}'} | {ending} |")
    print(f"\n({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
