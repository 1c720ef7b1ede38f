"""Shared plumbing for the benchmarks: temp data dirs, servers in child processes,
API keys, tiny HTTP helpers and percentiles. Standard library only (plus what the
openletz virtualenv already has), so that a bench script runs with ``.venv/bin/python``.

Every child process is started in its own session (process group) and registered
here; ``cleanup()`` stops them all (SIGINT, then SIGKILL of the whole group) and
removes the temp dirs. It runs from ``finally`` blocks, ``atexit`` and on
SIGTERM/SIGHUP, so a Ctrl-C or an exception leaves nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def ensure_venv() -> None:
    """Re-run the calling script with the repo's ``.venv`` python if this one lacks openletz."""
    try:
        import uvicorn  # noqa: F401

        import openletz  # noqa: F401
    except ImportError:
        venv_python = REPO / ".venv" / "bin" / "python"
        if venv_python.exists() and Path(sys.executable).resolve() != venv_python.resolve():
            os.execv(str(venv_python), [str(venv_python), *sys.argv])
        sys.exit(
            "openletz is not importable: run scripts/install, then .venv/bin/python " + sys.argv[0]
        )


# -- cleanup ------------------------------------------------------------------

_procs: list[subprocess.Popen[bytes]] = []
_dirs: list[Path] = []


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    # Whatever is left in its group (worker processes, say) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def cleanup() -> None:
    while _procs:
        _stop(_procs.pop())
    while _dirs:
        shutil.rmtree(_dirs.pop(), ignore_errors=True)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    atexit.register(cleanup)
    # Ctrl-C raises KeyboardInterrupt even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _dirs.append(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# -- servers ------------------------------------------------------------------


def _child_setup() -> None:
    """In the child before exec: a session of its own (so that its workers can be
    killed as a group) and SIGTERM should this bench process die without cleaning up."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Proc:
    """A server in a child process of its own session, its output in a log file."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.port = port
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(argv),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup,
            )
        _procs.append(self.proc)

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_http(self, path: str, ready: Any = None, timeout: float = 60.0) -> None:
        """Until GET ``path`` answers 200 (and ``ready(json)`` is true, if given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited early (code {self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                status, body = request("GET", self.port, path, timeout=1.0)
                if status == 200 and (ready is None or ready(json.loads(body))):
                    return
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server on port {self.port} did not become ready:\n{self.log_tail()}")

    def stop(self) -> None:
        _stop(self.proc)
        with contextlib.suppress(ValueError):
            _procs.remove(self.proc)


def _python() -> str:
    return sys.executable


def openletz_env(data_dir: Path, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLETZ_")}
    env.update(
        {
            "OPENLETZ_DATA_DIR": str(data_dir),
            "OPENLETZ_ENGINE": "sandbox",
            "OPENLETZ_LOG_LEVEL": "WARNING",
        }
    )
    env.update({f"OPENLETZ_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def create_key(data_dir: Path, user: str = "bench") -> str:
    """``openletz keys create --user USER`` on ``data_dir``; the key is its stdout."""
    out = subprocess.run(
        [_python(), "-m", "openletz.cli", "keys", "create", "--user", user],
        env=openletz_env(data_dir),
        capture_output=True,
        text=True,
        check=False,
        cwd=data_dir,  # no stray .env of the caller's
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"openletz keys create failed:\n{out.stderr}")
    return out.stdout.strip().splitlines()[0].strip()


def start_openletz(data_dir: Path, **settings: Any) -> Proc:
    """``openletz serve`` (sandbox engine) on a free port; returns once a worker is ready."""
    port = free_port()
    env = openletz_env(data_dir, port=port, **settings)
    proc = Proc(
        [_python(), "-m", "openletz.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env,
        data_dir / "server.log",
        port,
    )
    proc.wait_http("/health", ready=lambda h: h["dispatcher"]["ready"] >= 1)
    return proc


# -- HTTP ---------------------------------------------------------------------


def request(
    method: str,
    port: int,
    path: str,
    body: Any = None,
    key: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        return send(conn, method, path, body, key)
    finally:
        conn.close()


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = None,
) -> tuple[int, bytes]:
    headers = {}
    data = None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


# -- statistics and output ----------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def table(rows: Sequence[Sequence[Any]]) -> str:
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for j, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cpu_times() -> tuple[int, int] | None:
    """(stolen, all) CPU time of the machine since boot, in clock ticks, from
    ``/proc/stat`` (Linux); None elsewhere. Stolen time is what the hypervisor
    gave other guests while this one's CPUs had work."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return fields[7], sum(fields)


def steal_share(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time stolen by the hypervisor between two
    :func:`cpu_times` readings: context for a figure on a shared, noisy host."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


def steal_note(share: float | None) -> str:
    if share is None:
        return ""
    return f"; CPU time stolen by the hypervisor meanwhile: {share:.0%}"


def result_line(**figures: Any) -> str:
    parts = []
    for k, v in figures.items():
        parts.append(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}")
    return "RESULT " + " ".join(parts)
