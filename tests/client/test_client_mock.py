"""The SDK against the hosted API's shapes, through httpx's mock transport.

Each test stands in a server as a function of the request; a fake clock makes
waits instant and records every sleep.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from openletz.client import (
    HOSTED_BASE_URL,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConfigurationError,
    Image,
    ImageFailedError,
    ImageNotReadyError,
    ImageStatus,
    InvalidResponseError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    Progress,
    RateLimitError,
    ServerError,
    WaitTimeoutError,
    _client,
)

KEY = "hosted-key-123"
CDN = "https://cdn.example.test"
Handler = Callable[[httpx.Request], httpx.Response]
Hosted = Callable[[Handler], Client]


def hosted_image(**fields: Any) -> dict[str, Any]:
    """An image object as the hosted API sends it: the seed's fields and more."""
    return {
        "id": "8b1d6c0e-0000-4000-8000-000000000001",
        "prompt": "a lighthouse at dusk",
        "status": "new",
        "progress": 0,
        "previewImage": None,
        "hasWatermark": True,
        "privacy": "private",
        "createdAt": "2026-11-25T03:40:05.048Z",
        "imageVersions": {},
        # Fields the hosted API has and openletz does not.
        "likes": 3,
        "user": {"id": "u1", "username": "someone"},
        **fields,
    }


def error(status: int, message: Any, err: str) -> httpx.Response:
    return httpx.Response(status, json={"statusCode": status, "message": message, "error": err})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(_client, "_now", fake.monotonic)
    monkeypatch.setattr(_client, "_sleep", fake.sleep)
    return fake


@pytest.fixture
def hosted() -> Iterator[Hosted]:
    clients: list[Client] = []

    def make(handler: Handler) -> Client:
        c = Client(KEY, base_url=HOSTED_BASE_URL, transport=httpx.MockTransport(handler))
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def test_create_sends_only_the_given_fields_and_reads_201(hosted: Hosted) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=hosted_image())

    image = hosted(handler).create("a lighthouse at dusk", width=1600, has_watermark=False)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://api.letz.ai/images"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    # No seed, no defaults: the hosted API refuses fields it does not know.
    assert json.loads(request.content) == {
        "prompt": "a lighthouse at dusk",
        "width": 1600,
        "hasWatermark": False,
    }
    assert image.status is ImageStatus.NEW
    assert not image.is_done
    assert image.created_at == datetime(2026, 11, 25, 3, 40, 5, 48000, tzinfo=UTC)
    assert image.width is None  # an openletz field the hosted API does not send
    assert image.model_extra == {"likes": 3, "user": {"id": "u1", "username": "someone"}}
    assert image.to_api()["likes"] == 3
    assert image.to_api()["hasWatermark"] is True


def test_create_names_every_field_in_camel_case(hosted: Hosted) -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=hosted_image())

    hosted(handler).create(
        "p",
        width=520,
        height=600,
        quality=3,
        creativity=4,
        has_watermark=True,
        system_version=3,
        mode="turbo",
        seed=7,
        base_model="sdxl",
        webhook_url="https://hook.example.test/x",
    )
    assert bodies == [
        {
            "prompt": "p",
            "width": 520,
            "height": 600,
            "quality": 3,
            "creativity": 4,
            "hasWatermark": True,
            "systemVersion": 3,
            "mode": "turbo",
            "seed": 7,
            "baseModel": "sdxl",
            "webhookUrl": "https://hook.example.test/x",
        }
    ]


