"""openletz models list | check | pull, on a registry of tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from openletz.cli import main
from tests.engines.diffusers.conftest import MISSING_MODEL, write_registry

GONE = {"gone": MISSING_MODEL}


@pytest.fixture
def registry(tiny_folders: dict[str, Path], tmp_path: Path) -> Path:
    return write_registry(tmp_path / "models.yaml", tiny_folders, extra=GONE)


def run(registry: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["models", *args], env={"OPENLETZ_MODELS_FILE": str(registry)}
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_list_shows_family_slots_and_whether_local(registry: Path, offline_hub: Path) -> None:
    code, out = run(registry, "list")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines["sd"][1:4] == ["sd", "yes", "2/default,2/turbo"]
    assert lines["gone"][1:4] == ["sd", "no", "-"]


def test_check_loads_and_generates_with_each_model(registry: Path, offline_hub: Path) -> None:
    code, out = run(registry, "check", "sd", "pixart_sigma")
    assert code == 0, out
    assert "sd: ok (520x520 on cpu)" in out
    assert "pixart_sigma: ok" in out


def test_check_reports_a_broken_model_and_fails(registry: Path, offline_hub: Path) -> None:
    code, out = run(registry, "check", "gone", "sd")
    assert code == 1
    assert "gone: broken: The model 'gone' (nobody/no-such-model) could not be loaded" in out
    assert "sd: ok" in out
    assert "1 model(s) could not be used" in out
    assert "Traceback" not in out


def test_pull_skips_local_models_and_fails_cleanly_offline(
    registry: Path, offline_hub: Path
) -> None:
    code, out = run(registry, "pull", "sd")
    assert code == 0
    assert "sd: local" in out
    code, out = run(registry, "pull", "gone")
    assert code == 1
    assert "gone: failed:" in out
    assert "Traceback" not in out


def test_unknown_names_are_refused(registry: Path) -> None:
    code, out = run(registry, "check", "midjourney")
    assert code == 1
    assert "no model named midjourney" in out
