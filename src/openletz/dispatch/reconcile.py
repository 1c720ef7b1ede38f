"""Keeping the queue in step with the database, whatever the transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from openletz.jobs.store import JobStore
from openletz.settings import Settings

log = logging.getLogger(__name__)


class Reconciler:
    """On a timer (or at once, when told a worker died): jobs whose lease ran out
    go back to the queue, or fail past the attempt limit; jobs left ``new`` too
    long (a crash between the insert and the hand-off) are sent again. At start,
    every waiting job is sent. Running it in several API servers is harmless:
    every write is a conditional statement, and claims are atomic."""

    def __init__(
        self, settings: Settings, store: JobStore, send: Callable[[str], Awaitable[None]]
    ) -> None:
        self._settings = settings
        self._store = store
        self._send = send
        self._now = asyncio.Event()

    def wake(self) -> None:
        self._now.set()

    async def run(self) -> None:
        first = True
        while True:
            try:
                await self.once(stale_s=0.0 if first else self._settings.stale_new_s)
                first = False
            except Exception:
                log.exception("reconciliation failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self._settings.reconcile_interval_s)
            self._now.clear()

    async def once(self, *, stale_s: float) -> None:
        recovered = await self._store.recover_expired(self._settings.max_attempts)
        for job_id in recovered.requeued:
            await self._send(job_id)
        if recovered.requeued or recovered.failed:
            log.warning(
                "recovered jobs of stopped workers: requeued %s, failed %s",
                recovered.requeued,
                recovered.failed,
            )
        for job_id in await self._store.waiting(older_than_s=stale_s):
            await self._send(job_id)
