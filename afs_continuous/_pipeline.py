"""The retrain pipeline: one training run from data to deployment (or rejection), recorded as a report.

Steps, each recorded on the run row:

1. build the training set (``skipped`` when too few new samples);
2. stop at ``data_ready`` when no training function is given (``--no-train``);
3. ``train_fn(data_path)`` (``failed`` when it raises, times out or returns an unusable result);
4. the canary gate: ``eval_fn`` on the challenger and on the baseline (the
   pinned version, else the champion), thresholds of
   :class:`~afs_continuous.config.TrainingConfig` (``rejected`` when it fails,
   ``failed`` when eval_fn raises);
5. ``dry_run``: stop here, nothing deployed, no data consumed;
6. register the version and start its experiment (``deployed``), or make it
   champion at once without A/B testing (``promoted``); mark the records used.

A run that fails or is rejected before deployment consumes no data: the next
run reconsiders the same records (plus newer ones) after the cooldown.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping

from ._canary import CanaryResult, EvalFn, check_metrics, judge
from ._imports import import_callable
from .config import LoopConfig
from .errors import TrainingError
from .experiment import ExperimentManager
from .generator import GenerationResult, TrainingDataGenerator
from .registry import ModelRegistry, ModelVersion, VersionStatus
from .runs import RunStatus, TrainingRunLog
from .serving import EngineError
from .store import Store
from .triggers import TriggerChecker, TriggerResult, TriggerType
from .clock import utc_now

__all__ = ["RetrainPipeline", "TrainFn"]

log = logging.getLogger("afs_continuous")

TrainFn = Callable[[str], Mapping[str, Any]]


class _LeaseLost(Exception):
    """This daemon no longer holds the store's lease: it must not deploy."""


