#!/usr/bin/env python3
"""Serving throughput of several source trees of openletz, side by side.

    .venv/bin/python bench/compare_serving.py before=/tmp/old/src after=src
    git worktree add /tmp/old <commit>      # a tree of an earlier commit

Each NAME=SRC starts one ``openletz serve`` (diffusers engine, one worker,
OPENLETZ_BATCH_MAX=1) whose processes import openletz from SRC (``PYTHONPATH``),
as ``bench_engine.py --only serving`` does: tiny SD generating 64x64 in --steps
steps, jobs of 520x520 with --in-flight in flight. With --batch-max above 1 the
servers batch, and each job has a prompt of its own, as in ``bench_engine.py
--only batching``: ``--batch-max 16 -n 16 --in-flight 16 --steps 4`` times its
batched rounds. Rounds of --jobs jobs go to each server
in turn, the order reversed every round, so that the machine's drift falls on
every tree alike. Printed: images per second of each round, then for each tree
its median and its ratio to the first tree's (of the medians, and the median of
the rounds' ratios). Same dependencies for all (this virtualenv): it compares
openletz's code, not its requirements. Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import bench_engine as be


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", metavar="NAME=SRC", help="a name and its src folder")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per tree (6)")
    parser.add_argument("-n", "--jobs", type=int, default=40, help="jobs per round (40)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps (1)")
    parser.add_argument(
        "--resolution", type=int, default=64, help="the model's resolution (64; 8 px a latent)"
    )
    parser.add_argument("--batch-max", type=int, default=1, help="OPENLETZ_BATCH_MAX (1)")
    parser.add_argument(
        "--batch-window", type=float, default=0.2, help="OPENLETZ_BATCH_WINDOW_S (0.2)"
    )
    parser.add_argument(
        "--in-flight", type=int, default=be.IN_FLIGHT, help=f"jobs in flight ({be.IN_FLIGHT})"
    )
    args = parser.parse_args()
    trees: dict[str, Path] = {}
    for item in args.trees:
        name, sep, src = item.partition("=")
        if not sep or not name or not (Path(src) / "openletz").is_dir():
            parser.error(f"{item!r}: expected NAME=SRC, SRC a folder that holds openletz/")
        trees[name] = Path(src).resolve()
    if len(trees) != len(args.trees):
        parser.error("the names must differ")

    own_env = h.openletz_env

    def env(data_dir: Path, **settings: Any) -> dict[str, str]:
        values = own_env(data_dir, **settings)
        values["PYTHONPATH"] = str(trees[Path(data_dir).name])
        return values

    h.ensure_venv()
    h.install_cleanup()
    os.environ["HF_HUB_OFFLINE"] = "1"  # the tiny model is a local folder
    be.h.openletz_env = env  # every server's processes import their own tree
    be.quiet_imports()
    try:
        models = be.Models(h.temp_dir("openletz-compare-serving-"))
        registry = models.registry(
            "serving",
            {
                "tiny-sd": {
                    "family": "sd",
                    "resolution": args.resolution,
                    "steps": args.steps,
                    "guidance": 7.5,
                }
            },
        )
        settings = {"batch_max": args.batch_max, "batch_window_s": args.batch_window}
        make = be.body if args.batch_max <= 1 else be.body_own_prompt
        servers = be.start_servers(models.root, registry, dict.fromkeys(trees, settings))
        clients = {n: s.client() for n, s in zip(trees, servers, strict=True)}
        rates: dict[str, list[float]] = {n: [] for n in trees}
        try:
            for c in clients.values():
                be.run_jobs(c, range(3), 2)  # loads the model
            seed = 100
            names = list(trees)
            for r in range(args.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    elapsed, _ = be.run_jobs(
                        clients[name], range(seed, seed + args.jobs), args.in_flight, make=make
                    )
                    seed += args.jobs
                    rates[name].append(args.jobs / elapsed)
                shown = ", ".join(f"{n} {rates[n][-1]:.1f}" for n in names)
                print(f"  round {r + 1}: {shown} img/s", flush=True)
        finally:
            for c in clients.values():
                c.close()
            for s in servers:
                s.proc.stop()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        h.cleanup()
    first = next(iter(trees))
    med = statistics.median
    for name, xs in rates.items():
        paired = med([b / a for a, b in zip(rates[first], xs, strict=True)])
        print(
            f"{name}: {med(xs):.2f} img/s; against {first}: {med(xs) / med(rates[first]):.3f} "
            f"(medians), {paired:.3f} (median of the rounds' ratios)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
