"""ContinuousLearningLoop end to end on a real store: iterations, failures, restarts, the daemon loop, status."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from afs_continuous import ContinuousLearningLoop, RunStatus, UsageLogger, VersionStatus

NO_TRIGGERS = {"min_new_samples": None, "schedule_interval_hours": None, "quality_drop_threshold": None}
COUNT_5 = {"min_new_samples": 5, "schedule_interval_hours": None, "quality_drop_threshold": None}
GEN = {"min_samples": 5, "include_existing_data": False}


def log_good(target: Any, n: int, prefix: str = "q") -> list[str]:
    logger: UsageLogger = target.logger if isinstance(target, ContinuousLearningLoop) else target
    ids = []
    for i in range(n):
        rid = logger.log(f"{prefix} question {i}", f"{prefix} answer {i}", "base", quality_score=0.9, latency_ms=120.0)
        logger.record_feedback(rid, 1)
        ids.append(rid)
    assert logger.flush(timeout_s=30)
    return ids


# ------------------------------------------------------------------ one iteration
def test_iteration_result_keys(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=COUNT_5, generator_config=GEN)
    quiet = loop.run_iteration(trainer)
    assert set(quiet) == {"timestamp", "retrain_triggered", "experiment", "trigger", "drift"}
    assert quiet["drift"] is None  # nothing promoted, nothing watched
    assert quiet["retrain_triggered"] is False and quiet["experiment"] is None
    assert quiet["timestamp"] == clock().isoformat()

    log_good(loop, 5)
    result = loop.run_iteration(train_fn=trainer)  # the quick start's "Option 2"
    assert result["retrain_triggered"] is True
    retrain = result["retrain"]
    assert retrain["status"] == "deployed"
    assert {"run_id", "trigger", "counts", "data_path", "metrics", "model_version", "model_path",
            "experiment_id", "dry_run"} <= set(retrain)
    assert retrain["trigger"] == "sample_count" and retrain["model_version"] == "base-ft1"
    assert retrain["metrics"] == {"model_path": retrain["model_path"], "loss": 1.0, "n_train": 5}
    assert trainer.calls == [retrain["data_path"]]
    version = loop.registry.get("base-ft1")
    assert version.status is VersionStatus.CHALLENGER and version.path == retrain["model_path"]
    assert version.parent == "base" and version.training_run_id == retrain["run_id"]
    assert Path(version.path, "adapter_config.json").is_file()


@pytest.mark.parametrize("error", [ValueError("bad learning rate"), MemoryError("CUDA out of memory"),
                                   RuntimeError("NCCL timeout")])
def test_train_fn_raising_fails_the_run_and_keeps_the_champion(tmp_path, clock, make_loop, trainer, error) -> None:
    def broken(data_path: str) -> dict[str, Any]:
        raise error

    loop = make_loop(tmp_path, clock, trigger_config=COUNT_5, generator_config=GEN)
    log_good(loop, 5)
    result = loop.run_iteration(broken)
    retrain = result["retrain"]
    assert retrain["status"] == "failed"
    assert retrain["error"] == f"{type(error).__name__}: {error}"
    run = loop.runs.get(retrain["run_id"])
    assert run.status is RunStatus.FAILED and run.finished_at == clock()
    assert run.error.startswith(f"{type(error).__name__}: {error}")
    assert "Traceback (most recent call last)" in run.error and "in broken" in run.error
    assert loop.registry.champion().name == "base" and loop.registry.challenger() is None
    assert [v.name for v in loop.registry.list()] == ["base"]
    assert loop.experiments.active() is None
    assert {loop.route(f"u{i}").name for i in range(50)} == {"base"}

    # the loop keeps working: the next iteration runs (in cooldown), a manual one trains
    clock.advance(hours=1)
    nxt = loop.run_iteration(broken)
    assert nxt["retrain_triggered"] is False and nxt["trigger"]["blocked_by"] == "cooldown"
    again = loop.run_iteration(trainer, manual=True)
    assert again["retrain"]["status"] == "deployed"
    assert again["retrain"]["counts"]["new_samples"] == 5  # the failed run consumed nothing


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        (None, r"ValueError: train_fn must return a dict with 'model_path', got NoneType: None"),
        ({}, r"ValueError: train_fn result has no 'model_path' \(keys: \[\]\)"),
        ({"loss": 0.1}, r"ValueError: train_fn result has no 'model_path' \(keys: \['loss'\]\)"),
        ({"model_path": ""}, r"ValueError: train_fn result has no 'model_path'"),
        ({"model_path": 42}, r"ValueError: train_fn result has no 'model_path'"),
        ("MISSING", r"ValueError: train_fn returned model_path '.*does-not-exist', which does not exist"),
        ("CHAMPION", r"ValueError: train_fn returned the champion's own path '.*champion-weights/'; a new model must be saved elsewhere"),
        ({"model_path": "/dev/null"},
         r"ValueError: train_fn returned model_path '/dev/null', which is neither a directory nor a file"),
    ],
)
def test_unusable_train_fn_results_fail_with_a_specific_message(tmp_path, clock, make_loop, outcome, message) -> None:
    champion_dir = tmp_path / "champion-weights"
    champion_dir.mkdir()
    if outcome == "MISSING":
        outcome = {"model_path": str(tmp_path / "does-not-exist"), "loss": 0.3}
    elif outcome == "CHAMPION":
        outcome = {"model_path": str(champion_dir) + "/", "loss": 0.3}

    def train_fn(data_path: str) -> Any:
        return outcome

    loop = make_loop(tmp_path, clock, champion_model_path=str(champion_dir), trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 5)
    retrain = loop.run_iteration(train_fn, manual=True)["retrain"]
    assert retrain["status"] == "failed"
    assert re.match(message, retrain["error"]), retrain["error"]
    assert re.match(message, loop.runs.get(retrain["run_id"]).error)
    assert [v.name for v in loop.registry.list()] == ["base"]
    assert loop.registry.champion().path == str(champion_dir)
    assert loop.experiments.active() is None


def test_a_relative_model_path_is_stored_resolved_and_absolute(tmp_path, clock, make_loop, monkeypatch) -> None:
    """Issue 11 item 4: ``model_path="../../adapters/x"`` is deployed as the absolute, resolved path (the
    daemon's current directory must not decide later what a version's path means)."""
    adapter = tmp_path / "adapters" / "x"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)

    def train_fn(data_path: str) -> dict[str, Any]:
        return {"model_path": "../../adapters/./x/", "loss": 0.2}

    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 5)
    retrain = loop.run_iteration(train_fn, manual=True)["retrain"]
    assert retrain["status"] == "deployed", retrain
    expected = str(adapter.resolve())
    assert retrain["model_path"] == expected and retrain["metrics"]["model_path"] == expected
    version = loop.registry.get(retrain["model_version"])
    assert version.path == expected and version.metrics["model_path"] == expected
    assert loop.runs.get(retrain["run_id"]).to_dict()["model_path"] == expected


@pytest.mark.parametrize("keep", [False, True])
def test_the_report_says_when_the_training_data_was_deleted(tmp_path, clock, make_loop, trainer, keep) -> None:
    """Issue 11 item 21: a report must not list a training file that was cleaned up as if it were there."""
    from afs_continuous._report import format_run_report

    loop = make_loop(tmp_path, clock, keep_training_data=keep, trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 5)
    retrain = loop.run_iteration(trainer, manual=True)["retrain"]
    assert retrain["status"] == "deployed"
    report = loop.runs.get(retrain["run_id"]).to_dict()
    assert Path(report["data_path"]).exists() is keep
    assert report["data_deleted"] is (not keep)
    text = format_run_report(report)
    line = next(x for x in text.splitlines() if x.strip().startswith("training data"))
    note = "(deleted after the run; keep_training_data=false)"
    assert line.strip() == f"training data    {report['data_path']}" + ("" if keep else f" {note}")


def test_hanging_train_fn_times_out(tmp_path, clock, make_loop) -> None:
    release = threading.Event()

    def hangs(data_path: str) -> dict[str, Any]:
        release.wait(30)
        return {"model_path": str(tmp_path)}

    loop = make_loop(tmp_path, clock, training={"timeout_s": 0.2}, trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 5)
    try:
        retrain = loop.run_iteration(hangs, manual=True)["retrain"]
    finally:
        release.set()
    assert retrain["status"] == "failed"
    assert retrain["error"] == "TimeoutError: train_fn did not return within 0.2 s (training.timeout_s)"
    assert loop.registry.challenger() is None


def test_no_train_prepares_data_only(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 7)
    retrain = loop.run_iteration(manual=True, no_train=True)["retrain"]
    assert retrain["status"] == "data_ready"
    assert Path(retrain["data_path"]).is_file()
    assert len(Path(retrain["data_path"]).read_text(encoding="utf-8").splitlines()) == 7
    assert trainer.calls == []
    assert loop.runs.get(retrain["run_id"]).status is RunStatus.DATA_READY
    assert [v.name for v in loop.registry.list()] == ["base"]


def test_without_any_train_fn_the_run_is_data_ready(tmp_path, clock, make_loop) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=COUNT_5, generator_config=GEN)
    log_good(loop, 5)
    retrain = loop.run_iteration()["retrain"]
    assert retrain["status"] == "data_ready"
    # issue 11 item 17: said in the result and in the run's report, not silently
    assert retrain["reason"].startswith("no train_fn configured: data prepared only")
    assert loop.runs.get(retrain["run_id"]).decision["reasons"] == [retrain["reason"]]


def test_no_train_says_why_no_train_fn_ran(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 5)
    retrain = loop.run_iteration(manual=True, no_train=True)["retrain"]
    assert retrain["reason"] == "no_train: training data prepared, train_fn not called"
    assert loop.runs.get(retrain["run_id"]).decision["reasons"] == [retrain["reason"]]


USER_TRAINING = """
import json, pathlib

