"""SQL shared by the logger, triggers, generator and experiments.

Keeping the eligibility filter in one place guarantees that the sample-count
trigger counts exactly what the training-data generator would use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, distinct, func, or_, select
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
        cond = or_(cond, fb.is_(None))
    return [cond]


def window_condition(after: datetime | None, until: datetime) -> list[ColumnElement[bool]]:
    """Records created in ``(after, until]`` (records stamped in the future never count)."""
    conds: list[ColumnElement[bool]] = [U.c.created_at <= until]
    if after is not None:
        conds.append(U.c.created_at > after)
    return conds


def not_trained_condition() -> ColumnElement[bool]:
    """The record's content was not used by an earlier successful training run."""
    return ~U.c.content_hash.in_(select(T.c.content_hash))


def eligible_query(gen: DataGeneratorConfig, after: datetime | None, until: datetime, *columns: Any) -> Select[Any]:
    """SELECT ``columns`` of the records eligible for training in ``(after, until]``."""
    cols = columns or (U,)
    return (
        select(*cols)
        .select_from(U)
        .where(and_(*window_condition(after, until), *quality_condition(gen), *feedback_condition(gen), not_trained_condition()))
    )


def count_eligible(conn: Connection, gen: DataGeneratorConfig, after: datetime | None, until: datetime) -> int:
    """Number of distinct training samples (distinct content when deduplicating) eligible now."""
    col = func.count(distinct(U.c.content_hash)) if gen.deduplicate else func.count()
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
    """Aggregate statistics of the whole usage table (see ``UsageLogger.get_statistics``)."""
    row = conn.execute(
        select(
            func.count(),
            func.count(U.c.quality_score),
            func.avg(U.c.quality_score),
            func.avg(U.c.latency_ms),
            func.min(U.c.created_at),
            func.max(U.c.created_at),
        ).select_from(U)
    ).one()
    total, n_scored, avg_q, avg_lat, first_at, last_at = row
    # latest feedback per known record: the newest event of each record_id that has a record
    latest_ids = select(func.max(F.c.id)).group_by(F.c.record_id)
    fb_row = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((F.c.feedback > 0, 1), else_=0)), 0),
            func.coalesce(func.sum(case((F.c.feedback < 0, 1), else_=0)), 0),
        ).where(F.c.id.in_(latest_ids), F.c.record_id.in_(select(U.c.id)))
    ).one()
    with_fb, pos, neg = (int(x) for x in fb_row)
    by_model = {m: int(n) for m, n in conn.execute(select(U.c.model, func.count()).group_by(U.c.model))}
    from .store import UTCDateTime  # local: the raw aggregates of min/max bypass the type on SQLite

    conv = UTCDateTime().process_result_value
    first = conv(_as_dt(first_at), None)
    last = conv(_as_dt(last_at), None)
    return {
        "total": int(total),
        "with_feedback": with_fb,
        "positive_feedback": pos,
        "negative_feedback": neg,
        "feedback_rate": (with_fb / total) if total else 0.0,
        "positive_rate": (pos / with_fb) if with_fb else None,
        "n_scored": int(n_scored),
        "avg_quality_score": float(avg_q) if avg_q is not None else 0.0,  # 0.0 with n_scored == 0
        "avg_latency_ms": float(avg_lat) if avg_lat is not None else None,
        "by_model": by_model,
        "first_at": first.isoformat() if first else None,
        "last_at": last.isoformat() if last else None,
    }


def _as_dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def arm_aggregates(conn: Connection, model: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Streamable sums of one arm's records in ``[start, end]``.

    Returns:
        ``{"n_served", "n_scored", "sum_quality", "sum_quality_sq", "n_rated",
        "n_positive", "n_negative", "n_latency", "sum_latency_ms", "sum_latency_sq",
        "n_units"}``. ``n_units`` counts distinct unit ids (a record without a
        unit id counts as its own unit): the units the router assigned, which
        is what a sample-ratio check must compare (requests per unit are
        heavy-tailed, so request counts are not binomial).
    """
    q = U.c.quality_score
    inner = select(
        U.c.quality_score.label("q"), U.c.latency_ms.label("lat"), latest_feedback().element.label("fb"),
        U.c.unit_id.label("unit"),
    ).where(U.c.model == model, U.c.created_at >= start, U.c.created_at <= end).subquery()
    q, fb, lat, unit = inner.c.q, inner.c.fb, inner.c.lat, inner.c.unit
    row = conn.execute(
        select(
            func.count(),
            func.count(q),
            func.coalesce(func.sum(q), 0.0),
            func.coalesce(func.sum(q * q), 0.0),
            func.count(fb),
            func.coalesce(func.sum(case((fb > 0, 1), else_=0)), 0),
            func.coalesce(func.sum(case((fb < 0, 1), else_=0)), 0),
            func.count(lat),
            func.coalesce(func.sum(lat), 0.0),
            func.coalesce(func.sum(lat * lat), 0.0),
            func.count(distinct(unit)) + func.coalesce(func.sum(case((unit.is_(None), 1), else_=0)), 0),
        ).select_from(inner)
    ).one()
    keys = ("n_served", "n_scored", "sum_quality", "sum_quality_sq", "n_rated", "n_positive", "n_negative",
            "n_latency", "sum_latency_ms", "sum_latency_sq", "n_units")
    return {k: (float(v) if k.startswith("sum") else int(v)) for k, v in zip(keys, row)}


def quality_window(conn: Connection, start: datetime, end: datetime) -> tuple[int, float | None]:
    """(count, mean) of quality scores of records created in ``(start, end]``."""
    n, mean = conn.execute(
        select(func.count(U.c.quality_score), func.avg(U.c.quality_score)).where(
            U.c.created_at > start, U.c.created_at <= end
        )
    ).one()
    return int(n), (float(mean) if mean is not None else None)
