"""The whole API on the diffusers engine: a real server whose workers load tiny
random pipelines through the registry, as they would load real models."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from openletz.engines.diffusers import tiny
from tests._server import Server, wait_for
from tests.engines.diffusers.conftest import MISSING_MODEL, write_registry

pytestmark = pytest.mark.slow

SLOW = {  # a model slow enough to interrupt: 200 steps
    "slow": {
        "family": "sd",
        "resolution": 64,
        "steps": [200] * 5,
        "guidance": [0.0] * 5,
    },
    "gone": MISSING_MODEL,
}


@pytest.fixture(scope="module")
def diffusers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("diffusers-server")
    folders = {
        f: tiny.save_pipeline(tiny.build_pipeline(f), root / "models" / f)
        for f in ("sd", "sdxl", "pixart_sigma", "flux")
    }
    extra = {k: dict(v) for k, v in SLOW.items()}
    extra["slow"]["source"] = str(folders["sd"])
    registry = write_registry(root / "models.yaml", folders, extra=extra)
    server = Server(
        root / "data",
        engine="diffusers",
        models_file=registry,
        image_format="png",
        preview_interval_s=0,
        batch_max=4,
        batch_window_s=0.3,
    )
    server.env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root / "hub-cache")})
    yield server.start(timeout=60)
    server.stop()


@pytest.fixture
def client(diffusers_server: Server) -> Iterator[httpx.Client]:
    with diffusers_server.client(diffusers_server.create_key(f"u{time.monotonic_ns()}")) as c:
        yield c


def png(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(httpx.get(url).content)).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(
    ("version", "mode"), [(2, "default"), (3, "default"), (3, "sigma"), (3, "turbo")]
)
def test_lifecycle_on_each_family(client: httpx.Client, version: int, mode: str) -> None:
    body = {
        "prompt": "a lighthouse",
        "width": 640,
        "height": 520,
        "quality": 3,
        "systemVersion": version,
        "mode": mode,
    }
    image_id = client.post("/images", json=body).json()["id"]
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = client.get(f"/images/{image_id}").json()
        seen.append(current)
        if current["status"] in ("ready", "failed"):
            break
        time.sleep(0.005)
    final = seen[-1]
    assert final["status"] == "ready", final
    assert final["engine"] == "diffusers"
    assert final["sandbox"] is False
    progresses = [s["progress"] for s in seen]
    assert progresses == sorted(progresses)
    assert all(p < 100 for s, p in zip(seen, progresses, strict=True) if s["status"] != "ready")
    sizes = {
        name: Image.open(io.BytesIO(httpx.get(url).content)).size
        for name, url in final["imageVersions"].items()
    }
    assert sizes["original"] == (640, 520)
    assert sizes["640x640"] == (640, 520)
    assert sizes["96x96"] == (96, 78)


def test_same_seed_same_image(client: httpx.Client) -> None:
    body = {
        "prompt": "twins",
        "width": 520,
        "height": 520,
        "seed": 99,
        "hasWatermark": False,
        "systemVersion": 2,
    }
    a = wait_for(client, client.post("/images", json=body).json()["id"])
    b = wait_for(client, client.post("/images", json=body).json()["id"])
    assert (
        np.abs(png(a["imageVersions"]["original"]) - png(b["imageVersions"]["original"])).max() <= 2
    )


def test_batched_jobs_equal_jobs_alone(client: httpx.Client, diffusers_server: Server) -> None:
    body = {
        "prompt": "many",
        "width": 520,
        "height": 520,
        "hasWatermark": False,
        "systemVersion": 2,
    }
    ids = [client.post("/images", json={**body, "seed": s}).json()["id"] for s in (1, 2, 3, 4)]
    batch = [wait_for(client, i) for i in ids]
    assert all(b["status"] == "ready" for b in batch)
    # They ran as one batch: claimed together (one after the other, they would be
    # claimed a job's time apart).
    started = sorted(r["started_at"] for r in diffusers_server.job_rows(ids).values())
    assert (started[-1] - started[0]).total_seconds() < 0.2, started
    alone = wait_for(client, client.post("/images", json={**body, "seed": 3}).json()["id"])
    diff = png(batch[2]["imageVersions"]["original"]) - png(alone["imageVersions"]["original"])
    assert np.abs(diff).max() <= 2


def test_interruption_stops_a_running_pipeline(client: httpx.Client) -> None:
    image_id = client.post(
        "/images", json={"prompt": "slow", "width": 520, "height": 520, "baseModel": "slow"}
    ).json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/images/{image_id}").json()["progress"] < 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.put(f"/images/{image_id}/interruption").status_code == 204
    started = time.monotonic()
    ended = wait_for(client, image_id, every=0.01)
    assert ended["status"] == "interrupted"
    assert ended["progress"] < 90
    assert time.monotonic() - started < 2


def test_interrupting_one_job_of_a_batch_leaves_the_others_running(
    client: httpx.Client, diffusers_server: Server
) -> None:
    body = {"prompt": "slow", "width": 520, "height": 520, "baseModel": "slow"}
    ids = [client.post("/images", json={**body, "seed": s}).json()["id"] for s in (1, 2)]
    deadline = time.monotonic() + 30
    while min(client.get(f"/images/{i}").json()["progress"] for i in ids) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.put(f"/images/{ids[0]}/interruption").status_code == 204
    ended = wait_for(client, ids[0], every=0.01, timeout=5)
    assert ended["status"] == "interrupted"
    # Its batch-mate goes on: the interrupted one did not wait for the batch to end.
    assert client.get(f"/images/{ids[1]}").json()["status"] == "in progress"
    assert client.put(f"/images/{ids[1]}/interruption").status_code == 204
    assert wait_for(client, ids[1], every=0.01)["status"] == "interrupted"
    started = sorted(r["started_at"] for r in diffusers_server.job_rows(ids).values())
    assert (started[-1] - started[0]).total_seconds() < 0.2, "not one batch"


def test_unknown_base_model_is_a_400(client: httpx.Client) -> None:
    resp = client.post("/images", json={"prompt": "x", "baseModel": "midjourney"})
    assert resp.status_code == 400
    assert "baseModel" in resp.json()["message"]
    assert "sdxl" in resp.json()["message"]


def test_a_missing_model_fails_the_image_with_a_fix(
    client: httpx.Client, diffusers_server: Server
) -> None:
    # An image made with sd first, so that a worker holds it whichever tests ran before.
    body = {"prompt": "x", "width": 520, "height": 520, "systemVersion": 2}
    assert wait_for(client, client.post("/images", json=body).json()["id"])["status"] == "ready"
    image_id = client.post("/images", json={"prompt": "x", "baseModel": "gone"}).json()["id"]
    failed = wait_for(client, image_id)
    assert failed["status"] == "failed"
    assert "'gone'" in failed["progressMessage"]
    assert "openletz models pull gone" in failed["progressMessage"]
    health = httpx.get(f"{diffusers_server.base_url}/health").json()
    assert health["engine"]["name"] == "diffusers"
    assert health["engine"]["sandbox"] is False
    models = health["dispatcher"]["models"]
    assert models["gone"]["state"] == "broken"
    assert models["sd"]["state"] == "ready"
    # Every registry model, with each worker's own state (one worker loaded sd).
    assert set(models) == {"sd", "sdxl", "pixart_sigma", "flux", "slow", "gone"}
    assert "ready" in {w["state"] for w in models["sd"]["workers"].values()}
    assert models["pixart_sigma"]["state"] in ("local", "ready")


def test_models_list_shows_the_servers_model_states(
    client: httpx.Client, diffusers_server: Server
) -> None:
    from click.testing import CliRunner

    from openletz.cli import main

    failed = wait_for(
        client, client.post("/images", json={"prompt": "x", "baseModel": "gone"}).json()["id"]
    )
    assert failed["status"] == "failed"
    body = {"prompt": "x", "width": 520, "height": 520, "systemVersion": 2}
    assert wait_for(client, client.post("/images", json=body).json()["id"])["status"] == "ready"
    env = {k: str(v) for k, v in diffusers_server.env.items()}
    result = CliRunner().invoke(
        main, ["models", "list", "--server", diffusers_server.base_url], env=env
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = {r[0]: r for r in (line.split() for line in lines[2:]) if len(r) >= 5}
    assert rows["sd"][2] == "ready"
    assert rows["gone"][2] == "broken"
    assert rows["pixart_sigma"][2] in ("local", "ready")
    assert any(line.startswith("  gone: The model 'gone'") for line in lines)


def test_auto_picks_diffusers_only_with_a_local_model(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    registry = tmp_path / "remote-only.yaml"
    registry.write_text(
        "models: {far: {family: sd, source: nobody/far-away, resolution: 64,"
        " steps: [1,1,1,1,1], guidance: [0,0,0,0,0]}}\nslots: {3: {default: far}}\n"
    )
    server = make_server(engine="auto", models_file=registry)
    server.env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")})
    health = httpx.get(f"{server.start().base_url}/health").json()
    assert health["engine"]["name"] == "sandbox"
    assert "openletz models" in health["engine"]["reason"]
