"""Blobs as objects in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, R2, ...).

Images are served straight from the bucket, never through the API: either from a
public base URL (a CDN, or a bucket that allows public reads) or by presigned GET
URLs. boto3 is synchronous; its calls run in worker threads through one shared
client (boto3 clients are thread-safe).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from openletz.storage import _signing
from openletz.storage.base import BlobStore, check_key

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

# Sent with every object. The store is not told whether an image is private, so
# one value has to suit both kinds: "private" keeps shared caches (proxies, a CDN
# in front of a presigned endpoint) from keeping a copy that could outlive the
# signature that let it through, while the browser that fetched the image may
# reuse it for five minutes, which covers a client polling a finished job. A CDN
# serving a public base URL can set its own edge TTL over this.
CACHE_CONTROL = "private, max-age=300"

# DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000
# SigV4 presigned URLs live at most seven days.
_MAX_PRESIGN_S = 7 * 86_400
# Presigned URLs are reused for windows of this length (see _expiry_window).
_WINDOW_S = 60
_URL_CACHE_MAX = 4096

_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
_PREFIX_PART = re.compile(r"[A-Za-z0-9_.-]+")
_ADDRESSING_STYLES = ("path", "virtual", "auto")


class S3BlobStore(BlobStore):
    """Objects at ``{prefix}{key}`` in ``bucket``."""

    name = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        presign_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        prefix: str = "",
        public_base_url: str | None = None,
        url_ttl_s: int = 3600,
        addressing_style: Literal["path", "virtual", "auto"] = "path",
        create_bucket: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not bucket:
            raise ValueError("S3BlobStore needs a bucket name")
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        if not 0 < url_ttl_s <= _MAX_PRESIGN_S - _WINDOW_S:
            raise ValueError(
                f"url_ttl_s must be between 1 and {_MAX_PRESIGN_S - _WINDOW_S}, not {url_ttl_s}"
            )
        if addressing_style not in _ADDRESSING_STYLES:
            raise ValueError(f"addressing_style must be one of {_ADDRESSING_STYLES}")
        self._bucket = bucket
        self._prefix = _normalise_prefix(prefix)
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._ttl_s = url_ttl_s
        # Windows of a minute, as for the local store; a TTL under ten minutes gets
        # windows of a tenth of itself, so that a URL meant to last seconds is not
        # stretched to a minute.
        self._window_s = max(1, min(_WINDOW_S, url_ttl_s // 10))
        self._clock = clock
        self._create_bucket = create_bucket
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()
        self._urls: dict[tuple[str, int], str] = {}
        self._expires_value = 0

        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=60,
            # As many pooled connections as asyncio's default thread pool has threads.
            max_pool_connections=32,
            # botocore's default CRC checksums (and the aws-chunked uploads they bring)
            # are not understood by every S3-compatible server; a Content-MD5, which
            # all of them check, is sent with each put instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of our own: boto3's module-level default session is not thread-safe.
        session = boto3.session.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
        )
        self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        # Presigned URLs name the endpoint they were signed for, and clients fetch
        # them there: one that clients reach may differ from the one servers use
        # (an internal address). Signing makes no request, so a second client costs
        # nothing but its construction.
        self._signer: S3Client = (
            session.client("s3", endpoint_url=presign_endpoint_url, config=config)
            if presign_endpoint_url and presign_endpoint_url != endpoint_url
            else self._client
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    def object_key(self, key: str) -> str:
        """The key of ``key``'s object in the bucket."""
        return self._prefix + check_key(key)

    # -- the bucket ------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists already."""
        await asyncio.to_thread(self._ensure_bucket_sync)

    def _ensure_bucket_sync(self) -> None:
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                self._client.head_bucket(Bucket=self._bucket)
            except ClientError as exc:
                if _error_code(exc) not in _MISSING_BUCKET_CODES:
                    raise
                self._create_bucket_sync()
            self._bucket_ready = True

    def _create_bucket_sync(self) -> None:
        region = self._client.meta.region_name
        try:
            if region and region != "us-east-1":
                self._client.create_bucket(
                    Bucket=self._bucket,
                    CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
                )
            else:
                self._client.create_bucket(Bucket=self._bucket)
        except ClientError as exc:
            # Another API server or worker made it in the meantime.
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise

    def _ready_sync(self) -> None:
        if self._create_bucket and not self._bucket_ready:
            self._ensure_bucket_sync()

    # -- writing ---------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        object_key = self.object_key(key)
        await asyncio.to_thread(self._put_sync, object_key, data, content_type)

    def _put_sync(self, object_key: str, data: bytes, content_type: str) -> None:
        self._ready_sync()
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        self._client.put_object(
            Bucket=self._bucket,
            Key=object_key,
            Body=data,
            ContentType=content_type,
            CacheControl=CACHE_CONTROL,
            ContentMD5=base64.b64encode(digest).decode("ascii"),
        )

    # -- reading ---------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        object_key = self.object_key(key)
        return await asyncio.to_thread(self._get_sync, key, object_key)

    def _get_sync(self, key: str, object_key: str) -> bytes:
        self._ready_sync()
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=object_key)
        except ClientError as exc:
            # A missing bucket is a configuration error, not a missing blob.
            if _error_code(exc) in _MISSING_KEY_CODES:
                raise KeyError(key) from None
            raise
        body = response["Body"]
        try:
            return body.read()
        finally:
            body.close()

    # -- deleting --------------------------------------------------------------

    async def delete_many(self, keys: Iterable[str]) -> None:
        # Validate everything before removing anything, as the local store does.
        object_keys = list(dict.fromkeys(self.object_key(key) for key in keys))
        if object_keys:
            await asyncio.to_thread(self._delete_sync, object_keys)

    def _delete_sync(self, object_keys: list[str]) -> None:
        self._ready_sync()
        for start in range(0, len(object_keys), _DELETE_BATCH):
            batch = object_keys[start : start + _DELETE_BATCH]
            # S3 reports a key that was already gone as deleted, so only real
            # failures (permissions, ...) come back under "Errors".
            response = self._client.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                shown = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in errors[:5])
                raise RuntimeError(
                    f"S3 refused to delete {len(errors)} object(s) from {self._bucket}: {shown}"
                )

    # -- URLs ------------------------------------------------------------------

    def url(self, key: str, *, public: bool) -> str:
        if public and self._public_base_url is not None:
            # Keys are [A-Za-z0-9_-./] only and so is the prefix: no percent-encoding.
            return f"{self._public_base_url}/{self.object_key(key)}"
        return self._presigned_url(key)

    def _presigned_url(self, key: str) -> str:
        # A SigV4 presigned URL carries its signing time (X-Amz-Date, taken by
        # botocore from the real clock, to the second) and a lifetime in seconds
        # (X-Amz-Expires): signing the same key twice, even within one second of
        # the other, need not give the same URL. So that polls of a finished image
        # see one URL per window instead of a new one each time, a URL is signed
        # once per (key, window) and cached. The window's end E is now + ttl rounded
        # up to a whole window (see _expiry_window), and the URL is signed to expire
        # at E: with X-Amz-Expires = E - floor(now) and botocore's signing time no
        # earlier than floor(now), it expires no earlier than E. Any time t it is
        # handed out again lies in the same window, where t + ttl <= E, so it always
        # has at least ttl seconds left. (Each process keeps its own cache, so two
        # API servers hand out different, equally valid URLs for the same image.)
        now = self._clock()
        expires = self._expiry_window(now)
        cached = self._urls.get((key, expires))
        if cached is not None:
            return cached
        object_key = self.object_key(key)
        url = self._signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._bucket, "Key": object_key},
            ExpiresIn=expires - math.floor(now),
        )
        if len(self._urls) >= _URL_CACHE_MAX:
            self._urls.clear()
        self._urls[key, expires] = url
        return url

    def _expiry_window(self, now: float) -> int:
        # expires_at(t) is E for every t + ttl in (E - window, E]: compute it once
        # per window, not per URL.
        window = self._window_s
        if not self._expires_value - window < now + self._ttl_s <= self._expires_value:
            self._expires_value = _signing.expires_at(now, self._ttl_s, granularity_s=window)
        return self._expires_value

    async def close(self) -> None:
        self._client.close()
        if self._signer is not self._client:
            self._signer.close()


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _normalise_prefix(prefix: str) -> str:
    """``prefix`` as ``"a/b/"`` (or ``""``): plain path segments, each ending in a slash."""
    parts = [part for part in prefix.strip("/").split("/") if part]
    for part in parts:
        if not _PREFIX_PART.fullmatch(part) or part in (".", ".."):
            raise ValueError(f"not a valid key prefix: {prefix!r}")
    return "".join(f"{part}/" for part in parts)
