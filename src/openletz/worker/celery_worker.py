"""``openletz worker``: a GPU worker that joins a cluster through the broker.

Celery delivers job ids; the task hands each to the same ``JobRunner`` as the
embedded workers, on an event loop of the worker's own. Progress and previews
go to Redis, where every API server reads them; interruptions arrive on a
Redis channel, so one sent to any API server stops the job within a step.
The worker runs one task at a time in one process (the solo pool), which keeps
its models warm in that process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down

from openletz.db import create_engine
from openletz.dispatch.celery import INTERRUPT_CHANNEL, TASK, make_celery
from openletz.engines.factory import make_engine
from openletz.jobs.store import JobStore
from openletz.settings import Settings
from openletz.storage.factory import make_blob_store
from openletz.worker.embedded import worker_name
from openletz.worker.runner import JobRunner

log = logging.getLogger("openletz.worker")


class _Worker:
    """The long-lived part of a worker process, started at its first task."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.runner: JobRunner | None = None
        self._started = threading.Lock()

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
        engine = make_engine(settings)
        await asyncio.to_thread(engine.load)
        loop = asyncio.get_running_loop()

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
        log.info("worker %s ready (engine %s)", runner.owner, engine.name)
        return runner

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

    async def run(self, runner: JobRunner, job_id: str) -> dict[str, str]:
        """Run ``job_id`` with the waiting jobs that can share its batch (the broker
        hands a worker one message at a time; the others' messages come later, find
        their jobs claimed, and do nothing). A stuck engine ends the process here,
        before the message is acknowledged: its redelivery finds the job failed."""
        statuses = await runner.run_with_batch(job_id)
        await runner.exit_if_stuck()
        return statuses

    def shutdown(self) -> None:
        if self.runner is not None:
            self.runner.abandon_all()
            try:
                self.call(self.store.release_owner(self.runner.owner))
            except Exception:
                log.exception("could not hand back this worker's jobs")


def build(settings: Settings, families: list[str]) -> Celery:
    app = make_celery(settings, families)
    worker = _Worker(settings)

    @app.task(name=TASK)  # type: ignore[untyped-decorator]
    def run_job(job_id: str) -> str:
        runner = worker.ensure_started()
        statuses: dict[str, str] = worker.call(worker.run(runner, job_id))
        for other, status in statuses.items():
            log.info("job %s: %s", other, status)
        return statuses[job_id]

    @worker_shutting_down.connect  # type: ignore[untyped-decorator]
    def _on_shutdown(**_: Any) -> None:
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
