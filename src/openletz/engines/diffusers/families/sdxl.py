"""Stable Diffusion XL (and SDXL-Turbo)."""

from __future__ import annotations

from openletz.engines.diffusers.families.base import Family


class StableDiffusionXL(Family):
    name = "sdxl"
    pipeline = "StableDiffusionXLPipeline"
    img2img = "StableDiffusionXLImg2ImgPipeline"
    multiple = 8
    # The SDXL VAE's latents to RGB (as published by ComfyUI and InvokeAI).
    latent_rgb = (
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    )
    latent_rgb_bias = (0.1084, -0.0175, -0.0011)


FAMILY = StableDiffusionXL()
