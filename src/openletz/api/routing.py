"""A route class for the hottest route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response


class PlainRoute(APIRoute):
    """Documented like any route, but called with its path parameters and the
    request as they are: no dependency solving and no parameter validation.

    For routes that do their own checks and are called far more often than the
    rest (the poll of ``GET /images/{id}``); FastAPI's machinery costs more there
    than the work itself. The endpoint must take ``request`` and the path
    parameters as strings, and return a ``Response``.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[..., Awaitable[Response]] = self.endpoint

        async def handler(request: Request) -> Response:
            params: dict[str, Any] = request.path_params
            return await endpoint(request=request, **params)

        return handler
