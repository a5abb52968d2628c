"""Enqueue jobs on the broker by task name, ask whether workers answer, and read the queue depth."""

from __future__ import annotations

import logging
import time

from redis import Redis

from worker.core.celery_config import TASK_NAME, make_celery
from worker.core.settings import Settings

log = logging.getLogger(__name__)


class JobQueue:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.celery = make_celery(settings)
        self._ping_cache: tuple[float, list[str]] = (0.0, [])
        self.ping_error: str | None = None  # why the last ping could not be sent (/readyz shows it)

    def enqueue(self, job_id: str, budget_seconds: float) -> None:
        """Send ``compress.run(job_id)`` with time limits derived from the job's budget."""
        _wall, soft, hard = self.settings.job_limits(budget_seconds)
        self.celery.send_task(
            TASK_NAME,
            args=[job_id],
            queue=self.settings.queue,
            soft_time_limit=soft,
            time_limit=hard,
        )
        log.info("job.enqueued job_id=%s soft=%.0f hard=%.0f", job_id, soft, hard)

    def workers(self, timeout: float = 1.0, cache_seconds: float = 5.0) -> list[str]:
        """Names of the workers that answered a ping (cached briefly: readiness probes are frequent)."""
        at, names = self._ping_cache
        if names and time.monotonic() - at < cache_seconds:
            return names
        try:
            replies = self.celery.control.ping(timeout=timeout) or []
            self.ping_error = None
        except Exception as e:  # the broker is down, or its transport cannot load: not ready
            log.warning("queue.ping_failed error=%s", e)
            replies, self.ping_error = [], f"{type(e).__name__}: {e}"
        names = sorted(name for reply in replies for name in reply)
        self._ping_cache = (time.monotonic(), names)
        return names

    def depth(self) -> int:
        """Messages waiting in the job queue (kombu keeps one list per priority step)."""
        base = f"{self.settings.redis_prefix}{self.settings.queue}"
        keys = [base] + [f"{base}\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9)]
        with self.redis.pipeline(transaction=False) as p:
            for k in keys:
                p.llen(k)
            return sum(int(n) for n in p.execute())
