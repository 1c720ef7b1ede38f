"""The worker process that ``openletz serve`` starts: ``python -m openletz.worker``.

Commands arrive on stdin and events leave on stdout (see ``protocol``). A job
sent (Run) is answered twice: Free once the engine can take the next call (its
call is over, or past its last step: ``JobRunner.start_batch``), so that the
dispatcher sends the next job while this one is delivered, and Done once it has
ended. When stdin closes, the API process is gone: the worker stops its
generation, lets its deliveries finish (a few seconds at most), hands back the
jobs it still holds (their leases are expired at once, so the next API process
resumes them) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import sys
import threading

from openletz.db import create_engine
from openletz.engines.factory import make_engine
from openletz.jobs.store import JobStore
from openletz.settings import Settings
from openletz.storage.factory import make_blob_store
from openletz.worker import protocol
from openletz.worker.runner import DRAIN_S, JobRunner

log = logging.getLogger("openletz.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def serve_stdio(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def emit(msg: protocol.Message) -> None:
        # Only the event loop's thread writes, so lines never interleave. A broken
        # pipe means that the API process is gone: stdin closes too, and we stop.
        with contextlib.suppress(BrokenPipeError, ValueError):
            out.write(protocol.encode(msg))
            out.flush()

    loop_thread = threading.get_ident()

    def sink(job_id: str, progress: int, preview: bytes | None) -> None:
        msg = protocol.Progress(job_id, progress, preview)
        if threading.get_ident() == loop_thread:
            # The runner's own stages (decoded, encoded, stored): no need to wake
            # the loop through its pipe to run this on the thread it runs on.
            emit(msg)
        else:
            loop.call_soon_threadsafe(emit, msg)

    def model_state(name: str, state: str, detail: str | None) -> None:
        loop.call_soon_threadsafe(emit, protocol.ModelState(name, state, detail))

    db = create_engine(settings.resolved_database_url)
    store = JobStore(db)
    blobs = make_blob_store(settings)
    engine = make_engine(settings, on_model_state=model_state)
    await asyncio.to_thread(engine.load)
    # Every model's state once (the changes during the load came before), then
    # each change as it happens.
    for name, (state, detail) in (await asyncio.to_thread(engine.model_states)).items():
        emit(protocol.ModelState(name, state, detail))
    runner = JobRunner(
        owner=worker_name(), store=store, blobs=blobs, engine=engine, settings=settings, sink=sink
    )
    queue: asyncio.Queue[str] = asyncio.Queue()

    def report(job_id: str, ended: asyncio.Future[dict[str, str]]) -> None:
        if ended.cancelled():
            return  # abandoned at shutdown: handed back
        if ended.exception() is not None:
            log.error("job %s: its end is unknown", job_id, exc_info=ended.exception())
            emit(protocol.Done(job_id, "error"))
            return
        statuses = ended.result()
        for other, status in statuses.items():
            if other != job_id:
                emit(protocol.Done(other, status))
        emit(protocol.Done(job_id, statuses[job_id]))

    async def work() -> None:
        # One job at a time from the dispatcher (so that jobs which cannot share a
        # batch go to idle workers); the runner gathers the compatible waiting ones.
        while True:
            job_id = await queue.get()
            try:
                batch = await runner.start_with_batch(job_id)
            except Exception:
                # The database or the engine's batch key failed before any engine
                # call: the job is still waiting, and the reconciler sends it again.
                log.exception("job %s could not be started", job_id)
                emit(protocol.Free(job_id))
                emit(protocol.Done(job_id, "error"))
                continue
            await runner.exit_if_stuck()
            batch.ended.add_done_callback(functools.partial(report, job_id))
            # The engine is free: the next job may come while this one is delivered,
            # once the deliveries under way leave room (backpressure).
            await runner.room()
            emit(protocol.Free(job_id, tuple(i for i in batch.job_ids if i != job_id)))

    worker_task = asyncio.create_task(work())
    emit(protocol.Hello(owner=runner.owner, engine=engine.name))
    try:
        while line := await reader.readline():
            msg = protocol.decode(line)
            if isinstance(msg, protocol.Run):
                queue.put_nowait(msg.job)
            elif isinstance(msg, protocol.Interrupt):
                runner.interrupt(msg.job)
    finally:
        runner.abandon_all()
        worker_task.cancel()
        # Images already made are delivered, if that is quick; then the API process
        # is gone (or stopping us): give back what is left now rather than when
        # its leases run out.
        await runner.drain(DRAIN_S)
        await store.release_owner(runner.owner)
        await blobs.close()
        await db.dispose()
        runner.close()
        engine.close()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("OPENLETZ_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_stdio(Settings()))
