"""Session-scoped real processes: one Celery worker (prefork, concurrency 1) and one uvicorn, on the
real Redis (db 13 of 127.0.0.1:6379, or the embedded one) under a key prefix and queue of their own,
deleted at teardown (never anything else)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import INTEGRATION_DB, delete_prefix, free_port

ROOT = Path(__file__).resolve().parents[2]
ZOO = Path(os.environ.get("GANCOMPRESS_TEST_ZOO", ROOT / "worker" / "zoo" / "data"))
TINY_SPEC: dict[str, Any] = {"prune": {"ratio": 0.5}, "distill": {"steps": 5, "budget_seconds": 5}}


@dataclass
class Service:
    url: str
    env: dict[str, str]
    redis_url: str
    prefix: str
    logs: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], logs: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a service process exited ({p.returncode}); see {logs}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(0.5)
    raise RuntimeError(f"the service did not become ready: {last}")


def run_service(redis_base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Start a real uvicorn API and a real Celery worker on their own Redis key prefix; yield
    them, then stop both and delete the prefix. The ``service`` fixture (tests/conftest.py) runs
    it once per session for the integration and browser tests together."""
    prefix = f"gci{uuid.uuid4().hex[:10]}:"
    redis_url = f"{redis_base}/{INTEGRATION_DB}"
    tmp = tmp_path_factory.mktemp("service")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANCOMPRESS_") and k != "REDIS_URL"}
    env.update(
        GANCOMPRESS_REDIS_URL=redis_url,
        GANCOMPRESS_REDIS_PREFIX=prefix,
        GANCOMPRESS_QUEUE=prefix.rstrip(":"),
        GANCOMPRESS_STORAGE_URL=str(tmp / "artifacts"),
        GANCOMPRESS_TMP_DIR=str(tmp / "staging"),
        GANCOMPRESS_KILL_GRACE_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    logs = tmp
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-c", "1", "-l", "info",
         "-Q", env["GANCOMPRESS_QUEUE"], "-n", f"{prefix.rstrip(':')}@%h", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=(tmp / "worker.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=(tmp / "api.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, [worker, api], logs)
        yield Service(url=url, env=env, redis_url=redis_url, prefix=prefix, logs=logs)
    finally:
        _stop(api)
        _stop(worker, signal.SIGQUIT)
        delete_prefix(redis_url, prefix)


def zoo_file(name: str) -> Path:
    path = ZOO / "dcgan" / name
    if not path.is_file():
        pytest.skip(f"zoo file {path} is not built yet (make zoo)")
    return path


def dcgan_inputs() -> dict[str, Any]:
    """The DCGAN input spec (needed for TorchScript): from the zoo manifest, else the ONNX graph."""
    manifest = ZOO / "manifest.json"
    if manifest.is_file():
        return dict(json.loads(manifest.read_text())["models"]["dcgan"]["inputs"])
    import onnx

    graph = onnx.load(str(zoo_file("model.op17.onnx")), load_external_data=False).graph
    init = {t.name for t in graph.initializer}
    return {
        i.name: {"shape": [max(1, d.dim_value) for d in i.type.tensor_type.shape.dim]}
        for i in graph.input
        if i.name not in init
    }


def wait_for(
    client: httpx.Client,
    job_id: str,
    states: tuple[str, ...],
    timeout: float = 300,
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Poll until the job is in one of ``states`` (generous timeout: a 2-core machine)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if seen is not None:
            seen.append(job)
        if job["state"] in states:
            return job
        if job["state"] in ("succeeded", "failed", "canceled"):
            raise AssertionError(f"job {job_id} ended {job['state']} while waiting for {states}: {job}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny noise-to-image ONNX generator (built here, so these tests do not need the zoo)."""
    from tests.app.files import generator_onnx_bytes

    path = tmp_path_factory.mktemp("tiny") / "tiny_generator.onnx"
    path.write_bytes(generator_onnx_bytes())
    return path
