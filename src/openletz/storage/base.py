"""Where finished images live.

Keys look like ``<job id>/<version>-<attempt>.<ext>`` (each attempt at a job
writes its own); a store never accepts a key that could name something outside
itself (see :func:`check_key`).
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_-]{1,64}\.[a-z0-9]{1,8}$")


class InvalidKey(ValueError):
    pass


def check_key(key: str) -> str:
    """Return ``key`` if it is a well-formed blob key, else raise :class:`InvalidKey`."""
    if not _KEY.fullmatch(key):
        raise InvalidKey(f"not a valid blob key: {key!r}")
    return key


class BlobStore(ABC):
    #: short name shown in /health
    name: str

    @abstractmethod
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def put_many(self, items: Mapping[str, bytes], content_type: str) -> None:
        """Store several objects (a job's versions); stores may do it in one go."""
        await asyncio.gather(*(self.put(key, data, content_type) for key, data in items.items()))

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises ``KeyError`` when there are none."""

    @abstractmethod
    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove ``keys``; keys that are already gone are not an error."""

    @abstractmethod
    def url(self, key: str, *, public: bool) -> str:
        """An absolute URL for ``key``: stable when ``public``, expiring otherwise."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass
