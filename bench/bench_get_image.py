#!/usr/bin/env python3
"""Requests per second of ``GET /images/{id}`` on a ready image, against a bare baseline.

What it measures
    A: ``openletz serve`` (sandbox engine, one API process) answering
       ``GET /images/{id}`` for one ready image, with ``Authorization: Bearer <key>``.
    B: a bare Starlette app (bench/_bare_app.py) whose ``GET /images/{id}`` returns
       the exact bytes of A's response as ``application/json``, run by
       ``uvicorn.run`` with the same arguments as ``openletz serve``
       (httptools/uvloop from uvicorn[standard]; one process; access log off).
    Both are loaded by ``wrk`` (same threads, connections, duration, headers) in
    alternating rounds A, B, A, B, ... after a short warm-up of each.

How to read it
    ``rps`` is the median over the rounds of wrk's Requests/sec; ``p50``/``p99`` are
    the medians over the rounds of wrk's --latency percentiles. ``ratio`` =
    openletz rps / bare rps: the share of the bare framework's throughput that the
    real route keeps (auth, database read, response building). Target: ratio >= 0.5.
    Absolute numbers depend on the machine (and its noise); compare ratios only.
    wrk and both servers share the machine's cores, so the figures are a
    lower bound of what a dedicated server would do.

Requires ``wrk`` (Debian/Ubuntu: ``apt-get install -y wrk``); exits 2 without it.
Default duration: about 45 s. Talks only to 127.0.0.1; writes only to a temp dir.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unreadable wrk time {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    fig = {"rps": float(rps.group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", out, re.MULTILINE)
        fig[f"p{pct}"] = _ms(m.group(1)) if m else float("nan")
    total = re.search(r"(\d+) requests in", out)
    fig["requests"] = float(total.group(1)) if total else 0.0
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    fig["non2xx"] = float(bad.group(1)) if bad else 0.0
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    fig["errors"] = float(sum(int(g) for g in errs.groups())) if errs else 0.0
    return fig


def run_wrk(
    wrk: str, url: str, key: str, args: argparse.Namespace, duration: float
) -> dict[str, float]:
    cmd = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {key}",
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return parse_wrk(out.stdout)


def ready_image(port: int, key: str) -> str:
    status, body = h.request(
        "POST",
        port,
        "/images",
        {"prompt": "a benchmark lighthouse", "width": 520, "height": 520, "quality": 1},
        key,
    )
    if status != 200:
        raise RuntimeError(f"POST /images answered {status}: {body[:300]!r}")
    image_id = json.loads(body)["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = h.request("GET", port, f"/images/{image_id}", key=key)
        state = json.loads(body).get("status")
        if state == "ready":
            return str(image_id)
        if state in ("failed", "interrupted"):
            raise RuntimeError(f"the image ended {state}: {body[:300]!r}")
        time.sleep(0.05)
    raise RuntimeError("the image did not become ready within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per wrk run (default 5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up seconds per server (default 2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--target", type=float, default=0.5, help="ratio target (default 0.5)")
    args = parser.parse_args()

    wrk = shutil.which("wrk")
    if wrk is None:
        print(
            "bench_get_image: needs the load tool wrk; install it with: apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    h.ensure_venv()
    h.install_cleanup()
    try:
        tmp = h.temp_dir("openletz-bench-get-")
        data = tmp / "data"
        data.mkdir()
        key = h.create_key(data)
        server = h.start_openletz(data, sandbox_duration_s=0, workers=1)
        image_id = ready_image(server.port, key)
        path = f"/images/{image_id}"
        status, body = h.request("GET", server.port, path, key=key)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
        body_file = tmp / "body.json"
        body_file.write_bytes(body)

        bare_port = h.free_port()
        bare = h.Proc(
            [
                sys.executable,
                str(h.BENCH / "_bare_app.py"),
                "--port",
                str(bare_port),
                "--body-file",
                str(body_file),
            ],
            h.openletz_env(data),
            tmp / "bare.log",
            bare_port,
        )
        bare.wait_http(path)
        _, bare_body = h.request("GET", bare_port, path)
        assert len(bare_body) == len(body), (len(bare_body), len(body))

        targets = {
            "openletz": f"http://{h.HOST}:{server.port}{path}",
            "bare": f"http://{h.HOST}:{bare_port}{path}",
        }
        print(
            f"GET /images/{{id}}: body {len(body)} bytes; "
            f"wrk -t{args.threads} -c{args.connections} "
            f"-d{args.duration:g}s x {args.rounds} rounds each, alternating",
            flush=True,
        )
        for url in targets.values():
            run_wrk(wrk, url, key, args, args.warmup)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for i in range(args.rounds):
            for name, url in targets.items():
                fig = run_wrk(wrk, url, key, args, args.duration)
                runs[name].append(fig)
                print(
                    f"  round {i + 1} {name:<8} {fig['rps']:9.1f} rps  p50 {fig['p50']:6.2f} ms  "
                    f"p99 {fig['p99']:6.2f} ms",
                    flush=True,
                )

        med = {
            name: {k: statistics.median(f[k] for f in figs) for k in ("rps", "p50", "p99")}
            for name, figs in runs.items()
        }
        bad = {name: sum(f["non2xx"] + f["errors"] for f in figs) for name, figs in runs.items()}
        ratio = med["openletz"]["rps"] / med["bare"]["rps"]
        print()
        print(
            h.table(
                [
                    ("server", "rps (median)", "p50 ms", "p99 ms", "non-2xx/errors"),
                    *[
                        (name, med[name]["rps"], med[name]["p50"], med[name]["p99"], int(bad[name]))
                        for name in targets
                    ],
                ]
            )
        )
        verdict = "meets" if ratio >= args.target else "BELOW"
        print(f"ratio openletz/bare = {ratio:.3f} ({verdict} target >= {args.target:g})")
        print(
            h.result_line(
                openletz_rps=med["openletz"]["rps"],
                bare_rps=med["bare"]["rps"],
                ratio=ratio,
                openletz_p50_ms=med["openletz"]["p50"],
                openletz_p99_ms=med["openletz"]["p99"],
                bare_p50_ms=med["bare"]["p50"],
                bare_p99_ms=med["bare"]["p99"],
                body_bytes=len(body),
                errors=int(sum(bad.values())),
            )
        )
        if any(bad.values()):
            print(
                "warning: some responses were not 2xx or failed; the figures are not valid",
                file=sys.stderr,
            )
            return 1
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        h.cleanup()


if __name__ == "__main__":
    sys.exit(main())
