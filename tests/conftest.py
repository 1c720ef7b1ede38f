from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests._cluster import BROKER, delete_queues
from tests._databases import create_postgres_database, drop_postgres_database
from tests._s3 import s3_server_fixture as s3_server_fixture
from tests._server import Server

_users = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the session: fast sandbox, two workers."""
    srv = Server(
        tmp_path_factory.mktemp("server"),
        sandbox_duration_s=0.6,
        workers=2,
        preview_interval_s=0,
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
def new_client(server: Server) -> Iterator[Callable[..., httpx.Client]]:
    """A factory of clients, each with a key of a new user."""
    clients: list[httpx.Client] = []

    def make(system_version: int | None = None) -> httpx.Client:
        key = server.create_key(f"user{next(_users)}", system_version=system_version)
        c = server.client(key)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(new_client: Callable[..., httpx.Client]) -> httpx.Client:
    return new_client()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Servers of one test's own, stopped at its end (for kills and restarts)."""
    servers: list[Server] = []

    def make(**settings: object) -> Server:
        srv = Server(tmp_path / f"s{len(servers)}", **settings)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def cluster_settings() -> Iterator[dict[str, object]]:
    """Settings of a cluster of its own: a fresh PostgreSQL database, queues of its
    own on RabbitMQ, Redis; sandbox jobs of 2 s, and quick recovery."""
    url = asyncio.run(create_postgres_database())
    prefix = f"openletz-test-{uuid.uuid4().hex[:8]}"
    try:
        yield {
            "dispatcher": "celery",
            "broker_url": BROKER,
            "queue_prefix": prefix,
            "database_url": url,
            "redis_url": "redis://127.0.0.1:6379/13",
            "secret_key": "one-secret-for-the-cluster",
            "sandbox_duration_s": 2,
            "preview_interval_s": 0,
            "lease_s": 2,
            "heartbeat_s": 0.5,
            "reconcile_interval_s": 0.5,
        }
    finally:
        delete_queues(BROKER, prefix, ["default"])
        asyncio.run(drop_postgres_database(url))
