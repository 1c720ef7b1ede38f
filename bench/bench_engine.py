#!/usr/bin/env python3
"""The diffusers engine behind the server: serving overhead, batching, preview cost.

Three measurements (``--only serving,batching,preview``; all by default), each
against a baseline measured in the same run, with tiny random-weight pipelines
(``openletz.engines.diffusers.tiny``, saved to a temp folder and loaded from
there as real models are). CPU only; nothing is downloaded.

serving   Images per second through the whole server (``openletz serve``, engine
          diffusers, one worker, OPENLETZ_BATCH_MAX=1 so that batching does not
          flatter it): N jobs (default 40) of the smallest API size, 520x520,
          submitted with K in flight (default 4: the server always has a job
          waiting, as bare calls always have the next), timed from the first POST to
          the last job's end (its row's ``finished_at``). The registry makes 64x64 in
          1 step (the worker resizes to 520x520 as it delivers), hasWatermark
          false, JPEG.
          Baseline: the same count of bare pipeline calls in this process, at the
          size the server really generates,
          ``pipe(prompt, num_inference_steps=1, width=64, height=64, generator=...)``,
          half of them just before the server's round and half just after it.
          ``serving_ratio`` = the median over rounds of server / bare pipeline
          calls. Target: >= 0.9.
          Context, ``serving_ratio_with_imaging``: against bare calls each followed
          by ``imaging.render_delivery`` (JPEG), the imaging work the worker does
          for every image (the resize to 520x520, the versions, the preview); and
          ``bare_beside_imaging_ratio``: bare calls while another process does one
          image's imaging (resize, versions, preview) per bare call's time, on the
          other cores, against bare calls alone (alternated in slices). That is the
          most a server could reach on this machine: it must do that imaging beside
          its engine, and a busy neighbour core can slow the engine's (shared caches
          and memory bandwidth, or a hypervisor's shared physical core).

batching  16 concurrent compatible jobs (same size and steps, different seeds
          and prompts)
          through a server with OPENLETZ_BATCH_MAX=16 (batch window 0.2 s) and
          through one with OPENLETZ_BATCH_MAX=1, timed from the first POST to all
          ready, alternating rounds. ``batching_speedup`` = time(max 1) /
          time(max 16). Target: >= 2 on the CPU. The tiny model generates at
          --batch-resolution (default 64: 8x8 latents) in --batch-steps (default
          4, a few-step model's count) with classifier-free guidance: the denoiser
          is most of a job's work, and each call's fixed cost is a large part of a
          UNet step, as on a GPU at small batches (at 128 one CPU thread is
          compute-bound from one image on, and batching gains little there, in the
          engine alone as through the server). Context: a third server with
          --batch-max (the server's default, 4: batches of 4 one after the other,
          ``batching_speedup_max4``), the same on the engine in-process
          (``generate_batch`` of 16 against 16 ``generate`` calls), and the share of
          CPU time the hypervisor took meanwhile.

preview   The cost of one live preview as the worker makes it
          (``update.preview()`` then ``imaging.preview_jpeg(..., max_side=256)``)
          per denoising step, for tiny SD at 512 (64x64 latents) and tiny SDXL at
          1024 (128x128 latents). The step time comes from the engine's step
          callback timestamps with previews off; the preview is then timed on the
          same latents (same seed) in a second run. The VAE decode is skipped
          (the last step's callback interrupts), since it is no step.
          ``preview_ratio_*`` = preview / step. Target: <= 0.02. With tiny random
          weights a step is far cheaper than a real model's while the preview
          costs the same, so this is a pessimistic upper bound.

Full size (--full-size; --device cuda, the default where there is a GPU)
    The same three measurements with the real SD-Turbo and SDXL architectures
    (bench/_architectures.py: their published configurations, random weights;
    speed does not depend on the weights' values), each at each of --sizes
    (512 and 1024), in bf16 (fp16 where bf16 is missing), eager. The models
    are built on the device, saved to a temp folder, and the servers load them
    through the registry as real models ("<arch>-<size>", resolution <size>,
    --steps steps (4), guidance 0 for SD-Turbo and 5 for SDXL).
    serving   a server (one worker, OPENLETZ_BATCH_MAX=1) making --jobs (8) jobs
              of max(520, size) px, 4 in flight, against the same count of bare
              pipe() calls at size x size in this process (same saved weights,
              dtype, steps and guidance, eager): serving_ratio_<arch>_<size>.
    batching  --batch-jobs (8) concurrent jobs, OPENLETZ_BATCH_MAX=8 against 1
              (all of them in one call, whatever --batch-max says):
              batching_speedup_<arch>_<size>.
    preview   one preview's cost / one denoising step at size x size:
              preview_ratio_<arch>_<size>.
    --smoke   the same architectures with shrunk widths and depths, at 128 px,
              so that a CPU runs the whole path in a couple of minutes: a check
              of the code, not a measurement.

--engine-in-worker
    The servers run the engine in the worker process (OPENLETZ_ENGINE_PROCESS=
    false) instead of a process of its own: run once with and once without to
    see what the engine's own process is worth.

How to read it
    Medians over alternating rounds (for serving, of each round's ratio to the
    bare calls around it); compare ratios between runs, not raw rates.
    The machine's noise shows in the min/max columns. On the CPU, this process
    (bare calls, in-process engine) uses the torch thread count a server's worker
    uses, the cores less one, so that both sides compute alike.

Default duration: about two minutes, bounded by --max-seconds (default 170; a
measurement stops adding rounds when its share is spent, after at least one).
With --full-size on a GPU, about five minutes. Talks only to 127.0.0.1; writes
only to a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

SECTIONS = ("serving", "batching", "preview")
#: each measurement's share of --max-seconds, when several run
WEIGHTS = {"serving": 0.3, "batching": 0.4, "preview": 0.3}
PROMPT = "a benchmark lighthouse at dusk"
TERMINAL = ("ready", "failed", "interrupted")
API_SIZE = 520  # the smallest size the API takes
#: how often a client reads its jobs' states: often enough that the next job is sent
#: long before the worker runs out of work, seldom enough that the reading costs
#: the machine little (at 3 ms it took 6 ms of CPU an image, beside a server on two
#: cores). The times measured come from the jobs' rows, not from these reads.
POLL_S = 0.01
#: serving: the jobs a client keeps unfinished
IN_FLIGHT = 4
#: settings every server of this run gets (--engine-in-worker)
COMMON_SETTINGS: dict[str, Any] = {}


# -- setup ---------------------------------------------------------------------


class Models:
    """Tiny pipelines saved once per run, and registries that point at them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[str, Path] = {}

    def folder(self, family: str) -> Path:
        if family not in self._folders:
            quiet_imports()
            from openletz.engines.diffusers import tiny

            pipe = tiny.build_pipeline(family, seed=0)
            self._folders[family] = tiny.save_pipeline(pipe, self.root / f"tiny-{family}")
        return self._folders[family]

    def registry(self, name: str, models: dict[str, dict[str, Any]]) -> Path:
        """A registry of ``models`` (name: family, resolution, steps, guidance); every
        slot names the first one, so requests without ``baseModel`` get it."""
        import yaml

        entries = {}
        for model, spec in models.items():
            steps = spec["steps"]
            entries[model] = {
                "family": spec["family"],
                "source": str(spec.get("source") or self.folder(spec["family"])),
                "resolution": spec["resolution"],
                "steps": steps if isinstance(steps, list) else [steps] * 5,
                "guidance": [spec["guidance"]] * 5,
            }
        first = next(iter(models))
        modes = ("default", "sigma", "turbo")
        document = {
            "models": entries,
            "slots": {3: dict.fromkeys(modes, first), 2: dict.fromkeys(modes, first)},
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document))
        return path


