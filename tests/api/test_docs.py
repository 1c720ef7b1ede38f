"""The documents and system routes, unknown routes and methods, and random input."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from tests._server import Server


def assert_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert set(body) == {"statusCode", "message", "error"}, body
    assert body["statusCode"] == status
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["error"], str)
    return body


@pytest.fixture(scope="module")
def anonymous(server: Server) -> Iterator[httpx.Client]:
    with server.client(None) as c:
        yield c


@pytest.fixture(scope="module")
def document(anonymous: httpx.Client) -> dict[str, Any]:
    resp = anonymous.get("/doc-json")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    return body


# -- documents ------------------------------------------------------------------------------


def test_doc_is_html(anonymous: httpx.Client) -> None:
    resp = anonymous.get("/doc")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "/doc-json" in resp.text


def test_doc_needs_no_internet(anonymous: httpx.Client) -> None:
    """Every script and style of the docs page comes from the server itself."""
    page = anonymous.get("/doc").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets
    assert all(a.startswith("/doc/static/") for a in assets), assets
    for asset in assets:
        resp = anonymous.get(asset)
        assert resp.status_code == 200, asset
        assert len(resp.content) > 500
    assert (
        anonymous.get("/doc/static/swagger-ui-bundle.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    for other in ("/doc/static/index.html", "/doc/static/..%2F__init__.py", "/doc/static/x.js"):
        assert_error(anonymous.get(other), 404)


def test_doc_json_lists_the_image_routes(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"]
    paths = document["paths"]
    expected = {
        "/images": {"get", "post"},
        "/images/{image_id}": {"get", "delete"},
        "/images/{image_id}/interruption": {"put"},
        "/images/{image_id}/privacy": {"put"},
    }
    for path, methods in expected.items():
        assert path in paths, sorted(paths)
        assert methods <= set(paths[path]), (path, sorted(paths[path]))


def test_doc_json_never_promises_a_422(document: dict[str, Any]) -> None:
    # Validation errors are 400 in the hosted API's shape; 422 is never sent.
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation.get("responses", {})
            assert "422" not in responses, (method, path)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    post = document["paths"]["/images"]["post"]
    assert "400" in post["responses"]
    assert "401" in post["responses"]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = document
    for part in ref.removeprefix("#/").split("/"):
        resolved = resolved[part]
    return resolved


def test_doc_json_describes_the_create_body(document: dict[str, Any]) -> None:
    post = document["paths"]["/images"]["post"]
    body = _resolve(document, post["requestBody"]["content"]["application/json"]["schema"])
    assert body["required"] == ["prompt"]
    assert body["additionalProperties"] is False
    props = body["properties"]
    assert set(props) == {
        *("prompt", "width", "height", "quality", "creativity", "hasWatermark"),
        *("systemVersion", "mode", "webhookUrl", "baseModel", "seed"),
    }
    assert props["prompt"]["maxLength"] == 4000
    for name, (lo, hi, default) in {
        "width": (520, 2160, 1600),
        "height": (520, 2160, 1600),
        "quality": (1, 5, 2),
        "creativity": (1, 5, 2),
    }.items():
        assert props[name]["type"] == "integer"
        assert (props[name]["minimum"], props[name]["maximum"]) == (lo, hi), name
        assert props[name]["default"] == default, name
    assert props["hasWatermark"]["default"] is True
    assert props["mode"]["default"] == "default"
    assert set(props["mode"]["enum"]) == {"default", "sigma", "turbo"}
    assert "seed" in props
    response = post["responses"]["200"]["content"]["application/json"]["schema"]
    image = _resolve(document, response)
    for field in ("id", "prompt", "status", "progress", "previewImage", "imageVersions"):
        assert field in image["properties"], field


def test_doc_yaml_is_the_same_document(anonymous: httpx.Client, document: dict[str, Any]) -> None:
    resp = anonymous.get("/doc-yaml")
    assert resp.status_code == 200
    assert "yaml" in resp.headers["content-type"]
    assert yaml.safe_load(resp.text) == document


def test_documents_need_no_key(server: Server) -> None:
    for path in ("/doc", "/doc-json", "/doc-yaml", "/health"):
        assert httpx.get(f"{server.base_url}{path}").status_code == 200, path


# -- health ---------------------------------------------------------------------------------


def test_health_names_the_engine_and_the_store(anonymous: httpx.Client) -> None:
    resp = anonymous.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert body["engine"]["name"] == "sandbox"
    assert body["engine"]["sandbox"] is True
    assert body["store"]["name"] == "local"


# -- unknown routes and methods -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/nope", "/image", "/images/x/y", "/images/x/interruption/now", "/v1/images", "/doc/x"],
)
def test_unknown_route_is_404(anonymous: httpx.Client, path: str) -> None:
    assert_error(anonymous.get(path), 404)
    assert_error(anonymous.post(path, json={}), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/images"),
        ("PUT", "/images"),
        ("PATCH", "/images"),
        ("POST", "/images/some-id"),
        ("PATCH", "/images/some-id"),
        ("GET", "/images/some-id/interruption"),
        ("POST", "/images/some-id/interruption"),
        ("GET", "/images/some-id/privacy"),
        ("POST", "/images/some-id/privacy"),
        ("POST", "/health"),
        ("POST", "/doc-json"),
    ],
)
def test_wrong_method_is_405(client: httpx.Client, method: str, path: str) -> None:
    resp = client.request(method, path)
    assert_error(resp, 405)
    assert resp.headers.get("allow")


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/images", "GET, POST"),
        ("/images/some-id", "DELETE, GET"),
        ("/images/some-id/interruption", "PUT"),
        ("/health", "GET"),
    ],
)
def test_a_405_allows_every_method_of_the_path(client: httpx.Client, path: str, allow: str) -> None:
    # Starlette names only the first route whose path matched; a path may have
    # several, and Allow must list them all.
    resp = client.request("PATCH", path)
    assert_error(resp, 405)
    assert resp.headers["allow"] == allow


# -- random input never makes the server fail -----------------------------------------------

KNOWN = [
    *("prompt", "width", "height", "quality", "creativity", "hasWatermark"),
    *("systemVersion", "mode", "webhookUrl", "baseModel", "seed"),
]
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",
    "\udfff\ud800",
    "🦊" * 10,
    "a" * 5000,
    "[seed:99999999999]",
    "[seed:-1]",
    "http://",
    "https://x",
    "default",
    "turbo",
    "public",
    "1600",
    "NaN",
    "true",
    "null",
    "../../etc/passwd",
    "'; DROP TABLE jobs; --",
    "%s%n",
    "\u202e\ufeff",
]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice(
            [0, 1, 2, 3, 5, 6, 519, 520, 1600, 2160, 2161, -1, 2**32, 2**64, -(2**63)]
        )
    if kind == 3:
        return rng.randint(-(10**20), 10**20)
    if kind == 4:
        return rng.choice([0.5, 1600.0, 1e308, -0.0, 2.0, 1e-300, 520.0000001])
    if kind in (5, 6):
        if rng.random() < 0.5:
            return rng.choice(ODD_STRINGS)
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(12)))
    if kind in (7, 8):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice([*KNOWN, "x", ""]): _random_value(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


def _random_body(rng: random.Random) -> Any:
    shape = rng.randrange(20)
    if shape == 0:
        return _random_value(rng)
    body: dict[str, Any] = {}
    if rng.random() < 0.8:
        body["prompt"] = rng.choice(["a fox", *ODD_STRINGS])
    for name in rng.sample(KNOWN, rng.randrange(len(KNOWN))):
        body[name] = _random_value(rng)
    if rng.random() < 0.2:
        body[rng.choice(["negativePrompt", "aspectRatio", "\ud800", "a" * 300, ""])] = 1
    return body


@pytest.mark.parametrize("seed", range(40))
def test_random_bodies_never_make_a_5xx(client: httpx.Client, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        body = _random_body(rng)
        # allow_nan and ensure_ascii: NaN and lone surrogates travel as a client may send them.
        raw = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
        resp = client.post("/images", content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code in (200, 400), (resp.status_code, raw[:300], resp.text[:300])
        if resp.status_code == 200:
            image = resp.json()
            assert client.delete(f"/images/{image['id']}").status_code == 204
        else:
            assert_error(resp, 400)
        privacy = client.put(
            "/images/some-id/privacy",
            content=raw,
            headers={"Content-Type": "application/json"},
        )
        assert privacy.status_code in (400, 404), (privacy.status_code, raw[:300])
        assert_error(privacy, privacy.status_code)


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_never_make_a_5xx(client: httpx.Client, seed: int) -> None:
    rng = random.Random(1000 + seed)
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if rng.random() < 0.5:
        raw = b'{"prompt": "' + raw + b'"}'
    resp = client.post("/images", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code in (200, 400), (resp.status_code, raw)
    if resp.status_code == 200:
        client.delete(f"/images/{resp.json()['id']}")
    else:
        assert_error(resp, 400)


@pytest.mark.parametrize("seed", range(20))
def test_random_list_queries_never_make_a_5xx(client: httpx.Client, seed: int) -> None:
    rng = random.Random(2000 + seed)
    params = {
        name: str(_random_value(rng, depth=2))
        for name in rng.sample(["page", "limit", "sortBy", "sortOrder", "x"], rng.randrange(1, 5))
    }
    # Percent-encoded by hand: a lone surrogate goes out as the bytes it stands for.
    query = "&".join(
        f"{name}={quote(value.encode('utf-8', 'surrogatepass'), safe='')}"
        for name, value in params.items()
    )
    resp = client.get(f"/images?{query}")
    assert resp.status_code in (200, 400), (resp.status_code, params, resp.text[:300])
    if resp.status_code == 400:
        assert_error(resp, 400)
    else:
        assert isinstance(resp.json(), list)


@pytest.mark.parametrize("seed", range(10))
def test_random_image_ids_never_make_a_5xx(client: httpx.Client, seed: int) -> None:
    rng = random.Random(3000 + seed)
    image_id = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(1, 80)))
    resp = client.get("/images/" + quote(image_id, safe=""))
    assert resp.status_code in (400, 404), (resp.status_code, image_id)
    assert_error(resp, resp.status_code)
