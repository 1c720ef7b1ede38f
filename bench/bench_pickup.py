#!/usr/bin/env python3
"""Pickup latency: time from ``POST /images`` returning to the job being "in progress".

What it measures
    One ``openletz serve`` (sandbox engine, ``OPENLETZ_SANDBOX_DURATION_S=0``, one
    worker) gets N small jobs (520x520, quality 1), one at a time: before each
    POST the previous job has finished and a short random gap has passed, so the
    worker is idle and the queue empty when the POST arrives.

    pickup (db)   = jobs.started_at (written by the worker when it claims the job,
                    naive UTC in the server's SQLite database) minus the client's
                    UTC wall clock right after the POST's response was read. Same
                    machine, same clock; it can be slightly negative when the
                    worker claims the job before the response reaches the client.
    pickup (poll) = for every k-th job, the client polls ``GET /images/{id}`` back
                    to back right after the POST, and takes the time until the
                    first answer that is no longer "new" (a cross-check; it
                    includes up to one GET round trip, and the polling competes
                    with the dispatcher for the API process).
    POST rtt      = the client-side round trip of the ``POST /images`` itself, the
                    reference figure measured in the same run.

How to read it
    p50/p99 in milliseconds over the N jobs. Target: pickup (db) p50 <= 20 ms.
    ``ratio`` = pickup p50 / POST rtt p50: how many POST round trips a client
    waits for a worker to take its job on an idle server (machine-independent
    enough to compare across runs).

Default duration: well under a minute (bounded by --max-seconds, default 110).
Talks only to 127.0.0.1; writes only to a temp dir.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

TERMINAL = ("ready", "failed", "interrupted")


def parse_utc(text: str) -> datetime:
    """SQLite's naive UTC 'YYYY-MM-DD HH:MM:SS[.ffffff]' as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Db:
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)

    def row(self, job_id: str) -> tuple[str, str | None, str | None]:
        cur = self.conn.execute(
            "SELECT status, started_at, finished_at FROM jobs WHERE id = ?", (job_id,)
        )
        found = cur.fetchone()
        if found is None:
            raise RuntimeError(f"job {job_id} is not in the database")
        return (str(found[0]), found[1], found[2])

    def wait_finished(
        self, job_id: str, timeout: float = 30.0
    ) -> tuple[str, str | None, str | None]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.row(job_id)
            if found[0] in TERMINAL:
                return found
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {found[0]!r} after {timeout:g} s")
            time.sleep(0.002)

    def close(self) -> None:
        self.conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-n", "--jobs", type=int, default=200, help="measured jobs (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured jobs first (default 5)")
    parser.add_argument(
        "--gap-ms",
        type=float,
        nargs=2,
        default=(20.0, 60.0),
        metavar=("MIN", "MAX"),
        help="random idle gap before each POST, ms (default 20 60)",
    )
    parser.add_argument(
        "--poll-every",
        type=int,
        default=4,
        help="cross-check every k-th job by polling GET (default 4; 0: never)",
    )
    parser.add_argument("--workers", type=int, default=1, help="OPENLETZ_WORKERS (default 1)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=110.0,
        help="stop posting after this long and report what was measured (default 110)",
    )
    parser.add_argument(
        "--target-ms", type=float, default=20.0, help="pickup p50 target (default 20)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the random gaps")
    args = parser.parse_args()
    h.ensure_venv()
    h.install_cleanup()
    rng = random.Random(args.seed)
    db: Db | None = None
    conn: http.client.HTTPConnection | None = None
    try:
        tmp = h.temp_dir("openletz-bench-pickup-")
        data = tmp / "data"
        data.mkdir()
        key = h.create_key(data)
        server = h.start_openletz(data, sandbox_duration_s=0, workers=args.workers)
        db = Db(data / "openletz.db")
        conn = http.client.HTTPConnection(h.HOST, server.port, timeout=30)
        request = {"prompt": "a benchmark lighthouse", "width": 520, "height": 520, "quality": 1}

        print(
            f"pickup: {args.jobs} sequential jobs (+{args.warmup} warm-up), "
            "520x520 q1, sandbox 0 s, "
            f"{args.workers} worker(s), gaps {args.gap_ms[0]:g}-{args.gap_ms[1]:g} ms, "
            f"GET cross-check every {args.poll_every or '-'}",
            flush=True,
        )
        started = time.monotonic()
        pickups: list[float] = []
        rtts: list[float] = []
        polled: list[float] = []
        polled_db: list[float] = []
        runs: list[float] = []  # started_at -> finished_at
        seen_in_progress = 0
        for i in range(args.warmup + args.jobs):
            if time.monotonic() - started > args.max_seconds:
                print(f"  stopped after {args.max_seconds:g} s (--max-seconds)", flush=True)
                break
            measured = i >= args.warmup
            poll = measured and args.poll_every > 0 and (i - args.warmup) % args.poll_every == 0
            time.sleep(rng.uniform(*args.gap_ms) / 1000.0)

            t0 = time.perf_counter()
            status, body = h.send(conn, "POST", "/images", request, key)
            t1 = time.perf_counter()
            t_response = datetime.now(UTC)
            if status != 200:
                raise RuntimeError(f"POST /images answered {status}: {body[:300]!r}")
            job_id = json.loads(body)["id"]

            t_seen = None
            if poll:
                while True:
                    status, body = h.send(conn, "GET", f"/images/{job_id}", key=key)
                    state = json.loads(body).get("status")
                    if state != "new":
                        t_seen = time.perf_counter() - t1
                        seen_in_progress += state == "in progress"
                        break
                    if time.perf_counter() - t1 > 30:
                        raise RuntimeError(f"job {job_id} still new after 30 s")

            state, started_at, finished_at = db.wait_finished(job_id)
            if state != "ready":
                raise RuntimeError(f"job {job_id} ended {state!r}")
            if not measured:
                continue
            assert started_at is not None
            assert finished_at is not None
            pickup = (parse_utc(started_at) - t_response).total_seconds() * 1000
            pickups.append(pickup)
            rtts.append((t1 - t0) * 1000)
            runs.append((parse_utc(finished_at) - parse_utc(started_at)).total_seconds() * 1000)
            if t_seen is not None:
                polled.append(t_seen * 1000)
                polled_db.append(pickup)
        elapsed = time.monotonic() - started

        if not pickups:
            raise RuntimeError("no job was measured")
        p = h.percentile
        rows = [
            ("figure (ms)", "n", "p50", "p99", "min", "max"),
            (
                "pickup (db)",
                len(pickups),
                p(pickups, 50),
                p(pickups, 99),
                min(pickups),
                max(pickups),
            ),
        ]
        if polled:
            rows.append(
                (
                    "pickup (db), polled subset",
                    len(polled_db),
                    p(polled_db, 50),
                    p(polled_db, 99),
                    min(polled_db),
                    max(polled_db),
                )
            )
            rows.append(
                (
                    "pickup (poll GET)",
                    len(polled),
                    p(polled, 50),
                    p(polled, 99),
                    min(polled),
                    max(polled),
                )
            )
        rows.append(
            (
                "POST /images rtt (reference)",
                len(rtts),
                p(rtts, 50),
                p(rtts, 99),
                min(rtts),
                max(rtts),
            )
        )
        rows.append(
            (
                "job run (started->finished)",
                len(runs),
                p(runs, 50),
                p(runs, 99),
                min(runs),
                max(runs),
            )
        )
        print()
        print(h.table(rows))
        ratio = p(pickups, 50) / p(rtts, 50)
        verdict = "meets" if p(pickups, 50) <= args.target_ms else "ABOVE"
        print(
            f"pickup p50 {p(pickups, 50):.2f} ms ({verdict} target <= {args.target_ms:g} ms); "
            f"{ratio:.2f} x the POST rtt p50; polled jobs seen 'in progress' before 'ready': "
            f"{seen_in_progress}/{len(polled)}; {elapsed:.1f} s"
        )
        figures: dict[str, float | int] = {
            "pickup_p50_ms": p(pickups, 50),
            "pickup_p99_ms": p(pickups, 99),
            "post_rtt_p50_ms": p(rtts, 50),
            "post_rtt_p99_ms": p(rtts, 99),
            "ratio_pickup_to_post": ratio,
        }
        if polled:
            figures["polled_p50_ms"] = p(polled, 50)
            figures["polled_p99_ms"] = p(polled, 99)
        figures["n"] = len(pickups)
        print(h.result_line(**figures))
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if conn is not None:
            conn.close()
        if db is not None:
            db.close()
        h.cleanup()


if __name__ == "__main__":
    sys.exit(main())
