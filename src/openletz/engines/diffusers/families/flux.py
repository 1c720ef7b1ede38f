"""FLUX.1: a rectified-flow transformer with CLIP and T5 encoders and a 16-channel VAE."""

from __future__ import annotations

from typing import Any

import torch

from openletz.engines.diffusers.families.base import Call, Family


class Flux(Family):
    name = "flux"
    pipeline = "FluxPipeline"
    img2img = "FluxImg2ImgPipeline"
    multiple = 16  # 8 (VAE) x 2 (latents packed in 2x2 patches)
    # The FLUX VAE's 16 latent channels to RGB (as published by ComfyUI).
    latent_rgb = (
        (-0.0346, 0.0244, 0.0681),
        (0.0034, 0.0210, 0.0687),
        (0.0275, -0.0668, -0.0433),
        (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329),
        (0.0004, 0.0383, 0.0115),
        (0.0405, 0.0861, 0.0915),
        (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180),
        (0.1008, 0.0755, -0.0421),
        (-0.0515, 0.0201, 0.0011),
        (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749),
        (-0.1264, -0.0522, -0.1103),
        (-0.0280, -0.0881, -0.0499),
        (-0.1262, -0.0982, -0.0778),
    )
    latent_rgb_bias = (-0.0329, -0.0718, -0.0851)

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs = super().call_kwargs(call)
        kwargs.pop("negative_prompt", None)
        kwargs["max_sequence_length"] = 256
        return kwargs

    def spatial_latents(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        # FLUX keeps latents as (batch, patches, channels x 2 x 2).
        if latents.ndim == 4:
            return latents
        batch, _, packed = latents.shape
        h, w = height // 16, width // 16
        channels = packed // 4
        x = latents.view(batch, h, w, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(batch, channels, h * 2, w * 2)


FAMILY = Flux()
