"""The image files behind ``imageVersions``: signed while private, plain once public."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from openletz.settings import Settings
from openletz.storage import _signing
from tests._server import Server, wait_for

SMALL = {"width": 520, "height": 520, "quality": 1}
VERSIONS = ["original", "1920x1920", "640x640", "240x240", "96x96"]


def assert_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert set(body) == {"statusCode", "message", "error"}, body
    assert body["statusCode"] == status
    return body


def _ready(client: httpx.Client, prompt: str = "files") -> dict[str, Any]:
    body = wait_for(client, client.post("/images", json={"prompt": prompt, **SMALL}).json()["id"])
    assert body["status"] == "ready", body
    return body


@pytest.fixture
def ready(client: httpx.Client) -> dict[str, Any]:
    """A ready private image of the test's own, to change."""
    return _ready(client)


@pytest.fixture(scope="module")
def shared(server: Server) -> Iterator[dict[str, Any]]:
    """A ready private image for the tests that only read it."""
    with server.client(server.create_key("files-module-owner")) as owner:
        yield _ready(owner, "shared")


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def _with_query(url: str, **params: str | None) -> str:
    """``url`` with its query replaced by ``params`` (``None`` drops one)."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in _query(url).items()}
    for name, value in params.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def _key(url: str) -> str:
    path = urlsplit(url).path
    assert path.startswith("/files/")
    return path.removeprefix("/files/")


def _jpeg(resp: httpx.Response) -> None:
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["content-type"] == "image/jpeg"
    assert resp.content.startswith(b"\xff\xd8")


# -- private --------------------------------------------------------------------------------


def test_private_urls_are_signed_and_work_without_a_key(shared: dict[str, Any]) -> None:
    versions = shared["imageVersions"]
    assert list(versions) == VERSIONS
    for url in versions.values():
        query = _query(url)
        assert set(query) == {"expires", "signature"}, url
        assert int(query["expires"][0]) > time.time()
        resp = httpx.get(url)  # no Authorization: the URL itself is the permission
        _jpeg(resp)
        assert "private" in resp.headers["cache-control"]


@pytest.mark.parametrize(
    "change",
    [
        {"signature": None},
        {"expires": None},
        {"signature": None, "expires": None},
        {"signature": ""},
        {"signature": "0" * 64},
        {"signature": "flip-last"},
        {"signature": "upper"},
        {"signature": "x" * 500},
        {"expires": "+60"},
        {"expires": "1"},
        {"expires": "-1"},
        {"expires": "abc"},
        {"expires": "9" * 40},
    ],
    ids=lambda c: ",".join(f"{k}={v!s:.12}" for k, v in c.items()),
)
def test_private_url_with_a_bad_signature_is_403(
    shared: dict[str, Any], change: dict[str, str | None]
) -> None:
    url = shared["imageVersions"]["original"]
    query = {k: v[0] for k, v in _query(url).items()}
    params = dict(change)
    if params.get("signature") == "flip-last":
        sig = query["signature"]
        params["signature"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    elif params.get("signature") == "upper":
        params["signature"] = query["signature"].upper()
    if params.get("expires") == "+60":
        params["expires"] = str(int(query["expires"]) + 60)
    assert_error(httpx.get(_with_query(url, **params)), 403)


def test_signature_of_one_version_does_not_open_another(shared: dict[str, Any]) -> None:
    versions = shared["imageVersions"]
    small = _query(versions["96x96"])
    url = _with_query(
        versions["original"], expires=small["expires"][0], signature=small["signature"][0]
    )
    assert_error(httpx.get(url), 403)


def test_signature_of_one_image_does_not_open_another(
    shared: dict[str, Any], ready: dict[str, Any]
) -> None:
    theirs = _query(ready["imageVersions"]["original"])
    url = _with_query(
        shared["imageVersions"]["original"],
        expires=theirs["expires"][0],
        signature=theirs["signature"][0],
    )
    assert_error(httpx.get(url), 403)


def test_expired_signature_is_403(shared: dict[str, Any]) -> None:
    # Signed with the server's own secret (the session server runs on the defaults).
    secret = Settings().secret_key
    url = shared["imageVersions"]["original"]
    key = _key(url)
    query = _query(url)
    assert _signing.sign(secret, key, int(query["expires"][0])) == query["signature"][0], (
        "the test server does not use the default secret"
    )
    past = int(time.time()) - 60
    assert_error(
        httpx.get(_with_query(url, expires=str(past), signature=_signing.sign(secret, key, past))),
        403,
    )
    future = int(time.time()) + 120
    _jpeg(
        httpx.get(
            _with_query(url, expires=str(future), signature=_signing.sign(secret, key, future))
        )
    )


# -- public ---------------------------------------------------------------------------------


def test_public_urls_are_plain_and_stable(ready: dict[str, Any], client: httpx.Client) -> None:
    image_id = ready["id"]
    signed = ready["imageVersions"]
    made_public = client.put(f"/images/{image_id}/privacy", json={"privacy": "public"})
    assert made_public.status_code == 200
    versions = made_public.json()["imageVersions"]
    assert list(versions) == VERSIONS
    assert versions == client.get(f"/images/{image_id}").json()["imageVersions"]
    for name, url in versions.items():
        assert urlsplit(url).query == "", url
        assert _key(url) == _key(signed[name])
        resp = httpx.get(url)
        _jpeg(resp)
        # Shared caches may keep it, but not for long: it can be made private again.
        assert resp.headers["cache-control"] == "public, max-age=3600"
        assert resp.content == httpx.get(signed[name]).content

    # Private again: the plain URLs stop working, fresh signed ones do.
    made_private = client.put(f"/images/{image_id}/privacy", json={"privacy": "private"})
    assert made_private.status_code == 200
    for name, url in made_private.json()["imageVersions"].items():
        assert set(_query(url)) == {"expires", "signature"}
        _jpeg(httpx.get(url))
        assert_error(httpx.get(versions[name]), 403)


# -- paths that are no file of the store ----------------------------------------------------


def _raw_get(server: Server, path: str) -> tuple[int, bytes, str]:
    """GET ``path`` byte for byte (httpx would normalise the dot segments away)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("content-type") or ""
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path",
    [
        "/files/../server.log",
        "/files/../../etc/passwd",
        "/files/%2e%2e/server.log",
        "/files/%2E%2E/%2E%2E/etc/passwd",
        "/files/..%2fserver.log",
        "/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/files/{id}/../../server.log",
        "/files/{id}/..%2f..%2fserver.log",
        "/files/{id}/%2e%2e/%2e%2e/openletz.db",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/{id}/original.jpg%00.png",
        "/files/{id}/original.jpg/",
        "/files/{id}/ORIGINAL.jpg",
        "/files/{id}/nope.jpg",
        "/files/{id}",
        "/files/{id}/",
        "/files/",
        "/files/00000000-0000-4000-8000-000000000000/original.jpg",
        "/files/{key}/extra",
        "/files/./{key}",
        "/files/{id}/./{name}",
    ],
)
def test_nothing_outside_the_store_is_served(
    server: Server, shared: dict[str, Any], path: str
) -> None:
    key = _key(shared["imageVersions"]["original"])
    image_id, name = key.split("/")
    status, body, content_type = _raw_get(server, path.format(id=image_id, key=key, name=name))
    assert status == 404, (status, body[:200])
    assert content_type.startswith("application/json")
    assert b'"statusCode":404' in body


def test_a_stored_file_is_served_with_an_exact_path(server: Server, shared: dict[str, Any]) -> None:
    # The control for the test above: the raw client does reach real files.
    url = shared["imageVersions"]["original"]
    parts = urlsplit(url)
    status, body, content_type = _raw_get(server, f"{parts.path}?{parts.query}")
    assert status == 200
    assert content_type == "image/jpeg"
    assert body.startswith(b"\xff\xd8")


# -- delete ---------------------------------------------------------------------------------


@pytest.mark.parametrize("privacy", ["private", "public"])
def test_delete_removes_the_files(
    ready: dict[str, Any], client: httpx.Client, privacy: str
) -> None:
    image_id = ready["id"]
    versions = client.put(f"/images/{image_id}/privacy", json={"privacy": privacy}).json()[
        "imageVersions"
    ]
    for url in versions.values():
        _jpeg(httpx.get(url))
    assert client.delete(f"/images/{image_id}").status_code == 204
    assert_error(client.get(f"/images/{image_id}"), 404)
    for url in [*versions.values(), *ready["imageVersions"].values()]:
        assert_error(httpx.get(url), 404)
        assert_error(httpx.get(_with_query(url, expires=None, signature=None)), 404)
