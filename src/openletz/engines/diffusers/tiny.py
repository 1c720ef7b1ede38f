"""Tiny diffusion pipelines with the real architectures and random weights.

Each family's pipeline is built in code, deterministically from a seed, with
every component of the real model (tokenizers included) at a toy size: well
under two million parameters, a 64x64 image in milliseconds on one CPU core.
The images are noise, but every code path the engine takes with real weights
is taken with these: prompt encoding, the denoising loop and its callbacks,
the VAE decode, saving, and the three ways a model is loaded (a local
diffusers folder, the Hugging Face hub cache, one original-layout
``.safetensors`` checkpoint). Nothing is downloaded.

    pipe = build_pipeline("sdxl", seed=0)
    folder = save_pipeline(pipe, tmp / "tiny-sdxl")
    install_in_hub_cache(folder, "openletz/tiny-sdxl", tmp / "hub")
    checkpoint = save_single_file(pipe, tmp / "tiny-sdxl.safetensors")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

# From the defining modules: diffusers' top level re-exports these lazily, and a
# type checker sees its placeholder classes there instead.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.pixart_transformer_2d import PixArtTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import PixArtSigmaPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteScheduler,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedModel,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

__all__ = [
    "FAMILIES",
    "build_pipeline",
    "clip_tokenizer",
    "install_in_hub_cache",
    "save_pipeline",
    "save_single_file",
]

FAMILIES: tuple[str, ...] = ("sd", "sdxl", "pixart_sigma", "flux")

# --------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_CLIP_VOCAB = 514  # 256 bytes, the same 256 ending a word, then BOS and EOS
_CLIP_LENGTH = 77
_T5_LENGTH = 512


def _byte_alphabet() -> list[str]:
    """One printable character per byte value, in byte order: the table every
    byte-level BPE (GPT-2, CLIP) uses, so that any UTF-8 text is encodable."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted = 0
    alphabet = []
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


def _clip_tokenizer() -> CLIPTokenizer:
    # Without merges every word is spelled out byte by byte: a vocabulary of
    # 514 tokens that encodes any text, where the real one has 49408.
    alphabet = _byte_alphabet()
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab |= {f"{char}</w>": 256 + i for i, char in enumerate(alphabet)}
    vocab |= {_CLIP_BOS: 512, _CLIP_EOS: 513}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_CLIP_LENGTH)


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer that encodes any text in 77 tokens with no download: ids
    512 (start) and 513 (end) and the byte-level alphabet below them, all valid
    ids of a real CLIP text encoder's 49408-token vocabulary."""
    return _clip_tokenizer()


def _t5_tokenizer() -> T5Tokenizer:
    # T5's layout (<pad>=0, </s>=1, <unk>=2) over a unigram vocabulary of the
    # printable ASCII characters; anything else becomes <unk>.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(chr(code), -1.0) for code in range(0x21, 0x7F)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=_T5_LENGTH)


# --------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------


_Module = TypeVar("_Module", bound=torch.nn.Module)


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _inference(module: _Module) -> _Module:
    torch.nn.Module.train(module, False)  # as from_pretrained leaves it
    return module


def _clip_config(hidden: int, *, projection_dim: int | None = None, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=_CLIP_VOCAB,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_LENGTH,
        hidden_act=act,
        projection_dim=projection_dim or hidden,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def _clip_text(seed: int, hidden: int) -> CLIPTextModel:
    _seeded(seed)
    return _inference(CLIPTextModel(_clip_config(hidden, act="quick_gelu")))


def _open_clip_text(seed: int, hidden: int, projection_dim: int) -> CLIPTextModelWithProjection:
    _seeded(seed)
    config = _clip_config(hidden, projection_dim=projection_dim, act="gelu")
    return _inference(CLIPTextModelWithProjection(config))


def _t5_text(seed: int, vocab_size: int) -> T5EncoderModel:
    _seeded(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as PixArt and FLUX use
        is_encoder_decoder=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    return _inference(T5EncoderModel(config))


def _vae(
    seed: int,
    *,
    latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    shift_factor: float | None = None,
    quant_conv: bool = True,
) -> AutoencoderKL:
    # Four blocks, so that it scales by 8 like every real latent diffusion VAE.
    _seeded(seed)
    vae: AutoencoderKL = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )
    return _inference(vae)


def _euler() -> EulerDiscreteScheduler:
    # "trailing" spacing: a one-step schedule starts from pure noise.
    scheduler: EulerDiscreteScheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,  # as the real configs have it (ignored by "trailing")
    )
    return scheduler


