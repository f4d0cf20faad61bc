"""Operator commands run as an operator runs them (subprocesses): the canary gate, dry runs, pinned baselines,
promote/rollback with who and why, and training-run reports (text, --json, --output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DAEMON = [sys.executable, str(ROOT / "scripts" / "continuous_loop.py")]
CLI = [sys.executable, "-m", "afs_continuous.cli"]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run a command as an operator would, with no AFS_CONTINUOUS_* variables but those in ``env``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("AFS_CONTINUOUS_")}
    full.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc

USER_MODULE = '''
import json, os, pathlib

GOLDEN = pathlib.Path(os.environ["GOLDEN"])


def train(data_path):
    """Train a lookup-table model (query -> answer) and save it as the adapter; FORGET=n blanks n golden answers."""
    answers = {}
    for line in open(data_path, encoding="utf-8"):
        by_role = {m["role"]: m["content"] for m in json.loads(line)["messages"]}
        answers[by_role["user"]] = by_role["assistant"]
    forget = [g["query"] for g in json.loads(GOLDEN.read_text())][: int(os.environ.get("FORGET", "0"))]
    answers.update({q: "" for q in forget})
    root = pathlib.Path(os.environ["ADAPTERS"])
    out = root / f"adapter-{len(list(root.glob('adapter-*'))) + 1 if root.exists() else 1}"
    out.mkdir(parents=True)
    (out / "answers.json").write_text(json.dumps(answers))
    return {"model_path": str(out), "n_train": len(answers)}


def evaluate(model_path):
    """Exact-match accuracy on the golden set."""
    answers = json.loads((pathlib.Path(model_path) / "answers.json").read_text())
    golden = json.loads(GOLDEN.read_text())
    return {"accuracy": sum(answers.get(g["query"]) == g["answer"] for g in golden) / len(golden)}


def broken_eval(model_path):
    raise RuntimeError("golden-set service unreachable")
'''


@pytest.fixture
def ops(tmp_path: Path) -> Path:
    (tmp_path / "user_ops.py").write_text(USER_MODULE)
    golden = [{"query": f"question number {i}", "answer": f"a good answer {i}"} for i in range(20)]
    (tmp_path / "golden.json").write_text(json.dumps(golden))
    base = tmp_path / "adapters-base"
    base.mkdir()
    (base / "answers.json").write_text(json.dumps({g["query"]: g["answer"] for g in golden[:10]}))
    config = {"db_path": str(tmp_path / "usage.db"), "data_dir": str(tmp_path / "data"), "check_interval_seconds": 0.05,
              "champion_model_path": str(base),
              "trigger_config": {"min_new_samples": 20, "cooldown_hours": 0},
              "training": {"canary_min_metrics": {"accuracy": 0.8}, "canary_max_regression": {"accuracy": 0.02}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    from afs_continuous import UsageLogger

    with UsageLogger(tmp_path / "usage.db") as logger:
        for i in range(30):
            rid = logger.log(f"question number {i}", f"a good answer {i}", "base", quality_score=0.9, latency_ms=12.5)
            logger.record_feedback(rid, 1)
    return tmp_path


def _env(ops: Path, **extra: str) -> dict[str, str]:
    return {"GOLDEN": str(ops / "golden.json"), "ADAPTERS": str(ops / "adapters"), **extra}


TRAIN = ["--config", "config.json", "--train-fn", "user_ops:train"]


def test_canary_gate_dry_run_pinned_baseline_and_reports(ops: Path) -> None:
    env = _env(ops)
    no_eval = run(DAEMON + TRAIN + ["--trigger"], ops, env=env)
    assert no_eval.returncode == 2 and "canary gate has thresholds" in no_eval.stderr and "--eval-fn" in no_eval.stderr
    unknown = run(DAEMON + TRAIN + ["--eval-fn", "user_ops:evaluate", "--baseline-version", "v-nope", "--trigger"], ops,
                  env=env)
    assert unknown.returncode == 2
    assert "--baseline-version: unknown model version 'v-nope' (known versions: base)" in unknown.stderr
    bad_spec = run(DAEMON + TRAIN + ["--eval-fn", "user_ops_typo:evaluate", "--trigger"], ops, env=env)
    assert bad_spec.returncode == 2 and "cannot import eval function module 'user_ops_typo'" in bad_spec.stderr
    assert json.loads(run(CLI + ["runs", "--config", "config.json", "--json"], ops, check=True).stdout) == []

    rejected = run(DAEMON + TRAIN + ["--eval-fn", "user_ops:evaluate", "--trigger", "--json"], ops,
                   env=_env(ops, FORGET="10"), check=True)
    retrain = json.loads(rejected.stdout)["retrain"]
    assert retrain["status"] == "rejected"
    assert retrain["canary"]["challenger"] == {"accuracy": 0.5} and retrain["canary"]["baseline"] == {"accuracy": 0.5}

    dry = run(DAEMON + TRAIN + ["--eval-fn", "user_ops:evaluate", "--trigger", "--dry-run", "--baseline-version", "base"],
              ops, env=env, check=True)
    assert "training run #2: dry_run" in dry.stdout and "dry run: would be deployed" in dry.stdout

    daemon = run(DAEMON + TRAIN + ["--eval-fn", "user_ops:evaluate", "--max-iterations", "1", "--json"], ops, env=env,
                 check=True)
    deployed = json.loads(daemon.stdout.splitlines()[0])["retrain"]
    assert deployed["status"] == "deployed" and deployed["canary"]["passed"] is True
    assert deployed["counts"]["new_samples"] == 30  # neither the rejected nor the dry run consumed the data

    listing = run(CLI + ["runs", "--config", "config.json"], ops, check=True).stdout.splitlines()
    assert [line.split()[3] for line in listing] == ["deployed", "dry_run", "rejected"]
    assert "accuracy 0.5000 below the floor 0.8000" in listing[2]
    only = json.loads(run(CLI + ["runs", "--config", "config.json", "--status", "rejected", "--json"], ops,
                          check=True).stdout)
    assert [r["id"] for r in only] == [1]

    human = run(CLI + ["report", "1", "--config", "config.json"], ops, check=True).stdout
    assert "Training run #1: rejected" in human and "Canary gate: FAILED" in human
    assert "Decision: rejected by canary gate" in human and "- accuracy 0.5000 below the floor 0.8000" in human
    pinned = json.loads(run(CLI + ["report", "2", "--config", "config.json", "--json"], ops, check=True).stdout)
    assert pinned["dry_run"] is True and pinned["baseline"]["pinned"] is True and pinned["baseline_version"] == "base"
    assert pinned["decision"]["would_deploy"] is True

    exported = run(CLI + ["report", "3", "--config", "config.json", "--output", "run-3.json", "--json"], ops, check=True)
    from_file = json.loads((ops / "run-3.json").read_text())
    assert from_file == json.loads(exported.stdout)
    assert "report of run 3 written to run-3.json" in exported.stderr
    assert from_file["model_version"] == "base-ft3" and from_file["experiment"]["status"] == "running"
    assert from_file["challenger"]["canary_metrics"] == {"accuracy": 1.0}

    missing = run(CLI + ["report", "99", "--config", "config.json"], ops)
    assert missing.returncode == 1 and "unknown training run 99 (runs are numbered 1 to 3" in missing.stderr


def test_an_eval_fn_that_raises_is_a_failed_run(ops: Path) -> None:
    proc = run(DAEMON + TRAIN + ["--eval-fn", "user_ops:broken_eval", "--trigger"], ops, env=_env(ops))
    assert proc.returncode == 1
    assert "training run #1: failed" in proc.stdout and "golden-set service unreachable" in proc.stdout
    versions = json.loads(run(CLI + ["versions", "--config", "config.json", "--json"], ops, check=True).stdout)
    assert [v["name"] for v in versions] == ["base"]


def test_promote_and_rollback_record_who_why_and_the_prior_champion(ops: Path) -> None:
    config = json.loads((ops / "config.json").read_text())
    config["training"] = {}
    (ops / "config.json").write_text(json.dumps(config))
    run(DAEMON + TRAIN + ["--trigger"], ops, env=_env(ops), check=True)

    promoted = run(CLI + ["promote", "base-ft1", "--reason", "offline eval looks good", "--actor", "alice",
                          "--config", "config.json"], ops, check=True)
    assert promoted.stdout.strip() == "champion is now base-ft1 (was base); recorded by alice: offline eval looks good"
    rolled = run(CLI + ["rollback", "--reason", "tone complaints", "--config", "config.json"], ops,
                 env={"USER": "bob"}, check=True)
    assert rolled.stdout.strip() == "champion is now base (was base-ft1); recorded by bob: tone complaints"
    again = run(CLI + ["rollback", "--config", "config.json", "--json"], ops, env={"USER": "bob"}, check=True)
    assert json.loads(again.stdout)["name"] == "base"

    versions = {v["name"]: v for v in json.loads(run(CLI + ["versions", "--config", "config.json", "--json"], ops,
                                                         check=True).stdout)}
    base, ft1 = versions["base"], versions["base-ft1"]
    assert (base["status"], ft1["status"]) == ("champion", "retired")
    last = base["history"][-1]
    assert (last["action"], last["actor"], last["reason"], last["prior_champion"]) == (
        "rollback", "bob", "tone complaints", "base-ft1")
    assert [(h["action"], h["actor"]) for h in ft1["history"]] == [("register", "daemon"), ("promote", "alice"),
                                                                   ("rolled_back", "bob")]
    assert ft1["metrics"]["n_train"] == 30 and ft1["training_run_id"] == 1 and ft1["parent"] == "base"

    text = run(CLI + ["versions", "--config", "config.json"], ops, check=True).stdout
    assert "rollback    by bob (prior champion base-ft1): tone complaints" in text
    assert "promote     by alice (prior champion base): offline eval looks good" in text
    assert "metrics  n_train=30" in text

    report = json.loads(run(CLI + ["report", "1", "--config", "config.json", "--json"], ops, check=True).stdout)
    assert report["status"] == "rolled_back"
    assert (report["decision"]["decided_by"], report["decision"]["reasons"]) == ("bob", ["tone complaints"])

    unknown = run(CLI + ["promote", "nope", "--config", "config.json"], ops)
    assert unknown.returncode == 1 and "unknown model version 'nope' (known versions: base, base-ft1)" in unknown.stderr


def test_promote_and_rollback_refuse_a_version_whose_folder_is_gone_unless_forced(ops: Path) -> None:
    """Issue 11 items 21 and 23: the report says the training file was deleted; promote/rollback to a version
    whose adapter folder is gone exits 1 with the reason and changes nothing, unless --force."""
    import shutil

    config = json.loads((ops / "config.json").read_text())
    config["training"] = {}
    (ops / "config.json").write_text(json.dumps(config))
    run(DAEMON + TRAIN + ["--trigger"], ops, env=_env(ops), check=True)

    report = run(CLI + ["report", "1", "--config", "config.json"], ops, check=True).stdout
    data = json.loads(run(CLI + ["report", "1", "--config", "config.json", "--json"], ops, check=True).stdout)
    assert not Path(data["data_path"]).exists() and data["data_deleted"] is True
    assert f"training data    {data['data_path']} (deleted after the run; keep_training_data=false)" in report

    versions = lambda: json.loads(run(CLI + ["versions", "--config", "config.json", "--json"], ops,  # noqa: E731
                                      check=True).stdout)
    before = versions()
    shutil.rmtree(before[1]["path"])
    refused = run(CLI + ["promote", "base-ft1", "--config", "config.json"], ops)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"model version 'base-ft1' has no files at '{before[1]['path']}'" in refused.stderr
    assert "--force" in refused.stderr
    assert versions() == before

    forced = run(CLI + ["promote", "base-ft1", "--force", "--config", "config.json"], ops, check=True)
    assert forced.stdout.startswith("champion is now base-ft1 (was base)")
    shutil.rmtree(ops / "adapters-base")
    after = versions()
    refused = run(CLI + ["rollback", "--config", "config.json"], ops)
    assert refused.returncode == 1 and "model version 'base' has no files at" in refused.stderr
    assert versions() == after
    run(CLI + ["rollback", "base", "--force", "--config", "config.json"], ops, check=True)
    assert [v["status"] for v in versions()] == ["champion", "retired"]
