"""Webhooks: the image object, POSTed to a job's ``webhookUrl`` once it has ended.

The body is the very JSON that ``GET /images/{id}`` returns at that moment. The
database holds each delivery's state (``webhook_*`` columns), so a webhook
survives any crash and restart: a sender claims a delivery with a conditional
update that puts its next try a lease ahead, so of several API servers exactly
one sends it, and a sender that dies mid-send leaves it to be tried again once
the lease has passed. A receiver may thus see a delivery twice, never zero times
while it answers 2xx within the retries; the ``X-Openletz-Delivery`` header (the
image id and the attempt) tells repeats apart.

A 2xx answer delivers it; 410 Gone ends it at once; anything else (or no answer)
is tried again after 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h (by default:
``OPENLETZ_WEBHOOK_RETRY_DELAYS_S``), then given up.
With ``OPENLETZ_WEBHOOK_SECRET`` set, each delivery carries
``X-Openletz-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence

import httpx

from openletz import __version__
from openletz.api.presenter import Presenter
from openletz.jobs.store import JobStore

log = logging.getLogger(__name__)

#: how long a claimed delivery is held before another sender may take it over
CLAIM_S = 60.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The value of ``X-Openletz-Signature`` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0) -> bool:
    """Whether ``header`` is a valid signature of ``body``, made at most
    ``tolerance_s`` ago: what a receiver in Python does with a delivery."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class WebhookSender:
    """Finds ended jobs whose webhook is due and sends it, a few at a time."""

    def __init__(
        self,
        jobs: JobStore,
        presenter: Presenter,
        *,
        secret: str = "",
        retry_delays_s: Sequence[float] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0),
        timeout_s: float = 10.0,
        interval_s: float = 0.5,
        concurrency: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._jobs = jobs
        self._presenter = presenter
        self._secret = secret
        # Seconds to wait after each failed try: one try more than there are delays.
        self._delays = tuple(retry_delays_s)
        self._interval_s = interval_s
        self._concurrency = concurrency
        self._clock = clock
        self._http = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            transport=transport,
            headers={"User-Agent": f"openletz/{__version__} (webhook)"},
        )
        self._task: asyncio.Task[None] | None = None
        self._sending: set[str] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="openletz-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be away for a moment: try again later
                log.exception("webhooks: could not look for due deliveries")
            await asyncio.sleep(self._interval_s)

    async def once(self) -> int:
        """Send every delivery due now (at most a batch of them); how many were tried."""
        due = [
            i
            for i in await self._jobs.webhooks_due(limit=self._concurrency * 4)
            if i not in self._sending
        ]
        limit = asyncio.Semaphore(self._concurrency)

        async def one(job_id: str) -> bool:
            async with limit:
                return await self.deliver(job_id)

        results = await asyncio.gather(*(one(i) for i in due))
        return sum(results)

    async def deliver(self, job_id: str) -> bool:
        """Claim and send one delivery; False if another sender has it or it is not due."""
        job = await self._jobs.claim_webhook(job_id, hold_s=CLAIM_S)
        if job is None or job.webhook_url is None:
            return False
        self._sending.add(job_id)
        try:
            body = await self._presenter.image_json(job)
            attempt = job.webhook_attempts
            headers = {
                "Content-Type": "application/json",
                "X-Openletz-Delivery": f"{job.id}/{attempt}",
            }
            if self._secret:
                headers["X-Openletz-Signature"] = sign(self._secret, int(self._clock()), body)
            outcome = await self._post(job.webhook_url, body, headers)
            if outcome.startswith("2"):
                await self._jobs.end_webhook(job.id, f"delivered: HTTP {outcome}")
            elif outcome == "410":
                await self._jobs.end_webhook(job.id, "the receiver answered 410 Gone")
            elif attempt > len(self._delays):
                await self._jobs.end_webhook(job.id, f"gave up after {attempt} attempts: {outcome}")
                log.warning("webhook of %s given up after %d attempts", job.id, attempt)
            else:
                delay = self._delays[attempt - 1]
                await self._jobs.retry_webhook(job.id, delay_s=delay, result=outcome)
                log.info("webhook of %s failed (%s); next try in %.0f s", job.id, outcome, delay)
            return True
        finally:
            self._sending.discard(job_id)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str:
        """The status code as text, or what went wrong."""
        try:
            resp = await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        return (
            str(resp.status_code)
            if resp.is_success or resp.status_code == 410
            else (f"HTTP {resp.status_code}")
        )
