"""Redaction of user text before it is queued (private): ``redact_fn(text) -> text``.

The logger applies the function on the caller's thread inside ``log()`` and ``record_feedback()``,
before the record or event is queued, so unredacted text never reaches the queue, the store, a
drop report or a log line. Applied to: the query and the response (``query=``); every turn's text
and the response (``messages=``; the record's query is the redacted final user turn); a feedback
comment. Not applied to: metadata, unit ids, model names (structured fields, not free text).

A function that raises, or returns anything but a str, makes the call raise
:class:`~afs_continuous.errors.RedactionError` (a ``ValueError``) naming the function and the
field; nothing is stored. The function's own exception is not chained into it, since its message
may quote the unredacted text; the error names its type.
"""

from __future__ import annotations

from typing import Any, Callable

from ._imports import import_callable
from .errors import RedactionError

__all__ = ["RedactFn", "resolve", "redact", "redact_call"]

RedactFn = Callable[[str], str]


def resolve(fn: RedactFn | None, spec: str | None) -> RedactFn | None:
    """The redactor to use: ``fn`` (the ``redact_fn=`` argument) if given, else the one the import
    path ``spec`` (``logger_config.redact_fn``) names, else None.

    Raises:
        ValueError: ``fn`` is not callable.
        ConfigError: ``spec`` cannot be imported or names no callable (the message names the key).
    """
    if fn is not None:
        if not callable(fn):
            raise ValueError(f"redact_fn must be a callable taking and returning a str, or None; got {type(fn).__name__}")
        return fn
    if spec:
        return import_callable(spec, "redaction function (logger_config.redact_fn)")
    return None


def _name(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}:{name}" if module else name


def redact(fn: RedactFn, text: str, field: str) -> str:
    """``fn(text)``, checked.

    Raises:
        RedactionError: ``fn`` raised, or returned something other than a str.
    """
    failed = None
    try:
        out = fn(text)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not store this text
        failed = type(exc).__name__
    if failed is not None:  # raised outside the except block: the original is not even in __context__
        raise RedactionError(f"redact_fn {_name(fn)} raised {failed} on {field}; nothing was stored "
                             "(its message is not shown: it may quote the unredacted text)")
    if not isinstance(out, str):
        raise RedactionError(f"redact_fn {_name(fn)} must return a str, returned {type(out).__name__} for {field}; "
                             "nothing was stored")
    return out


def redact_call(fn: RedactFn, query: str, response: str, pairs: list[tuple[str, str]] | None
                ) -> tuple[str, str, list[tuple[str, str]] | None]:
    """The texts of one ``log()`` call redacted: ``(query, response, pairs)``; with a conversation
    (``pairs``, ``[(role, text), ...]``) every turn is, and the query is the redacted final turn.

    Raises:
        RedactionError: ``fn`` failed on one of them (the message names which).
    """
    if pairs is None:
        return redact(fn, query, "query"), redact(fn, response, "response"), None
    pairs = [(role, redact(fn, text, f"messages[{i}].content")) for i, (role, text) in enumerate(pairs)]
    return pairs[-1][1], redact(fn, response, "response"), pairs
