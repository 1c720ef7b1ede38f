"""The browser UI's page and assets as plain HTTP: types, headers, caching."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openletz.api.app import create_app
from openletz.api.routes import web
from openletz.api.routing import PlainRoute
from tests._server import Server

WEB = Path(web.__file__).resolve().parents[2] / "web"


@pytest.fixture(scope="module")
def anonymous(server: Server) -> Iterator[httpx.Client]:
    with server.client(None) as c:
        yield c


def test_page_is_served_at_the_root_with_a_strict_policy(anonymous: httpx.Client) -> None:
    resp = anonymous.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.content == (WEB / "index.html").read_bytes()
    policy = dict(
        part.strip().split(" ", 1) for part in resp.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert set(policy["img-src"].split()) == {"'self'", "data:", "http:", "https:"}
    assert policy["frame-ancestors"] == "'none'"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"


def test_page_has_no_inline_script_or_style(anonymous: httpx.Client) -> None:
    # The policy would block them; this keeps the page honest about it.
    html = anonymous.get("/").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html
    assert " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)
    # No fonts, styles or scripts from elsewhere: the server may well be offline.
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("viewer.js", "text/javascript; charset=utf-8"),
        ("gallery.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ],
)
def test_assets(anonymous: httpx.Client, name: str, content_type: str) -> None:
    resp = anonymous.get(f"/web/{name}")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == content_type
    assert resp.content == (WEB / name).read_bytes()
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.headers["x-content-type-options"] == "nosniff"
    etag = resp.headers["etag"]
    again = anonymous.get(f"/web/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag


def test_every_file_the_page_names_is_served(anonymous: httpx.Client) -> None:
    names = set(re.findall(r"/web/([\w.-]+)", anonymous.get("/").text))
    for script in ("app.js", "viewer.js", "gallery.js"):
        names |= set(re.findall(r'from "\./([\w.-]+)"', (WEB / script).read_text()))
    assert {"app.js", "style.css", "api.js"} <= names
    for name in names:
        assert anonymous.get(f"/web/{name}").status_code == 200, name


def test_head(anonymous: httpx.Client) -> None:
    resp = anonymous.head("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "path", ["/web/missing.js", "/web/", "/web/..%2Fapi%2Fapp.py", "/web/web.py", "/index.html"]
)
def test_nothing_else_is_served(anonymous: httpx.Client, path: str) -> None:
    resp = anonymous.get(path)
    assert resp.status_code == 404
    assert set(resp.json()) == {"statusCode", "message", "error"}


def test_ui_routes_are_not_in_the_api_document(anonymous: httpx.Client) -> None:
    paths = anonymous.get("/doc-json").json()["paths"]
    assert "/" not in paths
    assert not [p for p in paths if p.startswith("/web")]


def test_the_poll_route_is_still_matched_first() -> None:
    app = create_app()
    first = app.router.routes[0]
    assert isinstance(first, PlainRoute)
    assert first.path == "/images/{image_id}"
