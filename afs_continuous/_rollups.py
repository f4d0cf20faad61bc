"""Hourly rollups of the usage records, kept up to date in the writer's transaction (private).

One row of ``usage_rollups`` per hour, model version and exposure (experiment id and arm; 0 and
"" for records not routed under an experiment) holds: calls; count, sum and sum of squares of the
quality scores; count and sum of the latencies and their histogram; the number of records whose
latest vote is up (+1), down (-1) or neutral (0); token sums; fallbacks. The writer of
:class:`~afs_continuous.logger.UsageLogger` applies each batch to the rollups in the same
transaction that inserts it (:func:`apply_batch`), so the rollups always equal the raw aggregates:
counts exactly, float sums up to rounding (relative 1e-12), latency quantiles within
:data:`RELATIVE_ACCURACY`. Status, report and dashboard read the rollups, never the raw table,
so their cost depends on the hours covered, not on the number of records.

Feedback: a record counts once, with its latest vote (the newest event by id; the same rule as
every other reader). An event for a record that is already stored moves the record from its
previous vote's column to the new one (a repeated vote changes nothing); an event that arrives
before its record is counted when the record is inserted (the writer looks up earlier events of
the records it inserts). On PostgreSQL, writers of several processes serialise on a transaction
advisory lock (:data:`PG_LOCK`) so that these reads see every committed event; SQLite's
``BEGIN IMMEDIATE`` serialises them already.

Latency histogram: log-scale buckets with relative accuracy ``a`` = :data:`RELATIVE_ACCURACY`
(DDSketch; Masson, Rim and Lee, "DDSketch: a fast and fully-mergeable quantile sketch with
relative-error guarantees", PVLDB 12(12), 2019): bucket ``i`` holds latencies in
``(g**(i-1), g**i]`` ms with ``g = (1+a)/(1-a)``, and reports ``2 g**i / (g+1)``, within a
relative ``a`` of every latency in the bucket. A quantile (nearest rank) read from the merged
histograms is therefore within ``a`` of the exact nearest-rank quantile of the raw latencies.
Latencies below :data:`MIN_LATENCY_MS` share one bucket reported as 0.
"""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ._rows import sqlite_ts
from ._telemetry_tables import UsageRollup
from .store import FeedbackEvent, UsageRecord

__all__ = ["RELATIVE_ACCURACY", "MIN_LATENCY_MS", "PG_LOCK", "apply_batch", "rebuild", "subtract_records",
           "bucket_of", "bucket_value", "quantile", "merge_hist", "totals", "read_rows", "lock",
           "window_by_model", "hour_of", "day_of"]

R = UsageRollup.__table__  # type: ignore[attr-defined]
U = UsageRecord.__table__  # type: ignore[attr-defined]
F = FeedbackEvent.__table__  # type: ignore[attr-defined]

#: Relative accuracy of the latency quantiles (0.02 = every reported quantile within 2% of the exact one).
RELATIVE_ACCURACY = 0.02
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
#: Latencies (ms) below this share bucket :data:`_ZERO_BUCKET`, reported as 0 ms.
MIN_LATENCY_MS = 0.001
_ZERO_BUCKET = math.ceil(math.log(MIN_LATENCY_MS) / _LOG_GAMMA) - 1
#: Key of the PostgreSQL transaction advisory lock that serialises rollup writers.
PG_LOCK = 7714829014
_IN_CHUNK = 512  # ids per IN (...) list (a power of two: see _padded)
#: SQLite has its JSON functions built in from 3.38 (earlier only when compiled with JSON1): the
#: writer's reads then return one aggregated row instead of one row per record.
_SQLITE_JSON = sqlite3.sqlite_version_info >= (3, 38, 0)

# Positions in an accumulator list
_CALLS, _NQ, _QS, _QS2, _NL, _LS, _HIST, _UP, _DOWN, _NEUTRAL, _NTOK, _PTOK, _CTOK, _FALLBACK = range(14)
_COLUMNS = ("calls", "n_quality", "quality_sum", "quality_sumsq", "n_latency", "latency_sum", "latency_hist",
            "feedback_up", "feedback_down", "feedback_neutral", "n_tokens", "prompt_tokens", "completion_tokens",
            "fallbacks")
