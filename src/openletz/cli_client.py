"""``openletz generate`` and ``openletz images``: the SDK on the command line.

They speak to any server of the LetzAI API: openletz, or the hosted LetzAI with
``--base-url https://api.letz.ai``. Like the SDK, they need only httpx,
pydantic and click. Every failure ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from openletz.client import (
    DEFAULT_BASE_URL,
    Client,
    Image,
    OpenLetzError,
    Progress,
    WaitTimeoutError,
)
from openletz.client._config import API_KEY_VARS, BASE_URL_VARS

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(fn: F) -> F:
    """``--base-url`` and ``--key``, from the environment when not given."""
    fn = click.option(
        "--key",
        envvar=list(API_KEY_VARS),
        show_envvar=True,
        help="The API key.",
    )(fn)
    return click.option(
        "--base-url",
        envvar=list(BASE_URL_VARS),
        show_envvar=True,
        help=f"The API's base URL (default {DEFAULT_BASE_URL}; the hosted LetzAI: "
        "https://api.letz.ai).",
    )(fn)


@contextlib.contextmanager
def _client(base_url: str | None, key: str | None) -> Iterator[Client]:
    """A client whose every failure, and every failure to write a file, is one line."""
    if not key:
        raise click.ClickException(
            f"no API key: pass --key or set {API_KEY_VARS[0]} (or {API_KEY_VARS[1]})"
        )
    try:
        with Client(key, base_url=base_url) as client:
            yield client
    except (OpenLetzError, ValueError) as exc:
        raise click.ClickException(_one_line(str(exc))) from None
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise click.ClickException(
            _one_line(f"cannot write{where}: {exc.strerror or exc}")
        ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class ProgressLine:
    """Status, a bar, percent and elapsed time on one line of ``stream``, redrawn in
    place on a terminal (where a clock keeps the time moving between polls), and
    a plain line per change elsewhere."""

    WIDTH = 24

    def __init__(self, stream: IO[str], tty: bool) -> None:
        self._stream = stream
        self._tty = tty
        self._last: Progress | None = None
        self._printed: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clock: threading.Thread | None = None
        self._offset = 0.0

    def update(self, progress: Progress) -> None:
        with self._lock:
            self._last = progress
            self._offset = 0.0
            if self._tty:
                self._draw(progress.elapsed)
            elif self._printed != (progress.status.value, progress.progress):
                self._printed = (progress.status.value, progress.progress)
                self._stream.write(self._line(progress, progress.elapsed) + "\n")
                self._stream.flush()
        if self._tty and self._clock is None:
            self._clock = threading.Thread(target=self._tick, daemon=True)
            self._clock.start()

    def close(self) -> None:
        self._stop.set()
        if self._clock is not None:
            self._clock.join()
        with self._lock:
            if self._tty and self._last is not None:
                self._stream.write("\n")
                self._stream.flush()
            self._last = None

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                if self._last is not None and not self._stop.is_set():
                    self._offset += 0.5
                    self._draw(self._last.elapsed + self._offset)

    def _draw(self, elapsed: float) -> None:
        assert self._last is not None
        self._stream.write("\r" + self._line(self._last, elapsed) + "\x1b[K")
        self._stream.flush()

    def _line(self, progress: Progress, elapsed: float) -> str:
        done = self.WIDTH * progress.progress // 100
        bar = "#" * done + "." * (self.WIDTH - done)
        return f"{progress.status.value:<11} [{bar}] {progress.progress:3d}%  {_elapsed(elapsed)}"


@click.command()
@click.argument("prompt")
@click.option("--width", type=int, help="Width in pixels (the server's default: 1600).")
@click.option("--height", type=int, help="Height in pixels (the server's default: 1600).")
@click.option("--quality", type=int, help="1 to 5: more steps, slower and finer.")
@click.option("--creativity", type=int, help="1 to 5: higher follows the prompt more loosely.")
@click.option("--mode", type=click.Choice(["default", "sigma", "turbo"]), help="Speed or quality.")
@click.option("--system-version", type=click.Choice(["2", "3"]), help="The model generation.")
@click.option(
    "--watermark/--no-watermark",
    default=None,
    help="A visible mark on the image (the server's default: yes).",
)
@click.option(
    "--seed", type=int, help="The same seed and parameters give the same image (openletz)."
)
@click.option("--base-model", help="A model of the server's registry, by name.")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="The file to write, or a folder to write <id>.<ext> into.",
)
@click.option(
    "--version", "version", default="original", show_default=True, help="The version to save."
)
@click.option("--no-wait", is_flag=True, help="Print the image's id at once and do not wait.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="Seconds to wait at most (0: no limit).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Seconds between polls.",
)
@connection_options
def generate(
    prompt: str,
    width: int | None,
    height: int | None,
    quality: int | None,
    creativity: int | None,
    mode: Any,
    system_version: str | None,
    watermark: bool | None,
    seed: int | None,
    base_model: str | None,
    out: Path,
    version: str,
    no_wait: bool,
    timeout: float,
    poll_interval: float,
    base_url: str | None,
    key: str | None,
) -> None:
    """Make an image from PROMPT, show its progress and save it.

    Prints the path of the saved file. Ctrl-C interrupts the image on the server.
    """
    with _client(base_url, key) as client:
        image = client.create(
            prompt,
            width=width,
            height=height,
            quality=quality,
            creativity=creativity,
            has_watermark=watermark,
            system_version=int(system_version) if system_version else None,
            mode=mode,
            seed=seed,
            base_model=base_model,
        )
        if no_wait:
            click.echo(image.id)
            return
        engine = " on the sandbox engine (not a model)" if image.sandbox else ""
        click.echo(f"image {image.id}{engine}", err=True)
        ready = _wait(client, image, timeout, poll_interval)
        try:
            saved = client.download(ready, version, path=out)
        except OSError as exc:
            raise click.ClickException(
                _one_line(
                    f"image {ready.id} is ready but could not be saved to {out}: "
                    f"{exc.strerror or exc} (openletz images download {ready.id} --out ...)"
                )
            ) from None
        click.echo(str(saved))


def _wait(client: Client, image: Image, timeout: float, poll_interval: float) -> Image:
    line = ProgressLine(sys.stderr, sys.stderr.isatty())
    try:
        return client.wait(
            image, timeout=timeout or None, poll_interval=poll_interval, on_progress=line.update
        )
    except KeyboardInterrupt:
        line.close()
        try:
            client.interrupt(image)
        except OpenLetzError as exc:
            raise click.ClickException(
                _one_line(f"stopped waiting; image {image.id} could not be interrupted: {exc}")
            ) from None
        click.echo(f"interrupted image {image.id}", err=True)
        raise click.exceptions.Exit(130) from None
    except WaitTimeoutError as exc:
        raise click.ClickException(
            f"{exc}; it goes on on the server (openletz images get {image.id})"
        ) from None
    finally:
        line.close()


@click.group()
def images() -> None:
    """List, read, download, interrupt, share and delete images."""


@images.command("list")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--limit", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--oldest-first", is_flag=True, help="Oldest first (default: newest).")
@click.option("--json", "as_json", is_flag=True, help="The image objects as JSON.")
@connection_options
def images_list(
    page: int, limit: int, oldest_first: bool, as_json: bool, base_url: str | None, key: str | None
) -> None:
    """Your images, newest first."""
    with _client(base_url, key) as client:
        found = client.list(page=page, limit=limit, sort_order="ASC" if oldest_first else "DESC")
    if as_json:
        click.echo(json.dumps([i.to_api() for i in found], indent=2))
        return
    if not found:
        click.echo("no images", err=True)
        return
    click.echo(f"{'ID':<36}  {'STATUS':<11} {'PROG':>4}  {'SIZE':<9}  {'CREATED':<19}  PROMPT")
    for i in found:
        size = f"{i.width}x{i.height}" if i.width and i.height else "-"
        created = f"{i.created_at:%Y-%m-%d %H:%M:%S}" if i.created_at else "-"
        prompt = _one_line(i.prompt)
        prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
        click.echo(
            f"{i.id:<36}  {i.status.value:<11} {i.progress:>3}%  {size:<9}  {created:<19}  {prompt}"
        )


@images.command("get")
@click.argument("image_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The image object as JSON.")
@connection_options
def images_get(image_id: str, as_json: bool, base_url: str | None, key: str | None) -> None:
    """An image's status, parameters and version URLs."""
    with _client(base_url, key) as client:
        image = client.get(image_id)
    if as_json:
        click.echo(json.dumps(image.to_api(), indent=2))
        return
    rows: list[tuple[str, Any]] = [
        ("id", image.id),
        ("status", f"{image.status.value} ({image.progress}%)"),
        ("message", image.progress_message),
        ("prompt", _one_line(image.prompt)),
        ("size", f"{image.width}x{image.height}" if image.width and image.height else None),
        ("quality", image.quality),
        ("creativity", image.creativity),
        ("mode", image.mode),
        ("system", image.system_version),
        ("seed", image.seed),
        ("model", image.base_model),
        ("engine", image.engine),
        (
            "watermark",
            None if image.has_watermark is None else "yes" if image.has_watermark else "no",
        ),
        ("privacy", image.privacy),
        ("created", image.created_at.isoformat() if image.created_at else None),
        *image.image_versions.items(),
    ]
    for name, value in rows:
        if value is not None:
            click.echo(f"{name + ':':<11} {value}")