class RetrainPipeline:
    """Runs one training run for :class:`~afs_continuous.loop.ContinuousLearningLoop`.

    Args:
        config: The loop configuration.
        store, registry, experiments, generator, runs, triggers: The loop's components.
        on_deploy: Called after the registry changed (the loop drops its routing cache).
        is_leader: Called inside the deploy transaction; False (the daemon's lease was
            lost, e.g. it expired during a long training run) aborts the deployment.
        serving: The loop's :class:`~afs_continuous._serving.ServingSupport`: a new version is
            loaded on every replica before it is registered (None: no engine).
    """

    def __init__(self, config: LoopConfig, store: Store, registry: ModelRegistry, experiments: ExperimentManager,
                 generator: TrainingDataGenerator, runs: TrainingRunLog, triggers: TriggerChecker, *,
                 on_deploy: Callable[[], None], is_leader: Callable[[Any], bool] | None = None,
                 serving: Any = None) -> None:
        self.config = config
        self.serving = serving
        self.is_leader = is_leader
        self.store = store
        self.registry = registry
        self.experiments = experiments
        self.generator = generator
        self.runs = runs
        self.triggers = triggers
        self.on_deploy = on_deploy

    def run(self, trig: TriggerResult, train_fn: TrainFn | None, *, eval_fn: EvalFn | str | None = None,
            dry_run: bool = False, baseline: ModelVersion | None = None,
            data_only_reason: str | None = None) -> dict[str, Any]:
        """Run the pipeline once; returns the ``retrain`` part of the iteration result.

        Args:
            trig: The trigger check that fired.
            train_fn: The training function (None: prepare data only).
            eval_fn: The canary evaluation, or its ``module:function`` name (None: no canary).
            dry_run: Train and evaluate, neither deploy nor consume data.
            baseline: The pinned baseline version (None: the champion).
            data_only_reason: Why ``train_fn`` is None (reported on a ``data_ready`` run).
        """
        trigger = trig.trigger.value if trig.trigger else "manual"
        run_id = self.runs.create(trigger, trig.to_dict(), dry_run=dry_run)
        base = baseline if baseline is not None else self.registry.champion()
        gate: dict[str, Any] = {"baseline_version": base.name if base else None, "baseline_pinned": baseline is not None}
        if train_fn is None and data_only_reason:
            gate["data_only_reason"] = data_only_reason
        self.runs.update(run_id, decision=gate)
        report: dict[str, Any] = {"run_id": run_id, "trigger": trigger, "dry_run": dry_run,
                                  "baseline_version": gate["baseline_version"]}
        watermark = self.triggers.state()["data_watermark"]
        try:
            gen = self.generator.generate(after=watermark, until=trig.checked_at, name=f"run-{run_id:05d}")
        except Exception as exc:  # noqa: BLE001 - a broken run must not crash the daemon
            return self._fail(run_id, report, f"data generation failed: {type(exc).__name__}: {exc}", exc)
        report["counts"] = gen.counts
        report["data_path"] = str(gen.output_path) if gen.output_path else None
        self.runs.update(run_id, counts=gen.counts, data_path=report["data_path"], source_start=gen.source_start,
                         source_end=gen.source_end)
        log.info("run %d data: %s", run_id, ", ".join(f"{k}={v}" for k, v in gen.counts.items()))
        try:
            return self._train_and_decide(run_id, report, gate, gen, trig, train_fn, eval_fn, dry_run, base)
        finally:
            gen.close()  # the spool of new samples; the training files stay unless the deployment removed them

    def _train_and_decide(self, run_id: int, report: dict[str, Any], gate: dict[str, Any], gen: GenerationResult,
                          trig: TriggerResult, train_fn: TrainFn | None, eval_fn: EvalFn | str | None,
                          dry_run: bool, base: ModelVersion | None) -> dict[str, Any]:
        if gen.output_path is None:
            reason = (f"only {gen.n_new} new samples after filtering, need at least "
                      f"{self.config.generator_config.min_samples}; train_fn not called")
            self.runs.update(run_id, status=RunStatus.SKIPPED, error=reason, finished=True)
            return {**report, "status": RunStatus.SKIPPED.value, "reason": reason}
        if train_fn is None:
            if not trig.trigger == TriggerType.MANUAL:
                self.store.set_state("last_training_at", trig.checked_at)
            self.runs.update(run_id, status=RunStatus.DATA_READY, finished=True)
            why = gate.get("data_only_reason")
            if why:
                log.warning("run %d: %s", run_id, why)
            return {**report, "status": RunStatus.DATA_READY.value, **({"reason": why} if why else {})}
        try:  # before training: a gate that cannot run must not cost a training run
            evaluate = self._eval_fn(eval_fn)
        except Exception as exc:  # noqa: BLE001
            return self._fail(run_id, report, str(exc), None)
        self.store.set_state("last_training_at", trig.checked_at)
        self.runs.update(run_id, status=RunStatus.TRAINING)
        try:
            outcome = _call(train_fn, gen.output_path, self.config.training.timeout_s, "train_fn", "timeout_s")
            model_path = self._check_outcome(outcome, base)
        except Exception as exc:  # noqa: BLE001 - reported as a failed run, the daemon keeps going
            return self._fail(run_id, report, f"{type(exc).__name__}: {exc}", exc)
        except BaseException as exc:  # Ctrl-C / SystemExit: record it, then let it stop the process
            self._interrupted(run_id, exc, "train_fn")
            raise
        metrics = {**{k: v for k, v in outcome.items() if _jsonable(v)}, "model_path": model_path}
        report.update(metrics=metrics, model_path=model_path)
        gate["model_path"] = model_path
        self.runs.update(run_id, metrics=metrics, decision=gate)
        canary = None
        if evaluate is not None:
            try:
                canary = self._canary(evaluate, model_path, base)
            except Exception as exc:  # noqa: BLE001 - eval_fn is user code: a failed run, not a crash
                return self._fail(run_id, report, f"canary evaluation failed: {exc}", exc)
            except BaseException as exc:
                self._interrupted(run_id, exc, "eval_fn")
                raise
            gate["canary"] = report["canary"] = canary.to_dict()
        if dry_run:
            would = canary is None or canary.passed
            reasons = [*(canary.reasons if canary else []), "dry run: trained and evaluated, not deployed"]
            self.runs.update(run_id, status=RunStatus.DRY_RUN, decision=gate, finished=True)
            log.info("run %d (dry run) would %sbe deployed", run_id, "" if would else "not ")
            return {**report, "status": RunStatus.DRY_RUN.value, "would_deploy": would, "reasons": reasons}
        if canary is not None and not canary.passed:
            self.runs.update(run_id, status=RunStatus.REJECTED, decision=gate, finished=True)
            log.warning("run %d rejected by the canary gate: %s", run_id, "; ".join(canary.reasons))
            return {**report, "status": RunStatus.REJECTED.value, "reasons": canary.reasons}
        self.runs.update(run_id, decision=gate)
        return self._deploy(run_id, report, gen, model_path, metrics, canary, gate)

    # ---- steps ----------------------------------------------------------------------------

    def _eval_fn(self, eval_fn: EvalFn | str | None) -> EvalFn | None:
        cfg = self.config.training
        if isinstance(eval_fn, str):
            return import_callable(eval_fn, "eval function")
        if eval_fn is None and cfg.canary_thresholds_set:
            raise TrainingError(
                "the canary gate has thresholds (training.canary_*) but no eval_fn to measure them: pass "
                "eval_fn=... to the loop or run_iteration, --eval-fn on the command line, or set training.eval_fn"
            )
        return eval_fn

    def _check_outcome(self, outcome: Any, baseline: ModelVersion | None) -> str:
        if not isinstance(outcome, Mapping):
            raise ValueError(f"train_fn must return a dict with 'model_path', got {type(outcome).__name__}: {outcome!r}")
        model_path = outcome.get("model_path")
        if not isinstance(model_path, (str, os.PathLike)) or not str(model_path):
            raise ValueError(f"train_fn result has no 'model_path' (keys: {sorted(outcome)})")
        model_path = str(model_path)
        new = Path(model_path).expanduser()
        if not new.exists():
            raise ValueError(f"train_fn returned model_path {model_path!r}, which does not exist")
        if not (new.is_dir() or new.is_file()):
            raise ValueError(f"train_fn returned model_path {model_path!r}, which is neither a directory nor a file "
                             "(expected the saved model: an adapter folder, or a weights file for engines that take one)")
        resolved = new.resolve()  # stored absolute: the daemon's current directory must not change its meaning
        champion = self.registry.champion()
        for who, version in (("champion", champion), ("baseline", baseline)):
            if version is not None and version.path and Path(version.path).expanduser().resolve() == resolved:
                raise ValueError(f"train_fn returned the {who}'s own path {model_path!r}; a new model must be saved elsewhere")
        if str(resolved) != model_path:
            log.info("train_fn returned model_path %r; stored as %s", model_path, resolved)
        return str(resolved)

    def _canary(self, eval_fn: EvalFn, model_path: str, base: ModelVersion | None) -> CanaryResult:
        cfg = self.config.training
        try:
            challenger = check_metrics(_call(eval_fn, model_path, cfg.eval_timeout_s, "eval_fn", "eval_timeout_s"),
                                       "challenger")
        except Exception as exc:
            raise TrainingError(f"eval_fn on the challenger ({model_path}): {type(exc).__name__}: {exc}") from exc
        baseline: dict[str, float] | None = None
        source = None
        if base is not None and base.path:
            try:
                baseline = check_metrics(_call(eval_fn, base.path, cfg.eval_timeout_s, "eval_fn", "eval_timeout_s"),
                                         f"baseline {base.name!r}")
            except Exception as exc:
                raise TrainingError(
                    f"eval_fn on the baseline {base.name!r} ({base.path}): {type(exc).__name__}: {exc}") from exc
            source = "evaluated"
        elif base is not None and isinstance(base.metrics.get("canary_metrics"), dict):
            baseline, source = dict(base.metrics["canary_metrics"]), "stored"
        passed, reasons, checks = judge(challenger, baseline, cfg, baseline_version=base.name if base else None)
        thresholds = {"min_metrics": cfg.canary_min_metrics, "max_metrics": cfg.canary_max_metrics,
                      "max_regression": cfg.canary_max_regression, "lower_is_better": cfg.canary_lower_is_better}
        return CanaryResult(passed, reasons, checks, challenger, baseline, base.name if base else None, source,
                            thresholds)

    def _fail(self, run_id: int, report: dict[str, Any], reason: str, exc: BaseException | None) -> dict[str, Any]:
        detail = reason
        if exc is not None:
            detail += "\n\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("training run %d failed: %s", run_id, reason)
        self.runs.update(run_id, status=RunStatus.FAILED, error=detail, finished=True)
        return {**report, "status": RunStatus.FAILED.value, "error": reason}

    def _interrupted(self, run_id: int, exc: BaseException, where: str) -> None:
        self.runs.update(run_id, status=RunStatus.INTERRUPTED, finished=True,
                         error=f"interrupted by {type(exc).__name__} during {where}")

    def _deploy(self, run_id: int, report: dict[str, Any], gen: GenerationResult, model_path: str,
                metrics: dict[str, Any], canary: CanaryResult | None, gate: dict[str, Any]) -> dict[str, Any]:
        champion = self.registry.champion()
        name = f"{self.config.champion_model}-ft{run_id}"
        ab = self.config.enable_ab_testing
        version_metrics = {**metrics, "canary_metrics": canary.challenger} if canary is not None else metrics
        candidate = ModelVersion(name=name, path=model_path, status=VersionStatus.CHALLENGER if ab else
                                 VersionStatus.CHAMPION, created_at=utc_now(), training_run_id=run_id)
        if self.serving is not None:
            try:  # before the registry changes: no traffic reaches a version the engine cannot serve
                self.serving.load(candidate)
            except EngineError as exc:
                return self._deploy_failed(run_id, report, gate, name, exc)
        try:
            with self.store.write() as conn:
                if self.is_leader is not None and not self.is_leader(conn):
                    raise _LeaseLost
                status = VersionStatus.CHALLENGER if ab else VersionStatus.CHAMPION
                self.registry.register(name, path=model_path, status=status, parent=champion.name if champion else None,
                                       training_run_id=run_id, metrics=version_metrics,
                                       reason=f"trained by run {run_id} ({report['trigger']})", conn=conn)
                replaced = self.experiments.active(conn=conn)
                if replaced is not None:  # a manual run while a challenger was under test replaces it
                    self.runs.set_outcome(replaced.challenger, RunStatus.REJECTED, conn=conn)
                if ab:
                    fixed = self.config.ab_test_config.assignment_seed
                    exp = self.experiments.start(champion.name if champion else self.config.champion_model, name,
                                                 seed=None if fixed is None else f"{fixed}:{name}", conn=conn)
                    report["experiment_id"] = exp.id
                self.generator.mark_trained(gen, run_id, conn=conn)  # streamed from the result's spool, in batches
                grace = timedelta(hours=self.config.generator_config.late_arrival_hours)
                self.store.set_state("data_watermark", gen.until - grace if gen.until else None, conn=conn)
                self.store.set_state("eligible_samples", None, conn=conn)  # consumed: the status recounts
                run_status = RunStatus.DEPLOYED if ab else RunStatus.PROMOTED
                self.runs.update(run_id, status=run_status, model_version=name, finished=True, conn=conn)
        except _LeaseLost:
            error = ("lost the daemon lease during training (another daemon took over the store); "
                     "not deployed, no data consumed")
            log.error("run %d: %s", run_id, error)
            if self.serving is not None:
                self.serving.unload(candidate)
            self.runs.update(run_id, status=RunStatus.INTERRUPTED, error=error, finished=True)
            return {**report, "status": RunStatus.INTERRUPTED.value, "error": error}
        self.on_deploy()
        self._update_rehearsal(gen)
        gen.close(delete_files=not self.config.keep_training_data)  # spool; train/val/parquet files unless kept
        if not self.config.keep_training_data and gen.output_path is not None:
            gate["data_deleted"] = True  # the report says so instead of listing a file that is gone
            self.runs.update(run_id, decision=gate)
        how = (f"challenger at {self.config.ab_test_config.initial_challenger_traffic:.0%} of traffic" if ab
               else "champion (A/B testing disabled)")
        log.info("run %d deployed %s as %s", run_id, name, how)
        return {**report, "status": run_status.value, "model_version": name}

    def _deploy_failed(self, run_id: int, report: dict[str, Any], gate: dict[str, Any], name: str,
                       exc: EngineError) -> dict[str, Any]:
        """The engine refused the new version: the run ends ``deploy_failed``, nothing is registered or routed,
        no data is consumed, the champion keeps serving."""
        reason = (f"deploy failed on {exc.replica or 'the serving engine'}: {exc.engine_message or exc}\n"
                  f"the serving engine cannot serve {name}: {exc}")
        gate["deploy"] = {**exc.to_dict(), "version": name}
        log.error("run %d: deploy failed: %s; the champion keeps serving", run_id, exc)
        self.runs.update(run_id, status=RunStatus.DEPLOY_FAILED, error=reason, decision=gate, finished=True)
        return {**report, "status": RunStatus.DEPLOY_FAILED.value, "error": reason,
                "replica": exc.replica, "engine_message": exc.engine_message}

    def _update_rehearsal(self, gen: GenerationResult) -> None:
        cfg = self.config.generator_config
        if not gen.n_new:
            return
        try:
            n_seen = self.store.get_state("rehearsal_n_seen")
            rng = random.Random(f"{cfg.seed}:{n_seen}")
            n_seen = self.generator.rehearsal_buffer.add(gen.iter_new_samples(), n_seen=n_seen, rng=rng)
            self.store.set_state("rehearsal_n_seen", n_seen)
        except OSError as exc:
            log.error("could not update the rehearsal buffer: %s", exc)


def _call(fn: Callable[[str], Any], arg: Path | str, timeout_s: float | None, label: str, key: str) -> Any:
    """``fn(str(arg))``, in a worker thread when ``timeout_s`` is set (TimeoutError after it)."""
    if timeout_s is None:
        return fn(str(arg))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(str(arg))
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"afs-continuous-{label}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"{label} did not return within {timeout_s:g} s (training.{key})")
    if "error" in box:
        raise box["error"]
    return box["result"]


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))