@pytest.mark.parametrize(
    ("response", "cls", "message", "err"),
    [
        (
            error(
                400,
                ["width must not be greater than 2160", "property seed should not exist"],
                "Bad Request",
            ),
            BadRequestError,
            "width must not be greater than 2160; property seed should not exist",
            "Bad Request",
        ),
        (
            error(401, "Unauthorized", "Unauthorized"),
            AuthenticationError,
            "Unauthorized",
            "Unauthorized",
        ),
        (
            error(402, "Not enough credits", "Payment Required"),
            PaymentRequiredError,
            "Not enough credits",
            "Payment Required",
        ),
        (
            error(403, "Forbidden resource", "Forbidden"),
            PermissionDeniedError,
            "Forbidden resource",
            "Forbidden",
        ),
        (error(404, "Image not found", "Not Found"), NotFoundError, "Image not found", "Not Found"),
        # No message: the error, then the text, then the reason phrase.
        (
            httpx.Response(500, json={"error": "Internal Server Error"}),
            ServerError,
            "Internal Server Error",
            "Internal Server Error",
        ),
        (
            httpx.Response(502, text="<html><body>\n  Bad gateway\n</body></html>"),
            ServerError,
            "<html><body> Bad gateway </body></html>",
            "Bad Gateway",
        ),
        (httpx.Response(418, json={"statusCode": 418}), APIError, "I'm a Teapot", "I'm a Teapot"),
    ],
)
def test_errors_carry_status_and_message(
    hosted: Hosted, response: httpx.Response, cls: type[APIError], message: str, err: str
) -> None:
    client = hosted(lambda request: response)
    with pytest.raises(cls) as info:
        client.get("some-id")
    exc = info.value
    assert type(exc) is cls
    assert exc.status_code == response.status_code
    assert exc.message == message
    assert exc.error == err
    assert str(exc) == f"{response.status_code} {err}: {message}"
    assert "\n" not in str(exc)


def test_rate_limit_carries_retry_after(hosted: Hosted) -> None:
    response = error(429, "Too Many Requests", "Too Many Requests")
    response.headers["Retry-After"] = "7"
    with pytest.raises(RateLimitError) as info:
        hosted(lambda request: response).create("p")
    assert info.value.retry_after == 7.0
    assert info.value.status_code == 429


def test_wait_polls_every_3_s_and_reports_progress(hosted: Hosted, clock: FakeClock) -> None:
    preview = "/9j/4AAQSkZJRg=="  # the start of a JPEG, in base64
    states = iter(
        [
            hosted_image(status="new"),
            hosted_image(status="in progress", progress=40, previewImage=preview),
            hosted_image(
                status="in progress", progress=80, previewImage=f"data:image/jpeg;base64,{preview}"
            ),
            hosted_image(status="ready", progress=100, imageVersions={"original": f"{CDN}/o.png"}),
        ]
    )
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200, json=next(states))

    seen: list[Progress] = []
    image = hosted(handler).wait(hosted_image()["id"], on_progress=seen.append)
    assert image.is_ready
    assert image.image_versions == {"original": f"{CDN}/o.png"}
    assert paths == [f"/images/{image.id}"] * 4
    assert clock.sleeps == [3.0, 3.0, 3.0]
    assert [(p.status, p.progress) for p in seen] == [
        (ImageStatus.NEW, 0),
        (ImageStatus.IN_PROGRESS, 40),
        (ImageStatus.IN_PROGRESS, 80),
        (ImageStatus.READY, 100),
    ]
    assert seen[0].preview is None
    assert seen[1].preview is not None
    assert seen[1].preview.startswith(b"\xff\xd8")
    assert seen[2].preview == seen[1].preview
    assert [p.elapsed for p in seen] == [0.0, 3.0, 6.0, 9.0]
    assert seen[-1].image is image


def test_wait_honours_retry_after_in_seconds_and_as_a_date(
    hosted: Hosted, clock: FakeClock
) -> None:
    limited = error(429, "Too Many Requests", "Too Many Requests")
    limited.headers["Retry-After"] = "12"
    later = datetime.now(UTC) + timedelta(seconds=30)
    dated = error(503, "Service Unavailable", "Service Unavailable")
    dated.headers["Retry-After"] = format_datetime(later, usegmt=True)
    answers = iter(
        [limited, dated, httpx.Response(200, json=hosted_image(status="ready", progress=100))]
    )
    image = hosted(lambda request: next(answers)).wait("x", poll_interval=1)
    assert image.is_ready
    assert clock.sleeps[0] == 12.0
    assert 25 < clock.sleeps[1] <= 30


