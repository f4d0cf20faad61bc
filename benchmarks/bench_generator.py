#!/usr/bin/env python3
"""Training-data generation at a million records: throughput and peak memory against a naive baseline.

Builds a store of ``--records`` usage records (default 1,000,000) with raw
``sqlite3`` ``executemany`` into the tables :class:`afs_continuous.store.Store`
creates, with a realistic mix: about 40% of the records score
``quality >= 0.7``, about 70% have feedback (some voted twice, the latest
wins), about 4% are exact duplicates of an earlier record (case and spacing
changed), 4% near duplicates (one word changed or appended at the end), and a
few have a whitespace-only answer. Texts are words drawn from the AlpacaEval
answers' word distribution (``--payload-bytes`` per record, query about a
fifth of it), so shingles of unrelated records do not collide by accident.

Then, each in a fresh subprocess (peak RSS = ``VmHWM`` of that process):

(a) ``TrainingDataGenerator.generate()`` with the default configuration
    (quality >= 0.7, positive feedback, exact and near-duplicate removal at
    Jaccard 0.9 with 64 permutations, chat JSONL), starting from a store whose
    content hashes are not filled yet (as the logger leaves them);
(b) the naive baseline doing the same work the obvious way: every row loaded
    as a SQLModel object (``session.exec(select(UsageRecord)).all()``) and
    every feedback event, filters, sort and exact dedup in Python, near
    duplicates with one ``datasketch.MinHash`` per sample and a
    ``datasketch.MinHashLSH`` index, then a shuffled JSONL.

It prints records/s (candidate records per second of wall time) and peak RSS
of both, the ratio, and the baseline's time without its near-duplicate phase
(the ratio against that lighter workload is printed too).
Targets: peak RSS <= 500 MB and >= 3x the baseline's throughput.

Usage:
    python benchmarks/bench_generator.py [--records 1000000] [--payload-bytes 400] [--db PATH] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
STEP = timedelta(seconds=1)
TARGET_RSS_MB = 500
TARGET_RATIO = 3.0


# ------------------------------------------------------------------ building the store

def vocabulary(data_dir: Path) -> list[str]:
    """Words of the AlpacaEval answers with their frequencies (a word list to draw from)."""
    words: list[str] = []
    for path in sorted(data_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                words += json.loads(line)["output"].split()
        if len(words) > 2_000_000:
            break
    if not words:  # no data folder: a synthetic Zipf-like vocabulary
        rng = random.Random(1)
        base = ["".join(rng.choice("etaoinshrdlucmfwypvbgkqjxz") for _ in range(rng.randint(1, 10))) for _ in range(30_000)]
        words = [base[min(int(rng.paretovariate(1.1)) - 1, len(base) - 1)] for _ in range(500_000)]
    return words


def ts(dt: datetime) -> str:
    """SQLAlchemy's SQLite DateTime text format (naive UTC)."""
    return dt.astimezone(timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def build_store(path: Path, n: int, payload_bytes: int, data_dir: Path, seed: int = 0) -> dict[str, int]:
    from afs_continuous.store import Store

    Store(f"sqlite:///{path}").dispose()  # creates the schema exactly as the library does
    rng = random.Random(seed)
    vocab = vocabulary(data_dir)
    q_words = max(3, payload_bytes // 5 // 6)
    r_words = max(5, payload_bytes * 4 // 5 // 6)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    cols = ("id", "created_at", "query", "response", "model", "latency_ms", "quality_score", "unit_id",
            "metadata_json", "content_hash", "truncated", "query_chars", "response_chars")
    usage_sql = f"INSERT INTO usage_records ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    fb_sql = "INSERT INTO feedback_events (record_id, feedback, created_at) VALUES (?, ?, ?)"
    recent: list[tuple[str, str]] = []
    stats = {"exact_dup": 0, "near_dup": 0, "blank": 0, "high_quality": 0, "with_feedback": 0}
    usage: list[tuple[Any, ...]] = []
    feedback: list[tuple[Any, ...]] = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.04 and recent:
            q, r = rng.choice(recent)
            q, r = (q.upper() if rng.random() < 0.5 else "  " + q), r.replace(" ", "  ", 3)
            stats["exact_dup"] += 1
        elif kind < 0.08 and recent:
            q, r = rng.choice(recent)
            words = r.split()
            if rng.random() < 0.5:
                words[-1] = rng.choice(vocab)
            else:
                words.append(rng.choice(vocab))
            r = " ".join(words)
            stats["near_dup"] += 1
        else:
            q = " ".join(rng.choices(vocab, k=q_words)) + "?"
            r = " ".join(rng.choices(vocab, k=r_words))
            if kind > 0.995:
                r = " \n\t "
                stats["blank"] += 1
            elif len(recent) < 10_000:
                recent.append((q, r))
            else:
                recent[rng.randrange(10_000)] = (q, r)
        high = rng.random() < 0.4
        quality = rng.uniform(0.7, 1.0) if high else rng.uniform(0.0, 0.7)
        stats["high_quality"] += high
        created = START + i * STEP
        rid = uuid.UUID(int=rng.getrandbits(128)).hex
        usage.append((rid, ts(created), q, r, "base", 100.0 + i % 50, round(quality, 4), f"user-{i % 50_000}",
                      None, None, 0, len(q), len(r)))
        if rng.random() < 0.7:
            stats["with_feedback"] += 1
            vote = 1 if rng.random() < (0.8 if high else 0.4) else -1
            if rng.random() < 0.05:  # voted twice: the latest wins
                feedback.append((rid, -vote, ts(created + STEP / 4)))
            feedback.append((rid, vote, ts(created + STEP / 2)))
        if len(usage) >= 10_000:
            with con:
                con.executemany(usage_sql, usage)
                con.executemany(fb_sql, feedback)
            usage, feedback = [], []
    with con:
        con.executemany(usage_sql, usage)
        con.executemany(fb_sql, feedback)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return stats


# ------------------------------------------------------------------ workers (one subprocess each)

def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def worker_afs(db: Path, out: Path, until: datetime) -> dict[str, Any]:
    from afs_continuous import DataGeneratorConfig, TrainingDataGenerator
    from afs_continuous.store import Store

    store = Store(f"sqlite:///{db}")
    gen = TrainingDataGenerator(store, DataGeneratorConfig(min_samples=1), out, clock=lambda: until)
    t0 = time.perf_counter()
    result = gen.generate(after=None, until=until, name="afs", progress=False)
    elapsed = time.perf_counter() - t0
    counts = dict(result.counts)
    result.close()
    return {"elapsed_s": elapsed, "counts": counts}


def worker_naive(db: Path, out: Path, until: datetime) -> dict[str, Any]:
    from datasketch import MinHash, MinHashLSH
    from sqlmodel import Session, create_engine, select

    from afs_continuous._text import content_hash, normalize
    from afs_continuous.store import FeedbackEvent, TrainingSample, UsageRecord

    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    engine = create_engine(f"sqlite:///{db}")
    with Session(engine) as session:
        records = session.exec(select(UsageRecord)).all()
        events = session.exec(select(FeedbackEvent).order_by(FeedbackEvent.id)).all()
        trained = set(session.exec(select(TrainingSample.content_hash)).all())
    phases["load"] = time.perf_counter() - t0
    t = time.perf_counter()
    latest = {e.record_id: e.feedback for e in events}
    candidates = [r for r in records if r.created_at <= until]
    good = [r for r in candidates if not r.truncated and r.query.strip() and r.response.strip()
            and r.quality_score is not None and r.quality_score >= 0.7]
    liked = [r for r in good if latest.get(r.id) is not None and latest[r.id] >= 1]
    liked.sort(key=lambda r: (-r.quality_score, r.created_at, r.id))
    seen: set[str] = set()
    distinct = []
    for r in liked:
        h = content_hash(r.query, r.response)
        if h in seen:
            continue
        seen.add(h)
        if h not in trained:
            distinct.append(r)
    phases["filter_exact"] = time.perf_counter() - t
    t = time.perf_counter()
    lsh = MinHashLSH(threshold=0.9, num_perm=64)
    kept = []
    for i, r in enumerate(distinct):
        toks = normalize(r.query).split() + ["\x1f"] + normalize(r.response).split()
        shingles = [" ".join(toks[j:j + 5]).encode("utf-8") for j in range(max(1, len(toks) - 4))]
        m = MinHash(num_perm=64)
        m.update_batch(shingles)
        if lsh.query(m):
            continue
        lsh.insert(str(i), m)
        kept.append(r)
    phases["near_dedup"] = time.perf_counter() - t
    t = time.perf_counter()
    random.Random(0).shuffle(kept)
    with (out / "naive.jsonl").open("w", encoding="utf-8") as fh:
        for r in kept:
            fh.write(json.dumps({"messages": [{"role": "user", "content": r.query},
                                              {"role": "assistant", "content": r.response}]}, ensure_ascii=False) + "\n")
    phases["write"] = time.perf_counter() - t
    elapsed = time.perf_counter() - t0
    counts = {"candidates": len(candidates), "after_quality": len(good), "after_feedback": len(liked),
              "after_exclude_trained": len(distinct), "after_near_dedup": len(kept), "total": len(kept)}
    return {"elapsed_s": elapsed, "counts": counts, "phases": phases}


def run_worker(kind: str, db: Path, out: Path, until: datetime) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--db", str(db), "--out", str(out), "--until", until.isoformat()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ main

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--payload-bytes", type=int, default=400, help="query + response bytes per record (about)")
    p.add_argument("--db", help="store to build (kept); default: a temporary file")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--data-dir", default=os.environ.get("AFS_ALPACA_EVAL_DIR", str(ROOT.parent / "shared/data/alpaca_eval")))
    p.add_argument("--worker", choices=["afs", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--until", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        until = datetime.fromisoformat(args.until)
        fn = worker_afs if args.worker == "afs" else worker_naive
        res = fn(Path(args.db), Path(args.out), until)
        res["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(res))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    try:
        db = Path(args.db) if args.db else tmp / "usage.db"
        if db.exists():
            db.unlink()
        t0 = time.perf_counter()
        stats = build_store(db, args.records, args.payload_bytes, Path(args.data_dir))
        build_s = time.perf_counter() - t0
        size_mb = db.stat().st_size / 1e6
        print(f"store: {args.records:,} records (~{args.payload_bytes} payload bytes), built in {build_s:.0f} s, "
              f"{size_mb:,.0f} MB; {stats}")
        until = START + args.records * STEP + timedelta(minutes=1)
        results: dict[str, dict[str, Any]] = {}
        if not args.skip_baseline:  # first: it reads only, the generator fills content hashes
            (tmp / "naive").mkdir()
            results["naive"] = run_worker("naive", db, tmp / "naive", until)
        (tmp / "afs").mkdir()
        results["afs"] = run_worker("afs", db, tmp / "afs", until)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.records
    print()
    print("| pipeline | wall s | records/s | peak RSS MB | after_feedback | after_exclude_trained | after_near_dedup |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("afs", "TrainingDataGenerator.generate()"), ("naive", "naive: ORM load + Python + datasketch")):
        if name in results:
            r = results[name]
            c = r["counts"]
            print(f"| {label} | {r['elapsed_s']:.1f} | {n / r['elapsed_s']:,.0f} | {r['peak_rss_mb']:,.0f} | "
                  f"{c.get('after_feedback', '-'):,} | {c.get('after_exclude_trained', '-'):,} | {c.get('after_near_dedup', '-'):,} |")
    print()
    a = results["afs"]
    ok = a["peak_rss_mb"] <= TARGET_RSS_MB
    print(f"afs counts: {a['counts']}")
    print(f"afs peak RSS: {a['peak_rss_mb']:.0f} MB  (target <= {TARGET_RSS_MB} MB)")
    if "naive" in results:
        b = results["naive"]
        ph = b["phases"]
        print("naive phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()))
        ratio = b["elapsed_s"] / a["elapsed_s"]
        light = b["elapsed_s"] - ph["near_dedup"]
        print(f"throughput afs / naive: {ratio:.1f}x  (target >= {TARGET_RATIO:g}x)")
        print(f"throughput afs / naive without its near-dedup phase ({light:.1f} s, less work): {light / a['elapsed_s']:.1f}x")
        print(f"peak RSS naive / afs: {b['peak_rss_mb'] / a['peak_rss_mb']:.1f}x")
        ok = ok and ratio >= TARGET_RATIO
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
