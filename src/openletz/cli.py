"""The ``openletz`` command line.

Failures a user can cause end in one clear line and a non-zero exit, never a
traceback. Server-side commands import the server's modules lazily, so the
SDK's install (without the server's dependencies) still runs the CLI.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from openletz import cli_client

T = TypeVar("T")


def _settings(**overrides: Any) -> Any:
    try:
        from openletz.settings import Settings
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise click.ClickException(
            f"this command needs the server's dependencies: pip install 'openletz[server]' ({exc})"
        ) from exc
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            (f"OPENLETZ_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise click.ClickException(f"invalid settings: {problems}") from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from None


def _with_accounts(settings: Any, fn: Callable[[Any], Awaitable[T]]) -> T:
    from openletz.auth import Accounts, UserError
    from openletz.db import create_engine, migrate

    async def go() -> T:
        engine = create_engine(settings.resolved_database_url)
        try:
            await migrate(engine)
            accounts = Accounts(
                engine, cache_ttl_s=0, default_system_version=settings.default_system_version
            )
            return await fn(accounts)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="openletz")
def main() -> None:
    """openletz: a self-hostable server for the LetzAI image API."""


@main.command()
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
@click.option("--data-dir", default=None, help="Where SQLite and images live (default ./data).")
@click.option(
    "--engine",
    type=click.Choice(["auto", "sandbox", "diffusers"]),
    default=None,
    help="Image engine (default auto).",
)
@click.option("--log-level", default="info", show_default=True)
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    data_dir: str | None,
    engine: str | None,
    log_level: str,
) -> None:
    """Start the API server and its worker processes."""
    import logging
    import os

    import uvicorn

    from openletz.api.app import create_app

    settings = _settings(host=host, port=port, workers=workers, data_dir=data_dir, engine=engine)
    # Worker processes read their settings from the environment: pass the overrides on.
    for name, value in (
        ("OPENLETZ_HOST", host),
        ("OPENLETZ_PORT", port),
        ("OPENLETZ_WORKERS", workers),
        ("OPENLETZ_DATA_DIR", data_dir),
        ("OPENLETZ_ENGINE", engine),
    ):
        if value is not None:
            os.environ[name] = str(value)
    os.environ.setdefault("OPENLETZ_LOG_LEVEL", log_level.upper())
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s [api %(process)d] %(name)s: %(message)s",
    )
    first_key = _with_accounts(settings, _first_key)
    base = settings.resolved_public_base_url
    click.echo(f"openletz {_version()} on {base} (API docs at {base}/doc)")
    if first_key is not None:
        click.echo(
            "No API key existed, so one was made for user 'admin' (shown only now):\n"
            f"  {first_key}\n"
            f"Try: curl -H 'Authorization: Bearer {first_key}' -H 'Content-Type: application/json' "
            f"""-d '{{"prompt": "a lighthouse at dusk"}}' {base}/images"""
        )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        proxy_headers=True,
        server_header=False,
    )


async def _first_key(accounts: Any) -> str | None:
    if await accounts.list_keys():
        return None
    key: str
    key, _ = await accounts.create_key("admin", key_name="created at first start")
    return key


def _version() -> str:
    from openletz import __version__

    return __version__


@main.command()
@click.option(
    "--queues",
    default="default",
    show_default=True,
    help="The model families this worker serves, comma-separated: default (the sandbox "
    "or a custom engine), sd, sdxl, pixart_sigma, flux.",
)
@click.option("--name", default=None, help="The worker's name in the broker (default: host).")
@click.option("--log-level", default="info", show_default=True)
def worker(queues: str, name: str | None, log_level: str) -> None:
    """Join a cluster: take jobs from the broker (OPENLETZ_BROKER_URL) and run them."""
    import logging

    settings = _settings()
    families = [q.strip() for q in queues.split(",") if q.strip()]
    if not families:
        raise click.ClickException("--queues names no model family")
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s",
    )
    from openletz.worker.celery_worker import run

    run(settings, families, name=name)


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--user", "user_name", required=True, help="The key's user (created if new).")
@click.option("--name", "key_name", default=None, help="A label for the key.")
@click.option(
    "--system-version",
    type=click.Choice(["2", "3"]),
    default=None,
    help="Set the user's default systemVersion.",
)
def keys_create(user_name: str, key_name: str | None, system_version: str | None) -> None:
    """Make a key and print it (it is shown only this once)."""
    settings = _settings()

    async def go(accounts: Any) -> str:
        key: str
        key, _ = await accounts.create_key(user_name, key_name=key_name)
        if system_version is not None:
            await accounts.set_default_system_version(user_name, int(system_version))
        return key

    key = _with_accounts(settings, go)
    click.echo(key)
    click.echo(
        f"# API key for user {user_name!r}; it is not stored and cannot be shown again.",
        err=True,
    )


@keys.command("list")
@click.option("--user", "user_name", default=None, help="Only this user's keys.")
def keys_list(user_name: str | None) -> None:
    """List keys (their prefixes; the keys themselves are not stored)."""
    rows = _with_accounts(_settings(), lambda a: a.list_keys(user_name))
    if not rows:
        click.echo("no keys", err=True)
        return
    click.echo(f"{'ID':>4}  {'PREFIX':<12} {'USER':<20} {'CREATED':<20} STATUS")
    for k in rows:
        status = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        click.echo(
            f"{k.id:>4}  {k.prefix:<12} {k.user:<20} {k.created_at:%Y-%m-%d %H:%M:%S}  {status}"
        )


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke a key by its ID or prefix (as `keys list` shows)."""
    count = _with_accounts(_settings(), lambda a: a.revoke_key(key))
    if count == 0:
        raise click.ClickException(f"no active key matches {key!r}")
    click.echo(f"revoked {count} key(s)")


