"""Messages between an embedded worker process and the API process that started it.

One JSON object per line: commands on the worker's stdin, events on its stdout
(its logs go to stderr). Small typed classes, so both sides agree on the shape.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import orjson


@dataclass(frozen=True, slots=True)
class Run:
    job: str
    kind: ClassVar[str] = "run"


@dataclass(frozen=True, slots=True)
class Interrupt:
    job: str
    kind: ClassVar[str] = "interrupt"


@dataclass(frozen=True, slots=True)
class Hello:
    """The worker is up and idle; ``owner`` is the name it claims jobs under. A worker
    is sent one job at a time (the next once it says :class:`Free`); to batch, it
    claims compatible waiting jobs itself."""

    owner: str
    engine: str
    kind: ClassVar[str] = "hello"


@dataclass(frozen=True, slots=True)
class ModelState:
    """A model of the worker's engine is ``missing``, ``local``, ``loading``, ``ready``,
    ``broken`` (``detail``: why) or ``unloaded``. Each model's state is sent once after
    the engine loads, then each change."""

    model: str
    state: str
    detail: str | None = None
    kind: ClassVar[str] = "model"


@dataclass(frozen=True, slots=True)
class Progress:
    job: str
    progress: int
    preview: bytes | None = None
    kind: ClassVar[str] = "progress"


@dataclass(frozen=True, slots=True)
class Free:
    """The engine is free for another job: the engine call of ``job`` (the job the
    worker was sent) is over, or it was not claimed, and the deliveries under way
    leave room for the next. Sent once per :class:`Run`; the job itself may still be
    delivering, until its :class:`Done`. ``batch`` are the other jobs it took into
    that call (or tried to: they are taken, or ended), which need no sending."""

    job: str
    batch: tuple[str, ...] = ()
    kind: ClassVar[str] = "free"


@dataclass(frozen=True, slots=True)
class Done:
    """A job's run is over: ``status`` is its end ("ready", "failed", "interrupted";
    "lost": its lease passed to another; "skipped": the claim found it taken,
    finished or interrupted; "error": its end could not be recorded, and recovery
    retries it when its lease runs out). Jobs other than the one the worker was sent
    are those it claimed itself, for a batch."""

    job: str
    status: str
    kind: ClassVar[str] = "done"


Message = Run | Interrupt | Hello | ModelState | Progress | Free | Done
_KINDS: dict[str, type[Message]] = {
    c.kind: c for c in (Run, Interrupt, Hello, ModelState, Progress, Free, Done)
}


def encode(msg: Message) -> bytes:
    body: dict[str, Any] = asdict(msg)
    body["kind"] = msg.kind
    if isinstance(msg, Progress) and msg.preview is not None:
        body["preview"] = base64.b64encode(msg.preview).decode()
    return orjson.dumps(body) + b"\n"


def decode(line: bytes) -> Message:
    body = orjson.loads(line)
    cls = _KINDS[body.pop("kind")]
    if cls is Progress and body.get("preview") is not None:
        body["preview"] = base64.b64decode(body["preview"])
    if cls is Free:
        body["batch"] = tuple(body.get("batch", ()))
    return cls(**body)
