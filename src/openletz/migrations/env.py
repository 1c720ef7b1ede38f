"""Alembic environment: runs on a connection handed in by ``openletz.db.migrate``,
or, from the alembic command line, on the database the settings name."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from openletz.jobs.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_settings() -> None:
    from openletz.db import create_engine
    from openletz.settings import Settings

    engine = create_engine(Settings().resolved_database_url)
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_from_settings())
