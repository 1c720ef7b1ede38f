"""The ``/images`` routes: create, read, list, interrupt, privacy, delete."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from openletz.api.deps import ServicesDep, UserDep
from openletz.api.errors import ApiError
from openletz.api.responses import JSON
from openletz.api.schemas import ErrorBody, ImageCreate, ImagePublic, PrivacyUpdate
from openletz.api.services import Services
from openletz.auth import User
from openletz.jobs.status import JobStatus
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
_MAX_ID_CHARS = 64


def iso(ts: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``, as JavaScript's ``toISOString``."""
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


async def image_object(services: Services, job: Job) -> dict[str, Any]:
    progress, preview = job.progress, job.preview
    if job.status is JobStatus.IN_PROGRESS:
        live = await services.live.get(job.id)
        if live is not None:
            progress = max(progress, live.progress)
            preview = live.preview or preview
        progress = min(progress, 99)  # 100 means ready, and nothing else
    elif job.status is not JobStatus.READY:
        progress = min(progress, 99)
    versions: dict[str, str] = {}
    if job.status is JobStatus.READY and job.image_versions:
        public = job.privacy == "public"
        versions = {
            name: services.blobs.url(key, public=public) for name, key in job.image_versions.items()
        }
    engine = job.engine or services.engine.name
    return {
        "id": job.id,
        "prompt": job.prompt,
        "status": job.status.value,
        "progress": progress,
        "progressMessage": job.progress_message,
        "previewImage": base64.b64encode(preview).decode() if preview else None,
        "imageVersions": versions,
        "hasWatermark": job.has_watermark,
        "privacy": job.privacy,
        "createdAt": iso(job.created_at),
        "updatedAt": iso(job.updated_at),
        "width": job.width,
        "height": job.height,
        "quality": job.quality,
        "creativity": job.creativity,
        "systemVersion": job.system_version,
        "mode": job.mode,
        "seed": job.seed,
        "baseModel": job.base_model,
        "webhookUrl": job.webhook_url,
        "engine": engine,
        "sandbox": engine == "sandbox",
    }


async def _visible(services: Services, user: User, image_id: str) -> Job:
    """The job if ``user`` may read it; 404 otherwise, whether or not it exists."""
    job = await services.jobs.get(image_id) if len(image_id) <= _MAX_ID_CHARS else None
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
    return JSON(await image_object(services, job))


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
    return JSON([await image_object(services, job) for job in jobs])


@router.get(
    "/{image_id}",
    response_model=ImagePublic,
    responses=_ERRORS,
    summary="Read an image generation task (poll every 3 s until ready or failed)",
)
async def get_image(image_id: ImageId, user: UserDep, services: ServicesDep) -> Response:
    return JSON(await image_object(services, await _visible(services, user, image_id)))


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
    return JSON(await image_object(services, job))


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
