"""``Client`` and ``AsyncClient``: the same methods, one blocking, one awaitable."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, overload

import httpx

from openletz.client._base import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT_TIMEOUT,
    RETRIED_WHILE_WAITING,
    BaseClient,
    Poller,
    check,
    create_body,
    finished,
    image_path,
    json_of,
    parse_image,
    parse_images,
    pick_version,
    progress_of,
    target,
    transport_errors,
    write_file,
)
from openletz.client._exceptions import APIError
from openletz.client._models import Image, Mode, Privacy, Progress

__all__ = ["AsyncClient", "Client"]

# Looked up at each call, so that tests can stand in a clock that does not wait.
_now = time.monotonic
_sleep = time.sleep
_asleep = asyncio.sleep


class Client(BaseClient):
    """A blocking client of the LetzAI image API, hosted or openletz.

    ``api_key`` and ``base_url`` default to the environment (``LETZAI_API_KEY``,
    ``LETZAI_BASE_URL``, then ``OPENLETZ_API_KEY``, ``OPENLETZ_BASE_URL``); the base
    URL then to ``http://127.0.0.1:8000``. ``timeout`` bounds each HTTP request.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _request(
        self, method: str, path: str, *, json: Any = None, params: Any = None
    ) -> httpx.Response:
        with transport_errors(self.base_url):
            response = self._http.request(
                method, path, json=json, params=params, headers=self._auth
            )
        return check(response)

    def create(
        self,
        prompt: str,
        *,
        width: int | None = None,
        height: int | None = None,
        quality: int | None = None,
        creativity: int | None = None,
        has_watermark: bool | None = None,
        system_version: int | None = None,
        mode: Mode | None = None,
        seed: int | None = None,
        base_model: str | None = None,
        webhook_url: str | None = None,
    ) -> Image:
        """Start a generation. Only the arguments given are sent: the server's
        defaults apply to the others (and the hosted API knows no ``seed``)."""
        body = create_body(
            prompt,
            width=width,
            height=height,
            quality=quality,
            creativity=creativity,
            has_watermark=has_watermark,
            system_version=system_version,
            mode=mode,
            seed=seed,
            base_model=base_model,
            webhook_url=webhook_url,
        )
        return parse_image(json_of(self._request("POST", "/images", json=body)))

    def get(self, image: Image | str) -> Image:
        return parse_image(json_of(self._request("GET", image_path(image))))

    def list(
        self,
        *,
        page: int = 1,
        limit: int = 10,
        sort_by: Literal["createdAt", "likes", "regenerations"] = "createdAt",
        sort_order: Literal["ASC", "DESC"] = "DESC",
    ) -> builtins.list[Image]:
        """One page of the caller's own images."""
        params = {"page": page, "limit": limit, "sortBy": sort_by, "sortOrder": sort_order}
        return parse_images(json_of(self._request("GET", "/images", params=params)))

    def wait(
        self,
        image: Image | str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_progress: Callable[[Progress], object] | None = None,
        raise_on_failure: bool = True,
    ) -> Image:
        """Poll until the image is ready, failed or interrupted, and return it.

        ``on_progress`` is called after every poll. A 429, 502, 503 or 504 answer
        is waited out (for its ``Retry-After``, else ``poll_interval``). With
        ``raise_on_failure`` (the default) a failed or interrupted image raises
        ImageFailedError; without it, it is returned. WaitTimeoutError when
        ``timeout`` seconds pass first (None: no limit).
        """
        path = image_path(image)
        poller = Poller(timeout, poll_interval, _now)
        while True:
            try:
                current = parse_image(json_of(self._request("GET", path)))
            except APIError as exc:
                if exc.status_code not in RETRIED_WHILE_WAITING:
                    raise
                _sleep(poller.delay(exc.retry_after))
                continue
            poller.last = current
            if on_progress is not None:
                on_progress(progress_of(current, poller.elapsed))
            if current.is_done:
                return finished(current, raise_on_failure)
            _sleep(poller.delay())

    def interrupt(self, image: Image | str) -> None:
        """Stop a generation (one not yet started never starts)."""
        self._request("PUT", image_path(image, "/interruption"))

    def set_privacy(self, image: Image | str, privacy: Privacy) -> Image:
        response = self._request("PUT", image_path(image, "/privacy"), json={"privacy": privacy})
        if response.content:
            return parse_image(json_of(response))
        return self.get(image)

    def delete(self, image: Image | str) -> None:
        """Delete an image and its files (a running generation is stopped)."""
        self._request("DELETE", image_path(image))

    @overload
    def download(
        self, image: Image | str, version: str = ..., *, path: None = None, fallback: bool = ...
    ) -> bytes: ...

    @overload
    def download(
        self,
        image: Image | str,
        version: str = ...,
        *,
        path: str | os.PathLike[str],
        fallback: bool = ...,
    ) -> Path: ...

    def download(
        self,
        image: Image | str,
        version: str = "original",
        *,
        path: str | os.PathLike[str] | None = None,
        fallback: bool = False,
    ) -> bytes | Path:
        """The bytes of a version of a ready image; or, with ``path``, the file they
        were written to (``path`` itself, or a file named after the image when it
        is a folder). With ``fallback``, a missing version is replaced by the
        largest one there is. ImageNotReadyError when there is nothing to take."""
        fresh = not (isinstance(image, Image) and image.is_ready)
        current = image if isinstance(image, Image) and not fresh else self.get(image)
        name, url = pick_version(current, version, fallback)
        response = self._fetch(url)
        if response.status_code == 403 and not fresh:
            # A private image's links expire: read the image again for fresh ones.
            current = self.get(current)
            name, url = pick_version(current, version, fallback)
            response = self._fetch(url)
        check(response)
        if path is None:
            return response.content
        return write_file(target(path, current, name, response), response.content)

    def _fetch(self, url: str) -> httpx.Response:
        url = self._absolute(url)
        with transport_errors(self._origin(url)):
            return self._http.get(url, headers=self._download_headers(url), follow_redirects=True)


