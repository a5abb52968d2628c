"""The sandbox with small throwaway child programs: crashes, limits, cancel, timeouts, isolation.
(These test the sandbox, not the engine: the real engine runs in the integration tests.)"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from worker import sandbox
from worker.sandbox import Limits


def child(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(
        "import json, os, sys, time, signal\n"
        "EVENTS = os.fdopen(int(os.environ['GANCOMPRESS_EVENT_FD']), 'w')\n" + textwrap.dedent(body)
    )
    return [sys.executable, str(script)]


def run(tmp_path: Path, body: str, limits: Limits | None = None, **kw: Any) -> sandbox.Outcome:
    events: list[dict[str, Any]] = kw.pop("events", [])
    return sandbox.run(
        child(tmp_path, body),
        workdir=tmp_path / "home",
        log_path=tmp_path / "log.txt",
        limits=limits or Limits(wall_seconds=60, kill_grace_seconds=1),
        on_event=events.append,
        poll_seconds=0.1,
        **kw,
    )


def emit(obj: str) -> str:
    """A line that writes an event to the event pipe."""
    return f"print(json.dumps({obj}), file=EVENTS, flush=True)\n"


def test_events_and_success(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    body = (
        emit('{"event": "progress", "stage": "distill", "step": 1, "total": 2}')
        + "print('a stray line from some library', flush=True)\n"
        + "print('to stderr', file=sys.stderr)\n"
        + emit('{"event": "done", "summary": {"ssim": 0.9}}')
    )
    out = run(tmp_path, body, events=events)
    assert out.ok and out.error is None and out.returncode == 0
    assert [e["event"] for e in events] == ["progress", "done"]
    assert out.done == {"event": "done", "summary": {"ssim": 0.9}}
    log = (tmp_path / "log.txt").read_text()
    assert "a stray line from some library" in log and "to stderr" in log


def test_a_printed_result_is_log_not_an_event(tmp_path: Path) -> None:
    """Uploaded code can print (TorchScript's print reaches stdout): it must not forge a result."""
    forged = '{"event": "done", "summary": {"ssim": 1.0, "speedup": 1000}}'
    events: list[dict[str, Any]] = []
    out = run(tmp_path, f"print(json.dumps({forged}), flush=True)\n", events=events)
    assert out.done is None and events == [] and not out.ok
    assert out.error is not None and out.error["code"] == "sandbox_crashed"
    assert '"speedup": 1000' in (tmp_path / "log.txt").read_text()


def test_engine_error_event_keeps_its_code(tmp_path: Path) -> None:
    out = run(
        tmp_path, emit('{"event": "error", "code": "unsupported_op", "detail": "Foo"}') + "sys.exit(3)\n"
    )
    assert not out.ok and out.error == {"code": "unsupported_op", "detail": "Foo"}


def test_segfault_is_sandbox_crashed(tmp_path: Path) -> None:
    out = run(tmp_path, "import ctypes\nctypes.string_at(0)\n")
    assert out.signal is not None and out.error is not None
    assert out.error["code"] == "sandbox_crashed" and "SIGSEGV" in out.error["detail"]


def test_exit_without_result_is_sandbox_crashed(tmp_path: Path) -> None:
    out = run(tmp_path, "sys.exit(7)\n")
    assert out.error == {
        "code": "sandbox_crashed",
        "detail": "the compression process exited with code 7 without a result",
    }


def test_memory_limit(tmp_path: Path) -> None:
    limits = Limits(memory_bytes=400 * 1024**2, wall_seconds=60)
    out = run(tmp_path, "x = bytearray(2 * 1024**3)\n", limits)
    assert out.error is not None and out.error["code"] == "resource_limit", out.error
    assert "memory" in out.error["detail"]


def test_cpu_limit(tmp_path: Path) -> None:
    out = run(tmp_path, "while True: pass\n", Limits(cpu_seconds=1, wall_seconds=60))
    assert out.error is not None and out.error["code"] == "resource_limit"
    assert "CPU" in out.error["detail"]


def test_file_size_limit(tmp_path: Path) -> None:
    body = "open('big', 'wb').write(b'x' * 4 * 1024**2)\n" + emit('{"event": "done", "summary": {}}')
    out = run(tmp_path, body, Limits(file_bytes=1024**2, wall_seconds=60))
    assert (
        out.error is not None and out.error["code"] == "resource_limit" and "file size" in out.error["detail"]
    )


def test_wall_clock_timeout(tmp_path: Path) -> None:
    start = time.monotonic()
    out = run(tmp_path, "time.sleep(60)\n", Limits(wall_seconds=1, kill_grace_seconds=1))
    assert out.timed_out and out.error is not None and out.error["code"] == "resource_limit"
    assert time.monotonic() - start < 20


def test_cancel_kills_a_child_that_ignores_sigterm_and_its_children(tmp_path: Path) -> None:
    body = (
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "import subprocess\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        + emit('{"event": "progress", "stage": "distill", "message": str(p.pid)}')
        + "while True: time.sleep(0.1)\n"
    )
    events: list[dict[str, Any]] = []
    asked = {"at": None}

    def should_stop() -> bool:
        if events and asked["at"] is None:
            asked["at"] = time.monotonic()
        return asked["at"] is not None

    out = run(
        tmp_path, body, Limits(wall_seconds=60, kill_grace_seconds=1), events=events, should_stop=should_stop
    )
    assert out.canceled and out.error == {"code": "canceled", "detail": "canceled by request"}
    assert out.signal == 9  # SIGTERM was ignored, so SIGKILL ended it
    grandchild = int(events[0]["message"])
    deadline = time.monotonic() + 10
    while psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child's own children must be killed too"
        time.sleep(0.1)


def test_environment_is_scrubbed_and_cwd_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://secret")
    monkeypatch.setenv("GANCOMPRESS_API_KEYS", "alice:secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    home = tmp_path / "home"
    body = emit('{"event": "done", "summary": {"env": dict(os.environ), "cwd": os.getcwd(), '
                '"files": os.listdir("."), "stdin": sys.stdin.read()}}')  # fmt: skip
    out = sandbox.run(
        child(tmp_path, body),
        workdir=home,
        log_path=tmp_path / "log.txt",
        limits=Limits(wall_seconds=60),
        env=sandbox.scrubbed_env(home, threads=2),
    )
    summary = out.done["summary"] if out.done else {}
    env = summary["env"]
    assert not any("secret" in v for v in env.values())
    assert not {"REDIS_URL", "GANCOMPRESS_API_KEYS", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert env["HOME"] == str(home) and env["OMP_NUM_THREADS"] == "2"
    assert summary["cwd"] == str(home) and summary["files"] == [] and summary["stdin"] == ""


@pytest.mark.skipif(sandbox.netns_prefix() is None, reason="unshare --net is not permitted here")
def test_no_network(tmp_path: Path) -> None:
    body = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 6379), timeout=2); ok = True\n"
        "except OSError:\n"
        "    ok = False\n" + emit('{"event": "done", "summary": {"connected": ok}}')
    )
    out = run(tmp_path, body)
    assert out.netns and out.done is not None and out.done["summary"]["connected"] is False


