"""Users and their API keys.

A key is shown once, when it is made; only its SHA-256 is stored. Keys are 256
random bits, so a fast hash is enough: there is nothing to brute-force that a
slow hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.jobs.tables import api_keys, users, utcnow

KEY_PREFIX = "olz_"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    default_system_version: int


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    user: str
    prefix: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


class UserError(ValueError):
    """A request about users or keys that cannot be carried out (the message says why)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Accounts:
    """Users and keys, with a short-lived cache of key lookups for the hot path."""

    def __init__(
        self, engine: AsyncEngine, *, cache_ttl_s: float = 5.0, default_system_version: int = 3
    ) -> None:
        self._engine = engine
        self._default_version = default_system_version
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, User | None]] = {}

    async def ensure_user(self, name: str, *, default_system_version: int | None = None) -> User:
        name = name.strip()
        if not name or len(name) > 100:
            raise UserError("a user name must be 1 to 100 characters")
        async with self._engine.begin() as conn:
            row = (await conn.execute(users.select().where(users.c.name == name))).first()
            if row is None:
                row = (
                    await conn.execute(
                        users.insert()
                        .values(
                            name=name,
                            default_system_version=default_system_version or self._default_version,
                            created_at=utcnow(),
                        )
                        .returning(*users.c)
                    )
                ).first()
        assert row is not None
        return User(row.id, row.name, row.default_system_version)

    async def set_default_system_version(self, name: str, version: int) -> User:
        if version not in (2, 3):
            raise UserError("systemVersion must be 2 or 3")
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    users.update()
                    .where(users.c.name == name)
                    .values(default_system_version=version)
                    .returning(*users.c)
                )
            ).first()
        if row is None:
            raise UserError(f"no user named {name!r}")
        self._cache.clear()
        return User(row.id, row.name, row.default_system_version)

    async def create_key(self, user_name: str, *, key_name: str | None = None) -> tuple[str, User]:
        """Make a key for ``user_name`` (creating the user if needed); returns the key itself."""
        user = await self.ensure_user(user_name)
        key = new_key()
        async with self._engine.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    user_id=user.id,
                    prefix=key[: len(KEY_PREFIX) + 6],
                    key_hash=hash_key(key),
                    name=key_name,
                    created_at=utcnow(),
                )
            )
        return key, user

    async def list_keys(self, user_name: str | None = None) -> list[KeyInfo]:
        stmt = (
            sa.select(api_keys, users.c.name.label("user_name"))
            .join(users, users.c.id == api_keys.c.user_id)
            .order_by(api_keys.c.id)
        )
        if user_name is not None:
            stmt = stmt.where(users.c.name == user_name)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [
            KeyInfo(
                r["id"], r["user_name"], r["prefix"], r["name"], r["created_at"], r["revoked_at"]
            )
            for r in rows
        ]

    async def revoke_key(self, key_id_or_prefix: str) -> int:
        """Revoke by numeric id or by the visible prefix; returns how many keys were revoked."""
        if key_id_or_prefix.isdigit():
            where = api_keys.c.id == int(key_id_or_prefix)
        elif key_id_or_prefix.startswith(KEY_PREFIX) and len(key_id_or_prefix) > len(KEY_PREFIX):
            where = api_keys.c.prefix == key_id_or_prefix[: len(KEY_PREFIX) + 6]
        else:
            raise UserError(f"give a key id or a key prefix such as {KEY_PREFIX}AbC123")
        async with self._engine.begin() as conn:
            result = await conn.execute(
                api_keys.update()
                .where(where, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        self._cache.clear()
        return int(result.rowcount)

    async def authenticate(self, key: str) -> User | None:
        """The user a live key belongs to, or ``None``. Answers from a cache for up to
        ``cache_ttl_s``, so a revocation takes effect on every server within that time."""
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        stmt = (
            sa.select(users.c.id, users.c.name, users.c.default_system_version)
            .join(api_keys, api_keys.c.user_id == users.c.id)
            .where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        user = User(row.id, row.name, row.default_system_version) if row is not None else None
        if self._ttl > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self._ttl, user)
        return user
