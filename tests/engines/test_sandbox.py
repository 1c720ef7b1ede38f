from __future__ import annotations

import dataclasses
import hashlib
import itertools

import numpy as np
import pytest
from PIL import Image

from openletz.engines.base import GenerationRequest, Interrupted, StepUpdate
from openletz.engines.sandbox import PREVIEW_MAX_SIDE, SandboxEngine, render_image

BASE = GenerationRequest(
    prompt="a red fox in the snow",
    width=96,
    height=64,
    quality=2,
    creativity=2,
    system_version=3,
    mode="default",
    seed=1234,
)


def request(**changes: object) -> GenerationRequest:
    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


def run(engine: SandboxEngine, req: GenerationRequest) -> tuple[Image.Image, list[StepUpdate]]:
    updates: list[StepUpdate] = []
    image = engine.generate(req, updates.append)
    return image, updates


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize(("width", "height"), [(520, 2160), (2160, 520), (1600, 1600), (1023, 777)])
def test_image_has_exact_requested_size(width: int, height: int) -> None:
    image, _ = run(SandboxEngine(duration_s=0), request(width=width, height=height))
    assert image.size == (width, height)
    assert image.mode == "RGB"


def test_same_request_gives_identical_pixels() -> None:
    req = request(width=300, height=200)
    first, _ = run(SandboxEngine(duration_s=0), req)
    second, _ = run(SandboxEngine(duration_s=0), req)
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1235},
        {"prompt": "a blue whale in the sea"},
        {"creativity": 5},
        {"mode": "other"},
        {"system_version": 2},
    ],
)
def test_changed_inputs_give_a_different_image(change: dict[str, object]) -> None:
    engine = SandboxEngine(duration_s=0)
    base, _ = run(engine, request(width=256, height=256))
    other, _ = run(engine, request(width=256, height=256, **change))
    # visibly different, not a stray pixel
    assert np.abs(pixels(base) - pixels(other)).mean() > 5


def test_renderer_output_is_pinned() -> None:
    # Catches accidental changes to the renderer. If you change it on purpose (or a
    # Pillow/FreeType upgrade changes text rendering), re-record the hash.
    image = render_image(BASE)
    digest = hashlib.sha256(image.tobytes()).hexdigest()
    assert digest == "7374ba07c8053f96d947963fd7ec409b6db87caa757ce13c94b5fed985705f27"


@pytest.mark.parametrize("quality", [1, 2, 5])
def test_steps_follow_quality(quality: int) -> None:
    _, updates = run(SandboxEngine(duration_s=0, steps_per_quality=4), request(quality=quality))
    total = 4 * quality
    assert [u.step for u in updates] == list(range(1, total + 1))
    assert all(u.total == total for u in updates)


def test_previews_are_small_change_and_converge_to_the_final_image() -> None:
    req = request(width=1600, height=900)
    final, updates = run(SandboxEngine(duration_s=0), req)
    previews = []
    for update in updates:
        assert update.preview is not None
        previews.append(update.preview())

    for preview in previews:
        assert preview.mode == "RGB"
        assert max(preview.size) <= PREVIEW_MAX_SIDE
        assert preview.size == (256, 144)  # aspect kept
    for before, after in itertools.pairwise(previews):
        assert before.tobytes() != after.tobytes()

    expected = pixels(final.resize(previews[-1].size, Image.Resampling.LANCZOS))
    assert np.abs(pixels(previews[-1]) - expected).mean() < 3
    # and the first one is mostly noise
    assert np.abs(pixels(previews[0]) - expected).mean() > 20


def test_preview_of_a_small_image_keeps_its_size() -> None:
    _, updates = run(SandboxEngine(duration_s=0), request(width=40, height=30))
    assert updates[0].preview is not None
    assert updates[0].preview().size == (40, 30)


def test_interrupt_stops_at_once_and_propagates() -> None:
    seen: list[int] = []

    def on_step(update: StepUpdate) -> None:
        seen.append(update.step)
        if update.step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        SandboxEngine(duration_s=0).generate(BASE, on_step)
    assert seen == [1, 2, 3]


@pytest.mark.parametrize("quality", [1, 2, 3, 5])
def test_total_sleep_scales_with_quality(quality: int) -> None:
    slept: list[float] = []
    engine = SandboxEngine(duration_s=4.0, steps_per_quality=6, sleep=slept.append)
    _, updates = run(engine, request(quality=quality))
    assert len(slept) == len(updates) == 6 * quality
    assert sum(slept) == pytest.approx(4.0 * quality / 2)


def test_sleep_happens_before_each_step() -> None:
    events: list[str] = []
    engine = SandboxEngine(duration_s=1.0, sleep=lambda _s: events.append("sleep"))
    engine.generate(request(quality=1), lambda u: events.append(f"step{u.step}"))
    assert events[:4] == ["sleep", "step1", "sleep", "step2"]


def test_zero_duration_never_sleeps() -> None:
    slept: list[float] = []
    run(SandboxEngine(duration_s=0, sleep=slept.append), request(quality=5))
    assert slept == []


@pytest.mark.parametrize("quality", [0, 6, -1])
def test_invalid_quality_is_rejected(quality: int) -> None:
    with pytest.raises(ValueError, match="quality") as excinfo:
        SandboxEngine(duration_s=0).generate(request(quality=quality), lambda _u: None)
    assert str(quality) in str(excinfo.value)


@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize("value", [0, -5])
def test_invalid_dimensions_are_rejected(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        SandboxEngine(duration_s=0).generate(request(**{field: value}), lambda _u: None)


def test_invalid_constructor_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        SandboxEngine(duration_s=-1)
    with pytest.raises(ValueError, match="steps_per_quality"):
        SandboxEngine(steps_per_quality=0)


def test_engine_identity_and_cheap_load() -> None:
    engine = SandboxEngine()
    assert engine.name == "sandbox"
    engine.load()
    engine.close()


def test_long_and_empty_prompts_render() -> None:
    engine = SandboxEngine(duration_s=0)
    long_prompt = " ".join(["supercalifragilistic"] * 400) + "x" * 500
    for prompt in (long_prompt, "", "   "):
        image, _ = run(engine, request(prompt=prompt, width=200, height=120))
        assert image.size == (200, 120)
