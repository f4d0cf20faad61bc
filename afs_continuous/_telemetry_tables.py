"""Tables of the telemetry the views read (private; re-exported by :mod:`afs_continuous.store`).

``usage_rollups``: per hour, model version and exposure (experiment and arm), the aggregates of the
usage records and of their latest feedback, kept up to date by the logger's writer in the same
transaction as the records (see :mod:`afs_continuous._rollups`). ``experiment_looks``: every
evaluation the daemon made of an experiment, as it made it (the report's history of the lift).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Float, Index, Integer, PrimaryKeyConstraint, String, Text
from sqlmodel import Field, SQLModel

from ._utc import UTCDateTime

__all__ = ["UsageRollup", "ExperimentLook"]


def _ts(**kwargs):  # type: ignore[no-untyped-def]
    return Field(sa_column=Column(UTCDateTime(), **kwargs))


class UsageRollup(SQLModel, table=True):
    """Aggregates of one hour of usage records of one model version under one exposure.

    Key: ``hour`` (UTC, the start of the hour the records were created in), ``model`` (the version
    that served them), ``experiment_id`` and ``arm`` (the exposure: 0 and "" for records not routed
    under an experiment). Feedback columns count records by their latest vote (a changed vote moves
    from one column to the other; feedback arriving later updates the hour of its record).
    ``latency_hist`` is a JSON object ``{bucket: count}`` of the log-scale latency histogram of
    :mod:`afs_continuous._rollups` (quantiles within its stated relative error).
    """

    __tablename__ = "usage_rollups"
    __table_args__ = (PrimaryKeyConstraint("hour", "model", "experiment_id", "arm", name="pk_usage_rollups"),)

    hour: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    model: str = Field(sa_column=Column(String(200), nullable=False))
    experiment_id: int = Field(sa_column=Column(Integer, nullable=False))
    arm: str = Field(sa_column=Column(String(20), nullable=False))
    calls: int = Field(sa_column=Column(Integer, nullable=False))
    n_quality: int = Field(sa_column=Column(Integer, nullable=False))
    quality_sum: float = Field(sa_column=Column(Float, nullable=False))
    quality_sumsq: float = Field(sa_column=Column(Float, nullable=False))
    n_latency: int = Field(sa_column=Column(Integer, nullable=False))
    latency_sum: float = Field(sa_column=Column(Float, nullable=False))
    latency_hist: str = Field(sa_column=Column(Text, nullable=False))
    feedback_up: int = Field(sa_column=Column(Integer, nullable=False))
    feedback_down: int = Field(sa_column=Column(Integer, nullable=False))
    feedback_neutral: int = Field(sa_column=Column(Integer, nullable=False))
    n_tokens: int = Field(sa_column=Column(Integer, nullable=False))
    prompt_tokens: int = Field(sa_column=Column(Integer, nullable=False))
    completion_tokens: int = Field(sa_column=Column(Integer, nullable=False))
    fallbacks: int = Field(sa_column=Column(Integer, nullable=False))


class ExperimentLook(SQLModel, table=True):
    """One evaluation of an experiment by the daemon (or an operator's ``evaluate``), as it was made.

    ``lift``/``ci_low``/``ci_high`` are the relative lift of the primary metric and its always-valid
    confidence interval (fractions, 0.05 = +5%), ``p_value`` its always-valid p-value; None before
    the minimum sample size. ``units_champion``/``units_challenger`` the units exposed so far;
    ``srm_p_value`` the sample-ratio check. ``evaluation_json``: the whole evaluation
    (:meth:`afs_continuous.experiment.Evaluation.to_dict`).
    """

    __tablename__ = "experiment_looks"
    __table_args__ = (Index("ix_experiment_looks_experiment", "experiment_id", "evaluated_at"),)

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(sa_column=Column(Integer, nullable=False))
    evaluated_at: datetime = _ts(nullable=False)
    decision: str = Field(sa_column=Column(String(20), nullable=False))
    lift: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    ci_low: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    ci_high: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    p_value: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    units_champion: int = Field(sa_column=Column(Integer, nullable=False))
    units_challenger: int = Field(sa_column=Column(Integer, nullable=False))
    srm_p_value: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    evaluation_json: str = Field(sa_column=Column(Text, nullable=False))
