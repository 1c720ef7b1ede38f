"""Stable Diffusion 1.x and 2.x (and their turbo distillations)."""

from __future__ import annotations

from typing import Any

from openletz.engines.diffusers.families.base import Conditioning, Family


class StableDiffusion(Family):
    name = "sd"
    pipeline = "StableDiffusionPipeline"
    img2img = "StableDiffusionImg2ImgPipeline"
    multiple = 8
    # The SD 1.x/2.x VAE's latents to RGB, fitted by least squares (as published
    # by ComfyUI and InvokeAI).
    latent_rgb = (
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    )

    def encode(
        self, pipe: Any, prompts: list[str], negative_prompt: str | None, *, guided: bool
    ) -> tuple[Conditioning, Conditioning | None]:
        positive, negative = pipe.encode_prompt(
            prompts,
            pipe._execution_device,
            1,
            guided,
            negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
        )
        return {"prompt_embeds": positive}, (
            {"negative_prompt_embeds": negative} if guided else None
        )


FAMILY = StableDiffusion()
