"""On a SQLite file the store's writes run whole in one thread, over a plain sqlite3
connection (``db.sqlite_twin``); every other database goes through its async driver."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from openletz.auth import Accounts
from openletz.db import create_engine, migrate, sqlite_twin
from openletz.jobs.status import JobStatus
from openletz.jobs.store import JobStore
from tests.jobs.test_job_store import new_job


def test_only_a_sqlite_file_has_a_twin(tmp_path: Path) -> None:
    on_file = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    twin = sqlite_twin(on_file)
    assert twin is not None
    assert twin.url.database == on_file.url.database
    with twin.connect() as conn:  # the same pragmas as the async engine's
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
    twin.dispose()
    assert sqlite_twin(create_async_engine("sqlite+aiosqlite:///:memory:")) is None
    assert sqlite_twin(create_async_engine("postgresql+asyncpg://u@127.0.0.1/x")) is None


async def test_writes_on_a_sqlite_file_run_in_one_thread_each(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await migrate(engine)
    user = (await Accounts(engine).ensure_user("u")).id
    store = JobStore(engine)
    twin = store._twin()
    assert twin is not None
    seen: list[tuple[str, int]] = []

    @event.listens_for(twin, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append((statement.split()[0], threading.get_ident()))

    loop_thread = threading.get_ident()
    job = await store.create(new_job(user))
    [claimed] = await store.claim_many([job.id], "w1", lease_s=30)
    assert claimed.status is JobStatus.IN_PROGRESS
    assert await store.heartbeat(job.id, "w1", 30, 40) == (True, False)
    # Another owner's heartbeat finds nothing: the guard is the statement's.
    assert await store.heartbeat(job.id, "w2", 30, 40) == (False, False)
    assert [verb for verb, _ in seen] == ["INSERT", "UPDATE", "UPDATE", "UPDATE"]
    assert all(thread != loop_thread for _, thread in seen)
    # What the twin wrote, the async engine reads.
    async with engine.connect() as conn:
        progress = (
            await conn.execute(sa.text("SELECT progress FROM jobs WHERE id = :i"), {"i": job.id})
        ).scalar()
    assert progress == 40
    await engine.dispose()
