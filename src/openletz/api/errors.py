"""Every error leaves as ``{"statusCode", "message", "error"}``, the hosted API's shape.

Validation failures are 400 (never 422) with a message naming the field and the
rule; nothing a client sends can produce a 500 with internals in it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from openletz.api.responses import JSON

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    # A message may quote what the client sent (a field name); a lone surrogate in
    # it would make the JSON encoder fail and the connection drop without an answer.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSON({"statusCode": status, "message": message, "error": phrase}, status, headers)


_MAX_FIELD_CHARS = 100


def _field(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc[1:] if not str(p).startswith("function-")]
    field = ".".join(parts) or str(loc[0])
    # Unknown property names come from the client: quote at most a readable prefix.
    return field if len(field) <= _MAX_FIELD_CHARS else field[:_MAX_FIELD_CHARS] + "…"


def describe_validation(errors: Sequence[Any]) -> str:
    """One readable sentence per problem, joined: ``width must be an integer from …``."""
    messages: list[str] = []
    for err in errors:
        kind, loc, msg = err.get("type"), tuple(err.get("loc", ())), err.get("msg", "")
        field = _field(loc)
        if kind == "json_invalid":
            messages.append("the request body is not valid JSON")
        elif kind == "missing" and loc == ("body",):
            messages.append("a JSON body is required")
        elif kind in ("model_attributes_type", "model_type", "dict_type"):
            messages.append("the request body must be a JSON object")
        elif kind == "extra_forbidden":
            messages.append(f"property {field} should not exist")
        elif kind == "missing":
            messages.append(f"{field} is required")
        else:
            messages.append(f"{field} {_rule(kind, err.get('ctx') or {}, msg)}")
    return "; ".join(dict.fromkeys(messages))


def _rule(kind: Any, ctx: dict[str, Any], msg: str) -> str:
    """Pydantic's wording for the query parameters' rules, in the API's own words."""
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be an integer"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    return msg.replace("Input should be", "must be", 1)


def allowed_methods(request: Request) -> list[str]:
    """Every method that some route of the app takes at the request's path.

    Starlette answers a wrong method with the methods of the first route whose
    path matched, while a path may have several routes (``GET`` and ``POST
    /images``): ``Allow`` must name them all (RFC 9110, 15.5.6)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        taken = getattr(route, "methods", None)
        if taken and route.matches(request.scope)[0] is not Match.NONE:
            methods.update(taken)
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return error_response(400, describe_validation(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route"
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405 and (methods := allowed_methods(request)):
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return error_response(exc.status_code, message, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; the server log has the details")
