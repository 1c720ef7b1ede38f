"""``openletz worker``: a GPU worker that joins a cluster through the broker.

Celery delivers job ids; the task hands each to the same ``JobRunner`` as the
embedded workers, on an event loop of the worker's own. Progress and previews
go to Redis, where every API server reads them; interruptions arrive on a
Redis channel, so one sent to any API server stops the job within a step.
The worker runs one task at a time in one process (the solo pool), which keeps
its models warm in that process: it loads them before it takes its first job.

A task ends, and its message is acknowledged, once the job's engine call is
over: the delivery (versions, storing, the end) goes on in the worker's event
loop while the next message is taken. From then on the database alone keeps the
job: if the worker dies before the job's end is recorded, its lease runs out,
recovery puts it back, and the reconciler sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

import orjson
from celery import Celery, bootsteps
from celery.exceptions import Reject
from celery.signals import worker_init, worker_shutdown, worker_shutting_down
from celery.worker.consumer import Consumer as CeleryConsumer

from openletz.db import create_engine
from openletz.dispatch.celery import (
    INTERRUPT_CHANNEL,
    TASK,
    WORKER_REFRESH_S,
    WORKER_TTL_S,
    declare_dead_letters,
    is_amqp,
    make_celery,
    queue_name,
    worker_key_prefix,
)
from openletz.engines.factory import make_engine
from openletz.jobs.status import JobStatus
from openletz.jobs.store import JobStore
from openletz.jobs.tables import utcnow
from openletz.settings import Settings
from openletz.storage.factory import make_blob_store
from openletz.worker.embedded import worker_name
from openletz.worker.runner import DRAIN_S, Batch, JobRunner

log = logging.getLogger("openletz.worker")


class _Worker:
    """The long-lived part of a worker process, started before it consumes."""

    def __init__(self, settings: Settings, queues: list[str] | None = None) -> None:
        self.settings = settings
        self.queues = queues or []
        #: its engine's models: name -> (state, detail), all at start, then each change
        self.models: dict[str, tuple[str, str | None]] = {}
        self._publisher: asyncio.Task[None] | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.runner: JobRunner | None = None
        self._started = threading.Lock()
        self.stopping = False

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    def ensure_started(self) -> JobRunner:
        with self._started:
            if self.runner is None:
                self.runner = self.call(self._start())
        return self.runner

    async def _start(self) -> JobRunner:
        settings = self.settings
        self.db = create_engine(settings.resolved_database_url)
        self.store = JobStore(self.db)
        self.blobs = make_blob_store(settings)
        self.live: Any = None
        if settings.redis_url:
            from openletz.live_redis import RedisLiveStore

            self.live = RedisLiveStore(settings.redis_url)
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def model_state(name: str, state: str, detail: str | None) -> None:
            def note() -> None:
                self.models[name] = (state, detail)
                changed.set()

            loop.call_soon_threadsafe(note)

        engine = make_engine(settings, on_model_state=model_state)
        await asyncio.to_thread(engine.load)
        # Every model's state once (the changes during the load came before), then
        # each change as it happens.
        self.models.update(await asyncio.to_thread(engine.model_states))

        def sink(job_id: str, progress: int, preview: bytes | None) -> None:
            if self.live is not None:
                asyncio.run_coroutine_threadsafe(self.live.update(job_id, progress, preview), loop)

        runner = JobRunner(
            owner=worker_name(),
            store=self.store,
            blobs=self.blobs,
            engine=engine,
            settings=settings,
            sink=sink,
        )
        if settings.redis_url:
            self._listener = asyncio.create_task(self._listen_for_interrupts(runner))
            self._publisher = asyncio.create_task(
                self._publish_state(runner.owner, engine.name, changed)
            )
        log.info("worker %s ready (engine %s)", runner.owner, engine.name)
        return runner

    async def _publish_state(self, name: str, engine: str, changed: asyncio.Event) -> None:
        """Keep ``<prefix>:worker:<name>`` in Redis: this worker's queues and model
        states, for the API servers' /health; refreshed every ``WORKER_REFRESH_S``
        and at each change, it expires ``WORKER_TTL_S`` after the last refresh."""
        import redis.asyncio as redis
        from redis.exceptions import RedisError

        client = redis.from_url(self.settings.redis_url)
        key = worker_key_prefix(self.settings) + name
        try:
            while True:
                changed.clear()
                body = {
                    "name": name,
                    "queues": self.queues,
                    "engine": engine,
                    "models": {m: {"state": s, "detail": d} for m, (s, d) in self.models.items()},
                    "at": time.time(),
                }
                try:
                    await client.set(key, orjson.dumps(body), ex=WORKER_TTL_S)
                except (RedisError, OSError) as exc:
                    log.warning("Redis: this worker's state not published (%s)", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), WORKER_REFRESH_S)
        finally:
            # A clean stop: the API servers see it gone now, not when the key expires.
            with contextlib.suppress(RedisError, OSError):
                await client.delete(key)
            await client.aclose()

    async def _unpublish(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher

    async def _listen_for_interrupts(self, runner: JobRunner) -> None:
        import redis.asyncio as redis

        while True:
            try:
                client = redis.from_url(self.settings.redis_url)
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(INTERRUPT_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            runner.interrupt(message["data"].decode())
            except Exception as exc:  # the heartbeat still carries interruptions
                log.warning("interrupt channel lost (%s); reconnecting", exc)
                await asyncio.sleep(1)

    async def run(self, runner: JobRunner, job_id: str) -> Batch:
        """Run ``job_id`` with the waiting jobs that can share its batch (the broker
        hands a worker one message at a time; the others' messages come later, find
        their jobs claimed, and do nothing). Returns once the engine can take the
        next call (``JobRunner.start_batch``) and the deliveries under way leave
        room for it, while this one's goes on. A stuck engine ends the process
        here, before the message is acknowledged: its redelivery finds the job
        failed."""
        batch = await runner.start_with_batch(job_id)
        await runner.exit_if_stuck()
        batch.ended.add_done_callback(_log_ends)
        await runner.room()
        return batch

    async def hand_back(self, batch: Batch | None = None, job_id: str = "") -> str:
        """Stopping: generations stop at their next step, deliveries under way may
        finish (``DRAIN_S`` at most), and every job this worker still holds is handed
        back (its lease expired at once). Returns the end of ``job_id`` of ``batch``,
        "lost" when it was not recorded."""
        runner = self.runner
        if runner is None:
            return "lost"
        runner.abandon_all()
        await runner.drain(DRAIN_S)
        try:
            await self.store.release_owner(runner.owner)
        except Exception:
            log.exception("could not hand back this worker's jobs")
        if batch is None or not batch.ended.done() or batch.ended.cancelled():
            return "lost"
        if batch.ended.exception() is not None:
            return "lost"
        return batch.ended.result().get(job_id, "lost")

    async def take_over(self, job_id: str, redelivered: bool) -> None:
        """Before the claim: a job that another worker holds, whose lease ran out,
        is put back (or failed, past its attempts or when dead-lettered) so that
        this delivery can take it. A redelivered message (the broker's word that
        the worker that had it is gone) waits for that worker's lease: renewed, its
        holder is alive and this delivery is a duplicate (the claim finds the job
        taken); run out, the job is this worker's to take. So a job that kills
        every worker it reaches uses up its message's deliveries, and the broker's
        delivery limit ends it."""
        settings = self.settings
        deadline = time.monotonic() + settings.lease_s + 2 * settings.heartbeat_s
        first = job = await self.store.get(job_id)
        while (
            first is not None
            and job is not None
            and job.status is JobStatus.IN_PROGRESS
            and job.lease_owner is not None
        ):
            if (job.lease_owner, job.lease_expires_at) != (
                first.lease_owner,
                first.lease_expires_at,
            ):
                return  # renewed or taken: its holder is alive
            if job.lease_expires_at is None or job.lease_expires_at <= utcnow():
                await self.store.recover_expired(settings.max_attempts, only=job_id)
                return
            if not redelivered or time.monotonic() > deadline:
                return
            await asyncio.sleep(min(0.5, settings.heartbeat_s / 2))
            job = await self.store.get(job_id)

    def shutdown(self) -> None:
        self.stopping = True
        if self.runner is not None:
            try:
                self.call(self.hand_back())
            except Exception:
                log.exception("could not hand back this worker's jobs")
            try:
                self.call(self._unpublish())
            except Exception:
                log.exception("could not remove this worker's state from Redis")


def _log_ends(ended: asyncio.Future[dict[str, str]]) -> None:
    if ended.cancelled():
        log.warning("a delivery was abandoned (worker stopping); its jobs are handed back")
    elif (error := ended.exception()) is not None:
        log.error("a delivery failed", exc_info=error)
    else:
        for job_id, status in ended.result().items():
            log.info("job %s: %s", job_id, status)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer without native delayed delivery: no job is ever sent with a
    countdown, and it would declare some thirty queues and exchanges shared by every
    Celery application on the broker (``celery_delayed_*``) and bind ours to them."""

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        default_steps = [
            step
            for step in CeleryConsumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]