def test_a_rate_limit_without_retry_after_waits_one_interval(
    hosted: Hosted, clock: FakeClock
) -> None:
    answers = iter(
        [
            error(429, "slow down", "Too Many Requests"),
            httpx.Response(200, json=hosted_image(status="ready")),
        ]
    )
    hosted(lambda request: next(answers)).wait("x")
    assert clock.sleeps == [3.0]


def test_wait_gives_up_at_its_timeout_with_the_last_image(hosted: Hosted, clock: FakeClock) -> None:
    client = hosted(
        lambda r: httpx.Response(200, json=hosted_image(status="in progress", progress=30))
    )
    with pytest.raises(WaitTimeoutError) as info:
        client.wait("x", timeout=10)
    # Polls at 0, 3, 6, 9 and a last one at the deadline.
    assert clock.sleeps == [3.0, 3.0, 3.0, 1.0]
    assert info.value.image is not None
    assert info.value.image.progress == 30
    assert "still in progress (30%) after 10 s" in str(info.value)


def test_wait_does_not_sleep_past_its_timeout_for_a_retry_after(
    hosted: Hosted, clock: FakeClock
) -> None:
    limited = error(429, "Too Many Requests", "Too Many Requests")
    limited.headers["Retry-After"] = "120"
    with pytest.raises(WaitTimeoutError, match="asked to wait 120 s"):
        hosted(lambda request: limited).wait("x", timeout=60)
    assert clock.sleeps == []


def test_wait_raises_other_errors_at_once(hosted: Hosted, clock: FakeClock) -> None:
    with pytest.raises(NotFoundError):
        hosted(lambda request: error(404, "Image not found", "Not Found")).wait("x")
    assert clock.sleeps == []


def test_a_failed_image_raises_with_its_reason_unless_asked_not_to(
    hosted: Hosted, clock: FakeClock
) -> None:
    failed = hosted_image(
        status="failed", progress=35, progressMessage="the model ran out of memory"
    )
    client = hosted(lambda request: httpx.Response(200, json=failed))
    with pytest.raises(ImageFailedError) as info:
        client.wait("x")
    assert info.value.message == "the model ran out of memory"
    assert str(info.value) == f"image {failed['id']} failed: the model ran out of memory"
    assert info.value.image.status is ImageStatus.FAILED
    image = client.wait("x", raise_on_failure=False)
    assert image.status is ImageStatus.FAILED
    assert image.is_done
    assert not image.is_ready


def test_list_reads_a_bare_array_and_sends_paging(hosted: Hosted) -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json=[hosted_image(id="a"), hosted_image(id="b")])

    images = hosted(handler).list(page=2, limit=5, sort_by="likes", sort_order="ASC")
    assert [i.id for i in images] == ["a", "b"]
    assert dict(seen[0].params) == {
        "page": "2",
        "limit": "5",
        "sortBy": "likes",
        "sortOrder": "ASC",
    }


def test_interrupt_privacy_and_delete(hosted: Hosted) -> None:
    seen: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.raw_path.decode(), request.content))
        if request.url.path.endswith("/privacy"):
            return httpx.Response(200, text="")  # no body: the client reads the image again
        if request.method == "GET":
            return httpx.Response(200, json=hosted_image(id="a/b", privacy="public"))
        return httpx.Response(204)

    client = hosted(handler)
    client.interrupt("a/b")
    assert client.set_privacy("a/b", "public").privacy == "public"
    client.delete(Image(id="a/b", status=ImageStatus.READY))
    assert seen == [
        ("PUT", "/images/a%2Fb/interruption", b""),
        ("PUT", "/images/a%2Fb/privacy", b'{"privacy":"public"}'),
        ("GET", "/images/a%2Fb", b""),
        ("DELETE", "/images/a%2Fb", b""),
    ]


