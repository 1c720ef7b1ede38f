"""One typed settings object for every process.

Values come from (highest first) keyword arguments, ``OPENLETZ_*`` environment
variables, a ``.env`` file, a TOML/YAML config file named by ``OPENLETZ_CONFIG``,
and the defaults below, which are the embedded single-machine setup.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ImageFormat = Literal["jpeg", "png", "webp"]

_DEV_SECRET = "openletz-development-secret"


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the YAML (or JSON, a subset of YAML) file that ``OPENLETZ_CONFIG`` names."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is used instead

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("OPENLETZ_CONFIG")
        if not path:
            return {}
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of setting names to values")
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OPENLETZ_", env_file=".env", extra="ignore", frozen=True
    )

    # Where the embedded defaults keep their state.
    data_dir: Path = Path("./data")
    database_url: str = ""  # default: SQLite in data_dir
    environment: Literal["development", "production"] = "development"

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_base_url: str = ""  # default: http://{host}:{port}
    max_body_bytes: int = Field(1_048_576, ge=1024)
    secret_key: str = _DEV_SECRET  # signs private file URLs
    signed_url_ttl_s: int = Field(3600, ge=10)
    auth_cache_ttl_s: float = Field(5.0, ge=0)

    # Users
    default_system_version: Literal[2, 3] = 3

    # Workers and jobs
    workers: int = Field(1, ge=1, le=64)
    lease_s: float = Field(30.0, gt=0)
    heartbeat_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    reconcile_interval_s: float = Field(2.0, gt=0)
    stale_new_s: float = Field(10.0, gt=0)
    job_timeout_s: float = Field(1800.0, gt=0)

    # Engine
    # "auto", "sandbox", "diffusers", or "package.module:factory" for an engine of
    # one's own (the factory takes the Settings and returns an Engine).
    engine: str = Field("auto", pattern=r"^(auto|sandbox|diffusers|[\w.]+:\w+)$")
    sandbox_duration_s: float = Field(4.0, ge=0)
    sandbox_steps_per_quality: int = Field(6, ge=1)

    # Imaging
    image_format: ImageFormat = "jpeg"
    jpeg_quality: int = Field(92, ge=1, le=100)
    watermark_text: str = "openletz"
    preview_max_side: int = Field(256, ge=16, le=1024)
    preview_interval_s: float = Field(0.25, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            _ConfigFileSource(settings_cls),
            file_secret_settings,
        )

    @model_validator(mode="after")
    def _refuse_default_secret_in_production(self) -> Settings:
        if self.environment == "production" and self.secret_key == _DEV_SECRET:
            raise ValueError(
                "OPENLETZ_SECRET_KEY must be set in production; "
                f"for example: OPENLETZ_SECRET_KEY={secrets.token_urlsafe(32)}"
            )
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'openletz.db').resolve()}"

    @cached_property
    def resolved_public_base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @cached_property
    def blob_dir(self) -> Path:
        return (self.data_dir / "images").resolve()
