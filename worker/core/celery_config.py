"""Celery configuration shared by the API (which sends tasks) and the worker (which runs them).

Tasks are enqueued by name with the job id only (``compress.run``), JSON only, ``acks_late`` with
prefetch 1, and a broker visibility timeout above the hard time limit of the longest job allowed,
so a message is redelivered only when its worker really died. The job record in Redis, not the
result backend, is the source of truth: results are ignored.
"""

from __future__ import annotations

from celery import Celery

from worker.core.settings import Settings

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


ISOLATION_KEY = "isolation"  # hash under the Redis prefix: worker hostname -> JSON, refreshed by the reaper
