"""Processes killed with SIGKILL at the worst moments: no job is lost or stuck."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests._server import Server, wait_for

pytestmark = pytest.mark.slow

# Short leases so that recovery after a kill of everything takes seconds.
FAST_RECOVERY = {"lease_s": 2, "heartbeat_s": 0.5, "reconcile_interval_s": 0.5}


def _until_running(client: httpx.Client, image_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = client.get(f"/images/{image_id}").json()
        if body["status"] == "in progress" and body["progress"] > 0:
            return
        time.sleep(0.02)
    raise AssertionError("never started")


def test_killed_worker_is_replaced_and_job_finishes(make_server: Callable[..., Server]) -> None:
    server = make_server(sandbox_duration_s=2, workers=1, **FAST_RECOVERY).start()
    with server.client(server.create_key("u")) as client:
        image_id = client.post("/images", json={"prompt": "survivor", "quality": 2}).json()["id"]
        _until_running(client, image_id)
        (pid,) = server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        ready = wait_for(client, image_id, timeout=60)
    assert ready["status"] == "ready", ready
    assert ready["progress"] == 100
    assert server.worker_pids() != [pid]


@pytest.mark.parametrize("group", [True, False], ids=["api-and-workers", "api-only"])
def test_killed_server_resumes_after_restart(
    make_server: Callable[..., Server], group: bool
) -> None:
    server = make_server(sandbox_duration_s=2, workers=1, **FAST_RECOVERY).start()
    key = server.create_key("u")
    with server.client(key) as client:
        running = client.post("/images", json={"prompt": "interrupted by a crash"}).json()["id"]
        waiting = client.post("/images", json={"prompt": "still queued"}).json()["id"]
        _until_running(client, running)
    server.kill(group=group)
    server.start()
    with server.client(key) as client:
        for image_id in (running, waiting):
            body = wait_for(client, image_id, timeout=60)
            assert body["status"] == "ready", body


def test_job_that_kills_its_worker_fails_after_max_attempts(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(
        engine="tests.fixtures.engines:exit_in_generate",
        sandbox_duration_s=0.5,
        max_attempts=2,
        workers=1,
        **FAST_RECOVERY,
    ).start()
    with server.client(server.create_key("u")) as client:
        poison = client.post("/images", json={"prompt": "poison pill"}).json()["id"]
        healthy = client.post("/images", json={"prompt": "healthy"}).json()["id"]
        failed = wait_for(client, poison, timeout=60)
        assert failed["status"] == "failed"
        assert "2 times" in failed["progressMessage"]
        assert failed["progress"] < 100
        assert wait_for(client, healthy, timeout=60)["status"] == "ready"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("please refuse", "the engine refused this prompt"),
        ("a bug", "ZeroDivisionError"),
    ],
)
def test_engine_errors_fail_the_job_with_a_reason(
    make_server: Callable[..., Server], prompt: str, message: str
) -> None:
    engine = "fail_in_generate" if "refuse" in prompt else "crash_in_generate"
    server = make_server(
        engine=f"tests.fixtures.engines:{engine}", sandbox_duration_s=0.2, workers=1
    ).start()
    with server.client(server.create_key("u")) as client:
        image_id = client.post("/images", json={"prompt": prompt}).json()["id"]
        body = wait_for(client, image_id)
        assert body["status"] == "failed"
        assert message in body["progressMessage"]
        # The worker survives a failed job.
        again = client.post("/images", json={"prompt": "fine"}).json()["id"]
        assert wait_for(client, again)["status"] == "ready"


def test_job_longer_than_the_timeout_fails_with_a_reason(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(
        sandbox_duration_s=4, job_timeout_s=0.5, heartbeat_s=0.2, lease_s=2, workers=1
    ).start()
    with server.client(server.create_key("u")) as client:
        image_id = client.post("/images", json={"prompt": "too slow"}).json()["id"]
        body = wait_for(client, image_id, timeout=30)
    assert body["status"] == "failed"
    assert "longer than 0.5 s" in body["progressMessage"]


def _hang_then_heal(
    make_server: Callable[..., Server], engine: str
) -> tuple[Server, int, str, dict[str, Any]]:
    """A job whose engine hangs, then a healthy one: the server, its worker's pid
    before, the hung job's id and its end as a client saw it."""
    server = make_server(engine=engine, sandbox_duration_s=0.3, job_timeout_s=1, workers=1).start()
    with server.client(server.create_key("u")) as client:
        (pid,) = server.worker_pids()
        hung = client.post("/images", json={"prompt": "hang forever"}).json()["id"]
        started = time.monotonic()
        body = wait_for(client, hung, timeout=30)
        assert body["status"] == "failed", body
        assert time.monotonic() - started < 8
        assert "timed out after 1 s" in body["progressMessage"]
        assert body["progress"] < 100
        healthy = client.post("/images", json={"prompt": "healthy"}).json()["id"]
        assert wait_for(client, healthy, timeout=60)["status"] == "ready"
    return server, pid, hung, body


def test_a_hung_engine_fails_its_job_and_its_worker_is_replaced(
    make_server: Callable[..., Server],
) -> None:
    # The engine never returns and never calls on_step: nothing inside the worker
    # can stop it, so the job fails after its timeout and a grace (2 s at least),
    # and the worker process exits to be replaced.
    server, pid, hung, _ = _hang_then_heal(make_server, "tests.fixtures.engines:hang")
    assert pid not in server.worker_pids()
    # The failed job was sent again to the new worker (it was the old one's)
    # and not run again: its claim found it ended.
    rows = server.job_rows([hung])
    assert rows[hung]["status"] == "failed"
    assert rows[hung]["attempts"] == 1
    assert "exited with code 70" in server.log()


def test_a_hung_engine_in_its_own_process_is_replaced_and_the_worker_goes_on(
    make_server: Callable[..., Server],
) -> None:
    # The same engine, run in a process of its own (as the diffusers engine is):
    # the worker kills that process instead of ending itself, and its next job
    # gets a fresh one.
    server, pid, hung, body = _hang_then_heal(make_server, "tests.fixtures.engines:hang_in_process")
    assert "its engine's process was restarted" in body["progressMessage"]
    assert server.worker_pids() == [pid]
    assert server.job_rows([hung])[hung]["attempts"] == 1
    log = server.log()
    assert "exited with code" not in log
    assert "stuck in a call" in log
