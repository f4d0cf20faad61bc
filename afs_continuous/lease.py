"""One daemon at a time: a lease row in the store, with expiry.

A daemon acquires the lease named ``"daemon"`` before it acts (evaluate,
promote, retrain) and renews it while it works (every iteration, and from a
heartbeat thread during a long training run). A second daemon on the same
store finds the lease held and waits or exits; it never retrains
concurrently. A crashed holder does not block forever: its lease expires
after ``ttl_s`` seconds and the next daemon takes over (and marks the crashed
daemon's unfinished training run ``interrupted``). A holder on this host
whose process is gone (``kill -9``, OOM) is taken over at once, without
waiting for the expiry: the holder id starts with ``host:pid`` (this assumes
host names are unique per process namespace, as they are for hosts and
containers with their own host name).

Lease times use the wall clock (a lease is about real process liveness), not
the loop's injectable clock; tests pass their own ``clock``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from .clock import Clock, utc_now
from .runs import owner_id
from .store import DaemonLease, Store

__all__ = ["Lease", "LeaseHeld", "LeaseInfo", "holder_alive"]

log = logging.getLogger("afs_continuous")
L = DaemonLease.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LeaseInfo:
    """The current holder of a lease."""

    name: str
    holder: str
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "holder": self.holder, "acquired_at": self.acquired_at.isoformat(),
                "renewed_at": self.renewed_at.isoformat(), "expires_at": self.expires_at.isoformat()}


def holder_alive(holder: str) -> bool | None:
    """Whether the process named by a holder id (``host:pid[:...]``) still runs.

    Returns:
        True or False for a holder on this host (``os.kill(pid, 0)``); None when
        the holder is on another host or its id names no pid (cannot tell).
    """
    host, _, rest = holder.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class LeaseHeld(RuntimeError):
    """Another process holds the lease."""

    def __init__(self, info: LeaseInfo) -> None:
        super().__init__(
            f"another daemon ({info.holder}) holds the store's lease until {info.expires_at.isoformat()} "
            f"(renewed {info.renewed_at.isoformat()}); only one daemon may act on a store. Stop it, or wait: "
            "a crashed daemon's lease expires on its own"
        )
        self.info = info


class Lease:
    """A named lease in the store.

    Args:
        store: The store.
        name: Lease name (one per role; the daemon uses ``"daemon"``).
        ttl_s: Seconds a lease lasts without renewal (default 300).
        holder: Identity of this process (default ``host:pid``).
        clock: Wall clock returning UTC datetimes (tests inject one).
    """

    def __init__(self, store: Store, name: str = "daemon", *, ttl_s: float = 300.0, holder: str | None = None,
                 clock: Clock = utc_now) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0 seconds, got {ttl_s!r}")
        self.store = store
        self.name = name
        self.ttl_s = ttl_s
        self.holder = holder or owner_id()
        self.clock = clock
        self.taken_over: LeaseInfo | None = None
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()

    def current(self) -> LeaseInfo | None:
        """The lease as stored (possibly expired), or None."""
        with self.store.read() as conn:
            row = conn.execute(select(L).where(L.c.name == self.name)).first()
        return None if row is None else LeaseInfo(**row._mapping)

    def acquire(self) -> LeaseInfo | None:
        """Take or renew the lease. Returns the new lease, or None when another live holder has it.

        Returns the previous (expired) holder's info in ``self.taken_over`` when
        this call took over an expired lease.
        """
        now = self.clock()
        expires = now + timedelta(seconds=self.ttl_s)
        self.taken_over = None
        try:
            return self._acquire(now, expires)
        except IntegrityError:  # another process inserted the row first (PostgreSQL): it holds the lease
            return None

    def _acquire(self, now: datetime, expires: datetime) -> LeaseInfo | None:
        with self.store.write() as conn:
            if not self.store.is_sqlite:
                conn.execute(select(L.c.name).where(L.c.name == self.name).with_for_update())
            row = conn.execute(select(L).where(L.c.name == self.name)).first()
            if row is None:
                conn.execute(L.insert().values(name=self.name, holder=self.holder, acquired_at=now, renewed_at=now,
                                               expires_at=expires))
                return LeaseInfo(self.name, self.holder, now, now, expires)
            info = LeaseInfo(**row._mapping)
            if info.holder != self.holder and info.expires_at > now:
                if holder_alive(info.holder) is not False:
                    return None
                log.warning("took over the daemon lease of %s: its process is gone (lease valid until %s)",
                            info.holder, info.expires_at.isoformat())
            acquired = info.acquired_at if info.holder == self.holder else now
            if info.holder != self.holder:
                self.taken_over = info
            conn.execute(update(L).where(L.c.name == self.name).values(
                holder=self.holder, acquired_at=acquired, renewed_at=now, expires_at=expires))
            return LeaseInfo(self.name, self.holder, acquired, now, expires)

    def acquire_or_raise(self) -> LeaseInfo:
        """Like :meth:`acquire`, raising :class:`LeaseHeld` when another live holder has it."""
        info = self.acquire()
        if info is None:
            current = self.current()
            assert current is not None  # held, so present
            raise LeaseHeld(current)
        return info

    def status(self) -> dict[str, Any] | None:
        """The lease for status displays, or None when no daemon holds it.

        Returns:
            ``{"name", "holder", "acquired_at", "renewed_at", "expires_at"`` (ISO
            8601 UTC), ``"expired": bool, "holder_alive": bool | None}``
            (``holder_alive`` None: the holder runs on another host).
        """
        info = self.current()
        if info is None:
            return None
        return {**info.to_dict(), "expired": info.expires_at <= self.clock(), "holder_alive": holder_alive(info.holder)}

    def holds(self, conn: Any = None) -> bool:
        """True when this process holds the lease and it has not expired (checked in ``conn``'s transaction)."""
        stmt = select(L.c.holder, L.c.expires_at).where(L.c.name == self.name)
        if conn is None:
            with self.store.read() as c:
                row = c.execute(stmt).first()
        else:
            row = conn.execute(stmt).first()
        return row is not None and row[0] == self.holder and row[1] > self.clock()

    def release(self) -> None:
        """Give the lease up (only if this process holds it)."""
        self.stop_heartbeat()
        with self.store.write() as conn:
            conn.execute(L.delete().where(L.c.name == self.name, L.c.holder == self.holder))

    def start_heartbeat(self) -> None:
        """Renew the lease every ``ttl_s / 3`` seconds from a daemon thread (during long work)."""
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._heartbeat_stop.clear()

        def beat() -> None:
            while not self._heartbeat_stop.wait(self.ttl_s / 3.0):
                try:
                    if self.acquire() is None:
                        log.error("lost the daemon lease to another process")
                except Exception as exc:  # noqa: BLE001 - a missed renewal is retried; expiry is the backstop
                    from ._store_errors import store_problem

                    log.error("could not renew the daemon lease (retrying in %.0f s): %s", self.ttl_s / 3.0,
                              store_problem(exc))

        self._heartbeat = threading.Thread(target=beat, name="afs-continuous-lease", daemon=True)
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(5.0)
            self._heartbeat = None
