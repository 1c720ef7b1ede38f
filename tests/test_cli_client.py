"""``openletz generate`` and ``openletz images``, in-process, in an isolated home.

Most run against the session's server; the hosted API's shapes and the failures a
server cannot easily be made to show go through httpx's mock transport.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from PIL import Image as PILImage

from openletz import cli_client
from openletz.cli import main
from openletz.client import Client, ImageStatus, Progress
from openletz.client._models import Image
from tests._server import Server, free_port

Invoke = Callable[..., Result]
_CONNECTION_VARS = ("LETZAI_API_KEY", "OPENLETZ_API_KEY", "LETZAI_BASE_URL", "OPENLETZ_BASE_URL")


@pytest.fixture
def key(server: Server) -> str:
    return server.create_key(f"cli-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def env(tmp_path: Path, server: Server, key: str) -> dict[str, str | None]:
    home = tmp_path / "home"
    home.mkdir()
    return {
        "HOME": str(home),
        **dict.fromkeys(_CONNECTION_VARS),
        "LETZAI_BASE_URL": server.base_url,
        "LETZAI_API_KEY": key,
    }


@pytest.fixture
def cli(env: dict[str, str | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    runner = CliRunner()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def invoke(*args: str, **extra_env: str | None) -> Result:
        return runner.invoke(main, list(args), env={**env, **extra_env})

    return invoke


@pytest.fixture
def sdk(server: Server, key: str) -> Iterator[Client]:
    with Client(key, base_url=server.base_url) as client:
        yield client


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.exception is None
    return result


def failed_cleanly(result: Result) -> str:
    """Non-zero exit, no traceback, and one line of error on stderr (after the
    image's progress, for generate)."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    *before, last = result.stderr.strip().splitlines()
    assert last.startswith("Error: "), result.stderr
    for line in before:
        assert re.match(r"image \S+|(new|in progress|ready|failed) +\[[#.]+\] +\d+%", line), line
    return last.removeprefix("Error: ")


def size_of(path: Path) -> tuple[int, int]:
    with PILImage.open(path) as image:
        return image.size


def test_generate_shows_progress_and_saves_the_image(cli: Invoke, tmp_path: Path) -> None:
    out = tmp_path / "lighthouse.png"
    result = ok(
        cli(
            "generate",
            "a lighthouse at dusk",
            *("--width", "520", "--height", "600", "--quality", "1", "--seed", "5"),
            *("--no-watermark", "--mode", "turbo", "--system-version", "3"),
            *("--poll-interval", "0.05", "--out", str(out)),
        )
    )
    assert result.stdout == f"{out}\n"
    assert size_of(out) == (520, 600)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("image ")
    assert "sandbox engine" in lines[0]
    # Not a terminal: one plain line per change, no carriage returns.
    assert "\r" not in result.stderr
    assert lines[-1].startswith("ready ")
    assert "[########################] 100%" in lines[-1]
    assert any(line.startswith("in progress ") for line in lines), lines


def test_generate_into_a_folder_names_the_file_after_the_image(
    cli: Invoke, sdk: Client, tmp_path: Path
) -> None:
    result = ok(
        cli(
            "generate",
            "small",
            *("--width", "520", "--height", "520", "--quality", "1"),
            *("--poll-interval", "0.05", "--version", "240x240", "--out", str(tmp_path)),
        )
    )
    path = Path(result.stdout.strip())
    image_id = result.stderr.splitlines()[0].split()[1]
    assert path.parent == tmp_path
    assert path.name.startswith(f"{image_id}-240x240.")
    assert size_of(path) == (240, 240)
    assert sdk.get(image_id).is_ready


def test_generate_saves_into_the_current_folder_by_default(cli: Invoke) -> None:
    result = ok(
        cli("generate", "here", "--width", "520", "--height", "520", "--poll-interval", "0.05")
    )
    path = Path(result.stdout.strip())
    assert not path.is_absolute()
    assert path.exists()
    assert size_of(path) == (520, 520)


def test_generate_no_wait_and_the_images_commands(cli: Invoke, sdk: Client, tmp_path: Path) -> None:
    result = ok(cli("generate", "later", "--no-wait", "--width", "520", "--height", "640"))
    image_id = result.stdout.strip()
    assert result.stderr == ""
    sdk.wait(image_id, poll_interval=0.05)

    listing = ok(cli("images", "list")).stdout.splitlines()
    assert listing[0].split() == ["ID", "STATUS", "PROG", "SIZE", "CREATED", "PROMPT"]
    (row,) = [line for line in listing if line.startswith(image_id)]
    assert row.split()[1:4] == ["ready", "100%", "520x640"]
    assert row.endswith("later")
    listed = json.loads(ok(cli("images", "list", "--json", "--limit", "1")).stdout)
    assert [i["id"] for i in listed] == [image_id]

    shown = ok(cli("images", "get", image_id)).stdout
    assert f"id:         {image_id}\n" in shown
    assert "status:     ready (100%)\n" in shown
    assert "size:       520x640\n" in shown
    assert "original:   http" in shown
    body = json.loads(ok(cli("images", "get", image_id, "--json")).stdout)
    assert body["id"] == image_id
    assert body["imageVersions"]["640x640"].startswith("http")

    saved = ok(cli("images", "download", image_id, "--version", "640x640", "--out", str(tmp_path)))
    path = Path(saved.stdout.strip())
    assert path.parent == tmp_path
    assert size_of(path) == (520, 640)  # fits the box already

    assert (
        ok(cli("images", "privacy", image_id, "public")).stdout == f"image {image_id} is public\n"
    )
    assert sdk.get(image_id).privacy == "public"
    assert ok(cli("images", "privacy", image_id, "private")).stdout.endswith("is private\n")

    assert ok(cli("images", "delete", image_id)).stdout == f"deleted image {image_id}\n"
    assert failed_cleanly(cli("images", "get", image_id)) == (
        f"404 Not Found: image {image_id} not found"
    )


def test_images_interrupt(cli: Invoke, sdk: Client) -> None:
    image = sdk.create("stop", quality=5, width=520, height=520)
    assert ok(cli("images", "interrupt", image.id)).stdout == f"interrupted image {image.id}\n"
    stopped = sdk.wait(image, poll_interval=0.05, raise_on_failure=False)
    assert stopped.status is ImageStatus.INTERRUPTED
    message = failed_cleanly(cli("images", "download", image.id))
    assert message.startswith(f"image {image.id} is interrupted, not ready")


def test_ctrl_c_during_generate_interrupts_the_image(
    cli: Invoke, sdk: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wait(self: Client, image: Image | str, **kwargs: Any) -> Image:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "wait", wait)
    result = cli("generate", "never mind", "--quality", "5", "--width", "520", "--height", "520")
    assert result.exit_code == 130
    image_id = result.stderr.splitlines()[0].split()[1]
    assert result.stderr.splitlines()[-1] == f"interrupted image {image_id}"
    assert "Traceback" not in result.output
    monkeypatch.undo()
    stopped = sdk.wait(image_id, poll_interval=0.05, raise_on_failure=False)
    assert stopped.status is ImageStatus.INTERRUPTED


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("images", "get", "no-such-id"), "404 Not Found: image no-such-id not found"),
        (("images", "delete", "no-such-id"), "404 Not Found: image no-such-id not found"),
        (
            ("generate", "too wide", "--width", "5000"),
            "400 Bad Request: width must be an integer from 520 to 2160 (got 5000)",
        ),
    ],
)
def test_api_errors_are_one_line(cli: Invoke, args: tuple[str, ...], expected: str) -> None:
    assert failed_cleanly(cli(*args)) == expected


