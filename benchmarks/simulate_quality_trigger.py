#!/usr/bin/env python3
"""False fires and detection of the quality-drop trigger, replayed on real judged answers.

Each run replays AlpacaEval answers (``quality_score = preference - 1``) through
a real store: a :class:`~afs_continuous.logger.UsageLogger` stamps every record
with a :class:`~afs_continuous.clock.ManualClock`, requests arrive as a Poisson
process at ``--rate`` per hour with answers drawn at random (with replacement)
from one model's 805 answers, and a :class:`~afs_continuous.triggers.TriggerChecker`
with the default :class:`~afs_continuous.config.TriggerConfig` (schedule and
sample count off) checks at the end of every hour, as the daemon does.

Scenarios (``docs/statistics.md``, "The quality-drop trigger"):

- ``noise``: unchanged FuseChat-Llama-3.2-3B traffic (true mean 0.513) at
  5 requests/h for 7 days: every fire is a false fire;
- ``drop``: 3B answers until hour 72, then FuseChat-Llama-3.2-1B answers (true
  mean 0.299, a 42% drop), at 100 requests/h checked until hour 96 and at 5
  requests/h until hour 120: the first fire after hour 72 is the detection.

For each, the table gives the share of runs with at least one fire, the mean
number of hours that fired per run, and the median first-fire hour, for the
trigger as shipped (drop >= threshold *and* one-sided Welch p < alpha) and for
the rule before (drop >= threshold alone, read from the same checks).

Usage:
    python benchmarks/simulate_quality_trigger.py                # 100 noise runs, 10 per drop scenario
    python benchmarks/simulate_quality_trigger.py --runs 10      # quick
    python benchmarks/simulate_quality_trigger.py --alpha 0.01   # another quality_drop_alpha

The data folder is ``$AFS_ALPACA_EVAL_DIR`` or ``../shared/data/alpaca_eval``
next to this checkout (``--data-dir`` overrides).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

try:
    import afs_continuous  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from afs_continuous import DataGeneratorConfig, ManualClock, Store, TriggerChecker, TriggerConfig, TriggerType, UsageLogger
from afs_continuous.registry import ModelRegistry

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
MODEL_3B = "FuseChat-Llama-3.2-3B-Instruct"
MODEL_1B = "FuseChat-Llama-3.2-1B-Instruct"


@dataclass
class Replay:
    """One replay: per hourly check, whether the trigger fired and whether the old rule would have.

    Attributes:
        fired_hours: Hours (1-based, end of the hour) at which the trigger fired.
        old_rule_hours: Hours at which ``drop >= threshold`` with enough samples (the rule before).
        checks: The quality-drop check's details at every hour.
        n_records: Records logged.
    """

    fired_hours: list[int] = field(default_factory=list)
    old_rule_hours: list[int] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    n_records: int = 0

    def first(self, after: int = 0) -> int | None:
        return next((h for h in self.fired_hours if h > after), None)

    def old_first(self, after: int = 0) -> int | None:
        return next((h for h in self.old_rule_hours if h > after), None)


def load_rows(data_dir: Path, model: str) -> list[dict[str, Any]]:
    """The 805 AlpacaEval rows of ``model`` (``<model>.jsonl.gz`` in ``data_dir``), sorted by index."""
    path = data_dir / f"{model}.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return sorted((json.loads(line) for line in fh if line.strip()), key=lambda r: r["index"])


def replay(workdir: Path, rows_before: Sequence[dict[str, Any]], rows_after: Sequence[dict[str, Any]] | None = None, *,
           switch_hour: float | None = None, rate_per_h: float = 5.0, hours: int = 168, seed: int = 0,
           config: TriggerConfig | None = None, store_url: str | None = None) -> Replay:
    """Replay judged answers through a real store and check the quality-drop trigger every hour.

    Args:
        workdir: Folder for the SQLite store (``<workdir>/usage.db``) unless ``store_url`` is given.
        rows_before: AlpacaEval rows served before ``switch_hour`` (or throughout).
        rows_after: Rows served from ``switch_hour`` on (None: no switch).
        switch_hour: Hour of the switch (None: no switch).
        rate_per_h: Mean requests per hour (Poisson arrivals).
        hours: Number of hourly checks.
        seed: Seed of the arrivals and the answers drawn.
        config: Trigger settings (default: :class:`TriggerConfig` defaults with the schedule and
            sample-count triggers off).
        store_url: A store URL to use instead of a SQLite file (must be empty).

    Returns:
        A :class:`Replay`.
    """
    cfg = config if config is not None else TriggerConfig(min_new_samples=None, schedule_interval_hours=None)
    rng = np.random.default_rng(seed)
    clock = ManualClock(START)
    store = Store(store_url if store_url is not None else str(Path(workdir) / "usage.db"))
    logger = UsageLogger(store, clock=clock)
    champion = ModelRegistry(store, clock=clock).ensure_champion("base").name
    checker = TriggerChecker(store, cfg, DataGeneratorConfig(), clock=clock)
    out = Replay()
    try:
        for hour in range(hours):
            n = int(rng.poisson(rate_per_h))
            for offset in np.sort(rng.random(n)):
                at = hour + float(offset)
                pool = rows_after if (rows_after is not None and switch_hour is not None and at >= switch_hour) else rows_before
                row = pool[int(rng.integers(len(pool)))]
                clock.set(START + timedelta(hours=at))
                logger.log(row["instruction"], row["output"], champion,
                           quality_score=min(1.0, max(0.0, float(row["preference"]) - 1.0)))
            out.n_records += n
            clock.set(START + timedelta(hours=hour + 1))
            if not logger.flush(timeout_s=60):
                raise RuntimeError("the logger did not drain within 60 s")
            check = next(c for c in checker.check().checks if c.trigger == TriggerType.QUALITY_DROP)
            d = check.details
            out.checks.append({"hour": hour + 1, "fired": check.fired, **d})
            if check.fired:
                out.fired_hours.append(hour + 1)
            enough = min(d["recent_n"], d["baseline_n"]) >= d["min_samples"]
            if enough and d["drop"] is not None and d["drop"] >= d["threshold"] - 1e-9:
                out.old_rule_hours.append(hour + 1)
    finally:
        logger.close()
        store.dispose()
    return out


def _share(flags: list[bool]) -> str:
    n = len(flags)
    p = sum(flags) / n
    return f"{p:.2f} ± {math.sqrt(p * (1 - p) / n):.2f}"


def _median(values: list[int | None]) -> str:
    hits = [v for v in values if v is not None]
    return f"h{np.median(hits):.0f}" if hits else "never"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs of the noise scenario (default 100)")
    parser.add_argument("--drop-runs", type=int, default=10, help="runs per drop scenario (default 10)")
    parser.add_argument("--alpha", type=float, default=None, help="quality_drop_alpha (default: the config default)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(os.environ.get("AFS_ALPACA_EVAL_DIR") or
                                     Path(__file__).resolve().parents[2] / "shared/data/alpaca_eval")
    if not data_dir.is_dir():
        print(f"AlpacaEval data not found at {data_dir}; pass --data-dir or set AFS_ALPACA_EVAL_DIR", file=sys.stderr)
        return 2
    cfg_kw: dict[str, Any] = {"min_new_samples": None, "schedule_interval_hours": None}
    if args.alpha is not None:
        cfg_kw["quality_drop_alpha"] = args.alpha
    cfg = TriggerConfig(**cfg_kw)
    rows_3b, rows_1b = load_rows(data_dir, MODEL_3B), load_rows(data_dir, MODEL_1B)
    scenarios = [  # (label, runs, requests per hour, switch hour, hours checked)
        ("unchanged 3B traffic, 5 req/h, 7 days", args.runs, 5.0, None, 168),
        ("3B -> 1B at h72, 100 req/h, until h96", args.drop_runs, 100.0, 72, 96),
        ("3B -> 1B at h72, 5 req/h, until h120", args.drop_runs, 5.0, 72, 120),
    ]
    started = time.perf_counter()
    print(f"quality_drop_threshold {cfg.quality_drop_threshold}, quality_drop_alpha {cfg.quality_drop_alpha}, "
          f"windows {cfg.quality_window_hours:g} h / {cfg.quality_baseline_hours:g} h, min_quality_samples "
          f"{cfg.min_quality_samples}; a check every hour; runs per row in brackets; ± is one standard error; "
          f"after a switch, fires count from the switch on.\n")
    print("| scenario | rule | runs that fire | fires per run | median first fire |")
    print("|---|---|---|---|---|")
    for i, (label, runs, rate, switch, hours) in enumerate(scenarios):
        results = []
        for r in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                results.append(replay(Path(tmp), rows_3b, rows_1b if switch else None, switch_hour=switch,
                                      rate_per_h=rate, hours=hours, seed=args.seed + 1000 * i + r, config=cfg))
        after = switch or 0
        for rule, hours_of in (("drop >= threshold and p < alpha (now)", lambda x: x.fired_hours),
                               ("drop >= threshold alone (before)", lambda x: x.old_rule_hours)):
            fired = [[h for h in hours_of(x) if h > after] for x in results]
            early = [[h for h in hours_of(x) if h <= after] for x in results] if switch else None
            fires = f"{np.mean([len(f) for f in fired]):.1f}"
            if early is not None:
                fires += f" (before the switch: {np.mean([len(e) for e in early]):.1f})"
            print(f"| {label} ({runs}) | {rule} | {_share([bool(f) for f in fired])} | {fires} | "
                  f"{_median([f[0] if f else None for f in fired])} |")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
