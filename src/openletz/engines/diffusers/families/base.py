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

#: Text conditioning as a pipeline's call takes it in place of the texts
#: (``prompt_embeds``, ``pooled_prompt_embeds``, ...): one row per text.
Conditioning = dict[str, torch.Tensor]


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
    #: the prompts' conditioning (a row each) and the negative prompt's (one row,
    #: for every image), made by :meth:`Family.encode`; None: the pipeline encodes
    #: the texts itself
    conditioning: tuple[Conditioning, Conditioning] | None = None


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
            "num_inference_steps": call.steps,
            "guidance_scale": call.guidance,
            "width": call.width,
            "height": call.height,
            "generator": call.generators,
        }
        if call.conditioning is not None:
            positive, negative = call.conditioning
            kwargs.update(positive)
            rows = len(call.prompts)
            # A copy a row: the pipelines reshape what they are given in place.
            kwargs.update({k: v.repeat(rows, *[1] * (v.ndim - 1)) for k, v in negative.items()})
            return kwargs
        kwargs["prompt"] = call.prompts
        if call.negative_prompt and call.guidance > 1:
            kwargs["negative_prompt"] = [call.negative_prompt] * len(call.prompts)
        return kwargs

    def encode(
        self, pipe: Any, prompts: list[str], negative_prompt: str | None, *, guided: bool
    ) -> tuple[Conditioning, Conditioning | None] | None:
        """The conditioning of ``prompts`` (a row each) and, when ``guided``, of the
        negative prompt (a row for each prompt), made by the pipeline's own
        ``encode_prompt`` with the arguments its call would give it, so that the
        images are the same as from the texts. None where this family leaves the
        texts to its pipeline."""
        return None

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
