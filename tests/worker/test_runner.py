"""The job runner on a real job store, with engines that misbehave on purpose."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Hashable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz import imaging
from openletz.auth import Accounts
from openletz.db import create_engine, migrate
from openletz.engines.base import Engine, GenerationRequest, StepCallback, StepUpdate
from openletz.engines.sandbox import SandboxEngine
from openletz.jobs.status import JobStatus
from openletz.jobs.store import Job, JobStore, NewJob
from openletz.jobs.tables import jobs
from openletz.settings import Settings
from openletz.storage.local import LocalBlobStore
from openletz.worker.runner import ENCODED, JobRunner, stuck_grace_s
from tests.fixtures.engines import _Lockstep, slow_decode_in_process


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


async def test_the_batch_window_counts_from_the_job_s_creation(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore
) -> None:
    # A 1.5 s window: a job just made waits it out for company; one that has waited
    # that long already (behind another job) starts at once.
    run = runner(
        store, blobs, _Lockstep(duration_s=0.05, steps_per_quality=1), Sink(), batch_window_s=1.5
    )
    fresh = await create(store, engine, seed=1)
    started = time.monotonic()
    assert await run.run_with_batch(fresh.id) == {fresh.id: "ready"}
    assert time.monotonic() - started >= 1.4
    old = await create(store, engine, seed=2)
    async with engine.begin() as conn:
        await conn.execute(
            jobs.update()
            .where(jobs.c.id == old.id)
            .values(created_at=old.created_at - timedelta(seconds=2))
        )
    started = time.monotonic()
    assert await run.run_with_batch(old.id) == {old.id: "ready"}
    assert time.monotonic() - started < 1.0


async def test_the_engine_is_asked_a_batch_key_once_a_kind_of_request(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore
) -> None:
    # An engine in a process of its own answers in a round trip to that process.
    asked: list[GenerationRequest] = []

    class _Keys(_Lockstep):
        def batch_key(self, request: GenerationRequest) -> Hashable | None:
            asked.append(request)
            return super().batch_key(request)

    keys = _Keys(duration_s=0.05, steps_per_quality=1)
    run = runner(store, blobs, keys, Sink(), batch_window_s=0)
    for seed in (1, 2, 3):
        job = await create(store, engine, seed=seed, prompt=f"prompt {seed}")
        assert await run.run_with_batch(job.id) == {job.id: "ready"}
    other = await create(store, engine, quality=1, seed=4)
    assert await run.run_with_batch(other.id) == {other.id: "ready"}
    assert [(r.seed, r.quality) for r in asked] == [(1, 2), (4, 1)]


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


# -- delivery beside the next generation ------------------------------------------------------


class _Counted(SandboxEngine):
    """A sandbox that counts its calls; a prompt with "slow" takes 100 steps of 0.05 s."""

    def __init__(self) -> None:
        super().__init__(duration_s=0, steps_per_quality=1)
        self.calls = 0

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        self.calls += 1
        if "slow" in request.prompt:
            for k in range(1, 101):
                time.sleep(0.05)
                on_step(StepUpdate(step=k, total=100))
        return super().generate(request, on_step)


class _GatedBlobs(LocalBlobStore):
    """A store that holds every job's versions until ``gate`` opens; ``fail`` makes the
    first job's storing fail once the gate opens."""

    def __init__(self, root: Path, *, fail: bool = False) -> None:
        super().__init__(root, public_base_url="http://x", secret="s", url_ttl_s=60)
        self.gate = asyncio.Event()
        self.entered = 0
        self._fail = fail

    async def put_many(self, items: Mapping[str, bytes], content_type: str) -> None:
        self.entered += 1
        first = self.entered == 1
        await self.gate.wait()
        if first and self._fail:
            raise OSError("disk full")
        await super().put_many(items, content_type)

    async def until_entered(self, n: int) -> None:
        deadline = time.monotonic() + 10
        while self.entered < n:
            assert time.monotonic() < deadline, f"{self.entered} storing, wanted {n}"
            await asyncio.sleep(0.01)


