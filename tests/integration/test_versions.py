"""Version operations on a real store: the canary gate, pinned baselines, dry runs, promote/rollback audit, run reports.

The user code here is real: ``LookupTrainer`` "trains" a lookup-table model on
the chat JSONL the loop hands it (query -> answer, the AlpacaEval answers the
judge preferred) and saves it as an adapter directory; ``golden_eval`` is a
canary that loads that directory and scores it on a fixed golden set (exact-match
accuracy, and a loss from the answers' character-level similarity). The
champion ``base`` is an adapter that knows half of the golden set.
"""

from __future__ import annotations

import difflib
import json
import threading
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from afs_continuous import ContinuousLearningLoop, NotFoundError, RunStatus, VersionStatus, load_config

NO_TRIGGERS = {"min_new_samples": None, "schedule_interval_hours": None, "quality_drop_threshold": None}
GEN = {"min_samples": 5, "include_existing_data": False}
GATE = {"canary_min_metrics": {"accuracy": 0.8}, "canary_max_regression": {"accuracy": 0.02}}


class LookupTrainer:
    """A user's train_fn: continues training a lookup-table model on each new chat JSONL and saves it.

    Attributes:
        forget: Golden queries the next model answers with "" (a bad run).
        calls: Data paths it was called with.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.memory: dict[str, str] = {}
        self.forget: set[str] = set()
        self.calls: list[str] = []

    def __call__(self, data_path: str) -> dict[str, Any]:
        self.calls.append(data_path)
        with open(data_path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        for row in rows:
            by_role = {m["role"]: m["content"] for m in row["messages"]}
            self.memory[by_role["user"]] = by_role["assistant"]
        answers = {q: ("" if q in self.forget else a) for q, a in self.memory.items()}
        out = self.root / f"adapter-{len(self.calls):03d}"
        out.mkdir(parents=True)
        (out / "answers.json").write_text(json.dumps(answers), encoding="utf-8")
        (out / "adapter_config.json").write_text(json.dumps({"r": 8, "n_train": len(rows)}), encoding="utf-8")
        return {"model_path": str(out), "n_train": len(rows)}


def golden_eval(golden_path: Path) -> Callable[[str], dict[str, float]]:
    """A user's eval_fn: exact-match accuracy and mean character distance of the model's answers on the golden set."""

    def evaluate(model_path: str) -> dict[str, float]:
        answers = json.loads((Path(model_path) / "answers.json").read_text(encoding="utf-8"))
        golden = json.loads(golden_path.read_text(encoding="utf-8"))
        hits, loss = 0, 0.0
        for item in golden:
            predicted = answers.get(item["query"], "")
            hits += predicted.strip() == item["answer"].strip()
            loss += 1.0 - difflib.SequenceMatcher(None, predicted, item["answer"]).ratio()
        return {"accuracy": hits / len(golden), "loss": loss / len(golden)}

    return evaluate


@pytest.fixture
def golden(tmp_path: Path, good_rows: list[dict[str, Any]]) -> SimpleNamespace:
    """20 judged-good AlpacaEval rows as the golden set; ``base`` (the champion's adapter) knows the first 10."""
    rows = good_rows[:20]
    path = tmp_path / "golden.json"
    path.write_text(json.dumps([{"query": r["instruction"], "answer": r["output"]} for r in rows]), encoding="utf-8")
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / "answers.json").write_text(json.dumps({r["instruction"]: r["output"] for r in rows[:10]}), encoding="utf-8")
    return SimpleNamespace(path=path, rows=rows, queries=[r["instruction"] for r in rows], base=base,
                           eval_fn=golden_eval(path), more=good_rows[20:40])


@pytest.fixture
def lookup(tmp_path: Path) -> LookupTrainer:
    return LookupTrainer(tmp_path / "models")


@pytest.fixture
def canary_loop(tmp_path, clock, make_loop, golden, lookup, log_rows) -> Callable[..., ContinuousLearningLoop]:
    """``canary_loop(training={...}, **config)``: a loop whose store holds the golden rows as fresh good traffic."""

    def factory(training: dict[str, Any] | None = None, **overrides: Any) -> ContinuousLearningLoop:
        loop = make_loop(tmp_path, clock, train_fn=lookup, champion_model_path=str(golden.base),
                         trigger_config=NO_TRIGGERS, generator_config=GEN, training=training or {}, **overrides)
        log_rows(loop, golden.rows, "base")
        return loop

    return factory


