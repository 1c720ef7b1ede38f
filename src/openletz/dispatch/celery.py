"""The Celery dispatcher: job ids to GPU workers on other machines, through a broker.

The message is only a job id; the database stays the truth. Queues are
RabbitMQ quorum queues (one per model family, so a worker keeps its models
warm) with a delivery limit and a dead-letter queue; tasks are acknowledged
late and rejected when their worker dies, so a killed worker's message goes
to another. A duplicate or late delivery does nothing: the claim is atomic.

A job's message that the broker dead-letters (every worker that took it
stopped, ``OPENLETZ_DELIVERY_LIMIT`` times) is read back by the reconciler,
which fails the job with the reason. A job that waits ``OPENLETZ_MAX_QUEUE_WAIT_S``
while no worker consumes its queue fails with a reason too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from celery import Celery
from kombu.entity import Exchange, Queue

from openletz.dispatch.base import Dispatcher
from openletz.dispatch.models import aggregate
from openletz.dispatch.reconcile import Reconciler
from openletz.jobs.store import JobStore
from openletz.settings import Settings

log = logging.getLogger(__name__)

TASK = "openletz.run_job"
INTERRUPT_CHANNEL = "openletz:interrupt"

# A publish gives up after these retries (and each connection attempt after
# broker_connection_timeout): POST /images must not hang on a broker outage.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
_DEAD_LETTERS_PER_READ = 100

# Each worker (with a Redis) keeps a key ``<prefix>:worker:<name>`` holding its
# queues and model states: refreshed this often and on each change, gone this
# long after its worker stops refreshing it (deleted at once at a clean stop).
WORKER_REFRESH_S = 10.0
WORKER_TTL_S = 30


def worker_key_prefix(settings: Settings) -> str:
    return f"{settings.queue_prefix}:worker:"


def queue_name(settings: Settings, family: str) -> str:
    return f"{settings.queue_prefix}.{family}"


def is_amqp(settings: Settings) -> bool:
    return settings.broker_url.startswith(("amqp", "pyamqp"))


def dead_letter_queue(settings: Settings) -> Queue:
    """``<prefix>.dead`` on the exchange ``<prefix>.dead`` (RabbitMQ only)."""
    dead = Exchange(f"{settings.queue_prefix}.dead", type="direct", durable=True)
    return Queue(
        f"{settings.queue_prefix}.dead",
        dead,
        routing_key="dead",
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def declare_dead_letters(connection: Any, settings: Settings) -> None:
    """Declare the dead-letter exchange and queue on ``connection`` (a kombu
    connection to RabbitMQ). A job queue names the exchange as its dead-letter
    exchange, but RabbitMQ drops what it dead-letters to an exchange that does not
    exist: API servers and workers each declare it when they start."""
    channel = connection.channel()
    try:
        dead_letter_queue(settings)(channel).declare()
    finally:
        channel.close()


def make_celery(settings: Settings, families: list[str] | None = None) -> Celery:
    app = Celery("openletz", broker=settings.broker_url, set_as_current=False)
    amqp = is_amqp(settings)
    jobs = Exchange(settings.queue_prefix, type="direct", durable=True)
    dead = dead_letter_queue(settings)

    def job_queue(family: str) -> Queue:
        arguments: dict[str, Any] = {}
        if amqp:
            arguments = {
                "x-queue-type": "quorum",
                # A message whose worker dies every time is dropped after this
                # many deliveries, to the dead-letter queue, instead of looping.
                "x-delivery-limit": settings.delivery_limit,
                "x-dead-letter-exchange": dead.exchange.name,
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
        queues.append(dead)
    transport: dict[str, Any] = {"confirm_publish": True} if amqp else {}
    if settings.broker_url.startswith(("redis", "rediss")):
        # The broker's keys under the queue prefix, apart from anything else in the db.
        transport["global_keyprefix"] = f"{settings.queue_prefix}:"
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
        broker_connection_timeout=3,
        # A worker runs its task in the thread that would answer AMQP heartbeats
        # (the solo pool), so a model load or a generation longer than two
        # heartbeats would make RabbitMQ drop the connection and redeliver the job.
        # No heartbeats, then: the sockets' TCP keepalive (py-amqp turns it on,
        # about 150 s to notice a dead peer) finds connections that died.
        broker_heartbeat=0,
        broker_transport_options=transport,
        worker_hijack_root_logger=False,
        # No remote control: interruptions go through Redis, and a solo-pool worker
        # could not answer while it works anyway. It would also give each worker an
        # exclusive queue named after its host, which a second worker on the same
        # machine (one per GPU) could not declare.
        worker_enable_remote_control=False,
        worker_detect_quorum_queues=True,
    )
    app.conf.task_routes = {TASK: {"exchange": jobs.name}}
    app.job_queue = job_queue
    return app


class _CeleryReconciler(Reconciler):
    def __init__(self, dispatcher: CeleryDispatcher) -> None:
        super().__init__(dispatcher._settings, dispatcher._store, dispatcher._send, broker=True)
        self._dispatcher = dispatcher

    async def before_pass(self) -> None:
        await self._dispatcher._read_dead_letters()

    async def give_up(self, job_ids: Sequence[str]) -> None:
        await self._dispatcher._give_up(job_ids)


class CeleryDispatcher(Dispatcher):
    name = "celery"

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self._settings = settings
        self._store = store
        self._app = make_celery(settings)
        self._amqp = is_amqp(settings)
        self._registry: Any = None
        if settings.engine in ("diffusers", "auto"):
            from openletz.engines.diffusers.registry import Registry

            self._registry = Registry.load(settings.models_file or None)
        self._redis: Any = None
        if settings.redis_url:
            import redis.asyncio as redis

            self._redis = redis.from_url(settings.redis_url)
        self._reconciler = _CeleryReconciler(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._declared: set[str] = set()
        self._dead_letters_declared = not self._amqp
        #: what the workers last published (see ``_watch_workers``)
        self._seen_workers: list[dict[str, Any]] = []

    async def start(self) -> None:
        # Neither waits for the broker: the API starts (and takes jobs) while it is down.
        self._tasks.append(asyncio.create_task(self._declare(), name="celery-declare"))
        self._tasks.append(asyncio.create_task(self._reconciler.run(), name="celery-reconcile"))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._watch_workers(), name="celery-workers"))

    async def _watch_workers(self) -> None:
        """Read the workers' keys now and then, for :meth:`describe` (which must not
        wait on Redis)."""
        from redis.exceptions import RedisError

        while True:
            try:
                self._seen_workers = await self._read_workers()
            except (RedisError, OSError) as exc:
                log.warning("Redis: cannot read the workers' states (%s)", exc)
            await asyncio.sleep(min(self._settings.reconcile_interval_s, WORKER_REFRESH_S / 2))

    async def _read_workers(self) -> list[dict[str, Any]]:
        pattern = worker_key_prefix(self._settings) + "*"
        keys = [key async for key in self._redis.scan_iter(match=pattern, count=1000)]
        found: list[dict[str, Any]] = []
        for value in await self._redis.mget(keys) if keys else []:
            if value is None:
                continue  # expired meanwhile
            try:
                body = orjson.loads(value)
                found.append(
                    {
                        "name": str(body["name"]),
                        "queues": [str(q) for q in body["queues"]],
                        "engine": str(body["engine"]),
                        "at": float(body["at"]),
                        "models": {
                            str(m): (str(v["state"]), _text(v.get("detail")))
                            for m, v in body["models"].items()
                        },
                    }
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                log.warning("Redis: a worker's state that cannot be read: %r", value[:200])
        return sorted(found, key=lambda w: w["name"])

    async def _declare(self) -> None:
        while not self._dead_letters_declared:
            try:
                await asyncio.to_thread(self._declare_dead_letters)
            except Exception as exc:
                log.warning("broker: dead-letter queue not declared yet (%s); retrying", exc)
                await asyncio.sleep(self._settings.reconcile_interval_s)

    def _declare_dead_letters(self) -> None:
        with self._app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            declare_dead_letters(conn, self._settings)
        self._dead_letters_declared = True

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
        """Publish ``job_id``, waiting at most ``publish_timeout_s``. The row is
        already committed: when the broker cannot be reached, the client still gets
        its image object, and the reconciler sends the job once the broker is back
        (a client that retried would make a second image)."""
        try:
            await asyncio.wait_for(self._send(job_id), self._settings.publish_timeout_s)
        except Exception as exc:
            log.warning(
                "job %s not sent to the broker (%s); the reconciler sends it again",
                job_id,
                exc or type(exc).__name__,
            )

    async def _send(self, job_id: str) -> None:
        family = await self._family(job_id)
        await asyncio.to_thread(self._publish, job_id, family)

    def _publish(self, job_id: str, family: str) -> None:
        queue = self._app.job_queue(family)
        declare: list[Queue] | None = None
        if family not in self._declared:
            declare = [queue, dead_letter_queue(self._settings)] if self._amqp else [queue]
        self._app.send_task(
            TASK,
            args=[job_id],
            queue=queue,
            routing_key=family,
            declare=declare,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
        )
        self._declared.add(family)

    # -- dead letters and jobs no worker can take --------------------------------

    async def _read_dead_letters(self) -> None:
        """Fail (or mark, while a worker still holds it) the job of each message in
        the dead-letter queue; each message is acknowledged once its job is written."""
        if not self._amqp:
            return
        reader = await asyncio.to_thread(_DeadLetterReader, self._app, self._settings)
        try:
            while True:
                batch = await asyncio.to_thread(reader.fetch, _DEAD_LETTERS_PER_READ)
                for job_id, _ in batch:
                    if job_id is None:
                        log.error("a message in %s names no job; dropped", reader.name)
                        continue
                    outcome = await self._store.dead_lettered(job_id)
                    log.error(
                        "job %s: its message reached the delivery limit (%d); %s",
                        job_id,
                        self._settings.delivery_limit,
                        {
                            "failed": "failed",
                            "marked": "it fails when its worker's lease runs out",
                            "ignored": "it had ended already",
                        }[outcome],
                    )
                await asyncio.to_thread(reader.ack, [m for _, m in batch])
                if len(batch) < _DEAD_LETTERS_PER_READ:
                    return
        finally:
            await asyncio.to_thread(reader.close)

    async def _give_up(self, job_ids: Sequence[str]) -> None:
        by_family: dict[str, list[str]] = {}
        for job_id in job_ids:
            by_family.setdefault(await self._family(job_id), []).append(job_id)
        for family, ids in by_family.items():
            consumers = await asyncio.to_thread(self._consumers, family)
            if consumers != 0:  # served (a backlog), or unknown
                continue
            queue = queue_name(self._settings, family)
            wait = self._settings.max_queue_wait_s
            shown = f"{wait / 60:g} min" if wait >= 120 else f"{wait:g} s"
            failed = await self._store.fail_waiting(
                ids,
                f"No worker took this image in {shown}: is a worker for the queue "
                f"{queue} running (openletz worker --queues {family})?",
            )
            if failed:
                log.error("no worker consumes %s: failed %d waiting job(s)", queue, len(failed))

    def _consumers(self, family: str) -> int | None:
        """How many workers consume ``family``'s queue; None when the broker cannot
        tell (Redis) or cannot be reached."""
        if not self._amqp:
            return None
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                channel = conn.channel()
                try:
                    declared = channel.queue_declare(
                        queue=queue_name(self._settings, family), passive=True
                    )
                except conn.channel_errors:
                    return 0  # no such queue: nobody ever consumed it
                consumers: int = declared.consumer_count
                channel.close()
                return consumers
        except Exception as exc:
            log.warning("broker: cannot count the consumers of %s (%s)", family, exc)
            return None

    # -- the rest --------------------------------------------------------------

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
        for task in self._tasks:
            task.cancel()
        if self._redis is not None:
            await self._redis.aclose()
        await asyncio.to_thread(self._app.close)

    def describe(self) -> dict[str, object]:
        broker = self._settings.broker_url
        shown = broker.split("@", 1)[-1] if "@" in broker else broker
        described: dict[str, object] = {
            "name": self.name,
            "broker": shown,
            "queues": sorted(self._declared),
        }
        if self._redis is not None:
            # As last read: a worker that stopped refreshing its key drops out.
            now = time.time()
            seen = [w for w in self._seen_workers if now - w["at"] < WORKER_TTL_S]
            described["workers"] = [
                {
                    "name": w["name"],
                    "queues": w["queues"],
                    "engine": w["engine"],
                    "age": round(max(0.0, now - w["at"]), 1),
                }
                for w in seen
            ]
            described["models"] = aggregate({w["name"]: w["models"] for w in seen})
        return described


class _DeadLetterReader:
    """A connection that takes messages from the dead-letter queue, unacknowledged
    until :meth:`ack` (when the API dies first, they go back to the queue)."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._conn = app.connection_for_write()
        self.name = dead_letter_queue(settings).name
        self._missing = False
        try:
            self._conn.ensure_connection(max_retries=1)
            self._queue = dead_letter_queue(settings)(self._conn.channel())
            # Only looked for, not declared: whoever declares it is what starts (see
            # declare_dead_letters), so that removing a deployment's queues sticks.
            self._queue.queue_declare(passive=True)
        except self._conn.channel_errors:
            self._missing = True
        except BaseException:
            self._conn.release()
            raise

    def fetch(self, limit: int) -> list[tuple[str | None, Any]]:
        found: list[tuple[str | None, Any]] = []
        if self._missing:
            return found
        while len(found) < limit:
            message = self._queue.get(no_ack=False, accept=["json"])
            if message is None:
                break
            found.append((_job_of(message), message))
        return found

    def ack(self, messages: Sequence[Any]) -> None:
        for message in messages:
            message.ack()

    def close(self) -> None:
        self._conn.release()


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _job_of(message: Any) -> str | None:
    """The job id a Celery task message carries (protocol 2: ``[args, kwargs, embed]``;
    protocol 1: ``{"args": ...}``)."""
    try:
        body = message.decode()
    except Exception:
        return None
    args = body[0] if isinstance(body, list) and body else None
    if isinstance(body, dict):
        args = body.get("args")
    if isinstance(args, list) and args and isinstance(args[0], str):
        return args[0]
    return None
