"""Live progress and previews in Redis, shared by every API server and worker."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from openletz.live import Live, LiveStore

log = logging.getLogger(__name__)

# Progress never goes down, whichever server or worker writes last: the
# comparison happens in Redis, in one step.
_UPDATE = """
local old = tonumber(redis.call('HGET', KEYS[1], 'p') or '-1')
local new = tonumber(ARGV[1])
if new > old then redis.call('HSET', KEYS[1], 'p', new) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'v', ARGV[2]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisLiveStore(LiveStore):
    """One hash per job (``openletz:live:<id>``: ``p`` progress, ``v`` preview JPEG),
    expiring ``ttl_s`` after its last update."""

    def __init__(self, url: str, *, ttl_s: int = 120, prefix: str = "openletz:live:") -> None:
        self._redis: Any = redis.from_url(url)
        self._ttl = ttl_s
        self._prefix = prefix
        self._update = self._redis.register_script(_UPDATE)
        self._quiet_until = 0.0

    # Live state is a convenience over the database, which has the truth and the
    # last heartbeat's progress: when Redis fails, polls go on without it.

    async def update(self, job_id: str, progress: int, preview: bytes | None) -> None:
        try:
            await self._update(
                keys=[self._prefix + job_id], args=[progress, preview or b"", self._ttl]
            )
        except (RedisError, OSError) as exc:
            self._complain(exc)

    async def get(self, job_id: str) -> Live | None:
        try:
            progress, preview = await self._redis.hmget(self._prefix + job_id, "p", "v")
        except (RedisError, OSError) as exc:
            self._complain(exc)
            return None
        if progress is None:
            return None
        return Live(int(progress), preview or None)

    def _complain(self, exc: Exception) -> None:
        now = time.monotonic()
        if now >= self._quiet_until:  # once a minute is enough to be noticed
            self._quiet_until = now + 60
            log.warning("Redis unavailable for live progress (%s); using the database", exc)

    async def close(self) -> None:
        await self._redis.aclose()
