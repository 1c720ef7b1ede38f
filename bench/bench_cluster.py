#!/usr/bin/env python3
"""The cluster against the embedded server: pickup latency and throughput.

What it runs
    cluster   one ``openletz serve`` with OPENLETZ_DISPATCHER=celery (PostgreSQL
              database of its own, RabbitMQ queues under a prefix of its own, Redis
              db 13) and one or two ``openletz worker --queues default`` processes.
    embedded  ``openletz serve`` with its own worker process(es) and SQLite.
    All with the sandbox engine, on 127.0.0.1, data in a temp dir.

1. Pickup latency
    N sequential small jobs per mode (520x520, quality 1,
    OPENLETZ_SANDBOX_DURATION_S=0, one worker), alternating cluster/embedded job
    by job so that both see the same machine noise. Before each POST the previous
    job has finished and a random 20-60 ms gap has passed: the worker is idle.

    pickup = "POST sent -> claimed": jobs.started_at (written by the worker when
             it claims the job, i.e. when the job turns "in progress"; from
             PostgreSQL for the cluster, from SQLite for embedded) minus the
             client's UTC wall clock right before the POST was sent. Same
             machine, same clock. This is the headline figure.
    context: "after response" = started_at minus the clock right after the POST's
             response was read (as bench_pickup.py measures; near 0 or negative,
             since a worker often claims the job before the response is back),
             and the POST's round trip itself.

    Target: cluster pickup p50 <= 100 ms. A Celery worker whose engine batches
    waits OPENLETZ_BATCH_WINDOW_S before claiming; the sandbox does not batch, so
    there is no such wait here (the output says so).

2. Throughput
    M jobs (520x520, quality 2, OPENLETZ_SANDBOX_DURATION_S=0.5) posted at once
    from 8 client threads; time from the first POST to the last job's finished_at
    in the database (all must be ready, each made once: attempts = 1, and no
    re-send by the reconciler, whose OPENLETZ_STALE_NEW_S is set far beyond a
    run). Cluster with 1 worker, embedded with 1 worker, cluster with 2 workers,
    embedded with 2 (OPENLETZ_WORKERS=2), in that order, in the same run. jobs/s
    = M / time. Ratios: 2 workers / 1 worker for each mode, and cluster /
    embedded at equal worker counts. "peak" is the most
    jobs running at once according to the rows' started_at/finished_at.

Default duration: about two minutes (pickup bounded by --max-seconds, default 60).
Talks only to 127.0.0.1. Everything it made is removed at the end, also on
Ctrl-C, SIGTERM or an error: its processes, its temp dir, its PostgreSQL
database, its RabbitMQ queues and exchanges, its jobs' Redis keys (openletz
workers declare nothing else on the broker).
Needs PostgreSQL, Redis and RabbitMQ on loopback (scripts/services starts them).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import http.client
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

TERMINAL = ("ready", "failed", "interrupted")
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/13"
# The server the tests use (scripts/services makes the "test" database); trust auth.
POSTGRES = os.environ.get(
    "OPENLETZ_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
LIVE_PREFIX = "openletz:live:"  # openletz.live_redis.RedisLiveStore's keys


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _asyncpg() -> Any:
    """asyncpg (the cluster's dependencies are imported only once the venv is sure)."""
    import asyncpg  # type: ignore[import-untyped]

    return asyncpg


def _broker() -> Any:
    from kombu.connection import Connection

    return Connection(BROKER, connect_timeout=5)  # type: ignore[no-untyped-call]


# No reconciler re-send during a run: a duplicate message would cost a worker a
# skip, and the throughput figures would include it. Checked on the rows too.
STALE_NEW_S = 3600


# -- what this run made outside its temp dir ------------------------------------


class External:
    """The PostgreSQL database, broker queues/exchanges and Redis keys of this run.
    ``cleanup()`` is idempotent and runs after the processes are stopped."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:8]
        self.prefix = f"openletz-bench-{self.token}"
        self.db_name = f"openletz_bench_{self.token}"
        self.db_url = POSTGRES.rsplit("/", 1)[0] + f"/{self.db_name}"
        self.db_created = False
        self.job_ids: list[str] = []  # the cluster's, for their Redis keys
        self._lock = threading.Lock()
        self._done = False

    def create_database(self) -> None:
        async def go() -> None:
            admin = await _asyncpg().connect(_plain(POSTGRES), timeout=10)
            try:
                self.db_created = True  # from here on, drop it (IF EXISTS) at the end
                await admin.execute(f'CREATE DATABASE "{self.db_name}"')
            finally:
                await admin.close()

        asyncio.run(go())

    def cleanup(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        problems = []
        try:
            self._delete_broker_objects()
        except Exception as exc:
            problems.append(f"broker: {exc}")
        if self.db_created:
            try:
                self._drop_database()
            except Exception as exc:
                problems.append(f"postgres: {exc}")
        if self.job_ids:
            try:
                import redis

                client = redis.Redis.from_url(REDIS, socket_timeout=5)
                try:
                    for i in range(0, len(self.job_ids), 500):
                        client.delete(*(LIVE_PREFIX + j for j in self.job_ids[i : i + 500]))
                finally:
                    client.close()
            except Exception as exc:
                problems.append(f"redis: {exc}")
        for p in problems:
            print(f"cleanup: could not remove everything ({p})", file=sys.stderr)

    def _delete_broker_objects(self) -> None:
        with _broker() as conn:
            channel = conn.channel()
            for queue in (f"{self.prefix}.default", f"{self.prefix}.dead"):
                try:
                    channel.queue_delete(queue)
                except Exception:  # not there: the channel is closed, take another
                    channel = conn.channel()
            for exchange in (self.prefix, f"{self.prefix}.dead"):
                try:
                    channel.exchange_delete(exchange)
                except Exception:
                    channel = conn.channel()

    def _drop_database(self) -> None:
        async def go() -> None:
            admin = await _asyncpg().connect(_plain(POSTGRES), timeout=10)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            finally:
                await admin.close()

        asyncio.run(go())

    def consumers(self) -> int | None:
        """Consumers of this run's job queue (None while it does not exist)."""
        with _broker() as conn:
            try:
                declared = conn.channel().queue_declare(f"{self.prefix}.default", passive=True)
            except Exception:
                return None
            return int(declared.consumer_count)


# -- processes ------------------------------------------------------------------


class Child(h.Proc):
    """``h.Proc`` started in a working directory of its own (no stray .env)."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path
    ) -> None:
        self.name = name
        self.port = int(env.get("OPENLETZ_PORT", "0"))
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(argv),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=h._child_setup,
                cwd=cwd,
            )
        h._procs.append(self.proc)


_children: list[Child] = []  # stopped ones too: their logs are printed on failure


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "openletz.cli", *args]


def create_key(env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run(
        _cli("keys", "create", "--user", "bench"),
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"openletz keys create failed:\n{out.stderr}")
    return out.stdout.strip().splitlines()[0].strip()


def start_server(name: str, env: dict[str, str], cwd: Path, ready_workers: int) -> Child:
    """``openletz serve``; returns once /health answers (and ``ready_workers`` are ready)."""
    proc = Child(name, _cli("serve", "--log-level", "warning"), env, cwd / f"{name}.log", cwd)
    _children.append(proc)

    def ready(health: dict[str, Any]) -> bool:
        return ready_workers == 0 or health["dispatcher"].get("ready", 0) >= ready_workers

    proc.wait_http("/health", ready=ready, timeout=90)
    return proc


def start_worker(name: str, env: dict[str, str], cwd: Path) -> Child:
    argv = _cli(
        "worker", "--queues", "default", "--name", f"{name}@bench", "--log-level", "warning"
    )
    proc = Child(name, argv, env, cwd / f"{name}.log", cwd)
    _children.append(proc)
    return proc


def wait_consumers(
    ext: External, count: int, workers: Sequence[Child], timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker {w.name} exited (code {w.proc.returncode})")
        if ext.consumers() == count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} worker(s) did not start consuming in {timeout:g} s")
        time.sleep(0.2)


# -- the job rows -----------------------------------------------------------------

Row = tuple[str, str, datetime | None, datetime | None]  # id, status, started, finished
Made = tuple[str, int, int]  # id, attempts, dispatches (re-sends by the reconciler)


def _sqlite_time(text: str | None) -> datetime | None:
    """SQLite's naive UTC 'YYYY-MM-DD HH:MM:SS[.ffffff]' as an aware datetime."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


class SqliteJobs:
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)

    def rows(self, ids: Sequence[str]) -> list[Row]:
        marks = ",".join("?" * len(ids))
        cur = self.conn.execute(
            f"SELECT id, status, started_at, finished_at FROM jobs WHERE id IN ({marks})",
            list(ids),
        )
        return [(r[0], r[1], _sqlite_time(r[2]), _sqlite_time(r[3])) for r in cur.fetchall()]

    def made(self, ids: Sequence[str]) -> list[Made]:
        marks = ",".join("?" * len(ids))
        cur = self.conn.execute(
            f"SELECT id, attempts, dispatches FROM jobs WHERE id IN ({marks})", list(ids)
        )
        return [(r[0], r[1], r[2]) for r in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()


class PostgresJobs:
    """asyncpg on an event loop of its own, called synchronously."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(_asyncpg().connect(_plain(url), timeout=10))

    def rows(self, ids: Sequence[str]) -> list[Row]:
        found = self.loop.run_until_complete(
            self.conn.fetch(
                "SELECT id, status, started_at, finished_at FROM jobs WHERE id = ANY($1::text[])",
                list(ids),
            )
        )
        return [(r[0], r[1], r[2], r[3]) for r in found]

    def made(self, ids: Sequence[str]) -> list[Made]:
        found = self.loop.run_until_complete(
            self.conn.fetch(
                "SELECT id, attempts, dispatches FROM jobs WHERE id = ANY($1::text[])",
                list(ids),
            )
        )
        return [(r[0], r[1], r[2]) for r in found]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def wait_finished(
    jobs: SqliteJobs | PostgresJobs, ids: Sequence[str], timeout: float, every: float
) -> list[Row]:
    deadline = time.monotonic() + timeout
    while True:
        rows = jobs.rows(ids)
        if len(rows) == len(ids) and all(r[1] in TERMINAL for r in rows):
            bad = [r for r in rows if r[1] != "ready"]
            if bad:
                raise RuntimeError(f"{len(bad)} job(s) did not end ready, e.g. {bad[0][:2]}")
            return rows
        if time.monotonic() > deadline:
            waiting = sum(1 for r in rows if r[1] not in TERMINAL) + len(ids) - len(rows)
            raise RuntimeError(f"{waiting} of {len(ids)} job(s) unfinished after {timeout:g} s")
        time.sleep(every)


# -- one side: an API server, a key, the rows --------------------------------------


class Target:
    def __init__(self, name: str, server: Child, key: str, jobs: SqliteJobs | PostgresJobs) -> None:
        self.name = name
        self.server = server
        self.key = key
        self.jobs = jobs
        self.conn = http.client.HTTPConnection(h.HOST, server.port, timeout=30)
        self.last_used = time.monotonic()
        self.posted: list[str] | None = None

    def post(self, body: dict[str, Any], conn: http.client.HTTPConnection | None = None) -> str:
        if conn is None:
            # uvicorn closes a keep-alive connection idle for 5 s: do not reuse one near that.
            if time.monotonic() - self.last_used > 2.0:
                self.conn.close()
            conn = self.conn
        status, raw = h.send(conn, "POST", "/images", body, self.key)
        if conn is self.conn:
            self.last_used = time.monotonic()
        if status != 200:
            raise RuntimeError(f"{self.name}: POST /images answered {status}: {raw[:300]!r}")
        job_id: str = json.loads(raw)["id"]
        if self.posted is not None:
            self.posted.append(job_id)
        return job_id

    def close(self) -> None:
        self.conn.close()
        self.jobs.close()


# -- 1. pickup -----------------------------------------------------------------------


def pickup_phase(
    targets: Sequence[Target], args: argparse.Namespace, rng: random.Random
) -> dict[str, dict[str, list[float]]]:
    request = {"prompt": "a benchmark lighthouse", "width": 520, "height": 520, "quality": 1}
    out: dict[str, dict[str, list[float]]] = {
        t.name: {"pickup": [], "rtt": [], "after": []} for t in targets
    }
    started = time.monotonic()
    for i in range(args.warmup + args.jobs):
        if time.monotonic() - started > args.max_seconds:
            print(f"  pickup stopped after {args.max_seconds:g} s (--max-seconds)", flush=True)
            break
        for t in targets:
            time.sleep(rng.uniform(*args.gap_ms) / 1000.0)
            t_sent = datetime.now(UTC)
            t0 = time.perf_counter()
            job_id = t.post(request)
            t1 = time.perf_counter()
            t_response = datetime.now(UTC)
            ((_, _, started_at, _),) = wait_finished(
                t.jobs, [job_id], timeout=30, every=args.poll_ms / 1000.0
            )
            if i < args.warmup:
                continue
            assert started_at is not None
            out[t.name]["pickup"].append((started_at - t_sent).total_seconds() * 1000)
            out[t.name]["after"].append((started_at - t_response).total_seconds() * 1000)
            out[t.name]["rtt"].append((t1 - t0) * 1000)
    return out


# -- 2. throughput -------------------------------------------------------------------


def peak_concurrency(rows: Sequence[Row]) -> int:
    events = []
    for _, _, s, f in rows:
        assert s is not None
        assert f is not None
        events += [(s, 1), (f, -1)]
    peak = now = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        now += delta
        peak = max(peak, now)
    return peak


def burst(target: Target, count: int, body: dict[str, Any], threads: int = 8) -> dict[str, Any]:
    """``count`` jobs posted at once from ``threads`` connections; until all are ready."""
    go = threading.Event()
    ids: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def poster(k: int, n: int) -> None:
        conn = http.client.HTTPConnection(h.HOST, target.server.port, timeout=30)
        try:
            conn.connect()
            go.wait()
            for _ in range(n):
                ids[k].append(target.post(body, conn))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    shares = [count // threads + (1 if k < count % threads else 0) for k in range(threads)]
    pool = [threading.Thread(target=poster, args=(k, n), daemon=True) for k, n in enumerate(shares)]
    for t in pool:
        t.start()
    time.sleep(0.1)  # all connected
    t_first = datetime.now(UTC)
    go.set()
    for t in pool:
        t.join(timeout=120)
    if errors:
        raise RuntimeError(f"{target.name}: posting failed: {errors[0]!r}")
    all_ids = [j for part in ids for j in part]
    rows = wait_finished(target.jobs, all_ids, timeout=60 + count * 5.0, every=0.02)
    end = max(r[3] for r in rows if r[3] is not None)
    seconds = (end - t_first).total_seconds()
    made = target.jobs.made(all_ids)
    again = [m for m in made if m[1] != 1 or m[2] != 0]
    if len(made) != count or again:
        raise RuntimeError(
            f"{target.name}: {len(again)} job(s) were run or sent more than once, "
            f"e.g. {again[:3]} (id, attempts, re-sends): the figures would count them"
        )
    return {"seconds": seconds, "rate": count / seconds, "peak": peak_concurrency(rows)}


def warm(target: Target, workers: int) -> None:
    """A few quick jobs at once, so that every worker has loaded its engine."""
    body = {"prompt": "warm-up", "width": 520, "height": 520, "quality": 1}
    ids = [target.post(body) for _ in range(2 * workers)]
    wait_finished(target.jobs, ids, timeout=60, every=0.02)


# -- main ----------------------------------------------------------------------------


def _batch_note() -> str:
    from openletz.engines.base import Engine
    from openletz.engines.sandbox import SandboxEngine
    from openletz.settings import Settings

    window = Settings.model_fields["batch_window_s"].default
    batches = SandboxEngine.batch_key is not Engine.batch_key
    return (
        f"note: a Celery worker waits OPENLETZ_BATCH_WINDOW_S (default {window:g} s) before "
        "claiming a job when its engine batches; the sandbox "
        + (
            "BATCHES, so that wait is in these figures"
            if batches
            else "does not batch, so there is no wait here"
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-n", "--jobs", type=int, default=100, help="pickup: measured jobs per mode (default 100)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="pickup: unmeasured jobs first (default 5)"
    )
    parser.add_argument(
        "--gap-ms",
        type=float,
        nargs=2,
        default=(20.0, 60.0),
        metavar=("MIN", "MAX"),
        help="pickup: random idle gap before each POST, ms (default 20 60)",
    )
    parser.add_argument(
        "--poll-ms", type=float, default=2.0, help="pickup: database poll interval, ms (default 2)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="pickup: stop posting after this long and report what was measured (default 60)",
    )
    parser.add_argument(
        "--target-ms", type=float, default=100.0, help="cluster pickup p50 target (default 100)"
    )
    parser.add_argument(
        "-m", "--burst", type=int, default=40, help="throughput: jobs posted at once (default 40)"
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=0.5,
        help="throughput: OPENLETZ_SANDBOX_DURATION_S, the time of a quality-2 job (default 0.5)",
    )
    parser.add_argument("--skip-throughput", action="store_true", help="measure pickup only")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random gaps")
    args = parser.parse_args()
    h.ensure_venv()
    h.install_cleanup()
    ext = External()

    def clean_all() -> None:
        h.cleanup()  # the processes first: nothing uses the database or queues any more
        ext.cleanup()

    atexit.register(clean_all)
    rng = random.Random(args.seed)
    targets: list[Target] = []
    t_begin = time.monotonic()
    try:
        tmp = h.temp_dir("openletz-bench-cluster-")
        print(
            f"cluster vs embedded, sandbox engine; cluster: PostgreSQL db {ext.db_name}, "
            f"queues {ext.prefix}.*, Redis {REDIS}; logs in {tmp}",
            flush=True,
        )
        print(_batch_note(), flush=True)

        # The cluster: one API server, its database and queues.
        ext.create_database()
        cdir = tmp / "cluster"
        cdir.mkdir()
        cluster_env = h.openletz_env(
            cdir,
            port=h.free_port(),
            dispatcher="celery",
            broker_url=BROKER,
            queue_prefix=ext.prefix,
            database_url=ext.db_url,
            redis_url=REDIS,
            secret_key="one-secret-for-the-bench-cluster",
            stale_new_s=STALE_NEW_S,
        )
        ckey = create_key(cluster_env, cdir)
        api = start_server("cluster-api", cluster_env, cdir, ready_workers=0)

        def cluster_workers(n: int, duration: float, first: int) -> list[Child]:
            env = {**cluster_env, "OPENLETZ_SANDBOX_DURATION_S": str(duration)}
            return [start_worker(f"cluster-worker{first + k}", env, cdir) for k in range(n)]

        def embedded(name: str, workers: int, duration: float) -> tuple[Child, str]:
            edir = tmp / name
            edir.mkdir()
            env = h.openletz_env(
                edir,
                port=h.free_port(),
                workers=workers,
                sandbox_duration_s=duration,
                stale_new_s=STALE_NEW_S,
            )
            key = create_key(env, edir)
            return start_server(name, env, edir, ready_workers=workers), key

        # 1. pickup
        pw = cluster_workers(1, 0.0, 1)
        wait_consumers(ext, 1, pw)
        cluster = Target("cluster", api, ckey, PostgresJobs(ext.db_url))
        cluster.posted = ext.job_ids
        targets.append(cluster)
        esrv, ekey = embedded("embedded-pickup", 1, 0.0)
        emb = Target("embedded", esrv, ekey, SqliteJobs(esrv.log_path.parent / "openletz.db"))
        targets.append(emb)
        print(
            f"pickup: {args.jobs} sequential jobs per mode (+{args.warmup} warm-up), alternating "
            f"cluster/embedded, 520x520 q1, sandbox 0 s, 1 worker each, gaps "
            f"{args.gap_ms[0]:g}-{args.gap_ms[1]:g} ms",
            flush=True,
        )
        picked = pickup_phase([cluster, emb], args, rng)
        emb.close()
        targets.remove(emb)
        esrv.stop()
        for w in pw:
            w.stop()
        p = h.percentile
        for name in ("cluster", "embedded"):
            if not picked[name]["pickup"]:
                raise RuntimeError(f"no {name} job was measured")

        # 2. throughput
        tput: dict[tuple[str, int], dict[str, Any]] = {}
        if not args.skip_throughput:
            body = {"prompt": "a benchmark harbour", "width": 520, "height": 520, "quality": 2}
            print(
                f"throughput: {args.burst} jobs posted at once, 520x520 q2, sandbox "
                f"{args.duration_s:g} s per job; cluster 1w, embedded 1w, cluster 2w, embedded 2w",
                flush=True,
            )
            tw = cluster_workers(1, args.duration_s, 2)
            wait_consumers(ext, 1, tw)
            for workers in (1, 2):
                if workers == 2:
                    tw += cluster_workers(1, args.duration_s, 3)
                    wait_consumers(ext, 2, tw)
                warm(cluster, workers)
                tput[("cluster", workers)] = burst(cluster, args.burst, body)
                print(
                    f"  cluster {workers}w: {tput[('cluster', workers)]['rate']:.2f} jobs/s",
                    flush=True,
                )
                esrv, ekey = embedded(f"embedded-{workers}w", workers, args.duration_s)
                emb = Target(
                    "embedded", esrv, ekey, SqliteJobs(esrv.log_path.parent / "openletz.db")
                )
                targets.append(emb)
                warm(emb, workers)
                tput[("embedded", workers)] = burst(emb, args.burst, body)
                print(
                    f"  embedded {workers}w: {tput[('embedded', workers)]['rate']:.2f} jobs/s",
                    flush=True,
                )
                emb.close()
                targets.remove(emb)
                esrv.stop()

        # Report.
        rows: list[tuple[Any, ...]] = [("pickup (ms)", "n", "p50", "p99", "min", "max")]
        for name in ("cluster", "embedded"):
            for what, label in (
                ("pickup", "pickup: POST sent -> claimed"),
                ("after", "claimed - response read"),
                ("rtt", "POST rtt"),
            ):
                xs = picked[name][what]
                rows.append((f"{name} {label}", len(xs), p(xs, 50), p(xs, 99), min(xs), max(xs)))
        print()
        print(h.table(rows))
        c50 = p(picked["cluster"]["pickup"], 50)
        e50 = p(picked["embedded"]["pickup"], 50)
        verdict = "meets" if c50 <= args.target_ms else "ABOVE"
        ratio = c50 / e50
        print(
            f"cluster pickup (POST sent -> claimed) p50 {c50:.2f} ms ({verdict} target "
            f"<= {args.target_ms:g} ms), embedded {e50:.2f} ms; cluster / embedded = "
            f"{ratio:.2f}"
        )
        figures: dict[str, float | int] = {
            "cluster_pickup_p50_ms": c50,
            "cluster_pickup_p99_ms": p(picked["cluster"]["pickup"], 99),
            "embedded_pickup_p50_ms": e50,
            "embedded_pickup_p99_ms": p(picked["embedded"]["pickup"], 99),
            "ratio_pickup_cluster_to_embedded": ratio,
            "cluster_after_response_p50_ms": p(picked["cluster"]["after"], 50),
            "embedded_after_response_p50_ms": p(picked["embedded"]["after"], 50),
            "cluster_post_rtt_p50_ms": p(picked["cluster"]["rtt"], 50),
            "embedded_post_rtt_p50_ms": p(picked["embedded"]["rtt"], 50),
        }
        if tput:
            print()
            trows: list[tuple[Any, ...]] = [
                ("throughput", "workers", "jobs", "seconds", "jobs/s", "peak")
            ]
            for (mode, workers), r in tput.items():
                trows.append((mode, workers, args.burst, r["seconds"], r["rate"], r["peak"]))
            print(h.table(trows))
            rate = {k: v["rate"] for k, v in tput.items()}
            ideal = 1.0 / args.duration_s if args.duration_s > 0 else float("inf")
            ratios = {
                "cluster_2w_over_1w": rate[("cluster", 2)] / rate[("cluster", 1)],
                "embedded_2w_over_1w": rate[("embedded", 2)] / rate[("embedded", 1)],
                "cluster_over_embedded_1w": rate[("cluster", 1)] / rate[("embedded", 1)],
                "cluster_over_embedded_2w": rate[("cluster", 2)] / rate[("embedded", 2)],
            }
            print(
                "ratios: "
                + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
                + f" (one worker's ceiling: {ideal:.2f} jobs/s)"
            )
            for (mode, workers), r in tput.items():
                figures[f"{mode}_{workers}w_jobs_s"] = r["rate"]
            figures.update(ratios)
        figures["n"] = min(len(picked["cluster"]["pickup"]), len(picked["embedded"]["pickup"]))
        print(f"({time.monotonic() - t_begin:.1f} s)")
        print(h.result_line(**figures))
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        for child in _children:
            print(f"--- {child.name} log ({child.log_path}), last lines:", file=sys.stderr)
            print(child.log_tail(30), file=sys.stderr)
        return 1
    finally:
        for t in targets:
            with contextlib.suppress(Exception):
                t.close()
        clean_all()


if __name__ == "__main__":
    sys.exit(main())
