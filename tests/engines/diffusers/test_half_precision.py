"""The diffusers engine in bf16, as it runs on a GPU, here on the CPU: the whole path
(weights, the conditioning kept across calls, latents, previews, decode) in half
precision makes the float32 image, up to the arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openletz.engines.base import StepUpdate
from openletz.engines.diffusers.engine import DiffusersEngine
from openletz.engines.diffusers.registry import Registry
from tests.engines.diffusers.conftest import FAMILIES
from tests.engines.diffusers.test_engine import pixels, request


@pytest.fixture(scope="module")
def engines(tiny_registry: Path) -> dict[str, DiffusersEngine]:
    full = DiffusersEngine(Registry.load(tiny_registry), device="cpu")
    half = DiffusersEngine(Registry.load(tiny_registry), device="cpu")
    half.dtype = torch.bfloat16  # what a GPU with bf16 gets (_pick_dtype)
    return {"full": full, "half": half}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quality", [2, 5])
def test_bf16_makes_the_float32_image(
    engines: dict[str, DiffusersEngine], family: str, quality: int
) -> None:
    previews: list[Image.Image] = []

    def on_step(update: StepUpdate) -> None:
        if update.preview is not None:
            previews.append(update.preview())

    # Square and at the models' native size: bf16 rounding grows at sizes whose
    # latents have odd sides, in bare diffusers as here.
    wanted = [request(family, quality=quality, width=64, height=64, seed=s) for s in (3, 4)]
    half = engines["half"].generate_batch(wanted, [on_step, lambda u: None])
    pipe = engines["half"]._models[family].pipe
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    assert denoiser.dtype == torch.bfloat16
    for one, image in zip(wanted, half, strict=True):
        alone = engines["half"].generate(one, lambda u: None)
        full = engines["full"].generate(one, lambda u: None)
        for made in (image, alone):
            assert isinstance(made, Image.Image)
            assert made.size == (64, 64)
            assert made.mode == "RGB"
            # bf16 rounds differently in a batch and alone (other kernels, other
            # orders of sums), as bare diffusers does; the picture is the same one.
            diff = np.abs(pixels(made) - pixels(full))
            assert diff.mean() < 1.5
            assert diff.max() <= 12
    assert previews
    assert all(p.mode == "RGB" for p in previews)
