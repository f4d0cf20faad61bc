"""Command line: the daemon (``afs-continuous-loop`` / ``scripts/continuous_loop.py``)
and the operator commands (``afs-continuous status|versions|promote|rollback|runs|report|forget|ui``).

Exit codes: 0 success; 1 runtime failure (a failed training run, an unknown
version or run); 2 usage or configuration error (an unknown ``--baseline-version``
included). With ``--json`` nothing but JSON is written to stdout; logs go to stderr.
See docs/operations.md.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ._cli_views import make_ui_command, write_html_report
from ._imports import import_callable, train_fn_from_config
from ._report import format_iteration, format_run_report, format_runs, format_status, format_versions
from .config import ENV_PREFIX, LoopConfig, config_record, load_config
from .errors import AfsContinuousError, ConfigError, NotFoundError, SchemaVersionError, StoreError
from .lease import LeaseHeld
from .serving import EngineError

__all__ = ["main", "daemon_main", "resolve_eval_fn", "resolve_train_fn"]

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
        # --db names a SQLite file and wins over database_url from the file or the environment
        overrides = {"db_path": db, "database_url": None} if db else None
        return load_config(config_path, overrides=overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def resolve_train_fn(spec: str | None, config: LoopConfig) -> Callable[[str], Any] | None:
    """The training function named by ``spec`` (``module:function`` or ``path/to/file.py:function``),
    else by the configuration.

    Order: ``spec`` (``--train-fn`` / ``AFS_CONTINUOUS_TRAIN_FN``) >
    ``training.train_fn`` > ``training.lora`` (the reference LoRA trainer) > None;
    the configuration's part is :func:`afs_continuous._imports.train_fn_from_config`,
    which :meth:`ContinuousLearningLoop.resolve_train_fn` uses too.

    Raises:
        ConfigError: The module cannot be imported or has no such function.
    """
    if spec:
        return import_callable(spec, "train function")
    return train_fn_from_config(config)


def resolve_eval_fn(spec: str | None, config: LoopConfig) -> Callable[[str], Any] | None:
    """The canary evaluation named by ``spec`` (``--eval-fn``), else ``training.eval_fn``, else None.

    Raises:
        ConfigError: The module cannot be imported or has no such function.
    """
    spec = spec or config.training.eval_fn
    return import_callable(spec, "eval function") if spec else None


def _require_store(config: LoopConfig) -> None:
    """Fail (exit 1) when the configured SQLite store file does not exist."""
    from sqlalchemy.engine import make_url

    url = make_url(config.store_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(url.database).expanduser().exists():
            raise click.ClickException(f"no store at {url.database} (check --db / --config / db_path); "
                                       "the daemon creates it on its first start")


def _open_loop(config: LoopConfig, *, must_exist: bool = True) -> Any:
    """Open the loop; our errors become clean CLI errors (exit 1).

    Operator commands pass ``must_exist=True`` so that a mistyped SQLite path
    is an error instead of a new, empty store; the daemon creates its store.
    """
    from .loop import ContinuousLearningLoop

    if must_exist:
        _require_store(config)
    try:
        return ContinuousLearningLoop(config, verify_store=True)  # a damaged store: a clear error, not a traceback
    except AfsContinuousError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # a raw database error while opening (full disk, read-only store): one line
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import SQLAlchemyError

        from ._store_errors import store_problem
        from ._store_errors import display_url

        if not isinstance(exc, (SQLAlchemyError, sqlite3.Error)):
            raise
        url = make_url(config.store_url)
        shown = url.database if url.get_backend_name() == "sqlite" else display_url(config.store_url)
        raise click.ClickException(f"cannot open the store {shown}: {store_problem(exc)}") from None


def _summary(loop: Any) -> dict[str, Any]:
    """The status summary; a store failure becomes a one-line CLI error (exit 1)."""
    try:
        return loop.get_status_summary()
    except AfsContinuousError as exc:
        raise click.ClickException(str(exc)) from None


def _status_summary(loop: Any, config_path: str | None) -> dict[str, Any]:
    """``loop.get_status_summary()`` under the configuration it should show, named in ``"configuration"``.

    Without ``--config`` the configuration the daemon recorded in the store
    (loop_state ``daemon_config``, written by ``run_iteration``) is shown, so
    thresholds and folders are the daemon's, not this shell's defaults; the
    store stays the one opened. With ``--config`` that file's is shown, and
    whether it differs from the daemon's. With neither: defaults and environment.
    """
    try:
        recorded = loop.store.get_state("daemon_config")
    except AfsContinuousError as exc:
        raise click.ClickException(str(exc)) from None
    view, info = loop, {"source": "defaults"}
    if config_path is not None:
        info = {"source": "file", "file": config_path}
        if recorded is not None:
            mine, theirs = config_record(loop.config), dict(recorded.get("config") or {})
            for key in ("db_path", "database_url"):  # the store may be named differently (--db); not a difference
                mine.pop(key, None)
                theirs.pop(key, None)
            info.update(differs_from_daemon=mine != theirs, daemon_recorded_at=recorded.get("recorded_at"))
    elif recorded is not None:
        data = {**(recorded.get("config") or {}), "db_path": loop.config.db_path,
                "database_url": loop.config.database_url}
        try:
            effective = LoopConfig.model_validate(data)
        except ConfigError as exc:  # e.g. recorded by another version of afs_continuous
            info["note"] = f"the configuration recorded by the daemon is not usable here: {exc}"
        else:
            info = {"source": "daemon", "recorded_at": recorded.get("recorded_at")}
            view = _open_loop(effective, must_exist=False)
    try:
        summary = _summary(view)
    finally:
        if view is not loop:
            view.close()
    summary["configuration"] = info
    return summary


def _emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text)


_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar=ENV_PREFIX + "CONFIG",
                              help="config.json (keys of LoopConfig). Env: AFS_CONTINUOUS_CONFIG.")
_db_option = click.option("--db", default=None,
                          help="SQLite store path (overrides db_path and database_url from the config and environment).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only (for machines).")
_verbose_option = click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr.")


@click.command(name="run", context_settings={"help_option_names": ["-h", "--help"]})
@_config_option
@_db_option
@click.option("--status", "show_status", is_flag=True, help="Print the status summary and exit.")
@click.option("--trigger", is_flag=True, help="Run one iteration now with a manual trigger (bypasses triggers and cooldown).")
@click.option("--no-train", is_flag=True, help="With --trigger (or in the loop): prepare the training data and stop (status data_ready).")
@click.option("--dry-run", is_flag=True,
              help="Train and evaluate (canary included) but neither deploy nor promote; the run ends dry_run.")
@click.option("--train-fn", "train_fn_spec", envvar=ENV_PREFIX + "TRAIN_FN",
              help="Training function as module:function (the current directory is searched after the installed "
                   "packages) or path/to/file.py:function, called as fn(data_path) -> {'model_path': ...}.")
@click.option("--eval-fn", "eval_fn_spec", envvar=ENV_PREFIX + "TRAINING__EVAL_FN",
              help="Canary evaluation as module:function, called as fn(model_path) -> {metric: float} on a fixed "
                   "golden set before deployment (training.eval_fn).")
@click.option("--baseline-version", envvar=ENV_PREFIX + "TRAINING__BASELINE_VERSION",
              help="Compare the challenger's canary metrics with this version instead of the champion "
                   "(training.baseline_version).")
@click.option("--max-iterations", type=click.IntRange(min=1), default=None, help="Stop after N iterations.")
@click.option("--wait-for-lease", is_flag=True,
              help="When another daemon holds the store's lease, wait for it instead of exiting.")
@_json_option
@_verbose_option
def daemon_command(config_path: str | None, db: str | None, show_status: bool, trigger: bool, no_train: bool,
                   dry_run: bool, train_fn_spec: str | None, eval_fn_spec: str | None, baseline_version: str | None,
                   max_iterations: int | None, wait_for_lease: bool, as_json: bool, verbose: bool) -> None:
    """The continuous-learning daemon.

    Checks every check_interval_seconds whether to retrain (enough new good
    samples, the weekly schedule, or a quality drop; 24 h cooldown), builds the
    training set, calls the training function, deploys the result as
    challenger and promotes it on a significant gain. SIGTERM or Ctrl-C stop it
    cleanly after the current step.
    """
    _setup_logging(verbose)
    config = _load(config_path, db)
    training = show_status is False and no_train is False
    try:
        # checked now (exit 2 before anything runs); the loop resolves the configuration's own the same way,
        # with its clock, so only --train-fn is passed on
        train_fn = import_callable(train_fn_spec, "train function") if training and train_fn_spec else None
        configured = train_fn or (train_fn_from_config(config) if training else None)
        eval_fn = resolve_eval_fn(eval_fn_spec, config) if training else None
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if configured is not None and eval_fn is None and config.training.canary_thresholds_set:
        raise click.UsageError("the canary gate has thresholds (training.canary_*) but no eval function: "
                               "pass --eval-fn module:function or set training.eval_fn")
    loop = _open_loop(config, must_exist=show_status)
    try:
        if show_status:
            summary = _status_summary(loop, config_path)
            _emit(summary, as_json, format_status(summary))
            return
        pinned = baseline_version if baseline_version is not None else config.training.baseline_version
        if pinned is not None:
            try:
                loop.registry.get(pinned)
            except NotFoundError as exc:
                raise click.UsageError(f"--baseline-version: {exc}") from None
        if trigger:
            try:
                result = loop.run_iteration(train_fn, manual=True, no_train=no_train, dry_run=dry_run,
                                            eval_fn=eval_fn, baseline_version=baseline_version)
            except (LeaseHeld, StoreError) as exc:
                raise click.ClickException(str(exc)) from None
            _emit(result, as_json, format_iteration(result))
            if result.get("retrain", {}).get("status") in ("failed", "deploy_failed"):
                sys.exit(1)
            return
        if configured is None and not no_train:
            log.warning("no training function (--train-fn or training in the config): triggered runs prepare data only")
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def _stop(signum: int, _frame: Any) -> None:
            loop.stop()  # run_loop's own handlers say so; this one makes SIGTERM end the daemon with exit 0

        for sig in previous:
            signal.signal(sig, _stop)
        log.info("daemon started on %s; checking every %g s", loop.store.display_url, config.check_interval_seconds)
        try:
            n = loop.run_loop(train_fn, max_iterations, no_train=no_train, dry_run=dry_run, eval_fn=eval_fn,
                              baseline_version=baseline_version, wait_for_lease=wait_for_lease,
                              on_result=lambda result: _print_iteration(result, as_json))
        except LeaseHeld as exc:
            raise click.ClickException(str(exc)) from None
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
        summary = _status_summary(loop, config_path)
        _emit(summary, as_json, format_status(summary))
    finally:
        loop.close()


@main.command()
@_config_option
@_db_option
@_json_option
def versions(config_path: str | None, db: str | None, as_json: bool) -> None:
    """List every model version: status, creation, parent, training run, metrics and its audit history
    (promotions, retirements and rollbacks with who, why, when and the prior champion)."""
    loop = _open_loop(_load(config_path, db))
    try:
        items = [v.to_dict() for v in loop.registry.list()]
        _emit(items, as_json, format_versions(items))
    finally:
        loop.close()


def _registry_op(op: str, name: str | None, reason: str, actor: str, config_path: str | None, db: str | None,
                 as_json: bool, force: bool = False) -> None:
    loop = _open_loop(_load(config_path, db))
    try:
        before = loop.registry.champion()
        version = getattr(loop, op)(name, reason=reason, actor=actor, force=force)
        if before is not None and before.name == version.name:
            text = f"{version.name} is already the champion; nothing changed"
        else:
            text = (f"champion is now {version.name} (was {before.name if before else '-'}); "
                    f"recorded by {actor}: {reason}")
        _emit(version.to_dict(), as_json, text)
    except (NotFoundError, EngineError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        loop.close()


_actor_option = click.option(
    "--actor", envvar="USER", default="operator", show_default="$USER, else operator",
    help="Who does it, recorded in the audit history.")
_force_option = click.option(
    "--force", is_flag=True,
    help="Proceed even when the version's recorded path (its adapter folder) no longer exists.")


@main.command()
@click.argument("version")
@click.option("--reason", default="manual promotion", show_default=True, help="Why, recorded in the audit history.")
@_actor_option
@_force_option
@_config_option
@_db_option
@_json_option
def promote(version: str, reason: str, actor: str, force: bool, config_path: str | None, db: str | None,
            as_json: bool) -> None:
    """Make VERSION the champion (recorded with who, why, when and the prior champion).

    Ends a running experiment: promoting its challenger concludes it, promoting
    another version retires the challenger. A version whose recorded path is
    gone is refused (exit 1, nothing changes) unless --force.
    """
    _registry_op("promote", version, reason, actor, config_path, db, as_json, force)


@main.command()
@click.argument("version", required=False)
@click.option("--reason", default="manual rollback", show_default=True, help="Why, recorded in the audit history.")
@_actor_option
@_force_option
@_config_option
@_db_option
@_json_option
def rollback(version: str | None, reason: str, actor: str, force: bool, config_path: str | None, db: str | None,
             as_json: bool) -> None:
    """Restore VERSION (default: the previous champion) as champion.

    Recorded in both versions' histories with who, why, when and the prior
    champion. An unknown VERSION, or one whose recorded path is gone (unless
    --force), exits 1 and changes nothing.
    """
    _registry_op("rollback", version, reason, actor, config_path, db, as_json, force)


_RUN_STATUSES = ["generating", "training", "skipped", "data_ready", "failed", "dry_run", "deploy_failed", "deployed", "promoted",
                 "rejected", "rolled_back", "interrupted"]


@main.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Newest N runs.")
@click.option("--status", "status_filter", type=click.Choice(_RUN_STATUSES), default=None, help="Only runs with this status.")
@_config_option
@_db_option
@_json_option
def runs(limit: int, status_filter: str | None, config_path: str | None, db: str | None, as_json: bool) -> None:
    """List training runs (newest first): status, trigger, samples, version and the decision's reason."""
    loop = _open_loop(_load(config_path, db))
    try:
        items = [r.to_dict() for r in loop.runs.list(limit=limit, status=status_filter)]
        _emit(items, as_json, format_runs(items))
    finally:
        loop.close()


