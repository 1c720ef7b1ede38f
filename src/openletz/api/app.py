"""The ASGI application: ``create_app(settings)``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openletz import __version__
from openletz.api import errors
from openletz.api.routes import files, images, public, system, web
from openletz.api.routing import PlainRoute
from openletz.api.services import Services
from openletz.settings import Settings

DESCRIPTION = """\
openletz speaks the LetzAI public image API. Authenticate every call with
`Authorization: Bearer <key>` (make one with `openletz keys create --user NAME`).
Create an image with `POST /images`, then poll `GET /images/{id}` every 3 s until
`status` is `ready` (download `imageVersions.original`) or `failed` (read
`progressMessage`). Errors are `{"statusCode", "message", "error"}`.
A browser UI for the same calls is at `/`.
"""


_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyLimit:
    """413 for a body over ``limit`` bytes, judged by Content-Length and by what arrives."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A GET carries no body worth reading: no wrapping for the poll route.
        if scope["type"] != "http" or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._reject(send)
                return
        seen = 0
        too_large = False
        started = False

        async def limited() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            # FastAPI turns any failure to read the body into its own 400: once the
            # body is known to be too large, that answer is dropped for the 413.
            if too_large and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with suppress(_TooLarge):
            await self.app(scope, limited, guarded)
        if too_large and not started:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        from openletz.api.errors import error_response

        response = error_response(413, f"the request body is larger than {self.limit} bytes")
        await response({"type": "http"}, _no_receive, send)


class _TooLarge(Exception):
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class _App(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = super().openapi()
            # Validation failures leave as 400 (errors.install), never as FastAPI's 422:
            # the document must not promise a status and a body the API never sends.
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
        return self.openapi_schema or {}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.start(settings)
        app.state.services = services
        try:
            yield
        finally:
            await services.stop()

    app = _App(
        title="openletz",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # routes/system.py serves /doc from local files
        openapi_url="/doc-json",
        redoc_url=None,
        lifespan=lifespan,
    )
    errors.install(app)
    # The routes go straight into the app's router: an included router is a
    # wrapper that FastAPI matches twice per request, which costs the poll route
    # more than its own work.
    for router in (images.router, public.router, files.router, system.router, web.router):
        app.router.routes.extend(router.routes)
    # Routes are matched in order; the poll route is matched first because it is
    # called most (no other route's path can match /images/{id} with GET).
    poll = next(r for r in app.router.routes if isinstance(r, PlainRoute))
    app.router.routes.remove(poll)
    app.router.routes.insert(0, poll)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
