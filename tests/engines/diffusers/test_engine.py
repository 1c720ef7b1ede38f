"""The diffusers engine on tiny random pipelines, loaded through the registry as
real models are: local folders, hub ids from the cache, single-file checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from openletz import imaging
from openletz.engines.base import EngineError, GenerationRequest, Interrupted, StepUpdate
from openletz.engines.diffusers import tiny
from openletz.engines.diffusers.engine import DiffusersEngine, plan_size
from openletz.engines.diffusers.registry import Registry, RegistryError
from tests.engines.diffusers.conftest import FAMILIES, MISSING_MODEL, write_registry

# systemVersion/mode of each family's slot in the test registry
SLOT = {
    "sd": (2, "default"),
    "sdxl": (3, "default"),
    "pixart_sigma": (3, "sigma"),
    "flux": (3, "turbo"),
}


def request(family: str = "sd", **overrides: object) -> GenerationRequest:
    version, mode = SLOT[family]
    values: dict = {
        "prompt": "a lighthouse at dusk",
        "width": 96,
        "height": 64,
        "quality": 2,
        "creativity": 2,
        "system_version": version,
        "mode": mode,
        "seed": 7,
    }
    values.update(overrides)
    return GenerationRequest(**values)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def engine(tiny_registry: Path) -> DiffusersEngine:
    return DiffusersEngine(Registry.load(tiny_registry), device="cpu")


@pytest.mark.parametrize(
    ("size", "native", "multiple", "expected"),
    [
        ((1600, 1600), 1024, 8, (1024, 1024)),
        ((1600, 900), 1024, 8, (1368, 768)),
        ((520, 2160), 512, 16, (256, 1040)),
        ((2160, 520), 1024, 16, (2080, 496)),
    ],
)
def test_plan_size_keeps_area_and_aspect(
    size: tuple[int, int], native: int, multiple: int, expected: tuple[int, int]
) -> None:
    w, h = plan_size(*size, native, multiple)
    assert (w, h) == expected
    assert w % multiple == 0
    assert h % multiple == 0
    assert abs(w * h / native**2 - 1) < 0.1
    assert abs((w / h) / (size[0] / size[1]) - 1) < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_makes_the_exact_size_with_progress_and_previews(
    engine: DiffusersEngine, family: str
) -> None:
    updates: list[StepUpdate] = []
    previews: list[Image.Image] = []

    def on_step(update: StepUpdate) -> None:
        updates.append(update)
        assert update.preview is not None
        previews.append(update.preview())

    image = engine.generate(request(family, quality=3, width=100, height=60), on_step)
    assert image.size == (100, 60)
    assert image.mode == "RGB"
    assert [u.step for u in updates] == [1, 2, 3]  # quality 3 -> 3 steps in the test registry
    assert {u.total for u in updates} == {3}
    assert all(p.mode == "RGB" and p.width > p.height for p in previews)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_image_other_seed_other_image(engine: DiffusersEngine, family: str) -> None:
    a = engine.generate(request(family), lambda u: None)
    b = engine.generate(request(family), lambda u: None)
    c = engine.generate(request(family, seed=8), lambda u: None)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_quality_sets_steps_and_creativity_sets_guidance(engine: DiffusersEngine) -> None:
    plans = [engine.plan(request("sd", quality=q, creativity=5 - q + 1)) for q in range(1, 6)]
    assert [p.steps for p in plans] == [1, 2, 3, 4, 5]
    assert [p.guidance for p in plans] == [3.0, 3.0, 3.0, 1.5, 0.0]


@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart_sigma"])
def test_batch_equals_each_alone(engine: DiffusersEngine, family: str) -> None:
    requests = [request(family, seed=s) for s in (1, 2, 3)]
    assert len({engine.batch_key(r) for r in requests}) == 1
    alone = [engine.generate(r, lambda u: None) for r in requests]
    together = engine.generate_batch(requests, [lambda u: None] * 3)
    for a, b in zip(alone, together, strict=True):
        assert isinstance(b, Image.Image)
        # Batched convolutions add in another order: equal up to rounding.
        assert np.abs(pixels(a) - pixels(b)).max() <= 2


def test_interrupting_one_job_of_a_batch_drops_only_its_image(engine: DiffusersEngine) -> None:
    requests = [request("sd", seed=s, quality=3) for s in (1, 2, 3)]

    def stop_at_2(update: StepUpdate) -> None:
        if update.step == 2:
            raise Interrupted

    results = engine.generate_batch(requests, [lambda u: None, stop_at_2, lambda u: None])
    assert isinstance(results[0], Image.Image)
    assert isinstance(results[1], Interrupted)
    assert isinstance(results[2], Image.Image)
    alone = engine.generate(requests[2], lambda u: None)
    assert np.abs(pixels(alone) - pixels(results[2])).max() <= 2


def test_interruption_stops_within_one_step(engine: DiffusersEngine) -> None:
    seen: list[int] = []

    def on_step(update: StepUpdate) -> None:
        seen.append(update.step)
        if update.step == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        engine.generate(request("sdxl", quality=5), on_step)
    assert seen == [1, 2]


def test_requests_of_other_sizes_are_not_batched(engine: DiffusersEngine) -> None:
    assert engine.batch_key(request("sd")) != engine.batch_key(request("sd", width=200))
    assert engine.batch_key(request("sd")) != engine.batch_key(request("sdxl"))
    with pytest.raises(ValueError, match="one batch key"):
        engine.generate_batch([request("sd"), request("sdxl")], [lambda u: None] * 2)


def test_refinement_adds_steps_at_high_quality(
    tiny_folders: dict[str, Path], tmp_path: Path
) -> None:
    registry = write_registry(tmp_path / "m.yaml", tiny_folders, refine=True)
    engine = DiffusersEngine(Registry.load(registry), device="cpu")
    steps: list[tuple[int, int]] = []
    image = engine.generate(
        request("sd", quality=4, width=120, height=72), lambda u: steps.append((u.step, u.total))
    )
    assert image.size == (120, 72)
    # 4 denoising steps, then int(4 x 0.5) = 2 refinement steps.
    assert steps == [(i, 6) for i in range(1, 7)]
    assert not engine.plan(request("sd", quality=3)).refine


@pytest.mark.parametrize("strength", [0.3, 0.5, 0.9])
def test_a_one_step_model_refines_in_one_step(
    tiny_folders: dict[str, Path], tmp_path: Path, strength: float
) -> None:
    """img2img runs the last int(steps x strength) of its steps: none, for a turbo
    model's one step, unless the pass is scheduled on more."""
    registry = write_registry(tmp_path / "m.yaml", tiny_folders, refine=True)
    document = yaml.safe_load(registry.read_text())
    document["models"]["sd"].update(steps=[1] * 5, refine={"from_quality": 4, "strength": strength})
    registry.write_text(yaml.safe_dump(document))
    engine = DiffusersEngine(Registry.load(registry), device="cpu")
    steps: list[tuple[int, int]] = []
    image = engine.generate(
        request("sd", quality=5, width=120, height=72), lambda u: steps.append((u.step, u.total))
    )
    assert image.size == (120, 72)
    assert steps == [(1, 2), (2, 2)]


