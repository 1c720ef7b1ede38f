"""An attempt that lost its lease removes its own files, never another attempt's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.auth import Accounts
from openletz.db import create_engine, migrate
from openletz.engines.base import GenerationRequest, StepCallback
from openletz.engines.sandbox import SandboxEngine
from openletz.jobs.status import JobStatus
from openletz.jobs.store import JobStore, NewJob
from openletz.jobs.tables import jobs, utcnow
from openletz.settings import Settings
from openletz.storage.local import LocalBlobStore
from openletz.worker.runner import JobRunner


class _HeldFirstCall(SandboxEngine):
    """Holds its first generation until ``release`` is set; later ones run at once."""

    def __init__(self) -> None:
        super().__init__(duration_s=0)
        self.entered = threading.Event()
        self.release = threading.Event()
        self._calls = 0

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        self._calls += 1
        if self._calls == 1:
            self.entered.set()
            assert self.release.wait(30)
        return super().generate(request, on_step)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    await migrate(eng)
    yield eng
    await eng.dispose()


async def test_a_late_attempt_leaves_the_finished_attempt_s_files(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    user = await Accounts(engine).ensure_user("u")
    store = JobStore(engine)
    blobs = LocalBlobStore(
        tmp_path / "images", public_base_url="http://x", secret="s", url_ttl_s=60
    )
    # A long heartbeat: the first attempt does not notice that it lost its lease
    # before it stores its versions (as a worker paused by the OS, or shut down).
    settings = Settings(lease_s=120, heartbeat_s=30, data_dir=tmp_path)
    held = _HeldFirstCall()

    def runner(owner: str, eng: SandboxEngine) -> JobRunner:
        return JobRunner(
            owner=owner,
            store=store,
            blobs=blobs,
            engine=eng,
            settings=settings,
            sink=lambda *_: None,
        )

    job = await store.create(
        NewJob(
            user_id=user.id,
            prompt="twice",
            width=64,
            height=64,
            quality=1,
            creativity=2,
            has_watermark=False,
            system_version=3,
            mode="default",
            seed=1,
        )
    )
    first = asyncio.create_task(runner("first", held).run(job.id))
    assert await asyncio.to_thread(held.entered.wait, 10)
    # The first attempt's lease runs out; recovery gives the job to a second one.
    async with engine.begin() as conn:
        await conn.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    await store.recover_expired(max_attempts=5)
    assert await runner("second", SandboxEngine(duration_s=0)).run(job.id) == "ready"
    done = await store.get(job.id)
    assert done is not None
    assert done.status is JobStatus.READY
    assert done.image_versions
    kept = dict(done.image_versions)

    held.release.set()
    assert await first == "lost"
    # The first attempt stored its own versions, found the job no longer its own,
    # and removed them: the second attempt's files are all still there.
    for key in kept.values():
        assert blobs.path(key).is_file(), key
    left = sorted(p.name for p in blobs.path(next(iter(kept.values()))).parent.iterdir())
    assert left == sorted(Path(k).name for k in kept.values())
    # Keys name the attempt that wrote them.
    assert all(
        k.startswith(f"{job.id}/") and k.endswith(f"-{done.attempts}.jpg") for k in kept.values()
    )
