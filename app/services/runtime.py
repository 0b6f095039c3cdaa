"""What a running server holds for its whole life: settings, database, pub/sub, writer.

Built in the app's lifespan (or by a test) and handed to transports; everything else
is per call.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.db import Database, create_database, database_ok, upgrade_database
from app.models import utcnow
from app.pubsub import PubSub
from app.services.alerts import AlertDispatcher
from app.services.ingest import BatchWriter, Clock
from app.services.keys import key_cache_for, token_cache_for
from app.services.quotas import Quotas


@dataclass
class Runtime:
    settings: Settings
    database: Database
    pubsub: PubSub
    writer: BatchWriter
    alerts: AlertDispatcher | None = None

    @classmethod
    async def start(cls, settings: Settings, *, clock: Clock = utcnow) -> Runtime:
        """Upgrade the database, connect pub/sub, start the batch writer."""
        database = create_database(settings)
        try:
            await upgrade_database(database)
            pubsub = PubSub(settings.broadcast_url, queue_size=settings.subscriber_queue_size)
            await pubsub.connect()
        except BaseException:
            await database.dispose()
            raise
        key_cache_for(database.sessions).seconds = settings.key_cache_seconds
        token_cache_for(database.sessions).seconds = settings.key_cache_seconds
        quotas = Quotas.from_settings(settings)
        writer = BatchWriter(
            database=database,
            pubsub=pubsub,
            max_batch=settings.writer_max_batch,
            max_wait=settings.writer_max_wait_ms / 1000,
            clock=clock,
            quotas=quotas,
            transactions=settings.writer_transactions,
        )
        await writer.start()
        alerts = None
        if settings.alerts_enabled:
            alerts = AlertDispatcher(
                database=database, pubsub=pubsub, settings=settings, clock=clock
            )
            await alerts.start()
        return cls(
            settings=settings, database=database, pubsub=pubsub, writer=writer, alerts=alerts
        )

    async def stop(self) -> None:
        """Finish writing what was accepted before closing anything it needs."""
        try:
            await self.writer.stop()
        finally:
            if self.alerts is not None:
                await self.alerts.stop()
            await self.pubsub.disconnect()
            if self.writer.quotas is not None:
                await self.writer.quotas.close()
            await self.database.dispose()

    @property
    def quotas(self) -> Quotas | None:
        """The rate limiter; the writer holds it, so every ingest call is charged."""
        return self.writer.quotas

    async def unready_reason(self) -> str | None:
        """None when this process can take events, else why not."""
        reason = await database_ok(self.database)
        if reason is None and not self.writer.running:
            reason = "the batch writer is not running"
        return reason
