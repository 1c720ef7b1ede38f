"""Database engines and schema migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import Select, event, text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes writers from
    # several processes queue up instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL and a busy timeout, and its folder."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Every aiosqlite connection is a thread; opening one per request under load
        # (the default pool keeps 5) costs more than the query.
        kwargs.setdefault("pool_size", 20)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


class SqliteReader:
    """One-row reads of a SQLite file on the event loop's own thread.

    aiosqlite hands every step of a query to a thread of its own: about half a
    millisecond for a read that SQLite answers in microseconds. In WAL mode a
    reader never waits for a writer, so small reads are cheaper done in place.
    Statements are SQLAlchemy's, compiled once; values pass through the column
    types' own result processors, so rows come back exactly as the async engine
    would return them. Writes stay on the async engine: they can wait for a lock.
    """

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        _sqlite_pragmas(self._conn, None)
        self._dialect = sqlite_dialect.dialect()
        self._prepared: dict[int, tuple[str, tuple[str, ...], list[Any], list[str]]] = {}

    def _prepare(self, stmt: Select[Any]) -> tuple[str, tuple[str, ...], list[Any], list[str]]:
        compiled = stmt.compile(dialect=self._dialect)
        columns = list(stmt.selected_columns)
        processors = [
            c.type.dialect_impl(self._dialect).result_processor(self._dialect, None)
            for c in columns
        ]
        names = tuple(compiled.positiontup or ())
        return str(compiled), names, processors, [str(c.key) for c in columns]

    def first(self, stmt: Select[Any], params: dict[str, Any]) -> dict[str, Any] | None:
        prepared = self._prepared.get(id(stmt))
        if prepared is None:
            prepared = self._prepared[id(stmt)] = self._prepare(stmt)
        sql, names, processors, keys = prepared
        row = self._conn.execute(sql, [params[n] for n in names]).fetchone()
        if row is None:
            return None
        return {
            k: (p(v) if p is not None else v) for k, p, v in zip(keys, processors, row, strict=True)
        }

    def close(self) -> None:
        self._conn.close()


def sqlite_twin(engine: AsyncEngine) -> sa.Engine | None:
    """A synchronous engine on ``engine``'s SQLite file, for writes made whole in one
    thread: through aiosqlite, each step of a statement (begin, execute, fetch,
    commit) is a hop to its connection's thread and back to the event loop, four
    wake-ups of a loop that may be busy. ``None`` for other databases and in-memory
    SQLite. The same file, the same pragmas, the same SQL: only the driver's
    plumbing differs."""
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database
    if not path or path == ":memory:":
        return None
    twin = sa.create_engine(
        f"sqlite:///{path}", connect_args={"check_same_thread": False}, pool_size=4
    )
    event.listen(twin, "connect", _sqlite_pragmas)
    return twin


def create_sqlite_reader(engine: AsyncEngine) -> SqliteReader | None:
    """A :class:`SqliteReader` on ``engine``'s file; ``None`` for other databases,
    whose async drivers are fast, and for in-memory SQLite, which is per connection."""
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database
    if not path or path == ":memory:":
        return None
    return SqliteReader(path)


def _alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


# Any constant will do; it names openletz's lock among the database's advisory locks.
_MIGRATION_LOCK = 0x6F6C7A  # "olz"


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent). On PostgreSQL, API
    servers that start together migrate one after the other."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        await conn.run_sync(_upgrade)


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