def test_download_never_sends_the_key_to_another_origin(hosted: Hosted, tmp_path: Path) -> None:
    versions = {"original": f"{CDN}/images/x.png", "640x640": f"{HOSTED_BASE_URL}/files/x-640.jpg"}
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.startswith("/images/"):
            if request.url.host == "api.letz.ai":
                return httpx.Response(
                    200, json=hosted_image(id="x", status="ready", imageVersions=versions)
                )
            return httpx.Response(200, content=b"PNG!", headers={"content-type": "image/png"})
        return httpx.Response(200, content=b"JPG!", headers={"content-type": "image/jpeg"})

    client = hosted(handler)
    assert client.download("x") == b"PNG!"
    assert "authorization" not in seen[-1].headers
    image = client.get("x")
    assert client.download(image, "640x640") == b"JPG!"
    assert seen[-1].headers["authorization"] == f"Bearer {KEY}"
    assert client.download(image, path=tmp_path) == tmp_path / "x.png"
    assert (tmp_path / "x.png").read_bytes() == b"PNG!"
    assert client.download(image, "640x640", path=tmp_path) == tmp_path / "x-640x640.jpg"
    assert client.download(image, path=tmp_path / "mine.img") == tmp_path / "mine.img"
    assert (tmp_path / "mine.img").read_bytes() == b"PNG!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.img", "x-640x640.jpg", "x.png"]


def test_download_falls_back_when_asked(hosted: Hosted) -> None:
    versions = {"1920x1920": f"{CDN}/big.jpg", "640x640": f"{CDN}/small.jpg"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "api.letz.ai":
            return httpx.Response(200, json=hosted_image(status="ready", imageVersions=versions))
        return httpx.Response(200, content=request.url.path.encode())

    client = hosted(handler)
    with pytest.raises(
        ImageNotReadyError, match=r"no version 'original' \(it has: 1920x1920, 640x640\)"
    ):
        client.download("x")
    assert client.download("x", fallback=True) == b"/big.jpg"
    assert client.download("x", "640x640", fallback=True) == b"/small.jpg"


def test_download_of_an_image_that_is_not_ready(hosted: Hosted) -> None:
    failed = hosted_image(id="x", status="failed", progressMessage="out of memory")
    with pytest.raises(ImageNotReadyError, match="image x is failed, not ready: out of memory"):
        hosted(lambda request: httpx.Response(200, json=failed)).download("x", fallback=True)


def test_download_reads_an_expired_link_again(hosted: Hosted) -> None:
    reads = iter(["old", "new"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/images/x":
            url = f"{CDN}/x.png?signature={next(reads)}"
            return httpx.Response(
                200, json=hosted_image(id="x", status="ready", imageVersions={"original": url})
            )
        if request.url.params["signature"] == "old":
            return error(403, "this link has expired", "Forbidden")
        return httpx.Response(200, content=b"fresh")

    client = hosted(handler)
    image = client.get("x")
    assert client.download(image) == b"fresh"


def test_answers_that_are_not_the_api_s(hosted: Hosted) -> None:
    client = hosted(lambda request: httpx.Response(200, text="<html>a login page</html>"))
    with pytest.raises(
        InvalidResponseError, match="GET /images/x answered 200 with a body that is not JSON"
    ):
        client.get("x")
    client = hosted(lambda request: httpx.Response(200, json=hosted_image(status="queued")))
    with pytest.raises(InvalidResponseError, match="not an image object \\(status:"):
        client.get("x")
    client = hosted(lambda request: httpx.Response(200, json={"items": []}))
    with pytest.raises(InvalidResponseError, match="not a list"):
        client.list()


def test_connection_errors_are_wrapped() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    refused = Client(KEY, base_url="http://127.0.0.1:9", transport=httpx.MockTransport(refuse))
    with refused, pytest.raises(APIConnectionError) as info:
        refused.list()
    assert str(info.value) == "cannot reach http://127.0.0.1:9: [Errno 111] Connection refused"
    timing_out = Client(KEY, transport=httpx.MockTransport(slow))
    with timing_out, pytest.raises(APITimeoutError) as timed_out:
        timing_out.list()
    assert str(timed_out.value) == "no answer from http://127.0.0.1:8000 in time (timed out)"


def test_key_and_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LETZAI_API_KEY", "OPENLETZ_API_KEY", "LETZAI_BASE_URL", "OPENLETZ_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="set LETZAI_API_KEY \\(or OPENLETZ_API_KEY\\)"):
        Client()
    monkeypatch.setenv("OPENLETZ_API_KEY", "olz_local")
    monkeypatch.setenv("OPENLETZ_BASE_URL", "http://openletz.internal:9000/")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    with Client(transport=httpx.MockTransport(handler)) as c:
        assert c.base_url == "http://openletz.internal:9000"
        c.list()
    assert seen[-1].headers["authorization"] == "Bearer olz_local"
    assert seen[-1].url.host == "openletz.internal"
    # LETZAI_* come first; arguments before either.
    monkeypatch.setenv("LETZAI_API_KEY", "letz_hosted")
    monkeypatch.setenv("LETZAI_BASE_URL", HOSTED_BASE_URL)
    with Client(transport=httpx.MockTransport(handler)) as c:
        c.list()
    assert seen[-1].headers["authorization"] == "Bearer letz_hosted"
    assert str(seen[-1].url).startswith("https://api.letz.ai/images?")
    with Client(
        "arg", base_url="http://other.test/api", transport=httpx.MockTransport(handler)
    ) as c:
        c.list()
    assert seen[-1].headers["authorization"] == "Bearer arg"
    assert seen[-1].url.path == "/api/images"


def test_without_any_environment_the_base_url_is_a_local_openletz(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LETZAI_BASE_URL", "OPENLETZ_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with Client("k") as c:
        assert c.base_url == "http://127.0.0.1:8000"
    with pytest.raises(ConfigurationError, match="must start with http:// or https://"):
        Client("k", base_url="api.letz.ai")


# AsyncClient: the same behaviour through an async transport.


@pytest.fixture
def async_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()

    async def asleep(seconds: float) -> None:
        fake.sleep(seconds)

    monkeypatch.setattr(_client, "_now", fake.monotonic)
    monkeypatch.setattr(_client, "_asleep", asleep)
    return fake


def async_hosted(handler: Handler) -> AsyncClient:
    async def answer(request: httpx.Request) -> httpx.Response:
        return handler(request)

    return AsyncClient(KEY, base_url=HOSTED_BASE_URL, transport=httpx.MockTransport(answer))


async def test_async_create_wait_and_download(async_clock: FakeClock, tmp_path: Path) -> None:
    limited = error(429, "Too Many Requests", "Too Many Requests")
    limited.headers["Retry-After"] = "4"
    ready = hosted_image(status="ready", progress=100, imageVersions={"original": f"{CDN}/o.webp"})
    answers = iter(
        [
            httpx.Response(201, json=hosted_image()),
            limited,
            httpx.Response(200, json=hosted_image(status="in progress", progress=10)),
            httpx.Response(200, json=ready),
        ]
    )
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example.test":
            assert "authorization" not in request.headers
            return httpx.Response(200, content=b"WEBP", headers={"content-type": "image/webp"})
        bodies.append(request.content)
        return next(answers)

    seen: list[int] = []

    async def on_progress(progress: Progress) -> None:
        seen.append(progress.progress)

    async with async_hosted(handler) as client:
        image = await client.create("p", seed=None, quality=2)
        image = await client.wait(image, on_progress=on_progress)
        path = await client.download(image, path=tmp_path)
    assert json.loads(bodies[0]) == {"prompt": "p", "quality": 2}
    assert async_clock.sleeps == [4.0, 3.0]
    assert seen == [10, 100]
    assert path == tmp_path / f"{image.id}.webp"
    assert path.read_bytes() == b"WEBP"


async def test_async_errors(async_clock: FakeClock) -> None:
    failed = hosted_image(status="interrupted", progressMessage="interrupted by the user")
    answers = iter([error(402, "No credits", "Payment Required"), httpx.Response(200, json=failed)])
    async with async_hosted(lambda request: next(answers)) as client:
        with pytest.raises(PaymentRequiredError) as info:
            await client.create("p")
        assert (info.value.status_code, info.value.message) == (402, "No credits")
        with pytest.raises(ImageFailedError, match="interrupted: interrupted by the user"):
            await client.wait("x")
    assert async_clock.sleeps == []
