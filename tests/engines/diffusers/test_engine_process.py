"""The diffusers engine in a process of its own (``engines.process``): the same images,
steps, previews, interruptions and errors as in-process, and a child that dies is
reported and replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openletz.engines.base import (
    EngineError,
    GenerationRequest,
    Interrupted,
    StepCallback,
    StepUpdate,
)
from openletz.engines.diffusers.engine import DiffusersEngine
from openletz.engines.diffusers.registry import Registry
from openletz.engines.factory import make_engine
from openletz.engines.process import EngineProcess
from openletz.settings import Settings
from tests.engines.diffusers.conftest import MISSING_MODEL, write_registry

pytestmark = pytest.mark.slow


def request(**overrides: object) -> GenerationRequest:
    values: dict = {
        "prompt": "a lighthouse at dusk",
        "width": 96,
        "height": 64,
        "quality": 3,
        "creativity": 2,
        "system_version": 2,
        "mode": "default",
        "seed": 7,
    }
    values.update(overrides)
    return GenerationRequest(**values)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def registry(tiny_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(
        tmp_path_factory.mktemp("registry") / "models.yaml",
        tiny_folders,
        extra={"missing": MISSING_MODEL},
    )


@pytest.fixture(scope="module")
def states() -> list[tuple[str, str, str | None]]:
    return []


@pytest.fixture(scope="module")
def engine(registry: Path, states: list[tuple[str, str, str | None]]) -> Iterator[EngineProcess]:
    made = make_engine(
        Settings(engine="diffusers", models_file=str(registry), device="cpu", cpu_threads=1),
        on_model_state=lambda *s: states.append(s),
    )
    assert isinstance(made, EngineProcess)
    made.load()
    yield made
    made.close()


@pytest.fixture(scope="module")
def local(registry: Path) -> DiffusersEngine:
    return DiffusersEngine(Registry.load(registry), device="cpu", cpu_threads=1)


def test_it_makes_the_images_the_engine_makes_in_process(
    engine: EngineProcess, local: DiffusersEngine
) -> None:
    assert engine.name == "diffusers"
    assert engine.batches
    assert engine.pid is not None
    assert engine.pid != os.getpid()
    wanted = request()

    def watch(steps: list[StepUpdate], previews: dict[int, Image.Image]) -> StepCallback:
        def on_step(update: StepUpdate) -> None:
            steps.append(update)
            if update.preview is not None:
                previews[update.step] = update.preview()

        return on_step

    steps: list[StepUpdate] = []
    previews: dict[int, Image.Image] = {}
    image = engine.generate(wanted, watch(steps, previews))
    assert image.size == (96, 64)
    local_previews: dict[int, Image.Image] = {}
    assert np.array_equal(pixels(image), pixels(local.generate(wanted, watch([], local_previews))))
    assert [(u.step, u.total) for u in steps] == [(1, 3), (2, 3), (3, 3)]
    # The child offers the first step's preview (then one a preview_interval_s), the
    # same as the one made in-process.
    assert previews[1].mode == "RGB"
    assert np.array_equal(pixels(previews[1]), pixels(local_previews[1]))
    unresized = engine.generate_unresized(wanted, lambda u: None)
    assert unresized.size == local.generate_unresized(wanted, lambda u: None).size
    assert engine.batch_key(wanted) == local.batch_key(wanted)


@pytest.mark.parametrize(("interval", "offered"), [(0.0, [1, 2, 3]), (60.0, [1])])
def test_previews_come_at_most_one_an_interval_and_never_at_the_last_step(
    interval: float, offered: list[int]
) -> None:
    engine = EngineProcess(
        Settings(engine="tests.fixtures.engines:counts_previews", preview_interval_s=interval),
        name="counts-previews",
    )
    try:
        shown: dict[int, tuple[int, int, int]] = {}

        def on_step(update: StepUpdate) -> None:
            if update.preview is not None:
                shown[update.step] = update.preview().getpixel((0, 0))

        image = engine.generate(request(), on_step)
        # Four steps; the first pixel's red counts the previews made in the child.
        assert image.getpixel((0, 0)) == (len(offered), 0, 0)
        assert shown == {step: (n, 0, 0) for n, step in enumerate(offered, 1)}
    finally:
        engine.close()


def test_a_batch_equals_its_images_made_alone(engine: EngineProcess) -> None:
    wanted = [request(seed=s) for s in (1, 2, 3)]
    together = engine.generate_batch(wanted, [lambda u: None] * 3)
    for one, image in zip(wanted, together, strict=True):
        assert isinstance(image, Image.Image)
        alone = engine.generate(one, lambda u: None)
        assert np.abs(pixels(image) - pixels(alone)).max() <= 1


def test_an_interruption_stops_its_job_and_only_its_job(engine: EngineProcess) -> None:
    seen: dict[int, list[int]] = {0: [], 1: []}

    def stop_after(index: int, step: int):  # type: ignore[no-untyped-def]
        def on_step(update: StepUpdate) -> None:
            seen[index].append(update.step)
            if update.step == step:
                raise Interrupted

        return on_step

    out = engine.generate_batch(
        [request(seed=1), request(seed=2)], [stop_after(0, 1), stop_after(1, 99)]
    )
    assert isinstance(out[0], Interrupted)
    assert isinstance(out[1], Image.Image)
    assert seen == {0: [1], 1: [1, 2, 3]}  # its on_step is not called again
    with pytest.raises(Interrupted):
        engine.generate(request(), stop_after(0, 2))
    # Stopped at the last step, when the child has made the image already: the
    # outcome is still what on_step raised, as in-process.
    with pytest.raises(Interrupted):
        engine.generate(request(), stop_after(0, 3))
    out = engine.generate_batch(
        [request(seed=1), request(seed=2)], [stop_after(0, 3), stop_after(1, 99)]
    )
    assert isinstance(out[0], Interrupted)
    assert isinstance(out[1], Image.Image)


def test_a_call_sent_behind_one_whose_process_dies_runs_in_the_next() -> None:
    # The child runs the calls it is sent one at a time: one queued behind a call
    # that kills it never began there, and a fresh child runs it.
    engine = EngineProcess(
        Settings(engine="tests.fixtures.engines:exit_in_generate", sandbox_duration_s=1.0),
        name="sandbox",
    )
    try:
        under_way = threading.Event()
        failed: list[BaseException] = []

        def poisoned() -> None:
            try:
                engine.generate(request(prompt="poison"), lambda u: under_way.set())
            except EngineError as exc:
                failed.append(exc)

        thread = threading.Thread(target=poisoned)
        thread.start()
        # Step 1 of 18: the child dies at step 2, about 50 ms on.
        assert under_way.wait(30)
        image = engine.generate(request(), lambda u: None)
        thread.join(30)
        assert image.size == (96, 64)
        assert len(failed) == 1
        assert "ended unexpectedly" in str(failed[0])
    finally:
        engine.close()


def test_an_interrupted_job_stops_in_the_child_within_one_step() -> None:
    engine = EngineProcess(
        Settings(engine="tests.fixtures.engines:counts_steps"), name="counts-steps"
    )
    try:

        def stop_at(step: int) -> StepCallback:
            def on_step(update: StepUpdate) -> None:
                if update.step == step:
                    raise Interrupted

            return on_step

        out = engine.generate_batch([request(), request()], [stop_at(2), lambda u: None])
        assert isinstance(out[0], Interrupted)
        assert isinstance(out[1], Image.Image)
        # The other image's first pixel counts the steps each job ran in the child.
        ran_0, ran_1, _ = out[1].getpixel((0, 0))
        assert ran_1 == 8
        assert 2 <= ran_0 <= 3
    finally:
        engine.close()


def test_errors_come_back_as_they_are(engine: EngineProcess) -> None:
    with pytest.raises(EngineError, match="no model named 'nope'"):
        engine.generate(request(base_model="nope"), lambda u: None)
    with pytest.raises(EngineError, match="missing"):
        engine.generate(request(base_model="missing"), lambda u: None)

    class Odd(Exception):
        def __init__(self, a: int, b: int) -> None:  # pickles badly: two arguments
            super().__init__(f"odd {a} {b}")

    def odd(update: StepUpdate) -> None:
        raise Odd(1, 2)

    # A step callback's own exception reaches the engine, which fails the call with it.
    with pytest.raises(Exception, match="odd 1 2"):
        engine.generate(request(), odd)


def test_model_states_come_from_the_child(
    engine: EngineProcess, states: list[tuple[str, str, str | None]]
) -> None:
    current = engine.model_states()
    assert current["sd"][0] == "ready"
    assert current["missing"][0] in ("missing", "broken")  # broken once a job asked for it
    assert ("sd", "ready", None) in states  # reported as they changed, through the pipe


def test_quick_calls_are_answered_beside_a_generation(engine: EngineProcess) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(update: StepUpdate) -> None:
        started.set()
        release.wait(10)

    worker = threading.Thread(target=engine.generate, args=(request(), slow))
    worker.start()
    try:
        assert started.wait(30)
        t0 = time.monotonic()
        assert engine.model_states()["sd"][0] == "ready"
        assert engine.batch_key(request()) is not None
        assert time.monotonic() - t0 < 5
    finally:
        release.set()
        worker.join(30)


def test_a_child_that_dies_fails_its_call_and_is_replaced(registry: Path) -> None:
    states: list[tuple[str, str, str | None]] = []
    made = make_engine(
        Settings(engine="diffusers", models_file=str(registry), device="cpu", cpu_threads=1),
        on_model_state=lambda *s: states.append(s),
    )
    assert isinstance(made, EngineProcess)
    try:
        made.load()
        first = made.pid
        assert first is not None

        def kill(update: StepUpdate) -> None:
            os.kill(first, signal.SIGKILL)
            time.sleep(0.5)

        with pytest.raises(EngineError, match="process ended unexpectedly"):
            made.generate(request(), kill)
        # Its models went with it, and the health of the worker says so.
        deadline = time.monotonic() + 10
        while ("sd", "unloaded", None) not in states:
            assert time.monotonic() < deadline, states
            time.sleep(0.05)
        states.clear()
        image = made.generate(request(), lambda u: None)  # a fresh child
        assert ("sd", "ready", None) in states
        assert image.size == (96, 64)
        assert made.pid not in (None, first)
    finally:
        made.close()
    assert made.pid is None


def test_a_replacement_child_loads_the_preloaded_models_before_any_job(
    registry: Path,
) -> None:
    states: list[tuple[str, str, str | None]] = []
    made = make_engine(
        Settings(
            engine="diffusers",
            models_file=str(registry),
            device="cpu",
            cpu_threads=1,
            preload_models="sd",
        ),
        on_model_state=lambda *s: states.append(s),
    )
    assert isinstance(made, EngineProcess)
    try:
        made.load()
        assert made.model_states()["sd"][0] == "ready"
        first = made.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while ("sd", "unloaded", None) not in states:
            assert time.monotonic() < deadline, states
            time.sleep(0.05)
        # No job: a quick call starts the replacement, which loads "sd" by itself.
        made.model_states()
        assert made.pid not in (None, first)
        deadline = time.monotonic() + 60
        while made.model_states()["sd"][0] != "ready":
            assert time.monotonic() < deadline, states
            time.sleep(0.1)
        assert states[-1] == ("sd", "ready", None)
    finally:
        made.close()


def test_the_child_ends_when_its_worker_is_gone(registry: Path, tmp_path: Path) -> None:
    # The worker may end without a word (kill -9, or giving up on a stuck engine):
    # the child notices its pipe close and ends too, even mid-generation.
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import os, sys, time\n"
        "from openletz.engines.factory import make_engine\n"
        "from openletz.settings import Settings\n"
        f"e = make_engine(Settings(engine='diffusers', models_file={str(registry)!r}, "
        "device='cpu', cpu_threads=1))\n"
        "e.load()\n"
        "print(e.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the engine's process outlived its worker"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_in_process_when_asked(registry: Path) -> None:
    made = make_engine(
        Settings(engine="diffusers", models_file=str(registry), device="cpu", engine_process=False)
    )
    assert isinstance(made, DiffusersEngine)


def test_what_the_child_prints_goes_to_the_log_and_signals_leave_it_alone(
    tmp_path: Path,
) -> None:
    # An embedded worker's stdout is its channel to the API process: nothing the
    # engine prints may land there. A SIGTERM or Ctrl-C to the whole process group
    # stops the worker, which then ends its engine; the engine does not end first.
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import os, signal, sys\n"
        "from openletz.engines.base import GenerationRequest\n"
        "from openletz.engines.process import EngineProcess\n"
        "from openletz.settings import Settings\n"
        "e = EngineProcess(Settings(engine='tests.fixtures.engines:chatty', "
        "sandbox_duration_s=0), name='chatty')\n"
        "e.load()\n"
        "r = GenerationRequest('p', 64, 64, 1, 2, 3, 'default', seed=1)\n"
        "e.generate(r, lambda u: None)\n"
        "pid = e.pid\n"
        "os.kill(pid, signal.SIGTERM)\n"
        "os.kill(pid, signal.SIGINT)\n"
        "import time; time.sleep(0.5)\n"
        "print('image', e.generate(r, lambda u: None).size, e.pid == pid, flush=True)\n"
        "e.close()\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "image (64, 64) True\n"
    assert "chatty engine: generating" in done.stderr
