"""One daemon at a time (lease), crash recovery, and several hosts logging to PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from afs_continuous import ContinuousLearningLoop, LoopConfig, RunStatus, Store, UsageLogger
from afs_continuous.lease import Lease

ROOT = Path(__file__).parents[2]
DAEMON = [sys.executable, str(ROOT / "scripts" / "continuous_loop.py")]
pytestmark = pytest.mark.slow

TRAINING = '''
import json, os, pathlib, time

def slow(data_path):
    time.sleep(float(os.environ.get("TRAIN_SECONDS", "3")))
    out = pathlib.Path(os.environ["ADAPTERS"]) / f"adapter-{os.getpid()}-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    return {"model_path": str(out)}
'''


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    # the checkout under test first (not an installed copy), then the work directory (training.py)
    env.update(ADAPTERS=str(workdir / "adapters"), PYTHONPATH=os.pathsep.join([str(ROOT), str(workdir)]), **extra)
    return env


def _config(workdir: Path, url: str, **extra) -> Path:
    cfg = {"database_url": url, "data_dir": str(workdir / "data"), "check_interval_seconds": 0.2,
           "lease_ttl_s": 3, "trigger_config": {"min_new_samples": 20, "schedule_interval_hours": None}}
    cfg.update(extra)
    path = workdir / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def _fill(url: str, n: int = 30) -> None:
    with UsageLogger(url) as logger:
        for i in range(n):
            logger.record_feedback(logger.log(f"question {i}", f"a good answer {i}", "base", quality_score=0.9), 1)


def test_two_daemons_on_one_store_train_once(tmp_path, store_url):
    (tmp_path / "training.py").write_text(TRAINING)
    _config(tmp_path, store_url)
    _fill(store_url)
    args = DAEMON + ["--config", "config.json", "--train-fn", "training:slow", "--max-iterations", "3"]
    first = subprocess.Popen(args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    time.sleep(0.3)
    second = subprocess.Popen(args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    loop = ContinuousLearningLoop(LoopConfig(database_url=store_url, data_dir=str(tmp_path / "data")))
    runs = loop.runs.list()
    loop.close()
    assert len(runs) == 1, (err1, err2)
    assert runs[0].status is RunStatus.DEPLOYED
    assert sorted([first.returncode, second.returncode]) == [0, 1], (err1, err2)
    loser = err2 if second.returncode else err1
    assert "holds the store's lease" in loser


def test_a_daemon_killed_mid_training_is_recovered_without_retraining(tmp_path, store_url):
    (tmp_path / "training.py").write_text(TRAINING)
    _config(tmp_path, store_url)
    _fill(store_url)
    env = _env(tmp_path, TRAIN_SECONDS="60")
    victim = subprocess.Popen(DAEMON + ["--config", "config.json", "--train-fn", "training:slow"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    loop = ContinuousLearningLoop(LoopConfig(database_url=store_url, data_dir=str(tmp_path / "data")))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r.status is RunStatus.TRAINING for r in loop.runs.list()):
        time.sleep(0.1)
    assert loop.runs.list()[0].status is RunStatus.TRAINING
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    nxt = subprocess.run(DAEMON + ["--config", "config.json", "--train-fn", "training:slow", "--max-iterations", "1",
                                   "--wait-for-lease"], cwd=tmp_path, env=_env(tmp_path, TRAIN_SECONDS="0"),
                         capture_output=True, text=True, timeout=120)
    assert nxt.returncode == 0, nxt.stderr
    runs = loop.runs.list()
    assert [r.status for r in runs] == [RunStatus.INTERRUPTED]  # marked, not repeated
    assert "in cooldown" in nxt.stderr  # the cooldown started when the killed run began training
    assert loop.get_status_summary()["status"]["total_retrains"] == 0  # not double-counted
    assert loop.registry.champion().name == "base"
    loop.close()


RUN_LOOP = '''
import pathlib, sys
from afs_continuous import ContinuousLearningLoop, load_config

loop = ContinuousLearningLoop(load_config(sys.argv[1], env={}))
ready = pathlib.Path(sys.argv[2])
n = loop.run_loop(on_result=lambda result: ready.write_text("ready"))
print(f"run_loop returned after {n} iteration(s)", flush=True)
loop.close()
'''


def _lease(url: str):
    store = Store(url)
    try:
        return Lease(store).current()
    finally:
        store.dispose()


def _start_run_loop(tmp_path: Path, store_url: str) -> tuple[subprocess.Popen, Path]:
    """A user's script running ``loop.run_loop()`` (the lease lasts 300 s; checks hourly), after its first check."""
    (tmp_path / "run_loop.py").write_text(RUN_LOOP)
    cfg = _config(tmp_path, store_url, lease_ttl_s=300, check_interval_seconds=3600)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "run_loop.py", str(cfg), str(ready)], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "run_loop never finished its first check"
        time.sleep(0.05)
    assert _lease(store_url) is not None
    return proc, cfg


