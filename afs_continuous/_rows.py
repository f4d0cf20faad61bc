"""Rows the writer of :class:`~afs_continuous.logger.UsageLogger` inserts (private).

A record travels from ``log()`` to the writer as a tuple (texts already capped, redacted, original
lengths kept); the writer turns a batch into rows here: tuples in column order for SQLite's
``executemany`` (no per-row SQLAlchemy processing), dicts for SQLAlchemy Core elsewhere.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ._conversation import encode_messages
from ._text import clean_text

__all__ = ["USAGE_COLUMNS", "SQLITE_INSERT_USAGE", "SQLITE_INSERT_FEEDBACK", "EVENT_LEN", "clean", "sqlite_ts",
           "record_row"]


USAGE_COLUMNS = ("id", "created_at", "query", "response", "model", "latency_ms", "quality_score", "unit_id",
                 "metadata_json", "content_hash", "truncated", "query_chars", "response_chars", "messages_json",
                 "experiment_id", "arm", "prompt_tokens", "completion_tokens", "fallback_from")
SQLITE_INSERT_USAGE = (f"INSERT INTO usage_records ({', '.join(USAGE_COLUMNS)}) "
                       f"VALUES ({', '.join('?' * len(USAGE_COLUMNS))})")
SQLITE_INSERT_FEEDBACK = "INSERT INTO feedback_events (record_id, feedback, created_at, comment) VALUES (?, ?, ?, ?)"
EVENT_LEN = 4  # a feedback event in the queue: (record_id, feedback, created_at, comment); a record is longer


def clean(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def sqlite_ts(value: datetime) -> str:
    """A UTC datetime in the text form SQLAlchemy's SQLite DateTime stores (naive UTC, microseconds)."""
    if value.utcoffset():
        value = value.astimezone(timezone.utc)
    return value.isoformat(" ", "microseconds")[:26]  # without the offset; several times faster than strftime


def record_row(r: tuple[Any, ...], sqlite: bool) -> Any:
    """The row of a record tuple built by ``log()`` (texts already capped; original lengths kept):
    a tuple in ``USAGE_COLUMNS`` order for SQLite's fast path, else a dict for SQLAlchemy Core."""
    (record_id, created_at, query, response, model, latency, quality, unit_id, meta, q_len, r_len, pairs, capped,
     experiment_id, arm, p_tok, c_tok, fallback_from) = r
    truncated = q_len > len(query) or r_len > len(response) or capped
    query, response = clean_text(query), clean_text(response)
    messages_json = None if pairs is None else clean_text(encode_messages(pairs))
    values = (record_id, sqlite_ts(created_at) if sqlite else created_at, query, response, model, latency, quality,
              unit_id, meta, None, int(truncated) if sqlite else truncated, q_len, r_len, messages_json,
              experiment_id, arm, p_tok, c_tok, fallback_from)
    return values if sqlite else dict(zip(USAGE_COLUMNS, values))
