"""UsageLogger: the hot path that records model calls and feedback.

``log()`` validates its arguments, builds the record (id generated here,
timestamp from the clock) and, in the default ``async`` durability, hands it to
a bounded in-memory queue; one background writer thread per process drains the
queue and commits batches in single transactions. The record id is returned at
once, before the record is on disk.

Durability bound (async): a record whose ``log()`` returned is committed within
``flush_interval_s`` while the store keeps up; ``flush()``, ``close()``,
interpreter exit (``atexit``), SIGTERM (a handler installed from the main
thread that flushes, then runs the previous handler) and leaving a ``with``
block commit everything handed over so far. Only a hard kill (``kill -9``, power loss) can lose records,
and only those handed over in the last ``flush_interval_s``. With
``durability="sync"`` every call commits before it returns.

Records that cannot be written (queue full, store failing, still queued when
the process exits) are counted as dropped, reported at ERROR level with the
store and the cause, and recorded in the store's ``writer_drops`` table for
every process to see (see :mod:`afs_continuous._drops`).

Feedback is stored as append-only events (the latest event per record wins), so
feedback that arrives before its record is committed, from another process, or
twice, is never lost.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, Mapping

from sqlalchemy import insert, select
from sqlalchemy.exc import OperationalError

from . import _rows
from ._batch_queue import BatchQueue
from ._recent_ids import RecentIds
from ._redaction import RedactFn, redact, redact_call
from ._redaction import resolve as resolve_redact_fn
from ._drops import DropTally, SpoolFile, store_problem
from ._logger_drops import DropAccounting
from ._logger_process import LIVE as _LIVE
from ._logger_process import after_fork_parent as _after_fork_parent
from ._logger_process import before_fork as _before_fork
from ._logger_process import close_at_exit as _close_at_exit
from ._logger_process import install_sigterm_flush as _install_sigterm_flush
from ._logger_process import reset_after_fork as _reset_after_fork
from ._rollups import apply_batch as apply_rollups
from ._rollups import lock as lock_rollups
from ._conversation import validate_messages
from ._validate import unit_text as _unit_text
from ._validate import validate_feedback, validate_latency, validate_metadata, validate_quality, validate_tokens
from .clock import Clock, utc_now
from .config import Durability, LoggerConfig
from .errors import StoreError
from .store import FeedbackEvent, Store, UsageRecord

__all__ = ["UsageLogger", "validate_feedback", "validate_quality", "validate_latency", "validate_metadata",
           "validate_messages", "validate_tokens"]

log = logging.getLogger("afs_continuous")

_USAGE = UsageRecord.__table__  # type: ignore[attr-defined]
_FEEDBACK = FeedbackEvent.__table__  # type: ignore[attr-defined]
_MAX_RETRIES = 8
_UTC_NOW = partial(datetime.now, timezone.utc)
_INF = float("inf")


def _as_text(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    raise ValueError(f"{name} must be str (or UTF-8 bytes), got {type(value).__name__}")


@dataclass
class _Flush:
    """Marker put in the queue; set once everything before it is committed."""

    done: threading.Event


class UsageLogger(DropAccounting):
    """Records model calls and user feedback in the store.

    Args:
        db_path: SQLite file path (``~`` expanded, directories created), a
            SQLAlchemy URL, or an open :class:`~afs_continuous.store.Store`.
        config: Writer settings; see :class:`~afs_continuous.config.LoggerConfig`.
        clock: Callable returning the current timezone-aware UTC datetime.
        durability: Shortcut overriding ``config.durability`` (``"async"`` or ``"sync"``).
        redact_fn: ``redact_fn(text) -> text`` applied to every query, response,
            conversation turn and feedback comment before it is queued (e.g.
            :func:`afs_continuous.redact.basic`); overrides ``config.redact_fn``
            (an import path). None: the configuration's, else no redaction.

    Raises:
        StoreError: The store cannot be opened (the message names the path).
        ConfigError: ``config.redact_fn`` cannot be imported.
        ValueError: ``redact_fn`` is not callable.

    Example:
        >>> import tempfile, os
        >>> logger = UsageLogger(os.path.join(tempfile.mkdtemp(), "usage.db"))
        >>> rid = logger.log("What is 65816 assembly?", "The SNES CPU...", "nayru-v1", quality_score=0.85)
        >>> logger.record_feedback(rid, feedback=1)
        True
        >>> logger.get_statistics()["total"]
        1
        >>> logger.close()
        True
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | Store,
        *,
        config: LoggerConfig | None = None,
        clock: Clock = utc_now,
        durability: str | Durability | None = None,
        redact_fn: RedactFn | None = None,
    ) -> None:
        self._redact = resolve_redact_fn(redact_fn, (config or LoggerConfig()).redact_fn)  # before opening the store
        self._owns_store = not isinstance(db_path, Store)  # close() closes the connections of a store it opened
        self.store = db_path if isinstance(db_path, Store) else Store(str(db_path))
        self.config = config if config is not None else LoggerConfig()
        if durability is not None:
            self.config = self.config.model_copy(update={"durability": Durability(durability)})
        self.clock = clock  # a property: also sets the C-level call the hot path uses for the default clock
        self._sync = self.config.durability == Durability.SYNC
        self._recent = RecentIds()  # for record_feedback's answer
        self._closed = False
        self.n_logged = 0
        self.n_feedback = 0
        self.n_committed = 0
        self.n_batches = 0  # write transactions committed by this process's writer (batches)
        self.n_dropped = 0
        self.n_write_errors = 0
        self.last_error: str | None = None
        self._last_drop_log = 0.0
        self._dropped = [0, 0]  # records, feedback events: dropped in this process
        self._fb_committed = 0
        self._tally = DropTally()  # dropped but not yet counted in the store's writer_drops table
        self._tally_lock = threading.Lock()
        self._spool = SpoolFile(self.store.path) if self.store.path is not None else None
        # Hourly rollups in the batch's transaction (status, report and dashboard read them). Only the
        # logging benchmark turns this off, to measure their cost; a store written without them
        # reports wrong figures until `afs-continuous db rebuild-rollups`.
        self._rollups = True
        self._init_writer()
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)
        _LIVE.add(self)
        if self.config.flush_on_sigterm and not self._sync:
            _install_sigterm_flush()
        if hasattr(os, "register_at_fork"):
            # Hold the write lock across fork(): a child must never inherit SQLite mid-transaction
            # (its lock bookkeeping would say "locked" forever in the child).
            os.register_at_fork(before=lambda: _before_fork(ref), after_in_parent=lambda: _after_fork_parent(ref),
                                after_in_child=lambda: _reset_after_fork(ref))

    @property
    def clock(self) -> Clock:
        """The clock that timestamps records and feedback events (a zero-argument callable returning UTC)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = clock
        # utc_now itself is a Python function; the same call as a C-level partial saves a frame per call
        self._now = _UTC_NOW if clock is utc_now else clock

    # ---- public API -----------------------------------------------------------------

    def log(
        self,
        query: str | None = None,
        response: str | None = None,
        model: Any = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        latency_ms: float | None = None,
        quality_score: float | None = None,
        unit_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        fallback_from: str | None = None,
    ) -> str:
        """Record one model call: a prompt (``query=``) or a whole conversation (``messages=``).

        With a ``redact_fn``, every text (query, response, each turn) goes through it before
        the record is queued (see :mod:`afs_continuous._redaction`).

        Args:
            query: The user's prompt (str; UTF-8 bytes are decoded). Exactly one of
                ``query`` and ``messages``.
            response: The model's answer (str).
            model: The model version that served the call: the ``ModelVersion``
                returned by ``loop.route(...)`` (records its exposure: the
                experiment and arm it was routed under, so the record counts
                for that arm), or a version name (str).
            messages: The conversation answered, in OpenAI chat format: a list
                of ``{"role": "system"|"developer"|"user"|"assistant"|"tool",
                "content": str | [{"type": "text", "text": str}, ...]}`` ending
                with the user turn being answered. Stored whole (system prompt
                and earlier turns); the final user turn is also the record's
                ``query``. Each turn is capped at ``max_text_chars`` characters
                (a capped record is kept but never trained on).
            latency_ms: End-to-end latency in milliseconds (>= 0), optional.
            quality_score: Quality in [0, 1] (e.g. an automatic judge), optional.
            unit_id: The unit the request was routed by (user or conversation
                id): a str, or an int (stored as its decimal text).
            metadata: Extra fields stored with the record: a mapping with str
                keys and JSON values (str, int, finite float, bool, None,
                lists, dicts), nested at any depth.
            prompt_tokens: Tokens of the prompt as the engine counted them (int >= 0), optional.
            completion_tokens: Tokens of the response (int >= 0), optional.
            fallback_from: The version the request was routed to but not served
                by (the engine had lost it and ``model`` served instead), optional.

        Returns:
            The record id (32 hex characters), usable with :meth:`record_feedback`.

        Raises:
            ValueError: An argument is invalid (the message names it, for
                ``messages`` the entry, e.g. ``messages[2].role``, and for
                ``metadata`` the offending key path); nothing is stored.
            RedactionError: The ``redact_fn`` raised or returned a non-str (a
                ``ValueError``; the message names the function and the field,
                e.g. ``messages[1].content``); nothing is stored.
            StoreError: The logger was closed, or (``sync`` durability only) the
                commit failed after its retries (disk full, store damaged or
                unreachable); the record is not stored and is counted as dropped.
                In ``async`` durability storage errors never raise here: the
                writer retries, then counts the records as dropped (see
                ``get_status_summary()["drops"]``) and logs an ERROR.
        """
        pairs = None
        if messages is not None:
            if query is not None:
                raise ValueError("pass either query= (one prompt) or messages= (a conversation), not both")
            pairs = validate_messages(messages)
            query = pairs[-1][1]
        elif query is None:
            raise ValueError("query must be str (the prompt), got None; or pass messages= (the conversation)")
        # Fast paths for the usual types first (the hot path of a request handler); anything else goes
        # through the validators, which raise the documented errors.
        if type(query) is not str:
            query = _as_text(query, "query")
        if type(response) is not str:
            response = _as_text(response, "response")
        experiment_id = arm = None
        if type(model) is not str:
            name = getattr(model, "name", None)
            if type(name) is not str:
                raise ValueError(f"model must be the ModelVersion returned by route() or a non-empty str naming the "
                                 f"model version, got {model!r}")
            experiment_id, arm, model = model.experiment_id, model.arm, name
        if not model:
            raise ValueError(f"model must be a non-empty str naming the model version, got {model!r}")
        latency = latency_ms if type(latency_ms) is float and 0.0 <= latency_ms < _INF else validate_latency(latency_ms)
        quality = (quality_score if type(quality_score) is float and 0.0 <= quality_score <= 1.0
                   else validate_quality(quality_score))
        meta = None if metadata is None else validate_metadata(metadata)
        unit = unit_id if type(unit_id) is str else _unit_text(unit_id)
        p_tok = None if prompt_tokens is None else validate_tokens(prompt_tokens, "prompt_tokens")
        c_tok = None if completion_tokens is None else validate_tokens(completion_tokens, "completion_tokens")
        if fallback_from is not None and (type(fallback_from) is not str or not fallback_from):
            raise ValueError(f"fallback_from must be None or the name of the version the request was routed to, "
                             f"got {fallback_from!r}")
        if self._closed:
            raise StoreError("this UsageLogger is closed; create a new one")
        if self._redact is not None:  # before anything is queued: the store never sees the original
            query, response, pairs = redact_call(self._redact, query, response, pairs)
        record_id = _rows.new_record_id()  # a UUIDv7: time-ordered, so the writer appends to the id index
        # Cap the texts here, not in the writer, so a huge response is not held
        # in the queue (memory stays bounded while the store is slow or locked).
        max_chars = self.config.max_text_chars
        q_len, r_len = len(query), len(response)
        if q_len > max_chars or r_len > max_chars:
            query, response = query[:max_chars], response[:max_chars]
        capped = False
        if pairs is not None:
            for i, (role, text) in enumerate(pairs):
                if len(text) > max_chars:
                    pairs[i] = (role, text[:max_chars])
                    capped = True
        row = (record_id, self._now(), query, response, model, latency, quality,
               unit, meta, q_len, r_len, pairs, capped, experiment_id, arm, p_tok, c_tok, fallback_from)
        self._recent.add(record_id)
        self.n_logged += 1
        if self._sync:
            self._write([row], [])
        elif not (self._writer_running and self._queue.put_nowait(row)):
            self._enqueue(row)  # the writer to start, or a full queue to wait for
        return record_id

    def record_feedback(self, record_id: str, feedback: int = 1, comment: str | None = None) -> bool:
        """Record user feedback on a logged call (an append-only event; the latest wins).

        Args:
            record_id: Id returned by :meth:`log` (from any process).
            feedback: 1 = good, -1 = bad, 0 = neutral.
            comment: The user's free-text feedback (str), stored with the
                event (through ``redact_fn`` when one is set); capped at
                ``max_text_chars`` characters. Optional.

        Returns:
            True if this logger logged the record recently (among its last
            16,384 records at least); False if the record is not known to
            this process (logged by another worker or process, earlier, or
            not at all). The store is never read here, so the call costs the
            same wherever the record was logged. The event is stored either
            way and joins its record whenever that is (or was) stored.

        Raises:
            ValueError: ``feedback`` is not -1, 0 or 1, ``record_id`` is not a
                str, or ``comment`` is neither None nor a str.
            RedactionError: The ``redact_fn`` failed on the comment (a
                ``ValueError``); nothing is stored.
        """
        value = feedback if type(feedback) is int and -1 <= feedback <= 1 else validate_feedback(feedback)
        if not isinstance(record_id, str) or not record_id:
            raise ValueError(f"record_id must be a non-empty str, got {record_id!r}")
        if comment is not None:
            if not isinstance(comment, str):
                raise ValueError(f"comment must be None or a str (the user's words), got {type(comment).__name__}")
            if self._redact is not None:
                comment = redact(self._redact, comment, "comment")
            comment = comment[: self.config.max_text_chars]
        if self._closed:
            raise StoreError("this UsageLogger is closed; create a new one")
        event = (record_id, value, self._now(), comment)
        self.n_feedback += 1
        if self._sync:
            self._write([], [event])
        elif not (self._writer_running and self._queue.put_nowait(event)):
            self._enqueue(event)
        return record_id in self._recent

    def flush(self, timeout_s: float | None = 30.0) -> bool:
        """Block until everything handed over so far is committed.

        Args:
            timeout_s: Longest wait in seconds (None: no limit).

        Returns:
            True if drained within the timeout, False otherwise (never raises).
        """
        if self._sync or self._closed:
            return True
        if self._thread is None or not self._thread.is_alive():
            if self._queue.empty():
                return True
            self._start_writer()
        marker = _Flush(threading.Event())
        self._queue.put_control(marker)
        return marker.done.wait(timeout_s)

    def close(self, timeout_s: float | None = 30.0) -> bool:
        """Flush and stop the writer. Idempotent.

        Args:
            timeout_s: Longest wait in seconds for both the flush and the writer's exit (None: no limit).

        Returns:
            True if everything was committed within ``timeout_s``.
        """
        if self._closed:
            return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        drained = self.flush(timeout_s)
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put_control(None)
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._owns_store:
            self.store.dispose()
        return drained

    def __enter__(self) -> "UsageLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_statistics(self) -> dict[str, Any]:
        """Aggregate statistics over every record in the store (all processes).

        Flushes this logger first, so its own records are counted.

        Returns:
            ``{"total", "with_feedback", "positive_feedback", "negative_feedback",
            "feedback_rate" (fraction 0..1), "avg_quality_score" (0.0 when no
            record has a score; see "n_scored"), "n_scored", "avg_latency_ms", "by_model": {name: count},
            "first_at", "last_at" (ISO 8601 or None: the oldest and newest records still stored;
            the counts come from the hourly rollups and keep records that retention deleted),
            "writer": {...}}``.
        """
        self.flush()
        from ._queries import usage_statistics

        with self.store.read() as conn:
            stats = usage_statistics(conn)
        stats["writer"] = self.writer_stats()
        return stats

    def get_records(self, *, limit: int = 100, model: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
        """Return the newest records (with their latest feedback), newest first."""
        self.flush()
        from ._queries import latest_feedback

        stmt = select(_USAGE, latest_feedback())
        if model is not None:
            stmt = stmt.where(_USAGE.c.model == model)
        if since is not None:
            stmt = stmt.where(_USAGE.c.created_at >= since)
        stmt = stmt.order_by(_USAGE.c.created_at.desc()).limit(limit)
        with self.store.read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def writer_stats(self) -> dict[str, Any]:
        """Counters of this process's writer: logged, committed, write transactions, dropped, errors, queue depth.

        Drops of every process, persisted in the store, are in
        ``get_status_summary()["drops"]``.
        """
        return {
            "durability": self.config.durability.value,
            "n_logged": self.n_logged,
            "n_feedback": self.n_feedback,
            "n_committed": self.n_committed,
            "n_batches": self.n_batches,
            "n_dropped": self.n_dropped,
            "n_dropped_records": self._dropped[0],
            "n_dropped_feedback": self._dropped[1],
            "n_write_errors": self.n_write_errors,
            "queue_depth": 0 if self._sync else self._queue.qsize(),
            "last_error": self.last_error,
        }

    # ---- writer -----------------------------------------------------------------------

    def _init_writer(self) -> None:
        self._queue = BatchQueue(self.config.queue_size)
        self._thread: threading.Thread | None = None
        self._writer_running = False  # set before the writer starts, cleared when it ends (cheaper than is_alive())
        self._start_lock = threading.Lock()
        self._write_lock = threading.Lock()  # held during every write transaction, and across fork()

    def _start_writer(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._writer_running = True
                self._thread = threading.Thread(target=self._run, name="afs-continuous-writer", daemon=True)
                self._thread.start()

    def _enqueue(self, item: tuple[Any, ...]) -> None:
        if not self._writer_running:
            self._start_writer()
        if not self._queue.put_nowait(item):
            if not self._queue.put(item, self.config.enqueue_timeout_s):
                is_event = len(item) == _rows.EVENT_LEN
                self._count_drop(int(not is_event), int(is_event),
                                 f"the writer queue stayed full for {self.config.enqueue_timeout_s:g} s "
                                 "(the store is slower than the traffic, or locked)")

    def _run(self) -> None:
        q = self._queue
        batch_size = self.config.batch_size
        # A batch gathers for at most half the flush interval after its first item (see
        # _batch_queue), so that it is committed within flush_interval_s while the store keeps up:
        # one transaction per batch, not per record (BEGIN, the rollups' reads and upsert, COMMIT).
        linger = self.config.flush_interval_s / 2
        try:
            while True:
                q.wait(linger, batch_size)
                records: list[tuple[Any, ...]] = []
                events: list[tuple[Any, ...]] = []
                markers: list[_Flush] = []
                stop = False
                for item in q.take(batch_size):
                    if item is None:
                        stop = True
                    elif type(item) is _Flush:
                        markers.append(item)
                    elif len(item) == _rows.EVENT_LEN:
                        events.append(item)
                    else:
                        records.append(item)
                if records or events:
                    self._write(records, events)
                for marker in markers:
                    marker.done.set()
                if stop:
                    return
        finally:
            self._writer_running = False

    def _write(self, records: list[tuple[Any, ...]], events: list[tuple[Any, ...]]) -> None:
        """Commit one batch in one transaction, retrying transient errors with backoff."""
        fast = self.store.is_sqlite
        rows = [_rows.record_row(r, fast) for r in records]
        if fast:  # the driver's executemany with tuples: no per-row ORM/Core processing on the hot writer
            fb_rows: list[Any] = [(e[0], e[1], _rows.sqlite_ts(e[2]), _rows.clean(e[3])) for e in events]
        else:
            fb_rows = [{"record_id": e[0], "feedback": e[1], "created_at": e[2], "comment": _rows.clean(e[3])}
                       for e in events]
        facts = [(r[0], r[1], r[4], r[5], r[6], r[13], r[14], r[15], r[16], r[17]) for r in records]
        votes = [(e[0], e[1]) for e in events]
        delay = 0.01
        for attempt in range(_MAX_RETRIES):
            try:
                with self._write_lock, self.store.write() as conn:
                    if self._rollups:  # before the events are inserted: it reads the earlier votes
                        lock_rollups(conn)
                        apply_rollups(conn, facts, votes)
                    if rows and fast:
                        _rows.sqlite_insert_many(conn, "usage_records", _rows.USAGE_COLUMNS, rows)
                    elif rows:
                        conn.execute(insert(_USAGE), rows)
                    if fb_rows and fast:
                        _rows.sqlite_insert_many(conn, "feedback_events", _rows.FEEDBACK_COLUMNS, fb_rows)
                    elif fb_rows:
                        conn.execute(insert(_FEEDBACK), fb_rows)
                self.n_committed += len(rows)
                self.n_batches += 1
                self._fb_committed += len(fb_rows)
                if self._tally or (self._spool is not None and self._spool.pending()):
                    self._persist_drops()
                return
            except OperationalError as exc:  # locked / busy / disk I/O: transient, retry
                self.last_error = store_problem(exc)  # never the statement's parameters (user text)
                if attempt == _MAX_RETRIES - 1:
                    break
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception as exc:  # noqa: BLE001 - the writer must never die
                self.last_error = f"{type(exc).__name__}: {store_problem(exc)}"
                break
        self.n_write_errors += 1
        self._count_drop(len(rows), len(fb_rows), f"write failed: {self.last_error}")
        if self._sync:
            raise StoreError(f"could not write to the store {self.store.display_url}: {self.last_error}")
