"""Who may do what: API keys, and one account against another's images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests._server import Server

SMALL = {"width": 520, "height": 520, "quality": 1}


def assert_error(resp: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert set(body) == {"statusCode", "message", "error"}, body
    assert body["statusCode"] == status
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["error"], str)
    for needle in needles:
        assert needle in body["message"], (needle, body)
    return body


def _key(c: httpx.Client) -> str:
    scheme, _, key = c.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    return key


# -- API keys ------------------------------------------------------------------------------

CALLS: list[tuple[str, str, Any]] = [
    ("POST", "/images", {"prompt": "a fox"}),
    ("GET", "/images", None),
    ("GET", "/images/some-id", None),
    ("PUT", "/images/some-id/interruption", None),
    ("PUT", "/images/some-id/privacy", {"privacy": "public"}),
    ("DELETE", "/images/some-id", None),
]

BAD_HEADERS: dict[str, dict[str, str]] = {
    "none": {},
    "empty": {"Authorization": ""},
    "scheme-only": {"Authorization": "Bearer"},
    # What a JavaScript client sends when its key variable is unset.
    "bearer-undefined": {"Authorization": "Bearer undefined"},
    "bearer-null": {"Authorization": "Bearer null"},
    "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
    "token-scheme": {"Authorization": "Token lz_0123456789abcdef"},
    "key-without-scheme": {"Authorization": "lz_0123456789abcdef"},
    "unknown-key": {"Authorization": "Bearer lz_not_a_real_key_0123456789"},
    "x-api-key-header": {"X-API-Key": "lz_0123456789abcdef"},
}


@pytest.mark.parametrize("headers", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[f"{m} {p}" for m, p, _ in CALLS])
def test_without_a_valid_key_is_401(
    server: Server, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous:
        resp = anonymous.request(method, path, json=body, headers=headers)
    assert_error(resp, 401)


def test_a_real_key_with_a_wrong_scheme_is_401(server: Server, client: httpx.Client) -> None:
    key = _key(client)
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        for header in (f"Basic {key}", f"Token {key}", key, f"Bearer{key}", f"Bearer {key}x"):
            assert_error(c.get("/images", headers={"Authorization": header}), 401)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_scheme_is_case_insensitive(server: Server, client: httpx.Client, scheme: str) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        resp = c.get("/images", headers={"Authorization": f"{scheme} {_key(client)}"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == []


def test_the_key_is_checked_before_the_body(server: Server) -> None:
    # A client without a key learns that first, not what is wrong with its fields.
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous:
        resp = anonymous.post("/images", json={"width": 1, "negativePrompt": "x"})
    assert_error(resp, 401)


# -- one account, another's images ----------------------------------------------------------


@pytest.fixture
def owner_and_stranger(
    new_client: Callable[..., httpx.Client],
) -> tuple[httpx.Client, httpx.Client, str]:
    owner, stranger = new_client(), new_client()
    image_id = owner.post("/images", json={"prompt": "mine", **SMALL}).json()["id"]
    return owner, stranger, image_id


def _without_id(body: dict[str, Any], image_id: str) -> dict[str, Any]:
    return {**body, "message": body["message"].replace(image_id, "<id>")}


def test_someone_elses_private_image_is_indistinguishable_from_none(
    owner_and_stranger: tuple[httpx.Client, httpx.Client, str],
) -> None:
    owner, stranger, image_id = owner_and_stranger
    unknown_id = "00000000-0000-4000-8000-000000000000"
    hidden = assert_error(stranger.get(f"/images/{image_id}"), 404)
    missing = assert_error(stranger.get(f"/images/{unknown_id}"), 404)
    assert _without_id(hidden, image_id) == _without_id(missing, unknown_id)
    assert "mine" not in hidden["message"]
    assert owner.get(f"/images/{image_id}").status_code == 200


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PUT", "/interruption", None),
        ("PUT", "/privacy", {"privacy": "public"}),
        ("PUT", "/privacy", {"privacy": "private"}),
        ("DELETE", "", None),
    ],
)
def test_someone_elses_private_image_cannot_be_changed(
    owner_and_stranger: tuple[httpx.Client, httpx.Client, str],
    method: str,
    suffix: str,
    body: Any,
) -> None:
    owner, stranger, image_id = owner_and_stranger
    unknown_id = "00000000-0000-4000-8000-000000000000"
    hidden = assert_error(stranger.request(method, f"/images/{image_id}{suffix}", json=body), 404)
    missing = assert_error(
        stranger.request(method, f"/images/{unknown_id}{suffix}", json=body), 404
    )
    assert _without_id(hidden, image_id) == _without_id(missing, unknown_id)
    after = owner.get(f"/images/{image_id}")
    assert after.status_code == 200
    assert after.json()["privacy"] == "private"


def test_someone_elses_public_image_is_readable(
    owner_and_stranger: tuple[httpx.Client, httpx.Client, str],
) -> None:
    owner, stranger, image_id = owner_and_stranger
    assert owner.put(f"/images/{image_id}/privacy", json={"privacy": "public"}).status_code == 200
    resp = stranger.get(f"/images/{image_id}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == image_id
    assert resp.json()["privacy"] == "public"
    # ...but it is still not in the stranger's own list.
    assert stranger.get("/images").json() == []
    # Private again: hidden again.
    assert owner.put(f"/images/{image_id}/privacy", json={"privacy": "private"}).status_code == 200
    assert_error(stranger.get(f"/images/{image_id}"), 404)


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PUT", "/interruption", None),
        ("PUT", "/privacy", {"privacy": "private"}),
        ("PUT", "/privacy", {"privacy": "public"}),
        ("DELETE", "", None),
    ],
)
def test_someone_elses_public_image_cannot_be_changed(
    owner_and_stranger: tuple[httpx.Client, httpx.Client, str],
    method: str,
    suffix: str,
    body: Any,
) -> None:
    owner, stranger, image_id = owner_and_stranger
    assert owner.put(f"/images/{image_id}/privacy", json={"privacy": "public"}).status_code == 200
    before = owner.get(f"/images/{image_id}").json()
    assert_error(stranger.request(method, f"/images/{image_id}{suffix}", json=body), 403)
    after = owner.get(f"/images/{image_id}")
    assert after.status_code == 200
    assert after.json()["privacy"] == "public"
    assert after.json()["status"] != "interrupted" or before["status"] == "interrupted"


def test_lists_are_per_account(new_client: Callable[..., httpx.Client]) -> None:
    a, b = new_client(), new_client()
    mine = {a.post("/images", json={"prompt": "a", **SMALL}).json()["id"] for _ in range(2)}
    theirs = {b.post("/images", json={"prompt": "b", **SMALL}).json()["id"]}
    assert {i["id"] for i in a.get("/images").json()} == mine
    assert {i["id"] for i in b.get("/images").json()} == theirs
    for image_id in mine:
        a.delete(f"/images/{image_id}")
    for image_id in theirs:
        b.delete(f"/images/{image_id}")