def test_sigterm_on_run_loop_releases_the_lease_at_once(tmp_path, store_url):
    """Issue 11 item 7: `timeout` (SIGTERM) on a script running run_loop() gives the lease back; the next
    --trigger --no-train runs at once instead of failing for up to lease_ttl_s (300 s)."""
    proc, _ = _start_run_loop(tmp_path, store_url)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, (out, err)  # it still terminates as SIGTERM says...
    assert "Traceback" not in err, err
    assert _lease(store_url) is None  # ...after giving the lease back
    start = time.monotonic()
    nxt = subprocess.run(DAEMON + ["--config", "config.json", "--trigger", "--no-train"], cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert nxt.returncode == 0, nxt.stderr
    assert time.monotonic() - start < 60


def test_ctrl_c_on_run_loop_stops_cleanly_with_one_line(tmp_path, store_url):
    """Issue 11 item 8: SIGINT (Ctrl-C) on run_loop(): no KeyboardInterrupt traceback, one line, lease released,
    and run_loop returns."""
    proc, _ = _start_run_loop(tmp_path, store_url)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert err.strip() == "interrupted; stopping (lease released)", err
    assert "run_loop returned after 1 iteration(s)" in out
    assert _lease(store_url) is None


def test_ctrl_c_on_the_daemon_stops_cleanly(tmp_path, store_url):
    """Issue 11 item 8, the daemon command: SIGINT stops it with exit 0, no traceback, lease released."""
    _config(tmp_path, store_url, lease_ttl_s=300, check_interval_seconds=3600)
    daemon = subprocess.Popen(DAEMON + ["--config", "config.json", "--no-train"], cwd=tmp_path, env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    loop = ContinuousLearningLoop(LoopConfig(database_url=store_url, data_dir=str(tmp_path / "data")))
    deadline = time.monotonic() + 60
    while loop.store.get_state("last_iteration_at") is None:
        assert daemon.poll() is None, daemon.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    loop.close()
    daemon.send_signal(signal.SIGINT)
    out, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted; stopping (lease released)" in err
    assert "daemon stopped after 1 iteration(s)" in err
    assert _lease(store_url) is None


def test_a_killed_daemon_on_this_host_is_taken_over_at_once(tmp_path, store_url):
    """Issue 11 item 7: SIGKILL mid-training leaves the lease (300 s); status shows it with its holder gone; the
    next daemon on this host takes over at once (no --wait-for-lease, no expiry) and marks the run interrupted."""
    (tmp_path / "training.py").write_text(TRAINING)
    _config(tmp_path, store_url, lease_ttl_s=300)
    _fill(store_url)
    victim = subprocess.Popen(DAEMON + ["--config", "config.json", "--train-fn", "training:slow"], cwd=tmp_path,
                              env=_env(tmp_path, TRAIN_SECONDS="120"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    loop = ContinuousLearningLoop(LoopConfig(database_url=store_url, data_dir=str(tmp_path / "data")))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r.status is RunStatus.TRAINING for r in loop.runs.list()):
        time.sleep(0.1)
    assert loop.runs.list()[0].status is RunStatus.TRAINING
    live = loop.get_status_summary()["lease"]
    assert live["holder"].startswith(f"{os.uname().nodename}:{victim.pid}:") and live["holder_alive"] is True
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    lease = loop.get_status_summary()["lease"]
    assert lease["holder"] == live["holder"] and lease["holder_alive"] is False and lease["expired"] is False
    assert {"acquired_at", "expires_at"} <= set(lease)
    cli = [sys.executable, "-m", "afs_continuous.cli", "status", "--config", "config.json"]
    as_json = subprocess.run(cli + ["--json"], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                             timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["lease"]["holder_alive"] is False
    text = subprocess.run(DAEMON + ["--config", "config.json", "--status"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert f"daemon lease     {live['holder']}" in text.stdout and "process gone" in text.stdout, text.stdout

    start = time.monotonic()
    nxt = subprocess.run(DAEMON + ["--config", "config.json", "--train-fn", "training:slow", "--max-iterations", "1"],
                         cwd=tmp_path, env=_env(tmp_path, TRAIN_SECONDS="0"), capture_output=True, text=True,
                         timeout=120)
    assert nxt.returncode == 0, nxt.stderr
    assert time.monotonic() - start < 60  # far less than the 300 s lease
    assert "took over the daemon lease" in nxt.stderr
    assert [r.status for r in loop.runs.list()] == [RunStatus.INTERRUPTED]
    assert loop.get_status_summary()["lease"] is None  # the next daemon stopped and gave it back
    loop.close()


WORKER = '''
import json, os, random, sys, time
from afs_continuous import ContinuousLearningLoop, load_config

cfg = load_config(sys.argv[1], env={})
loop = ContinuousLearningLoop(cfg)          # each "host" has its own engine and writer
name, out = sys.argv[2], sys.argv[3]
stop_file = sys.argv[4]
rng = random.Random(name)
routes, ids = [], []
i = 0
while not os.path.exists(stop_file):
    uid = f"{name}-{i}"
    version = loop.route(unit_id=uid)
    better = version.name != "base"
    q = min(1.0, max(0.0, rng.gauss(0.85 if better else 0.6, 0.1)))
    rid = loop.log_usage(f"{name} question {i}", f"answer {i} from {version.name}", model=version.name,
                         unit_id=uid, quality_score=q, latency_ms=100.0)
    loop.record_feedback(rid, 1 if q > 0.7 else -1)
    routes.append((time.time(), version.name))
    ids.append(rid)
    i += 1
    time.sleep(0.004)
loop.close()
json.dump({"routes": routes, "ids": ids, "stats": loop.logger.writer_stats()}, open(out, "w"))
'''


def test_several_hosts_log_to_postgres_while_the_daemon_promotes(tmp_path, store_url):
    if not store_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL: set AFS_TEST_DATABASE_URL=postgresql+psycopg://...")
    (tmp_path / "training.py").write_text(TRAINING)
    (tmp_path / "worker.py").write_text(WORKER)
    cache_s = 1.0
    cfg = _config(tmp_path, store_url, route_cache_s=cache_s,
                  trigger_config={"min_new_samples": 40, "schedule_interval_hours": None, "cooldown_hours": 24},
                  ab_test_config={"min_duration_hours": 0, "min_samples_per_arm": 40,
                                  "guardrail_latency_margin": None})
    stop = tmp_path / "stop"
    workers = [subprocess.Popen([sys.executable, "worker.py", str(cfg), f"host{k}", f"host{k}.json", str(stop)],
                                cwd=tmp_path, env=_env(tmp_path)) for k in range(4)]
    daemon = subprocess.Popen(DAEMON + ["--config", str(cfg), "--train-fn", "training:slow"], cwd=tmp_path,
                              env=_env(tmp_path, TRAIN_SECONDS="0.5"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    loop = ContinuousLearningLoop(LoopConfig(database_url=store_url, data_dir=str(tmp_path / "data")))
    promoted_at = None
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        champion = loop.registry.champion()
        if champion is not None and champion.name != "base":
            promoted_at = time.time()
            break
        time.sleep(0.2)
    time.sleep(cache_s + 2.0)
    stop.write_text("stop")
    for w in workers:
        assert w.wait(60) == 0
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=60)
    assert promoted_at is not None, err[-3000:]
    new_champion = loop.registry.champion().name

    all_ids = []
    for k in range(4):
        data = json.loads((tmp_path / f"host{k}.json").read_text())
        all_ids += data["ids"]
        assert data["stats"]["n_dropped"] == 0 and data["stats"]["n_write_errors"] == 0
        late = [name for t, name in data["routes"] if t > promoted_at + cache_s + 0.5]
        assert late and set(late) == {new_champion}, f"host{k} still routed elsewhere after the cache interval"
        assert any(name == "base" for _, name in data["routes"])  # it did serve the old champion before
    from sqlalchemy import func, select

    from afs_continuous.store import UsageRecord

    table = UsageRecord.__table__
    with loop.store.read() as conn:
        stored = [r[0] for r in conn.execute(select(table.c.id))]
        assert conn.execute(select(func.count()).select_from(table)).scalar_one() == len(all_ids)
    assert sorted(stored) == sorted(all_ids)  # every record present exactly once
    loop.close()
