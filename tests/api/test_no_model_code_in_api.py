"""Model code never loads in the API process, whatever the engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import asyncio, sys
from openletz.api.app import create_app
from openletz.settings import Settings

async def main():
    app = create_app(Settings())
    async with app.router.lifespan_context(app):
        pass
    heavy = sorted(m for m in sys.modules
                   if m.split(".")[0] in ("torch", "diffusers", "transformers", "accelerate"))
    print(",".join(heavy) or "none")

asyncio.run(main())
"""


@pytest.mark.parametrize("engine", ["auto", "diffusers", "sandbox"])
def test_api_process_imports_no_model_code(tmp_path: Path, engine: str) -> None:
    env = {
        "OPENLETZ_DATA_DIR": str(tmp_path),
        "OPENLETZ_ENGINE": engine,
        "OPENLETZ_LOG_LEVEL": "ERROR",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "none"
