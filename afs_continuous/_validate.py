"""Validation of the arguments of ``log()`` and ``record_feedback()`` (re-exported by :mod:`afs_continuous.logger`).

Cheap on the hot path: one walk over the (usually tiny) metadata, then one
``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

__all__ = ["unit_text", "validate_feedback", "validate_latency", "validate_metadata", "validate_quality",
           "validate_tokens"]


def validate_metadata(metadata: Any) -> str | None:
    """Return ``metadata`` encoded as strict JSON (keys sorted), or None.

    Raises:
        ValueError: ``metadata`` is not a mapping, or holds a key that is not a
            str or a value that is not JSON (str, int, finite float, bool,
            None, list, tuple, dict); the message names the key path, e.g.
            ``metadata['a'][1]: nan is not a finite number``.
    """
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise ValueError("metadata must be a mapping (dict) of str keys to JSON values, "
                         f"got {type(metadata).__name__}")
    value = metadata if type(metadata) is dict else dict(metadata)
    try:
        _check_json(value)
    except _NotJson as bad:
        raise ValueError(f"metadata{''.join(reversed(bad.path))}: {bad.why}; metadata must hold JSON values only "
                         "(str keys; str, int, finite float, bool, None, lists and dicts)") from None
    return json.dumps(value, sort_keys=True, allow_nan=False)


class _NotJson(Exception):
    def __init__(self, why: str) -> None:
        self.why = why
        self.path: list[str] = []


def _check_json(value: Any) -> None:
    """Raise :class:`_NotJson` (with the key path, innermost first) unless ``value`` is plain JSON."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return
    if kind is float or isinstance(value, float):
        if value - value != 0.0:  # NaN or +-inf
            raise _NotJson(f"{value!r} is not a finite number")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _NotJson(f"key {key!r} is not a str")
            try:
                _check_json(item)
            except _NotJson as bad:
                bad.path.append(f"[{key!r}]")
                raise
        return
    if kind is list or kind is tuple:
        for i, item in enumerate(value):
            try:
                _check_json(item)
            except _NotJson as bad:
                bad.path.append(f"[{i}]")
                raise
        return
    if isinstance(value, int) and not isinstance(value, bool):
        return
    raise _NotJson(f"{kind.__name__} is not a JSON value")


def unit_text(unit_id: Any) -> str | None:
    """``unit_id`` as stored: a str as is, an int as its decimal text, None as None.

    Raises:
        ValueError: Any other type (list, float, bytes, bool, ...).
    """
    kind = type(unit_id)
    if kind is str or unit_id is None:
        return unit_id
    if kind is int:
        return str(unit_id)
    raise ValueError(f"unit_id must be a str or an int (user or conversation id), got {unit_id!r} "
                     f"({kind.__name__})")


def validate_feedback(feedback: Any) -> int:
    """Return ``feedback`` as an int in {-1, 0, 1}.

    Raises:
        ValueError: ``feedback`` is not exactly -1, 0 or 1 (booleans, strings,
            None and floats such as 0.5 are rejected).
    """
    if isinstance(feedback, bool) or not isinstance(feedback, int) or feedback not in (-1, 0, 1):
        raise ValueError(f"feedback must be -1, 0 or 1 (int), got {feedback!r}")
    return int(feedback)


def validate_quality(quality_score: Any) -> float | None:
    """Return ``quality_score`` as a float in [0, 1], or None.

    Raises:
        ValueError: not a real number, NaN, infinite, or outside [0, 1].
    """
    if quality_score is None:
        return None
    if isinstance(quality_score, bool) or not isinstance(quality_score, (int, float)):
        raise ValueError(f"quality_score must be a number in [0, 1] or None, got {quality_score!r}")
    value = float(quality_score)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"quality_score must be a finite number in [0, 1], got {quality_score!r}")
    return value


def validate_latency(latency_ms: Any) -> float | None:
    """Return ``latency_ms`` (milliseconds) as a finite float >= 0, or None.

    Raises:
        ValueError: not a real number, NaN, infinite or negative.
    """
    if latency_ms is None:
        return None
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, (int, float)):
        raise ValueError(f"latency_ms must be a number of milliseconds or None, got {latency_ms!r}")
    value = float(latency_ms)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"latency_ms must be a finite number >= 0 (milliseconds), got {latency_ms!r}")
    return value


def validate_tokens(count: Any, name: str) -> int:
    """Return a token count as an int >= 0.

    Raises:
        ValueError: not an int (booleans and floats are rejected) or negative; the message names ``name``.
    """
    if type(count) is not int or count < 0:
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            return int(count)  # an int subclass (e.g. numpy's are not; IntEnum is)
        raise ValueError(f"{name} must be an int >= 0 (a token count) or None, got {count!r}")
    return count
