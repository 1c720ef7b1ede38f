"""What differs between pipeline families, behind one small interface.

Each family module holds everything about one architecture: its pipeline
classes, how to call them, the pixel multiple its sizes need, and the linear
map from its latents to RGB that makes live previews nearly free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class Call:
    """One pipeline call's inputs, family-neutral."""

    prompts: list[str]
    negative_prompt: str | None
    steps: int
    guidance: float
    width: int
    height: int
    generators: list[torch.Generator]


class Family:
    name: str
    pipeline: str  # class name in diffusers
    img2img: str | None  # class name in diffusers, None when the family has none
    #: generated sizes are multiples of this (VAE factor x transformer patch size)
    multiple: int = 8
    #: latent channels x (R, G, B), and a bias, mapping latents to RGB in [-1, 1]
    latent_rgb: tuple[tuple[float, float, float], ...]
    latent_rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def call_kwargs(self, call: Call) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompt": call.prompts,
            "num_inference_steps": call.steps,
            "guidance_scale": call.guidance,
            "width": call.width,
            "height": call.height,
            "generator": call.generators,
        }
        if call.negative_prompt and call.guidance > 1:
            kwargs["negative_prompt"] = [call.negative_prompt] * len(call.prompts)
        return kwargs

    def step_callback_kwargs(self, callback: Callable[..., Any]) -> dict[str, Any]:
        """How the pipeline takes ``callback(pipe, step, timestep, {"latents": ...})``."""
        return {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": ["latents"]}

    def spatial_latents(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Latents as (batch, channels, h, w), whatever the pipeline keeps them as."""
        return latents

    def latents_to_rgb(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """A (batch, h, w, 3) uint8 tensor on the CPU: the latents seen through the
        linear map (an approximation of the VAE decoder, good enough to watch by)."""
        spatial = self.spatial_latents(latents, width, height).float()
        factors = torch.tensor(self.latent_rgb, dtype=torch.float32, device=spatial.device)
        bias = torch.tensor(self.latent_rgb_bias, dtype=torch.float32, device=spatial.device)
        rgb = torch.einsum("bchw,cr->bhwr", spatial, factors) + bias
        return ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu()
