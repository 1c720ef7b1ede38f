"""The worker process that ``openletz serve`` starts: ``python -m openletz.worker``.

Commands arrive on stdin and events leave on stdout (see ``protocol``). When
stdin closes, the API process is gone: the worker hands back its job (its
lease is expired at once, so the next API process resumes it) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys

from openletz.db import create_engine
from openletz.engines.factory import make_engine
from openletz.jobs.store import JobStore
from openletz.settings import Settings
from openletz.storage.factory import make_blob_store
from openletz.worker import protocol
from openletz.worker.runner import JobRunner

log = logging.getLogger("openletz.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def serve_stdio(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def emit(msg: protocol.Message) -> None:
        # Only the event loop's thread writes, so lines never interleave.
        out.write(protocol.encode(msg))
        out.flush()

    def sink(job_id: str, progress: int, preview: bytes | None) -> None:
        loop.call_soon_threadsafe(emit, protocol.Progress(job_id, progress, preview))

    def model_state(name: str, state: str, detail: str | None) -> None:
        loop.call_soon_threadsafe(emit, protocol.ModelState(name, state, detail))

    db = create_engine(settings.resolved_database_url)
    store = JobStore(db)
    blobs = make_blob_store(settings)
    engine = make_engine(settings, on_model_state=model_state)
    await asyncio.to_thread(engine.load)
    runner = JobRunner(
        owner=worker_name(), store=store, blobs=blobs, engine=engine, settings=settings, sink=sink
    )
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def work() -> None:
        # One job at a time from the dispatcher (so that jobs which cannot share a
        # batch go to idle workers); the runner gathers the compatible waiting ones.
        while True:
            job_id = await queue.get()
            statuses = await runner.run_with_batch(job_id)
            await runner.exit_if_stuck()
            # The job that was sent comes last: its Done makes this worker idle, and
            # by then the dispatcher knows that the others need no sending.
            for other, status in statuses.items():
                if other != job_id:
                    emit(protocol.Done(other, status))
            emit(protocol.Done(job_id, statuses[job_id]))

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
        # The API process is gone (or stopping us): give the job back now rather
        # than when its lease runs out.
        await store.release_owner(runner.owner)
        await blobs.close()
        await db.dispose()
        engine.close()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("OPENLETZ_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_stdio(Settings()))
