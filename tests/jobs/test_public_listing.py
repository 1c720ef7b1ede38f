"""JobStore.list_public on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.auth import Accounts
from openletz.db import create_engine, migrate
from openletz.jobs.status import JobStatus
from openletz.jobs.store import JobStore, NewJob
from openletz.jobs.tables import jobs, utcnow
from tests._databases import database


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with database(request.param, tmp_path) as url:
        eng = create_engine(url)
        await migrate(eng)
        yield eng
        await eng.dispose()


def _new(user_id: int, prompt: str) -> NewJob:
    return NewJob(
        user_id=user_id,
        prompt=prompt,
        width=520,
        height=520,
        quality=1,
        creativity=2,
        has_watermark=True,
        system_version=3,
        mode="default",
        seed=1,
    )


async def _made(
    store: JobStore, engine: AsyncEngine, user_id: int, prompt: str, *, minutes_ago: int
) -> str:
    """A finished public job, created ``minutes_ago``."""
    job = await store.create(_new(user_id, prompt))
    claimed = await store.claim(job.id, "w", lease_s=30)
    assert claimed is not None
    done = await store.finish(job.id, "w", JobStatus.READY, image_versions={"original": "k"})
    assert done is not None
    await store.set_privacy(job.id, "public")
    async with engine.begin() as conn:
        stamp = utcnow() - timedelta(minutes=minutes_ago)
        await conn.execute(jobs.update().where(jobs.c.id == job.id).values(created_at=stamp))
    return job.id


async def test_public_finished_jobs_newest_first_by_page(engine: AsyncEngine) -> None:
    store = JobStore(engine)
    accounts = Accounts(engine)
    alice = (await accounts.ensure_user("alice")).id
    bob = (await accounts.ensure_user("bob")).id
    # Created out of order: the listing orders by creation time, not insertion.
    old = await _made(store, engine, alice, "old", minutes_ago=30)
    new = await _made(store, engine, bob, "new", minutes_ago=1)
    middle = await _made(store, engine, alice, "middle", minutes_ago=10)
    private = await _made(store, engine, alice, "private", minutes_ago=5)
    await store.set_privacy(private, "private")
    waiting = await store.create(_new(alice, "waiting"))
    await store.set_privacy(waiting.id, "public")

    everyone = await store.list_public(page=1, limit=10)
    assert [j.id for j in everyone] == [new, middle, old]
    pages = [[j.id for j in await store.list_public(page=p, limit=2)] for p in (1, 2, 3)]
    assert pages == [[new, middle], [old], []]
    for_alice = await store.list_public(page=1, limit=10, exclude_user_id=alice)
    assert [j.id for j in for_alice] == [new]
    for_bob = await store.list_public(page=1, limit=10, exclude_user_id=bob)
    assert [j.id for j in for_bob] == [middle, old]
