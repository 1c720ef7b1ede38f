"""The ``/images`` routes: create, read, list, interrupt, privacy, delete."""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from openletz.api.deps import ServicesDep, UserDep, authenticate, services_of
from openletz.api.errors import ApiError
from openletz.api.responses import JSON
from openletz.api.routing import PlainRoute
from openletz.api.schemas import ErrorBody, ImageCreate, ImagePublic, PrivacyUpdate
from openletz.api.services import Services
from openletz.auth import User
from openletz.jobs.store import Job, NewJob

router = APIRouter(prefix="/images", tags=["images"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Invalid input: the message names the field and the rule.",
        401: "Missing or unknown API key.",
        404: "No such image (or it is someone else's and private).",
    }.items()
}

# No length limit here: an id too long to exist is simply not found (404, as any
# other unknown id), never a 400 about the path.
ImageId = Annotated[str, Path(description="The image's id.")]
# Ids are UUIDs; anything outside this shape cannot exist, and is not sent to the
# database at all (PostgreSQL refuses text with NUL in it, for one).
_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")


async def _visible(services: Services, user: User, image_id: str) -> Job:
    """The job if ``user`` may read it; 404 otherwise, whether or not it exists."""
    job = await services.jobs.get(image_id) if _ID_SHAPE.fullmatch(image_id) else None
    if job is None or (job.user_id != user.id and job.privacy != "public"):
        raise ApiError(404, f"image {image_id} not found")
    return job


async def _owned(services: Services, user: User, image_id: str) -> Job:
    job = await _visible(services, user, image_id)
    if job.user_id != user.id:
        raise ApiError(403, "this image belongs to another account; only its owner may change it")
    return job


@router.post(
    "",
    response_model=ImagePublic,
    responses=_ERRORS,
    summary="Create an image generation task",
)
async def create_image(body: ImageCreate, user: UserDep, services: ServicesDep) -> Response:
    names = services.model_names
    if body.baseModel is not None and names is not None and body.baseModel not in names:
        raise ApiError(
            400, f"baseModel must be one of the server's models: {', '.join(sorted(names))}"
        )
    seed = body.seed
    if seed is None:
        seed = body.seed_from_prompt()
    if seed is None:
        seed = secrets.randbelow(2**32)
    job = await services.jobs.create(
        NewJob(
            user_id=user.id,
            prompt=body.prompt,
            width=body.width,
            height=body.height,
            quality=body.quality,
            creativity=body.creativity,
            has_watermark=body.hasWatermark,
            system_version=body.systemVersion or user.default_system_version,
            mode=body.mode,
            seed=seed,
            base_model=body.baseModel,
            webhook_url=body.webhookUrl,
        )
    )
    await services.dispatcher.enqueue(job.id)
    return JSON(await services.presenter.image(job))


@router.get(
    "",
    response_model=list[ImagePublic],
    responses=_ERRORS,
    summary="List the caller's own images",
)
async def list_images(
    user: UserDep,
    services: ServicesDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    sortBy: Literal["createdAt", "likes", "regenerations"] = "createdAt",
    sortOrder: Literal["ASC", "DESC", "asc", "desc"] = "DESC",
) -> Response:
    jobs = await services.jobs.list_for_user(
        user.id,
        page=page,
        limit=limit,
        sort_by=sortBy,
        sort_order="ASC" if sortOrder.upper() == "ASC" else "DESC",
    )
    return JSON([await services.presenter.image(job) for job in jobs])


async def get_image(image_id: ImageId, request: Request) -> Response:
    """Read an image generation task (poll every 3 s until ready or failed)."""
    services = services_of(request)
    user = await authenticate(request, services)
    job = await _visible(services, user, image_id)
    return Response(await services.presenter.image_json(job), media_type="application/json")


# Every waiting client polls this route every few seconds, so it runs as a
# PlainRoute and resolves the services and the user with plain calls.
router.add_api_route(
    "/{image_id}",
    get_image,
    methods=["GET"],
    response_model=ImagePublic,
    responses=_ERRORS,
    summary="Read an image generation task (poll every 3 s until ready or failed)",
    route_class_override=PlainRoute,
)


@router.put(
    "/{image_id}/interruption",
    status_code=204,
    responses={**_ERRORS, 403: {"model": ErrorBody, "description": "Not your image."}},
    summary="Stop a generation (a queued one never starts)",
)
async def interrupt_image(image_id: ImageId, user: UserDep, services: ServicesDep) -> Response:
    job = await _owned(services, user, image_id)
    if not job.status.is_terminal():
        await services.jobs.request_interrupt(job.id)
        await services.dispatcher.interrupt(job.id)
    return Response(status_code=204)


@router.put(
    "/{image_id}/privacy",
    response_model=ImagePublic,
    responses={**_ERRORS, 403: {"model": ErrorBody, "description": "Not your image."}},
    summary="Make an image public or private",
)
async def set_privacy(
    image_id: ImageId, body: PrivacyUpdate, user: UserDep, services: ServicesDep
) -> Response:
    await _owned(services, user, image_id)
    job = await services.jobs.set_privacy(image_id, body.privacy)
    if job is None:
        raise ApiError(404, f"image {image_id} not found")
    return JSON(await services.presenter.image(job))


@router.delete(
    "/{image_id}",
    status_code=204,
    responses={**_ERRORS, 403: {"model": ErrorBody, "description": "Not your image."}},
    summary="Delete an image and its files (a running generation is stopped)",
)
async def delete_image(image_id: ImageId, user: UserDep, services: ServicesDep) -> Response:
    await _owned(services, user, image_id)
    job = await services.jobs.delete(image_id)
    if job is not None:
        # The row goes first: a worker still running this job then loses its lease
        # at the next heartbeat, stops, and deletes whatever it had stored.
        await services.dispatcher.interrupt(job.id)
        if job.image_versions:
            await services.blobs.delete_many(job.image_versions.values())
    return Response(status_code=204)
