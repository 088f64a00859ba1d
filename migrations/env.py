"""Alembic environment: one history for SQLite and PostgreSQL.

archiver runs migrations itself (``archiver migrate``, and every command on start) by
passing a connection in ``config.attributes["connection"]``. For developers,
``alembic revision --autogenerate`` works too: it reads ARCHIVER_DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from archiver.queue import declare_postgresql_predicates  # importing it registers the queue table
from archiver.schema import metadata

target_metadata = metadata


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        declare_postgresql_predicates()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    from archiver.db import create_engine

    engine = create_engine(os.environ.get("ARCHIVER_DATABASE_URL", "sqlite:///archive.db"))
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_async())
