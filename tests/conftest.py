from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests._cluster import BROKER, broker_leftovers, delete_broker_objects
from tests._databases import create_postgres_database, drop_postgres_database
from tests._s3 import S3Server
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

    make.servers = servers  # type: ignore[attr-defined]
    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def cluster_settings(make_server: Callable[..., Server]) -> Iterator[dict[str, object]]:
    """Settings of a cluster of its own: a fresh PostgreSQL database, queues of its
    own on RabbitMQ, Redis; sandbox jobs of 2 s, and quick recovery. At the end its
    API servers are stopped, then its queues and exchanges removed (and checked)."""
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
            "stale_new_s": 2,
        }
    finally:
        for srv in make_server.servers:  # type: ignore[attr-defined]
            srv.stop()  # before the queues go: a running server would declare them again
        delete_broker_objects(BROKER, prefix)
        asyncio.run(drop_postgres_database(url))
    assert broker_leftovers(BROKER, prefix) == []


@pytest.fixture
def cluster_s3_settings(
    cluster_settings: dict[str, object], s3_server: S3Server
) -> Iterator[dict[str, object]]:
    """``cluster_settings`` with images in a bucket of its own on the session's S3
    server, removed at the end: every API server sees every worker's images."""
    bucket = s3_server.new_bucket_name()
    yield {
        **cluster_settings,
        "blob_store": "s3",
        "s3_bucket": bucket,
        "s3_endpoint_url": s3_server.endpoint_url,
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
        "s3_region": s3_server.region,
        "s3_create_bucket": True,
    }
    client = s3_server.client()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=bucket)
    except client.exceptions.NoSuchBucket:
        pass
    finally:
        client.close()
