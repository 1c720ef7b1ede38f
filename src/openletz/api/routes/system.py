"""Health and the OpenAPI document in YAML."""

from __future__ import annotations

import yaml
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import FileResponse, Response

from openletz import __version__
from openletz.api.deps import ServicesDep
from openletz.api.errors import ApiError
from openletz.api.responses import JSON

router = APIRouter(tags=["system"])


@router.get("/health", summary="What engine, store and dispatcher are in use")
async def health(services: ServicesDep) -> Response:
    engine = services.engine
    return JSON(
        {
            "status": "ok",
            "version": __version__,
            "engine": {
                "name": engine.name,
                "sandbox": engine.name == "sandbox",
                "reason": engine.reason,
            },
            "store": {"name": services.blobs.name},
            "database": {"dialect": services.db.dialect.name},
            "dispatcher": services.dispatcher.describe(),
        }
    )


@router.get("/doc-yaml", include_in_schema=False)
async def openapi_yaml(request: Request) -> Response:
    document = request.app.openapi()
    return Response(
        yaml.safe_dump(document, sort_keys=False, allow_unicode=True),
        media_type="application/yaml",
    )


# Swagger UI's files come with the server (the swagger-ui-bundle-v2 package), not
# from a CDN: the docs must work on a machine with no internet.
_SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


@router.get("/doc", include_in_schema=False)
async def swagger_ui(request: Request) -> Response:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}/doc-json",
        title=f"{request.app.title} API",
        swagger_js_url=f"{root}/doc/static/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/doc/static/swagger-ui.css",
        swagger_favicon_url=f"{root}/doc/static/favicon-32x32.png",
    )


@router.get("/doc/static/{name}", include_in_schema=False)
async def swagger_file(name: str) -> Response:
    media_type = _SWAGGER_FILES.get(name)
    if media_type is None:
        raise ApiError(404, "file not found")
    from swagger_ui_bundle import swagger_ui_path

    return FileResponse(
        swagger_ui_path / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400"},
    )
