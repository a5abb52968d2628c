"""Status polling under load (issue 10): ``GET /v1/jobs/{id}`` with 50 concurrent clients.

The API is started the way it is shipped (``uvicorn app.main:create_app --factory``, the flags of
the Dockerfile's CMD and of ``gancompress serve``), with an API key, on the real Redis (its own key
prefix, deleted at the end), against one running job with a realistic record (spec, progress).
The load comes from ``wrk`` (Debian package ``wrk``) on the same machine, as a CI poller would.

Baseline, measured in the same run: the *floor*, a bare Starlette app (same uvicorn, same flags)
whose one route reads the same Redis hash and returns it as JSON, nothing else: no auth, no
validation, no metrics. ``ours / floor`` says how much of the possible speed the real endpoint
keeps; the absolute numbers depend on the machine and its load.

    python -m benchmarks.status_load [--connections 50] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "runs" / "status"
KEY = "bench-status-key"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _job(redis_url: str, prefix: str) -> str:
    """A running job with a realistic record, owned by KEY's owner."""
    from redis import Redis

    from worker.core.jobs import JobState, JobStore
    from worker.core.settings import Settings
    from worker.spec import CompressionSpec

    owner = Settings(api_keys=KEY).keys()[KEY]
    jobs = JobStore(Redis.from_url(redis_url, decode_responses=True), prefix)
    rec = jobs.create(
        owner=owner, model_id="mdl_" + "0" * 16, model_format="onnx",
        spec=CompressionSpec().model_dump(mode="json"),
    )  # fmt: skip
    jobs.transition(rec.id, JobState.RUNNING, started_at=time.time(), heartbeat=time.time(), worker="bench")
    progress = {"fraction": 0.42, "step": 420, "total": 1000, "loss": 0.0123, "eta_seconds": 61.0}
    jobs.update_running(rec.id, stage="distill", progress=progress)
    return rec.id


# name -> (ASGI app, factory, extra uvicorn flags). "ours" is `gancompress serve` (no access log);
# "ours + access log" is the Docker image's CMD (uvicorn's default INFO access log, to /dev/null here).
SERVERS: dict[str, tuple[str, bool, list[str]]] = {
    "ours": ("app.main:create_app", True, ["--no-access-log"]),
    "ours + access log": ("app.main:create_app", True, []),
    "floor": ("benchmarks.status_floor:app", False, ["--no-access-log"]),
}


def _serve(
    app: str, env: dict[str, str], port: int, factory: bool, flags: list[str]
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--factory"] if factory else []
    argv += flags
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "uvicorn exited") from None
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("uvicorn did not start")


def _wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {KEY}", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, float]:
    """requests/s, p50/p90/p99 latency (ms) and the count of non-2xx/3xx answers from wrk's
    ``--latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    lat = {p: _ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)$", out, re.M)}
    if rps is None or set(lat) != {"50", "90", "99"}:
        raise ValueError(f"not wrk --latency output: {out[:200]!r}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": lat["50"],
        "p90_ms": lat["90"],
        "p99_ms": lat["99"],
        "errors": float(non2xx.group(1) if non2xx else 0)
        + (sum(map(float, errors.groups())) if errors else 0.0),
    }


def _ms(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
    assert m, v
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[m.group(2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    prefix = f"gcbench{uuid.uuid4().hex[:8]}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANCOMPRESS_")}
    env.update(
        GANCOMPRESS_REDIS_URL=args.redis_url, GANCOMPRESS_REDIS_PREFIX=prefix, GANCOMPRESS_API_KEYS=KEY,
        GANCOMPRESS_STORAGE_URL=str(OUT / "artifacts"), PYTHONWARNINGS="ignore",
        BENCH_FLOOR_KEY=f"{prefix}job:",
    )  # fmt: skip
    job_id = _job(args.redis_url, prefix)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
    procs = {}
    try:
        for name, (app, factory, flags) in SERVERS.items():
            port = _free_port()
            procs[name] = (_serve(app, env, port, factory, flags), port)
            url = f"http://127.0.0.1:{port}/v1/jobs/{job_id}"
            r = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 200 and r.json()["id"] == job_id, r.text
            _wrk(url, args.connections, 2)  # warm-up
        for _ in range(args.rounds):  # alternate: both see the same machine
            for name, (_proc, port) in procs.items():
                rows[name].append(
                    _wrk(f"http://127.0.0.1:{port}/v1/jobs/{job_id}", args.connections, args.seconds)
                )
    finally:
        for proc, _port in procs.values():
            proc.terminate()
            proc.wait(timeout=20)
        from redis import Redis

        r = Redis.from_url(args.redis_url)
        for k in r.scan_iter(match=f"{prefix}*", count=1000):
            r.delete(k)
    med = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for n, rs in rows.items()}
    lines = [
        f"# Status polling under load ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python -m benchmarks.status_load --connections {args.connections} --seconds {args.seconds} "
        f"--rounds {args.rounds}`; {os.cpu_count()} cores shared by the server (one uvicorn process, "
        "uvloop + httptools) and wrk (2 threads); GET /v1/jobs/{id} of a running job with an API key; "
        "medians of the rounds, the servers alternating. ours: `gancompress serve` (no access log); "
        "ours + access log: the Docker image's CMD; floor: a bare Starlette route returning the same "
        "Redis hash as JSON (no auth, validation or metrics).",
        "",
        "| server | requests/s | p50 ms | p90 ms | p99 ms | errors (non-2xx, socket) |",
        "|---|---|---|---|---|---|",
    ]
    for n, m in med.items():
        lines.append(
            f"| {n} | {m['rps']:.0f} | {m['p50_ms']:.1f} | {m['p90_ms']:.1f} | {m['p99_ms']:.1f} | {m['errors']:.0f} |"
        )
    lines += [
        "",
        f"ours / floor: {med['ours']['rps'] / med['floor']['rps']:.2f}x the requests/s. Target: >= 800 requests/s and p99 <= 100 ms.",
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"rounds": rows, "median": med}, indent=1))
    (OUT / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