class AsyncClient(BaseClient):
    """The awaitable twin of :class:`Client`, with the same arguments and methods.

    ``on_progress`` of :meth:`wait` may be a plain function or a coroutine function.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _request(
        self, method: str, path: str, *, json: Any = None, params: Any = None
    ) -> httpx.Response:
        with transport_errors(self.base_url):
            response = await self._http.request(
                method, path, json=json, params=params, headers=self._auth
            )
        return check(response)

    async def create(
        self,
        prompt: str,
        *,
        width: int | None = None,
        height: int | None = None,
        quality: int | None = None,
        creativity: int | None = None,
        has_watermark: bool | None = None,
        system_version: int | None = None,
        mode: Mode | None = None,
        seed: int | None = None,
        base_model: str | None = None,
        webhook_url: str | None = None,
    ) -> Image:
        body = create_body(
            prompt,
            width=width,
            height=height,
            quality=quality,
            creativity=creativity,
            has_watermark=has_watermark,
            system_version=system_version,
            mode=mode,
            seed=seed,
            base_model=base_model,
            webhook_url=webhook_url,
        )
        return parse_image(json_of(await self._request("POST", "/images", json=body)))

    async def get(self, image: Image | str) -> Image:
        return parse_image(json_of(await self._request("GET", image_path(image))))

    async def list(
        self,
        *,
        page: int = 1,
        limit: int = 10,
        sort_by: Literal["createdAt", "likes", "regenerations"] = "createdAt",
        sort_order: Literal["ASC", "DESC"] = "DESC",
    ) -> builtins.list[Image]:
        params = {"page": page, "limit": limit, "sortBy": sort_by, "sortOrder": sort_order}
        return parse_images(json_of(await self._request("GET", "/images", params=params)))

    async def wait(
        self,
        image: Image | str,
        *,
        # Client.wait's twin; its timeout ends in WaitTimeoutError with the last image seen.
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,  # noqa: ASYNC109
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_progress: Callable[[Progress], object] | None = None,
        raise_on_failure: bool = True,
    ) -> Image:
        path = image_path(image)
        poller = Poller(timeout, poll_interval, _now)
        while True:
            try:
                current = parse_image(json_of(await self._request("GET", path)))
            except APIError as exc:
                if exc.status_code not in RETRIED_WHILE_WAITING:
                    raise
                await _asleep(poller.delay(exc.retry_after))
                continue
            poller.last = current
            if on_progress is not None:
                result = on_progress(progress_of(current, poller.elapsed))
                if inspect.isawaitable(result):
                    await result
            if current.is_done:
                return finished(current, raise_on_failure)
            await _asleep(poller.delay())

    async def interrupt(self, image: Image | str) -> None:
        await self._request("PUT", image_path(image, "/interruption"))

    async def set_privacy(self, image: Image | str, privacy: Privacy) -> Image:
        response = await self._request(
            "PUT", image_path(image, "/privacy"), json={"privacy": privacy}
        )
        if response.content:
            return parse_image(json_of(response))
        return await self.get(image)

    async def delete(self, image: Image | str) -> None:
        await self._request("DELETE", image_path(image))

    @overload
    async def download(
        self, image: Image | str, version: str = ..., *, path: None = None, fallback: bool = ...
    ) -> bytes: ...

    @overload
    async def download(
        self,
        image: Image | str,
        version: str = ...,
        *,
        path: str | os.PathLike[str],
        fallback: bool = ...,
    ) -> Path: ...

    async def download(
        self,
        image: Image | str,
        version: str = "original",
        *,
        path: str | os.PathLike[str] | None = None,
        fallback: bool = False,
    ) -> bytes | Path:
        fresh = not (isinstance(image, Image) and image.is_ready)
        current = image if isinstance(image, Image) and not fresh else await self.get(image)
        name, url = pick_version(current, version, fallback)
        response = await self._fetch(url)
        if response.status_code == 403 and not fresh:
            current = await self.get(current)
            name, url = pick_version(current, version, fallback)
            response = await self._fetch(url)
        check(response)
        if path is None:
            return response.content
        # Small files, written once: not worth a thread.
        return write_file(target(path, current, name, response), response.content)

    async def _fetch(self, url: str) -> httpx.Response:
        url = self._absolute(url)
        with transport_errors(self._origin(url)):
            return await self._http.get(
                url, headers=self._download_headers(url), follow_redirects=True
            )