def snapshot(loop: ContinuousLearningLoop) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return [v.to_dict() for v in loop.registry.list()], [r.to_dict() for r in loop.runs.list(limit=None)]


# ------------------------------------------------------------------ the canary gate
def test_a_challenger_that_passes_the_canary_is_deployed_with_both_metric_sets(canary_loop, golden) -> None:
    loop = canary_loop(GATE)
    retrain = loop.run_iteration(manual=True, eval_fn=golden.eval_fn)["retrain"]
    assert retrain["status"] == "deployed", retrain
    canary = retrain["canary"]
    assert canary["passed"] is True
    assert canary["challenger"] == {"accuracy": 1.0, "loss": 0.0}
    assert canary["baseline"]["accuracy"] == 0.5 and canary["baseline"]["loss"] == pytest.approx(0.5)
    assert (canary["baseline_version"], canary["baseline_source"]) == ("base", "evaluated")
    assert canary["reasons"] == ["canary passed: accuracy 1.0000 >= 0.8000; accuracy 1.0000 vs base 0.5000 within 0.0200"]
    version = loop.registry.get("base-ft1")
    assert version.status is VersionStatus.CHALLENGER
    assert version.metrics["canary_metrics"] == {"accuracy": 1.0, "loss": 0.0}  # kept for later pinned comparisons

    report = loop.runs.get(retrain["run_id"]).to_dict()
    assert report["baseline"]["version"] == "base" and report["baseline"]["pinned"] is False
    assert report["baseline"]["canary_metrics"]["accuracy"] == 0.5
    assert report["challenger"]["canary_metrics"] == {"accuracy": 1.0, "loss": 0.0}
    assert report["challenger"]["model_path"] == version.path
    assert report["decision"]["status"] == "deployed" and report["decision"]["decided_by"] == "experiment"
    assert report["experiment"]["challenger"] == "base-ft1" and report["experiment"]["status"] == "running"


def test_a_challenger_below_a_floor_is_rejected_and_nothing_changes(canary_loop, golden, lookup, clock) -> None:
    loop = canary_loop(GATE)
    lookup.forget = set(golden.queries[:10])
    retrain = loop.run_iteration(manual=True, eval_fn=golden.eval_fn)["retrain"]
    assert retrain["status"] == "rejected"
    assert retrain["reasons"] == ["accuracy 0.5000 below the floor 0.8000"]  # as good as base: no regression
    assert [v.name for v in loop.registry.list()] == ["base"]
    assert loop.experiments.active() is None
    assert {loop.route(f"user-{i}").name for i in range(50)} == {"base"}
    assert Path(retrain["model_path"], "answers.json").is_file()  # the rejected adapter is left for inspection

    run = loop.runs.get(retrain["run_id"])
    assert run.status is RunStatus.REJECTED and run.finished_at == clock() and run.model_version is None
    report = run.to_dict()
    assert report["decision"]["decided_by"] == "canary gate"
    assert report["decision"]["reasons"] == retrain["reasons"]
    assert report["baseline"]["canary_metrics"]["accuracy"] == 0.5
    assert report["challenger"]["canary_metrics"]["accuracy"] == 0.5
    assert report["challenger"]["model_path"] == retrain["model_path"]
    assert loop.runs.count_trained() == 1  # it did train

    lookup.forget = set()
    again = loop.run_iteration(manual=True, eval_fn=golden.eval_fn)["retrain"]  # a rejected run consumed no data
    assert again["status"] == "deployed" and again["counts"]["new_samples"] == 20


def test_a_regression_against_the_champion_beyond_the_allowance_is_rejected(canary_loop, golden, lookup) -> None:
    loop = canary_loop({"canary_min_metrics": {"accuracy": 0.3}, "canary_max_regression": {"accuracy": 0.05}})
    lookup.forget = set(golden.queries[:12])  # 8/20 right; base knows 10/20
    retrain = loop.run_iteration(manual=True, eval_fn=golden.eval_fn)["retrain"]
    assert retrain["status"] == "rejected"
    assert retrain["reasons"] == ["accuracy 0.4000 is 0.1000 worse than base (0.5000); at most 0.0500 allowed"]
    checks = {c["rule"]: c for c in retrain["canary"]["checks"]}
    assert checks["min"]["passed"] is True and checks["max_regression"]["passed"] is False
    assert checks["max_regression"]["value"] == pytest.approx(0.1)


