"""SQL shared by the logger, triggers, generator and experiments.

Keeping the eligibility filter in one place guarantees that the sample-count
trigger counts exactly what the training-data generator would use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, distinct, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from .config import DataGeneratorConfig
from .store import FeedbackEvent, TrainingSample, UsageRecord

U = UsageRecord.__table__  # type: ignore[attr-defined]
F = FeedbackEvent.__table__  # type: ignore[attr-defined]
T = TrainingSample.__table__  # type: ignore[attr-defined]


def latest_feedback() -> ColumnElement[Any]:
    """Correlated scalar subquery: the latest feedback value of the record ``U.id`` (NULL if none).

    Uses the ``(record_id, id)`` index, so it costs one index probe per record
    on SQLite and PostgreSQL alike.
    """
    return (
        select(F.c.feedback)
        .where(F.c.record_id == U.c.id)
        .order_by(F.c.id.desc())
        .limit(1)
        .correlate(U)
        .scalar_subquery()
        .label("feedback")
    )


# Every character Python's str.split() treats as whitespace: a text made only of
# these normalises to "" (see _text.normalize) and is never a training sample.
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _not_blank(col: Any) -> ColumnElement[bool]:
    return func.length(func.trim(col, _WHITESPACE)) > 0


def quality_condition(gen: DataGeneratorConfig) -> list[ColumnElement[bool]]:
    """Conditions of the quality stage (not truncated, not empty or whitespace-only, score >= threshold).

    Whitespace-only texts are excluded here, in SQL, so that the sample-count
    trigger counts exactly the samples the generator will keep.
    """
    conds: list[ColumnElement[bool]] = [
        U.c.truncated.is_(False), U.c.query_chars > 0, U.c.response_chars > 0,
        _not_blank(U.c.query), _not_blank(U.c.response),
    ]
    if gen.min_quality_score is not None:
        conds.append(U.c.quality_score >= gen.min_quality_score)
    return conds


def feedback_condition(gen: DataGeneratorConfig) -> list[ColumnElement[bool]]:
    """Conditions of the feedback stage (latest feedback >= min_user_feedback)."""
    if gen.min_user_feedback is None:
        return []
    fb = latest_feedback().element
    cond: ColumnElement[bool] = fb >= gen.min_user_feedback
    if gen.include_unrated:
        return [or_(cond, fb.is_(None))]
    # Logically implied (the latest vote passes only if some vote does), but it lets the planner
    # start from the feedback events instead of walking every record: 1M records, 1.3 s -> 0.27 s.
    some_vote = U.c.id.in_(select(F.c.record_id).where(F.c.feedback >= gen.min_user_feedback))
    return [some_vote, cond]


def window_condition(after: datetime | None, until: datetime) -> list[ColumnElement[bool]]:
    """Records created in ``(after, until]`` (records stamped in the future never count)."""
    conds: list[ColumnElement[bool]] = [U.c.created_at <= until]
    if after is not None:
        conds.append(U.c.created_at > after)
    return conds


def not_trained_condition() -> ColumnElement[bool]:
    """The record's content was not used by an earlier successful training run
    (records whose hash is not computed yet pass; the generator hashes them)."""
    return or_(U.c.content_hash.is_(None), ~U.c.content_hash.in_(select(T.c.content_hash)))


def eligible_query(gen: DataGeneratorConfig, after: datetime | None, until: datetime, *columns: Any) -> Select[Any]:
    """SELECT ``columns`` of the records eligible for training in ``(after, until]``."""
    cols = columns or (U,)
    return (
        select(*cols)
        .select_from(U)
        .where(and_(*window_condition(after, until), *quality_condition(gen), *feedback_condition(gen), not_trained_condition()))
    )


def backfill_content_hashes(conn: Connection, gen: DataGeneratorConfig, after: datetime | None, until: datetime,
                            *, batch: int = 1000) -> int:
    """Compute the content hash of every record in ``(after, until]`` that passes the quality and
    feedback stages and has none yet; returns how many were filled.

    The hash covers the whole conversation of a record logged with ``messages=``
    (:func:`~afs_continuous._conversation.conversation_hash`). The writer leaves ``content_hash`` empty to keep the logging path cheap; the
    daemon fills it here, for the (few) records that may become training
    samples, before counting or generating. Needs a write transaction.
    """
    from ._conversation import conversation_hash

    stmt = (
        select(U.c.id, U.c.query, U.c.response, U.c.messages_json)
        .where(U.c.content_hash.is_(None), *window_condition(after, until), *quality_condition(gen),
               *feedback_condition(gen))
        .limit(batch)
    )
    update = U.update().where(U.c.id == bindparam("rid")).values(content_hash=bindparam("h"))
    filled = 0
    while True:  # batch by batch: filled rows no longer match, so memory stays at one batch
        rows = conn.execute(stmt).all()
        if not rows:
            return filled
        conn.execute(update, [{"h": conversation_hash(q, r, mj), "rid": rid} for rid, q, r, mj in rows])
        filled += len(rows)


def count_eligible(conn: Connection, gen: DataGeneratorConfig, after: datetime | None, until: datetime) -> int:
    """Number of distinct training samples (distinct content when deduplicating) eligible now.

    Exact after :func:`backfill_content_hashes`; records without a hash yet
    count as distinct (an upper bound), so a read-only caller (the status
    summary) needs no write.
    """
    unhashed = func.coalesce(func.sum(case((U.c.content_hash.is_(None), 1), else_=0)), 0)
    col = func.count(distinct(U.c.content_hash)) + unhashed if gen.deduplicate else func.count()
    return int(conn.execute(eligible_query(gen, after, until, col)).scalar_one())


def stage_counts(conn: Connection, gen: DataGeneratorConfig, after: datetime | None, until: datetime) -> dict[str, int]:
    """Counts of records surviving each SQL-side stage: window, quality, feedback."""
    base = select(func.count()).select_from(U)
    window = window_condition(after, until)
    quality = quality_condition(gen)
    feedback = feedback_condition(gen)
    return {
        "candidates": int(conn.execute(base.where(*window)).scalar_one()),
        "after_quality": int(conn.execute(base.where(*window, *quality)).scalar_one()),
        "after_feedback": int(conn.execute(base.where(*window, *quality, *feedback)).scalar_one()),
    }


def usage_statistics(conn: Connection) -> dict[str, Any]:
    """Aggregate statistics of every record (see ``UsageLogger.get_statistics``).

    Read from the hourly rollups (:mod:`afs_continuous._rollups`), plus the first and last record
    times from the ``created_at`` index: the cost does not grow with the number of records.
    """
    from ._rollups import totals

    t = totals(conn)
    # two statements: SQLite answers a lone min() or max() of an indexed column from the index's ends,
    # but scans the table for both in one statement
    first_at = conn.execute(select(func.min(U.c.created_at))).scalar()
    last_at = conn.execute(select(func.max(U.c.created_at))).scalar()
    total = int(t["calls"])
    pos, neg = int(t["feedback_up"]), int(t["feedback_down"])
    with_fb = pos + neg + int(t["feedback_neutral"])
    from .store import UTCDateTime  # local: the raw aggregates of min/max bypass the type on SQLite

    conv = UTCDateTime().process_result_value
    first = conv(_as_dt(first_at), None)
    last = conv(_as_dt(last_at), None)
    n_scored, n_lat = int(t["n_quality"]), int(t["n_latency"])
    return {
        "total": total,
        "with_feedback": with_fb,
        "positive_feedback": pos,
        "negative_feedback": neg,
        "feedback_rate": (with_fb / total) if total else 0.0,
        "positive_rate": (pos / with_fb) if with_fb else None,
        "n_scored": n_scored,
        "avg_quality_score": float(t["quality_sum"]) / n_scored if n_scored else 0.0,  # 0.0 with n_scored == 0
        "avg_latency_ms": float(t["latency_sum"]) / n_lat if n_lat else None,
        "by_model": {m: int(f["calls"]) for m, f in t["by_model"].items() if f["calls"]},
        "first_at": first.isoformat() if first else None,
        "last_at": last.isoformat() if last else None,
    }


def _as_dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


#: Metrics aggregated per unit for experiments: name -> (value expression on the per-record row, counted-when)
ARM_METRICS = ("quality", "positive", "negative", "latency")


def arm_aggregates(conn: Connection, model: str, start: datetime, end: datetime, *,
                   experiment: tuple[int, str] | None = None) -> dict[str, Any]:
    """Per-unit sums of one arm's records in ``[start, end]`` (one SQL statement).

    The arm's records are those served by ``model``, or with ``experiment=(experiment id, arm)``
    those exposed under that experiment's arm (``usage_records.experiment_id`` and ``arm``, whatever
    their model name; the ``(experiment_id, arm)`` index).

    Records are grouped by unit (``unit_id``; a record without one is its own
    unit). For each metric -- ``quality`` (quality_score), ``positive`` and
    ``negative`` (latest feedback +1 / -1 among rated records), ``latency``
    (latency_ms) -- every unit contributes ``S_u`` (sum of its values) and
    ``M_u`` (number of values), and the result holds the sums over units needed
    by :meth:`afs_continuous.stats.ArmSummary.from_unit_sums`.

    Returns:
        ``{"n_served": records, "n_units": units, "<metric>": {"k", "s", "s2",
        "m", "m2", "sm"}}`` for each metric in :data:`ARM_METRICS`, where ``k``
        counts units with at least one value of that metric.
    """
    fb = latest_feedback().element
    unit = func.coalesce(U.c.unit_id, U.c.id).label("unit")
    rated = case((fb.is_(None), 0), else_=1)
    per_record = select(
        unit,
        U.c.quality_score.label("q"),
        U.c.latency_ms.label("lat"),
        rated.label("rated"),
        case((fb > 0, 1), else_=0).label("pos"),
        case((fb < 0, 1), else_=0).label("neg"),
    ).where(*((U.c.model == model,) if experiment is None else (U.c.experiment_id == experiment[0],
                                                                  U.c.arm == experiment[1])),
            U.c.created_at >= start, U.c.created_at <= end).subquery()
    r = per_record.c
    per_unit = select(
        func.count().label("n"),
        func.coalesce(func.sum(r.q), 0.0).label("quality_s"), func.count(r.q).label("quality_m"),
        func.sum(r.pos).label("positive_s"), func.sum(r.rated).label("positive_m"),
        func.sum(r.neg).label("negative_s"), func.sum(r.rated).label("negative_m"),
        func.coalesce(func.sum(r.lat), 0.0).label("latency_s"), func.count(r.lat).label("latency_m"),
    ).group_by(r.unit).subquery()
    u = per_unit.c
    cols: list[Any] = [func.coalesce(func.sum(u.n), 0), func.count()]
    for metric in ARM_METRICS:
        s_col, m_col = u[f"{metric}_s"], u[f"{metric}_m"]
        cols += [
            func.coalesce(func.sum(case((m_col > 0, 1), else_=0)), 0),
            func.coalesce(func.sum(s_col), 0.0), func.coalesce(func.sum(s_col * s_col), 0.0),
            func.coalesce(func.sum(m_col), 0), func.coalesce(func.sum(m_col * m_col), 0),
            func.coalesce(func.sum(s_col * m_col), 0.0),
        ]
    row = list(conn.execute(select(*cols).select_from(per_unit)).one())
    out: dict[str, Any] = {"n_served": int(row[0]), "n_units": int(row[1])}
    for i, metric in enumerate(ARM_METRICS):
        k, s, s2, m, m2, sm = row[2 + 6 * i: 8 + 6 * i]
        out[metric] = {"k": int(k), "s": float(s), "s2": float(s2), "m": float(m), "m2": float(m2), "sm": float(sm)}
    return out


def quality_window(conn: Connection, start: datetime, end: datetime, *,
                   model: str | None = None) -> tuple[int, float | None, float | None]:
    """Count, mean and sample variance of the quality scores of records created in ``(start, end]``.

    Args:
        conn: An open connection.
        start / end: The window (UTC); records stamped after ``end`` never count.
        model: Only records served by this model version (None: every record).

    Returns:
        ``(n, mean, variance)``: ``mean`` None when ``n == 0``, ``variance``
        (ddof=1, clipped at 0 against rounding) None when ``n < 2``.
    """
    q = U.c.quality_score
    conds = [U.c.created_at > start, U.c.created_at <= end]
    if model is not None:
        conds.append(U.c.model == model)
    n, total, total_sq = conn.execute(select(func.count(q), func.sum(q), func.sum(q * q)).where(*conds)).one()
    n = int(n)
    if n == 0:
        return 0, None, None
    total, total_sq = float(total), float(total_sq)
    mean = total / n
    variance = max(0.0, (total_sq - total * mean) / (n - 1)) if n >= 2 else None
    return n, mean, variance