@pytest.mark.parametrize("refine", [False, True], ids=["native", "refined"])
def test_unresized_images_are_those_before_the_last_resize(
    tiny_folders: dict[str, Path], tmp_path: Path, refine: bool
) -> None:
    # A worker resizes them while it delivers, beside its next engine call.
    registry = write_registry(tmp_path / "m.yaml", tiny_folders, refine=refine)
    engine = DiffusersEngine(Registry.load(registry), device="cpu")
    wanted = request("sd", quality=4, width=124, height=76)
    plan = engine.plan(wanted)
    assert plan.refine is refine
    exact = engine.generate(wanted, lambda u: None)
    unresized = engine.generate_unresized(wanted, lambda u: None)
    # Refined at the requested size rounded down to multiples of 8, else as planned.
    assert unresized.size == ((120, 72) if refine else (plan.width, plan.height))
    assert exact.size == (124, 76)
    resized = imaging.resize(unresized, (124, 76))
    assert np.array_equal(pixels(resized), pixels(exact))
    together = engine.generate_batch_unresized(
        [wanted, request("sd", quality=4, width=124, height=76, seed=8)], [lambda u: None] * 2
    )
    assert [getattr(i, "size", None) for i in together] == [unresized.size] * 2


@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart_sigma"])
@pytest.mark.parametrize("negative_prompt", [None, "blurry, low contrast"])
def test_a_guided_call_encodes_its_negative_prompt_once_per_model(
    tiny_folders: dict[str, Path], tmp_path: Path, family: str, negative_prompt: str | None
) -> None:
    """Every guided image needs the negative prompt's conditioning; it is made once
    per loaded model, a batch's prompts once each, and the images are those the
    pipeline makes from the texts."""
    from openletz.engines.diffusers.families import FAMILIES, Call

    registry = write_registry(tmp_path / "m.yaml", tiny_folders)
    document = yaml.safe_load(registry.read_text())
    document["models"][family]["negative_prompt"] = negative_prompt
    registry.write_text(yaml.safe_dump(document))
    engine = DiffusersEngine(Registry.load(registry), device="cpu")
    wanted = request(family, creativity=3, quality=2)
    plan = engine.plan(wanted)
    assert plan.guidance > 1
    pipe = engine.model(family).pipe
    rows: list[int] = []
    encoder = pipe.text_encoder
    forward = encoder.forward

    def counted(input_ids: torch.Tensor, *args: object, **kwargs: object) -> object:
        rows.append(input_ids.shape[0])
        return forward(input_ids, *args, **kwargs)

    encoder.forward = counted
    image = engine.generate_unresized(wanted, lambda u: None)
    rows.clear()
    again = engine.generate_unresized(wanted, lambda u: None)
    assert rows == [1]  # the prompt alone
    rows.clear()
    batch = [
        request(family, creativity=3, quality=2, seed=s, prompt=p)
        for s, p in ((1, "a fox"), (2, "a lighthouse"), (3, "a fox"))
    ]
    together = engine.generate_batch_unresized(batch, [lambda u: None] * 3)
    assert rows == [2]  # each prompt once
    encoder.forward = forward
    alone = engine.generate_unresized(batch[2], lambda u: None)
    assert isinstance(together[2], Image.Image)
    assert np.abs(pixels(together[2]) - pixels(alone)).max() <= 2

    call = Call(
        prompts=[wanted.prompt],
        negative_prompt=negative_prompt,
        steps=plan.steps,
        guidance=plan.guidance,
        width=plan.width,
        height=plan.height,
        generators=[torch.Generator("cpu").manual_seed(wanted.seed)],
    )
    with torch.inference_mode():
        bare = pipe(**FAMILIES[family].call_kwargs(call), output_type="pil").images[0]
    assert np.array_equal(pixels(image), pixels(bare))
    assert np.array_equal(pixels(again), pixels(bare))