def _sd(seed: int) -> StableDiffusionPipeline:
    text_hidden = 32
    _seeded(seed)
    unet: UNet2DConditionModel = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    # Passed as a dict: diffusers' annotations (an enum for the scheduler,
    # no Optional on the safety checker) reject what it accepts at run time.
    components: dict[str, Any] = dict(
        vae=_vae(seed),
        text_encoder=_clip_text(seed, text_hidden),
        tokenizer=_clip_tokenizer(),
        unet=_inference(unet),
        scheduler=_euler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return StableDiffusionPipeline(**components)


def _sdxl(seed: int) -> StableDiffusionXLPipeline:
    # The two encoders must differ in width (as CLIP-L and OpenCLIP-G do):
    # the single-file loader tells them apart by their hidden size.
    hidden_1, hidden_2, projection = 24, 40, 32
    time_dim = 8
    _seeded(seed)
    unet: UNet2DConditionModel = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        transformer_layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=hidden_1 + hidden_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # six micro-conditioning numbers (sizes and crop), then the pooled text
        projection_class_embeddings_input_dim=6 * time_dim + projection,
        norm_num_groups=32,
    )
    components: dict[str, Any] = dict(
        vae=_vae(seed, scaling_factor=0.13025),
        text_encoder=_clip_text(seed, hidden_1),
        text_encoder_2=_open_clip_text(seed, hidden_2, projection),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(),
        unet=_inference(unet),
        scheduler=_euler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return StableDiffusionXLPipeline(**components)


def _pixart_sigma(seed: int) -> PixArtSigmaPipeline:
    tokenizer = _t5_tokenizer()
    text_encoder = _t5_text(seed, len(tokenizer))
    heads, head_dim = 2, 8
    _seeded(seed)
    transformer: PixArtTransformer2DModel = PixArtTransformer2DModel(
        # 32 is the smallest size the pipeline's aspect-ratio binning knows
        # (PixArt-Sigma-256); any other value fails a call with the defaults.
        sample_size=32,
        patch_size=2,
        in_channels=4,
        out_channels=8,  # learned sigma: noise and variance
        num_layers=2,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        cross_attention_dim=heads * head_dim,
        caption_channels=text_encoder.config.d_model,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    )
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_vae(seed, scaling_factor=0.13025),
        transformer=_inference(transformer),
        scheduler=DPMSolverMultistepScheduler(
            beta_start=0.0001,
            beta_end=0.02,
            beta_schedule="linear",
            algorithm_type="dpmsolver++",
            solver_order=2,
        ),
    )


def _flux(seed: int) -> FluxPipeline:
    latent_channels = 16
    clip_hidden = 32
    tokenizer_2 = _t5_tokenizer()
    text_encoder_2 = _t5_text(seed, len(tokenizer_2))
    _seeded(seed)
    transformer: FluxTransformer2DModel = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # the pipeline packs 2x2 latent patches
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_encoder_2.config.d_model,
        pooled_projection_dim=clip_hidden,
        guidance_embeds=False,  # FLUX.1-schnell: distilled, no guidance input
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=_vae(
            seed,
            latent_channels=latent_channels,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            quant_conv=False,
        ),
        text_encoder=_clip_text(seed, clip_hidden),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=_inference(transformer),
    )


_BUILDERS: dict[str, Callable[[int], DiffusionPipeline]] = {
    "sd": _sd,
    "sdxl": _sdxl,
    "pixart_sigma": _pixart_sigma,
    "flux": _flux,
}


def build_pipeline(family: str, *, seed: int = 0) -> DiffusionPipeline:
    """A tiny pipeline of ``family`` (one of :data:`FAMILIES`), on the CPU in
    float32. The same seed gives the same weights, hence the same images."""
    try:
        builder = _BUILDERS[family]
    except KeyError:
        raise ValueError(
            f"family={family!r} is not a tiny pipeline family; expected one of {FAMILIES}"
        ) from None
    with torch.random.fork_rng(devices=[]):
        return builder(seed)