@main.command()
@click.argument("run_id", type=int, required=False)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the report as JSON to this file.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the whole store's report (every view of docs/dashboard.md) as one self-contained HTML "
                   "file instead (needs afs-continuous[report]).")
@_config_option
@_db_option
@_json_option
def report(run_id: int | None, output: str | None, html_path: str | None, config_path: str | None, db: str | None,
           as_json: bool) -> None:
    """Print training run RUN_ID's report, or (--html PATH) write every view of the store to one HTML file.

    RUN_ID: trigger, samples per stage, source records, baseline and challenger metrics (canary and
    online), the decision and its reasons, the resulting version. --html: experiments, traffic, quality,
    latency, training runs and the audit trail as charts (docs/dashboard.md)."""
    if html_path is not None:
        if run_id is not None or output is not None or as_json:
            raise click.UsageError("--html writes the whole store's report: give no RUN_ID, --output or --json")
        write_html_report(_load(config_path, db), html_path)
        return
    if run_id is None:
        raise click.UsageError("give a RUN_ID (one run's report) or --html PATH (the whole store's report)")
    loop = _open_loop(_load(config_path, db))
    try:
        data = loop.runs.get(run_id).to_dict()
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        loop.close()
    if output is not None:
        try:
            Path(output).expanduser().write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write the report to {output}: {exc}") from None
        click.echo(f"report of run {run_id} written to {output}", err=True)
    _emit(data, as_json, format_run_report(data))


