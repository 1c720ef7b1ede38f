"""The browser UI: ``/`` and its static assets under ``/web/``.

The assets are plain files of the package (``openletz/web``), read once and
served from memory with an ETag; browsers revalidate them on each load
(``no-cache``), so a new version of openletz is picked up at once. The page
runs only its own scripts: its API calls go to this origin, and image URLs may
point elsewhere (a public base URL, an S3 store), so only images may come from
any http(s) origin.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import Response

from openletz.api.errors import ApiError

router = APIRouter(include_in_schema=False)

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: http: https:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

_COMMON = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}

_PAGE = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Every file of ``openletz/web`` by name (a fixed set: nothing else is served)."""
    found: dict[str, Asset] = {}
    for entry in resources.files("openletz").joinpath("web").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            found[entry.name] = Asset(body, _TYPES[suffix], etag)
    return found


def _serve(request: Request, name: str, extra: dict[str, str] | None = None) -> Response:
    asset = assets().get(name)
    if asset is None:
        raise ApiError(404, "no such route")
    headers = {**_COMMON, **(extra or {}), "ETag": asset.etag}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    return _serve(request, "index.html", _PAGE)


@router.api_route("/web/{name}", methods=["GET", "HEAD"])
async def asset(name: str, request: Request) -> Response:
    if name == "index.html":
        return _serve(request, name, _PAGE)
    return _serve(request, name)
