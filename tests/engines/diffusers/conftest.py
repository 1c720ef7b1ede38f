from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from openletz.engines.diffusers import tiny

FAMILIES = tiny.FAMILIES

#: a registry entry whose model is on no machine (a hub id nobody has)
MISSING_MODEL = {
    "family": "sd",
    "source": "nobody/no-such-model",
    "resolution": 64,
    "steps": [1] * 5,
    "guidance": [0.0] * 5,
}


def write_registry(
    path: Path, folders: dict[str, Path], *, refine: bool = False, extra: dict | None = None
) -> Path:
    """A registry with one tiny model per family, each named after its family."""
    models: dict[str, dict] = {}
    for family, folder in folders.items():
        models[family] = {
            "family": family,
            "source": str(folder),
            "resolution": 64,
            "steps": [1, 2, 3, 4, 5],
            "guidance": [0.0, 1.5, 3.0, 3.0, 3.0] if family != "flux" else [0.0] * 5,
        }
        if refine and family in ("sd", "sdxl"):
            models[family]["refine"] = {"from_quality": 4, "strength": 0.5}
    models.update(extra or {})
    registry = {
        "models": models,
        "slots": {
            3: {"default": "sdxl", "sigma": "pixart_sigma", "turbo": "flux"},
            2: {"default": "sd", "sigma": "pixart_sigma", "turbo": "sd"},
        },
    }
    path.write_text(yaml.safe_dump(registry))
    return path


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny pipeline, saved as a diffusers folder (as real models are)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {f: tiny.save_pipeline(tiny.build_pipeline(f), root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_registry(tiny_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(tmp_path_factory.mktemp("registry") / "models.yaml", tiny_folders)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache of the test's own, offline: as a machine that cannot
    reach the hub sees it. huggingface_hub reads its settings at import, so the
    environment alone is too late here; a worker process reads it at start."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache
