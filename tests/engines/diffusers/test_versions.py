"""The dtype keyword: the declared minimum versions take ``dtype=``, an older
install is refused with a clear reason, and weights load in the dtype asked for."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch

from openletz.engines.diffusers import availability
from openletz.engines.diffusers.families import FAMILIES
from openletz.engines.diffusers.loading import load_pipeline
from openletz.engines.diffusers.registry import Registry

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def declared_minimum(package: str) -> tuple[int, int]:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for requirement in extras["diffusers"]:
        found = re.fullmatch(rf"{package}>=(\d+)\.(\d+)(\.\d+)?", requirement)
        if found:
            return int(found[1]), int(found[2])
    raise AssertionError(f"no {package}>= requirement in the diffusers extra")


@pytest.mark.parametrize("package", ["diffusers", "transformers"])
def test_the_declared_minimum_takes_the_dtype_keyword(package: str) -> None:
    # diffusers 0.40 is the first whose from_pretrained and from_single_file
    # take `dtype=` (0.39 ignores it and loads float32); transformers 4.56 the
    # first that takes it instead of `torch_dtype`.
    assert declared_minimum(package) >= availability.MINIMUM_VERSIONS[package]
    assert availability.MINIMUM_VERSIONS == {"diffusers": (0, 40), "transformers": (4, 56)}


def test_an_older_install_is_named_as_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version
    monkeypatch.setattr(
        metadata, "version", lambda name: "0.35.2" if name == "diffusers" else real(name)
    )
    reason = availability.installed()
    assert reason is not None
    assert "diffusers 0.35.2 (needs >= 0.40)" in reason


def test_weights_load_in_the_dtype_asked_for(tiny_registry: Path) -> None:
    resolved = Registry.load(tiny_registry).get("sdxl")
    pipe = load_pipeline(
        resolved, FAMILIES["sdxl"], device=torch.device("cpu"), dtype=torch.bfloat16
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert getattr(pipe, name).dtype == torch.bfloat16, name
