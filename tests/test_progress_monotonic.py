"""What a polling client sees through kills and restarts: status and progress
never go back, and progress is 100 only when the image is ready."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests._cluster import Worker
from tests._server import Server

pytestmark = pytest.mark.slow

# The statuses that the strictest known client accepts, in the order a job takes them.
RANK = {"new": 0, "in progress": 1, "ready": 2}

Seen = list[tuple[str, int]]


class Poller:
    """Polls one image as a client does (often, to see every step) and keeps each
    distinct (status, progress) in order; a refused connection (a server restarting)
    is skipped, as a client would retry."""

    def __init__(self, client: httpx.Client, image_id: str) -> None:
        self.client = client
        self.image_id = image_id
        self.seen: Seen = []

    def poll(self) -> tuple[str, int] | None:
        try:
            body = self.client.get(f"/images/{self.image_id}").json()
        except httpx.TransportError:
            return None
        state = (body["status"], body["progress"])
        if not self.seen or self.seen[-1] != state:
            self.seen.append(state)
        return state

    def until(self, done: Callable[[str, int], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.poll()
            if state is not None and done(*state):
                return
            assert time.monotonic() < deadline, self.seen
            time.sleep(0.03)

    def until_ready(self, timeout: float = 90) -> Seen:
        self.until(lambda status, _: status not in ("new", "in progress"), timeout)
        return self.seen


def assert_never_backward(seen: Seen) -> None:
    assert seen[-1] == ("ready", 100), seen
    for status, progress in seen:
        assert status in RANK, seen
        assert progress < 100 or status == "ready", seen
    for (s0, p0), (s1, p1) in itertools.pairwise(seen):
        assert RANK[s1] >= RANK[s0], f"status went back: {seen}"
        assert p1 >= p0, f"progress went down: {seen}"


def past_half(status: str, progress: int) -> bool:
    return status == "in progress" and progress >= 50


def test_polls_never_go_back_through_a_killed_worker(make_server: Callable[..., Server]) -> None:
    # Heartbeats (5 s) are rarer than the image is long (3 s): the database has no
    # progress of this attempt when its worker dies.
    server = make_server(sandbox_duration_s=3, workers=1).start()
    with server.client(server.create_key("u")) as client:
        image_id = client.post("/images", json={"prompt": "through a kill"}).json()["id"]
        poller = Poller(client, image_id)
        poller.until(past_half)
        (pid,) = server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        seen = poller.until_ready()
    assert_never_backward(seen)
    assert server.job_rows([image_id])[image_id]["attempts"] == 2


@pytest.mark.parametrize("group", [True, False], ids=["api-and-workers", "api-only"])
def test_polls_never_go_back_through_a_restart(
    make_server: Callable[..., Server], group: bool
) -> None:
    server = make_server(
        sandbox_duration_s=3, workers=1, lease_s=4, heartbeat_s=2, reconcile_interval_s=0.5
    ).start()
    key = server.create_key("u")
    with server.client(key) as client:
        image_id = client.post("/images", json={"prompt": "through a restart"}).json()["id"]
        poller = Poller(client, image_id)
        poller.until(past_half)
        server.kill(group=group)
        server.start()
        seen = poller.until_ready()
    assert_never_backward(seen)
    assert server.job_rows([image_id])[image_id]["attempts"] == 2


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def test_polls_never_go_back_through_a_killed_cluster_worker(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    api = make_server(**{**cluster_settings, "sandbox_duration_s": 3}).start()
    first = Worker(api.env, tmp_path / "w1.log").start()
    workers.append(first)
    with api.client(api.create_key("c")) as client:
        image_id = client.post("/images", json={"prompt": "through a kill"}).json()["id"]
        poller = Poller(client, image_id)
        poller.until(past_half)
        workers.append(Worker(api.env, tmp_path / "w2.log").start())
        first.kill()
        seen = poller.until_ready()
    assert_never_backward(seen)