def build(settings: Settings, families: list[str]) -> Celery:
    app = make_celery(settings, families)
    app.conf.worker_consumer = f"{__name__}:Consumer"
    worker = _Worker(settings, [queue_name(settings, f) for f in families or ["default"]])

    @app.task(name=TASK, bind=True)  # type: ignore[untyped-decorator]
    def run_job(task: Any, job_id: str) -> str:
        if worker.stopping:
            # Taken after SIGTERM: it goes back for another worker.
            raise Reject("worker stopping", requeue=True)
        runner = worker.ensure_started()
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        worker.call(worker.take_over(job_id, redelivered))
        batch: Batch = worker.call(worker.run(runner, job_id))
        if worker.stopping:
            # Stopped during the engine call (SIGTERM). A job whose image is made is
            # delivered first; one that is not ("lost"), or whose delivery did not
            # finish, goes back: its message for another worker, which finds the job
            # handed back (release_owner) and takes it.
            status: str = worker.call(worker.hand_back(batch, job_id))
            if status in ("lost", "error"):
                raise Reject("worker stopping", requeue=True)
            return status
        # Acknowledged now; the job's end follows (logged as "job <id>: <status>").
        return "generated"

    # Celery holds signal receivers by weak reference: these closures would be
    # collected as soon as build() returns, and never called.
    @worker_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def _warm_up(sender: Any = None, **_: Any) -> None:
        # Models load before the worker consumes: no message waits on a load, and a
        # worker that cannot start its engine exits instead of failing jobs.
        if getattr(sender, "app", None) is not app:
            return
        try:
            worker.ensure_started()
        except Exception:
            log.exception("the worker could not start")
            raise SystemExit(1) from None

    if is_amqp(settings):

        class DeclareDeadLetters(bootsteps.StartStopStep):  # type: ignore[misc]
            """At each connection: the dead-letter exchange and queue exist."""

            requires = ("celery.worker.consumer.tasks:Tasks",)

            def start(self, consumer: Any) -> None:
                declare_dead_letters(consumer.connection, settings)

        app.steps["consumer"].add(DeclareDeadLetters)

    @worker_shutting_down.connect(weak=False)  # type: ignore[untyped-decorator]
    def _on_shutdown(**_: Any) -> None:
        worker.shutdown()

    @worker_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
    def _on_stopped(**_: Any) -> None:
        # However the worker stops, no delivery is cut short by the end of the process.
        worker.shutdown()

    return app


def run(settings: Settings, families: list[str], *, name: str | None = None) -> None:
    app = build(settings, families)
    queues = ",".join(f"{settings.queue_prefix}.{f}" for f in families)
    argv = [
        "worker",
        "--pool=solo",
        f"--queues={queues}",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if name:
        argv.append(f"--hostname={name}")
    app.worker_main(argv)