@main.group()
def users() -> None:
    """Account settings."""


@users.command("set")
@click.argument("name")
@click.option("--system-version", type=click.Choice(["2", "3"]), required=True)
def users_set(name: str, system_version: str) -> None:
    """Set a user's default systemVersion."""
    user = _with_accounts(
        _settings(), lambda a: a.set_default_system_version(name, int(system_version))
    )
    click.echo(f"{user.name}: default systemVersion {user.default_system_version}")


@main.group()
def models() -> None:
    """The model registry of the diffusers engine: list, check and pull models."""


def _registry() -> Any:
    from openletz.engines.diffusers.registry import Registry, RegistryError

    try:
        return Registry.load(_settings().models_file or None)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None


def _pick(registry: Any, names: tuple[str, ...]) -> list[str]:
    unknown = [n for n in names if n not in registry.models]
    if unknown:
        raise click.ClickException(
            f"no model named {', '.join(unknown)}; known: {', '.join(sorted(registry.models))}"
        )
    return list(names) or list(registry.models)


@models.command("list")
@click.option(
    "--server",
    "server",
    default=None,
    metavar="URL",
    help="A running openletz server (its base URL): its /health adds the state of each "
    "model in its workers (loading, ready, broken).",
)
def models_list(server: str | None) -> None:
    """Each model: family, state, the slots it fills, and its source.

    STATE is missing (not on this machine) or local (on disk) as this machine
    sees it; with --server, it is the state in the server's workers: ready when
    one has it loaded, else loading, else broken (with the reason) when one could
    not load it, else local or missing on their machines. Each worker's own state
    follows the table.
    """
    from openletz.engines.diffusers.availability import MODEL_STATES, disk_state, installed

    registry = _registry()
    remote, notes = _server_model_states(server) if server else ({}, [])
    slots: dict[str, list[str]] = {}
    for version, modes in registry.slots.items():
        for mode, name in modes.items():
            slots.setdefault(name, []).append(f"{version}/{mode}")
    click.echo(f"registry: {registry.path}")
    missing = installed()
    if missing:
        click.echo(f"note: the diffusers engine cannot run here: {missing}")
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(f"{'MODEL':<18} {'FAMILY':<13} {'STATE':<8} {'SLOTS':<22} SOURCE")
    reasons: list[str] = []
    per_worker: list[str] = []
    for name in registry.models:
        resolved = registry.get(name)
        state: str = disk_state(resolved)
        seen = remote.get(name) or {}
        if seen.get("state") in MODEL_STATES:
            state = str(seen["state"])
            if state == "broken":
                reasons.append(f"{name}: {seen.get('detail') or 'no reason given'}")
        by_worker = seen.get("workers")
        if isinstance(by_worker, dict) and by_worker:
            per_worker.append(
                f"{name}: "
                + ", ".join(
                    f"{worker} {s.get('state') if isinstance(s, dict) else s}"
                    for worker, s in by_worker.items()
                )
            )
        used = ",".join(slots.get(name, [])) or "-"
        family = resolved.spec.family
        source = resolved.source.location + "".join(
            f" + {c.name} from {c.label}" for c in resolved.components
        )
        click.echo(f"{name:<18} {family:<13} {state:<8} {used:<22} {source}")
    if reasons:
        click.echo("broken:")
        for line in reasons:
            click.echo(f"  {line}")
    if per_worker:
        click.echo("in each worker:")
        for line in per_worker:
            click.echo(f"  {line}")


