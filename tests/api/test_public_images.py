"""GET /public/images: other accounts' finished public images, newest first."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests._server import Server, wait_for

SMALL = {"width": 520, "height": 520, "quality": 1}


def _ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body, list)
    return [image["id"] for image in body]


@dataclass
class Scene:
    owner: httpx.Client
    viewer: httpx.Client
    public: list[str]  # the owner's public images, newest first
    private: str  # the owner's, ready and private
    unfinished: str  # the owner's, public but interrupted before it was made
    viewers_own: str  # the viewer's public image


@pytest.fixture(scope="module")
def scene(server: Server) -> Iterator[Scene]:
    tag = uuid.uuid4().hex[:8]
    owner = server.client(server.create_key(f"public-owner-{tag}"))
    viewer = server.client(server.create_key(f"public-viewer-{tag}"))

    def make(c: httpx.Client, prompt: str) -> str:
        resp = c.post("/images", json={"prompt": prompt, **SMALL})
        assert resp.status_code == 200, resp.text
        image_id: str = resp.json()["id"]
        return image_id

    made = [make(owner, f"public {i}") for i in range(5)]
    unfinished = make(owner, "stopped at once")
    assert owner.put(f"/images/{unfinished}/interruption").status_code == 204
    viewers_own = make(viewer, "the viewer's own")
    for c, image_id in [*((owner, i) for i in made), (viewer, viewers_own)]:
        assert wait_for(c, image_id)["status"] == "ready"
    assert wait_for(owner, unfinished)["status"] == "interrupted"
    *public, private = made
    for c, image_id in [*((owner, i) for i in public), (owner, unfinished), (viewer, viewers_own)]:
        assert c.put(f"/images/{image_id}/privacy", json={"privacy": "public"}).status_code == 200
    yield Scene(owner, viewer, public[::-1], private, unfinished, viewers_own)
    for image_id in [*made, unfinished]:
        owner.delete(f"/images/{image_id}")
    viewer.delete(f"/images/{viewers_own}")
    owner.close()
    viewer.close()


def test_lists_others_public_images_newest_first(scene: Scene) -> None:
    listed = _ids(scene.viewer.get("/public/images", params={"limit": 4}))
    assert listed == scene.public
    everything = scene.viewer.get("/public/images", params={"limit": 100}).json()
    stamps = [image["createdAt"] for image in everything]
    assert stamps == sorted(stamps, reverse=True)
    assert all(image["privacy"] == "public" for image in everything)
    assert all(image["status"] == "ready" for image in everything)


def test_own_images_are_left_out(scene: Scene) -> None:
    for_viewer = _ids(scene.viewer.get("/public/images", params={"limit": 100}))
    assert scene.viewers_own not in for_viewer
    for_owner = _ids(scene.owner.get("/public/images", params={"limit": 100}))
    assert for_owner[0] == scene.viewers_own
    assert not set(scene.public) & set(for_owner)


def test_private_and_unfinished_images_are_left_out(scene: Scene) -> None:
    listed = _ids(scene.viewer.get("/public/images", params={"limit": 100}))
    assert scene.private not in listed
    assert scene.unfinished not in listed


def test_private_again_means_unlisted(scene: Scene) -> None:
    newest = scene.public[0]
    hidden = scene.owner.put(f"/images/{newest}/privacy", json={"privacy": "private"})
    assert hidden.json()["privacy"] == "private"
    try:
        assert newest not in _ids(scene.viewer.get("/public/images", params={"limit": 100}))
    finally:
        scene.owner.put(f"/images/{newest}/privacy", json={"privacy": "public"})
    assert _ids(scene.viewer.get("/public/images", params={"limit": 1})) == [newest]


def test_paging(scene: Scene) -> None:
    pages = [
        _ids(scene.viewer.get("/public/images", params={"page": p, "limit": 2})) for p in (1, 2)
    ]
    assert [i for p in pages for i in p] == scene.public
    assert _ids(scene.viewer.get("/public/images", params={"page": 1_000_000})) == []
    default = _ids(scene.viewer.get("/public/images"))
    assert default == _ids(scene.viewer.get("/public/images", params={"limit": 10}))
    assert default[:4] == scene.public


def test_listed_images_are_full_image_objects_with_stable_urls(scene: Scene) -> None:
    image: dict[str, Any] = scene.viewer.get("/public/images", params={"limit": 1}).json()[0]
    assert image == scene.owner.get(f"/images/{image['id']}").json()
    versions = image["imageVersions"]
    assert set(versions) == {"original", "1920x1920", "640x640", "240x240", "96x96"}
    assert "signature" not in versions["original"]
    assert scene.viewer.get(versions["240x240"]).status_code == 200


def test_own_list_is_unchanged(scene: Scene) -> None:
    # GET /images stays the caller's own images, public or private, as upstream.
    assert _ids(scene.viewer.get("/images", params={"limit": 100})) == [scene.viewers_own]
    owned = set(_ids(scene.owner.get("/images", params={"limit": 100})))
    assert owned == {*scene.public, scene.private, scene.unfinished}


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("page", "0"),
        ("page", "-1"),
        ("page", "abc"),
        ("page", "1.5"),
        ("page", ""),
        ("page", "1000001"),
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "ten"),
    ],
)
def test_bounds_are_400_naming_the_parameter(scene: Scene, param: str, value: str) -> None:
    resp = scene.viewer.get("/public/images", params={param: value})
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert set(body) == {"statusCode", "message", "error"}
    assert param in body["message"], body


def test_needs_a_key(server: Server) -> None:
    with server.client(None) as anonymous:
        resp = anonymous.get("/public/images")
    assert resp.status_code == 401
    assert "API key" in resp.json()["message"]


def test_is_documented(server: Server) -> None:
    with server.client(None) as anonymous:
        document = anonymous.get("/doc-json").json()
    operation = document["paths"]["/public/images"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert params["page"]["minimum"] == 1
    assert (params["limit"]["minimum"], params["limit"]["maximum"]) == (1, 100)
    assert {"200", "400", "401"} <= set(operation["responses"])
