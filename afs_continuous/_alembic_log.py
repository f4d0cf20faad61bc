"""Alembic's INFO lines ("Context impl SQLiteImpl.", "Running upgrade ...") during our own schema work.

Opening a store runs Alembic, which logs several INFO lines each time. They
are noise for a user of afs_continuous (the store logs its own WARNING when it
upgrades a schema), so :func:`quiet_alembic` drops Alembic's records below
WARNING while *this thread* is inside our schema code. Nothing else changes:
no logger level is set, Alembic's records outside our calls (a user's own
migrations, other threads) pass as before, and WARNING and above always pass.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

__all__ = ["quiet_alembic"]

# The Alembic loggers that speak at INFO during an upgrade or a revision check (filters on a logger see only
# the records logged to that very logger, not to its children).
_LOGGERS = ("alembic.runtime.migration", "alembic.runtime.plugins", "alembic.ddl.impl", "alembic.ddl.postgresql")


class _BelowWarningInOurCalls(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.depth: Counter[int] = Counter()  # thread id -> nesting depth of quiet_alembic()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not self.depth.get(record.thread or 0)


_FILTER = _BelowWarningInOurCalls()
_INSTALL_LOCK = threading.Lock()
_installed = False


@contextmanager
def quiet_alembic() -> Iterator[None]:
    """Drop Alembic's records below WARNING logged by this thread inside the block (usable as a decorator)."""
    global _installed
    if not _installed:
        with _INSTALL_LOCK:
            if not _installed:
                for name in _LOGGERS:
                    logging.getLogger(name).addFilter(_FILTER)
                _installed = True
    ident = threading.get_ident()
    _FILTER.depth[ident] += 1
    try:
        yield
    finally:
        _FILTER.depth[ident] -= 1
        if _FILTER.depth[ident] <= 0:
            del _FILTER.depth[ident]
