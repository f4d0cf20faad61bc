#!/usr/bin/env python3
"""The SDK's cost inside a real chat service: FastAPI under gunicorn with uvicorn workers, driven by wrk.

The same service (``benchmarks/_service_app.py``: a trivial handler answering each prompt with a
real AlpacaEval answer) runs without the SDK (``plain``) and with it (``sdk``: ``route``,
``log_usage`` and, for about half of the requests, ``record_feedback`` in a separate feedback
request that may reach another worker). Both run at once, each a gunicorn with ``--workers``
uvicorn workers (``-k uvicorn.workers.UvicornWorker``, ``--reuse-port``: one listening socket per
worker, so the kernel spreads wrk's connections over the workers; with one shared socket the first
worker to wake accepts most of them), warmed up for ``--warmup`` seconds; then ``wrk`` on loopback
(``benchmarks/service_load.lua``) loads them in turn, ``--duration`` seconds each (plain, sdk,
plain, sdk, ... for ``--rounds`` rounds) while the other waits idle, so both see the same
machine; on a shared machine the median of the per-round ratios is the figure to read.

Per phase it prints requests/s, latency p50/p99 (wrk, all requests), the workers' CPU time per
request (user + system over the phase, all threads; in brackets the threads other than the event
loop's, i.e. the SDK's writer: less noisy than the throughput on a shared machine) and each
worker's resident memory (``VmRSS`` of ``/proc/PID/status`` at the end of the phase); then the
ratios sdk / plain.

Zero loss is checked, not assumed: every record id and every feedback token that wrk received in a
200 response is looked up in the store (each exactly once), and the store holds exactly what the
workers accepted (records and feedback events, from each worker's exit report), with no drop.
A fresh store per run: a SQLite file, or a fresh PostgreSQL schema (dropped afterwards).

Usage:
    python benchmarks/bench_service.py [--duration 10] [--rounds 2] [--workers 4] [--redact]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--sustain 120]

``--sustain S``: one plain and one sdk phase of S seconds each, sampling every worker's RSS every
``S/12`` seconds (does memory level off?). ``--redact``: the sdk phases redact with
``afs_continuous.redact:basic`` (``logger_config.redact_fn``). ``--no-rollups`` (diagnostic): the
sdk writer skips the hourly rollups, to measure their share. Needs ``gunicorn`` and ``wrk``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

DATA_DIR = ROOT.parent / "shared" / "data" / "alpaca_eval"
LUA = Path(__file__).with_name("service_load.lua")
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_pids(master: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(entry))
    return sorted(pids)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(all threads, main threads) CPU seconds of the workers: the main thread runs the event loop
    and the handlers (route, log_usage, record_feedback); the other threads are the SDK's writer."""
    return sum(cpu_s(p) for p in pids), sum(cpu_s(p, p) for p in pids)


