from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.auth import KEY_PREFIX, Accounts, UserError, hash_key
from openletz.db import create_engine, migrate
from openletz.jobs.tables import api_keys


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    await migrate(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def accounts(engine: AsyncEngine) -> Accounts:
    return Accounts(engine, cache_ttl_s=0)


class Clock:
    """Stands in for ``time.monotonic`` in the auth module."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "monotonic", c)
    return c


def _raw_database(tmp_path: Path) -> tuple[str, bytes]:
    """The database as SQL text, and the bytes of its files (the WAL included)."""
    with contextlib.closing(sqlite3.connect(tmp_path / "t.db")) as raw:
        dump = "\n".join(raw.iterdump())
    return dump, b"".join(p.read_bytes() for p in tmp_path.glob("t.db*"))


async def test_key_shape(accounts: Accounts) -> None:
    key, user = await accounts.create_key("alice")
    assert key.startswith(KEY_PREFIX)
    assert len(key) > len(KEY_PREFIX) + 40
    assert user.name == "alice"
    other, _ = await accounts.create_key("alice")
    assert other != key


async def test_keys_are_stored_hashed(
    accounts: Accounts, engine: AsyncEngine, tmp_path: Path
) -> None:
    key, _ = await accounts.create_key("alice", key_name="laptop")
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(api_keys))).mappings().all()
    dump, files = _raw_database(tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert row["key_hash"] == hash_key(key)
    assert row["key_hash"] != key
    assert key.startswith(row["prefix"])
    assert len(row["prefix"]) == len(KEY_PREFIX) + 6
    assert row["name"] == "laptop"
    for value in row.values():
        assert key not in str(value)
    # Nor anywhere else in the database.
    assert "api_keys" in dump
    assert row["key_hash"] in dump
    assert key not in dump
    assert key[len(KEY_PREFIX) :] not in dump
    assert key[len(KEY_PREFIX) :].encode() not in files


async def test_authenticate(accounts: Accounts) -> None:
    key, user = await accounts.create_key("alice")
    found = await accounts.authenticate(key)
    assert found == user
    assert found is not None
    assert found.default_system_version == 3
    assert await accounts.authenticate(key + "x") is None
    assert await accounts.authenticate("olz_not-a-key") is None
    assert await accounts.authenticate("") is None


async def test_keys_of_different_users(accounts: Accounts) -> None:
    ka, alice = await accounts.create_key("alice")
    kb, bob = await accounts.create_key("bob")
    assert alice.id != bob.id
    assert await accounts.authenticate(ka) == alice
    assert await accounts.authenticate(kb) == bob


async def test_revoked_key_fails(accounts: Accounts) -> None:
    key, user = await accounts.create_key("alice")
    spare, _ = await accounts.create_key("alice")
    assert await accounts.authenticate(key) == user
    assert await accounts.revoke_key(key[: len(KEY_PREFIX) + 6]) == 1
    assert await accounts.authenticate(key) is None
    assert await accounts.authenticate(spare) == user


async def test_cache_serves_revoked_key_until_ttl(engine: AsyncEngine, clock: Clock) -> None:
    api = Accounts(engine, cache_ttl_s=5)
    admin = Accounts(engine, cache_ttl_s=0)  # another process: its revocation clears no cache here
    key, user = await admin.create_key("alice")
    assert await api.authenticate(key) == user
    assert await admin.revoke_key(key[:10]) == 1
    assert await admin.authenticate(key) is None

    clock.now += 4.9
    assert await api.authenticate(key) == user  # still cached
    clock.now += 0.2
    assert await api.authenticate(key) is None  # expired: read again


async def test_cache_of_unknown_key_expires_too(engine: AsyncEngine, clock: Clock) -> None:
    api = Accounts(engine, cache_ttl_s=5)
    assert await api.authenticate("olz_unknown") is None
    clock.now += 6
    assert await api.authenticate("olz_unknown") is None


async def test_revoke_on_the_same_instance_clears_its_cache(engine: AsyncEngine) -> None:
    api = Accounts(engine, cache_ttl_s=60)
    key, user = await api.create_key("alice")
    assert await api.authenticate(key) == user
    await api.revoke_key(key[:10])
    assert await api.authenticate(key) is None


async def test_revoke_by_id(accounts: Accounts) -> None:
    first, _ = await accounts.create_key("alice")
    second, _ = await accounts.create_key("alice")
    listed = await accounts.list_keys()
    target = next(k for k in listed if first.startswith(k.prefix))
    assert await accounts.revoke_key(str(target.id)) == 1
    assert await accounts.authenticate(first) is None
    assert await accounts.authenticate(second) is not None
    # Revoking again revokes nothing.
    assert await accounts.revoke_key(str(target.id)) == 0
    assert await accounts.revoke_key("999999") == 0


async def test_revoke_by_prefix(accounts: Accounts) -> None:
    key, _ = await accounts.create_key("alice")
    # The whole key works as a prefix too (only its visible part is compared).
    assert await accounts.revoke_key(key) == 1
    assert await accounts.authenticate(key) is None
    assert await accounts.revoke_key(key[:10]) == 0
    assert await accounts.revoke_key("olz_zzzzzz") == 0


@pytest.mark.parametrize("bad", ["", "abc", KEY_PREFIX, "-1", "1.5"])
async def test_revoke_rejects_what_is_neither(accounts: Accounts, bad: str) -> None:
    with pytest.raises(UserError):
        await accounts.revoke_key(bad)


async def test_list_keys(accounts: Accounts) -> None:
    assert await accounts.list_keys() == []
    ka, _ = await accounts.create_key("alice", key_name="laptop")
    kb, _ = await accounts.create_key("bob")
    await accounts.revoke_key(kb[:10])

    listed = await accounts.list_keys()
    assert [k.user for k in listed] == ["alice", "bob"]
    assert listed[0].id < listed[1].id
    assert listed[0].prefix == ka[:10]
    assert listed[0].name == "laptop"
    assert listed[0].revoked_at is None
    assert listed[0].created_at.tzinfo is not None
    assert listed[1].prefix == kb[:10]
    assert listed[1].name is None
    assert listed[1].revoked_at is not None
    assert listed[1].revoked_at >= listed[1].created_at

    only_alice = await accounts.list_keys("alice")
    assert [k.prefix for k in only_alice] == [ka[:10]]
    assert await accounts.list_keys("nobody") == []


async def test_ensure_user_is_idempotent(accounts: Accounts, engine: AsyncEngine) -> None:
    first = await accounts.ensure_user("alice")
    again = await accounts.ensure_user("alice")
    padded = await accounts.ensure_user("  alice ")
    assert first == again == padded
    # An existing user keeps its settings.
    await accounts.set_default_system_version("alice", 2)
    kept = await accounts.ensure_user("alice", default_system_version=3)
    assert kept.default_system_version == 2
    other = await accounts.ensure_user("bob", default_system_version=2)
    assert other.id != first.id
    assert other.default_system_version == 2
    async with engine.connect() as conn:
        count = (await conn.execute(sa.text("SELECT count(*) FROM users"))).scalar()
    assert count == 2


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
async def test_ensure_user_rejects_bad_names(accounts: Accounts, name: str) -> None:
    with pytest.raises(UserError):
        await accounts.ensure_user(name)


async def test_create_key_makes_the_user(accounts: Accounts) -> None:
    key, user = await accounts.create_key("carol")
    assert await accounts.ensure_user("carol") == user
    assert await accounts.authenticate(key) == user


async def test_set_default_system_version(accounts: Accounts) -> None:
    key, _ = await accounts.create_key("alice")
    user = await accounts.set_default_system_version("alice", 2)
    assert user.default_system_version == 2
    found = await accounts.authenticate(key)
    assert found is not None
    assert found.default_system_version == 2
    back = await accounts.set_default_system_version("alice", 3)
    assert back.default_system_version == 3


async def test_set_default_system_version_clears_the_cache(engine: AsyncEngine) -> None:
    api = Accounts(engine, cache_ttl_s=60)
    key, _ = await api.create_key("alice")
    assert (await api.authenticate(key)).default_system_version == 3  # type: ignore[union-attr]
    await api.set_default_system_version("alice", 2)
    assert (await api.authenticate(key)).default_system_version == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("version", [0, 1, 4])
async def test_set_default_system_version_rejects_bad_versions(
    accounts: Accounts, version: int
) -> None:
    await accounts.ensure_user("alice")
    with pytest.raises(UserError, match="2 or 3"):
        await accounts.set_default_system_version("alice", version)
    assert (await accounts.ensure_user("alice")).default_system_version == 3


async def test_set_default_system_version_of_unknown_user(accounts: Accounts) -> None:
    with pytest.raises(UserError, match="nobody"):
        await accounts.set_default_system_version("nobody", 2)
