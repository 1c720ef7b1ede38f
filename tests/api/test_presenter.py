"""The image object's progress: never lower than anything shown before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.api.presenter import Presenter
from openletz.auth import Accounts
from openletz.db import create_engine, migrate
from openletz.jobs.status import JobStatus
from openletz.jobs.store import Job, JobStore, NewJob
from openletz.jobs.tables import jobs, utcnow
from openletz.live import MemoryLiveStore
from openletz.storage.local import LocalBlobStore


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    await migrate(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> JobStore:
    return JobStore(engine)


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(
        tmp_path / "blobs", public_base_url="http://x", secret="s", url_ttl_s=3600
    )


async def _running(store: JobStore, engine: AsyncEngine, owner: str = "w1") -> Job:
    user = await Accounts(engine).ensure_user("u")
    job = await store.create(
        NewJob(
            user_id=user.id,
            prompt="p",
            width=520,
            height=520,
            quality=2,
            creativity=2,
            has_watermark=False,
            system_version=3,
            mode="default",
            seed=1,
        )
    )
    claimed = await store.claim(job.id, owner, lease_s=30)
    assert claimed is not None
    return claimed


async def _shown(presenter: Presenter, store: JobStore, job_id: str) -> tuple[str, int]:
    job = await store.get(job_id)
    assert job is not None
    body = await presenter.image(job)
    return body["status"], body["progress"]


async def test_live_progress_shown_is_kept_in_the_row(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore
) -> None:
    job = await _running(store, engine)
    live = MemoryLiveStore()
    presenter = Presenter(blobs, live, "sandbox", store)
    await live.update(job.id, 51, None)
    assert await _shown(presenter, store, job.id) == ("in progress", 51)
    # The live store is gone (the API process restarted): the row has what was shown.
    restarted = Presenter(blobs, MemoryLiveStore(), "sandbox", store)
    assert await _shown(restarted, store, job.id) == ("in progress", 51)


async def test_a_retry_shows_the_high_water_mark_until_it_passes_it(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore
) -> None:
    job = await _running(store, engine, "first")
    live = MemoryLiveStore()
    presenter = Presenter(blobs, live, "sandbox", store)
    await live.update(job.id, 51, None)
    assert await _shown(presenter, store, job.id) == ("in progress", 51)
    # The worker dies; recovery puts the job back, and another worker claims it.
    async with engine.begin() as conn:
        await conn.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=5))
        )
    await store.recover_expired(max_attempts=3)
    assert await _shown(presenter, store, job.id) == ("in progress", 51)
    assert await store.claim(job.id, "second", lease_s=30) is not None
    fresh = MemoryLiveStore()  # as after a restart of the API too
    presenter = Presenter(blobs, fresh, "sandbox", store)
    for sent, shown in [(0, 51), (20, 51), (51, 51), (60, 60), (88, 88)]:
        await fresh.update(job.id, sent, None)
        assert await _shown(presenter, store, job.id) == ("in progress", shown)
    # It fails at a low point of a third attempt: still no lower than shown.
    done = await store.finish(job.id, "second", JobStatus.FAILED, message="x", progress=3)
    assert done is not None
    assert await _shown(presenter, store, job.id) == ("failed", 88)


async def test_100_only_when_ready(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore
) -> None:
    job = await _running(store, engine)
    live = MemoryLiveStore()
    presenter = Presenter(blobs, live, "sandbox", store)
    await live.update(job.id, 100, None)
    assert await _shown(presenter, store, job.id) == ("in progress", 99)
    await store.finish(job.id, "w1", JobStatus.READY, image_versions={"original": "a/o.jpg"})
    assert await _shown(presenter, store, job.id) == ("ready", 100)
