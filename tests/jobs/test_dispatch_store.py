"""The job store's dispatch bookkeeping: re-sends with backoff, giving up, dead letters,
and the reconciler's lock (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.db import create_engine
from openletz.jobs.status import JobStatus
from openletz.jobs.store import DEAD_LETTERED, Job, JobStore
from openletz.jobs.tables import jobs, utcnow
from tests.jobs.test_job_store import new_job


async def _new(store: JobStore, user_id: int, prompt: str = "p") -> Job:
    return await store.create(new_job(user_id, prompt))


async def _set(engine: AsyncEngine, job_id: str, **values: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))


def _ago(seconds: float) -> object:
    return utcnow() - timedelta(seconds=seconds)


async def _get(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    assert job is not None
    return job


# -- re-sending ---------------------------------------------------------------------


async def test_a_waiting_job_is_sent_again_with_backoff(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await _new(store, user_id)
    # Just made: its first send is still on its way.
    assert await store.take_due_dispatches(stale_s=10) == []
    await _set(engine, job.id, created_at=_ago(11))
    assert await store.take_due_dispatches(stale_s=10) == [job.id]
    sent = await _get(store, job.id)
    assert sent.dispatches == 1
    assert sent.dispatched_at is not None
    # Taken: the next pass does not send it again, nor does one 15 s later (the
    # second re-send waits twice as long).
    assert await store.take_due_dispatches(stale_s=10) == []
    await _set(engine, job.id, dispatched_at=_ago(15))
    assert await store.take_due_dispatches(stale_s=10) == []
    await _set(engine, job.id, dispatched_at=_ago(21))
    assert await store.take_due_dispatches(stale_s=10) == [job.id]
    assert (await _get(store, job.id)).dispatches == 2
    # The backoff stops growing at 16 times stale_s.
    await _set(engine, job.id, dispatches=12, dispatched_at=_ago(150))
    assert await store.take_due_dispatches(stale_s=10) == []
    await _set(engine, job.id, dispatched_at=_ago(161))
    assert await store.take_due_dispatches(stale_s=10) == [job.id]
    assert (await _get(store, job.id)).dispatches == 13


async def test_only_waiting_jobs_are_sent_again(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    running = await _new(store, user_id, "running")
    assert await store.claim(running.id, "w1", lease_s=30) is not None
    stopped = await _new(store, user_id, "stopped")
    await store.request_interrupt(stopped.id)
    recovered = await _new(store, user_id, "recovered")
    assert await store.claim(recovered.id, "w2", lease_s=30) is not None
    for j in (running, stopped, recovered):
        await _set(engine, j.id, created_at=_ago(100))
    assert await store.take_due_dispatches(stale_s=10) == []
    # The worker of "recovered" died: recovery puts it back and counts that as a
    # send (a broker redelivers its message), so it is not sent again at once...
    await _set(engine, recovered.id, lease_expires_at=_ago(1))
    assert (await store.recover_expired(max_attempts=3)).requeued == [recovered.id]
    assert await store.take_due_dispatches(stale_s=10) == []
    # ...but when no worker took it in time.
    await _set(engine, recovered.id, dispatched_at=_ago(11))
    assert await store.take_due_dispatches(stale_s=10) == [recovered.id]


async def test_two_reconcilers_never_send_one_job_twice(db_url: str, user_id: int) -> None:
    engines = [create_engine(db_url), create_engine(db_url)]
    try:
        stores = [JobStore(e) for e in engines]
        ids = [(await _new(stores[0], user_id, f"j{i}")).id for i in range(40)]
        for job_id in ids:
            await _set(engines[0], job_id, created_at=_ago(60))
        rounds = await asyncio.gather(
            *(s.take_due_dispatches(stale_s=10, limit=7) for s in stores * 4)
        )
        # Rows another reconciler is taking are skipped, not waited for: the last
        # call takes whatever is left.
        rest = await stores[0].take_due_dispatches(stale_s=10, limit=100)
        taken = [job_id for r in [*rounds, rest] for job_id in r]
        assert sorted(taken) == sorted(ids)
        for job_id in ids:
            assert (await _get(stores[0], job_id)).dispatches == 1
    finally:
        for e in engines:
            await e.dispose()


# -- giving up ---------------------------------------------------------------------------


async def test_jobs_that_waited_too_long_can_be_failed(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    old = await _new(store, user_id, "old")
    fresh = await _new(store, user_id, "fresh")
    running = await _new(store, user_id, "running")
    assert await store.claim(running.id, "w", lease_s=30) is not None
    for j in (old, running):
        await _set(engine, j.id, updated_at=_ago(700))
    assert await store.waited_longer_than(600) == [old.id]
    # Claimed meanwhile by a worker: not failed.
    assert await store.fail_waiting([old.id, running.id], "no worker") == [old.id]
    failed = await _get(store, old.id)
    assert failed.status is JobStatus.FAILED
    assert failed.progress_message == "no worker"
    assert failed.finished_at is not None
    assert (await _get(store, fresh.id)).status is JobStatus.NEW
    assert (await _get(store, running.id)).status is JobStatus.IN_PROGRESS
    assert await store.fail_waiting([], "x") == []


# -- dead letters ------------------------------------------------------------------------


async def test_a_dead_lettered_waiting_job_fails_at_once(store: JobStore, user_id: int) -> None:
    job = await _new(store, user_id)
    assert await store.dead_lettered(job.id) == "failed"
    failed = await _get(store, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.progress_message == DEAD_LETTERED
    assert failed.dead_lettered_at is not None
    assert await store.dead_lettered(job.id) == "ignored"
    assert await store.dead_lettered("no-such-job") == "ignored"


async def test_a_dead_lettered_job_whose_lease_ran_out_fails_at_once(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await _new(store, user_id)
    assert await store.claim(job.id, "dead-worker", lease_s=30) is not None
    await _set(engine, job.id, lease_expires_at=_ago(1))
    assert await store.dead_lettered(job.id) == "failed"
    assert (await _get(store, job.id)).status is JobStatus.FAILED


async def test_a_dead_lettered_job_still_held_fails_when_its_lease_runs_out(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await _new(store, user_id)
    assert await store.claim(job.id, "dying-worker", lease_s=30) is not None
    assert await store.dead_lettered(job.id) == "marked"
    assert (await _get(store, job.id)).status is JobStatus.IN_PROGRESS
    # Attempts are far from the limit, but the broker gave up on the job.
    await _set(engine, job.id, lease_expires_at=_ago(1))
    recovered = await store.recover_expired(max_attempts=50)
    assert recovered.failed == [job.id]
    assert recovered.requeued == []
    failed = await _get(store, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.progress_message == DEAD_LETTERED


async def test_a_dead_lettered_job_that_its_worker_finishes_is_ready(
    store: JobStore, user_id: int
) -> None:
    job = await _new(store, user_id)
    assert await store.claim(job.id, "w", lease_s=30) is not None
    assert await store.dead_lettered(job.id) == "marked"
    done = await store.finish(job.id, "w", JobStatus.READY, image_versions={"original": "k"})
    assert done is not None
    assert done.status is JobStatus.READY


async def test_recovery_of_one_job(store: JobStore, engine: AsyncEngine, user_id: int) -> None:
    a, b = await _new(store, user_id, "a"), await _new(store, user_id, "b")
    for j in (a, b):
        assert await store.claim(j.id, "w", lease_s=30) is not None
        await _set(engine, j.id, lease_expires_at=_ago(1))
    assert (await store.recover_expired(max_attempts=3, only=a.id)).requeued == [a.id]
    assert (await _get(store, a.id)).lease_owner is None
    assert (await _get(store, b.id)).lease_owner == "w"


# -- the reconciler's lock ---------------------------------------------------------------


async def test_one_reconciler_at_a_time(db_url: str) -> None:
    engines = [create_engine(db_url), create_engine(db_url)]
    try:
        first, second = (JobStore(e) for e in engines)
        async with first.reconcile_lock() as leader:
            assert leader
            async with second.reconcile_lock() as other:
                # SQLite has one API server: it always reconciles.
                assert other is (engines[0].dialect.name == "sqlite")
        async with second.reconcile_lock() as leader:
            assert leader
    finally:
        for e in engines:
            await e.dispose()
