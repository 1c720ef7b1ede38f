"""Webhooks stay out of blocked networks: the address connected to is checked."""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from openletz.api.webhooks import BlockedAddress, GuardedTransport, parse_networks
from openletz.settings import DEFAULT_BLOCKED_NETWORKS, Settings
from tests._server import Server, wait_for
from tests.api.test_webhooks import Receiver


class _Seen:
    """A transport that records what reaches it and answers 204."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(204)


def _guard(
    resolved: dict[str, list[str]], networks: tuple[str, ...] = DEFAULT_BLOCKED_NETWORKS
) -> tuple[httpx.AsyncClient, _Seen, list[str]]:
    seen, asked = _Seen(), []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(f"{host}:{port}")
        if host not in resolved:
            raise OSError(-2, "Name or service not known")
        return resolved[host]

    guard = GuardedTransport(
        parse_networks(networks), httpx.MockTransport(seen.handle), resolve=resolve
    )
    return httpx.AsyncClient(transport=guard), seen, asked


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",  # the same address, written as IPv6
        "http://[fe80::1]:8080/hook",
        "http://0.0.0.0:9000/hook",
        "http://224.0.0.1/hook",
    ],
)
async def test_a_blocked_address_is_never_connected_to(url: str) -> None:
    client, seen, _ = _guard({})
    async with client:
        with pytest.raises(BlockedAddress, match="OPENLETZ_WEBHOOK_BLOCKED_NETWORKS"):
            await client.post(url, content=b"{}")
    assert seen.requests == []


async def test_a_name_is_checked_on_every_address_it_resolves_to() -> None:
    client, seen, asked = _guard(
        {"metadata.example": ["169.254.169.254"], "mixed.example": ["169.254.1.1", "192.0.2.7"]}
    )
    async with client:
        with pytest.raises(BlockedAddress, match=r"metadata\.example \(169\.254\.169\.254\)"):
            await client.post("http://metadata.example/hook", content=b"{}")
        # Of several addresses, the first that is not blocked is the one connected to.
        resp = await client.post("https://mixed.example:8443/hook?a=1", content=b'{"x": 1}')
    assert resp.status_code == 204
    assert asked == ["metadata.example:80", "mixed.example:8443"]
    (sent,) = seen.requests
    assert str(sent.url) == "https://192.0.2.7:8443/hook?a=1"
    # The receiver still sees its own name, in Host and in TLS's server name.
    assert sent.headers["host"] == "mixed.example:8443"
    assert sent.extensions["sni_hostname"] == "mixed.example"
    assert sent.content == b'{"x": 1}'


async def test_a_unicode_name_is_resolved_and_sent_as_idna() -> None:
    client, seen, asked = _guard({"xn--bcher-kva.example": ["192.0.2.8"]})
    async with client:
        assert (await client.post("https://bücher.example/hook")).status_code == 204
    assert asked == ["xn--bcher-kva.example:443"]
    (sent,) = seen.requests
    assert sent.headers["host"] == "xn--bcher-kva.example"
    assert sent.extensions["sni_hostname"] == "xn--bcher-kva.example"


async def test_loopback_and_private_receivers_are_reached_unless_blocked() -> None:
    client, seen, _ = _guard({"hooks.internal": ["10.1.2.3"]})
    async with client:
        assert (await client.post("http://127.0.0.1:8080/hook")).status_code == 204
        assert (await client.post("http://hooks.internal/hook")).status_code == 204
    assert [r.url.host for r in seen.requests] == ["127.0.0.1", "10.1.2.3"]

    private = (*DEFAULT_BLOCKED_NETWORKS, "10.0.0.0/8", "127.0.0.0/8")
    client, seen, _ = _guard({"hooks.internal": ["10.1.2.3"]}, private)
    async with client:
        for url in ("http://127.0.0.1:8080/hook", "http://hooks.internal/hook"):
            with pytest.raises(BlockedAddress):
                await client.post(url)
    assert seen.requests == []


async def test_a_name_that_does_not_resolve_fails_to_connect() -> None:
    client, seen, _ = _guard({})
    async with client:
        with pytest.raises(httpx.ConnectError) as failed:
            await client.post("http://nowhere.example/hook")
    assert not isinstance(failed.value, BlockedAddress)
    assert seen.requests == []


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """An HTTPS endpoint on 127.0.0.1 whose certificate names ``hooks.test``:
    its port, the certificate, and the Host headers it was sent."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the test's certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=hooks.test"
    names = "subjectAltName=DNS:hooks.test"
    subprocess.run(
        [*make.split(), "-keyout", str(key), "-out", str(cert), "-addext", names],
        check=True,
        capture_output=True,
    )
    hosts: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            hosts.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], cert, hosts
    finally:
        server.shutdown()
        server.server_close()


async def test_https_to_the_checked_address_keeps_the_name_for_tls(
    tls_receiver: tuple[int, Path, list[str]],
) -> None:
    # Connected to 127.0.0.1, the TLS handshake still asks for, and verifies the
    # certificate against, the URL's name.
    port, cert, hosts = tls_receiver

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    verify = ssl.create_default_context(cafile=str(cert))
    guard = GuardedTransport([], httpx.AsyncHTTPTransport(verify=verify), resolve=resolve)
    async with httpx.AsyncClient(transport=guard) as client:
        resp = await client.post(f"https://hooks.test:{port}/hook", content=b"{}")
        assert resp.status_code == 204
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            await client.post(f"https://other.test:{port}/hook", content=b"{}")
    assert hosts == [f"hooks.test:{port}"]


def test_a_bad_network_setting_is_refused_with_its_name() -> None:
    with pytest.raises(ValidationError, match=r"webhook_blocked_networks[\s\S]*'10\.0\.0\.0/33'"):
        Settings(webhook_blocked_networks=["10.0.0.0/8", "10.0.0.0/33"])
    assert Settings().webhook_blocked_networks == list(DEFAULT_BLOCKED_NETWORKS)


@pytest.mark.slow
def test_a_webhook_to_a_blocked_network_is_not_sent_nor_tried_again(
    make_server: Callable[..., Server],
) -> None:
    receiver = Receiver().start()
    try:
        server = make_server(
            sandbox_duration_s=0.1,
            webhook_retry_delays_s="[0.2, 0.2]",
            webhook_blocked_networks=json.dumps(["127.0.0.0/8", "::1/128"]),
        ).start()
        with server.client(server.create_key("blocked")) as client:
            body = {"prompt": "hooked", "quality": 1, "webhookUrl": receiver.url}
            image_id = client.post("/images", json=body).json()["id"]
            assert wait_for(client, image_id)["status"] == "ready"
            deadline = time.monotonic() + 10
            while server.job_rows([image_id])[image_id]["webhook_done_at"] is None:
                assert time.monotonic() < deadline, "the webhook was never ended"
                time.sleep(0.05)
            time.sleep(0.8)  # past every retry delay
        row = server.job_rows([image_id])[image_id]
        assert receiver.calls == []
        assert row["webhook_attempts"] == 1
        assert row["webhook_result"].startswith(
            "not sent: BlockedAddress: 127.0.0.1 is in a blocked network"
        )
    finally:
        receiver.stop()
