"""The broker contract: enqueued by name with the job id only, JSON only, acks_late, prefetch 1,
time limits from the job's budget, visibility timeout above the longest hard limit."""

from __future__ import annotations

import base64
import json

from fastapi.testclient import TestClient
from redis import Redis

from tests.app.files import onnx_bytes
from worker.core.celery_config import TASK_NAME, make_celery
from worker.core.settings import Settings


def test_celery_config(settings: Settings) -> None:
    conf = make_celery(settings).conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late is True and conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True and conf.task_default_queue == settings.queue
    longest_hard = settings.job_limits(settings.max_job_seconds)[2]
    assert conf.broker_transport_options["visibility_timeout"] > longest_hard


def test_limits_are_ordered(settings: Settings) -> None:
    wall, soft, hard = settings.job_limits(120)
    assert 120 < wall < soft < hard


def test_message_is_the_job_id_by_name_with_limits(
    client: TestClient, settings: Settings, redis: Redis
) -> None:
    m = client.post("/v1/models", files={"file": ("g.onnx", onnx_bytes())}).json()
    job = client.post(
        "/v1/jobs", json={"model_id": m["id"], "spec": {"distill": {"budget_seconds": 100}}}
    ).json()
    raw = redis.lrange(f"{settings.redis_prefix}{settings.queue}", 0, -1)
    assert len(raw) == 1
    msg = json.loads(raw[0])
    assert msg["content-type"] == "application/json"
    headers = msg["headers"]
    assert headers["task"] == TASK_NAME
    _wall, soft, hard = settings.job_limits(100)
    assert headers["timelimit"] == [hard, soft]
    args, kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
    assert args == [job["id"]] and kwargs == {}
