"""The SDK and its commands work with only httpx, pydantic and click installed.

A child process refuses every import of the server's modules and dependencies,
then uses the SDK and the CLI's client commands.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests._server import free_port

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = (
        "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "aiosqlite", "asyncpg",
        "pydantic_settings", "orjson", "yaml", "numpy", "PIL", "torch", "diffusers",
        "transformers", "redis", "celery", "boto3",
        "openletz.api", "openletz.settings", "openletz.db", "openletz.auth", "openletz.jobs",
        "openletz.engines", "openletz.worker", "openletz.dispatch", "openletz.storage",
        "openletz.imaging", "openletz.live",
    )


    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{name} is not installed here")
            return None


    sys.meta_path.insert(0, Refuse())

    import httpx
    from click.testing import CliRunner

    import openletz.client as sdk
    from openletz.cli import main

    image = {"id": "x", "status": "ready", "progress": 100,
             "imageVersions": {"original": "https://cdn.test/x.png"}}

    def handler(request):
        if request.url.host == "cdn.test":
            return httpx.Response(200, content=b"PNG", headers={"content-type": "image/png"})
        return httpx.Response(201 if request.method == "POST" else 200, json=image)

    with sdk.Client("k", base_url=sdk.HOSTED_BASE_URL, transport=httpx.MockTransport(handler)) as c:
        made = c.create("p")
        assert c.download(c.wait(made)) == b"PNG"

    runner = CliRunner()
    for args in (["generate", "--help"], ["images", "list", "--help"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["images", "list", "--key", "k", "--base-url", sys.argv[1]])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: cannot reach "), result.stderr
    # A server command says what is missing, in one line.
    result = runner.invoke(main, ["keys", "list"])
    assert result.exit_code == 1, result.output
    assert "pip install 'openletz[server]'" in result.stderr, result.stderr

    loaded = [m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED)]
    assert not loaded, loaded
    print("ok")
    """
)


def test_the_sdk_and_its_commands_need_no_server_dependencies() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, url], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
