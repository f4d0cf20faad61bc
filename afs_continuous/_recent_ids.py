"""The record ids this process logged lately, for ``record_feedback``'s answer (private).

Two generations of sets of the ids' hashes: at most :data:`CAPACITY` ids are remembered (and
always the latest ``CAPACITY // 2``), in about 3 MB at most, against about 10 MB for an
OrderedDict of 65,536 id strings; adding and looking up are O(1). A hash is 64 bits, so a wrong "known" needs a
collision among the ids remembered: odds below 1e-14 per call.
"""

from __future__ import annotations

__all__ = ["CAPACITY", "RecentIds"]

#: Ids remembered at most (the latest half of them at least).
CAPACITY = 32_768


class RecentIds:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._half = max(1, capacity // 2)
        self._new: set[int] = set()
        self._old: set[int] = set()

    def add(self, record_id: str) -> None:
        new = self._new
        new.add(hash(record_id))
        if len(new) >= self._half:
            self._old, self._new = new, set()

    def __contains__(self, record_id: object) -> bool:
        h = hash(record_id)
        return h in self._new or h in self._old

    def clear(self) -> None:
        self._new, self._old = set(), set()
