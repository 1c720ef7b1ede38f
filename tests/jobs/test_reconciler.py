"""The reconciler: what it sends again, when, how often, and who does it (SQLite and
PostgreSQL: the fixtures of tests/jobs, with a transport that only records what it
is given)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.db import create_engine
from openletz.dispatch.reconcile import Reconciler
from openletz.jobs.store import JobStore
from openletz.jobs.tables import jobs, utcnow
from openletz.settings import Settings
from tests.jobs.test_job_store import new_job

SETTINGS = Settings(stale_new_s=10, max_attempts=3, max_queue_wait_s=600)


class Sent:
    """A transport that records what it is asked to send (and can be down)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.down = False

    async def __call__(self, job_id: str) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.ids.append(job_id)


async def _new(store: JobStore, user_id: int, prompt: str = "p") -> str:
    return (await store.create(new_job(user_id, prompt))).id


async def _age(
    engine: AsyncEngine, job_id: str, seconds: float, column: str = "created_at"
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values({column: utcnow() - timedelta(seconds=seconds)})
        )


async def test_a_job_never_sent_is_sent_once_when_stale(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    # Inserted, then the API server died before publishing it.
    job_id = await _new(store, user_id)
    sent = Sent()
    reconciler = Reconciler(SETTINGS, store, sent, broker=True)
    await reconciler.once()
    assert sent.ids == []  # its first send may still be on its way
    await _age(engine, job_id, 11)
    for _ in range(5):
        await reconciler.once()
    assert sent.ids == [job_id]
    # No worker took it: sent again after twice stale_new_s, not at every pass.
    await _age(engine, job_id, 15, "dispatched_at")
    await reconciler.once()
    assert sent.ids == [job_id]
    await _age(engine, job_id, 21, "dispatched_at")
    await reconciler.once()
    await reconciler.once()
    assert sent.ids == [job_id, job_id]


async def test_a_backlog_is_not_sent_again_at_every_pass(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    ids = [await _new(store, user_id, f"j{i}") for i in range(30)]
    for job_id in ids:
        await _age(engine, job_id, 11)
    sent = Sent()
    reconciler = Reconciler(SETTINGS, store, sent, broker=True)
    for _ in range(10):
        await reconciler.once()
    assert sorted(sent.ids) == sorted(ids)


async def test_two_api_servers_send_a_job_once(
    db_url: str, engine: AsyncEngine, user_id: int
) -> None:
    other = create_engine(db_url)
    try:
        stores = [JobStore(engine), JobStore(other)]
        ids = [await _new(stores[0], user_id, f"j{i}") for i in range(20)]
        for job_id in ids:
            await _age(engine, job_id, 11)
        sent = Sent()
        reconcilers = [Reconciler(SETTINGS, s, sent, broker=True) for s in stores]
        await asyncio.gather(*(r.once() for r in reconcilers * 3))
        assert sorted(sent.ids) == sorted(ids)
    finally:
        await other.dispose()


async def test_recovered_jobs_are_sent_at_once_only_without_a_broker(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job_id = await _new(store, user_id)
    for broker in (True, False):
        assert await store.claim(job_id, f"w-{broker}", lease_s=30) is not None
        await _age(engine, job_id, 1, "lease_expires_at")
        sent = Sent()
        await Reconciler(SETTINGS, store, sent, broker=broker).once()
        # A broker redelivers the dead worker's message itself.
        assert sent.ids == ([] if broker else [job_id])


async def test_at_start_without_a_broker_every_waiting_job_is_sent(
    store: JobStore, user_id: int
) -> None:
    ids = [await _new(store, user_id, f"j{i}") for i in range(3)]
    sent = Sent()
    reconciler = Reconciler(SETTINGS, store, sent)
    await reconciler.once()
    assert sent.ids == ids  # the queue was in the memory of a process that died
    await reconciler.once()
    assert sent.ids == ids
    with_broker = Sent()
    await Reconciler(SETTINGS, store, with_broker, broker=True).once()
    assert with_broker.ids == []  # the broker kept its messages


async def test_a_broker_outage_ends_the_pass_and_the_jobs_go_later(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    ids = [await _new(store, user_id, f"j{i}") for i in range(3)]
    for job_id in ids:
        await _age(engine, job_id, 11)
    sent = Sent()
    sent.down = True
    reconciler = Reconciler(SETTINGS, store, sent, broker=True)
    await reconciler.once()
    assert sent.ids == []
    sent.down = False
    for job_id in ids:
        await _age(engine, job_id, 21, "dispatched_at")
    await reconciler.once()
    assert sorted(sent.ids) == sorted(ids)


async def test_jobs_that_waited_too_long_are_offered_to_give_up(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    old, fresh = await _new(store, user_id, "old"), await _new(store, user_id, "fresh")
    await _age(engine, old, 700, "updated_at")
    offered: list[list[str]] = []

    class GivingUp(Reconciler):
        async def give_up(self, job_ids: Sequence[str]) -> None:
            offered.append(list(job_ids))

    await GivingUp(SETTINGS, store, Sent(), broker=True).once()
    assert offered == [[old]]
    assert fresh not in offered[0]
