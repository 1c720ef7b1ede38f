"""Where the API is and which key to use: arguments first, then the environment.

The key: ``api_key``, else ``LETZAI_API_KEY``, else ``OPENLETZ_API_KEY``.
The base URL: ``base_url``, else ``LETZAI_BASE_URL``, else ``OPENLETZ_BASE_URL``,
else a local openletz server at ``http://127.0.0.1:8000``. The hosted LetzAI
API is ``https://api.letz.ai``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from openletz.client._exceptions import ConfigurationError

__all__ = [
    "API_KEY_VARS",
    "BASE_URL_VARS",
    "DEFAULT_BASE_URL",
    "HOSTED_BASE_URL",
    "resolve_api_key",
    "resolve_base_url",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
HOSTED_BASE_URL = "https://api.letz.ai"
API_KEY_VARS = ("LETZAI_API_KEY", "OPENLETZ_API_KEY")
BASE_URL_VARS = ("LETZAI_BASE_URL", "OPENLETZ_BASE_URL")


def _first(names: tuple[str, ...], environ: Mapping[str, str]) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def resolve_api_key(api_key: str | None, environ: Mapping[str, str] | None = None) -> str:
    key = (api_key or "").strip() or _first(
        API_KEY_VARS, os.environ if environ is None else environ
    )
    if not key:
        raise ConfigurationError(
            f"no API key: pass one or set {API_KEY_VARS[0]} (or {API_KEY_VARS[1]})"
        )
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigurationError("the API key contains spaces or control characters")
    return key


def resolve_base_url(base_url: str | None, environ: Mapping[str, str] | None = None) -> str:
    url = (base_url or "").strip() or _first(
        BASE_URL_VARS, os.environ if environ is None else environ
    )
    url = (url or DEFAULT_BASE_URL).rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest:
        raise ConfigurationError(f"the base URL must start with http:// or https:// (got {url!r})")
    return url
