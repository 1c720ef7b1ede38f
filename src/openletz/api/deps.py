"""Dependencies of the routes, as ``Annotated`` aliases.

Each is a plain function of the request too, so that the hot poll route can
call them directly instead of paying for dependency resolution.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from openletz.api.errors import ApiError
from openletz.api.services import Services
from openletz.auth import User


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


async def current_user(request: Request) -> User:
    return await authenticate(request, services_of(request))


async def authenticate(request: Request, services: Services) -> User:
    """The user whose key the request carries; 401 otherwise."""
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "missing API key: send the header Authorization: Bearer <key>")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "malformed Authorization header: expected Bearer <key>")
    user = await services.accounts.authenticate(key)
    if user is None:
        raise ApiError(401, "invalid API key")
    return user


UserDep = Annotated[User, Depends(current_user)]
