"""``create_app()``: the FastAPI application (torch-free; uploaded models are never loaded here).

Run with ``uvicorn app.main:create_app --factory`` or ``gancompress serve``.
To add a router (e.g. the web UI), append it to ``ROUTERS``.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from app.api import health, jobs, ui, uploads
from app.errors import install_error_handlers
from app.metrics import MetricsMiddleware
from app.services import Services
from worker.core.redis_client import async_redis_from_settings
from worker.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

ROUTERS: list[APIRouter] = [health.router, uploads.router, jobs.router, ui.router]

DESCRIPTION = """Compress trained GAN generators: upload a TorchScript or ONNX generator, prune it,
distill it against the original, and download a small ONNX model with a report.

Every error is RFC 9457 `application/problem+json` with a stable `code`."""


def create_app(settings: Settings | None = None, routers: list[APIRouter] | None = None) -> FastAPI:
    settings = settings or get_settings()
    svc = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not svc.keys.enabled:
            log.warning(
                "auth.disabled detail=no API keys are configured (GANCOMPRESS_API_KEYS): "
                "anyone who reaches this port can use the service"
            )
        log.info("api.started storage=%s queue=%s", settings.storage_url, settings.queue)
        svc.aredis = async_redis_from_settings(settings)
        # Everything imported so far lives as long as the process: keep it out of the cyclic GC's
        # full collections, which otherwise stall requests for tens of ms (status poll p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await svc.aredis.aclose()
            svc.aredis = None
            svc.redis.close()

    app = FastAPI(
        title="gancompress",
        version="1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.services = svc
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)
    install_error_handlers(app)
    for router in ROUTERS + (routers or []):
        app.include_router(router)
    return app
