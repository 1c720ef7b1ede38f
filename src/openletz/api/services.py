"""What the API process holds for its lifetime, built from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from openletz.api.presenter import Presenter
from openletz.api.webhooks import WebhookSender
from openletz.auth import Accounts
from openletz.db import SqliteReader, create_engine, create_sqlite_reader, migrate
from openletz.dispatch.base import Dispatcher
from openletz.engines.factory import EngineChoice, choose_engine
from openletz.jobs.store import JobStore
from openletz.live import LiveStore, MemoryLiveStore
from openletz.settings import Settings
from openletz.storage.base import BlobStore
from openletz.storage.factory import make_blob_store

log = logging.getLogger("openletz")


@dataclass(slots=True)
class Services:
    settings: Settings
    db: AsyncEngine
    reader: SqliteReader | None
    jobs: JobStore
    accounts: Accounts
    blobs: BlobStore
    live: LiveStore
    dispatcher: Dispatcher
    engine: EngineChoice
    presenter: Presenter
    #: the model names a request's baseModel may take; None when any is accepted
    model_names: frozenset[str] | None = None
    webhooks: WebhookSender | None = None

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        db = create_engine(settings.resolved_database_url)
        await migrate(db)
        reader = create_sqlite_reader(db)
        jobs = JobStore(db, reader=reader, finished_ttl_s=settings.finished_cache_ttl_s)
        live: LiveStore = MemoryLiveStore()
        if settings.redis_url:
            from openletz.live_redis import RedisLiveStore

            live = RedisLiveStore(settings.redis_url)
        dispatcher: Dispatcher
        if settings.dispatcher == "celery":
            from openletz.dispatch.celery import CeleryDispatcher

            dispatcher = CeleryDispatcher(settings, jobs)
        else:
            from openletz.dispatch.embedded import EmbeddedDispatcher

            dispatcher = EmbeddedDispatcher(settings, jobs, live)
        engine = choose_engine(settings)
        model_names = None
        if engine.name == "diffusers":
            from openletz.engines.diffusers.registry import Registry

            model_names = frozenset(Registry.load(settings.models_file or None).models)
        if engine.name == "sandbox":
            log.warning("engine: SANDBOX. %s", engine.reason)
        else:
            log.info("engine: %s (%s)", engine.name, engine.reason)
        blobs = make_blob_store(settings)
        services = cls(
            settings=settings,
            db=db,
            reader=reader,
            jobs=jobs,
            accounts=Accounts(
                db,
                cache_ttl_s=settings.auth_cache_ttl_s,
                default_system_version=settings.default_system_version,
            ),
            blobs=blobs,
            live=live,
            dispatcher=dispatcher,
            engine=engine,
            presenter=Presenter(blobs, live, engine.name, jobs),
            model_names=model_names,
        )
        await dispatcher.start()
        services.webhooks = WebhookSender(
            jobs,
            services.presenter,
            secret=settings.webhook_secret,
            retry_delays_s=settings.webhook_retry_delays_s,
            timeout_s=settings.webhook_timeout_s,
            interval_s=settings.webhook_interval_s,
            blocked_networks=settings.webhook_blocked_networks,
        )
        await services.webhooks.start()
        return services

    async def stop(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.dispatcher.stop()
        await self.live.close()
        await self.blobs.close()
        await self.db.dispose()
        if self.reader is not None:
            self.reader.close()
