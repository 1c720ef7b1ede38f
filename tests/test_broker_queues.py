"""The broker honours the queues the Celery dispatcher declares (real RabbitMQ), and
the processes of a cluster declare them themselves."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu import Connection
from kombu.entity import Exchange, Queue

from openletz.dispatch.celery import make_celery
from openletz.settings import Settings
from tests._cluster import BROKER, Worker, delete_broker_objects
from tests._server import Server

pytestmark = pytest.mark.slow


def _get(queue: Queue) -> object:
    deadline = time.monotonic() + 5
    while (message := queue.get(no_ack=False)) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return message


def _exists(name: str) -> bool:
    with Connection(BROKER) as conn:
        try:
            conn.channel().queue_declare(queue=name, passive=True)
        except conn.channel_errors:
            return False
        return True


def _wait_exists(name: str, proc: Server | Worker) -> None:
    deadline = time.monotonic() + 60
    while not _exists(name):
        assert time.monotonic() < deadline, f"{name} was never declared:\n{proc.log()}"
        time.sleep(0.1)


def test_the_queue_arguments(cluster_settings: dict[str, object]) -> None:
    settings = Settings(broker_url=BROKER, queue_prefix="q", delivery_limit=2)
    declared = {q.name: q for q in make_celery(settings, ["sd"]).conf.task_queues}
    assert declared["q.sd"].queue_arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 2,
        "x-dead-letter-exchange": "q.dead",
        "x-dead-letter-routing-key": "dead",
    }
    assert declared["q.dead"].queue_arguments == {"x-queue-type": "quorum"}


def test_api_servers_and_workers_declare_the_dead_letter_queue(
    cluster_settings: dict[str, object], make_server: Callable[..., Server], tmp_path: Path
) -> None:
    settings = {**cluster_settings, "delivery_limit": 2}
    prefix = str(settings["queue_prefix"])
    jobs_name, dead_name = f"{prefix}.default", f"{prefix}.dead"
    # An API server alone declares it, with no job sent yet.
    api = make_server(**settings).start()
    _wait_exists(dead_name, api)
    api.stop()
    delete_broker_objects(BROKER, prefix)
    assert not _exists(dead_name)
    # So does a worker alone.
    worker = Worker(api.env, tmp_path / "w.log").start()
    try:
        _wait_exists(dead_name, worker)
        _wait_exists(jobs_name, worker)
    finally:
        worker.stop()

    # Nothing declared by hand: a message returned (as when a worker dies) once more
    # than the limit allows goes to the dead-letter queue, not nowhere.
    app = make_celery(Settings(broker_url=BROKER, queue_prefix=prefix, delivery_limit=2))
    declared = {q.name: q for q in app.conf.task_queues}
    with Connection(BROKER) as conn:
        channel = conn.channel()
        jobs = declared[jobs_name](channel)
        dead = declared[dead_name](channel)
        exchange = Exchange(prefix, type="direct", durable=True)
        with conn.Producer(channel) as producer:
            producer.publish({"job": "j1"}, exchange=exchange, routing_key="default")
        for _ in range(2 + 1):
            message = _get(jobs)
            assert message is not None
            message.reject(requeue=True)  # type: ignore[attr-defined]
        assert jobs.get(no_ack=True) is None
        poisoned = _get(dead)
        assert poisoned is not None
        assert poisoned.payload == {"job": "j1"}  # type: ignore[attr-defined]
        poisoned.ack()  # type: ignore[attr-defined]
