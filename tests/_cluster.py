"""Cluster pieces for tests: ``openletz worker`` processes, and broker clean-up."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from kombu import Connection

BROKER = "amqp://guest:guest@127.0.0.1:5672//"


class Worker:
    """``openletz worker`` in a child process, with the environment of a server."""

    def __init__(self, env: dict[str, str], log_path: Path, queues: str = "default") -> None:
        self.env = env
        self.log_path = log_path
        self.queues = queues
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "openletz.cli",
                    "worker",
                    "--queues",
                    self.queues,
                    "--log-level",
                    "warning",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# Every model family a test's workers may serve ("default": the sandbox).
FAMILIES = ("default", "sd", "sdxl", "pixart_sigma", "flux")


def _broker_names(prefix: str) -> tuple[list[str], list[str]]:
    queues = [f"{prefix}.{f}" for f in FAMILIES] + [f"{prefix}.dead"]
    return queues, [prefix, f"{prefix}.dead"]


def delete_broker_objects(broker_url: str, prefix: str) -> None:
    """Remove what a test's cluster made on RabbitMQ: its queues (quorum queues are
    durable: they would stay) and its exchanges."""
    queues, exchanges = _broker_names(prefix)
    with Connection(broker_url) as conn:
        channel = conn.channel()
        for name in queues:
            try:
                channel.queue_delete(name)
            except Exception:
                channel = conn.channel()
        for name in exchanges:
            try:
                channel.exchange_delete(name)
            except Exception:
                channel = conn.channel()


def broker_leftovers(broker_url: str, prefix: str) -> list[str]:
    """The queues and exchanges of ``prefix`` that still exist."""
    queues, exchanges = _broker_names(prefix)
    found = []
    with Connection(broker_url) as conn:
        for name in queues + exchanges:
            channel = conn.channel()
            try:
                if name in queues:
                    channel.queue_declare(queue=name, passive=True)
                else:
                    channel.exchange_declare(exchange=name, type="direct", passive=True)
            except conn.channel_errors:
                continue  # not found: the server closed the channel
            found.append(name)
            channel.close()
    return found


def delete_redis_keys(url: str, pattern: str) -> int:
    """Delete the keys that match ``pattern``; returns how many there were."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


class TcpProxy:
    """A TCP forwarder on a port of its own to ``target`` (RabbitMQ), that can be
    turned off, which cuts its connections and refuses new ones (a broker outage),
    and on again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in [*sockets, *([listener] if listener else [])]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