@pytest.mark.parametrize(("n_forgotten", "status"), [(0, "deployed"), (12, "rejected")])
def test_lower_is_better_metrics_regress_upwards(canary_loop, golden, lookup, n_forgotten, status) -> None:
    loop = canary_loop({"canary_max_metrics": {"loss": 0.9}, "canary_max_regression": {"loss": 0.0},
                        "canary_lower_is_better": ["loss"]})
    lookup.forget = set(golden.queries[:n_forgotten])
    retrain = loop.run_iteration(manual=True, eval_fn=golden.eval_fn)["retrain"]
    assert retrain["status"] == status, retrain.get("reasons")
    if status == "rejected":  # loss 0.6 vs base 0.5: worse by 0.1, none allowed
        [reason] = retrain["reasons"]
        assert reason.startswith("loss 0.6000 is 0.1000 worse than base (0.5000)")
    else:  # loss 0.0 vs 0.5 is an improvement, not a regression
        assert retrain["canary"]["checks"][1]["value"] == pytest.approx(-0.5)


def _raises(model_path: str) -> dict[str, float]:
    raise RuntimeError("golden set server unreachable")


@pytest.mark.parametrize(
    ("eval_fn", "message"),
    [
        (_raises, r"canary evaluation failed: eval_fn on the challenger \(.*adapter-001\): RuntimeError: golden set server unreachable"),
        (lambda p: None, r"canary evaluation failed: .*ValueError: eval_fn must return a dict of metric -> float for the challenger, got NoneType"),
        (lambda p: {"accuracy": float("nan")}, r".*non-finite value for metric 'accuracy' of the challenger: nan"),
        (lambda p: {"accuracy": "high"}, r".*eval_fn returned 'high' for metric 'accuracy' of the challenger; metrics must be numbers"),
        (lambda p: {"bleu": 0.3}, r".*eval_fn returned no 'accuracy' for the challenger \(it returned \['bleu'\]\)"),
    ],
)
def test_an_eval_fn_that_breaks_fails_the_run_not_the_daemon(canary_loop, eval_fn, message) -> None:
    loop = canary_loop(GATE)
    retrain = loop.run_iteration(manual=True, eval_fn=eval_fn)["retrain"]
    assert retrain["status"] == "failed"
    import re

    assert re.match(message, retrain["error"]), retrain["error"]
    run = loop.runs.get(retrain["run_id"])
    assert run.status is RunStatus.FAILED and "Traceback (most recent call last)" in run.error
    assert run.to_dict()["challenger"]["model_path"] == retrain["model_path"]
    assert [v.name for v in loop.registry.list()] == ["base"] and loop.experiments.active() is None


def test_an_eval_fn_failing_on_the_baseline_names_it(canary_loop, golden) -> None:
    def only_new_adapters(model_path: str) -> dict[str, float]:
        if model_path == str(golden.base):
            raise FileNotFoundError(f"{model_path}/answers.json was cleaned up")
        return golden.eval_fn(model_path)

    loop = canary_loop(GATE)
    retrain = loop.run_iteration(manual=True, eval_fn=only_new_adapters)["retrain"]
    assert retrain["status"] == "failed"
    assert retrain["error"].startswith(f"canary evaluation failed: eval_fn on the baseline 'base' ({golden.base}): "
                                       "FileNotFoundError")


def test_thresholds_without_an_eval_fn_fail_before_training(canary_loop, lookup) -> None:
    loop = canary_loop(GATE)
    retrain = loop.run_iteration(manual=True)["retrain"]
    assert retrain["status"] == "failed"
    assert retrain["error"].startswith("the canary gate has thresholds (training.canary_*) but no eval_fn")
    assert lookup.calls == []  # no GPU hours spent on a model that could not be checked


def test_a_hanging_eval_fn_times_out(canary_loop) -> None:
    release = threading.Event()

    def hangs(model_path: str) -> dict[str, float]:
        release.wait(30)
        return {"accuracy": 1.0}

    loop = canary_loop({**GATE, "eval_timeout_s": 0.2})
    try:
        retrain = loop.run_iteration(manual=True, eval_fn=hangs)["retrain"]
    finally:
        release.set()
    assert retrain["status"] == "failed"
    assert retrain["error"].endswith("TimeoutError: eval_fn did not return within 0.2 s (training.eval_timeout_s)")


