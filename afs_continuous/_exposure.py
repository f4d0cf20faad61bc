"""The per-process map of recent routing assignments (private).

``route(unit_id)`` remembers the version (with its exposure) it returned for
each unit, so that ``log_usage(model=<name>, unit_id=...)`` (the seed's way of
logging) can still record the exposure when the name matches. Bounded: at most
:data:`MAX_UNITS` units, the oldest assignment forgotten first; every operation
is O(1).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_UNITS", "remember"]

#: Units remembered per loop (about 150 bytes each: under 2 MB).
MAX_UNITS = 10_000


def remember(exposures: dict[str, Any], unit: str, version: Any) -> None:
    """Record ``unit``'s latest assignment; forget the oldest unit beyond :data:`MAX_UNITS`.

    A dict keeps insertion order, so its first key is the oldest assignment; a
    unit routed again moves to the end. Safe from several threads under the
    GIL: a concurrent removal of the same oldest key is ignored.
    """
    exposures.pop(unit, None)
    exposures[unit] = version
    if len(exposures) > MAX_UNITS:
        try:
            del exposures[next(iter(exposures))]
        except (KeyError, StopIteration, RuntimeError):
            pass  # another thread removed it first, or changed the dict while we looked
