"""Is a store already at this package's schema head? Answered without importing Alembic (private).

Every worker opens the store at start; when its schema is current (the usual case) this check
answers from the migration file names and one ``SELECT`` of ``alembic_version``, so a service
worker never imports Alembic, Mako and Pygments (about 9 MB of memory per worker). Any other
answer falls through to the Alembic path in :class:`~afs_continuous.store.Store`, which creates,
upgrades or refuses the schema as before.
"""

from __future__ import annotations

import functools
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

__all__ = ["VERSIONS_DIR", "head_revision", "at_head"]

VERSIONS_DIR = Path(__file__).with_name("migrations") / "versions"


@functools.lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The head revision: the highest ``NNNN`` of the ``NNNN_*.py`` migration files (the history is
    linear and each revision id is its file's number; tests/unit/test_schema_head.py checks this
    against Alembic's own answer)."""
    numbers = [p.name[:4] for p in VERSIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.py")]
    return max(numbers) if numbers else None


def at_head(engine: Engine) -> bool:
    """True when the store's ``alembic_version`` holds exactly the head revision."""
    head = head_revision()
    if head is None:
        return False
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).fetchall()
    return [r[0] for r in rows] == [head]
