"""Blobs as files under one folder, served by the API itself."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from openletz.storage import _signing
from openletz.storage.base import BlobStore, InvalidKey, check_key

# Refuse to open a final path component that is a symlink, where the OS can tell us.
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)

# Written files are world-readable so that a front web server running as another
# user can serve the folder directly; mkstemp alone would leave them 0600.
_FILE_MODE = 0o644


class LocalBlobStore(BlobStore):
    """Files at ``root/<key>``, reachable at ``{public_base_url}/files/{key}``."""

    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        public_base_url: str,
        secret: str,
        url_ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("LocalBlobStore needs a non-empty secret to sign URLs")
        if url_ttl_s <= 0:
            raise ValueError(f"url_ttl_s must be positive, not {url_ttl_s}")
        root.mkdir(parents=True, exist_ok=True)
        # Resolved once, here: the root itself may legitimately be a symlink (a
        # mounted volume), whereas anything below it must not be.
        self._root = root.resolve(strict=True)
        self._base_url = public_base_url.rstrip("/")
        self._secret = secret
        self._ttl_s = url_ttl_s
        self._clock = clock
        self._urls: dict[tuple[str, int], str] = {}
        self._expires_value = 0

    @property
    def root(self) -> Path:
        return self._root

    def path(self, key: str) -> Path:
        """The file for ``key``; raises :class:`InvalidKey` if it could lie outside root."""
        check_key(key)
        candidate = self._root / key
        # check_key already rules out "..", absolute paths and separators; this catches
        # what a pattern cannot see, a symlink on disk below root pointing elsewhere.
        # Requiring the resolved path to be the literal one refuses every link, even
        # one that stays inside, which nothing here ever creates.
        resolved = candidate.resolve()
        if resolved != candidate or not resolved.is_relative_to(self._root):
            raise InvalidKey(f"blob key leads outside the store: {key!r}")
        return resolved

    # -- writing ---------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        # content_type is not stored: the API derives it from the key's extension.
        check_key(key)
        await asyncio.to_thread(self._put_sync, key, data)

    async def put_many(self, items: Mapping[str, bytes], content_type: str) -> None:
        for key in items:
            check_key(key)
        await asyncio.to_thread(self._put_many_sync, items)

    def _put_many_sync(self, items: Mapping[str, bytes]) -> None:
        # One thread and one sync of each folder for a job's versions, instead of a
        # thread and a folder sync per file: the folder holds them all.
        folders: list[Path] = []
        # A picture that fits a version's box is that version unchanged, and comes as
        # the same bytes object: it is written once, and the other keys are hard
        # links to that file (nothing here ever writes into a file in place, so
        # they stay the same until one is replaced or deleted, on its own).
        written: dict[int, Path] = {}
        for key, data in items.items():
            first = written.get(id(data))
            if first is not None and (folder := self._link_sync(first, key)) is not None:
                folders.append(folder)
                continue
            path = self._put_sync(key, data, sync_folder=False)
            written.setdefault(id(data), path)
            folders.append(path.parent)
        for folder in dict.fromkeys(folders):
            _fsync_dir(folder)

    def _link_sync(self, existing: Path, key: str) -> Path | None:
        """``key`` as a hard link to ``existing``; ``None`` where the file system
        has no hard links (the caller writes a copy instead)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.link")
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.link(existing, tmp)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.ENOSYS):
                return None
            raise
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return path.parent

    def _put_sync(self, key: str, data: bytes, *, sync_folder: bool = True) -> Path:
        """Write ``key`` atomically; returns its file."""
        path = self.path(key)
        fd, tmp_name = _temp_file_in(path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), _FILE_MODE)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            # A reader sees the old file or the new one, never half of either.
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        if sync_folder:
            _fsync_dir(path.parent)
        return path

    # -- reading ---------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        check_key(key)
        return await asyncio.to_thread(self._get_sync, key)

    def _get_sync(self, key: str) -> bytes:
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_BINARY)
        except FileNotFoundError:
            raise KeyError(key) from None
        with os.fdopen(fd, "rb") as handle:
            return handle.read()

    # -- deleting --------------------------------------------------------------

    async def delete_many(self, keys: Iterable[str]) -> None:
        # Validate everything before removing anything: one bad key fails the call
        # without leaving it half done.
        checked = [check_key(key) for key in keys]
        if checked:
            await asyncio.to_thread(self._delete_sync, checked)

    def _delete_sync(self, keys: list[str]) -> None:
        paths = [self.path(key) for key in keys]
        for path in paths:
            path.unlink(missing_ok=True)
        for folder in dict.fromkeys(path.parent for path in paths):
            try:
                folder.rmdir()
            except OSError as exc:
                # Still holding other versions (or a put in flight), or already gone.
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    raise

    # -- URLs ------------------------------------------------------------------

    def url(self, key: str, *, public: bool) -> str:
        # Expiry times are whole minutes, so a URL is the same for a minute (and a
        # public one for ever): polls of a ready image build nothing most of the time.
        expires = 0 if public else self._expires()
        cached = self._urls.get((key, expires))
        if cached is not None:
            return cached
        check_key(key)
        # Keys are [A-Za-z0-9_-./] only, so they need no percent-encoding.
        url = f"{self._base_url}/files/{key}"
        if not public:
            signature = _signing.sign(self._secret, key, expires)
            url = f"{url}?expires={expires}&signature={signature}"
        if len(self._urls) >= 4096:
            self._urls.clear()
        self._urls[key, expires] = url
        return url

    def _expires(self) -> int:
        # The expiry moves once a minute: compute it once per minute, not per URL.
        # expires_at(t) is E for every t + ttl in (E - 60, E].
        now = self._clock()
        if not self._expires_value - 60 < now + self._ttl_s <= self._expires_value:
            self._expires_value = _signing.expires_at(now, self._ttl_s)
        return self._expires_value

    def verify(self, key: str, expires: str | int | None, signature: str | None) -> bool:
        """Whether a private URL's ``expires`` and ``signature`` grant access to ``key``."""
        try:
            check_key(key)
        except InvalidKey:
            return False
        return _signing.verify(self._secret, key, expires, signature, now=self._clock())


def _temp_file_in(folder: Path) -> tuple[int, str]:
    # A concurrent delete_many may remove an emptied job folder between mkdir and
    # mkstemp; making the folder again is all that race needs.
    for attempt in range(3):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; Windows cannot open a directory for this.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
