"""ContinuousLearningLoop: the one object users embed and the daemon runs.

Inference side (every worker process): :meth:`~ContinuousLearningLoop.route`
picks the model version for a request, :meth:`~ContinuousLearningLoop.log_usage`
and :meth:`~ContinuousLearningLoop.record_feedback` record traffic.

Daemon side: :meth:`~ContinuousLearningLoop.run_iteration` (every
``check_interval_seconds`` under :meth:`~ContinuousLearningLoop.run_loop`)
evaluates the running experiment and acts on it, checks the triggers, and when
one fires runs the retrain pipeline (:mod:`afs_continuous._pipeline`): builds a
training set, calls ``train_fn(data_path)``, runs the canary gate
(``eval_fn(model_path)``) and deploys the result as challenger (or as champion
when A/B testing is off).

Operations: :meth:`~ContinuousLearningLoop.promote` and
:meth:`~ContinuousLearningLoop.rollback` (recorded with who, why, when and the
prior champion), :meth:`~ContinuousLearningLoop.forget` (a unit's data, docs/privacy.md),
and ``loop.runs.get(run_id)`` / ``loop.runs.list()`` for the training-run reports.
"""

from __future__ import annotations

import atexit
import functools
import logging
import secrets
import signal
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Mapping

from ._canary import EvalFn
from ._daemon_lease import DaemonLease
from ._exposure import remember
from ._drops import store_errors
from ._imports import train_fn_from_config
from ._pipeline import RetrainPipeline, TrainFn
from ._privacy import maintain
from ._signals import StopSignals
from ._status import status_summary
from .clock import Clock, utc_now
from .config import LoopConfig, config_record
from .errors import NotFoundError, StoreError
from ._operations import OperatorActions
from ._serving import ServingSupport
from .serving import EngineError, make_engine
from .experiment import Arm, Decision, Evaluation, ExperimentManager
from .generator import TrainingDataGenerator
from .lease import Lease, LeaseHeld
from .logger import UsageLogger
from .monitor import DriftMonitor
from .registry import ModelRegistry, ModelVersion
from .runs import RunStatus, TrainingRunLog, owner_id
from .store import Store
from .triggers import TriggerChecker, TriggerType

__all__ = ["ContinuousLearningLoop", "EvalFn", "TrainFn"]

log = logging.getLogger("afs_continuous")

_NO_TRAIN = "no_train: training data prepared, train_fn not called"
_NO_TRAIN_FN = ("no train_fn configured: data prepared only (pass train_fn= to the loop or run_iteration, "
                "--train-fn on the command line, or set training.train_fn or training.lora)")


