"""Celery configuration (a thin edge): ``celery -A worker.celery_app worker``.

Tasks are enqueued by name with the job id only (``compress.run``), JSON only, ``acks_late`` with
prefetch 1, and a broker visibility timeout above the hard time limit of the longest job allowed,
so a message is redelivered only when its worker really died. The job record in Redis, not the
result backend, is the source of truth: results are ignored.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

from celery import Celery, signals

from app.settings import Settings, get_settings
from worker.engine.convert import isolation

log = logging.getLogger(__name__)

TASK_NAME = "compress.run"


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (the API uses it to send tasks, the worker to run them)."""
    app = Celery("gancompress", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=False,  # a job that killed its worker is failed, not rerun
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        task_default_queue=settings.queue,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout(),
            "global_keyprefix": settings.redis_prefix,
        },
        worker_hijack_root_logger=True,
        worker_send_task_events=False,
        enable_utc=True,
    )
    app.conf.gancompress_settings = settings
    return app


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
        from app.jobs import JobStore
        from app.redis_client import redis_from_settings

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


ISOLATION_KEY = "isolation"  # hash under the Redis prefix: worker hostname -> JSON, refreshed by the reaper


def publish_isolation(redis: Any, prefix: str, hostname: str) -> None:
    """Tell the API (``/healthz``) how this worker isolates uploaded TorchScript code."""
    redis.hset(f"{prefix}{ISOLATION_KEY}", hostname, json.dumps({**isolation(), "seen_at": time.time()}))
