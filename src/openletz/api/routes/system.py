"""Health and the OpenAPI document in YAML."""

from __future__ import annotations

import yaml
from fastapi import APIRouter, Request
from starlette.responses import Response

from openletz import __version__
from openletz.api.deps import ServicesDep
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
