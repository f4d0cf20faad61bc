"""Rows the writer of :class:`~afs_continuous.logger.UsageLogger` inserts (private).

A record travels from ``log()`` to the writer as a tuple (texts already capped, redacted, original
lengths kept); the writer turns a batch into rows here: tuples in column order for SQLite's
multi-row ``INSERT`` (:func:`sqlite_insert_many`, no per-row SQLAlchemy processing), dicts for
SQLAlchemy Core elsewhere. Record ids are made here too (:func:`new_record_id`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from itertools import chain
from typing import Any, Iterator

from ._conversation import encode_messages
from ._text import clean_text

__all__ = ["new_record_id", "sqlite_insert_many", "FEEDBACK_COLUMNS", "USAGE_COLUMNS", "EVENT_LEN", "clean", "sqlite_ts",
           "record_row"]


USAGE_COLUMNS = ("id", "created_at", "query", "response", "model", "latency_ms", "quality_score", "unit_id",
                 "metadata_json", "content_hash", "truncated", "query_chars", "response_chars", "messages_json",
                 "experiment_id", "arm", "prompt_tokens", "completion_tokens", "fallback_from")
FEEDBACK_COLUMNS = ("record_id", "feedback", "created_at", "comment")
_MAX_CHUNK = 256  # rows per multi-row INSERT (statement sizes are powers of two, so a few cached statements serve every batch)
_statements: dict[tuple[str, int, int], str] = {}
EVENT_LEN = 4  # a feedback event in the queue: (record_id, feedback, created_at, comment); a record is longer


_V7_CLEAR = ~((0xF << 76) | (0x3 << 62))  # the version and variant bits of the 80 random ones
_V7_SET = (0x7 << 76) | (0x2 << 62)  # version 7, variant 0b10


def new_record_id() -> str:
    """A new record id: a UUIDv7 (RFC 9562, section 5.7) as 32 lowercase hex characters.

    The first 48 bits are the Unix time in milliseconds, then 74 random bits (plus the version and
    variant bits) from ``os.urandom``, read 256 ids' worth at a time per thread (one system call
    per 256 ids: under load a ``getrandom`` call per request cost more than the rest of ``log()``).
    Ids of records logged close in time are close in the primary-key index, so inserting them
    appends to its last pages instead of touching a random page per record (and a feedback event's
    record is found near the end of that index): in a busy service this keeps the writer's cost per
    record flat as the store grows. Unguessable as a uuid4 is for practical purposes (74 random
    bits from the OS's CSPRNG); it reveals the time of the call to the millisecond, which the caller
    that receives it knows anyway.
    """
    try:
        rand = next(_random.bits)
    except (AttributeError, StopIteration):
        _random.bits = _random_bits()
        rand = next(_random.bits)
    return f"{(time.time_ns() // 1_000_000) << 80 | (rand & _V7_CLEAR) | _V7_SET:032x}"


def _random_bits() -> Iterator[int]:
    buf = os.urandom(10 * 256)
    return iter([int.from_bytes(buf[i:i + 10], "big") for i in range(0, len(buf), 10)])


class _PerThread(threading.local):
    bits: Iterator[int]


_random = _PerThread()


def _forget_random_after_fork() -> None:  # a child must never repeat its parent's random bits
    global _random
    _random = _PerThread()


os.register_at_fork(after_in_child=_forget_random_after_fork)


def clean(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def sqlite_ts(value: datetime) -> str:
    """A UTC datetime in the text form SQLAlchemy's SQLite DateTime stores (naive UTC, microseconds)."""
    if value.utcoffset():
        value = value.astimezone(timezone.utc)
    return value.isoformat(" ", "microseconds")[:26]  # without the offset; several times faster than strftime


def sqlite_insert_many(conn: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into a SQLite table with multi-row ``INSERT ... VALUES``.

    One statement step per chunk of rows, not one per row as ``executemany`` does (the driver
    releases and takes back the GIL around every step). Chunks are powers of two up to 256 rows (bounded by the
    connection's limit on bound parameters), so the driver's statement cache holds a few statements
    for every batch size; rows are inserted in order (feedback events keep their order of ids).

    Args:
        conn: A SQLAlchemy ``Connection`` to SQLite inside the write transaction.
        table: Table name; ``columns``: its column names, in the order of each row's values.
        rows: The rows to insert.
    """
    ncols = len(columns)
    limit = _variable_limit(conn)
    top = _MAX_CHUNK
    while top > 1 and top * ncols > limit:
        top //= 2
    i, n = 0, len(rows)
    while i < n:
        size = top
        while size > n - i:
            size //= 2
        key = (table, ncols, size)
        sql = _statements.get(key)
        if sql is None:
            one = f"({', '.join('?' * ncols)})"
            sql = _statements[key] = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * size)}"
        params = tuple(chain.from_iterable(rows[i:i + size]))
        conn.exec_driver_sql(sql, params)
        i += size


def _variable_limit(conn: Any) -> int:
    """The connection's maximum number of bound parameters per statement (SQLite >= 3.32: 32,766)."""
    try:
        return int(conn.connection.dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    except (AttributeError, sqlite3.Error):  # another driver: SQLite's historical default
        return 999


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
