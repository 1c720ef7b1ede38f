"""Full-size SD-Turbo and SDXL pipelines with random weights, for benchmarks.

The architectures are the published ones (their diffusers config files):

SD-Turbo (a distilled Stable Diffusion 2.1, 512 px)
    UNet: block_out_channels (320, 640, 1280, 1280), attention heads (5, 10, 20, 20),
    layers_per_block 2, cross_attention_dim 1024, linear projections; about 866 M
    parameters. Text encoder: OpenCLIP ViT-H/14's text tower as SD 2.x uses it
    (the penultimate layer: 23 of 24 layers, width 1024, 16 heads, MLP 4096,
    GELU); about 340 M. VAE: the SD VAE (128, 256, 512, 512), about 84 M.

SDXL (base 1.0, 1024 px)
    UNet: block_out_channels (320, 640, 1280), transformer depth (1, 2, 10) with
    no attention in the first block, attention heads (5, 10, 20),
    cross_attention_dim 2048, "text_time" additional embedding (256 per size
    number, 2816 inputs); about 2.57 B parameters. Text encoders: CLIP ViT-L/14
    (12 layers, width 768, quick GELU; 123 M) and OpenCLIP ViT-bigG/14 with its
    projection (32 layers, width 1280, 20 heads, MLP 5120, GELU, projection
    1280; 695 M). VAE: the SDXL VAE (same layout as SD's, scaling 0.13025).

Speed does not depend on the weights' values, so random weights measure the
real cost of a step, a decode and a text encoding. The tokenizers are
openletz's byte-level CLIP tokenizer (``tiny.clip_tokenizer``: 77 tokens like
the real one; its ids are a subset of the encoders' 49408-token vocabulary).

``smoke=True`` keeps every block type and the wiring but shrinks the widths
and depths, so that the whole benchmark runs end to end on a CPU in a minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from openletz.engines.diffusers import tiny

VOCAB = 49408  # CLIP's vocabulary
BOS, EOS = 512, 513  # the byte-level tokenizer's start and end ids


def _text_config(
    hidden: int, layers: int, heads: int, mlp: int, act: str, projection: int
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection,
        layer_norm_eps=1e-5,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )


def _vae(widths: tuple[int, ...], layers: int, scaling: float, force_upcast: bool) -> Any:
    groups = 32 if min(widths) >= 32 else min(widths)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=widths,
        layers_per_block=layers,
        latent_channels=4,
        norm_num_groups=groups,
        sample_size=1024,
        scaling_factor=scaling,
        force_upcast=force_upcast,
    )


def _scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="trailing",
        steps_offset=1,
    )


def sd_turbo(scheduler: EulerDiscreteScheduler, smoke: bool = False) -> StableDiffusionPipeline:
    if smoke:
        unet_widths, heads, cross = (32, 64, 128, 128), (1, 2, 4, 4), 64
        text = _text_config(64, 2, 4, 256, "gelu", 32)
        vae_widths, vae_layers = (8, 16, 32, 32), 1
    else:
        unet_widths, heads, cross = (320, 640, 1280, 1280), (5, 10, 20, 20), 1024
        text = _text_config(1024, 23, 16, 4096, "gelu", 512)
        vae_widths, vae_layers = (128, 256, 512, 512), 2
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=unet_widths,
        layers_per_block=2,
        attention_head_dim=heads,
        cross_attention_dim=cross,
        use_linear_projection=True,
        norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        vae=_vae(vae_widths, vae_layers, 0.18215, False),
        text_encoder=CLIPTextModel(text),
        tokenizer=tiny.clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl(scheduler: EulerDiscreteScheduler, smoke: bool = False) -> StableDiffusionXLPipeline:
    if smoke:
        unet_widths, heads, depth = (32, 64, 128), (1, 2, 4), (1, 1, 2)
        text_1 = _text_config(32, 2, 4, 128, "quick_gelu", 32)
        text_2 = _text_config(48, 2, 4, 192, "gelu", 48)
        time_dim = 8
        vae_widths, vae_layers = (8, 16, 32, 32), 1
    else:
        unet_widths, heads, depth = (320, 640, 1280), (5, 10, 20), (1, 2, 10)
        text_1 = _text_config(768, 12, 12, 3072, "quick_gelu", 768)
        text_2 = _text_config(1280, 32, 20, 5120, "gelu", 1280)
        time_dim = 256
        vae_widths, vae_layers = (128, 256, 512, 512), 2
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=unet_widths,
        layers_per_block=2,
        transformer_layers_per_block=depth,
        attention_head_dim=heads,
        cross_attention_dim=int(text_1.hidden_size) + int(text_2.hidden_size),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # six size/crop numbers, then the pooled text of the second encoder
        projection_class_embeddings_input_dim=6 * time_dim + int(text_2.projection_dim),
        norm_num_groups=32,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(vae_widths, vae_layers, 0.13025, True),
        text_encoder=CLIPTextModel(text_1),
        text_encoder_2=CLIPTextModelWithProjection(text_2),
        tokenizer=tiny.clip_tokenizer(),
        tokenizer_2=tiny.clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # the registry's
    build: Any  # (scheduler, smoke) -> pipeline
    guidance: float  # as the model is used: SD-Turbo without CFG, SDXL with


ARCHITECTURES = {
    "sd-turbo": Architecture("sd-turbo", "sd", sd_turbo, 0.0),
    "sdxl": Architecture("sdxl", "sdxl", sdxl, 5.0),
}


def parameters(pipe: Any) -> dict[str, int]:
    """Parameters per module of ``pipe``."""
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }


def build(name: str, *, device: str, dtype: torch.dtype, smoke: bool) -> Any:
    """The pipeline ``name``, its weights made on ``device`` (fast on a GPU) and
    cast to ``dtype``, seeded so that every run builds the same one."""
    scheduler = _scheduler()  # a scheduler keeps its tables on the CPU
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        pipe = ARCHITECTURES[name].build(scheduler, smoke)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            torch.nn.Module.to(module, dtype=dtype)  # what a checkpoint in dtype holds
            torch.nn.Module.train(module, False)
    return pipe