def test_an_unguided_call_leaves_the_texts_to_the_pipeline(engine: DiffusersEngine) -> None:
    plan = engine.plan(request("sd", creativity=1))
    assert plan.guidance <= 1
    assert engine._conditioning(engine.model("sd"), engine.model("sd").pipe, plan, ["x"]) is None


def test_base_model_picks_a_model_by_name(engine: DiffusersEngine) -> None:
    assert engine.plan(request("sd", base_model="pixart_sigma")).model.name == "pixart_sigma"
    with pytest.raises(EngineError, match="no model named 'nope'"):
        engine.plan(request("sd", base_model="nope"))


def test_a_missing_model_fails_cleanly_and_says_how_to_fix_it(
    tiny_folders: dict[str, Path], tmp_path: Path, offline_hub: Path
) -> None:
    extra = {"gone": MISSING_MODEL}
    states: list[tuple[str, str, str | None]] = []
    registry = write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra)
    engine = DiffusersEngine(
        Registry.load(registry), device="cpu", on_model_state=lambda *s: states.append(s)
    )
    with pytest.raises(EngineError) as info:
        engine.generate(request("sd", base_model="gone"), lambda u: None)
    message = str(info.value)
    assert "'gone'" in message
    assert "nobody/no-such-model" in message
    assert "openletz models pull gone" in message
    assert str(registry) in message
    assert states[-1][:2] == ("gone", "broken")
    # The other models still work.
    assert engine.generate(request("sd"), lambda u: None).size == (96, 64)


