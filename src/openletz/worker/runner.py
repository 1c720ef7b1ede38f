"""One job, start to end, inside a worker process.

The runner is the same for every transport (embedded pipes, Celery): it claims
the row, runs the engine in a thread while an asyncio task renews the lease,
turns steps into progress and previews, stores the versions and records the end.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from openletz import imaging
from openletz.engines.base import (
    Engine,
    EngineError,
    GenerationRequest,
    Interrupted,
    StepUpdate,
)
from openletz.jobs.status import JobStatus
from openletz.jobs.store import Job, JobStore
from openletz.settings import Settings
from openletz.storage.base import BlobStore

log = logging.getLogger(__name__)

# Progress is an honest account of the work: denoising is most of it, then the
# image is decoded (by the engine, after its last step), its versions encoded
# and stored. 100 is reserved for "ready".
DENOISE_END = 88
DECODED = 91
ENCODED = 95
STORED = 99

#: called from any thread with (job id, progress, preview JPEG or None)
ProgressSink = Callable[[str, int, bytes | None], None]


class _LeaseLost(Exception):
    pass


@dataclass(slots=True)
class _Flags:
    interrupt: threading.Event
    lease_lost: threading.Event
    timed_out: threading.Event


class JobRunner:
    def __init__(
        self,
        *,
        owner: str,
        store: JobStore,
        blobs: BlobStore,
        engine: Engine,
        settings: Settings,
        sink: ProgressSink,
    ) -> None:
        self.owner = owner
        self._store = store
        self._blobs = blobs
        self._engine = engine
        self._settings = settings
        self._sink = sink
        self._flags: dict[str, _Flags] = {}
        self._progress: dict[str, int] = {}
        self._previews: dict[str, bytes] = {}

    @property
    def batches(self) -> bool:
        return self._engine.batches

    def interrupt(self, job_id: str) -> None:
        flags = self._flags.get(job_id)
        if flags is not None:
            flags.interrupt.set()

    def abandon_all(self) -> None:
        """Stop every running generation at its next step, writing nothing (shutdown)."""
        for flags in self._flags.values():
            flags.lease_lost.set()

    async def run(self, job_id: str) -> str:
        """Run ``job_id`` if it can be claimed; returns its end status or "skipped"."""
        return (await self.run_batch([job_id]))[job_id]

    async def batch_key(self, job_id: str) -> Hashable | None:
        """The engine's batch key of a waiting job (``None``: run it alone)."""
        if not self._engine.batches:
            return None
        job = await self._store.get(job_id)
        if job is None or job.status is not JobStatus.NEW:
            return None
        return await asyncio.to_thread(self._engine.batch_key, _request_of(job))

    async def run_batch(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Claim ``job_ids`` (of one batch key) and run those claimed as one engine
        call. Returns each id's end status, or "skipped" for those not claimed."""
        statuses = dict.fromkeys(job_ids, "skipped")
        jobs: list[Job] = []
        for job_id in job_ids:
            job = await self._store.claim(job_id, self.owner, self._settings.lease_s)
            if job is not None:
                log.info("job %s claimed (attempt %d)", job.id, job.attempts)
                jobs.append(job)
        if not jobs:
            return statuses
        flags = [_Flags(threading.Event(), threading.Event(), threading.Event()) for _ in jobs]
        beats = []
        for job, flag in zip(jobs, flags, strict=True):
            self._flags[job.id] = flag
            self._sink(job.id, 0, None)
            beats.append(asyncio.create_task(self._heartbeat(job.id, flag)))
        try:
            outcomes = await self._generate(jobs, flags)
            for job, flag, outcome in zip(jobs, flags, outcomes, strict=True):
                statuses[job.id] = await self._conclude(job, flag, outcome)
        finally:
            for beat in beats:
                beat.cancel()
            for job in jobs:
                self._flags.pop(job.id, None)
                self._progress.pop(job.id, None)
                self._previews.pop(job.id, None)
        return statuses

    async def _generate(
        self, jobs: Sequence[Job], flags: Sequence[_Flags]
    ) -> list[Image.Image | BaseException]:
        requests = [_request_of(job) for job in jobs]
        on_steps = [self._step_callback(j.id, f) for j, f in zip(jobs, flags, strict=True)]
        try:
            if len(jobs) == 1:
                return [await asyncio.to_thread(self._engine.generate, requests[0], on_steps[0])]
            return await asyncio.to_thread(self._engine.generate_batch, requests, on_steps)
        except Exception as exc:
            # One failure of the whole call is every job's failure.
            return [exc] * len(jobs)

    async def _conclude(self, job: Job, flags: _Flags, outcome: Image.Image | BaseException) -> str:
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            return await self._deliver(job, outcome, flags)
        except Interrupted:
            if flags.lease_lost.is_set():
                log.warning("job %s: lease lost, output discarded", job.id)
                return "lost"
            if flags.timed_out.is_set():
                return await self._fail(
                    job, f"The image took longer than {self._settings.job_timeout_s:g} s; stopped."
                )
            done = await self._store.finish(
                job.id,
                self.owner,
                JobStatus.INTERRUPTED,
                message="Interrupted.",
                engine=self._engine.name,
                **self._reached(job.id),
            )
            return JobStatus.INTERRUPTED.value if done else "lost"
        except _LeaseLost:
            log.warning("job %s: lease lost, output discarded", job.id)
            return "lost"
        except Exception as exc:
            if isinstance(exc, EngineError):
                message = str(exc)
                log.warning("job %s failed: %s", job.id, message)
            else:
                message = f"Generation failed: {type(exc).__name__}: {exc}"
                log.error("job %s failed", job.id, exc_info=exc)
            return await self._fail(job, message)

    async def _heartbeat(self, job_id: str, flags: _Flags) -> None:
        deadline = time.monotonic() + self._settings.job_timeout_s
        while True:
            pause = self._settings.heartbeat_s
            if not flags.timed_out.is_set():
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            await asyncio.sleep(pause)
            if time.monotonic() >= deadline and not flags.timed_out.is_set():
                flags.timed_out.set()
                flags.interrupt.set()
            try:
                ours, interrupt = await self._store.heartbeat(
                    job_id, self.owner, self._settings.lease_s, self._progress.get(job_id, 0)
                )
            except Exception:
                # A database hiccup is not a reason to drop the job: the lease is long
                # enough to miss a beat or two.
                log.warning("heartbeat for job %s failed", job_id, exc_info=True)
                continue
            if interrupt:
                flags.interrupt.set()
            if not ours:
                flags.lease_lost.set()
                return

    async def _fail(self, job: Job, message: str) -> str:
        done = await self._store.finish(
            job.id,
            self.owner,
            JobStatus.FAILED,
            message=message,
            engine=self._engine.name,
            **self._reached(job.id),
        )
        return JobStatus.FAILED.value if done else "lost"

    def _reached(self, job_id: str) -> dict[str, Any]:
        """What an unfinished job had shown, kept in its row after it ends."""
        return {"progress": self._progress.get(job_id, 0), "preview": self._previews.get(job_id)}

    def _step_callback(self, job_id: str, flags: _Flags) -> Callable[[StepUpdate], None]:
        interval = self._settings.preview_interval_s
        max_side = self._settings.preview_max_side
        last_preview = -1e9

        def on_step(update: StepUpdate) -> None:
            nonlocal last_preview
            if flags.interrupt.is_set() or flags.lease_lost.is_set():
                raise Interrupted
            progress = min(DENOISE_END, DENOISE_END * update.step // max(update.total, 1))
            self._progress[job_id] = progress
            preview = None
            now = time.monotonic()
            # The last step's preview is skipped: the final image follows at once.
            due = now - last_preview >= interval
            if update.preview is not None and update.step < update.total and due:
                last_preview = now
                preview = imaging.preview_jpeg(update.preview(), max_side=max_side)
                self._previews[job_id] = preview
            self._sink(job_id, progress, preview)

        return on_step

    async def _deliver(self, job: Job, image: Image.Image, flags: _Flags) -> str:
        self._sink(job.id, DECODED, None)
        settings = self._settings
        fmt = settings.image_format
        versions, preview = await asyncio.to_thread(
            lambda: (
                imaging.render_versions(
                    image,
                    has_watermark=job.has_watermark,
                    watermark_text=settings.watermark_text,
                    fmt=fmt,
                    quality=settings.jpeg_quality,
                ),
                imaging.preview_jpeg(image, max_side=settings.preview_max_side),
            )
        )
        self._sink(job.id, ENCODED, None)
        if flags.lease_lost.is_set():
            raise _LeaseLost
        ext = imaging.extension(fmt)
        # Each attempt writes keys of its own: one that lost its lease deletes only
        # its own files below, never those of the attempt that finished the job.
        keys = {name: f"{job.id}/{name}-{job.attempts}.{ext}" for name in versions}
        ctype = imaging.content_type(fmt)
        await self._blobs.put_many({keys[name]: data for name, data in versions.items()}, ctype)
        self._sink(job.id, STORED, None)
        done = await self._store.finish(
            job.id,
            self.owner,
            JobStatus.READY,
            image_versions=keys,
            preview=preview,
            engine=self._engine.name,
        )
        if done is None:
            # Deleted, or the lease passed to another worker, while we stored: those
            # files belong to nobody.
            await self._blobs.delete_many(keys.values())
            return "lost"
        log.info("job %s ready", job.id)
        return JobStatus.READY.value


def _request_of(job: Job) -> GenerationRequest:
    return GenerationRequest(
        prompt=job.prompt,
        width=job.width,
        height=job.height,
        quality=job.quality,
        creativity=job.creativity,
        system_version=job.system_version,
        mode=job.mode,
        seed=job.seed,
        base_model=job.base_model,
    )
