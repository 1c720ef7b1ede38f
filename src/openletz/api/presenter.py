"""The image object: a job as clients see it."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson

from openletz.jobs.status import JobStatus
from openletz.jobs.store import Job, JobStore
from openletz.live import LiveStore
from openletz.storage.base import BlobStore


def iso(ts: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``, as JavaScript's ``toISOString``."""
    # isoformat is C code; strftime goes through the locale and costs ten times more,
    # which shows on the poll route. Stored times are always UTC-aware.
    return ts.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


class Presenter:
    """Builds image objects.

    A finished job's object changes only with its row, and the job store hands out
    the very same ``Job`` while it keeps a finished row; so the object is kept
    per job and reused while its ``Job`` is the same one. Only the version URLs
    are made anew each time: private ones expire.

    ``progress`` never goes down for a client: a running job shows the higher of
    its row (the high-water mark of every attempt) and its live progress, and a
    live value above the row is written to the row before it is shown, so that
    polls after a retry, a worker's death or a restart of every process show no less.
    """

    def __init__(
        self,
        blobs: BlobStore,
        live: LiveStore,
        default_engine: str,
        jobs: JobStore | None = None,
    ) -> None:
        self._blobs = blobs
        self._live = live
        self._jobs = jobs
        self._default_engine = default_engine
        self._finished: dict[str, tuple[Job, dict[str, Any]]] = {}
        self._json: dict[str, tuple[Job, dict[str, str], bytes]] = {}

    async def image(self, job: Job) -> dict[str, Any]:
        if not job.status.is_terminal():
            return await self._render(job)
        body = dict(await self._finished_body(job))
        body["imageVersions"] = self._versions(job)
        return body

    async def image_json(self, job: Job) -> bytes:
        """:meth:`image` as JSON; for a finished job, the same bytes as long as its
        row and its URLs are the same (public URLs never change, private ones each
        minute), so most polls of a finished image serialize nothing."""
        if not job.status.is_terminal():
            return orjson.dumps(await self._render(job))
        versions = self._versions(job)
        hit = self._json.get(job.id)
        if hit is not None and hit[0] is job and hit[1] == versions:
            return hit[2]
        data = orjson.dumps({**await self._finished_body(job), "imageVersions": versions})
        if len(self._json) >= 10_000:
            self._json.clear()
        self._json[job.id] = (job, versions, data)
        return data

    async def _finished_body(self, job: Job) -> dict[str, Any]:
        hit = self._finished.get(job.id)
        if hit is not None and hit[0] is job:
            return hit[1]
        body = await self._render(job)
        if len(self._finished) >= 10_000:
            self._finished.clear()
        self._finished[job.id] = (job, body)
        return body

    def _versions(self, job: Job) -> dict[str, str]:
        if job.status is not JobStatus.READY or not job.image_versions:
            return {}
        public = job.privacy == "public"
        return {
            name: self._blobs.url(key, public=public) for name, key in job.image_versions.items()
        }

    async def _render(self, job: Job) -> dict[str, Any]:
        progress, preview = job.progress, job.preview
        if job.status is JobStatus.IN_PROGRESS:
            live = await self._live.get(job.id)
            if live is not None:
                progress = max(progress, live.progress)
                preview = live.preview or preview
        if job.status is not JobStatus.READY:
            progress = min(progress, 99)  # 100 means ready, and nothing else
        if progress > job.progress and self._jobs is not None:
            # At most one small write per poll of a running job, and only when it
            # moved since the last poll; finished jobs (most polls) write nothing.
            await self._jobs.raise_progress(job.id, progress)
        engine = job.engine or self._default_engine
        return {
            "id": job.id,
            "prompt": job.prompt,
            "status": job.status.value,
            "progress": progress,
            "progressMessage": job.progress_message,
            "previewImage": base64.b64encode(preview).decode() if preview else None,
            "imageVersions": self._versions(job),
            "hasWatermark": job.has_watermark,
            "privacy": job.privacy,
            "createdAt": iso(job.created_at),
            "updatedAt": iso(job.updated_at),
            "width": job.width,
            "height": job.height,
            "quality": job.quality,
            "creativity": job.creativity,
            "systemVersion": job.system_version,
            "mode": job.mode,
            "seed": job.seed,
            "baseModel": job.base_model,
            "webhookUrl": job.webhook_url,
            "engine": engine,
            "sandbox": engine == "sandbox",
        }
