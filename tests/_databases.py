"""Databases for tests: a SQLite file, or a fresh PostgreSQL database of its own.

PostgreSQL is the server on 127.0.0.1:5432 (OPENLETZ_TEST_POSTGRES_URL names
another); each test gets a database that is dropped after it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

POSTGRES = os.environ.get(
    "OPENLETZ_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_postgres_database() -> str:
    """The SQLAlchemy URL of a new, empty PostgreSQL database."""
    name = f"openletz_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_plain(POSTGRES))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return POSTGRES.rsplit("/", 1)[0] + f"/{name}"


async def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(_plain(POSTGRES))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    url = await create_postgres_database()
    try:
        yield url
    finally:
        await drop_postgres_database(url)


@asynccontextmanager
async def database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/t.db"
    else:
        async with postgres_database() as url:
            yield url
