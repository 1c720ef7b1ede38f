"""A real ``openletz serve`` in a child process, for tests that need the whole stack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from openletz.auth import Accounts
from openletz.db import create_engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """Start, kill and restart a server on a data directory that outlives it."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OPENLETZ_DATA_DIR": str(data_dir),
            "OPENLETZ_PORT": str(self.port),
            "OPENLETZ_ENGINE": "sandbox",
            "OPENLETZ_LOG_LEVEL": "WARNING",
            # Lets servers load the engines of tests/fixtures.
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
            ),
            **{f"OPENLETZ_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"

    @property
    def database_url(self) -> str:
        return self.env.get("OPENLETZ_DATABASE_URL") or (
            f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'openletz.db'}"
        )

    def start(self, timeout: float = 30.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = self._popen(log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                health = httpx.get(f"{self.base_url}/health", timeout=1).json()
                # A cluster's API server starts no workers; an embedded one waits for one.
                if health["dispatcher"].get("ready", 1) >= 1:
                    return self
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def _popen(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "openletz.cli", "serve", "--log-level", "warning"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes the workers too
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, *, group: bool = True) -> None:
        """SIGKILL: the API process only, or its whole process group (API and workers)."""
        assert self.proc is not None
        if group:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None:
            # Reap any worker left behind by a kill of the API process alone.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-g", str(self.proc.pid), "-f", "openletz.worker"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(p) for p in out.split()]

    def job_rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The jobs' rows, read straight from the server's SQLite database (times as
        aware datetimes): what the API does not show, such as claim times."""
        conn = sqlite3.connect(self.data_dir / "openletz.db")
        conn.row_factory = sqlite3.Row
        try:
            marks = ",".join("?" * len(ids))
            rows = conn.execute(f"SELECT * FROM jobs WHERE id IN ({marks})", ids).fetchall()
        finally:
            conn.close()
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            values = dict(row)
            for k in ("created_at", "updated_at", "started_at", "finished_at"):
                if values[k] is not None:
                    values[k] = datetime.fromisoformat(values[k]).replace(tzinfo=UTC)
            out[values["id"]] = values
        return out

    def create_key(self, user: str, *, system_version: int | None = None) -> str:
        async def go() -> str:
            engine = create_engine(self.database_url)
            try:
                accounts = Accounts(engine, cache_ttl_s=0)
                key, _ = await accounts.create_key(user)
                if system_version is not None:
                    await accounts.set_default_system_version(user, system_version)
                return key
            finally:
                await engine.dispose()

        return asyncio.run(go())

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


def wait_for(
    client: httpx.Client,
    image_id: str,
    statuses: tuple[str, ...] = ("ready", "failed", "interrupted"),
    timeout: float = 60.0,
    every: float = 0.05,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/images/{image_id}").json()
        if body.get("status") in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"image {image_id} still {body.get('status')!r}: {body}")
        time.sleep(every)
