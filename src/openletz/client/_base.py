"""What Client and AsyncClient share: requests, errors, polling and file names.

Nothing here does I/O, so that the sync and the async client differ only in
how they send, sleep and write.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import mimetypes
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import httpx
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from openletz import __version__
from openletz.client._config import resolve_api_key, resolve_base_url
from openletz.client._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ImageFailedError,
    ImageNotReadyError,
    InvalidResponseError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WaitTimeoutError,
)
from openletz.client._models import VERSIONS, Image, ImageStatus, Progress

DEFAULT_TIMEOUT = 30.0
DEFAULT_POLL_INTERVAL = 3.0
DEFAULT_WAIT_TIMEOUT = 600.0
# wait() sleeps through these instead of failing: rate limits, and a server or
# its proxy that is restarting.
RETRIED_WHILE_WAITING = frozenset({429, 502, 503, 504})

_ERRORS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/avif": ".avif",
    "image/gif": ".gif",
}


class BaseClient:
    def __init__(self, api_key: str | None, base_url: str | None, timeout: float) -> None:
        self.base_url = resolve_base_url(base_url)
        self.timeout = timeout
        self._auth = {"Authorization": f"Bearer {resolve_api_key(api_key)}"}
        self._headers = {
            "Accept": "application/json",
            "User-Agent": f"openletz-client/{__version__}",
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _download_headers(self, url: str) -> dict[str, str]:
        # Only the API's own origin gets the key: version URLs of the hosted API
        # point to a CDN, which has no business seeing it.
        there, here = httpx.URL(url), httpx.URL(self.base_url)
        same = (there.scheme, there.host, there.port) == (here.scheme, here.host, here.port)
        return {"Accept": "*/*", **(self._auth if same else {})}

    def _absolute(self, url: str) -> str:
        return urljoin(self.base_url + "/", url)

    def _origin(self, url: str) -> str:
        there = httpx.URL(url)
        return f"{there.scheme}://{there.netloc.decode()}"


def image_path(image: Image | str, suffix: str = "") -> str:
    image_id = image.id if isinstance(image, Image) else image
    if not isinstance(image_id, str) or not image_id.strip():
        raise ValueError(f"an image id must be a non-empty string (got {image_id!r})")
    return f"/images/{quote(image_id.strip(), safe='')}{suffix}"


def create_body(prompt: str, **fields: Any) -> dict[str, Any]:
    # Only what the caller gave: the server's defaults apply to the rest, and the
    # hosted API refuses fields it does not know (such as seed).
    return {"prompt": prompt, **{to_camel(k): v for k, v in fields.items() if v is not None}}


@contextlib.contextmanager
def transport_errors(base_url: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise APITimeoutError(f"no answer from {base_url} in time ({_reason(exc)})") from exc
    except httpx.TransportError as exc:
        raise APIConnectionError(f"cannot reach {base_url}: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def check(response: httpx.Response) -> httpx.Response:
    """The response if its status is 2xx; else the APIError for it."""
    if response.is_success:
        return response
    raise api_error(response)


def api_error(response: httpx.Response) -> APIError:
    status = response.status_code
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    message: Any = None
    error: Any = None
    if isinstance(body, dict):
        # NestJS (the hosted API) says "message", a list when several fields are
        # wrong; other frameworks say "detail".
        message, error = body.get("message") or body.get("detail"), body.get("error")
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    error = error if isinstance(error, str) and error.strip() else ""
    if not isinstance(message, str) or not message.strip():
        text = "" if body is not None else " ".join(response.text.split())[:200]
        message = error or text or phrase or "no details"
    error = error or phrase
    message = " ".join(message.split())
    cls = _ERRORS.get(status, ServerError if status >= 500 else APIError)
    return cls(status, message, error, body, retry_after(response))


def retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def json_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise InvalidResponseError(
            f"{response.request.method} {response.request.url.path} answered"
            f" {response.status_code} with a body that is not JSON"
        ) from None


def parse_image(data: Any) -> Image:
    try:
        return Image.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the body"
        raise InvalidResponseError(
            f"the server's answer is not an image object ({where}: {first['msg']})"
        ) from None


def parse_images(data: Any) -> list[Image]:
    if not isinstance(data, list):
        raise InvalidResponseError("the server's answer to GET /images is not a list")
    return [parse_image(item) for item in data]


class Poller:
    """The clock of one wait(): how long to sleep before the next poll."""

    def __init__(
        self, timeout: float | None, poll_interval: float, clock: Callable[[], float]
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive (got {poll_interval})")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be positive or None (got {timeout})")
        self._clock = clock
        self._interval = poll_interval
        self._timeout = timeout
        self._start = clock()
        self.last: Image | None = None

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def delay(self, retry_after: float | None = None) -> float:
        """Seconds until the next poll, or WaitTimeoutError if there is none left."""
        if self._timeout is None:
            return self._interval if retry_after is None else retry_after
        remaining = self._timeout - self.elapsed
        if retry_after is not None:
            # Polling before the server allows it would only be refused again.
            if retry_after > remaining:
                raise self._expired(f"; the server asked to wait {retry_after:g} s")
            return retry_after
        if remaining <= 0:
            raise self._expired()
        return min(self._interval, remaining)

    def _expired(self, why: str = "") -> WaitTimeoutError:
        last = self.last
        state = f"still {last.status.value} ({last.progress}%)" if last else "not seen"
        name = f"image {last.id}" if last else "the image"
        return WaitTimeoutError(f"{name} {state} after {self._timeout:g} s{why}", last)


def progress_of(image: Image, elapsed: float) -> Progress:
    return Progress(image.status, image.progress, image.preview_bytes, elapsed, image)


def finished(image: Image, raise_on_failure: bool) -> Image:
    if raise_on_failure and image.status is not ImageStatus.READY:
        raise ImageFailedError(image)
    return image


def pick_version(image: Image, version: str, fallback: bool) -> tuple[str, str]:
    """The version to download and its URL."""
    versions = image.image_versions
    if version in versions:
        return version, versions[version]
    if not image.is_ready:
        reason = f": {image.progress_message}" if image.progress_message else ""
        raise ImageNotReadyError(
            f"image {image.id} is {image.status.value}, not ready{reason}", image
        )
    if fallback:
        for name in (*VERSIONS, *sorted(versions)):
            if name in versions:
                return name, versions[name]
    known = ", ".join(versions) or "none"
    raise ImageNotReadyError(
        f"image {image.id} has no version {version!r} (it has: {known})", image
    )


def file_name(image: Image, version: str, response: httpx.Response) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", image.id).strip(".") or "image"
    if version != "original":
        stem += "-" + re.sub(r"[^A-Za-z0-9._-]", "_", version)
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    ext = _EXTENSIONS.get(kind) or mimetypes.guess_extension(kind) or ""
    if not ext:
        ext = Path(response.url.path).suffix.lower()
    return stem + (ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ".bin")


def target(
    path: str | os.PathLike[str], image: Image, version: str, response: httpx.Response
) -> Path:
    """Where to write: ``path`` itself, or a file named after the image in it if it is a folder."""
    out = Path(path).expanduser()
    if out.is_dir() or str(path).endswith(("/", os.sep)):
        out = out / file_name(image, version, response)
    return out


def write_file(out: Path, data: bytes) -> Path:
    # Whole or nothing: a file half written by an interrupted download would look
    # like an image to whoever comes next.
    tmp = out.with_name(f".{out.name}.part")
    try:
        tmp.write_bytes(data)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
