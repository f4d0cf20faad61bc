"""The per-process map of recent routing assignments (private).

``route(unit_id)`` remembers the version (with its exposure) it returned for
each unit, so that ``log_usage(model=<name>, unit_id=...)`` (the seed's way of
logging) can still record the exposure when the name matches. Bounded: at most
:data:`MAX_UNITS` units, the oldest assignment forgotten first; every operation
is O(1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["MAX_UNITS", "remember"]

#: Units remembered per loop (about 150 bytes each: under 2 MB).
MAX_UNITS = 10_000


def remember(exposures: "OrderedDict[str, Any]", unit: str, version: Any) -> None:
    """Record ``unit``'s latest assignment; forget the oldest unit beyond :data:`MAX_UNITS`.

    An OrderedDict (O(1) removal of the oldest key, unlike a plain dict whose
    first-key lookup walks deleted slots); a unit routed again moves to the end.
    Safe from several threads under the GIL: a concurrent removal of the same
    oldest key is ignored.
    """
    exposures[unit] = version
    exposures.move_to_end(unit)
    if len(exposures) > MAX_UNITS:
        try:
            exposures.popitem(last=False)
        except KeyError:
            pass  # another thread removed it first
