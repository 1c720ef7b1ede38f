"""openletz models list | check | pull, on a registry of tiny models."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


def test_list_shows_family_state_and_slots(registry: Path, offline_hub: Path) -> None:
    code, out = run(registry, "list")
    assert code == 0
    assert out.splitlines()[1].split() == ["MODEL", "FAMILY", "STATE", "SLOTS", "SOURCE"]
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines["sd"][1:4] == ["sd", "local", "2/default,2/turbo"]
    assert lines["gone"][1:4] == ["sd", "missing", "-"]


class FakeServer:
    """An HTTP server on loopback that answers GET /health with ``health``."""

    def __init__(self, health: dict[str, Any]) -> None:
        body = json.dumps(health).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = self.path == "/health"
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body if found else b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def health(models: dict[str, Any] | None, engine: str = "diffusers") -> dict[str, Any]:
    dispatcher: dict[str, Any] = {"name": "embedded", "workers": 1}
    if models is not None:
        dispatcher["models"] = models
    return {"status": "ok", "engine": {"name": engine, "reason": "why"}, "dispatcher": dispatcher}


def test_list_with_a_server_shows_its_workers_states(registry: Path, offline_hub: Path) -> None:
    models = {
        "sd": {"state": "ready", "detail": None},
        "sdxl": {"state": "loading", "detail": None},
        "flux": {"state": "unloaded", "detail": None},
        "gone": {"state": "broken", "detail": "The model 'gone' could not be loaded: offline."},
    }
    with FakeServer(health(models)) as url:
        code, out = run(registry, "list", "--server", url + "/")
    assert code == 0, out
    rows = [line.split() for line in out.splitlines()[2:] if not line.startswith(("broken", " "))]
    states = {row[0]: row[2] for row in rows}
    assert states["sd"] == "ready"
    assert states["sdxl"] == "loading"
    assert states["flux"] == "local"  # unloaded in the worker: on disk
    assert states["pixart_sigma"] == "local"  # no worker touched it
    assert states["gone"] == "broken"
    assert "broken:\n  gone: The model 'gone' could not be loaded: offline." in out


def test_list_with_a_server_shows_the_aggregate_and_each_worker(
    registry: Path, offline_hub: Path
) -> None:
    def each(**states: str) -> dict[str, Any]:
        return {w: {"state": s, "detail": None} for w, s in states.items()}

    models = {
        "sd": {"state": "ready", "detail": None, "workers": each(a="local", b="ready")},
        "sdxl": {"state": "missing", "detail": None, "workers": each(a="missing", b="missing")},
        "flux": {"state": "local", "detail": None, "workers": each(a="local", b="unloaded")},
    }
    body = health(models)
    body["dispatcher"] = {
        "name": "celery",
        "workers": [
            {"name": "a", "queues": ["openletz.sd"], "engine": "diffusers", "age": 1.0},
            {"name": "b", "queues": ["openletz.sd", "openletz.flux"], "engine": "diffusers"},
        ],
        "models": models,
    }
    with FakeServer(body) as url:
        code, out = run(registry, "list", "--server", url)
    assert code == 0, out
    assert "note: the server's workers: a (openletz.sd), b (openletz.sd, openletz.flux)" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("MODEL"))
    rows = {r[0]: r for r in (line.split() for line in lines[header + 1 :]) if len(r) >= 5}
    assert rows["sd"][2] == "ready"
    assert rows["sdxl"][2] == "missing"  # the workers' machines lack it, whatever this one has
    assert rows["flux"][2] == "local"
    assert rows["pixart_sigma"][2] == "local"  # not reported: this machine's view
    each_worker = out.split("in each worker:\n", 1)[1].splitlines()
    assert sorted(each_worker) == [
        "  flux: a local, b unloaded",
        "  sd: a local, b ready",
        "  sdxl: a missing, b missing",
    ]


def test_list_with_a_server_says_what_it_cannot_tell(registry: Path, offline_hub: Path) -> None:
    with FakeServer(health(None, engine="sandbox")) as url:
        code, out = run(registry, "list", "--server", url)
    assert code == 0
    assert f"note: the server at {url} runs the sandbox engine (why)" in out
    with FakeServer(health(None)) as url:
        code, out = run(registry, "list", "--server", url)
    assert code == 0
    assert "does not report its workers' models (dispatcher embedded);" in out
    body = health(None)
    body["dispatcher"]["name"] = "celery"
    with FakeServer(body) as url:
        code, out = run(registry, "list", "--server", url)
    assert code == 0
    assert "(dispatcher celery) (its workers publish them through Redis" in out
    code, out = run(registry, "list", "--server", "http://127.0.0.1:9")
    assert code == 1
    assert "cannot read http://127.0.0.1:9/health" in out
    assert "Traceback" not in out


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
