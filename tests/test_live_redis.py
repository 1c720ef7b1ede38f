"""The Redis live store, against the Redis server on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from openletz.live import Live
from openletz.live_redis import RedisLiveStore

REDIS = os.environ.get("OPENLETZ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
async def store() -> AsyncIterator[RedisLiveStore]:
    live = RedisLiveStore(REDIS, ttl_s=2, prefix=f"openletz-test:{uuid.uuid4().hex}:")
    yield live
    await live.close()


async def test_progress_never_goes_down_and_previews_stay(store: RedisLiveStore) -> None:
    assert await store.get("j") is None
    await store.update("j", 10, b"\xff\xd8first")
    await store.update("j", 5, None)
    assert await store.get("j") == Live(10, b"\xff\xd8first")
    await store.update("j", 40, b"\xff\xd8second")
    assert await store.get("j") == Live(40, b"\xff\xd8second")


async def test_two_writers_see_one_value(store: RedisLiveStore) -> None:
    other = RedisLiveStore(REDIS, ttl_s=2, prefix=store._prefix)
    try:
        await asyncio.gather(*(s.update("j", p, None) for p in range(50) for s in (store, other)))
        assert await other.get("j") == Live(49, None)
    finally:
        await other.close()


async def test_entries_expire(store: RedisLiveStore) -> None:
    await store.update("j", 1, None)
    await asyncio.sleep(2.2)
    assert await store.get("j") is None


async def test_a_redis_outage_degrades_to_no_live_state() -> None:
    # Nothing listens on port 1: every call fails at once.
    live = RedisLiveStore("redis://127.0.0.1:1/0")
    try:
        await live.update("j", 10, b"x")
        assert await live.get("j") is None
    finally:
        await live.close()