def train(data_path):
    out = pathlib.Path(data_path).parent.parent / "my-adapters" / pathlib.Path(data_path).stem
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return {"model_path": str(out), "loss": 0.5}
"""


@pytest.mark.parametrize("form", ["file", "module"])
def test_training_train_fn_of_the_config_is_used_from_python(tmp_path, clock, make_loop, monkeypatch, form) -> None:
    """Issue 11 item 17: the loop resolves training.train_fn itself (as the CLI does), so run_iteration()
    from Python trains with it instead of ending data_ready."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "user_training_c2.py").write_text(USER_TRAINING)
    monkeypatch.chdir(folder)
    spec = f"{folder / 'user_training_c2.py'}:train" if form == "file" else "user_training_c2:train"
    loop = make_loop(tmp_path, clock, training={"train_fn": spec}, trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 5)
    retrain = loop.run_iteration(manual=True)["retrain"]
    assert retrain["status"] == "deployed", retrain
    assert retrain["model_path"] == str(tmp_path / "data" / "my-adapters" / "run-00001")
    assert loop.resolve_train_fn().__name__ == "train"


def test_train_fn_order_argument_constructor_config(tmp_path, clock, make_loop, trainer) -> None:
    def other(data_path: str) -> dict[str, Any]:
        raise AssertionError("not this one")

    loop = make_loop(tmp_path, clock, train_fn=trainer, training={"train_fn": "json:dumps"})
    assert loop.resolve_train_fn() is trainer
    assert loop.resolve_train_fn(other) is other
    bare = make_loop(tmp_path / "b", clock, training={"train_fn": "json:dumps"})
    import json

    assert bare.resolve_train_fn() is json.dumps