def _server_model_states(url: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The model states a running server's /health reports, and notes on what it
    cannot say."""
    import httpx

    health_url = url.rstrip("/") + "/health"
    try:
        response = httpx.get(health_url, timeout=10)
        response.raise_for_status()
        health = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise click.ClickException(f"cannot read {health_url}: {exc}") from None
    engine = health.get("engine") or {}
    dispatcher = health.get("dispatcher") or {}
    if engine.get("name") != "diffusers":
        reason = f" ({engine['reason']})" if engine.get("reason") else ""
        note = f"the server at {url} runs the {engine.get('name')} engine{reason}"
        return {}, [note + "; it loads none of these models"]
    states = dispatcher.get("models")
    if not isinstance(states, dict):
        hint = (
            " (its workers publish them through Redis: set OPENLETZ_REDIS_URL)"
            if dispatcher.get("name") == "celery"
            else ""
        )
        return {}, [
            f"the server at {url} does not report its workers' models (dispatcher "
            f"{dispatcher.get('name')}){hint}; states are this machine's only"
        ]
    notes = []
    workers = dispatcher.get("workers")
    if isinstance(workers, list):
        shown = [
            f"{w.get('name')} ({', '.join(w.get('queues') or [])})"
            for w in workers
            if isinstance(w, dict)
        ]
        notes.append(f"the server's workers: {', '.join(shown) or 'none'}")
    return states, notes


@models.command("check")
@click.argument("names", nargs=-1)
def models_check(names: tuple[str, ...]) -> None:
    """Load each model (all by default) and make one small image with it."""
    from openletz.engines.base import EngineError, GenerationRequest
    from openletz.engines.diffusers.availability import installed

    missing = installed()
    if missing:
        raise click.ClickException(f"the diffusers engine cannot run here: {missing}")
    from openletz.engines.diffusers.engine import DiffusersEngine

    registry = _registry()
    settings = _settings()
    engine = DiffusersEngine(
        registry, device=settings.device, memory_budget_gb=settings.model_memory_gb
    )
    broken = 0
    for name in _pick(registry, names):
        request = GenerationRequest("a lighthouse at dusk", 520, 520, 1, 3, 3, "default", 0, name)
        try:
            image = engine.generate(request, lambda update: None)
        except EngineError as exc:
            broken += 1
            click.echo(f"{name}: broken: {exc}")
            continue
        click.echo(f"{name}: ok ({image.width}x{image.height} on {engine.device})")
        engine.close()
    if broken:
        raise click.ClickException(f"{broken} model(s) could not be used")


@models.command("pull")
@click.argument("names", nargs=-1)
def models_pull(names: tuple[str, ...]) -> None:
    """Download the hub models (all by default) into the local cache, with the
    components they take from other repositories."""
    from openletz.engines.diffusers.availability import installed
    from openletz.engines.diffusers.registry import SourceKind

    missing = installed()
    if missing:
        raise click.ClickException(f"the diffusers engine cannot run here: {missing}")
    from diffusers import DiffusionPipeline
    from huggingface_hub import snapshot_download

    registry = _registry()
    failed = 0
    for name in _pick(registry, names):
        resolved = registry.get(name)
        repo = resolved.source.location if resolved.source.kind is SourceKind.HUB else None
        if repo is None and resolved.source.config and not resolved.source.config.startswith("/"):
            repo = resolved.source.config  # a single file's layout, from the hub
        parts = [c for c in resolved.components if c.kind is SourceKind.HUB]
        if repo is None and not parts:
            click.echo(f"{name}: local ({resolved.source.location}), nothing to pull")
            continue
        try:
            if repo is not None:
                click.echo(f"{name}: pulling {repo} ...")
                kwargs: dict[str, Any] = {"revision": resolved.spec.revision}
                if resolved.spec.variant:
                    kwargs["variant"] = resolved.spec.variant
                # Components that come from elsewhere are not fetched from the base
                # (diffusers skips the folders of components passed to it).
                kwargs.update(dict.fromkeys((c.name for c in resolved.components), None))
                DiffusionPipeline.download(repo, **kwargs)
            for part in parts:
                click.echo(f"{name}: pulling its {part.name} from {part.label} ...")
                allow, ignore = part.download_patterns()
                snapshot_download(
                    part.location,
                    revision=part.revision,
                    allow_patterns=allow,
                    ignore_patterns=ignore,
                )
        except Exception as exc:
            failed += 1
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            click.echo(f"{name}: failed: {reason}")
            continue
        click.echo(f"{name}: ready")
    if failed:
        raise click.ClickException(f"{failed} model(s) could not be pulled")


@main.command()
def migrate() -> None:
    """Bring the database schema up to date (serve does this too)."""
    from openletz.db import create_engine, current_revision
    from openletz.db import migrate as run

    settings = _settings()

    async def go() -> str | None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await run(engine)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    click.echo(f"database at revision {asyncio.run(go())}")


# generate and images: the SDK's commands, which need no server.
cli_client.register(main)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