def test_bad_arguments_are_one_line(cli: Invoke) -> None:
    assert failed_cleanly(cli("images", "get", " ")) == (
        "an image id must be a non-empty string (got ' ')"
    )
    result = cli("generate", "p", "--poll-interval", "0")
    assert result.exit_code == 2
    assert "Invalid value for '--poll-interval'" in result.stderr
    assert "Traceback" not in result.output


def test_a_bad_key_is_one_line(cli: Invoke) -> None:
    message = failed_cleanly(cli("images", "list", "--key", "olz_wrong"))
    assert message.startswith("401 Unauthorized: ")


def test_no_key_names_the_variables(cli: Invoke, key: str, server: Server) -> None:
    message = failed_cleanly(cli("images", "list", LETZAI_API_KEY=None))
    assert message == "no API key: pass --key or set LETZAI_API_KEY (or OPENLETZ_API_KEY)"
    # The openletz names work as well, and the options beat the environment.
    openletz_env = {"LETZAI_API_KEY": None, "LETZAI_BASE_URL": None}
    openletz_env |= {"OPENLETZ_API_KEY": key, "OPENLETZ_BASE_URL": server.base_url}
    assert ok(cli("images", "list", "--json", **openletz_env)).stdout == "[]\n"
    assert ok(cli("images", "list", "--key", key, LETZAI_API_KEY="olz_wrong")).stderr == (
        "no images\n"
    )


def test_a_server_that_is_not_there(cli: Invoke) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("images", "list"), ("generate", "x"), ("images", "delete", "x")):
        message = failed_cleanly(cli(*args, "--base-url", url))
        assert message.startswith(f"cannot reach {url}: "), message


def test_a_bad_base_url(cli: Invoke) -> None:
    message = failed_cleanly(cli("images", "list", "--base-url", "api.letz.ai"))
    assert message == "the base URL must start with http:// or https:// (got 'api.letz.ai')"


