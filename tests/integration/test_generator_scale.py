"""TrainingDataGenerator on stores of tens of thousands of records: streaming memory, exact counts.

The stores are written with raw ``sqlite3`` ``executemany`` into the tables
:class:`~afs_continuous.store.Store` creates (as ``benchmarks/bench_generator.py``
does at a million records): about 40% of the records score >= 0.7, about 70%
have feedback (some voted twice, the latest wins), and there are exact
duplicates (case and spacing changed), planted near duplicates (one word
appended to a 60-word answer) and whitespace-only answers.
"""

from __future__ import annotations

import random
import sqlite3
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from afs_continuous import DataGeneratorConfig, TrainingDataGenerator
from afs_continuous._text import content_hash
from afs_continuous.store import Store

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
UNTIL = START + timedelta(days=30)


def _ts(dt: datetime) -> str:
    return dt.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def build_store(path: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` records as described in the module docstring; returns them (with their latest feedback)."""
    Store(f"sqlite:///{path}").dispose()
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    rows: list[dict[str, Any]] = []
    usage, feedback = [], []
    originals: list[tuple[str, str]] = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.04 and originals:
            q, r = rng.choice(originals)
            q, r, planted = q.upper(), "  " + r, "exact"
        elif kind < 0.08 and originals:
            q, r = originals.pop(rng.randrange(len(originals)))  # at most one near duplicate per original
            r, planted = r + " " + rng.choice(vocab), "near"
        else:
            q, r, planted = " ".join(rng.choices(vocab, k=8)), " ".join(rng.choices(vocab, k=60)), None
            if kind > 0.995:
                r, planted = " \n ", "blank"
            else:
                originals.append((q, r))
        quality = rng.uniform(0.7, 1.0) if rng.random() < 0.4 else rng.uniform(0.0, 0.7)
        rid = f"{i:032x}"
        created = START + timedelta(seconds=i)
        vote = None
        if rng.random() < 0.7:
            vote = 1 if rng.random() < 0.7 else -1
            if rng.random() < 0.05:
                feedback.append((rid, -vote, _ts(created + timedelta(milliseconds=100))))
            feedback.append((rid, vote, _ts(created + timedelta(milliseconds=500))))
        usage.append((rid, _ts(created), q, r, "base", 100.0, quality, None, None, None, 0, len(q), len(r)))
        rows.append({"id": rid, "query": q, "response": r, "quality": quality, "feedback": vote, "created": created,
                     "planted": planted})
    con = sqlite3.connect(path)
    with con:
        con.executemany(
            "INSERT INTO usage_records (id, created_at, query, response, model, latency_ms, quality_score, unit_id, "
            "metadata_json, content_hash, truncated, query_chars, response_chars) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            usage)
        con.executemany("INSERT INTO feedback_events (record_id, feedback, created_at) VALUES (?,?,?)", feedback)
    con.close()
    return rows


def generate(db: Path, out: Path, **config: Any) -> Any:
    store = Store(f"sqlite:///{db}")
    cfg = DataGeneratorConfig(min_samples=1, include_existing_data=False, **config)
    result = TrainingDataGenerator(store, cfg, out, clock=lambda: UNTIL).generate(after=None)
    store.dispose()
    return result


def test_counts_match_a_brute_force_computation(tmp_path: Path) -> None:
    rows = build_store(tmp_path / "s.db", 20_000)
    gen = generate(tmp_path / "s.db", tmp_path / "out")
    good = [r for r in rows if r["quality"] >= 0.7 and r["response"].strip()]
    liked = sorted((r for r in good if r["feedback"] == 1), key=lambda r: (-r["quality"], r["created"], r["id"]))
    seen: dict[str, dict[str, Any]] = {}
    for r in liked:
        seen.setdefault(content_hash(r["query"], r["response"]), r)
    # every planted near duplicate whose original is also eligible loses to it or beats it (quality order)
    rank = {r["id"]: i for i, r in enumerate(liked)}
    losers = set()
    for r in seen.values():
        original = seen.get(content_hash(r["query"], r["response"].rsplit(" ", 1)[0])) if r["planted"] == "near" else None
        if original is not None:
            losers.add(max(r["id"], original["id"], key=rank.__getitem__))
    assert len(losers) > 15
    assert gen.counts["candidates"] == 20_000
    assert gen.counts["after_quality"] == len(good)
    assert gen.counts["after_feedback"] == len(liked)
    assert gen.counts["after_dedup"] == gen.counts["after_exclude_trained"] == len(seen)
    assert gen.counts["after_near_dedup"] == gen.counts["total"] == len(seen) - len(losers)
    # the best-scored copy of each content survives, in quality order; the file holds what was counted
    expected = sorted((r for r in seen.values() if r["id"] not in losers), key=lambda r: rank[r["id"]])
    assert gen.record_ids == [r["id"] for r in expected]
    assert sum(1 for _ in gen.output_path.open(encoding="utf-8")) == gen.counts["total"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Stores of 10,000 and 40,000 records (generation only reads them)."""
    folder = tmp_path_factory.mktemp("scale")
    out = {}
    for n in (10_000, 40_000):
        out[n] = folder / f"s{n}.db"
        build_store(out[n], n, seed=n)
    return out


@pytest.mark.parametrize("near", [0.9, None])
def test_generator_memory_does_not_grow_with_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      stores: dict[int, Path], near: float | None) -> None:
    """tracemalloc peak of generate() on 10k and on 40k records: no list of samples, hashes or records.

    What may grow is 8 bytes (exact dedup) and, with near-dedup, about 210 bytes
    per eligible record (the MinHash index): ~0.2 MB and ~2 MB here, against the
    ~12 MB a list of the extra 6,500 samples would take.
    """
    monkeypatch.setattr("afs_continuous._export.BUCKET_LINES", 500)  # shuffle buckets smaller than the data
    peaks, eligible = [], []
    for n, db in sorted(stores.items()):
        store = Store(f"sqlite:///{db}")
        gen = TrainingDataGenerator(store, DataGeneratorConfig(min_samples=1, include_existing_data=False,
                                                               near_dedup_threshold=near),
                                    tmp_path / f"out{n}", clock=lambda: UNTIL)
        gen.generate(after=None, name="warm-up").close()  # imports, caches, SQLite statement cache
        tracemalloc.start()
        result = gen.generate(after=None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peaks.append(peak)
        eligible.append(result.counts["after_near_dedup"])
        result.close()
        store.dispose()
    assert eligible[1] > 3.5 * eligible[0]
    growth = peaks[1] - peaks[0]
    budget = (eligible[1] - eligible[0]) * (260 if near else 16) + 1_000_000
    assert growth < budget, (peaks, eligible)