def pipelined(store: JobStore, blobs: Any, engine: Engine, **values: Any) -> JobRunner:
    return runner(store, blobs, engine, Sink(), **{"batch_max": 1, **values})


async def row(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None
    return job


async def test_the_next_generation_starts_while_the_previous_job_is_delivered(
    store: JobStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    blobs = _GatedBlobs(tmp_path / "b")
    counted = _Counted()
    run = pipelined(store, blobs, counted)
    first, second = [await create(store, engine, seed=s) for s in (1, 2)]
    a = await asyncio.wait_for(run.start_with_batch(first.id), 10)
    assert a.claimed == [first.id]
    await blobs.until_entered(1)
    claimed = await row(store, first.id)
    # The engine is free while the first job's versions are stored.
    b = await asyncio.wait_for(run.start_with_batch(second.id), 10)
    assert counted.calls == 2
    assert b.claimed == [second.id]
    assert not a.ended.done()
    assert run.delivering == 2
    await asyncio.sleep(0.3)
    delivering = await row(store, first.id)
    assert delivering.status is JobStatus.IN_PROGRESS
    assert delivering.lease_owner == "w1"
    # Its lease is renewed while it is delivered.
    assert delivering.lease_expires_at is not None
    assert claimed.lease_expires_at is not None
    assert delivering.lease_expires_at > claimed.lease_expires_at
    blobs.gate.set()
    assert await asyncio.wait_for(a.ended, 10) == {first.id: "ready"}
    assert await asyncio.wait_for(b.ended, 10) == {second.id: "ready"}
    assert run.delivering == 0
    one, two = await row(store, first.id), await row(store, second.id)
    assert one.status is two.status is JobStatus.READY
    assert two.started_at is not None
    assert one.finished_at is not None
    assert two.started_at < one.finished_at


@pytest.mark.parametrize("backlog", [0, 1, 2])
async def test_the_delivery_backlog_bounds_the_deliveries_under_way(
    store: JobStore, engine: AsyncEngine, tmp_path: Path, backlog: int
) -> None:
    blobs = _GatedBlobs(tmp_path / "b")
    counted = _Counted()
    run = pipelined(store, blobs, counted, delivery_backlog=backlog)
    ids = [(await create(store, engine, seed=s)).id for s in range(backlog + 2)]
    batches = [await asyncio.wait_for(run.start_with_batch(i), 10) for i in ids[: backlog + 1]]
    await blobs.until_entered(backlog + 1)
    assert run.delivering == backlog + 1
    # One more delivery would pass the bound: the next job waits, unclaimed.
    waiting = asyncio.create_task(run.start_with_batch(ids[-1]))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert counted.calls == backlog + 1
    assert (await row(store, ids[-1])).status is JobStatus.NEW
    blobs.gate.set()
    batches.append(await asyncio.wait_for(waiting, 10))
    assert counted.calls == backlog + 2
    for job_id, batch in zip(ids, batches, strict=True):
        assert await asyncio.wait_for(batch.ended, 10) == {job_id: "ready"}


async def test_a_failure_while_delivering_fails_that_job_and_not_the_next(
    store: JobStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    blobs = _GatedBlobs(tmp_path / "b", fail=True)
    run = pipelined(store, blobs, _Counted())
    first, second = [await create(store, engine, seed=s) for s in (1, 2)]
    a = await asyncio.wait_for(run.start_with_batch(first.id), 10)
    await blobs.until_entered(1)
    b = await asyncio.wait_for(run.start_with_batch(second.id), 10)
    blobs.gate.set()
    assert await asyncio.wait_for(a.ended, 10) == {first.id: "failed"}
    assert await asyncio.wait_for(b.ended, 10) == {second.id: "ready"}
    failed = await row(store, first.id)
    assert failed.status is JobStatus.FAILED
    assert failed.progress_message is not None
    assert "disk full" in failed.progress_message
    assert failed.progress == ENCODED
    assert failed.lease_owner is None


async def test_an_interruption_once_the_image_is_made_does_not_stop_its_delivery(
    store: JobStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    blobs = _GatedBlobs(tmp_path / "b")
    run = pipelined(store, blobs, _Counted())
    job = await create(store, engine)
    a = await asyncio.wait_for(run.start_with_batch(job.id), 10)
    await blobs.until_entered(1)
    await store.request_interrupt(job.id)
    run.interrupt(job.id)
    await asyncio.sleep(0.3)  # heartbeats come and see the flag
    blobs.gate.set()
    assert await asyncio.wait_for(a.ended, 10) == {job.id: "ready"}
    assert (await row(store, job.id)).status is JobStatus.READY


async def test_stopping_abandons_the_generation_and_lets_the_delivery_finish(
    store: JobStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    blobs = _GatedBlobs(tmp_path / "b")
    sink = Sink()
    run = runner(store, blobs, _Counted(), sink, batch_max=1)
    made = await create(store, engine, seed=1)
    making = await create(store, engine, seed=2, prompt="slow")
    a = await asyncio.wait_for(run.start_with_batch(made.id), 10)
    await blobs.until_entered(1)
    generating = asyncio.create_task(run.start_with_batch(making.id))
    deadline = time.monotonic() + 10
    while max(sink.progress.get(making.id, [0])) == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    run.abandon_all()
    b = await asyncio.wait_for(generating, 10)
    assert await asyncio.wait_for(b.ended, 10) == {making.id: "lost"}
    assert not a.ended.done()
    blobs.gate.set()
    await run.drain(10)
    assert a.ended.result() == {made.id: "ready"}
    # The abandoned one is still held, until the worker hands it back.
    assert (await row(store, making.id)).lease_owner == "w1"
    await store.release_owner("w1")
    assert (await store.recover_expired(max_attempts=3)).requeued == [making.id]


async def test_a_delivery_that_outlives_the_drain_is_abandoned_and_handed_back(
    store: JobStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    blobs = _GatedBlobs(tmp_path / "b")
    run = pipelined(store, blobs, _Counted())
    job = await create(store, engine)
    a = await asyncio.wait_for(run.start_with_batch(job.id), 10)
    await blobs.until_entered(1)
    await run.drain(0.2)
    assert a.ended.cancelled()
    assert run.delivering == 0
    await store.release_owner("w1")
    assert (await store.recover_expired(max_attempts=3)).requeued == [job.id]
    # Another worker makes it; the first one's files were never written.
    blobs.gate.set()
    other = JobRunner(
        owner="w2",
        store=store,
        blobs=blobs,
        engine=_Counted(),
        settings=settings(batch_max=1),
        sink=Sink(),
    )
    assert await asyncio.wait_for(other.run(job.id), 10) == "ready"
    done = await row(store, job.id)
    assert done.attempts == 2
    assert done.image_versions is not None
    assert all(key.endswith("-2.jpg") for key in done.image_versions.values())


class _HalfSize(SandboxEngine):
    """Leaves the last resize to its caller: its unresized images are half the size."""

    def __init__(self) -> None:
        super().__init__(duration_s=0, steps_per_quality=1)

    def generate_unresized(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        image = self.generate(request, on_step)
        self.last = image.resize((request.width // 2, request.height // 2))
        return self.last


async def test_the_delivery_makes_the_last_resize_that_the_engine_left(
    store: JobStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "b", public_base_url="http://x", secret="s", url_ttl_s=60)
    half = _HalfSize()
    run = pipelined(store, blobs, half)
    job = await create(store, engine, width=96, height=72)
    assert await run.run(job.id) == "ready"
    done = await row(store, job.id)
    assert done.image_versions is not None
    with Image.open(blobs.path(done.image_versions["original"])) as original:
        assert original.size == (96, 72)
    # The same resize as the engine's own generate() makes (imaging.resize).
    made = settings()
    expected = imaging.encode(
        imaging.resize(half.last, (96, 72)), made.image_format, quality=made.jpeg_quality
    )
    assert blobs.path(done.image_versions["original"]).read_bytes() == expected


async def test_the_smaller_pictures_are_resized_from_the_engines_own(
    store: JobStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    # The engine's picture (300x225) has fewer pixels than the 600x450 asked for: the
    # 240x240 version and the job's preview are resized from it, once, not from the
    # picture enlarged to 600x450.
    blobs = LocalBlobStore(tmp_path / "b", public_base_url="http://x", secret="s", url_ttl_s=60)
    half = _HalfSize()
    made = settings()
    job = await create(store, engine, width=600, height=450)
    assert await pipelined(store, blobs, half).run(job.id) == "ready"
    done = await row(store, job.id)
    assert done.image_versions is not None
    stored = {n: blobs.path(k).read_bytes() for n, k in done.image_versions.items()}

    def encoded(image: Image.Image) -> bytes:
        return imaging.encode(image, made.image_format, quality=made.jpeg_quality)

    assert stored["original"] == encoded(imaging.resize(half.last, (600, 450)))
    v240 = imaging.resize(half.last, (240, 180))
    assert stored["240x240"] == encoded(v240)
    assert stored["96x96"] == encoded(imaging.resize(v240, (96, 72)))
    assert done.preview == imaging.preview_jpeg(imaging.resize(half.last, (256, 192)))


async def test_deliveries_render_on_a_few_threads_of_their_own(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More rendering threads than cores only pass the GIL around: a batch's images
    # are rendered on at most render_threads() threads, named for it.
    names: set[str] = set()
    under_way, most = 0, 0
    lock = threading.Lock()
    real = imaging.render_versions

    def watched(*args: Any, **kwargs: Any) -> dict[str, bytes]:
        nonlocal under_way, most
        with lock:
            under_way += 1
            most = max(most, under_way)
            names.add(threading.current_thread().name)
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                under_way -= 1

    monkeypatch.setattr(imaging, "render_versions", watched)
    monkeypatch.setattr("openletz.worker.runner.render_threads", lambda: 2)
    lockstep = _Lockstep(duration_s=0.1, steps_per_quality=1)
    run = runner(store, blobs, lockstep, Sink(), batch_max=8)
    ids = [(await create(store, engine, seed=s)).id for s in range(8)]
    try:
        assert await asyncio.wait_for(run.run_batch(ids), 30) == dict.fromkeys(ids, "ready")
    finally:
        run.close()
    assert most == 2
    assert len(names) == 2
    assert all(name.startswith("openletz-render") for name in names), names


@pytest.mark.skipif(sys.platform != "linux", reason="nice levels per thread are Linux's")
@pytest.mark.parametrize("render_nice", [0, 5])
async def test_deliveries_render_at_a_lower_priority(
    store: JobStore,
    engine: AsyncEngine,
    blobs: LocalBlobStore,
    monkeypatch: pytest.MonkeyPatch,
    render_nice: int,
) -> None:
    levels: list[int] = []
    real = imaging.render_versions

    def watched(*args: Any, **kwargs: Any) -> dict[str, bytes]:
        levels.append(os.nice(0))
        return real(*args, **kwargs)

    monkeypatch.setattr(imaging, "render_versions", watched)
    run = runner(store, blobs, _Lockstep(duration_s=0.0), Sink(), render_nice=render_nice)
    job = await create(store, engine)
    here = os.nice(0)
    try:
        assert await asyncio.wait_for(run.run(job.id), 30) == "ready"
    finally:
        run.close()
    assert levels == [min(19, here + render_nice)]
    assert os.nice(0) == here  # the rest of the worker keeps its level


class _Entered(SandboxEngine):
    """Records each call's seed as it enters, in the thread that makes it."""

    def __init__(self) -> None:
        super().__init__(duration_s=0.05, steps_per_quality=1)
        self.entered: list[int] = []

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        self.entered.append(request.seed)
        return super().generate(request, on_step)


async def test_a_delivery_renders_once_the_next_engine_call_has_begun(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next job was waiting (sent ahead): its claim and its engine call go first,
    # and the last image's rendering (which would hold both up) after.
    entered = _Entered()
    seen: list[list[int]] = []
    real = imaging.render_versions

    def watched(*args: Any, **kwargs: Any) -> dict[str, bytes]:
        seen.append(list(entered.entered))
        return real(*args, **kwargs)

    monkeypatch.setattr(imaging, "render_versions", watched)
    run = pipelined(store, blobs, entered)
    first, second = [await create(store, engine, seed=s) for s in (1, 2)]
    # As a worker does with a job sent ahead: the next start follows at once (no
    # task of its own, so nothing else runs in between).
    a = await run.start_with_batch(first.id)
    b = await run.start_with_batch(second.id)
    assert await asyncio.wait_for(a.ended, 10) == {first.id: "ready"}
    assert await asyncio.wait_for(b.ended, 10) == {second.id: "ready"}
    # The first image was rendered after the second's call had begun.
    assert seen[0] == [1, 2]


@pytest.mark.slow
async def test_an_engine_that_queues_calls_is_sent_the_next_one_at_the_last_step(
    store: JobStore, engine: AsyncEngine, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    # An engine in a process of its own runs the calls it is sent one after the
    # other: the worker claims and sends the next job while the last one decodes
    # (half a second here), and the engine begins it the moment that decode ends.
    data = tmp_path / "engine"
    data.mkdir()
    queued = slow_decode_in_process(Settings(data_dir=data, sandbox_steps_per_quality=1))
    run = pipelined(store, blobs, queued)
    try:
        first, second = [await create(store, engine, seed=s) for s in (1, 2)]
        a = await asyncio.wait_for(run.start_with_batch(first.id), 30)
        returned = time.time()
        assert a.claimed == [first.id]
        b = await asyncio.wait_for(run.start_with_batch(second.id), 30)
        assert b.claimed == [second.id]
        assert await asyncio.wait_for(a.ended, 30) == {first.id: "ready"}
        assert await asyncio.wait_for(b.ended, 30) == {second.id: "ready"}
    finally:
        run.close()
        queued.close()
    calls = {}
    for line in (data / "calls.log").read_text().splitlines():
        seed, began, ended = line.split()
        calls[int(seed)] = (float(began), float(ended))
    started_at = (await row(store, second.id)).started_at
    assert started_at is not None
    claimed = started_at.replace(tzinfo=started_at.tzinfo or UTC).timestamp()
    # The start of the first job returned before its call ended (still decoding);
    # the second job was claimed (and its call sent) before that end too, and its
    # call began after it: one call at a time.
    assert returned < calls[1][1]
    assert claimed < calls[1][1] <= calls[2][0]


@pytest.mark.slow
async def test_a_call_still_decoding_takes_no_room_from_the_deliveries(
    store: JobStore, engine: AsyncEngine, tmp_path: Path
) -> None:
    # With a backlog of 1: the first job is being delivered (its storing held), the
    # second decoding. The third is claimed and sent all the same: the second call
    # is not over, so it is not delivering yet.
    data = tmp_path / "engine"
    data.mkdir()
    queued = slow_decode_in_process(Settings(data_dir=data, sandbox_steps_per_quality=1))
    blobs = _GatedBlobs(tmp_path / "b")
    run = pipelined(store, blobs, queued, delivery_backlog=1)
    try:
        jobs = [await create(store, engine, seed=s) for s in (1, 2, 3)]
        a = await asyncio.wait_for(run.start_with_batch(jobs[0].id), 30)
        assert run.delivering == 0  # decoding
        b = await asyncio.wait_for(run.start_with_batch(jobs[1].id), 30)
        await blobs.until_entered(1)
        assert run.delivering == 1
        c = await asyncio.wait_for(run.start_with_batch(jobs[2].id), 5)
        assert c.claimed == [jobs[2].id]
        assert not b.ended.done()
        blobs.gate.set()
        for batch, job in zip((a, b, c), jobs, strict=True):
            assert await asyncio.wait_for(batch.ended, 30) == {job.id: "ready"}
    finally:
        run.close()
        queued.close()
