from __future__ import annotations

import os
from pathlib import Path

import pytest

from openletz.engines.factory import choose_engine, cpu_share
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


@pytest.mark.parametrize(
    ("cores", "workers", "dispatcher", "threads"),
    [
        (2, 1, "embedded", 1),  # one core stays for the API process
        (16, 1, "embedded", 15),
        (16, 2, "embedded", 7),  # the workers of one machine share its cores
        (16, 4, "celery", 15),  # a cluster worker is the only one on its machine
        (1, 3, "embedded", 1),  # never fewer than one thread
    ],
)
def test_cpu_threads_default_to_a_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, dispatcher: str, threads: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    settings = Settings(workers=workers, dispatcher=dispatcher)
    assert cpu_share(settings) == threads
