"""PUT /images/{id}/interruption: a running image stops within a step; a queued one never starts."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests._server import Server, wait_for


def _wait_progress(client: httpx.Client, image_id: str, at_least: int) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body: dict = client.get(f"/images/{image_id}").json()
        if body["status"] == "in progress" and body["progress"] >= at_least:
            return body
        time.sleep(0.01)
    raise AssertionError(f"{image_id} never reached progress {at_least}")


def test_running_image_stops_within_a_step(make_server: Callable[..., Server]) -> None:
    # 30 steps of 0.2 s: a stop "within one step" ends well before the rest would.
    server = make_server(sandbox_duration_s=2.4, workers=1).start()
    with server.client(server.create_key("u")) as client:
        image_id = client.post("/images", json={"prompt": "slow", "quality": 5}).json()["id"]
        before = _wait_progress(client, image_id, 10)
        started = time.monotonic()
        resp = client.put(f"/images/{image_id}/interruption")
        assert resp.status_code == 204
        assert resp.content == b""
        ended = wait_for(client, image_id, every=0.01)
        elapsed = time.monotonic() - started
    assert ended["status"] == "interrupted"
    assert ended["imageVersions"] == {}
    assert ended["progressMessage"]
    # The progress reached is kept, never lowered, and never 100.
    assert before["progress"] <= ended["progress"] < 100
    assert ended["progress"] <= before["progress"] + 2 * 3  # at most ~2 steps of 3 % each
    assert elapsed < 1.0, f"took {elapsed:.2f}s to stop; a step is 0.2s"


def test_queued_image_never_starts(make_server: Callable[..., Server]) -> None:
    server = make_server(sandbox_duration_s=1.0, workers=1).start()
    with server.client(server.create_key("u")) as client:
        busy = client.post("/images", json={"prompt": "first", "quality": 3}).json()["id"]
        queued = client.post("/images", json={"prompt": "second", "quality": 1}).json()["id"]
        _wait_progress(client, busy, 1)
        assert client.get(f"/images/{queued}").json()["status"] == "new"
        assert client.put(f"/images/{queued}/interruption").status_code == 204
        assert client.get(f"/images/{queued}").json()["status"] == "interrupted"
        assert wait_for(client, busy)["status"] == "ready"
        # The worker is free and the queue was drained: the interrupted one stays so.
        after = client.post("/images", json={"prompt": "third", "quality": 1}).json()["id"]
        assert wait_for(client, after)["status"] == "ready"
        final = client.get(f"/images/{queued}").json()
    assert final["status"] == "interrupted"
    assert final["progress"] == 0
    assert final["imageVersions"] == {}


def test_interrupting_twice_is_harmless(client: httpx.Client) -> None:
    image_id = client.post("/images", json={"prompt": "x", "quality": 5}).json()["id"]
    assert client.put(f"/images/{image_id}/interruption").status_code == 204
    assert client.put(f"/images/{image_id}/interruption").status_code == 204
    assert wait_for(client, image_id)["status"] == "interrupted"
