"""Batching in the embedded mode, through HTTP, with a sandbox engine that batches
(``tests.fixtures.engines:lockstep``: requests of one size and quality run as one
call, a step of each at a time)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests._server import Server, wait_for

pytestmark = pytest.mark.slow

LOCKSTEP = "tests.fixtures.engines:lockstep"


def _all_running(client: httpx.Client, ids: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        bodies = [client.get(f"/images/{i}").json() for i in ids]
        if all(b["status"] == "in progress" and b["progress"] > 0 for b in bodies):
            return
        assert time.monotonic() < deadline, bodies
        time.sleep(0.02)


def test_compatible_jobs_are_claimed_together(make_server: Callable[..., Server]) -> None:
    server = make_server(
        engine=LOCKSTEP, sandbox_duration_s=1, workers=1, batch_max=4, batch_window_s=0.3
    ).start()
    body = {"prompt": "together", "width": 520, "height": 520}
    with server.client(server.create_key("u")) as client:
        ids = [client.post("/images", json={**body, "seed": s}).json()["id"] for s in (1, 2, 3)]
        assert all(wait_for(client, i)["status"] == "ready" for i in ids)
    started = sorted(r["started_at"] for r in server.job_rows(ids).values())
    assert (started[-1] - started[0]).total_seconds() < 0.2, started


def test_idle_workers_take_the_jobs_that_cannot_share_a_batch(
    make_server: Callable[..., Server],
) -> None:
    # Two workers, two jobs of different sizes: each goes to a worker of its own at
    # once, instead of both to the first worker, which would run them one by one.
    server = make_server(
        engine=LOCKSTEP, sandbox_duration_s=2, workers=2, batch_max=4, batch_window_s=0.3
    ).start()
    with server.client(server.create_key("u")) as client:
        a = client.post("/images", json={"prompt": "a", "width": 520, "height": 520}).json()
        b = client.post("/images", json={"prompt": "b", "width": 640, "height": 640}).json()
        _all_running(client, [a["id"], b["id"]], timeout=10)
        assert wait_for(client, a["id"])["status"] == "ready"
        assert wait_for(client, b["id"])["status"] == "ready"
    rows = server.job_rows([a["id"], b["id"]])
    started = sorted(r["started_at"] for r in rows.values())
    assert (started[1] - started[0]).total_seconds() < 1, started


def test_an_interrupted_job_of_a_batch_ends_before_its_batch(
    make_server: Callable[..., Server],
) -> None:
    # 12 steps of 0.33 s; heartbeats every 5 s (the default), so the interruption
    # must reach the worker that claimed the job for its batch, not wait for one.
    server = make_server(
        engine=LOCKSTEP, sandbox_duration_s=4, workers=1, batch_max=4, batch_window_s=0.3
    ).start()
    body = {"prompt": "batch", "width": 520, "height": 520}
    with server.client(server.create_key("u")) as client:
        ids = [client.post("/images", json={**body, "seed": s}).json()["id"] for s in (1, 2, 3)]
        _all_running(client, ids)
        assert client.put(f"/images/{ids[1]}/interruption").status_code == 204
        stopped = wait_for(client, ids[1], timeout=2, every=0.02)
        assert stopped["status"] == "interrupted"
        assert stopped["progress"] < 100
        others = [client.get(f"/images/{i}").json() for i in (ids[0], ids[2])]
        assert [o["status"] for o in others] == ["in progress", "in progress"], others
        assert [wait_for(client, i)["status"] for i in (ids[0], ids[2])] == ["ready", "ready"]
    started = sorted(r["started_at"] for r in server.job_rows(ids).values())
    assert (started[-1] - started[0]).total_seconds() < 0.2, "not one batch"
