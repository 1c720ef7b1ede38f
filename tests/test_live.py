from __future__ import annotations

import asyncio
import time

import pytest

from openletz.live import Live, MemoryLiveStore


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "monotonic", c)
    return c


async def test_unknown_job() -> None:
    assert await MemoryLiveStore().get("nope") is None


async def test_update_and_get() -> None:
    store = MemoryLiveStore()
    await store.update("a", 10, b"jpeg-1")
    assert await store.get("a") == Live(10, b"jpeg-1")
    await store.update("b", 3, None)
    assert await store.get("b") == Live(3, None)
    assert await store.get("a") == Live(10, b"jpeg-1")


async def test_progress_is_monotonic() -> None:
    store = MemoryLiveStore()
    for sent, kept in [(20, 20), (5, 20), (0, 20), (21, 21), (99, 99), (50, 99), (100, 100)]:
        await store.update("a", sent, None)
        got = await store.get("a")
        assert got is not None
        assert got.progress == kept, (sent, kept)


async def test_keeps_last_preview_when_update_has_none() -> None:
    store = MemoryLiveStore()
    await store.update("a", 10, b"first")
    await store.update("a", 20, None)
    assert await store.get("a") == Live(20, b"first")
    await store.update("a", 30, b"second")
    await store.update("a", 40, None)
    assert await store.get("a") == Live(40, b"second")
    # A lower progress still brings a newer preview.
    await store.update("a", 10, b"third")
    assert await store.get("a") == Live(40, b"third")


async def test_entries_expire_after_ttl(clock: Clock) -> None:
    store = MemoryLiveStore(ttl_s=10)
    await store.update("a", 50, b"p")
    clock.now += 9.9
    assert await store.get("a") == Live(50, b"p")
    clock.now += 0.2
    assert await store.get("a") is None


async def test_update_renews_the_ttl(clock: Clock) -> None:
    store = MemoryLiveStore(ttl_s=10)
    await store.update("a", 10, None)
    clock.now += 8
    await store.update("a", 20, None)
    clock.now += 8
    assert await store.get("a") == Live(20, None)
    clock.now += 3
    assert await store.get("a") is None


async def test_sweep_drops_expired_entries(clock: Clock) -> None:
    store = MemoryLiveStore(ttl_s=10)
    for i in range(5):
        await store.update(f"old{i}", i, None)
    clock.now += 20
    await store.update("new", 1, None)
    assert set(store._entries) == {"new"}


async def test_expiry_in_real_time() -> None:
    store = MemoryLiveStore(ttl_s=0.05)
    await store.update("a", 1, b"x")
    assert await store.get("a") == Live(1, b"x")
    await asyncio.sleep(0.1)
    assert await store.get("a") is None


async def test_close() -> None:
    await MemoryLiveStore().close()
