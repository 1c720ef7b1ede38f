"""The SDK against a real openletz server (the session's, with the sandbox engine)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from openletz.client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ImageFailedError,
    ImageNotReadyError,
    ImageStatus,
    NotFoundError,
    PermissionDeniedError,
    Progress,
)
from tests._server import Server, free_port

NewClient = Callable[[], Client]


def size_of(image: bytes | Path) -> tuple[int, int]:
    with PILImage.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
        return opened.size


@pytest.fixture
def new_sdk(server: Server) -> Iterator[NewClient]:
    """A factory of SDK clients, each with a key of a new user."""
    clients: list[Client] = []

    def make() -> Client:
        key = server.create_key(f"sdk-{uuid.uuid4().hex[:8]}")
        client = Client(key, base_url=server.base_url)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def sdk(new_sdk: NewClient) -> Client:
    return new_sdk()


def test_create_wait_and_download(sdk: Client, tmp_path: Path) -> None:
    created = sdk.create(
        "a lighthouse at dusk", seed=42, has_watermark=False, width=520, height=600, quality=1
    )
    assert created.status in (ImageStatus.NEW, ImageStatus.IN_PROGRESS)
    assert (created.width, created.height, created.seed) == (520, 600, 42)
    assert created.has_watermark is False
    assert created.sandbox is True
    seen: list[Progress] = []
    ready = sdk.wait(created, poll_interval=0.02, timeout=60, on_progress=seen.append)
    assert ready.status is ImageStatus.READY
    assert ready.progress == 100
    assert set(ready.image_versions) == {"original", "1920x1920", "640x640", "240x240", "96x96"}
    # The callback saw every poll: progress that never goes down, previews as the
    # image formed, and the ready image last.
    progress = [p.progress for p in seen]
    assert progress == sorted(progress)
    assert seen[-1].image == ready
    assert seen[-1].status is ImageStatus.READY
    previews = [p.preview for p in seen if p.status is ImageStatus.IN_PROGRESS and p.preview]
    assert previews, [(p.status, p.progress) for p in seen]
    assert previews[0].startswith(b"\xff\xd8")  # JPEG
    assert [p.elapsed for p in seen] == sorted(p.elapsed for p in seen)

    original = sdk.download(ready)
    assert size_of(original) == (520, 600)
    assert max(size_of(sdk.download(ready.id, "96x96"))) == 96
    path = sdk.download(ready.id, path=tmp_path)
    assert path.parent == tmp_path
    assert path.name.startswith(ready.id + ".")
    assert path.read_bytes() == original
    named = sdk.download(ready, "640x640", path=tmp_path / "thumb.img")
    assert named == tmp_path / "thumb.img"
    assert size_of(named) == (520, 600)  # never enlarged
    assert sdk.get(ready.id) == ready


def test_list_pages_through_the_caller_s_own_images(new_sdk: NewClient) -> None:
    sdk, other = new_sdk(), new_sdk()
    ids = [sdk.create(f"image {n}", width=520, height=600, quality=1).id for n in range(3)]
    other.create("not yours", width=520, height=600, quality=1)
    try:
        first = sdk.list(limit=2)
        second = sdk.list(limit=2, page=2)
        assert [i.id for i in first + second] == ids[::-1]  # newest first
        assert [i.id for i in sdk.list(sort_order="ASC")] == ids
        assert sdk.list(page=3, limit=2) == []
    finally:
        for image_id in ids:
            sdk.delete(image_id)


def test_interrupt(sdk: Client) -> None:
    image = sdk.create("stop me", quality=5, width=520, height=520)
    sdk.interrupt(image)
    with pytest.raises(ImageFailedError) as info:
        sdk.wait(image, poll_interval=0.02, timeout=60)
    assert info.value.image.status is ImageStatus.INTERRUPTED
    assert info.value.message
    stopped = sdk.wait(image.id, poll_interval=0.02, raise_on_failure=False)
    assert stopped.status is ImageStatus.INTERRUPTED
    assert stopped.is_done
    with pytest.raises(ImageNotReadyError, match=f"image {image.id} is interrupted, not ready"):
        sdk.download(image)


def test_privacy_and_delete(new_sdk: NewClient) -> None:
    owner, stranger = new_sdk(), new_sdk()
    image = owner.create("shared", width=520, height=600, quality=1)
    with pytest.raises(NotFoundError):
        stranger.get(image.id)
    assert owner.set_privacy(image, "public").privacy == "public"
    assert stranger.get(image.id).privacy == "public"
    with pytest.raises(PermissionDeniedError) as denied:
        stranger.delete(image.id)
    assert denied.value.status_code == 403
    assert "only its owner" in denied.value.message
    assert owner.set_privacy(image.id, "private").privacy == "private"
    with pytest.raises(NotFoundError):
        stranger.get(image.id)
    owner.delete(image)
    with pytest.raises(NotFoundError) as gone:
        owner.get(image.id)
    assert gone.value.status_code == 404
    assert gone.value.message == f"image {image.id} not found"
    assert gone.value.error == "Not Found"


def test_errors_are_exceptions_with_the_server_s_words(sdk: Client, server: Server) -> None:
    with pytest.raises(BadRequestError) as bad:
        sdk.create("too wide", width=5000)
    assert bad.value.status_code == 400
    assert bad.value.message == "width must be an integer from 520 to 2160 (got 5000)"
    assert str(bad.value) == "400 Bad Request: width must be an integer from 520 to 2160 (got 5000)"
    stranger = Client("olz_not-a-key", base_url=server.base_url)
    with stranger, pytest.raises(AuthenticationError) as unauthorized:
        stranger.list()
    assert unauthorized.value.status_code == 401
    assert unauthorized.value.message
    with pytest.raises(NotFoundError):
        sdk.wait("no-such-image")


def test_a_server_that_is_not_there() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client("k", base_url=url) as client, pytest.raises(APIConnectionError) as info:
        client.list()
    assert str(info.value).startswith(f"cannot reach {url}: ")


@pytest.fixture
def key(server: Server) -> str:
    return server.create_key(f"sdk-{uuid.uuid4().hex[:8]}")


async def test_async_client(server: Server, key: str, tmp_path: Path) -> None:
    statuses: list[ImageStatus] = []

    async def on_progress(progress: Progress) -> None:
        statuses.append(progress.status)

    async with AsyncClient(key, base_url=server.base_url) as sdk:
        image = await sdk.create("async", width=520, height=600, quality=1)
        assert [i.id for i in await sdk.list()] == [image.id]
        ready = await sdk.wait(image, poll_interval=0.02, on_progress=on_progress)
        assert statuses[-1] is ImageStatus.READY
        path = await sdk.download(ready, path=tmp_path / "a.png")
        assert size_of(path) == (520, 600)
        assert (await sdk.set_privacy(ready, "public")).privacy == "public"
        other = await sdk.create("stopped", quality=5, width=520, height=520)
        await sdk.interrupt(other)
        assert (await sdk.wait(other, poll_interval=0.02, raise_on_failure=False)).is_done
        await sdk.delete(ready)
        with pytest.raises(NotFoundError):
            await sdk.get(ready)