_VOTE_SLOT = {1: _UP, -1: _DOWN, 0: _NEUTRAL}

Key = tuple[datetime, str, int, str]


def bucket_of(latency_ms: float) -> int:
    """The histogram bucket of a latency in ms (>= 0)."""
    if latency_ms < MIN_LATENCY_MS:
        return _ZERO_BUCKET
    return math.ceil(math.log(latency_ms) / _LOG_GAMMA)


def bucket_value(bucket: int) -> float:
    """The latency (ms) a bucket reports: within :data:`RELATIVE_ACCURACY` of every latency in it."""
    if bucket <= _ZERO_BUCKET:
        return 0.0
    return 2.0 * _GAMMA ** bucket / (_GAMMA + 1.0)


def merge_hist(into: dict[int, int], other: Mapping[Any, int]) -> dict[int, int]:
    """Add histogram ``other`` (keys int or their JSON text) into ``into``; return ``into``."""
    for k, n in other.items():
        k = int(k)
        into[k] = into.get(k, 0) + int(n)
    return into


def quantile(hist: Mapping[int, int], q: float) -> float | None:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of a latency histogram, in ms; None when empty.

    Within :data:`RELATIVE_ACCURACY` (relative) of the exact nearest-rank quantile of the latencies
    counted (``numpy.quantile(x, q, method="inverted_cdf")``).
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    n = sum(hist.values())
    if n <= 0:
        return None
    rank = max(1, math.ceil(q * n - 1e-9))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return bucket_value(bucket)
    return bucket_value(max(hist))


def hour_of(at: datetime) -> datetime:
    """The start of the UTC hour of a timezone-aware datetime."""
    if at.utcoffset():
        at = at.astimezone(timezone.utc)
    return at.replace(minute=0, second=0, microsecond=0, tzinfo=timezone.utc)


_last_hour: list[tuple[Any, Any]] = [(None, None)]  # [(the hour's (year, month, day, hour) in UTC, its start)]


def _utc_hour(at: datetime) -> datetime:
    """:func:`hour_of`, answered from a one-entry cache for UTC datetimes (the clock's): a writer's
    batch shares one hour."""
    if at.tzinfo is timezone.utc:
        fields = (at.year, at.month, at.day, at.hour)
        last_fields, last_hour = _last_hour[0]  # one read of one tuple: consistent across threads
        if last_fields == fields:
            return last_hour
        hour = at.replace(minute=0, second=0, microsecond=0)
        _last_hour[0] = (fields, hour)
        return hour
    return hour_of(at)


def _new() -> list[Any]:
    return [0, 0, 0.0, 0.0, 0, 0.0, {}, 0, 0, 0, 0, 0, 0, 0]


def _add_record(acc: list[Any], latency: float | None, quality: float | None, p_tok: int | None,
                c_tok: int | None, fallback: Any, sign: int = 1) -> None:
    acc[_CALLS] += sign
    if quality is not None:
        acc[_NQ] += sign
        acc[_QS] += sign * quality
        acc[_QS2] += sign * quality * quality
    if latency is not None:
        acc[_NL] += sign
        acc[_LS] += sign * latency
        b = bucket_of(latency)
        hist = acc[_HIST]
        hist[b] = hist.get(b, 0) + sign
    if p_tok is not None or c_tok is not None:
        acc[_NTOK] += sign
        acc[_PTOK] += sign * (p_tok or 0)
        acc[_CTOK] += sign * (c_tok or 0)
    if fallback is not None:
        acc[_FALLBACK] += sign


def _key(created_at: datetime, model: str, experiment_id: int | None, arm: str | None) -> Key:
    return (_utc_hour(created_at), model, int(experiment_id or 0), arm or "")


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), _IN_CHUNK):
        yield ids[i:i + _IN_CHUNK]


def lock(conn: Connection) -> None:
    """Serialise rollup writers on PostgreSQL (a no-op on SQLite, whose write transactions are serial)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK})


def _in_list(n: int) -> str:
    return ", ".join("?" * n)


def _padded(chunk: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``(placeholders, parameters)`` of an IN list padded to a power of two by repeating its first id
    (the list matches the same rows): a handful of statement texts serve every batch, so the driver's
    statement cache reuses them instead of preparing (and keeping, up to 128 per connection) one per
    list length."""
    n = 1
    while n < len(chunk):
        n *= 2
    return _in_list(n), (*chunk, *([chunk[0]] * (n - len(chunk))))


