from __future__ import annotations

from pathlib import Path

from openletz.engines.factory import choose_engine
from openletz.settings import Settings


def _registry(path: Path, source: str) -> Path:
    path.write_text(
        f"models: {{m: {{family: sd, source: '{source}', resolution: 64,"
        " steps: [1,1,1,1,1], guidance: [0,0,0,0,0]}}\nslots: {3: {default: m}}\n"
    )
    return path


def test_auto_picks_diffusers_when_a_model_is_local(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    choice = choose_engine(Settings(models_file=str(_registry(tmp_path / "r.yaml", str(folder)))))
    assert choice.name == "diffusers"
    assert "m" in choice.reason


def test_auto_falls_back_to_the_sandbox_and_says_why(tmp_path: Path) -> None:
    registry = _registry(tmp_path / "r.yaml", str(tmp_path / "not-there"))
    choice = choose_engine(Settings(models_file=str(registry)))
    assert choice.name == "sandbox"
    assert "openletz models pull" in choice.reason
    assert str(registry) in choice.reason


def test_explicit_choices_are_kept(tmp_path: Path) -> None:
    assert choose_engine(Settings(engine="sandbox")).name == "sandbox"
    assert choose_engine(Settings(engine="diffusers")).name == "diffusers"
    assert choose_engine(Settings(engine="pkg.mod:make")).name == "pkg.mod:make"
