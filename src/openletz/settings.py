"""One typed settings object for every process.

Values come from (highest first) keyword arguments, ``OPENLETZ_*`` environment
variables, a ``.env`` file, a TOML/YAML config file named by ``OPENLETZ_CONFIG``,
and the defaults below, which are the embedded single-machine setup.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ImageFormat = Literal["jpeg", "png", "webp"]

_DEV_SECRET = "openletz-development-secret"


#: Where no webhook goes by default: the link-local networks, where clouds serve
#: each machine's metadata and credentials (169.254.169.254; fd00:ec2::254 on
#: AWS), and addresses that name no single host (unspecified, multicast,
#: broadcast). Loopback and private networks are where a self-hosted server's
#: receivers usually are; an operator whose users should not reach them adds them.
DEFAULT_BLOCKED_NETWORKS = (
    "0.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "fe80::/10",
    "ff00::/8",
    "fd00:ec2::254/128",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(networks: Iterable[str]) -> list[Network]:
    """``networks`` (CIDR, or single addresses) as networks; a bad one raises
    ``ValueError`` naming it."""
    parsed: list[Network] = []
    for network in networks:
        try:
            parsed.append(ipaddress.ip_network(network.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{network!r} is not an IP network (CIDR, such as 10.0.0.0/8) or address"
            ) from None
    return parsed


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
    data_dir: Path = Field(Path("./data"), description="SQLite database and image files.")
    database_url: str = Field("", description="SQLAlchemy async URL; default: SQLite in data_dir.")
    environment: Literal["development", "production"] = Field(
        "development", description="production refuses the development secret_key."
    )

    # HTTP
    host: str = Field("127.0.0.1", description="Interface the API binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API binds.")
    dispatcher: Literal["embedded", "celery"] = Field(
        "embedded",
        description="embedded: serve starts its own workers; celery: workers join "
        "through the broker (openletz worker).",
    )
    broker_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672//", description="The Celery broker (RabbitMQ or Redis)."
    )
    queue_prefix: str = Field(
        "openletz", pattern=r"^[\w.-]+$", description="Prefix of the broker's queue names."
    )
    delivery_limit: int = Field(
        5, ge=1, description="Deliveries of one message before it is dead-lettered."
    )
    redis_url: str = Field(
        "",
        description="Redis for live progress and previews, shared by API servers; "
        "default: each API server's memory.",
    )
    public_base_url: str = Field(
        "", description="Base of absolute image URLs; default http://host:port."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies get 413.")
    secret_key: str = Field(_DEV_SECRET, description="Signs private image URLs.")
    signed_url_ttl_s: int = Field(
        3600, ge=10, le=604740, description="How long a private image URL works."
    )
    blob_store: Literal["local", "s3"] = Field(
        "local", description="Where images live: local (data_dir/images) or s3."
    )
    s3_bucket: str = Field("", description="The S3 bucket (required with blob_store=s3).")
    s3_endpoint_url: str = Field("", description="An S3-compatible endpoint; default: AWS.")
    s3_presign_endpoint_url: str = Field(
        "",
        description="The endpoint presigned image URLs name, one that clients reach; "
        "default: s3_endpoint_url.",
    )
    s3_region: str = Field("us-east-1", description="The S3 region.")
    s3_access_key: str = Field("", description="Default: boto3's credential chain.")
    s3_secret_key: str = Field("", description="Default: boto3's credential chain.")
    s3_prefix: str = Field("", description="Prefix of object keys, e.g. images/.")
    s3_public_base_url: str = Field(
        "",
        description="Public images' URLs start with this (a CDN or public bucket: "
        "it serves any object of the bucket to whoever knows its key); "
        "default: presigned URLs for all.",
    )
    s3_addressing_style: Literal["path", "virtual", "auto"] = Field(
        "path", description="S3 addressing style."
    )
    s3_create_bucket: bool = Field(False, description="Create the bucket when it is missing.")
    finished_cache_ttl_s: float = Field(
        1.0,
        ge=0,
        description="How long an API server reuses a finished image's row "
        "(another server's privacy change or deletion shows within this time).",
    )
    auth_cache_ttl_s: float = Field(
        5.0, ge=0, description="How long a key lookup is cached (a revocation takes this long)."
    )

    # Users
    default_system_version: Literal[2, 3] = Field(
        3, description="systemVersion of new users, when the request gives none."
    )

    # Workers and jobs
    workers: int = Field(1, ge=1, le=64, description="Worker processes that serve starts.")
    lease_s: float = Field(
        30.0, gt=0, description="A job whose worker stops renewing is retried after this."
    )
    heartbeat_s: float = Field(
        5.0, gt=0, description="How often a worker renews its lease and saves progress."
    )
    max_attempts: int = Field(
        3, ge=1, description="Attempts before a job whose worker keeps dying fails."
    )
    reconcile_interval_s: float = Field(
        2.0, gt=0, description="How often expired leases and stale jobs are looked for."
    )
    stale_new_s: float = Field(
        10.0,
        gt=0,
        description="A job that no worker took this long after it was sent is sent "
        "again; then after twice as long, and so on up to 16 times this.",
    )
    max_queue_wait_s: float = Field(
        600.0,
        gt=0,
        description="A job that waited this long fails with a reason when no worker "
        "consumes its queue (cluster with RabbitMQ).",
    )
    publish_timeout_s: float = Field(
        3.0,
        gt=0,
        description="How long POST /images waits for the broker; a job not sent by "
        "then is sent by the reconciler.",
    )
    job_timeout_s: float = Field(
        1800.0, gt=0, description="A generation running longer fails with a reason."
    )

    # Webhooks
    webhook_secret: str = Field(
        "",
        description="Signs each webhook (X-Openletz-Signature: HMAC-SHA256); none when empty.",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=300, description="How long a webhook's receiver has to answer."
    )
    webhook_interval_s: float = Field(
        0.5, gt=0, description="How often an API server looks for webhooks to send."
    )
    webhook_blocked_networks: list[str] = Field(
        list(DEFAULT_BLOCKED_NETWORKS),
        max_length=256,
        description="Networks (CIDR, a JSON list) that no webhook is sent to, checked "
        "on the address connected to; by default the link-local networks, where "
        "clouds serve instance metadata and credentials, and addresses of no single "
        'host. Add "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7" and '
        '"127.0.0.0/8", "::1/128" to keep users\' webhooks out of private networks; '
        "[] blocks nothing.",
    )
    webhook_retry_delays_s: list[float] = Field(
        [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0],
        max_length=20,
        description="Waits before each new try of a webhook not answered with 2xx "
        "(a JSON list); then it is given up.",
    )

    # Engine
    # "auto", "sandbox", "diffusers", or "package.module:factory" for an engine of
    # one's own (the factory takes the Settings and returns an Engine).
    engine: str = Field(
        "auto",
        pattern=r"^(auto|sandbox|diffusers|[\w.]+:\w+)$",
        description="auto, sandbox, diffusers, or package.module:factory.",
    )
    engine_process: bool = Field(
        True,
        description="Run the diffusers engine in a process of its own beside each worker, "
        "so that the worker's threads never hold up its Python; false runs it in the "
        "worker process.",
    )
    models_file: str = Field(
        "", description="The model registry (YAML); default: the one openletz ships."
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto, cpu, mps or cuda[:N]."
    )
    model_memory_gb: float | None = Field(
        None,
        gt=0,
        description="Memory for one worker's loaded models; default: 85 % of the GPU or "
        "half the RAM, shared among this machine's workers.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="Threads a worker's model uses on the CPU; default: the cores "
        "less one (for the API) shared among the workers.",
    )
    preload_models: str = Field(
        "", description="Comma-separated models each worker loads at start, before any job."
    )
    compile: bool = Field(False, description="torch.compile the denoiser on CUDA (slow first run).")
    batch_max: int = Field(
        4, ge=1, le=64, description="Most compatible jobs a worker runs as one pipeline call."
    )
    batch_window_s: float = Field(
        0.0,
        ge=0,
        le=5,
        description="How long a job may wait, from its creation, for a batch to fill. "
        "0: a batch takes the compatible jobs already waiting and waits for no more "
        "(under load the queue fills batches; a lone job starts at once). More trades "
        "each lone job's latency, and the engine's time, for fuller batches in bursts.",
    )
    delivery_backlog: int = Field(
        1,
        ge=0,
        le=8,
        description="Engine calls whose delivery (versions, storing, the end) may still "
        "run when a worker starts its next generation; 0 delivers each job first.",
    )
    render_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How much lower than the rest of the worker the threads that render "
        "deliveries (resize, versions, preview) run, in nice levels (Linux): where cores "
        "are short, the engine and the worker's event loop go first. 0: the same.",
    )
    read_ahead: int = Field(
        1,
        ge=0,
        le=4,
        description="Jobs sent to a busy embedded worker, when no worker is idle, to "
        "start as soon as its engine is free; 0 sends a worker nothing until it is.",
    )
    sandbox_duration_s: float = Field(
        4.0, ge=0, description="Sandbox time per image at quality 2 (scales with quality)."
    )
    sandbox_steps_per_quality: int = Field(6, ge=1, description="Sandbox steps per quality level.")

    # Imaging
    image_format: ImageFormat = Field("jpeg", description="jpeg, png or webp.")
    jpeg_quality: int = Field(92, ge=1, le=100, description="Encoder quality for jpeg and webp.")
    watermark_text: str = Field(
        "openletz", description="Text of the visible watermark (hasWatermark)."
    )
    preview_max_side: int = Field(
        256, ge=16, le=1024, description="Longest side of previewImage, in pixels."
    )
    preview_interval_s: float = Field(
        0.25, ge=0, description="At most one new preview per this many seconds."
    )

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

    @field_validator("webhook_blocked_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        parse_networks(networks)
        return networks

    @model_validator(mode="after")
    def _refuse_default_secret_in_production(self) -> Settings:
        if self.environment == "production" and self.secret_key == _DEV_SECRET:
            raise ValueError(
                "OPENLETZ_SECRET_KEY must be set in production; "
                f"for example: OPENLETZ_SECRET_KEY={secrets.token_urlsafe(32)}"
            )
        return self

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("blob_store=s3 needs OPENLETZ_S3_BUCKET")
        return self

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be at most half of lease_s "
                f"({self.lease_s}), or a busy worker would lose its jobs"
            )
        return self

    @classmethod
    def reference(cls) -> str:
        """The settings as a Markdown table (docs/configuration.md is this, checked by a test)."""
        rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
        for name, field in cls.model_fields.items():
            default = field.default
            if default == "":
                shown = "(empty)"
            elif isinstance(default, list):
                shown = json.dumps(default)  # as the variable takes it
            else:
                shown = str(default)
            if name == "secret_key":
                shown = "(a development value)"
            rows.append(f"| `OPENLETZ_{name.upper()}` | `{shown}` | {field.description} |")
        return "\n".join(rows) + "\n"

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