# Statements built once (SQLAlchemy caches their compiled form): the writer runs them every batch;
# on SQLite the driver runs plain SQL (no per-statement SQLAlchemy work on the writer's hot path).
_VOTES_OF = (select(F.c.record_id, F.c.feedback).where(F.c.record_id.in_(bindparam("ids", expanding=True)))
             .order_by(F.c.id))
_KEYS_OF = select(U.c.id, U.c.created_at, U.c.model, U.c.experiment_id, U.c.arm).where(
    U.c.id.in_(bindparam("ids", expanding=True)))
_ROW_AT = select(*(R.c[c] for c in _COLUMNS)).where(
    R.c.hour == bindparam("k_hour"), R.c.model == bindparam("k_model"),
    R.c.experiment_id == bindparam("k_exp"), R.c.arm == bindparam("k_arm"))
_UPSERTS: dict[str, Any] = {}
_SQLITE_ROW_AT = (f"SELECT {', '.join(_COLUMNS)} FROM usage_rollups "
                  "WHERE hour = ? AND model = ? AND experiment_id = ? AND arm = ?")
_KEY_COLUMNS = ("hour", "model", "experiment_id", "arm")
_SQLITE_UPSERT = (f"INSERT INTO usage_rollups ({', '.join(_KEY_COLUMNS + _COLUMNS)}) "
                  f"VALUES ({_in_list(len(_KEY_COLUMNS) + len(_COLUMNS))}) "
                  f"ON CONFLICT (hour, model, experiment_id, arm) DO UPDATE SET "
                  f"{', '.join(f'{c} = excluded.{c}' for c in _COLUMNS)}")


def _latest_votes(conn: Connection, ids: Sequence[str]) -> dict[str, int]:
    """The latest stored vote of each record id that has events."""
    votes: dict[str, int] = {}
    for chunk in _chunks(ids):
        if conn.dialect.name == "sqlite":
            rows: Any = _sqlite_rows(conn, "record_id, feedback", "FROM feedback_events WHERE record_id IN ({ids}) "
                                     "ORDER BY id", chunk)
        else:
            rows = conn.execute(_VOTES_OF, {"ids": list(chunk)})
        for rid, value in rows:
            votes[rid] = int(value)
    return votes


def _record_keys(conn: Connection, ids: Sequence[str]) -> dict[str, Key]:
    keys: dict[str, Key] = {}
    for chunk in _chunks(ids):
        if conn.dialect.name == "sqlite":
            for rid, at, model, exp, arm in _sqlite_rows(conn, "id, created_at, model, experiment_id, arm",
                                                         "FROM usage_records WHERE id IN ({ids})", chunk):
                keys[rid] = (_hour_of_text(at), model, int(exp or 0), arm or "")
        else:
            for rid, at, model, exp, arm in conn.execute(_KEYS_OF, {"ids": list(chunk)}):
                keys[rid] = _key(at, model, exp, arm)
    return keys


def _sqlite_rows(conn: Connection, columns: str, rest: str, chunk: Sequence[str]) -> Any:
    """``SELECT columns rest`` on SQLite (``{ids}`` in ``rest``: the padded IN list of ``chunk``), read as
    one JSON array when SQLite has its JSON functions (the driver steps one row, not one per record),
    else, or when SQLite cannot build the JSON (a hand-written row holding a BLOB), row by row."""
    marks, params = _padded(chunk)
    query = f"SELECT {columns} {rest.format(ids=marks)}"
    if _SQLITE_JSON:
        try:
            found = conn.exec_driver_sql(f"SELECT json_group_array(json_array({columns})) FROM ({query})",
                                         params).scalar()
            return json.loads(found) if found else []
        except DBAPIError:  # the statement failed; the transaction goes on
            pass
    return conn.exec_driver_sql(query, params)


_HOURS: dict[str, datetime] = {}