def save_pipeline(pipe: DiffusionPipeline, folder: Path) -> Path:
    """Save ``pipe`` as a diffusers folder (safetensors weights) and return it."""
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# --------------------------------------------------------------------------
# The hub cache
# --------------------------------------------------------------------------

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_LFS_SUFFIXES = {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack", ".gguf"}


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class _HubFile:
    path: str  # inside the repository, with "/"
    source: Path
    blob: str  # its name under blobs/: the sha256 for LFS files, git's blob id otherwise
    tree_entry: dict[str, Any] = field(hash=False)


def _hub_file(source: Path, path: str) -> _HubFile:
    size = source.stat().st_size
    sha256, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with source.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            sha256.update(chunk)
            git.update(chunk)
    if source.suffix not in _LFS_SUFFIXES:
        blob_id = git.hexdigest()
        return _HubFile(path, source, blob_id, {"size": size, "blob_id": blob_id})
    # The hub lists an LFS file under the git id of its pointer file.
    oid = sha256.hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
    entry = {
        "size": size,
        "blob_id": _git_blob_id(pointer.encode()),
        "lfs_sha256": oid,
        "lfs_size": size,
    }
    return _HubFile(path, source, oid, entry)


def install_in_hub_cache(
    folder: Path, repo_id: str, cache_dir: Path, *, revision: str = "main"
) -> None:
    """Lay ``folder`` out in ``cache_dir`` as the Hugging Face hub cache holds a
    downloaded ``repo_id``: content-addressed ``blobs/``, a ``snapshots/<commit>/``
    of links to them, ``refs/<revision>`` naming the commit, and the tree listing
    that offline loaders read. ``from_pretrained(repo_id, cache_dir=cache_dir)``
    then works with ``HF_HUB_OFFLINE=1``. A ``revision`` that is itself a commit
    hash names the snapshot instead of a ref."""
    parts = repo_id.split("/")
    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(r"[\w.-]+", p) for p in parts):
        raise ValueError(f"repo_id={repo_id!r} is not a hub repository id like 'org/name'")
    sources = sorted(p for p in folder.rglob("*") if p.is_file())
    if not sources:
        raise ValueError(f"folder={str(folder)!r} holds no files")
    files = [_hub_file(p, p.relative_to(folder).as_posix()) for p in sources]

    if _COMMIT.fullmatch(revision):
        commit, ref = revision, None
    else:
        listing = "".join(f"{f.path}\0{f.tree_entry['blob_id']}\n" for f in files)
        commit, ref = hashlib.sha1(listing.encode()).hexdigest(), revision

    storage = cache_dir / f"models--{repo_id.replace('/', '--')}"
    blobs = storage / "blobs"
    snapshot = storage / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for f in files:
        blob = blobs / f.blob
        if not blob.exists():
            shutil.copyfile(f.source, blob)
        link = snapshot / f.path
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks (Windows without developer mode): the hub copies too
            shutil.copyfile(blob, link)
    if ref is not None:
        ref_file = storage / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    tree = {"format_version": 1, "files": {f.path: f.tree_entry for f in files}}
    (storage / "trees").mkdir(exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps(tree, indent=1))


# --------------------------------------------------------------------------
# Single-file checkpoints in the original (LDM) layout
# --------------------------------------------------------------------------
#
# The inverse of diffusers' single_file_utils converters (convert_ldm_unet_checkpoint,
# convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint).
# A key is renamed by the longest diffusers prefix it starts with; what follows the
# prefix keeps its name unless the prefix's renames say otherwise. A key no prefix
# claims is an architecture this writer does not know, and an error.

_Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Prefix:
    ldm: str
    renames: Mapping[str, str] = field(default_factory=dict)  # on the rest of the key
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None


_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_RESNET = {"conv_shortcut.": "nin_shortcut."}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def _as_conv1x1(tensor: torch.Tensor) -> torch.Tensor:
    # The original VAE's attention projections are 1x1 convolutions.
    return tensor[:, :, None, None] if tensor.ndim == 2 else tensor


