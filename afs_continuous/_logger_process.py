"""Process events of the usage loggers: interpreter exit, SIGTERM and fork.

At exit and on SIGTERM every live logger flushes; what it still cannot write
is reported and spooled (``UsageLogger._abandon``). Around ``fork()`` the write
lock is held, and the child starts a fresh writer with fresh counters.
"""

from __future__ import annotations

import os
import signal
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ._drops import DropTally

if TYPE_CHECKING:
    from .logger import UsageLogger

__all__ = ["LIVE", "after_fork_parent", "before_fork", "close_at_exit", "install_sigterm_flush", "reset_after_fork"]


LIVE: "weakref.WeakSet[UsageLogger]" = weakref.WeakSet()
_SIGTERM_INSTALLED = False


def install_sigterm_flush() -> None:
    """Once per process, from the main thread: on SIGTERM flush every live logger, then do what
    the previous handler would have done (default: terminate with the usual SIGTERM status)."""
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def _on_sigterm(signum: int, frame: Any) -> None:
        for logger in list(LIVE):
            waited = logger.config.flush_interval_s + 5.0
            if not logger.flush(timeout_s=waited) and previous in (signal.SIG_DFL, None):
                logger._abandon(waited)  # the process ends now: say what is lost
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main interpreter thread after all
        return
    _SIGTERM_INSTALLED = True


def close_at_exit(ref: "weakref.ref[UsageLogger]") -> None:
    logger = ref()
    if logger is None:
        return
    waited = logger.config.flush_interval_s + 10.0
    if not logger._closed:
        logger.close(timeout_s=waited)
    elif logger._thread is not None and logger._thread.is_alive():  # closed earlier, but not drained then
        logger._thread.join(waited)
    if logger._unwritten() != (0, 0) or logger._tally:
        logger._abandon(waited)


def before_fork(ref: "weakref.ref[UsageLogger]") -> None:
    logger = ref()
    if logger is not None:
        logger._write_lock.acquire()


def after_fork_parent(ref: "weakref.ref[UsageLogger]") -> None:
    logger = ref()
    if logger is not None and logger._write_lock.locked():
        logger._write_lock.release()


def reset_after_fork(ref: "weakref.ref[UsageLogger]") -> None:
    """In a forked child: fresh queue, writer, lock and counters; never reuse the parent's connections."""
    logger = ref()
    if logger is None:
        return
    logger.store.engine.dispose(close=False)
    logger._init_writer()
    logger._recent.clear()
    logger.n_logged = logger.n_feedback = logger.n_committed = logger.n_dropped = logger.n_write_errors = 0
    logger._dropped = [0, 0]
    logger._fb_committed = 0
    logger._tally = DropTally()
    logger._tally_lock = threading.Lock()
    logger.last_error = None
