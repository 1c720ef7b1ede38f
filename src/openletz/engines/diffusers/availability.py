"""Which registry models are on this machine, without importing torch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from openletz.engines.diffusers.registry import Registry, Resolved, SourceKind


def installed() -> str | None:
    """``None`` if the diffusers engine can run here, else what is missing."""
    missing = [
        m for m in ("torch", "diffusers", "transformers") if importlib.util.find_spec(m) is None
    ]
    if missing:
        return (
            f"{', '.join(missing)} not installed (pip install 'openletz[diffusers]', "
            "after installing the torch build for this machine)"
        )
    return None


def is_local(resolved: Resolved) -> bool:
    """Whether loading ``resolved`` needs no download."""
    source = resolved.source
    if source.kind is not SourceKind.HUB:
        return Path(source.location).exists()
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        source.location, "model_index.json", revision=resolved.spec.revision
    )
    return isinstance(found, str)


def local_models(registry: Registry) -> list[str]:
    return [name for name in registry.models if is_local(registry.get(name))]
