"""The daemon keeps a real vLLM server in step with the registry (issue 9, "What it must show").

The reference LoRA trainer trains adapters on real AlpacaEval conversations; the daemon deploys them,
vLLM loads them before any request is routed to them; ``afs-continuous promote`` / ``rollback`` keep
vLLM in step; an adapter vLLM refuses ends its run ``deploy_failed`` and gets no traffic; after a
vLLM restart ``report_unavailable`` serves the champion, counts the fallback and loads the adapter again.
Runs last in the session: it restarts the shared server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from afs_continuous._report import format_iteration
from afs_continuous.clock import utc_now
from afs_continuous.training.lora import make_train_fn
from afs_continuous.training.tiny import TINY_LORA_SETTINGS

from .conftest import SERVED_NAME, VLLMServer

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).parents[2]
_NO_TRIGGERS = {"min_new_samples": None, "schedule_interval_hours": None, "quality_drop_threshold": None}


def _log_chats(loop: Any, rows: list[dict[str, Any]]) -> None:
    for i, row in enumerate(rows):
        rid = loop.log_usage(row["instruction"][:300], row["output"][:600], "base", quality_score=0.9,
                             unit_id=f"seed-{i}")
        loop.record_feedback(rid, 1)
    loop.logger.flush()


def _serve(server: VLLMServer, loop: Any, unit: str) -> tuple[str, str]:
    """Route one request and send it to vLLM under the arm's served name; (version, vLLM's model field)."""
    version = loop.route(unit)
    status, body = server.complete(loop.served_model_name(version), prompt="Explain", max_tokens=2)
    assert status == 200, body
    return version.name, body["model"]


def _cli(args: list[str], config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    return subprocess.run([sys.executable, "-m", "afs_continuous.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_the_daemon_keeps_vllm_in_step(vllm_server: VLLMServer, tiny_base: Path, alpaca: Any, tmp_path: Path,
                                       clock: Any, make_loop: Any, store_url: str) -> None:
    server = vllm_server
    rows = [r for r in alpaca("FuseChat-Gemma-2-9B") if r["preference"] > 1.7][:90]
    lora = {"base_model": str(tiny_base), **TINY_LORA_SETTINGS, "max_length": 96, "batch_size": 8, "epochs": 0.5,
            "device": "cpu", "validation_fraction": 0.0, "output_dir": str(tmp_path / "adapters")}
    serving = {"engine": "vllm", "base_urls": [server.base_url], "timeout_s": 120}
    loop = make_loop(tmp_path, clock, trigger_config=_NO_TRIGGERS, training={"lora": lora}, serving=serving,
                     generator_config={"min_samples": 10, "include_existing_data": False},
                     ab_test_config={"assignment_seed": "e2e"})

    # 1. a trained adapter is deployed: vLLM lists it before the experiment routes anyone to it
    _log_chats(loop, rows[:30])
    retrain = loop.run_iteration(manual=True)["retrain"]
    assert retrain["status"] == "deployed", retrain
    assert "base-ft1" in server.models()
    served = [_serve(server, loop, f"user-{i}") for i in range(200)]
    share = sum(v == "base-ft1" for v, _ in served) / len(served)
    assert 0.04 <= share <= 0.18, share
    assert all(model == (SERVED_NAME if v == "base" else v) for v, model in served)

    # 2. promote and rollback from the command line keep vLLM in step
    config = tmp_path / "config.json"
    db = {"database_url": store_url} if not store_url.startswith("sqlite") else {"db_path": str(tmp_path / "usage.db")}
    config.write_text(json.dumps({**db, "data_dir": str(tmp_path / "data"), "serving": serving}))
    promoted = _cli(["promote", "base-ft1", "--reason", "e2e"], config)
    assert promoted.returncode == 0, promoted.stderr
    assert {_serve(server, loop, f"user-{i}")[1] for i in range(30)} == {"base-ft1"}
    rolled = _cli(["rollback", "--reason", "e2e"], config)
    assert rolled.returncode == 0, rolled.stderr
    assert {_serve(server, loop, f"user-{i}")[1] for i in range(30)} == {SERVED_NAME}
    # the CLI recorded the retirement at the wall-clock time; the daemon's clock moves past it
    clock.advance(seconds=(utc_now() - clock()).total_seconds() + 1)
    result = loop.run_iteration()  # the daemon unloads the rolled-back adapter once routing stopped
    assert result["serving"]["unloaded"] == ["base-ft1"]
    assert "serving: base-ft1 unloaded (retired)" in format_iteration(result)
    assert "base-ft1" not in server.models()

    # 3. an adapter vLLM refuses (rank 16 > --max-lora-rank 8): deploy_failed, no traffic, champion serves
    _log_chats(loop, rows[30:60])
    refused = loop.run_iteration(make_train_fn({**lora, "rank": 16}), manual=True)["retrain"]
    assert refused["status"] == "deploy_failed"
    assert refused["replica"] == server.base_url
    assert "LoRA rank 16 is greater than max_lora_rank 8" in refused["error"]
    assert loop.registry.champion().name == "base" and loop.experiments.active() is None
    assert "base-ft2" not in [v.name for v in loop.registry.list()]
    assert {_serve(server, loop, f"user-{i}")[1] for i in range(30)} == {SERVED_NAME}
    report = _cli(["report", str(refused["run_id"])], config)
    assert f"Deployment refused by the serving engine (replica {server.base_url})" in report.stdout
    assert "LoRA rank 16 is greater than max_lora_rank 8" in report.stdout
    runs = _cli(["runs", "--status", "deploy_failed"], config)
    assert "deploy_failed" in runs.stdout and "LoRA rank 16" in runs.stdout

    # 4. restart vLLM: it forgets the challenger; report_unavailable serves the champion and reloads it
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "deployed"  # base-ft3 on the same data
    challenger = loop.registry.challenger()
    assert challenger.name == "base-ft3" and "base-ft3" in server.models()
    server.restart()
    assert "base-ft3" not in server.models()
    unit = next(f"user-{i}" for i in range(1000) if loop.route(f"user-{i}").name == "base-ft3")
    routed = loop.route(unit)
    status, body = server.complete(loop.served_model_name(routed))
    assert status == 404, body
    fallback = loop.report_unavailable(routed, body["error"]["message"])
    assert fallback.name == "base"
    status, body = server.complete(loop.served_model_name(fallback))
    assert status == 200 and body["model"] == SERVED_NAME, body
    assert loop._serving.wait_for_reloads(300)
    assert "base-ft3" in server.models()
    assert _serve(server, loop, unit) == ("base-ft3", "base-ft3")
    summary = loop.get_status_summary()["serving"]
    assert summary["fallbacks"] == 1 and summary["reloads"] == 1
    status_text = _cli(["status"], config).stdout
    assert "fallbacks        1 (1 in the last 24 h; 1 reloads)" in status_text

    # 5. the daemon's iteration also puts back what a replica lost (here: unloaded behind its back)
    status, body = server.complete("base-ft3")
    assert status == 200
    from .conftest import http_json

    assert http_json("POST", server.base_url + "/v1/unload_lora_adapter", {"lora_name": "base-ft3"})[0] == 200
    result = loop.run_iteration()
    assert result["serving"]["reloaded"] == ["base-ft3"] and "base-ft3" in server.models()
    assert "serving: base-ft3 loaded again (a replica had lost it)" in format_iteration(result)
