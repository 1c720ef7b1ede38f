"""API servers and workers as a cluster: PostgreSQL, Redis, Celery on RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests._cluster import Worker
from tests._server import Server, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def _running(client: httpx.Client, image_id: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        body: dict = client.get(f"/images/{image_id}").json()
        if body["status"] == "in progress" and body["progress"] > 0:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def test_jobs_run_on_workers_that_join_through_the_broker(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    api = make_server(**cluster_settings).start()
    workers.append(Worker(api.env, tmp_path / "w1.log").start())
    with api.client(api.create_key("c")) as client:
        image_id = client.post("/images", json={"prompt": "through the broker"}).json()["id"]
        seen = _running(client, image_id)
        assert seen["previewImage"], "progress and previews reach the API through Redis"
        done = wait_for(client, image_id, timeout=60)
    assert done["status"] == "ready", (done, workers[0].log())
    assert httpx.get(done["imageVersions"]["original"]).status_code == 200


def test_an_interruption_sent_to_any_api_server_stops_the_job(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    a = make_server(**{**cluster_settings, "sandbox_duration_s": 6}).start()
    b = make_server(**{**cluster_settings, "sandbox_duration_s": 6}).start()
    workers.append(Worker(a.env, tmp_path / "w1.log").start())
    key = a.create_key("c")
    with a.client(key) as on_a, b.client(key) as on_b:
        image_id = on_a.post("/images", json={"prompt": "stop me", "quality": 5}).json()["id"]
        _running(on_b, image_id)
        started = time.monotonic()
        assert on_b.put(f"/images/{image_id}/interruption").status_code == 204
        ended = wait_for(on_a, image_id, every=0.01)
    assert ended["status"] == "interrupted"
    # A step is 0.5 s; the heartbeat would take up to 0.5 s more: well under 2 s.
    assert time.monotonic() - started < 1.5


def test_a_killed_worker_s_job_finishes_on_another(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    api = make_server(**cluster_settings).start()
    first = Worker(api.env, tmp_path / "w1.log").start()
    workers.append(first)
    with api.client(api.create_key("c")) as client:
        image_id = client.post("/images", json={"prompt": "survive"}).json()["id"]
        _running(client, image_id)
        second = Worker(api.env, tmp_path / "w2.log").start()
        workers.append(second)
        first.kill()
        done = wait_for(client, image_id, timeout=90)
    assert done["status"] == "ready", (done, second.log())


def test_polls_continue_on_another_api_server_when_one_dies(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    a = make_server(**cluster_settings).start()
    b = make_server(**cluster_settings).start()
    workers.append(Worker(a.env, tmp_path / "w1.log").start())
    key = a.create_key("c")
    with a.client(key) as on_a, b.client(key) as on_b:
        image_id = on_a.post("/images", json={"prompt": "outlive my server"}).json()["id"]
        _running(on_b, image_id)
        a.kill()
        assert wait_for(on_b, image_id, timeout=60)["status"] == "ready"


def test_a_job_that_kills_every_worker_fails_instead_of_looping(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    settings = {
        **cluster_settings,
        "engine": "tests.fixtures.engines:exit_in_generate",
        "sandbox_duration_s": 0.5,
        "max_attempts": 2,
    }
    api = make_server(**settings).start()
    # Each death needs a worker to take the next delivery: keep two, restart the dead.
    pool = [Worker(api.env, tmp_path / f"w{i}.log").start() for i in range(2)]
    workers.extend(pool)
    with api.client(api.create_key("c")) as client:
        poison = client.post("/images", json={"prompt": "poison pill"}).json()["id"]
        deadline = time.monotonic() + 90
        while client.get(f"/images/{poison}").json()["status"] not in ("failed", "ready"):
            assert time.monotonic() < deadline
            for i, w in enumerate(pool):
                if w.proc is not None and w.proc.poll() is not None:
                    pool[i] = Worker(api.env, tmp_path / f"w{i}-again.log").start()
                    workers.append(pool[i])
            time.sleep(0.2)
        failed = client.get(f"/images/{poison}").json()
        assert failed["status"] == "failed"
        assert "2 times" in failed["progressMessage"]
        healthy = client.post("/images", json={"prompt": "healthy"}).json()["id"]
        assert wait_for(client, healthy, timeout=60)["status"] == "ready"


def test_cluster_workers_batch_compatible_jobs(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    from openletz.engines.diffusers import tiny

    folder = tiny.save_pipeline(tiny.build_pipeline("sd"), tmp_path / "sd")
    # 40 steps: a job alone takes long enough that unbatched starts would be far apart.
    registry = tmp_path / "models.yaml"
    registry.write_text(
        f"models: {{sd: {{family: sd, source: '{folder}', resolution: 64,"
        " steps: [40, 40, 40, 40, 40], guidance: [0, 0, 0, 0, 0]}}\n"
        "slots: {2: {default: sd, sigma: sd, turbo: sd}, 3: {default: sd, sigma: sd, turbo: sd}}\n"
    )
    settings = {
        **cluster_settings,
        "engine": "diffusers",
        "models_file": registry,
        "batch_max": 4,
        "batch_window_s": 0.5,
    }
    api = make_server(**settings).start()
    workers.append(Worker(api.env, tmp_path / "w1.log", queues="sd").start())
    body = {"prompt": "together", "width": 520, "height": 520, "systemVersion": 2}
    with api.client(api.create_key("c")) as client:
        warm = client.post("/images", json={**body, "seed": 0}).json()["id"]
        assert wait_for(client, warm, timeout=90)["status"] == "ready", workers[0].log()
        ids = [client.post("/images", json={**body, "seed": s}).json()["id"] for s in (1, 2, 3, 4)]
        done = [wait_for(client, i, timeout=90) for i in ids]
    assert all(d["status"] == "ready" for d in done)

    async def started() -> list[float]:
        import asyncpg

        url = str(cluster_settings["database_url"]).replace("+asyncpg", "")
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT started_at FROM jobs WHERE id = ANY($1)", ids)
        finally:
            await conn.close()
        return sorted(r["started_at"].timestamp() for r in rows)

    times = asyncio.run(started())
    assert times[-1] - times[0] < 0.2, f"claimed apart: {times}"


def test_a_hung_engine_fails_its_job_which_is_not_run_again(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    settings = {
        **cluster_settings,
        "engine": "tests.fixtures.engines:hang",
        "sandbox_duration_s": 0.3,
        "job_timeout_s": 1,
    }
    api = make_server(**settings).start()
    first = Worker(api.env, tmp_path / "w1.log").start()
    workers.append(first)
    with api.client(api.create_key("c")) as client:
        hung = client.post("/images", json={"prompt": "hang forever"}).json()["id"]
        failed = wait_for(client, hung, timeout=30)
        assert failed["status"] == "failed", failed
        assert "timed out after 1 s" in failed["progressMessage"]
        assert first.proc is not None
        assert first.proc.wait(timeout=15) == 70, first.log()
        # Its supervisor starts it again: the message of the failed job, never
        # acknowledged, comes to the new worker, which finds the job ended.
        second = Worker(api.env, tmp_path / "w2.log").start()
        workers.append(second)
        healthy = client.post("/images", json={"prompt": "healthy"}).json()["id"]
        assert wait_for(client, healthy, timeout=60)["status"] == "ready"
        deadline = time.monotonic() + 15
        while f"job {hung}: skipped" not in second.log():
            assert time.monotonic() < deadline, second.log()
            time.sleep(0.1)
        assert client.get(f"/images/{hung}").json()["status"] == "failed"

    async def attempts() -> int:
        import asyncpg

        url = str(cluster_settings["database_url"]).replace("+asyncpg", "")
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SELECT attempts FROM jobs WHERE id = $1", hung))
        finally:
            await conn.close()

    assert asyncio.run(attempts()) == 1
