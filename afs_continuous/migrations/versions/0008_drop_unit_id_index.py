"""Drop the index on ``usage_records.unit_id``.

Unit ids (users, conversations) arrive in random order, so every logged record inserted its entry
on a random page of this index: on a SQLite store of a million records the logger's writer spent
half of its CPU on it (28.8 us per record or vote with it, 13.9 us without; the cost grows with the
store; ``python benchmarks/bench_store_scale.py``). Its only reader was ``forget(unit_id=...)``, a rare operator command that now scans the
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
