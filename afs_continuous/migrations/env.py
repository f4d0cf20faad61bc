"""Alembic environment of afs_continuous (used programmatically by Store and `afs-continuous db`).

The connection is passed in ``config.attributes["connection"]`` so the
migration runs inside the caller's transaction (and lock); with none, the
``sqlalchemy.url`` option is used.
"""

from alembic import context
from sqlalchemy import create_engine

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=None, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