@images.command("download")
@click.argument("image_id", metavar="ID")
@click.option("--version", "version", default="original", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="The file to write, or a folder to write <id>.<ext> into.",
)
@click.option(
    "--fallback", is_flag=True, help="Take the largest version there is if VERSION is not."
)
@connection_options
def images_download(
    image_id: str,
    version: str,
    out: Path,
    fallback: bool,
    base_url: str | None,
    key: str | None,
) -> None:
    """Save a version of a ready image and print the file's path."""
    with _client(base_url, key) as client:
        click.echo(str(client.download(image_id, version, path=out, fallback=fallback)))


@images.command("interrupt")
@click.argument("image_id", metavar="ID")
@connection_options
def images_interrupt(image_id: str, base_url: str | None, key: str | None) -> None:
    """Stop a generation (a queued one never starts)."""
    with _client(base_url, key) as client:
        client.interrupt(image_id)
    click.echo(f"interrupted image {image_id}")


@images.command("privacy")
@click.argument("image_id", metavar="ID")
@click.argument("privacy", type=click.Choice(["public", "private"]))
@connection_options
def images_privacy(image_id: str, privacy: Any, base_url: str | None, key: str | None) -> None:
    """Make an image public (anyone with its id may read it) or private."""
    with _client(base_url, key) as client:
        image = client.set_privacy(image_id, privacy)
    click.echo(f"image {image.id} is {image.privacy}")


@images.command("delete")
@click.argument("image_id", metavar="ID")
@connection_options
def images_delete(image_id: str, base_url: str | None, key: str | None) -> None:
    """Delete an image and its files (a running generation is stopped)."""
    with _client(base_url, key) as client:
        client.delete(image_id)
    click.echo(f"deleted image {image_id}")


def register(main: click.Group) -> None:
    main.add_command(generate)
    main.add_command(images)
