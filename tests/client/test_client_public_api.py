"""The SDK's public API, pinned: a change here is a change for every user of it."""

from __future__ import annotations

import inspect

import openletz.client
from openletz.client import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConfigurationError,
    Image,
    ImageFailedError,
    ImageNotReadyError,
    InvalidResponseError,
    NotFoundError,
    OpenLetzError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WaitTimeoutError,
)

IMAGE = "image: 'Image | str'"
SIGNATURES = {
    "__init__": "(self, api_key: 'str | None' = None, *, base_url: 'str | None' = None, "
    "timeout: 'float' = 30.0, transport: 'httpx.{}BaseTransport | None' = None) -> 'None'",
    "create": "(self, prompt: 'str', *, width: 'int | None' = None, height: 'int | None' = None, "
    "quality: 'int | None' = None, creativity: 'int | None' = None, "
    "has_watermark: 'bool | None' = None, system_version: 'int | None' = None, "
    "mode: 'Mode | None' = None, seed: 'int | None' = None, base_model: 'str | None' = None, "
    "webhook_url: 'str | None' = None) -> 'Image'",
    "get": f"(self, {IMAGE}) -> 'Image'",
    "list": "(self, *, page: 'int' = 1, limit: 'int' = 10, "
    "sort_by: \"Literal['createdAt', 'likes', 'regenerations']\" = 'createdAt', "
    "sort_order: \"Literal['ASC', 'DESC']\" = 'DESC') -> 'builtins.list[Image]'",
    "wait": f"(self, {IMAGE}, *, timeout: 'float | None' = 600.0, poll_interval: 'float' = 3.0, "
    "on_progress: 'Callable[[Progress], object] | None' = None, "
    "raise_on_failure: 'bool' = True) -> 'Image'",
    "interrupt": f"(self, {IMAGE}) -> 'None'",
    "set_privacy": f"(self, {IMAGE}, privacy: 'Privacy') -> 'Image'",
    "delete": f"(self, {IMAGE}) -> 'None'",
    "download": f"(self, {IMAGE}, version: 'str' = 'original', *, "
    "path: 'str | os.PathLike[str] | None' = None, fallback: 'bool' = False) -> 'bytes | Path'",
}


def test_all_is_pinned() -> None:
    assert openletz.client.__all__ == [
        "DEFAULT_BASE_URL",
        "HOSTED_BASE_URL",
        "VERSIONS",
        "APIConnectionError",
        "APIError",
        "APITimeoutError",
        "AsyncClient",
        "AuthenticationError",
        "BadRequestError",
        "Client",
        "ConfigurationError",
        "Image",
        "ImageFailedError",
        "ImageNotReadyError",
        "ImageStatus",
        "InvalidResponseError",
        "Mode",
        "NotFoundError",
        "OpenLetzError",
        "PaymentRequiredError",
        "PermissionDeniedError",
        "Privacy",
        "Progress",
        "RateLimitError",
        "ServerError",
        "WaitTimeoutError",
    ]
    for name in openletz.client.__all__:
        assert getattr(openletz.client, name) is not None


def _public(cls: type) -> dict[str, str]:
    return {
        name: str(inspect.signature(member))
        for name, member in vars(cls).items()
        if callable(member) and (not name.startswith("_") or name == "__init__")
    }


def test_client_signatures_are_pinned() -> None:
    assert _public(Client) == {
        **{name: sig.format("") for name, sig in SIGNATURES.items()},
        "close": "(self) -> 'None'",
    }


def test_async_client_mirrors_the_client() -> None:
    assert _public(AsyncClient) == {
        **{name: sig.format("Async") for name, sig in SIGNATURES.items()},
        "aclose": "(self) -> 'None'",
    }
    for name in SIGNATURES:
        if name != "__init__":
            assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
    for cls, enter, leave in (
        (Client, "__enter__", "__exit__"),
        (AsyncClient, "__aenter__", "__aexit__"),
    ):
        assert callable(getattr(cls, enter))
        assert callable(getattr(cls, leave))


def test_the_image_model_is_pinned() -> None:
    fields = {name: field.alias for name, field in Image.model_fields.items()}
    assert fields == {
        "id": "id",
        "status": "status",
        "prompt": "prompt",
        "progress": "progress",
        "progress_message": "progressMessage",
        "preview_image": "previewImage",
        "image_versions": "imageVersions",
        "has_watermark": "hasWatermark",
        "privacy": "privacy",
        "created_at": "createdAt",
        "updated_at": "updatedAt",
        "width": "width",
        "height": "height",
        "quality": "quality",
        "creativity": "creativity",
        "system_version": "systemVersion",
        "mode": "mode",
        "seed": "seed",
        "base_model": "baseModel",
        "webhook_url": "webhookUrl",
        "engine": "engine",
        "sandbox": "sandbox",
    }
    assert [name for name, f in Image.model_fields.items() if f.is_required()] == ["id", "status"]
    assert {"is_done", "is_ready", "preview_bytes", "to_api"} <= set(vars(Image))


def test_the_exception_hierarchy_is_pinned() -> None:
    parents = {
        ConfigurationError: OpenLetzError,
        APIConnectionError: OpenLetzError,
        APITimeoutError: APIConnectionError,
        InvalidResponseError: OpenLetzError,
        APIError: OpenLetzError,
        BadRequestError: APIError,
        AuthenticationError: APIError,
        PaymentRequiredError: APIError,
        PermissionDeniedError: APIError,
        NotFoundError: APIError,
        RateLimitError: APIError,
        ServerError: APIError,
        WaitTimeoutError: OpenLetzError,
        ImageFailedError: OpenLetzError,
        ImageNotReadyError: OpenLetzError,
    }
    for cls, parent in parents.items():
        assert cls.__bases__ == (parent,), cls
    assert OpenLetzError.__bases__ == (Exception,)
    # The module's docstring draws the same tree.
    doc = inspect.getmodule(APIError).__doc__ or ""  # type: ignore[union-attr]
    for cls in parents:
        assert cls.__name__ in doc, cls
