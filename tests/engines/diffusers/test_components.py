"""Registry models assembled from several sources: a base pipeline, and components
(a transformer published alone, say) that replace its own, from a local folder
or from the hub cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from openletz.cli import main
from openletz.engines.base import EngineError
from openletz.engines.diffusers import tiny
from openletz.engines.diffusers.availability import is_local
from openletz.engines.diffusers.engine import DiffusersEngine
from openletz.engines.diffusers.registry import Registry, RegistryError
from tests.engines.diffusers.conftest import write_registry
from tests.engines.diffusers.test_engine import request

STEPS = {"resolution": 64, "steps": [1, 2, 3, 4, 5], "guidance": [0.0, 1.5, 3.0, 3.0, 3.0]}


@pytest.fixture(scope="module")
def other_transformer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A PixArt-Σ transformer with other weights (seed 1), saved alone in the
    layout of the hub's PixArt-Sigma-XL-2-512-MS: a ``transformer/`` folder."""
    root = tmp_path_factory.mktemp("sigma-512")
    transformer = tiny.build_pipeline("pixart_sigma", seed=1).transformer
    transformer.save_pretrained(root / "transformer", safe_serialization=True)
    return root, {k: v.clone() for k, v in transformer.state_dict().items()}


def same_weights(module: torch.nn.Module, expected: dict[str, Any]) -> bool:
    state = module.state_dict()
    return state.keys() == expected.keys() and all(
        torch.equal(state[k], expected[k]) for k in expected
    )


def assembled(base: str, transformer: str, **component: Any) -> dict[str, Any]:
    return {
        "family": "pixart_sigma",
        "source": base,
        "components": {"transformer": {"source": transformer, **component}},
        **STEPS,
    }


def test_a_component_from_a_local_folder_replaces_the_pipelines_own(
    tiny_folders: dict[str, Path],
    tmp_path: Path,
    other_transformer: tuple[Path, dict[str, Any]],
) -> None:
    folder, weights = other_transformer
    extra = {
        "sigma-512": assembled(
            str(tiny_folders["pixart_sigma"]), str(folder), subfolder="transformer"
        )
    }
    registry = Registry.load(write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra))
    assert is_local(registry.get("sigma-512"))
    engine = DiffusersEngine(registry, device="cpu")
    pipe = engine.model("sigma-512").pipe
    assert same_weights(pipe.transformer, weights)
    # the rest is the base pipeline's, and the model makes images
    base = engine.model("pixart_sigma").pipe
    assert not same_weights(base.transformer, weights)
    assert same_weights(pipe.vae, base.vae.state_dict())
    image = engine.generate(request("pixart_sigma", base_model="sigma-512"), lambda u: None)
    assert image.size == (96, 64)


def without_transformer(folder: Path, into: Path) -> Path:
    """A copy of a PixArt-Σ pipeline folder without its transformer, whose
    model_index.json names the transformer's class by its old name, as the hub's
    pixart_sigma_sdxlvae_T5_diffusers does."""
    shutil.copytree(folder, into, ignore=shutil.ignore_patterns("transformer"))
    index_file = into / "model_index.json"
    index = json.loads(index_file.read_text())
    index["transformer"] = ["diffusers", "Transformer2DModel"]
    index_file.write_text(json.dumps(index))
    return into


def test_hub_ids_for_the_base_and_the_component_load_from_the_cache(
    tiny_folders: dict[str, Path],
    tmp_path: Path,
    offline_hub: Path,
    other_transformer: tuple[Path, dict[str, Any]],
) -> None:
    base = without_transformer(tiny_folders["pixart_sigma"], tmp_path / "base")
    tiny.install_in_hub_cache(base, "tiny-org/pixart-sigma-base", offline_hub)
    extra = {
        "sigma-512": assembled(
            "tiny-org/pixart-sigma-base", "tiny-org/pixart-sigma-512", subfolder="transformer"
        )
    }
    registry = Registry.load(write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra))
    resolved = registry.get("sigma-512")
    # the base alone is not the whole model
    assert not is_local(resolved)
    engine = DiffusersEngine(registry, device="cpu")
    with pytest.raises(EngineError) as info:
        engine.model("sigma-512")
    message = str(info.value)
    assert "its transformer (tiny-org/pixart-sigma-512/transformer)" in message
    assert "openletz models pull sigma-512" in message

    tiny.install_in_hub_cache(other_transformer[0], "tiny-org/pixart-sigma-512", offline_hub)
    assert is_local(resolved)
    engine = DiffusersEngine(registry, device="cpu")
    pipe = engine.model("sigma-512").pipe
    assert type(pipe.transformer).__name__ == "PixArtTransformer2DModel"
    assert same_weights(pipe.transformer, other_transformer[1])
    image = engine.generate(request("pixart_sigma", base_model="sigma-512"), lambda u: None)
    assert image.size == (96, 64)