def test_a_train_fn_in_the_config_that_cannot_be_imported_raises_config_error(tmp_path, clock, make_loop) -> None:
    from afs_continuous.errors import ConfigError

    loop = make_loop(tmp_path, clock, training={"train_fn": "no_such_module_c2:train"}, trigger_config=NO_TRIGGERS,
                     generator_config=GEN)
    log_good(loop, 5)
    with pytest.raises(ConfigError, match=r"cannot import train function \(training.train_fn\) module 'no_such_module_c2'"):
        loop.run_iteration(manual=True)
    assert loop.runs.list() == []  # nothing was done


def test_dry_run_trains_but_deploys_nothing(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 5)
    retrain = loop.run_iteration(trainer, manual=True, dry_run=True)["retrain"]
    assert retrain["status"] == "dry_run" and len(trainer.calls) == 1
    assert [v.name for v in loop.registry.list()] == ["base"]
    assert loop.runs.count_trained() == 0
    again = loop.run_iteration(trainer, manual=True)["retrain"]  # a dry run consumes no data
    assert again["counts"]["new_samples"] == 5


def test_without_ab_testing_the_new_model_becomes_champion(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, enable_ab_testing=False, trigger_config=COUNT_5, generator_config=GEN)
    log_good(loop, 5)
    retrain = loop.run_iteration(trainer)["retrain"]
    assert retrain["status"] == "promoted" and "experiment_id" not in retrain
    champion = loop.registry.champion()
    assert champion.name == "base-ft1" and champion.path == retrain["model_path"]
    assert champion.history[-1]["prior_champion"] == "base"
    assert loop.registry.get("base").status is VersionStatus.RETIRED
    assert loop.experiments.active() is None
    assert {loop.route(f"u{i}").name for i in range(50)} == {"base-ft1"}
    assert loop.get_status_summary()["status"]["total_retrains"] == 1
    # and a rollback restores the base model at once
    assert loop.rollback(reason="bad outputs").name == "base"
    assert loop.route("u1").name == "base"


def test_restart_continues_without_a_double_retrain(tmp_path, clock, make_loop, trainer) -> None:
    kwargs = dict(enable_ab_testing=False, train_fn=trainer, trigger_config=COUNT_5, generator_config=GEN)
    first = make_loop(tmp_path, clock, **kwargs)
    log_good(first, 5)
    assert first.run_iteration()["retrain"]["status"] == "promoted"
    first.close()

    clock.advance(minutes=10)
    second = make_loop(tmp_path, clock, **kwargs)  # the daemon restarts on the same store
    assert second.registry.champion().name == "base-ft1"
    assert second.run_iteration()["retrain_triggered"] is False
    clock.advance(hours=30)  # past the cooldown: the records are consumed (watermark + content)
    result = second.run_iteration()
    assert result["retrain_triggered"] is False
    sample_count = next(c for c in result["trigger"]["checks"] if c["trigger"] == "sample_count")
    assert sample_count["eligible_samples"] == 0
    assert len(trainer.calls) == 1
    log_good(second, 5, prefix="fresh")
    assert second.run_iteration()["retrain"]["status"] == "promoted"
    assert second.registry.champion().name == "base-ft2"


def test_a_deployed_challenger_survives_restart_and_is_still_evaluated(tmp_path, clock, make_loop, trainer) -> None:
    first = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=COUNT_5, generator_config=GEN)
    log_good(first, 5)
    assert first.run_iteration()["retrain"]["status"] == "deployed"
    first.close()
    second = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=COUNT_5, generator_config=GEN)
    arms = {second.route(f"user-{i}").name for i in range(200)}
    assert arms == {"base", "base-ft1"}
    clock.advance(hours=2)
    ev = second.run_iteration()["experiment"]
    assert ev is not None and ev["decision"] == "continue" and ev["challenger"]["model"] == "base-ft1"


