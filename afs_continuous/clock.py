"""Injectable clocks.

Every component that reads the time takes a ``clock``: a zero-argument callable
returning a timezone-aware UTC :class:`datetime.datetime`. Production code uses
:func:`utc_now`; tests and demos use :class:`ManualClock` and move time instead
of sleeping.

Example:
    >>> from datetime import datetime, timezone
    >>> clock = ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
    >>> clock.advance(hours=49).isoformat()
    '2026-01-03T01:00:00+00:00'
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

__all__ = ["Clock", "ManualClock", "utc_now", "ensure_utc"]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


def ensure_utc(value: datetime, *, name: str = "datetime") -> datetime:
    """Return ``value`` converted to UTC.

    Args:
        value: A timezone-aware datetime.
        name: Argument name used in the error message.

    Raises:
        ValueError: ``value`` is naive (has no tzinfo); naive datetimes are
            ambiguous and never accepted.
    """
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(
            f"{name} must be timezone-aware (got naive {value!r}); "
            "use datetime.now(timezone.utc) or attach tzinfo=timezone.utc"
        )
    return value.astimezone(timezone.utc)


class ManualClock:
    """A clock that only moves when told to; thread-safe.

    Args:
        start: Initial time (timezone-aware). Defaults to the current UTC time.

    Example:
        >>> from datetime import datetime, timezone
        >>> c = ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
        >>> c().hour, c.advance(minutes=90).hour
        (0, 1)
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = ensure_utc(start, name="start") if start is not None else utc_now()
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move the clock forward (or back, with a negative delta) and return the new time.

        Args:
            delta: A timedelta; or keyword arguments accepted by ``timedelta``
                (``hours=``, ``minutes=``, ``seconds=``, ``days=``).
        """
        step = (delta or timedelta()) + timedelta(**kwargs)
        with self._lock:
            self._now = self._now + step
            return self._now

    def set(self, value: datetime) -> datetime:
        """Jump to ``value`` (timezone-aware) and return it."""
        with self._lock:
            self._now = ensure_utc(value, name="value")
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"
