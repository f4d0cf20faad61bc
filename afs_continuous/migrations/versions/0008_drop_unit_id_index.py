"""Drop the index on ``usage_records.unit_id``.

Unit ids (users, conversations) arrive in random order, so every logged record inserted its entry
on a random page of this index: at a million records the logger's writer spent about two thirds of
its CPU on it (33 us per record and event against 12 us without it, on SQLite; the cost grows with
the store). Its only reader was ``forget(unit_id=...)``, a rare operator command that now scans the
table in a read transaction, which blocks no writer (about 0.3 s per million records from the page
cache), and whose default ``VACUUM`` rewrites the whole file anyway.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_usage_unit_id", table_name="usage_records")


def downgrade() -> None:
    op.create_index("ix_usage_unit_id", "usage_records", ["unit_id"])
