"""Which registry models are on this machine, without importing torch."""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata
from pathlib import Path
from typing import Literal

from openletz.engines.diffusers.footprint import component_folder, pipeline_folder
from openletz.engines.diffusers.registry import Registry, Resolved, SourceKind

#: A model's state, as ``openletz models list`` and the engine report it:
#: not on this machine; on disk and not loaded; loading; loaded in a worker;
#: failed to load (with the reason).
ModelState = Literal["missing", "local", "loading", "ready", "broken"]
MODEL_STATES: tuple[ModelState, ...] = ("missing", "local", "loading", "ready", "broken")

#: The first versions whose ``from_pretrained`` and ``from_single_file`` take
#: ``dtype=`` (older diffusers ignore it and load float32; older transformers
#: want ``torch_dtype``); pyproject.toml requires the same.
MINIMUM_VERSIONS = {"diffusers": (0, 40), "transformers": (4, 56)}


def _version_tuple(text: str) -> tuple[int, ...]:
    """``(0, 42)`` of ``"0.42.1"`` or ``"0.42.0.dev0"``: major and minor."""
    found = re.match(r"(\d+)\.(\d+)", text)
    return (int(found[1]), int(found[2])) if found else (0,)


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
    old = []
    for package, minimum in MINIMUM_VERSIONS.items():
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
        if _version_tuple(version) < minimum:
            old.append(f"{package} {version} (needs >= {'.'.join(map(str, minimum))})")
    if old:
        return f"too old: {', '.join(old)}; pip install -U 'openletz[diffusers]'"
    return None


def is_local(resolved: Resolved) -> bool:
    """Whether loading ``resolved`` needs no download: its pipeline and every
    component its registry entry takes from elsewhere."""
    source = resolved.source
    if source.kind is SourceKind.SINGLE_FILE:
        here = Path(source.location).is_file()
    else:
        here = pipeline_folder(resolved) is not None
    return here and all(component_folder(c) is not None for c in resolved.components)


def disk_state(resolved: Resolved) -> ModelState:
    """``local`` or ``missing``: what this machine alone can tell of a model."""
    return "local" if is_local(resolved) else "missing"


def local_models(registry: Registry) -> list[str]:
    return [name for name in registry.models if is_local(registry.get(name))]
