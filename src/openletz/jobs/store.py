"""Every read and write of the ``jobs`` table.

Each write is one conditional statement in its own transaction, so that
concurrent API servers and workers never lose an update and never need to
read-then-write: the ``WHERE`` clause is the guard, ``RETURNING`` the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.db import SqliteReader, sqlite_twin
from openletz.jobs.status import JobStatus, sources_of
from openletz.jobs.tables import jobs, utcnow

Privacy = Literal["private", "public"]
SortBy = Literal["createdAt", "likes", "regenerations"]
SortOrder = Literal["ASC", "DESC"]


@dataclass(frozen=True, slots=True)
class NewJob:
    user_id: int
    prompt: str
    width: int
    height: int
    quality: int
    creativity: int
    has_watermark: bool
    system_version: int
    mode: str
    seed: int
    base_model: str | None = None
    webhook_url: str | None = None
    privacy: Privacy = "private"


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    user_id: int
    prompt: str
    width: int
    height: int
    quality: int
    creativity: int
    has_watermark: bool
    system_version: int
    mode: str
    seed: int
    base_model: str | None
    webhook_url: str | None
    privacy: Privacy
    status: JobStatus
    progress: int
    progress_message: str | None
    preview: bytes | None
    image_versions: dict[str, str] | None
    engine: str | None
    interrupt_requested: bool
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    dispatches: int
    dispatched_at: datetime | None
    dead_lettered_at: datetime | None
    webhook_attempts: int
    webhook_next_at: datetime | None
    webhook_done_at: datetime | None
    webhook_result: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        values: dict[str, Any] = dict(row)
        values["status"] = JobStatus(values["status"])
        return cls(**values)

    @property
    def waiting(self) -> bool:
        """Whether a worker may claim it: new, or put back for a retry (see ``_WAITING``)."""
        return self.status is JobStatus.NEW or (
            self.status is JobStatus.IN_PROGRESS and self.lease_owner is None
        )


@dataclass(frozen=True, slots=True)
class Recovered:
    """What one reconciliation pass did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def new_job_id() -> str:
    return str(uuid.uuid4())


#: The reason a job fails when the broker dead-lettered its message.
DEAD_LETTERED = (
    "The workers that took this image kept stopping before it was done (its message "
    "reached the broker's delivery limit); giving up."
)
# A waiting job is sent again stale_s after its last send, then after 2, 4, 8 and
# at most 16 times stale_s: a backlog costs a few duplicate messages, never one
# per job and pass.
_BACKOFF_LEVELS = 4
# Names the reconciler's lock among the database's advisory locks (see db.py).
_RECONCILE_LOCK = 0x6F6C7A01


_BY_ID = jobs.select().where(jobs.c.id == sa.bindparam("job_id"))
#: one statement for every new job, its values passed beside it: a statement made
#: with its values is compiled again (its cache key walked) on every POST
_INSERT = jobs.insert().returning(*jobs.c)
#: the end of a ready job (JobStore.finish): the SET clause is made of the keys of
#: the values passed with it, the job and its owner bound as b_id and b_owner
_FINISH_READY = (
    jobs.update()
    .where(
        jobs.c.id == sa.bindparam("b_id"),
        jobs.c.lease_owner == sa.bindparam("b_owner"),
        jobs.c.status.in_([s.value for s in sources_of(JobStatus.READY)]),
    )
    .returning(*jobs.c)
)

# A job waits for a worker while it is new, or while it is "in progress" with no
# lease owner: its worker stopped and recovery put it back for another attempt.
# Its status stays "in progress" (a status never goes back), and so does what
# clients see: the image they watched forming is still being made.
_WAITING = sa.or_(
    jobs.c.status.in_([s.value for s in sources_of(JobStatus.IN_PROGRESS)]),
    sa.and_(jobs.c.status == JobStatus.IN_PROGRESS.value, jobs.c.lease_owner.is_(None)),
)