class Service:
    """One gunicorn master with its uvicorn workers."""

    def __init__(self, mode: str, workers: int, db_url: str | None, data: Path, out: Path, redact: str | None,
                 no_rollups: bool = False):
        self.port = free_port()
        env = {**os.environ, "AFS_BENCH_MODE": mode, "AFS_BENCH_DATA": str(data), "AFS_BENCH_OUT": str(out),
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        if db_url:
            env["AFS_BENCH_DB"] = db_url
        if redact:
            env["AFS_BENCH_REDACT"] = redact
        if no_rollups:
            env["AFS_BENCH_NO_ROLLUPS"] = "1"
        self.log = open(out / "gunicorn.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", str(workers),
             "-b", f"127.0.0.1:{self.port}", "--reuse-port", "--chdir", str(Path(__file__).parent), "--graceful-timeout", "120",
             "--log-level", "warning", "_service_app:app"], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        deadline = time.monotonic() + 120
        answered: set[int] = set()
        while time.monotonic() < deadline:  # until every worker answered (each connection lands on one)
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited ({self.proc.returncode}); see {out / 'gunicorn.log'}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    answered.add(json.loads(resp.read())["pid"])
                if len(answered) == workers:
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("gunicorn did not answer within 120 s")

    def pids(self) -> list[int]:
        return worker_pids(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=180)
        finally:
            self.log.close()


def run_wrk(args: argparse.Namespace, url: str, seconds: float, tag: str, work: Path, out: Path,
            sample: Any = None, every: float = 0.0) -> dict[str, Any]:
    result = out / f"wrk-{tag}.json"
    env = {**os.environ, "AFS_BENCH_PROMPTS": str(work / "prompts.txt"), "AFS_BENCH_ACKS": str(out),
           "AFS_BENCH_TAG": tag, "AFS_BENCH_WRK_OUT": str(result), "AFS_BENCH_FEEDBACK": str(args.feedback)}
    proc = subprocess.Popen([args.wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s",
                             "--timeout", "10s", "-s", str(LUA), url], env=env, stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        time.sleep(every or 0.2)
        if sample is not None and every and proc.poll() is None:
            sample()
    if proc.returncode != 0 or not result.exists():
        raise SystemExit(f"wrk failed (exit {proc.returncode})")
    return json.loads(result.read_text())


def prepare_store(url: str) -> None:
    """Create the schema, and a running experiment so that route() assigns arms (10% challenger)."""
    from afs_continuous import ContinuousLearningLoop, LoopConfig

    loop = ContinuousLearningLoop(LoopConfig(database_url=url, data_dir=tempfile.gettempdir()))
    try:
        loop.registry.register("cand", reason="benchmark challenger")
        loop.experiments.start("base", "cand", traffic_fraction=0.1, seed="bench")
    finally:
        loop.close()


def read_acks(out: Path) -> tuple[list[str], list[str]]:
    records, tokens = [], []
    for path in sorted(out.glob("acks-*.txt")):
        for line in path.read_text().splitlines():
            kind, _, value = line.partition(" ")
            (records if kind == "R" else tokens).append(value)
    return records, tokens


def check_store(url: str, out: Path, workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Compare the store with what wrk was acknowledged and what the workers accepted."""
    acked_records, acked_tokens = read_acks(out)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            stored = [r[0] for r in conn.execute(text("SELECT id FROM usage_records"))]
            comments = [r[0] for r in conn.execute(text("SELECT comment FROM feedback_events"))]
            drops = conn.execute(text("SELECT COALESCE(SUM(n_records), 0) + COALESCE(SUM(n_feedback), 0) "
                                      "FROM writer_drops")).scalar()
    finally:
        engine.dispose()
    stored_set = set(stored)
    token_count = collections.Counter((c or "").split(":", 1)[0] for c in comments)
    accepted = sum(w.get("n_logged", 0) for w in workers)
    accepted_fb = sum(w.get("n_feedback", 0) for w in workers)
    problems = []
    missing = [r for r in acked_records if r not in stored_set]
    if missing:
        problems.append(f"{len(missing)} acknowledged records missing from the store")
    if len(acked_records) != len(set(acked_records)):
        problems.append("wrk received a record id twice")
    if len(stored) != len(stored_set):
        problems.append("duplicate record ids in the store")
    bad_tokens = [t for t in acked_tokens if token_count.get(t) != 1]
    if bad_tokens:
        problems.append(f"{len(bad_tokens)} acknowledged feedback events not stored exactly once")
    if len(stored) != accepted:
        problems.append(f"store holds {len(stored)} records, workers accepted {accepted}")
    if len(comments) != accepted_fb:
        problems.append(f"store holds {len(comments)} feedback events, workers accepted {accepted_fb}")
    dropped = sum(w.get("n_dropped", 0) for w in workers)
    if dropped or drops:
        problems.append(f"writer drops: {dropped} in the workers, {drops} in writer_drops")
    if len(workers) == 0:
        problems.append("no worker exit report")
    return {"records": len(stored), "acked_records": len(acked_records), "events": len(comments),
            "acked_events": len(acked_tokens), "problems": problems}


class Backend:
    """Fresh stores: SQLite files in the work folder, or PostgreSQL schemas (dropped at the end)."""

    def __init__(self, database_url: str | None, work: Path):
        self.base, self.work, self.schemas = database_url, work, []

    def new(self, name: str) -> str:
        if self.base is None:
            return f"sqlite:///{self.work / name / 'usage.db'}"
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        engine = create_engine(self.base)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        self.schemas.append(schema)
        sep = "&" if "?" in self.base else "?"
        return f"{self.base}{sep}options=-csearch_path%3D{schema}"

    def cleanup(self) -> None:
        if self.base is None or not self.schemas:
            return
        engine = create_engine(self.base)
        with engine.begin() as conn:
            for schema in self.schemas:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def measure(args: argparse.Namespace, svc: Service, mode: str, name: str, seconds: float, work: Path, out: Path,
            every: float = 0.0) -> dict[str, Any]:
    """One measured phase: wrk against ``svc`` for ``seconds``; CPU of its workers over the phase, RSS at its end."""
    pids = svc.pids()
    series: list[tuple[float, list[float]]] = []
    cpu0, main0 = cpu_split(pids)
    t0 = time.monotonic()

    def sample() -> None:
        series.append((time.monotonic() - t0, [rss_mb(p) for p in pids]))

    wrk = run_wrk(args, svc.url, seconds, name, work, out, sample if every else None, every)
    cpu1, main1 = cpu_split(pids)
    cpu, main_cpu = cpu1 - cpu0, main1 - main0
    rss = [rss_mb(p) for p in pids]
    if svc.pids() != pids:
        raise SystemExit(f"{name}: a worker was restarted during the phase; see {out / 'gunicorn.log'}")
    n = max(1, wrk["requests"])
    return {"mode": mode, "name": name, "rps": wrk["requests"] / (wrk["duration_us"] / 1e6),
            "p50_ms": wrk["p50_us"] / 1000.0, "p99_ms": wrk["p99_us"] / 1000.0, "requests": wrk["requests"],
            "cpu_us_per_request": cpu / n * 1e6, "other_threads_us_per_request": (cpu - main_cpu) / n * 1e6,
            "rss_mb": rss, "errors": sum(wrk["errors"].values()), "series": series}


def run(args: argparse.Namespace, work: Path, backend: Backend, data: Path,
        plan: list[tuple[str, str, float]], every: float = 0.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start both services (each warmed up), run the phases of ``plan`` in order against them (the
    idle one waits), stop both, then check the store against the acknowledgements."""
    outs = {mode: work / mode for mode in ("plain", "sdk")}
    for out in outs.values():
        out.mkdir()
    url = backend.new("sdk")
    prepare_store(url)
    services: dict[str, Service] = {}
    results = []
    try:
        for mode, out in outs.items():
            services[mode] = Service(mode, args.workers, url if mode == "sdk" else None, data, out,
                                     args.redact_fn if mode == "sdk" else None, args.no_rollups)
            if args.warmup > 0:
                run_wrk(args, services[mode].url, args.warmup, "warm", work, out)
        for mode, name, seconds in plan:
            results.append(measure(args, services[mode], mode, name, seconds, work, outs[mode], every))
            print(fmt_row(results[-1]), flush=True)
    finally:
        for svc in services.values():
            svc.stop()
    checks = {}
    for mode, out in outs.items():
        reports = [json.loads(p.read_text()) for p in out.glob("worker-*.json")]
        if mode == "sdk":
            checks[mode] = check_store(url, out, reports)
        else:
            checks[mode] = {"problems": [] if len(reports) == args.workers else
                            [f"{len(reports)} worker exit reports of {args.workers}"]}
        checks[mode]["gc_s"] = sum(r.get("gc_s", 0.0) for r in reports)
        checks[mode]["items"] = sum(r.get("n_logged", 0) + r.get("n_feedback", 0) for r in reports)
        checks[mode]["batches"] = sum(r.get("n_batches", 0) for r in reports)
    return results, checks


def fmt_row(r: dict[str, Any]) -> str:
    rss = r["rss_mb"]
    return (f"| {r['name']} | {r['mode']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['cpu_us_per_request']:,.0f} ({r['other_threads_us_per_request']:,.0f}) | "
            f"{statistics.mean(rss):.1f} (max {max(rss):.1f}) | {r['errors']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds of each service before the phases (not measured)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (plain, sdk)")
    ap.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--feedback", type=float, default=0.5, help="fraction of requests that are feedback")
    ap.add_argument("--database-url", help="PostgreSQL base URL (a fresh schema per run, dropped after it); default: a SQLite file")
    ap.add_argument("--redact", action="store_true", help="sdk phases redact with afs_continuous.redact:basic")
    ap.add_argument("--no-rollups", action="store_true",
                    help="diagnostic: the sdk writer skips the hourly rollups (to measure their share of the cost)")
    ap.add_argument("--sustain", type=float, default=0.0,
                    help="instead: one plain and one sdk phase of this many seconds, sampling RSS")
    ap.add_argument("--data", default=str(DATA_DIR / "FuseChat-Llama-3.1-8B-Instruct.jsonl.gz"),
                    help="AlpacaEval .jsonl.gz (prompts and answers)")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (stores, logs, acknowledgements)")
    args = ap.parse_args()
    args.redact_fn = "afs_continuous.redact:basic" if args.redact else None
    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="afs-bench-service-"))
    with gzip.open(data, "rt", encoding="utf-8") as fh, open(work / "prompts.txt", "w") as out:
        for line in fh:
            if line.strip():
                out.write(json.dumps(json.loads(line)["instruction"]) + "\n")
    backend = Backend(args.database_url, work)
    store_name = "PostgreSQL" if args.database_url else "SQLite"
    print(f"# service benchmark: {args.workers} uvicorn workers under gunicorn, wrk -t{args.threads} "
          f"-c{args.connections}, {store_name}, feedback fraction {args.feedback}"
          f"{', redact_fn ' + args.redact_fn if args.redact else ''}{', ROLLUPS OFF' if args.no_rollups else ''}; "
          f"{os.cpu_count()} CPUs", flush=True)
    try:
        if args.sustain:
            plan = [("plain", "plain-sustain", args.sustain), ("sdk", "sdk-sustain", args.sustain)]
            results, checks = run(args, work, backend, data, plan, every=max(1.0, args.sustain / 12))
        else:
            plan = [(mode, f"{mode}-{rnd}", args.duration) for rnd in range(1, args.rounds + 1)
                    for mode in ("plain", "sdk")]
            results, checks = run(args, work, backend, data, plan)
    finally:
        backend.cleanup()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")
    report(results, checks)


def report(results: list[dict[str, Any]], checks: dict[str, Any]) -> None:
    print()
    print("| phase | variant | requests/s | p50 ms | p99 ms | worker CPU us/request (writer thread) | "
          "RSS per worker MB | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(fmt_row(r))
    by = {m: [r for r in results if r["mode"] == m] for m in ("plain", "sdk")}
    if not by["plain"] or not by["sdk"]:
        return

    def mean(mode: str, key: str) -> float:
        return statistics.mean(r[key] for r in by[mode])

    rss = {m: statistics.mean(x for r in by[m] for x in r["rss_mb"]) for m in by}
    print()
    print("| figure | plain | sdk | sdk / plain |")
    print("|---|---|---|---|")
    for key, label in (("rps", "requests/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                       ("cpu_us_per_request", "worker CPU us/request"),
                       ("other_threads_us_per_request", "of which writer thread")):
        a, b = mean("plain", key), mean("sdk", key)
        print(f"| {label} | {a:,.2f} | {b:,.2f} | {b / a:.2f} |" if a > 0.5 else f"| {label} | {max(a, 0.0):,.2f} | {b:,.2f} | - |")
    print(f"| RSS per worker MB | {rss['plain']:.1f} | {rss['sdk']:.1f} | +{rss['sdk'] - rss['plain']:.1f} MB |")
    pairs = [s["rps"] / p["rps"] for p, s in zip(by["plain"], by["sdk"])]
    cpu = [s["cpu_us_per_request"] - p["cpu_us_per_request"] for p, s in zip(by["plain"], by["sdk"])]
    print(f"\nthroughput ratio sdk / plain per round: {', '.join(f'{x:.2f}' for x in pairs)} "
          f"(median {statistics.median(pairs):.2f}); SDK CPU per request per round: "
          f"{', '.join(f'{x:,.0f}' for x in cpu)} us (median {statistics.median(cpu):,.0f} us)")
    for r in results:
        if r["series"]:
            pts = ", ".join(f"{t:.0f}s {statistics.mean(v):.1f}" for t, v in r["series"])
            print(f"RSS per worker over time ({r['name']}, MB): {pts}")
    failed = False
    sdk = checks["sdk"]
    print(f"store: {sdk['records']} records / {sdk['events']} feedback events; wrk acknowledged "
          f"{sdk['acked_records']} / {sdk['acked_events']} (the others' answers were in flight when a wrk run stopped); "
          f"time in the garbage collector: plain {checks['plain']['gc_s']:.2f} s, sdk {sdk['gc_s']:.2f} s (all workers); "
          f"{sdk['batches']:,} write transactions, {sdk['items'] / max(1, sdk['batches']):.0f} records and events each")
    for mode in ("plain", "sdk"):
        for p in checks[mode]["problems"]:
            failed = True
            print(f"LOSS CHECK FAILED ({mode}): {p}")
    if failed:
        sys.exit(1)
    print("zero loss: every acknowledged record and feedback event is in the store exactly once, "
          "and the store holds exactly what the workers accepted")


if __name__ == "__main__":
    main()