def test_a_path_that_cannot_be_written(cli: Invoke, sdk: Client, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "x.png"
    message = failed_cleanly(
        cli(
            "generate",
            "p",
            "--width",
            "520",
            "--height",
            "520",
            "--poll-interval",
            "0.05",
            "--out",
            str(out),
        )
    )
    image_id = message.split()[1]
    assert message == (
        f"image {image_id} is ready but could not be saved to {out}: No such file or directory"
        f" (openletz images download {image_id} --out ...)"
    )
    assert sdk.get(image_id).is_ready
    message = failed_cleanly(cli("images", "download", image_id, "--out", str(out)))
    assert message.startswith("cannot write ")
    assert message.endswith(": No such file or directory")


# The hosted API's shapes, through a mock transport.

HOSTED = "https://api.letz.ai"


def hosted_image(**fields: Any) -> dict[str, Any]:
    return {
        "id": "h-1",
        "prompt": "p",
        "status": "new",
        "progress": 0,
        "previewImage": None,
        "hasWatermark": True,
        "privacy": "private",
        "createdAt": "2026-11-25T03:40:05.048Z",
        "imageVersions": {},
        "likes": 0,
        **fields,
    }


@pytest.fixture
def hosted(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Callable[[httpx.Request], httpx.Response]], None]:
    """Point the CLI's clients at a handler, and make waiting instant."""

    def use(handler: Callable[[httpx.Request], httpx.Response]) -> None:
        def make(key: str | None, *, base_url: str | None = None) -> Client:
            return Client(key, base_url=base_url, transport=httpx.MockTransport(handler))

        monkeypatch.setattr(cli_client, "Client", make)

    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr("openletz.client._client._sleep", sleep)
    monkeypatch.setattr("openletz.client._client._now", lambda: clock[0])
    return use


def test_generate_against_the_hosted_api(
    cli: Invoke, hosted: Callable[..., None], tmp_path: Path
) -> None:
    states = iter(
        [
            hosted_image(status="in progress", progress=50),
            hosted_image(
                status="ready", progress=100, imageVersions={"original": "https://cdn.test/h-1.jpg"}
            ),
        ]
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(201, json=hosted_image())
        if request.url.host == "api.letz.ai":
            return httpx.Response(200, json=next(states))
        return httpx.Response(200, content=b"JPEG", headers={"content-type": "image/jpeg"})

    hosted(handler)
    result = ok(cli("generate", "p", "--base-url", HOSTED, "--key", "letz", "--out", str(tmp_path)))
    assert result.stdout == f"{tmp_path / 'h-1.jpg'}\n"
    assert (tmp_path / "h-1.jpg").read_bytes() == b"JPEG"
    assert json.loads(seen[0].content) == {"prompt": "p"}
    assert seen[0].headers["authorization"] == "Bearer letz"
    assert "authorization" not in seen[-1].headers
    assert result.stderr.splitlines() == [
        "image h-1",
        "in progress [############............]  50%  0:00",
        "ready       [########################] 100%  0:03",
    ]


def test_a_failed_image_is_one_line(cli: Invoke, hosted: Callable[..., None]) -> None:
    failed = hosted_image(status="failed", progress=20, progressMessage="Not enough credits left")
    hosted(lambda r: httpx.Response(201 if r.method == "POST" else 200, json=failed))
    assert failed_cleanly(cli("generate", "p")) == "image h-1 failed: Not enough credits left"


def test_a_wait_that_times_out_says_where_the_image_is(
    cli: Invoke, hosted: Callable[..., None]
) -> None:
    running = hosted_image(status="in progress", progress=10)
    hosted(lambda r: httpx.Response(200, json=running))
    assert failed_cleanly(cli("generate", "p", "--timeout", "30")) == (
        "image h-1 still in progress (10%) after 30 s; it goes on on the server"
        " (openletz images get h-1)"
    )


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            httpx.Response(
                400,
                json={"statusCode": 400, "message": ["a", "b"], "error": "Bad Request"},
            ),
            "400 Bad Request: a; b",
        ),
        (
            httpx.Response(
                402, json={"statusCode": 402, "message": "No credits", "error": "Payment Required"}
            ),
            "402 Payment Required: No credits",
        ),
        (
            httpx.Response(429, headers={"Retry-After": "5"}, json={"message": "Slow down"}),
            "429 Too Many Requests: Slow down",
        ),
        (
            httpx.Response(500, text="upstream\nexploded"),
            "500 Internal Server Error: upstream exploded",
        ),
    ],
)
def test_hosted_errors_are_one_line(
    cli: Invoke, hosted: Callable[..., None], response: httpx.Response, expected: str
) -> None:
    hosted(lambda request: response)
    assert failed_cleanly(cli("generate", "p")) == expected


def test_the_progress_line_on_a_terminal() -> None:
    stream = io.StringIO()
    line = cli_client.ProgressLine(stream, tty=True)
    image = Image(id="x", status=ImageStatus.IN_PROGRESS, progress=25)
    line.update(Progress(image.status, 25, None, 61.0, image))
    line.update(Progress(image.status, 50, None, 64.0, image))
    line.close()
    out = stream.getvalue()
    assert out.startswith("\rin progress [######..................]  25%  1:01\x1b[K")
    assert "\rin progress [############............]  50%  1:04\x1b[K" in out
    assert out.endswith("\n")
    assert out.count("\n") == 1
