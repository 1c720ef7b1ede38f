"""One job, start to end, inside a worker process.

The runner is the same for every transport (embedded pipes, Celery): it claims
the row (with the waiting jobs that can share its batch), runs the engine in a
thread while an asyncio task renews each lease, turns steps into progress and
previews, stores the versions and records each job's end as soon as it is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
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

#: how often the waiting jobs are counted while a batch window is open
_BATCH_POLL_S = 0.02

#: the exit status of a worker process that gave up on a stuck engine
STUCK_EXIT_CODE = 70

Outcome = Image.Image | BaseException


def stuck_grace_s(job_timeout_s: float) -> float:
    """How long a generation past its timeout has to stop (at its next step) before
    the worker gives up on the engine: a tenth of the timeout, 2 s to 60 s."""
    return min(60.0, max(2.0, job_timeout_s / 10))


class _LeaseLost(Exception):
    pass


class _Stuck(Exception):
    """The engine neither returned nor stopped within the timeout and its grace."""


@dataclass(slots=True)
class _Flags:
    interrupt: threading.Event
    lease_lost: threading.Event
    timed_out: threading.Event


@dataclass(eq=False, slots=True)
class _Run:
    """One claimed job of an engine call: its flags, its lease's heartbeat, and its
    outcome, known either when the call returns or, for a job that the engine
    dropped at a step (interrupted), at once."""

    job: Job
    flags: _Flags
    outcome: asyncio.Future[Outcome]
    beat: asyncio.Task[None] | None = None


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


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
        self._stuck = False

    @property
    def batches(self) -> bool:
        return self._engine.batches

    @property
    def stuck(self) -> bool:
        """An engine call outlived its timeout and did not stop when asked: its jobs
        are failed, but its thread still runs and nothing but the end of the process
        frees it. The host then calls :meth:`exit_if_stuck`."""
        return self._stuck

    async def exit_if_stuck(self) -> None:
        """End this worker process if its engine is stuck (see :attr:`stuck`); the
        embedded dispatcher, or the cluster's process supervisor, starts a fresh one.
        A redelivery of the failed job's message does nothing: its claim finds it ended."""
        if not self._stuck:
            return
        log.error(
            "the engine did not stop a generation past its timeout (%g s); "
            "exiting so that a fresh worker process replaces this one",
            self._settings.job_timeout_s,
        )
        try:
            await self._store.release_owner(self.owner)
        except Exception:
            log.exception("could not hand back this worker's jobs")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(STUCK_EXIT_CODE)  # a thread cannot be stopped, and would block an exit

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

    async def run_with_batch(self, job_id: str) -> dict[str, str]:
        """Run ``job_id``, with the waiting jobs that ask for the same generation when
        the engine batches. Returns each id's end status ("skipped": not claimed).

        A dispatcher hands a worker one job at a time, so jobs that cannot share a
        batch go to other, idle workers. Here the batch window is waited out (a
        burst arrives) and compatible waiting jobs are claimed with this one; their
        own deliveries come later, find them taken, and do nothing."""
        settings = self._settings
        if settings.batch_max <= 1 or not self._engine.batches:
            return await self.run_batch([job_id])
        job = await self._store.get(job_id)
        if job is None or not job.waiting:
            return {job_id: "skipped"}
        if await asyncio.to_thread(self._engine.batch_key, _request_of(job)) is None:
            return await self.run_batch([job_id])
        # Wait out the window for a burst, but no longer than it takes to fill the batch.
        deadline = time.monotonic() + settings.batch_window_s
        while True:
            others = await self._store.similar_waiting(job, limit=settings.batch_max - 1)
            left = deadline - time.monotonic()
            if len(others) >= settings.batch_max - 1 or left <= 0:
                break
            await asyncio.sleep(min(_BATCH_POLL_S, left))
        return await self.run_batch([job_id, *others])

    async def run_batch(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Claim ``job_ids`` (of one batch key) and run those claimed as one engine
        call. Returns each id's end status, or "skipped" for those not claimed.

        Each job's end is recorded as soon as it is known: one interrupted at a
        step ends then, while the rest of its batch goes on."""
        statuses = dict.fromkeys(job_ids, "skipped")
        jobs = await self._store.claim_many(job_ids, self.owner, self._settings.lease_s)
        for job in jobs:
            log.info("job %s claimed (attempt %d)", job.id, job.attempts)
        if not jobs:
            return statuses
        loop = asyncio.get_running_loop()
        runs = [
            _Run(
                job,
                _Flags(threading.Event(), threading.Event(), threading.Event()),
                loop.create_future(),
            )
            for job in jobs
        ]
        for run in runs:
            self._flags[run.job.id] = run.flags
            self._sink(run.job.id, 0, None)
            run.beat = asyncio.create_task(self._heartbeat(run.job.id, run.flags))
        ends = [asyncio.create_task(self._end(run)) for run in runs]
        try:
            await self._watch(runs)
            for run, status in zip(runs, await asyncio.gather(*ends), strict=True):
                statuses[run.job.id] = status
        finally:
            for end in ends:
                end.cancel()
            for run in runs:
                if run.beat is not None:
                    run.beat.cancel()
                self._flags.pop(run.job.id, None)
                self._progress.pop(run.job.id, None)
                self._previews.pop(run.job.id, None)
        return statuses

    async def _watch(self, runs: Sequence[_Run]) -> None:
        """Run the engine and settle each job's outcome. Past the job timeout the
        generation is asked to stop at its next step; if it has not stopped after a
        grace, the engine is stuck: its jobs fail, and the worker is to exit."""
        generation = asyncio.create_task(self._generate(runs))
        timeout = self._settings.job_timeout_s
        try:
            done, _ = await asyncio.wait({generation}, timeout=timeout)
            if not done:
                for run in runs:
                    run.flags.timed_out.set()
                    run.flags.interrupt.set()
                done, _ = await asyncio.wait({generation}, timeout=stuck_grace_s(timeout))
        except asyncio.CancelledError:
            generation.cancel()
            raise
        if done:
            for run, outcome in zip(runs, generation.result(), strict=True):
                _settle(run.outcome, outcome)
            return
        self._stuck = True
        log.error("engine call of jobs %s did not stop after its timeout", [r.job.id for r in runs])
        for run in runs:
            # Stop renewing its lease: the job is over, whatever the thread does.
            if run.beat is not None:
                run.beat.cancel()
            _settle(run.outcome, _Stuck())

    async def _generate(self, runs: Sequence[_Run]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        requests = [_request_of(run.job) for run in runs]
        on_steps = [self._step_callback(run, loop) for run in runs]
        try:
            if len(runs) == 1:
                return [await asyncio.to_thread(self._engine.generate, requests[0], on_steps[0])]
            return await asyncio.to_thread(self._engine.generate_batch, requests, on_steps)
        except Exception as exc:
            # One failure of the whole call is every job's failure.
            return [exc] * len(runs)

    async def _end(self, run: _Run) -> str:
        try:
            return await self._conclude(run.job, run.flags, await run.outcome)
        finally:
            if run.beat is not None:
                run.beat.cancel()

    async def _conclude(self, job: Job, flags: _Flags, outcome: Outcome) -> str:
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            return await self._deliver(job, outcome, flags)
        except _Stuck:
            return await self._fail(
                job,
                f"The image timed out after {self._settings.job_timeout_s:g} s and the "
                "engine did not stop; its worker was restarted.",
            )
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
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
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

    def _report(self, job_id: str, progress: int) -> None:
        """A stage reached: shown to clients, and kept for the heartbeat and the end."""
        self._progress[job_id] = max(self._progress.get(job_id, 0), progress)
        self._sink(job_id, progress, None)

    def _step_callback(
        self, run: _Run, loop: asyncio.AbstractEventLoop
    ) -> Callable[[StepUpdate], None]:
        job_id, flags = run.job.id, run.flags
        interval = self._settings.preview_interval_s
        max_side = self._settings.preview_max_side
        last_preview = -1e9

        def on_step(update: StepUpdate) -> None:
            nonlocal last_preview
            if flags.interrupt.is_set() or flags.lease_lost.is_set():
                # The engine drops this job here; its end is recorded now, while the
                # rest of its batch (if any) goes on.
                stop = Interrupted()
                with contextlib.suppress(RuntimeError):  # the event loop is closing
                    loop.call_soon_threadsafe(_settle, run.outcome, stop)
                raise stop
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
        self._report(job.id, DECODED)
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
        self._report(job.id, ENCODED)
        if flags.lease_lost.is_set():
            raise _LeaseLost
        ext = imaging.extension(fmt)
        # Each attempt writes keys of its own: one that lost its lease deletes only
        # its own files below, never those of the attempt that finished the job.
        keys = {name: f"{job.id}/{name}-{job.attempts}.{ext}" for name in versions}
        ctype = imaging.content_type(fmt)
        await self._blobs.put_many({keys[name]: data for name, data in versions.items()}, ctype)
        self._report(job.id, STORED)
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
