"""PixArt-Σ: a diffusion transformer with a T5 text encoder and the SDXL VAE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openletz.engines.diffusers.families.base import Call, Conditioning, Family
from openletz.engines.diffusers.families.sdxl import StableDiffusionXL

#: the T5 tokens a prompt is padded or cut to: the pipeline call's default
MAX_SEQUENCE_LENGTH = 300


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
        # The call's own default is "", which it refuses beside negative embeddings.
        kwargs.setdefault("negative_prompt", "" if call.conditioning is None else None)
        return kwargs

    def encode(
        self, pipe: Any, prompts: list[str], negative_prompt: str | None, *, guided: bool
    ) -> tuple[Conditioning, Conditioning | None]:
        positive, mask, negative, negative_mask = pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=guided,
            negative_prompt=negative_prompt or "",
            num_images_per_prompt=1,
            device=pipe._execution_device,
            clean_caption=False,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        return {"prompt_embeds": positive, "prompt_attention_mask": mask}, (
            {"negative_prompt_embeds": negative, "negative_prompt_attention_mask": negative_mask}
            if guided
            else None
        )

    def step_callback_kwargs(self, callback: Callable[..., Any]) -> dict[str, Any]:
        # This pipeline has only the older per-step callback.
        def legacy(step: int, timestep: Any, latents: Any) -> None:
            callback(None, step, timestep, {"latents": latents})

        return {"callback": legacy, "callback_steps": 1}


FAMILY = PixArtSigma()
