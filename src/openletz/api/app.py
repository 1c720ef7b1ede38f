"""The ASGI application: ``create_app(settings)``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openletz import __version__
from openletz.api import errors
from openletz.api.routes import files, images, system
from openletz.api.services import Services
from openletz.settings import Settings

DESCRIPTION = """\
openletz speaks the LetzAI public image API. Authenticate every call with
`Authorization: Bearer <key>` (make one with `openletz keys create --user NAME`).
Create an image with `POST /images`, then poll `GET /images/{id}` every 3 s until
`status` is `ready` (download `imageVersions.original`) or `failed` (read
`progressMessage`). Errors are `{"statusCode", "message", "error"}`.
"""


class BodyLimit:
    """413 for a body over ``limit`` bytes, judged by Content-Length and by what arrives."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._reject(send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        from openletz.api.errors import error_response

        response = error_response(413, f"the request body is larger than {self.limit} bytes")
        await response({"type": "http"}, _no_receive, send)


class _TooLarge(Exception):
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


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

    app = FastAPI(
        title="openletz",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/doc",
        openapi_url="/doc-json",
        redoc_url=None,
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(images.router)
    app.include_router(files.router)
    app.include_router(system.router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
