"""The job runner on a real job store, with engines that misbehave on purpose."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.auth import Accounts
from openletz.db import create_engine, migrate
from openletz.engines.base import Engine, GenerationRequest, StepCallback
from openletz.jobs.status import JobStatus
from openletz.jobs.store import Job, JobStore, NewJob
from openletz.settings import Settings
from openletz.storage.local import LocalBlobStore
from openletz.worker.runner import ENCODED, JobRunner, stuck_grace_s
from tests.fixtures.engines import _Lockstep


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
    return LocalBlobStore(tmp_path / "blobs", public_base_url="http://x", secret="s", url_ttl_s=60)


class Sink:
    def __init__(self) -> None:
        self.progress: dict[str, list[int]] = {}

    def __call__(self, job_id: str, progress: int, preview: bytes | None) -> None:
        self.progress.setdefault(job_id, []).append(progress)


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "heartbeat_s": 0.1,
        "lease_s": 5,
        "preview_interval_s": 0,
        "batch_max": 4,
        "batch_window_s": 0.05,
    }
    return Settings(**{**base, **values})


def runner(store: JobStore, blobs: Any, engine: Engine, sink: Sink, **values: Any) -> JobRunner:
    return JobRunner(
        owner="w1", store=store, blobs=blobs, engine=engine, settings=settings(**values), sink=sink
    )


async def create(store: JobStore, engine: AsyncEngine, *, quality: int = 2, **kw: Any) -> Job:
    user = await Accounts(engine).ensure_user("u")
    values: dict[str, Any] = {
        "user_id": user.id,
        "prompt": "p",
        "width": 96,
        "height": 96,
        "quality": quality,
        "creativity": 2,
        "has_watermark": False,
        "system_version": 3,
        "mode": "default",
        "seed": 1,
        **kw,
    }
    return await store.create(NewJob(**values))


async def status_of(store: JobStore, job_id: str) -> JobStatus:
    job = await store.get(job_id)
    assert job is not None
    return job.status


# -- batches: each job ends when its end is known ----------------------------------------


async def test_an_interrupted_job_of_a_batch_ends_while_the_others_run(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore
) -> None:
    sink = Sink()
    lockstep = _Lockstep(duration_s=2.4, steps_per_quality=6)  # 12 steps of 0.2 s
    run = runner(store, blobs, lockstep, sink)
    ids = [(await create(store, engine, seed=s)).id for s in (1, 2, 3)]
    batch = asyncio.create_task(run.run_batch(ids))
    deadline = time.monotonic() + 5
    while not all(max(sink.progress.get(i, [0])) > 0 for i in ids):
        assert time.monotonic() < deadline, sink.progress
        await asyncio.sleep(0.01)
    run.interrupt(ids[1])
    deadline = time.monotonic() + 1.0
    while await status_of(store, ids[1]) is not JobStatus.INTERRUPTED:
        assert time.monotonic() < deadline, "the interrupted job waits for its batch"
        await asyncio.sleep(0.01)
    assert not batch.done()
    assert await status_of(store, ids[0]) is JobStatus.IN_PROGRESS
    assert await status_of(store, ids[2]) is JobStatus.IN_PROGRESS
    statuses = await batch
    assert statuses == {ids[0]: "ready", ids[1]: "interrupted", ids[2]: "ready"}


async def test_run_with_batch_claims_compatible_waiting_jobs_together(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore
) -> None:
    run = runner(store, blobs, _Lockstep(duration_s=0.2, steps_per_quality=2), Sink())
    first = await create(store, engine, seed=1)
    same = [await create(store, engine, seed=s) for s in (2, 3)]
    other = await create(store, engine, quality=1)
    statuses = await run.run_with_batch(first.id)
    assert statuses == {j.id: "ready" for j in (first, *same)}
    assert await status_of(store, other.id) is JobStatus.NEW
    started: list[datetime] = []
    for j in (first, *same):
        done = await store.get(j.id)
        assert done is not None
        assert done.started_at is not None
        started.append(done.started_at)
    assert (max(started) - min(started)).total_seconds() < 0.1
    # A delivery of a job that ran in another's batch does nothing.
    assert await run.run_with_batch(same[0].id) == {same[0].id: "skipped"}


async def test_run_with_batch_alone_when_batching_is_off(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore
) -> None:
    run = runner(store, blobs, _Lockstep(duration_s=0.1, steps_per_quality=1), Sink(), batch_max=1)
    first = await create(store, engine, seed=1)
    second = await create(store, engine, seed=2)
    assert await run.run_with_batch(first.id) == {first.id: "ready"}
    assert await status_of(store, second.id) is JobStatus.NEW


# -- timeouts --------------------------------------------------------------------------------


class _Hung(Engine):
    """generate blocks until released, and never calls on_step."""

    name = "hung"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.returned = threading.Event()

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        self.release.wait(60)
        self.returned.set()
        return Image.new("RGB", (request.width, request.height))


@pytest.fixture
def hung() -> Iterator[_Hung]:
    engine = _Hung()
    yield engine
    engine.release.set()
    engine.returned.wait(10)


async def test_a_hung_engine_fails_its_job_and_the_runner_says_it_is_stuck(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore, hung: _Hung
) -> None:
    run = runner(store, blobs, hung, Sink(), job_timeout_s=0.3)
    job = await create(store, engine)
    started = time.monotonic()
    statuses = await run.run_batch([job.id])
    took = time.monotonic() - started
    assert statuses == {job.id: "failed"}
    assert 0.3 + stuck_grace_s(0.3) <= took < 0.3 + stuck_grace_s(0.3) + 1.5
    assert run.stuck
    failed = await store.get(job.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.progress_message is not None
    assert "timed out after 0.3 s" in failed.progress_message
    assert "did not stop" in failed.progress_message
    assert failed.lease_owner is None
    # Nothing renews a lease any more: the row stays as it ended.
    await asyncio.sleep(0.3)
    assert await store.get(job.id) == failed
    assert not hung.returned.is_set()


async def test_a_slow_engine_that_stops_when_asked_is_not_stuck(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore
) -> None:
    slow = _Lockstep(duration_s=20, steps_per_quality=100)  # steps of 0.1 s
    run = runner(store, blobs, slow, Sink(), job_timeout_s=0.3)
    job = await create(store, engine)
    assert await run.run_batch([job.id]) == {job.id: "failed"}
    assert not run.stuck
    failed = await store.get(job.id)
    assert failed is not None
    assert failed.progress_message is not None
    assert "longer than 0.3 s" in failed.progress_message


# -- progress --------------------------------------------------------------------------------


class _FailingBlobs(LocalBlobStore):
    async def put_many(self, items: Mapping[str, bytes], content_type: str) -> None:
        raise OSError("disk full")


async def test_a_failure_while_storing_keeps_the_progress_shown(
    store: JobStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    sink = Sink()
    blobs = _FailingBlobs(tmp_path / "b", public_base_url="http://x", secret="s", url_ttl_s=60)
    run = runner(store, blobs, _Lockstep(duration_s=0.1, steps_per_quality=2), sink)
    job = await create(store, engine)
    assert await run.run_batch([job.id]) == {job.id: "failed"}
    failed = await store.get(job.id)
    assert failed is not None
    assert failed.progress_message is not None
    assert "disk full" in failed.progress_message
    assert max(sink.progress[job.id]) == ENCODED
    assert failed.progress == ENCODED
