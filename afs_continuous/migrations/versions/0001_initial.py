"""Initial schema of afs_continuous 0.1: usage, feedback, registry, experiments, training runs, loop state.

Written out explicitly (never imported from the live models), so it stays
what version 0.1 created.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("quality_score", sa.Float(), nullable=True),
        sa.Column("unit_id", sa.String(200), nullable=True),
        sa.Column("metadata_json", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(32), nullable=True),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("query_chars", sa.Integer(), nullable=False),
        sa.Column("response_chars", sa.Integer(), nullable=False),
    )
    op.create_index("ix_usage_created_at", "usage_records", ["created_at"])
    op.create_index("ix_usage_model_created", "usage_records", ["model", "created_at"])
    op.create_index("ix_usage_content_hash", "usage_records", ["content_hash"])

    op.create_table(
        "feedback_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.String(32), nullable=False),
        sa.Column("feedback", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_feedback_record", "feedback_events", ["record_id", "id"])

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("promoted_at", sa.DateTime(), nullable=True),
        sa.Column("retired_at", sa.DateTime(), nullable=True),
        sa.Column("parent", sa.String(200), nullable=True),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        sa.Column("metrics_json", sa.Text(), nullable=True),
        sa.Column("history_json", sa.Text(), nullable=False),
    )
    op.create_index("ix_model_versions_status", "model_versions", ["status"])

    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("champion", sa.String(200), nullable=False),
        sa.Column("challenger", sa.String(200), nullable=False),
        sa.Column("traffic_fraction", sa.Float(), nullable=False),
        sa.Column("seed", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("decision", sa.String(20), nullable=True),
        sa.Column("last_evaluation_json", sa.Text(), nullable=True),
        sa.Column("min_p_value", sa.Float(), nullable=True),
        sa.Column("n_looks", sa.Integer(), nullable=False),
    )
    op.create_index("ix_experiments_status", "experiments", ["status"])

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("trigger", sa.String(40), nullable=False),
        sa.Column("trigger_json", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("data_path", sa.Text(), nullable=True),
        sa.Column("counts_json", sa.Text(), nullable=True),
        sa.Column("source_start", sa.DateTime(), nullable=True),
        sa.Column("source_end", sa.DateTime(), nullable=True),
        sa.Column("watermark_json", sa.Text(), nullable=True),
        sa.Column("metrics_json", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
    )
    op.create_index("ix_training_runs_status", "training_runs", ["status"])

    op.create_table(
        "training_samples",
        sa.Column("record_id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(32), nullable=False),
    )
    op.create_index("ix_training_samples_hash", "training_samples", ["content_hash"])
    op.create_index("ix_training_samples_run_id", "training_samples", ["run_id"])

    op.create_table(
        "loop_state",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for table in ("loop_state", "training_samples", "training_runs", "experiments", "model_versions",
                  "feedback_events", "usage_records"):
        op.drop_table(table)
