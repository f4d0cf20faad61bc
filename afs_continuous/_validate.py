"""Validation of the free-form arguments of ``log()``: ``metadata`` and ``unit_id``.

Cheap on the hot path: one walk over the (usually tiny) metadata, then one
``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["unit_text", "validate_metadata"]


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