def test_eval_fn_named_in_the_configuration(canary_loop, golden, lookup, tmp_path, monkeypatch) -> None:
    (tmp_path / "user_canary.py").write_text(
        "import json, pathlib\n"
        "def evaluate(model_path):\n"
        "    answers = json.loads((pathlib.Path(model_path) / 'answers.json').read_text())\n"
        f"    golden = json.loads(pathlib.Path({str(golden.path)!r}).read_text())\n"
        "    return {'accuracy': sum(answers.get(g['query']) == g['answer'] for g in golden) / len(golden)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loop = canary_loop({**GATE, "eval_fn": "user_canary:evaluate"})
    retrain = loop.run_iteration(manual=True)["retrain"]
    assert retrain["status"] == "deployed" and retrain["canary"]["challenger"] == {"accuracy": 1.0}

    loop.config.training.eval_fn = "user_canary_typo:evaluate"
    loop.log_usage("one more question", "one more answer", model="base", quality_score=0.9)
    for i in range(5):
        loop.record_feedback(loop.log_usage(f"extra {i}", f"answer {i}", model="base", quality_score=0.9), 1)
    failed = loop.run_iteration(manual=True)["retrain"]
    assert failed["status"] == "failed" and "cannot import eval function module 'user_canary_typo'" in failed["error"]
    assert len(lookup.calls) == 1  # checked before training


def test_the_constructor_eval_fn_is_the_default(tmp_path, clock, golden, lookup, log_rows) -> None:
    cfg = load_config(None, env={}, overrides={
        "db_path": str(tmp_path / "usage.db"), "data_dir": str(tmp_path / "data"), "route_cache_s": 0,
        "champion_model_path": str(golden.base), "trigger_config": NO_TRIGGERS, "generator_config": GEN,
        "training": GATE})
    with ContinuousLearningLoop(cfg, clock=clock, train_fn=lookup, eval_fn=golden.eval_fn) as loop:
        log_rows(loop, golden.rows, "base")
        lookup.forget = set(golden.queries)
        assert loop.run_iteration(manual=True)["retrain"]["status"] == "rejected"


# ------------------------------------------------------------------ dry runs
@pytest.mark.parametrize(("n_forgotten", "would_deploy"), [(0, True), (10, False)])
def test_a_dry_run_trains_and_evaluates_but_changes_nothing(canary_loop, golden, lookup, n_forgotten,
                                                            would_deploy) -> None:
    loop = canary_loop(GATE)
    lookup.forget = set(golden.queries[:n_forgotten])
    before_versions = [v.to_dict() for v in loop.registry.list()]
    retrain = loop.run_iteration(manual=True, dry_run=True, eval_fn=golden.eval_fn)["retrain"]
    assert retrain["status"] == "dry_run" and retrain["dry_run"] is True
    assert retrain["would_deploy"] is would_deploy
    assert retrain["canary"]["passed"] is would_deploy
    assert retrain["reasons"][-1] == "dry run: trained and evaluated, not deployed"
    assert [v.to_dict() for v in loop.registry.list()] == before_versions
    assert loop.experiments.active() is None
    run = loop.runs.get(retrain["run_id"])
    assert run.status is RunStatus.DRY_RUN and run.dry_run and run.error is None
    report = run.to_dict()
    assert report["dry_run"] is True and report["decision"]["decided_by"] == "dry run"
    assert report["decision"]["would_deploy"] is would_deploy
    assert report["challenger"]["canary_metrics"]["accuracy"] == 1.0 - n_forgotten / 20
    assert loop.runs.count_trained() == 0
    assert loop.run_iteration(manual=True, dry_run=True, eval_fn=golden.eval_fn)["retrain"]["counts"]["new_samples"] == 20


# ------------------------------------------------------------------ pinned baselines
def test_an_unknown_baseline_version_raises_before_anything_runs(canary_loop, golden, lookup) -> None:
    loop = canary_loop(GATE)
    with pytest.raises(NotFoundError, match=r"unknown model version 'v-nope' \(known versions: base\)"):
        loop.run_iteration(manual=True, eval_fn=golden.eval_fn, baseline_version="v-nope")
    loop.config.training.baseline_version = "v-also-nope"
    with pytest.raises(NotFoundError, match="unknown model version 'v-also-nope'"):
        loop.run_iteration(manual=True, eval_fn=golden.eval_fn)
    assert loop.runs.list() == [] and lookup.calls == []
    assert loop.store.get_state("last_iteration_at") is None


def test_a_pinned_baseline_is_the_canary_reference_and_the_champion_serves_the_test(
        canary_loop, golden, lookup, log_rows, clock) -> None:
    loop = canary_loop(GATE)
    assert loop.run_iteration(manual=True, eval_fn=golden.eval_fn)["retrain"]["status"] == "deployed"
    loop.promote("base-ft1", reason="canary 1.0 on the golden set", actor="alice")
    clock.advance(hours=1)
    log_rows(loop, golden.more, "base-ft1")
    lookup.forget = set(golden.queries[:6])  # 0.7: worse than base-ft1 (1.0), better than base (0.5)

    against_champion = loop.run_iteration(manual=True, eval_fn=golden.eval_fn)["retrain"]
    assert against_champion["status"] == "rejected" and against_champion["baseline_version"] == "base-ft1"
    assert against_champion["reasons"] == ["accuracy 0.7000 below the floor 0.8000",
                                           "accuracy 0.7000 is 0.3000 worse than base-ft1 (1.0000); at most 0.0200 allowed"]

    loop.config.training.canary_min_metrics = {}
    pinned = loop.run_iteration(manual=True, eval_fn=golden.eval_fn, baseline_version="base")["retrain"]
    assert pinned["status"] == "deployed", pinned
    assert pinned["baseline_version"] == "base" and pinned["canary"]["baseline"]["accuracy"] == 0.5
    report = loop.runs.get(pinned["run_id"]).to_dict()
    assert report["baseline"] == {"version": "base", "pinned": True, "canary_metrics": pinned["canary"]["baseline"],
                                  "canary_source": "evaluated", "online": None}
    assert report["experiment"]["champion"] == "base-ft1"  # online, the serving champion is the control arm
    assert loop.registry.get(pinned["model_version"]).parent == "base-ft1"


def test_a_pinned_baseline_from_the_configuration_and_stored_metrics(canary_loop, golden, lookup) -> None:
    loop = canary_loop({**GATE, "baseline_version": "golden-v0"})
    loop.registry.register("golden-v0", path=None, status=VersionStatus.RETIRED,
                           metrics={"canary_metrics": {"accuracy": 0.95}}, reason="imported from the old pipeline")
    loop.registry.register("no-metrics", path=None, status=VersionStatus.RETIRED, reason="imported, never evaluated")
    lookup.forget = set(golden.queries[:2])  # 0.9: 0.05 below golden-v0's stored 0.95
    retrain = loop.run_iteration(manual=True, eval_fn=golden.eval_fn)["retrain"]
    assert retrain["status"] == "rejected"
    assert retrain["canary"]["baseline_source"] == "stored"
    assert retrain["reasons"] == ["accuracy 0.9000 is 0.0500 worse than golden-v0 (0.9500); at most 0.0200 allowed"]

    lookup.forget = set()
    blind = loop.run_iteration(manual=True, eval_fn=golden.eval_fn, baseline_version="no-metrics")["retrain"]
    assert blind["status"] == "rejected"  # nothing to compare with: the regression check fails closed
    assert blind["reasons"][0].startswith("accuracy: no canary value for no-metrics to compare with")


# ------------------------------------------------------------------ promote / rollback, audited
def test_manual_promote_and_rollback_are_audited_and_reach_the_reports(canary_loop, golden, log_rows, clock) -> None:
    loop = canary_loop()
    first = loop.run_iteration(manual=True)["retrain"]
    assert first["status"] == "deployed" and first["model_version"] == "base-ft1"

    clock.advance(hours=1)
    promoted = loop.promote("base-ft1", reason="offline eval looks good", actor="alice")
    assert promoted.is_champion
    entry = promoted.history[-1]
    assert (entry["action"], entry["actor"], entry["reason"], entry["prior_champion"], entry["at"]) == (
        "promote", "alice", "offline eval looks good", "base", clock().isoformat())
    assert loop.experiments.history(1)[0].decision == "promote" and loop.experiments.active() is None
    report = loop.runs.get(first["run_id"]).to_dict()
    assert report["status"] == "promoted"
    assert report["decision"] == {"status": "promoted", "decided_by": "alice", "decided_at": clock().isoformat(),
                                  "reasons": ["offline eval looks good"], "action": "promote", "prior_champion": "base"}
    assert report["experiment"]["decision"] == "promote"

    clock.advance(hours=1)
    restored = loop.rollback(reason="support tickets about tone", actor="bob")
    assert restored.name == "base" and restored.history[-1]["prior_champion"] == "base-ft1"
    assert restored.history[-1]["actor"] == "bob"
    report = loop.runs.get(first["run_id"]).to_dict()
    assert report["status"] == "rolled_back"
    assert (report["decision"]["decided_by"], report["decision"]["action"], report["decision"]["reasons"]) == (
        "bob", "rolled_back", ["support tickets about tone"])
    assert [h["action"] for h in report["version"]["history"]] == ["register", "promote", "rolled_back"]
    before = snapshot(loop)
    assert loop.rollback(actor="bob").name == "base"  # idempotent
    assert snapshot(loop) == before

    # promoting another version while a challenger is under test ends that test
    clock.advance(hours=1)
    log_rows(loop, golden.more, "base")
    second = loop.run_iteration(manual=True)["retrain"]
    assert second["status"] == "deployed" and second["model_version"] == "base-ft2"
    loop.promote("base-ft1", reason="ft1 was fine after all", actor="carol")
    report = loop.runs.get(second["run_id"]).to_dict()
    assert report["status"] == "rejected" and report["experiment"]["decision"] == "stop"
    assert report["decision"]["decided_by"] == "carol"
    assert report["decision"]["reasons"] == ["experiment ended by manual promotion of base-ft1: ft1 was fine after all"]
    assert loop.runs.get(first["run_id"]).status is RunStatus.PROMOTED

    before = snapshot(loop)
    with pytest.raises(NotFoundError, match=r"unknown model version 'base-ft9' \(known versions: base, base-ft1, base-ft2\)"):
        loop.rollback("base-ft9", actor="dave")
    with pytest.raises(NotFoundError, match="unknown model version 'base-ft9'"):
        loop.promote("base-ft9", actor="dave")
    assert snapshot(loop) == before


def test_promote_and_rollback_refuse_a_version_whose_files_are_gone_unless_forced(canary_loop, golden, log_rows,
                                                                                    clock) -> None:
    """Issue 11 item 23: making a version champion whose adapter folder was deleted would serve from nothing."""
    import shutil

    loop = canary_loop()
    first = loop.run_iteration(manual=True)["retrain"]
    ft1 = loop.registry.get("base-ft1")
    shutil.rmtree(ft1.path)
    before = snapshot(loop)
    with pytest.raises(NotFoundError, match=r"model version 'base-ft1' has no files at '.*': its path is gone.*force"):
        loop.promote("base-ft1", actor="alice")
    assert snapshot(loop) == before  # nothing changed, the experiment still runs
    assert loop.experiments.active() is not None

    forced = loop.promote("base-ft1", actor="alice", reason="files restored elsewhere", force=True)
    assert forced.is_champion and loop.runs.get(first["run_id"]).status is RunStatus.PROMOTED

    # rollback to the initial champion: its folder (champion_model_path) is gone too
    base_path = loop.registry.get("base").path
    assert base_path
    shutil.rmtree(base_path)
    before = snapshot(loop)
    with pytest.raises(NotFoundError, match=r"model version 'base' has no files at"):
        loop.rollback(actor="bob")
    with pytest.raises(NotFoundError, match=r"model version 'base' has no files at"):
        loop.rollback("base", actor="bob")
    assert snapshot(loop) == before
    assert loop.rollback(actor="bob", force=True).name == "base"


def test_a_version_without_a_path_can_be_promoted_and_restored(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=NO_TRIGGERS, generator_config=GEN)
    assert loop.registry.get("base").path is None
    for i in range(5):
        loop.record_feedback(loop.log_usage(f"question {i}", f"answer {i}", "base", quality_score=0.9), 1)
    assert loop.logger.flush(timeout_s=30)
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "deployed"
    assert loop.promote("base-ft1").is_champion
    assert loop.rollback().name == "base"  # no path recorded: nothing to check


def test_runs_are_listed_newest_first_and_filtered_by_status(canary_loop, golden, lookup) -> None:
    loop = canary_loop(GATE)
    lookup.forget = set(golden.queries)
    loop.run_iteration(manual=True, eval_fn=golden.eval_fn)                 # 1 rejected
    loop.run_iteration(manual=True, eval_fn=golden.eval_fn, dry_run=True)   # 2 dry_run
    lookup.forget = set()
    loop.run_iteration(manual=True, eval_fn=golden.eval_fn)                 # 3 deployed
    assert [(r.id, r.status.value) for r in loop.runs.list()] == [(3, "deployed"), (2, "dry_run"), (1, "rejected")]
    assert [r.id for r in loop.runs.list(status="rejected")] == [1]
    assert [r.id for r in loop.runs.list(status=RunStatus.DRY_RUN)] == [2]
    assert [r.id for r in loop.runs.list(limit=1)] == [3]
    with pytest.raises(NotFoundError, match=r"unknown training run 7 \(runs are numbered 1 to 3"):
        loop.runs.get(7)
    with pytest.raises(ValueError, match="'finished' is not a valid RunStatus"):
        loop.runs.list(status="finished")


def test_every_report_is_json_and_has_the_audit_fields(canary_loop, golden, lookup) -> None:
    loop = canary_loop(GATE)
    lookup.forget = set(golden.queries)
    loop.run_iteration(manual=True, eval_fn=golden.eval_fn)
    lookup.forget = set()
    loop.run_iteration(manual=True, eval_fn=golden.eval_fn)
    for run in loop.runs.list():
        report = json.loads(json.dumps(run.to_dict()))
        assert {"id", "status", "trigger", "trigger_details", "counts", "source_start", "source_end", "baseline",
                "challenger", "canary", "decision", "model_version", "dry_run", "experiment", "version"} <= set(report)
        assert list(report["counts"])[:2] == ["candidates", "after_quality"]  # pipeline order, not alphabetical
        assert report["source_start"] is not None and report["decision"]["reasons"]


# ------------------------------------------------------------------ decisions by the experiment and the drift monitor
CHAMPION = "FuseChat-Llama-3.2-3B"
CHALLENGER = f"{CHAMPION}-ft1"


def _replay(loop: ContinuousLearningLoop, clock: Any, answers: dict[str, list[dict[str, Any]]], n: int,
            hours: float, start: int = 0) -> None:
    step = timedelta(hours=hours) / n
    for i in range(start, start + n):
        uid = f"user-{i}"
        version = loop.route(uid)
        row = answers[version.name][i % len(answers[version.name])]
        loop.log_usage(row["instruction"], row["output"], model=version.name, unit_id=uid,
                       quality_score=row["preference"] - 1.0, latency_ms=250.0)
        clock.advance(step)
    assert loop.logger.flush(timeout_s=30)


@pytest.fixture
def quick_experiment(tmp_path, clock, make_loop, trainer, alpaca, log_rows) -> ContinuousLearningLoop:
    loop = make_loop(tmp_path, clock, train_fn=trainer, champion_model=CHAMPION, trigger_config=NO_TRIGGERS,
                     generator_config=GEN, ab_test_config={"min_samples_per_arm": 150, "min_duration_hours": 2,
                                                           "initial_challenger_traffic": 0.5,
                                                           "rollback_watch_hours": 24})
    clock.advance(hours=-1)
    log_rows(loop, [r for r in alpaca(CHAMPION) if r["preference"] > 1.7][:20], CHAMPION)
    clock.advance(hours=1)
    assert loop.run_iteration(manual=True)["retrain"]["model_version"] == CHALLENGER
    return loop


def test_the_report_carries_the_experiment_promotion_and_the_drift_rollback(quick_experiment, clock, alpaca) -> None:
    loop = quick_experiment
    t0 = clock()
    _replay(loop, clock, {CHAMPION: alpaca(CHAMPION), CHALLENGER: alpaca("FuseChat-Llama-3.1-8B")}, 3000, hours=3)
    clock.set(t0 + timedelta(hours=3))
    ev = loop.run_iteration()["experiment"]
    assert ev["decision"] == "promote", ev["reasons"]
    report = loop.runs.get(1).to_dict()
    assert report["status"] == "promoted"
    decision = report["decision"]
    assert decision["decided_by"] == "daemon" and decision["action"] == "promote"
    assert decision["reasons"][0].startswith("lift +") and "significant" in decision["reasons"][0]
    assert report["experiment"]["decision"] == "promote" and report["experiment"]["reasons"] == decision["reasons"]
    assert report["baseline"]["online"]["model"] == CHAMPION and report["challenger"]["online"]["model"] == CHALLENGER
    assert report["challenger"]["online"]["mean"] > report["baseline"]["online"]["mean"]

    # the new champion then serves worse answers than the old one did: the drift monitor rolls it back
    _replay(loop, clock, {CHALLENGER: alpaca("FuseChat-Llama-3.2-1B")}, 600, hours=2, start=5000)
    result = loop.run_iteration()
    assert result["drift"]["rollback"] is True
    report = loop.runs.get(1).to_dict()
    assert report["status"] == "rolled_back"
    assert report["decision"]["decided_by"] == "drift-monitor" and report["decision"]["action"] == "rolled_back"
    assert report["decision"]["reasons"][0].startswith(f"{CHALLENGER} dropped significantly after promotion")
    assert loop.registry.champion().name == CHAMPION


def test_the_drift_monitor_does_not_roll_back_to_a_version_whose_files_are_gone(
        tmp_path, clock, make_loop, trainer, alpaca, log_rows, caplog) -> None:
    """Issue 11 item 23: the automatic rollback follows the same rule as the operator's (no --force): it keeps
    the champion, says why at error level, and ends the watch instead of failing every iteration."""
    import shutil

    base_weights = tmp_path / "base-weights"
    base_weights.mkdir()
    loop = make_loop(tmp_path, clock, train_fn=trainer, champion_model=CHAMPION, champion_model_path=str(base_weights),
                     trigger_config=NO_TRIGGERS, generator_config=GEN,
                     ab_test_config={"min_samples_per_arm": 150, "min_duration_hours": 2,
                                     "initial_challenger_traffic": 0.5, "rollback_watch_hours": 24})
    clock.advance(hours=-1)
    log_rows(loop, [r for r in alpaca(CHAMPION) if r["preference"] > 1.7][:20], CHAMPION)
    clock.advance(hours=1)
    assert loop.run_iteration(manual=True)["retrain"]["model_version"] == CHALLENGER
    t0 = clock()
    _replay(loop, clock, {CHAMPION: alpaca(CHAMPION), CHALLENGER: alpaca("FuseChat-Llama-3.1-8B")}, 3000, hours=3)
    clock.set(t0 + timedelta(hours=3))
    assert loop.run_iteration()["experiment"]["decision"] == "promote"

    shutil.rmtree(base_weights)
    _replay(loop, clock, {CHALLENGER: alpaca("FuseChat-Llama-3.2-1B")}, 600, hours=2, start=5000)
    result = loop.run_iteration()
    drift = result["drift"]
    assert drift["rollback"] is False
    from afs_continuous._report import format_iteration

    assert f"  NOT ROLLED BACK: model version {CHAMPION!r} has no files at" in format_iteration(result)
    assert drift["rollback_refused"].startswith(f"model version {CHAMPION!r} has no files at")
    assert loop.registry.champion().name == CHALLENGER
    assert "not rolled back to" in caplog.text and loop.monitor.active() is None
    assert loop.run_iteration()["drift"] is None  # the watch ended: no error on every later iteration


def test_the_report_carries_an_experiment_stop(quick_experiment, clock, alpaca) -> None:
    loop = quick_experiment
    _replay(loop, clock, {CHAMPION: alpaca(CHAMPION), CHALLENGER: alpaca("FuseChat-Llama-3.2-1B")}, 1200, hours=1)
    assert loop.run_iteration()["experiment"]["decision"] == "stop"
    report = loop.runs.get(1).to_dict()
    assert report["status"] == "rejected" and report["experiment"]["decision"] == "stop"
    assert report["decision"]["decided_by"] == "daemon" and report["decision"]["action"] == "retire"
    assert report["decision"]["reasons"][0].startswith("challenger significantly worse: lift -")


# ------------------------------------------------------------------ configuration of the gate
@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"canary_max_metrics": {"loss": 2.0}, "canary_max_regression": {"loss": 0.1}},
         "canary_max_regression names 'loss', which has a ceiling in canary_max_metrics .* add it there"),
        ({"canary_max_regression": {"accuracy": -0.02}},
         r"training.canary_max_regression: .*'accuracy': allowed regression must be >= 0 \(an absolute amount\), got -0.02"),
        ({"canary_min_metrics": {"accuracy": float("inf")}},
         r"training\.canary_min_metrics\.accuracy: Input should be a finite number \(got inf\)"),
        ({"canary_min_metrics": {"accuracy": "high"}}, "training.canary_min_metrics.accuracy: Input should be a valid number"),
        ({"canary_max_regresion": {"accuracy": 0.02}}, "did you mean 'canary_max_regression'"),
    ],
)
def test_bad_gate_configuration_is_refused_at_load_time(training, message) -> None:
    from afs_continuous import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, env={}, overrides={"training": training})


def test_gate_configuration_from_the_environment() -> None:
    cfg = load_config(None, env={"AFS_CONTINUOUS_TRAINING__CANARY_MIN_METRICS": '{"accuracy": 0.8}',
                                 "AFS_CONTINUOUS_TRAINING__EVAL_FN": "my_eval:evaluate",
                                 "AFS_CONTINUOUS_TRAINING__BASELINE_VERSION": "base-ft3"})
    assert cfg.training.canary_min_metrics == {"accuracy": 0.8} and cfg.training.canary_thresholds_set
    assert (cfg.training.eval_fn, cfg.training.baseline_version) == ("my_eval:evaluate", "base-ft3")


def test_the_cli_offers_every_run_status() -> None:
    from afs_continuous.cli import _RUN_STATUSES

    assert _RUN_STATUSES == [s.value for s in RunStatus]
