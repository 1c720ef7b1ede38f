"""A bounded run of 100 jobs on a cluster whose processes are killed at random."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests._cluster import Worker
from tests._server import Server

pytestmark = pytest.mark.slow

JOBS = 100
KILL_FOR_S = 25.0  # then everything stays up until the jobs settle
SETTLE_S = 150.0


def test_no_job_is_lost_or_stuck_under_random_kills(
    make_server: Callable[..., Server], cluster_settings: dict[str, object], tmp_path: Path
) -> None:
    rng = random.Random(20261125)
    settings = {**cluster_settings, "sandbox_duration_s": 0.4}
    apis = [make_server(**settings).start() for _ in range(2)]
    key = apis[0].create_key("chaos")
    workers = [Worker(apis[0].env, tmp_path / f"w{i}.log").start() for i in range(2)]
    restarts = 0
    try:
        ids: list[str] = []
        for n in range(JOBS):
            api = apis[n % 2]
            with api.client(key) as client:
                resp = client.post("/images", json={"prompt": f"job {n}", "quality": 1})
            assert resp.status_code == 200
            ids.append(resp.json()["id"])
        until = time.monotonic() + KILL_FOR_S
        while time.monotonic() < until:
            time.sleep(rng.uniform(0.5, 2.0))
            if rng.random() < 0.6:
                i = rng.randrange(len(workers))
                workers[i].kill()
                workers[i] = Worker(apis[0].env, tmp_path / f"w{i}-{restarts}.log").start()
            else:
                i = rng.randrange(len(apis))
                apis[i].kill()
                apis[i].start()
            restarts += 1
        deadline = time.monotonic() + SETTLE_S
        final: dict[str, dict] = {}
        while time.monotonic() < deadline:
            with apis[0].client(key) as client:
                for image_id in ids:
                    if image_id not in final:
                        body = client.get(f"/images/{image_id}").json()
                        if body["status"] in ("ready", "failed"):
                            final[image_id] = body
            if len(final) == JOBS:
                break
            time.sleep(1)
        stuck = [i for i in ids if i not in final]
        assert not stuck, f"{len(stuck)} jobs never ended after {restarts} kills"
        failed = [b for b in final.values() if b["status"] == "failed"]
        assert all(b["progressMessage"] for b in failed)
        assert len(failed) < JOBS // 2, "most jobs should survive a kill or two"
        with apis[1].client(key) as client:
            listed = client.get("/images", params={"limit": 100}).json()
        assert {b["id"] for b in listed} == set(ids), "nothing lost"
    finally:
        for w in workers:
            w.stop()
        httpx.Client().close()
