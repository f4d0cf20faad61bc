"""Every code snippet of the quick start (seed 003) runs as written.

The snippets are read from a verbatim copy of the seed; the only change is the
import path (``afs.continuous`` -> ``afs_continuous``), as the issue allows.
Names the snippets leave to the user (``model``, ``compute_quality``,
``load_jsonl``, ``Trainer``, ``save_model``) are supplied as small user-side
definitions; everything of ours is real. HOME points at a temporary directory
because the snippets write under ``~``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

SEED = Path(__file__).parents[1] / "data" / "seed_003_quickstart.md"
SHARED_SEED = Path(__file__).parents[2].parent / "shared" / "seeds" / "003_0905c0d331e8f472.txt"


def _blocks(lang: str) -> list[str]:
    text = SEED.read_text(encoding="utf-8")
    blocks = re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)
    return [b.replace("from afs.continuous import", "from afs_continuous import") for b in blocks]


def test_copy_matches_the_seed():
    if not SHARED_SEED.exists():
        pytest.skip(f"{SHARED_SEED} not present")
    assert SEED.read_text(encoding="utf-8") == SHARED_SEED.read_text(encoding="utf-8")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in list(__import__("os").environ):
        if name.startswith("AFS_CONTINUOUS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


class _Model:
    def generate(self, query: str) -> str:
        return f"An answer to: {query}"


class _Trainer:
    def __init__(self, model, dataset):
        self.dataset = dataset

    def train(self):
        return {"loss": 0.5, "accuracy": 0.9, "n": len(self.dataset)}


def _user_names(tmp_path: Path) -> dict:
    out = tmp_path / "models"

    def save_model() -> str:
        path = out / f"adapter-{time.monotonic_ns()}"
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text("{}")
        return str(path)

    def load_jsonl(path: str) -> list:
        return [json.loads(line) for line in open(path, encoding="utf-8")]

    return {"model": _Model(), "compute_quality": lambda response: 0.9, "load_jsonl": load_jsonl,
            "Trainer": _Trainer, "save_model": save_model, "time": time}


def test_python_snippets_count():
    assert len(_blocks("python")) == 6


def test_log_usage_snippet(home):
    ns: dict = {}
    exec(_blocks("python")[0], ns)
    assert re.fullmatch(r"[0-9a-f]{32}", ns["record_id"])
    stats = ns["logger"].get_statistics()
    assert stats["total"] == 1 and stats["positive_feedback"] == 1
    assert (home / ".context/training/continuous/usage.db").exists()
    ns["logger"].close()


_USER_PRELUDE = """
import time
class _Model:
    def generate(self, query):
        return "An answer to: " + query
model = _Model()
def compute_quality(response):
    return 0.9
"""


def test_step_1_then_status_connects_in_a_fresh_home(tmp_path):
    """Step 1 as typed, the integration snippet as typed, then step 2's ``--status`` with no flags, each in
    its own process in a fresh home: the status shows both records (one default store for all of them)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    env["HOME"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    py = _blocks("python")
    app = _USER_PRELUDE + py[1] + "\nresponse, record_id = handle_query('How do I use DMA?')\nhandle_feedback(record_id, True)\n"
    for code in (py[0], app):  # neither snippet closes its logger: records are flushed at exit
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
    status = [sys.executable, "scripts/continuous_loop.py", "--status"]  # step 2, from the checkout, as typed
    proc = subprocess.run(status + ["--json"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["store"] == f"sqlite:///{tmp_path / '.context/training/continuous/usage.db'}"
    assert summary["usage_stats"]["total"] == 2 and summary["usage_stats"]["positive_feedback"] == 2
    assert summary["usage_stats"]["by_model"] == {"nayru-v1": 2}
    text = subprocess.run(status, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "records          2" in text.stdout, text.stderr
    assert not (tmp_path / ".afs").exists()


def test_defaults_are_the_quick_start_paths(home):
    from afs_continuous import ContinuousLearningLoop, LoopConfig, UsageLogger

    assert LoopConfig().db_path == "~/.context/training/continuous/usage.db"
    assert LoopConfig().data_path == home / ".context/training/continuous"
    with ContinuousLearningLoop() as loop:
        assert loop.store.path == home / ".context/training/continuous/usage.db"
        assert loop.generator.rehearsal_buffer.path == home / ".context/training/continuous/rehearsal_buffer.jsonl"
    with UsageLogger("~/.context/training/continuous/usage.db") as logger:  # step 1's store is the loop's
        assert logger.store.path == loop.store.path


def test_integration_training_loop_and_dashboard_snippets(home, capsys):
    py = _blocks("python")
    ns = _user_names(home)
    exec(py[1], ns)                      # loop = ContinuousLearningLoop(LoopConfig()); handlers defined
    loop = ns["loop"]
    response, record_id = ns["handle_query"]("What is 65816 assembly?")
    ns["handle_feedback"](record_id, True)
    ns["handle_feedback"](record_id, False)  # the latest vote wins
    exec(py[2], ns)                      # def train_model(data_path)

    # Option 1 blocks in run_loop (the daemon); stop it once it has checked, then Option 2 runs.
    worker = threading.Thread(target=exec, args=(py[3], ns), daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while loop.store.get_state("last_iteration_at") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    loop.stop()
    worker.join(30)
    assert not worker.is_alive()
    assert ns["result"]["retrain_triggered"] is False  # one record is far below the 1000-sample trigger

    exec(py[4], ns)                      # the metrics dashboard prints
    out = capsys.readouterr().out
    assert "Total usage: 1" in out and "Feedback rate: 100.0%" in out and "Champion model: base" in out
    summary = loop.get_status_summary()
    assert summary["usage_stats"]["negative_feedback"] == 1
    loop.close()


def test_train_model_snippet_drives_a_real_retrain(home):
    from afs_continuous import ContinuousLearningLoop, LoopConfig, ManualClock

    py = _blocks("python")
    ns = _user_names(home)
    exec(py[2], ns)
    loop = ContinuousLearningLoop(LoopConfig(route_cache_s=0), clock=ManualClock())
    for i in range(12):
        rid = loop.log_usage(f"question {i}", f"answer {i}", model="base", quality_score=0.9)
        loop.record_feedback(rid, 1)
    result = loop.run_iteration(train_fn=ns["train_model"], manual=True)
    assert result["retrain"]["status"] == "deployed"
    assert result["retrain"]["metrics"]["loss"] == 0.5
    assert loop.route("user-1").name in {"base", result["retrain"]["model_version"]}
    loop.close()


def test_rehearsal_snippet(home):
    ns: dict = {}
    exec("from afs_continuous import DataGeneratorConfig", ns)  # the snippet assumes this import
    ns["cfg"] = eval(_blocks("python")[5], ns)
    assert ns["cfg"].include_existing_data is True
    # a relative path given in Python is relative to the current directory when the config is made
    assert ns["cfg"].existing_data_path == str(home / "rehearsal_buffer.jsonl")


def test_config_json_snippet(home):
    from afs_continuous import load_config

    (home / "config.json").write_text(_blocks("json")[0])
    cfg = load_config(home / "config.json")
    assert cfg.check_interval_seconds == 3600
    assert cfg.trigger_config.min_new_samples == 1000 and cfg.trigger_config.schedule_interval_hours == 168
    assert cfg.generator_config.min_quality_score == 0.7 and cfg.generator_config.min_user_feedback == 1
    assert cfg.ab_test_config.initial_challenger_traffic == 0.1 and cfg.ab_test_config.promotion_threshold == 0.05
