"""Live progress and previews: what changes several times a second.

Only state changes and a slow heartbeat reach the database; this holds the rest.
The embedded store lives in the API process's memory (workers report to it
through the dispatcher); a shared store (Redis) lets any API server answer.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Live:
    progress: int
    preview: bytes | None  # a small JPEG


class LiveStore(ABC):
    @abstractmethod
    async def update(self, job_id: str, progress: int, preview: bytes | None) -> None:
        """Record progress (never lowered) and, when given, a newer preview."""

    @abstractmethod
    async def get(self, job_id: str) -> Live | None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class MemoryLiveStore(LiveStore):
    """Entries expire ``ttl_s`` after their last update, so finished jobs fall out.

    They are not dropped the moment a job ends: a poll that read the job row just
    before the end must still find progress at least as high as before.
    """

    def __init__(self, ttl_s: float = 120.0) -> None:
        self._ttl = ttl_s
        self._entries: dict[str, tuple[float, Live]] = {}
        self._next_sweep = 0.0

    async def update(self, job_id: str, progress: int, preview: bytes | None) -> None:
        now = time.monotonic()
        old = self._entries.get(job_id)
        if old is not None and old[0] >= now:
            progress = max(progress, old[1].progress)
            preview = preview if preview is not None else old[1].preview
        self._entries[job_id] = (now + self._ttl, Live(progress, preview))
        if now >= self._next_sweep:
            self._sweep(now)

    async def get(self, job_id: str) -> Live | None:
        entry = self._entries.get(job_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._ttl / 4
        for key in [k for k, (exp, _) in self._entries.items() if exp < now]:
            del self._entries[key]
