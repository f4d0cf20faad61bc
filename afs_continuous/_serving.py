"""The loop's side of the serving engine: events, fallbacks, reloads and the daemon's housekeeping.

:class:`ServingSupport` wraps the configured :class:`~afs_continuous.serving.Engine`:

- :meth:`~ServingSupport.load` loads a version before routing sends it traffic and records
  ``loaded`` / ``load_failed`` in ``serving_events``;
- :meth:`~ServingSupport.report_unavailable` counts a fallback (``fallback``) and asks the
  engine, in a background thread and at most once per ``serving.reload_interval_s`` per
  version, to load the adapter again (``reload`` / ``load_failed``);
- :meth:`~ServingSupport.sync` (each daemon iteration) loads the champion and challenger
  on replicas that lost them (an engine restart) and unloads retired adapters once no
  worker's routing cache can still send them traffic (``route_cache_s`` after retirement);
- :meth:`~ServingSupport.summary` is ``get_status_summary()["serving"]``.

Recording never raises into a request: a store that cannot be written is logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import func, insert, select

from .config import LoopConfig
from .registry import ModelRegistry, ModelVersion, VersionStatus
from .serving import Engine, EngineError, is_adapter
from .store import ServingEvent, Store

__all__ = ["ServingSupport", "rollback_target"]

log = logging.getLogger("afs_continuous.serving")

_T = ServingEvent.__table__  # type: ignore[attr-defined]
_DETAIL_CHARS = 2000


class ServingSupport:
    """Keeps the serving engine in step with the registry and records what it did.

    Args:
        engine: The engine (``loop.serving``).
        store: The store (``serving_events``).
        registry: The model registry.
        config: The loop configuration (``serving``, ``route_cache_s``).
        clock: The loop's clock (event times and the reload rate limit).
        champion: Returns the champion that serves a request instead of an unavailable version.
    """

    def __init__(self, engine: Engine, store: Store, registry: ModelRegistry, config: LoopConfig,
                 clock: Callable[[], datetime], champion: Callable[[], ModelVersion]) -> None:
        self.engine = engine
        self.store = store
        self.registry = registry
        self.config = config
        self.clock = clock
        self._champion = champion
        self._lock = threading.Lock()
        self._last_reload: dict[str, datetime] = {}
        self._reloading: dict[str, threading.Thread] = {}

    # ---- events ---------------------------------------------------------------------------

    def record(self, kind: str, version: str, *, replica: str | None = None, detail: str | None = None,
               conn: Any = None) -> None:
        """Insert one ``serving_events`` row; a store failure is logged, never raised."""
        row = {"at": self.clock(), "kind": kind, "version": version[:200], "replica": replica,
               "detail": detail[:_DETAIL_CHARS] if detail else None, "host": socket.gethostname()[:200],
               "pid": os.getpid()}
        try:
            if conn is not None:
                conn.execute(insert(_T).values(**row))
            else:
                with self.store.write() as c:
                    c.execute(insert(_T).values(**row))
        except Exception as exc:  # noqa: BLE001 - counting must never break a request or the daemon
            log.error("could not record serving event %s for %s: %s", kind, version, type(exc).__name__)

    def summary(self, now: datetime) -> dict[str, Any]:
        """``get_status_summary()["serving"]``: the engine and what it did, from the store (no network).

        Returns:
            ``{"engine", "base_urls"?, "base_model_name"?, "fallbacks", "fallbacks_24h",
            "last_fallback": {at, version, detail} | None, "reloads", "load_failures",
            "last_load_failure": {at, version, replica, detail} | None}``.
        """
        since = now - timedelta(hours=24)
        with self.store.read() as conn:
            counts = dict(conn.execute(select(_T.c.kind, func.count()).group_by(_T.c.kind)).all())
            recent = conn.execute(select(func.count()).where(_T.c.kind == "fallback", _T.c.at >= since)).scalar_one()
            last_fb = conn.execute(select(_T).where(_T.c.kind == "fallback").order_by(_T.c.id.desc()).limit(1)).first()
            last_ko = conn.execute(select(_T).where(_T.c.kind == "load_failed").order_by(_T.c.id.desc())
                                   .limit(1)).first()
        return {
            **self.engine.describe(),
            "fallbacks": int(counts.get("fallback", 0)),
            "fallbacks_24h": int(recent),
            "last_fallback": _event(last_fb, with_replica=False),
            "reloads": int(counts.get("reload", 0)),
            "load_failures": int(counts.get("load_failed", 0)),
            "last_load_failure": _event(last_ko, with_replica=True),
        }

    # ---- loading --------------------------------------------------------------------------

    def load(self, version: ModelVersion) -> None:
        """Load ``version`` on every replica and check it (before routing sends it traffic); recorded.

        Raises:
            EngineError: A replica refused (recorded as ``load_failed``); nothing is routed to it.
        """
        if not self.engine.loads_adapters:
            return
        try:
            self.engine.load(version)
        except EngineError as exc:
            self.record("load_failed", version.name, replica=exc.replica, detail=exc.engine_message or str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. an answer that is not JSON: the same outcome, said so
            self.record("load_failed", version.name, detail=f"{type(exc).__name__}: {exc}")
            raise EngineError(f"the serving engine failed while loading {version.name!r}: {type(exc).__name__}: "
                              f"{exc}", engine_message=f"{type(exc).__name__}: {exc}", version=version.name) from exc
        self.record("loaded", version.name)

    def unload(self, version: ModelVersion) -> bool:
        """Unload ``version`` (after routing stopped); False (logged, recorded) when a replica refused."""
        if not self.engine.loads_adapters:
            return True
        try:
            self.engine.unload(version)
        except EngineError as exc:
            log.error("could not unload %s: %s", version.name, exc)
            self.record("unload_failed", version.name, replica=exc.replica, detail=exc.engine_message or str(exc))
            return False
        self.record("unloaded", version.name)
        return True

    # ---- fallback -------------------------------------------------------------------------

    def report_unavailable(self, version: ModelVersion, error: BaseException | str | None = None) -> ModelVersion:
        """Count one fallback from ``version`` and return the champion to serve the request with.

        The reload of ``version`` runs in a background thread, at most once per
        ``serving.reload_interval_s`` (loop clock) per version and one at a time;
        this call never waits for it.
        """
        detail = None if error is None else (str(error) or type(error).__name__)
        self.record("fallback", version.name, detail=detail)
        champion = self._champion()
        log.warning("model %s unavailable (%s); served by the champion %s", version.name, detail or "no detail",
                    champion.name)
        if self.engine.loads_adapters and is_adapter(version):  # the champion too: a restart forgets it as well
            self._reload_later(version)
        return champion

    def _reload_later(self, version: ModelVersion) -> None:
        now = self.clock()
        with self._lock:
            last = self._last_reload.get(version.name)
            running = self._reloading.get(version.name)
            if running is not None and running.is_alive():
                return
            if last is not None and (now - last).total_seconds() < self.config.serving.reload_interval_s:
                return
            self._last_reload[version.name] = now
            worker = threading.Thread(target=self._reload, args=(version,), name=f"afs-reload-{version.name}",
                                      daemon=True)
            self._reloading[version.name] = worker
        worker.start()

    def _reload(self, version: ModelVersion) -> None:
        try:
            current = self.registry.get(version.name)
            if current.status == VersionStatus.RETIRED:
                return  # retired meanwhile: routing no longer sends it traffic
            if self.engine.ensure_loaded(current):
                self.record("reload", version.name)
                log.info("loaded %s again after it was reported unavailable", version.name)
        except EngineError as exc:
            log.error("could not load %s again: %s", version.name, exc)
            self.record("load_failed", version.name, replica=exc.replica, detail=exc.engine_message or str(exc))
        except Exception as exc:  # noqa: BLE001 - a background thread must not die with a traceback
            log.error("could not load %s again: %s: %s", version.name, type(exc).__name__, exc)

    def wait_for_reloads(self, timeout_s: float = 60.0) -> bool:
        """Wait for the background reloads started so far; True when none is still running."""
        with self._lock:
            workers = list(self._reloading.values())
        for worker in workers:
            worker.join(timeout_s)
        return not any(w.is_alive() for w in workers)

    # ---- daemon housekeeping ----------------------------------------------------------------

    def sync(self, now: datetime) -> dict[str, Any] | None:
        """Each daemon iteration: load the champion and challenger where a replica lost them, unload
        retired adapters ``route_cache_s`` after their retirement. Never raises (errors are logged).

        Returns:
            ``{"reloaded": [names], "unloaded": [names], "errors": [messages]}``, or None without an engine.
        """
        if not self.engine.loads_adapters:
            return None
        out: dict[str, Any] = {"reloaded": [], "unloaded": [], "errors": []}
        try:
            versions = self.registry.list()
        except Exception as exc:  # noqa: BLE001
            out["errors"].append(f"registry: {type(exc).__name__}: {exc}")
            return out
        for version in versions:
            if version.status == VersionStatus.RETIRED or not is_adapter(version):
                continue
            try:
                if self.engine.ensure_loaded(version):
                    out["reloaded"].append(version.name)
                    self.record("reload", version.name)
            except Exception as exc:  # noqa: BLE001 - EngineError or an unexpected answer: the iteration goes on
                out["errors"].append(str(exc))
                log.error("serving: %s is %s but cannot be loaded: %s", version.name, version.status.value, exc)
        grace = timedelta(seconds=self.config.route_cache_s)
        retired = [v for v in versions if v.status == VersionStatus.RETIRED and is_adapter(v)
                   and v.retired_at is not None and _utc(v.retired_at) + grace <= now]
        if retired:
            try:
                served = {name for names in self.engine.served_models().values() for name in names}
            except Exception as exc:  # noqa: BLE001
                out["errors"].append(str(exc))
                log.error("serving: cannot list the served models: %s", exc)
                return out
            for version in retired:
                if version.name in served and self.unload(version):
                    out["unloaded"].append(version.name)
        return out

    def close(self) -> None:
        """Close the engine's connections (background reloads are daemon threads)."""
        self.engine.close()


def rollback_target(registry: ModelRegistry, name: str | None) -> ModelVersion | None:
    """The version ``loop.rollback(name)`` would make champion, or None when it would change nothing.

    :meth:`ModelRegistry.rollback_target`, read-only, so the engine can load it first.

    Raises:
        NotFoundError: As :meth:`ModelRegistry.rollback`.
    """
    target = registry.rollback_target(name)
    return None if target.is_champion else target


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _event(row: Any, *, with_replica: bool) -> dict[str, Any] | None:
    if row is None:
        return None
    m = row._mapping
    out = {"at": _utc(m["at"]).isoformat(), "version": m["version"], "detail": m["detail"]}
    if with_replica:
        out["replica"] = m["replica"]
    return out
