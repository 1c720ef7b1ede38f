"""The broker honours the queues the Celery dispatcher declares (real RabbitMQ)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection
from kombu.entity import Exchange, Queue

from openletz.dispatch.celery import make_celery
from openletz.settings import Settings
from tests._cluster import BROKER, delete_queues


@pytest.fixture
def settings() -> Iterator[Settings]:
    prefix = f"openletz-test-{uuid.uuid4().hex[:8]}"
    yield Settings(broker_url=BROKER, queue_prefix=prefix, delivery_limit=2)
    delete_queues(BROKER, prefix, ["default"])


def _get(queue: Queue) -> object:
    deadline = time.monotonic() + 5
    while (message := queue.get(no_ack=False)) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return message


def test_a_message_returned_past_the_delivery_limit_is_dead_lettered(settings: Settings) -> None:
    app = make_celery(settings)
    declared = {q.name: q for q in app.conf.task_queues}
    jobs_name, dead_name = f"{settings.queue_prefix}.default", f"{settings.queue_prefix}.dead"
    assert declared[jobs_name].queue_arguments["x-queue-type"] == "quorum"
    assert declared[jobs_name].queue_arguments["x-delivery-limit"] == 2
    with Connection(BROKER) as conn:
        channel = conn.channel()
        jobs = declared[jobs_name](channel)
        dead = declared[dead_name](channel)
        jobs.declare()
        dead.declare()
        exchange = Exchange(settings.queue_prefix, type="direct", durable=True)
        with conn.Producer(channel) as producer:
            producer.publish({"job": "j1"}, exchange=exchange, routing_key="default")
        # Delivered and returned (as when a worker dies) once more than the limit allows.
        for _ in range(settings.delivery_limit + 1):
            message = _get(jobs)
            assert message is not None
            message.reject(requeue=True)  # type: ignore[attr-defined]
        assert jobs.get(no_ack=True) is None
        poisoned = _get(dead)
        assert poisoned is not None
        assert poisoned.payload == {"job": "j1"}  # type: ignore[attr-defined]
        poisoned.ack()  # type: ignore[attr-defined]
