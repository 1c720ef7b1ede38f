"""One image from POST to ready, through HTTP, against a real server."""

from __future__ import annotations

import base64
import io
import time

import httpx
from PIL import Image

from tests._server import wait_for


def test_create_then_poll_until_ready(client: httpx.Client) -> None:
    created = client.post("/images", json={"prompt": "a lighthouse", "width": 900, "height": 600})
    assert created.status_code == 200
    body = created.json()
    assert body["status"] in ("new", "in progress")
    assert body["progress"] < 100
    seen: list[dict] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = client.get(f"/images/{body['id']}").json()
        seen.append(current)
        if current["status"] == "ready":
            break
        time.sleep(0.02)
    progresses = [s["progress"] for s in seen]
    assert progresses == sorted(progresses), "progress must never go down"
    assert all(s["progress"] < 100 for s in seen if s["status"] != "ready")
    assert seen[-1]["status"] == "ready"
    assert seen[-1]["progress"] == 100
    statuses = [s["status"] for s in seen]
    assert "in progress" in statuses
    previews = {s["previewImage"] for s in seen if s["status"] == "in progress"} - {None}
    assert len(previews) >= 2, "the preview must change as the image forms"
    jpeg = Image.open(io.BytesIO(base64.b64decode(next(iter(previews)))))
    assert jpeg.format == "JPEG"
    assert max(jpeg.size) <= 256


def test_ready_image_has_every_version(client: httpx.Client) -> None:
    image_id = client.post("/images", json={"prompt": "tall", "width": 520, "height": 2160}).json()[
        "id"
    ]
    ready = wait_for(client, image_id)
    assert ready["status"] == "ready"
    versions = ready["imageVersions"]
    assert list(versions) == ["original", "1920x1920", "640x640", "240x240", "96x96"]
    expected = {
        "original": (520, 2160),
        "1920x1920": (462, 1920),
        "640x640": (154, 640),
        "240x240": (58, 240),
        "96x96": (23, 96),
    }
    for name, url in versions.items():
        assert url.startswith("http://127.0.0.1:")
        resp = httpx.get(url)
        assert resp.status_code == 200, (name, resp.text)
        assert resp.headers["content-type"] == "image/jpeg"
        size = Image.open(io.BytesIO(resp.content)).size
        assert abs(size[0] - expected[name][0]) <= 1, (name, size)
        assert size[1] == expected[name][1], (name, size)


def test_same_seed_same_image(client: httpx.Client) -> None:
    req = {"prompt": "twins", "width": 640, "height": 640, "seed": 1234, "hasWatermark": False}
    a = wait_for(client, client.post("/images", json=req).json()["id"])
    b = wait_for(client, client.post("/images", json=req).json()["id"])
    assert a["seed"] == b["seed"] == 1234
    pa = httpx.get(a["imageVersions"]["original"]).content
    pb = httpx.get(b["imageVersions"]["original"]).content
    assert pa == pb
