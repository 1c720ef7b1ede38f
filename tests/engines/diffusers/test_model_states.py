"""Each registry model's state in a worker (missing, local, loading, ready,
broken), and a broken model failing later jobs fast until it is retried."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from openletz.engines.base import EngineError
from openletz.engines.diffusers import engine as engine_module
from openletz.engines.diffusers.engine import BROKEN_RETRY_S, DiffusersEngine
from openletz.engines.diffusers.registry import Registry
from tests.engines.diffusers.conftest import MISSING_MODEL, write_registry
from tests.engines.diffusers.test_engine import request


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def later_model(tiny_folders: dict[str, Path], tmp_path: Path) -> tuple[Registry, Path]:
    """A registry whose model `later` is a local folder that does not exist yet."""
    folder = tmp_path / "later"
    extra = {
        "later": {
            "family": "sd",
            "source": str(folder),
            "resolution": 64,
            "steps": [1] * 5,
            "guidance": [0.0] * 5,
        },
        "gone": MISSING_MODEL,
    }
    return Registry.load(write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra)), folder


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loads: list[str] = []
    real = engine_module.load_pipeline

    def load(resolved: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(resolved.name)
        return real(resolved, *args, **kwargs)

    monkeypatch.setattr(engine_module, "load_pipeline", load)
    return loads


def test_a_broken_model_fails_fast_then_is_retried(
    later_model: tuple[Registry, Path],
    tiny_folders: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, folder = later_model
    clock = Clock()
    states: list[tuple[str, str, str | None]] = []
    engine = DiffusersEngine(
        registry, device="cpu", clock=clock, on_model_state=lambda *s: states.append(s)
    )
    loads = count_loads(monkeypatch)
    job = request("sd", base_model="later")
    with pytest.raises(EngineError) as first:
        engine.generate(job, lambda u: None)
    assert "'later'" in str(first.value)
    assert loads == ["later"]
    # Within the backoff: the same message, and no second attempt at loading.
    clock.now += BROKEN_RETRY_S - 1
    with pytest.raises(EngineError) as second:
        engine.generate(job, lambda u: None)
    assert str(second.value) == str(first.value)
    assert loads == ["later"]
    assert [s[1] for s in states] == ["loading", "broken"]
    # The operator fixes it; after the backoff the next job loads it.
    shutil.copytree(tiny_folders["sd"], folder)
    clock.now += 2
    assert engine.generate(job, lambda u: None).size == (96, 64)
    assert loads == ["later", "later"]
    assert engine.model_states()["later"] == ("ready", None)


def test_the_backoff_is_configurable(
    later_model: tuple[Registry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = later_model
    clock = Clock()
    engine = DiffusersEngine(registry, device="cpu", clock=clock, broken_retry_s=0)
    loads = count_loads(monkeypatch)
    for _ in range(2):
        with pytest.raises(EngineError):
            engine.model("later")
    assert loads == ["later", "later"]


def test_every_registry_model_has_a_state(
    later_model: tuple[Registry, Path], monkeypatch: pytest.MonkeyPatch, offline_hub: Path
) -> None:
    registry, _ = later_model
    engine = DiffusersEngine(registry, device="cpu")
    states = engine.model_states()
    assert set(states) == set(registry.models)
    assert states["sd"] == ("local", None)
    assert states["later"] == ("missing", None)
    assert states["gone"] == ("missing", None)

    seen_while_loading: list[tuple[str, str | None]] = []
    real = engine_module.load_pipeline

    def load(resolved: Any, *args: Any, **kwargs: Any) -> Any:
        seen_while_loading.append(engine.model_states()[resolved.name])
        return real(resolved, *args, **kwargs)

    monkeypatch.setattr(engine_module, "load_pipeline", load)
    engine.model("sd")
    assert seen_while_loading == [("loading", None)]
    with pytest.raises(EngineError) as info:
        engine.model("gone")
    states = engine.model_states()
    assert states["sd"] == ("ready", None)
    assert states["gone"] == ("broken", str(info.value))
    assert states["sdxl"] == ("local", None)