def test_a_record_committed_late_is_not_lost(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, enable_ab_testing=False, train_fn=trainer,
                     trigger_config={**COUNT_5, "cooldown_hours": 0}, generator_config=GEN)
    log_good(loop, 5)
    run_at = clock()
    assert loop.run_iteration()["retrain"]["status"] == "promoted"
    # a worker handed this record to its writer 0.3 s before the run; its batch committed just after
    worker = UsageLogger(loop.store, clock=lambda: run_at - timedelta(seconds=0.3))
    late = worker.log("late question", "late answer", "base", quality_score=0.9)
    worker.record_feedback(late, 1)
    worker.close()
    clock.advance(minutes=5)
    log_good(loop, 5, prefix="later")
    assert loop.run_iteration()["retrain"]["status"] == "promoted"
    trained = {m["content"] for s in trainer.samples[1] for m in s["messages"]}
    assert "late question" in trained


def test_ctrl_c_in_train_fn_does_not_leave_a_run_training(tmp_path, clock, make_loop) -> None:
    def interrupted(data_path: str) -> dict[str, Any]:
        raise KeyboardInterrupt

    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 5)
    with pytest.raises(KeyboardInterrupt):
        loop.run_iteration(interrupted, manual=True)
    assert loop.registry.champion().name == "base"
    assert loop.runs.list()[0].status in (RunStatus.INTERRUPTED, RunStatus.FAILED)


def test_a_replaced_challenger_run_is_reported_rejected(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=NO_TRIGGERS, generator_config=GEN)
    log_good(loop, 5, prefix="a")
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "deployed"
    clock.advance(hours=1)
    log_good(loop, 5, prefix="b")
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "deployed"
    assert loop.registry.get("base-ft1").status is VersionStatus.RETIRED
    assert loop.experiments.history()[1].decision == "stop"
    assert loop.runs.get(1).status is RunStatus.REJECTED


# ------------------------------------------------------------------ the daemon loop
def test_run_loop_returns_the_number_of_iterations(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, check_interval_seconds=0.01, trigger_config=COUNT_5, generator_config=GEN)
    log_good(loop, 5)
    assert loop.run_loop(train_fn=trainer, max_iterations=3) == 3
    assert len(trainer.calls) == 1  # iteration 1 trains; 2 and 3 see the challenger under test


def test_run_loop_keeps_going_after_failed_runs(tmp_path, clock, make_loop) -> None:
    def always_fails(data_path: str) -> Any:
        raise KeyError("model_path")

    loop = make_loop(tmp_path, clock, check_interval_seconds=0.01, trigger_config={**COUNT_5, "cooldown_hours": 0},
                     generator_config=GEN)
    log_good(loop, 5)
    assert loop.run_loop(train_fn=always_fails, max_iterations=2) == 2
    assert [r.status for r in loop.runs.list()] == [RunStatus.FAILED, RunStatus.FAILED]


def test_stop_from_another_thread_ends_run_loop(tmp_path, clock, make_loop, trainer) -> None:
    started = threading.Event()

    def train_and_signal(data_path: str) -> dict[str, Any]:
        started.set()
        return trainer(data_path)

    loop = make_loop(tmp_path, clock, check_interval_seconds=3600, trigger_config=COUNT_5, generator_config=GEN)
    log_good(loop, 5)
    returned: list[int] = []
    thread = threading.Thread(target=lambda: returned.append(loop.run_loop(train_fn=train_and_signal)), daemon=True)
    thread.start()
    assert started.wait(30), "the first iteration never reached train_fn"
    loop.stop()
    thread.join(timeout=10)
    assert not thread.is_alive(), "run_loop ignored stop() during its hour-long wait"
    assert returned == [1]
    assert loop.runs.list()[0].status is RunStatus.DEPLOYED


def test_run_loop_marks_a_dead_process_run_interrupted(tmp_path, clock, make_loop) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = loop.runs.create("sample_count", {"reason": "test"})
    loop.runs.update(orphan, status=RunStatus.TRAINING, owner=f"{socket.gethostname()}:{dead.pid}")
    alive = loop.runs.create("manual", {})  # owned by this (live) process: left alone
    loop.runs.update(alive, status=RunStatus.TRAINING)
    elsewhere = loop.runs.create("manual", {})  # another host: cannot tell, left alone
    loop.runs.update(elsewhere, status=RunStatus.TRAINING, owner=f"other-host-{socket.gethostname()}:{dead.pid}")

    assert loop.run_loop(max_iterations=1) == 1
    run = loop.runs.get(orphan)
    assert run.status is RunStatus.INTERRUPTED and run.finished_at == clock()
    assert run.error == f"process {socket.gethostname()}:{dead.pid} stopped during the run; found at the next start"
    assert loop.runs.get(alive).status is RunStatus.TRAINING
    assert loop.runs.get(elsewhere).status is RunStatus.TRAINING


# ------------------------------------------------------------------ status and the quick start
def test_status_summary_has_the_quick_start_keys(tmp_path, clock, make_loop, trainer, good_rows, log_rows) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config={**COUNT_5, "min_new_samples": 20},
                     generator_config=GEN)
    rows = good_rows[:20]
    log_rows(loop, rows, "base")
    ids = [loop.log_usage("unrated q", "unrated a", model="base", quality_score=0.5) for _ in range(5)]
    assert ids
    assert loop.run_iteration()["retrain"]["status"] == "deployed"
    summary = loop.get_status_summary()
    usage, status = summary["usage_stats"], summary["status"]
    assert usage["total"] == 25
    assert usage["feedback_rate"] == pytest.approx(20 / 25)
    assert usage["avg_quality_score"] == pytest.approx((sum(r["preference"] - 1 for r in rows) + 2.5) / 25)
    assert status["total_retrains"] == 1
    assert status["champion_model"] == "base"
    assert status["challenger_model"] == "base-ft1" and status["challenger_traffic"] == 0.1
    assert status["last_training_at"] == clock().isoformat()
    assert status["cooldown_until"] == (clock() + timedelta(hours=24)).isoformat()
    assert status["eligible_samples"] == 0 and status["min_new_samples"] == 20
    assert summary["experiment"]["challenger"] == "base-ft1"
    assert [r["status"] for r in summary["training_runs"]] == ["deployed"]
    # the quick start's dashboard lines run as written
    lines = [
        f"Total usage: {summary['usage_stats']['total']}",
        f"Feedback rate: {summary['usage_stats']['feedback_rate']*100:.1f}%",
        f"Avg quality: {summary['usage_stats']['avg_quality_score']:.3f}",
        f"Total retrains: {summary['status']['total_retrains']}",
        f"Champion model: {summary['status']['champion_model']}",
    ]
    assert lines[0] == "Total usage: 25" and lines[1] == "Feedback rate: 80.0%" and lines[4] == "Champion model: base"


def test_run_iteration_records_the_effective_configuration(tmp_path, clock, make_loop, store_url) -> None:
    import json

    from sqlalchemy.engine import make_url

    from afs_continuous import LoopConfig

    overrides: dict[str, Any] = {"trigger_config": {**NO_TRIGGERS, "min_new_samples": 300}}
    if not store_url.startswith("sqlite"):  # trust authentication ignores the password; it must never be recorded
        overrides["database_url"] = make_url(store_url).set(password="s3cret").render_as_string(hide_password=False)
    loop = make_loop(tmp_path, clock, **overrides)
    assert loop.store.get_state("daemon_config") is None  # opening a store (every worker does) records nothing
    loop.run_iteration()
    first = loop.store.get_state("daemon_config")
    assert first["recorded_at"] == clock().isoformat()
    assert first["config"]["trigger_config"]["min_new_samples"] == 300
    assert first["config"]["data_dir"] == str(tmp_path / "data")
    assert "s3cret" not in json.dumps(first)
    recorded = LoopConfig.model_validate({**first["config"], "database_url": loop.config.database_url})
    assert recorded == loop.config
    clock.advance(hours=1)
    loop.run_iteration()
    assert loop.store.get_state("daemon_config") == first  # unchanged configuration: nothing rewritten
    other = make_loop(tmp_path, clock, **{**overrides, "trigger_config": {**NO_TRIGGERS, "min_new_samples": 50}})
    other.run_iteration(manual=True, no_train=True)
    latest = other.store.get_state("daemon_config")
    assert latest["recorded_at"] == clock().isoformat() and latest["config"]["trigger_config"]["min_new_samples"] == 50


