"""Image files of the local blob store, at ``/files/<job id>/<version>-<attempt>.<ext>``.

A private image's URL carries an expiring signature; a public image's URL is
plain and stable, so that it can be shared and cached.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import FileResponse, Response

from openletz.api.deps import ServicesDep
from openletz.api.errors import ApiError
from openletz.storage.base import InvalidKey, check_key

router = APIRouter(tags=["files"])


@router.get("/files/{key:path}", include_in_schema=False)
async def get_file(
    key: str,
    services: ServicesDep,
    # No length limits here: a wrong signature is a 403 whatever its length, and
    # verify() refuses overlong values before doing any work on them.
    expires: Annotated[str | None, Query()] = None,
    signature: Annotated[str | None, Query()] = None,
) -> Response:
    not_found = ApiError(404, "file not found")
    try:
        check_key(key)
    except InvalidKey:
        raise not_found from None
    path_of = getattr(services.blobs, "path", None)
    verify = getattr(services.blobs, "verify", None)
    if path_of is None or verify is None:
        raise not_found  # the store serves its own URLs (S3)
    job = await services.jobs.get(key.split("/", 1)[0])
    if job is None or not job.image_versions or key not in job.image_versions.values():
        raise not_found
    public = job.privacy == "public"
    if not public and not verify(key, expires, signature):
        raise ApiError(
            403, "this link has expired or is not valid; read the image again for a fresh one"
        )
    path = path_of(key)
    if not path.is_file():
        raise not_found
    # A public image can be made private again: shared caches may keep it for an
    # hour at most, not for a year.
    cache = "public, max-age=3600" if public else "private, max-age=300"
    return FileResponse(path, headers={"Cache-Control": cache})
