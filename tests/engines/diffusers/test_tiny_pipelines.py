"""The tiny pipelines: deterministic, and loadable every way a real model is."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import load_file

from openletz.engines.diffusers.tiny import (
    FAMILIES,
    build_pipeline,
    install_in_hub_cache,
    save_pipeline,
    save_single_file,
)

SINGLE_FILE = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
# Names as the original checkpoints (v1-5-pruned, sd_xl_base_1.0) spell them.
ORIGINAL_KEYS = {
    "sd": [
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.output_blocks.1.1.conv.weight",
        "model.diffusion_model.middle_block.2.out_layers.3.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
    ],
    "sdxl": [
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
        "conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_proj.bias",
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.input_blocks.4.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "first_stage_model.quant_conv.weight",
    ],
}


def generate(pipe: DiffusionPipeline, family: str, *, seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = {
        "prompt": "a tiny red fox",
        "num_inference_steps": 2,
        "height": 64,
        "width": 64,
        "output_type": "np",
        "generator": torch.Generator("cpu").manual_seed(seed),
    }
    if family == "pixart_sigma":
        kwargs |= {"use_resolution_binning": False, "clean_caption": False}
    if family in ("pixart_sigma", "flux"):
        kwargs["max_sequence_length"] = 32
    images: np.ndarray = pipe(**kwargs).images
    return images


def assert_same_pipeline(
    loaded: DiffusionPipeline, original: DiffusionPipeline, image: np.ndarray, family: str
) -> None:
    """Every weight bit-identical, and the same image. Only "close": a loaded
    weight can sit in memory-mapped safetensors at an address aligned
    differently from the one it was built at, and the CPU's GEMM kernels then
    round the last bit differently (seen with FLUX, differences of ~1e-6)."""
    assert type(loaded) is type(original)
    for name, component in original.components.items():
        if isinstance(component, torch.nn.Module):
            expected = component.state_dict()
            actual = loaded.components[name].state_dict()
            assert actual.keys() == expected.keys(), name
            for key, tensor in expected.items():
                assert torch.equal(actual[key], tensor), f"{name}: {key}"
    np.testing.assert_allclose(generate(loaded, family), image, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[DiffusionPipeline, np.ndarray]]:
    """Each family's pipeline (seed 0) and its image, built once."""
    out = {}
    for family in FAMILIES:
        pipe = build_pipeline(family, seed=0)
        out[family] = (pipe, generate(pipe, family))
    return out


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, no token; huggingface_hub reads its environment once, at import."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", "/nonexistent/token")


def test_families_are_the_four_engine_families() -> None:
    assert FAMILIES == ("sd", "sdxl", "pixart_sigma", "flux")


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="family='sd3'"):
        build_pipeline("sd3")


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_and_deterministic(
    family: str, built: dict[str, tuple[DiffusionPipeline, np.ndarray]]
) -> None:
    pipe, image = built[family]
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all()
    parameters = sum(
        p.numel()
        for component in pipe.components.values()
        if isinstance(component, torch.nn.Module)
        for p in component.parameters()
    )
    assert parameters < 2_000_000

    torch.manual_seed(1234)  # building must not depend on the global generator
    np.testing.assert_array_equal(generate(build_pipeline(family, seed=0), family), image)
    assert not np.array_equal(generate(build_pipeline(family, seed=1), family), image)


def test_build_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    build_pipeline("sd")
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_local_folder_and_hub_cache_round_trip(
    family: str,
    built: dict[str, tuple[DiffusionPipeline, np.ndarray]],
    tmp_path: Path,
    offline: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipe, image = built[family]
    folder = save_pipeline(pipe, tmp_path / "folder")
    assert (folder / "model_index.json").is_file()
    assert not list(folder.rglob("*.bin"))

    local = DiffusionPipeline.from_pretrained(folder)
    assert_same_pipeline(local, pipe, image, family)

    repo_id = f"openletz-tests/tiny-{family}"
    cache = tmp_path / "hub"
    install_in_hub_cache(folder, repo_id, cache)
    storage = cache / f"models--openletz-tests--tiny-{family}"
    commit = (storage / "refs" / "main").read_text()
    snapshot = storage / "snapshots" / commit
    assert len(commit) == 40
    assert (snapshot / "model_index.json").is_symlink()
    assert (snapshot / "model_index.json").resolve().parent == (storage / "blobs").resolve()

    from_cache = DiffusionPipeline.from_pretrained(repo_id, cache_dir=cache)
    assert_same_pipeline(from_cache, pipe, image, family)

    # ... and from the default cache, as a user's HF_HUB_CACHE points it.
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    from_default = DiffusionPipeline.from_pretrained(repo_id)
    assert_same_pipeline(from_default, pipe, image, family)


def test_hub_cache_install_is_idempotent_and_content_addressed(tmp_path: Path) -> None:
    folder = save_pipeline(build_pipeline("sd"), tmp_path / "folder")
    cache = tmp_path / "hub"
    install_in_hub_cache(folder, "org/tiny", cache)
    install_in_hub_cache(folder, "org/tiny", cache)
    storage = cache / "models--org--tiny"
    assert len(list((storage / "snapshots").iterdir())) == 1
    weights = storage / "snapshots" / (storage / "refs" / "main").read_text()
    blob = (weights / "unet" / "diffusion_pytorch_model.safetensors").resolve()
    assert len(blob.name) == 64  # LFS files are stored under their sha256

    with pytest.raises(ValueError, match="repo_id"):
        install_in_hub_cache(folder, "not/a/repo", cache)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_single_file_round_trip(
    family: str,
    built: dict[str, tuple[DiffusionPipeline, np.ndarray]],
    tmp_path: Path,
    offline: None,
) -> None:
    pipe, image = built[family]
    checkpoint = save_single_file(pipe, tmp_path / f"tiny-{family}.safetensors")
    # The configs come from a folder whose own weights differ (another seed), so
    # every weight that matches came from the checkpoint.
    config = save_pipeline(build_pipeline(family, seed=1), tmp_path / "config")
    loaded = SINGLE_FILE[family].from_single_file(str(checkpoint), config=str(config))
    assert_same_pipeline(loaded, pipe, image, family)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_single_file_layout_converts_back_exactly(
    family: str, built: dict[str, tuple[DiffusionPipeline, np.ndarray]], tmp_path: Path
) -> None:
    """diffusers' own converters turn the checkpoint back into every weight."""
    pipe, _ = built[family]
    state = load_file(save_single_file(pipe, tmp_path / "tiny.safetensors"))
    assert set(ORIGINAL_KEYS[family]) <= state.keys()
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # a 1x1 conv
    for component, convert in (
        (pipe.unet, convert_ldm_unet_checkpoint),
        (pipe.vae, convert_ldm_vae_checkpoint),
    ):
        expected = component.state_dict()
        converted = convert(state, dict(component.config))
        assert converted.keys() == expected.keys()
        for key, tensor in expected.items():
            assert torch.equal(converted[key], tensor), key


def test_single_file_refuses_other_families(
    built: dict[str, tuple[DiffusionPipeline, np.ndarray]], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="FluxPipeline"):
        save_single_file(built["flux"][0], tmp_path / "flux.safetensors")


def test_unknown_hub_id_fails_fast_offline(tmp_path: Path, offline: None) -> None:
    started = time.monotonic()
    with pytest.raises(OSError, match="openletz-tests/no-such-model"):
        DiffusionPipeline.from_pretrained("openletz-tests/no-such-model", cache_dir=tmp_path)
    assert time.monotonic() - started < 2
