"""SIGTERM and SIGINT while :meth:`ContinuousLearningLoop.run_loop` runs.

In the main thread, ``run_loop`` installs :class:`StopSignals` for its
duration: the first SIGTERM or SIGINT (Ctrl-C) asks the loop to stop (at once
when it waits between checks, else after the current step); a second one
interrupts the current step (the training run is recorded ``interrupted``).
Either way the loop gives its lease back before it returns.

Afterwards the handlers in place before are restored, and a SIGTERM is
delivered again to them, so the process does what it would have done without
``run_loop``: with no handler of the user's, the usage logger's SIGTERM
handler flushes the pending records and the process terminates with the
usual SIGTERM status; a handler of the user's (the daemon command installs
one) decides itself. SIGINT is not delivered again: Ctrl-C stops the loop,
and ``run_loop`` returns without a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Callable

__all__ = ["Interrupted", "StopSignals"]

log = logging.getLogger("afs_continuous")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """A second SIGTERM or SIGINT: interrupt the current step now."""


class StopSignals:
    """Stop a loop on SIGTERM / SIGINT (see the module docstring).

    Args:
        stop: Called on the first signal (the loop's ``stop``).
        busy: Whether the loop is in the middle of a step (then the handler
            says that it stops after the step).
    """

    def __init__(self, stop: Callable[[], None], busy: Callable[[], bool]) -> None:
        self._stop = stop
        self._busy = busy
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (only in the main thread; elsewhere nothing happens)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            previous = signal.getsignal(sig)
            if previous is None:  # installed outside Python: it cannot be restored, so leave it alone
                continue
            try:
                signal.signal(sig, self._handle)
            except ValueError:  # not the main interpreter
                return
            self._previous[sig] = previous

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        again = self.received is not None
        self.received = signum
        self._stop()
        name = signal.Signals(signum).name
        if again:
            raise Interrupted(f"{name} received twice: stopping now")
        if self._busy():
            log.warning("received %s: stopping after the current step (send it again to stop now)", name)

    def restore(self) -> None:
        """Put the previous handlers back, then deliver a received SIGTERM to them."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        installed, self._previous = self._previous, {}
        if self.received == signal.SIGTERM and signal.SIGTERM in installed:
            signal.raise_signal(signal.SIGTERM)
