"""Request and response bodies, with exactly the LetzAI field names.

Validation is written so that every message names the field and the rule, as
the hosted API does; numbers must be JSON numbers (an integral float such as
``1600.0`` counts, since JavaScript clients cannot tell them apart), never
strings or booleans.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1
_SEED_TAG = re.compile(r"\[seed:\s*(\d{1,10})\s*\]", re.IGNORECASE)


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("integer", "must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise PydanticCustomError("integer", "must be an integer")
        return int(value)
    return value


def _int_range(lo: int, hi: int) -> Any:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise PydanticCustomError(
                "range",
                "must be an integer from {lo} to {hi} (got {got})",
                {"lo": lo, "hi": hi, "got": value},
            )
        return value

    return AfterValidator(check)


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise PydanticCustomError("boolean", "must be a boolean (true or false)")
    return value


def _check_text(value: str) -> None:
    # JSON allows lone surrogates ("\\ud800"); they are no text, and no database or
    # JSON encoder downstream can store or send them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("unicode", "must be valid Unicode text") from None
    # PostgreSQL cannot store NUL in text, and no prompt needs one.
    if "\x00" in value:
        raise PydanticCustomError("nul", "must not contain the NUL character")


def _string(max_len: int, *, allow_blank: bool = False) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, str):
            raise PydanticCustomError("string", "must be a string")
        _check_text(value)
        if not allow_blank and not value.strip():
            raise PydanticCustomError("blank", "must not be empty")
        if len(value) > max_len:
            raise PydanticCustomError(
                "too_long", "must be at most {max} characters long", {"max": max_len}
            )
        return value

    return BeforeValidator(check)


def _one_of(*choices: Any) -> Any:
    def check(value: Any) -> Any:
        # bool is an int in Python; `true` is not a system version.
        if isinstance(value, bool) or value not in choices:
            shown = ", ".join(repr(c) if isinstance(c, str) else str(c) for c in choices)
            raise PydanticCustomError("choice", "must be one of {choices}", {"choices": shown})
        return value

    return BeforeValidator(check)


def _http_url(value: Any) -> Any:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
        raise PydanticCustomError("url", "must be an http:// or https:// URL")
    if len(value) > 2048:
        raise PydanticCustomError("too_long", "must be at most 2048 characters long")
    _check_text(value)
    return value


def _int_schema(lo: int, hi: int) -> WithJsonSchema:
    # The checks above are plain functions, invisible to the OpenAPI document: state
    # the bounds there explicitly.
    return WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi})


Integer = Annotated[int, BeforeValidator(_integer)]
Size = Annotated[Integer, _int_range(520, 2160), _int_schema(520, 2160)]
Level = Annotated[Integer, _int_range(1, 5), _int_schema(1, 5)]
Seed = Annotated[Integer, _int_range(0, MAX_SEED), _int_schema(0, MAX_SEED)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Mode = Annotated[Literal["default", "sigma", "turbo"], _one_of("default", "sigma", "turbo")]
SystemVersion = Annotated[Literal[2, 3], _one_of(2, 3)]
PrivacyValue = Annotated[Literal["private", "public"], _one_of("private", "public")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class ImageCreate(_Body):
    """The body of ``POST /images``."""

    prompt: Annotated[
        str,
        _string(MAX_PROMPT_CHARS),
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}),
    ] = Field(
        description="What to draw. A trailing `[seed:N]` tag sets the seed when `seed` is absent."
    )
    width: Size = Field(1600, description="Width in pixels, 520 to 2160.")
    height: Size = Field(1600, description="Height in pixels, 520 to 2160.")
    quality: Level = Field(2, description="1 to 5: more denoising steps, slower and finer.")
    creativity: Level = Field(
        2, description="1 to 5: higher follows the prompt more loosely and artistically."
    )
    hasWatermark: Bool = Field(True, description="Put a visible mark on the delivered image.")
    systemVersion: SystemVersion | None = Field(
        None, description="Model generation, 2 or 3; defaults to the account's setting."
    )
    mode: Mode = Field("default", description="default (best), sigma (faster), turbo (fastest).")
    webhookUrl: (
        Annotated[
            str,
            BeforeValidator(_http_url),
            WithJsonSchema({"type": "string", "format": "uri", "maxLength": 2048}),
        ]
        | None
    ) = Field(None, description="Receives a POST with the image object once it is ready or failed.")
    baseModel: (
        Annotated[
            str, _string(200), WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 200})
        ]
        | None
    ) = Field(None, description="A named model of the server's registry, overriding the default.")
    seed: Seed | None = Field(
        None,
        description="openletz extension: 0 to 4294967295; the same seed and parameters "
        "give the same image. Random when absent.",
    )

    def seed_from_prompt(self) -> int | None:
        match = _SEED_TAG.search(self.prompt)
        return int(match.group(1)) % (MAX_SEED + 1) if match else None


class PrivacyUpdate(_Body):
    privacy: PrivacyValue


class ImagePublic(BaseModel):
    """The image object (documentation only: responses are built as plain dicts)."""

    id: str
    prompt: str
    status: Literal["new", "in progress", "ready", "failed", "interrupted"]
    progress: int = Field(ge=0, le=100)
    progressMessage: str | None
    previewImage: str | None = Field(description="Base64 of a small JPEG of the image as it forms.")
    imageVersions: dict[str, str] = Field(
        description="Absolute URLs once ready: original, 1920x1920, 640x640, 240x240, 96x96."
    )
    hasWatermark: bool
    privacy: Literal["private", "public"]
    createdAt: str
    updatedAt: str
    width: int
    height: int
    quality: int
    creativity: int
    systemVersion: int
    mode: str
    seed: int
    baseModel: str | None
    webhookUrl: str | None
    engine: str = Field(
        description='"sandbox" when the image comes from the weight-free test engine.'
    )
    sandbox: bool


class ErrorBody(BaseModel):
    statusCode: int
    message: str
    error: str