def _rename(
    state: Mapping[str, torch.Tensor], prefixes: Mapping[str, _Prefix], into: str
) -> _Tensors:
    ordered = sorted(prefixes, key=len, reverse=True)
    out: _Tensors = {}
    for key, tensor in state.items():
        match = next((p for p in ordered if key.startswith(p)), None)
        if match is None:
            raise ValueError(f"no original-layout name for {key!r}: unsupported architecture")
        prefix = prefixes[match]
        rest = key[len(match) :]
        for old, new in prefix.renames.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        value = prefix.reshape(tensor) if prefix.reshape else tensor
        out[into + prefix.ldm + rest] = value
    return out


def _unet_prefixes(
    unet: UNet2DConditionModel, state: Mapping[str, torch.Tensor]
) -> dict[str, _Prefix]:
    config = unet.config
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError(f"layers_per_block={per_block!r}: the original layout needs one number")
    prefixes = {
        "conv_in.": _Prefix("input_blocks.0.0."),
        "time_embedding.linear_1.": _Prefix("time_embed.0."),
        "time_embedding.linear_2.": _Prefix("time_embed.2."),
        "add_embedding.linear_1.": _Prefix("label_emb.0.0."),
        "add_embedding.linear_2.": _Prefix("label_emb.0.2."),
        "conv_norm_out.": _Prefix("out.0."),
        "conv_out.": _Prefix("out.2."),
        "mid_block.resnets.0.": _Prefix("middle_block.0.", _UNET_RESNET),
        "mid_block.attentions.0.": _Prefix("middle_block.1."),
        "mid_block.resnets.1.": _Prefix("middle_block.2.", _UNET_RESNET),
    }

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in state)

    # input_blocks: conv_in, then per block its layers (resnet, attention) and
    # its downsampler, each at the next index.
    index = 1
    for b in range(len(config["down_block_types"])):
        for layer in range(per_block):
            prefixes[f"down_blocks.{b}.resnets.{layer}."] = _Prefix(
                f"input_blocks.{index}.0.", _UNET_RESNET
            )
            prefixes[f"down_blocks.{b}.attentions.{layer}."] = _Prefix(f"input_blocks.{index}.1.")
            index += 1
        if has(f"down_blocks.{b}.downsamplers."):
            prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = _Prefix(
                f"input_blocks.{index}.0.op."
            )
            index += 1
    # output_blocks: one more layer per block; the upsampler rides on the last.
    index = 0
    for b in range(len(config["up_block_types"])):
        attends = has(f"up_blocks.{b}.attentions.")
        for layer in range(per_block + 1):
            prefixes[f"up_blocks.{b}.resnets.{layer}."] = _Prefix(
                f"output_blocks.{index}.0.", _UNET_RESNET
            )
            prefixes[f"up_blocks.{b}.attentions.{layer}."] = _Prefix(f"output_blocks.{index}.1.")
            index += 1
        slot = 2 if attends else 1
        prefixes[f"up_blocks.{b}.upsamplers.0.conv."] = _Prefix(
            f"output_blocks.{index - 1}.{slot}.conv."
        )
    return prefixes


def _unet_to_ldm(unet: UNet2DConditionModel) -> _Tensors:
    state = unet.state_dict()
    return _rename(state, _unet_prefixes(unet, state), "model.diffusion_model.")


