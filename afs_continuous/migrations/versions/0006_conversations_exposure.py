"""Conversations, tokens, feedback comments, exposure, and the serving engine's events.

usage_records: the whole conversation (``messages_json``), the exposure (``experiment_id``, ``arm``),
token counts and ``fallback_from``; feedback_events: ``comment``; experiments: ``exposure_logging``
(false for the experiments of older stores, which keep the attribution by model name); a new
table ``serving_events``. Columns are added, nothing is rewritten: old stores keep their data.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("messages_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("arm", sa.String(20), nullable=True))
        batch.add_column(sa.Column("prompt_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("completion_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("fallback_from", sa.String(200), nullable=True))
    op.create_index("ix_usage_experiment_arm", "usage_records", ["experiment_id", "arm"])
    with op.batch_alter_table("feedback_events") as batch:
        batch.add_column(sa.Column("comment", sa.Text(), nullable=True))
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("exposure_logging", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "serving_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("replica", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("host", sa.String(200), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
    )
    op.create_index("ix_serving_events_kind_at", "serving_events", ["kind", "at"])


def downgrade() -> None:
    op.drop_index("ix_serving_events_kind_at", table_name="serving_events")
    op.drop_table("serving_events")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("exposure_logging")
    with op.batch_alter_table("feedback_events") as batch:
        batch.drop_column("comment")
    op.drop_index("ix_usage_experiment_arm", table_name="usage_records")
    with op.batch_alter_table("usage_records") as batch:
        for name in ("fallback_from", "completion_tokens", "prompt_tokens", "arm", "experiment_id", "messages_json"):
            batch.drop_column(name)
