"""API servers and workers as a cluster: PostgreSQL, Redis, Celery on RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from openletz.auth import Accounts
from openletz.db import create_engine
from openletz.jobs.store import DEAD_LETTERED, JobStore, NewJob
from tests._cluster import BROKER, TcpProxy, Worker, delete_redis_keys
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
    # A step is 0.5 s (30 steps in 15 s); the database heartbeat comes every 5 s, so
    # only the Redis channel can stop the job within a step.
    settings = {**cluster_settings, "sandbox_duration_s": 6, "heartbeat_s": 5, "lease_s": 30}
    a = make_server(**settings).start()
    b = make_server(**settings).start()
    workers.append(Worker(a.env, tmp_path / "w1.log").start())
    key = a.create_key("c")
    with a.client(key) as on_a, b.client(key) as on_b:
        image_id = on_a.post("/images", json={"prompt": "stop me", "quality": 5}).json()["id"]
        _running(on_b, image_id)
        started = time.monotonic()
        assert on_b.put(f"/images/{image_id}/interruption").status_code == 204
        ended = wait_for(on_a, image_id, every=0.01)
        took = time.monotonic() - started
    assert ended["status"] == "interrupted"
    assert took < 0.5 + 0.4, f"stopped after {took:.2f} s"


def test_a_killed_worker_s_job_finishes_on_another(
    make_server: Callable[..., Server],
    cluster_s3_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    api = make_server(**cluster_s3_settings).start()
    other = make_server(**cluster_s3_settings).start()
    first = Worker(api.env, tmp_path / "w1.log").start()
    workers.append(first)
    key = api.create_key("c")
    with api.client(key) as client:
        image_id = client.post("/images", json={"prompt": "survive"}).json()["id"]
        _running(client, image_id)
        second = Worker(api.env, tmp_path / "w2.log").start()
        workers.append(second)
        first.kill()
        done = wait_for(client, image_id, timeout=90)
    assert done["status"] == "ready", (done, second.log())
    # The images are in S3: the other API server hands out URLs that work.
    with other.client(key) as on_other:
        versions = on_other.get(f"/images/{image_id}").json()["imageVersions"]
    for url in versions.values():
        resp = httpx.get(url)
        assert resp.status_code == 200, url
        assert resp.content.startswith(b"\xff\xd8")


def test_polls_continue_on_another_api_server_when_one_dies(
    make_server: Callable[..., Server],
    cluster_s3_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    a = make_server(**cluster_s3_settings).start()
    b = make_server(**cluster_s3_settings).start()
    workers.append(Worker(a.env, tmp_path / "w1.log").start())
    key = a.create_key("c")
    with a.client(key) as on_a, b.client(key) as on_b:
        image_id = on_a.post("/images", json={"prompt": "outlive my server"}).json()["id"]
        _running(on_b, image_id)
        a.kill()
        done = wait_for(on_b, image_id, timeout=60)
    assert done["status"] == "ready"
    original = httpx.get(done["imageVersions"]["original"])
    assert original.status_code == 200
    assert original.content.startswith(b"\xff\xd8")


def test_two_api_servers_agree_on_progress(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    # 12 steps of 0.25 s: each progress value lasts a quarter of a second.
    settings = {**cluster_settings, "sandbox_duration_s": 3}
    a = make_server(**settings).start()
    b = make_server(**settings).start()
    workers.append(Worker(a.env, tmp_path / "w1.log").start())
    key = a.create_key("c")
    first_seen: dict[str, dict[int, float]] = {"a": {}, "b": {}}
    with a.client(key) as on_a, b.client(key) as on_b:
        image_id = on_a.post("/images", json={"prompt": "in step"}).json()["id"]
        deadline = time.monotonic() + 60
        status = "new"
        while status != "ready":
            assert time.monotonic() < deadline, status
            for name, client in (("a", on_a), ("b", on_b)):
                body = client.get(f"/images/{image_id}").json()
                first_seen[name].setdefault(body["progress"], time.monotonic())
                status = body["status"]
    both = sorted((set(first_seen["a"]) & set(first_seen["b"])) - {0, 100})
    assert len(both) >= 5, first_seen
    lags = {p: abs(first_seen["a"][p] - first_seen["b"][p]) for p in both}
    # Both read the same Redis hash: they differ by no more than a poll or two.
    assert max(lags.values()) < 0.2, lags


def test_a_job_that_kills_every_worker_fails_at_the_delivery_limit(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    # Attempts are not what stops it: the broker dead-letters its message after two
    # returns, and the API reads the dead-letter queue and fails the job.
    settings = {
        **cluster_settings,
        "engine": "tests.fixtures.engines:exit_in_generate",
        "sandbox_duration_s": 0.5,
        "max_attempts": 50,
        "delivery_limit": 2,
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
        assert failed["status"] == "failed", failed
        assert failed["progressMessage"] == DEAD_LETTERED
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


def _insert_unsent_job(api: Server, user: str) -> str:
    """A job row that no API server published: as when one dies between the
    insert and the publish."""

    async def go() -> str:
        engine = create_engine(api.database_url)
        try:
            owner = await Accounts(engine).ensure_user(user)
            job = await JobStore(engine).create(
                NewJob(
                    user_id=owner.id,
                    prompt="never published",
                    width=512,
                    height=512,
                    quality=1,
                    creativity=2,
                    has_watermark=False,
                    system_version=3,
                    mode="default",
                    seed=7,
                )
            )
            return job.id
        finally:
            await engine.dispose()

    return asyncio.run(go())


async def _row(api: Server, job_id: str) -> dict:
    import asyncpg

    conn = await asyncpg.connect(api.database_url.replace("+asyncpg", ""))
    try:
        return dict(await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id))
    finally:
        await conn.close()


def test_a_job_inserted_but_never_published_is_sent_and_made(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    api = make_server(**{**cluster_settings, "stale_new_s": 1}).start()
    workers.append(Worker(api.env, tmp_path / "w1.log").start())
    key = api.create_key("c")
    job_id = _insert_unsent_job(api, "c")
    with api.client(key) as client:
        done = wait_for(client, job_id, timeout=60)
    assert done["status"] == "ready", (done, workers[0].log())
    row = asyncio.run(_row(api, job_id))
    assert row["dispatches"] == 1
    assert row["attempts"] == 1


def test_a_job_no_worker_can_take_fails_with_a_reason(
    make_server: Callable[..., Server], cluster_settings: dict[str, object]
) -> None:
    settings = {**cluster_settings, "stale_new_s": 0.5, "max_queue_wait_s": 3}
    api = make_server(**settings).start()
    with api.client(api.create_key("c")) as client:
        image_id = client.post("/images", json={"prompt": "nobody home"}).json()["id"]
        failed = wait_for(client, image_id, timeout=30)
    assert failed["status"] == "failed"
    queue = f"{settings['queue_prefix']}.default"
    assert failed["progressMessage"] == (
        f"No worker took this image in 3 s: is a worker for the queue {queue} running "
        "(openletz worker --queues default)?"
    )
    # Sent again with backoff while it waited (0.5, 1, 2 s), not at every pass.
    assert asyncio.run(_row(api, image_id))["dispatches"] <= 3


def test_a_broker_outage_does_not_fail_the_post_and_the_job_runs_later(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5672))  # off: the API server's broker is unreachable
    settings = {
        **cluster_settings,
        "broker_url": f"amqp://guest:guest@127.0.0.1:{proxy.port}//",
        "stale_new_s": 1,
        "publish_timeout_s": 2,
    }
    api = make_server(**settings).start()
    workers.append(Worker({**api.env, "OPENLETZ_BROKER_URL": BROKER}, tmp_path / "w1.log").start())
    try:
        with api.client(api.create_key("c")) as client:
            started = time.monotonic()
            resp = client.post("/images", json={"prompt": "while the broker is away"})
            took = time.monotonic() - started
            assert resp.status_code == 200, resp.text
            assert took < 2 + 1.5, f"POST took {took:.1f} s"
            image_id = resp.json()["id"]
            assert resp.json()["status"] == "new"
            time.sleep(2)
            assert client.get(f"/images/{image_id}").json()["status"] == "new"
            proxy.start()
            done = wait_for(client, image_id, timeout=60)
            assert done["status"] == "ready", (done, api.log())
            # The client did not have to retry: there is one image.
            assert [i["id"] for i in client.get("/images").json()] == [image_id]
    finally:
        proxy.stop()


def test_the_lifecycle_with_redis_as_the_broker(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    redis_broker = "redis://127.0.0.1:6379/12"
    settings = {**cluster_settings, "broker_url": redis_broker}
    try:
        a = make_server(**settings).start()
        b = make_server(**settings).start()
        workers.append(Worker(a.env, tmp_path / "w1.log").start())
        key = a.create_key("c")
        with a.client(key) as on_a, b.client(key) as on_b:
            image_id = on_a.post("/images", json={"prompt": "through redis"}).json()["id"]
            seen = _running(on_b, image_id)
            assert seen["previewImage"]
            done = wait_for(on_b, image_id, timeout=60)
            assert done["status"] == "ready", (done, workers[0].log())
            stopped = on_a.post("/images", json={"prompt": "stop", "quality": 5}).json()["id"]
            _running(on_b, stopped)
            assert on_b.put(f"/images/{stopped}/interruption").status_code == 204
            assert wait_for(on_a, stopped)["status"] == "interrupted"
    finally:
        # Stopped first, so that nothing writes the broker's keys again.
        for w in workers:
            w.stop()
        for srv in make_server.servers:  # type: ignore[attr-defined]
            srv.stop()
        left = delete_redis_keys(redis_broker, f"{settings['queue_prefix']}:*")
    assert left, "the broker's keys carry the queue prefix"


def _queue_counts(name: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of a queue, or None if it does not exist."""
    from kombu import Connection

    with Connection(BROKER) as conn:
        try:
            declared = conn.channel().queue_declare(queue=name, passive=True)
        except conn.channel_errors:
            return None
        return int(declared.message_count), int(declared.consumer_count)


