"""A loaded pipeline's device and dtype, looked up once (loading.pin_placement)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from openletz.engines.base import GenerationRequest
from openletz.engines.diffusers import tiny
from openletz.engines.diffusers.engine import DiffusersEngine
from openletz.engines.diffusers.families import FAMILIES as FAMILY_CLASSES
from openletz.engines.diffusers.families import Call
from openletz.engines.diffusers.loading import pin_placement
from openletz.engines.diffusers.registry import Registry
from tests.engines.diffusers.conftest import FAMILIES


def placement(pipe: Any) -> tuple[Any, ...]:
    """Every answer that pin_placement keeps: the pipeline's, then each model's."""
    models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return (
        pipe.device,
        pipe._execution_device,
        pipe.dtype,
        *((m.device, m.dtype) for m in models),
    )


def no_module_walks(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, walking a module's submodules fails the test."""

    def walk(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{type(self).__name__}'s submodules were walked")

    monkeypatch.setattr(torch.nn.Module, "modules", walk)
    monkeypatch.setattr(torch.nn.Module, "named_modules", walk)


def generate(pipe: Any, family: str, seed: int) -> np.ndarray:
    call = Call(
        prompts=["a lighthouse at dusk"],
        negative_prompt=None,
        steps=2,
        guidance=0.0 if family == "flux" else 3.0,
        width=64,
        height=64,
        generators=[torch.Generator("cpu").manual_seed(seed)],
    )
    with torch.inference_mode():
        out = pipe(**FAMILY_CLASSES[family].call_kwargs(call), output_type="np")
    return np.asarray(out.images[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_answers_are_diffusers_own_and_need_no_walk_of_the_modules(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = tiny.build_pipeline(family)
    expected = placement(pipe)
    pin_placement(pipe)
    no_module_walks(monkeypatch)
    assert placement(pipe) == expected
    # Still the family's classes, under their own names.
    assert type(pipe).__name__ == FAMILY_CLASSES[family].pipeline
    assert isinstance(pipe, type(pipe).__mro__[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pinned_pipeline_makes_the_same_images(family: str) -> None:
    plain, pinned = tiny.build_pipeline(family), tiny.build_pipeline(family)
    pin_placement(pinned)
    for seed in (1, 2):
        np.testing.assert_array_equal(generate(pinned, family, seed), generate(plain, family, seed))


def test_a_pinned_call_walks_no_module_for_its_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole call: diffusers asks for the device and dtype several times per call
    and per step; none of it walks the models once they are pinned."""
    pipe = tiny.build_pipeline("sd")
    expected = generate(pipe, "sd", 3)
    pin_placement(pipe)
    no_module_walks(monkeypatch)
    np.testing.assert_array_equal(generate(pipe, "sd", 3), expected)


def test_nothing_is_pinned_where_hooks_decide_the_placement() -> None:
    """Offloading and casting hooks move weights during a call: their answers depend
    on the moment, so they are left to diffusers."""
    pipe = tiny.build_pipeline("sd")
    classes = {name: type(c) for name, c in pipe.components.items()}
    next(iter(pipe.unet.children()))._diffusers_hook = object()  # as group offloading does
    pin_placement(pipe)
    assert {name: type(c) for name, c in pipe.components.items()} == classes


def test_a_pinned_pipeline_that_is_moved_answers_anew() -> None:
    plain, pinned = tiny.build_pipeline("sd"), tiny.build_pipeline("sd")
    pin_placement(pinned)
    plain.to(dtype=torch.float64)
    pinned.to(dtype=torch.float64)
    assert pinned.dtype == torch.float64
    assert placement(pinned) == placement(plain)
    pinned.vae.half()  # a model moved by itself
    assert pinned.vae.dtype == torch.float16


def test_pinning_twice_changes_nothing() -> None:
    pipe = tiny.build_pipeline("sd")
    pin_placement(pipe)
    classes = (type(pipe), type(pipe.unet), type(pipe.vae))
    pin_placement(pipe)
    assert (type(pipe), type(pipe.unet), type(pipe.vae)) == classes
    assert type(pipe).__mro__[1].__name__ == "StableDiffusionPipeline"


def test_the_engine_pins_what_it_loads_and_its_refiner(tmp_path: Path) -> None:
    folder = tiny.save_pipeline(tiny.build_pipeline("sd"), tmp_path / "sd")
    registry = tmp_path / "models.yaml"
    registry.write_text(
        "models:\n"
        "  sd:\n"
        "    family: sd\n"
        f"    source: {folder}\n"
        "    resolution: 64\n"
        "    steps: [2, 2, 2, 2, 2]\n"
        "    guidance: [0, 0, 0, 0, 0]\n"
        "    refine: {from_quality: 4, strength: 0.5}\n"
        "slots:\n"
        "  3: {default: sd, sigma: sd, turbo: sd}\n"
        "  2: {default: sd, sigma: sd, turbo: sd}\n"
    )
    engine = DiffusersEngine(Registry.load(registry), device="cpu")
    request = GenerationRequest(
        prompt="a lighthouse at dusk",
        width=96,
        height=64,
        quality=5,
        creativity=2,
        system_version=3,
        mode="default",
        seed=7,
    )
    engine.generate(request, lambda update: None)
    loaded = engine._models["sd"]
    for obj in (loaded.pipe, loaded.pipe.unet, loaded.pipe.vae, loaded.img2img):
        assert getattr(type(obj), "_openletz_pinned", False), type(obj)