def _hour_of_text(stored: Any) -> datetime:
    """The UTC hour of a ``created_at`` as SQLite stores it (``YYYY-MM-DD HH:MM:SS.ffffff``, naive UTC;
    cached by its first 13 characters), or of anything else a hand-written row may hold."""
    if type(stored) is str and len(stored) >= 13 and stored[10] in " T":
        prefix = stored[:13]
        hour = _HOURS.get(prefix)
        if hour is None:
            if len(_HOURS) > 10_000:
                _HOURS.clear()
            hour = _HOURS[prefix] = datetime.fromisoformat(prefix + ":00:00").replace(tzinfo=timezone.utc)
        return hour
    at = stored if isinstance(stored, datetime) else datetime.fromisoformat(str(stored))  # a date alone, ...
    return hour_of(at if at.tzinfo else at.replace(tzinfo=timezone.utc))


def apply_batch(conn: Connection, records: Sequence[tuple[Any, ...]], events: Sequence[tuple[Any, ...]]) -> None:
    """Apply one writer batch to the rollups; call in the batch's transaction, before its events are inserted.

    Args:
        conn: The writer's open write transaction (holding :func:`lock` on PostgreSQL).
        records: ``(id, created_at, model, latency_ms, quality, experiment_id, arm, prompt_tokens,
            completion_tokens, fallback_from)`` of each record of the batch.
        events: ``(record_id, feedback)`` of each feedback event of the batch, in order.
    """
    acc: dict[Key, list[Any]] = {}
    new_keys: dict[str, Key] = {}
    for rid, at, model, latency, quality, exp, arm, p_tok, c_tok, fallback in records:
        key = _key(at, model, exp, arm)
        new_keys[rid] = key
        a = acc.get(key)
        if a is None:
            a = acc[key] = _new()
        _add_record(a, latency, quality, p_tok, c_tok, fallback)
    final: dict[str, int] = {}
    for rid, value in events:
        final[rid] = value
    # earlier votes of the records this batch inserts (feedback that arrived first) and of the
    # records this batch's events are about
    ids = list(new_keys.keys() | final.keys())
    prior = _latest_votes(conn, ids) if ids else {}
    stored_keys = _record_keys(conn, [rid for rid in final if rid not in new_keys]) if final else {}
    for rid, key in new_keys.items():
        vote = final.get(rid, prior.get(rid))
        if vote in _VOTE_SLOT:  # -1, 0, 1 (the logger validates; a hand-written row may hold anything)
            a = acc[key]
            a[_VOTE_SLOT[vote]] += 1
    for rid, key in stored_keys.items():
        old, new = prior.get(rid), final[rid]
        if old == new:
            continue
        a = acc.get(key)
        if a is None:
            a = acc[key] = _new()
        if old in _VOTE_SLOT:
            a[_VOTE_SLOT[old]] -= 1
        if new in _VOTE_SLOT:
            a[_VOTE_SLOT[new]] += 1
    if acc:
        _merge_into_table(conn, acc)


def _merge_into_table(conn: Connection, acc: dict[Key, list[Any]], *, empty: bool = False) -> None:
    """Add the accumulated deltas to the stored rows (read, add, upsert; under the writers' lock).

    ``empty``: the table is known to be empty (a rebuild), so nothing is read.
    """
    out = []
    sqlite = conn.dialect.name == "sqlite"
    for key in sorted(acc):
        delta = acc[key]
        if empty:
            stored = None
        elif sqlite:
            stored = conn.exec_driver_sql(_SQLITE_ROW_AT, (sqlite_ts(key[0]), key[1], key[2], key[3])).first()
        else:
            stored = conn.execute(_ROW_AT, {"k_hour": key[0], "k_model": key[1], "k_exp": key[2],
                                            "k_arm": key[3]}).first()
        if stored is None:
            row = _new()
        else:
            row = list(stored)
            row[_HIST] = {int(k): int(v) for k, v in json.loads(row[_HIST]).items()}
        for i in range(len(_COLUMNS)):
            if i == _HIST:
                hist = merge_hist(row[_HIST], delta[_HIST])
                row[_HIST] = {k: v for k, v in hist.items() if v}
            else:
                row[i] += delta[i]
        values = {c: row[i] for i, c in enumerate(_COLUMNS)}
        values["latency_hist"] = json.dumps(row[_HIST], separators=(",", ":"), sort_keys=True)
        out.append({"hour": key[0], "model": key[1], "experiment_id": key[2], "arm": key[3], **values})
    _upsert(conn, out)


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    backend = conn.dialect.name
    if backend == "sqlite":
        conn.exec_driver_sql(_SQLITE_UPSERT, [(sqlite_ts(r["hour"]), r["model"], r["experiment_id"], r["arm"],
                                               *(r[c] for c in _COLUMNS)) for r in rows])
        return
    stmt = _UPSERTS.get(backend)
    if stmt is None:
        if backend == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # other backends: delete and insert (under the caller's transaction)
            for r in rows:
                conn.execute(delete(R).where(R.c.hour == r["hour"], R.c.model == r["model"],
                                             R.c.experiment_id == r["experiment_id"], R.c.arm == r["arm"]))
            conn.execute(R.insert(), rows)
            return
        ins = insert(R)
        stmt = _UPSERTS[backend] = ins.on_conflict_do_update(
            index_elements=[R.c.hour, R.c.model, R.c.experiment_id, R.c.arm],
            set_={c: ins.excluded[c] for c in _COLUMNS})
    conn.execute(stmt, rows)


def subtract_records(conn: Connection, ids: Sequence[str]) -> int:
    """Remove stored records' contributions (and their latest votes) from the rollups, before the
    records are deleted (deletion of a unit's data). Takes :func:`lock`. Returns how many records."""
    lock(conn)
    acc: dict[Key, list[Any]] = {}
    votes = _latest_votes(conn, ids)
    n = 0
    for chunk in _chunks(list(ids)):
        rows = conn.execute(select(U.c.id, U.c.created_at, U.c.model, U.c.experiment_id, U.c.arm, U.c.latency_ms,
                                   U.c.quality_score, U.c.prompt_tokens, U.c.completion_tokens, U.c.fallback_from)
                            .where(U.c.id.in_(chunk)))
        for rid, at, model, exp, arm, lat, q, p_tok, c_tok, fallback in rows:
            key = _key(at, model, exp, arm)
            a = acc.get(key)
            if a is None:
                a = acc[key] = _new()
            _add_record(a, lat, q, p_tok, c_tok, fallback, sign=-1)
            vote = votes.get(rid)
            if vote in _VOTE_SLOT:
                a[_VOTE_SLOT[vote]] -= 1
            n += 1
    if acc:
        _merge_into_table(conn, acc)
    return n


def rebuild(conn: Connection, *, chunk: int = 20_000) -> int:
    """Recompute every rollup from the raw records and their latest votes (the migration that adds
    the rollups runs it; so can a repair). Returns the number of records read. Takes :func:`lock`."""
    from ._queries import latest_feedback

    lock(conn)
    conn.execute(delete(R))
    acc: dict[Key, list[Any]] = {}
    stmt = select(U.c.created_at, U.c.model, U.c.experiment_id, U.c.arm, U.c.latency_ms, U.c.quality_score,
                  U.c.prompt_tokens, U.c.completion_tokens, U.c.fallback_from, latest_feedback())
    n = 0
    result = conn.execute(stmt.execution_options(stream_results=True, yield_per=chunk))  # this statement only
    for at, model, exp, arm, lat, q, p_tok, c_tok, fallback, vote in result:
        key = _key(at, model, exp, arm)
        a = acc.get(key)
        if a is None:
            a = acc[key] = _new()
        _add_record(a, lat, q, p_tok, c_tok, fallback)
        if vote is not None and int(vote) in _VOTE_SLOT:
            a[_VOTE_SLOT[int(vote)]] += 1
        n += 1
    if acc:
        _merge_into_table(conn, acc, empty=True)
    return n


# ---- reading ---------------------------------------------------------------------------------------


