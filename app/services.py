"""The objects one API process shares (built once per app from its settings)."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from app.auth import ApiKeys
from app.metrics import Metrics
from app.queue import JobQueue
from app.submit import JobSubmitter
from worker.core.jobs import JobStore
from worker.core.redis_client import redis_from_settings
from worker.core.settings import Settings
from worker.core.storage import ArtifactStore, store_from_settings
from worker.core.uploads import UploadRegistry


@dataclass
class Services:
    settings: Settings
    redis: Redis
    store: ArtifactStore
    jobs: JobStore
    uploads: UploadRegistry
    queue: JobQueue
    submitter: JobSubmitter
    keys: ApiKeys
    metrics: Metrics
    aredis: AsyncRedis | None = None  # made in the app's lifespan, on its event loop

    @classmethod
    def build(cls, settings: Settings) -> Services:
        redis = redis_from_settings(settings)
        store = store_from_settings(settings)
        jobs = JobStore(redis, settings.redis_prefix)
        queue = JobQueue(settings, redis)
        return cls(
            settings=settings,
            redis=redis,
            store=store,
            jobs=jobs,
            uploads=UploadRegistry(redis, settings.redis_prefix, store),
            queue=queue,
            submitter=JobSubmitter(settings, redis, jobs, queue),
            keys=ApiKeys(settings.keys()),
            metrics=Metrics(jobs, queue),
        )
