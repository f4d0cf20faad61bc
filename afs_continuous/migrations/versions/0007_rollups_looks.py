"""Hourly usage rollups and the stored history of experiment evaluations.

New tables ``usage_rollups`` (per hour, model version and exposure: calls, quality, latency
histogram, latest-vote counts, tokens, fallbacks; see :mod:`afs_continuous._rollups`) and
``experiment_looks`` (every evaluation the daemon made), and an index on ``usage_records.unit_id``
(deletion of one unit's data). The rollups of an existing store are
built from its records here (one pass over ``usage_records``); the last evaluation of each
existing experiment becomes its first stored look.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("arm", sa.String(20), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in ("calls", "n_quality")),
        sa.Column("quality_sum", sa.Float(), nullable=False),
        sa.Column("quality_sumsq", sa.Float(), nullable=False),
        sa.Column("n_latency", sa.Integer(), nullable=False),
        sa.Column("latency_sum", sa.Float(), nullable=False),
        sa.Column("latency_hist", sa.Text(), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in (
            "feedback_up", "feedback_down", "feedback_neutral", "n_tokens", "prompt_tokens", "completion_tokens",
            "fallbacks")),
        sa.PrimaryKeyConstraint("hour", "model", "experiment_id", "arm", name="pk_usage_rollups"),
    )
    op.create_table(
        "experiment_looks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(), nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("lift", sa.Float(), nullable=True),
        sa.Column("ci_low", sa.Float(), nullable=True),
        sa.Column("ci_high", sa.Float(), nullable=True),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("units_champion", sa.Integer(), nullable=False),
        sa.Column("units_challenger", sa.Integer(), nullable=False),
        sa.Column("srm_p_value", sa.Float(), nullable=True),
        sa.Column("evaluation_json", sa.Text(), nullable=False),
    )
    op.create_index("ix_experiment_looks_experiment", "experiment_looks", ["experiment_id", "evaluated_at"])
    op.create_index("ix_usage_unit_id", "usage_records", ["unit_id"])  # dropped again in 0008 (its write cost)

    from afs_continuous._looks import LOOKS, look_row
    from afs_continuous._rollups import rebuild

    conn = op.get_bind()
    rebuild(conn)
    rows = []
    for exp_id, payload in conn.execute(sa.text(
            "SELECT id, last_evaluation_json FROM experiments WHERE last_evaluation_json IS NOT NULL")):
        rows.append(look_row(int(exp_id), json.loads(payload)))
    if rows:
        conn.execute(LOOKS.insert(), rows)


def downgrade() -> None:
    op.drop_index("ix_usage_unit_id", table_name="usage_records")
    op.drop_index("ix_experiment_looks_experiment", table_name="experiment_looks")
    op.drop_table("experiment_looks")
    op.drop_table("usage_rollups")
