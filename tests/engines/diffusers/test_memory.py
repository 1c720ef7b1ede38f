"""Models under a memory budget: sizes estimated from the files before loading,
room made first (least recently used out), the measured size kept, the
default budget shared among workers, and out of memory reported as such."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from openletz.engines.base import EngineError
from openletz.engines.diffusers import engine as engine_module
from openletz.engines.diffusers.engine import DiffusersEngine
from openletz.engines.diffusers.footprint import estimate_bytes
from openletz.engines.diffusers.loading import model_bytes
from openletz.engines.diffusers.registry import Registry
from tests.engines.diffusers.conftest import FAMILIES, write_registry

MB = 10**6


def budget_gb(nbytes: float) -> float:
    return nbytes / 2**30


@pytest.mark.parametrize("family", FAMILIES)
def test_the_estimate_from_the_files_matches_the_loaded_size(
    tiny_registry: Path, family: str
) -> None:
    registry = Registry.load(tiny_registry)
    estimate = estimate_bytes(registry.get(family), 4)
    half = estimate_bytes(registry.get(family), 2)
    measured = model_bytes(DiffusersEngine(registry, device="cpu").model(family).pipe)
    assert estimate is not None
    assert half is not None
    # non-persistent buffers (position ids) are in memory but not in the files
    assert 0.97 < measured / estimate < 1.03
    assert abs(half * 2 - estimate) < 0.01 * estimate  # float32 files, float16 memory


def test_an_unknown_size_is_none(tmp_path: Path, tiny_folders: dict[str, Path]) -> None:
    extra = {
        "far": {
            "family": "sd",
            "source": str(tmp_path / "absent"),
            "resolution": 64,
            "steps": [1] * 5,
            "guidance": [0.0] * 5,
        }
    }
    registry = Registry.load(write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra))
    assert estimate_bytes(registry.get("far"), 4) is None


class Recorder:
    """Wraps load_pipeline: what was loaded (and its size) when each load began."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine: DiffusersEngine | None = None
        self.at_load: list[tuple[str, list[str], int]] = []
        real = engine_module.load_pipeline

        def load(resolved: Any, *args: Any, **kwargs: Any) -> Any:
            assert self.engine is not None
            loaded = self.engine.loaded_models()
            used = sum(self.engine.loaded_bytes().values())
            self.at_load.append((resolved.name, loaded, used))
            return real(resolved, *args, **kwargs)

        monkeypatch.setattr(engine_module, "load_pipeline", load)


def test_room_is_made_before_loading_least_recently_used_first(
    tiny_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sd ~4.3 MB, pixart_sigma ~1.1 MB, sdxl ~7.3 MB: all three need ~12.8 MB
    registry = Registry.load(tiny_registry)
    sizes = {f: estimate_bytes(registry.get(f), 4) or 0 for f in ("sd", "pixart_sigma", "sdxl")}
    budget = 12 * MB
    assert sizes["sd"] + sizes["sdxl"] < budget < sum(sizes.values())
    states: list[tuple[str, str, str | None]] = []
    recorder = Recorder(monkeypatch)
    engine = DiffusersEngine(
        registry,
        device="cpu",
        memory_budget_gb=budget_gb(budget),
        on_model_state=lambda *s: states.append(s),
    )
    recorder.engine = engine
    engine.model("sd")
    engine.model("pixart_sigma")
    engine.model("sd")  # now pixart_sigma is the least recently used
    engine.model("sdxl")
    assert engine.loaded_models() == ["sd", "sdxl"]
    # sdxl's load began with pixart_sigma already gone: never more than the budget
    name, loaded_then, used_then = recorder.at_load[-1]
    assert (name, loaded_then) == ("sdxl", ["sd"])
    assert used_then + sizes["sdxl"] <= budget
    assert states.index(("pixart_sigma", "unloaded", None)) < states.index(
        ("sdxl", "loading", None)
    )
    # what is kept is the measured size, not the estimate
    for name, nbytes in engine.loaded_bytes().items():
        assert nbytes == model_bytes(engine.model(name).pipe)


def test_a_model_larger_than_the_budget_unloads_everything_and_still_loads(
    tiny_registry: Path,
) -> None:
    engine = DiffusersEngine(
        Registry.load(tiny_registry), device="cpu", memory_budget_gb=budget_gb(5 * MB)
    )
    engine.model("sd")
    engine.model("sdxl")  # ~7.3 MB alone
    assert engine.loaded_models() == ["sdxl"]


def test_the_default_budget_is_shared_among_the_workers(tiny_registry: Path) -> None:
    registry = Registry.load(tiny_registry)
    one = DiffusersEngine(registry, device="cpu").memory_budget
    four = DiffusersEngine(registry, device="cpu", workers=4).memory_budget
    assert four == one // 4
    assert DiffusersEngine(registry, device="cpu", workers=4, memory_budget_gb=2).memory_budget == (
        2 * 2**30
    )


def test_serve_gives_each_engine_its_share(
    tiny_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openletz.engines.factory import make_engine
    from openletz.settings import Settings

    monkeypatch.delenv("OPENLETZ_MODEL_MEMORY_GB", raising=False)

    def budget(**settings: Any) -> int:
        made = make_engine(
            Settings(
                engine="diffusers",
                engine_process=False,
                models_file=str(tiny_registry),
                device="cpu",
                **settings,
            )
        )
        assert isinstance(made, DiffusersEngine)
        return made.memory_budget

    alone = budget(workers=1)
    assert budget(workers=3) == alone // 3
    # a cluster worker is one process on its machine, whatever `workers` says
    assert budget(workers=3, dispatcher="celery") == alone


OOM_CUDA = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
OOM_CPU = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory")


@pytest.mark.parametrize("error", [OOM_CUDA, OOM_CPU], ids=["cuda", "cpu"])
def test_out_of_memory_while_loading_says_what_to_do(
    tiny_registry: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    states: list[tuple[str, str, str | None]] = []
    engine = DiffusersEngine(
        Registry.load(tiny_registry),
        device="cpu",
        memory_budget_gb=budget_gb(50 * MB),
        on_model_state=lambda *s: states.append(s),
    )
    engine.model("sd")
    attempts: list[list[str]] = []

    def fail(*args: Any, **kwargs: Any) -> Any:
        attempts.append(engine.loaded_models())
        raise error

    monkeypatch.setattr(engine_module, "load_pipeline", fail)
    with pytest.raises(EngineError) as info:
        engine.model("sdxl")
    message = str(info.value)
    # one more try after unloading the others, then the reason and the remedies
    assert attempts == [["sd"], []]
    assert "'sdxl'" in message
    assert "ran out of memory" in message
    assert "about 0.0 GB in float32" in message  # its size (a tiny model)
    assert "budget is 0.0 GB" in message
    assert "OPENLETZ_MODEL_MEMORY_GB" in message
    assert "fewer models" in message
    assert "smaller variant" in message
    assert "models pull" not in message
    assert ("sd", "unloaded", None) in states
    assert states[-1] == ("sdxl", "broken", message)


def test_out_of_memory_with_others_loaded_unloads_them_and_retries(
    tiny_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = DiffusersEngine(Registry.load(tiny_registry), device="cpu")
    engine.model("sd")
    real = engine_module.load_pipeline
    calls = []

    def once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OOM_CUDA
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "load_pipeline", once)
    engine.model("sdxl")
    assert engine.loaded_models() == ["sdxl"]
    assert len(calls) == 2
