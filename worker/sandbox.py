"""Run the engine (untrusted model code) in a limited child process.

The child gets: an empty temporary working directory, a scrubbed environment (no secrets, no Redis
URL, no API or cloud keys), stdin closed, its own session/process group, ``resource`` limits
(address space, CPU time, file size, no core dumps), ``PR_SET_PDEATHSIG`` (it dies with its
parent), a wall-clock timeout and, when ``unshare --net`` works (root or user namespaces), a new
network namespace without any interface but a down loopback. Its events come on a pipe of their
own (the file descriptor named by ``GANCOMPRESS_EVENT_FD``; JSON lines of at most 1 MiB, see
``worker/engine/run.py``); its stdout and stderr go to the log file, so nothing the uploaded model
prints can pose as an event or a result.

Stopping it (cancel or timeout) sends SIGTERM to the whole process group, then SIGKILL after a
grace period. A child killed by a signal or a limit is reported as such and never takes the
calling worker down.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import worker
from worker.errors import MEMORY_MARKERS, GanCompressError, ResourceLimitError, says_out_of_memory

log = logging.getLogger(__name__)

MAX_LINE = 1024 * 1024
EVENT_FD_ENV = "GANCOMPRESS_EVENT_FD"  # the child writes its events to this file descriptor
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


class SandboxCrashedError(GanCompressError):
    code = "sandbox_crashed"
    status = 500
    title = "The compression process crashed"


@dataclass
class Limits:
    memory_bytes: int | None = None  # RLIMIT_AS
    cpu_seconds: int | None = None  # RLIMIT_CPU
    file_bytes: int | None = None  # RLIMIT_FSIZE
    wall_seconds: float | None = None  # killed after this long
    kill_grace_seconds: float = 5.0
    network: bool = False  # False: a new network namespace when possible


@dataclass
class Outcome:
    """What happened to one sandboxed run."""

    returncode: int | None
    signal: int | None = None
    done: dict[str, Any] | None = None  # the "done" event
    error: dict[str, Any] | None = None  # {"code", "detail"} when it did not succeed
    canceled: bool = False
    timed_out: bool = False
    lingered: bool = False  # it reported "done" but did not exit, and was stopped
    netns: bool = False
    events: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.done is not None and (self.returncode == 0 or self.lingered) and not self.canceled


@lru_cache(maxsize=1)
def netns_prefix() -> tuple[str, ...] | None:
    """The command prefix that runs a program in a new, empty network namespace, or None when
    ``unshare --net`` is not permitted here (no root and no user namespaces)."""
    exe = shutil.which("unshare")
    if not exe:
        return None
    for prefix in ((exe, "--net"), (exe, "--map-root-user", "--net")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return (*prefix, "--")
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def scrubbed_env(home: Path, threads: int = 0, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: nothing secret passes (only ENV_ALLOWLIST plus what we set)."""
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    # The engine must stay importable from an empty cwd, even without an installed package.
    env.update(
        HOME=str(home),
        TMPDIR=str(home),
        PYTHONPATH=str(Path(worker.__file__).resolve().parent.parent),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        MALLOC_ARENA_MAX="2",
        MPLBACKEND="Agg",
    )
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = str(threads)
    env.update(extra or {})
    return env


def _preexec(limits: Limits) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec: keep it minimal
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the worker
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if limits.memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        if limits.cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        if limits.file_bytes:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))

    return setup


def engine_argv(job_json: Path, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "worker.engine.run", str(job_json), str(out_dir)]


