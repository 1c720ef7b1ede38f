from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.auth import Accounts
from openletz.db import create_engine
from openletz.jobs.status import JobStatus
from openletz.jobs.store import Job, JobStore, NewJob
from openletz.jobs.tables import jobs, utcnow


def new_job(user_id: int, prompt: str = "a lighthouse at dusk", **kw: object) -> NewJob:
    values: dict[str, object] = {
        "user_id": user_id,
        "prompt": prompt,
        "width": 1600,
        "height": 1600,
        "quality": 2,
        "creativity": 2,
        "has_watermark": True,
        "system_version": 3,
        "mode": "default",
        "seed": 42,
    }
    values.update(kw)
    return NewJob(**values)  # type: ignore[arg-type]


async def _set(engine: AsyncEngine, job_id: str, **values: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))


async def _expire(engine: AsyncEngine, job_id: str) -> None:
    await _set(engine, job_id, lease_expires_at=utcnow() - timedelta(seconds=60))


async def _running(store: JobStore, user_id: int, owner: str = "w1") -> Job:
    job = await store.create(new_job(user_id))
    claimed = await store.claim(job.id, owner, lease_s=30)
    assert claimed is not None
    return claimed


# -- create / get / list ---------------------------------------------------------------


async def test_create_and_get(store: JobStore, user_id: int) -> None:
    job = await store.create(
        new_job(user_id, base_model="sdxl", webhook_url="https://example.com/hook", seed=2**40)
    )
    assert len(job.id) == 36
    assert job.status is JobStatus.NEW
    assert job.progress == 0
    assert job.attempts == 0
    assert job.privacy == "private"
    assert job.interrupt_requested is False
    assert job.lease_owner is None
    assert job.lease_expires_at is None
    assert job.started_at is None
    assert job.finished_at is None
    assert job.preview is None
    assert job.image_versions is None
    assert job.created_at.tzinfo is not None
    assert job.created_at == job.updated_at

    got = await store.get(job.id)
    assert got == job
    assert got is not None
    assert got.seed == 2**40
    assert got.base_model == "sdxl"
    assert got.webhook_url == "https://example.com/hook"
    assert got.has_watermark is True


async def test_get_unknown(store: JobStore) -> None:
    assert await store.get("00000000-0000-0000-0000-000000000000") is None


async def test_ids_are_unique(store: JobStore, user_id: int) -> None:
    ids = {(await store.create(new_job(user_id))).id for _ in range(10)}
    assert len(ids) == 10


