"""Webhooks: the image object, POSTed to ``webhookUrl`` once the image has ended."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from openletz.api.webhooks import sign, verify
from tests._databases import create_postgres_database, drop_postgres_database
from tests._server import Server, free_port, wait_for


class Receiver:
    """An HTTP endpoint on loopback that records what it is sent and answers with
    the statuses it is given, in turn (the last one from then on)."""

    def __init__(self, statuses: tuple[int, ...] = (200,), port: int | None = None) -> None:
        self.statuses = list(statuses)
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = (
                        receiver.statuses.pop(0)
                        if len(receiver.statuses) > 1
                        else (receiver.statuses[0])
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body) for _, body in self.calls]

    def wait(self, count: int, timeout: float = 20.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.calls) >= count:
                    return list(self.calls)
            assert time.monotonic() < deadline, f"{len(self.calls)} of {count} deliveries"
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


# -- signatures -----------------------------------------------------------------------


def test_a_signature_verifies_only_the_body_it_signed() -> None:
    now = int(time.time())
    header = sign("s3cret", now, b'{"id": "x"}')
    assert header.startswith(f"t={now},v1=")
    assert verify("s3cret", header, b'{"id": "x"}')
    assert not verify("s3cret", header, b'{"id": "y"}')
    assert not verify("other", header, b'{"id": "x"}')
    assert not verify("s3cret", "v1=abc", b'{"id": "x"}')
    assert not verify("s3cret", "nonsense", b'{"id": "x"}')
    old = sign("s3cret", now - 3600, b"{}")
    assert not verify("s3cret", old, b"{}")


# -- through a real server ------------------------------------------------------------


def _post(client: httpx.Client, url: str, **fields: Any) -> str:
    resp = client.post(
        "/images", json={"prompt": "hooked", "quality": 1, "webhookUrl": url, **fields}
    )
    assert resp.status_code == 200, resp.text
    image_id: str = resp.json()["id"]
    return image_id


@pytest.mark.slow
def test_the_webhook_gets_the_image_object_once_ready(
    make_server: Callable[..., Server], receiver: Receiver
) -> None:
    server = make_server(sandbox_duration_s=0.3, webhook_secret="hook-secret").start()
    with server.client(server.create_key("hooked")) as client:
        image_id = _post(client, receiver.url)
        ready = wait_for(client, image_id)
        assert ready["status"] == "ready"
        ((headers, body),) = receiver.wait(1)
        sent = json.loads(body)
        polled = client.get(f"/images/{image_id}").json()
        assert sent.keys() == polled.keys()
        for key in sent.keys() - {"imageVersions"}:
            assert sent[key] == polled[key], key
        assert list(sent["imageVersions"]) == [
            "original",
            "1920x1920",
            "640x640",
            "240x240",
            "96x96",
        ]
        assert httpx.get(sent["imageVersions"]["original"]).status_code == 200
        assert headers["content-type"] == "application/json"
        assert headers["x-openletz-delivery"] == f"{image_id}/1"
        assert verify("hook-secret", headers["x-openletz-signature"], body)
        # Delivered is delivered: nothing more comes.
        time.sleep(1.5)
        assert len(receiver.calls) == 1


@pytest.mark.slow
def test_an_interrupted_image_is_sent_too_and_one_without_a_webhook_never(
    make_server: Callable[..., Server], receiver: Receiver
) -> None:
    server = make_server(sandbox_duration_s=30).start()
    with server.client(server.create_key("stopper")) as client:
        quiet = client.post("/images", json={"prompt": "no hook", "quality": 1}).json()["id"]
        image_id = _post(client, receiver.url)
        assert client.put(f"/images/{quiet}/interruption").status_code == 204
        assert client.put(f"/images/{image_id}/interruption").status_code == 204
        ((headers, body),) = receiver.wait(1)
        assert json.loads(body)["id"] == image_id
        assert json.loads(body)["status"] == "interrupted"
        assert "x-openletz-signature" not in headers  # no secret, no signature
        time.sleep(1.0)
        assert len(receiver.calls) == 1


@pytest.mark.slow
def test_a_failing_receiver_is_tried_again_until_it_answers(
    make_server: Callable[..., Server],
) -> None:
    receiver = Receiver(statuses=(500, 503, 204)).start()
    try:
        server = make_server(
            sandbox_duration_s=0.2, webhook_retry_delays_s="[0.3, 0.3, 0.3]"
        ).start()
        with server.client(server.create_key("retried")) as client:
            image_id = _post(client, receiver.url)
            calls = receiver.wait(3)
            assert [h["x-openletz-delivery"] for h, _ in calls] == [
                f"{image_id}/{n}" for n in (1, 2, 3)
            ]
            time.sleep(1.0)
            assert len(receiver.calls) == 3
    finally:
        receiver.stop()


@pytest.mark.slow
def test_a_receiver_that_never_answers_2xx_is_given_up_on(
    make_server: Callable[..., Server],
) -> None:
    receiver = Receiver(statuses=(500,)).start()
    try:
        server = make_server(sandbox_duration_s=0.2, webhook_retry_delays_s="[0.2, 0.2]").start()
        with server.client(server.create_key("given-up")) as client:
            _post(client, receiver.url)
            receiver.wait(3)  # the first try and one per delay
            time.sleep(1.5)
            assert len(receiver.calls) == 3
    finally:
        receiver.stop()


@pytest.mark.slow
def test_a_webhook_survives_a_crash_of_the_server(make_server: Callable[..., Server]) -> None:
    """The receiver is down while the image finishes, the server is killed, and the
    webhook still arrives once both are back."""
    port = free_port()
    server = make_server(sandbox_duration_s=0.2, webhook_retry_delays_s=json.dumps([0.3] * 20))
    server.start()
    with server.client(server.create_key("crashed")) as client:
        image_id = _post(client, f"http://127.0.0.1:{port}/hook")
        wait_for(client, image_id)
        time.sleep(0.5)  # a failed try or two, nobody listening
    server.kill()
    receiver = Receiver(port=port).start()
    try:
        server.start()
        ((_, body),) = receiver.wait(1)
        assert json.loads(body)["id"] == image_id
        assert json.loads(body)["status"] == "ready"
    finally:
        receiver.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url = asyncio.run(create_postgres_database())
    try:
        yield url
    finally:
        asyncio.run(drop_postgres_database(url))


@pytest.mark.slow
def test_two_api_servers_send_each_webhook_once(
    make_server: Callable[..., Server], receiver: Receiver, postgres_url: str
) -> None:
    shared = {"database_url": postgres_url, "sandbox_duration_s": 0.1, "webhook_interval_s": 0.05}
    a = make_server(**shared).start()
    make_server(**shared).start()  # a second sender on the same database
    with a.client(a.create_key("twice")) as client:
        ids = [_post(client, receiver.url, prompt=f"hook {n}") for n in range(12)]
        for image_id in ids:
            wait_for(client, image_id)
        receiver.wait(len(ids))
        time.sleep(1.0)
    sent = [body["id"] for body in receiver.bodies()]
    assert sorted(sent) == sorted(ids)  # each once, none twice