@dataclass
class Server:
    proc: h.Proc
    key: str
    db_path: Path

    def client(self) -> Client:
        return Client(self)


def start_servers(
    root: Path,
    registry: Path,
    named: dict[str, dict[str, Any]],
    *,
    device: str = "cpu",
    timeout: float = 90.0,
) -> list[Server]:
    """One ``openletz serve`` per entry of ``named`` (data dir name: settings), with
    the diffusers engine on ``registry`` and one worker each; they start side by
    side, and this returns once every one has a ready worker.

    The processes are started from this (the main) thread on purpose: the harness
    asks the kernel to SIGTERM a child when the thread that started it ends."""
    servers = []
    with ThreadPoolExecutor(len(named)) as pool:  # keys only: those processes end
        keys = list(pool.map(h.create_key, [_data_dir(root, name) for name in named]))
    for (name, settings), key in zip(named.items(), keys, strict=True):
        data = root / name
        port = h.free_port()
        env = h.openletz_env(
            data,
            port=port,
            engine="diffusers",
            device=device,
            models_file=registry,
            workers=1,
            image_format="jpeg",
            **{**COMMON_SETTINGS, **settings},
        )
        argv = [sys.executable, "-m", "openletz.cli", "serve", "--port", str(port)]
        proc = h.Proc([*argv, "--log-level", "warning"], env, data / "server.log", port)
        servers.append(Server(proc, key, data / "openletz.db"))
    for server in servers:
        server.proc.wait_http(
            "/health", ready=lambda x: x["dispatcher"]["ready"] >= 1, timeout=timeout
        )
    return servers


def _data_dir(root: Path, name: str) -> Path:
    data = root / name
    data.mkdir()
    return data


class Client:
    """POSTs over one keep-alive connection; job states read from the database, so
    that waiting for the end costs the server nothing."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.conn = http.client.HTTPConnection(h.HOST, server.proc.port, timeout=30)
        self.db = sqlite3.connect(str(server.db_path), timeout=5.0, isolation_level=None)

    def reconnect(self) -> None:
        """Drop the connection (the server closes idle ones after a few seconds)
        and open a new one now, so that a timed round does not pay for it."""
        self.conn.close()
        self.conn.connect()

    def post(self, body: dict[str, Any]) -> str:
        try:
            status, data = h.send(self.conn, "POST", "/images", body, self.server.key)
        except (ConnectionError, http.client.RemoteDisconnected):
            self.reconnect()
            status, data = h.send(self.conn, "POST", "/images", body, self.server.key)
        if status != 200:
            raise RuntimeError(f"POST /images answered {status}: {data[:300]!r}")
        job_id: str = json.loads(data)["id"]
        return job_id

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT id, status FROM jobs WHERE id IN ({marks})", list(ids))
        return {str(i): str(s) for i, s in rows}

    def started(self, ids: Sequence[str]) -> list[datetime]:
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT started_at FROM jobs WHERE id IN ({marks})", list(ids))
        return sorted(datetime.fromisoformat(r[0]) for r in rows if r[0])

    def last_finish(self, ids: Sequence[str]) -> float:
        """The time (seconds since the epoch) the last of ``ids`` ended."""
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT finished_at FROM jobs WHERE id IN ({marks})", list(ids))
        # Stored as naive UTC on SQLite.
        ends = [datetime.fromisoformat(r[0]).replace(tzinfo=UTC) for r in rows]
        return max(ends).timestamp()

    def why(self, job_id: str) -> str:
        _, data = h.send(self.conn, "GET", f"/images/{job_id}", key=self.server.key)
        return str(json.loads(data).get("progressMessage"))

    def close(self) -> None:
        self.conn.close()
        self.db.close()


def own_prompt(seed: int) -> str:
    """A prompt of its own for each job of a batch: the engine encodes a prompt that
    several images of a batch share once, which users' batches rarely offer."""
    return f"{PROMPT}, take {seed}"


def body_own_prompt(seed: int) -> dict[str, Any]:
    return {**body(seed), "prompt": own_prompt(seed)}


def body(seed: int, size: int = API_SIZE, model: str | None = None) -> dict[str, Any]:
    job: dict[str, Any] = {
        "prompt": PROMPT,
        "width": size,
        "height": size,
        "quality": 1,
        "creativity": 2,
        "hasWatermark": False,
        "seed": seed,
    }
    if model is not None:
        job["baseModel"] = model
    return job


