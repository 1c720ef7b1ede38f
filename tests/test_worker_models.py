"""Which models the workers have ready, loading or broken: ``/health``'s
``dispatcher.models`` in both dispatchers, and ``openletz models list --server``."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from openletz.dispatch.models import aggregate
from tests._cluster import Worker
from tests._server import Server, wait_for

ENGINE = "tests.fixtures.engines:with_models"


# -- the aggregate -------------------------------------------------------------


def test_ready_in_one_worker_is_ready_whatever_the_others_say() -> None:
    models = aggregate(
        {
            "b": {"sd": ("local", None), "flux": ("loading", None)},
            "a": {"sd": ("ready", None), "flux": ("unloaded", None)},
            "c": {"sd": ("broken", "out of memory"), "flux": ("broken", "no weights")},
        }
    )
    assert list(models) == ["sd", "flux"]
    assert models["sd"]["state"] == "ready"
    assert models["sd"]["detail"] is None
    assert models["sd"]["workers"] == {
        "a": {"state": "ready", "detail": None},
        "b": {"state": "local", "detail": None},
        "c": {"state": "broken", "detail": "out of memory"},
    }
    assert models["flux"]["state"] == "loading"


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([("broken", "no weights"), ("local", None)], ("broken", "no weights")),
        ([("missing", None), ("unloaded", None)], ("local", None)),
        ([("missing", None), ("local", None)], ("local", None)),
        ([("missing", None), ("missing", None)], ("missing", None)),
        ([("unloaded", None)], ("local", None)),
        ([("strange", "?"), ("missing", None)], ("missing", None)),
        ([("strange", "?")], ("strange", None)),
    ],
)
def test_the_aggregate_state(
    states: list[tuple[str, str | None]], expected: tuple[str, str | None]
) -> None:
    models = aggregate({f"w{i}": {"m": s} for i, s in enumerate(states)})
    assert (models["m"]["state"], models["m"]["detail"]) == expected


def test_no_workers_no_models() -> None:
    assert aggregate({}) == {}
    assert aggregate({"sandbox": {}}) == {}


# -- embedded workers ----------------------------------------------------------


def _health(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base_url}/health").json()
    return body


def _until(check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def two_workers(make_server: Callable[..., Server]) -> Server:
    server = make_server(engine=ENGINE, workers=2, sandbox_duration_s=0.2)
    return server.start()


def _owners(models: dict[str, Any]) -> set[str]:
    """The workers that report alpha; empty while one has not said Hello (it shows
    as "worker N (starting)" until then)."""
    names = set(models.get("alpha", {}).get("workers", {}))
    return names if all(":" in n for n in names) else set()


@pytest.mark.slow
def test_each_worker_s_states_and_their_aggregate(two_workers: Server) -> None:
    models = _until(
        lambda: (m := _health(two_workers)["dispatcher"]["models"]) and len(_owners(m)) == 2 and m
    )
    alpha = models["alpha"]
    # One worker has it loaded, the other only on disk: ready, whichever spoke last.
    assert alpha["state"] == "ready"
    assert sorted(w["state"] for w in alpha["workers"].values()) == ["local", "ready"]
    assert models["beta"] == {
        "state": "broken",
        "detail": "beta's weights are corrupt",
        "workers": {
            w: {"state": "broken", "detail": "beta's weights are corrupt"} for w in _owners(models)
        },
    }
    assert models["gamma"]["state"] == "missing"
    # A job changes nothing of that.
    with two_workers.client(two_workers.create_key("m")) as client:
        image_id = client.post("/images", json={"prompt": "x"}).json()["id"]
        assert wait_for(client, image_id)["status"] == "ready"
    assert _health(two_workers)["dispatcher"]["models"]["alpha"]["state"] == "ready"


@pytest.mark.slow
def test_a_killed_worker_s_states_go_with_it(two_workers: Server) -> None:
    models = _until(
        lambda: (m := _health(two_workers)["dispatcher"]["models"]) and len(_owners(m)) == 2 and m
    )
    ready = next(w for w, s in models["alpha"]["workers"].items() if s["state"] == "ready")
    pid = int(ready.split(":")[1])  # owners are host:pid:token
    os.kill(pid, signal.SIGKILL)
    after = _until(
        lambda: ready not in _owners(m := _health(two_workers)["dispatcher"]["models"]) and m
    )
    # Its replacement finds the first worker's mark: alpha is on disk only, now.
    assert all(s["state"] == "local" for s in after["alpha"]["workers"].values())
    assert after["alpha"]["state"] == "local"
    replaced = _until(
        lambda: len(_owners(m := _health(two_workers)["dispatcher"]["models"])) == 2 and m
    )
    assert ready not in _owners(replaced)
    assert replaced["alpha"]["state"] == "local"


@pytest.mark.slow
def test_the_sandbox_reports_no_models(make_server: Callable[..., Server]) -> None:
    server = make_server(engine="sandbox").start()
    dispatcher = _health(server)["dispatcher"]
    assert dispatcher["models"] == {}


# -- cluster workers -----------------------------------------------------------


@pytest.mark.slow
def test_cluster_workers_publish_their_queues_and_models(
    make_server: Callable[..., Server],
    cluster_settings: dict[str, object],
    tmp_path: Path,
) -> None:
    import redis

    api = make_server(**{**cluster_settings, "engine": ENGINE}).start()
    started = [
        Worker(api.env, tmp_path / "w1.log", queues="default").start(),
        Worker(api.env, tmp_path / "w2.log", queues="sd,flux").start(),
    ]
    try:
        dispatcher = _until(
            lambda: len((d := _health(api)["dispatcher"]).get("workers", [])) == 2 and d,
            timeout=60,
        )
        queues = sorted(tuple(w["queues"]) for w in dispatcher["workers"])
        prefix = cluster_settings["queue_prefix"]
        assert queues == [(f"{prefix}.default",), (f"{prefix}.sd", f"{prefix}.flux")]
        assert all(0 <= w["age"] < 30 for w in dispatcher["workers"])
        models = dispatcher["models"]
        assert models["alpha"]["state"] == "ready"
        assert set(models["alpha"]["workers"]) == {w["name"] for w in dispatcher["workers"]}
        assert models["beta"]["detail"] == "beta's weights are corrupt"
        # A clean stop takes the worker's entry away at once.
        started[1].stop()
        client = redis.Redis.from_url(str(cluster_settings["redis_url"]))
        try:
            left = list(client.scan_iter(match=f"{prefix}:worker:*"))
        finally:
            client.close()
        assert len(left) == 1
        _until(lambda: len(_health(api)["dispatcher"]["workers"]) == 1, timeout=20)
    finally:
        for w in started:
            w.stop()
