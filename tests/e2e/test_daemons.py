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

from afs_continuous import ContinuousLearningLoop, LoopConfig, RunStatus, UsageLogger

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
    env.update(ADAPTERS=str(workdir / "adapters"), PYTHONPATH=str(workdir), **extra)
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
