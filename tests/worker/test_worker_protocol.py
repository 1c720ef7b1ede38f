from __future__ import annotations

import pytest

from openletz.worker.protocol import (
    Done,
    Free,
    Hello,
    Interrupt,
    Message,
    Progress,
    Run,
    decode,
    encode,
)

JOB = "3f0c7e1a-5b2d-4c8e-9f10-2a3b4c5d6e7f"

MESSAGES: list[Message] = [
    Run(JOB),
    Interrupt(JOB),
    Hello(owner="host:1234:abcd", engine="sandbox"),
    Progress(JOB, 0),
    Progress(JOB, 42, None),
    Progress(JOB, 57, bytes(range(256))),
    Progress(JOB, 100, b"\n\r\n\x00\xff" * 50),
    Progress(JOB, 1, b""),
    Free(JOB),
    Free(JOB, ("a-mate", "another")),
    Done(JOB, "ready"),
    Done(JOB, "skipped"),
    Hello(owner='wörker\n"quoted"', engine="diffusers"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: f"{m.kind}")
def test_round_trip(msg: Message) -> None:
    line = encode(msg)
    back = decode(line)
    assert back == msg
    assert type(back) is type(msg)


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: f"{m.kind}")
def test_one_line_per_message(msg: Message) -> None:
    line = encode(msg)
    assert isinstance(line, bytes)
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    assert b"\r" not in line


def test_binary_preview_survives() -> None:
    preview = bytes(range(256))
    back = decode(encode(Progress(JOB, 57, preview)))
    assert isinstance(back, Progress)
    assert back.preview == preview
    assert back.progress == 57
    assert back.job == JOB


def test_every_message_type_is_covered() -> None:
    assert {type(m) for m in MESSAGES} == {Run, Interrupt, Hello, Progress, Free, Done}


def test_kind_is_on_the_wire() -> None:
    import orjson

    for msg in MESSAGES:
        assert orjson.loads(encode(msg))["kind"] == msg.kind
    assert {m.kind for m in MESSAGES} == {
        "run",
        "interrupt",
        "hello",
        "progress",
        "free",
        "done",
    }


def test_decode_without_trailing_newline() -> None:
    assert decode(encode(Run(JOB)).rstrip(b"\n")) == Run(JOB)


def test_lines_split_back_into_messages() -> None:
    stream = b"".join(encode(m) for m in MESSAGES)
    lines = stream.splitlines(keepends=True)
    assert [decode(line) for line in lines] == MESSAGES


@pytest.mark.parametrize(
    "line",
    [b"not json\n", b'{"kind": "nope", "job": "x"}\n', b'{"job": "x"}\n'],
)
def test_malformed_lines_raise(line: bytes) -> None:
    # The dispatcher treats ValueError and KeyError as a malformed message.
    with pytest.raises((ValueError, KeyError)):
        decode(line)
