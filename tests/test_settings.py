from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from openletz.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_doc_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc.endswith(Settings.reference()), "run scripts/gen-config-doc"


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(ValidationError, match="OPENLETZ_SECRET_KEY must be set"):
        Settings(environment="production")
    Settings(environment="production", secret_key="s3cret-of-the-operator")


def test_heartbeat_must_fit_in_the_lease() -> None:
    with pytest.raises(ValidationError, match="heartbeat_s"):
        Settings(lease_s=4, heartbeat_s=3)


@pytest.mark.parametrize("engine", ["auto", "sandbox", "diffusers", "my_pkg.engines:make"])
def test_engine_names(engine: str) -> None:
    assert Settings(engine=engine).engine == engine


@pytest.mark.parametrize("engine", ["", "gpu", "os.system('x')", "a:b:c"])
def test_bad_engine_names(engine: str) -> None:
    with pytest.raises(ValidationError):
        Settings(engine=engine)


def test_config_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "openletz.yaml"
    config.write_text("workers: 3\nport: 9001\n")
    monkeypatch.setenv("OPENLETZ_CONFIG", str(config))
    monkeypatch.setenv("OPENLETZ_PORT", "9002")
    settings = Settings()
    assert settings.workers == 3
    assert settings.port == 9002  # the environment wins over the file
    assert settings.resolved_public_base_url == "http://127.0.0.1:9002"


def test_defaults_are_the_embedded_setup(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'openletz.db'}"
    assert settings.blob_dir == tmp_path / "images"
    assert Settings(host="0.0.0.0", port=80).resolved_public_base_url == "http://127.0.0.1:80"
