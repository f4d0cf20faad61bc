"""The dashboard's commands (private): ``afs-continuous report --html PATH`` and ``afs-continuous ui``.

Both open the store read-only (a plain :class:`~afs_continuous.store.Store`, never upgraded,
read transactions only; no loop, no lease, no state written). See docs/dashboard.md.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .config import LoopConfig
from .errors import AfsContinuousError

__all__ = ["make_ui_command", "write_html_report", "open_read_only", "promotion_threshold", "LOCAL_HOSTS"]

#: Hosts ``ui`` binds without ``--allow-remote`` (loopback only).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def open_read_only(config: LoopConfig) -> Any:
    """The configured store, opened without creating, upgrading or writing anything.

    Raises:
        click.ClickException: No SQLite file there, the store cannot be opened, or its schema is
            older (run ``afs-continuous db upgrade``) or newer than this afs_continuous.
    """
    from .cli import _require_store
    from .store import Store, display_url

    _require_store(config)  # never create an empty store by looking at it
    if _revision(config.store_url) is None:  # Store() would create the schema of an empty database
        raise click.ClickException(f"no afs_continuous store at {display_url(config.store_url)}: the database has "
                                   "no schema yet (the daemon creates it on its first start)")
    try:
        return Store(config.store_url, auto_upgrade=False)
    except AfsContinuousError as exc:
        raise click.ClickException(str(exc)) from None


def _revision(url: str) -> str | None:
    """The store's schema revision, read without creating anything; "" when it cannot be read (Store() then
    says why: damaged file, server unreachable, login refused)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DatabaseError

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DatabaseError:
        return ""
    finally:
        engine.dispose()


def promotion_threshold(store: Any, config: LoopConfig) -> float:
    """The promotion threshold the daemon recorded in the store (its configuration), else ``config``'s."""
    recorded = store.get_state("daemon_config") or {}
    value = ((recorded.get("config") or {}).get("ab_test_config") or {}).get("promotion_threshold")
    return float(value) if isinstance(value, (int, float)) else config.ab_test_config.promotion_threshold


def write_html_report(config: LoopConfig, path: str) -> None:
    """``report --html PATH``: write the store's report and print where (stderr: the path; exit 1 on failure)."""
    from ._html_report import write_report

    store = open_read_only(config)
    try:
        out = write_report(store, path, promotion_threshold=promotion_threshold(store, config))
    except AfsContinuousError as exc:  # plotly missing, or the store cannot be read
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the report to {path}: {exc}") from None
    finally:
        store.dispose()
    click.echo(f"report written to {out} (open it in a browser)")


def make_ui_command(*options: Any) -> click.Command:
    """The ``ui`` command, with the shared ``--config``/``--db`` options of :mod:`afs_continuous.cli` (which
    registers it; built here so that this module never imports the CLI at import time)."""

    def ui(host: str, port: int, allow_remote: bool, config_path: str | None, db: str | None) -> None:
        """Serve the dashboard (overview, experiments, training runs, versions and audit) from the store, read-only.

        Every page reads the store when it is requested: a reload shows new data. Binds 127.0.0.1 by
        default. Needs afs-continuous[ui]. See docs/dashboard.md.
        """
        _serve(host, port, allow_remote, config_path, db)

    for option in reversed(options):
        ui = option(ui)
    ui = click.option("--allow-remote", is_flag=True,
                      help="Allow binding a non-loopback address: anyone who reaches it sees the versions, "
                           "experiments, runs and audit trail (no login; put it behind your own authentication).")(ui)
    ui = click.option("--port", type=click.IntRange(1, 65535), default=8050, show_default=True,
                      help="Port to bind.")(ui)
    ui = click.option("--host", default="127.0.0.1", show_default=True,
                      help="Address to bind. Anything but loopback needs --allow-remote.")(ui)
    return click.command(name="ui", context_settings={"help_option_names": ["-h", "--help"]})(ui)


def _serve(host: str, port: int, allow_remote: bool, config_path: str | None, db: str | None) -> None:
    from .cli import _load

    if host not in LOCAL_HOSTS and not allow_remote:
        raise click.UsageError(f"--host {host} is not a loopback address: the dashboard has no login; "
                               "pass --allow-remote to serve it there anyway")
    config = _load(config_path, db)
    try:
        import uvicorn

        from ._ui import create_app
    except ImportError:
        raise click.ClickException("the dashboard needs FastAPI, uvicorn and plotly: "
                                   "pip install 'afs-continuous[ui]'") from None
    store = open_read_only(config)
    try:
        # on loopback, only loopback Host headers: a page rebinding its domain to 127.0.0.1 gets 400
        hosts = ["127.0.0.1", "localhost", "[::1]", "::1", host] if host in LOCAL_HOSTS else None
        app = create_app(store, promotion_threshold=promotion_threshold(store, config), allowed_hosts=hosts)
    except AfsContinuousError as exc:
        store.dispose()
        raise click.ClickException(str(exc)) from None
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"dashboard of {store.display_url} on http://{shown}:{port}/ (read-only; Ctrl-C stops it)", err=True)
    sys.stderr.flush()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        store.dispose()