def run_jobs(
    client: Client,
    seeds: Sequence[int],
    in_flight: int,
    timeout: float = 120.0,
    make: Callable[[int], dict[str, Any]] = body,
) -> tuple[float, list[str]]:
    """Submit one job per seed (``make(seed)``) keeping ``in_flight`` unfinished;
    returns the seconds from the first POST to the last job's end (its row's
    ``finished_at``), and the job ids."""
    client.reconnect()
    pending = list(seeds)
    live: list[str] = []
    ids: list[str] = []
    t0 = time.perf_counter()
    wall0 = time.time()
    while pending or live:
        while pending and len(live) < in_flight:
            job_id = client.post(make(pending.pop(0)))
            live.append(job_id)
            ids.append(job_id)
        time.sleep(POLL_S)
        states = client.states(live)
        now = time.perf_counter()
        for job_id, state in states.items():
            if state in TERMINAL:
                if state != "ready":
                    raise RuntimeError(f"job {job_id} ended {state!r}: {client.why(job_id)}")
                live.remove(job_id)
        if now - t0 > timeout:
            raise RuntimeError(f"{len(live)} job(s) not ready after {timeout:g} s")
    return client.last_finish(ids) - wall0, ids


def bursts(times: Sequence[datetime], gap_s: float = 0.025) -> int:
    """How many groups the claim times fall into (a new one after a gap > gap_s):
    about how many engine calls the worker made."""
    groups = 1 if times else 0
    for a, b in itertools.pairwise(times):
        groups += (b - a).total_seconds() > gap_s
    return groups


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def more(self, done: int, wanted: int) -> bool:
        """Whether to run round ``done + 1`` of ``wanted``: always the first."""
        return done == 0 or (done < wanted and time.monotonic() < self.deadline)


def stats_row(label: str, values: Sequence[float], unit_scale: float = 1.0) -> tuple[Any, ...]:
    xs = [v * unit_scale for v in values]
    return (label, len(xs), statistics.median(xs), min(xs), max(xs))


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def match_worker_threads() -> int:
    """Give this process's torch the threads a server's one worker gets (the cores
    less one, for the API), so that bare calls and in-process engine runs compute
    as the worker does: with every core, on a machine with other load, they can be
    several times slower (threads that wait on each other)."""
    quiet_imports()
    import torch

    from openletz.engines.factory import cpu_share
    from openletz.settings import Settings

    torch.set_num_threads(cpu_share(Settings(workers=1, dispatcher="embedded")))
    return torch.get_num_threads()


