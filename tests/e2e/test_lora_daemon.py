"""The daemon trains with the reference LoRA trainer by configuration alone (no --train-fn)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


def test_training_lora_in_the_config_is_enough(tmp_path, alpaca):
    pytest.importorskip("peft")
    from afs_continuous import UsageLogger
    from afs_continuous.training.tiny import TINY_LORA_SETTINGS, build_tiny_model

    rows = [r for r in alpaca("FuseChat-Llama-3.1-8B") if r["preference"] > 1.7][:80]
    base = build_tiny_model(tmp_path / "base", [t for r in rows for t in (r["instruction"][:300], r["output"][:600])])
    with UsageLogger(tmp_path / "usage.db") as logger:
        for r in rows:
            rid = logger.log(r["instruction"][:300], r["output"][:600], "base", quality_score=r["preference"] - 1)
            logger.record_feedback(rid, 1)
    config = {
        "db_path": str(tmp_path / "usage.db"), "data_dir": str(tmp_path / "data"),
        "champion_model_path": str(base),
        "training": {"lora": {"base_model": str(base), "output_dir": str(tmp_path / "adapters"), "max_length": 128,
                              "batch_size": 8, "max_steps": 6, "logging_steps": 2, "device": "cpu",
                              **TINY_LORA_SETTINGS}},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "continuous_loop.py"), "--config", "config.json",
                           "--trigger", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    retrain = json.loads(proc.stdout)["retrain"]
    assert retrain["status"] == "deployed", retrain
    adapter = Path(retrain["model_path"])
    assert adapter.parent == tmp_path / "adapters" and (adapter / "adapter_config.json").is_file()
    metrics = retrain["metrics"]
    assert metrics["steps"] == 6 and metrics["eval_loss"] < metrics["eval_loss_before"]


def test_a_typo_in_the_lora_settings_fails_at_start(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "db_path": str(tmp_path / "usage.db"), "training": {"lora": {"base_model": "/m", "lerning_rate": 1e-3}}}))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "continuous_loop.py"), "--config", "config.json",
                           "--status"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "training.lora" in proc.stderr and "did you mean 'learning_rate'" in proc.stderr