def test_quick_start_integration_flow(tmp_path, clock, make_loop, trainer) -> None:
    """The quick start's handler code, verbatim in spirit: route, log_usage, record_feedback, run_iteration."""
    loop = make_loop(tmp_path, clock, trigger_config={**COUNT_5, "min_new_samples": 10}, generator_config=GEN)

    def handle_query(query: str, user: str) -> tuple[str, str]:
        version = loop.route(unit_id=user)
        response = f"{version.name} says: {query[::-1]}"
        record_id = loop.log_usage(query=query, response=response, model=version.name, latency_ms=12.5,
                                   quality_score=0.9, unit_id=user)
        return response, record_id

    def handle_feedback(record_id: str, is_positive: bool) -> None:
        loop.record_feedback(record_id, feedback=1 if is_positive else -1)

    for i in range(12):
        _, rid = handle_query(f"question number {i}", f"user-{i}")
        handle_feedback(rid, is_positive=i % 6 != 0)
    result = loop.run_iteration(train_fn=trainer)
    assert result["retrain_triggered"]
    assert f"Retrained! Status: {result['retrain']['status']}" == "Retrained! Status: deployed"
    assert result["retrain"]["counts"]["new_samples"] == 10


# ------------------------------------------------------------------ closing, file permissions
def test_close_releases_every_postgresql_connection(tmp_path, clock) -> None:
    """After close() the database can be dropped (no connection of ours is left open)."""
    import os
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from afs_continuous import LoopConfig

    base = os.environ.get("AFS_TEST_DATABASE_URL", "")
    if not base.startswith("postgresql"):
        pytest.skip("needs AFS_TEST_DATABASE_URL=postgresql+psycopg://...")
    name = f"afs_close_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - no server or no right to create databases
        admin.dispose()
        pytest.skip(f"cannot create a database on AFS_TEST_DATABASE_URL: {type(exc).__name__}")
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    loop = None
    try:
        loop = ContinuousLearningLoop(LoopConfig(database_url=url, data_dir=str(tmp_path / "data")), clock=clock)
        log_good(loop, 3)
        assert loop.get_status_summary()["usage_stats"]["total"] == 3
        loop.close()
        with admin.connect() as conn:  # what `dropdb` does: fails while any session uses the database
            conn.execute(text(f'DROP DATABASE "{name}"'))
    finally:
        if loop is not None:
            loop.store.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_close_releases_the_sqlite_file(tmp_path, clock, make_loop) -> None:
    loop = make_loop(tmp_path, clock)
    if not loop.store.is_sqlite:
        pytest.skip("SQLite only")
    log_good(loop, 3)
    loop.close()
    assert not (tmp_path / "usage.db-wal").exists()  # the last connection closed checkpoints and removes the WAL