def quiet_imports() -> None:
    """The heavy imports, with diffusers' and transformers' chatter off."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import openletz.engines.diffusers.loading  # noqa: F401  (silences progress bars)


# -- 1. serving overhead -------------------------------------------------------


def bench_serving(args: argparse.Namespace, models: Models, budget: Budget) -> dict[str, Any]:
    quiet_imports()
    import torch
    from diffusers import StableDiffusionPipeline

    from openletz import imaging

    g = args.guidance
    registry = models.registry(
        "serving", {"tiny-sd": {"family": "sd", "resolution": 64, "steps": 1, "guidance": g}}
    )
    print(
        f"serving: {args.jobs} jobs of {API_SIZE}x{API_SIZE} with {args.in_flight} in flight, "
        f"tiny SD generating 64x64 in 1 step (guidance {g:g}), hasWatermark false, jpeg; "
        "OPENLETZ_BATCH_MAX=1, one worker",
        flush=True,
    )
    (server,) = start_servers(models.root, registry, {"serving": {"batch_max": 1}})
    client = server.client()
    pipe = StableDiffusionPipeline.from_pretrained(str(models.folder("sd")), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def beside(n: int, period_s: float) -> float:
        """Bare calls while another process does one image's imaging every period_s,
        against bare calls alone: the ratio of their rates. The two alternate in
        four slices of n / 4 calls (the other process stopped, then let go), so that
        the machine's drift falls on both alike."""
        other = subprocess.Popen(
            [sys.executable, "-c", _IMAGING_BESIDE, str(API_SIZE), str(period_s), "120"],
            stdin=subprocess.DEVNULL,
        )
        alone_s = with_s = 0.0
        part = max(1, n // 4)
        try:
            time.sleep(1.0)  # its imports
            for _ in range(4):
                other.send_signal(signal.SIGSTOP)
                alone_s += part / bare(part, False)
                other.send_signal(signal.SIGCONT)
                with_s += part / bare(part, False)
        finally:
            other.kill()
            other.wait()
        return alone_s / with_s

    def bare(n: int, with_imaging: bool) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            with torch.inference_mode():
                image = pipe(
                    PROMPT,
                    num_inference_steps=1,
                    guidance_scale=g,
                    width=64,
                    height=64,
                    generator=torch.Generator("cpu").manual_seed(i),
                ).images[0]
            if with_imaging:
                imaging.render_delivery(
                    image,
                    (API_SIZE, API_SIZE),
                    has_watermark=False,
                    watermark_text="openletz",
                    fmt="jpeg",
                    quality=92,
                )
        return n / (time.perf_counter() - t0)

    try:
        run_jobs(client, range(3), args.in_flight)  # loads the model in the worker
        bare(3, True)
        served: list[float] = []
        full: list[float] = []
        pipe_only: list[float] = []
        shared: list[float] = []  # bare calls beside imaging / alone
        seed = 1000
        cpu0 = h.cpu_times()
        while budget.more(len(served), args.rounds):
            # The baseline's calls come half just before the server's round and half
            # just after it, so that the machine's drift falls on both alike.
            first = args.jobs // 2
            bare_s = first / bare(first, False)
            elapsed, _ = run_jobs(client, range(seed, seed + args.jobs), args.in_flight)
            bare_s += (args.jobs - first) / bare(args.jobs - first, False)
            seed += args.jobs
            served.append(args.jobs / elapsed)
            pipe_only.append(args.jobs / bare_s)
            full.append(bare(args.jobs, True))
            shared.append(beside(args.jobs, 1 / pipe_only[-1]))
            print(
                f"  round {len(served)}: server {served[-1]:.1f} img/s, bare pipe() "
                f"{pipe_only[-1]:.1f} (ratio {served[-1] / pipe_only[-1]:.3f}), bare pipe() "
                f"+ imaging {full[-1]:.1f}; bare pipe() beside imaging / alone "
                f"{shared[-1]:.3f}",
                flush=True,
            )
    finally:
        client.close()
        server.proc.stop()
    stolen = h.steal_share(cpu0, h.cpu_times())

    rows = [
        ("images per second", "rounds", "median", "min", "max"),
        stats_row("server (POST -> ready)", served),
        stats_row("bare pipe() calls (the baseline)", pipe_only),
        stats_row("bare pipe + resize + versions + preview (context)", full),
    ]
    med = statistics.median
    ratio = med([s / p for s, p in zip(served, pipe_only, strict=True)])
    ratio_imaging = med([s / f for s, f in zip(served, full, strict=True)])
    ceiling = med(shared)
    print()
    print(h.table(rows))
    print(
        f"serving ratio {ratio:.3f}: server / bare pipeline calls in one process "
        f"({verdict(ratio >= args.target_serving)} target >= {args.target_serving:g}); "
        f"context: against bare calls plus the worker's resize and imaging {ratio_imaging:.3f}; "
        f"bare calls with one image's imaging beside each, in another process, "
        f"{ceiling:.3f} of alone (the ceiling on these cores: a server must do that "
        f"imaging beside its engine){h.steal_note(stolen)}"
    )
    print(
        h.result_line(
            serving_ratio=ratio,
            serving_ratio_with_imaging=ratio_imaging,
            bare_beside_imaging_ratio=ceiling,
            server_img_s=med(served),
            bare_pipe_img_s=med(pipe_only),
            bare_with_imaging_img_s=med(full),
            jobs=args.jobs,
            rounds=len(served),
            **({} if stolen is None else {"cpu_stolen": stolen}),
        ),
        flush=True,
    )
    return {"ratio": ratio}


#: run by ``python -c`` with size, period_s and max_s: one image's imaging as the
#: worker does it (resize from 64x64, the versions, the preview) every period_s, for
#: at most max_s seconds (it is killed sooner)
_IMAGING_BESIDE = """
import sys, time
import numpy as np
import torch
from PIL import Image
from openletz import imaging
torch.set_num_threads(1)
size, period, until = int(sys.argv[1]), float(sys.argv[2]), time.monotonic() + float(sys.argv[3])
pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
small, due = Image.fromarray(pixels), time.monotonic()
while time.monotonic() < until:
    imaging.render_delivery(
        small, (size, size), has_watermark=False, watermark_text="", fmt="jpeg", quality=92
    )
    # Never a burst to catch up (after a SIGSTOP): one image a period from now on.
    due = max(due + period, time.monotonic())
    time.sleep(max(0.0, due - time.monotonic()))
"""


# -- 2. batching -----------------------------------------------------------------


def bench_batching(args: argparse.Namespace, models: Models, budget: Budget) -> dict[str, Any]:
    n, default = args.batch_jobs, args.batch_max
    res, steps, g = args.batch_resolution, args.batch_steps, args.guidance
    registry = models.registry(
        "batching", {"tiny-sd": {"family": "sd", "resolution": res, "steps": steps, "guidance": g}}
    )
    # The batch sizes measured: all the jobs in one call (the measurement), the
    # server's default (context, where it is another), and one job a call.
    sizes = list(dict.fromkeys([n, default, 1]))
    print(
        f"batching: {n} concurrent jobs of {API_SIZE}x{API_SIZE} (different seeds and "
        f"prompts), tiny SD at "
        f"resolution {res} ({res // 8}x{res // 8} latents), {steps} steps, guidance {g:g} "
        f"(CFG: two UNet rows per image); OPENLETZ_BATCH_MAX="
        f"{' and '.join(str(m) for m in sizes[:-1])} with a {args.batch_window:g} s window "
        f"against OPENLETZ_BATCH_MAX=1, one worker each, rounds alternated",
        flush=True,
    )
    servers = start_servers(
        models.root,
        registry,
        {f"batch{m}": {"batch_max": m, "batch_window_s": args.batch_window} for m in sizes},
    )
    clients = {m: server.client() for m, server in zip(sizes, servers, strict=True)}
    times: dict[int, list[float]] = {m: [] for m in sizes}
    calls: dict[int, list[int]] = {m: [] for m in sizes}
    seed = 0
    cpu0 = None
    try:
        for c in clients.values():  # the first job loads the model, then one round warm
            run_jobs(c, [seed], 1)
            run_jobs(c, range(seed + 1, seed + 1 + n), n, make=body_own_prompt)
            seed += n + 1
        cpu0 = h.cpu_times()
        while budget.more(len(times[1]), args.rounds):
            order = sizes if len(times[1]) % 2 == 0 else sizes[::-1]
            for m in order:
                elapsed, ids = run_jobs(clients[m], range(seed, seed + n), n, make=body_own_prompt)
                seed += n
                times[m].append(elapsed)
                calls[m].append(bursts(clients[m].started(ids)))
            print(
                f"  round {len(times[1])}: "
                + ", ".join(
                    f"max {m} {times[m][-1]:.2f} s"
                    + (f" (~{calls[m][-1]} engine call(s))" if m > 1 else "")
                    for m in sizes
                ),
                flush=True,
            )
    finally:
        for c in clients.values():
            c.close()
        for server in servers:
            server.proc.stop()
    stolen = h.steal_share(cpu0, h.cpu_times())

    # Context: the engine alone, in this process.
    quiet_imports()
    from openletz.engines.base import GenerationRequest
    from openletz.engines.diffusers.engine import DiffusersEngine
    from openletz.engines.diffusers.registry import Registry

    engine = DiffusersEngine(Registry.load(registry), device="cpu")
    requests = [
        GenerationRequest(own_prompt(s), API_SIZE, API_SIZE, 1, 2, 3, "default", seed=s)
        for s in range(n)
    ]

    def noop(_update: Any) -> None:
        return None

    def one_call() -> float:
        t0 = time.perf_counter()
        out = engine.generate_batch(requests, [noop] * n)
        assert all(not isinstance(o, BaseException) for o in out)
        return time.perf_counter() - t0

    def separate() -> float:
        t0 = time.perf_counter()
        for r in requests:
            engine.generate(r, noop)
        return time.perf_counter() - t0

    engine.generate(requests[0], noop)
    one_call()
    in_batch: list[float] = []
    in_single: list[float] = []
    while len(in_batch) < max(1, min(args.rounds, 2)) and (
        not in_batch or time.monotonic() < budget.deadline
    ):
        in_batch.append(one_call())
        in_single.append(separate())
    engine.close()

    med = statistics.median
    speedup = med(times[1]) / med(times[n])
    engine_speedup = med(in_single) / med(in_batch)
    rows = [
        (f"seconds for {n} images", "rounds", "median", "min", "max"),
        *(stats_row(f"server, OPENLETZ_BATCH_MAX={m}", times[m]) for m in sizes),
        stats_row(f"engine in-process, generate_batch of {n}", in_batch),
        stats_row(f"engine in-process, {n} x generate", in_single),
    ]
    print()
    print(h.table(rows))
    ok = speedup >= args.target_batching
    context = {m: med(times[1]) / med(times[m]) for m in sizes[1:-1]}
    print(
        f"batching speedup through the server {speedup:.2f}x with the {n} jobs in one call "
        f"({verdict(ok)} target >= {args.target_batching:g}x)"
        + "".join(f"; with OPENLETZ_BATCH_MAX={m} {x:.2f}x" for m, x in context.items())
        + f"; engine alone {engine_speedup:.2f}x; engine calls per round (from claim times): "
        + ", ".join(f"max {m} {calls[m]}" for m in sizes[:-1])
        + f"; model: tiny SD, resolution {res}, {steps} steps, guidance {g:g}"
        + h.steal_note(stolen)
    )
    print(
        h.result_line(
            batching_speedup=speedup,
            **{f"batching_speedup_max{m}": x for m, x in context.items()},
            batching_engine_speedup=engine_speedup,
            batched_s=med(times[n]),
            single_s=med(times[1]),
            jobs=n,
            batch_max=n,
            resolution=res,
            steps=steps,
            rounds=len(times[1]),
            **({} if stolen is None else {"cpu_stolen": stolen}),
        ),
        flush=True,
    )
    return {"speedup": speedup}


# -- 3. preview cost -----------------------------------------------------------------


@dataclass
class PreviewTimes:
    step_s: list[float]  # one denoising step, previews off
    rgb_s: list[float]  # update.preview()
    jpeg_s: list[float]  # imaging.preview_jpeg(..., max_side=256)
    rounds: int

    @property
    def preview_s(self) -> list[float]:
        return [a + b for a, b in zip(self.rgb_s, self.jpeg_s, strict=True)]


def time_previews(engine: Any, request: Any, rounds: int, budget: Budget) -> PreviewTimes:
    """Per round, one run with previews off (step times from the callback's
    timestamps), then one of the same seed making a preview at every step but the
    last, as the worker does. The last step's callback interrupts: no VAE decode."""
    from openletz import imaging
    from openletz.engines.base import Interrupted, StepUpdate

    times = PreviewTimes([], [], [], 0)
    stamps: list[float] = []

    def off(update: StepUpdate) -> None:
        stamps.append(time.perf_counter())
        if update.step >= update.total:
            raise Interrupted

    def on(update: StepUpdate, keep: bool = True) -> None:
        if update.step >= (update.total if keep else 2):
            raise Interrupted
        assert update.preview is not None
        t0 = time.perf_counter()
        image = update.preview()
        t1 = time.perf_counter()
        imaging.preview_jpeg(image, max_side=256)
        t2 = time.perf_counter()
        if keep:
            times.rgb_s.append(t1 - t0)
            times.jpeg_s.append(t2 - t1)

    def run(on_step: Callable[[StepUpdate], None]) -> None:
        with contextlib.suppress(Interrupted):
            engine.generate(request, on_step)

    run(lambda u: on(u, keep=False))  # loads the model, warms the preview path
    while budget.more(times.rounds, rounds):
        stamps.clear()
        run(off)
        times.step_s.extend(b - a for a, b in itertools.pairwise(stamps))
        run(on)
        times.rounds += 1
    return times


def bench_preview(args: argparse.Namespace, models: Models, budget: Budget) -> dict[str, Any]:
    quiet_imports()
    from openletz.engines.base import GenerationRequest
    from openletz.engines.diffusers.engine import DiffusersEngine
    from openletz.engines.diffusers.registry import Registry

    steps, g = args.preview_steps, args.guidance
    cases = {"sd": 512, "sdxl": 1024}
    registry = models.registry(
        "preview",
        {
            f"tiny-{name}": {"family": name, "resolution": res, "steps": steps, "guidance": g}
            for name, res in cases.items()
        },
    )
    print(
        f"preview: one preview per step as the worker makes it (update.preview(), then "
        f"imaging.preview_jpeg(max_side=256)) against one denoising step; {steps} steps, "
        f"guidance {g:g}; tiny SD at 512 (64x64 latents), tiny SDXL at 1024 (128x128 latents)",
        flush=True,
    )
    engine = DiffusersEngine(Registry.load(registry), device="cpu")
    figures: dict[str, Any] = {}
    rows: list[tuple[Any, ...]] = [("ms", "n", "median", "min", "max")]
    verdicts = []
    med = statistics.median
    for k, (name, res) in enumerate(cases.items()):
        left = budget.deadline - time.monotonic()
        request = GenerationRequest(
            PROMPT, res, res, 1, 2, 3, "default", seed=7, base_model=f"tiny-{name}"
        )
        t = time_previews(
            engine, request, args.preview_rounds, Budget(max(0.0, left / (len(cases) - k)))
        )
        ratio = med(t.preview_s) / med(t.step_s)
        verdicts.append(ratio <= args.target_preview)
        label = f"tiny {name.upper()} {res}"
        rows += [
            stats_row(f"{label}: denoising step (previews off)", t.step_s, 1000),
            stats_row(f"{label}: preview (preview() + preview_jpeg)", t.preview_s, 1000),
            stats_row(f"{label}:   of which update.preview()", t.rgb_s, 1000),
            stats_row(f"{label}:   of which preview_jpeg", t.jpeg_s, 1000),
        ]
        figures[f"preview_ratio_{name}"] = f"{ratio:.5f}"
        figures[f"preview_ms_{name}"] = med(t.preview_s) * 1000
        figures[f"step_ms_{name}"] = med(t.step_s) * 1000
        print(
            f"  {label}: step {med(t.step_s) * 1000:.1f} ms, "
            f"preview {med(t.preview_s) * 1000:.2f} ms ({t.rounds} round(s))",
            flush=True,
        )
    engine.close()
    print()
    print(h.table(rows))
    ratios = ", ".join(f"{n} {figures[f'preview_ratio_{n}']}" for n in cases)
    print(
        f"preview / step: {ratios} ({verdict(all(verdicts))} target <= {args.target_preview:g}). "
        "With tiny random weights a step is far cheaper than a real model's while a preview "
        "costs the same, so these ratios are a pessimistic upper bound; the worker also makes "
        "at most one preview per OPENLETZ_PREVIEW_INTERVAL_S (0.25 s by default), not one "
        "per step."
    )
    print(h.result_line(**figures, steps=steps), flush=True)
    return figures


# -- full size: the real architectures, random weights -------------------------------


@dataclass
class Combo:
    """One architecture at one generated size, as a registry model of its own."""

    arch: str
    size: int
    guidance: float

    @property
    def model(self) -> str:
        return f"{self.arch}-{self.size}"

    @property
    def request_size(self) -> int:
        # the API takes 520..2160: a 512 px image is asked for at 520 and made at 512
        return max(API_SIZE, self.size)

    def job(self, seed: int) -> dict[str, Any]:
        return body(seed, self.request_size, self.model)


def full_size_dtype(device: str) -> Any:
    """The dtype the engine loads in on ``device`` (bf16 on CUDA where supported)."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def build_full_size(
    args: argparse.Namespace, root: Path, archs: Sequence[str], dtype: Any
) -> dict[str, Path]:
    """Each architecture built with random weights on the device, saved as a
    diffusers folder in ``dtype`` (as a real checkpoint in that dtype is)."""
    import gc

    import torch

    import _architectures as arch_module

    folders = {}
    for name in archs:
        t0 = time.perf_counter()
        pipe = arch_module.build(name, device=args.device, dtype=dtype, smoke=args.smoke)
        params = arch_module.parameters(pipe)
        folders[name] = root / name
        pipe.save_pretrained(folders[name], safe_serialization=True)
        del pipe
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        parts = ", ".join(f"{k} {v / 1e6:.0f} M" for k, v in params.items())
        print(
            f"  {name}{' (smoke: shrunk)' if args.smoke else ''}: "
            f"{sum(params.values()) / 1e9:.3f} B parameters ({parts}); built and saved in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    return folders


def bench_full_size(
    args: argparse.Namespace, models: Models, sections: Sequence[str], seconds: float
) -> dict[str, Any]:
    quiet_imports()
    import diffusers
    import torch

    import _architectures as arch_module
    from openletz.engines.base import GenerationRequest
    from openletz.engines.diffusers.engine import DiffusersEngine
    from openletz.engines.diffusers.registry import Registry

    started = time.monotonic()
    device, dtype = args.device, full_size_dtype(args.device)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    combos = [
        Combo(a, size, arch_module.ARCHITECTURES[a].guidance) for a in archs for size in sizes
    ]
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(
        f"full size: {', '.join(archs)} with random weights at {', '.join(map(str, sizes))} px, "
        f"{args.steps} steps, on {device} ({where}) in {str(dtype).removeprefix('torch.')}, "
        f"eager (no torch.compile); torch {torch.__version__}, diffusers {diffusers.__version__}"
        + (
            f"; {torch.get_num_threads()} CPU thread(s) here as in the worker"
            if device == "cpu"
            else ""
        ),
        flush=True,
    )
    folders = build_full_size(args, models.root, archs, dtype)
    # quality 1 runs --steps (serving, batching); quality 5 the preview run's steps
    preview_steps = max(args.steps, args.preview_steps)
    registry = models.registry(
        "full-size",
        {
            c.model: {
                "family": arch_module.ARCHITECTURES[c.arch].family,
                "source": folders[c.arch],
                "resolution": c.size,
                "steps": [args.steps] * 4 + [preview_steps],
                "guidance": c.guidance,
            }
            for c in combos
        },
    )
    figures: dict[str, Any] = {}
    rows: list[tuple[Any, ...]] = [("", "n", "median", "min", "max")]
    med = statistics.median

    def share(section: str) -> Budget:
        weights = {s: WEIGHTS[s] for s in sections}
        left = seconds - (time.monotonic() - started)
        return Budget(max(0.0, left * weights[section] / sum(weights.values()) / len(combos)))

    def make_servers() -> tuple[Server, Server]:
        batched, single = start_servers(
            models.root,
            registry,
            {
                "full-batched": {"batch_max": args.batch_jobs, "batch_window_s": args.batch_window},
                "full-single": {"batch_max": 1, "batch_window_s": args.batch_window},
            },
            device=device,
            timeout=300,
        )
        return batched, single

    need_servers = "serving" in sections or "batching" in sections
    servers = make_servers() if need_servers else None
    clients = {"batched": servers[0].client(), "single": servers[1].client()} if servers else {}
    seed = 0
    try:
        for c in combos:
            label = f"{c.arch} {c.size}"
            if servers is not None:
                # Load the model in both servers' workers, outside the timings.
                for client in clients.values():
                    run_jobs(client, [seed], 1, timeout=600, make=c.job)
                    seed += 1
            if "serving" in sections:
                served: list[float] = []
                bare_rates: list[float] = []
                family = arch_module.ARCHITECTURES[c.arch].family
                cls = (
                    diffusers.StableDiffusionXLPipeline
                    if family == "sdxl"
                    else (diffusers.StableDiffusionPipeline)
                )
                pipe = cls.from_pretrained(str(folders[c.arch]), dtype=dtype).to(device)
                pipe.set_progress_bar_config(disable=True)

                def bare(n: int, pipe: Any = pipe, c: Combo = c) -> float:
                    t0 = time.perf_counter()
                    for i in range(n):
                        with torch.inference_mode():
                            pipe(
                                PROMPT,
                                num_inference_steps=args.steps,
                                guidance_scale=c.guidance,
                                width=c.size,
                                height=c.size,
                                generator=torch.Generator("cpu").manual_seed(i),
                            ).images[0]
                    return n / (time.perf_counter() - t0)

                bare(2)  # warm: kernels, allocator
                budget = share("serving")
                while budget.more(len(served), args.rounds):
                    elapsed, _ = run_jobs(
                        clients["single"],
                        range(seed, seed + args.jobs),
                        args.in_flight,
                        timeout=600,
                        make=c.job,
                    )
                    seed += args.jobs
                    served.append(args.jobs / elapsed)
                    bare_rates.append(bare(args.jobs))
                    print(
                        f"  {label} serving round {len(served)}: server {served[-1]:.2f} img/s, "
                        f"bare pipe() {bare_rates[-1]:.2f} img/s",
                        flush=True,
                    )
                del pipe, bare
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                ratio = med(served) / med(bare_rates)
                rows += [
                    stats_row(f"{label}: server img/s (max 1, {args.in_flight} in flight)", served),
                    stats_row(f"{label}: bare pipe() img/s, one process", bare_rates),
                ]
                figures[f"serving_ratio_{c.arch}_{c.size}"] = ratio
                figures[f"server_img_s_{c.arch}_{c.size}"] = med(served)
                figures[f"bare_img_s_{c.arch}_{c.size}"] = med(bare_rates)
            if "batching" in sections:
                n = args.batch_jobs
                times: dict[str, list[float]] = {"batched": [], "single": []}
                calls: list[int] = []
                budget = share("batching")
                while budget.more(len(times["single"]), args.rounds):
                    for name, client in clients.items():
                        elapsed, ids = run_jobs(
                            client, range(seed, seed + n), n, timeout=600, make=c.job
                        )
                        seed += n
                        times[name].append(elapsed)
                        if name == "batched":
                            calls.append(bursts(client.started(ids)))
                    print(
                        f"  {label} batching round {len(times['single'])}: max {n} "
                        f"{times['batched'][-1]:.2f} s (~{calls[-1]} engine call(s)), "
                        f"max 1 {times['single'][-1]:.2f} s",
                        flush=True,
                    )
                speedup = med(times["single"]) / med(times["batched"])
                rows += [
                    stats_row(f"{label}: s for {n} jobs, OPENLETZ_BATCH_MAX={n}", times["batched"]),
                    stats_row(f"{label}: s for {n} jobs, OPENLETZ_BATCH_MAX=1", times["single"]),
                ]
                figures[f"batching_speedup_{c.arch}_{c.size}"] = speedup
        if servers is not None:
            for client in clients.values():
                client.close()
            for server in servers:
                server.proc.stop()
            servers = None
        if "preview" in sections:
            engine = DiffusersEngine(Registry.load(registry), device=device)
            for c in combos:
                label = f"{c.arch} {c.size}"
                request = GenerationRequest(
                    PROMPT,
                    c.request_size,
                    c.request_size,
                    5,
                    2,
                    3,
                    "default",
                    seed=7,
                    base_model=c.model,
                )
                t = time_previews(engine, request, args.preview_rounds, share("preview"))
                ratio = med(t.preview_s) / med(t.step_s)
                rows += [
                    stats_row(f"{label}: denoising step ms (previews off)", t.step_s, 1000),
                    stats_row(f"{label}: preview ms (preview() + preview_jpeg)", t.preview_s, 1000),
                ]
                figures[f"preview_ratio_{c.arch}_{c.size}"] = f"{ratio:.5f}"
                figures[f"step_ms_{c.arch}_{c.size}"] = med(t.step_s) * 1000
                print(
                    f"  {label} preview: step {med(t.step_s) * 1000:.1f} ms, preview "
                    f"{med(t.preview_s) * 1000:.2f} ms ({t.rounds} round(s))",
                    flush=True,
                )
            engine.close()
    finally:
        if servers is not None:
            for client in clients.values():
                client.close()
            for server in servers:
                server.proc.stop()
    print()
    print(h.table(rows))
    verdicts = []
    for c in combos:
        parts = []
        key = f"{c.arch}_{c.size}"
        if f"serving_ratio_{key}" in figures:
            ratio = figures[f"serving_ratio_{key}"]
            verdicts.append(ratio >= args.target_serving)
            parts.append(f"serving ratio {ratio:.3f}")
        if f"batching_speedup_{key}" in figures:
            parts.append(f"batching speedup {figures[f'batching_speedup_{key}']:.2f}x")
        if f"preview_ratio_{key}" in figures:
            ratio = float(figures[f"preview_ratio_{key}"])
            verdicts.append(ratio <= args.target_preview)
            parts.append(f"preview / step {ratio:.4f}")
        print(f"{c.arch} at {c.size}: {', '.join(parts)}")
    print(
        f"targets: serving ratio >= {args.target_serving:g}, preview / step <= "
        f"{args.target_preview:g}: {verdict(all(verdicts))}"
        + ("; smoke run: shrunk architectures, the figures mean nothing" if args.smoke else "")
    )
    print(
        h.result_line(
            **figures,
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            steps=args.steps,
            smoke=int(args.smoke),
        ),
        flush=True,
    )
    return figures


# -- main ----------------------------------------------------------------------------


#: defaults that differ with --full-size (and with --smoke, its CPU check)
FULL_SIZE_DEFAULTS = {"jobs": 8, "rounds": 2, "batch_jobs": 8, "max_seconds": 420.0}
SMOKE_DEFAULTS = {"jobs": 3, "rounds": 1, "batch_jobs": 4, "max_seconds": 120.0, "steps": 2}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated measurements to run: serving, batching, preview (default all)",
    )
    parser.add_argument(
        "-n", "--jobs", type=int, default=None, help="serving: jobs per round (40; full size 8)"
    )
    parser.add_argument(
        "--in-flight", type=int, default=IN_FLIGHT, help=f"serving: jobs in flight ({IN_FLIGHT})"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="serving, batching: rounds (3; full size 2)"
    )
    parser.add_argument(
        "--guidance", type=float, default=7.5, help="guidance scale of every tiny model (7.5)"
    )
    parser.add_argument(
        "--batch-jobs", type=int, default=None, help="batching: jobs (16; full size 8)"
    )
    parser.add_argument(
        "--batch-max",
        type=int,
        default=None,
        help="batching: OPENLETZ_BATCH_MAX of a second batching server, measured beside "
        "the one that takes all the jobs in one call (the server's default, 4; not with "
        "--full-size)",
    )
    parser.add_argument(
        "--batch-resolution", type=int, default=64, help="batching: model resolution (64)"
    )
    parser.add_argument("--batch-steps", type=int, default=4, help="batching: steps (4)")
    parser.add_argument(
        "--batch-window", type=float, default=0.2, help="batching: OPENLETZ_BATCH_WINDOW_S (0.2)"
    )
    parser.add_argument("--preview-steps", type=int, default=5, help="preview: steps per run (5)")
    parser.add_argument("--preview-rounds", type=int, default=2, help="preview: rounds (2)")
    parser.add_argument(
        "--engine-in-worker",
        action="store_true",
        help="run the servers' engine in the worker process (OPENLETZ_ENGINE_PROCESS=false), "
        "as a comparison",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="time budget: no further rounds once a measurement's share is spent "
        "(170; full size 420, not counting building and loading the models)",
    )
    full = parser.add_argument_group(
        "full size",
        "the real SD-Turbo and SDXL architectures with random weights (bench/_architectures.py) "
        "instead of the tiny models, each at each size, on a GPU",
    )
    full.add_argument("--full-size", action="store_true", help="measure the real architectures")
    full.add_argument(
        "--device", default=None, help="cuda (default where there is one) or cpu; full size only"
    )
    full.add_argument("--archs", default="sd-turbo,sdxl", help="architectures (sd-turbo,sdxl)")
    full.add_argument(
        "--sizes", default=None, help="generated sizes, comma-separated (512,1024; smoke 128)"
    )
    full.add_argument(
        "--steps", type=int, default=None, help="denoising steps per image (4; smoke 2)"
    )
    full.add_argument(
        "--smoke",
        action="store_true",
        help="shrunk widths and depths of the same architectures, so that a CPU runs the "
        "whole full-size path in a couple of minutes (a check of the code, not a measurement)",
    )
    parser.add_argument("--target-serving", type=float, default=0.9)
    parser.add_argument("--target-batching", type=float, default=2.0)
    parser.add_argument("--target-preview", type=float, default=0.02)
    args = parser.parse_args()
    if args.engine_in_worker:
        COMMON_SETTINGS["engine_process"] = False
    h.ensure_venv()
    if args.batch_max is None:
        from openletz.settings import Settings

        args.batch_max = Settings.model_fields["batch_max"].default
    defaults: dict[str, Any] = {"jobs": 40, "rounds": 3, "batch_jobs": 16, "max_seconds": 170.0}
    if args.full_size:
        defaults |= FULL_SIZE_DEFAULTS | {"steps": 4, "sizes": "512,1024"}
        if args.smoke:
            defaults |= SMOKE_DEFAULTS | {"sizes": "128"}
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        parser.error(f"--only takes {', '.join(SECTIONS)}; not {', '.join(unknown) or 'nothing'}")
    if args.batch_resolution % 8 or args.batch_resolution < 64:
        parser.error("--batch-resolution must be a multiple of 8, at least 64")
    if args.full_size:
        check_full_size_args(parser, args)
    elif args.smoke or args.device or args.sizes or args.steps:
        parser.error("--smoke, --device, --sizes and --steps go with --full-size")
    h.install_cleanup()
    # Nothing leaves this machine: the tiny models are local folders.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    started = time.monotonic()
    try:
        if not args.full_size or args.device == "cpu":
            print(f"{match_worker_threads()} torch CPU thread(s) here, as in a server's worker")
        models = Models(h.temp_dir("openletz-bench-engine-"))
        if args.full_size:
            bench_full_size(args, models, chosen, args.max_seconds)
            print(f"\n{time.monotonic() - started:.1f} s in all", flush=True)
            return 0
        runners = {"serving": bench_serving, "batching": bench_batching, "preview": bench_preview}
        for i, section in enumerate(chosen):
            if i:
                print()
            left = args.max_seconds - (time.monotonic() - started)
            share = sum(WEIGHTS[s] for s in chosen[i:])
            budget = Budget(max(0.0, left * WEIGHTS[section] / share))
            runners[section](args, models, budget)
        print(f"\n{time.monotonic() - started:.1f} s in all", flush=True)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        h.cleanup()


def check_full_size_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    import torch

    import _architectures as arch_module

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (try --smoke --device cpu)")
    if args.device == "cpu" and not args.smoke:
        print(
            "note: the full-size architectures on a CPU take minutes per image and "
            "tens of GB of RAM; --smoke checks the same path with shrunk ones",
            file=sys.stderr,
        )
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if not archs or any(a not in arch_module.ARCHITECTURES for a in archs):
        parser.error(f"--archs takes {', '.join(arch_module.ARCHITECTURES)}")
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        parser.error("--sizes takes numbers, e.g. 512,1024")
    if not sizes or any(x % 8 or x < 64 for x in sizes):
        parser.error("--sizes must be multiples of 8, at least 64")
    if args.steps < 1 or max(args.steps, args.preview_steps) < 2:
        parser.error("--steps must be at least 1 (and --preview-steps at least 2)")


if __name__ == "__main__":
    sys.exit(main())
