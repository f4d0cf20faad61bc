"""Command line: the daemon (``afs-continuous-loop`` / ``scripts/continuous_loop.py``)
and the operator commands (``afs-continuous status|versions|promote|rollback|runs|report``).

Exit codes: 0 success; 1 runtime failure (a failed training run, an unknown
version); 2 usage or configuration error. With ``--json`` nothing but JSON is
written to stdout; logs go to stderr.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ._report import format_iteration, format_status
from .config import ENV_PREFIX, LoopConfig, load_config
from .errors import AfsContinuousError, ConfigError, NotFoundError

__all__ = ["main", "daemon_main", "resolve_train_fn"]

log = logging.getLogger("afs_continuous")


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("afs_continuous")
    root.handlers = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _load(config_path: str | None, db: str | None) -> LoopConfig:
    try:
        overrides = {"db_path": db} if db else None
        return load_config(config_path, overrides=overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def resolve_train_fn(spec: str | None, config: LoopConfig) -> Callable[[str], Any] | None:
    """The training function named by ``spec`` (``module:function``), else by the configuration.

    Order: ``spec`` (``--train-fn`` / ``AFS_CONTINUOUS_TRAIN_FN``) >
    ``training.train_fn`` > ``training.lora`` (the reference LoRA trainer) > None.

    Raises:
        ConfigError: The module cannot be imported or has no such function.
    """
    spec = spec or config.training.train_fn
    if spec:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ConfigError(f"train function must be given as 'module:function', got {spec!r}")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import train function module {module_name!r}: {exc}") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ConfigError(f"module {module_name!r} has no callable {attr!r}")
        return fn
    if config.training.lora is not None:
        from .training.lora import make_train_fn  # heavy imports only when configured

        return make_train_fn(config.training.lora)
    return None


def _open_loop(config: LoopConfig) -> Any:
    from .loop import ContinuousLearningLoop

    return ContinuousLearningLoop(config)


def _emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text)


_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar=ENV_PREFIX + "CONFIG",
                              help="config.json (keys of LoopConfig). Env: AFS_CONTINUOUS_CONFIG.")
_db_option = click.option("--db", default=None, help="SQLite store path (overrides db_path in the config).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only (for machines).")
_verbose_option = click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr.")


@click.command(name="run", context_settings={"help_option_names": ["-h", "--help"]})
@_config_option
@_db_option
@click.option("--status", "show_status", is_flag=True, help="Print the status summary and exit.")
@click.option("--trigger", is_flag=True, help="Run one iteration now with a manual trigger (bypasses triggers and cooldown).")
@click.option("--no-train", is_flag=True, help="With --trigger (or in the loop): prepare the training data and stop (status data_ready).")
@click.option("--dry-run", is_flag=True, help="Train but neither deploy nor promote; the run report says dry_run.")
@click.option("--train-fn", "train_fn_spec", envvar=ENV_PREFIX + "TRAIN_FN",
              help="Training function as module:function, called as fn(data_path) -> {'model_path': ...}.")
@click.option("--max-iterations", type=click.IntRange(min=1), default=None, help="Stop after N iterations.")
@_json_option
@_verbose_option
def daemon_command(config_path: str | None, db: str | None, show_status: bool, trigger: bool, no_train: bool,
                   dry_run: bool, train_fn_spec: str | None, max_iterations: int | None, as_json: bool,
                   verbose: bool) -> None:
    """The continuous-learning daemon.

    Checks every check_interval_seconds whether to retrain (enough new good
    samples, the weekly schedule, or a quality drop; 24 h cooldown), builds the
    training set, calls the training function, deploys the result as
    challenger and promotes it on a significant gain. SIGTERM or Ctrl-C stop it
    cleanly after the current step.
    """
    _setup_logging(verbose)
    config = _load(config_path, db)
    try:
        train_fn = None if (show_status or no_train) else resolve_train_fn(train_fn_spec, config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        loop = _open_loop(config)
    except AfsContinuousError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if show_status:
            summary = loop.get_status_summary()
            _emit(summary, as_json, format_status(summary))
            return
        if trigger:
            result = loop.run_iteration(train_fn, manual=True, no_train=no_train, dry_run=dry_run)
            _emit(result, as_json, format_iteration(result))
            if result.get("retrain", {}).get("status") == "failed":
                sys.exit(1)
            return
        if train_fn is None and not no_train:
            log.warning("no training function (--train-fn or training in the config): triggered runs prepare data only")
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def _stop(signum: int, _frame: Any) -> None:
            log.info("received %s: stopping after the current step", signal.Signals(signum).name)
            loop.stop()

        for sig in previous:
            signal.signal(sig, _stop)
        log.info("daemon started on %s; checking every %g s", loop.store.url, config.check_interval_seconds)
        try:
            n = loop.run_loop(train_fn, max_iterations, no_train=no_train, dry_run=dry_run,
                              on_result=lambda result: _print_iteration(result, as_json))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("daemon stopped after %d iteration(s)", n)
    finally:
        loop.close()


def _print_iteration(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        for line in format_iteration(result).splitlines():
            log.info("%s", line)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="afs-continuous")
def main() -> None:
    """afs_continuous: continuous learning for production LLMs."""


main.add_command(daemon_command, name="run")


@main.command()
@_config_option
@_db_option
@_json_option
def status(config_path: str | None, db: str | None, as_json: bool) -> None:
    """Print the status summary (usage, models, triggers, experiment, runs)."""
    loop = _open_loop(_load(config_path, db))
    try:
        summary = loop.get_status_summary()
        _emit(summary, as_json, format_status(summary))
    finally:
        loop.close()


@main.command()
@_config_option
@_db_option
@_json_option
def versions(config_path: str | None, db: str | None, as_json: bool) -> None:
    """List every model version with status, creation, parent, training run and metrics."""
    loop = _open_loop(_load(config_path, db))
    try:
        items = [v.to_dict() for v in loop.registry.list()]
        text = "\n".join(
            f"{v['name']:<24} {v['status']:<10} created {v['created_at'][:19]}  parent {v['parent'] or '-':<16} "
            f"run {v['training_run_id'] if v['training_run_id'] is not None else '-'}"
            for v in items
        ) or "no model versions"
        _emit(items, as_json, text)
    finally:
        loop.close()


def _registry_op(op: str, name: str | None, reason: str, config_path: str | None, db: str | None, as_json: bool) -> None:
    loop = _open_loop(_load(config_path, db))
    try:
        actor = os.environ.get("USER") or "operator"
        version = getattr(loop, op)(name, reason=reason, actor=actor)
        _emit(version.to_dict(), as_json, f"champion is now {version.name}")
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        loop.close()


@main.command()
@click.argument("version")
@click.option("--reason", default="manual promotion", show_default=True)
@_config_option
@_db_option
@_json_option
def promote(version: str, reason: str, config_path: str | None, db: str | None, as_json: bool) -> None:
    """Make VERSION the champion (recorded with who, why and the prior champion)."""
    _registry_op("promote", version, reason, config_path, db, as_json)


@main.command()
@click.argument("version", required=False)
@click.option("--reason", default="manual rollback", show_default=True)
@_config_option
@_db_option
@_json_option
def rollback(version: str | None, reason: str, config_path: str | None, db: str | None, as_json: bool) -> None:
    """Restore VERSION (default: the previous champion) as champion."""
    _registry_op("rollback", version, reason, config_path, db, as_json)


@main.command()
@click.option("--limit", type=int, default=20, show_default=True)
@_config_option
@_db_option
@_json_option
def runs(limit: int, config_path: str | None, db: str | None, as_json: bool) -> None:
    """List training runs (newest first) with their status and counts."""
    loop = _open_loop(_load(config_path, db))
    try:
        items = [r.to_dict() for r in loop.runs.list(limit=limit)]
        text = "\n".join(
            f"#{r['id']:<4} {r['started_at'][:19]} {r['trigger']:<13} {r['status']:<11} "
            f"new={r['counts'].get('new_samples', '-')} version={r['model_version'] or '-'}"
            for r in items
        ) or "no training runs"
        _emit(items, as_json, text)
    finally:
        loop.close()


@main.command()
@click.argument("run_id", type=int)
@_config_option
@_db_option
def report(run_id: int, config_path: str | None, db: str | None) -> None:
    """Print the full report of training run RUN_ID as JSON."""
    loop = _open_loop(_load(config_path, db))
    try:
        click.echo(json.dumps(loop.runs.get(run_id).to_dict(), indent=2, default=str))
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        loop.close()


def daemon_main() -> None:
    """Entry point of ``afs-continuous-loop`` and ``scripts/continuous_loop.py``."""
    daemon_command(prog_name=Path(sys.argv[0]).name or "continuous_loop.py")


if __name__ == "__main__":
    main()