def test_store_and_data_files_are_private_under_umask_022(tmp_path, clock) -> None:
    """Store file, -wal, -shm: 0600; folders we create: 0700 (traffic is user data)."""
    import os
    import stat

    from afs_continuous import LoopConfig

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    old = os.umask(0o022)
    try:
        cfg = LoopConfig(db_path=str(home / "state" / "usage.db"), data_dir=str(home / "data" / "continuous"),
                         trigger_config=COUNT_5, generator_config={"min_samples": 5})
        loop = ContinuousLearningLoop(cfg, clock=clock)
        try:
            log_good(loop, 10)
            assert loop.run_iteration(manual=True, no_train=True)["retrain"]["status"] == "data_ready"
            modes = {p.relative_to(home).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in home.rglob("*")}
        finally:
            loop.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o755  # a folder the user already had is left alone
    for name in ("state/usage.db", "state/usage.db-wal", "state/usage.db-shm"):
        assert modes[name] == 0o600, (name, oct(modes[name]))
    folders = [n for n in modes if (home / n).is_dir()]
    assert {"state", "data", "data/continuous", "data/continuous/runs"} <= set(folders)
    for name in folders:
        assert modes[name] == 0o700, (name, oct(modes[name]))
    files = [n for n in modes if (home / n).is_file()]
    assert any(n.endswith(".jsonl") for n in files)
    for name in files:
        assert modes[name] & 0o077 == 0, (name, oct(modes[name]))


FULL_DISK_DAEMON = """
import json, logging, resource, signal, sys
from afs_continuous import ContinuousLearningLoop, LoopConfig, StoreError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the file-size limit fails (EFBIG), as on a full disk
db, data = sys.argv[1], sys.argv[2]
errors = []
class Collect(logging.Handler):
    def emit(self, record):
        errors.append((record.levelname, record.getMessage(), record.exc_info is not None))
logging.getLogger("afs_continuous").addHandler(Collect())
loop = ContinuousLearningLoop(LoopConfig(db_path=db, data_dir=data, check_interval_seconds=0.01,
                                         trigger_config={"min_new_samples": None, "schedule_interval_hours": None,
                                                         "quality_drop_threshold": None}))
loop.log_usage("q", "r", "base")
loop.logger.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))  # the disk is full now
out = {}
try:
    loop.run_iteration()
except StoreError as exc:
    out["iteration_error"] = str(exc)
def fill_disk(result):
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
# the disk fills after the first iteration: three failed iterations follow, and no exception
out["n"] = loop.run_loop(max_iterations=4, on_result=fill_disk)
out["logged"] = [e for e in errors if e[0] == "ERROR"]
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space returns
out["after"] = loop.run_iteration()["trigger"]["should_retrain"]
loop.close()
print(json.dumps(out))
"""


def test_full_disk_iteration_raises_store_error_and_run_loop_keeps_going(tmp_path: Path) -> None:
    import json

    db = tmp_path / "usage.db"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_DAEMON, str(db), str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert re.match(rf"could not run an iteration on the store {re.escape(str(db))}: (database or disk is full|disk I/O error)",
                    out["iteration_error"]), out["iteration_error"]
    assert out["n"] == 4
    failures = [msg for level, msg, _tb in out["logged"] if msg.startswith("iteration failed")]
    assert len(failures) == 3 and all("retrying at the next check" in m for m in failures)
    assert not any(tb for _level, _msg, tb in out["logged"])  # one line each, no traceback
    assert out["after"] is False  # the store works again


def test_status_on_a_full_store_is_one_line_exit_1(tmp_path: Path) -> None:
    """The store is full before status has ever run on it (it records its first start): exit 1, one line."""
    import resource
    import signal
    import sqlite3

    db = tmp_path / "usage.db"
    with UsageLogger(db) as lg:
        lg.log("q", "r", "base")
    keep = sqlite3.connect(db)  # keeps the shared-memory file, as a running service would
    keep.execute("SELECT count(*) FROM usage_records").fetchall()

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))

    try:
        proc = subprocess.run([sys.executable, "-m", "afs_continuous.cli", "status", "--db", str(db)],
                              capture_output=True, text=True, timeout=120, preexec_fn=full_disk)
    finally:
        keep.close()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(db) in lines[0], proc.stderr
    assert re.search(r"database or disk is full|disk I/O error", lines[0])
