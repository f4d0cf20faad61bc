"""Simulate what each promotion rule costs, and print a markdown table for the docs.

Setting (docs/STATISTICS.md, "Decision rules and what they cost"): a 0/1 metric
at 0.30 for the champion, 500 requests per hour, 10% to the challenger, a look
every hour for 168 hours, a burn-in of 100 samples per arm. Each cell is the
share of runs that ever promote; the median promoting hour follows in brackets.
The simulation runs the same vectorised kernels as
:func:`afs_continuous.stats.compare` (``afs_continuous._stats_sequential``).

Usage:
    python benchmarks/simulate_promotion.py              # 20,000 runs per cell
    python benchmarks/simulate_promotion.py --runs 2000  # quick
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

try:
    from afs_continuous import _stats_sequential as k
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from afs_continuous import _stats_sequential as k

ROW_LABELS: dict[k.Rule, str] = {
    "fixed": "fixed-horizon p < alpha and lift >= min_lift, peeked hourly",
    "sequential": "sequential (default): CS excludes 0 (running-min p) and lift >= min_lift",
    "strict": "sequential strict: two-sided CS lower bound >= min_lift",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20_000, help="runs per cell (default 20000; 2000 is quick)")
    parser.add_argument("--lifts", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.10], help="true relative lifts")
    parser.add_argument("--hours", type=int, default=168, help="hourly looks per run (default 168)")
    parser.add_argument("--requests-per-hour", type=int, default=500)
    parser.add_argument("--challenger-fraction", type=float, default=0.10)
    parser.add_argument("--p-champion", type=float, default=0.30, help="champion's success rate (0..1)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--min-lift", type=float, default=0.05, help="relative, 0.05 = +5%%")
    parser.add_argument("--n-star", type=float, default=5000, help="confidence-sequence tuning N* (total samples)")
    parser.add_argument("--min-samples", type=int, default=100, help="burn-in per arm before any decision")
    parser.add_argument("--seed", type=int, default=12345)
    return parser.parse_args(argv)


def fmt_cell(first_hour, n_runs: int) -> str:
    frac, median = k.summarize_hours(first_hour)
    text = f"{frac:.{max(3, math.ceil(math.log10(n_runs)))}f}"  # resolution 1/n_runs
    return f"{text} ({median:.0f})" if median is not None else text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.runs < 1:
        print("--runs must be >= 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    cells: dict[k.Rule, list[str]] = {r: [] for r in k.RULES}
    for i, lift in enumerate(args.lifts):
        res = k.simulate_binary_promotion(
            n_runs=args.runs, true_lift=lift, p_champion=args.p_champion,
            requests_per_hour=args.requests_per_hour, challenger_fraction=args.challenger_fraction,
            n_hours=args.hours, alpha=args.alpha, min_lift=args.min_lift, n_star=args.n_star,
            min_samples=args.min_samples, seed=args.seed + i,
        )
        for r in k.RULES:
            cells[r].append(fmt_cell(res[r], args.runs))
    elapsed = time.perf_counter() - start

    print(
        f"{args.requests_per_hour} requests/h, {args.challenger_fraction:.0%} to the challenger, "
        f"binary metric at {args.p_champion}, {args.hours} hourly looks, {args.runs} runs per cell, "
        f"alpha {args.alpha}, min_lift {args.min_lift:.0%}, N* {args.n_star:g}, burn-in {args.min_samples}/arm. "
        f"Share of runs that ever promote (median promoting hour).\n"
    )
    header = " | ".join("true lift 0" if x == 0 else f"{x:+.0%}" for x in args.lifts)
    print(f"| rule | {header} |")
    print("|---|" + "---|" * len(args.lifts))
    for r in k.RULES:
        print(f"| {ROW_LABELS[r]} | " + " | ".join(cells[r]) + " |")
    print(f"\n({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
