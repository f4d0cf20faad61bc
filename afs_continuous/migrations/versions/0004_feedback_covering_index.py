"""Covering index for the latest feedback of a record (status and eligibility at scale).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-20
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_feedback_record_latest", "feedback_events", ["record_id", "id", "feedback"])
    op.drop_index("ix_feedback_record", table_name="feedback_events")


def downgrade() -> None:
    op.create_index("ix_feedback_record", "feedback_events", ["record_id", "id"])
    op.drop_index("ix_feedback_record_latest", table_name="feedback_events")
