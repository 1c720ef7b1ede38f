"""An engine in a process of its own, behind the same :class:`Engine` interface.

A diffusers pipeline is Python between its kernels: hundreds of small calls per
step, each taking Python's GIL again after its kernel. In the worker process,
threads that deliver the last images (resizing, encoding, storing) and the event
loop (the database, progress) take the GIL too, and every time they hold it the
engine's thread waits: measured on two cores, the engine spent a third of each
call waiting. In a process of its own, the engine waits for nothing but its
device, and the worker's threads for nothing but the engine's answers.

:class:`EngineProcess` starts ``python -m openletz.engines.process`` and speaks to
it over two pipes (``multiprocessing.connection``: pickled messages). The child
builds the real engine from the worker's settings and runs each call in its main
thread. Each denoising step comes to the worker as a message, where the caller's
``on_step`` runs, while the child goes on with the next step: it does not wait for
the worker (a round trip a step, with the engine idle). An ``Interrupted`` (or any
exception) raised by ``on_step`` goes back to the child, which raises it in that
job's step callback at its next step: interruption stops a pipeline within one
step, and the job's outcome is what ``on_step`` raised, as in-process, even when
the child had already finished. A step carries a preview when the child made one:
at most one every ``preview_interval_s`` (the worker wants no more), and never at
the last step, which the image follows at once. Calls that need no pipeline
(``batch_key``, ``model_states``) are answered at once, beside a running
generation.

If the child dies (a crash in a native library, the kernel's OOM killer), the
calls under way fail with an ``EngineError`` that says so, and the next call
starts a fresh child.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from openletz.engines.base import (
    Engine,
    EngineError,
    GenerationRequest,
    StepCallback,
    StepUpdate,
)
from openletz.settings import Settings

log = logging.getLogger(__name__)

ModelStateCallback = Callable[[str, str, str | None], None]

#: answered by the child's reader thread at once, even while a generation runs
_QUICK = frozenset({"batch_key", "model_states"})
#: the calls that take step callbacks: name -> whether they take a batch
_GENERATIONS = {
    "generate": False,
    "generate_unresized": False,
    "generate_batch": True,
    "generate_batch_unresized": True,
}


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else an ``EngineError`` that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return EngineError(f"{type(exc).__name__}: {exc}")
    return exc


# -- the worker's side ---------------------------------------------------------------


@dataclass(eq=False)
class _Call:
    """A call under way: what the reader thread received for it, in order (its steps,
    then its answer), for the calling thread to handle."""

    inbox: queue.SimpleQueue[tuple[Any, ...]] = field(default_factory=queue.SimpleQueue)
    #: the child it was sent to: only that child's end fails it
    proc: subprocess.Popen[bytes] | None = None
    #: the jobs (batch indices) whose on_step raised, and what it raised: their outcome
    stopped: dict[int, BaseException] = field(default_factory=dict)
    #: whether the child runs it in its turn (its main thread), not at once
    queued: bool = True
    #: its result or error came (its caller may not have read it yet)
    answered: bool = False
    #: whether a caller reads its inbox (a replacement child's preload has none)
    attended: bool = True


class EngineProcess(Engine):
    """The engine that ``settings`` name, run in a child process (see the module)."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        on_model_state: ModelStateCallback | None = None,
    ) -> None:
        self.name = name
        self._settings = settings
        self._on_model_state = on_model_state
        self._lock = threading.Lock()  # the child's start and every send
        self._proc: subprocess.Popen[bytes] | None = None
        self._send_conn: Connection | None = None
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._batches = False
        self._closing = False
        #: the child's models that are in its memory (loading or ready), from its
        #: reports: if it dies, they are gone with it
        self._in_memory: set[str] = set()
        self._starts = 0

    # -- Engine -------------------------------------------------------------------

    @property
    def batches(self) -> bool:
        self._ensure_started()
        return self._batches

    @property
    def queues_calls(self) -> bool:
        # The child runs its calls one after the other, in the order they came.
        return True

    def load(self) -> None:
        self._ensure_started()
        self._call("load", ())

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        image: Image.Image = self._call("generate", (request,), [on_step])
        return image

    def generate_unresized(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        image: Image.Image = self._call("generate_unresized", (request,), [on_step])
        return image

    def generate_batch(
        self, requests: Sequence[GenerationRequest], on_steps: Sequence[StepCallback]
    ) -> list[Image.Image | BaseException]:
        out: list[Image.Image | BaseException] = self._call(
            "generate_batch", (list(requests),), on_steps
        )
        return out

    def generate_batch_unresized(
        self, requests: Sequence[GenerationRequest], on_steps: Sequence[StepCallback]
    ) -> list[Image.Image | BaseException]:
        out: list[Image.Image | BaseException] = self._call(
            "generate_batch_unresized", (list(requests),), on_steps
        )
        return out

    def batch_key(self, request: GenerationRequest) -> Hashable | None:
        key: Hashable | None = self._call("batch_key", (request,))
        return key

    def model_states(self) -> Mapping[str, tuple[str, str | None]]:
        states: Mapping[str, tuple[str, str | None]] = self._call("model_states", ())
        return states

    def abandon(self) -> bool:
        """Kill the child, whatever it is doing: the call under way fails, those sent
        behind it go to a fresh child (its models load again)."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            log.error("killing the %s engine's process %d, stuck in a call", self.name, proc.pid)
            proc.kill()
        return True

    def close(self) -> None:
        with self._lock:
            self._closing = True
            proc, conn = self._proc, self._send_conn
            self._proc = self._send_conn = None
        if proc is None:
            return
        try:
            if conn is not None:
                conn.send(("close",))
                conn.close()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int | None:
        """The child's process id, while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # -- the child ----------------------------------------------------------------

    def _ensure_started(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            if self._closing:
                raise EngineError("the engine is closed")
            if self._send_conn is not None:  # a child that died, its end not yet read
                self._send_conn.close()
                self._send_conn = None
            self._start()

    def _start(self) -> None:
        """Start the child and read its hello (the lock is held)."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "openletz.engines.process",
                    str(to_child_r),
                    str(from_child_w),
                ],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                # A worker's stdout may be its channel to the API process: whatever
                # model code prints goes to the log (stderr) instead.
                stdout=sys.stderr.fileno(),
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        send = Connection(to_child_w, readable=False)
        recv = Connection(from_child_r, writable=False)
        try:
            send.send(self._settings)
            hello = recv.recv()
        except (EOFError, OSError) as exc:
            proc.kill()
            code = proc.wait()
            send.close()
            recv.close()
            raise EngineError(
                f"the {self.name} engine's process did not start (exit code {code}); "
                "the worker's log has its error"
            ) from exc
        _, self.name, self._batches = hello
        self._proc, self._send_conn = proc, send
        self._starts += 1
        if self._starts > 1 and self._settings.preload_models.strip():
            # A replacement loads the models the worker preloads, as the first child
            # did when the worker started: before the next call, which waits for it.
            # Nobody waits for this call's answer (an error of its own is logged there);
            # it is kept among the calls until then, so that if it ends the child,
            # it is the call under way (see _read).
            rid = next(self._ids)
            self._calls[rid] = _Call(proc=proc, attended=False)
            send.send(("call", rid, "load", ()))
        threading.Thread(
            target=self._read, args=(proc, recv), name="engine-process-reader", daemon=True
        ).start()
        log.info("%s engine started in process %d", self.name, proc.pid)

    def _send(self, msg: tuple[Any, ...], call: _Call | None = None) -> bool:
        """Send ``msg`` to the running child, and tie ``call`` to that child; False
        if none runs (it died, and its end was just read)."""
        with self._lock:
            if self._send_conn is None:
                return False
            if call is not None:
                call.proc = self._proc
            self._send_conn.send(msg)
            return True

    def _call(
        self, method: str, args: tuple[Any, ...], on_steps: Sequence[StepCallback] = ()
    ) -> Any:
        call = _Call(queued=method not in _QUICK)
        rid = next(self._ids)
        self._calls[rid] = call
        try:
            while True:
                self._dispatch(rid, method, args, call)
                # The steps' callbacks run here, in the calling thread, as they would
                # in-process; the reader thread only sorts the messages.
                while True:
                    kind, *rest = call.inbox.get()
                    if kind == "step":
                        self._step(call, rid, on_steps, *rest)
                    elif kind == "result":
                        return _outcome(call, rest[0])
                    elif kind == "error":
                        if method in _GENERATIONS and not _GENERATIONS[method] and call.stopped:
                            raise call.stopped[0]  # it came first
                        raise rest[0]
                    elif kind == "again":
                        break  # its child ended before its turn: the next one runs it
        finally:
            self._calls.pop(rid, None)

    def _dispatch(self, rid: int, method: str, args: tuple[Any, ...], call: _Call) -> None:
        """Send call ``rid`` to the running child, started first if need be."""
        try:
            # Twice at most: a child found dead between the start and the send (its
            # end just read) is replaced once more.
            for _ in range(2):
                self._ensure_started()
                if self._send(("call", rid, method, args), call):
                    return
            raise EngineError(f"the {self.name} engine's process is not running")
        except (OSError, ValueError) as exc:
            raise EngineError(f"the {self.name} engine's process is gone: {exc}") from exc

    def _read(self, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        """The reader thread: sorts answers and steps into their calls' inboxes and
        reports model states, until the child's end, which fails its calls."""
        try:
            while True:
                msg = conn.recv()
                kind = msg[0]
                if kind in ("step", "result", "error"):
                    call = self._calls.get(msg[1])
                    if call is not None:
                        call.answered = call.answered or kind != "step"
                        call.inbox.put((kind, *msg[2:]))
                        if call.answered and not call.attended:
                            self._calls.pop(msg[1], None)
                elif kind == "state":
                    self._model_state(*msg[1:])
        except (EOFError, OSError):
            pass
        finally:
            conn.close()
        code = proc.wait()
        with self._lock:
            if self._proc is proc:
                self._proc = None
                if self._send_conn is not None:
                    self._send_conn.close()
                self._send_conn = None
            closing = self._closing
        if not closing:
            log.error("the %s engine's process %d ended (exit code %s)", self.name, proc.pid, code)
            # Its models went with it: /health says so until the next child loads them.
            for name in sorted(self._in_memory):
                self._model_state(name, "unloaded", None)
        error = EngineError(
            f"The {self.name} engine's process ended unexpectedly (exit code {code}); "
            "it is started again for the next image."
        )
        # The child ran its queued calls one at a time, in the order they were sent
        # (rids grow): the first one still unanswered was under way, and fails; those
        # sent behind it (a worker sends its next call before the last one ends)
        # never began, and go to the next child instead.
        under_way = True
        for rid, call in sorted(self._calls.items()):
            if call.proc is not proc or call.answered:
                continue
            if not call.attended:
                self._calls.pop(rid, None)
            if not call.queued:  # answered at once, beside the queue
                call.inbox.put(("error", error))
            elif under_way:
                call.inbox.put(("error", error))
                under_way = False
            else:
                call.inbox.put(("again",))

    def _model_state(self, name: str, state: str, detail: str | None) -> None:
        if state in ("loading", "ready"):
            self._in_memory.add(name)
        else:
            self._in_memory.discard(name)
        if self._on_model_state is not None:
            self._on_model_state(name, state, detail)

    def _step(
        self,
        call: _Call,
        rid: int,
        on_steps: Sequence[StepCallback],
        index: int,
        step: int,
        total: int,
        preview: Image.Image | None,
    ) -> None:
        if index in call.stopped or index >= len(on_steps):
            return  # a step the child made before it learnt of the stop
        update = StepUpdate(step, total, (lambda: preview) if preview is not None else None)
        try:
            on_steps[index](update)
        except BaseException as exc:  # whatever on_step raises, the engine gets
            call.stopped[index] = exc
            # If the child is gone, the reader's end fails the call.
            with contextlib.suppress(OSError, ValueError):
                self._send(("stop", rid, index, _picklable(exc)))


def _outcome(call: _Call, value: Any) -> Any:
    """A generation's answer, with what on_step raised for the jobs it stopped: the
    child may have finished them before it learnt of it."""
    if not call.stopped:
        return value
    if isinstance(value, list):
        return [call.stopped.get(i, v) for i, v in enumerate(value)]
    raise call.stopped[0]


# -- the child's side ----------------------------------------------------------------


class _Child:
    def __init__(self, engine: Engine, send: Connection, preview_interval_s: float) -> None:
        self.engine = engine
        self._send_conn = send
        self._send_lock = threading.Lock()
        self._preview_interval = preview_interval_s
        self.calls: queue.SimpleQueue[tuple[int, str, tuple[Any, ...]] | None] = queue.SimpleQueue()
        #: (call, index) -> what its worker's on_step raised: raised at its next step
        self._stops: dict[tuple[int, int], BaseException] = {}

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._send_conn.send(msg)

    def answer(self, rid: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method in _GENERATIONS:
                # Stops for calls that ended before they came are stale; one call runs
                # at a time, and a stop of this one comes after its first step.
                self._stops.clear()
                on_steps = self._step_callbacks(rid, args)
                fn = getattr(self.engine, method)
                value = fn(args[0], on_steps if _GENERATIONS[method] else on_steps[0])
                if isinstance(value, list):
                    value = [_picklable(v) if isinstance(v, BaseException) else v for v in value]
            else:
                value = getattr(self.engine, method)(*args)
        except BaseException as exc:
            self.send(("error", rid, _picklable(exc)))
            return
        self.send(("result", rid, value))

    def _step_callbacks(self, rid: int, args: tuple[Any, ...]) -> list[StepCallback]:
        count = len(args[0]) if isinstance(args[0], list) else 1
        interval = self._preview_interval

        def make(index: int) -> StepCallback:
            last_preview = -1e9

            def on_step(update: StepUpdate) -> None:
                nonlocal last_preview
                stop = self._stops.get((rid, index))
                if stop is not None:
                    raise stop
                preview = None
                now = time.monotonic()
                # Made here, in the pipeline's thread, while its step's tensors are
                # current; none at the last step, which the image follows at once.
                if (
                    update.preview is not None
                    and update.step < update.total
                    and now - last_preview >= interval
                ):
                    last_preview = now
                    try:
                        preview = update.preview()
                    except Exception:
                        log.warning("a step's preview could not be made", exc_info=True)
                self.send(("step", rid, index, update.step, update.total, preview))

            return on_step

        return [make(i) for i in range(count)]

    def stop(self, rid: int, index: int, exc: BaseException) -> None:
        """What the worker's on_step raised for a job: it stops at its next step."""
        self._stops[rid, index] = exc


def _child_main(read_fd: int, write_fd: int) -> None:
    # The worker decides when this process ends (its pipe closes, or it says
    # "close"): a Ctrl-C in a terminal or a SIGTERM to the whole group stops the
    # worker, which hands back its jobs, rather than failing them under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    recv = Connection(read_fd, writable=False)
    send = Connection(write_fd, readable=False)
    settings: Settings = recv.recv()
    logging.basicConfig(
        level=os.environ.get("OPENLETZ_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s [engine %(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from openletz.engines.factory import make_engine

    child: _Child | None = None

    def model_state(name: str, state: str, detail: str | None) -> None:
        if child is not None:
            child.send(("state", name, state, detail))

    engine = make_engine(
        settings.model_copy(update={"engine_process": False}), on_model_state=model_state
    )
    child = _Child(engine, send, settings.preview_interval_s)
    child.send(("hello", engine.name, engine.batches))

    def read() -> None:
        try:
            while True:
                msg = recv.recv()
                if msg[0] == "call":
                    _, rid, method, args = msg
                    if method in _QUICK:
                        child.answer(rid, method, args)
                    else:
                        child.calls.put((rid, method, args))
                elif msg[0] == "stop":
                    _, rid, index, exc = msg
                    child.stop(rid, index, exc)
                elif msg[0] == "close":
                    break
        except (EOFError, OSError):
            # The worker is gone without a word (killed, or it gave up on a stuck
            # engine): nobody waits for what this process makes. It ends now, even
            # in the middle of a generation.
            os._exit(0)
        child.calls.put(None)

    threading.Thread(target=read, name="engine-process-commands", daemon=True).start()
    while (item := child.calls.get()) is not None:
        child.answer(*item)
    engine.close()


if __name__ == "__main__":
    _child_main(int(sys.argv[1]), int(sys.argv[2]))
