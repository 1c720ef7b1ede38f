"""The whole server on PostgreSQL instead of SQLite: configuration only."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests._databases import create_postgres_database, drop_postgres_database
from tests._server import Server, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url = asyncio.run(create_postgres_database())
    try:
        yield url
    finally:
        asyncio.run(drop_postgres_database(url))


def test_lifecycle_and_recovery_on_postgresql(
    make_server: Callable[..., Server], postgres_url: str
) -> None:
    server = make_server(
        database_url=postgres_url,
        sandbox_duration_s=1.5,
        workers=1,
        lease_s=2,
        heartbeat_s=0.5,
        reconcile_interval_s=0.5,
    ).start()
    health = httpx.get(f"{server.base_url}/health").json()
    assert health["database"]["dialect"] == "postgresql"
    with server.client(server.create_key("pg-user")) as client:
        quick = client.post("/images", json={"prompt": "on postgres", "quality": 1}).json()["id"]
        assert wait_for(client, quick)["status"] == "ready"
        survivor = client.post("/images", json={"prompt": "survivor"}).json()["id"]
        deadline = time.monotonic() + 30
        while client.get(f"/images/{survivor}").json()["progress"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        (pid,) = server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        assert wait_for(client, survivor, timeout=60)["status"] == "ready"
        listed = client.get("/images").json()
        assert {i["id"] for i in listed} == {quick, survivor}


def test_two_api_servers_share_jobs_progress_and_previews(
    make_server: Callable[..., Server], postgres_url: str
) -> None:
    shared = {
        "database_url": postgres_url,
        "redis_url": "redis://127.0.0.1:6379/14",
        "secret_key": "one-secret-for-the-cluster",
        "sandbox_duration_s": 3,
        "preview_interval_s": 0,
    }
    a = make_server(**shared).start()
    b = make_server(**shared).start()
    key = a.create_key("shared-user")
    with a.client(key) as on_a, b.client(key) as on_b:
        image_id = on_a.post("/images", json={"prompt": "seen everywhere"}).json()["id"]
        deadline = time.monotonic() + 30
        while True:
            seen = on_b.get(f"/images/{image_id}").json()
            assert "status" in seen, seen
            if seen["status"] == "in progress" and seen["progress"] > 0 and seen["previewImage"]:
                break
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        done = wait_for(on_b, image_id, timeout=60)
        assert done["status"] == "ready"
        # The URLs one server signs, the other serves.
        assert (
            httpx.get(done["imageVersions"]["640x640"].replace(b.base_url, a.base_url)).status_code
            == 200
        )


def test_odd_image_ids_are_404_on_postgresql(
    make_server: Callable[..., Server], postgres_url: str
) -> None:
    """PostgreSQL refuses some text SQLite takes (NUL, invalid UTF-8): an id that
    cannot exist is a 404 on every id route, never a 500 from the database."""
    server = make_server(database_url=postgres_url).start()
    with server.client(server.create_key("odd-ids")) as client:
        for raw in ("%00", "a%00b", "%FF%FE", "%C3%28", "x" * 65, "%F0%9F%A6%8A", "a.b"):
            for method, path, body in (
                ("GET", f"/images/{raw}", None),
                ("PUT", f"/images/{raw}/interruption", None),
                ("PUT", f"/images/{raw}/privacy", {"privacy": "public"}),
                ("DELETE", f"/images/{raw}", None),
            ):
                resp = client.request(method, path, json=body)
                assert resp.status_code == 404, (method, raw, resp.status_code, resp.text)
                assert resp.json()["statusCode"] == 404
