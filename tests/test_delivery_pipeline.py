"""A worker's next generation runs while its last image is delivered (versions
encoded, stored, its end recorded), and no process's death or stop at that moment
loses the job: embedded workers and cluster workers, with a store that takes
seconds to write (``tests.fixtures.engines:slow_store``)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._cluster import Worker
from tests._server import Server, wait_for

pytestmark = pytest.mark.slow

SLOW_STORE = "tests.fixtures.engines:slow_store"
JOB = {"prompt": "delivered slowly", "width": 520, "height": 520, "quality": 1}
ENCODED = 95  # shown while the versions are stored


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def _until_storing(client: httpx.Client, image_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/images/{image_id}").json()
        if body["status"] == "in progress" and body["progress"] >= ENCODED:
            return
        assert body["status"] in ("new", "in progress"), body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def _overlap(rows: dict[str, dict[str, Any]], first: str, second: str) -> None:
    one, two = rows[first], rows[second]
    assert one["status"] == two["status"] == "ready"
    assert one["attempts"] == two["attempts"] == 1
    # The second job was claimed (its engine call began) before the first had ended.
    assert two["started_at"] < one["finished_at"], (one, two)


# -- embedded ------------------------------------------------------------------------


def test_a_worker_s_next_job_starts_while_its_last_is_delivered(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(
        engine=SLOW_STORE, test_put_delay_s=1.5, sandbox_duration_s=0.4, workers=1
    ).start()
    with server.client(server.create_key("u")) as client:
        first = client.post("/images", json={**JOB, "seed": 1}).json()["id"]
        second = client.post("/images", json={**JOB, "seed": 2}).json()["id"]
        _until_storing(client, first)
        deadline = time.monotonic() + 10
        while (health := httpx.get(f"{server.base_url}/health").json())["dispatcher"][
            "delivering"
        ] < 1:
            assert time.monotonic() < deadline, health
            time.sleep(0.02)
        assert health["dispatcher"]["busy"] >= 1
        assert wait_for(client, first)["status"] == "ready"
        assert wait_for(client, second)["status"] == "ready"
    _overlap(server.job_rows([first, second]), first, second)
    health = httpx.get(f"{server.base_url}/health").json()["dispatcher"]
    assert (health["busy"], health["delivering"], health["queued"]) == (0, 0, 0)


def test_a_worker_killed_while_delivering_is_replaced_and_the_job_made_again(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(
        engine=SLOW_STORE,
        test_put_delay_s=2,
        sandbox_duration_s=0.4,
        workers=1,
        lease_s=2,
        heartbeat_s=0.5,
        reconcile_interval_s=0.5,
    ).start()
    with server.client(server.create_key("u")) as client:
        image_id = client.post("/images", json=JOB).json()["id"]
        _until_storing(client, image_id)
        (pid,) = server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        done = wait_for(client, image_id, timeout=60)
    assert done["status"] == "ready", done
    assert server.job_rows([image_id])[image_id]["attempts"] == 2


def test_a_server_stopped_while_its_worker_delivers_ends_the_job_first(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(
        engine=SLOW_STORE, test_put_delay_s=1.5, sandbox_duration_s=0.4, workers=1
    ).start()
    with server.client(server.create_key("u")) as client:
        image_id = client.post("/images", json=JOB).json()["id"]
        _until_storing(client, image_id)
    server.stop()
    row = server.job_rows([image_id])[image_id]
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("ready", 1, None)


# -- cluster -------------------------------------------------------------------------


def _pg_rows(settings: dict[str, object], ids: list[str]) -> dict[str, dict[str, Any]]:
    async def go() -> dict[str, dict[str, Any]]:
        import asyncpg

        conn = await asyncpg.connect(str(settings["database_url"]).replace("+asyncpg", ""))
        try:
            rows = await conn.fetch("SELECT * FROM jobs WHERE id = ANY($1)", ids)
        finally:
            await conn.close()
        return {r["id"]: dict(r) for r in rows}

    return asyncio.run(go())


@pytest.fixture
def slow_cluster(cluster_settings: dict[str, object]) -> dict[str, object]:
    return {
        **cluster_settings,
        "engine": SLOW_STORE,
        "test_put_delay_s": 2,
        "sandbox_duration_s": 0.4,
    }


def test_a_cluster_worker_s_next_job_starts_while_its_last_is_delivered(
    make_server: Callable[..., Server],
    slow_cluster: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    api = make_server(**slow_cluster).start()
    workers.append(Worker(api.env, tmp_path / "w1.log").start())
    with api.client(api.create_key("c")) as client:
        first = client.post("/images", json={**JOB, "seed": 1}).json()["id"]
        second = client.post("/images", json={**JOB, "seed": 2}).json()["id"]
        assert wait_for(client, first)["status"] == "ready", workers[0].log()
        assert wait_for(client, second)["status"] == "ready", workers[0].log()
    _overlap(_pg_rows(slow_cluster, [first, second]), first, second)


def test_a_cluster_worker_killed_while_delivering_leaves_the_job_to_another(
    make_server: Callable[..., Server],
    slow_cluster: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    # The job's message was acknowledged when its engine call ended: only the
    # database has it. Its lease runs out, recovery puts it back, and the reconciler
    # sends it again to the other worker.
    api = make_server(**slow_cluster).start()
    first = Worker(api.env, tmp_path / "w1.log").start()
    workers.append(first)
    with api.client(api.create_key("c")) as client:
        image_id = client.post("/images", json=JOB).json()["id"]
        _until_storing(client, image_id)
        workers.append(Worker(api.env, tmp_path / "w2.log").start())
        first.kill()
        done = wait_for(client, image_id, timeout=60)
    assert done["status"] == "ready", (done, workers[1].log())
    assert _pg_rows(slow_cluster, [image_id])[image_id]["attempts"] == 2


def test_a_cluster_worker_stopped_with_sigterm_while_delivering_ends_the_job_first(
    make_server: Callable[..., Server],
    slow_cluster: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    api = make_server(**slow_cluster).start()
    first = Worker(api.env, tmp_path / "w1.log").start()
    workers.append(first)
    with api.client(api.create_key("c")) as client:
        image_id = client.post("/images", json=JOB).json()["id"]
        _until_storing(client, image_id)
        first.stop()
        assert first.proc is not None
        assert first.proc.returncode == 0, first.log()
        done = client.get(f"/images/{image_id}").json()
    assert done["status"] == "ready", (done, first.log())
    row = _pg_rows(slow_cluster, [image_id])[image_id]
    assert (row["attempts"], row["lease_owner"]) == (1, None)


# -- read-ahead ----------------------------------------------------------------------


def _dispatcher(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base_url}/health").json()["dispatcher"]
    return body


def _until_running(client: httpx.Client, image_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/images/{image_id}").json()["status"] != "in progress":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_busy_worker_is_sent_the_next_job_ahead(make_server: Callable[..., Server]) -> None:
    # One worker: the second job goes to it while the first generates, waits there
    # (still "new": not claimed), and starts as soon as the first's engine call ends.
    server = make_server(sandbox_duration_s=1.5, workers=1, batch_max=1).start()
    with server.client(server.create_key("u")) as client:
        first = client.post("/images", json={**JOB, "seed": 1}).json()["id"]
        _until_running(client, first)
        second = client.post("/images", json={**JOB, "seed": 2}).json()["id"]
        deadline = time.monotonic() + 5
        while (state := _dispatcher(server))["ahead"] < 1:
            assert time.monotonic() < deadline, state
            time.sleep(0.02)
        assert state["queued"] == 0
        assert client.get(f"/images/{second}").json()["status"] == "new"
        assert wait_for(client, first)["status"] == "ready"
        assert wait_for(client, second)["status"] == "ready"
    rows = server.job_rows([first, second])
    assert rows[second]["attempts"] == 1
    state = _dispatcher(server)
    assert (state["busy"], state["ahead"], state["queued"]) == (0, 0, 0)


def test_an_idle_worker_is_preferred_to_sending_ahead(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(sandbox_duration_s=1.5, workers=2, batch_max=1).start()
    with server.client(server.create_key("u")) as client:
        first = client.post("/images", json={**JOB, "seed": 1}).json()["id"]
        _until_running(client, first)
        second = client.post("/images", json={**JOB, "seed": 2}).json()["id"]
        # The idle worker takes it at once: both generate side by side.
        _until_running(client, second)
        assert _dispatcher(server)["ahead"] == 0
        assert client.get(f"/images/{first}").json()["status"] == "in progress"
        assert wait_for(client, first)["status"] == "ready"
        assert wait_for(client, second)["status"] == "ready"


def test_no_job_is_sent_ahead_when_read_ahead_is_off(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(sandbox_duration_s=1.0, workers=1, batch_max=1, read_ahead=0).start()
    with server.client(server.create_key("u")) as client:
        first = client.post("/images", json={**JOB, "seed": 1}).json()["id"]
        _until_running(client, first)
        second = client.post("/images", json={**JOB, "seed": 2}).json()["id"]
        deadline = time.monotonic() + 5
        while (state := _dispatcher(server))["queued"] < 1:
            assert time.monotonic() < deadline, state
            time.sleep(0.02)
        assert state["ahead"] == 0
        assert wait_for(client, first)["status"] == "ready"
        assert wait_for(client, second)["status"] == "ready"
