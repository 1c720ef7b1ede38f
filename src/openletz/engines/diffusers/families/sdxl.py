"""Stable Diffusion XL (and SDXL-Turbo)."""

from __future__ import annotations

from typing import Any

from openletz.engines.diffusers.families.base import Conditioning, Family


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

    def encode(
        self, pipe: Any, prompts: list[str], negative_prompt: str | None, *, guided: bool
    ) -> tuple[Conditioning, Conditioning | None]:
        # Without a negative prompt, SDXL's negative conditioning is zeros where the
        # model's config says so (force_zeros_for_empty_prompt): encode_prompt knows.
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompts,
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guided,
            negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
        )
        return {"prompt_embeds": positive, "pooled_prompt_embeds": pooled}, (
            {"negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": negative_pooled}
            if guided
            else None
        )


FAMILY = StableDiffusionXL()