@main.group()
def db() -> None:
    """Schema of the store: current revision, upgrade in place, rebuild the rollups."""


@db.command("current")
@_config_option
@_db_option
@_json_option
def db_current(config_path: str | None, db: str | None, as_json: bool) -> None:
    """Print the store's schema revision and this version's newest one."""
    from .store import Store, display_url, schema_head

    config = _load(config_path, db)
    try:
        _require_store(config)
        store = Store(config.store_url, auto_upgrade=False)
        revision: str | None = store.schema_revision()
        store.dispose()
    except SchemaVersionError as exc:  # older or newer: report it, change nothing
        revision = str(exc)
    except AfsContinuousError as exc:
        raise click.ClickException(str(exc)) from None
    info = {"store": display_url(config.store_url), "revision": revision, "head": schema_head()}
    _emit(info, as_json, f"store {info['store']}\nrevision {info['revision']}\nhead     {info['head']}")


@db.command("upgrade")
@_config_option
@_db_option
def db_upgrade(config_path: str | None, db: str | None) -> None:
    """Upgrade the store's schema to this version in place (data kept; safe to run twice)."""
    config = _load(config_path, db)
    _require_store(config)
    try:
        before, after = _upgrade(config.store_url)
    except AfsContinuousError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"schema {before or 'empty'} -> {after}" if before != after else f"schema already at {after}")