def test_hub_ids_load_from_the_cache(
    tiny_folders: dict[str, Path], tmp_path: Path, offline_hub: Path
) -> None:
    tiny.install_in_hub_cache(tiny_folders["sd"], "tiny-org/tiny-sd", offline_hub)
    extra = {
        "from-hub": {
            "family": "sd",
            "source": "tiny-org/tiny-sd",
            "resolution": 64,
            "steps": [1, 2, 3, 4, 5],
            "guidance": [0.0, 1.5, 3.0, 3.0, 3.0],
        }
    }
    engine = DiffusersEngine(
        Registry.load(write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra)),
        device="cpu",
    )
    from_hub = engine.generate(request("sd", base_model="from-hub"), lambda u: None)
    from_folder = engine.generate(request("sd"), lambda u: None)
    assert np.abs(pixels(from_hub) - pixels(from_folder)).max() <= 1


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_single_file_checkpoints_load_with_their_config(
    tiny_folders: dict[str, Path], tmp_path: Path, family: str
) -> None:
    checkpoint = tiny.save_single_file(tiny.build_pipeline(family), tmp_path / "model.safetensors")
    extra = {
        "single": {
            "family": family,
            "source": str(checkpoint),
            "config": str(tiny_folders[family]),
            "resolution": 64,
            "steps": [1, 2, 3, 4, 5],
            "guidance": [0.0, 1.5, 3.0, 3.0, 3.0],
        }
    }
    engine = DiffusersEngine(
        Registry.load(write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra)),
        device="cpu",
    )
    single = engine.generate(request(family, base_model="single"), lambda u: None)
    folder = engine.generate(request(family), lambda u: None)
    assert np.abs(pixels(single) - pixels(folder)).max() <= 1


def test_models_are_kept_warm_and_evicted_least_recently_used(tiny_registry: Path) -> None:
    states: list[tuple[str, str, str | None]] = []
    engine = DiffusersEngine(
        Registry.load(tiny_registry),
        device="cpu",
        memory_budget_gb=12 / 1024,  # ~12 MB: room for two tiny models, not three
        on_model_state=lambda *s: states.append(s),
    )
    engine.generate(request("sd"), lambda u: None)
    engine.generate(request("sd"), lambda u: None)
    assert states == [("sd", "loading", None), ("sd", "ready", None)]
    engine.generate(request("pixart_sigma"), lambda u: None)
    engine.generate(request("sdxl"), lambda u: None)
    assert ("sd", "unloaded", None) in states
    assert engine.loaded_models()[-1] == "sdxl"
    assert "sd" not in engine.loaded_models()


def test_registry_errors_name_the_problem(tmp_path: Path, tiny_folders: dict[str, Path]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {}\nslots: {3: {default: missing}}\n")
    with pytest.raises(RegistryError, match="slot 3/default names the model 'missing'"):
        Registry.load(bad)
    bad.write_text(
        "models: {x: {family: sd, source: /m.safetensors, resolution: 64,"
        " steps: [1,1,1,1,1], guidance: [0,0,0,0,0]}}\nslots: {}\n"
    )
    with pytest.raises(RegistryError, match="needs `config`"):
        Registry.load(bad)
    bad.write_text(
        "models: {x: {family: sd, source: a/b, resolution: 64, steps: [1], guidance: []}}"
    )
    with pytest.raises(RegistryError, match="steps"):
        Registry.load(bad)
    with pytest.raises(RegistryError, match="cannot read"):
        Registry.load(tmp_path / "absent.yaml")


def test_the_shipped_registry_is_valid() -> None:
    registry = Registry.load()
    for version in (2, 3):
        for mode in ("default", "sigma", "turbo"):
            assert registry.resolve(version, mode).spec.family in FAMILIES


def test_refined_requests_of_other_output_sizes_are_not_batched(
    tiny_folders: dict[str, Path], tmp_path: Path
) -> None:
    registry = write_registry(tmp_path / "m.yaml", tiny_folders, refine=True)
    engine = DiffusersEngine(Registry.load(registry), device="cpu")
    # Both are generated at the same size, but refined at their own.
    a, b = (
        request("sd", quality=4, width=96, height=64),
        request("sd", quality=4, width=192, height=128),
    )
    assert engine.plan(a).width == engine.plan(b).width
    assert engine.batch_key(a) != engine.batch_key(b)
    # Without refinement they share a batch and are each resized to their own size.
    a, b = (
        request("sd", quality=2, width=96, height=64),
        request("sd", quality=2, width=192, height=128),
    )
    assert engine.batch_key(a) == engine.batch_key(b)
    sizes = [r.size for r in engine.generate_batch([a, b], [lambda u: None] * 2)]  # type: ignore[union-attr]
    assert sizes == [(96, 64), (192, 128)]


def test_preload_loads_models_at_start(tiny_registry: Path) -> None:
    states: list[tuple[str, str, str | None]] = []
    engine = DiffusersEngine(
        Registry.load(tiny_registry),
        device="cpu",
        preload=["sd"],
        on_model_state=lambda *s: states.append(s),
    )
    assert engine.loaded_models() == []
    engine.load()
    assert engine.loaded_models() == ["sd"]
    with pytest.raises(RegistryError):
        DiffusersEngine(Registry.load(tiny_registry), device="cpu", preload=["nope"])