def _layer_numbers(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    found = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
    return sorted(int(n) for n in found)


def _vae_to_ldm(vae: AutoencoderKL) -> _Tensors:
    state = vae.state_dict()
    blocks = len(vae.config["down_block_types"])
    prefixes = {name: _Prefix(name) for name in ("quant_conv.", "post_quant_conv.")}
    for side in ("encoder", "decoder"):
        prefixes[f"{side}.conv_in."] = _Prefix(f"{side}.conv_in.")
        prefixes[f"{side}.conv_out."] = _Prefix(f"{side}.conv_out.")
        prefixes[f"{side}.conv_norm_out."] = _Prefix(f"{side}.norm_out.")
        for n in _layer_numbers(state, f"{side}.mid_block.resnets."):
            prefixes[f"{side}.mid_block.resnets.{n}."] = _Prefix(
                f"{side}.mid.block_{n + 1}.", _VAE_RESNET
            )
        prefixes[f"{side}.mid_block.attentions.0."] = _Prefix(
            f"{side}.mid.attn_1.", _VAE_ATTENTION, _as_conv1x1
        )
    for i in range(blocks):
        down = f"encoder.down_blocks.{i}."
        for n in _layer_numbers(state, down + "resnets."):
            prefixes[f"{down}resnets.{n}."] = _Prefix(f"encoder.down.{i}.block.{n}.", _VAE_RESNET)
        prefixes[f"{down}downsamplers.0."] = _Prefix(f"encoder.down.{i}.downsample.")
        # the original decoder numbers its blocks from the full-resolution end
        up, j = f"decoder.up_blocks.{i}.", blocks - 1 - i
        for n in _layer_numbers(state, up + "resnets."):
            prefixes[f"{up}resnets.{n}."] = _Prefix(f"decoder.up.{j}.block.{n}.", _VAE_RESNET)
        prefixes[f"{up}upsamplers.0."] = _Prefix(f"decoder.up.{j}.upsample.")
    return _rename(state, prefixes, "first_stage_model.")


def _text_state(encoder: PreTrainedModel) -> Iterator[tuple[str, torch.Tensor]]:
    """The encoder's weights named as in transformers' nested layout
    (``text_model.…``), whichever layout this transformers version uses."""
    for key, tensor in encoder.state_dict().items():
        if key.startswith("text_model.") or key.startswith("text_projection."):
            yield key, tensor
        else:
            yield f"text_model.{key}", tensor


def _clip_to_ldm(encoder: CLIPTextModel, prefix: str) -> _Tensors:
    return {prefix + key: tensor for key, tensor in _text_state(encoder)}


_OPEN_CLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
_QKV = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")


def _open_clip_to_ldm(encoder: CLIPTextModelWithProjection, prefix: str) -> _Tensors:
    out: _Tensors = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in _text_state(encoder):
        if key in _OPEN_CLIP_TOP:
            out[prefix + _OPEN_CLIP_TOP[key]] = tensor
            continue
        if key == "text_projection.weight":  # open_clip multiplies x @ P: the transpose
            out[prefix + "text_projection"] = tensor.T
            continue
        layer = _LAYER.match(key)
        if layer is None:
            raise ValueError(f"no original-layout name for {key!r}: unsupported architecture")
        number, rest = layer.groups()
        base = f"{prefix}transformer.resblocks.{number}."
        fused = _QKV.match(rest)
        if fused is not None:  # open_clip keeps q, k and v in one in_proj
            projection, kind = fused.groups()
            qkv.setdefault((base, kind), {})[projection] = tensor
            continue
        for old, new in _OPEN_CLIP_LAYER.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        else:
            raise ValueError(f"no original-layout name for {key!r}: unsupported architecture")
        out[base + rest] = tensor
    for (base, kind), parts in qkv.items():
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def save_single_file(pipe: DiffusionPipeline, path: Path) -> Path:
    """Write ``pipe``'s weights as ONE ``.safetensors`` checkpoint in the original
    (CompVis/Stability) key layout, as checkpoints are shared outside the hub:
    ``<Pipeline>.from_single_file(path, config=<folder from save_pipeline>)``
    loads it back with the same weights. Stable Diffusion 1.x and SDXL only."""
    state: _Tensors
    if isinstance(pipe, StableDiffusionXLPipeline):
        widths = {pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size}
        if len(widths) == 1:
            # diffusers' loader tells the two encoders apart by their width
            raise ValueError(
                "the SDXL text encoders have the same hidden size; a single-file "
                "checkpoint of them would not load back"
            )
        state = {
            **_unet_to_ldm(pipe.unet),
            **_vae_to_ldm(pipe.vae),
            **_clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."),
            **_open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."),
        }
    elif isinstance(pipe, StableDiffusionPipeline):
        state = {
            **_unet_to_ldm(pipe.unet),
            **_vae_to_ldm(pipe.vae),
            **_clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."),
        }
    else:
        raise ValueError(
            f"pipe is a {type(pipe).__name__}; single-file checkpoints are written for "
            "StableDiffusionPipeline and StableDiffusionXLPipeline only"
        )
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