@db.command("rebuild-rollups")
@_config_option
@_db_option
def db_rebuild_rollups(config_path: str | None, db: str | None) -> None:
    """Recompute the hourly rollups from the raw records (after loading records around the SDK).

    Reads every record once, in one write transaction (writers wait meanwhile). Rollup hours whose
    records retention has deleted are lost: the rebuild knows only the records still stored.
    """
    from ._rollups import rebuild
    from .store import Store

    config = _load(config_path, db)
    _require_store(config)
    try:
        store = Store(config.store_url, verify=True)
        try:
            with store.write() as conn:
                n = rebuild(conn)
        finally:
            store.dispose()
    except AfsContinuousError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"rollups rebuilt from {n} records")


def _upgrade(url: str) -> tuple[str | None, str]:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DatabaseError

    from .store import Store

    engine = create_engine(url)  # read the revision before opening (opening upgrades)
    try:
        with engine.connect() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
    except DatabaseError:
        before = None  # unreachable, damaged, not a database: Store() below says which
    finally:
        engine.dispose()
    store = Store(url, verify=True)  # never upgrade a damaged file
    try:
        return before, str(store.schema_revision())
    finally:
        store.dispose()


from ._cli_privacy import forget_command  # noqa: E402

main.add_command(forget_command(sys.modules[__name__]))  # built with the options above
main.add_command(make_ui_command(_config_option, _db_option))  # the dashboard (afs_continuous._cli_views)


def daemon_main() -> None:
    """Entry point of ``afs-continuous-loop`` and ``scripts/continuous_loop.py``."""
    daemon_command(prog_name=Path(sys.argv[0]).name or "continuous_loop.py")


def _drop_cwd_from_path() -> None:
    """``python -m afs_continuous.cli`` puts the current directory first on ``sys.path``: take it off, so a
    ``datasketch.py`` or ``tqdm.py`` there cannot shadow the installed package (``--train-fn`` still finds
    modules there, searched last; see :func:`afs_continuous._imports.import_callable`)."""
    import os

    if sys.path and sys.path[0] in ("", os.curdir, os.getcwd()):
        del sys.path[0]


if __name__ == "__main__":
    _drop_cwd_from_path()
    main()
