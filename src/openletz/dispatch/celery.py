"""The Celery dispatcher: job ids to GPU workers on other machines, through a broker.

The message is only a job id; the database stays the truth. Queues are
RabbitMQ quorum queues (one per model family, so a worker keeps its models
warm) with a delivery limit and a dead-letter queue; tasks are acknowledged
late and rejected when their worker dies, so a killed worker's message goes
to another. A duplicate or late delivery does nothing: the claim is atomic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from openletz.dispatch.base import Dispatcher
from openletz.dispatch.reconcile import Reconciler
from openletz.jobs.store import JobStore
from openletz.settings import Settings

log = logging.getLogger(__name__)

TASK = "openletz.run_job"
INTERRUPT_CHANNEL = "openletz:interrupt"


def queue_name(settings: Settings, family: str) -> str:
    return f"{settings.queue_prefix}.{family}"


def make_celery(settings: Settings, families: list[str] | None = None) -> Celery:
    app = Celery("openletz", broker=settings.broker_url, set_as_current=False)
    amqp = settings.broker_url.startswith(("amqp", "pyamqp"))
    jobs = Exchange(settings.queue_prefix, type="direct", durable=True)
    dead = Exchange(f"{settings.queue_prefix}.dead", type="direct", durable=True)

    def job_queue(family: str) -> Queue:
        arguments: dict[str, Any] = {}
        if amqp:
            arguments = {
                "x-queue-type": "quorum",
                # A message whose worker dies every time is dropped after this
                # many deliveries, to the dead-letter queue, instead of looping.
                "x-delivery-limit": settings.delivery_limit,
                "x-dead-letter-exchange": dead.name,
                "x-dead-letter-routing-key": "dead",
            }
        return Queue(
            queue_name(settings, family),
            jobs,
            routing_key=family,
            durable=True,
            queue_arguments=arguments,
        )

    queues = [job_queue(f) for f in (families or ["default"])]
    if amqp:
        queues.append(
            Queue(
                f"{settings.queue_prefix}.dead",
                dead,
                routing_key="dead",
                durable=True,
                queue_arguments={"x-queue-type": "quorum"},
            )
        )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_queues=queues,
        task_default_exchange=jobs.name,
        task_create_missing_queues=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True} if amqp else {},
        worker_hijack_root_logger=False,
        worker_detect_quorum_queues=True,
    )
    app.conf.task_routes = {TASK: {"exchange": jobs.name}}
    app.job_queue = job_queue
    return app


class CeleryDispatcher(Dispatcher):
    name = "celery"

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self._settings = settings
        self._store = store
        self._app = make_celery(settings)
        self._registry: Any = None
        if settings.engine in ("diffusers", "auto"):
            from openletz.engines.diffusers.registry import Registry

            self._registry = Registry.load(settings.models_file or None)
        self._redis: Any = None
        if settings.redis_url:
            import redis.asyncio as redis

            self._redis = redis.from_url(settings.redis_url)
        self._reconciler = Reconciler(settings, store, self.enqueue)
        self._task: asyncio.Task[None] | None = None
        self._declared: set[str] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._reconciler.run(), name="celery-reconcile")

    async def _family(self, job_id: str) -> str:
        if self._registry is None:
            return "default"
        job = await self._store.get(job_id)
        if job is None:
            return "default"
        try:
            return str(
                self._registry.resolve(job.system_version, job.mode, job.base_model).spec.family
            )
        except Exception:
            return "default"  # the worker fails it with the reason

    async def enqueue(self, job_id: str) -> None:
        family = await self._family(job_id)
        await asyncio.to_thread(self._publish, job_id, family)

    def _publish(self, job_id: str, family: str) -> None:
        queue = self._app.job_queue(family)
        self._app.send_task(
            TASK,
            args=[job_id],
            queue=queue,
            routing_key=family,
            declare=[queue] if family not in self._declared else None,
        )
        self._declared.add(family)

    async def interrupt(self, job_id: str) -> None:
        if self._redis is not None:
            try:
                await self._redis.publish(INTERRUPT_CHANNEL, job_id)
            except OSError as exc:
                log.warning(
                    "interrupt of %s not published (%s); workers see it at their next heartbeat",
                    job_id,
                    exc,
                )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._redis is not None:
            await self._redis.aclose()
        await asyncio.to_thread(self._app.close)

    def describe(self) -> dict[str, object]:
        broker = self._settings.broker_url
        shown = broker.split("@", 1)[-1] if "@" in broker else broker
        return {"name": self.name, "broker": shown, "queues": sorted(self._declared)}
