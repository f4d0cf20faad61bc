"""The daemon lease of :class:`~afs_continuous.loop.ContinuousLearningLoop`: take, wait for, release (private).

A mixin (its state lives on the loop): one daemon per store holds the lease
(:mod:`afs_continuous.lease`); the loop takes it for ``run_iteration``/``run_loop``, recovers the
training runs of a holder that died, and releases it at the end.
"""

from __future__ import annotations

import logging
from typing import Any

from ._drops import store_errors, store_problem
from .errors import StoreError
from .lease import LeaseHeld

__all__ = ["DaemonLease"]

log = logging.getLogger("afs_continuous")


class DaemonLease:
    """Lease handling for the loop (a mixin)."""

    lease: Any
    runs: Any
    store: Any
    config: Any
    _stop: Any
    _lease_held: bool

    def _take_lease(self) -> None:
        """Acquire or renew the daemon lease; recover the runs of a holder whose lease expired.

        Raises:
            LeaseHeld: Another live daemon holds the lease.
        """
        self.lease.acquire_or_raise()
        self._lease_held = True
        dead = self.lease.taken_over
        owners = [None] if dead is None else [None, dead.holder.rsplit(":", 1)[0]]
        for owner in owners:
            interrupted = self.runs.recover_interrupted(dead_owner=owner)
            if interrupted:
                log.warning("marked training runs %s as interrupted (their process is gone)", interrupted)
        self.lease.start_heartbeat()

    def _release_lease(self) -> None:
        if self._lease_held:
            try:
                self.lease.release()
            except Exception as exc:  # noqa: BLE001 - full disk, store gone: the lease expires by itself
                log.warning("could not release the daemon lease (it expires by itself): %s", store_problem(exc))
            self._lease_held = False

    def _wait_for_lease(self, wait: bool) -> None:
        """Take the lease for the whole loop; wait for it (polling) or raise :class:`LeaseHeld`."""
        while True:
            try:
                with store_errors(self.store, "take the daemon lease on"):
                    self._take_lease()
                return
            except LeaseHeld as held:
                if not wait:
                    raise
                log.info("%s; waiting", held)
                if self._stop.wait(min(self.config.lease_ttl_s / 3.0, 30.0)):
                    return
            except StoreError as exc:  # e.g. a full disk at start: the daemon keeps running and retries
                log.error("%s; retrying in %g s", exc, self.config.check_interval_seconds)
                if self._stop.wait(self.config.check_interval_seconds):
                    return