def test_parent_death_kills_the_child(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: if the worker process dies, its sandbox child does not outlive it."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, os
        sys.path.insert(0, {str(Path(sandbox.__file__).parents[1])!r})
        from pathlib import Path
        from worker import sandbox
        argv = [sys.executable, "-c", "import time, os; print(os.getpid(), flush=True); time.sleep(120)"]
        sandbox.run(argv, workdir=Path({str(tmp_path / "h")!r}), log_path=Path({str(tmp_path / "l")!r}),
                    limits=sandbox.Limits(wall_seconds=120, network=True),
                    on_event=None, should_stop=lambda: os._exit(0))
        """)
    )
    import subprocess

    subprocess.run([sys.executable, str(script)], timeout=60, check=False)
    pids = [int(x) for x in (tmp_path / "l").read_text().split() if x.isdigit()]
    assert pids, "the child should have logged its pid"
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pids[0]) and psutil.Process(pids[0]).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert os.getpid() != pids[0]


def test_a_chatty_child_still_sees_cancel_and_timeout(tmp_path: Path) -> None:
    body = "while True:\n    " + emit('{"event": "progress", "stage": "distill"}') + "    time.sleep(0.01)\n"
    start = time.monotonic()
    out = run(tmp_path, body, Limits(wall_seconds=2, kill_grace_seconds=1))
    assert out.timed_out and time.monotonic() - start < 15
    out = run(tmp_path, body, should_stop=lambda: True)
    assert out.canceled


def test_a_child_that_does_not_exit_after_done_still_succeeds(tmp_path: Path) -> None:
    body = emit('{"event": "done", "summary": {"ssim": 1.0}}') + "time.sleep(120)\n"
    start = time.monotonic()
    out = sandbox.run(
        child(tmp_path, body),
        workdir=tmp_path / "home",
        log_path=tmp_path / "log.txt",
        limits=Limits(wall_seconds=60, kill_grace_seconds=1),
        poll_seconds=0.1,
        exit_grace_seconds=1,
    )
    assert out.ok and out.lingered and out.error is None and time.monotonic() - start < 20