# A claim lies between a worker's engine calls, on the path of every job: built once
# (SQLAlchemy then reuses its compiled form) rather than built for every call.
# On PostgreSQL a second claimer skips a row another one has locked instead of
# queueing behind it to find it taken; SQLite writes one at a time anyway.
_CLAIMABLE = (
    sa.select(jobs.c.id)
    .where(
        jobs.c.id.in_(sa.bindparam("job_ids", expanding=True)),
        _WAITING,
        jobs.c.interrupt_requested.is_(False),
    )
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    jobs.update()
    .where(jobs.c.id.in_(_CLAIMABLE), _WAITING)
    .values(
        status=JobStatus.IN_PROGRESS.value,
        lease_owner=sa.bindparam("owner", type_=jobs.c.lease_owner.type),
        lease_expires_at=sa.bindparam("expires", type_=jobs.c.lease_expires_at.type),
        attempts=jobs.c.attempts + 1,
        started_at=sa.func.coalesce(
            jobs.c.started_at, sa.bindparam("started", type_=jobs.c.started_at.type)
        ),
        updated_at=sa.bindparam("now", type_=jobs.c.updated_at.type),
    )
    .returning(*jobs.c)
)

# A webhook is sent once its job has ended, and until it is delivered or given up.
_ENDED = [s.value for s in JobStatus if s.is_terminal()]
_WEBHOOK_PENDING = sa.and_(jobs.c.webhook_url.is_not(None), jobs.c.webhook_done_at.is_(None))


def _similar_waiting(base_model: bool) -> sa.Select[Any]:
    """Waiting jobs of one generation but ``job_id``, oldest first: ``base_model``
    says whether the generation names one (compared) or not (NULL)."""
    return (
        sa.select(jobs.c.id)
        .where(
            _WAITING,
            jobs.c.interrupt_requested.is_(False),
            jobs.c.id != sa.bindparam("job_id"),
            jobs.c.system_version == sa.bindparam("system_version"),
            jobs.c.mode == sa.bindparam("mode"),
            jobs.c.base_model == sa.bindparam("base_model")
            if base_model
            else jobs.c.base_model.is_(None),
            jobs.c.width == sa.bindparam("width"),
            jobs.c.height == sa.bindparam("height"),
            jobs.c.quality == sa.bindparam("quality"),
            jobs.c.creativity == sa.bindparam("creativity"),
        )
        .order_by(jobs.c.created_at)
        .limit(sa.bindparam("limit"))
    )


# Asked before each engine call of a worker whose engine batches: built once too.
_SIMILAR_WAITING = {False: _similar_waiting(False), True: _similar_waiting(True)}


def _rows_in_thread(
    engine: sa.Engine, stmt: sa.Executable, values: dict[str, Any] | None, write: bool
) -> Sequence[sa.RowMapping]:
    with engine.begin() if write else engine.connect() as conn:
        return conn.execute(stmt, values).mappings().all()


class JobStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        reader: SqliteReader | None = None,
        finished_ttl_s: float = 0.0,
    ) -> None:
        """``reader`` serves one-row reads without the async driver (SQLite only).

        ``finished_ttl_s`` > 0 keeps finished jobs read by :meth:`get` for that long.
        A finished job changes only by a privacy change or a deletion; those made
        through this store take effect at once, those made by another API server
        within ``finished_ttl_s``. Clients poll finished images too, and the hosted
        API's own clients poll every few seconds: most reads of a job come after it ended.
        """
        self._engine = engine
        self._reader = reader
        self._finished_ttl = finished_ttl_s
        self._finished: dict[str, tuple[float, Job]] = {}
        self._sync: sa.Engine | Literal[False] | None = False

    async def _rows(
        self, stmt: sa.Executable, values: dict[str, Any] | None = None, *, write: bool = True
    ) -> Sequence[sa.RowMapping]:
        """A statement's rows, in a transaction of its own when it ``write``s. On
        SQLite in one thread hop: through aiosqlite, each step of a statement (begin,
        execute, fetch, commit) is a hop to its connection's thread and back."""
        twin = self._twin()
        if twin is not None:
            return await asyncio.to_thread(_rows_in_thread, twin, stmt, values, write)
        async with self._engine.begin() if write else self._engine.connect() as conn:
            return (await conn.execute(stmt, values)).mappings().all()

    def _twin(self) -> sa.Engine | None:
        if self._sync is False:
            self._sync = sqlite_twin(self._engine)
            if self._sync is not None:
                weakref.finalize(self, self._sync.dispose)
        return self._sync

    async def _one(self, stmt: sa.Executable, values: dict[str, Any] | None = None) -> Job | None:
        rows = await self._rows(stmt, values)
        return Job.from_row(rows[0]) if rows else None

    async def _ids(self, stmt: sa.Executable) -> list[str]:
        async with self._engine.begin() as conn:
            return [r[0] for r in (await conn.execute(stmt)).all()]

    # -- the API's side -------------------------------------------------------

    async def create(self, new: NewJob) -> Job:
        now = utcnow()
        values = {
            "id": new_job_id(),
            **{f: getattr(new, f) for f in NewJob.__dataclass_fields__},
            "status": JobStatus.NEW.value,
            "progress": 0,
            "interrupt_requested": False,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        job = await self._one(_INSERT, values)
        assert job is not None
        return job

    async def get(self, job_id: str) -> Job | None:
        if self._finished_ttl > 0:
            hit = self._finished.get(job_id)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        row: Mapping[Any, Any] | None
        if self._reader is not None:
            row = self._reader.first(_BY_ID, {"job_id": job_id})
        else:
            async with self._engine.connect() as conn:
                row = (await conn.execute(_BY_ID, {"job_id": job_id})).mappings().first()
        if row is None:
            return None
        job = Job.from_row(row)
        if self._finished_ttl > 0 and job.status.is_terminal():
            if len(self._finished) >= 10_000:
                self._finished.clear()
            self._finished[job_id] = (time.monotonic() + self._finished_ttl, job)
        return job

    async def list_for_user(
        self,
        user_id: int,
        *,
        page: int,
        limit: int,
        sort_by: SortBy = "createdAt",
        sort_order: SortOrder = "DESC",
    ) -> list[Job]:
        # openletz keeps no likes or regenerations: those orders fall back to creation
        # time, which is what the hosted API does for images nobody has liked.
        direction = sa.desc if sort_order == "DESC" else sa.asc
        stmt = (
            jobs.select()
            .where(jobs.c.user_id == user_id)
            .order_by(direction(jobs.c.created_at), direction(jobs.c.id))
            .limit(limit)
            .offset((page - 1) * limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [Job.from_row(r) for r in rows]

    async def list_public(
        self, *, page: int, limit: int, exclude_user_id: int | None = None
    ) -> list[Job]:
        """Finished public images, newest first (the index on privacy and creation
        time serves the order); ``exclude_user_id`` leaves out one account's own."""
        stmt = jobs.select().where(
            jobs.c.privacy == "public", jobs.c.status == JobStatus.READY.value
        )
        if exclude_user_id is not None:
            stmt = stmt.where(jobs.c.user_id != exclude_user_id)
        stmt = (
            stmt.order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            .limit(limit)
            .offset((page - 1) * limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [Job.from_row(r) for r in rows]

    async def set_privacy(self, job_id: str, privacy: Privacy) -> Job | None:
        stmt = (
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(privacy=privacy, updated_at=utcnow())
            .returning(*jobs.c)
        )
        job = await self._one(stmt)
        self._finished.pop(job_id, None)
        return job

    async def delete(self, job_id: str) -> Job | None:
        job = await self._one(jobs.delete().where(jobs.c.id == job_id).returning(*jobs.c))
        self._finished.pop(job_id, None)
        return job

    async def request_interrupt(self, job_id: str) -> Job | None:
        """Stop a job: a waiting one ends now and never (re)starts; a running one is
        flagged for its worker, which stops within one step and records the end itself."""
        now = utcnow()
        queued = (
            jobs.update()
            .where(jobs.c.id == job_id, _WAITING)
            .values(
                status=JobStatus.INTERRUPTED.value,
                interrupt_requested=True,
                progress_message=sa.case(
                    (jobs.c.attempts > 0, "Interrupted."),
                    else_="Interrupted before it started.",
                ),
                finished_at=now,
                updated_at=now,
            )
            .returning(*jobs.c)
        )
        running = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.status == JobStatus.IN_PROGRESS.value,
                jobs.c.lease_owner.is_not(None),
            )
            .values(interrupt_requested=True, updated_at=now)
            .returning(*jobs.c)
        )
        return await self._one(queued) or await self._one(running) or await self.get(job_id)

    # -- the worker's side ----------------------------------------------------

    async def claim(self, job_id: str, owner: str, lease_s: float) -> Job | None:
        """Take ``job_id`` if it is still waiting (new, or put back for a retry);
        ``None`` when someone else has it, it is finished, or it was interrupted.
        A duplicate or late delivery ends here."""
        claimed = await self.claim_many([job_id], owner, lease_s)
        return claimed[0] if claimed else None

    async def claim_many(self, job_ids: Sequence[str], owner: str, lease_s: float) -> list[Job]:
        """:meth:`claim` of several jobs (a batch) in one statement; the jobs taken,
        in the order of ``job_ids``."""
        if not job_ids:
            return []
        now = utcnow()
        values = {
            "job_ids": list(job_ids),
            "owner": owner,
            "expires": now + timedelta(seconds=lease_s),
            "started": now,
            "now": now,
        }
        rows = await self._rows(_CLAIM, values)
        taken = {row["id"]: Job.from_row(row) for row in rows}
        return [taken[i] for i in dict.fromkeys(job_ids) if i in taken]

    async def heartbeat(
        self, job_id: str, owner: str, lease_s: float, progress: int
    ) -> tuple[bool, bool]:
        """Extend the lease and persist progress. Returns ``(still_ours, interrupt_requested)``;
        a worker whose lease was taken away must stop and write nothing more."""
        now = utcnow()
        stmt = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.lease_owner == owner,
                jobs.c.status == JobStatus.IN_PROGRESS.value,
            )
            .values(
                lease_expires_at=now + timedelta(seconds=lease_s),
                progress=self._at_least(progress),
                updated_at=now,
            )
            .returning(jobs.c.interrupt_requested)
        )
        rows = await self._rows(stmt)
        return (bool(rows), bool(rows[0]["interrupt_requested"]) if rows else False)

    async def finish(
        self,
        job_id: str,
        owner: str,
        status: JobStatus,
        *,
        message: str | None = None,
        image_versions: dict[str, str] | None = None,
        preview: bytes | None = None,
        engine: str | None = None,
        progress: int | None = None,
    ) -> Job | None:
        """Record the end of a job this worker holds; ``None`` if the lease was lost
        (or the job deleted) meanwhile, in which case the caller discards its output.

        ``progress`` is what this attempt reached; the row keeps the highest progress
        of every attempt (clients saw it), and 100 is for "ready" alone."""
        assert status.is_terminal()
        now = utcnow()
        values: dict[str, Any] = {
            "status": status.value,
            "progress_message": message,
            "lease_owner": None,
            "lease_expires_at": None,
            "finished_at": now,
            "updated_at": now,
        }
        if status is JobStatus.READY:
            values.update(progress=100, image_versions=image_versions, preview=preview)
        elif progress is not None:
            values["progress"] = self._at_least(min(progress, 99))
            if preview is not None:
                values["preview"] = preview
        if engine is not None:
            values["engine"] = engine
        if status is JobStatus.READY:
            # Every finished image's end: one statement, its values passed beside it.
            return await self._one(_FINISH_READY, {**values, "b_id": job_id, "b_owner": owner})
        stmt = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.lease_owner == owner,
                jobs.c.status.in_([s.value for s in sources_of(status)]),
            )
            .values(values)
            .returning(*jobs.c)
        )
        return await self._one(stmt)

    def _at_least(self, progress: int) -> sa.ColumnElement[int]:
        """The row's progress, raised to ``progress`` if that is higher: the high-water
        mark of everything shown, which no write lowers."""
        greatest = sa.func.max if self._engine.dialect.name == "sqlite" else sa.func.greatest
        result: sa.ColumnElement[int] = greatest(jobs.c.progress, progress)
        return result

    async def raise_progress(self, job_id: str, progress: int) -> None:
        """Keep ``progress`` in the row if it is higher than what the row holds: the API
        calls this before it shows a client live progress, so that a poll after any
        restart or retry never shows less."""
        stmt = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.progress < progress)
            .values(progress=progress)
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)
        self._finished.pop(job_id, None)

    # -- recovery -------------------------------------------------------------

    async def release_owner(self, owner: str) -> None:
        """Expire the leases of a worker known to be dead, so that recovery runs now."""
        stmt = (
            jobs.update()
            .where(jobs.c.lease_owner == owner, jobs.c.status == JobStatus.IN_PROGRESS.value)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def recover_expired(self, max_attempts: int, *, only: str | None = None) -> Recovered:
        """Put back the jobs whose worker stopped renewing its lease, or fail those
        that already used every attempt (a job that kills its worker each time) or
        whose message the broker dead-lettered. ``only`` limits it to one job.

        A job put back keeps its status, "in progress", and its progress: only its
        lease owner goes, which makes it claimable again (``_WAITING``)."""
        now = utcnow()
        expired = sa.and_(
            jobs.c.status == JobStatus.IN_PROGRESS.value, jobs.c.lease_expires_at < now
        )
        if only is not None:
            expired = sa.and_(expired, jobs.c.id == only)
        dead = (
            jobs.update()
            .where(expired, jobs.c.dead_lettered_at.is_not(None))
            .values(
                status=JobStatus.FAILED.value,
                progress_message=DEAD_LETTERED,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
            )
            .returning(jobs.c.id)
        )
        fail = (
            jobs.update()
            .where(expired, jobs.c.attempts >= max_attempts)
            .values(
                status=JobStatus.FAILED.value,
                progress_message=(
                    f"The worker stopped during this image {max_attempts} times "
                    "(it crashed or was killed); giving up."
                ),
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
            )
            .returning(jobs.c.id)
        )
        interrupted = (
            jobs.update()
            .where(expired, jobs.c.interrupt_requested.is_(True))
            .values(
                status=JobStatus.INTERRUPTED.value,
                progress_message="Interrupted.",
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
            )
            .returning(jobs.c.id)
        )
        requeue = (
            jobs.update()
            .where(expired)
            .values(
                lease_owner=None,
                lease_expires_at=None,
                # A broker redelivers the dead worker's message; others send it now.
                dispatched_at=now,
                updated_at=now,
            )
            .returning(jobs.c.id)
        )
        # An interruption the user asked for wins over giving up: run it first.
        failed = await self._ids(interrupted)
        failed += await self._ids(dead)
        failed += await self._ids(fail)
        return Recovered(requeued=await self._ids(requeue), failed=failed)

    async def similar_waiting(self, job: Job, *, limit: int) -> list[str]:
        """Other waiting jobs that ask for exactly the same generation as ``job``
        (model slot, size, steps, guidance), oldest first: candidates for its batch."""
        if limit <= 0:
            return []
        values = {
            "job_id": job.id,
            "system_version": job.system_version,
            "mode": job.mode,
            "base_model": job.base_model,
            "width": job.width,
            "height": job.height,
            "quality": job.quality,
            "creativity": job.creativity,
            "limit": limit,
        }
        stmt = _SIMILAR_WAITING[job.base_model is not None]
        rows = await self._rows(stmt, values, write=False)
        return [row["id"] for row in rows]

    async def waiting(self, *, older_than_s: float = 0.0, limit: int = 1000) -> Sequence[str]:
        """Ids of waiting jobs (oldest first), for re-dispatch after a restart."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        stmt = (
            sa.select(jobs.c.id)
            .where(_WAITING, jobs.c.updated_at <= cutoff)
            .order_by(jobs.c.created_at)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            return [r[0] for r in (await conn.execute(stmt)).all()]

    # -- dispatch -------------------------------------------------------------

    def _due(self, stale_s: float, now: datetime) -> sa.ColumnElement[bool]:
        """Waiting jobs whose last send (or creation) is older than their backoff."""
        last = sa.func.coalesce(jobs.c.dispatched_at, jobs.c.created_at)
        levels = [
            sa.and_(
                jobs.c.dispatches == level
                if level < _BACKOFF_LEVELS
                else jobs.c.dispatches >= level,
                last <= now - timedelta(seconds=stale_s * 2**level),
            )
            for level in range(_BACKOFF_LEVELS + 1)
        ]
        return sa.and_(_WAITING, jobs.c.interrupt_requested.is_(False), sa.or_(*levels))

    async def take_due_dispatches(self, *, stale_s: float, limit: int = 500) -> list[str]:
        """Claim the sending again of waiting jobs that no worker took in time: each
        id returned has ``dispatches`` raised and ``dispatched_at`` set to now, in
        one conditional statement, so that two reconcilers never both send one job."""
        now = utcnow()
        due = self._due(stale_s, now)
        candidates = (
            sa.select(jobs.c.id)
            .where(due)
            .order_by(jobs.c.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            jobs.update()
            .where(jobs.c.id.in_(candidates), due)
            .values(dispatches=jobs.c.dispatches + 1, dispatched_at=now)
            .returning(jobs.c.id)
        )
        return await self._ids(stmt)

    async def waited_longer_than(self, seconds: float, *, limit: int = 500) -> list[str]:
        """Waiting jobs unchanged for ``seconds`` (oldest first): candidates to give up."""
        stmt = (
            sa.select(jobs.c.id)
            .where(
                _WAITING,
                jobs.c.interrupt_requested.is_(False),
                jobs.c.updated_at <= utcnow() - timedelta(seconds=seconds),
            )
            .order_by(jobs.c.created_at)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            return [r[0] for r in (await conn.execute(stmt)).all()]

    async def fail_waiting(self, job_ids: Sequence[str], message: str) -> list[str]:
        """Fail those of ``job_ids`` that are still waiting, with ``message``."""
        if not job_ids:
            return []
        now = utcnow()
        stmt = (
            jobs.update()
            .where(jobs.c.id.in_(list(job_ids)), _WAITING)
            .values(
                status=JobStatus.FAILED.value,
                progress_message=message,
                finished_at=now,
                updated_at=now,
            )
            .returning(jobs.c.id)
        )
        failed = await self._ids(stmt)
        for job_id in failed:
            self._finished.pop(job_id, None)
        return failed

    async def dead_lettered(self, job_id: str) -> Literal["failed", "marked", "ignored"]:
        """The broker dead-lettered ``job_id``'s message: every worker that took it
        stopped. A waiting job, or one whose lease ran out, fails now; one that a
        worker still holds is marked, and fails when its lease runs out (recovery)
        unless that worker finishes it. An ended or deleted job is left alone."""
        now = utcnow()
        fail = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.interrupt_requested.is_(False),
                sa.or_(
                    _WAITING,
                    sa.and_(
                        jobs.c.status == JobStatus.IN_PROGRESS.value,
                        jobs.c.lease_expires_at < now,
                    ),
                ),
            )
            .values(
                status=JobStatus.FAILED.value,
                progress_message=DEAD_LETTERED,
                lease_owner=None,
                lease_expires_at=None,
                dead_lettered_at=now,
                finished_at=now,
                updated_at=now,
            )
            .returning(jobs.c.id)
        )
        if await self._ids(fail):
            return "failed"
        mark = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.status == JobStatus.IN_PROGRESS.value,
                jobs.c.dead_lettered_at.is_(None),
            )
            .values(dead_lettered_at=now)
            .returning(jobs.c.id)
        )
        return "marked" if await self._ids(mark) else "ignored"

    @contextlib.asynccontextmanager
    async def reconcile_lock(self) -> AsyncIterator[bool]:
        """Whether this process may reconcile now: on PostgreSQL one API server at a
        time (an advisory lock, released when the block ends or its connection
        dies); elsewhere always."""
        if self._engine.dialect.name != "postgresql":
            yield True
            return
        async with self._engine.connect() as conn:
            got = bool(
                (
                    await conn.execute(sa.select(sa.func.pg_try_advisory_lock(_RECONCILE_LOCK)))
                ).scalar()
            )
            await conn.commit()
            try:
                yield got
            finally:
                if got:
                    try:
                        await conn.execute(sa.select(sa.func.pg_advisory_unlock(_RECONCILE_LOCK)))
                        await conn.commit()
                    except BaseException:
                        # Closing the session is what releases a lock for sure.
                        await conn.invalidate()
                        raise

    # -- webhooks (openletz.api.webhooks) -----------------------------------------

    async def webhooks_due(self, *, limit: int = 100) -> list[str]:
        """Ended jobs whose webhook may be sent now (its next try is due), oldest first."""
        stmt = (
            sa.select(jobs.c.id)
            .where(
                _WEBHOOK_PENDING,
                jobs.c.status.in_(_ENDED),
                sa.or_(jobs.c.webhook_next_at.is_(None), jobs.c.webhook_next_at <= utcnow()),
            )
            .order_by(jobs.c.finished_at)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            return [r[0] for r in (await conn.execute(stmt)).all()]

    async def claim_webhook(self, job_id: str, *, hold_s: float) -> Job | None:
        """Take the next try of ``job_id``'s webhook, if it is due and nobody has it:
        its next try moves ``hold_s`` ahead, so no other sender starts one meanwhile."""
        now = utcnow()
        stmt = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                _WEBHOOK_PENDING,
                jobs.c.status.in_(_ENDED),
                sa.or_(jobs.c.webhook_next_at.is_(None), jobs.c.webhook_next_at <= now),
            )
            .values(
                webhook_attempts=jobs.c.webhook_attempts + 1,
                webhook_next_at=now + timedelta(seconds=hold_s),
            )
            .returning(*jobs.c)
        )
        return await self._one(stmt)

    async def retry_webhook(self, job_id: str, *, delay_s: float, result: str) -> None:
        stmt = (
            jobs.update()
            .where(jobs.c.id == job_id, _WEBHOOK_PENDING)
            .values(webhook_next_at=utcnow() + timedelta(seconds=delay_s), webhook_result=result)
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def end_webhook(self, job_id: str, result: str) -> None:
        """The webhook was delivered, or given up: it is never sent again."""
        stmt = (
            jobs.update()
            .where(jobs.c.id == job_id, _WEBHOOK_PENDING)
            .values(webhook_done_at=utcnow(), webhook_result=result)
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)
