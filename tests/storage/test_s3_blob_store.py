"""S3BlobStore against a real S3 server on loopback (SeaweedFS, see tests/_s3.py)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError

from openletz.storage.base import InvalidKey
from openletz.storage.s3 import CACHE_CONTROL, S3BlobStore
from tests._s3 import S3Server
from tests._s3 import s3_server_fixture as s3_server_fixture

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

KEY = "job_1/640x640.jpg"
BAD_KEYS = ["../etc/passwd", "/etc/passwd", "a/b/c.jpg", "x.jpg", "job/x.JPG", "", "job/x.jpg\n"]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> Iterator[str]:
    name = s3_server.new_bucket_name()
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    client.close()


@pytest.fixture
def raw(s3_server: S3Server) -> Iterator[S3Client]:
    client = s3_server.client()
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    # Every test writes under a prefix of its own in the shared bucket.
    return f"t{uuid.uuid4().hex[:12]}/"


def make_store(server: S3Server, bucket: str, **options: Any) -> S3BlobStore:
    settings: dict[str, Any] = {
        "bucket": bucket,
        "endpoint_url": server.endpoint_url,
        "region": server.region,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
    }
    settings.update(options)
    return S3BlobStore(**settings)


@pytest.fixture
async def store(s3_server: S3Server, bucket: str, prefix: str) -> AsyncIterator[S3BlobStore]:
    s = make_store(s3_server, bucket, prefix=prefix)
    yield s
    await s.close()


def _amz(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, strict_parsing=True).items()}


async def test_put_get_round_trip(
    store: S3BlobStore, raw: S3Client, bucket: str, prefix: str
) -> None:
    await store.put(KEY, b"small", "image/jpeg")
    await store.put("job_1/original.png", b"\x89PNG large", "image/png")
    assert await store.get(KEY) == b"small"
    assert await store.get("job_1/original.png") == b"\x89PNG large"

    head = raw.head_object(Bucket=bucket, Key=f"{prefix}{KEY}")  # stored under the prefix
    assert head["ContentType"] == "image/jpeg"
    assert head["CacheControl"] == CACHE_CONTROL
    assert raw.head_object(Bucket=bucket, Key=f"{prefix}job_1/original.png")["ContentType"] == (
        "image/png"
    )

    await store.put(KEY, b"replaced", "image/jpeg")
    assert await store.get(KEY) == b"replaced"


async def test_concurrent_puts_and_gets(store: S3BlobStore) -> None:
    keys = [f"job_c/{n}.png" for n in range(20)]
    await asyncio.gather(*(store.put(k, k.encode() * 100, "image/png") for k in keys))
    assert await asyncio.gather(*(store.get(k) for k in keys)) == [k.encode() * 100 for k in keys]


async def test_missing_key_is_a_key_error(store: S3BlobStore) -> None:
    with pytest.raises(KeyError):
        await store.get("nojob/original.jpg")
    await store.put(KEY, b"x", "image/jpeg")
    with pytest.raises(KeyError):
        await store.get("job_1/other.jpg")


async def test_delete_many(store: S3BlobStore) -> None:
    await store.put(KEY, b"a", "image/jpeg")
    await store.put("job_1/original.jpg", b"b", "image/jpeg")
    await store.put("job_2/original.jpg", b"c", "image/jpeg")

    await store.delete_many([KEY, "job_1/original.jpg", "job_1/missing.jpg", KEY])
    for key in (KEY, "job_1/original.jpg"):
        with pytest.raises(KeyError):
            await store.get(key)
    assert await store.get("job_2/original.jpg") == b"c"

    await store.delete_many([])
    await store.delete_many(["nojob/a.jpg", "nojob/a.jpg"])


async def test_delete_many_goes_in_batches_of_a_thousand(store: S3BlobStore) -> None:
    present = ["job_0/0.jpg", "job_1499/0.jpg", "job_2499/0.jpg"]
    for key in present:
        await store.put(key, b"x", "image/jpeg")
    await store.delete_many(f"job_{n}/0.jpg" for n in range(2500))
    for key in present:
        with pytest.raises(KeyError):
            await store.get(key)


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_invalid_keys_are_refused_before_any_request(key: str) -> None:
    # Nothing listens at this endpoint: a request would fail with a connection error.
    store = S3BlobStore(
        bucket="nowhere", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b"
    )
    try:
        with pytest.raises(InvalidKey):
            await store.put(key, b"x", "image/jpeg")
        with pytest.raises(InvalidKey):
            await store.get(key)
        with pytest.raises(InvalidKey):
            await store.delete_many([KEY, key])
        with pytest.raises(InvalidKey):
            store.url(key, public=True)
        with pytest.raises(InvalidKey):
            store.url(key, public=False)
    finally:
        await store.close()


async def test_one_bad_key_deletes_nothing(store: S3BlobStore) -> None:
    await store.put(KEY, b"x", "image/jpeg")
    with pytest.raises(InvalidKey):
        await store.delete_many([KEY, "../etc/passwd"])
    assert await store.get(KEY) == b"x"


async def test_presigned_url_serves_the_bytes(store: S3BlobStore) -> None:
    await store.put(KEY, b"\xff\xd8 jpeg bytes", "image/jpeg")
    url = store.url(KEY, public=False)
    # No public base URL: a public URL is presigned too.
    assert store.url(KEY, public=True) == url
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == b"\xff\xd8 jpeg bytes"
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["cache-control"] == CACHE_CONTROL


async def test_plain_object_url_is_refused(
    store: S3BlobStore, s3_server: S3Server, bucket: str, prefix: str
) -> None:
    await store.put(KEY, b"secret", "image/jpeg")
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{s3_server.endpoint_url}/{bucket}/{prefix}{KEY}")
        assert response.status_code == 403
        # A presigned URL for another key does not open this one.
        other = urlsplit(store.url("job_1/other.jpg", public=False))
        response = await http.get(f"{s3_server.endpoint_url}/{bucket}/{prefix}{KEY}?{other.query}")
        assert response.status_code == 403


def _expires_at(url: str) -> float:
    query = _amz(url)
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed_at.timestamp() + int(query["X-Amz-Expires"])


async def test_presigned_url_expires(s3_server: S3Server, bucket: str, prefix: str) -> None:
    store = make_store(s3_server, bucket, prefix=prefix, url_ttl_s=2)
    try:
        await store.put(KEY, b"x", "image/jpeg")
        before = time.time()
        url = store.url(KEY, public=False)
        expires_at = _expires_at(url)
        # A short TTL is rounded up to the second, not stretched to a minute.
        assert before + 2 <= expires_at <= before + 4
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).status_code == 200
            await asyncio.sleep(expires_at - time.time() + 1.2)
            assert (await http.get(url)).status_code == 403
    finally:
        await store.close()


async def test_private_url_is_stable_within_a_minute(
    s3_server: S3Server, bucket: str, prefix: str
) -> None:
    ttl = 3600
    clock = FakeClock(time.time())
    store = make_store(s3_server, bucket, prefix=prefix, clock=clock)
    try:
        await store.put(KEY, b"x", "image/jpeg")
        # Keep clear of a window's end, so that the second below stays in the window.
        if (time.time() + ttl) % 60 > 57:
            await asyncio.sleep(3.5)
        clock.now = start = time.time()
        window_end = math.ceil((start + ttl) / 60) * 60

        first = store.url(KEY, public=False)
        clock.now += 1
        await asyncio.sleep(1.1)  # botocore signs with the real clock: cross a second
        assert store.url(KEY, public=False) == first
        assert store.url("job_1/original.jpg", public=False) != first

        # It expires at the end of its window (give or take the second botocore's
        # clock may have ticked), so at least a TTL after any time in the window.
        assert window_end <= _expires_at(first) <= window_end + 1
        assert clock.now + ttl <= window_end

        clock.now = window_end - ttl + 1  # the next window
        second = store.url(KEY, public=False)
        assert second != first
        # Signed for what is left of the next window, as the store's clock reads it.
        assert int(_amz(second)["X-Amz-Expires"]) == window_end + 60 - math.floor(clock.now)
        async with httpx.AsyncClient() as http:
            assert (await http.get(first)).content == b"x"
            assert (await http.get(second)).content == b"x"
    finally:
        await store.close()


async def test_wrong_secret_key_is_refused(s3_server: S3Server, bucket: str, prefix: str) -> None:
    store = make_store(s3_server, bucket, prefix=prefix, secret_key="not-the-secret")
    try:
        with pytest.raises(ClientError) as put_error:
            await store.put(KEY, b"x", "image/jpeg")
        assert put_error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        # A refusal is an error, never a missing blob.
        with pytest.raises(ClientError):
            await store.get(KEY)
        async with httpx.AsyncClient() as http:
            assert (await http.get(store.url(KEY, public=False))).status_code == 403
    finally:
        await store.close()


async def test_public_base_url(s3_server: S3Server, bucket: str) -> None:
    store = make_store(
        s3_server, bucket, prefix="/images", public_base_url="https://cdn.example.test/img/"
    )
    try:
        assert store.prefix == "images/"
        assert (
            store.url(KEY, public=True) == "https://cdn.example.test/img/images/job_1/640x640.jpg"
        )
        private = store.url(KEY, public=False)
        assert private.startswith(f"{s3_server.endpoint_url}/{bucket}/images/{KEY}?")
        assert "X-Amz-Signature" in _amz(private)
    finally:
        await store.close()


async def test_create_bucket(s3_server: S3Server, raw: S3Client) -> None:
    name = s3_server.new_bucket_name()
    store = make_store(s3_server, name, create_bucket=True)
    try:
        await store.put(KEY, b"x", "image/jpeg")  # creates it on first use
        assert await store.get(KEY) == b"x"
        raw.head_bucket(Bucket=name)
        await asyncio.gather(store.ensure_bucket(), store.ensure_bucket())

        again = make_store(s3_server, name)
        try:
            await again.ensure_bucket()  # exists already: fine
            assert await again.get(KEY) == b"x"
        finally:
            await again.close()
    finally:
        await store.delete_many([KEY])
        await store.close()


async def test_missing_bucket_is_an_error_not_a_missing_key(s3_server: S3Server) -> None:
    store = make_store(s3_server, s3_server.new_bucket_name())
    try:
        with pytest.raises(ClientError) as error:
            await store.get(KEY)
        assert error.value.response["Error"]["Code"] == "NoSuchBucket"
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bucket": ""}, "bucket"),
        ({"bucket": "b", "access_key": "a"}, "secret_key"),
        ({"bucket": "b", "secret_key": "s"}, "secret_key"),
        ({"bucket": "b", "url_ttl_s": 0}, "url_ttl_s"),
        ({"bucket": "b", "url_ttl_s": 7 * 86_400}, "url_ttl_s"),
        ({"bucket": "b", "prefix": "a/../b"}, "prefix"),
        ({"bucket": "b", "prefix": "a b/"}, "prefix"),
        ({"bucket": "b", "addressing_style": "sideways"}, "addressing_style"),
    ],
)
def test_bad_configuration_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        S3BlobStore(**options)


def test_store_name() -> None:
    assert S3BlobStore.name == "s3"


async def test_presigned_urls_can_name_an_endpoint_of_their_own(
    s3_server: S3Server, bucket: str, prefix: str
) -> None:
    # The servers reach S3 at 127.0.0.1; clients know it by another name.
    public = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    store = make_store(s3_server, bucket, prefix=prefix, presign_endpoint_url=public)
    try:
        await store.put(KEY, b"signed elsewhere", "image/jpeg")
        url = store.url(KEY, public=False)
        assert url.startswith(f"{public}/{bucket}/{prefix}{KEY}?")
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).content == b"signed elsewhere"
        await store.delete_many([KEY])
    finally:
        await store.close()
