"""The image object, typed.

Attributes are snake_case (``image.preview_image``); the API's camelCase names
are their aliases, and ``image.to_api()`` gives the object back with the API's
names. Fields the hosted API adds and this model does not name are kept, in
``image.model_extra``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["VERSIONS", "Image", "ImageStatus", "Mode", "Privacy", "Progress"]

Privacy = Literal["private", "public"]
Mode = Literal["default", "sigma", "turbo"]

# Largest first: the order in which download(..., fallback=True) tries them.
VERSIONS = ("original", "1920x1920", "640x640", "240x240", "96x96")


class ImageStatus(StrEnum):
    NEW = "new"
    IN_PROGRESS = "in progress"
    READY = "ready"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def is_terminal(self) -> bool:
        return self in (ImageStatus.READY, ImageStatus.FAILED, ImageStatus.INTERRUPTED)


class Image(BaseModel):
    """An image generation task and, once ready, its image versions.

    ``id`` and ``status`` are always there; the hosted API sends the seed's
    fields, and openletz adds the request's parameters and its engine.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )

    id: str
    status: ImageStatus
    prompt: str = ""
    progress: int = 0
    progress_message: str | None = None
    preview_image: str | None = None
    image_versions: dict[str, str] = Field(default_factory=dict)
    has_watermark: bool | None = None
    privacy: Privacy | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # openletz's additions.
    width: int | None = None
    height: int | None = None
    quality: int | None = None
    creativity: int | None = None
    system_version: int | None = None
    mode: str | None = None
    seed: int | None = None
    base_model: str | None = None
    webhook_url: str | None = None
    engine: str | None = None
    sandbox: bool | None = None

    @property
    def is_done(self) -> bool:
        """Ready, failed or interrupted: the status will not change again."""
        return self.status.is_terminal()

    @property
    def is_ready(self) -> bool:
        return self.status is ImageStatus.READY

    @property
    def preview_bytes(self) -> bytes | None:
        """The preview decoded (a small JPEG), or None; a ``data:`` URL is accepted too."""
        return decode_preview(self.preview_image)

    def to_api(self) -> dict[str, Any]:
        """The object with the API's field names, as JSON-ready values."""
        return self.model_dump(mode="json", by_alias=True)


def decode_preview(value: str | None) -> bytes | None:
    if not value:
        return None
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class Progress:
    """What ``wait``'s ``on_progress`` callback receives after each poll."""

    status: ImageStatus
    progress: int
    preview: bytes | None
    elapsed: float
    image: Image