def _reader(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    try:
        while True:
            line = stream.readline(MAX_LINE)
            if not line:
                break
            lines.put(line)
    finally:
        lines.put(None)


def kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``grace`` seconds."""
    pgid = proc.pid  # start_new_session: the group id is the child's pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def run(
    argv: list[str],
    *,
    workdir: Path,
    log_path: Path,
    limits: Limits,
    env: dict[str, str] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll_seconds: float = 0.5,
    exit_grace_seconds: float = 30.0,
) -> Outcome:
    """Run ``argv`` sandboxed in ``workdir`` (its cwd and HOME); JSON lines from its event pipe go
    to ``on_event`` as they arrive, its stdout and stderr (and malformed event lines) to ``log_path``. ``should_stop`` is
    polled about every ``poll_seconds``; when it returns True the child is stopped (canceled)."""
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = None if limits.network else netns_prefix()
    netns = prefix is not None
    full_argv = [*(prefix or ()), *argv]
    if not limits.network and not netns:
        log.warning("sandbox.no_netns detail=unshare --net is not permitted here; the child has network")
    lines: queue.Queue[bytes | None] = queue.Queue()
    out = Outcome(returncode=None, netns=netns)
    deadline = time.monotonic() + limits.wall_seconds if limits.wall_seconds else None
    child_env = dict(env if env is not None else scrubbed_env(workdir))
    read_fd, write_fd = os.pipe()
    child_env[EVENT_FD_ENV] = str(write_fd)
    with log_path.open("ab") as log_fh, os.fdopen(read_fd, "rb") as event_stream:
        try:
            proc = subprocess.Popen(
                full_argv,
                cwd=workdir,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
                start_new_session=True,
                preexec_fn=_preexec(limits),
                close_fds=True,
                pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)  # the child holds the only write end: EOF when it (and its group) exits
        out.pids.append(proc.pid)
        log.info("sandbox.started pid=%d netns=%s", proc.pid, netns)
        reader = threading.Thread(target=_reader, args=(event_stream, lines), daemon=True)
        reader.start()
        eof = False
        last_check = 0.0
        done_at = float("inf")
        try:
            while True:
                try:
                    line = lines.get(timeout=poll_seconds)
                except queue.Empty:
                    line = b""
                if line is None:
                    eof = True
                elif line:
                    had_done = out.done is not None
                    _handle_line(line, out, on_event, log_fh)
                    if out.done is not None and not had_done:
                        done_at = time.monotonic()
                now = time.monotonic()
                if line and now - last_check < poll_seconds:
                    continue  # a chatty child: still check cancel and timeout every poll_seconds
                last_check = now
                if eof and proc.poll() is not None:
                    break
                if should_stop is not None and should_stop():
                    out.canceled = True
                    log.info("sandbox.stopping pid=%d reason=cancel", proc.pid)
                    break
                if out.done is not None and now - done_at > exit_grace_seconds:
                    out.lingered = True  # the result is in; a stuck exit does not fail the job
                    log.warning("sandbox.stopping pid=%d reason=no_exit_after_done", proc.pid)
                    break
                if deadline is not None and time.monotonic() > deadline:
                    out.timed_out = True
                    log.warning("sandbox.stopping pid=%d reason=timeout", proc.pid)
                    break
                if eof:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=poll_seconds)
        finally:
            # Always leave nothing behind: the child or anything it started in its group.
            if proc.poll() is None or out.canceled or out.timed_out or out.lingered:
                kill_group(proc, limits.kill_grace_seconds)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            reader.join(timeout=5)
            while True:  # events written just before the end
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    break
                if line:
                    _handle_line(line, out, on_event, log_fh)
    out.returncode = proc.returncode
    if proc.returncode is not None and proc.returncode < 0:
        out.signal = -proc.returncode
    _classify(out, limits, _tail(log_path) if not out.ok else "")
    log.info(
        "sandbox.finished pid=%d rc=%s signal=%s error=%s",
        proc.pid,
        out.returncode,
        out.signal,
        (out.error or {}).get("code"),
    )
    return out


def _handle_line(
    line: bytes,
    out: Outcome,
    on_event: Callable[[dict[str, Any]], None] | None,
    log_fh: IO[bytes],
) -> None:
    try:
        event = json.loads(line)
        if not isinstance(event, dict) or "event" not in event:
            raise ValueError("not an event")
    except ValueError:
        log_fh.write(line if line.endswith(b"\n") else line + b"\n")  # stray print(): keep as log
        log_fh.flush()
        return
    out.events += 1
    kind = event.get("event")
    if kind == "done":
        out.done = event
    elif kind == "error":
        out.error = {"code": str(event.get("code", "internal_error")), "detail": str(event.get("detail", ""))}
    if on_event is not None:
        try:
            on_event(event)
        except Exception:  # a failing progress write must not kill the job
            log.exception("sandbox.on_event_failed")


def _classify(out: Outcome, limits: Limits, log_tail: str = "") -> None:
    """Turn how the child ended into ``out.error`` (None on success)."""
    if out.canceled:
        out.error = {"code": "canceled", "detail": "canceled by request"}
        return
    if out.timed_out:
        out.error = {
            "code": ResourceLimitError.code,
            "detail": f"the job ran past its time limit of {limits.wall_seconds:.0f} s",
        }
        return
    if out.ok:
        out.error = None
        return
    sig = out.signal
    if sig in (signal.SIGXCPU, signal.SIGXFSZ, signal.SIGKILL):
        what = {
            signal.SIGXCPU: "it exceeded its CPU time limit",
            signal.SIGXFSZ: "it exceeded its file size limit",
            signal.SIGKILL: "it was killed (SIGKILL), most likely for memory (OOM) or CPU time",
        }[signal.Signals(sig)]
        out.error = {"code": ResourceLimitError.code, "detail": f"the job stopped: {what}"}
        return
    if out.error is not None:
        detail = out.error["detail"].lower()
        if out.error["code"] == "internal_error" and any(m in detail for m in MEMORY_MARKERS):
            out.error = {
                "code": ResourceLimitError.code,
                "detail": f"the job ran out of memory (limit {_fmt_bytes(limits.memory_bytes)}): "
                + out.error["detail"][:500],
            }
        elif out.error["code"] == "internal_error" and "file too large" in detail:
            out.error = {"code": ResourceLimitError.code, "detail": "the job exceeded its file size limit"}
        return
    if says_out_of_memory(log_tail):
        out.error = {
            "code": ResourceLimitError.code,
            "detail": f"the job ran out of memory (limit {_fmt_bytes(limits.memory_bytes)})",
        }
        return
    if "file too large" in log_tail.lower():  # Python ignores SIGXFSZ: the write fails with EFBIG
        out.error = {
            "code": ResourceLimitError.code,
            "detail": "the job stopped: it exceeded its file size limit",
        }
        return
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        out.error = {
            "code": SandboxCrashedError.code,
            "detail": f"the compression process was killed by {name}"
            + (" (possibly out of memory)" if sig == signal.SIGABRT else ""),
        }
        return
    out.error = {
        "code": SandboxCrashedError.code,
        "detail": f"the compression process exited with code {out.returncode} without a result",
    }


def _tail(path: Path, n: int = 8192) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - n))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "none"
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"
