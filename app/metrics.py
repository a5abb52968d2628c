"""Prometheus metrics: request latency (measured in the API), and jobs by state, queue depth and
stage durations (read from Redis at scrape time, so every API replica reports the same numbers and
the workers, which run the stages, need no HTTP endpoint of their own).

Workers record a stage's duration with ``record_stage_duration`` into cumulative bucket counters
(``P metrics:stage:<stage>``), which the collector turns into a histogram.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.core.stage_metrics import STAGE_BUCKETS, bucket_label

if TYPE_CHECKING:
    from app.queue import JobQueue
    from worker.core.jobs import JobStore

log = logging.getLogger(__name__)


class _RedisCollector(Collector):
    def __init__(self, jobs: JobStore, queue: JobQueue) -> None:
        self.jobs = jobs
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        try:
            counts = self.jobs.count_by_state()
            depth = self.queue.depth()
            stages = self._stage_histograms()
        except RedisError as e:
            log.warning("metrics.redis_unavailable error=%s", e)
            return
        g = GaugeMetricFamily("gancompress_jobs", "Jobs by state.", labels=["state"])
        for state, n in counts.items():
            g.add_metric([str(state)], n)
        yield g
        yield GaugeMetricFamily("gancompress_queue_depth", "Messages waiting in the job queue.", value=depth)
        h = HistogramMetricFamily(
            "gancompress_stage_duration_seconds", "Duration of engine stages.", labels=["stage"]
        )
        for stage, (buckets, total) in sorted(stages.items()):
            h.add_metric([stage], buckets, total)
        yield h

    def _stage_histograms(self) -> dict[str, tuple[list[tuple[str, float]], float]]:
        r, prefix = self.jobs.r, self.jobs.prefix
        out: dict[str, tuple[list[tuple[str, float]], float]] = {}
        for stage in sorted(cast(set[str], r.smembers(f"{prefix}metrics:stages"))):  # decode_responses
            raw = cast(dict[str, str], r.hgetall(f"{prefix}metrics:stage:{stage}"))
            buckets = [
                (bucket_label(b), float(raw.get(bucket_label(b), 0))) for b in (*STAGE_BUCKETS, float("inf"))
            ]
            out[stage] = (buckets, float(raw.get("sum", 0.0)))
        return out


class Metrics:
    """The API's metrics (a registry per app, so tests can build several apps)."""

    def __init__(self, jobs: JobStore, queue: JobQueue) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "gancompress_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.registry.register(_RedisCollector(jobs, queue))

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Request latency by method, route and status: a plain ASGI middleware (Starlette's
    ``BaseHTTPMiddleware`` costs a task and a stream per request, a third of a status poll)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")  # set by the router on this same scope
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - start
            )
