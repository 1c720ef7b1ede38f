"""One job, start to end, inside a worker process.

The runner is the same for every transport (embedded pipes, Celery): it claims
the row (with the waiting jobs that can share its batch), runs the engine in a
thread while an asyncio task renews each lease, turns steps into progress and
previews, stores the versions and records each job's end as soon as it is known.

The engine is the expensive part, so it does not wait for deliveries: once an
engine call returns, its jobs' delivery (versions encoded in a thread, stored,
their end recorded) goes on in a task of its own while the worker takes its next
job. At most ``delivery_backlog`` earlier engine calls may still be delivering
when the next one starts (:meth:`JobRunner.room`), which bounds the images held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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
from openletz.engines.factory import usable_cores
from openletz.jobs.status import JobStatus
from openletz.jobs.store import Job, JobStore
from openletz.jobs.tables import utcnow
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

#: how often the waiting jobs are counted while a batch window is open: a burst's
#: batch starts at most this long after its last job came (one indexed query a
#: poll, and only while a window is open)
_BATCH_POLL_S = 0.005

#: the most batch keys a runner keeps (one a model, size, quality and creativity
#: asked for: a few dozen in practice)
_BATCH_KEYS_MAX = 4096

#: the exit status of a worker process that gave up on a stuck engine
STUCK_EXIT_CODE = 70

#: how long a stopping worker lets the deliveries under way finish before it
#: abandons them (their jobs are then handed back: release_owner)
DRAIN_S = 5.0

#: the longest a delivery waits for the next engine call to begin before it renders
_HANDOFF_WAIT_S = 0.25

#: the most threads that render deliveries (resize, versions, preview). Pillow and
#: torch let go of the GIL while they compute, so a thread a core keeps the cores
#: busy; past a few, threads mostly pass the GIL to each other, and every pass is a
#: futex call and a context switch (measured on two cores: six threads rendering a
#: batch of 16 made a thousand futex calls an image, and took 10 % longer than two)
RENDER_THREADS_MAX = 4


def render_threads() -> int:
    """Threads for rendering: one a core this process may use, at most
    :data:`RENDER_THREADS_MAX`."""
    return min(RENDER_THREADS_MAX, usable_cores())


def _lower_priority(nice: int) -> None:
    """Run the calling thread ``nice`` levels lower than the thread that made it.

    Rendering a delivery is work that can wait a little; the engine (in its own
    process, or its thread here) and the event loop that hands it the next job
    cannot. Where cores are short, the scheduler shares them by these weights: on
    two cores, with render threads at the same level, an engine call was preempted
    about 7 times and the server made 3-7 % fewer images a second. Linux sets a
    nice level per thread; elsewhere this does nothing."""
    if nice and sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.nice(0) + nice)


Outcome = Image.Image | BaseException


def stuck_grace_s(job_timeout_s: float) -> float:
    """How long a generation past its timeout has to stop (at its next step) before
    the worker gives up on the engine: a tenth of the timeout, 2 s to 60 s."""
    return min(60.0, max(2.0, job_timeout_s / 10))


class _LeaseLost(Exception):
    pass


class _Stuck(Exception):
    """The engine neither returned nor stopped within the timeout and its grace;
    ``remedy`` says what became of it."""

    def __init__(self, remedy: str) -> None:
        super().__init__(remedy)
        self.remedy = remedy


@dataclass(slots=True)
class _Flags:
    interrupt: threading.Event
    lease_lost: threading.Event
    timed_out: threading.Event


@dataclass(eq=False, slots=True)
class _Run:
    """One claimed job of an engine call: its flags, its lease's heartbeat, and its
    outcome, known either when the call returns or, for a job that the engine
    dropped at a step (interrupted), at once. ``generating`` while the call runs."""

    job: Job
    flags: _Flags
    outcome: asyncio.Future[Outcome]
    beat: asyncio.Task[None] | None = None
    generating: bool = True
    #: past its last step, or stopped: the engine has nothing left to do for it but
    #: to decode and hand over the image
    passed: bool = False


@dataclass(eq=False, slots=True)
class _Turn:
    """An engine call's way to its end: ``free`` resolves once each of its jobs is
    past its last step (or stopped), when an engine that queues calls
    (``Engine.queues_calls``) may be sent the next one."""

    runs: Sequence[_Run]
    free: asyncio.Future[None]

    def passed(self, run: _Run) -> None:
        """``run`` is past its last step (called in the event loop's thread)."""
        run.passed = True
        if all(r.passed or r.outcome.done() for r in self.runs):
            _resolve(self.free)


@dataclass(eq=False, slots=True)
class Batch:
    """The jobs of one engine call, once the engine can take the next call (see
    :meth:`JobRunner.start_batch`).

    ``job_ids`` are those it was started with (the job that was sent first, then the
    waiting ones gathered for its batch), ``claimed`` those this worker took. Their
    delivery goes on: ``ended`` resolves to each id's end status ("skipped": not
    claimed; "error": its end could not be recorded, and its lease runs out) once
    every one has ended; it is cancelled when a stopping worker abandons it."""

    job_ids: list[str]
    claimed: list[str]
    ended: asyncio.Future[dict[str, str]]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


def _stopped(turn: _Turn, run: _Run, outcome: Outcome) -> None:
    """``run`` was dropped at a step with ``outcome``: it ends now, and the engine
    has nothing left to do for it."""
    _settle(run.outcome, outcome)
    turn.passed(run)


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
        self._runs: dict[str, _Run] = {}
        self._progress: dict[str, int] = {}
        self._previews: dict[str, bytes] = {}
        self._deliveries: set[asyncio.Task[dict[str, str]]] = set()
        #: those of _deliveries whose engine call is not over yet (an engine that
        #: queues calls was sent the next one at its last step)
        self._generating: set[asyncio.Task[dict[str, str]]] = set()
        self._stuck = False
        self._render_pool: ThreadPoolExecutor | None = None
        #: while the next engine call is prepared: resolved once it has begun (see
        #: _next_call)
        self._starting: asyncio.Future[None] | None = None
        #: batch keys by the request without its prompt and seed (Engine.batch_key)
        self._keys: dict[GenerationRequest, Hashable | None] = {}

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
        # The stuck jobs' failures, and the deliveries of earlier calls, are recorded
        # first (they need no engine); what is left is handed back.
        await self.drain(DRAIN_S)
        try:
            await self._store.release_owner(self.owner)
        except Exception:
            log.exception("could not hand back this worker's jobs")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(STUCK_EXIT_CODE)  # a thread cannot be stopped, and would block an exit

    def interrupt(self, job_id: str) -> None:
        """Stop ``job_id`` at its next step. Once its engine call has returned there is
        no step left: the image is made, and it is delivered (the job ends ready)."""
        run = self._runs.get(job_id)
        if run is not None:
            run.flags.interrupt.set()

    def abandon_all(self) -> None:
        """Stop every running generation at its next step, writing nothing (shutdown).
        Deliveries under way are left to finish: see :meth:`drain`."""
        for run in self._runs.values():
            if run.generating:
                run.flags.lease_lost.set()

    def close(self) -> None:
        """Let the render threads end once their work is done."""
        if self._render_pool is not None:
            self._render_pool.shutdown(wait=False)
            self._render_pool = None

    def _renderer(self) -> ThreadPoolExecutor:
        if self._render_pool is None:
            self._render_pool = ThreadPoolExecutor(
                render_threads(),
                thread_name_prefix="openletz-render",
                initializer=_lower_priority,
                initargs=(self._settings.render_nice,),
            )
        return self._render_pool

    @property
    def delivering(self) -> int:
        """Engine calls that are over and whose jobs are still being delivered."""
        return len(self._delivering())

    def _delivering(self) -> list[asyncio.Task[dict[str, str]]]:
        return [t for t in self._deliveries if not t.done() and t not in self._generating]

    async def room(self) -> None:
        """Wait until at most ``delivery_backlog`` earlier engine calls are still
        delivering: the backpressure that bounds a worker's memory when its
        deliveries are slower than its engine. A call still decoding (sent the next
        call at its last step) is not delivering yet: counted, it would hold up the
        very call it made room for."""
        limit = self._settings.delivery_backlog
        while True:
            pending = self._delivering()
            if len(pending) <= limit:
                return
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    async def drain(self, within_s: float) -> None:
        """Let the deliveries under way finish, for at most ``within_s`` seconds, then
        abandon the rest: their jobs stay this worker's until it hands them back
        (``JobStore.release_owner``) or their leases run out."""
        pending = [task for task in self._deliveries if not task.done()]
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=within_s)
        if late:
            log.warning("deliveries not finished after %g s, abandoned: %d", within_s, len(late))
            for task in late:
                task.cancel()
            await asyncio.wait(late)

    async def run(self, job_id: str) -> str:
        """Run ``job_id`` if it can be claimed; returns its end status or "skipped"."""
        return (await self.run_batch([job_id]))[job_id]

    async def run_with_batch(self, job_id: str) -> dict[str, str]:
        """:meth:`start_with_batch`, then wait until each job has ended; returns each
        id's end status ("skipped": not claimed)."""
        return await (await self.start_with_batch(job_id)).ended

    async def run_batch(self, job_ids: Sequence[str]) -> dict[str, str]:
        """:meth:`start_batch`, then wait until each job has ended; returns each id's
        end status ("skipped": not claimed)."""
        return await (await self.start_batch(job_ids)).ended

    async def start_with_batch(self, job_id: str) -> Batch:
        """Run ``job_id``, with the waiting jobs that ask for the same generation when
        the engine batches; returns once the engine can take the next call, while
        the jobs' delivery goes on (see :meth:`start_batch` and :class:`Batch`).

        A dispatcher hands a worker one job at a time, so jobs that cannot share a
        batch go to other, idle workers. Here the batch window is waited out (a
        burst arrives) and compatible waiting jobs are claimed with this one; their
        own deliveries come later, find them taken, and do nothing."""
        settings = self._settings
        await self.room()
        if settings.batch_max <= 1 or not self._engine.batches:
            return await self.start_batch([job_id])
        with self._next_call() as starting:
            job = await self._store.get(job_id)
            if job is None or not job.waiting:
                return self._nothing([job_id])
            if await self._batch_key(job) is None:
                return await self._start_claimed([job_id], starting)
            # Wait out the window for a burst, but no longer than it takes to fill the
            # batch. The window counts from the job's creation, as a batching queue's
            # delay does: a job that waited its window already (behind another job,
            # sent ahead, or handed back) starts now with whatever waits with it.
            # Never longer than the window, whatever the clocks of the API server and
            # this worker say.
            waited = (utcnow() - job.created_at).total_seconds()
            window = settings.batch_window_s
            deadline = time.monotonic() + min(window, max(0.0, window - waited))
            while True:
                others = await self._store.similar_waiting(job, limit=settings.batch_max - 1)
                left = deadline - time.monotonic()
                if len(others) >= settings.batch_max - 1 or left <= 0:
                    break
                # The engine will not begin before the window closes: earlier
                # deliveries need not wait for it.
                _resolve(starting)
                await asyncio.sleep(min(_BATCH_POLL_S, left))
            return await self._start_claimed([job_id, *others], starting)

    async def _batch_key(self, job: Job) -> Hashable | None:
        """The engine's batch key of ``job``, asked once for each set of the fields
        it may depend on: an engine in another process answers in a round trip to
        that process, on the path of every job."""
        request = _request_of(job)
        fields = replace(request, prompt="", seed=0)
        if fields in self._keys:
            return self._keys[fields]
        key = await asyncio.to_thread(self._engine.batch_key, request)
        if len(self._keys) >= _BATCH_KEYS_MAX:
            self._keys.clear()
        self._keys[fields] = key
        return key

    async def start_batch(self, job_ids: Sequence[str]) -> Batch:
        """Claim ``job_ids`` (of one batch key) and run those claimed as one engine
        call; returns once the engine can take the next call, while their delivery
        goes on: when the call is over or, with an engine that queues calls
        (``Engine.queues_calls``), once each job is past its last step. The image's
        decode is then all that is left of the call, and the next call, sent
        meanwhile, begins the moment it ends rather than a worker's round trip
        (the claim, the thread hops) later.

        It waits first until the deliveries under way leave room (:meth:`room`).
        Each job's end is recorded as soon as it is known: one interrupted at a
        step ends then, while the rest of its batch goes on."""
        await self.room()
        with self._next_call() as starting:
            return await self._start_claimed(job_ids, starting)

    @contextlib.contextmanager
    def _next_call(self) -> Iterator[asyncio.Future[None]]:
        """While the next engine call is being prepared (its jobs read, its batch
        gathered, claimed) until it has begun, the deliveries of earlier calls wait
        to render (see _deliver): the engine is idle until then. Called after
        :meth:`room`, never before it, so that neither waits for the other."""
        starting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._starting = starting
        try:
            yield starting
        finally:
            _resolve(starting)
            if self._starting is starting:
                self._starting = None

    async def _start_claimed(self, job_ids: Sequence[str], starting: asyncio.Future[None]) -> Batch:
        statuses = dict.fromkeys(job_ids, "skipped")
        # A job this worker holds already (still delivering) is not claimed twice.
        wanted = [job_id for job_id in job_ids if job_id not in self._runs]
        jobs = await self._store.claim_many(wanted, self.owner, self._settings.lease_s)
        for job in jobs:
            log.info("job %s claimed (attempt %d)", job.id, job.attempts)
        if not jobs:
            return self._nothing(job_ids)
        loop = asyncio.get_running_loop()
        runs = [
            _Run(
                job,
                _Flags(threading.Event(), threading.Event(), threading.Event()),
                loop.create_future(),
            )
            for job in jobs
        ]
        turn = _Turn(runs, loop.create_future())
        for run in runs:
            self._runs[run.job.id] = run
            self._sink(run.job.id, 0, None)
            run.beat = asyncio.create_task(self._heartbeat(run.job.id, run.flags))
        ends = [asyncio.create_task(self._end(run)) for run in runs]
        watch: asyncio.Task[None] | None = None
        try:
            if self._engine.queues_calls:
                watch = asyncio.create_task(self._watch(runs, turn, starting))
                await asyncio.wait({watch, turn.free}, return_when=asyncio.FIRST_COMPLETED)
                if watch.done():
                    watch.result()  # raises what the watch raised
            else:
                # In this task: its caller's next start then comes before the jobs'
                # end tasks get to render (see _deliver).
                await self._watch(runs, turn, starting)
        except BaseException:
            if watch is not None:
                watch.cancel()
            for end in ends:
                end.cancel()
            self._forget(runs)
            raise
        delivery = asyncio.create_task(self._complete(runs, ends, statuses, watch))
        if watch is not None and not watch.done():
            self._generating.add(delivery)
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._deliveries.discard)
        return Batch(list(job_ids), [run.job.id for run in runs], delivery)

    def _nothing(self, job_ids: Sequence[str]) -> Batch:
        ended: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        ended.set_result(dict.fromkeys(job_ids, "skipped"))
        return Batch(list(job_ids), [], ended)

    async def _complete(
        self,
        runs: Sequence[_Run],
        ends: Sequence[asyncio.Task[str]],
        statuses: dict[str, str],
        watch: asyncio.Task[None] | None,
    ) -> dict[str, str]:
        """Wait until the engine call is over (``watch``, if it was not yet), then
        until each of its jobs has ended (delivered, or failed)."""
        try:
            if watch is not None:
                try:
                    await watch
                finally:
                    self._generating.discard(asyncio.current_task())
            for run in runs:
                run.generating = False
            results = await asyncio.gather(*ends, return_exceptions=True)
            for run, result in zip(runs, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException):
                    # Its end could not be recorded (the database is away): it stays
                    # this worker's until its lease runs out, and recovery retries it.
                    log.error("job %s: its end was not recorded", run.job.id, exc_info=result)
                    statuses[run.job.id] = "error"
                else:
                    statuses[run.job.id] = result
            return statuses
        finally:
            for end in ends:
                end.cancel()
            beats = [run.beat for run in runs if run.beat is not None]
            self._forget(runs)
            # A heartbeat cancelled during its database call ends only once that call
            # has cleaned up: wait for it, so that nothing of these jobs outlives them.
            await asyncio.gather(*beats, return_exceptions=True)

    def _forget(self, runs: Sequence[_Run]) -> None:
        for run in runs:
            if run.beat is not None:
                run.beat.cancel()
            if self._runs.get(run.job.id) is run:
                del self._runs[run.job.id]
                self._progress.pop(run.job.id, None)
                self._previews.pop(run.job.id, None)

    async def _watch(
        self, runs: Sequence[_Run], turn: _Turn, starting: asyncio.Future[None]
    ) -> None:
        """Run the engine and settle each job's outcome. Past the job timeout the
        generation is asked to stop at its next step; if it has not stopped after a
        grace, the engine is stuck: its jobs fail, and the worker is to exit."""
        generation = asyncio.create_task(self._generate(runs, turn, starting))
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
        log.error("engine call of jobs %s did not stop after its timeout", [r.job.id for r in runs])
        # An engine whose model runs in a process of its own kills that process and
        # goes on (the call then ends with an error); any other leaves a thread that
        # nothing but the end of this worker process stops.
        if self._engine.abandon():
            remedy = "its engine's process was restarted"
        else:
            self._stuck = True
            remedy = "its worker was restarted"
        for run in runs:
            # Stop renewing its lease: the job is over, whatever the thread does.
            if run.beat is not None:
                run.beat.cancel()
            _settle(run.outcome, _Stuck(remedy))

    async def _generate(
        self, runs: Sequence[_Run], turn: _Turn, starting: asyncio.Future[None]
    ) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        requests = [_request_of(run.job) for run in runs]
        on_steps = [self._step_callback(run, turn, loop) for run in runs]
        engine = self._engine

        def call() -> list[Outcome]:
            with contextlib.suppress(RuntimeError):  # the event loop is closing
                loop.call_soon_threadsafe(_resolve, starting)
            # Unresized: a last resize to the requested size is the delivery's to make,
            # beside the next engine call (see Engine.generate_unresized).
            if len(requests) == 1:
                return [engine.generate_unresized(requests[0], on_steps[0])]
            return engine.generate_batch_unresized(requests, on_steps)

        try:
            return await loop.run_in_executor(None, call)
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
        except _Stuck as stuck:
            return await self._fail(
                job,
                f"The image timed out after {self._settings.job_timeout_s:g} s and the "
                f"engine did not stop; {stuck.remedy}.",
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
        self, run: _Run, turn: _Turn, loop: asyncio.AbstractEventLoop
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
                    loop.call_soon_threadsafe(_stopped, turn, run, stop)
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
            if update.step >= update.total:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(turn.passed, run)

        return on_step

    async def _deliver(self, job: Job, image: Image.Image, flags: _Flags) -> str:
        self._report(job.id, DECODED)
        settings = self._settings
        fmt = settings.image_format

        def render() -> tuple[dict[str, bytes], bytes]:
            return imaging.render_delivery(
                image,
                (job.width, job.height),
                has_watermark=job.has_watermark,
                watermark_text=settings.watermark_text,
                fmt=fmt,
                quality=settings.jpeg_quality,
                preview_max_side=settings.preview_max_side,
            )

        starting = self._starting
        if starting is not None and not starting.done():
            # The next engine call is being started (its claim, its thread): the
            # engine waits for that, and this render would hold it up (the GIL, a
            # core). A claim held up by the database does not hold this one long.
            await asyncio.wait({starting}, timeout=_HANDOFF_WAIT_S)
        loop = asyncio.get_running_loop()
        versions, preview = await loop.run_in_executor(self._renderer(), render)
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
