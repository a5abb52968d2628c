"""The worker process's Celery app: ``celery -A worker.celery_app worker``.

Built from the environment's settings at import (what ``celery -A`` needs; the API never imports
this module, it builds its own sending app with ``worker.core.celery_config.make_celery``). At start
the worker launches the reaper (stale jobs, orphaned job directories) and publishes how it isolates
uploaded TorchScript code (``/healthz`` shows it).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

from celery import signals

from worker.core.celery_config import ISOLATION_KEY, make_celery
from worker.core.settings import Settings, get_settings
from worker.engine.convert import isolation

log = logging.getLogger(__name__)

celery_app = make_celery(get_settings())
app = celery_app  # what `celery -A worker.celery_app` looks for


class _Reaper(threading.Thread):
    """Fails running jobs whose worker stopped sending heartbeats (it crashed or was killed) and
    removes the private directories such jobs left behind."""

    def __init__(self, settings: Settings, hostname: str) -> None:
        super().__init__(name="gancompress-reaper", daemon=True)
        self.settings = settings
        self.hostname = hostname
        self.stop = threading.Event()

    def run(self) -> None:
        from worker.core.jobs import JobStore
        from worker.core.redis_client import redis_from_settings

        jobs = JobStore(redis_from_settings(self.settings), self.settings.redis_prefix)
        interval = max(1.0, min(30.0, self.settings.heartbeat_timeout_seconds / 4))
        from worker.tasks import sweep_orphan_dirs

        while True:  # at start, then every interval: dirs of jobs that died with their worker go too
            try:
                jobs.fail_stale(self.settings.heartbeat_timeout_seconds)
                sweep_orphan_dirs(self.settings.tmp_dir, jobs)
                publish_isolation(jobs.r, self.settings.redis_prefix, self.hostname)
            except Exception:
                log.exception("reaper.error")
            if self.stop.wait(interval):
                break


@signals.worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    settings = (sender.app.conf.get("gancompress_settings") if sender is not None else None) or get_settings()
    hostname = str(getattr(sender, "hostname", None) or socket.gethostname())
    iso = isolation()
    _Reaper(settings, hostname).start()
    log.info("worker.ready queue=%s", settings.queue)
    if iso["isolated"]:
        log.info("worker.isolation converter=%s", iso["converter"])
    else:  # said at start: an operator must know that TorchScript code can read what we can
        log.warning(
            "worker.not_isolated detail=%s%s",
            iso["detail"],
            " (TorchScript jobs are refused: require_isolation)" if settings.require_isolation else "",
        )


def publish_isolation(redis: Any, prefix: str, hostname: str) -> None:
    """Tell the API (``/healthz``) how this worker isolates uploaded TorchScript code."""
    redis.hset(f"{prefix}{ISOLATION_KEY}", hostname, json.dumps({**isolation(), "seen_at": time.time()}))
