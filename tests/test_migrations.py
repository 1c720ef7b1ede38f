from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.db import _alembic_config, create_engine, current_revision, migrate
from openletz.jobs.tables import metadata
from tests._databases import database, postgres_database

APP_TABLES = {"users", "api_keys", "jobs"}


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with database(request.param, tmp_path) as url:
        eng = create_engine(url)
        yield eng
        await eng.dispose()


async def test_concurrent_migrations_on_postgresql_take_turns() -> None:
    # Two API servers starting at once against one empty database.
    async with postgres_database() as url:
        engines = [create_engine(url), create_engine(url)]
        try:
            await asyncio.gather(*(migrate(e) for e in engines))
            assert await current_revision(engines[0]) == _head()
        finally:
            for e in engines:
                await e.dispose()


def _head() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        names: list[str] = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    return set(names)


async def _version_rows(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
    return [r[0] for r in rows]


async def test_empty_database_has_no_revision(engine: AsyncEngine) -> None:
    assert await current_revision(engine) is None
    assert await _tables(engine) == set()


async def test_migrate_creates_the_schema(engine: AsyncEngine) -> None:
    await migrate(engine)
    assert await _tables(engine) == APP_TABLES | {"alembic_version"}
    assert await current_revision(engine) == _head()
    assert await _version_rows(engine) == [_head()]


async def test_migrate_twice_is_a_no_op(engine: AsyncEngine) -> None:
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO users (name, default_system_version, created_at) "
                "VALUES ('kept', 3, '2024-01-01 00:00:00')"
            )
        )
    await migrate(engine)
    assert await current_revision(engine) == _head()
    assert await _version_rows(engine) == [_head()]
    async with engine.connect() as conn:
        names = (await conn.execute(sa.text("SELECT name FROM users"))).scalars().all()
    assert names == ["kept"]


def _downgrade_to_base(connection: Connection) -> None:
    command.downgrade(_alembic_config(connection), "base")


async def test_downgrade_and_upgrade_again(engine: AsyncEngine) -> None:
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.run_sync(_downgrade_to_base)
    assert await current_revision(engine) is None
    assert await _tables(engine) - {"alembic_version"} == set()

    await migrate(engine)
    assert await current_revision(engine) == _head()
    assert await _tables(engine) == APP_TABLES | {"alembic_version"}


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "target_metadata": metadata}
    )
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_metadata(engine: AsyncEngine) -> None:
    await migrate(engine)
    async with engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []


async def test_indexes_and_constraints_exist(engine: AsyncEngine) -> None:
    await migrate(engine)

    def inspect(c: Connection) -> dict[str, Any]:
        insp = sa.inspect(c)
        return {
            "indexes": {i["name"] for i in insp.get_indexes("jobs")},
            "jobs_fks": insp.get_foreign_keys("jobs"),
            "keys_unique": insp.get_unique_constraints("api_keys"),
        }

    async with engine.connect() as conn:
        info = await conn.run_sync(inspect)
    assert {
        "ix_jobs_user_id_created_at",
        "ix_jobs_status_lease_expires_at",
        "ix_jobs_privacy_created_at",
    } <= info["indexes"]
    assert [fk["referred_table"] for fk in info["jobs_fks"]] == ["users"]
    assert info["jobs_fks"][0]["options"].get("ondelete") == "CASCADE"
    assert any(u["column_names"] == ["key_hash"] for u in info["keys_unique"])