async def test_list_for_user_order_and_pages(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    other = (await Accounts(engine).ensure_user("someone else")).id
    made = []
    for i in range(7):
        made.append((await store.create(new_job(user_id, prompt=f"p{i}"))).id)
        await store.create(new_job(other, prompt=f"other {i}"))

    desc = await store.list_for_user(user_id, page=1, limit=100)
    assert [j.id for j in desc] == made[::-1]
    assert all(j.user_id == user_id for j in desc)

    asc = await store.list_for_user(user_id, page=1, limit=100, sort_order="ASC")
    assert [j.id for j in asc] == made

    pages = [
        [j.id for j in await store.list_for_user(user_id, page=p, limit=3, sort_order="ASC")]
        for p in (1, 2, 3, 4)
    ]
    assert pages == [made[0:3], made[3:6], made[6:7], []]

    desc_p2 = await store.list_for_user(user_id, page=2, limit=3, sort_order="DESC")
    assert [j.id for j in desc_p2] == made[::-1][3:6]

    # Sorts the store keeps no data for fall back to creation time.
    for sort_by in ("likes", "regenerations"):
        listed = await store.list_for_user(
            user_id, page=1, limit=100, sort_by=sort_by, sort_order="ASC"
        )
        assert [j.id for j in listed] == made


async def test_list_for_user_without_jobs(store: JobStore, user_id: int) -> None:
    assert await store.list_for_user(user_id, page=1, limit=10) == []


async def test_set_privacy(store: JobStore, user_id: int) -> None:
    job = await store.create(new_job(user_id))
    public = await store.set_privacy(job.id, "public")
    assert public is not None
    assert public.privacy == "public"
    assert public.updated_at >= job.updated_at
    again = await store.get(job.id)
    assert again is not None
    assert again.privacy == "public"
    private = await store.set_privacy(job.id, "private")
    assert private is not None
    assert private.privacy == "private"
    assert await store.set_privacy("missing", "public") is None


async def test_delete_returns_the_row(store: JobStore, user_id: int) -> None:
    job = await store.create(new_job(user_id))
    deleted = await store.delete(job.id)
    assert deleted == job
    assert await store.get(job.id) is None
    assert await store.delete(job.id) is None


# -- claim ------------------------------------------------------------------------------


async def test_claim(store: JobStore, user_id: int) -> None:
    job = await store.create(new_job(user_id))
    before = utcnow()
    claimed = await store.claim(job.id, "w1", lease_s=30)
    assert claimed is not None
    assert claimed.status is JobStatus.IN_PROGRESS
    assert claimed.lease_owner == "w1"
    assert claimed.attempts == 1
    assert claimed.started_at is not None
    assert claimed.started_at >= before - timedelta(seconds=1)
    assert claimed.lease_expires_at is not None
    assert (
        before + timedelta(seconds=29)
        <= claimed.lease_expires_at
        <= utcnow() + timedelta(seconds=31)
    )
    # A second claim (a duplicate delivery, or another worker) finds it taken.
    assert await store.claim(job.id, "w1", lease_s=30) is None
    assert await store.claim(job.id, "w2", lease_s=30) is None


async def test_claim_unknown(store: JobStore) -> None:
    assert await store.claim("missing", "w1", lease_s=30) is None


async def test_claim_is_atomic_across_engines(db_url: str, user_id: int) -> None:
    # Two engines on one database stand for two processes, each with its own connections.
    engines = [create_engine(db_url), create_engine(db_url)]
    try:
        stores = [JobStore(e) for e in engines]
        job = await stores[0].create(new_job(user_id))
        results = await asyncio.gather(
            *(stores[i % 2].claim(job.id, f"worker-{i}", lease_s=30) for i in range(20))
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        row = await stores[1].get(job.id)
        assert row is not None
        assert row.status is JobStatus.IN_PROGRESS
        assert row.lease_owner == winners[0].lease_owner
        assert row.attempts == 1
    finally:
        for e in engines:
            await e.dispose()


@pytest.mark.parametrize("end", [JobStatus.READY, JobStatus.FAILED, JobStatus.INTERRUPTED])
async def test_claim_of_finished_job(store: JobStore, user_id: int, end: JobStatus) -> None:
    job = await _running(store, user_id)
    assert await store.finish(job.id, "w1", end) is not None
    assert await store.claim(job.id, "w2", lease_s=30) is None
    after = await store.get(job.id)
    assert after is not None
    assert after.status is end
    assert after.lease_owner is None


async def test_claim_of_interrupted_job(store: JobStore, user_id: int) -> None:
    job = await store.create(new_job(user_id))
    await store.request_interrupt(job.id)
    assert await store.claim(job.id, "w1", lease_s=30) is None


async def test_claim_of_new_job_flagged_for_interrupt(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    # e.g. requeued after an interrupt was requested: it must not start again.
    job = await store.create(new_job(user_id))
    await _set(engine, job.id, interrupt_requested=True)
    assert await store.claim(job.id, "w1", lease_s=30) is None


# -- heartbeat ----------------------------------------------------------------------------


async def test_heartbeat_extends_the_lease(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await store.create(new_job(user_id))
    claimed = await store.claim(job.id, "w1", lease_s=1)
    assert claimed is not None
    assert claimed.lease_expires_at is not None
    assert await store.heartbeat(job.id, "w1", lease_s=600, progress=10) == (True, False)
    after = await store.get(job.id)
    assert after is not None
    assert after.lease_expires_at is not None
    assert after.lease_expires_at >= claimed.lease_expires_at + timedelta(seconds=590)
    assert after.progress == 10

    # Even a lease already past its time is renewed while the job is still ours.
    await _expire(engine, job.id)
    assert await store.heartbeat(job.id, "w1", lease_s=30, progress=11) == (True, False)
    renewed = await store.get(job.id)
    assert renewed is not None
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > utcnow()


async def test_heartbeat_progress_is_monotonic(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    for sent, kept in [(30, 30), (10, 30), (0, 30), (31, 31), (75, 75), (74, 75)]:
        assert (await store.heartbeat(job.id, "w1", lease_s=30, progress=sent))[0]
        got = await store.get(job.id)
        assert got is not None
        assert got.progress == kept, (sent, kept)


async def test_heartbeat_reports_interrupt(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    assert await store.heartbeat(job.id, "w1", lease_s=30, progress=5) == (True, False)
    flagged = await store.request_interrupt(job.id)
    assert flagged is not None
    assert flagged.interrupt_requested
    assert await store.heartbeat(job.id, "w1", lease_s=30, progress=6) == (True, True)


async def test_heartbeat_by_wrong_owner(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    before = await store.get(job.id)
    still_ours, _ = await store.heartbeat(job.id, "intruder", lease_s=600, progress=90)
    assert still_ours is False
    assert await store.get(job.id) == before


async def test_heartbeat_after_finish_or_requeue(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await _running(store, user_id)
    await _expire(engine, job.id)
    await store.recover_expired(max_attempts=3)
    assert (await store.heartbeat(job.id, "w1", lease_s=30, progress=50))[0] is False

    done = await _running(store, user_id)
    await store.finish(done.id, "w1", JobStatus.READY, image_versions={"original": "x"})
    assert (await store.heartbeat(done.id, "w1", lease_s=30, progress=50))[0] is False

    assert await store.heartbeat("missing", "w1", lease_s=30, progress=1) == (False, False)


# -- finish -------------------------------------------------------------------------------


async def test_finish_by_non_owner_changes_nothing(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    before = await store.get(job.id)
    for status in (JobStatus.READY, JobStatus.FAILED, JobStatus.INTERRUPTED):
        assert (
            await store.finish(job.id, "intruder", status, image_versions={"a": "b"}, preview=b"x")
            is None
        )
    assert await store.get(job.id) == before


async def test_finish_of_unclaimed_job(store: JobStore, user_id: int) -> None:
    job = await store.create(new_job(user_id))
    assert await store.finish(job.id, "w1", JobStatus.READY) is None
    assert await store.get(job.id) == job


async def test_finish_ready(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    await store.heartbeat(job.id, "w1", lease_s=30, progress=40)
    versions = {"original": "https://x/o.jpg", "640x640": "https://x/s.jpg"}
    preview = bytes(range(256))
    done = await store.finish(
        job.id, "w1", JobStatus.READY, image_versions=versions, preview=preview, engine="sandbox"
    )
    assert done is not None
    assert done.status is JobStatus.READY
    assert done.progress == 100
    assert done.image_versions == versions
    assert done.preview == preview
    assert done.engine == "sandbox"
    assert done.lease_owner is None
    assert done.lease_expires_at is None
    assert done.finished_at is not None
    assert await store.get(job.id) == done
    # Finishing twice does nothing: the lease is gone.
    assert await store.finish(job.id, "w1", JobStatus.FAILED, message="late") is None


async def test_finish_failed_keeps_message(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    await store.heartbeat(job.id, "w1", lease_s=30, progress=40)
    done = await store.finish(job.id, "w1", JobStatus.FAILED, message="out of memory")
    assert done is not None
    assert done.status is JobStatus.FAILED
    assert done.progress_message == "out of memory"
    assert done.progress == 40
    assert done.image_versions is None
    assert done.finished_at is not None


async def test_finish_of_deleted_job(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    await store.delete(job.id)
    assert await store.finish(job.id, "w1", JobStatus.READY) is None


# -- interrupt ------------------------------------------------------------------------------


async def test_interrupt_new_job(store: JobStore, user_id: int) -> None:
    job = await store.create(new_job(user_id))
    ended = await store.request_interrupt(job.id)
    assert ended is not None
    assert ended.status is JobStatus.INTERRUPTED
    assert ended.interrupt_requested is True
    assert ended.progress_message
    assert ended.finished_at is not None
    assert await store.claim(job.id, "w1", lease_s=30) is None
    assert await store.waiting() == []


async def test_interrupt_running_job_sets_the_flag_only(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    flagged = await store.request_interrupt(job.id)
    assert flagged is not None
    assert flagged.status is JobStatus.IN_PROGRESS
    assert flagged.interrupt_requested is True
    assert flagged.lease_owner == "w1"
    assert flagged.finished_at is None
    # The worker records the end itself.
    ended = await store.finish(job.id, "w1", JobStatus.INTERRUPTED, message="Interrupted.")
    assert ended is not None
    assert ended.status is JobStatus.INTERRUPTED


async def test_interrupt_finished_or_missing_job(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    done = await store.finish(job.id, "w1", JobStatus.READY, image_versions={"o": "u"})
    assert done is not None
    after = await store.request_interrupt(job.id)
    assert after is not None
    assert after.status is JobStatus.READY
    assert after.interrupt_requested is False
    assert await store.request_interrupt("missing") is None


# -- recovery ---------------------------------------------------------------------------------


async def test_recover_leaves_live_leases_alone(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    recovered = await store.recover_expired(max_attempts=3)
    assert recovered.requeued == []
    assert recovered.failed == []
    assert await store.get(job.id) == job


async def test_recover_requeues_expired_lease(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await _running(store, user_id)
    await _expire(engine, job.id)
    # Its worker's last heartbeat saved 37 %; then it died, and its lease ran out.
    await store.heartbeat(job.id, "w1", lease_s=-60, progress=37)
    recovered = await store.recover_expired(max_attempts=3)
    assert recovered.requeued == [job.id]
    assert recovered.failed == []
    back = await store.get(job.id)
    assert back is not None
    # Still "in progress" to everyone who watched it, with the progress it had shown;
    # only its lease owner is gone, which makes it waiting again.
    assert back.status is JobStatus.IN_PROGRESS
    assert back.progress == 37
    assert back.lease_owner is None
    assert back.lease_expires_at is None
    assert back.attempts == 1
    assert back.waiting
    assert await store.waiting() == [job.id]
    # Another worker can take it, and that is a second attempt.
    again = await store.claim(job.id, "w2", lease_s=30)
    assert again is not None
    assert again.lease_owner == "w2"
    assert again.attempts == 2
    assert again.started_at == job.started_at


async def test_recover_fails_after_max_attempts(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await store.create(new_job(user_id))
    for attempt in range(1, 4):
        claimed = await store.claim(job.id, f"w{attempt}", lease_s=30)
        assert claimed is not None
        assert claimed.attempts == attempt
        await _expire(engine, job.id)
        recovered = await store.recover_expired(max_attempts=3)
        if attempt < 3:
            assert recovered.requeued == [job.id]
        else:
            assert recovered.requeued == []
            assert recovered.failed == [job.id]
    failed = await store.get(job.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.lease_owner is None
    assert failed.finished_at is not None
    message = failed.progress_message
    assert message is not None
    assert "3 times" in message
    assert "crashed" in message or "killed" in message
    assert await store.claim(job.id, "w9", lease_s=30) is None


async def test_recover_ends_interrupt_requested_as_interrupted(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await _running(store, user_id)
    await store.request_interrupt(job.id)
    await _expire(engine, job.id)
    recovered = await store.recover_expired(max_attempts=3)
    assert recovered.requeued == []
    assert job.id in recovered.failed
    ended = await store.get(job.id)
    assert ended is not None
    assert ended.status is JobStatus.INTERRUPTED
    assert ended.progress_message
    assert ended.lease_owner is None
    assert ended.finished_at is not None


async def test_recover_interrupt_wins_over_max_attempts(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    # The user asked for this job to stop, and its worker then died on the last attempt
    # allowed: the job ends as the user asked ("interrupted"), not as a crash loop.
    job = await _running(store, user_id)
    await store.request_interrupt(job.id)
    await _expire(engine, job.id)
    recovered = await store.recover_expired(max_attempts=1)
    assert recovered.failed == [job.id]
    ended = await store.get(job.id)
    assert ended is not None
    assert ended.status is JobStatus.INTERRUPTED
    assert ended.progress_message == "Interrupted."


async def test_recover_sorts_a_mixed_batch(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    live = await _running(store, user_id, "w-live")
    dead = await _running(store, user_id, "w-dead")
    spent = await _running(store, user_id, "w-spent")
    stopped = await _running(store, user_id, "w-stopped")
    await _set(engine, spent.id, attempts=5)
    await store.request_interrupt(stopped.id)
    for j in (dead, spent, stopped):
        await _expire(engine, j.id)
    recovered = await store.recover_expired(max_attempts=5)
    assert recovered.requeued == [dead.id]
    assert sorted(recovered.failed) == sorted([spent.id, stopped.id])
    statuses = {j.id: (await store.get(j.id)).status for j in (live, dead, spent, stopped)}  # type: ignore[union-attr]
    assert statuses == {
        live.id: JobStatus.IN_PROGRESS,
        dead.id: JobStatus.IN_PROGRESS,
        spent.id: JobStatus.FAILED,
        stopped.id: JobStatus.INTERRUPTED,
    }
    # A second pass finds nothing more to do.
    again = await store.recover_expired(max_attempts=5)
    assert again.requeued == []
    assert again.failed == []


async def test_release_owner(store: JobStore, user_id: int) -> None:
    a = await _running(store, user_id, "dead-worker")
    b = await _running(store, user_id, "dead-worker")
    other = await _running(store, user_id, "live-worker")
    # Leases of 30 s have not expired: nothing to recover yet.
    assert (await store.recover_expired(max_attempts=3)).requeued == []
    await store.release_owner("dead-worker")
    recovered = await store.recover_expired(max_attempts=3)
    assert sorted(recovered.requeued) == sorted([a.id, b.id])
    assert recovered.failed == []
    kept = await store.get(other.id)
    assert kept is not None
    assert kept.status is JobStatus.IN_PROGRESS
    assert kept.lease_owner == "live-worker"
    for j in (a, b):
        got = await store.get(j.id)
        assert got is not None
        assert got.status is JobStatus.IN_PROGRESS
        assert got.lease_owner is None
        assert got.waiting


async def test_release_owner_leaves_finished_jobs(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id, "w1")
    done = await store.finish(job.id, "w1", JobStatus.READY, image_versions={"o": "u"})
    await store.release_owner("w1")
    assert await store.get(job.id) == done


# -- waiting ----------------------------------------------------------------------------------


async def test_waiting(store: JobStore, engine: AsyncEngine, user_id: int) -> None:
    first = await store.create(new_job(user_id, prompt="first"))
    second = await store.create(new_job(user_id, prompt="second"))
    third = await store.create(new_job(user_id, prompt="third"))
    fresh = await store.create(new_job(user_id, prompt="fresh"))
    running = await _running(store, user_id)
    interrupted = await store.create(new_job(user_id, prompt="interrupted"))
    await store.request_interrupt(interrupted.id)

    # Everything still "new", oldest first; running and finished jobs are not waiting.
    assert await store.waiting() == [first.id, second.id, third.id, fresh.id]
    assert running.id not in await store.waiting()

    old = utcnow() - timedelta(seconds=120)
    for j in (third, first, second):
        await _set(engine, j.id, updated_at=old)
    await _set(engine, interrupted.id, updated_at=old)
    await _set(engine, running.id, updated_at=old)
    assert await store.waiting(older_than_s=60) == [first.id, second.id, third.id]
    assert await store.waiting(older_than_s=60, limit=2) == [first.id, second.id]
    assert await store.waiting(older_than_s=600) == []


async def test_similar_waiting_finds_jobs_of_the_same_generation(
    store: JobStore, user_id: int
) -> None:
    first = await store.create(new_job(user_id, seed=1))
    same = [await store.create(new_job(user_id, seed=s)) for s in (2, 3, 4)]
    other_size = await store.create(new_job(user_id, width=800))
    other_model = await store.create(new_job(user_id, base_model="flux-schnell"))
    claimed = await store.create(new_job(user_id, seed=9))
    assert await store.claim(claimed.id, "w", lease_s=30) is not None
    found = await store.similar_waiting(first, limit=10)
    assert found == [j.id for j in same]
    assert await store.similar_waiting(first, limit=2) == [same[0].id, same[1].id]
    assert other_size.id not in found
    assert other_model.id not in found
    assert await store.similar_waiting(other_model, limit=5) == []


# -- retries: a job put back stays "in progress" ------------------------------------------------


async def _put_back(store: JobStore, engine: AsyncEngine, job: Job) -> Job:
    await _expire(engine, job.id)
    assert job.id in (await store.recover_expired(max_attempts=5)).requeued
    back = await store.get(job.id)
    assert back is not None
    return back


async def test_a_job_put_back_is_claimed_again_and_waits_like_a_new_one(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await _running(store, user_id, "dead")
    twin = await store.create(new_job(user_id, seed=7))
    back = await _put_back(store, engine, job)
    assert back.status is JobStatus.IN_PROGRESS
    assert back.waiting
    assert (await store.get(twin.id)).waiting  # type: ignore[union-attr]
    # It is a candidate for a batch, and a new job is one for its batch.
    assert await store.similar_waiting(twin, limit=5) == [job.id]
    assert await store.similar_waiting(back, limit=5) == [twin.id]
    again = await store.claim(job.id, "w2", lease_s=30)
    assert again is not None
    assert again.status is JobStatus.IN_PROGRESS
    assert again.lease_owner == "w2"
    assert again.attempts == 2
    assert not again.waiting
    # Held again: nobody else can take it, and it waits no more.
    assert await store.claim(job.id, "w3", lease_s=30) is None
    assert job.id not in await store.waiting()
    assert await store.similar_waiting(twin, limit=5) == []


async def test_interrupting_a_job_put_back_ends_it_at_once(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await _running(store, user_id, "dead")
    await _put_back(store, engine, job)
    ended = await store.request_interrupt(job.id)
    assert ended is not None
    assert ended.status is JobStatus.INTERRUPTED
    assert ended.progress_message == "Interrupted."
    assert ended.finished_at is not None
    assert await store.claim(job.id, "w2", lease_s=30) is None
    assert await store.waiting() == []


async def test_progress_never_goes_down_across_attempts(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job = await _running(store, user_id, "first")
    await store.heartbeat(job.id, "first", lease_s=30, progress=60)
    await _put_back(store, engine, job)
    assert await store.claim(job.id, "second", lease_s=30) is not None
    # The second attempt starts from 0: the row keeps what the first one showed.
    await store.heartbeat(job.id, "second", lease_s=30, progress=10)
    assert (await store.get(job.id)).progress == 60  # type: ignore[union-attr]
    failed = await store.finish(job.id, "second", JobStatus.FAILED, message="no", progress=12)
    assert failed is not None
    assert failed.progress == 60


async def test_finish_keeps_the_highest_progress_below_100(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    await store.heartbeat(job.id, "w1", lease_s=30, progress=40)
    done = await store.finish(job.id, "w1", JobStatus.INTERRUPTED, progress=100)
    assert done is not None
    assert done.progress == 99
    other = await _running(store, user_id)
    await store.heartbeat(other.id, "w1", lease_s=30, progress=40)
    done = await store.finish(other.id, "w1", JobStatus.FAILED, progress=55)
    assert done is not None
    assert done.progress == 55


async def test_raise_progress_only_raises(store: JobStore, user_id: int) -> None:
    job = await _running(store, user_id)
    await store.raise_progress(job.id, 30)
    assert (await store.get(job.id)).progress == 30  # type: ignore[union-attr]
    await store.raise_progress(job.id, 20)
    await store.heartbeat(job.id, "w1", lease_s=30, progress=25)
    assert (await store.get(job.id)).progress == 30  # type: ignore[union-attr]
    done = await store.finish(job.id, "w1", JobStatus.READY, image_versions={"o": "u"})
    assert done is not None
    await store.raise_progress(job.id, 99)
    assert (await store.get(job.id)).progress == 100  # type: ignore[union-attr]
    await store.raise_progress("missing", 50)


async def test_raise_progress_refreshes_a_cached_finished_job(
    engine: AsyncEngine, user_id: int
) -> None:
    store = JobStore(engine, finished_ttl_s=60)
    job = await _running(store, user_id)
    failed = await store.finish(job.id, "w1", JobStatus.FAILED, message="x", progress=10)
    assert failed is not None
    assert (await store.get(job.id)).progress == 10  # type: ignore[union-attr]
    # A poll that read the job running showed 50 just as it failed: the row keeps it,
    # and the cached copy goes.
    await store.raise_progress(job.id, 50)
    assert (await store.get(job.id)).progress == 50  # type: ignore[union-attr]


# -- webhooks ----------------------------------------------------------------------------


async def _ended(
    store: JobStore, engine: AsyncEngine, user_id: int, url: str | None = "http://127.0.0.1:9/h"
) -> str:
    """A job that ended, with a webhook to ``url``."""
    job = await _running(store, user_id)
    await _set(engine, job.id, webhook_url=url)
    assert await store.finish(job.id, "w1", JobStatus.READY, image_versions={}) is not None
    return job.id


async def test_only_ended_jobs_with_a_webhook_are_due(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    running = await store.create(new_job(user_id, webhook_url="http://127.0.0.1:9/h"))
    plain = await _ended(store, engine, user_id, url=None)
    hooked = await _ended(store, engine, user_id)
    due = await store.webhooks_due()
    assert hooked in due
    assert running.id not in due
    assert plain not in due


async def test_a_claim_is_taken_once_until_it_lapses(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job_id = await _ended(store, engine, user_id)
    first = await store.claim_webhook(job_id, hold_s=60)
    assert first is not None
    assert first.webhook_attempts == 1
    assert await store.claim_webhook(job_id, hold_s=60) is None  # another sender holds it
    assert job_id not in await store.webhooks_due()
    # A sender that died leaves a claim that lapses; then the next try may start.
    lapsing = await _ended(store, engine, user_id)
    assert await store.claim_webhook(lapsing, hold_s=0) is not None
    again = await store.claim_webhook(lapsing, hold_s=60)
    assert again is not None
    assert again.webhook_attempts == 2


async def test_a_retry_waits_and_an_end_is_final(
    store: JobStore, engine: AsyncEngine, user_id: int
) -> None:
    job_id = await _ended(store, engine, user_id)
    assert await store.claim_webhook(job_id, hold_s=60) is not None
    await store.retry_webhook(job_id, delay_s=0, result="HTTP 500")
    retried = await store.claim_webhook(job_id, hold_s=60)
    assert retried is not None
    assert retried.webhook_attempts == 2
    assert retried.webhook_result == "HTTP 500"
    await store.end_webhook(job_id, "delivered: HTTP 200")
    assert job_id not in await store.webhooks_due()
    assert await store.claim_webhook(job_id, hold_s=0) is None
    done = await store.get(job_id)
    assert done is not None
    assert done.webhook_done_at is not None
    assert done.webhook_result == "delivered: HTTP 200"


async def test_claim_many_takes_the_waiting_jobs_of_a_batch_at_once(
    store: JobStore, user_id: int
) -> None:
    a, b, c, d = [await store.create(new_job(user_id, prompt=f"p{i}")) for i in range(4)]
    assert await store.claim(b.id, "other", lease_s=30) is not None  # someone else's
    assert await store.request_interrupt(c.id) is not None  # interrupted while waiting
    claimed = await store.claim_many([d.id, a.id, b.id, c.id, "no-such-id"], "w1", lease_s=30)
    assert [j.id for j in claimed] == [d.id, a.id]  # the order asked for, only the waiting
    assert all(j.lease_owner == "w1" and j.attempts == 1 for j in claimed)
    assert all(j.status is JobStatus.IN_PROGRESS for j in claimed)
    assert await store.claim_many([a.id, d.id], "w2", lease_s=30) == []
    assert await store.claim_many([], "w2", lease_s=30) == []
