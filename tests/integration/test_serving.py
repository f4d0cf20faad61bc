"""The loop and a serving engine, without a vLLM server: ``engine: none`` changes nothing, and a
vLLM replica that cannot serve a version keeps it from getting any traffic (a real closed port:
the connection is really refused). The same paths against a real vLLM server: tests/serving."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from afs_continuous import RunStatus
from afs_continuous._report import format_run_report, format_status
from afs_continuous.serving import EngineError, NoEngine

ROOT = Path(__file__).parents[2]
_NO_TRIGGERS = {"min_new_samples": None, "schedule_interval_hours": None, "quality_drop_threshold": None}
_GEN = {"min_samples": 10, "include_existing_data": False}


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_engine_none_is_the_default_and_changes_nothing(tmp_path, clock, make_loop, trainer, good_rows,
                                                        log_rows) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=_NO_TRIGGERS, generator_config=_GEN)
    assert isinstance(loop.serving, NoEngine)
    log_rows(loop, good_rows[:20], "base")
    result = loop.run_iteration(manual=True)
    assert result["retrain"]["status"] == "deployed" and "serving" not in result
    challenger = loop.registry.challenger()
    assert loop.served_model_name(challenger) == challenger.name
    assert loop.served_model_name(loop.route("u1")) == loop.route("u1").name
    serving = loop.get_status_summary()["serving"]
    assert serving["engine"] == "none" and serving["fallbacks"] == 0
    assert "serving engine" not in format_status(loop.get_status_summary())


def test_importing_the_package_does_not_import_httpx() -> None:
    code = "import sys, afs_continuous, afs_continuous.serving; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "False"


def test_a_version_no_replica_can_load_ends_deploy_failed_and_gets_no_traffic(tmp_path, clock, make_loop, trainer,
                                                                            good_rows, log_rows) -> None:
    url = closed_port_url()
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=_NO_TRIGGERS, generator_config=_GEN,
                     serving={"engine": "vllm", "base_urls": [url], "base_model_name": "base", "timeout_s": 5})
    log_rows(loop, good_rows[:20], "base")
    retrain = loop.run_iteration(manual=True)["retrain"]
    assert retrain["status"] == "deploy_failed"
    assert retrain["replica"] == url
    assert f"vLLM replica {url} cannot be reached (POST /v1/load_lora_adapter)" in retrain["error"]
    # nothing registered, no experiment, the champion serves everyone
    assert [v.name for v in loop.registry.list()] == ["base"]
    assert loop.experiments.active() is None
    assert {loop.route(f"u{i}").name for i in range(50)} == {"base"}
    run = loop.runs.get(retrain["run_id"])
    assert run.status is RunStatus.DEPLOY_FAILED and run.model_version is None
    report = run.to_dict()
    assert report["deploy"]["replica"] == url and report["deploy"]["version"] == "base-ft1"
    assert report["decision"]["decided_by"] == "serving engine"
    text = format_run_report(report)
    assert f"Deployment refused by the serving engine (replica {url})" in text
    assert "Training run #1: deploy_failed" in text
    # no data consumed: the next run reconsiders the same samples
    again = loop.run_iteration(manual=True)["retrain"]
    assert again["status"] == "deploy_failed" and again["counts"]["new_samples"] == retrain["counts"]["new_samples"]
    assert trainer.n_lines[0] == trainer.n_lines[1]


def test_promote_and_rollback_to_a_version_the_engine_cannot_load_change_nothing(
        tmp_path, clock, make_loop, trainer, good_rows, log_rows, store_url) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=_NO_TRIGGERS, generator_config=_GEN)
    log_rows(loop, good_rows[:20], "base")
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "deployed"
    loop.promote("base-ft1")  # engine none: as before
    url = closed_port_url()
    served = make_loop(tmp_path, clock, serving={"engine": "vllm", "base_urls": [url], "timeout_s": 5})
    before = [v.to_dict() for v in served.registry.list()]
    with pytest.raises(EngineError, match=rf"vLLM replica {url} cannot be reached") as info:
        served.rollback()
    assert info.value.replica == url
    assert [v.to_dict() for v in served.registry.list()] == before
    # the CLI: exit 1, one line, nothing changed
    config = tmp_path / "config.json"
    db = {"database_url": store_url} if not store_url.startswith("sqlite") else {"db_path": str(tmp_path / "usage.db")}
    config.write_text(json.dumps({**db, "data_dir": str(tmp_path / "data"),
                                  "serving": {"engine": "vllm", "base_urls": [url], "timeout_s": 5}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    for args in (["rollback"], ["promote", "base"]):
        proc = subprocess.run([sys.executable, "-m", "afs_continuous.cli", *args, "--config", str(config)],
                              capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and f"vLLM replica {url} cannot be reached" in proc.stderr
    assert [v.to_dict() for v in served.registry.list()] == before


def test_report_unavailable_serves_the_champion_and_counts_the_fallback(tmp_path, clock, make_loop, trainer,
                                                                       good_rows, log_rows) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=_NO_TRIGGERS, generator_config=_GEN)
    log_rows(loop, good_rows[:20], "base")
    loop.run_iteration(manual=True)
    challenger = loop.registry.challenger()
    champion = loop.report_unavailable(challenger, "The model `base-ft1` does not exist.")
    assert champion.name == "base" and champion.is_champion
    serving = loop.get_status_summary()["serving"]
    assert serving["fallbacks"] == 1 and serving["fallbacks_24h"] == 1
    assert serving["last_fallback"]["version"] == "base-ft1"
    assert "does not exist" in serving["last_fallback"]["detail"]
    assert "  fallbacks        1 (1 in the last 24 h; 0 reloads)" in format_status(loop.get_status_summary())


def test_reloads_after_a_fallback_are_rate_limited_and_off_the_request_path(tmp_path, clock, make_loop, trainer,
                                                                            good_rows, log_rows, store_url) -> None:
    plain = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=_NO_TRIGGERS, generator_config=_GEN)
    log_rows(plain, good_rows[:20], "base")
    plain.run_iteration(manual=True)
    url = closed_port_url()
    loop = make_loop(tmp_path, clock, serving={"engine": "vllm", "base_urls": [url], "timeout_s": 5,
                                               "base_model_name": "base", "reload_interval_s": 30})
    challenger = loop.registry.challenger()
    for _ in range(3):
        assert loop.report_unavailable(challenger).name == "base"
    assert loop._serving.wait_for_reloads(30)
    clock.advance(seconds=30)
    loop.report_unavailable(challenger, RuntimeError("404"))
    assert loop._serving.wait_for_reloads(30)
    serving = loop.get_status_summary()["serving"]
    assert serving["fallbacks"] == 4
    assert serving["load_failures"] == 2  # one reload per 30 s: 2 attempts for 4 fallbacks, both refused here
    assert serving["last_load_failure"]["replica"] == url and serving["base_urls"] == [url]
    assert "api_key" not in json.dumps(serving)
