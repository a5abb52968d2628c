"""The floor for ``benchmarks.status_load``: one route that reads a job's Redis hash and returns it
as JSON, with nothing else (no auth, validation, metrics or error handling)."""

from __future__ import annotations

import os

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_redis = redis.Redis.from_url(os.environ["GANCOMPRESS_REDIS_URL"], decode_responses=True)
_prefix = os.environ["BENCH_FLOOR_KEY"]


def job(request: Request) -> Response:
    return JSONResponse(_redis.hgetall(_prefix + request.path_params["job_id"]))


def root(request: Request) -> Response:
    return Response("ok")


app = Starlette(routes=[Route("/v1/jobs/{job_id}", job), Route("/", root)])