def test_a_worker_loads_its_engine_before_it_takes_a_job(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    settings = {**cluster_settings, "engine": "tests.fixtures.engines:slow_load"}
    api = make_server(**settings).start()
    loaded = tmp_path / "loaded"
    queue = f"{settings['queue_prefix']}.default"
    with api.client(api.create_key("c")) as client:
        image_id = client.post("/images", json={"prompt": "waiting for a warm worker"}).json()["id"]
        worker = Worker({**api.env, "OPENLETZ_TEST_LOADED_FILE": str(loaded)}, tmp_path / "w.log")
        workers.append(worker.start())
        deadline = time.monotonic() + 60
        while (counts := _queue_counts(queue)) is None or counts[1] == 0:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.02)
        consuming = time.time()
        # The message waited in the queue through the whole load.
        assert loaded.exists(), "the worker consumed before its engine was loaded"
        assert float(loaded.read_text()) <= consuming
        assert wait_for(client, image_id, timeout=60)["status"] == "ready"


def test_a_worker_whose_engine_cannot_load_exits_and_takes_no_job(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    # No re-send meanwhile: the one message in the queue is the POST's.
    settings = {
        **cluster_settings,
        "engine": "tests.fixtures.engines:fail_to_load",
        "stale_new_s": 60,
    }
    api = make_server(**settings).start()
    queue = f"{settings['queue_prefix']}.default"
    with api.client(api.create_key("c")) as client:
        image_id = client.post("/images", json={"prompt": "no engine"}).json()["id"]
        worker = Worker(api.env, tmp_path / "w.log").start()
        workers.append(worker)
        assert worker.proc is not None
        assert worker.proc.wait(timeout=60) == 1, worker.log()
        assert "this engine cannot load" in worker.log()
        # Its message is still queued for a worker that can run it.
        assert _queue_counts(queue) == (1, 0)
        assert client.get(f"/images/{image_id}").json()["status"] == "new"


def test_a_worker_stopped_with_sigterm_hands_its_job_to_another(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    workers: list[Worker],
    tmp_path: Path,
) -> None:
    # A lease of a minute: a job left to its lease would wait that long.
    settings = {**cluster_settings, "sandbox_duration_s": 4, "lease_s": 60, "heartbeat_s": 5}
    api = make_server(**settings).start()
    queue = f"{settings['queue_prefix']}.default"
    first = Worker(api.env, tmp_path / "w1.log").start()
    workers.append(first)
    with api.client(api.create_key("c")) as client:
        image_id = client.post("/images", json={"prompt": "hand me over"}).json()["id"]
        _running(client, image_id)
        second = Worker(api.env, tmp_path / "w2.log").start()
        workers.append(second)
        deadline = time.monotonic() + 60
        while (counts := _queue_counts(queue)) is None or counts[1] < 2:
            assert time.monotonic() < deadline, second.log()
            time.sleep(0.05)
        stopped = time.monotonic()
        first.stop()
        assert first.proc is not None
        assert first.proc.returncode == 0, first.log()
        done = wait_for(client, image_id, timeout=50)
        took = time.monotonic() - stopped
    assert done["status"] == "ready", (done, second.log())
    assert took < 20, f"handed over after {took:.1f} s"
    assert asyncio.run(_row(api, image_id))["attempts"] == 2
