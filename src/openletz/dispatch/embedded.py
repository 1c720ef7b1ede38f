"""The embedded dispatcher: worker processes started and fed by the API process.

Each worker is ``python -m openletz.worker``, spoken to over its stdin/stdout.
The dispatcher hands a job id to an idle worker, one at a time (a worker whose
engine batches claims the compatible waiting jobs itself), relays
interruptions, copies progress into the live store, restarts a worker that
dies, and reconciles with the database (waiting jobs, leases that expired) on a timer.

A worker is idle when it says so (Hello, then Free after each job's engine call),
which can be before the job it was sent has ended (Done): its delivery goes on
in the worker while the engine makes the next image. When no worker is idle, a
busy one may be sent the next job ahead (``OPENLETZ_READ_AHEAD``, one by
default): it starts that job the moment its engine call ends, instead of telling
this process and waiting for the answer, which would leave its engine idle for a
round trip between every two jobs. An idle worker is always preferred, and
nothing is sent ahead while a worker is starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field

from openletz.dispatch.base import Dispatcher
from openletz.dispatch.models import aggregate
from openletz.dispatch.reconcile import Reconciler
from openletz.jobs.store import JobStore
from openletz.live import LiveStore
from openletz.settings import Settings
from openletz.worker import protocol

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    owner: str | None = None
    engine: str | None = None
    #: the jobs it was sent that have not ended (generating, or delivering)
    jobs: set[str] = field(default_factory=set)
    #: those of ``jobs`` the worker is done generating (Free came, Done not yet)
    delivering: set[str] = field(default_factory=set)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: its engine's models: name -> (state, detail), all at start, then each change
    models: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    #: it said Hello: it takes jobs
    ready: bool = False
    #: jobs sent whose engine call is not over (no Free yet): 0 when idle, and
    #: more than 1 when jobs were sent ahead
    unfreed: int = 0
    #: when it last became idle (the longest idle is sent the next job)
    idle_since: float = 0.0

    @property
    def name(self) -> str:
        return self.owner or f"worker {self.index} (starting)"

    def send(self, msg: protocol.Message) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode(msg))


class EmbeddedDispatcher(Dispatcher):
    name = "embedded"

    def __init__(self, settings: Settings, store: JobStore, live: LiveStore) -> None:
        self._settings = settings
        self._store = store
        self._live = live
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        #: set when a worker may have become able to take a job (Hello, Free)
        self._takers = asyncio.Event()
        self._workers: dict[int, _Worker] = {}
        self._running: dict[str, _Worker] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._reconciler = Reconciler(settings, store, self.enqueue)

    # -- Dispatcher -----------------------------------------------------------

    async def start(self) -> None:
        for i in range(self._settings.workers):
            await self._spawn(i)
        self._tasks.append(asyncio.create_task(self._feed(), name="dispatch-feed"))
        self._tasks.append(asyncio.create_task(self._reconciler.run(), name="dispatch-reconcile"))

    async def enqueue(self, job_id: str) -> None:
        if job_id not in self._queued and job_id not in self._running:
            self._queued.add(job_id)
            self._queue.put_nowait(job_id)

    async def interrupt(self, job_id: str) -> None:
        # The job may run on the worker it was sent to or, in a batch, on one that
        # claimed it itself: tell every worker (a line each; the others ignore it).
        for worker in list(self._workers.values()):
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.send(protocol.Interrupt(job_id))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for worker in list(self._workers.values()):
            await self._shutdown(worker)
        self._workers.clear()

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "workers": len(self._workers),
            "ready": sum(1 for w in self._workers.values() if w.owner is not None),
            "busy": len(self._running),
            "delivering": sum(len(w.delivering) for w in self._workers.values()),
            # sent to a busy worker, to start when its engine call ends
            "ahead": sum(max(0, w.unfreed - 1) for w in self._workers.values()),
            "queued": len(self._queued),
            "models": aggregate({w.name: w.models for w in self._workers.values()}),
        }

    # -- workers --------------------------------------------------------------

    async def _spawn(self, index: int) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "openletz.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=os.environ.copy(),
            limit=1 << 22,
        )
        worker = _Worker(index, proc)
        self._workers[index] = worker
        worker.tasks.append(asyncio.create_task(self._listen(worker), name=f"worker-{index}"))
        log.info("worker %d started (pid %d)", index, proc.pid)

    async def _listen(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        try:
            while line := await worker.proc.stdout.readline():
                msg = protocol.decode(line)
                if isinstance(msg, protocol.Progress):
                    await self._live.update(msg.job, msg.progress, msg.preview)
                elif isinstance(msg, protocol.Free):
                    # The jobs it took into that engine call (or found taken) need no
                    # sending: their own deliveries, still queued, are dropped.
                    for other in msg.batch:
                        self._queued.discard(other)
                    if msg.job in worker.jobs:
                        worker.delivering.add(msg.job)
                    worker.unfreed = max(0, worker.unfreed - 1)
                    if worker.unfreed == 0:
                        worker.idle_since = asyncio.get_running_loop().time()
                    self._takers.set()
                elif isinstance(msg, protocol.Done):
                    if msg.job in worker.jobs:
                        worker.jobs.discard(msg.job)
                        worker.delivering.discard(msg.job)
                        if self._running.get(msg.job) is worker:
                            del self._running[msg.job]
                    else:
                        # A job it claimed itself for a batch, now ended (or taken by
                        # another): its own delivery, if still queued, can be dropped.
                        self._queued.discard(msg.job)
                elif isinstance(msg, protocol.Hello):
                    worker.owner, worker.engine = msg.owner, msg.engine
                    worker.ready, worker.unfreed = True, 0
                    worker.idle_since = asyncio.get_running_loop().time()
                    self._takers.set()
                elif isinstance(msg, protocol.ModelState):
                    worker.models[msg.model] = (msg.state, msg.detail)
        except (ValueError, KeyError):
            log.exception("worker %d sent a malformed message; restarting it", worker.index)
            worker.proc.kill()
        code = await worker.proc.wait()
        if not self._stopping:
            await self._on_death(worker, code)

    async def _on_death(self, worker: _Worker, code: int) -> None:
        log.error("worker %d (pid %d) exited with code %s", worker.index, worker.proc.pid, code)
        worker.models.clear()  # its models went with it
        # Every job it was sent and that has not ended, delivering ones included.
        sent = list(worker.jobs)
        for job_id in sent:
            self._running.pop(job_id, None)
        if worker.owner is not None:
            # Recover its jobs now instead of waiting for the leases to run out.
            await self._store.release_owner(worker.owner)
            self._reconciler.wake()
        # Jobs it had been sent but not yet claimed are still waiting: send them again
        # (a claimed one that recovery puts back is sent again too; claims are atomic).
        for job_id in sent:
            await self.enqueue(job_id)
        self._workers.pop(worker.index, None)
        # A worker that dies at start-up (bad config) would otherwise respawn in a
        # tight loop; a second's pause costs nothing when deaths are rare.
        await asyncio.sleep(1.0)
        if not self._stopping:
            await self._spawn(worker.index)

    async def _shutdown(self, worker: _Worker) -> None:
        proc = worker.proc
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        for task in worker.tasks:
            task.cancel()

    # -- feeding and reconciling ----------------------------------------------

    async def _feed(self) -> None:
        while True:
            job_id = await self._queue.get()
            if job_id not in self._queued:
                continue  # it ran in another job's batch meanwhile
            worker = await self._taker()
            if job_id not in self._queued:
                continue
            self._queued.discard(job_id)
            worker.jobs.add(job_id)
            worker.unfreed += 1
            self._running[job_id] = worker
            try:
                worker.send(protocol.Run(job_id))
            except (ConnectionError, RuntimeError):
                worker.unfreed -= 1
                self._running.pop(job_id, None)
                await self.enqueue(job_id)

    async def _taker(self) -> _Worker:
        """The worker to send the next job to: the one idle the longest or, when none
        is idle and every worker is up, the busy one with the fewest jobs sent
        ahead, within ``read_ahead``. While a worker is starting (or being
        replaced), nothing is sent ahead: that worker is about to be idle, and a
        job sent ahead would wait behind another instead. Waits until there is one."""
        while True:
            self._takers.clear()
            up = [w for w in self._workers.values() if w.ready and w.proc.returncode is None]
            idle = [w for w in up if w.unfreed == 0]
            if idle:
                return min(idle, key=lambda w: w.idle_since)
            if len(up) >= self._settings.workers:
                ahead = [w for w in up if w.unfreed <= self._settings.read_ahead]
                if ahead:
                    return min(ahead, key=lambda w: (w.unfreed, w.idle_since))
            await self._takers.wait()