class ContinuousLearningLoop(OperatorActions, DaemonLease):
    """The continuous-learning loop over one store.

    Args:
        config: Loop configuration (default: :class:`LoopConfig` defaults, store
            at ``~/.context/training/continuous/usage.db``, the quick start's path).
        clock: Callable returning the current timezone-aware UTC datetime; used
            for every timestamp, trigger and experiment duration.
        train_fn: Default training function for :meth:`run_iteration` and
            :meth:`run_loop`: ``train_fn(data_path) -> {"model_path": str, ...metrics}``
            (default: ``training.train_fn`` of the configuration, else the
            reference LoRA trainer of ``training.lora``; see :meth:`resolve_train_fn`).
        eval_fn: Default canary evaluation: ``eval_fn(model_path) -> {metric: float}``
            on a fixed golden set (default: ``training.eval_fn`` of the
            configuration, imported at the first training run; None: no canary).
        verify_store: Check every page of a SQLite store at open
            (:meth:`Store.quick_check`, reads the whole file: about 1 s per GB).
            The daemon and the operator commands do; workers need not (damage
            is reported as :class:`StoreError` by the first statement that hits it).
        redact_fn: ``redact_fn(text) -> text`` for logged texts (default ``logger_config.redact_fn``; see UsageLogger).

    Raises:
        StoreError: The store cannot be opened, or (``verify_store``) is damaged.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> loop = ContinuousLearningLoop(LoopConfig(db_path=os.path.join(d, "usage.db"), data_dir=d))
        >>> version = loop.route(unit_id="user-1")
        >>> rid = loop.log_usage("Hi", "Hello!", model=version.name, latency_ms=120.0, quality_score=0.9)
        >>> loop.record_feedback(rid, feedback=1)
        True
        >>> loop.get_status_summary()["usage_stats"]["total"]
        1
        >>> loop.close()
    """

    def __init__(self, config: LoopConfig | None = None, *, clock: Clock = utc_now,
                 train_fn: TrainFn | None = None, eval_fn: EvalFn | None = None,
                 verify_store: bool = False, redact_fn: Callable[[str], str] | None = None) -> None:
        self.config = config if config is not None else LoopConfig()
        self.clock = clock
        self.train_fn = train_fn
        self.eval_fn = eval_fn
        self._config_train_fn: tuple[TrainFn | None] | None = None  # resolved from the config at first use
        cfg = self.config
        self.store = Store(cfg.store_url, verify=verify_store)
        self.logger = UsageLogger(self.store, config=cfg.logger_config, clock=clock, redact_fn=redact_fn)
        self.registry = ModelRegistry(self.store, clock=clock)
        self.experiments = ExperimentManager(self.store, cfg.ab_test_config, clock=clock)
        self.triggers = TriggerChecker(self.store, cfg.trigger_config, cfg.generator_config, clock=clock)
        self.generator = TrainingDataGenerator(self.store, cfg.generator_config, cfg.data_path, clock=clock)
        self.runs = TrainingRunLog(self.store, clock=clock)
        self.monitor = DriftMonitor(self.store, cfg.ab_test_config, clock=clock)
        self._stop = threading.Event()
        self.lease = Lease(self.store, "daemon", ttl_s=cfg.lease_ttl_s, holder=f"{owner_id()}:{secrets.token_hex(4)}")
        self.serving = make_engine(cfg.serving)
        self._serving = ServingSupport(self.serving, self.store, self.registry, cfg, clock,
                                       lambda: self._routing_snapshot()[0])
        self.pipeline = RetrainPipeline(cfg, self.store, self.registry, self.experiments, self.generator, self.runs,
                                        self.triggers, on_deploy=self._invalidate, is_leader=self.lease.holds,
                                        serving=self._serving)
        self._lease_held = False
        self._busy = False  # run_loop is inside an iteration (for the signal handler's message)
        self._release_at_exit = functools.partial(_release_at_exit, weakref.ref(self))
        atexit.register(self._release_at_exit)  # a lease still held at interpreter exit is given back
        self._route_cache: tuple[float, ModelVersion, ModelVersion | None, Any] | None = None
        self._exposures: OrderedDict[str, ModelVersion] = OrderedDict()  # unit id -> its latest route() (bounded)
        # (experiment snapshot, exposed champion, exposed challenger, what the assignment depends on)
        self._exposed: tuple[Any, ModelVersion, ModelVersion, Any] | None = None
        self.store.setdefault_state("first_start_at", clock())  # atomic: many workers may open a new store at once
        self.registry.ensure_champion(cfg.champion_model, cfg.champion_model_path)

    # ---- inference side ------------------------------------------------------------------

    def log_usage(self, query: str | None = None, response: str | None = None, model: str | ModelVersion | None = None,
                  *, messages: list[dict[str, Any]] | None = None, latency_ms: float | None = None,
                  quality_score: float | None = None, unit_id: str | None = None,
                  metadata: Mapping[str, Any] | None = None, prompt_tokens: int | None = None,
                  completion_tokens: int | None = None, fallback_from: str | None = None) -> str:
        """Record one model call (a prompt or a whole conversation); returns the record id.

        Pass ``model=version``, the :class:`ModelVersion` that :meth:`route`
        returned: the record then carries its exposure (the experiment and arm
        the request was routed under) and counts for that arm. With
        ``model=<name>`` the exposure is found from this process's recent
        :meth:`route` of the same ``unit_id`` when the name matches (the last
        10,000 units); otherwise the record counts for no experiment arm.
        See :meth:`UsageLogger.log` for every argument (``messages=``,
        ``prompt_tokens``, ``completion_tokens``, ...) and the errors raised.
        """
        if type(model) is str and unit_id is not None and self._exposures:
            routed = self._exposures.get(unit_id if type(unit_id) is str else str(unit_id))
            if routed is not None and routed.name == model:
                model = routed
        return self.logger.log(query, response, model, messages=messages, latency_ms=latency_ms,
                               quality_score=quality_score, unit_id=unit_id, metadata=metadata,
                               prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                               fallback_from=fallback_from)

    def record_feedback(self, record_id: str, feedback: int = 1, comment: str | None = None) -> bool:
        """Record feedback (1 good, -1 bad, 0 neutral) and optionally the user's words; see
        :meth:`UsageLogger.record_feedback`.

        Raises:
            ValueError: ``feedback`` is not -1, 0 or 1, or ``comment`` is not a str.
        """
        return self.logger.record_feedback(record_id, feedback, comment)

    def route(self, unit_id: str | None = None) -> ModelVersion:
        """The model version that serves this request, with its exposure.

        The champion, or the challenger for its traffic fraction while an
        experiment runs. The same ``unit_id`` always gets the same arm within
        one experiment; ``None`` draws at random. While an experiment runs the
        version carries ``experiment_id`` and ``arm`` (its exposure); log the
        call with ``model=version`` so that the record counts for that arm of
        that experiment. The running experiment is cached for
        ``route_cache_s`` seconds: a request routed from a cache older than the
        experiment carries no exposure and counts for neither arm.

        Args:
            unit_id: Sticky assignment key (user or conversation id; an int is used as its decimal text).

        Returns:
            The serving :class:`ModelVersion` (``.name``, ``.path``, ``.status``,
            ``.experiment_id``, ``.arm``).
        """
        champion, challenger, exp = self._routing_snapshot()
        if exp is None or challenger is None:
            if unit_id is not None and self._exposures:
                self._exposures.pop(unit_id if type(unit_id) is str else str(unit_id), None)
            return champion
        exposed = self._exposed
        if exposed is None or exposed[0] is not exp:  # a new routing snapshot
            same = (exp.id, exp.seed, exp.traffic_fraction, champion, challenger)
            if exposed is not None and exposed[3] == same:  # the same assignment: units keep their cached arms
                exposed = self._exposed = (exp, exposed[1], exposed[2], same)
            else:
                exposed = self._exposed = (exp, replace(champion, experiment_id=exp.id, arm=Arm.CHAMPION.value),
                                           replace(challenger, experiment_id=exp.id, arm=Arm.CHALLENGER.value), same)
        if unit_id is None:
            return exposed[2] if self.experiments.assign(exp, None) == Arm.CHALLENGER else exposed[1]
        unit = unit_id if type(unit_id) is str else str(unit_id)
        exposures = self._exposures
        version = exposures.get(unit)  # routed before under this snapshot: the same (sticky) arm, no hashing
        if version is not exposed[1] and version is not exposed[2]:
            version = exposed[2] if self.experiments.assign(exp, unit) == Arm.CHALLENGER else exposed[1]
        remember(exposures, unit, version)
        return version

    def _routing_snapshot(self) -> tuple[ModelVersion, ModelVersion | None, Any]:
        """(champion, challenger, running experiment), cached for ``route_cache_s`` seconds."""
        snap = self._route_cache
        if snap is not None and time.monotonic() - snap[0] < self.config.route_cache_s:
            return snap[1], snap[2], snap[3]
        with self.store.read() as conn:
            exp = self.experiments.active(conn=conn)
            champion = self.registry.champion(conn=conn)
            challenger = self.registry.get(exp.challenger, conn=conn) if exp is not None else None
        if champion is None:
            champion = self.registry.ensure_champion(self.config.champion_model, self.config.champion_model_path)
        self._route_cache = (time.monotonic(), champion, challenger, exp)
        return champion, challenger, exp

    def _invalidate(self) -> None:
        self._route_cache = None

    def served_model_name(self, version: ModelVersion) -> str:
        """The model name to send a request for ``version`` to the serving engine with (the OpenAI ``model``).

        ``"engine": "none"``: the version's name. vLLM: the version's name for an
        adapter version, ``serving.base_model_name`` for the base model (e.g. the
        initial champion; when unset, asked once from the first replica's ``GET /v1/models``).

        Raises:
            EngineError: ``serving.base_model_name`` is unset and the first replica cannot be asked.
        """
        return self.serving.served_model_name(version)

    def report_unavailable(self, version: ModelVersion, error: BaseException | str | None = None) -> ModelVersion:
        """The engine answered that ``version`` does not exist (e.g. it restarted and forgot its adapters).

        Counts one fallback (``serving_events`` kind ``fallback``; ``get_status_summary()["serving"]``
        and ``afs-continuous status``), asks the engine to load the adapter again in a background
        thread (at most once per ``serving.reload_interval_s`` per version; this call never waits
        for it), and returns the champion to serve the request with. Never raises for a store
        or engine failure (they are logged).

        Args:
            version: The version the request was routed to (as returned by :meth:`route`).
            error: What the engine answered (its message is recorded, truncated).

        Returns:
            The champion :class:`ModelVersion`.
        """
        return self._serving.report_unavailable(version, error)

    # ---- daemon side ---------------------------------------------------------------------

    def evaluate_experiment(self) -> Evaluation | None:
        """Evaluate the running experiment without acting on it (None when none runs)."""
        exp = self.experiments.active()
        return None if exp is None else self.experiments.evaluate(exp, record=False)

    def run_iteration(self, train_fn: TrainFn | None = None, *, manual: bool = False, no_train: bool = False,
                      dry_run: bool = False, eval_fn: EvalFn | None = None,
                      baseline_version: str | None = None) -> dict[str, Any]:
        """One pass of the loop: act on the experiment, check triggers, retrain if needed.

        Args:
            train_fn: ``train_fn(data_path) -> {"model_path": str, ...metrics}``
                (default: :meth:`resolve_train_fn`: the constructor's, else the
                configuration's). Without any, a triggered run prepares data
                only (status ``data_ready``, reason ``no train_fn configured``).
            manual: Retrain now regardless of triggers and cooldown (``--trigger``).
            no_train: Prepare the training data and stop (status ``data_ready``).
            dry_run: Train and evaluate (canary included), but neither deploy
                nor promote; the run ends ``dry_run`` and consumes no data.
            eval_fn: Canary evaluation ``eval_fn(model_path) -> {metric: float}``
                (default: the constructor's, else ``training.eval_fn``).
            baseline_version: Compare the challenger's canary metrics with this
                version instead of the champion (default: ``training.baseline_version``).
                The online experiment still runs against the serving champion.

        Returns:
            ``{"timestamp", "retrain_triggered": bool, "trigger": {...},
            "experiment": {...} | None, "drift": {...} | None, "retrain": {"status",
            "run_id", "counts", "baseline_version", "metrics", "canary",
            "model_version", "model_path", "reasons", "error", ...}, "privacy":
            {"late_arrivals", "retention"}}`` (``retrain`` only when triggered;
            ``privacy`` only with ``retention_days`` set or a recent ``forget``).

        Raises:
            NotFoundError: ``baseline_version`` names no model version; nothing is done.
            LeaseHeld: Another daemon holds the store's lease; nothing is done.
            ConfigError: ``training.train_fn`` cannot be imported or ``training.lora``
                is invalid (only when no ``train_fn`` is given); nothing is done.
            StoreError: The store failed (full disk, read-only, damaged, unreachable); the
                message names the store, the cause and the fix. :meth:`run_loop` retries
                at the next check.
        """
        fn = None if no_train else self.resolve_train_fn(train_fn)
        with store_errors(self.store, "run an iteration on"):
            pinned_name = baseline_version if baseline_version is not None else self.config.training.baseline_version
            pinned = self.registry.get(pinned_name) if pinned_name is not None else None
            self.logger.flush()
            held_before = self._lease_held
            self._take_lease()
            try:
                self._record_config()
                return self._iteration(fn, manual=manual, no_train=no_train, dry_run=dry_run, eval_fn=eval_fn,
                                       pinned=pinned)
            finally:
                if not held_before:  # a standalone iteration (e.g. --trigger) gives the lease back
                    self._release_lease()

    def resolve_train_fn(self, train_fn: TrainFn | None = None) -> TrainFn | None:
        """The training function a run uses; the daemon command and Python callers get the same one.

        Order: ``train_fn`` (the argument of :meth:`run_iteration` /
        :meth:`run_loop`, or ``--train-fn``) > the constructor's ``train_fn`` >
        ``training.train_fn`` (an import path) > ``training.lora`` (the
        reference LoRA trainer, adapters under ``<data_dir>/adapters``, folder
        names from this loop's clock) > None (runs prepare data only). The
        configuration's is resolved once, at the first call.

        Raises:
            ConfigError: ``training.train_fn`` cannot be imported or ``training.lora`` is invalid.
        """
        if train_fn is not None:
            return train_fn
        if self.train_fn is not None:
            return self.train_fn
        if self._config_train_fn is None:
            self._config_train_fn = (train_fn_from_config(self.config, clock=self.clock),)
        return self._config_train_fn[0]

    def _record_config(self) -> None:
        """Record the configuration in effect (loop_state ``daemon_config``, password hidden) when it changed,
        so that ``afs-continuous status`` shows what the daemon runs with."""
        record = config_record(self.config)
        recorded = self.store.get_state("daemon_config")
        if recorded is None or recorded.get("config") != record:
            self.store.set_state("daemon_config", {"recorded_at": self.clock().isoformat(), "config": record})

    def _iteration(self, train_fn: TrainFn | None, *, manual: bool, no_train: bool, dry_run: bool,
                   eval_fn: EvalFn | None, pinned: ModelVersion | None) -> dict[str, Any]:
        now = self.clock()
        result: dict[str, Any] = {"timestamp": now.isoformat(), "retrain_triggered": False, "experiment": None}
        serving = self._serving.sync(now)  # an engine restart lost adapters; retired ones are unloaded
        if serving is not None:
            result["serving"] = serving
        result["drift"] = self._watch_champion(now)
        exp = self.experiments.active()
        if exp is not None:
            evaluation = self.experiments.evaluate(exp, now=now)
            result["experiment"] = evaluation.to_dict()
            self._act_on(exp, evaluation)
        self.store.set_state("last_iteration_at", now)
        privacy = maintain(self, now)  # late arrivals of forgotten units; retention (docs/privacy.md)
        if privacy is not None:
            result["privacy"] = privacy
        running = self.experiments.active()
        blocked = f"challenger {running.challenger!r} is still under test" if running is not None else None
        trig = self.triggers.check(now=now, manual=manual, blocked_by=blocked)
        result["trigger"] = trig.to_dict()
        sample_check = next((c for c in trig.checks if c.trigger == TriggerType.SAMPLE_COUNT), None)
        if sample_check is not None:  # the status summary reports this instead of recounting
            self.store.set_state("eligible_samples", {"n": sample_check.details["eligible_samples"],
                                                      "checked_at": now.isoformat()})
        if any(c.trigger == TriggerType.SCHEDULE and c.fired for c in trig.checks):
            # A due schedule is used up by this check whether the run starts or is blocked (too few samples,
            # cooldown, challenger under test): it fires once per period, never every hour until data arrives.
            self.store.set_state("last_schedule_at", now)
        if not trig.should_retrain:
            log.info("no retrain: %s", trig.reason)
            return result
        result["retrain_triggered"] = True
        evaluate = next((f for f in (eval_fn, self.eval_fn, self.config.training.eval_fn) if f is not None), None)
        data_only = (_NO_TRAIN if no_train else _NO_TRAIN_FN) if train_fn is None else None
        result["retrain"] = self.pipeline.run(trig, train_fn, eval_fn=evaluate, dry_run=dry_run, baseline=pinned,
                                              data_only_reason=data_only)
        return result

    def _watch_champion(self, now: Any) -> dict[str, Any] | None:
        """One look of the post-promotion drift monitor; rolls back on a significant drop."""
        champion = self.registry.champion()
        check = self.monitor.check(champion.name if champion else "", now=now)
        if check is None:
            return None
        if check.rollback:
            try:
                self.rollback(check.previous, reason=check.reason, actor="drift-monitor")
            except (NotFoundError, EngineError) as exc:  # gone or unloadable: keep the champion, tell the operator
                self.monitor.stop()
                log.error("drift monitor: %s; not rolled back to %s: %s (the watch ended)", check.reason,
                          check.previous, exc)
                return {**check.to_dict(), "rollback": False, "rollback_refused": str(exc)}
            log.warning("rolled back to %s: %s", check.previous, check.reason)
        return check.to_dict()

    def _act_on(self, exp: Any, ev: Evaluation) -> None:
        if ev.decision == Decision.PROMOTE:
            from .stats import ArmSummary

            with self.store.write() as conn:
                self.registry.promote(exp.challenger, reason="; ".join(ev.reasons), evidence=ev.to_dict(), conn=conn)
                self.experiments.conclude(exp, Decision.PROMOTE, conn=conn)
                self.runs.set_outcome(exp.challenger, RunStatus.PROMOTED, conn=conn)
                base = ev.champion
                baseline = ArmSummary(base["n"], base["mean"], base["variance"]) if base["n"] >= 2 else None
                self.monitor.start(exp.challenger, exp.champion, baseline, conn=conn)
            log.info("promoted %s to champion: %s", exp.challenger, "; ".join(ev.reasons))
        elif ev.decision == Decision.STOP:
            with self.store.write() as conn:
                self.registry.retire(exp.challenger, reason="; ".join(ev.reasons), evidence=ev.to_dict(), conn=conn)
                self.experiments.conclude(exp, Decision.STOP, conn=conn)
                self.runs.set_outcome(exp.challenger, RunStatus.REJECTED, conn=conn)
            log.info("stopped experiment, retired %s: %s", exp.challenger, "; ".join(ev.reasons))
        elif ev.decision == Decision.INVALID:
            log.warning("experiment %d invalid: %s", exp.id, "; ".join(ev.reasons))
        self._invalidate()

    def run_loop(self, train_fn: TrainFn | None = None, max_iterations: int | None = None, *,
                 no_train: bool = False, dry_run: bool = False, eval_fn: EvalFn | None = None,
                 baseline_version: str | None = None,
                 on_result: Callable[[dict[str, Any]], None] | None = None, wait_for_lease: bool = False) -> int:
        """Run :meth:`run_iteration` every ``check_interval_seconds`` until :meth:`stop`.

        The loop holds the store's daemon lease (see :mod:`afs_continuous.lease`)
        from start to end, renewed every iteration and by a heartbeat thread, so
        a second daemon on the same store never acts concurrently. It gives the
        lease back however it ends: :meth:`stop`, ``max_iterations``, an
        exception, SIGTERM, Ctrl-C (and at interpreter exit).

        An iteration that raises is logged and the loop goes on. The wait
        between iterations ends early on :meth:`stop` (also when :meth:`stop`
        was called before this method started).

        Signals (when called in the main thread): SIGTERM and SIGINT stop the
        loop, at once between checks, else after the current step (a second
        signal interrupts the step; its training run is recorded
        ``interrupted``). Ctrl-C returns normally after one line on the
        ``afs_continuous`` logger, ``interrupted; stopping (lease released)``,
        instead of a ``KeyboardInterrupt`` traceback. After SIGTERM the signal
        is delivered again to the handler in place before the call: by
        default the process then flushes its usage loggers and terminates with
        the SIGTERM status; install a handler of your own to carry on instead.

        Args:
            train_fn: Training function (default: the constructor's).
            max_iterations: Stop after this many iterations (None: until stopped).
            no_train: Prepare data only in triggered runs.
            dry_run: Train and evaluate but neither deploy nor promote.
            eval_fn: Canary evaluation (default: the constructor's, else ``training.eval_fn``).
            baseline_version: Pinned canary baseline (see :meth:`run_iteration`).
            on_result: Called with each iteration's result dict.
            wait_for_lease: When another daemon holds the lease, wait for it
                (until :meth:`stop`) instead of raising.

        Returns:
            The number of iterations run.

        Raises:
            LeaseHeld: Another live daemon holds the lease (and ``wait_for_lease`` is False).
        """
        n = 0
        signals = StopSignals(self.stop, lambda: self._busy)
        signals.install()
        try:
            if not self._stop.is_set():
                self._wait_for_lease(wait_for_lease)
            while not self._stop.is_set():
                self._busy = True
                try:
                    result = self.run_iteration(train_fn, no_train=no_train, dry_run=dry_run, eval_fn=eval_fn,
                                                baseline_version=baseline_version)
                    if on_result is not None:
                        on_result(result)
                except LeaseHeld:
                    raise  # lost to another daemon (our lease expired): stop, never act concurrently
                except StoreError as exc:  # full disk, store locked or unreachable: one line, try again later
                    log.error("iteration failed: %s; retrying at the next check", exc)
                except Exception:  # noqa: BLE001 - the daemon keeps running
                    log.exception("iteration failed; retrying at the next check")
                finally:
                    self._busy = False
                n += 1
                if max_iterations is not None and n >= max_iterations:
                    break
                self._stop.wait(self.config.check_interval_seconds)
        except KeyboardInterrupt:  # Ctrl-C before our handler, or a second signal (Interrupted)
            signals.received = signals.received or signal.SIGINT
        finally:
            held = self._lease_held
            try:
                self._release_lease()
            finally:
                how = {signal.SIGINT: "interrupted", signal.SIGTERM: "received SIGTERM"}.get(signals.received or 0)
                if how is not None:
                    (log.warning if signals.received == signal.SIGINT else log.info)(
                        "%s; stopping%s", how, " (lease released)" if held and not self._lease_held else "")
                signals.restore()  # a SIGTERM goes on to the previous handler (by default: flush and terminate)
                self._stop.clear()  # a later run_loop() starts afresh; a stop() before this call was honoured
        return n

    def stop(self) -> None:
        """Ask :meth:`run_loop` to stop after the current iteration (thread- and signal-safe)."""
        self._stop.set()

    def get_status_summary(self) -> dict[str, Any]:
        """A snapshot of the loop for dashboards and ``--status``.

        Returns:
            ``{"usage_stats": {total, feedback_rate, avg_quality_score, ...},
            "status": {total_retrains, champion_model, challenger_model,
            challenger_traffic, last_training_at, cooldown_until,
            next_scheduled_at, eligible_samples, min_new_samples, ...},
            "experiment": {...} | None, "training_runs": [...], "store": url,
            "lease": {holder, acquired_at, renewed_at, expires_at, expired,
            holder_alive} | None, "drops": {records, feedback, events, processes,
            recent_records, recent_feedback (last 24 h), last_at, last_reason, last_host,
            last_pid}, "last_24h": {"since", "by_model": {model: {calls, feedback_rate,
            positive_rate, avg_quality, latency_p50_ms, latency_p95_ms, latency_p99_ms, ...}}}}``
            (``usage_stats`` and ``last_24h`` come from the hourly rollups, so the cost does not
            grow with the number of records; latency quantiles within 2%, see
            :mod:`afs_continuous._rollups`; ``store``: the URL with its password hidden; ``lease``: the
            daemon lease, None when no daemon holds it; ``holder_alive`` None when the
            holder is on another host; ``drops``: what every process's logger could not
            write, as recorded in the store).

        Raises:
            StoreError: The store cannot be read (the message names it, the cause and the fix).
        """
        with store_errors(self.store, "read the status of"):
            return status_summary(self)

    def close(self) -> None:
        """Flush pending records, give back the daemon lease if held, close every store connection. Idempotent."""
        atexit.unregister(self._release_at_exit)
        self._release_lease()
        self.logger.close()
        self._serving.close()
        self.store.dispose()

    def __enter__(self) -> "ContinuousLearningLoop":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release_at_exit(ref: "weakref.ref[ContinuousLearningLoop]") -> None:
    loop = ref()
    if loop is not None:
        try:
            loop._release_lease()
        except Exception:  # noqa: BLE001 - at exit the lease expires on its own if the store is gone
            log.warning("could not give back the daemon lease at exit; it expires after lease_ttl_s")
