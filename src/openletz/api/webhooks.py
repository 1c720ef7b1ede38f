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

A webhook is never sent to an address in ``OPENLETZ_WEBHOOK_BLOCKED_NETWORKS``
(by default the link-local networks, where clouds serve each machine's metadata
and credentials, and addresses of no single host): anyone with a key names the
URL, and the server would otherwise fetch from inside its own network for them.
The check is made on the very address connected to (:class:`GuardedTransport`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence

import httpx

from openletz import __version__
from openletz.api.presenter import Presenter
from openletz.jobs.store import JobStore
from openletz.settings import DEFAULT_BLOCKED_NETWORKS, Network, parse_networks

log = logging.getLogger(__name__)

#: how long a claimed delivery is held before another sender may take it over
CLAIM_S = 60.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: (host, port) -> the host's addresses, in the order to try them
Resolver = Callable[[str, int], Awaitable[list[str]]]


def _proxied() -> bool:
    """Whether the environment names a proxy for HTTP or HTTPS requests."""
    return any(scheme in urllib.request.getproxies() for scheme in ("http", "https", "all"))


class BlockedAddress(httpx.TransportError):
    """The webhook's host is, or resolves only to, addresses of blocked networks."""


async def _system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedTransport(httpx.AsyncBaseTransport):
    """Sends each request to the first address of its host that no blocked network
    holds, by connecting to that address itself (the ``Host`` header and the TLS
    server name stay the host's): a name that resolves to another address by the
    time of the connection, as DNS rebinding makes it, cannot lead it elsewhere."""

    def __init__(
        self,
        blocked: Sequence[Network],
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        resolve: Resolver = _system_resolve,
    ) -> None:
        self._blocked = list(blocked)
        self._inner = inner or httpx.AsyncHTTPTransport()
        self._resolve = resolve

    def blocks(self, address: str) -> bool:
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])  # no IPv6 zone
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 reaches 169.254.169.254
        return any(ip.version == net.version and ip in net for net in self._blocked)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.raw_host.decode("ascii")  # a unicode name as IDNA
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        addresses = [host] if _is_address(host) else await self._addresses(request, host, port)
        allowed = [a for a in addresses if not self.blocks(a)]
        if not allowed:
            where = host if addresses == [host] else f"{host} ({', '.join(addresses)})"
            raise BlockedAddress(
                f"{where} is in a blocked network (OPENLETZ_WEBHOOK_BLOCKED_NETWORKS)",
                request=request,
            )
        if allowed[0] != host:
            headers = request.headers.copy()
            headers["Host"] = request.url.netloc.decode("ascii")
            request = httpx.Request(
                request.method,
                request.url.copy_with(host=allowed[0]),
                headers=headers,
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": host},
            )
        return await self._inner.handle_async_request(request)

    async def _addresses(self, request: httpx.Request, host: str, port: int) -> list[str]:
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"{host}: {exc}", request=request) from exc
        if not addresses:
            raise httpx.ConnectError(f"{host} resolves to no address", request=request)
        return addresses

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
        blocked_networks: Sequence[str] = DEFAULT_BLOCKED_NETWORKS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``transport`` is what sends the requests (tests give one of their own);
        with none, a :class:`GuardedTransport` keeps them out of
        ``blocked_networks``."""
        self._jobs = jobs
        self._presenter = presenter
        self._secret = secret
        # Seconds to wait after each failed try: one try more than there are delays.
        self._delays = tuple(retry_delays_s)
        self._interval_s = interval_s
        self._concurrency = concurrency
        self._clock = clock
        networks = parse_networks(blocked_networks)
        if transport is None and networks:
            if _proxied():
                # The proxy connects, and is where such a rule belongs; httpx
                # uses the environment's proxies only with its own transport.
                log.warning(
                    "webhooks go through the proxy of this environment, which must "
                    "keep them out of OPENLETZ_WEBHOOK_BLOCKED_NETWORKS itself"
                )
            else:
                transport = GuardedTransport(networks)
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
            try:
                outcome = await self._post(job.webhook_url, body, headers)
            except BlockedAddress as exc:
                # Trying again would only find the same addresses.
                reason = "not sent: " + f"{type(exc).__name__}: {exc}"[:500]
                await self._jobs.end_webhook(job.id, reason)
                log.warning("webhook of %s %s", job.id, reason)
                return True
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
        """The status code as text, or what went wrong; raises
        :class:`BlockedAddress`, which no later try changes."""
        try:
            resp = await self._http.post(url, content=body, headers=headers)
        except BlockedAddress:
            raise
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        return (
            str(resp.status_code)
            if resp.is_success or resp.status_code == 410
            else (f"HTTP {resp.status_code}")
        )