def test_models_pull_fetches_the_base_without_the_replaced_component_and_then_it(
    tiny_folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers
    import huggingface_hub

    calls: list[tuple[str, str, dict[str, Any]]] = []
    monkeypatch.setattr(
        diffusers.DiffusionPipeline,
        "download",
        classmethod(lambda cls, repo, **kw: calls.append(("pipeline", repo, kw))),
    )
    monkeypatch.setattr(
        huggingface_hub,
        "snapshot_download",
        lambda repo, **kw: calls.append(("snapshot", repo, kw)),
    )
    extra = {
        "sigma-512": assembled(
            "tiny-org/pixart-sigma-base", "tiny-org/pixart-sigma-512", subfolder="transformer"
        )
    }
    registry = write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra)
    result = CliRunner().invoke(
        main, ["models", "pull", "sigma-512"], env={"OPENLETZ_MODELS_FILE": str(registry)}
    )
    assert result.exit_code == 0, result.output
    assert "pulling its transformer from tiny-org/pixart-sigma-512/transformer" in result.output
    (kind, repo, kwargs), (kind_2, repo_2, kwargs_2) = calls
    assert (kind, repo) == ("pipeline", "tiny-org/pixart-sigma-base")
    assert "transformer" in kwargs  # diffusers skips the folders of passed components
    assert (kind_2, repo_2) == ("snapshot", "tiny-org/pixart-sigma-512")
    assert all(p.startswith("transformer/") for p in kwargs_2["allow_patterns"])
    assert "transformer/*.safetensors" in kwargs_2["allow_patterns"]


def test_models_list_shows_both_sources(
    tiny_folders: dict[str, Path],
    tmp_path: Path,
    offline_hub: Path,
    other_transformer: tuple[Path, dict[str, Any]],
) -> None:
    extra = {
        "sigma-512": assembled(
            str(tiny_folders["pixart_sigma"]), "tiny-org/pixart-sigma-512", subfolder="transformer"
        )
    }
    registry = write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra)

    def listed() -> list[str]:
        result = CliRunner().invoke(
            main, ["models", "list"], env={"OPENLETZ_MODELS_FILE": str(registry)}
        )
        assert result.exit_code == 0, result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("sigma-512 ")]
        return line.split()

    line = listed()
    assert line[2] == "missing"
    assert "transformer from tiny-org/pixart-sigma-512/transformer" in " ".join(line)
    tiny.install_in_hub_cache(other_transformer[0], "tiny-org/pixart-sigma-512", offline_hub)
    assert listed()[2] == "local"


def test_models_check_loads_an_assembled_model(
    tiny_folders: dict[str, Path],
    tmp_path: Path,
    offline_hub: Path,
    other_transformer: tuple[Path, dict[str, Any]],
) -> None:
    extra = {
        "sigma-512": assembled(
            str(tiny_folders["pixart_sigma"]), str(other_transformer[0]), subfolder="transformer"
        )
    }
    registry = write_registry(tmp_path / "m.yaml", tiny_folders, extra=extra)
    result = CliRunner().invoke(
        main, ["models", "check", "sigma-512"], env={"OPENLETZ_MODELS_FILE": str(registry)}
    )
    assert result.exit_code == 0, result.output
    assert "sigma-512: ok (520x520 on cpu)" in result.output


def test_components_are_checked_when_the_registry_loads(
    tiny_folders: dict[str, Path], tmp_path: Path
) -> None:
    bad = assembled("a/b", "c/d")
    bad["components"]["unet"] = bad["components"].pop("transformer")
    with pytest.raises(RegistryError, match="unet is not a component of a pixart_sigma"):
        Registry.load(write_registry(tmp_path / "m.yaml", tiny_folders, extra={"x": bad}))
    single = assembled("a/b", "/models/transformer.safetensors")
    with pytest.raises(RegistryError, match="not a single checkpoint file"):
        Registry.load(write_registry(tmp_path / "m.yaml", tiny_folders, extra={"x": single}))


def test_the_shipped_512_sigma_model_takes_its_transformer_from_the_512_repository() -> None:
    resolved = Registry.load().resolve(2, "sigma")
    assert resolved.source.location == "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"
    (component,) = resolved.components
    assert component.name == "transformer"
    assert component.location == "PixArt-alpha/PixArt-Sigma-XL-2-512-MS"
    assert component.subfolder == "transformer"
