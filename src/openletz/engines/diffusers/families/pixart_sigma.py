"""PixArt-Σ: a diffusion transformer with a T5 text encoder and the SDXL VAE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openletz.engines.diffusers.families.base import Call, Family
from openletz.engines.diffusers.families.sdxl import StableDiffusionXL


class PixArtSigma(Family):
    name = "pixart_sigma"
    pipeline = "PixArtSigmaPipeline"
    img2img = None
    multiple = 16  # 8 (VAE) x 2 (patch size)
    latent_rgb = StableDiffusionXL.latent_rgb  # the same VAE as SDXL
    latent_rgb_bias = StableDiffusionXL.latent_rgb_bias

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        # openletz plans sizes itself; the pipeline's own binning would override them.
        kwargs["use_resolution_binning"] = False
        # Caption cleaning needs bs4 and ftfy, and changes what the user wrote.
        kwargs["clean_caption"] = False
        kwargs.setdefault("negative_prompt", "")
        return kwargs

    def step_callback_kwargs(self, callback: Callable[..., Any]) -> dict[str, Any]:
        # This pipeline has only the older per-step callback.
        def legacy(step: int, timestep: Any, latents: Any) -> None:
            callback(None, step, timestep, {"latents": latents})

        return {"callback": legacy, "callback_steps": 1}


FAMILY = PixArtSigma()
