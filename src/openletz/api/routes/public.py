"""``GET /public/images``: an openletz extension listing other accounts' public images.

It lives outside ``/images/...``, whose ``GET /images/{id}`` would take any path
below it for an image id; ``GET /images`` stays the caller's own, as upstream.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from openletz.api.deps import ServicesDep, UserDep
from openletz.api.responses import JSON
from openletz.api.schemas import ErrorBody, ImagePublic

router = APIRouter(prefix="/public", tags=["public"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A query parameter out of its bounds, named."},
    401: {"model": ErrorBody, "description": "Missing or unknown API key."},
}


@router.get(
    "/images",
    response_model=list[ImagePublic],
    responses=_ERRORS,
    summary="List other accounts' public images (openletz extension)",
    description="A bare array of the finished public images of every account but the "
    "caller's, newest first. The caller's own images, public or not, are listed by "
    "`GET /images`.",
)
async def list_public_images(
    user: UserDep,
    services: ServicesDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Response:
    jobs = await services.jobs.list_public(page=page, limit=limit, exclude_user_id=user.id)
    return JSON([await services.presenter.image(job) for job in jobs])
