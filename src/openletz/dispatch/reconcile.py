"""Keeping the queue in step with the database, whatever the transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from openletz.jobs.store import JobStore
from openletz.settings import Settings

log = logging.getLogger(__name__)


class Reconciler:
    """On a timer (or at once, when told a worker died): jobs whose lease ran out
    go back to waiting, or fail past the attempt limit; waiting jobs that no worker
    took in time (a crash between the insert and the hand-off, a message lost) are
    sent again, each at most once per ``stale_new_s``, then twice as long, and so
    on (see :meth:`JobStore.take_due_dispatches`).

    On PostgreSQL one API server reconciles at a time (an advisory lock); every
    write is a conditional statement anyway, and claims are atomic.

    Transports differ in what they keep. The embedded dispatcher's queue lives in
    memory: at start every waiting job is sent, and a recovered job is sent at
    once. A broker keeps its messages and redelivers a dead worker's, so neither
    happens with ``broker=True``; a subclass may also read dead letters and give
    up on jobs that no worker can take (:meth:`before_pass`, :meth:`give_up`)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        send: Callable[[str], Awaitable[None]],
        *,
        broker: bool = False,
    ) -> None:
        self._settings = settings
        self._store = store
        self._send = send
        self._broker = broker
        self._now = asyncio.Event()
        self._started = False

    def wake(self) -> None:
        self._now.set()

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception:
                log.exception("reconciliation failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self._settings.reconcile_interval_s)
            self._now.clear()

    async def once(self) -> None:
        async with self._store.reconcile_lock() as leader:
            if leader:
                await self._pass()

    async def _pass(self) -> None:
        settings = self._settings
        await self.before_pass()
        recovered = await self._store.recover_expired(settings.max_attempts)
        if recovered.requeued or recovered.failed:
            log.warning(
                "recovered jobs of stopped workers: put back %s, ended %s",
                recovered.requeued,
                recovered.failed,
            )
        if not self._broker:
            if self._started:
                await self._send_all(recovered.requeued)
            else:
                # The queue was in this process's memory: whatever waits is sent again.
                await self._send_all(await self._store.waiting())
        self._started = True
        due = await self._store.take_due_dispatches(stale_s=settings.stale_new_s)
        if due:
            log.warning("sending again %d job(s) that no worker took in time", len(due))
            await self._send_all(due)
        stale = await self._store.waited_longer_than(settings.max_queue_wait_s)
        if stale:
            await self.give_up(stale)

    async def _send_all(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            try:
                await self._send(job_id)
            except Exception as exc:
                # The transport is down: the rest are due again after their backoff.
                log.warning("could not send job %s (%s); trying again later", job_id, exc)
                return

    async def before_pass(self) -> None:
        """A transport's own work at the start of each pass (dead letters)."""

    async def give_up(self, job_ids: Sequence[str]) -> None:
        """``job_ids`` have waited ``max_queue_wait_s``: a transport that can tell
        that no worker serves them fails them with a reason. By default nothing:
        the embedded dispatcher always has workers."""
