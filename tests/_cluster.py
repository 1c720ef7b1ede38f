"""Cluster pieces for tests: ``openletz worker`` processes, and broker clean-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def delete_queues(broker_url: str, prefix: str, families: list[str]) -> None:
    """Remove a test's queues (quorum queues are durable: they would stay)."""
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for name in [f"{prefix}.{f}" for f in families] + [f"{prefix}.dead"]:
            try:
                channel.queue_delete(name)
            except Exception:
                channel = conn.channel()