def read_rows(conn: Connection, *, since: datetime | None = None, until: datetime | None = None,
              model: str | None = None, experiment_id: int | None = None) -> list[dict[str, Any]]:
    """The rollup rows of the hours in ``[since, until)`` (UTC; None: unbounded), oldest first, each a
    dict of the table's columns with ``latency_hist`` decoded to ``{bucket: count}``."""
    conds = []
    if since is not None:
        conds.append(R.c.hour >= hour_of(since))
    if until is not None:
        conds.append(R.c.hour < until)
    if model is not None:
        conds.append(R.c.model == model)
    if experiment_id is not None:
        conds.append(R.c.experiment_id == experiment_id)
    out = []
    for row in conn.execute(select(R).where(*conds).order_by(R.c.hour, R.c.model, R.c.experiment_id, R.c.arm)):
        d = dict(row._mapping)
        d["latency_hist"] = {int(k): int(v) for k, v in json.loads(d["latency_hist"]).items()}
        out.append(d)
    return out


def totals(conn: Connection, *, since: datetime | None = None) -> dict[str, Any]:
    """Sums over every rollup row (or those of the hours since ``since``), overall and per model.

    Returns:
        ``{"calls", "n_quality", "quality_sum", "n_latency", "latency_sum", "feedback_up",
        "feedback_down", "feedback_neutral", "n_tokens", "prompt_tokens", "completion_tokens",
        "fallbacks", "by_model": {model: {same keys}}}``; one grouped statement over the rollup
        table (cost grows with hours x versions, not with records).
    """
    sums = ("calls", "n_quality", "quality_sum", "n_latency", "latency_sum", "feedback_up", "feedback_down",
            "feedback_neutral", "n_tokens", "prompt_tokens", "completion_tokens", "fallbacks")
    conds = [] if since is None else [R.c.hour >= hour_of(since)]
    stmt = select(R.c.model, *(func.sum(R.c[c]) for c in sums)).where(*conds).group_by(R.c.model)
    overall: dict[str, Any] = {c: 0 for c in sums}
    by_model: dict[str, dict[str, Any]] = {}
    for row in conn.execute(stmt):
        figures = {c: (row[i + 1] or 0) for i, c in enumerate(sums)}
        if not figures["calls"] and not any(figures.values()):
            continue
        by_model[row[0]] = figures
        for c in sums:
            overall[c] += figures[c]
    overall["by_model"] = by_model
    return overall


def window_by_model(conn: Connection, *, since: datetime, qs: Sequence[float] = (0.5, 0.95, 0.99)
                    ) -> dict[str, dict[str, Any]]:
    """Per model version, the figures of the hours since ``since`` (the hour of ``since`` included).

    Returns:
        ``{model: {"calls", "feedback_rate" (fraction of calls with a vote), "positive_rate"
        (fraction of votes that are +1; None without votes), "avg_quality" (None when unscored),
        "n_quality", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms" (None without latencies;
        within :data:`RELATIVE_ACCURACY`), "prompt_tokens", "completion_tokens", "fallbacks"}}``.
    """
    acc: dict[str, list[Any]] = {}
    for row in conn.execute(select(R).where(R.c.hour >= hour_of(since))):
        m = row._mapping
        a = acc.get(m["model"])
        if a is None:
            a = acc[m["model"]] = _new()
        for i, c in enumerate(_COLUMNS):
            if i == _HIST:
                merge_hist(a[_HIST], json.loads(m[c]))
            else:
                a[i] += m[c]
    out = {}
    for model, a in sorted(acc.items()):
        votes = a[_UP] + a[_DOWN] + a[_NEUTRAL]
        figures: dict[str, Any] = {
            "calls": a[_CALLS],
            "feedback_rate": votes / a[_CALLS] if a[_CALLS] else 0.0,
            "positive_rate": a[_UP] / votes if votes else None,
            "avg_quality": a[_QS] / a[_NQ] if a[_NQ] else None,
            "n_quality": a[_NQ],
        }
        for q in qs:
            figures[f"latency_p{round(q * 100):d}_ms"] = quantile(a[_HIST], q)
        figures.update(prompt_tokens=a[_PTOK], completion_tokens=a[_CTOK], fallbacks=a[_FALLBACK])
        out[model] = figures
    return out


def day_of(hour: datetime) -> datetime:
    """The start of the UTC day of an hour."""
    return hour.replace(hour=0)

