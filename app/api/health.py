"""Liveness, readiness, Prometheus metrics and the catalog (no API key needed)."""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.uploads import services
from app.catalog import catalog
from app.errors import problem
from worker.core.celery_config import ISOLATION_KEY

router = APIRouter(tags=["service"])


@router.get("/healthz", summary="Alive (and, under `gancompress serve`, its Redis and worker running)")
def healthz(request: Request) -> Response:
    svc = services(request)
    body: dict[str, Any] = {"status": "ok", "auth": svc.keys.enabled, "isolation": worker_isolation(svc)}
    children = getattr(request.app.state, "children_alive", None)
    if children is not None:
        alive = children()
        body["children"] = alive
        dead = [k for k, ok in alive.items() if not ok]
        if dead:
            detail = f"child process(es) not running: {', '.join(dead)}"
            return problem(503, "unhealthy", "Unhealthy", detail, "/healthz", children=alive)
    return JSONResponse(body)


ISOLATION_FRESH_SECONDS = 180.0  # workers refresh theirs every 30 s at most


def worker_isolation(svc: Any) -> dict[str, Any]:
    """How each live worker isolates uploaded TorchScript code (what it published), by hostname;
    ``{"error": ...}`` when Redis cannot be read: liveness does not depend on it."""
    try:
        raw = svc.redis.hgetall(f"{svc.settings.redis_prefix}{ISOLATION_KEY}")
    except Exception as e:
        return {"error": f"unknown: {type(e).__name__}"}
    out: dict[str, Any] = {}
    now = time.time()
    for host, value in sorted(raw.items()):
        try:
            entry = json.loads(value)
        except ValueError:
            continue
        if now - float(entry.pop("seen_at", 0)) <= ISOLATION_FRESH_SECONDS:
            out[host] = entry
    return out


@router.get("/readyz", summary="Ready: Redis reachable and at least one worker answering")
async def readyz(request: Request) -> Response:
    svc = services(request)
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = bool(await run_in_threadpool(svc.redis.ping))
    except Exception as e:
        checks["redis"] = False
        checks["redis_error"] = str(e)
    try:
        await run_in_threadpool(svc.store.ping)
        checks["storage"] = True
    except Exception as e:
        checks["storage"] = False
        checks["storage_error"] = str(e)
    workers = await run_in_threadpool(svc.queue.workers) if checks["redis"] else []
    checks["workers"] = workers
    if not workers and checks["redis"] and svc.queue.ping_error:
        # no reply because the ping was never sent (not: no worker running)
        checks["workers_error"] = svc.queue.ping_error
    if checks["redis"] and checks["storage"] and workers:
        return JSONResponse({"status": "ready", **checks})
    missing = [k for k in ("redis", "storage") if not checks[k]] + ([] if workers else ["workers"])
    return problem(503, "not_ready", "Not ready", f"not ready: {', '.join(missing)}", "/readyz", **checks)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return services(request).metrics.render()


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Any]:
    return catalog()


@router.get("/v1/catalog", summary="Pruning methods, criteria, losses, metrics and quantization modes")
def get_catalog() -> dict[str, Any]:
    return _catalog()
